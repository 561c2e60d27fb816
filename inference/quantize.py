"""Quantizing float weights: int8 groups (W8A32) and 4-bit Q4_0 blocks, and the one rule
that decides when the loader does it.

int8: symmetric per-group quantization (scale = max|w| / 127, q = round(w / scale)), the
llama2.c v2 / runq.c layout; the kernels widen int8 to fp32 on the fly. int4: ggml's
Q4_0 (blocks of 32 values: an fp16 scale d = max / -8 of the signed value of largest
magnitude, and 4-bit quants q = trunc(w / d + 8.5) clipped to 15, stored low nibbles =
values 0-15, high nibbles = values 16-31), so the output is also a valid llama.cpp file.
Only fp32/fp16/bf16 matrices are ever quantized: a GGUF block is used as stored.
"""
from __future__ import annotations

import numpy as np

from .config import ModelConfig
from .errors import LlamaChatError
from .quant_types import FLOAT_TYPES, BlockTensor, block_view
from .weights import ModelWeights, QTensor, Tensor, tensor_type

#: Rows quantized per chunk: bounds the fp32 temporaries to a few tens of MB for any shape.
_CHUNK_ELEMS = 1 << 22
#: fp sources with more parameters than this are quantized to int8 by default (decode is
#: memory bound, so int8 is ~4x less traffic); smaller models stay exact.
DEFAULT_INT8_MIN_PARAMS = 50_000_000
PLANS = ("int8", "int4", "none")


def resolve_plan(config: ModelConfig, all_float: bool, requested: str | None) -> str:
    """The quantization the loader applies to a model's float matrices: 'int8', 'int4' or
    'none'. Default: int8 for models whose matrices are all float (fp32/fp16/bf16, GGUF
    F32/F16 included) above DEFAULT_INT8_MIN_PARAMS parameters, else none. Matrices in
    GGUF block types (and int8 llama2.c v2 files) are never re-quantized whatever the plan.
    """
    if requested not in (None, *PLANS):
        raise LlamaChatError(f"unknown quantization {requested!r}: use {', '.join(PLANS)}")
    if requested is not None:
        return requested
    return "int8" if all_float and config.n_params() > DEFAULT_INT8_MIN_PARAMS else "none"


def floats(t: Tensor) -> np.ndarray:
    """A float matrix's values as fp32 (a view for fp32, a copy otherwise)."""
    if isinstance(t, QTensor):
        return t.dequantize()
    if isinstance(t, BlockTensor):
        return t.floats()
    return np.asarray(t, dtype=np.float32)


def is_float(t: Tensor) -> bool:
    return tensor_type(t) in FLOAT_TYPES


def quantize_q8(w: np.ndarray, group_size: int) -> QTensor:
    """Quantize a (rows, cols) float matrix to int8 per group of `group_size` columns.

    A group that is all zeros gets scale 0 and q 0, so dequantization is exact for it.
    Works chunk by chunk so a memory-mapped 7B tensor never needs a full-size temporary.
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
        g = np.asarray(flat[r0:r1], dtype=np.float32).reshape(r1 - r0, ngroups, group_size)
        scale = (np.max(np.abs(g), axis=2) / np.float32(127.0)).astype(np.float32)
        s[r0:r1] = scale
        v = g / np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)[:, :, None]
        np.rint(v, out=v)
        np.clip(v, -127, 127, out=v)
        q[r0:r1] = v.reshape(r1 - r0, cols).astype(np.int8)
    return QTensor(q.reshape(*lead, cols), s.reshape(*lead, ngroups), group_size)


def quantize_q4_0(w: np.ndarray) -> BlockTensor:
    """Quantize a (rows, cols) float matrix to Q4_0 blocks (see the module docstring)."""
    w = np.asarray(w)
    rows, cols = w.shape
    if cols % 32:
        raise LlamaChatError(f"int4 (Q4_0) needs rows that are a multiple of 32 values; this model has {cols}")
    nb = cols // 32
    out = np.empty((rows, nb, 18), dtype=np.uint8)
    step = max(1, _CHUNK_ELEMS // cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        g = np.asarray(w[r0:r1], dtype=np.float32).reshape(r1 - r0, nb, 32)
        at = np.argmax(np.abs(g), axis=2)[..., None]
        d = (np.take_along_axis(g, at, axis=2)[..., 0] / np.float32(-8.0)).astype(np.float32)
        with np.errstate(divide="ignore"):
            inv = np.where(d == 0, np.float32(0.0), np.float32(1.0) / d).astype(np.float32)
        q = np.trunc(g * inv[..., None] + np.float32(8.5)).clip(0, 15).astype(np.uint8)
        out[r0:r1, :, 0:2] = d.astype(np.float16)[..., None].view(np.uint8).reshape(r1 - r0, nb, 2)
        out[r0:r1, :, 2:] = q[..., :16] | (q[..., 16:] << 4)
    return block_view("q4_0", rows, cols, out.reshape(-1))


def input_widths(config: ModelConfig) -> set[int]:
    """The input widths (columns) of the model's matrices: what a scale group must divide."""
    return {config.dim, config.hidden_dim, config.q_dim}


def choose_group_size(config: ModelConfig, want: int = 64) -> int:
    """The largest group size <= `want` dividing every matrix's input width."""
    if want <= 0:
        raise LlamaChatError(f"the group size must be at least 1, got {want}")
    widths = input_widths(config)
    g = min(want, min(widths))
    while g > 1 and any(w % g for w in widths):
        g -= 1
    return g


def plan_group_size(config: ModelConfig, plan: str, want: int = 64) -> int:
    """The columns per scale `plan` quantizes this model's float matrices with: int8's
    group size (shrunk to divide every matrix width), int4's 32. Asked before any matrix
    is converted, so a model int4 cannot hold is refused at once, not tensors later."""
    if plan != "int4":
        return choose_group_size(config, want)
    odd = sorted(w for w in input_widths(config) if w % 32)
    if odd:
        raise LlamaChatError(f"int4 (Q4_0) needs rows that are a multiple of 32 values; this model has {odd[0]}")
    return 32


def quantize_matrix(t: Tensor, plan: str, group_size: int) -> Tensor:
    """One matrix under a plan: float matrices converted, everything else as stored."""
    if plan == "none" or not is_float(t):
        return t
    if plan == "int8":
        return quantize_q8(floats(t), group_size)
    return quantize_q4_0(floats(t))


def quantize_weights(weights: ModelWeights, group_size: int = 64, plan: str = "int8") -> ModelWeights:
    """A copy of `weights` with every float matrix quantized in memory (no cache)."""
    gs = plan_group_size(weights.config, plan, group_size)
    out = ModelWeights(weights.config, dict(weights.tensors))
    for key, t in weights.matrices():
        if is_float(t):
            out.tensors[key] = quantize_matrix(t, plan, gs)
    return out
