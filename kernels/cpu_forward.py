"""The whole transformer forward as one Numba function (CPU decode and prefill).

Why one function: a Python loop over layers makes ~100 kernel calls per token, and each
call costs Numba dispatch plus a thread-pool fork/join. Here a token costs 5 parallel
regions per layer (q/k/v; attention; wo + residual; w1/w3 + SwiGLU; w2 + residual) plus
the classifier.

Weights are described by tables, not by arguments: every matrix is a row of five int64
(type code, address of its bytes, address of its int8 scales, bytes per row, int8 group
size), so each matrix of each layer can have its own storage type (a GGUF Q4_K_M file
mixes Q4_K, Q6_K, Q5_0...) and the function has one signature whatever the model: it
compiles once. Each row goes through `cpu_blocks.row_dot`, which dispatches on the type.
The caller keeps the memory those addresses point into alive.

A call runs T tokens, token t at position positions[t] of KV-cache slot slots[t]: a
prompt chunk is T consecutive positions of one slot, a batched decode step one token
of each of several sequences. Keys and values of all T tokens are written first, so a
prompt attends causally within itself. Logits are computed for the tokens listed in
`logit_rows` only.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import carray, njit, prange, types
from numba.extending import intrinsic

from . import numba_setup  # noqa: F401  (thread pool and CPU features, before compiling)
from .cpu_blocks import I8, dequant_row, row_dot

#: Reassociation lets LLVM vectorize the sums; no "no-NaN/no-Inf" assumptions, so the
#: softmax's running max and an overflowing exp in SiLU stay IEEE-correct.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
_FAST = dict(nogil=True, cache=numba_setup.CACHE, fastmath=_FASTMATH, boundscheck=False, error_model="numpy")

#: Columns of a weight table row.
CODE, ADDR, SADDR, ROW_BYTES, GROUP = range(5)
#: Rows of the per-layer table, in this order.
WQ, WK, WV, WO, W1, W2, W3 = range(7)
#: Rows a prompt batch processes per parallel iteration (one dequantized row buffer each).
_CHUNK = 8


@intrinsic
def _u8_ptr(typingctx, addr):
    """An int64 address as a uint8 pointer (for numba.carray)."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())
    return types.CPointer(types.uint8)(types.int64), codegen


@intrinsic
def _f32_ptr(typingctx, addr):
    """An int64 address as a float32 pointer (for numba.carray)."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.FloatType().as_pointer())
    return types.CPointer(types.float32)(types.int64), codegen


@njit(inline="always", **_FAST)
def _row(tab: np.ndarray, r: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, int8 scales) of row r of the matrix a table row describes (n values a row)."""
    rb = tab[ROW_BYTES]
    w = carray(_u8_ptr(tab[ADDR] + r * rb), rb)
    if tab[CODE] == I8:
        ng = n // tab[GROUP]
        s = carray(_f32_ptr(tab[SADDR] + r * ng * 4), ng)
    else:
        s = carray(_f32_ptr(tab[SADDR]), 1)
    return w, s


@njit(**_FAST)
def row_tokens(out: np.ndarray, col: int, add: bool, tab: np.ndarray, r: int, x: np.ndarray,
               buf: np.ndarray) -> None:
    """out[t, col] (+)= row r . x[t] for every token t (a prompt batch or several sequences).

    Few tokens: one row_dot per token. More: the row is dequantized once into `buf` (L1
    resident) and dotted with four tokens per pass, so prefill is compute bound on fp32
    FMAs rather than on decoding blocks T times. Deliberately not inlined: it is called
    from every parallel region and would multiply the forward's compile time.
    """
    T, n = x.shape
    w, s = _row(tab, r, n)
    code, gs = tab[CODE], tab[GROUP]
    if T < 4:
        for t in range(T):
            v = row_dot(code, w, s, gs, x[t])
            if add:
                out[t, col] += v
            else:
                out[t, col] = v
        return
    dequant_row(code, w, s, gs, buf)
    t = 0
    while t < T:
        m = min(4, T - t)
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        if m == 4:
            x0, x1, x2, x3 = x[t], x[t + 1], x[t + 2], x[t + 3]
            for j in range(n):
                b = buf[j]
                a0 += b * x0[j]
                a1 += b * x1[j]
                a2 += b * x2[j]
                a3 += b * x3[j]
        else:
            for i in range(m):
                xi = x[t + i]
                acc = np.float32(0.0)
                for j in range(n):
                    acc += buf[j] * xi[j]
                if i == 0:
                    a0 = acc
                elif i == 1:
                    a1 = acc
                else:
                    a2 = acc
        for i in range(m):
            v = a0 if i == 0 else (a1 if i == 1 else (a2 if i == 2 else a3))
            if add:
                out[t + i, col] += v
            else:
                out[t + i, col] = v
        t += m


@njit(inline="always", **_FAST)
def _dot1(tab: np.ndarray, r: int, x: np.ndarray) -> np.float32:
    """Row r . x for one token (the decode path: no buffer, no batch loop)."""
    w, s = _row(tab, r, x.shape[0])
    return row_dot(tab[CODE], w, s, tab[GROUP], x)


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
        p = positions[t]
        for h0 in range(0, n, head_dim):
            for i in range(half):
                c = cos[p, i]
                s = sin[p, i]
                if neox:
                    ia, ib = h0 + i, h0 + i + half
                else:
                    ia, ib = h0 + 2 * i, h0 + 2 * i + 1
                a = x[t, ia]
                b = x[t, ib]
                x[t, ia] = a * c - b * s
                x[t, ib] = a * s + b * c


@njit(parallel=True, **_FAST)
def attention(out: np.ndarray, q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, layer: int,
              positions: np.ndarray, slots: np.ndarray, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
    """Causal attention of T queries, token t over positions 0..positions[t] of its slot.

    One (token, head) pair per parallel iteration; the score dots and the weighted sum of
    values are SIMD loops over head_dim. Grouped-query attention: query head h reads
    key/value head h // (n_heads / n_kv_heads).
    """
    T = q.shape[0]
    kv_mul = n_heads // n_kv_heads
    scale = np.float32(1.0) / np.float32(math.sqrt(head_dim))
    for idx in prange(T * n_heads):
        t = idx // n_heads
        h = idx - t * n_heads
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
        total = np.float32(0.0)
        for p in range(n_pos):
            e = np.float32(math.exp(att[p] - mx))
            att[p] = e
            total += e
        acc = np.zeros(head_dim, dtype=np.float32)
        for p in range(n_pos):
            a = att[p]
            for j in range(head_dim):
                acc[j] += a * values[p, j]
        inv = np.float32(1.0) / total
        o = out[t, h * head_dim:(h + 1) * head_dim]
        for j in range(head_dim):
            o[j] = acc[j] * inv


@njit(parallel=True, **_FAST)
def _matmul(out: np.ndarray, add: bool, tab: np.ndarray, x: np.ndarray) -> None:
    """out[t, :] (+)= W . x[t] for one matrix (rows = out.shape[1])."""
    T, n = x.shape
    rows = out.shape[1]
    n_dec = rows if T == 1 else 0
    n_chunks = 0 if T == 1 else (rows + _CHUNK - 1) // _CHUNK
    x0 = x[0]
    for r in prange(n_dec):
        v = _dot1(tab, r, x0)
        if add:
            out[0, r] += v
        else:
            out[0, r] = v
    for c in prange(n_chunks):
        buf = np.empty(n, np.float32)
        for r in range(c * _CHUNK, min(rows, (c + 1) * _CHUNK)):
            row_tokens(out, r, add, tab, r, x, buf)


@njit(parallel=True, **_FAST)
def forward(tokens: np.ndarray, positions: np.ndarray, slots: np.ndarray,
            x: np.ndarray, xb: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
            att: np.ndarray, hb: np.ndarray, h3: np.ndarray, xc: np.ndarray,
            logits: np.ndarray, logit_rows: np.ndarray,
            mtab: np.ndarray, etab: np.ndarray, ctab: np.ndarray,
            attn_norm: np.ndarray, ffn_norm: np.ndarray, final_norm: np.ndarray,
            bias: np.ndarray, has_bias: bool,
            k_cache: np.ndarray, v_cache: np.ndarray, cos: np.ndarray, sin: np.ndarray,
            n_heads: int, n_kv_heads: int, head_dim: int, neox: bool, eps: float) -> None:
    """Run T = len(tokens) tokens (see the module docstring); logits[j] for x[logit_rows[j]].

    mtab: (L, 7, 5) weight tables (WQ..W3), etab/ctab: (5,) embedding and classifier.
    Activation buffers are (T, width) and fully overwritten; xc is (K, dim).
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
    n_dec_qkv = n_qkv if T == 1 else 0
    n_chunk_qkv = 0 if T == 1 else (n_qkv + _CHUNK - 1) // _CHUNK
    n_dec_h = hidden if T == 1 else 0
    n_chunk_h = 0 if T == 1 else (hidden + _CHUNK - 1) // _CHUNK
    xb0 = xb[0]
    for l in range(L):
        rmsnorm(xb, x, attn_norm[l], eps)
        # q, k, v in one parallel region (one of the two loops has no iterations)
        for i in prange(n_dec_qkv):
            if i < q_dim:
                q[0, i] = _dot1(mtab[l, WQ], i, xb0)
            elif i < q_dim + kv_dim:
                k[0, i - q_dim] = _dot1(mtab[l, WK], i - q_dim, xb0)
            else:
                v[0, i - q_dim - kv_dim] = _dot1(mtab[l, WV], i - q_dim - kv_dim, xb0)
        for c in prange(n_chunk_qkv):
            buf = np.empty(dim, np.float32)
            for i in range(c * _CHUNK, min(n_qkv, (c + 1) * _CHUNK)):
                if i < q_dim:
                    row_tokens(q, i, False, mtab[l, WQ], i, xb, buf)
                elif i < q_dim + kv_dim:
                    row_tokens(k, i - q_dim, False, mtab[l, WK], i - q_dim, xb, buf)
                else:
                    row_tokens(v, i - q_dim - kv_dim, False, mtab[l, WV], i - q_dim - kv_dim, xb, buf)
        if has_bias:
            for t in range(T):
                for i in range(q_dim):
                    q[t, i] += bias[l, i]
                for i in range(kv_dim):
                    k[t, i] += bias[l, q_dim + i]
                    v[t, i] += bias[l, q_dim + kv_dim + i]
        rope(q, positions, cos, sin, head_dim, neox)
        rope(k, positions, cos, sin, head_dim, neox)
        for t in range(T):
            for kh in range(n_kv_heads):
                for j in range(head_dim):
                    k_cache[slots[t], l, kh, positions[t], j] = k[t, kh * head_dim + j]
                    v_cache[slots[t], l, kh, positions[t], j] = v[t, kh * head_dim + j]
        attention(att, q, k_cache, v_cache, l, positions, slots, n_heads, n_kv_heads, head_dim)
        _matmul(x, True, mtab[l, WO], att)
        rmsnorm(xb, x, ffn_norm[l], eps)
        # w1, w3 and SwiGLU in one region
        for i in prange(n_dec_h):
            a = _dot1(mtab[l, W1], i, xb0)
            hb[0, i] = a * (np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-a)))) * _dot1(mtab[l, W3], i, xb0)
        for c in prange(n_chunk_h):
            buf = np.empty(dim, np.float32)
            for i in range(c * _CHUNK, min(hidden, (c + 1) * _CHUNK)):
                row_tokens(hb, i, False, mtab[l, W1], i, xb, buf)
                row_tokens(h3, i, False, mtab[l, W3], i, xb, buf)
                for t in range(T):
                    a = hb[t, i]
                    hb[t, i] = a * (np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-a)))) * h3[t, i]
        _matmul(x, True, mtab[l, W2], hb)
    K = logit_rows.shape[0]
    for j in range(K):
        rmsnorm(xc[j:j + 1], x[logit_rows[j]:logit_rows[j] + 1], final_norm, eps)
    _matmul(logits, False, ctab, xc)


@njit(parallel=True, **_FAST)
def dequantize_rows(tab: np.ndarray, out: np.ndarray) -> None:
    """out[r] = row r of the matrix `tab` describes, as fp32."""
    rows, n = out.shape
    for r in prange(rows):
        w, s = _row(tab, r, n)
        dequant_row(tab[CODE], w, s, tab[GROUP], out[r])
