// y = W x for fp32, fp16 and int8 weight rows (the GGUF block types are in
// linear_blocks.cu), with the shared prologue/epilogues of linear.cuh.
//
// Decode is memory bound: each warp streams R rows of W with 16-byte loads and reuses
// every x element it loads for all R rows, so x traffic (served by L1) stays small
// next to the weight bytes. Weights: fp32 (WT=0), fp16 (WT=1), int8 with one fp32 scale
// per `gsize` consecutive columns (WT=2, dequantized in registers, fp32 accumulation).
// A launch of these kernels has one part (see linear.cuh).
#include "linear.cuh"


// Tile shape per weight type WT (compile-time; the backend passes the same numbers as
// -D options and sizes its grids from them): NW warps per block, R rows per warp (even, so
// RoPE / SwiGLU row pairs stay in one warp), KS warps splitting the columns of the same
// rows (more loads in flight for short, wide matrices), U 16-byte vectors per lane and
// row issued before use. A block covers (NW / KS) * R rows.
#ifndef CFG0
#define CFG0 4, 4, 2, 2
#endif
#ifndef CFG1
#define CFG1 4, 4, 2, 2
#endif
#ifndef CFG2
#define CFG2 4, 4, 2, 2
#endif

// Weight loader: VEC consecutive elements of one row as floats. `raw_t` is what is
// loaded, so all loads of an iteration can be issued before any conversion.
template <int WT, int VEC> struct WL;

template <> struct WL<0, 4> {
    typedef uint4 raw_t;
    static __device__ __forceinline__ raw_t load(const char* row, int v) { return ld_stream16(row + (size_t)v * 16); }
    static __device__ __forceinline__ void cvt(raw_t r, float* w) {
        w[0] = __uint_as_float(r.x); w[1] = __uint_as_float(r.y);
        w[2] = __uint_as_float(r.z); w[3] = __uint_as_float(r.w);
    }
    static const int BYTES = 4;
};

template <> struct WL<1, 8> {
    typedef uint4 raw_t;
    static __device__ __forceinline__ raw_t load(const char* row, int v) { return ld_stream16(row + (size_t)v * 16); }
    static __device__ __forceinline__ void cvt(raw_t r, float* w) {
        const u32 a[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            w[2 * i] = h2f((unsigned short)(a[i] & 0xffffu));
            w[2 * i + 1] = h2f((unsigned short)(a[i] >> 16));
        }
    }
    static const int BYTES = 2;
};

// int8 -> float without the (quarter-rate) I2F instruction: place (q ^ 0x80) in the low
// mantissa bits of 2^23, then subtract 2^23 + 128.
__device__ __forceinline__ float i8f(u32 word, int k) {
    const u32 sel = 0x7540u | (u32)k;
    return __int_as_float((int)__byte_perm(word ^ 0x80808080u, 0x4B000000u, sel)) - 8388736.0f;
}

template <> struct WL<2, 16> {
    typedef uint4 raw_t;
    static __device__ __forceinline__ raw_t load(const char* row, int v) { return ld_stream16(row + (size_t)v * 16); }
    static __device__ __forceinline__ void cvt(raw_t r, float* w) {
        const u32 a[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
#pragma unroll
            for (int k = 0; k < 4; k++) w[4 * i + k] = i8f(a[i], k);
        }
    }
    static const int BYTES = 1;
};

template <> struct WL<0, 1> {
    typedef float raw_t;
    static __device__ __forceinline__ raw_t load(const char* row, int v) { return __ldg((const float*)row + v); }
    static __device__ __forceinline__ void cvt(raw_t r, float* w) { w[0] = r; }
    static const int BYTES = 4;
};

template <> struct WL<1, 1> {
    typedef unsigned short raw_t;
    static __device__ __forceinline__ raw_t load(const char* row, int v) { return __ldg((const unsigned short*)row + v); }
    static __device__ __forceinline__ void cvt(raw_t r, float* w) { w[0] = h2f(r); }
    static const int BYTES = 2;
};

template <> struct WL<2, 1> {
    typedef signed char raw_t;
    static __device__ __forceinline__ raw_t load(const char* row, int v) { return __ldg((const signed char*)row + v); }
    static __device__ __forceinline__ void cvt(raw_t r, float* w) { w[0] = (float)r; }
    static const int BYTES = 1;
};

template <int WT, int VEC, int NT, int NW, int R, int KS, int UNROLL>
__device__ __forceinline__ void linear_impl(const LinearArgs& A) {
    const Part P = find_part(A);
    static_assert(R % 2 == 0 && NW % KS == 0, "bad tile");
    typedef WL<WT, VEC> L;
    constexpr int U = VEC > 1 ? UNROLL : 1;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int ks = warp % KS;
    const int row0 = ((blockIdx.x - P.block0) * (NW / KS) + warp / KS) * R;  // local to P
    const int t0 = blockIdx.y * NT;
    if (KS == 1 && row0 >= P.rows) return;  // with KS > 1 every warp must reach the barrier
    const int nt = min(NT, A.ntok - t0);
    const int nvec = A.in_dim / VEC;
    const size_t row_bytes = (size_t)A.in_dim * L::BYTES;
    const int ngroups = WT == 2 ? A.in_dim / A.gsize : 0;

    const char* wrow[R];
#pragma unroll
    for (int r = 0; r < R; r++) wrow[r] = P.W + (size_t)min(row0 + r, P.rows - 1) * row_bytes;
    const float* srow[R];
#pragma unroll
    for (int r = 0; r < R; r++) srow[r] = WT == 2 ? (const float*)P.S + (size_t)min(row0 + r, P.rows - 1) * ngroups : nullptr;

    float inv[NT];
    rms_inv<NT>(A, t0, nt, inv);

    float acc[R][NT];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[r][t] = 0.0f;

    for (int v0 = ks * 32 + lane; v0 < nvec; v0 += 32 * KS * U) {
        typename L::raw_t raw[U][R];
        float sc[U][R];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int v = min(v0 + 32 * KS * u, nvec - 1);
#pragma unroll
            for (int r = 0; r < R; r++) {
                raw[u][r] = L::load(wrow[r], v);
                sc[u][r] = WT == 2 ? __ldg(srow[r] + (v * VEC) / A.gsize) : 1.0f;
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int v = v0 + 32 * KS * u;
            if (v >= nvec) break;
            const int c = v * VEC;
            float nwv[VEC];
#pragma unroll
            for (int k = 0; k < VEC; k++) nwv[k] = 1.0f;
            if (A.nw != nullptr) {
                if constexpr (VEC >= 4) {
#pragma unroll
                    for (int k = 0; k < VEC; k += 4) {
                        const float4 n4 = __ldg((const float4*)(A.nw + c + k));
                        nwv[k] = n4.x; nwv[k + 1] = n4.y; nwv[k + 2] = n4.z; nwv[k + 3] = n4.w;
                    }
                } else {
                    nwv[0] = __ldg(A.nw + c);
                }
            }
            float w[R][VEC];
#pragma unroll
            for (int r = 0; r < R; r++) L::cvt(raw[u][r], w[r]);
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t < nt) {
                    const float* xp = A.x + (size_t)(t0 + t) * A.in_dim + c;
                    float xv[VEC];
                    if constexpr (VEC >= 4) {
#pragma unroll
                        for (int k = 0; k < VEC; k += 4) {
                            const float4 x4 = __ldg((const float4*)(xp + k));
                            xv[k] = x4.x; xv[k + 1] = x4.y; xv[k + 2] = x4.z; xv[k + 3] = x4.w;
                        }
                    } else {
                        xv[0] = __ldg(xp);
                    }
#pragma unroll
                    for (int k = 0; k < VEC; k++) xv[k] *= inv[t] * nwv[k];
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        float d = 0.0f;
#pragma unroll
                        for (int k = 0; k < VEC; k++) d = fmaf(w[r][k], xv[k], d);
                        acc[r][t] = fmaf(sc[u][r], d, acc[r][t]);
                    }
                }
            }
        }
    }

    finish<NT, NW, R, KS>(A, P, acc, row0, t0, nt);
}

#define LINEAR_KERNEL_CFG(WT, VEC, NT, CFG)                                                \
    extern "C" __global__ void __launch_bounds__(NW_OF(CFG) * 32)                         \
    linear_w##WT##_v##VEC##_t##NT(LinearArgs a) { linear_impl<WT, VEC, NT, CFG>(a); }
#define LINEAR_KERNEL(WT, VEC, NT) LINEAR_KERNEL_CFG(WT, VEC, NT, CFG##WT)

#ifndef DECODE_ONLY
LINEAR_KERNEL(0, 4, 1)
LINEAR_KERNEL(0, 4, 8)
LINEAR_KERNEL(0, 1, 1)
LINEAR_KERNEL(0, 1, 8)
LINEAR_KERNEL(1, 8, 1)
LINEAR_KERNEL(1, 8, 8)
LINEAR_KERNEL(1, 1, 1)
LINEAR_KERNEL(1, 1, 8)
LINEAR_KERNEL(2, 16, 1)
LINEAR_KERNEL(2, 16, 8)
LINEAR_KERNEL(2, 1, 1)
LINEAR_KERNEL(2, 1, 8)
#else  // tuning builds: only the wide decode kernels
LINEAR_KERNEL(1, 8, 1)
LINEAR_KERNEL(2, 16, 1)
#endif
