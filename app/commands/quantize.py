"""`llama-chat quantize MODEL [-o OUT] [--group-size N]`: write an int8 llama2.c v2 file.

The output uses runq.c's layout (int8 values + fp32 scales per group of input columns),
so llama2.c's runq.c reads it as well as llama-chat. Each matrix is quantized right before
it is written, so memory stays bounded (one layer matrix) even for a 7B fp32 source.
"""
from __future__ import annotations

import argparse
import os
import sys

from inference.errors import LlamaChatError, ModelFormatError
from inference.weights import ModelWeights

from .common import ProgressBar


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="fp32/fp16 model file or directory (any supported format)")
    p.add_argument("-o", "--output", metavar="OUT", help="output file (default: MODEL's name + '-q8.bin', beside it)")
    p.add_argument("--group-size", type=int, default=64, metavar="N",
                   help="input columns per fp32 scale (default 64; shrunk to divide the model's dimensions)")
    p.add_argument("--force", "-f", action="store_true", help="overwrite OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from inference.quantize import choose_group_size, write_quantized_v2
    if args.group_size < 1:
        raise LlamaChatError("--group-size must be at least 1")
    weights = _load_source(args.model)
    c = weights.config
    if c.rope_theta != 10000.0 or abs(c.norm_eps - 1e-5) > 1e-12:
        raise LlamaChatError(f"{args.model} uses rope_theta={c.rope_theta:g}, norm_eps={c.norm_eps:g}; a llama2.c v2 "
                             "file can only describe 10000 and 1e-5 (load the model directly: it is quantized and "
                             "cached on first use)")
    gs = weights.group_size or choose_group_size(c, args.group_size)
    out = args.output or _default_output(args.model)
    if os.path.exists(out) and not args.force:
        raise LlamaChatError(f"{out} exists: pass --force to overwrite it or -o to choose another name")
    if os.path.realpath(out) == os.path.realpath(args.model):
        raise LlamaChatError("the output would overwrite the source model")
    if gs != args.group_size and not weights.group_size:
        print(f"llama-chat: group size {args.group_size} does not divide the model's dimensions; using {gs}",
              file=sys.stderr)
    bar = ProgressBar(f"quantizing {os.path.basename(os.path.normpath(args.model))}")
    tmp = f"{out}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            write_quantized_v2(f, weights, gs, bar)
        os.replace(tmp, out)
    except OSError as e:
        raise LlamaChatError(f"cannot write {out}: {e.strerror}") from None
    finally:
        bar.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
    size = os.path.getsize(out)
    print(f"wrote {out}: llama2.c v2, int8, group size {gs}, {size / 1e6:.1f} MB in {bar.elapsed():.1f} s",
          file=sys.stderr)
    return 0


def _default_output(model: str) -> str:
    path = os.path.normpath(model)
    if os.path.isdir(path):
        return os.path.join(path, "model-q8.bin")
    return os.path.splitext(path)[0] + "-q8.bin"


def _load_source(path: str) -> ModelWeights:
    """The model's weights (memory-mapped where the format allows), without a tokenizer."""
    if not os.path.exists(path):
        raise ModelFormatError(f"model not found: {path}")
    try:
        from inference.formats import detect_format, load as load_format
    except ImportError:
        detect_format = load_format = None  # type: ignore[assignment]
    fmt = detect_format(path) if detect_format else "llama2c"
    if fmt == "llama2c":
        from inference.checkpoint import load_llama2c
        weights = load_llama2c(path)
    else:
        weights = load_format(path).weights
    try:
        weights.check_shapes()
    except ValueError as e:
        raise ModelFormatError(f"{path}: {e}") from None
    return weights
