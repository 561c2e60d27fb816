// What every matrix kernel shares (linear.cu: fp32/fp16/int8 rows; linear_blocks.cu: the
// GGUF block types): the argument struct, the output row ranges ("parts") of a launch,
// and the reduction + fused epilogues (store, residual add + next RMSNorm's inputs,
// SwiGLU, RoPE + bias + KV-cache write for the fused q/k/v matrix).
//
// A launch computes y = W x for a tile of up to NT tokens. W is one to MAX_PARTS parts:
// runs of consecutive output rows, each with its own storage (a Q4_K_M file keeps wq/wk
// in Q4_K and wv in Q6_K, so the fused q/k/v matrix of a layer is two parts). Grid
// blocks [part.block0, next part's block0) compute that part's rows.
#pragma once
#include "common.cuh"

enum { MODE_STORE = 0, MODE_RESID = 1, MODE_SWIGLU = 2, MODE_QKV = 3, MODE_GATED = 4 };

#define MAX_PARTS 3

struct Part {
    const char* W;   // fp32/fp16/int8 values, or a block type's quant plane (linear_blocks.cu)
    const char* S;   // int8: fp32 scale per group; block types: the side plane
    const char* S2;  // block types Q5_0 and Q6_K: fp16 d per block; else null
    int type;        // block type code (linear_blocks.cu only)
    int rows;        // rows in this part
    int row0;        // its first row among the launch's output rows
    int block0;      // its first grid block (blockIdx.x)
};

struct LinearArgs {
    Part part[MAX_PARTS];
    int nparts;
    int rows;             // output rows of the whole matrix (the row stride of `out`)
    int in_dim, gsize;    // gsize: int8 group size
    const float* x;       // ntok x in_dim activations
    int ntok;
    const float* ss;      // per-token sum of squares of x (RMSNorm prologue) or null
    const float* nw;      // RMSNorm weight (in_dim), or null when x is already scaled by it
    float eps;
    int mode;
    float* out;           // see the MODE_* epilogues
    float* ss_out;        // MODE_RESID: per-token sum of squares of the new x (accumulated)
    int q_dim, kv_dim, head_dim, ctx;   // MODE_QKV; ctx: positions per KV-cache slot
    float* kcache;        // MODE_QKV: this layer's (slots x ctx x kv_dim) caches
    float* vcache;
    const int* seq;       // per token of the launch: (token id, position, cache slot)
    const float* freq;    // MODE_QKV: head_dim / 2 rotary frequencies (inference.rope)
    const float* bias;    // MODE_QKV: q_dim + 2 kv_dim biases, or null
    const float* nw_next; // MODE_RESID: the next RMSNorm's weight, or null
    float* xw_out;        // MODE_RESID: new x * nw_next (the next kernel's input)
    const float* gate;    // MODE_GATED: out = silu(gate) * (W x), gate shaped like out
};

// The part this grid block works on (static indices only: no local-memory copy).
__device__ __forceinline__ Part find_part(const LinearArgs& A) {
    Part p = A.part[0];
    if (A.nparts > 1 && (int)blockIdx.x >= A.part[1].block0) p = A.part[1];
    if (A.nparts > 2 && (int)blockIdx.x >= A.part[2].block0) p = A.part[2];
    return p;
}

__device__ __forceinline__ void rope(float& a, float& b, float freq, int pos) {
    // the pair (a, b) rotates by pos * freq; the angle is the fp32 product, as on the CPU
    float s, c;
    sincosf((float)pos * freq, &s, &c);
    const float a2 = a * c - b * s;
    const float b2 = a * s + b * c;
    a = a2;
    b = b2;
}

__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }

// Epilogue for one (row pair, token): v0/v1 are rows r and r+1 (r even) of the matrix.
// Q/K rows are in interleaved pair order (the backend permutes NEOX models' rows on
// upload), so pair (r, r+1) rotates by frequency (r % head_dim) / 2.
__device__ __forceinline__ void epilogue_pair(const LinearArgs& A, int r, int t, float v0, float v1, bool has1) {
    switch (A.mode) {
    case MODE_STORE:
        A.out[(size_t)t * A.rows + r] = v0;
        if (has1) A.out[(size_t)t * A.rows + r + 1] = v1;
        break;
    case MODE_SWIGLU:  // rows interleave w1 (even) and w3 (odd)
        A.out[(size_t)t * (A.rows >> 1) + (r >> 1)] = silu(v0) * v1;
        break;
    case MODE_GATED: {
        const size_t i = (size_t)t * A.rows + r;
        A.out[i] = silu(A.gate[i]) * v0;
        if (has1) A.out[i + 1] = silu(A.gate[i + 1]) * v1;
        break;
    }
    case MODE_QKV: {
        if (A.bias != nullptr) {
            v0 += A.bias[r];
            v1 += A.bias[r + 1];
        }
        const int pos = A.seq[3 * t + 1], slot = A.seq[3 * t + 2];
        const size_t cell = ((size_t)slot * A.ctx + pos) * A.kv_dim;
        if (r < A.q_dim) {
            rope(v0, v1, A.freq[(r % A.head_dim) >> 1], pos);
            A.out[(size_t)t * A.q_dim + r] = v0;
            A.out[(size_t)t * A.q_dim + r + 1] = v1;
        } else if (r < A.q_dim + A.kv_dim) {
            const int rr = r - A.q_dim;
            rope(v0, v1, A.freq[(rr % A.head_dim) >> 1], pos);
            A.kcache[cell + rr] = v0;
            A.kcache[cell + rr + 1] = v1;
        } else {
            const int rr = r - A.q_dim - A.kv_dim;
            A.vcache[cell + rr] = v0;
            A.vcache[cell + rr + 1] = v1;
        }
        break;
    }
    default: break;
    }
}

// After the main loop: each lane holds partial sums acc[r][t] of rows row0 + r (local to
// part P) for tokens t0 + t. Sum over the warp (and the KS warps sharing the rows), then
// run the epilogue.
template <int NT, int NW, int R, int KS>
__device__ __forceinline__ void finish(const LinearArgs& A, const Part& P, float (&acc)[R][NT], int row0,
                                       int t0, int nt) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, ks = warp % KS;
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
        if (ks != 0 || row0 >= P.rows) return;
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
    const int g0 = P.row0 + row0;  // first row of this warp in the launch's output

    if (A.mode == MODE_RESID) {
        // x += W a, and accumulate sum(x^2) of the new x for the next RMSNorm
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t < nt) {
                float sq = 0.0f;
#pragma unroll
                for (int r = 0; r < R; r++) {
                    if (row0 + r < P.rows) {
                        const size_t idx = (size_t)(t0 + t) * A.rows + g0 + r;
                        // every lane computes the same value; lane r writes it
                        const float nv = A.out[idx] + acc[r][t];
                        sq += nv * nv;
                        __syncwarp();
                        if (lane == r) {
                            A.out[idx] = nv;
                            if (A.xw_out != nullptr) A.xw_out[idx] = nv * A.nw_next[g0 + r];
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
            if (lane == p * NT + t && t < nt && r < P.rows)
                epilogue_pair(A, P.row0 + r, t0 + t, acc[2 * p][t], acc[2 * p + 1][t], r + 1 < P.rows);
        }
    }
}

// 1 / rms of each token's x (the RMSNorm prologue), or 1 where the launch has no norm.
template <int NT>
__device__ __forceinline__ void rms_inv(const LinearArgs& A, int t0, int nt, float (&inv)[NT]) {
#pragma unroll
    for (int t = 0; t < NT; t++)
        inv[t] = (A.ss != nullptr && t < nt) ? rsqrtf(A.ss[t0 + t] / (float)A.in_dim + A.eps) : 1.0f;
}

#define NW_OF(nw, r, ks, u) nw
