"""The register tile of a prompt's matrix products (CPU): 8 rows x 32 tokens.

A prompt batch multiplies dequantized weight rows (`buf`, one row per output) by every
token's activations. Dotting a row with a token along the row needs a horizontal
reduction per (row, token) and two vector loads per 16 multiply-adds from L2. Here the
activations come transposed (`xt[j, t]`: value j of token t, tokens padded to a multiple
of 32) and the tile holds out[r, t0:t0+32] for 8 rows as 16 vector accumulators: per
value j, two vector loads of xt feed 16 FMAs whose other operand is a weight broadcast
from memory, and nothing is reduced. Each (row, token) result is the fp32 dot product of
the dequantized row with the activations: FMA chains over blocks of j in order, the
blocks' sums added.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .cpu_blocks import _I64, _L, _VF, _VI, _Emit, is_f32_c

#: rows and tokens of one tile
TILE_ROWS, TILE_TOKENS = 8, 32
#: values summed by one FMA chain before it is added to the tile's totals (fp32 error
#: grows with a chain's length: ~(_J_BLOCK + n / _J_BLOCK) roundings, not n)
_J_BLOCK = 128


@intrinsic
def tile(typingctx, buf, i, xt, t0, n, ctile):
    """ctile[r, :] = buf[i + r, :n] . xt[:n, t0:t0 + 32] for r < 8 (ctile: 8 x 32)."""
    if not (is_f32_c(buf) and buf.ndim == 2 and is_f32_c(xt) and xt.ndim == 2 and is_f32_c(ctile)
            and all(isinstance(a, types.Integer) for a in (i, t0, n))):
        return None

    def codegen(context, builder, signature, args):
        arys = [context.make_array(signature.args[k])(context, builder, args[k]) for k in (0, 2, 5)]
        bp, xp, cp = (a.data for a in arys)
        b_stride = cgutils.unpack_tuple(builder, arys[0].shape)[1]
        x_stride = cgutils.unpack_tuple(builder, arys[1].shape)[1]
        i_, t0_, n_ = (context.cast(builder, args[k], signature.args[k], types.int64) for k in (1, 3, 4))
        e = _Emit(builder)
        rows = [e.at(bp, builder.mul(builder.add(i_, ir.Constant(_I64, r)), b_stride)) for r in range(TILE_ROWS)]
        xbase = e.at(xp, t0_)
        zero = ir.Constant(_VF, [0.0] * _L)

        def body(j, accs):
            xrow = builder.mul(j, x_stride)
            xv = [e.load(xbase, builder.add(xrow, ir.Constant(_I64, _L * k)), _VF, align=4) for k in range(2)]
            out = []
            for r in range(TILE_ROWS):
                w = e.splat(builder.load(e.at(rows[r], j), align=4))
                out += [e.fma(w, xv[0], accs[2 * r]), e.fma(w, xv[1], accs[2 * r + 1])]
            return out

        cvecs = [builder.bitcast(e.at(cp, _L * k), _VF.as_pointer()) for k in range(2 * TILE_ROWS)]
        for c in cvecs:
            builder.store(zero, c, align=4)
        jb = ir.Constant(_I64, _J_BLOCK)

        def block(bi, carried):
            j0 = builder.mul(bi, jb)
            j1 = builder.add(j0, jb)
            j1 = builder.select(builder.icmp_signed("<", j1, n_), j1, n_)
            accs = e.loop(j0, j1, [zero] * (2 * TILE_ROWS), body)
            for c, acc in zip(cvecs, accs):
                builder.store(builder.fadd(builder.load(c, align=4), acc), c, align=4)
            return carried

        n_blocks = builder.udiv(builder.add(n_, ir.Constant(_I64, _J_BLOCK - 1)), jb)
        e.loop(ir.Constant(_I64, 0), n_blocks, [], block)
        return context.get_dummy_value()

    return types.void(buf, i, xt, t0, n, ctile), codegen


@intrinsic
def transpose16(typingctx, x, t0, j0, xt):
    """xt[j0 + i, t0:t0 + 16] = x[t0:t0 + 16, j0 + i] for i < 16: one 16 x 16 block of
    the tiles' transposed activations, as 16 row loads, four rounds of two-vector
    shuffles (each round swaps the off-diagonal sub-blocks of one size: 8, 4, 2, 1) and
    16 row stores. The caller keeps the block inside both arrays."""
    if not (is_f32_c(x) and x.ndim == 2 and is_f32_c(xt) and xt.ndim == 2
            and all(isinstance(a, types.Integer) for a in (t0, j0))):
        return None

    def codegen(context, builder, signature, args):
        xa, ta = (context.make_array(signature.args[k])(context, builder, args[k]) for k in (0, 3))
        xs = cgutils.unpack_tuple(builder, xa.shape)[1]
        ts = cgutils.unpack_tuple(builder, ta.shape)[1]
        t0_, j0_ = (context.cast(builder, args[k], signature.args[k], types.int64) for k in (1, 2))
        e = _Emit(builder)

        def ptr(base, row, stride, col, i):
            off = builder.add(builder.mul(builder.add(row, ir.Constant(_I64, i)), stride), col)
            return builder.bitcast(e.at(base, off), _VF.as_pointer())

        rows = [builder.load(ptr(xa.data, t0_, xs, j0_, i), align=4) for i in range(_L)]
        bs = _L // 2
        while bs:
            for i in range(_L):
                if i & bs:
                    continue
                a, b = rows[i], rows[i + bs]
                lo = [j if not j & bs else _L + j - bs for j in range(_L)]
                hi = [j + bs if not j & bs else _L + j for j in range(_L)]
                rows[i] = builder.shuffle_vector(a, b, ir.Constant(_VI, lo))
                rows[i + bs] = builder.shuffle_vector(a, b, ir.Constant(_VI, hi))
            bs //= 2
        for i, r in enumerate(rows):
            builder.store(r, ptr(ta.data, j0_, ts, t0_, i), align=4)
        return context.get_dummy_value()

    return types.void(x, t0, j0, xt), codegen
