// Token embedding (with the first RMSNorm's sum of squares), the sum of squares of a
// received activation, and device-side argmax / top-k, so only a few numbers per token
// cross PCIe.
#include "common.cuh"

// x[t] = emb[token of t]; xw[t] = x[t] * nw (the first matrix's input, scaled by its
// RMSNorm weight); ss[t] = sum(x[t]^2). One block per token; `seq` holds (token,
// position, slot) per token.
extern "C" __global__ void embed(const int* __restrict__ seq, const float* __restrict__ emb,
                                 float* __restrict__ x, float* __restrict__ ss, int dim,
                                 const float* __restrict__ nw, float* __restrict__ xw) {
    __shared__ float red[32];
    const int t = blockIdx.x;
    const float* row = emb + (size_t)seq[3 * t] * dim;
    float a = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = row[i];
        x[(size_t)t * dim + i] = v;
        xw[(size_t)t * dim + i] = v * nw[i];
        a += v * v;
    }
    a = block_sum(a, red);
    if (threadIdx.x == 0) ss[t] = a;
}

// embed for an int8 table (value = q * s[row][col / gsize]): an int8 model keeps its
// embedding at a quarter of the fp32 size, and a warm start uploads it as stored.
extern "C" __global__ void embed_i8(const int* __restrict__ seq, const signed char* __restrict__ q,
                                    const float* __restrict__ s, int gsize, float* __restrict__ x,
                                    float* __restrict__ ss, int dim, const float* __restrict__ nw,
                                    float* __restrict__ xw) {
    __shared__ float red[32];
    const int t = blockIdx.x;
    const size_t tok = (size_t)seq[3 * t];
    const signed char* row = q + tok * dim;
    const float* srow = s + tok * (dim / gsize);
    float a = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = (float)row[i] * srow[i / gsize];
        x[(size_t)t * dim + i] = v;
        xw[(size_t)t * dim + i] = v * nw[i];
        a += v * v;
    }
    a = block_sum(a, red);
    if (threadIdx.x == 0) ss[t] = a;
}

// ss[t] = sum(x[t]^2), xw[t] = x[t] * nw: restarts the RMSNorm chain on a device that
// received x.
extern "C" __global__ void sumsq(const float* __restrict__ x, float* __restrict__ ss, int dim,
                                 const float* __restrict__ nw, float* __restrict__ xw) {
    __shared__ float red[32];
    const int t = blockIdx.x;
    float a = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = x[(size_t)t * dim + i];
        xw[(size_t)t * dim + i] = v * nw[i];
        a += v * v;
    }
    a = block_sum(a, red);
    if (threadIdx.x == 0) ss[t] = a;
}

// (value, index) pair ordering: larger value first, then smaller index (numpy argmax).
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
    return v > bv || (v == bv && i < bi) || (bv != bv && v == v);
}

__device__ void block_argmax(const float* a, int n, float* out_v, int* out_i) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = a[i];
        if (better(v, i, bv, bi)) { bv = v; bi = i; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
    __syncthreads();
    if (lane == 0) { sv[warp] = bv; si[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        bv = lane < nwarps ? sv[lane] : NEG_INF;
        bi = lane < nwarps ? si[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
        }
        if (lane == 0) { *out_v = bv; *out_i = bi < n ? bi : 0; }
    }
    __syncthreads();
}

// One block: out_i[0] = argmax(logits), out_v[0] = its logit.
extern "C" __global__ void argmax(const float* __restrict__ logits, int n, int* out_i, float* out_v) {
    block_argmax(logits, n, out_v, out_i);
}

// One block: the k largest logits in descending order (ties by lower id), by k rounds
// of argmax over a scratch copy. k is small (sampling's top-k), so this stays cheap.
extern "C" __global__ void topk(const float* __restrict__ logits, int n, int k, float* scratch,
                                int* out_i, float* out_v) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) scratch[i] = logits[i];
    __syncthreads();
    for (int r = 0; r < k; r++) {
        block_argmax(scratch, n, out_v + r, out_i + r);
        if (threadIdx.x == 0) scratch[out_i[r]] = NEG_INF;
        __syncthreads();
    }
}

// Counter-based random numbers for benchmark weights generated on the device.
__device__ __forceinline__ u64 mix64(u64 z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ float uniform_pm1(u64 seed, u64 i) {  // in [-1, 1)
    return (float)(mix64(seed * 0x100000001B3ull ^ i) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

extern "C" __global__ void fill_f32(float* p, u64 n, u64 seed, float scale, float offset) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        p[i] = offset + scale * uniform_pm1(seed, i);
}

extern "C" __global__ void fill_f16(unsigned short* p, u64 n, u64 seed, float scale) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        p[i] = f2h(scale * uniform_pm1(seed, i));
}

extern "C" __global__ void fill_i8(signed char* p, u64 n, u64 seed) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        p[i] = (signed char)__float2int_rn(127.0f * uniform_pm1(seed, i));
}

// Random 32-bit words (block-type quants and side planes of benchmark weights).
extern "C" __global__ void fill_u32(u32* p, u64 n, u64 seed) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        p[i] = (u32)(mix64(seed * 0x100000001B3ull ^ i) >> 16);
}

// p[i * stride] = value for i < n: the fp16 scale fields of random blocks.
extern "C" __global__ void set_u16(unsigned short* p, u64 n, u64 stride, unsigned int value) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        p[i * stride] = (unsigned short)value;
}
