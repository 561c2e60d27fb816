"""The k largest entries of a row of values, for sampling's top-k (CPU).

Order: value descending, ties by lower index: a total order, so the answer is unique
and the same as the CUDA kernel `topk` in cuda/sample.cu gives. One pass keeps the best
k seen in a binary heap whose root is the worst of them; an entry that does not beat the
root (most of a vocabulary, once the heap is full) costs one comparison. A heap sort
then puts the k in order. numpy's argpartition over a vocabulary plus a lexsort cost
several times as long. For k over an eighth of the row a stable sort of all of it (the
same order) is quicker.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .numba_setup import CACHE


@njit(inline="always", cache=CACHE)
def _worse(av: np.float32, ai: np.int64, bv: np.float32, bi: np.int64) -> bool:
    return av < bv or (av == bv and ai > bi)


@njit(inline="always", cache=CACHE)
def _sift_down(hv: np.ndarray, hi: np.ndarray, v: np.float32, i: np.int64, m: int) -> None:
    """Put (v, i) at the root of the heap hv[:m], hi[:m] and restore the heap order."""
    j = 0
    while True:
        c = 2 * j + 1
        if c >= m:
            break
        if c + 1 < m and _worse(hv[c + 1], hi[c + 1], hv[c], hi[c]):
            c += 1
        if not _worse(hv[c], hi[c], v, i):
            break
        hv[j] = hv[c]
        hi[j] = hi[c]
        j = c
    hv[j] = v
    hi[j] = i


@njit(inline="always", cache=CACHE)
def _sift_up(hv: np.ndarray, hi: np.ndarray, v: np.float32, i: np.int64, m: int) -> None:
    """Put (v, i) at position m, the end of the heap hv[:m], and restore the heap order."""
    j = m
    while j > 0:
        p = (j - 1) >> 1
        if not _worse(v, i, hv[p], hi[p]):
            break
        hv[j] = hv[p]
        hi[j] = hi[p]
        j = p
    hv[j] = v
    hi[j] = i


# No nogil: it runs for tens of microseconds, and a caller that keeps the GIL throughout
# never waits to take it back from a busy thread (the TUI drawing, a server's event loop).
@njit(cache=CACHE)
def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest of `values` (float32, 1-D), best first, ties by lower index."""
    n = values.size
    k = max(0, min(k, n))
    if k > n // 8:                      # most of the row: a stable sort is quicker than the heap
        return np.argsort(-values, kind="mergesort")[:k]
    hv = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    m = 0
    for i in range(n):
        v = values[i]
        if m < k:                       # filling
            _sift_up(hv, hi, v, i, m)
            m += 1
        elif k > 0 and v > hv[0]:       # an equal value has a higher index: it loses
            _sift_down(hv, hi, v, i, k)
    for end in range(k - 1, 0, -1):     # heap sort: the worst left goes last
        v, i = hv[end], hi[end]
        hv[end], hi[end] = hv[0], hi[0]
        _sift_down(hv, hi, v, i, end)
    return hi
