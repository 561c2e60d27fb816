// y = W x for one weight matrix and a tile of up to NT tokens, with optional fused
// prologue (RMSNorm of x, from a precomputed sum of squares) and epilogue (store,
// residual add, SwiGLU, or RoPE + KV-cache write for the fused QKV matrix).
//
// Decode is memory bound: each warp streams R rows of W with 16-byte loads and reuses
// every x element it loads for all R rows, so x traffic (served by L1) stays small
// next to the weight bytes. Weights: fp32 (WT=0), fp16 (WT=1), int8 with one fp32 scale
// per `gsize` consecutive columns (WT=2, dequantized in registers, fp32 accumulation).
#include "common.cuh"

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

enum { MODE_STORE = 0, MODE_RESID = 1, MODE_SWIGLU = 2, MODE_QKV = 3 };

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

struct LinearArgs {
    const char* W;        // rows x in_dim, row-major
    const float* S;       // int8 only: rows x (in_dim / gsize) scales
    int rows, in_dim, gsize;
    const float* x;       // ntok x in_dim activations
    int ntok;
    const float* ss;      // per-token sum of squares of x (RMSNorm prologue) or null
    const float* nw;      // RMSNorm weight (in_dim), or null when x is already scaled by it
    float eps;
    int mode;
    float* out;           // see the MODE_* epilogues
    float* ss_out;        // MODE_RESID: per-token sum of squares of the new x (accumulated)
    int dim, kv_dim, head_dim;       // MODE_QKV
    float* kcache;        // MODE_QKV: this layer's (seq_len x kv_dim) caches
    float* vcache;
    const int* pos;       // position of token 0 of this launch
    float rope_theta;
    const float* nw_next; // MODE_RESID: the next RMSNorm's weight, or null
    float* xw_out;        // MODE_RESID: new x * nw_next (the next kernel's input)
};

__device__ __forceinline__ void rope(float& a, float& b, int i, int head_dim, int pos, float theta) {
    // llama2.c: pair (i, i+1) within a head rotates by pos * theta^(-i / head_dim)
    const float freq = 1.0f / powf(theta, (float)(i % head_dim) / (float)head_dim);
    float s, c;
    sincosf((float)pos * freq, &s, &c);
    const float a2 = a * c - b * s;
    const float b2 = a * s + b * c;
    a = a2;
    b = b2;
}

// Epilogue for one (row pair, token): v0/v1 are rows r and r+1 (r even).
__device__ __forceinline__ void epilogue_pair(const LinearArgs& A, int r, int t, float v0, float v1, bool has1) {
    switch (A.mode) {
    case MODE_STORE:
        A.out[(size_t)t * A.rows + r] = v0;
        if (has1) A.out[(size_t)t * A.rows + r + 1] = v1;
        break;
    case MODE_SWIGLU: {  // rows interleave w1 (even) and w3 (odd)
        const float silu = v0 / (1.0f + expf(-v0));
        A.out[(size_t)t * (A.rows >> 1) + (r >> 1)] = silu * v1;
        break;
    }
    case MODE_QKV: {
        const int pos = *A.pos + t;
        if (r < A.dim) {
            rope(v0, v1, r, A.head_dim, pos, A.rope_theta);
            A.out[(size_t)t * A.dim + r] = v0;
            A.out[(size_t)t * A.dim + r + 1] = v1;
        } else if (r < A.dim + A.kv_dim) {
            const int rr = r - A.dim;
            rope(v0, v1, rr, A.head_dim, pos, A.rope_theta);
            A.kcache[(size_t)pos * A.kv_dim + rr] = v0;
            A.kcache[(size_t)pos * A.kv_dim + rr + 1] = v1;
        } else {
            const int rr = r - A.dim - A.kv_dim;
            A.vcache[(size_t)pos * A.kv_dim + rr] = v0;
            A.vcache[(size_t)pos * A.kv_dim + rr + 1] = v1;
        }
        break;
    }
    default: break;
    }
}

template <int WT, int VEC, int NT, int NW, int R, int KS, int UNROLL>
__device__ __forceinline__ void linear_impl(const LinearArgs& A) {
    static_assert(R % 2 == 0 && NW % KS == 0, "bad tile");
    typedef WL<WT, VEC> L;
    constexpr int U = VEC > 1 ? UNROLL : 1;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int ks = warp % KS;
    const int row0 = (blockIdx.x * (NW / KS) + warp / KS) * R;
    const int t0 = blockIdx.y * NT;
    if (KS == 1 && row0 >= A.rows) return;  // with KS > 1 every warp must reach the barrier
    const int nt = min(NT, A.ntok - t0);
    const int nvec = A.in_dim / VEC;
    const size_t row_bytes = (size_t)A.in_dim * L::BYTES;
    const int ngroups = WT == 2 ? A.in_dim / A.gsize : 0;

    const char* wrow[R];
#pragma unroll
    for (int r = 0; r < R; r++) wrow[r] = A.W + (size_t)min(row0 + r, A.rows - 1) * row_bytes;
    const float* srow[R];
#pragma unroll
    for (int r = 0; r < R; r++) srow[r] = WT == 2 ? A.S + (size_t)min(row0 + r, A.rows - 1) * ngroups : nullptr;

    float inv[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        inv[t] = (A.ss != nullptr && t < nt) ? rsqrtf(A.ss[t0 + t] / (float)A.in_dim + A.eps) : 1.0f;

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

#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[r][t] = warp_sum(acc[r][t]);
    if constexpr (KS > 1) {  // combine the column slices of the KS warps sharing these rows
        __shared__ float red[NW][R][NT];
        if (lane == 0)
#pragma unroll
            for (int r = 0; r < R; r++)
#pragma unroll
                for (int t = 0; t < NT; t++) red[warp][r][t] = acc[r][t];
        __syncthreads();
        if (ks != 0 || row0 >= A.rows) return;
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int t = 0; t < NT; t++) {
                float a = 0.0f;
#pragma unroll
                for (int k = 0; k < KS; k++) a += red[warp + k][r][t];
                acc[r][t] = a;
            }
    }

    if (A.mode == MODE_RESID) {
        // x += W a, and accumulate sum(x^2) of the new x for the next RMSNorm
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t < nt) {
                float sq = 0.0f;
#pragma unroll
                for (int r = 0; r < R; r++) {
                    if (row0 + r < A.rows) {
                        const size_t idx = (size_t)(t0 + t) * A.rows + row0 + r;
                        // every lane computes the same value; lane r writes it
                        const float nv = A.out[idx] + acc[r][t];
                        sq += nv * nv;
                        __syncwarp();
                        if (lane == r) {
                            A.out[idx] = nv;
                            if (A.xw_out != nullptr) A.xw_out[idx] = nv * A.nw_next[row0 + r];
                        }
                    }
                }
                if (lane == 0 && A.ss_out != nullptr) atomicAdd(A.ss_out + t0 + t, sq);
            }
        }
        return;
    }
#pragma unroll
    for (int p = 0; p < R / 2; p++) {
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const int r = row0 + 2 * p;
            if (lane == p * NT + t && t < nt && r < A.rows)
                epilogue_pair(A, r, t0 + t, acc[2 * p][t], acc[2 * p + 1][t], r + 1 < A.rows);
        }
    }
}

#define NW_OF(nw, r, ks, u) nw
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
