"""Small strict-IEEE Numba kernels the fused forward (`cpu_forward`) calls: RMSNorm and
RoPE, plus the RoPE tables and the streaming-bandwidth yardstick for `llama-chat bench`.

Each kernel works on a batch of T consecutive positions (rows of the activation arrays),
the first at `start_pos`. The arithmetic mirrors llama2.c's run.c in float32 so greedy
tokens match it exactly on the shipped model.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

_FLAGS = dict(nogil=True, cache=True)


@njit(**_FLAGS)
def rmsnorm(out: np.ndarray, x: np.ndarray, weight: np.ndarray, eps: float) -> None:
    """out[t] = weight * x[t] / sqrt(mean(x[t]^2) + eps)."""
    T, n = x.shape
    for t in range(T):
        ss = np.float32(0.0)
        for j in range(n):
            ss += x[t, j] * x[t, j]
        ss = ss / np.float32(n) + np.float32(eps)
        inv = np.float32(1.0) / np.float32(math.sqrt(ss))
        for j in range(n):
            out[t, j] = weight[j] * (inv * x[t, j])


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin of position * frequency, (seq_len, head_dim // 2), computed like run.c."""
    i = np.arange(0, head_dim, 2, dtype=np.float32)
    freq = (np.float32(1.0) / np.power(np.float32(theta), i / np.float32(head_dim))).astype(np.float32)
    ang = (np.arange(seq_len, dtype=np.float32)[:, None] * freq[None, :]).astype(np.float32)
    return np.cos(ang.astype(np.float64)).astype(np.float32), np.sin(ang.astype(np.float64)).astype(np.float32)


@njit(**_FLAGS)
def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, start_pos: int, head_dim: int) -> None:
    """Rotate each (even, odd) pair of every head of x[t] by its position's angle."""
    T, n = x.shape
    half = head_dim // 2
    for t in range(T):
        p = start_pos + t
        for h0 in range(0, n, head_dim):
            for k in range(half):
                c = cos[p, k]
                s = sin[p, k]
                a = x[t, h0 + 2 * k]
                b = x[t, h0 + 2 * k + 1]
                x[t, h0 + 2 * k] = a * c - b * s
                x[t, h0 + 2 * k + 1] = a * s + b * c


#: The last yardstick buffer, kept so `bench` (which measures after every decode run)
#: fills it once: for a 7B shape it is 7 GB.
_stream_buf: list[np.ndarray] = []


def stream_bandwidth(nbytes: int = 1 << 28, repeats: int = 5) -> float:
    """Bytes/s all threads read from a buffer of `nbytes` (best of `repeats`).

    The yardstick for decode: pass the weight bytes read per token, so the buffer meets
    the same caches the weights do. The threads read it in rows like the matvec does
    (see `cpu_forward.stream_sum`), i.e. the matvec's access pattern without its arithmetic.
    """
    import time

    from .cpu_forward import stream_sum
    n = max(nbytes, 1 << 20) // 4
    if not _stream_buf or _stream_buf[0].size != n:
        _stream_buf.clear()
        _stream_buf.append(np.ones(n, dtype=np.float32))
    a = _stream_buf[0]
    stream_sum(a)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        stream_sum(a)
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best
