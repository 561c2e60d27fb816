"""Exponentials 16 at a time, for the softmax and SwiGLU (CPU).

Both took one libm call per value. exp(x) = 2**n * exp(r), n = round(x / ln 2), r = x - n
ln 2 (|r| <= ln 2 / 2; ln 2 split in two so n ln 2 is exact), exp(r) by its Taylor series
to r**7 (truncation below 1e-8, relative), 2**n built in the exponent bits. x is clamped
to [-87.3, 88]: below, exp is at fp32's smallest normal (a softmax weight of about
1.2e-38 beside the maximum's 1, a sigmoid of 1), above, it would overflow (a sigmoid of
about 6e-39 instead of less).

Every operation is lane-wise and unfused unless written as an FMA, and a tail shorter
than 16 values runs the same vector code one value at a time: a value's result does not
depend on where it sits, so a token's output does not depend on its batch.
"""
from __future__ import annotations

import math

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .cpu_blocks import _I32, _I64, _L, _VF, _VI, _data, _Emit, is_f32_c

_LN2_HI = 0.693145751953125          # ln 2 to 16 bits: n * _LN2_HI is exact for |n| < 2**8
_LN2_LO = math.log(2.0) - _LN2_HI
_TAYLOR = [1.0 / math.factorial(k) for k in range(8)]


def _vec(c: float) -> ir.Constant:
    return ir.Constant(_VF, [float(c)] * _L)


def _exp16(e: _Emit, x: ir.Value) -> ir.Value:
    """exp of 16 lanes (see the module docstring)."""
    b = e.b
    vec = _vec
    lo, hi = vec(-87.3), vec(88.0)
    x = b.select(b.fcmp_ordered("<", x, lo), lo, x)
    x = b.select(b.fcmp_ordered(">", x, hi), hi, x)
    rint = cgutils.get_or_insert_function(b.module, ir.FunctionType(_VF, [_VF]), "llvm.rint.v16f32")
    n = b.call(rint, [b.fmul(x, vec(1.0 / math.log(2.0)))])
    r = e.fma(n, vec(-_LN2_HI), x)
    r = e.fma(n, vec(-_LN2_LO), r)
    p = vec(_TAYLOR[7])
    for c in reversed(_TAYLOR[:7]):
        p = e.fma(p, r, vec(c))
    bits = b.shl(b.add(b.fptosi(n, _VI), e.ci(127)), e.ci(23))
    return b.fmul(p, b.bitcast(bits, _VF))


@intrinsic
def exp_sum(typingctx, att, n, mx):
    """att[p] = exp(att[p] - mx) for p < n, in place; returns their sum (the softmax)."""
    if not (is_f32_c(att) and att.ndim == 1 and isinstance(n, types.Integer) and isinstance(mx, types.Float)):
        return None

    def codegen(context, builder, signature, args):
        ap = _data(context, builder, signature.args[0], args[0])
        n_pos = context.cast(builder, args[1], signature.args[1], types.int64)
        e = _Emit(builder)
        m = e.splat(context.cast(builder, args[2], signature.args[2], types.float32))
        sixteen = ir.Constant(_I64, _L)

        def body(i, carried):
            ptr = builder.bitcast(e.at(ap, builder.mul(i, sixteen)), _VF.as_pointer())
            v = _exp16(e, builder.fsub(builder.load(ptr, align=4), m))
            builder.store(v, ptr, align=4)
            return [builder.fadd(carried[0], v)]

        full = builder.udiv(n_pos, sixteen)
        acc = e.loop(ir.Constant(_I64, 0), full, [ir.Constant(_VF, [0.0] * _L)], body)[0]
        total = e.reduce(acc)

        def tail(p, carried):
            ptr = e.at(ap, p)
            v = _exp16(e, builder.fsub(e.splat(builder.load(ptr, align=4)), m))
            one = builder.extract_element(v, ir.Constant(_I32, 0))
            builder.store(one, ptr, align=4)
            return [builder.fadd(carried[0], one)]

        return e.loop(builder.mul(full, sixteen), n_pos, [total], tail)[0]

    return types.float32(att, n, mx), codegen


def _silu_mul16(e: _Emit, a: ir.Value, g: ir.Value) -> ir.Value:
    """a * sigmoid(a) * g, lane-wise."""
    b = e.b
    ex = _exp16(e, b.fsub(_vec(0.0), a))
    return b.fmul(b.fmul(a, b.fdiv(_vec(1.0), b.fadd(_vec(1.0), ex))), g)


@intrinsic
def silu_mul(typingctx, h, g, start, stop):
    """h[i] = silu(h[i]) * g[i] for start <= i < stop (SwiGLU), in place."""
    if not (is_f32_c(h) and is_f32_c(g) and h.ndim == 1 and g.ndim == 1
            and isinstance(start, types.Integer) and isinstance(stop, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        hp, gp = (_data(context, builder, t, v) for t, v in zip(signature.args[:2], args[:2]))
        i0 = context.cast(builder, args[2], signature.args[2], types.int64)
        i1 = context.cast(builder, args[3], signature.args[3], types.int64)
        e = _Emit(builder)
        sixteen = ir.Constant(_I64, _L)

        def body(k, carried):
            off = builder.add(i0, builder.mul(k, sixteen))
            hv = builder.bitcast(e.at(hp, off), _VF.as_pointer())
            gv = builder.bitcast(e.at(gp, off), _VF.as_pointer())
            builder.store(_silu_mul16(e, builder.load(hv, align=4), builder.load(gv, align=4)), hv, align=4)
            return carried

        full = builder.sdiv(builder.sub(i1, i0), sixteen)
        e.loop(ir.Constant(_I64, 0), full, [], body)

        def tail(i, carried):
            h1, g1 = (e.splat(builder.load(e.at(p, i), align=4)) for p in (hp, gp))
            v = _silu_mul16(e, h1, g1)
            builder.store(builder.extract_element(v, ir.Constant(_I32, 0)), e.at(hp, i), align=4)
            return carried

        e.loop(builder.add(i0, builder.mul(full, sixteen)), i1, [], tail)
        return context.get_dummy_value()

    return types.void(h, g, start, stop), codegen
