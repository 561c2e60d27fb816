"""Hand-written vector code for the attention's weighted sum of values (CPU).

`attention` in `cpu_forward` ends, for each (token, head), with out = sum_p a[p] *
values[p] over the positions it attends to. As a Numba loop its head_dim accumulators
live in an array, so every position costs a load and a store of each besides its
multiply-add, which made this sum most of a prompt's attention time. Here they stay in
registers across all positions (two sets, even and odd positions, so the multiply-adds
of consecutive positions do not wait on each other), each value vector's load folded
into its FMA.

Only the common widths get a kernel (head_dim 64 and 128); others use the loop.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .cpu_blocks import _F32, _I64, _L, _VF, _data, _Emit, is_f32_c


def _weighted_sum(n_vec: int):
    """An intrinsic ws(out, att, values, n, inv): out[j] = inv * sum_{p < n} att[p] *
    values[p, j] for j < 16 * n_vec; `values` is (positions, 16 * n_vec), C-contiguous."""

    @intrinsic
    def ws(typingctx, out, att, values, n, inv):
        if not (is_f32_c(out) and is_f32_c(att) and is_f32_c(values) and values.ndim == 2
                and isinstance(n, types.Integer) and isinstance(inv, types.Float)):
            return None

        def codegen(context, builder, signature, args):
            op, ap, vp = (_data(context, builder, t, v) for t, v in zip(signature.args[:3], args[:3]))
            n_pos = context.cast(builder, args[3], signature.args[3], types.int64)
            scale = context.cast(builder, args[4], signature.args[4], types.float32)
            e = _Emit(builder)
            zero = ir.Constant(_VF, [0.0] * _L)
            stride = ir.Constant(_I64, _L * n_vec)
            two = ir.Constant(_I64, 2)

            def fma_row(p, accs):
                a = e.splat(e.load(ap, p, _F32, align=4))
                base = builder.mul(p, stride)
                return [e.fma(a, e.load(vp, builder.add(base, ir.Constant(_I64, _L * k)), _VF, align=4), acc)
                        for k, acc in enumerate(accs)]

            def pair(i, accs):
                p = builder.mul(i, two)
                return fma_row(p, accs[:n_vec]) + fma_row(builder.add(p, ir.Constant(_I64, 1)), accs[n_vec:])

            half = builder.udiv(n_pos, two)
            accs = e.loop(ir.Constant(_I64, 0), half, [zero] * (2 * n_vec), pair)
            even = e.loop(builder.mul(half, two), n_pos, accs[:n_vec], fma_row)  # an odd last position
            s = e.splat(scale)
            for k in range(n_vec):
                v = builder.fmul(builder.fadd(even[k], accs[n_vec + k]), s)
                builder.store(v, builder.bitcast(e.at(op, _L * k), _VF.as_pointer()), align=4)
            return context.get_dummy_value()

        return types.void(out, att, values, n, inv), codegen

    ws.__name__ = f"weighted_sum_{16 * n_vec}"
    return ws


weighted_sum_64 = _weighted_sum(4)
weighted_sum_128 = _weighted_sum(8)
