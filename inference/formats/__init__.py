"""Model formats beyond llama2.c's .bin: Meta .pth, HF safetensors, GGUF — one entry point.

`detect_format(path)` names the format by content; `load(path)` returns a `FormatResult`
(config, stacked `ModelWeights`, the tokenizer to use by default, and a description).
Every reader memory-maps its files and parses headers itself: no torch, safetensors or
gguf package is needed at run time, and no pickle code from a checkpoint ever runs.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import ModelFormatError
from .common import FormatResult, Source
from .detect import FORMATS, detect_format

__all__ = ["FORMATS", "FormatResult", "Source", "detect_format", "load", "open_source"]


def open_source(path: str) -> Source:
    """Open a model of any supported format; tensors stay memory-mapped until `load`."""
    fmt = detect_format(path)
    if fmt == "llama2c":
        return _open_llama2c(path)
    if fmt == "meta-pth":
        from .meta_pth import open_meta
        return open_meta(path)
    if fmt == "hf-safetensors":
        from .safetensors import open_hf
        return open_hf(path)
    from .gguf import open_gguf
    return open_gguf(path)


def load(path: str, float_dtype: np.dtype = np.float32, quant: str | None = None,
         group_size: int = 64) -> FormatResult:
    """Read any supported model.

    Float matrices come back as `float_dtype` (fp32 by default). `quant='int8'` quantizes
    every matrix layer by layer while reading (as `inference.quantize.quantize_weights`
    would, bit for bit), so an fp16/bf16 7B model needs about its int8 size in RAM instead
    of a full fp32 copy first. GGUF Q8_0 and llama2.c v2 matrices stay as stored.
    """
    src = open_source(path)
    quantize = None
    if quant == "int8" and src.ready is None:
        from ..quantize import choose_group_size, quantize_q8
        gs = choose_group_size(src.config, group_size)
        quantize = lambda m: quantize_q8(m, gs)  # noqa: E731
    elif quant not in (None, "none", "int8"):
        raise ModelFormatError(f"unknown quantization {quant!r}: use int8 or none")
    return src.load(float_dtype, quantize)


def _open_llama2c(path: str) -> Source:
    from ..checkpoint import load_llama2c, read_header
    header, _ = read_header(path)
    w = load_llama2c(path)
    c = w.config

    def get(name: str, layer: int | None):
        if name == "output" and c.shared_classifier:
            return None
        t = getattr(w, name)
        return t if layer is None else t[layer]

    src = Source(config=c, get=get, format="llama2c", dtype=w.weight_type,
                 description=f"llama2.c checkpoint v{header.version}"
                             + (f", int8 groups of {header.group_size}" if header.version == 2 else ""),
                 tokenizer_note="none in the file (a tokenizer.bin beside it is used)", tokenizer=lambda: None,
                 ready=w)
    return src


def model_files(path: str) -> list[str]:
    """The files a model at `path` is made of (for sizes in `info`)."""
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(path, f) for f in os.listdir(path)
                  if f.endswith((".pth", ".safetensors", ".gguf", ".bin")) and os.path.isfile(os.path.join(path, f)))
