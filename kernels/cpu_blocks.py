"""Per-type weight row kernels (placeholder: plain loops for the float and int8 types).

`row_dot(code, w, s, gs, x)` and `dequant_row(code, w, s, gs, out)` take one weight row's
bytes; see the type codes below.
"""
from __future__ import annotations

import numpy as np
from numba import njit

F32, F16, BF16, I8 = 0, 1, 2, 3
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 4, 5, 6, 7, 8
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = 9, 10, 11, 12, 13
IQ4_NL, IQ4_XS = 14, 15

BLOCK: dict[int, tuple[int, int]] = {
    F32: (1, 4), F16: (1, 2), BF16: (1, 2), I8: (1, 1),
    Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q5_1: (32, 24), Q8_0: (32, 34),
    Q2_K: (256, 84), Q3_K: (256, 110), Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210),
    IQ4_NL: (32, 18), IQ4_XS: (256, 136),
}


def row_nbytes(code: int, n: int) -> int:
    block, size = BLOCK[code]
    return n // block * size


_F = dict(nogil=True, cache=True, fastmath=True, boundscheck=False, error_model="numpy")


@njit(inline="always", **_F)
def _half(w, i):
    h = np.int64(w[i]) | (np.int64(w[i + 1]) << 8)
    sign = -1.0 if h & 0x8000 else 1.0
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        return np.float32(sign * m * 5.960464477539063e-08)
    if e == 31:
        return np.float32(sign * np.inf) if m == 0 else np.float32(np.nan)
    return np.float32(sign * (1.0 + m / 1024.0) * 2.0 ** (e - 15))


@njit(**_F)
def dequant_row(code, w, s, gs, out):
    n = out.shape[0]
    if code == F32:
        f = w.view(np.float32)
        for j in range(n):
            out[j] = f[j]
    elif code == F16:
        for j in range(n):
            out[j] = _half(w, 2 * j)
    elif code == BF16:
        u = w.view(np.uint16)
        o = out.view(np.uint32)
        for j in range(n):
            o[j] = np.uint32(u[j]) << np.uint32(16)
    elif code == I8:
        q = w.view(np.int8)
        for j in range(n):
            out[j] = np.float32(q[j]) * s[j // gs]
    elif code == Q8_0:
        for b in range(n // 32):
            d = _half(w, b * 34)
            for j in range(32):
                out[b * 32 + j] = d * np.float32(np.int8(w[b * 34 + 2 + j]))
    elif code == Q4_0:
        for b in range(n // 32):
            d = _half(w, b * 18)
            for j in range(16):
                byte = w[b * 18 + 2 + j]
                out[b * 32 + j] = d * np.float32(np.int32(byte & 15) - 8)
                out[b * 32 + 16 + j] = d * np.float32(np.int32(byte >> 4) - 8)
    elif code == Q4_1:
        for b in range(n // 32):
            d = _half(w, b * 20)
            m = _half(w, b * 20 + 2)
            for j in range(16):
                byte = w[b * 20 + 4 + j]
                out[b * 32 + j] = d * np.float32(byte & 15) + m
                out[b * 32 + 16 + j] = d * np.float32(byte >> 4) + m
    else:
        for j in range(n):
            out[j] = np.float32(np.nan)


@njit(**_F)
def row_dot(code, w, s, gs, x):
    n = x.shape[0]
    buf = np.empty(n, np.float32)
    dequant_row(code, w, s, gs, buf)
    acc = np.float32(0.0)
    for j in range(n):
        acc += buf[j] * x[j]
    return acc
