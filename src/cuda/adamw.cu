// AdamW (torch.optim.AdamW's update) over one flat range of fp32 master weights in a single launch, with the global
// gradient-norm clip factor read from the device (no host synchronization), and the bf16 working copy refreshed in
// the same pass. Moments are fp32 or bf16.
#include "cuda/common.cuh"

__global__ void k_sumsq(double *out, const float *g, size_t n) {
    float acc = 0.f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        acc += g[i] * g[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) atomicAdd(out, (double)acc);
}

extern "C" void cuda_sumsq(double *sumsq, const float *g, size_t n, cudaStream_t s) {
    if (!n) return;
    size_t blocks = (n + 1023) / 1024;
    k_sumsq<<<(int)(blocks > 2048 ? 2048 : blocks), 256, 0, s>>>(sumsq, g, n);
    CUDA_LAUNCH_CHECK();
}

template <typename MT>
__global__ void k_adamw(float *p, bf16 *w16, const float *g, MT *m, MT *v, size_t n, float lr, float b1, float b2,
                        float eps, float wd, float bc1, float sqrt_bc2, const double *sumsq, float clip) {
    float gs = 1.f;
    if (sumsq && clip > 0.f) {
        float norm = (float)sqrt(*sumsq);
        if (norm > clip) gs = clip / (norm + 1e-6f);
    }
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float gi = g[i] * gs;
        float mi = b1 * (float)m[i] + (1.f - b1) * gi;
        float vi = b2 * (float)v[i] + (1.f - b2) * gi * gi;
        m[i] = (MT)mi;
        v[i] = (MT)vi;
        float pi = p[i] * (1.f - lr * wd);
        pi -= lr / bc1 * mi / (sqrtf(vi) / sqrt_bc2 + eps);
        p[i] = pi;
        w16[i] = __float2bfloat16(pi);
    }
}

extern "C" void cuda_adamw(float *p, halo_bf16 *w16, const float *g, void *m, void *v, int mom_bf16, size_t n,
                           float lr, float beta1, float beta2, float eps, float weight_decay, int step,
                           const double *sumsq, float clip, cudaStream_t s) {
    if (!n) return;
    float bc1 = 1.f - powf(beta1, (float)step), sbc2 = sqrtf(1.f - powf(beta2, (float)step));
    size_t blocks = (n + 255) / 256;
    int grid = (int)(blocks > 132 * 16 ? 132 * 16 : blocks);
    if (mom_bf16)
        k_adamw<bf16><<<grid, 256, 0, s>>>(p, (bf16 *)w16, g, (bf16 *)m, (bf16 *)v, n, lr, beta1, beta2, eps,
                                           weight_decay, bc1, sbc2, sumsq, clip);
    else
        k_adamw<float><<<grid, 256, 0, s>>>(p, (bf16 *)w16, g, (float *)m, (float *)v, n, lr, beta1, beta2, eps,
                                            weight_decay, bc1, sbc2, sumsq, clip);
    CUDA_LAUNCH_CHECK();
}
