// y = W x for weights in GGUF block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
// Q6_K, IQ4_NL), dequantized in registers with fp32 activations and fp32 accumulation, and
// the same prologue/epilogues as linear.cu (linear.cuh).
//
// Layout on the device ("planar", made by inference/backends/cuda_layout.py): the bytes of
// every block, split into two or three planes so the quants can be read with aligned
// 16-byte loads whatever the block size (ggml's blocks are 18, 20, 22, 34 or 210 bytes):
//   W  (quant plane): per row, every block's quant bytes in order; 16 or 32 bytes a unit
//   S  (side plane):  per row, every block's scale/min/high-bit bytes
//   S2 (Q5_0, Q6_K):  per row, every block's fp16 d
// Nothing is converted: each plane holds byte ranges of the file's blocks.
//
// A lane's unit of work is one 16-byte load of quants (32 for Q8_0): 32 values of a block
// in two runs of 16 consecutive columns, `lo` at column run0(unit) and `hi` at run0 + GAP
// within the block, each run with one scale (and, for the types with mins, one offset).
// Each warp streams R rows at once so an x element loaded from L1 serves R rows.
#include "linear.cuh"

// Tiles (warps per block, rows per warp, warps sharing rows, units in flight), as in
// linear.cu: CFGB for decode (one token), CFGB8 for token tiles (fewer rows per warp:
// the tile's accumulators already fill the registers).
#ifndef CFGB
#define CFGB 4, 4, 2, 2
#endif
#ifndef CFGB8
#define CFGB8 4, 2, 2, 1
#endif

enum { BT_Q4_0 = 0, BT_Q4_1 = 1, BT_Q5_0 = 2, BT_Q5_1 = 3, BT_Q8_0 = 4, BT_Q4_K = 5, BT_Q5_K = 6,
       BT_Q6_K = 7, BT_IQ4_NL = 8 };

// 2^23 as a float: a byte b placed in the low mantissa bits of 2^23 reads as 2^23 + b.
#define MAGIC 8388608.0f

__device__ __forceinline__ u32 word_of(const uint4& q, int i) {
    return i == 0 ? q.x : (i == 1 ? q.y : (i == 2 ? q.z : q.w));
}

// byte k (0..3) of w as float, minus `off` (off = MAGIC + the type's zero point): exact
__device__ __forceinline__ float bytef(u32 w, int k, float off) {
    return __int_as_float((int)__byte_perm(w, 0x4B000000u, 0x7540u | (u32)k)) - off;
}

// bits 0..3 of x moved to bit 4 of bytes 0..3
__device__ __forceinline__ u32 spread4(u32 x) {
    return (((x & 0xFu) * 0x00204081u) & 0x01010101u) << 4;
}

// byte k (0..11) of a K-quant's packed 6-bit scales (header bytes 4..15)
__device__ __forceinline__ u32 kscale_byte(const uint4& h, int k) {
    const u32 w = k < 4 ? h.y : (k < 8 ? h.z : h.w);
    return (w >> ((k & 3) * 8)) & 0xFFu;
}

// ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7)
__device__ __forceinline__ void kscale_min(const uint4& h, int j, float& sc, float& m) {
    if (j < 4) {
        sc = (float)(kscale_byte(h, j) & 63u);
        m = (float)(kscale_byte(h, j + 4) & 63u);
    } else {
        sc = (float)((kscale_byte(h, j + 4) & 0xFu) | ((kscale_byte(h, j - 4) >> 6) << 4));
        m = (float)((kscale_byte(h, j + 4) >> 4) | ((kscale_byte(h, j) >> 6) << 4));
    }
}

__device__ __forceinline__ uint4 ldg16(const char* p) { return __ldg((const uint4*)p); }
__device__ __forceinline__ u32 ldg_u16(const char* p) { return __ldg((const unsigned short*)p); }
__device__ __forceinline__ u32 ldg_u32(const char* p) { return __ldg((const unsigned int*)p); }

// Per-type traits. UPB: units per block; VALS: values per block; GAP: columns from the lo
// run to the hi run; OFF: MAGIC + zero point; MIN: values carry an additive term (the
// sum of x over a run is then needed). load(): the raw bytes of one unit (row `row`,
// unit v of the row, nb blocks a row); scales(): the lo/hi scale and additive term;
// words(): word i (0..3) of the unit as two u32 of 4 value bytes each (lo run, hi run).
template <int BT> struct BK;

template <> struct BK<BT_Q4_0> {  // d; q 4 bits; value d * (q - 8)
    static const int UPB = 1, VALS = 32, GAP = 16;
    static const bool MIN = false;
    static constexpr float OFF = MAGIC + 8.0f;
    struct Raw { uint4 q; u32 s; };
    static __device__ __forceinline__ int run0(int) { return 0; }
    static __device__ __forceinline__ Raw load(const Part& P, size_t row, int nb, int v) {
        const size_t b = row * nb + v;
        return Raw{ld_stream16(P.W + b * 16), ldg_u16(P.S + b * 2)};
    }
    static __device__ __forceinline__ void scales(const Raw& r, int, float& dl, float& dh, float& cl, float& ch) {
        dl = dh = h2f((unsigned short)r.s);
        cl = ch = 0.0f;
    }
    static __device__ __forceinline__ void words(const Raw& r, int, int i, u32& lo, u32& hi) {
        const u32 w = word_of(r.q, i);
        lo = w & 0x0F0F0F0Fu;
        hi = (w >> 4) & 0x0F0F0F0Fu;
    }
};

template <> struct BK<BT_Q4_1> {  // d, m; value d * q + m
    static const int UPB = 1, VALS = 32, GAP = 16;
    static const bool MIN = true;
    static constexpr float OFF = MAGIC;
    struct Raw { uint4 q; u32 s; };
    static __device__ __forceinline__ int run0(int) { return 0; }
    static __device__ __forceinline__ Raw load(const Part& P, size_t row, int nb, int v) {
        const size_t b = row * nb + v;
        return Raw{ld_stream16(P.W + b * 16), ldg_u32(P.S + b * 4)};
    }
    static __device__ __forceinline__ void scales(const Raw& r, int, float& dl, float& dh, float& cl, float& ch) {
        dl = dh = h2f((unsigned short)(r.s & 0xFFFFu));
        cl = ch = h2f((unsigned short)(r.s >> 16));
    }
    static __device__ __forceinline__ void words(const Raw& r, int, int i, u32& lo, u32& hi) {
        const u32 w = word_of(r.q, i);
        lo = w & 0x0F0F0F0Fu;
        hi = (w >> 4) & 0x0F0F0F0Fu;
    }
};

template <> struct BK<BT_Q5_0> {  // S: qh (bit j = fifth bit of value j); S2: d; value d * (q - 16)
    static const int UPB = 1, VALS = 32, GAP = 16;
    static const bool MIN = false;
    static constexpr float OFF = MAGIC + 16.0f;
    struct Raw { uint4 q; u32 qh; u32 d; };
    static __device__ __forceinline__ int run0(int) { return 0; }
    static __device__ __forceinline__ Raw load(const Part& P, size_t row, int nb, int v) {
        const size_t b = row * nb + v;
        return Raw{ld_stream16(P.W + b * 16), ldg_u32(P.S + b * 4), ldg_u16(P.S2 + b * 2)};
    }
    static __device__ __forceinline__ void scales(const Raw& r, int, float& dl, float& dh, float& cl, float& ch) {
        dl = dh = h2f((unsigned short)r.d);
        cl = ch = 0.0f;
    }
    static __device__ __forceinline__ void words(const Raw& r, int, int i, u32& lo, u32& hi) {
        const u32 w = word_of(r.q, i);
        lo = (w & 0x0F0F0F0Fu) | spread4(r.qh >> (4 * i));
        hi = ((w >> 4) & 0x0F0F0F0Fu) | spread4(r.qh >> (16 + 4 * i));
    }
};

template <> struct BK<BT_Q5_1> {  // S: (d | m << 16, qh); value d * q + m
    static const int UPB = 1, VALS = 32, GAP = 16;
    static const bool MIN = true;
    static constexpr float OFF = MAGIC;
    struct Raw { uint4 q; uint2 s; };
    static __device__ __forceinline__ int run0(int) { return 0; }
    static __device__ __forceinline__ Raw load(const Part& P, size_t row, int nb, int v) {
        const size_t b = row * nb + v;
        return Raw{ld_stream16(P.W + b * 16), __ldg((const uint2*)(P.S + b * 8))};
    }
    static __device__ __forceinline__ void scales(const Raw& r, int, float& dl, float& dh, float& cl, float& ch) {
        dl = dh = h2f((unsigned short)(r.s.x & 0xFFFFu));
        cl = ch = h2f((unsigned short)(r.s.x >> 16));
    }
    static __device__ __forceinline__ void words(const Raw& r, int, int i, u32& lo, u32& hi) {
        const u32 w = word_of(r.q, i);
        lo = (w & 0x0F0F0F0Fu) | spread4(r.s.y >> (4 * i));
        hi = ((w >> 4) & 0x0F0F0F0Fu) | spread4(r.s.y >> (16 + 4 * i));
    }
};

template <> struct BK<BT_Q8_0> {  // d; 32 int8 quants, a unit is the whole block (two loads)
    static const int UPB = 1, VALS = 32, GAP = 16;
    static const bool MIN = false;
    static constexpr float OFF = MAGIC + 128.0f;  // the bytes are read with the sign bit flipped
    struct Raw { uint4 q0, q1; u32 s; };
    static __device__ __forceinline__ int run0(int) { return 0; }
    static __device__ __forceinline__ Raw load(const Part& P, size_t row, int nb, int v) {
        const size_t b = row * nb + v;
        return Raw{ld_stream16(P.W + b * 32), ld_stream16(P.W + b * 32 + 16), ldg_u16(P.S + b * 2)};
    }
    static __device__ __forceinline__ void scales(const Raw& r, int, float& dl, float& dh, float& cl, float& ch) {
        dl = dh = h2f((unsigned short)r.s);
        cl = ch = 0.0f;
    }
    static __device__ __forceinline__ void words(const Raw& r, int, int i, u32& lo, u32& hi) {
        lo = word_of(r.q0, i) ^ 0x80808080u;
        hi = word_of(r.q1, i) ^ 0x80808080u;
    }
};

// Q4_K: S = the block's 16-byte header (d, dmin, 12 bytes of 6-bit scales and mins); 8
// units of 16 quant bytes. Unit u: chunk j = u / 2 of 64 values, bytes 16 (u % 2) .. of
// its 32: low nibbles are values 64 j + 16 (u % 2) + l (sub-block 2 j), high nibbles the
// same + 32 (sub-block 2 j + 1). value = d * sc * q - dmin * m.
template <> struct BK<BT_Q4_K> {
    static const int UPB = 8, VALS = 256, GAP = 32;
    static const bool MIN = true;
    static constexpr float OFF = MAGIC;
    struct Raw { uint4 q; uint4 h; };
    static __device__ __forceinline__ int run0(int u) { return 64 * (u >> 1) + 16 * (u & 1); }
    static __device__ __forceinline__ Raw load(const Part& P, size_t row, int nb, int v) {
        const size_t b = row * nb + (v >> 3);
        return Raw{ld_stream16(P.W + (row * nb * 8 + v) * 16), ldg16(P.S + b * 16)};
    }
    static __device__ __forceinline__ void scales(const Raw& r, int u, float& dl, float& dh, float& cl, float& ch) {
        const float d = h2f((unsigned short)(r.h.x & 0xFFFFu)), dmin = h2f((unsigned short)(r.h.x >> 16));
        float s0, m0, s1, m1;
        kscale_min(r.h, 2 * (u >> 1), s0, m0);
        kscale_min(r.h, 2 * (u >> 1) + 1, s1, m1);
        dl = d * s0; dh = d * s1;
        cl = -(dmin * m0); ch = -(dmin * m1);
    }
    static __device__ __forceinline__ void words(const Raw& r, int, int i, u32& lo, u32& hi) {
        const u32 w = word_of(r.q, i);
        lo = w & 0x0F0F0F0Fu;
        hi = (w >> 4) & 0x0F0F0F0Fu;
    }
};

// Q5_K: S = header (16 bytes) + qh (32 bytes) per block; units as Q4_K, and value l of a
// chunk j takes its fifth bit from qh[l]: bit 2 j for the low nibble, 2 j + 1 for the high.
template <> struct BK<BT_Q5_K> {
    static const int UPB = 8, VALS = 256, GAP = 32;
    static const bool MIN = true;
    static constexpr float OFF = MAGIC;
    struct Raw { uint4 q; uint4 h; uint4 qh; };
    static __device__ __forceinline__ int run0(int u) { return 64 * (u >> 1) + 16 * (u & 1); }
    static __device__ __forceinline__ Raw load(const Part& P, size_t row, int nb, int v) {
        const char* side = P.S + (row * nb + (v >> 3)) * 48;
        return Raw{ld_stream16(P.W + (row * nb * 8 + v) * 16), ldg16(side), ldg16(side + 16 + 16 * (v & 1))};
    }
    static __device__ __forceinline__ void scales(const Raw& r, int u, float& dl, float& dh, float& cl, float& ch) {
        BK<BT_Q4_K>::Raw k{r.q, r.h};
        BK<BT_Q4_K>::scales(k, u, dl, dh, cl, ch);
    }
    static __device__ __forceinline__ void words(const Raw& r, int u, int i, u32& lo, u32& hi) {
        const u32 w = word_of(r.q, i), qh = word_of(r.qh, i);
        const int j = u >> 1;
        lo = (w & 0x0F0F0F0Fu) | (((qh >> (2 * j)) & 0x01010101u) << 4);
        hi = ((w >> 4) & 0x0F0F0F0Fu) | (((qh >> (2 * j + 1)) & 0x01010101u) << 4);
    }
};

// Q6_K: W = ql (128 bytes a block, 8 units); S = qh (64 bytes) + int8 scales (16 bytes);
// S2 = d. Unit u: half n = u / 4 of 128 values, m = u % 4: ql bytes 64 n + 16 m + l; the
// low nibbles are values 128 n + 16 m + l (scale 8 n + m), the high ones the same + 64
// (scale 8 n + m + 4); the two high bits come from qh[32 n + 16 (m % 2) + l] at bit
// 2 (m / 2) (low nibble) and 4 + 2 (m / 2) (high). value = d * sc * (q - 32).
template <> struct BK<BT_Q6_K> {
    static const int UPB = 8, VALS = 256, GAP = 64;
    static const bool MIN = false;
    static constexpr float OFF = MAGIC + 32.0f;
    struct Raw { uint4 q; uint4 qh; uint4 sc; u32 d; };
    static __device__ __forceinline__ int run0(int u) { return 128 * (u >> 2) + 16 * (u & 3); }
    static __device__ __forceinline__ Raw load(const Part& P, size_t row, int nb, int v) {
        const size_t b = row * nb + (v >> 3);
        const int u = v & 7;
        const char* side = P.S + b * 80;
        return Raw{ld_stream16(P.W + (row * nb * 8 + v) * 16), ldg16(side + 16 * (2 * (u >> 2) + (u & 1))),
                   ldg16(side + 64), ldg_u16(P.S2 + b * 2)};
    }
    static __device__ __forceinline__ float scale_byte(const uint4& s, int k) {  // int8 scale k (0..15)
        const u32 w = word_of(s, k >> 2);
        return (float)(signed char)((w >> ((k & 3) * 8)) & 0xFFu);
    }
    static __device__ __forceinline__ void scales(const Raw& r, int u, float& dl, float& dh, float& cl, float& ch) {
        const float d = h2f((unsigned short)r.d);
        const int k = 8 * (u >> 2) + (u & 3);
        dl = d * scale_byte(r.sc, k);
        dh = d * scale_byte(r.sc, k + 4);
        cl = ch = 0.0f;
    }
    static __device__ __forceinline__ void words(const Raw& r, int u, int i, u32& lo, u32& hi) {
        const u32 w = word_of(r.q, i), qh = word_of(r.qh, i);
        const int s = 2 * ((u & 3) >> 1);
        lo = (w & 0x0F0F0F0Fu) | (((qh >> s) & 0x03030303u) << 4);
        hi = ((w >> 4) & 0x0F0F0F0Fu) | (((qh >> (s + 4)) & 0x03030303u) << 4);
    }
};

// IQ4_NL: d; 4-bit indices into a fixed table of 16 int8 values; value d * table[q].
// The table lookup is two byte permutes (entries 0-7, 8-15) and a select on bit 3.
template <> struct BK<BT_IQ4_NL> {
    static const int UPB = 1, VALS = 32, GAP = 16;
    static const bool MIN = false;
    static constexpr float OFF = MAGIC + 128.0f;  // table bytes are read with the sign bit flipped
    struct Raw { uint4 q; u32 s; };
    static __device__ __forceinline__ int run0(int) { return 0; }
    static __device__ __forceinline__ Raw load(const Part& P, size_t row, int nb, int v) {
        const size_t b = row * nb + v;
        return Raw{ld_stream16(P.W + b * 16), ldg_u16(P.S + b * 2)};
    }
    static __device__ __forceinline__ void scales(const Raw& r, int, float& dl, float& dh, float& cl, float& ch) {
        dl = dh = h2f((unsigned short)r.s);
        cl = ch = 0.0f;
    }
    // 4 table indices (one per byte, 0..15) -> 4 table bytes, sign bit flipped
    static __device__ __forceinline__ u32 lookup(u32 idx) {
        // kvalues_iq4nl: -127 -104 -83 -65 -49 -35 -22 -10 1 13 25 38 53 69 89 113, ^ 0x80
        const u32 t0 = 0x3F2D1801u, t1 = 0x766A5D4Fu, t2 = 0xA6998D81u, t3 = 0xF1D9C5B5u;
        const u32 x = idx | (idx >> 4);                        // nibbles n0 n1 in byte 0, n2 n3 in byte 2
        const u32 sel = ((x & 0xFFu) | ((x >> 8) & 0xFF00u)) & 0x7777u;
        const u32 a = __byte_perm(t0, t1, sel), b = __byte_perm(t2, t3, sel);
        const u32 hi = ((idx >> 3) & 0x01010101u) * 0xFFu;     // bytes whose index is >= 8
        return (a & ~hi) | (b & hi);
    }
    static __device__ __forceinline__ void words(const Raw& r, int, int i, u32& lo, u32& hi) {
        const u32 w = word_of(r.q, i);
        lo = lookup(w & 0x0F0F0F0Fu);
        hi = lookup((w >> 4) & 0x0F0F0F0Fu);
    }
};

template <int BT, int NT, int NW, int R, int KS, int UNROLL>
__device__ __forceinline__ void block_impl(const LinearArgs& A, const Part& P) {
    static_assert(R % 2 == 0 && NW % KS == 0, "bad tile");
    typedef BK<BT> K;
    constexpr int U = UNROLL;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int ks = warp % KS;
    const int row0 = ((blockIdx.x - P.block0) * (NW / KS) + warp / KS) * R;  // local to P
    const int t0 = blockIdx.y * NT;
    if (KS == 1 && row0 >= P.rows) return;  // with KS > 1 every warp must reach the barrier
    const int nt = min(NT, A.ntok - t0);
    const int nb = A.in_dim / K::VALS;
    const int nunits = nb * K::UPB;

    size_t row[R];
#pragma unroll
    for (int r = 0; r < R; r++) row[r] = (size_t)min(row0 + r, P.rows - 1);

    float inv[NT];
    rms_inv<NT>(A, t0, nt, inv);

    float acc[R][NT];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[r][t] = 0.0f;

    for (int v0 = ks * 32 + lane; v0 < nunits; v0 += 32 * KS * U) {
        typename K::Raw raw[U][R];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int v = min(v0 + 32 * KS * u, nunits - 1);
#pragma unroll
            for (int r = 0; r < R; r++) raw[u][r] = K::load(P, row[r], nb, v);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int v = v0 + 32 * KS * u;
            if (v >= nunits) break;
            const int unit = v % K::UPB;
            const int c = (v / K::UPB) * K::VALS + K::run0(unit);   // column of the lo run
            float dl[R], dh[R], cl[R], ch[R];
#pragma unroll
            for (int r = 0; r < R; r++) K::scales(raw[u][r], unit, dl[r], dh[r], cl[r], ch[r]);
            if constexpr (NT == 1) {
                // decode: sums of q * x per run, scaled once per unit
                float sl[R], sh[R], xl = 0.0f, xh = 0.0f;
#pragma unroll
                for (int r = 0; r < R; r++) sl[r] = sh[r] = 0.0f;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const float* xp = A.x + (size_t)t0 * A.in_dim + c + 4 * i;
                    const float4 a = __ldg((const float4*)xp);
                    const float4 b = __ldg((const float4*)(xp + K::GAP));
                    if (K::MIN) {
                        xl += (a.x + a.y) + (a.z + a.w);
                        xh += (b.x + b.y) + (b.z + b.w);
                    }
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        u32 lo, hi;
                        K::words(raw[u][r], unit, i, lo, hi);
                        float s = sl[r], h = sh[r];
                        s = fmaf(bytef(lo, 0, K::OFF), a.x, s); s = fmaf(bytef(lo, 1, K::OFF), a.y, s);
                        s = fmaf(bytef(lo, 2, K::OFF), a.z, s); s = fmaf(bytef(lo, 3, K::OFF), a.w, s);
                        h = fmaf(bytef(hi, 0, K::OFF), b.x, h); h = fmaf(bytef(hi, 1, K::OFF), b.y, h);
                        h = fmaf(bytef(hi, 2, K::OFF), b.z, h); h = fmaf(bytef(hi, 3, K::OFF), b.w, h);
                        sl[r] = s;
                        sh[r] = h;
                    }
                }
#pragma unroll
                for (int r = 0; r < R; r++) {
                    float a = fmaf(dl[r], sl[r], fmaf(dh[r], sh[r], acc[r][0]));
                    if (K::MIN) a = fmaf(cl[r], xl, fmaf(ch[r], xh, a));
                    acc[r][0] = a;
                }
            } else {
                // a token tile: each weight is decoded once (scale and min applied), then
                // used for every token
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    float wl[R][4], wh[R][4];
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        u32 lo, hi;
                        K::words(raw[u][r], unit, i, lo, hi);
#pragma unroll
                        for (int k = 0; k < 4; k++) {
                            wl[r][k] = fmaf(bytef(lo, k, K::OFF), dl[r], cl[r]);
                            wh[r][k] = fmaf(bytef(hi, k, K::OFF), dh[r], ch[r]);
                        }
                    }
#pragma unroll
                    for (int t = 0; t < NT; t++) {
                        if (t < nt) {
                            const float* xp = A.x + (size_t)(t0 + t) * A.in_dim + c + 4 * i;
                            const float4 a = __ldg((const float4*)xp);
                            const float4 b = __ldg((const float4*)(xp + K::GAP));
#pragma unroll
                            for (int r = 0; r < R; r++) {
                                float s = acc[r][t];
                                s = fmaf(wl[r][0], a.x, s); s = fmaf(wl[r][1], a.y, s);
                                s = fmaf(wl[r][2], a.z, s); s = fmaf(wl[r][3], a.w, s);
                                s = fmaf(wh[r][0], b.x, s); s = fmaf(wh[r][1], b.y, s);
                                s = fmaf(wh[r][2], b.z, s); s = fmaf(wh[r][3], b.w, s);
                                acc[r][t] = s;
                            }
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[r][t] *= inv[t];
    finish<NT, NW, R, KS>(A, P, acc, row0, t0, nt);
}

// One kernel per token tile for every block type: each part of a launch has its own type
// (a uniform switch per grid block), so a layer's q/k/v in Q4_K + Q6_K is one launch.
#define BLOCK_CASE(BT, NT) \
    case BT: block_impl<BT, NT, NT == 1 ? NW1 : NW8, NT == 1 ? R1 : R8, NT == 1 ? KS1 : KS8, NT == 1 ? U1 : U8>(A, P); break;

template <int NW, int R, int KS, int U> struct Tile { static const int nw = NW, r = R, ks = KS, u = U; };
typedef Tile<CFGB> Tile1;
typedef Tile<CFGB8> Tile8;
constexpr int NW1 = Tile1::nw, R1 = Tile1::r, KS1 = Tile1::ks, U1 = Tile1::u;
constexpr int NW8 = Tile8::nw, R8 = Tile8::r, KS8 = Tile8::ks, U8 = Tile8::u;

template <int NT>
__device__ __forceinline__ void blocks_entry(const LinearArgs& A) {
    const Part P = find_part(A);
    switch (P.type) {
        BLOCK_CASE(BT_Q4_0, NT)
        BLOCK_CASE(BT_Q4_1, NT)
        BLOCK_CASE(BT_Q5_0, NT)
        BLOCK_CASE(BT_Q5_1, NT)
        BLOCK_CASE(BT_Q8_0, NT)
        BLOCK_CASE(BT_Q4_K, NT)
        BLOCK_CASE(BT_Q5_K, NT)
        BLOCK_CASE(BT_Q6_K, NT)
        BLOCK_CASE(BT_IQ4_NL, NT)
        default: break;
    }
}

#define BLOCKS_KERNEL(NT, CFG) \
    extern "C" __global__ void __launch_bounds__(NW_OF(CFG) * 32) linear_blocks_t##NT(LinearArgs a) { blocks_entry<NT>(a); }
BLOCKS_KERNEL(1, CFGB)
#ifndef DECODE_ONLY  // tuning builds: only the decode kernel
BLOCKS_KERNEL(8, CFGB8)
#endif
