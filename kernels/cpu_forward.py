"""The whole transformer forward as one Numba function (CPU decode and prefill).

Why one function: a Python loop over layers makes ~100 kernel calls per token, and each
call costs Numba dispatch plus a thread-pool fork/join; at 200+ tok/s that overhead is a
large part of the token budget. Here a token costs 5 parallel regions per layer (fused
q/k/v; attention; wo + residual; w1/w3 + SwiGLU; w2 + residual) plus the classifier.

Weights arrive as one flat 1-D array per matrix kind with a per-layer stride, so both
contiguous `(L, out, in)` stacks and llama2.c v2 files (each layer's values followed by
its scales) are zero-copy views, and every row is a contiguous run the LLVM vectorizer
turns into SIMD loads. int8 rows are widened to fp32 on the fly (W8A32); `gs == 0`
marks float (fp32/fp16) weights.
"""
from __future__ import annotations

import math
import os

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic


def _configure_numba() -> None:
    """Pick the thread pool and let LLVM use 512-bit vectors; must run before compiling.

    OpenMP's pool forks/joins a parallel region in a few microseconds (the forward has
    ~60 per token), faster than the default workqueue. On AVX-512 CPUs LLVM defaults to
    256-bit vectors ("prefer-256-bit"); the int8 matvec is limited by widen+convert
    instructions, so full-width vectors are measurably faster. Users' NUMBA_* settings win.
    """
    cfg = numba.config
    if os.environ.get("NUMBA_THREADING_LAYER") is None and cfg.THREADING_LAYER == "default":
        try:
            from numba.np.ufunc import omppool  # noqa: F401  (needs libgomp)
            cfg.THREADING_LAYER = "omp"
        except ImportError:
            pass
    if cfg.CPU_FEATURES is None and os.environ.get("NUMBA_CPU_FEATURES") is None:
        try:
            import llvmlite.binding as llvm
            feats = llvm.get_host_cpu_features().flatten()
        except Exception:  # noqa: BLE001  (no feature query on this platform: keep defaults)
            return
        if "+avx512f" in feats.split(","):
            cfg.CPU_FEATURES = feats + ",-prefer-256-bit"


_configure_numba()

from .cpu_ops import rmsnorm, rope  # noqa: E402


def threading_layer() -> str:
    """The Numba thread pool in use ('omp', 'workqueue', ...), once a parallel kernel ran."""
    try:
        return numba.threading_layer()
    except ValueError:
        return str(numba.config.THREADING_LAYER)

#: Reassociation lets LLVM vectorize the sums; no "no-NaN/no-Inf" assumptions, so the
#: softmax's running max and an overflowing exp in SiLU stay IEEE-correct.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
_FAST = dict(nogil=True, cache=True, fastmath=_FASTMATH, boundscheck=False, error_model="numpy")

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


def _q8_group_dot(group: int):
    """An intrinsic computing sum_g s[g] * (w[g*group:(g+1)*group] . x[same]) for int8 (or
    float32) `w` and float32 `s`, `x` (contiguous 1-D), as explicit 16-lane LLVM vectors.

    Why not plain Numba loops: LLVM vectorizes the inner loop over a group but reduces it
    to a scalar at every group, and the reduction's shuffles compete with the ones that
    widen int8. Here each group is group/16 widened loads times x, summed as a tree, and
    one multiply-add by the group's scale into an accumulator that runs across the whole
    row; a single reduction ends the row. Measured on a 116 MB int8 matrix, 2 threads:
    group 32 (GGUF Q8_0) 33 -> 59 GB/s, group 64 +8%. The sum order differs from the
    scalar loop's only by rounding.
    """
    lanes = 16
    chunks = group // lanes

    @intrinsic
    def q8_dot(typingctx, w, s, x, n_groups):
        arrays = (w, s, x)
        if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in arrays):
            return None
        if w.dtype not in (types.int8, types.float32) or (s.dtype, x.dtype) != (types.float32, types.float32):
            return None
        widen = w.dtype == types.int8  # float32 rows type-check too: the forward compiles both branches
        sig = types.float32(w, s, x, n_groups)

        def codegen(context, builder, signature, args):
            f32, i64, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
            vf = ir.VectorType(f32, lanes)
            vb = ir.VectorType(ir.IntType(8), lanes) if widen else vf
            fast = ("fast",)
            wp, sp, xp = (context.make_array(t)(context, builder, a).data
                          for t, a in zip(signature.args[:3], args[:3]))
            ng = context.cast(builder, args[3], signature.args[3], types.int64)
            zero = ir.Constant(vf, [0.0] * lanes)
            entry = builder.block
            loop = builder.function.append_basic_block(f"q8g{group}.loop")
            done = builder.function.append_basic_block(f"q8g{group}.done")
            builder.cbranch(builder.icmp_signed(">", ng, ir.Constant(i64, 0)), loop, done)

            builder.position_at_end(loop)
            g = builder.phi(i64)
            acc = builder.phi(vf)
            base = builder.mul(g, ir.Constant(i64, group))
            prods = []
            for k in range(chunks):
                off = builder.add(base, ir.Constant(i64, lanes * k))
                wv = builder.load(builder.bitcast(builder.gep(wp, [off]), vb.as_pointer()), align=1)
                xv = builder.load(builder.bitcast(builder.gep(xp, [off]), vf.as_pointer()), align=4)
                prods.append(builder.fmul(builder.sitofp(wv, vf) if widen else wv, xv, flags=fast))
            while len(prods) > 1:  # a tree, so the products of one group do not wait on each other
                prods = [builder.fadd(prods[i], prods[i + 1], flags=fast) if i + 1 < len(prods) else prods[i]
                         for i in range(0, len(prods), 2)]
            scale = builder.insert_element(ir.Constant(vf, ir.Undefined),
                                           builder.load(builder.gep(sp, [g])), ir.Constant(i32, 0))
            scale = builder.shuffle_vector(scale, ir.Constant(vf, ir.Undefined),
                                           ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))
            acc_next = builder.fadd(acc, builder.fmul(prods[0], scale, flags=fast), flags=fast)
            g_next = builder.add(g, ir.Constant(i64, 1))
            body_end = builder.block
            g.add_incoming(ir.Constant(i64, 0), entry)
            g.add_incoming(g_next, body_end)
            acc.add_incoming(zero, entry)
            acc.add_incoming(acc_next, body_end)
            builder.cbranch(builder.icmp_signed("<", g_next, ng), loop, done)

            builder.position_at_end(done)
            total = builder.phi(vf)
            total.add_incoming(zero, entry)
            total.add_incoming(acc_next, body_end)
            fnty = ir.FunctionType(f32, [f32, vf])
            reduce = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.vector.reduce.fadd.v{lanes}f32")
            return builder.call(reduce, [ir.Constant(f32, -0.0), total], fastmath=("reassoc",))

        return sig, codegen

    return q8_dot


#: The group sizes with a SIMD dot: 64 (our default) and 32 (GGUF Q8_0). Others use loops.
dot_q8_g32 = _q8_group_dot(32)
dot_q8_g64 = _q8_group_dot(64)


@njit(inline="always", **_FAST)
def dot(w: np.ndarray, s: np.ndarray, x: np.ndarray, gs: int) -> np.float32:
    """Dot product of one weight row `w` (int8 with group scales `s`, or float) and `x`.

    All indices derive from loop counters (never from a signed offset argument), so
    Numba drops its negative-index wraparound and LLVM vectorizes the loops. Inlined at
    the Numba level: called across modules, LLVM does not inline it and the loop runs at
    less than half the speed.
    """
    n = x.shape[0]
    acc = np.float32(0.0)
    if gs == 0:
        for j in range(n):
            acc += np.float32(w[j]) * x[j]
        return acc
    if gs == 64:
        return dot_q8_g64(w, s, x, n // 64)
    if gs == 32:
        return dot_q8_g32(w, s, x, n // 32)
    for g in range(n // gs):
        part = np.float32(0.0)
        for j in range(gs):
            part += np.float32(w[g * gs + j]) * x[g * gs + j]
        acc += part * s[g]
    return acc


@njit(inline="always", **_FAST)
def row_dot(w: np.ndarray, s: np.ndarray, wo: int, so: int, x: np.ndarray, t: int, n: int, gs: int) -> np.float32:
    """Row at flat offset `wo` (its scales at `so`) dotted with x[t]; for int8 rows,
    prefetches the rows that follow (once per row: only when t == 0). Float rows need no
    hint: the hardware prefetcher keeps up with them (measured: no prefetch is ~1% faster)."""
    if t == 0 and gs > 0:
        item = w.itemsize
        ahead = wo + PREFETCH_BYTES // item
        for c in range(0, n, 64 // item):
            prefetch(w, ahead + c)
        if gs > 0:
            prefetch(s, so + PREFETCH_BYTES // gs)
    if gs == 0:
        return dot(w[wo:wo + n], s, x[t], 0)
    return dot(w[wo:wo + n], s[so:so + n // gs], x[t], gs)


@njit(inline="always", **_FAST)
def _put(out: np.ndarray, t: int, col: int, add: bool, v: np.float32) -> None:
    """out[t, col] += v (a residual) or = v."""
    if add:
        out[t, col] += v
    else:
        out[t, col] = v


@njit(inline="always", **_FAST)
def row_all(out: np.ndarray, col: int, add: bool, w: np.ndarray, s: np.ndarray, wo: int, so: int,
            x: np.ndarray, n: int, gs: int) -> None:
    """out[t, col] (+)= weight row . x[t] for every token t of the batch.

    A prompt batch reads each row from memory once and reuses it from L1 for all T tokens
    (float rows four tokens per pass; int8 rows one SIMD dot per token).
    """
    T = x.shape[0]
    if T == 1:
        _put(out, 0, col, add, row_dot(w, s, wo, so, x, 0, n, gs))
        return
    row_batch(out, col, add, w, s, wo, so, x, n, gs)


@njit(**_FAST)
def row_batch(out: np.ndarray, col: int, add: bool, w: np.ndarray, s: np.ndarray, wo: int, so: int,
              x: np.ndarray, n: int, gs: int) -> None:
    """The T > 1 half of `row_all`, deliberately not inlined: it is compute bound (a call
    per row costs nothing next to T dot products) and keeping it out of the seven call
    sites halves the forward's compile time."""
    if gs == 0:
        _rows_times_batch(out, col, add, w[wo:wo + n], x, n)
        return
    # int8 rows: the SIMD int8 dot once per token. Widening the row to an fp32 buffer
    # first, to reuse it for four tokens a pass, measured no faster at any batch size
    # (it was 7x slower for two-token prompts, for the buffer and the widening pass).
    for t in range(x.shape[0]):
        _put(out, t, col, add, row_dot(w, s, wo, so, x, t, n, gs))


@njit(inline="always", **_FAST)
def _rows_times_batch(out: np.ndarray, col: int, add: bool, row: np.ndarray, x: np.ndarray, n: int) -> None:
    """out[t, col] (+)= row . x[t] for all t, four tokens per pass over the row (one load
    of the row feeds four FMAs: prefill is compute bound, not memory bound)."""
    T = x.shape[0]
    t = 0
    while t + 4 <= T:
        x0 = x[t]
        x1 = x[t + 1]
        x2 = x[t + 2]
        x3 = x[t + 3]
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for j in range(n):
            r = np.float32(row[j])
            a0 += r * x0[j]
            a1 += r * x1[j]
            a2 += r * x2[j]
            a3 += r * x3[j]
        _put(out, t, col, add, a0)
        _put(out, t + 1, col, add, a1)
        _put(out, t + 2, col, add, a2)
        _put(out, t + 3, col, add, a3)
        t += 4
    while t < T:
        xt = x[t]
        a = np.float32(0.0)
        for j in range(n):
            a += np.float32(row[j]) * xt[j]
        _put(out, t, col, add, a)
        t += 1


@njit(inline="always", **_FAST)
def dot2(w: np.ndarray, wo: int, x: np.ndarray) -> tuple[np.float32, np.float32]:
    """(float row at flat offset wo) . x and (the row after it) . x in one pass.

    fp32 decode is bound by memory, not arithmetic: two rows per iteration keep two
    streams in flight per core instead of one. Measured in the forward, alternating with
    a C forward written like llama2.c's run.c: 0.99-1.03x of it with one row, 1.03-1.10x
    with two (four rows per iteration gained nothing more).
    """
    n = x.shape[0]
    r0 = w[wo:wo + n]
    r1 = w[wo + n:wo + 2 * n]
    a0 = np.float32(0.0)
    a1 = np.float32(0.0)
    for j in range(n):
        a0 += r0[j] * x[j]
        a1 += r1[j] * x[j]
    return a0, a1


@njit(**_FAST)
def embed(out: np.ndarray, emb: np.ndarray, emb_s: np.ndarray, gs: int, token: int) -> None:
    """out[:] = row `token` of the embedding table, dequantized when int8."""
    n = out.shape[0]
    for j in range(n):
        if gs == 0:
            out[j] = np.float32(emb[token * n + j])
        else:
            out[j] = np.float32(emb[token * n + j]) * emb_s[(token * n + j) // gs]


@njit(parallel=True, **_FAST)
def attention(out: np.ndarray, q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, layer: int,
              start_pos: int, n_heads: int, n_kv_heads: int) -> None:
    """Causal attention of T queries over layer `layer` of the cache (positions 0..start_pos+t).

    One (token, head) pair per parallel iteration; the score dots and the weighted sum of
    values are SIMD loops over head_dim (a strict-IEEE version of this, which cannot
    vectorize its sums, cost more than the matmuls by position ~200). Grouped-query
    attention: query head h reads key/value head h // (n_heads / n_kv_heads).
    """
    T, dim = q.shape
    head_dim = dim // n_heads
    kv_mul = n_heads // n_kv_heads
    scale = np.float32(1.0) / np.float32(math.sqrt(head_dim))
    for idx in prange(T * n_heads):
        t = idx // n_heads
        h = idx - t * n_heads
        n_pos = start_pos + t + 1
        keys = k_cache[layer, h // kv_mul]      # (seq_len, head_dim): one contiguous stream
        values = v_cache[layer, h // kv_mul]
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
def classify(logits: np.ndarray, x: np.ndarray, t: int, w: np.ndarray, s: np.ndarray, gs: int) -> None:
    """logits[i] = classifier row i . x[t]."""
    n = x.shape[1]
    ng = n // gs if gs > 0 else 0
    V = logits.shape[0]
    if gs == 0:  # float rows two at a time (see dot2)
        for b in prange(V // 2):
            logits[2 * b], logits[2 * b + 1] = dot2(w, 2 * b * n, x[t])
        if V % 2:
            logits[V - 1] = row_dot(w, s, (V - 1) * n, 0, x, t, n, gs)
        return
    for i in prange(V):
        logits[i] = row_dot(w, s, i * n, i * ng, x, t, n, gs)


@njit(parallel=True, **_FAST)
def forward(tokens: np.ndarray, start_pos: int,
            x: np.ndarray, xb: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
            att: np.ndarray, hb: np.ndarray, h3: np.ndarray, logits: np.ndarray,
            emb: np.ndarray, emb_s: np.ndarray, emb_gs: int,
            mats: tuple, scales: tuple, wstride: np.ndarray, sstride: np.ndarray, gs: int,
            attn_norm: np.ndarray, ffn_norm: np.ndarray, final_norm: np.ndarray,
            cls: np.ndarray, cls_s: np.ndarray, cls_gs: int,
            k_cache: np.ndarray, v_cache: np.ndarray, cos: np.ndarray, sin: np.ndarray,
            n_heads: int, n_kv_heads: int, eps: float) -> None:
    """Run T = len(tokens) tokens at positions start_pos.. ; logits of the last one.

    mats/scales: (wq, wk, wv, wo, w1, w2, w3) flat weights and flat scales; layer l of
    matrix m starts at l * wstride[m] (scales: l * sstride[m]). Activation buffers are
    (T, width) and fully overwritten.
    """
    T = tokens.shape[0]
    dim = x.shape[1]
    kv_dim = k.shape[1]
    hidden = hb.shape[1]
    L = attn_norm.shape[0]
    head_dim = dim // n_heads
    ngd = dim // gs if gs > 0 else 0
    ngh = hidden // gs if gs > 0 else 0
    wq, wk, wv, wo, w1, w2, w3 = mats
    sq, sk, sv, so, s1, s2, s3 = scales
    for t in range(T):
        embed(x[t], emb, emb_s, emb_gs, tokens[t])
    n_qkv = dim + 2 * kv_dim
    # fp32 decode reads float rows two at a time (see dot2); int8 and prompt batches one
    pair = T == 1 and gs == 0 and dim % 2 == 0 and kv_dim % 2 == 0
    n_pairs_qkv = n_qkv // 2 if pair else 0
    n_single_qkv = 0 if pair else n_qkv
    n_pairs_dim = dim // 2 if pair else 0
    n_single_dim = 0 if pair else dim
    x0 = xb[0]
    for l in range(L):
        rmsnorm(xb, x, attn_norm[l], eps)
        # q, k, v in one parallel region (only one of the two loops has iterations)
        for b in prange(n_pairs_qkv):
            i = 2 * b
            if i < dim:
                q[0, i], q[0, i + 1] = dot2(wq, l * wstride[0] + i * dim, x0)
            elif i < dim + kv_dim:
                r = i - dim
                k[0, r], k[0, r + 1] = dot2(wk, l * wstride[1] + r * dim, x0)
            else:
                r = i - dim - kv_dim
                v[0, r], v[0, r + 1] = dot2(wv, l * wstride[2] + r * dim, x0)
        for i in prange(n_single_qkv):
            if i < dim:
                row_all(q, i, False, wq, sq, l * wstride[0] + i * dim, l * sstride[0] + i * ngd, xb, dim, gs)
            elif i < dim + kv_dim:
                r = i - dim
                row_all(k, r, False, wk, sk, l * wstride[1] + r * dim, l * sstride[1] + r * ngd, xb, dim, gs)
            else:
                r = i - dim - kv_dim
                row_all(v, r, False, wv, sv, l * wstride[2] + r * dim, l * sstride[2] + r * ngd, xb, dim, gs)
        rope(q, cos, sin, start_pos, head_dim)
        rope(k, cos, sin, start_pos, head_dim)
        for t in range(T):
            for kh in range(n_kv_heads):
                for j in range(head_dim):
                    k_cache[l, kh, start_pos + t, j] = k[t, kh * head_dim + j]
                    v_cache[l, kh, start_pos + t, j] = v[t, kh * head_dim + j]
        attention(att, q, k_cache, v_cache, l, start_pos, n_heads, n_kv_heads)
        # output projection + residual
        for b in prange(n_pairs_dim):
            a0, a1 = dot2(wo, l * wstride[3] + 2 * b * dim, att[0])
            x[0, 2 * b] += a0
            x[0, 2 * b + 1] += a1
        for i in prange(n_single_dim):
            row_all(x, i, True, wo, so, l * wstride[3] + i * dim, l * sstride[3] + i * ngd, att, dim, gs)
        rmsnorm(xb, x, ffn_norm[l], eps)
        # w1, w3 and SwiGLU in one region
        for i in prange(hidden):
            row_all(hb, i, False, w1, s1, l * wstride[4] + i * dim, l * sstride[4] + i * ngd, xb, dim, gs)
            row_all(h3, i, False, w3, s3, l * wstride[6] + i * dim, l * sstride[6] + i * ngd, xb, dim, gs)
            for t in range(T):
                a = hb[t, i]
                a = a * (np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-a))))
                hb[t, i] = a * h3[t, i]
        # down projection + residual
        for b in prange(n_pairs_dim):
            a0, a1 = dot2(w2, l * wstride[5] + 2 * b * hidden, hb[0])
            x[0, 2 * b] += a0
            x[0, 2 * b + 1] += a1
        for i in prange(n_single_dim):
            row_all(x, i, True, w2, s2, l * wstride[5] + i * hidden, l * sstride[5] + i * ngh, hb, hidden, gs)
    rmsnorm(xb[T - 1:T], x[T - 1:T], final_norm, eps)
    classify(logits, xb, T - 1, cls, cls_s, cls_gs)


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
