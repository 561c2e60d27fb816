"""`llama-chat info PATH`: what a model file or directory holds, without reading its weights.

Headers only, but the same validation as loading: the format is detected by content, the
config and every tensor descriptor are checked (all layers, every shape), the tokenizer
is resolved exactly as `chat`/`generate` would, and the quantization shown is the
loader's own plan. Any problem is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import os

from .common import path_arg, resolve_model_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", type=path_arg, help="model file or directory (llama2.c .bin, Meta .pth dir, HF dir, GGUF)")
    p.add_argument("--tokenizer", "-t", metavar="PATH", type=path_arg, help="tokenizer to check against the model")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="backend to describe (default cpu)")
    p.add_argument("--quant", choices=("int8", "int4", "none"), default=None, help="quantization to describe")


def human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "B", "T"):
        if abs(n) < 1000 or suffix == "T":
            return f"{n:.0f}{suffix}{unit}" if suffix == "" else f"{n:.2f}{suffix}{unit}"
        n /= 1000.0
    return str(n)  # pragma: no cover


def quant_line(src, plan: str) -> str:
    """The weight storage the backend would get, in words (the loader's own plan)."""
    stored = src.dtype
    if plan == "none":
        return f"none: the matrices run as stored ({stored})"
    target = "int8 groups" if plan == "int8" else "int4 (Q4_0 blocks)"
    if src.all_float():
        return f"{target}, quantized once from {stored} into the on-disk cache"
    return f"{target} for the float matrices; {stored} blocks run as stored"


def run(args: argparse.Namespace) -> int:
    from inference.architecture import tensor_specs
    from inference.formats import model_files, open_source
    from inference.loader import resolve_tokenizer
    from inference.quantize import resolve_plan

    path = resolve_model_arg(args.path)
    src = open_source(path)
    tok = resolve_tokenizer(src, path, args.tokenizer)
    plan = resolve_plan(src.config, src.all_float(), args.quant)
    c = src.config
    files = model_files(path)
    size = sum(os.path.getsize(f) for f in files)
    per_layer = "  ".join(f"{s.name} {'x'.join(map(str, s.shape(c)))}"
                          for s in tensor_specs(c) if s.per_layer and s.matrix)
    extras = [w for w, on in (("q/k/v biases", c.qkv_bias), ("rope_freqs", c.rope_freqs)) if on]
    rope = f"rope_theta {c.rope_theta:g} ({c.rope_style})"
    if c.rope_scaling.kind != "none":
        rope += f", {c.rope_scaling.kind} scaling x{c.rope_scaling.factor:g}"
    types = ", ".join(f"{n} {t}" for t, n in src.matrix_types().most_common())
    tok_where = tok.path or "the model file"
    lines = [
        ("model", os.path.abspath(path)),
        ("format", f"{src.format}: {src.description}"),
        ("files", f"{len(files)} file{'s' if len(files) != 1 else ''}, {human(size, 'B')}"),
        ("architecture", f"{c.arch}: {c.n_layers} layers, dim {c.dim}, hidden {c.hidden_dim}, "
                         f"{c.n_heads} heads / {c.n_kv_heads} kv heads (head_dim {c.head_dim})"
                         + (f"; {', '.join(extras)}" if extras else "")),
        ("vocab/context", f"{c.vocab_size} tokens, {c.seq_len} positions"),
        ("rope/norm", f"{rope}, rms_norm_eps {c.norm_eps:g}"),
        ("embeddings", f"{c.vocab_size}x{c.dim}; classifier "
                       f"{'shared with the embeddings' if c.shared_classifier else f'separate {c.vocab_size}x{c.dim}'}"),
        ("per layer", per_layer),
        ("parameters", f"{c.n_params():,} ({human(c.n_params())})"),
        ("tensors", types),
        ("tokenizer", f"{tok_where} ({tok.describe()})"),
        ("chat template", "the model's own" if src.chat_template else "none in the model (a built-in is used)"),
        ("backend", "cpu (Numba kernels)" if args.device == "cpu" else "cuda (NVRTC kernels)"),
        ("quant", quant_line(src, plan)),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key + ':':<{width + 1}} {value}")
    return 0
