"""Numba matrix kernels for the CPU backend: fp32 and W8A32 int8-group weights.

`x` is a batch of activations (T, n) — T = 1 while decoding, a prompt chunk while
prefilling — and `w` is (d, n) in PyTorch's (out, in) layout. Rows of `w` are split
across threads; each row is read once per call and reused for every token of the batch.

Sums use `fastmath` so LLVM may reorder and vectorize them: results differ from a
strictly sequential float32 sum by rounding only (the greedy reference tests run on this
path and pass with logits within 1e-4 of the reference).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

_FLAGS = dict(nogil=True, cache=True, fastmath=True)


@njit(parallel=True, **_FLAGS)
def matmul_f32(out: np.ndarray, x: np.ndarray, w: np.ndarray) -> None:
    """out[t, i] = sum_j w[i, j] * x[t, j]   (w float32 or float16)."""
    T, n = x.shape
    d = w.shape[0]
    for i in prange(d):
        for t in range(T):
            acc = np.float32(0.0)
            for j in range(n):
                acc += np.float32(w[i, j]) * x[t, j]
            out[t, i] = acc


@njit(parallel=True, **_FLAGS)
def matmul_q8(out: np.ndarray, x: np.ndarray, q: np.ndarray, s: np.ndarray, group_size: int) -> None:
    """out[t, i] = sum_g s[i, g] * sum_{j in g} q[i, j] * x[t, j]   (int8 weights, fp32 acts)."""
    T, n = x.shape
    d = q.shape[0]
    n_groups = n // group_size
    for i in prange(d):
        for t in range(T):
            acc = np.float32(0.0)
            for g in range(n_groups):
                part = np.float32(0.0)
                base = g * group_size
                for j in range(base, base + group_size):
                    part += np.float32(q[i, j]) * x[t, j]
                acc += part * s[i, g]
            out[t, i] = acc


@njit(**_FLAGS)
def dequantize_row(out: np.ndarray, q: np.ndarray, s: np.ndarray, row: int, group_size: int) -> None:
    """out[:] = row `row` of an int8-group matrix, in fp32 (embedding lookup)."""
    n = q.shape[1]
    for j in range(n):
        out[j] = np.float32(q[row, j]) * s[row, j // group_size]
