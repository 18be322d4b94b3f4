// The two pieces the Llama variants add to the attention's q, k, v product (cuda_backend.h): a bias on its columns
// (Qwen2's q, k, v) and an RMSNorm over each head of q and of k before RoPE (Qwen3's q_norm, k_norm). The fused
// product's rows are [q heads | k heads | v heads], row stride ld.
#include "cuda/common.cuh"

// y[t, j] += bias[j] (bf16, one rounding of the fp32 sum); a thread a column, a block a run of rows
__global__ void k_bias_rows_add(bf16 *y, int ld, const bf16 *bias, int N, int n) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const float b = __bfloat162float(bias[j]);
    for (int t = blockIdx.y; t < N; t += gridDim.y) {
        bf16 *p = y + (size_t)t * ld + j;
        *p = __float2bfloat16(__bfloat162float(*p) + b);
    }
}

extern "C" void cuda_bias_rows_add(halo_bf16 *y, int ld, const halo_bf16 *bias, int N, int n, cudaStream_t s) {
    if (N == 0 || n == 0) return;
    const dim3 grid(cdiv(n, 256), N < 256 ? N : 256);
    k_bias_rows_add<<<grid, 256, 0, s>>>((bf16 *)y, ld, (const bf16 *)bias, N, n);
    CUDA_LAUNCH_CHECK();
}

// db[j] += sum_t dy[t, j]: a thread a column over a chunk of rows (coalesced along the row), one atomic per chunk
__global__ void k_bias_grad(float *db, const bf16 *dy, int ld, int N, int n, int rows_per_block) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const int t0 = blockIdx.y * rows_per_block, t1 = t0 + rows_per_block < N ? t0 + rows_per_block : N;
    float acc = 0.f;
    for (int t = t0; t < t1; t++) acc += __bfloat162float(dy[(size_t)t * ld + j]);
    atomicAdd(db + j, acc);
}

extern "C" void cuda_bias_grad(float *db, const halo_bf16 *dy, int ld, int N, int n, cudaStream_t s) {
    if (N == 0 || n == 0) return;
    const int rows = 256;
    const dim3 grid(cdiv(n, 256), cdiv(N, rows));
    k_bias_grad<<<grid, 256, 0, s>>>(db, (const bf16 *)dy, ld, N, n, rows);
    CUDA_LAUNCH_CHECK();
}

// One warp a head: heads 0..Hq-1 of a row are q's (weight wq), Hq..Hq+Hkv-1 k's (wk). raw (may be NULL) keeps the
// input [N, (Hq + Hkv) hd], rstd (may be NULL) the heads' scales [N, Hq + Hkv].
__global__ void k_head_rmsnorm_fwd(bf16 *x, int ld, bf16 *raw, float *rstd, const bf16 *wq, const bf16 *wk, int N,
                                   int Hq, int Hkv, int hd, float eps) {
    const int H = Hq + Hkv, lane = threadIdx.x & 31;
    const long head = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (head >= (long)N * H) return;
    const int t = (int)(head / H), h = (int)(head % H);
    bf16 *p = x + (size_t)t * ld + (size_t)h * hd;
    const bf16 *w = h < Hq ? wq : wk;
    float ss = 0.f;
    for (int d = lane; d < hd; d += 32) { const float v = __bfloat162float(p[d]); ss += v * v; }
    ss = warp_sum(ss);
    const float r = rsqrtf(ss / hd + eps);
    if (rstd && lane == 0) rstd[head] = r;
    bf16 *q = raw ? raw + (size_t)head * hd : NULL;
    for (int d = lane; d < hd; d += 32) {
        const bf16 v = p[d];
        if (q) q[d] = v;
        p[d] = __float2bfloat16(__bfloat162float(v) * r * __bfloat162float(w[d]));
    }
}

extern "C" void cuda_head_rmsnorm_forward(halo_bf16 *x, int ld, halo_bf16 *raw, float *rstd, const halo_bf16 *wq,
                                          const halo_bf16 *wk, int N, int Hq, int Hkv, int hd, float eps,
                                          cudaStream_t s) {
    const long heads = (long)N * (Hq + Hkv);
    if (heads == 0) return;
    k_head_rmsnorm_fwd<<<cdiv(heads, 8), 256, 0, s>>>((bf16 *)x, ld, (bf16 *)raw, rstd, (const bf16 *)wq,
                                                      (const bf16 *)wk, N, Hq, Hkv, hd, eps);
    CUDA_LAUNCH_CHECK();
}

// In place: dy (the gradient of the normed heads, in dqkv) becomes the gradient of their input,
// dx = r (dy w) - x r^3 / hd sum(dy w x); dwq / dwk (NULL: frozen) += sum over the heads of dy x r, per block in
// shared memory (q and k columns apart), then one atomic per column and block. hd <= 256.
__global__ void k_head_rmsnorm_bwd(bf16 *dy, int ld, const bf16 *raw, const float *rstd, const bf16 *wq,
                                   const bf16 *wk, float *dwq, float *dwk, int N, int Hq, int Hkv, int hd) {
    __shared__ float sw[2][256];
    for (int d = threadIdx.x; d < 2 * 256; d += blockDim.x) sw[d / 256][d % 256] = 0.f;
    __syncthreads();
    const int H = Hq + Hkv, lane = threadIdx.x & 31, warps = blockDim.x / 32;
    for (long head = (long)blockIdx.x * warps + threadIdx.x / 32; head < (long)N * H; head += (long)gridDim.x * warps) {
        const int t = (int)(head / H), h = (int)(head % H), isk = h >= Hq;
        bf16 *g = dy + (size_t)t * ld + (size_t)h * hd;
        const bf16 *x = raw + (size_t)head * hd, *w = isk ? wk : wq;
        const float r = rstd[head];
        float dot = 0.f;
        for (int d = lane; d < hd; d += 32)
            dot += __bfloat162float(g[d]) * __bfloat162float(w[d]) * __bfloat162float(x[d]);
        dot = warp_sum(dot);
        const float c = dot * r * r * r / hd;
        for (int d = lane; d < hd; d += 32) {
            const float gv = __bfloat162float(g[d]), xv = __bfloat162float(x[d]);
            atomicAdd(&sw[isk][d], gv * xv * r);
            g[d] = __float2bfloat16(gv * __bfloat162float(w[d]) * r - xv * c);
        }
    }
    __syncthreads();
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        if (dwq) atomicAdd(dwq + d, sw[0][d]);
        if (dwk) atomicAdd(dwk + d, sw[1][d]);
    }
}

extern "C" void cuda_head_rmsnorm_backward(halo_bf16 *dy, int ld, const halo_bf16 *raw, const float *rstd,
                                           const halo_bf16 *wq, const halo_bf16 *wk, float *dwq, float *dwk, int N,
                                           int Hq, int Hkv, int hd, cudaStream_t s) {
    const long heads = (long)N * (Hq + Hkv);
    if (heads == 0) return;
    const int blocks = cdiv(heads, 8) < 1024 ? cdiv(heads, 8) : 1024;
    k_head_rmsnorm_bwd<<<blocks, 256, 0, s>>>((bf16 *)dy, ld, (const bf16 *)raw, rstd, (const bf16 *)wq,
                                              (const bf16 *)wk, dwq, dwk, N, Hq, Hkv, hd);
    CUDA_LAUNCH_CHECK();
}
