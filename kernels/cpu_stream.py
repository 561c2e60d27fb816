"""The memory-bandwidth yardstick decode speed is compared against (`llama-chat bench`).

Decode at batch 1 streams every weight once per token, so the fraction of the machine's
streaming rate it reaches says how close to the limit the kernels are. The yardstick reads
a buffer the way the matvec reads weight rows (rows split across threads, vectorized sums,
software prefetch), i.e. the matvec's access pattern without its arithmetic (and, like it,
parallel regions that take no GIL: `numba_gil`).
"""
from __future__ import annotations

import time

import numpy as np
from numba import njit, prange

from . import numba_setup
from .cpu_blocks import PREFETCH_BYTES, prefetch

_FAST = dict(nogil=True, cache=numba_setup.CACHE, fastmath={"reassoc", "contract", "nsz", "arcp"},
             boundscheck=False, error_model="numpy")


@njit(parallel=True, **_FAST)
def stream_sum(a: np.ndarray) -> float:
    """Sum of `a` read the way the decode matvec reads a weight matrix: rows of 768
    floats (a stories110M row) split across the threads, each row a vectorized sum over a
    slice (indices from loop counters, so LLVM emits full-width loads) with the software
    prefetch the int8 rows get, on as many threads as Numba runs."""
    n = 768
    rows = a.shape[0] // n
    sums = np.zeros(rows, dtype=np.float32)
    for i in prange(rows):
        o = i * n
        for c in range(0, n, 16):
            prefetch(a, o + PREFETCH_BYTES // 4 + c)
        r = a[o:o + n]
        acc = np.float32(0.0)
        for j in range(n):
            acc += r[j]
        sums[i] = acc
    return float(sums.sum())


#: The last yardstick buffer, kept so `bench` (which measures after every decode run)
#: fills it once: for a 7B shape it is 7 GB.
_stream_buf: list[np.ndarray] = []


def stream_bandwidth(nbytes: int = 1 << 28, repeats: int = 5) -> float:
    """Bytes/s all threads read from a buffer of `nbytes` (best of `repeats`).

    The yardstick for decode: pass the weight bytes read per token, so the buffer meets
    the same caches the weights do. The threads read it in rows like the matvec does
    (see `cpu_forward.stream_sum`), i.e. the matvec's access pattern without its arithmetic.
    """
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
