// Causal attention over the on-device KV cache, for decode (one token), the prefill of a
// prompt chunk and a batch of sequences alike: token t of a launch sits at position
// seq[3t + 1] of cache slot seq[3t + 2] and attends to that slot's keys 0..pos, whose
// keys/values the fused QKV kernel has already written.
#include "common.cuh"

// Split-key ("flash-decoding") attention: grid (n_heads, nsplit, ntok). Each block scores
// one slice of the keys 0..pos, keeps its softmax partials (max m, sum l, unnormalized
// output) in `part`, and the last block of a (head, token) to finish merges the slices.
// The slice length adapts to pos at run time, so the grid is fixed and a captured graph
// stays valid for every position, while short and long contexts both fill the GPU.
extern "C" __global__ void attention_split(const float* __restrict__ q, const float* __restrict__ kc,
                                           const float* __restrict__ vc, float* __restrict__ out,
                                           const int* __restrict__ seq,
                                           int q_dim, int kv_dim, int head_dim, int kv_mul, float scale, int ctx,
                                           float* __restrict__ part, unsigned int* __restrict__ counters) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    __shared__ int is_last;
    const int h = blockIdx.x, sidx = blockIdx.y, t = blockIdx.z;
    const int n_heads = gridDim.x, nsplit = gridDim.y;
    const int n = seq[3 * t + 1] + 1;  // keys 0..pos
    const size_t slot_off = (size_t)seq[3 * t + 2] * ctx * kv_dim;
    kc += slot_off;
    vc += slot_off;
    const int chunk = (n + nsplit - 1) / nsplit;
    const int j0 = sidx * chunk, j1 = min(n, j0 + chunk);
    const size_t koff = (size_t)(h / kv_mul) * head_dim;
    const int pstride = head_dim + 2;
    float* P = part + ((size_t)(t * n_heads + h) * nsplit + sidx) * pstride;
    float* sq = sm;                  // head_dim
    float* pacc = sm + head_dim;     // blockDim.x
    float* s = pacc + blockDim.x;    // chunk

    if (j0 < j1) {
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
            sq[d] = q[(size_t)t * q_dim + (size_t)h * head_dim + d];
        __syncthreads();
        const bool vec4 = ((head_dim | kv_dim) & 3) == 0;
        for (int j = j0 + threadIdx.x; j < j1; j += blockDim.x) {  // one key per thread
            const float* kj = kc + (size_t)j * kv_dim + koff;
            float a0 = 0.0f, a1 = 0.0f;
            if (vec4) {
                for (int d = 0; d < head_dim; d += 8) {
                    const float4 k0 = __ldg((const float4*)(kj + d));
                    a0 = fmaf(sq[d], k0.x, a0); a0 = fmaf(sq[d + 1], k0.y, a0);
                    a0 = fmaf(sq[d + 2], k0.z, a0); a0 = fmaf(sq[d + 3], k0.w, a0);
                    if (d + 4 < head_dim) {
                        const float4 k1 = __ldg((const float4*)(kj + d + 4));
                        a1 = fmaf(sq[d + 4], k1.x, a1); a1 = fmaf(sq[d + 5], k1.y, a1);
                        a1 = fmaf(sq[d + 6], k1.z, a1); a1 = fmaf(sq[d + 7], k1.w, a1);
                    }
                }
            } else {
                for (int d = 0; d < head_dim; d++) a0 = fmaf(sq[d], kj[d], a0);
            }
            s[j - j0] = (a0 + a1) * scale;
        }
        __syncthreads();
        float m = NEG_INF;
        for (int j = threadIdx.x; j < j1 - j0; j += blockDim.x) m = fmaxf(m, s[j]);
        m = block_max(m, red);
        float l = 0.0f;
        for (int j = threadIdx.x; j < j1 - j0; j += blockDim.x) {
            const float e = expf(s[j] - m);
            s[j] = e;
            l += e;
        }
        l = block_sum(l, red);
        const int groups = max(1, (int)blockDim.x / head_dim);
        const int g = threadIdx.x / head_dim;
        for (int d0 = 0; d0 < head_dim; d0 += blockDim.x) {
            const int d = d0 + threadIdx.x % head_dim;
            float a = 0.0f;
            if (g < groups && d < head_dim)
                for (int j = j0 + g; j < j1; j += groups) a = fmaf(s[j - j0], vc[(size_t)j * kv_dim + koff + d], a);
            pacc[threadIdx.x] = a;
            __syncthreads();
            if (threadIdx.x < head_dim && d0 + threadIdx.x < head_dim) {
                float o = 0.0f;
                for (int gg = 0; gg < groups; gg++) o += pacc[gg * head_dim + threadIdx.x];
                P[2 + d0 + threadIdx.x] = o;
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) { P[0] = m; P[1] = l; }
    } else if (threadIdx.x == 0) {
        P[0] = NEG_INF;
        P[1] = 0.0f;
    }

    // the last slice to finish merges all of them
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned int prev = atomicAdd(counters + t * n_heads + h, 1u);
        is_last = prev == (unsigned int)(nsplit - 1);
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    const float* P0 = part + (size_t)(t * n_heads + h) * nsplit * pstride;
    __shared__ float wsplit[32];  // nsplit <= 32: each slice's weight in the merged softmax
    if (threadIdx.x < 32) {
        const int i = threadIdx.x;
        const float mi = i < nsplit ? __ldcg(P0 + i * pstride) : NEG_INF;
        const float li = i < nsplit ? __ldcg(P0 + i * pstride + 1) : 0.0f;
        const float M = warp_max(mi);
        const float wi = li > 0.0f ? expf(mi - M) : 0.0f;
        const float L = warp_sum(wi * li);
        if (i < nsplit) wsplit[i] = wi / L;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.0f;
        for (int i = 0; i < nsplit; i++) {
            const float wi = wsplit[i];
            if (wi != 0.0f) o = fmaf(wi, __ldcg(P0 + i * pstride + 2 + d), o);
        }
        out[(size_t)t * q_dim + (size_t)h * head_dim + d] = o;
    }
    if (threadIdx.x == 0) counters[t * n_heads + h] = 0u;
}
