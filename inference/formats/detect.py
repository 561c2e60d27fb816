"""Which format a path holds, decided by the bytes in it (file names are only hints).

A file is classified by its first bytes: GGUF magic, a zip or legacy pickle stream (a
PyTorch checkpoint), a safetensors header, or a llama2.c header. A directory is a Meta
checkpoint when it has params.json, an HF one when it has config.json; otherwise its
files are classified and a helpful error names what is missing.
"""
from __future__ import annotations

import os
import stat
import struct

from ..errors import ModelFormatError
from .safetensors import is_safetensors

FORMATS = ("llama2c", "meta-pth", "hf-safetensors", "gguf")
_LEGACY_TORCH = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # pickled magic number


def sniff_file(path: str) -> str | None:
    """'gguf', 'torch', 'safetensors', 'llama2c' or None, from the file's content."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            raise ModelFormatError(f"{path} is not a regular file")
        size = st.st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise ModelFormatError(f"cannot read {path}: {e.strerror or e}") from None
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] == b"PK\x03\x04" or head.startswith(_LEGACY_TORCH):
        return "torch"
    if is_safetensors(head, size):
        return "safetensors"
    if _looks_llama2c(head):
        return "llama2c"
    return None


def is_gguf(path: str) -> bool:
    """Whether `path` is a readable regular file that starts like GGUF (never raises)."""
    try:
        return sniff_file(path) == "gguf"
    except ModelFormatError:
        return False


def _looks_llama2c(head: bytes) -> bool:
    if len(head) < 28:
        return False
    if struct.unpack_from("<I", head, 0)[0] == 0x616B3432:  # "ak42": v1 / v2
        return True
    dim, hidden, layers, heads, kv, vocab, seq = struct.unpack_from("<7i", head, 0)
    sizes = (dim, hidden, layers, heads, kv, abs(vocab), seq)
    return min(sizes) > 0 and max(sizes) < 1 << 24


def detect_format(path: str) -> str:
    """One of FORMATS, or a one-line `ModelFormatError` saying what is wrong."""
    if not os.path.exists(path):
        raise ModelFormatError(f"model not found: {path}")
    if os.path.isdir(path):
        return _detect_dir(path)
    kind = sniff_file(path)
    if kind == "gguf":
        return "gguf"
    if kind == "llama2c":
        return "llama2c"
    if kind in ("torch", "safetensors"):
        return _detect_dir(os.path.dirname(os.path.abspath(path)))
    raise ModelFormatError(
        f"{path}: unrecognised model file (not llama2.c .bin, PyTorch .pth, safetensors or GGUF)")


def _detect_dir(directory: str) -> str:
    if os.path.isfile(os.path.join(directory, "params.json")):
        return "meta-pth"
    if os.path.isfile(os.path.join(directory, "config.json")):
        return "hf-safetensors"
    kinds: dict[str, list[str]] = {}
    for name in sorted(os.listdir(directory)):
        full = os.path.join(directory, name)
        if os.path.isfile(full) and not name.endswith((".json", ".model", ".txt", ".md", ".jinja")):
            k = sniff_file(full)
            if k:
                kinds.setdefault(k, []).append(name)
    if "torch" in kinds:
        raise ModelFormatError(
            f"{directory} holds PyTorch weights ({kinds['torch'][0]}) but no params.json "
            f"(a Meta checkpoint needs it for the model's shapes)")
    if "safetensors" in kinds:
        raise ModelFormatError(
            f"{directory} holds safetensors weights ({kinds['safetensors'][0]}) but no config.json "
            f"(a Hugging Face checkpoint needs it for the model's shapes)")
    models = kinds.get("gguf", []) + [n for n in kinds.get("llama2c", []) if not n.startswith("tok")]
    if len(models) == 1:
        raise ModelFormatError(f"{directory} is a directory: pass the model file {os.path.join(directory, models[0])}")
    raise ModelFormatError(f"{directory}: no model found (expected params.json, config.json or a model file)")
