"""`llama-chat info PATH`: what a model file or directory holds, without loading its weights.

Headers only: the format is detected by content, shapes come from the hyper-parameters
and are checked against the global tensors and layer 0, and the backend/quantization
shown is what `chat`/`generate` would use with the same flags. A hostile or broken file
fails here exactly as it would at load time: one line, non-zero exit.
"""
from __future__ import annotations

import argparse
import os

from inference.errors import LlamaChatError

try:  # the loader's policy, so `info` says what `chat` would really do
    from inference.quantize import DEFAULT_INT8_MIN_PARAMS as INT8_DEFAULT_PARAMS
except ImportError:  # pragma: no cover - quantize ships with the core
    INT8_DEFAULT_PARAMS = 50_000_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="MODEL", help="model file or directory (llama2.c .bin, Meta .pth dir, HF dir, "
                                                 "GGUF), or a name from `llama-chat models`")
    p.add_argument("--tokenizer", "-t", metavar="PATH", help="tokenizer to check against the model")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="backend to describe (default cpu)")
    p.add_argument("--quant", choices=("int8", "none"), default=None, help="quantization to describe")


def human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "B", "T"):
        if abs(n) < 1000 or suffix == "T":
            return f"{n:.0f}{suffix}{unit}" if suffix == "" else f"{n:.2f}{suffix}{unit}"
        n /= 1000.0
    return str(n)  # pragma: no cover


def quant_plan(source_dtype: str, n_params: int, quant: str | None) -> str:
    """The weight storage the backend would get, in words (mirrors the loader's policy)."""
    if source_dtype == "int8":
        return "int8 (as stored in the file)"
    if quant == "none":
        return "none: fp32 weights (--quant none)"
    if quant == "int8":
        return f"int8 groups, quantized at load from {source_dtype} (--quant int8)"
    if n_params > INT8_DEFAULT_PARAMS:
        return f"int8 groups, quantized at load from {source_dtype} (default above ~50M parameters; --quant none keeps fp32)"
    return f"none: fp32 weights from {source_dtype} (default below ~50M parameters)"


def tokenizer_line(args: argparse.Namespace, src, vocab: int) -> str:
    path = args.tokenizer
    note = ""
    if path is None:
        if src.format == "gguf" and src.tokenizer_note.startswith("from the GGUF metadata"):
            return src.tokenizer_note
        path = src.tokenizer()
        if path is None:
            try:
                from inference.loader import find_tokenizer
                path = find_tokenizer(args.path)
                note = ", found beside the model"
            except ImportError:  # pragma: no cover - the loader ships with the core
                path = None
    if path is None:
        return "none found (pass --tokenizer)"
    try:
        from inference.tokenizer import load_tokenizer
        tok = load_tokenizer(path, vocab)
    except LlamaChatError as e:
        return f"{path}: PROBLEM: {e}"
    return f"{path} ({tok.kind}, {tok.vocab_size} tokens{note})"


def run(args: argparse.Namespace) -> int:
    from inference.formats import model_files, open_source

    from inference.discovery import resolve_model
    args.path = resolve_model(args.path)
    src = open_source(args.path)
    src.check_layer0()
    c = src.config
    files = model_files(args.path)
    size = sum(os.path.getsize(f) for f in files)
    mats = {"wq": (c.dim, c.dim), "wk": (c.kv_dim, c.dim), "wv": (c.kv_dim, c.dim), "wo": (c.dim, c.dim),
            "w1": (c.hidden_dim, c.dim), "w2": (c.dim, c.hidden_dim), "w3": (c.hidden_dim, c.dim)}
    per_layer = "  ".join(f"{n} {r}x{k}" for n, (r, k) in mats.items())
    device = "cpu (Numba kernels)" if args.device == "cpu" else "cuda (NVRTC kernels)"
    lines = [
        ("model", os.path.abspath(args.path)),
        ("format", f"{src.format}: {src.description}"),
        ("files", f"{len(files)} file{'s' if len(files) != 1 else ''}, {human(size, 'B')}"),
        ("architecture", f"llama: {c.n_layers} layers, dim {c.dim}, hidden {c.hidden_dim}, "
                         f"{c.n_heads} heads / {c.n_kv_heads} kv heads (head_dim {c.head_dim})"),
        ("vocab/context", f"{c.vocab_size} tokens, {c.seq_len} positions"),
        ("rope/norm", f"rope_theta {c.rope_theta:g}, rms_norm_eps {c.norm_eps:g}"),
        ("embeddings", f"{c.vocab_size}x{c.dim}; classifier "
                       f"{'shared with the embeddings' if c.shared_classifier else f'separate {c.vocab_size}x{c.dim}'}"),
        ("per layer", per_layer),
        ("parameters", f"{c.n_params():,} ({human(c.n_params())})"),
        ("dtype", src.dtype),
        ("tokenizer", tokenizer_line(args, src, c.vocab_size)),
        ("backend", device),
        ("quant", quant_plan(src.dtype, c.n_params(), args.quant)),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key + ':':<{width + 1}} {value}")
    return 0
