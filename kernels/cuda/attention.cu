// Causal attention over the on-device KV cache, one block per (query head, token).
//
// Token t of a launch sits at position pos = *pos_ptr + t and attends to keys 0..pos,
// so the same kernel serves decode (ntok = 1) and the prefill of a whole prompt chunk
// (whose keys/values the QKV kernel has already written). Scores live in shared memory
// (seq_len floats), which bounds the context length by the shared-memory size.
#include "common.cuh"

extern "C" __global__ void attention(const float* __restrict__ q,      // ntok x dim
                                     const float* __restrict__ kc,     // seq_len x kv_dim
                                     const float* __restrict__ vc,     // seq_len x kv_dim
                                     float* __restrict__ out,          // ntok x dim
                                     const int* __restrict__ pos_ptr,
                                     int dim, int kv_dim, int head_dim, int kv_mul,
                                     float scale) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    const int h = blockIdx.x, t = blockIdx.y;
    const int pos = *pos_ptr + t;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    float* sq = sm;                       // head_dim: the query
    float* part = sm + head_dim;          // blockDim.x: partial outputs
    float* s = part + blockDim.x;         // pos + 1 scores
    const size_t koff = (size_t)(h / kv_mul) * head_dim;

    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) sq[d] = q[(size_t)t * dim + (size_t)h * head_dim + d];
    __syncthreads();

    // scores: one warp per key, lanes split the head dimension (coalesced)
    for (int j = warp; j <= pos; j += nwarps) {
        const float* kj = kc + (size_t)j * kv_dim + koff;
        float a = 0.0f;
        for (int d = lane; d < head_dim; d += 32) a = fmaf(sq[d], kj[d], a);
        a = warp_sum(a);
        if (lane == 0) s[j] = a * scale;
    }
    __syncthreads();

    float m = NEG_INF;
    for (int j = threadIdx.x; j <= pos; j += blockDim.x) m = fmaxf(m, s[j]);
    m = block_max(m, red);
    float sum = 0.0f;
    for (int j = threadIdx.x; j <= pos; j += blockDim.x) {
        const float e = expf(s[j] - m);
        s[j] = e;
        sum += e;
    }
    sum = block_sum(sum, red);  // ends with __syncthreads visibility of s[] via the barriers inside

    // out[d] = sum_j p_j v_j[d]: `groups` thread groups split the keys, then combine
    const int groups = max(1, (int)blockDim.x / head_dim);
    const int g = threadIdx.x / head_dim;
    for (int d0 = 0; d0 < head_dim; d0 += blockDim.x) {
        const int d = d0 + threadIdx.x % head_dim;
        float a = 0.0f;
        if (g < groups && d < head_dim) {
            for (int j = g; j <= pos; j += groups) a = fmaf(s[j], vc[(size_t)j * kv_dim + koff + d], a);
        }
        part[threadIdx.x] = a;
        __syncthreads();
        if (threadIdx.x < head_dim && d0 + threadIdx.x < head_dim) {
            float o = 0.0f;
            for (int gg = 0; gg < groups; gg++) o += part[gg * head_dim + threadIdx.x];
            out[(size_t)t * dim + (size_t)h * head_dim + d0 + threadIdx.x] = o / sum;
        }
        __syncthreads();
    }
}
