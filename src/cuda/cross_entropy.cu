// Cross-entropy over one chunk of fp32 logits on the GPU: one block per row computes max and sum of exponentials in
// one online pass, adds the row loss to a double accumulator, and writes the bf16 gradient of the logits in a second
// pass (the lm_head products that follow take bf16 operands).
#include "cuda/common.cuh"

__global__ void k_xent(bf16 *dlogits, double *loss_sum, const float *logits, const int32_t *targets, int V,
                       float scale) {
    int row = blockIdx.x;
    const float *x = logits + (size_t)row * V;
    int tgt = targets[row];
    bf16 *dl = dlogits ? dlogits + (size_t)row * V : NULL;
    if (tgt < 0) {
        if (dl) for (int j = threadIdx.x; j < V; j += blockDim.x) dl[j] = __float2bfloat16(0.f);
        return;
    }
    float m = -INFINITY, s = 0.f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float v = x[j];
        if (v > m) { s = s * __expf(m - v) + 1.f; m = v; }
        else s += __expf(v - m);
    }
    float M = block_max(m);
    s = (m == -INFINITY) ? 0.f : s * __expf(m - M);
    float S = block_sum(s);
    if (threadIdx.x == 0) atomicAdd(loss_sum, (double)(logf(S) + M - x[tgt]));
    if (!dl) return;
    float inv = 1.f / S;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float p = __expf(x[j] - M) * inv;
        dl[j] = __float2bfloat16(scale * (p - (j == tgt ? 1.f : 0.f)));
    }
}

extern "C" void cuda_cross_entropy(halo_bf16 *dlogits, double *loss_sum, const float *logits, const int32_t *targets,
                                   int N, int V, float scale, cudaStream_t s) {
    if (N == 0) return;
    k_xent<<<N, V >= 4096 ? 1024 : 256, 0, s>>>((bf16 *)dlogits, loss_sum, logits, targets, V, scale);
    CUDA_LAUNCH_CHECK();
}
