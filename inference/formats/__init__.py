"""Model formats: llama2.c .bin, Meta .pth, HF safetensors, GGUF — one entry point.

`detect_format(path)` names the format by content; `open_source(path)` parses and
validates the headers and returns a `Source` (config + lazy tensor references). Every
reader memory-maps its files and parses headers itself: no torch, safetensors or gguf
package is needed at run time, and no pickle code from a checkpoint ever runs.
"""
from __future__ import annotations

import os

from .common import Source
from .detect import FORMATS, detect_format

__all__ = ["FORMATS", "Source", "detect_format", "model_files", "open_source"]


def open_source(path: str) -> Source:
    """Open a model of any supported format; tensors stay memory-mapped until asked for.
    Every reader has validated its config and checked each tensor's shape (`Source.check`)."""
    fmt = detect_format(path)
    if fmt == "llama2c":
        from .llama2c import open_llama2c
        return open_llama2c(path)
    if fmt == "meta-pth":
        from .meta_pth import open_meta
        return open_meta(path)
    if fmt == "hf-safetensors":
        from .safetensors import open_hf
        return open_hf(path)
    from .gguf import open_gguf
    return open_gguf(path)


def model_files(path: str) -> list[str]:
    """The files a model at `path` is made of (for sizes in `info`)."""
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(path, f) for f in os.listdir(path)
                  if f.endswith((".pth", ".safetensors", ".gguf", ".bin")) and os.path.isfile(os.path.join(path, f)))
