"""Writing GGUF files: our quantized cache and `llama-chat quantize --quant int4` output.

Tensor byte sizes follow from type and shape, so the header (with every offset) is
written first and the data streamed after it, one tensor at a time: a 7B model is
quantized and written with one matrix in memory. Every tensor starts at a multiple of
the alignment and is padded to one, as llama.cpp's writer does, which is what the
reader's strict layout check expects.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

import numpy as np

from ..quant_types import GGML_TYPES

ALIGNMENT = 32
_U32, _I32, _F32, _BOOL, _STRING, _ARRAY, _U64 = 4, 5, 6, 7, 8, 9, 10


@dataclass
class TensorOut:
    """A tensor to write: `data()` returns its bytes (called once, when it is written)."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]          # numpy order (rows, cols)
    data: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        _, block, size = GGML_TYPES[self.ggml_type]
        count = 1
        for d in self.shape:
            count *= d
        return count // block * size


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _value(v: Any) -> tuple[int, bytes]:
    """(GGUF type, encoded value) for a Python/numpy metadata value."""
    if isinstance(v, (bool, np.bool_)):
        return _BOOL, struct.pack("<?", bool(v))
    if isinstance(v, (int, np.integer)):
        v = int(v)
        if 0 <= v < 1 << 32:
            return _U32, struct.pack("<I", v)
        if -(1 << 31) <= v < 0:
            return _I32, struct.pack("<i", v)
        return _U64, struct.pack("<Q", v)
    if isinstance(v, (float, np.floating)):
        return _F32, struct.pack("<f", float(v))
    if isinstance(v, str):
        return _STRING, _string(v)
    if isinstance(v, np.ndarray):
        codes = {np.dtype("<i4"): (_I32, "<i4"), np.dtype("<f4"): (_F32, "<f4"), np.dtype("<u4"): (_U32, "<u4")}
        etype, dt = codes.get(v.dtype, (_F32, "<f4") if v.dtype.kind == "f" else (_I32, "<i4"))
        return _ARRAY, struct.pack("<IQ", etype, v.size) + np.ascontiguousarray(v, dtype=dt).tobytes()
    if isinstance(v, (list, tuple)):
        items = [_value(x) for x in v]
        etype = items[0][0] if items else _STRING
        return _ARRAY, struct.pack("<IQ", etype, len(items)) + b"".join(b for _, b in items)
    raise TypeError(f"cannot store {type(v).__name__} in GGUF metadata")


def write_gguf(f: BinaryIO, metadata: dict[str, Any], tensors: list[TensorOut],
               progress: Callable[[int, int], None] | None = None) -> None:
    """Write a version-3 GGUF file to the open binary file `f`."""
    head = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(metadata))]
    for key, v in metadata.items():
        vtype, enc = _value(v)
        head.append(_string(key) + struct.pack("<I", vtype) + enc)
    offset = 0
    for t in tensors:
        dims = tuple(reversed(t.shape))
        head.append(_string(t.name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
                    + struct.pack("<IQ", t.ggml_type, offset))
        offset += -(-t.nbytes // ALIGNMENT) * ALIGNMENT
    blob = b"".join(head)
    f.write(blob)
    f.write(bytes(-len(blob) % ALIGNMENT))
    for i, t in enumerate(tensors):
        data = np.ascontiguousarray(t.data()).view(np.uint8).reshape(-1)
        if data.size != t.nbytes:
            raise ValueError(f"tensor {t.name}: {data.size} bytes, its type and shape say {t.nbytes}")
        f.write(data.data)
        f.write(bytes(-t.nbytes % ALIGNMENT))
        if progress:
            progress(i + 1, len(tensors))
