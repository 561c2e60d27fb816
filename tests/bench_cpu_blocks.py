"""Throughput of kernels.cpu_blocks per weight type on a stories110M-sized decode step.

A script, not a test:  PYTHONPATH=$PWD python tests/bench_cpu_blocks.py [TYPE ...]
                       [--threads N] [--pairs N] [--prefill]

One "token" is a matvec over every matrix of a stories110M-shaped model (12 layers of
768x768 q/k/v/o, 2048x768 w1/w3, 768x2048 w2, plus a 32000x768 classifier: 110M values,
more than any cache), each matrix a `parallel=True` loop over rows calling `row_dot` on
rows made from raw addresses, as the forward does. Every decode measurement is paired
with a plain streaming read of the same bytes taken right after it (this VM's memory
bandwidth drifts 2x within minutes); the figures are medians over the pairs, and
"best" is the fastest token rate of any pair (the least disturbed by other load).

--prefill: dequant_row of every row into a per-thread buffer, then 4 tokens' dots.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numba
import numpy as np
from numba import njit, prange

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels import cpu_blocks as cb  # noqa: E402
from kernels.cpu_blocks import block_sums, dequant_row, prefetch, row_at, row_dot, row_dot_xs  # noqa: E402

DIM, HIDDEN, LAYERS, VOCAB = 768, 2048, 12, 32000
#: (rows, cols) of every matrix of one token, in forward order
SHAPES = [(DIM, DIM)] * 4 + [(HIDDEN, DIM), (HIDDEN, DIM), (DIM, HIDDEN)]
MATRICES = SHAPES * LAYERS + [(VOCAB, DIM)]

#: byte offsets of the fp16 scale fields in each block type (set to finite values)
SCALE_FIELDS = {cb.Q4_0: [0], cb.Q4_1: [0, 2], cb.Q5_0: [0], cb.Q5_1: [0, 2], cb.Q8_0: [0],
                cb.Q2_K: [80, 82], cb.Q3_K: [108], cb.Q4_K: [0, 2], cb.Q5_K: [0, 2], cb.Q6_K: [208],
                cb.IQ4_NL: [0], cb.IQ4_XS: [0]}
I8_GS = 32


@njit(parallel=True, nogil=True, cache=False)
def matvec(code, addr, rows, rb, s, ng, gs, x, out):
    for i in prange(rows):
        out[i] = row_dot(code, row_at(addr + i * rb, rb), s[i * ng:(i + 1) * ng], gs, x)


@njit(parallel=True, nogil=True, cache=False)
def matvec_xs(code, addr, rows, rb, s, ng, gs, x, xs, out):
    """matvec with the block sums of x (row_dot_xs); xs is computed here, once per call,
    as the forward would once per activation vector."""
    block_sums(x, xs)
    for i in prange(rows):
        out[i] = row_dot_xs(code, row_at(addr + i * rb, rb), s[i * ng:(i + 1) * ng], gs, x, xs)


FAST = {"reassoc", "contract", "nsz", "arcp"}


@njit(parallel=True, nogil=True, cache=False, fastmath=FAST)
def prefill4(code, addr, rows, rb, s, ng, gs, x, out):
    """out[t, i] = row i . x[t] for 4 tokens, each row dequantized once into a buffer
    (the way the forward runs a prompt batch)."""
    n = x.shape[1]
    chunk = 16
    x0, x1, x2, x3 = x[0], x[1], x[2], x[3]
    for c in prange((rows + chunk - 1) // chunk):
        buf = np.empty(n, dtype=np.float32)
        for i in range(c * chunk, min(rows, (c + 1) * chunk)):
            dequant_row(code, row_at(addr + i * rb, rb), s[i * ng:(i + 1) * ng], gs, buf)
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            for j in range(n):
                v = buf[j]
                a0 += v * x0[j]
                a1 += v * x1[j]
                a2 += v * x2[j]
                a3 += v * x3[j]
            out[0, i] = a0
            out[1, i] = a1
            out[2, i] = a2
            out[3, i] = a3


@njit(parallel=True, nogil=True, cache=False)
def dequant_all(code, addr, rows, rb, s, ng, gs, n, sink):
    """dequant_row of every row into a per-chunk buffer (nothing else): its own rate."""
    chunk = 16
    for c in prange((rows + chunk - 1) // chunk):
        buf = np.empty(n, dtype=np.float32)
        for i in range(c * chunk, min(rows, (c + 1) * chunk)):
            dequant_row(code, row_at(addr + i * rb, rb), s[i * ng:(i + 1) * ng], gs, buf)
        sink[c] = buf[0]


@njit(parallel=True, nogil=True, cache=False, fastmath=True)
def stream(addr, nbytes):
    """Sum of the bytes at addr.. as uint64 words, 4 KiB per parallel iteration, with
    the prefetch the kernels use: the memory system's rate for the same bytes."""
    step = 4096
    n = nbytes // step
    sums = np.zeros(n, dtype=np.uint64)
    for i in prange(n):
        r = row_at(addr + i * step, step)
        for c in range(0, step, 64):
            prefetch(r, cb.PREFETCH_BYTES + c)
        words = r.view(np.uint64)
        acc = np.uint64(0)
        for j in range(step // 8):
            acc += words[j]
        sums[i] = acc
    return sums.sum()


def make_weights(code: int, rng: np.random.Generator) -> tuple[np.ndarray, list, np.ndarray]:
    """One buffer with every matrix back to back (random blocks, finite scales), the
    (address, rows, row bytes, cols, scale offset) of each, and the I8 scales."""
    total = sum(cb.row_nbytes(code, c) * r for r, c in MATRICES)
    buf = np.empty(total + 4096, dtype=np.uint8)
    chunk = 1 << 24
    for o in range(0, buf.size, chunk):
        buf[o:o + chunk] = rng.integers(0, 256, min(chunk, buf.size - o), dtype=np.uint8)
    per, nb = cb.BLOCK[code]
    if code in SCALE_FIELDS:
        blocks = buf[:total].reshape(-1, nb)
        for off in SCALE_FIELDS[code]:
            halves = (rng.standard_normal(len(blocks)) * 0.01).astype(np.float16)
            blocks[:, off:off + 2] = halves.view(np.uint8).reshape(-1, 2)
    elif code in (cb.F16, cb.BF16, cb.F32):
        vals = buf[:total]
        if code == cb.F32:
            vals.view(np.float32)[:] = rng.standard_normal(total // 4).astype(np.float32)
        elif code == cb.F16:
            vals.view(np.float16)[:] = rng.standard_normal(total // 2).astype(np.float16)
        else:
            vals.view(np.uint16)[:] = (rng.standard_normal(total // 2).astype(np.float32).view(np.uint32) >> 16)
    mats, off, soff = [], 0, 0
    for r, c in MATRICES:
        rb = cb.row_nbytes(code, c)
        mats.append((buf.ctypes.data + off, r, rb, c, soff))
        off += r * rb
        soff += r * (c // I8_GS)
    scales = rng.random(soff, dtype=np.float32) * 0.01 + 0.001
    return buf, mats, scales


@njit(nogil=True, cache=False)
def token_njit(code, table, scales, gs, x_dim, x_hidden, sum_dim, sum_hidden, out, with_sums):
    """Every matrix of one token from inside Numba, as the fused forward runs them (a
    Python loop would add a dispatcher call per matrix, ~10% of a token here)."""
    for m in range(table.shape[0]):
        addr, r, rb, c, so = table[m, 0], table[m, 1], table[m, 2], table[m, 3], table[m, 4]
        ng = c // gs if gs > 0 else 0
        s = scales[so:so + r * ng + 1]
        x = x_dim if c == x_dim.shape[0] else x_hidden
        if with_sums:
            matvec_xs(code, addr, r, rb, s, ng, gs, x, sum_dim if c == x_dim.shape[0] else sum_hidden, out[:r])
        else:
            matvec(code, addr, r, rb, s, ng, gs, x, out[:r])


def decode_token(code, table, scales, xs, outs, sums=None) -> None:
    gs = I8_GS if code == cb.I8 else 0
    sd, sh = (sums[DIM], sums[HIDDEN]) if sums is not None else (xs[DIM][:0], xs[HIDDEN][:0])
    token_njit(code, table, scales, gs, xs[DIM], xs[HIDDEN], sd, sh, outs[VOCAB], sums is not None)


def prefill_token(code, mats, scales, x4s, out4s) -> None:
    ng = 0
    gs = I8_GS if code == cb.I8 else 0
    for addr, r, rb, c, so in mats:
        if code == cb.I8:
            ng = c // I8_GS
        s = scales[so:so + r * ng + 1]
        prefill4(code, addr, r, rb, s, ng, gs, x4s[c], out4s[r])


def dequant_token(code, mats, scales) -> None:
    ng = 0
    gs = I8_GS if code == cb.I8 else 0
    sink = np.empty(VOCAB // 16 + 1, np.float32)
    for addr, r, rb, c, so in mats:
        if code == cb.I8:
            ng = c // I8_GS
        dequant_all(code, addr, r, rb, scales[so:so + r * ng + 1], ng, gs, c, sink)


def timed(fn, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("types", nargs="*", help="type names (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.25, help="per measurement")
    ap.add_argument("--prefill", action="store_true")
    a = ap.parse_args()
    numba.set_num_threads(a.threads)
    by_name = {v: k for k, v in cb.NAMES.items()}
    names = [t.upper() for t in a.types] if a.types else list(cb.NAMES.values()) + ["Q4_K+XS"]
    rng = np.random.default_rng(1)
    xs = {c: rng.standard_normal(c).astype(np.float32) for c in (DIM, HIDDEN)}
    sums = {c: np.empty(c // 32, np.float32) for c in (DIM, HIDDEN)}
    x4s = {c: rng.standard_normal((4, c)).astype(np.float32) for c in (DIM, HIDDEN)}
    outs = {r: np.empty(r, np.float32) for r in (DIM, HIDDEN, VOCAB)}
    out4s = {r: np.empty((4, r), np.float32) for r in (DIM, HIDDEN, VOCAB)}
    n_values = sum(r * c for r, c in MATRICES)
    from app.commands.bench import cpu_model
    print(cpu_model())
    print(f"{n_values / 1e6:.1f}M values per token, {a.threads} threads ({numba.config.THREADING_LAYER} pool), "
          f"medians of {a.pairs} (kernel, stream) pairs")
    print(f"{'type':7} {'MB/tok':>7} {'tok/s':>7} {'GB/s':>6} {'Gval/s':>7} {'stream':>7} {'ratio':>6} {'best':>6}"
          + ("   dequant Gval/s  prefill-4 Gval/s" if a.prefill else ""))
    for name in names:
        with_sums = name.endswith("+XS")
        code = by_name[name.removesuffix("+XS")]
        buf, mats, scales = make_weights(code, rng)
        nbytes = sum(r * rb for _, r, rb, _, _ in mats)
        table = np.array(mats, dtype=np.int64)
        step = lambda: decode_token(code, table, scales, xs, outs, sums if with_sums else None)  # noqa: E731
        strm = lambda: stream(buf.ctypes.data, nbytes)  # noqa: E731
        step()
        strm()
        t1 = timed(step, 1)
        reps = max(1, int(a.seconds / t1))
        ts, ss = [], []
        for _ in range(a.pairs):
            ts.append(timed(step, reps))
            ss.append(timed(strm, reps))
        t, s = float(np.median(ts)), float(np.median(ss))
        label = cb.NAMES[code] + ("+xs" if with_sums else "")
        line = (f"{label:7} {nbytes / 1e6:7.1f} {1 / t:7.0f} {nbytes / t / 1e9:6.1f} {n_values / t / 1e9:7.1f}"
                f" {nbytes / s / 1e9:7.1f} {s / t:6.2f} {1 / min(ts):6.0f}")
        if a.prefill and not with_sums:
            dq = lambda: dequant_token(code, mats, scales)  # noqa: E731
            pf = lambda: prefill_token(code, mats, scales, x4s, out4s)  # noqa: E731
            dq()
            pf()
            td = float(np.median([timed(dq, 1) for _ in range(3)]))
            tp = float(np.median([timed(pf, 1) for _ in range(3)]))
            line += f"   {n_values / td / 1e9:13.1f} {n_values / tp / 1e9:16.1f}"
        print(line, flush=True)
        del buf


if __name__ == "__main__":
    main()
