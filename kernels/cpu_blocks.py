"""Numba CPU kernels for one weight row of any GGUF block type, with fp32 activations.

Entry points, each dispatching on a type code (F32 ... IQ4_XS below):

- `row_dot(code, w, s, gs, x)`: one row's bytes `w` dotted with float32 `x`;
- `row_dot_xs(code, w, s, gs, x, xs)`: the same given the 32-value block sums of x
  (`block_sums`), which Q4_K uses to take its mins out of the inner loop;
- `dequant_row(code, w, s, gs, out)`: the row's values as float32.

Exactness: every row is multiplied as its dequantized float32 values, exactly as
`gguf.quants.dequantize` produces them, with fp32 products and sums; activations are
never quantized. `dequant_row` is bit-identical to gguf-py's dequantization; `row_dot`
differs from a float64 dot of those values only by fp32 rounding (it fuses the
dequantizing multiply with the dot's multiply-add, and sums in a different order).

Why hand-written LLVM vectors: the block types are compute bound at batch 1 (a Q4_0
row is 0.56 bytes per value), and LLVM's vectorizer reduces to a scalar at the end of
every 32-value block. Here each type is a `prep` (its per-block scale vectors) and a
`use` (16-lane float vectors of quant values with their scale and offset); one
generic loop multiplies them with `x` into vector accumulators that run across the
whole row, with a single reduction at the end, and the same pair with a store instead
of the dot gives `dequant_row`. What made them fast, measured on this project's Zen 5:
quants converted to float by or-ing them into the mantissa of a power of two (or by a
vpermps table lookup), fp16 scales broadcast before conversion, the scales of
16-value sub-blocks read from a stack table by broadcast loads, rows dispatched through
raw pointers. Code paths that need AVX-512 have portable equivalents (tested).

Block layouts are ggml's. Rows are not aligned (a 576-value Q4_0 row is 324 bytes), so
every load is unaligned, and nothing is read past a block's last byte.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .numba_setup import CACHE, HAS_AVX512

# ---- type codes ---------------------------------------------------------------------
F32, F16, BF16, I8 = 0, 1, 2, 3
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 4, 5, 6, 7, 8
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = 9, 10, 11, 12, 13
IQ4_NL, IQ4_XS = 14, 15

#: code -> (values per block, bytes per block)
BLOCK: dict[int, tuple[int, int]] = {
    F32: (1, 4), F16: (1, 2), BF16: (1, 2), I8: (1, 1),
    Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q5_1: (32, 24), Q8_0: (32, 34),
    Q2_K: (256, 84), Q3_K: (256, 110), Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210),
    IQ4_NL: (32, 18), IQ4_XS: (256, 136),
}

NAMES: dict[int, str] = {
    F32: "F32", F16: "F16", BF16: "BF16", I8: "I8", Q4_0: "Q4_0", Q4_1: "Q4_1", Q5_0: "Q5_0",
    Q5_1: "Q5_1", Q8_0: "Q8_0", Q2_K: "Q2_K", Q3_K: "Q3_K", Q4_K: "Q4_K", Q5_K: "Q5_K",
    Q6_K: "Q6_K", IQ4_NL: "IQ4_NL", IQ4_XS: "IQ4_XS",
}


def row_nbytes(code: int, n: int) -> int:
    """Bytes of one row of `n` values (for I8: the int8 values only, not the scales)."""
    per, nbytes = BLOCK[code]
    if n % per:
        raise ValueError(f"a {NAMES[code]} row holds a multiple of {per} values, not {n}")
    return n // per * nbytes


#: IQ4_NL / IQ4_XS: the 16 non-linear 4-bit levels.
IQ4_LEVELS = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)

#: How far past the row being read to prefetch, in bytes (the rows that follow). Worth
#: a few percent on one thread; 1-4 KiB measured alike.
PREFETCH_BYTES = 2048

_FLAGS = dict(nogil=True, cache=CACHE, boundscheck=False, error_model="numpy",
              fastmath={"reassoc", "contract", "nsz", "arcp"})

# ---- LLVM IR building blocks --------------------------------------------------------
_L = 16  # lanes of every float vector
_F32 = ir.FloatType()
_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_VF = ir.VectorType(_F32, _L)
_VI = ir.VectorType(_I32, _L)
_FAST = ("fast",)


class _Emit:
    """Small helpers over an IRBuilder, so the block decoders read like the layouts."""

    def __init__(self, builder: ir.IRBuilder):
        self.b = builder

    # memory
    def at(self, p: ir.Value, off) -> ir.Value:
        return self.b.gep(p, [off if isinstance(off, ir.Value) else ir.Constant(_I64, off)])

    def load(self, p: ir.Value, off, ty: ir.Type, align: int = 1) -> ir.Value:
        return self.b.load(self.b.bitcast(self.at(p, off), ty.as_pointer()), align=align)

    def u8(self, p: ir.Value, off: int) -> ir.Value:
        """16 bytes at p+off, zero-extended to 16 x i32."""
        return self.b.zext(self.load(p, off, ir.VectorType(_I8, 16)), _VI)

    def s8(self, p: ir.Value, off: int) -> ir.Value:
        """16 bytes at p+off, sign-extended to 16 x i32."""
        return self.b.sext(self.load(p, off, ir.VectorType(_I8, 16)), _VI)

    def f16(self, p: ir.Value, off: int) -> ir.Value:
        """The IEEE half at p+off as a float (F16C's vcvtph2ps where available)."""
        h = self.b.bitcast(self.load(p, off, _I16), ir.HalfType())
        return self.b.fpext(h, _F32)

    def f16x16(self, p: ir.Value, off: int) -> ir.Value:
        """The IEEE half at p+off as a 16-lane float splat. Broadcast first, convert
        second: a vpbroadcastw from memory and one vcvtph2ps, where converting the
        scalar costs an insert, a convert and a broadcast (measured 20% faster Q4_0)."""
        vh = ir.VectorType(_I16, _L)
        v = self.b.insert_element(ir.Constant(vh, ir.Undefined), self.load(p, off, _I16), ir.Constant(_I32, 0))
        v = self.b.shuffle_vector(v, ir.Constant(vh, ir.Undefined), ir.Constant(_VI, [0] * _L))
        return self.b.fpext(self.b.bitcast(v, ir.VectorType(ir.HalfType(), _L)), _VF)

    # vectors
    def ci(self, c) -> ir.Constant:
        """A 16 x i32 constant: one value splat, or a list of 16."""
        return ir.Constant(_VI, list(c) if isinstance(c, (list, tuple)) else [c] * _L)

    def splat(self, f: ir.Value) -> ir.Value:
        v = self.b.insert_element(ir.Constant(_VF, ir.Undefined), f, ir.Constant(_I32, 0))
        return self.lane(v, 0)

    def splati(self, i: ir.Value) -> ir.Value:
        v = self.b.insert_element(ir.Constant(_VI, ir.Undefined), i, ir.Constant(_I32, 0))
        return self.b.shuffle_vector(v, ir.Constant(_VI, ir.Undefined), ir.Constant(_VI, [0] * _L))

    def lane(self, v: ir.Value, i: int) -> ir.Value:
        """Lane i of a 16-lane vector broadcast to all lanes."""
        return self.b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), ir.Constant(_VI, [i] * _L))

    def and_(self, v, c):
        return self.b.and_(v, self.ci(c) if isinstance(c, (int, list, tuple)) else c)

    def or_(self, v, c):
        return self.b.or_(v, self.ci(c) if isinstance(c, (int, list, tuple)) else c)

    def shr(self, v, c):
        return self.b.lshr(v, self.ci(c)) if c else v

    def shl(self, v, c):
        return self.b.shl(v, self.ci(c)) if c else v

    def sub(self, v, c):
        return self.b.sub(v, self.ci(c))

    def tof(self, v: ir.Value) -> ir.Value:
        return self.b.sitofp(v, _VF)

    def field(self, v: ir.Value, shift: int, bits: int, minus: int = 0) -> ir.Value:
        """float(((v >> shift) & (2**bits - 1)) - minus), lane-wise (see magic_float)."""
        return self.magic_float(self.and_(v, ((1 << bits) - 1) << shift), shift, minus)

    def magic_float(self, v: ir.Value, shift: int, minus: int = 0, ored: bool = False) -> ir.Value:
        """float((v >> shift) - minus) for lanes v < 2**(shift + 23) whose low `shift`
        bits are zero, without a shift or an int->float conversion: v is or-ed into the
        mantissa of 2**(23 - shift) (with the masking that produced v, one vpternlogd;
        `ored`: the caller did that already), and one exact float subtraction removes
        that power of two and `minus` together."""
        f = self.b.bitcast(v if ored else self.or_(v, (127 + 23 - shift) << 23), _VF)
        return self.b.fsub(f, ir.Constant(_VF, [float(2.0 ** (23 - shift) + minus)] * _L))

    def ternlog(self, f: Callable, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
        """The bitwise function f(a, b, c) of three 16 x i32 vectors: one vpternlogd on
        AVX-512 (LLVM would otherwise re-derive and/or chains of its own choosing),
        and/or/not elsewhere."""
        if HAS_AVX512:
            imm = sum(f(x, y, z) << (4 * x + 2 * y + z) for x in (0, 1) for y in (0, 1) for z in (0, 1))
            fnty = ir.FunctionType(_VI, [_VI, _VI, _VI, _I32])
            fn = cgutils.get_or_insert_function(self.b.module, fnty, "llvm.x86.avx512.pternlog.d.512")
            return self.b.call(fn, [a, b, c, ir.Constant(_I32, imm)])
        ones = self.ci(-1)
        terms = []
        for x in (0, 1):
            for y in (0, 1):
                for z in (0, 1):
                    if f(x, y, z):
                        lits = [v if bit else self.b.xor(v, ones) for v, bit in ((a, x), (b, y), (c, z))]
                        terms.append(self.b.and_(self.b.and_(lits[0], lits[1]), lits[2]))
        return self.tree(terms, self.b.or_) if terms else self.ci(0)

    def bit_or(self, v: ir.Value, bits: ir.Value, mask, if_set: int, if_clear: int) -> ir.Value:
        """v | (if_set where bits & mask else if_clear), lane-wise (one AVX-512 test + a
        masked or)."""
        clear = self.b.icmp_unsigned("==", self.and_(bits, mask), self.ci(0))
        return self.b.or_(v, self.b.select(clear, self.ci(if_clear), self.ci(if_set)))

    def lookup(self, table: tuple, idx: ir.Value) -> ir.Value:
        """float(table[idx & 15]) lane-wise for a 16-entry table and 16 x i32 indices:
        one vpermps on AVX-512 (which reads only the low 4 bits of each index), portable
        extract/insert elsewhere."""
        tv = ir.Constant(_VF, [float(t) for t in table])
        if HAS_AVX512:
            fnty = ir.FunctionType(_VF, [_VF, _VI])
            fn = cgutils.get_or_insert_function(self.b.module, fnty, "llvm.x86.avx512.permvar.sf.512")
            return self.b.call(fn, [tv, idx])
        idx = self.and_(idx, 15)
        out = ir.Constant(_VF, ir.Undefined)
        for k in range(_L):
            kk = ir.Constant(_I32, k)
            out = self.b.insert_element(out, self.b.extract_element(tv, self.b.extract_element(idx, kk)), kk)
        return out

    # arithmetic
    def fma(self, a, b, c):
        fnty = ir.FunctionType(_VF, [_VF, _VF, _VF])
        fn = cgutils.get_or_insert_function(self.b.module, fnty, "llvm.fma.v16f32")
        return self.b.call(fn, [a, b, c])

    def fmul(self, a, b, fast: bool = True):
        return self.b.fmul(a, b, flags=_FAST if fast else ())

    def fadd(self, a, b, fast: bool = True):
        return self.b.fadd(a, b, flags=_FAST if fast else ())

    def tree(self, vs: list, op) -> ir.Value:
        while len(vs) > 1:
            vs = [op(vs[i], vs[i + 1]) if i + 1 < len(vs) else vs[i] for i in range(0, len(vs), 2)]
        return vs[0]

    def reduce(self, v: ir.Value) -> ir.Value:
        fnty = ir.FunctionType(_F32, [_F32, _VF])
        fn = cgutils.get_or_insert_function(self.b.module, fnty, "llvm.vector.reduce.fadd.v16f32")
        return self.b.call(fn, [ir.Constant(_F32, -0.0), v], fastmath=("reassoc",))

    # control flow
    def loop(self, start: ir.Value, stop: ir.Value, carried: list, body: Callable) -> list:
        """for i in range(start, stop): carried = body(i, carried); returns the final
        values (`carried` itself when the range is empty)."""
        b = self.b
        entry = b.block
        head = b.function.append_basic_block("blk.loop")
        done = b.function.append_basic_block("blk.done")
        b.cbranch(b.icmp_signed("<", start, stop), head, done)
        b.position_at_end(head)
        i = b.phi(_I64)
        phis = [b.phi(v.type) for v in carried]
        for p, v in zip(phis, carried):
            p.add_incoming(v, entry)
        new = body(i, list(phis))
        i_next = b.add(i, ir.Constant(_I64, 1))
        end = b.block
        i.add_incoming(start, entry)
        i.add_incoming(i_next, end)
        for p, v in zip(phis, new):
            p.add_incoming(v, end)
        b.cbranch(b.icmp_signed("<", i_next, stop), head, done)
        b.position_at_end(done)
        outs = []
        for v, nv in zip(carried, new):
            o = b.phi(v.type)
            o.add_incoming(v, entry)
            o.add_incoming(nv, end)
            outs.append(o)
        return outs


# A block type is two functions over the block at byte pointer `bp`:
#   prep(e, bp) -> [16-lane float vectors]: the block's scales (and offsets), once a block;
#   use(e, bp, lane) -> segments, where lane(k) is element k of prep's vectors (k = 16 *
#     vector + lane) splat to all lanes.
# A segment (value offset in the block, [16-lane float vectors q], scale, offset) means
# values off+16k+j = q[k][j] * scale (+ offset); scale and offset are splat vectors,
# offset None when the type has none.
Segment = tuple[int, list, ir.Value, "ir.Value | None"]


def _no_prep(e: _Emit, bp) -> list:
    return []


#: a nibble's value as a 16-entry table (Q4_0: minus 8): where vpermps exists, one
#: lookup per 16 values is cheaper than masking and converting (measured +3-4%)
_NIB_M8, _NIB = tuple(range(-8, 8)), tuple(range(16))


def _nibbles(e: _Emit, z: ir.Value, table: tuple) -> list:
    """[table[low nibble], table[high nibble]] of 16 zero-extended bytes."""
    if HAS_AVX512:
        return [e.lookup(table, z), e.lookup(table, e.shr(z, 4))]
    minus = -table[0]
    return [e.field(z, 0, 4, minus), e.field(z, 4, 4, minus)]


def _use_q4_0(e: _Emit, bp, lane) -> list:
    # d, then 16 bytes: low nibbles are values 0-15, high nibbles 16-31
    return [(0, _nibbles(e, e.u8(bp, 2), _NIB_M8), e.f16x16(bp, 0), None)]


def _use_q4_1(e: _Emit, bp, lane) -> list:
    # d, m, then nibbles as in Q4_0: value d * q + m
    z = e.u8(bp, 4)
    return [(0, [e.field(z, 0, 4), e.field(z, 4, 4)], e.f16x16(bp, 0), e.f16x16(bp, 2))]


def _q5_quants(e: _Emit, bp, qh_off: int, qs_off: int, minus: int) -> list:
    """The two 16-lane vectors of a Q5_0/Q5_1 block: value j = nibble | (bit j of the
    32-bit qh) << 4, minus `minus`. Each 16-bit half of qh is used as a lane mask as it
    is (on AVX-512 a kmovw from memory and one masked blend: measured faster than
    moving bit j to lane j by rotates)."""
    b = e.b
    qh = e.load(bp, qh_off, _I32)
    z = e.u8(bp, qs_off)
    out = []
    for half, shift in ((0, 0), (16, 4)):
        mask = b.bitcast(b.trunc(b.lshr(qh, ir.Constant(_I32, half)), _I16), ir.VectorType(ir.IntType(1), _L))
        q = e.and_(z, 15 << shift)  # the nibble stays at bit `shift`; the fifth bit above it
        out.append(e.magic_float(b.select(mask, e.or_(q, 16 << shift), q), shift, minus))
    return out


def _use_q5_0(e: _Emit, bp, lane) -> list:
    return [(0, _q5_quants(e, bp, 2, 6, 16), e.f16x16(bp, 0), None)]


def _use_q5_1(e: _Emit, bp, lane) -> list:
    return [(0, _q5_quants(e, bp, 4, 8, 0), e.f16x16(bp, 0), e.f16x16(bp, 2))]


def _use_q8_0(e: _Emit, bp, lane) -> list:
    return [(0, [e.tof(e.s8(bp, 2)), e.tof(e.s8(bp, 18))], e.f16x16(bp, 0), None)]


def _use_iq4_nl(e: _Emit, bp, lane) -> list:
    z = e.u8(bp, 2)
    return [(0, [e.lookup(IQ4_LEVELS, z), e.lookup(IQ4_LEVELS, e.shr(z, 4))], e.f16x16(bp, 0), None)]


_V4 = ir.VectorType(_I32, 4)


def _k_scales(e: _Emit, bp, off: int) -> ir.Value:
    """Q4_K/Q5_K: the 12 bytes at bp+off hold eight 6-bit scales and eight 6-bit mins;
    returns them as 16 x i32 [scale 0..7, min 0..7]. Bytes 0-3 hold scales 0-3 (low 6
    bits) and the top 2 bits of scales 4-7, bytes 4-7 the same for the mins, bytes 8-11
    the low 4 bits of scales 4-7 (low nibbles) and mins 4-7 (high nibbles). One 16-byte
    load (the 4 bytes after the scales are the block's own quants) and 4-lane vector ops."""
    b = e.b
    v = e.load(bp, off, _V4)                                      # words [a, m, c, -]
    am = b.shuffle_vector(v, v, ir.Constant(_V4, [0, 0, 1, 1]))   # [a, a, m, m]
    cc = b.shuffle_vector(v, v, ir.Constant(_V4, [2, 2, 2, 2]))
    k4 = lambda *x: ir.Constant(_V4, list(x))  # noqa: E731
    low = b.and_(am, k4(0x3F3F3F3F, 0, 0x3F3F3F3F, 0))
    top = b.or_(b.and_(b.lshr(cc, k4(0, 0, 4, 4)), k4(0, 0x0F0F0F0F, 0, 0x0F0F0F0F)),
                b.and_(b.lshr(am, k4(2, 2, 2, 2)), k4(0, 0x30303030, 0, 0x30303030)))
    return b.zext(b.bitcast(b.or_(low, top), ir.VectorType(_I8, 16)), _VI)


def _d_dmin(e: _Emit, bp, off: int) -> ir.Value:
    """[d] * 8 + [-dmin] * 8 from the two halves at bp+off (negating is exact, so
    -dmin * m rounds exactly like gguf-py's dmin * m, subtracted)."""
    b = e.b
    v2 = ir.VectorType(_F32, 2)
    f2 = b.fpext(b.bitcast(e.load(bp, off, ir.VectorType(_I16, 2)), ir.VectorType(ir.HalfType(), 2)), v2)
    f2 = b.fmul(f2, ir.Constant(v2, [1.0, -1.0]))
    return b.shuffle_vector(f2, f2, ir.Constant(_VI, [0] * 8 + [1] * 8))


def _prep_q4_k(e: _Emit, bp) -> list:
    # d, dmin, then the scales and mins: lanes 0-7 d * scale, 8-15 -dmin * min
    return [e.fmul(e.tof(_k_scales(e, bp, 4)), _d_dmin(e, bp, 0), fast=False)]


def _use_q4_k(e: _Emit, bp, lane) -> list:
    # 128 bytes of nibbles at 16: bytes 32c..32c+31 hold sub-block 2c (low nibbles) and
    # 2c+1 (high nibbles), 32 values each
    segs = []
    for c in range(4):
        (lo0, hi0), (lo1, hi1) = _nibbles(e, e.u8(bp, 16 + 32 * c), _NIB), _nibbles(e, e.u8(bp, 32 + 32 * c), _NIB)
        segs.append((64 * c, [lo0, lo1], lane(2 * c), lane(8 + 2 * c)))
        segs.append((64 * c + 32, [hi0, hi1], lane(2 * c + 1), lane(9 + 2 * c)))
    return segs


def _use_q5_k(e: _Emit, bp, lane) -> list:
    # as Q4_K, with 32 bytes of high bits at 16 (bit b of byte l is the fifth bit of
    # value 32b + l) and the nibbles at 48
    h0, h1 = e.u8(bp, 16), e.u8(bp, 32)
    segs = []
    for c in range(4):
        z0, z1 = e.u8(bp, 48 + 32 * c), e.u8(bp, 64 + 32 * c)
        for s in range(2):
            bit = 1 << (2 * c + s)
            q0 = e.bit_or(e.and_(z0, 15 << 4 * s), h0, bit, 16 << 4 * s, 0)
            q1 = e.bit_or(e.and_(z1, 15 << 4 * s), h1, bit, 16 << 4 * s, 0)
            segs.append((64 * c + 32 * s, [e.magic_float(q0, 4 * s), e.magic_float(q1, 4 * s)],
                         lane(2 * c + s), lane(8 + 2 * c + s)))
    return segs


def _prep_q6_k(e: _Emit, bp) -> list:
    # 16 int8 scales at 192 (one per 16 values), d at 208
    return [e.fmul(e.tof(e.s8(bp, 192)), e.f16x16(bp, 208), fast=False)]


def _use_q6_k(e: _Emit, bp, lane) -> list:
    # 128 bytes of low nibbles, 64 bytes of high 2-bit pairs. Half h (values 128h..
    # 128h+127): the low nibble of ql[64h + l] is value 128h + l (l < 64), its high
    # nibble value 128h + 64 + l; bits 2k..2k+1 of qh[32h + l] top up value 128h+32k+l.
    # Each nibble stays where it is and the pair goes just above it (one shift of qh
    # serves two values, one bitwise select and one mask-and-or assemble a value), which
    # is then read with the power-of-two trick at bit 0 or 4.
    segs = []
    for h in range(2):
        for lc in range(2):
            za, zb = e.u8(bp, 64 * h + 16 * lc), e.u8(bp, 64 * h + 32 + 16 * lc)
            zh = e.u8(bp, 128 + 32 * h + 16 * lc)
            s4, s2 = e.shl(zh, 4), e.shl(zh, 2)
            for k, z, hs, sh in ((0, za, s4, 0), (1, zb, s2, 0), (2, za, s4, 4), (3, zb, s2, 4)):
                q = e.ternlog(lambda a, b, c: a if c else b, z, hs, e.ci(0x0F << sh))
                q = e.ternlog(lambda a, b, c: (a & b) | c, q, e.ci(0x3F << sh), e.ci((127 + 23 - sh) << 23))
                off = 128 * h + 32 * k + 16 * lc
                segs.append((off, [e.magic_float(q, sh, 32, ored=True)], lane(off // 16), None))
    segs.sort(key=lambda seg: seg[0])
    return segs


def _prep_q2_k(e: _Emit, bp) -> list:
    # 16 bytes of scales at 0 (low nibble: scale, high nibble: min, per 16 values), d and
    # dmin at 80 and 82: [d * scale], [-dmin * min]
    sb = e.u8(bp, 0)
    sc = e.fmul(e.tof(e.and_(sb, 15)), e.splat(e.f16(bp, 80)), fast=False)
    mn = e.fmul(e.tof(e.shr(sb, 4)), e.b.fneg(e.splat(e.f16(bp, 82))), fast=False)
    return [sc, mn]


def _use_q2_k(e: _Emit, bp, lane) -> list:
    # 64 bytes of 2-bit quants at 16: bits 2k..2k+1 of qs[32h + l] are value 128h+32k+l
    segs = []
    for h in range(2):
        for lc in range(2):
            z = e.u8(bp, 16 + 32 * h + 16 * lc)
            for k in range(4):
                off = 128 * h + 32 * k + 16 * lc
                segs.append((off, [e.field(z, 2 * k, 2)], lane(off // 16), lane(16 + off // 16)))
    segs.sort(key=lambda seg: seg[0])
    return segs


def _prep_q3_k(e: _Emit, bp) -> list:
    """Q3_K's sixteen 6-bit scales (bytes 96..107) minus 32, times d (at 108): scale j
    has its low 4 bits in byte j % 8 (low nibble for j < 8, high for j >= 8) and its top
    2 bits at bits 2*(j // 4) of byte 8 + j % 4."""
    b = e.b
    lo8 = e.load(bp, 96, ir.VectorType(_I8, 8))
    hi4 = e.load(bp, 104, ir.VectorType(_I8, 4))
    lo = b.zext(b.shuffle_vector(lo8, lo8, ir.Constant(_VI, list(range(8)) * 2)), _VI)
    hi = b.zext(b.shuffle_vector(hi4, hi4, ir.Constant(_VI, list(range(4)) * 4)), _VI)
    lo = e.and_(b.lshr(lo, e.ci([0] * 8 + [4] * 8)), 15)
    hi = e.and_(b.lshr(hi, e.ci([2 * (j // 4) for j in range(16)])), 3)
    return [e.fmul(e.tof(e.sub(b.or_(lo, e.shl(hi, 4)), 32)), e.splat(e.f16(bp, 108)), fast=False)]


def _use_q3_k(e: _Emit, bp, lane) -> list:
    # 32 bytes of high-bit masks at 0 (bit b of hmask[l]: value 32b + l is NOT offset by
    # -4), 64 bytes of 2-bit quants at 32 laid out as in Q2_K
    hm = [e.u8(bp, 0), e.u8(bp, 16)]
    segs = []
    for h in range(2):
        for lc in range(2):
            z = e.u8(bp, 32 + 32 * h + 16 * lc)
            for k in range(4):
                off = 128 * h + 32 * k + 16 * lc
                # the 2-bit field at bit 2k, plus 4 where the mask bit is set, minus 4
                q = e.bit_or(e.and_(z, 3 << (2 * k)), hm[lc], 1 << (4 * h + k), 4 << (2 * k), 0)
                segs.append((off, [e.magic_float(q, 2 * k, 4)], lane(off // 16), None))
    segs.sort(key=lambda seg: seg[0])
    return segs


def _prep_iq4_xs(e: _Emit, bp) -> list:
    # d, 16 bits of scale high pairs at 2 (bits 2j..2j+1: sub-block j), 4 bytes of scale
    # low nibbles at 4 (sub-block j: nibble j % 2 of byte j // 2); 6-bit scales minus 32.
    # Lanes 8-15 repeat 0-7.
    b = e.b
    sh = e.splati(b.zext(e.load(bp, 2, _I16), _I32))
    sl4 = e.load(bp, 4, ir.VectorType(_I8, 4))
    sl = b.zext(b.shuffle_vector(sl4, sl4, ir.Constant(_VI, [j // 2 for j in range(8)] * 2)), _VI)
    lo = e.and_(b.lshr(sl, e.ci([4 * (j % 2) for j in range(8)] * 2)), 15)
    hi = e.and_(b.lshr(sh, e.ci([2 * j for j in range(8)] * 2)), 3)
    return [e.fmul(e.tof(e.sub(b.or_(lo, e.shl(hi, 4)), 32)), e.f16x16(bp, 0), fast=False)]


def _use_iq4_xs(e: _Emit, bp, lane) -> list:
    # 16 bytes per sub-block of 32 values at 8: low nibbles values 0-15, high 16-31
    segs = []
    for j in range(8):
        z = e.u8(bp, 8 + 16 * j)
        segs.append((32 * j, [e.lookup(IQ4_LEVELS, z), e.lookup(IQ4_LEVELS, e.shr(z, 4))], lane(j), None))
    return segs


# ---- the loops every block type shares ----------------------------------------------
_N_ACC = 4


def _dot_segments(e: _Emit, segs: list, xbs: list, accss: list, rot: int) -> list:
    """accs += the segments' values times x, for each token: `xbs[t]` points at token t's
    x at the block's first value, `accss[t]` are its accumulators (returned updated).

    Without an offset, the products of a segment are summed and scaled once; with one,
    each vector is dequantized by one FMA (q * scale + offset, exactly the weights up to
    that FMA's rounding) and multiply-added into an accumulator. (Factoring the offset
    out as offset * sum(x), summing x here, measured no faster and loses accuracy to
    cancellation; with the sums precomputed it pays for Q4_K: `_mins_xs_kernel`.)
    The quants are decoded once for all tokens; each token's operations are exactly
    those of a single-token dot, so its result is bit-identical to it."""
    out = []
    for xb, accs in zip(xbs, accss):
        accs = list(accs)
        for i, (off, qs, scale, bias) in enumerate(segs):
            xs = [e.load(xb, off + 16 * k, _VF, align=4) for k in range(len(qs))]
            if bias is None:
                a = (rot + i) % len(accs)
                p = e.tree([e.fmul(q, xv) for q, xv in zip(qs, xs)], e.fadd)
                accs[a] = e.fma(p, scale, accs[a])
            else:
                for k, (q, xv) in enumerate(zip(qs, xs)):
                    a = (rot + len(qs) * i + k) % len(accs)
                    accs[a] = e.fma(e.fma(q, scale, bias), xv, accs[a])
        out.append(accs)
    return out


def _store_segments(e: _Emit, segs: list, ob: ir.Value) -> None:
    """Store the segments' values at `ob`; q * scale (+ offset) rounded twice, as gguf-py
    computes them (bit-identical dequantization)."""
    for off, qs, scale, bias in segs:
        for k, q in enumerate(qs):
            v = e.fmul(q, scale, fast=False)
            if bias is not None:
                v = e.fadd(v, bias, fast=False)
            e.b.store(v, e.b.bitcast(e.at(ob, off + 16 * k), _VF.as_pointer()), align=4)


def _arrays_ok(*arrays) -> bool:
    """Every argument a C-contiguous 1-D array or a raw pointer."""
    return all(isinstance(a, types.CPointer) or (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C")
               for a in arrays)


def is_f32_c(a) -> bool:
    """A C-contiguous float32 array type (any number of dimensions)."""
    return isinstance(a, types.Array) and a.dtype == types.float32 and a.layout == "C"


def _data(context, builder, ty, val) -> ir.Value:
    """The element pointer of an array argument, or the pointer argument itself."""
    if isinstance(ty, types.CPointer):
        return val
    return context.make_array(ty)(context, builder, val).data


def _register_lanes(e: _Emit, vecs: list):
    return lambda k: e.lane(vecs[k // _L], k % _L)


#: blocks whose scale table one pre-pass builds (see _tabled_dot)
_CHUNK = 16


def _tabled_dot(e: _Emit, wp, xps: list, nb, prep, use, n_vec: int, per: int, nbytes: int) -> list:
    """The dot loop for block types with many scales per block (Q3_K, Q5_K, Q6_K, where
    it measured 8-11% faster; Q4_K, Q2_K and IQ4_XS are faster without): for each chunk
    of up to _CHUNK blocks, a first pass stores every block's prep vectors in a stack table, and
    the second multiplies, reading each scale with a broadcast load. One sum per x in `xps`.

    Why: a broadcast from a register costs one or two shuffles, and shuffles (which the
    widening of the quants also needs) limit these kernels; a broadcast from memory is a
    plain load. Storing and reloading within one block stalls instead (a 64-byte store
    cannot be forwarded to a 4-byte load), hence the two passes.
    """
    b = e.b
    with b.goto_entry_block():
        tab = b.alloca(ir.ArrayType(_VF, _CHUNK * n_vec))
    tab.align = 64
    tabv = b.bitcast(tab, _VF.as_pointer())
    tabf = b.bitcast(tab, _F32.as_pointer())
    zero = ir.Constant(_VF, [0.0] * _L)
    chunk = ir.Constant(_I64, _CHUNK)
    n_chunks = b.udiv(b.add(nb, ir.Constant(_I64, _CHUNK - 1)), chunk)

    def chunk_body(ci, flat):
        start = b.mul(ci, chunk)
        stop = b.add(start, chunk)
        stop = b.select(b.icmp_signed("<", stop, nb), stop, nb)

        def fill(blk, carried):
            vecs = prep(e, e.at(wp, b.mul(blk, ir.Constant(_I64, nbytes))))
            slot = b.mul(b.sub(blk, start), ir.Constant(_I64, n_vec))
            for k, v in enumerate(vecs):
                b.store(v, b.gep(tabv, [b.add(slot, ir.Constant(_I64, k))]), align=64)
            return carried

        e.loop(start, stop, [], fill)

        def mult(blk, flat):
            bp = e.at(wp, b.mul(blk, ir.Constant(_I64, nbytes)))
            xbs = [e.at(xp, b.mul(blk, ir.Constant(_I64, per))) for xp in xps]
            base = b.mul(b.sub(blk, start), ir.Constant(_I64, _L * n_vec))

            def lane(k):
                return e.splat(b.load(b.gep(tabf, [b.add(base, ir.Constant(_I64, k))]), align=4))

            return _flat(_dot_segments(e, use(e, bp, lane), xbs, _split(flat, len(xps)), rot=0))

        return e.loop(start, stop, flat, mult)

    flat = e.loop(ir.Constant(_I64, 0), n_chunks, [zero] * (_N_ACC * len(xps)), chunk_body)
    return [e.reduce(e.tree(accs, e.fadd)) for accs in _split(flat, len(xps))]


def _flat(accss: list) -> list:
    return [a for accs in accss for a in accs]


def _split(flat: list, k: int) -> list:
    n = len(flat) // k
    return [flat[i * n:(i + 1) * n] for i in range(k)]


#: tokens one multi-token dot serves: their activations are read against each weight
#: block decoded once (batched decode of several sequences); a pair variant serves two
MULTI = 4


def _multi_intrinsics(name: str, n_lead: int, n_x: int, emit: Callable) -> tuple:
    """(for MULTI tokens, for 2 tokens): see `_multi_intrinsic`."""
    return _multi_intrinsic(name, n_lead, n_x, emit, MULTI), _multi_intrinsic(name, n_lead, n_x, emit, 2)


def _multi_intrinsic(name: str, n_lead: int, n_x: int, emit: Callable, k: int):
    """A k-token dot: (lead..., x_0..x_{k-1}, [more pointers per token...], count, out),
    where `lead` are `n_lead` pointer arguments (the row's bytes, scales), each token has
    `n_x` pointers (its x, maybe its block sums), and out[t] receives token t's sum.
    `emit(e, leads, per_token, count)` returns the k sums."""
    n_args = n_lead + n_x * k + 2

    def typer(typingctx, *args):
        if len(args) != n_args or not all(isinstance(a, types.CPointer) for a in args[:-2] + args[-1:]):
            return None

        def codegen(context, builder, signature, cargs):
            ptrs = list(cargs[:-2])
            count = context.cast(builder, cargs[-2], signature.args[-2], types.int64)
            per_token = [ptrs[n_lead + t * n_x:n_lead + (t + 1) * n_x] for t in range(k)]
            e = _Emit(builder)
            sums = emit(e, ptrs[:n_lead], per_token, count)
            for t, v in enumerate(sums):
                builder.store(v, builder.gep(cargs[-1], [ir.Constant(_I64, t)]), align=4)
            return context.get_dummy_value()

        return types.void(*args), codegen

    # Numba's intrinsics need a fixed list of parameters (no *args)
    params = ", ".join(f"a{i}" for i in range(n_args))
    scope: dict = {"typer": typer}
    exec(f"def dot(typingctx, {params}):\n    return typer(typingctx, {params})", scope)
    dot = scope["dot"]
    dot.__name__ = f"dot{k}_{name}"
    return intrinsic(dot)


def _block_kernels(name: str, per: int, nbytes: int, use: Callable, prep: Callable = _no_prep,
                   unroll: int = 1, table: int = 0, batched: bool = True, two_rows: bool = False):
    """(dot, dequant, dot_multi, dot_pair) intrinsics for one block type: dot(w, x,
    nblocks) -> float32 and dequant(w, out, nblocks) over `nblocks` consecutive blocks of
    bytes `w` (an array or a pointer), and dot_multi / dot_pair (see `_multi_intrinsic`):
    MULTI or 2 dots of the row, each bit-identical to `dot` (None unless `batched`). The dot's main loop takes `unroll` blocks per
    iteration, or, with `table` = the number of vectors `prep` returns, reads them
    through a stack table (_tabled_dot).

    `two_rows`: also (dot_multi2, dot_pair2), which run two rows a, b against the tokens
    (out = a's sums, then b's), each activation vector loaded once for both rows: a
    batch's cost is mostly its activation loads (DEVELOPERS.md). Every (row, token) then
    keeps two accumulators, not _N_ACC (two rows x four tokens x four would not fit the
    32 vector registers), and so does this type's single-token dot, which keeps them
    bit-identical."""
    n_acc = 2 if two_rows else _N_ACC

    def decode(e: _Emit, bp) -> list:
        return use(e, bp, _register_lanes(e, prep(e, bp)))

    def emit_dot(e: _Emit, wps: list, xps: list, nb) -> list:
        """The sums of every row in `wps` with every token in `xps`, row by row."""
        builder = e.b
        if table:
            assert len(wps) == 1
            return _tabled_dot(e, wps[0], xps, nb, prep, use, table, per, nbytes)
        k = len(xps)
        zero = ir.Constant(_VF, [0.0] * _L)
        n_main = builder.udiv(nb, ir.Constant(_I64, unroll))

        def block(blk, flat, rot):
            xbs = [e.at(xp, builder.mul(blk, ir.Constant(_I64, per))) for xp in xps]
            out = []   # the rows load the same activations: LLVM loads them once
            for wp, accs in zip(wps, _split(flat, len(wps))):
                bp = e.at(wp, builder.mul(blk, ir.Constant(_I64, nbytes)))
                out += _flat(_dot_segments(e, decode(e, bp), xbs, _split(accs, k), rot))
            return out

        def body(i, flat):
            first = builder.mul(i, ir.Constant(_I64, unroll))
            for u in range(unroll):
                flat = block(builder.add(first, ir.Constant(_I64, u)), flat, u)
            return flat

        flat = e.loop(ir.Constant(_I64, 0), n_main, [zero] * (n_acc * k * len(wps)), body)
        if unroll > 1:
            flat = e.loop(builder.mul(n_main, ir.Constant(_I64, unroll)), nb, flat,
                          lambda blk, flat: block(blk, flat, 0))
        return [e.reduce(e.tree(accs, e.fadd)) for accs in _split(flat, k * len(wps))]

    @intrinsic
    def dot(typingctx, w, x, nblocks):
        if not _arrays_ok(w, x) or w.dtype != types.uint8 or x.dtype != types.float32:
            return None

        def codegen(context, builder, signature, args):
            wp = _data(context, builder, signature.args[0], args[0])
            xp = _data(context, builder, signature.args[1], args[1])
            nb = context.cast(builder, args[2], signature.args[2], types.int64)
            return emit_dot(_Emit(builder), [wp], [xp], nb)[0]

        return types.float32(w, x, nblocks), codegen

    @intrinsic
    def dequant(typingctx, w, out, nblocks):
        if not _arrays_ok(w, out) or w.dtype != types.uint8 or out.dtype != types.float32:
            return None

        def codegen(context, builder, signature, args):
            wp = _data(context, builder, signature.args[0], args[0])
            op = _data(context, builder, signature.args[1], args[1])
            nb = context.cast(builder, args[2], signature.args[2], types.int64)
            e = _Emit(builder)

            def body(blk, carried):
                bp = e.at(wp, builder.mul(blk, ir.Constant(_I64, nbytes)))
                ob = e.at(op, builder.mul(blk, ir.Constant(_I64, per)))
                _store_segments(e, decode(e, bp), ob)
                return carried

            e.loop(ir.Constant(_I64, 0), nb, [], body)
            return context.get_dummy_value()

        return types.void(w, out, nblocks), codegen

    dot.__name__ = f"dot_{name}"
    dequant.__name__ = f"dequant_{name}"
    if not batched:
        return dot, dequant, None, None
    multi, pair = _multi_intrinsics(name, 1, 1, lambda e, lead, tok, nb: emit_dot(e, lead[:1], [t[0] for t in tok], nb))
    if not two_rows:
        return dot, dequant, multi, pair
    multi2, pair2 = _multi_intrinsics(name + "_r2", 2, 1,
                                      lambda e, lead, tok, nb: emit_dot(e, lead[:2], [t[0] for t in tok], nb))
    return dot, dequant, multi, pair, multi2, pair2


_V8F = ir.VectorType(_F32, 8)


def _mins_xs_kernel(name: str, nbytes: int, use: Callable, prep: Callable):
    """(dot, dot_multi, dot_pair): dot(w, x, xs, nblocks) for Q4_K with the mins factored out:
    sum_i (d*sc_j*q_i - dmin*m_j) x_i = sum_j d*sc_j (q . x)_j - sum_j dmin*m_j xs_j, where
    xs[j] is the sum of x over 32-value sub-block j, computed once per activation vector
    by the caller. Per super-block that saves 8 broadcasts and 16 FMAs (measured +27% on
    Q4_K, nothing on Q5_K, whose kernel is bound by its high bits); the price is the
    cancellation between the two sums (the error is fp32 rounding of
    sum |d sc_j q_i x_i| + sum |dmin m_j xs_j| rather than of sum |w_i x_i|).
    dot_multi(w, x_0, xs_0, ..., nblocks, out): MULTI of them (dot_pair: 2), each
    bit-identical to dot."""

    def use_no_mins(e, bp, lane):
        return [(off, qs, scale, None) for off, qs, scale, _ in use(e, bp, lane)]

    def emit_dot(e: _Emit, wp, toks: list, nb) -> list:
        """toks: [(x pointer, xs pointer)] per token."""
        builder = e.b
        k = len(toks)
        zero = ir.Constant(_VF, [0.0] * _L)
        fnty = ir.FunctionType(_V8F, [_V8F] * 3)
        fma8 = cgutils.get_or_insert_function(builder.module, fnty, "llvm.fma.v8f32")

        def body(blk, carried):
            accss = _split(carried[:_N_ACC * k], k)
            accms = carried[_N_ACC * k:]
            bp = e.at(wp, builder.mul(blk, ir.Constant(_I64, nbytes)))
            xbs = [e.at(xp, builder.mul(blk, ir.Constant(_I64, 256))) for xp, _ in toks]
            vecs = prep(e, bp)
            accss = _dot_segments(e, use_no_mins(e, bp, _register_lanes(e, vecs)), xbs, accss, rot=0)
            upper = ir.Constant(ir.VectorType(_I32, 8), list(range(8, 16)))
            neg_mins = builder.shuffle_vector(vecs[0], vecs[0], upper)  # -dmin * m_j
            new_m = []
            for (_, sp), accm in zip(toks, accms):
                xs8 = e.load(sp, builder.mul(blk, ir.Constant(_I64, 8)), _V8F, align=4)
                new_m.append(builder.call(fma8, [neg_mins, xs8, accm]))
            return _flat(accss) + new_m

        out = e.loop(ir.Constant(_I64, 0), nb, [zero] * (_N_ACC * k) + [ir.Constant(_V8F, [0.0] * 8)] * k, body)
        fnty = ir.FunctionType(_F32, [_F32, _V8F])
        red8 = cgutils.get_or_insert_function(builder.module, fnty, "llvm.vector.reduce.fadd.v8f32")
        sums = []
        for accs, accm in zip(_split(out[:_N_ACC * k], k), out[_N_ACC * k:]):
            mins = builder.call(red8, [ir.Constant(_F32, -0.0), accm], fastmath=("reassoc",))
            sums.append(builder.fadd(e.reduce(e.tree(accs, e.fadd)), mins))
        return sums

    @intrinsic
    def dot(typingctx, w, x, xs, nblocks):
        if not _arrays_ok(w, x, xs) or w.dtype != types.uint8 or (x.dtype, xs.dtype) != (types.float32,) * 2:
            return None

        def codegen(context, builder, signature, args):
            wp, xp, sp = (_data(context, builder, t, a) for t, a in zip(signature.args[:3], args[:3]))
            nb = context.cast(builder, args[3], signature.args[3], types.int64)
            return emit_dot(_Emit(builder), wp, [(xp, sp)], nb)[0]

        return types.float32(w, x, xs, nblocks), codegen

    dot.__name__ = f"dot_{name}_xs"
    multi, pair = _multi_intrinsics(name + "_xs", 1, 2,
                                    lambda e, lead, tok, nb: emit_dot(e, lead[0], [tuple(t) for t in tok], nb))
    return dot, multi, pair


# Batched decode has multi-token kernels for the common types only (each adds to the
# first start's compile); the others run a batch one token at a time, still bit-identical.
_dot_q4_0, _deq_q4_0, _dotm_q4_0, _dotp_q4_0 = _block_kernels("q4_0", 32, 18, _use_q4_0, unroll=4)
_dot_q4_1, _deq_q4_1, _dotm_q4_1, _dotp_q4_1, _dotm2_q4_1, _dotp2_q4_1 = _block_kernels(
    "q4_1", 32, 20, _use_q4_1, unroll=2, two_rows=True)
_dot_q5_0, _deq_q5_0, _dotm_q5_0, _dotp_q5_0 = _block_kernels("q5_0", 32, 22, _use_q5_0, unroll=2)
_dot_q5_1, _deq_q5_1, _, _ = _block_kernels("q5_1", 32, 24, _use_q5_1, unroll=2, batched=False)
_dot_q8_0, _deq_q8_0, _dotm_q8_0, _dotp_q8_0 = _block_kernels("q8_0", 32, 34, _use_q8_0, unroll=2)
_dot_iq4_nl, _deq_iq4_nl, _, _ = _block_kernels("iq4_nl", 32, 18, _use_iq4_nl, unroll=2, batched=False)
_dot_q2_k, _deq_q2_k, _, _ = _block_kernels("q2_k", 256, 84, _use_q2_k, _prep_q2_k, table=2, batched=False)
_dot_q3_k, _deq_q3_k, _, _ = _block_kernels("q3_k", 256, 110, _use_q3_k, _prep_q3_k, table=1, batched=False)
_dot_q4_k, _deq_q4_k, _, _ = _block_kernels("q4_k", 256, 144, _use_q4_k, _prep_q4_k, batched=False)  # batched: _xs
_dot_q5_k, _deq_q5_k, _dotm_q5_k, _dotp_q5_k = _block_kernels("q5_k", 256, 176, _use_q5_k, _prep_q4_k, table=1)
_dot_q6_k, _deq_q6_k, _dotm_q6_k, _dotp_q6_k = _block_kernels("q6_k", 256, 210, _use_q6_k, _prep_q6_k, table=1)
_dot_iq4_xs, _deq_iq4_xs, _, _ = _block_kernels("iq4_xs", 256, 136, _use_iq4_xs, _prep_iq4_xs, batched=False)
_dot_q4_k_xs, _dotm_q4_k_xs, _dotp_q4_k_xs = _mins_xs_kernel("q4_k", 144, _use_q4_k, _prep_q4_k)


# ---- float and int8 rows --------------------------------------------------------------
def _float_kernels(widen: Callable):
    """(dot, dequant) intrinsics over the first 16*n16 values of a row of floats;
    `widen(e, bytes_ptr, value_index)` loads 16 of them as a float vector; the dot keeps
    four accumulators."""

    @intrinsic
    def dot(typingctx, w, x, n16):
        if not _arrays_ok(w, x) or w.dtype != types.uint8 or x.dtype != types.float32:
            return None

        def codegen(context, builder, signature, args):
            wp = _data(context, builder, signature.args[0], args[0])
            xp = _data(context, builder, signature.args[1], args[1])
            n = context.cast(builder, args[2], signature.args[2], types.int64)
            e = _Emit(builder)
            zero = ir.Constant(_VF, [0.0] * _L)
            n_main = builder.udiv(n, ir.Constant(_I64, 4))

            def body(i, accs):
                out = []
                for u in range(4):
                    j = builder.mul(builder.add(builder.mul(i, ir.Constant(_I64, 4)), ir.Constant(_I64, u)),
                                    ir.Constant(_I64, 16))
                    out.append(e.fma(widen(e, wp, j), e.load(xp, j, _VF, align=4), accs[u]))
                return out

            accs = e.loop(ir.Constant(_I64, 0), n_main, [zero] * 4, body)

            def tail(i, accs):
                j = builder.mul(i, ir.Constant(_I64, 16))
                return [e.fma(widen(e, wp, j), e.load(xp, j, _VF, align=4), accs[0])] + accs[1:]

            accs = e.loop(builder.mul(n_main, ir.Constant(_I64, 4)), n, accs, tail)
            return e.reduce(e.tree(accs, e.fadd))

        return types.float32(w, x, n16), codegen

    @intrinsic
    def dequant(typingctx, w, out, n16):
        if not _arrays_ok(w, out) or w.dtype != types.uint8 or out.dtype != types.float32:
            return None

        def codegen(context, builder, signature, args):
            wp = _data(context, builder, signature.args[0], args[0])
            op = _data(context, builder, signature.args[1], args[1])
            n = context.cast(builder, args[2], signature.args[2], types.int64)
            e = _Emit(builder)

            def body(i, carried):
                j = builder.mul(i, ir.Constant(_I64, 16))
                builder.store(widen(e, wp, j), builder.bitcast(e.at(op, j), _VF.as_pointer()), align=4)
                return carried

            e.loop(ir.Constant(_I64, 0), n, [], body)
            return context.get_dummy_value()

        return types.void(w, out, n16), codegen

    return dot, dequant


def _widen_f32(e: _Emit, wp, j):
    return e.b.load(e.b.bitcast(e.at(wp, e.b.mul(j, ir.Constant(_I64, 4))), _VF.as_pointer()), align=1)


def _widen_f16(e: _Emit, wp, j):
    vh = ir.VectorType(ir.HalfType(), 16)
    h = e.b.load(e.b.bitcast(e.at(wp, e.b.mul(j, ir.Constant(_I64, 2))), vh.as_pointer()), align=1)
    return e.b.fpext(h, _VF)


def _widen_bf16(e: _Emit, wp, j):
    vs = ir.VectorType(_I16, 16)
    h = e.b.load(e.b.bitcast(e.at(wp, e.b.mul(j, ir.Constant(_I64, 2))), vs.as_pointer()), align=1)
    return e.b.bitcast(e.shl(e.b.zext(h, _VI), 16), _VF)


_dot_f32v, _deq_f32v = _float_kernels(_widen_f32)
_dot_f16v, _deq_f16v = _float_kernels(_widen_f16)
_dot_bf16v, _deq_bf16v = _float_kernels(_widen_bf16)


@intrinsic
def _f32_at(typingctx, w, i):
    """Value i of a row of little-endian float32 bytes (unaligned load)."""
    def codegen(context, builder, signature, args):
        wp = _data(context, builder, signature.args[0], args[0])
        e = _Emit(builder)
        return e.load(wp, builder.mul(args[1], ir.Constant(_I64, 4)), _F32)
    return types.float32(w, types.int64), codegen


@intrinsic
def _f16_at(typingctx, w, i):
    """Value i of a row of IEEE half bytes, as float32."""
    def codegen(context, builder, signature, args):
        wp = _data(context, builder, signature.args[0], args[0])
        e = _Emit(builder)
        h = builder.bitcast(e.load(wp, builder.mul(args[1], ir.Constant(_I64, 2)), _I16), ir.HalfType())
        return builder.fpext(h, _F32)
    return types.float32(w, types.int64), codegen


@intrinsic
def _bf16_at(typingctx, w, i):
    """Value i of a row of bfloat16 bytes: the high half of a float32."""
    def codegen(context, builder, signature, args):
        wp = _data(context, builder, signature.args[0], args[0])
        e = _Emit(builder)
        bits = builder.zext(e.load(wp, builder.mul(args[1], ir.Constant(_I64, 2)), _I16), _I32)
        return builder.bitcast(builder.shl(bits, ir.Constant(_I32, 16)), _F32)
    return types.float32(w, types.int64), codegen


def _i8_group_dot(group: int):
    """(dot, dot_multi, dot_pair): an intrinsic computing sum_g s[g] * (w[g*group:(g+1)*group] . x[same])
    for int8 bytes `w` and float32 `s`, `x`, `group` a multiple of 16: per group, group/16
    widened loads times x summed as a tree and one multiply-add by the group's scale into
    one of two accumulators that run across the whole row; a single reduction ends the
    row. dot_multi(w, s, x_0, ..., nblocks, out): MULTI of them (dot_pair: 2), each
    bit-identical."""
    chunks = group // _L

    def emit_dot(e: _Emit, wp, sp, xps: list, ng) -> list:
        builder = e.b
        zero = ir.Constant(_VF, [0.0] * _L)

        def body(g, flat):
            base = builder.mul(g, ir.Constant(_I64, group))
            wvs = [e.tof(builder.sext(e.load(wp, builder.add(base, ir.Constant(_I64, _L * c)), ir.VectorType(_I8, 16)), _VI))
                   for c in range(chunks)]
            scale = e.splat(builder.load(builder.gep(sp, [g])))
            out = []
            for t, xp in enumerate(xps):
                prods = [e.fmul(wv, e.load(xp, builder.add(base, ir.Constant(_I64, _L * c)), _VF, align=4))
                         for c, wv in enumerate(wvs)]
                out += [flat[2 * t + 1], e.fma(e.tree(prods, e.fadd), scale, flat[2 * t])]
            return out

        flat = e.loop(ir.Constant(_I64, 0), ng, [zero, zero] * len(xps), body)
        return [e.reduce(e.fadd(flat[2 * t], flat[2 * t + 1])) for t in range(len(xps))]

    @intrinsic
    def i8_dot(typingctx, w, s, x, n_groups):
        if not _arrays_ok(w, s, x) or w.dtype != types.uint8 or (s.dtype, x.dtype) != (types.float32,) * 2:
            return None

        def codegen(context, builder, signature, args):
            wp, sp, xp = (_data(context, builder, t, a) for t, a in zip(signature.args[:3], args[:3]))
            ng = context.cast(builder, args[3], signature.args[3], types.int64)
            return emit_dot(_Emit(builder), wp, sp, [xp], ng)[0]

        return types.float32(w, s, x, n_groups), codegen

    multi, pair = _multi_intrinsics(f"i8_g{group}", 2, 1,
                                    lambda e, lead, tok, ng: emit_dot(e, lead[0], lead[1], [t[0] for t in tok], ng))
    return i8_dot, multi, pair


_dot_i8_g32, _dotm_i8_g32, _dotp_i8_g32 = _i8_group_dot(32)
_dot_i8_g64, _dotm_i8_g64, _dotp_i8_g64 = _i8_group_dot(64)
_dot_i8_g128, _dotm_i8_g128, _dotp_i8_g128 = _i8_group_dot(128)


@njit(inline="always", **_FLAGS)
def _i8_dot_any(w: np.ndarray, s: np.ndarray, gs: int, x: np.ndarray) -> np.float32:
    """Int8 rows with a group size the vector kernels do not cover."""
    n = x.shape[0]
    acc = np.float32(0.0)
    for g in range(n // gs):
        part = np.float32(0.0)
        for j in range(gs):
            part += np.float32(np.int8(w[g * gs + j])) * x[g * gs + j]
        acc += part * s[g]
    return acc


# ---- pointers from addresses -----------------------------------------------------------
@intrinsic
def _u8_ptr(typingctx, addr):
    """The integer `addr` as a uint8 pointer (for numba.carray)."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return types.CPointer(types.uint8)(addr), codegen


@intrinsic
def _f32_ptr(typingctx, addr):
    """The integer `addr` as a float32 pointer (for numba.carray)."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.FloatType().as_pointer())

    return types.CPointer(types.float32)(addr), codegen


@njit(inline="always", **_FLAGS)
def f32_at(addr: int, n: int) -> np.ndarray:
    """The `n` float32 values at address `addr` (int8 group scales): like `row_at`.
    (A uint8 view's `.view(np.float32)` costs a quarter of a Q4_0 row's time.)"""
    return carray(_f32_ptr(addr), n)


@njit(inline="always", **_FLAGS)
def row_at(addr: int, nbytes: int) -> np.ndarray:
    """The `nbytes` bytes at address `addr` as a C-contiguous uint8 array (no copy, no
    ownership): how a caller hands one row of a mapped weight file to `row_dot`."""
    return carray(_u8_ptr(addr), nbytes)


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


@njit(inline="always", **_FLAGS)
def prefetch_ahead(wp, nb: int) -> None:
    """Hint the cache lines PREFETCH_BYTES past a row of `nb` bytes at `wp` (the rows that
    follow it in its matrix); the hint never faults, so the last row of a mapping is safe."""
    w = carray(wp, nb)
    for c in range(0, nb, 64):
        prefetch(w, PREFETCH_BYTES + c)


# ---- dispatch --------------------------------------------------------------------------
@intrinsic
def _ptr(typingctx, arr):
    """The data pointer of a 1-D C-contiguous array."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"):
        return None

    def codegen(context, builder, signature, args):
        return context.make_array(signature.args[0])(context, builder, args[0]).data

    return types.CPointer(arr.dtype)(arr), codegen


@njit(inline="always", **_FLAGS)
def row_dot(code: int, w: np.ndarray, s: np.ndarray, gs: int, x: np.ndarray) -> np.float32:
    """One weight row (type `code`, bytes `w`; I8 scales `s` per `gs` values, ignored
    otherwise) dotted with float32 `x`, whose length is the row's number of values.

    A shim inlined into the caller: it hands raw pointers to the dispatcher, which is a
    real call. Passing the arrays themselves costs ~10 ns a row in Numba's calling
    convention (21 struct fields and six NRT reference-count calls), a third of the
    time a 768-value Q4_0 row takes.
    """
    return _row_dot(np.int64(code), _ptr(w), np.int64(w.shape[0]), _ptr(s), np.int64(s.shape[0]),
                    np.int64(gs), _ptr(x), np.int64(x.shape[0]))


@njit(inline="always", **_FLAGS)
def row_dot_xs(code: int, w: np.ndarray, s: np.ndarray, gs: int, x: np.ndarray, xs: np.ndarray) -> np.float32:
    """`row_dot` given also xs[j] = sum(x[32j:32j+32]) (see `block_sums`; computed once
    per activation vector). Q4_K rows then take the mins out of the inner loop (~1.25x
    faster; accurate to fp32 rounding of sum |d sc q x| + sum |dmin m| |xs| instead of
    sum |w x|); every other type ignores xs."""
    if code == Q4_K:
        return _row_dot_q4_k_xs(_ptr(w), np.int64(w.shape[0]), _ptr(x), np.int64(x.shape[0]), _ptr(xs))
    return _row_dot(np.int64(code), _ptr(w), np.int64(w.shape[0]), _ptr(s), np.int64(s.shape[0]),
                    np.int64(gs), _ptr(x), np.int64(x.shape[0]))


@njit(inline="always", **_FLAGS)
def block_sums(x: np.ndarray, xs: np.ndarray) -> None:
    """xs[j] = sum of x[32j:32j+32] in float32, for `row_dot_xs` (len(xs) = len(x) // 32)."""
    for j in range(x.shape[0] // 32):
        acc = np.float32(0.0)
        for i in range(32 * j, 32 * j + 32):
            acc += x[i]
        xs[j] = acc


@njit(**_FLAGS)
def _row_dot_q4_k_xs(wp, nb: int, xp, n: int, xsp) -> np.float32:
    prefetch_ahead(wp, nb)
    return _dot_q4_k_xs(wp, xp, xsp, n // 256)


@njit(inline="always", **_FLAGS)
def dequant_row(code: int, w: np.ndarray, s: np.ndarray, gs: int, out: np.ndarray) -> None:
    """out[:] = the row's values as float32 (bit-identical to gguf-py's dequantization);
    `out`'s length is the row's number of values. An inlined shim, as `row_dot`."""
    _dequant_row(np.int64(code), _ptr(w), np.int64(w.shape[0]), _ptr(s), np.int64(s.shape[0]),
                 np.int64(gs), _ptr(out), np.int64(out.shape[0]))


@njit(**_FLAGS)
def _row_dot(code: int, wp, nb: int, sp, ns: int, gs: int, xp, n: int) -> np.float32:
    """`row_dot` on raw pointers: row bytes wp[:nb], I8 scales sp[:ns], x xp[:n].

    Prefetches the bytes PREFETCH_BYTES past the row (the rows that follow in the
    matrix); the hint never faults, so the last row of a mapping is safe.
    """
    w = carray(wp, nb)
    prefetch_ahead(wp, nb)
    if code == Q4_0:
        return _dot_q4_0(wp, xp, n // 32)
    if code == Q4_K:
        return _dot_q4_k(wp, xp, n // 256)
    if code == Q6_K:
        return _dot_q6_k(wp, xp, n // 256)
    if code == Q8_0:
        return _dot_q8_0(wp, xp, n // 32)
    if code == Q5_0:
        return _dot_q5_0(wp, xp, n // 32)
    if code == Q4_1:
        return _dot_q4_1(wp, xp, n // 32)
    if code == IQ4_NL:
        return _dot_iq4_nl(wp, xp, n // 32)
    if code == Q5_K:
        return _dot_q5_k(wp, xp, n // 256)
    if code == Q3_K:
        return _dot_q3_k(wp, xp, n // 256)
    if code == Q2_K:
        return _dot_q2_k(wp, xp, n // 256)
    if code == Q5_1:
        return _dot_q5_1(wp, xp, n // 32)
    if code == IQ4_XS:
        return _dot_iq4_xs(wp, xp, n // 256)
    x = carray(xp, n)
    if code == I8:
        if gs == 32:
            return _dot_i8_g32(wp, sp, xp, n // 32)
        if gs == 64:
            return _dot_i8_g64(wp, sp, xp, n // 64)
        if gs == 128:
            return _dot_i8_g128(wp, sp, xp, n // 128)
        return _i8_dot_any(w, carray(sp, ns), gs, x)
    n16 = n // 16
    acc = np.float32(0.0)
    if code == F32:
        acc = _dot_f32v(wp, xp, n16)
        for j in range(16 * n16, n):
            acc += _f32_at(wp, j) * x[j]
    elif code == F16:
        acc = _dot_f16v(wp, xp, n16)
        for j in range(16 * n16, n):
            acc += _f16_at(wp, j) * x[j]
    elif code == BF16:
        acc = _dot_bf16v(wp, xp, n16)
        for j in range(16 * n16, n):
            acc += _bf16_at(wp, j) * x[j]
    else:
        raise ValueError("row_dot: unknown weight type code")
    return acc


@njit(**_FLAGS)
def _dequant_row(code: int, wp, nb: int, sp, ns: int, gs: int, op, n: int) -> None:
    """`dequant_row` on raw pointers."""
    w = carray(wp, nb)
    prefetch_ahead(wp, nb)
    if code == Q4_0:
        _deq_q4_0(wp, op, n // 32)
    elif code == Q4_K:
        _deq_q4_k(wp, op, n // 256)
    elif code == Q6_K:
        _deq_q6_k(wp, op, n // 256)
    elif code == Q8_0:
        _deq_q8_0(wp, op, n // 32)
    elif code == Q5_0:
        _deq_q5_0(wp, op, n // 32)
    elif code == Q4_1:
        _deq_q4_1(wp, op, n // 32)
    elif code == IQ4_NL:
        _deq_iq4_nl(wp, op, n // 32)
    elif code == Q5_K:
        _deq_q5_k(wp, op, n // 256)
    elif code == Q3_K:
        _deq_q3_k(wp, op, n // 256)
    elif code == Q2_K:
        _deq_q2_k(wp, op, n // 256)
    elif code == Q5_1:
        _deq_q5_1(wp, op, n // 32)
    elif code == IQ4_XS:
        _deq_iq4_xs(wp, op, n // 256)
    else:
        out = carray(op, n)
        if code == I8:  # group by group: no division per value, and the inner loop vectorizes
            s = carray(sp, ns)
            for g in range(n // gs):
                sg = s[g]
                base = g * gs
                for k in range(gs):
                    out[base + k] = np.float32(np.int8(w[base + k])) * sg
            return
        n16 = n // 16
        if code == F32:
            _deq_f32v(wp, op, n16)
            for j in range(16 * n16, n):
                out[j] = _f32_at(wp, j)
        elif code == F16:
            _deq_f16v(wp, op, n16)
            for j in range(16 * n16, n):
                out[j] = _f16_at(wp, j)
        elif code == BF16:
            _deq_bf16v(wp, op, n16)
            for j in range(16 * n16, n):
                out[j] = _bf16_at(wp, j)
        else:
            raise ValueError("dequant_row: unknown weight type code")


@njit(**_FLAGS)
def _row_dot_multi(code: int, wp, nb: int, sp, ns: int, gs: int, x0, x1, x2, x3,
                   s0, s1, s2, s3, n: int, op) -> None:
    """`row_dot_multi` on raw pointers: op[t] = row . x_t for MULTI tokens, s_t the block
    sums of x_t (used by Q4_K). Each sum is bit-identical to `_row_dot` of that token
    (`_row_dot_q4_k_xs` for Q4_K): a sequence's output does not depend on its batch."""
    prefetch_ahead(wp, nb)
    if code == Q4_0:
        _dotm_q4_0(wp, x0, x1, x2, x3, n // 32, op)
    elif code == Q4_K:
        _dotm_q4_k_xs(wp, x0, s0, x1, s1, x2, s2, x3, s3, n // 256, op)
    elif code == Q6_K:
        _dotm_q6_k(wp, x0, x1, x2, x3, n // 256, op)
    elif code == Q8_0:
        _dotm_q8_0(wp, x0, x1, x2, x3, n // 32, op)
    elif code == Q5_0:
        _dotm_q5_0(wp, x0, x1, x2, x3, n // 32, op)
    elif code == Q4_1:
        _dotm_q4_1(wp, x0, x1, x2, x3, n // 32, op)
    elif code == Q5_K:
        _dotm_q5_k(wp, x0, x1, x2, x3, n // 256, op)
    elif code == I8 and gs == 32:
        _dotm_i8_g32(wp, sp, x0, x1, x2, x3, n // 32, op)
    elif code == I8 and gs == 64:
        _dotm_i8_g64(wp, sp, x0, x1, x2, x3, n // 64, op)
    elif code == I8 and gs == 128:
        _dotm_i8_g128(wp, sp, x0, x1, x2, x3, n // 128, op)
    else:  # float rows and unusual int8 groups: one token at a time
        out = carray(op, MULTI)
        out[0] = _row_dot(code, wp, nb, sp, ns, gs, x0, n)
        out[1] = _row_dot(code, wp, nb, sp, ns, gs, x1, n)
        out[2] = _row_dot(code, wp, nb, sp, ns, gs, x2, n)
        out[3] = _row_dot(code, wp, nb, sp, ns, gs, x3, n)


@njit(inline="always", **_FLAGS)
def row_dot_multi(code: int, w: np.ndarray, s: np.ndarray, gs: int, x: np.ndarray, xs: np.ndarray,
                  ts: tuple, out: np.ndarray) -> None:
    """out[k] = `row_dot_xs` of the row with x[ts[k]] (xs[ts[k]] its block sums) for the
    MULTI token indices `ts` (repeat one to pad): the row's blocks are decoded once for
    all of them, which is what makes a batched decode step cheaper than its tokens one
    by one. x is (T, n) and xs (T, n // 32), both C-contiguous."""
    _row_dot_multi(np.int64(code), _ptr(w), np.int64(w.shape[0]), _ptr(s), np.int64(s.shape[0]), np.int64(gs),
                   _ptr(x[ts[0]]), _ptr(x[ts[1]]), _ptr(x[ts[2]]), _ptr(x[ts[3]]),
                   _ptr(xs[ts[0]]), _ptr(xs[ts[1]]), _ptr(xs[ts[2]]), _ptr(xs[ts[3]]),
                   np.int64(x.shape[1]), _ptr(out))


@njit(**_FLAGS)
def _row_dot_pair(code: int, wp, nb: int, sp, ns: int, gs: int, x0, x1, s0, s1, n: int, op) -> None:
    """`_row_dot_multi` for two tokens (a batch of two sequences, or two left over)."""
    prefetch_ahead(wp, nb)
    if code == Q4_0:
        _dotp_q4_0(wp, x0, x1, n // 32, op)
    elif code == Q4_K:
        _dotp_q4_k_xs(wp, x0, s0, x1, s1, n // 256, op)
    elif code == Q6_K:
        _dotp_q6_k(wp, x0, x1, n // 256, op)
    elif code == Q8_0:
        _dotp_q8_0(wp, x0, x1, n // 32, op)
    elif code == Q5_0:
        _dotp_q5_0(wp, x0, x1, n // 32, op)
    elif code == Q4_1:
        _dotp_q4_1(wp, x0, x1, n // 32, op)
    elif code == Q5_K:
        _dotp_q5_k(wp, x0, x1, n // 256, op)
    elif code == I8 and gs == 32:
        _dotp_i8_g32(wp, sp, x0, x1, n // 32, op)
    elif code == I8 and gs == 64:
        _dotp_i8_g64(wp, sp, x0, x1, n // 64, op)
    elif code == I8 and gs == 128:
        _dotp_i8_g128(wp, sp, x0, x1, n // 128, op)
    else:
        out = carray(op, 2)
        out[0] = _row_dot(code, wp, nb, sp, ns, gs, x0, n)
        out[1] = _row_dot(code, wp, nb, sp, ns, gs, x1, n)


@njit(inline="always", **_FLAGS)
def row_dot_pair(code: int, w: np.ndarray, s: np.ndarray, gs: int, x: np.ndarray, xs: np.ndarray,
                 t0: int, t1: int, out: np.ndarray) -> None:
    """`row_dot_multi` for the two tokens t0, t1: out[0], out[1]."""
    _row_dot_pair(np.int64(code), _ptr(w), np.int64(w.shape[0]), _ptr(s), np.int64(s.shape[0]), np.int64(gs),
                  _ptr(x[t0]), _ptr(x[t1]), _ptr(xs[t0]), _ptr(xs[t1]), np.int64(x.shape[1]), _ptr(out))


@njit(**_FLAGS)
def _rows_dot_multi(code: int, wa, wb, nb: int, sa, sb, ns: int, gs: int, x0, x1, x2, x3,
                    s0, s1, s2, s3, n: int, op) -> None:
    """`_row_dot_multi` of two rows a and b: op[:MULTI] for a, op[MULTI:2 * MULTI] for b.
    Types with two-row kernels load each activation vector once for both rows; the
    others run the rows one after the other. Either way each sum is bit-identical to
    the single-token dot of its row."""
    if code == Q4_1:
        prefetch_ahead(wa, nb)
        prefetch_ahead(wb, nb)
        _dotm2_q4_1(wa, wb, x0, x1, x2, x3, n // 32, op)
    else:
        out = carray(op, 2 * MULTI)
        _row_dot_multi(code, wa, nb, sa, ns, gs, x0, x1, x2, x3, s0, s1, s2, s3, n, op)
        _row_dot_multi(code, wb, nb, sb, ns, gs, x0, x1, x2, x3, s0, s1, s2, s3, n, _ptr(out[MULTI:]))


@njit(inline="always", **_FLAGS)
def rows_dot_multi(code: int, wa: np.ndarray, sa: np.ndarray, wb: np.ndarray, sb: np.ndarray, gs: int,
                   x: np.ndarray, xs: np.ndarray, ts: tuple, out: np.ndarray) -> None:
    """`row_dot_multi` of rows a and b (same matrix): out[k] for a, out[MULTI + k] for b."""
    _rows_dot_multi(np.int64(code), _ptr(wa), _ptr(wb), np.int64(wa.shape[0]), _ptr(sa), _ptr(sb),
                    np.int64(sa.shape[0]), np.int64(gs),
                    _ptr(x[ts[0]]), _ptr(x[ts[1]]), _ptr(x[ts[2]]), _ptr(x[ts[3]]),
                    _ptr(xs[ts[0]]), _ptr(xs[ts[1]]), _ptr(xs[ts[2]]), _ptr(xs[ts[3]]),
                    np.int64(x.shape[1]), _ptr(out))


@njit(**_FLAGS)
def _rows_dot_pair(code: int, wa, wb, nb: int, sa, sb, ns: int, gs: int, x0, x1, s0, s1, n: int, op) -> None:
    """`_row_dot_pair` of two rows a and b: op[0:2] for a, op[2:4] for b."""
    if code == Q4_1:
        prefetch_ahead(wa, nb)
        prefetch_ahead(wb, nb)
        _dotp2_q4_1(wa, wb, x0, x1, n // 32, op)
    else:
        out = carray(op, 4)
        _row_dot_pair(code, wa, nb, sa, ns, gs, x0, x1, s0, s1, n, op)
        _row_dot_pair(code, wb, nb, sb, ns, gs, x0, x1, s0, s1, n, _ptr(out[2:]))


@njit(inline="always", **_FLAGS)
def rows_dot_pair(code: int, wa: np.ndarray, sa: np.ndarray, wb: np.ndarray, sb: np.ndarray, gs: int,
                  x: np.ndarray, xs: np.ndarray, t0: int, t1: int, out: np.ndarray) -> None:
    """`row_dot_pair` of rows a and b: out[0], out[1] for a, out[2], out[3] for b."""
    _rows_dot_pair(np.int64(code), _ptr(wa), _ptr(wb), np.int64(wa.shape[0]), _ptr(sa), _ptr(sb),
                   np.int64(sa.shape[0]), np.int64(gs), _ptr(x[t0]), _ptr(x[t1]), _ptr(xs[t0]), _ptr(xs[t1]),
                   np.int64(x.shape[1]), _ptr(out))
