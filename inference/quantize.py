"""W8A32 weight quantization: int8 values with one fp32 scale per group of input columns.

Symmetric per-group quantization (scale = max|w| / 127, q = round(w / scale)) is the
llama2.c v2 / runq.c layout, so a quantized model can be written as a v2 file that runq.c
also reads, and our kernels widen int8 to fp32 on the fly (activations stay fp32).
"""
from __future__ import annotations

import numpy as np

from .config import ModelConfig
from .weights import QTensor

#: Rows quantized per chunk: bounds the fp32 temporaries to a few tens of MB for any shape.
_CHUNK_ELEMS = 1 << 22


def quantize_q8(w: np.ndarray, group_size: int) -> QTensor:
    """Quantize a (rows, cols) or stacked (..., rows, cols) float matrix to int8 per group.

    Groups are `group_size` consecutive input columns (the last axis). A group that is all
    zeros gets scale 0 and q 0, so dequantization is exact for it. Works chunk by chunk so
    a memory-mapped 7B tensor never needs a full-size fp32 temporary.
    """
    w = np.asarray(w)
    if w.ndim < 2:
        raise ValueError(f"quantize_q8 needs a matrix, got shape {w.shape}")
    cols = w.shape[-1]
    if group_size <= 0 or cols % group_size:
        raise ValueError(f"group size {group_size} does not divide the {cols} input columns")
    lead = w.shape[:-1]
    flat = w.reshape(-1, cols)
    n_rows = flat.shape[0]
    ngroups = cols // group_size
    q = np.empty((n_rows, cols), dtype=np.int8)
    s = np.empty((n_rows, ngroups), dtype=np.float32)
    step = max(1, _CHUNK_ELEMS // cols)
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        _quantize_rows(flat[r0:r1], group_size, q[r0:r1], s[r0:r1])
    return QTensor(q.reshape(*lead, cols), s.reshape(*lead, ngroups), group_size)


def _quantize_rows(rows: np.ndarray, group_size: int, q_out: np.ndarray, s_out: np.ndarray) -> None:
    """Quantize a block of rows into the given output views (fp32 math, like runq.c)."""
    n, cols = rows.shape
    g = np.asarray(rows, dtype=np.float32).reshape(n, cols // group_size, group_size)
    amax = np.max(np.abs(g), axis=2)
    scale = (amax / np.float32(127.0)).astype(np.float32)
    s_out[...] = scale
    safe = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    v = g / safe[:, :, None]
    np.rint(v, out=v)
    np.clip(v, -127, 127, out=v)
    q_out[...] = v.reshape(n, cols).astype(np.int8)


def choose_group_size(config: ModelConfig, want: int = 64) -> int:
    """The largest group size <= `want` dividing both dim and hidden_dim (every input width)."""
    if want <= 0:
        raise ValueError(f"group size must be positive, got {want}")
    g = want
    while g > 1 and (config.dim % g or config.hidden_dim % g):
        g -= 1
    return g
