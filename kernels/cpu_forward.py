"""The whole transformer forward as one Numba function (CPU decode and prefill).

Why one function: a Python loop over layers makes ~100 kernel calls per token, and each
call costs Numba dispatch plus a thread-pool fork/join. Here a token costs 5 parallel
regions per layer (q/k/v; attention; wo + residual; w1/w3 + SwiGLU; w2 + residual) plus
the classifier.

Weights are described by tables, not by arguments: every matrix is a row of five int64
(type code, address of its bytes, address of its int8 scales, bytes per row, int8 group
size), so each matrix of each layer can have its own storage type (a GGUF Q4_K_M file
mixes Q4_K, Q6_K, Q5_0...) and the function has one signature whatever the model: it
compiles once. Each row goes through the `cpu_blocks` row kernels, which dispatch on the
type. The caller keeps the memory those addresses point into alive.

A call runs T tokens, token t at position positions[t] of KV-cache slot slots[t]: a
prompt chunk is T consecutive positions of one slot, a batched decode step one token
of each of several sequences. Keys and values of all T tokens are written first, so a
prompt attends causally within itself. Logits are computed for the tokens listed in
`logit_rows` only.

Every function here is `nogil`, and its parallel regions take no GIL either
(`numba_gil`): a busy Python thread beside the forward (the TUI, a server) does not
stall each region.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from . import numba_setup  # noqa: F401  (thread pool and CPU features, before compiling)
from .cpu_attention import weighted_sum_64, weighted_sum_128
from .cpu_blocks import (I8, MULTI, block_sums, dequant_row, f32_at, row_at, row_dot_xs, rows_dot_multi,
                          rows_dot_pair)
from .cpu_gemm import TILE_ROWS, TILE_TOKENS, tile, transpose16
from .cpu_vexp import exp_sum, silu_mul

#: Reassociation lets LLVM vectorize the sums; no "no-NaN/no-Inf" assumptions, so the
#: softmax's running max and an overflowing exp in SiLU stay IEEE-correct.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
_FAST = dict(nogil=True, cache=numba_setup.CACHE, fastmath=_FASTMATH, boundscheck=False, error_model="numpy")

#: Columns of a weight table row.
CODE, ADDR, SADDR, ROW_BYTES, GROUP = range(5)
#: Rows of the per-layer table, in this order.
WQ, WK, WV, WO, W1, W2, W3 = range(7)
#: Rows a batch of tokens processes per parallel iteration (dequantized into one buffer).
_CHUNK = 16
#: Batches up to this many tokens use the multi-token row kernel (see rows_tokens).
FUSED_TOKENS = 8
#: Batches of at least this many tokens use `cpu_gemm`'s tiles (see rows_tokens).
GEMM_TOKENS = 32


@njit(inline="always", **_FAST)
def _row(tab: np.ndarray, r: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, int8 scales) of row r of the matrix a table row describes (n values a row)."""
    rb = tab[ROW_BYTES]
    w = row_at(tab[ADDR] + r * rb, rb)
    if tab[CODE] == I8:
        ng = n // tab[GROUP]
        s = f32_at(tab[SADDR] + r * ng * 4, ng)
    else:
        s = f32_at(tab[SADDR], 1)
    return w, s


@njit(inline="always", **_FAST)
def _put(out: np.ndarray, t: int, col: int, add: bool, v: np.float32) -> None:
    """out[t, col] += v (a residual) or = v."""
    if add:
        out[t, col] += v
    else:
        out[t, col] = v


@njit(inline="always", **_FAST)
def _block4x4(out: np.ndarray, add: bool, buf: np.ndarray, i: int, r: int, x: np.ndarray, t: int) -> None:
    """out[t..t+3, r..r+3] (+)= buf[i..i+3] . x[t..t+3]: sixteen accumulators, each weight
    and activation load feeding four FMAs (a 1 x 4 loop is bound by loads, this by FMAs)."""
    n = x.shape[1]
    w0, w1, w2, w3 = buf[i], buf[i + 1], buf[i + 2], buf[i + 3]
    x0, x1, x2, x3 = x[t], x[t + 1], x[t + 2], x[t + 3]
    z = np.float32(0.0)
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = z
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = z
    for j in range(n):
        p0, p1, p2, p3 = x0[j], x1[j], x2[j], x3[j]
        q = w0[j]
        a00 += q * p0
        a01 += q * p1
        a02 += q * p2
        a03 += q * p3
        q = w1[j]
        a10 += q * p0
        a11 += q * p1
        a12 += q * p2
        a13 += q * p3
        q = w2[j]
        a20 += q * p0
        a21 += q * p1
        a22 += q * p2
        a23 += q * p3
        q = w3[j]
        a30 += q * p0
        a31 += q * p1
        a32 += q * p2
        a33 += q * p3
    _put(out, t, r, add, a00)
    _put(out, t + 1, r, add, a01)
    _put(out, t + 2, r, add, a02)
    _put(out, t + 3, r, add, a03)
    _put(out, t, r + 1, add, a10)
    _put(out, t + 1, r + 1, add, a11)
    _put(out, t + 2, r + 1, add, a12)
    _put(out, t + 3, r + 1, add, a13)
    _put(out, t, r + 2, add, a20)
    _put(out, t + 1, r + 2, add, a21)
    _put(out, t + 2, r + 2, add, a22)
    _put(out, t + 3, r + 2, add, a23)
    _put(out, t, r + 3, add, a30)
    _put(out, t + 1, r + 3, add, a31)
    _put(out, t + 2, r + 3, add, a32)
    _put(out, t + 3, r + 3, add, a33)


@njit(**_FAST)
def rows_tokens(out: np.ndarray, add: bool, tab: np.ndarray, r0: int, r1: int, x: np.ndarray,
                xs: np.ndarray, xt: np.ndarray, buf: np.ndarray) -> None:
    """out[t, r] (+)= row r . x[t] for rows r0 <= r < r1 and every token t (a prompt batch,
    or one token of each of several sequences); xs[t] holds x[t]'s 32-value block sums.

    Up to FUSED_TOKENS tokens: rows go in pairs, each row's blocks decoded once per MULTI
    tokens (`rows_dot_multi`; two left over go through `rows_dot_pair`, one through the
    single-token dot; the rows stay in L1 between groups), and each token's sum is
    bit-identical to the single-token decode path's, so a sequence's output does not
    depend on what it is batched with. More (a prompt): the rows are dequantized once
    into `buf` (rows x n, L1/L2 resident) and multiplied by the tokens: from GEMM_TOKENS
    tokens on, in `cpu_gemm` tiles of 8 rows x 32 tokens against xt, the activations
    transposed (`transpose_tokens`); fewer, in 4 x 4 blocks of rows and tokens. Prefill
    is compute bound on fp32 FMAs, not on decoding blocks. Deliberately not inlined: it
    is called from every parallel region.
    """
    T, n = x.shape
    code, gs = tab[CODE], tab[GROUP]
    if T <= FUSED_TOKENS:
        o = buf[_CHUNK, :2 * MULTI]
        full = T - T % MULTI
        rest = T - full            # 1: one token alone; 2: a pair; 3: a padded group
        for ra in range(r0, r1, 2):
            both = 2 if ra + 1 < r1 else 1     # an odd last row runs as both rows, kept once
            wa, sa = _row(tab, ra, n)
            wb, sb = _row(tab, ra + both - 1, n)
            for t in range(0, full, MULTI):
                rows_dot_multi(code, wa, sa, wb, sb, gs, x, xs, (t, t + 1, t + 2, t + 3), o)
                for j in range(both):
                    for k in range(MULTI):
                        _put(out, t + k, ra + j, add, o[j * MULTI + k])
            if rest == 1:
                _put(out, full, ra, add, row_dot_xs(code, wa, sa, gs, x[full], xs[full]))
                if both == 2:
                    _put(out, full, ra + 1, add, row_dot_xs(code, wb, sb, gs, x[full], xs[full]))
            elif rest == 2:
                rows_dot_pair(code, wa, sa, wb, sb, gs, x, xs, full, full + 1, o)
                for j in range(both):
                    _put(out, full, ra + j, add, o[2 * j])
                    _put(out, full + 1, ra + j, add, o[2 * j + 1])
            elif rest == 3:
                rows_dot_multi(code, wa, sa, wb, sb, gs, x, xs, (full, full + 1, full + 2, full + 2), o)
                for j in range(both):
                    for k in range(3):
                        _put(out, full + k, ra + j, add, o[j * MULTI + k])
        return
    nr = r1 - r0
    for i in range(nr):
        w, s = _row(tab, r0 + i, n)
        dequant_row(code, w, s, gs, buf[i, :n])
    if T >= GEMM_TOKENS:
        n_tiles = (nr + TILE_ROWS - 1) // TILE_ROWS   # rows past nr: buf's spare rows, not stored
        ct = np.empty((n_tiles, TILE_ROWS, TILE_TOKENS), np.float32)
        ct2 = ct.reshape((n_tiles * TILE_ROWS, TILE_TOKENS))       # (row, token)
        cto = np.empty((TILE_TOKENS, _CHUNK), np.float32)          # (token, row)
        for t0 in range(0, T, TILE_TOKENS):
            for h in range(n_tiles):
                tile(buf, h * TILE_ROWS, xt, t0, n, ct[h])
            if nr == _CHUNK and T - t0 >= TILE_TOKENS:   # a whole chunk: a token's rows as vectors
                for tb in range(0, TILE_TOKENS, 16):
                    transpose16(ct2, 0, tb, cto)
                for t in range(TILE_TOKENS):
                    o = out[t0 + t, r0:r0 + _CHUNK]
                    c = cto[t]
                    if add:
                        for i in range(_CHUNK):
                            o[i] += c[i]
                    else:
                        for i in range(_CHUNK):
                            o[i] = c[i]
                continue
            for t in range(min(TILE_TOKENS, T - t0)):   # a token's rows are contiguous in out
                for i in range(nr):
                    _put(out, t0 + t, r0 + i, add, ct2[i, t])
        return
    t4 = T - T % 4
    r4 = nr - nr % 4
    for t in range(0, t4, 4):
        for i in range(0, r4, 4):
            _block4x4(out, add, buf, i, r0 + i, x, t)
    for i in range(r4, nr):          # rows left over: one row, every token
        for t in range(T):
            _put(out, t, r0 + i, add, _fdot(buf[i, :n], x[t]))
    for t in range(t4, T):           # tokens left over: the 4-row blocks
        for i in range(r4):
            _put(out, t, r0 + i, add, _fdot(buf[i, :n], x[t]))


@njit(**_FAST)
def token_block_sums(x: np.ndarray, xs: np.ndarray) -> None:
    """xs[t] = the 32-value block sums of x[t] (see `block_sums`), for every token of a
    batch that `rows_tokens` runs through the row kernels (a prompt's dequantized rows
    never read them: then nothing, as this runs serially between parallel regions)."""
    if x.shape[0] > FUSED_TOKENS:
        return
    for t in range(x.shape[0]):
        block_sums(x[t], xs[t])


@njit(inline="always", **_FAST)
def _fdot(a: np.ndarray, b: np.ndarray) -> np.float32:
    acc = np.float32(0.0)
    for j in range(a.shape[0]):
        acc += a[j] * b[j]
    return acc


@njit(inline="always", **_FAST)
def _dot1(tab: np.ndarray, r: int, x: np.ndarray, xs: np.ndarray) -> np.float32:
    """Row r . x for one token (the decode path: no buffer, no batch loop); xs holds x's
    32-value block sums, which Q4_K rows use to take their mins out of the inner loop."""
    w, s = _row(tab, r, x.shape[0])
    return row_dot_xs(tab[CODE], w, s, tab[GROUP], x, xs)


@njit(**_FAST)
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


@njit(**_FAST)
def rope(x: np.ndarray, positions: np.ndarray, cos: np.ndarray, sin: np.ndarray, head_dim: int,
         neox: bool) -> None:
    """Rotate every head of x[t] by its position's angles: pairs (2i, 2i+1) (interleaved,
    Meta/llama.cpp `llama`) or (i, i + head_dim/2) (NEOX: HF checkpoints, Qwen2)."""
    T, n = x.shape
    half = head_dim // 2
    for t in range(T):
        c = cos[positions[t]]
        s = sin[positions[t]]
        for h0 in range(0, n, head_dim):
            xh = x[t, h0:h0 + head_dim]
            if neox:
                for i in range(half):
                    a, b = xh[i], xh[i + half]
                    xh[i] = a * c[i] - b * s[i]
                    xh[i + half] = a * s[i] + b * c[i]
            else:
                for i in range(half):
                    a, b = xh[2 * i], xh[2 * i + 1]
                    xh[2 * i] = a * c[i] - b * s[i]
                    xh[2 * i + 1] = a * s[i] + b * c[i]


@njit(parallel=True, **_FAST)
def attention(out: np.ndarray, q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, layer: int,
              positions: np.ndarray, slots: np.ndarray, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
    """Causal attention of T queries, token t over positions 0..positions[t] of its slot.

    One (token, head) pair per parallel iteration; the score dots are SIMD loops over
    head_dim, the exponentials `cpu_vexp`'s and the weighted sum of values
    `cpu_attention`'s vector kernels (a loop for head widths they lack). Every token runs
    the same code whatever its batch, so its result does not depend on it. Grouped-query
    attention: query head h reads key/value head h // (n_heads / n_kv_heads). Iterations run head-major, so each thread
    of a prompt batch takes whole heads (their keys and values stay in its cache) and
    gets early and late tokens alike (token-major, one thread had all the long rows).
    """
    T = q.shape[0]
    kv_mul = n_heads // n_kv_heads
    scale = np.float32(1.0) / np.float32(math.sqrt(head_dim))
    for idx in prange(T * n_heads):
        h = idx // T
        t = idx - h * T
        n_pos = positions[t] + 1
        keys = k_cache[slots[t], layer, h // kv_mul]      # (context, head_dim): one contiguous stream
        values = v_cache[slots[t], layer, h // kv_mul]
        qv = q[t, h * head_dim:(h + 1) * head_dim]
        att = np.empty(n_pos, dtype=np.float32)
        mx = np.float32(-3.4e38)
        for p in range(n_pos):
            sc = np.float32(0.0)
            for j in range(head_dim):
                sc += qv[j] * keys[p, j]
            sc *= scale
            att[p] = sc
            mx = max(mx, sc)
        total = exp_sum(att, n_pos, mx)
        inv = np.float32(1.0) / total
        o = out[t, h * head_dim:(h + 1) * head_dim]
        if head_dim == 64:
            weighted_sum_64(o, att, values, n_pos, inv)
        elif head_dim == 128:
            weighted_sum_128(o, att, values, n_pos, inv)
        else:
            acc = np.zeros(head_dim, dtype=np.float32)
            for p in range(n_pos):
                a = att[p]
                for j in range(head_dim):
                    acc[j] += a * values[p, j]
            for j in range(head_dim):
                o[j] = acc[j] * inv


@njit(inline="always", **_FAST)
def _tile_tokens(T: int) -> int:
    """T rounded up to whole tiles of tokens, or 0 when T is below GEMM_TOKENS."""
    return (T + TILE_TOKENS - 1) // TILE_TOKENS * TILE_TOKENS * min(T // GEMM_TOKENS, 1)


@njit(inline="always", **_FAST)
def transposed_scratch(T: int, width: int) -> np.ndarray:
    """The flat buffer `tokens_transposed` fills: width x `_tile_tokens(T)` values."""
    return np.zeros(width * _tile_tokens(T), np.float32)


@njit(inline="always", **_FAST)
def tokens_transposed(x: np.ndarray, xtf: np.ndarray) -> np.ndarray:
    """`transpose_tokens(x, xtf)` where the tiles will read it; below GEMM_TOKENS an empty
    view, without the parallel region."""
    if x.shape[0] >= GEMM_TOKENS:
        return transpose_tokens(x, xtf)
    return xtf[:0].reshape((0, 0))


@njit(parallel=True, **_FAST)
def transpose_tokens(x: np.ndarray, xtf: np.ndarray) -> np.ndarray:
    """x (T, n) transposed into xtf as an (n, Tp) view, Tp = `_tile_tokens(T)` (padding
    zero), for `cpu_gemm.tile`."""
    T, n = x.shape
    tp = _tile_tokens(T)
    xt = xtf[:n * tp].reshape((n, tp))
    n_blocks = (n + 15) // 16 * min(tp, 1)    # arithmetic: prange(a if c else b) runs on one thread
    t16 = T - T % 16
    for jb in prange(n_blocks):
        j0 = jb * 16
        j1 = min(n, j0 + 16)
        t_rest = 0
        if j1 - j0 == 16:            # whole 16 x 16 blocks in registers, the rest by value
            for t0 in range(0, t16, 16):
                transpose16(x, t0, j0, xt)
            t_rest = t16
        for t in range(t_rest, tp):
            if t < T:
                for j in range(j0, j1):
                    xt[j, t] = x[t, j]
            else:
                for j in range(j0, j1):
                    xt[j, t] = np.float32(0.0)
    return xt


def scratch(threads: int, T: int, width: int) -> np.ndarray:
    """The per-thread buffers `forward` takes, (threads, _CHUNK + 1, width) float32 for
    a call of T tokens run on `threads` Numba threads (width: the widest activation):
    the thread with numba.get_thread_id() == i uses bufs[i]. The caller allocates (and
    may keep) them, so the parallel loops allocate nothing per chunk of rows. Empty for
    one token, which never uses them. Rows are padded by one cache line: at a width of
    a multiple of 1024 values the tiles' eight rows would share one set of L1 lines
    (4 KiB aliasing)."""
    return np.empty((threads if T > 1 else 0, _CHUNK + 1, width + 16), np.float32)


@njit(parallel=True, **_FAST)
def _matmul(out: np.ndarray, add: bool, tab: np.ndarray, x: np.ndarray, bufs: np.ndarray,
            xtf: np.ndarray) -> None:
    """out[t, :] (+)= W . x[t] for one matrix (rows = out.shape[1]); bufs from `scratch`,
    xtf from `transposed_scratch`."""
    T, n = x.shape
    rows = out.shape[1]
    n_chunks = (rows + _CHUNK - 1) // _CHUNK
    x0 = x[0]
    xs = np.empty((T, n // 32), np.float32)
    token_block_sums(x, xs)
    xs0 = xs[0]
    xt = tokens_transposed(x, xtf)
    if T == 1:    # one region, not two: an empty one still wakes the threads
        for r in prange(rows):
            v = _dot1(tab, r, x0, xs0)
            if add:
                out[0, r] += v
            else:
                out[0, r] = v
    else:
        for c in prange(n_chunks):
            rows_tokens(out, add, tab, c * _CHUNK, min(rows, (c + 1) * _CHUNK), x, xs, xt,
                        bufs[numba.get_thread_id()])


@njit(parallel=True, **_FAST)
def forward(tokens: np.ndarray, positions: np.ndarray, slots: np.ndarray,
            x: np.ndarray, xb: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
            att: np.ndarray, hb: np.ndarray, h3: np.ndarray, xc: np.ndarray,
            logits: np.ndarray, logit_rows: np.ndarray, bufs: np.ndarray,
            mtab: np.ndarray, etab: np.ndarray, ctab: np.ndarray,
            attn_norm: np.ndarray, ffn_norm: np.ndarray, final_norm: np.ndarray,
            bias: np.ndarray, has_bias: bool,
            k_cache: np.ndarray, v_cache: np.ndarray, cos: np.ndarray, sin: np.ndarray,
            n_heads: int, n_kv_heads: int, head_dim: int, neox: bool, eps: float) -> None:
    """Run T = len(tokens) tokens (see the module docstring); logits[j] for x[logit_rows[j]].

    mtab: (L, 7, 5) weight tables (WQ..W3), etab/ctab: (5,) embedding and classifier.
    Activation buffers are (T, width) and fully overwritten; xc is (K, dim); bufs
    from `scratch` (at least as many as the threads this call runs on).
    bias: (L, q_dim + 2 kv_dim), the q/k/v biases when has_bias.
    """
    T = tokens.shape[0]
    dim = x.shape[1]
    q_dim = q.shape[1]
    kv_dim = k.shape[1]
    hidden = hb.shape[1]
    L = attn_norm.shape[0]
    for t in range(T):
        w, s = _row(etab, tokens[t], dim)
        dequant_row(etab[CODE], w, s, etab[GROUP], x[t])
    n_qkv = q_dim + 2 * kv_dim
    cq = (q_dim + _CHUNK - 1) // _CHUNK
    ckv = (kv_dim + _CHUNK - 1) // _CHUNK
    n_chunk_qkv = cq + 2 * ckv
    n_chunk_h = (hidden + _CHUNK - 1) // _CHUNK
    xb0 = xb[0]
    xsb = np.empty((T, dim // 32), np.float32)   # block sums of the normed activations
    xsd = xsb[0]
    xtf = transposed_scratch(T, max(dim, q_dim, hidden))
    for l in range(L):
        rmsnorm(xb, x, attn_norm[l], eps)
        token_block_sums(xb, xsb)           # for Q4_K rows (row_dot_xs)
        xbt = tokens_transposed(xb, xtf)
        # q, k, v in one parallel region (an empty region would still wake the threads)
        if T == 1:
            for i in prange(n_qkv):
                if i < q_dim:
                    q[0, i] = _dot1(mtab[l, WQ], i, xb0, xsd)
                elif i < q_dim + kv_dim:
                    k[0, i - q_dim] = _dot1(mtab[l, WK], i - q_dim, xb0, xsd)
                else:
                    v[0, i - q_dim - kv_dim] = _dot1(mtab[l, WV], i - q_dim - kv_dim, xb0, xsd)
        else:
            for c in prange(n_chunk_qkv):
                buf = bufs[numba.get_thread_id()]
                if c < cq:
                    rows_tokens(q, False, mtab[l, WQ], c * _CHUNK, min(q_dim, (c + 1) * _CHUNK), xb, xsb, xbt, buf)
                elif c < cq + ckv:
                    c0 = (c - cq) * _CHUNK
                    rows_tokens(k, False, mtab[l, WK], c0, min(kv_dim, c0 + _CHUNK), xb, xsb, xbt, buf)
                else:
                    c0 = (c - cq - ckv) * _CHUNK
                    rows_tokens(v, False, mtab[l, WV], c0, min(kv_dim, c0 + _CHUNK), xb, xsb, xbt, buf)
        if has_bias:
            for t in range(T):
                for i in range(q_dim):
                    q[t, i] += bias[l, i]
                for i in range(kv_dim):
                    k[t, i] += bias[l, q_dim + i]
                    v[t, i] += bias[l, q_dim + kv_dim + i]
        rope(q, positions, cos, sin, head_dim, neox)
        rope(k, positions, cos, sin, head_dim, neox)
        # Serial, in one compiled copy for every T: a prange copy of this arithmetic for
        # prompts can be contracted into FMAs differently and break batched == alone (see
        # DEVELOPERS.md). Explicit loops: a slice assignment would be a parallel region.
        for t in range(T):
            kc = k_cache[slots[t], l]
            vc = v_cache[slots[t], l]
            p = positions[t]
            for kh in range(n_kv_heads):
                for j in range(head_dim):
                    kc[kh, p, j] = k[t, kh * head_dim + j]
                    vc[kh, p, j] = v[t, kh * head_dim + j]
        attention(att, q, k_cache, v_cache, l, positions, slots, n_heads, n_kv_heads, head_dim)
        _matmul(x, True, mtab[l, WO], att, bufs, xtf)
        rmsnorm(xb, x, ffn_norm[l], eps)
        token_block_sums(xb, xsb)
        xbt = tokens_transposed(xb, xtf)
        # w1, w3 and SwiGLU (one token: its vector pass follows the region)
        if T == 1:
            for i in prange(hidden):
                hb[0, i] = _dot1(mtab[l, W1], i, xb0, xsd)
                h3[0, i] = _dot1(mtab[l, W3], i, xb0, xsd)
            silu_mul(hb[0], h3[0], 0, hidden)
        else:
            for c in prange(n_chunk_h):
                buf = bufs[numba.get_thread_id()]
                r0, r1 = c * _CHUNK, min(hidden, (c + 1) * _CHUNK)
                rows_tokens(hb, False, mtab[l, W1], r0, r1, xb, xsb, xbt, buf)
                rows_tokens(h3, False, mtab[l, W3], r0, r1, xb, xsb, xbt, buf)
                for t in range(T):
                    silu_mul(hb[t], h3[t], r0, r1)
        _matmul(x, True, mtab[l, W2], hb, bufs, xtf)
    K = logit_rows.shape[0]
    for j in range(K):
        rmsnorm(xc[j:j + 1], x[logit_rows[j]:logit_rows[j] + 1], final_norm, eps)
    _matmul(logits, False, ctab, xc, bufs, xtf)


@njit(parallel=True, **_FAST)
def dequantize_rows(tab: np.ndarray, out: np.ndarray) -> None:
    """out[r] = row r of the matrix `tab` describes, as fp32."""
    rows, n = out.shape
    for r in prange(rows):
        w, s = _row(tab, r, n)
        dequant_row(tab[CODE], w, s, tab[GROUP], out[r])
