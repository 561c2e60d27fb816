"""The memory-bandwidth yardstick decode speed is compared against (`llama-chat bench`).

Decode at batch 1 streams every weight once per token, so the fraction of the machine's
streaming rate it reaches says how close to the limit the kernels are. The yardstick reads
a buffer the way the matvec reads weight rows (rows split across threads, vectorized sums,
software prefetch), i.e. the matvec's access pattern without its arithmetic.
"""
from __future__ import annotations

import time

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import numba_setup

_FAST = dict(nogil=True, cache=numba_setup.CACHE, fastmath={"reassoc", "contract", "nsz", "arcp"},
             boundscheck=False, error_model="numpy")

#: How far ahead of the row being multiplied to prefetch, in bytes. The int8 loop does
#: enough arithmetic per byte that the hardware prefetcher (which stops at 4 KiB pages)
#: falls behind: measured on one core, explicit prefetch 2 KiB ahead lifts a DRAM-bound
#: int8 matvec from ~7 to ~13 GB/s, i.e. to the core's streaming-read rate.
PREFETCH_BYTES = 2048


@intrinsic
def prefetch(typingctx, arr, idx):
    """Hint the cache to fetch `arr[idx]` (LLVM's llvm.prefetch: read, keep, data).

    Never faults, so indices past the end of the array are harmless.
    """
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [i8p, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


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
