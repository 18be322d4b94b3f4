// SwiGLU on the GPU over fused [gate | up] rows: out = silu(gate) * up in fp32 arithmetic, bf16 storage.
#include "cuda/common.cuh"

__global__ void k_swiglu_fwd(bf16 *out, const bf16 *gu, int N, int F) {
    size_t total = (size_t)N * F;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t n = i / F, f = i % F;
        float g = __bfloat162float(gu[n * 2 * F + f]), u = __bfloat162float(gu[n * 2 * F + F + f]);
        out[i] = __float2bfloat16(g / (1.f + __expf(-g)) * u);
    }
}

__global__ void k_swiglu_bwd(bf16 *dgu, const bf16 *dout, const bf16 *gu, int N, int F) {
    size_t total = (size_t)N * F;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t n = i / F, f = i % F;
        float g = __bfloat162float(gu[n * 2 * F + f]), u = __bfloat162float(gu[n * 2 * F + F + f]);
        float d = __bfloat162float(dout[i]), sg = 1.f / (1.f + __expf(-g));
        dgu[n * 2 * F + f] = __float2bfloat16(d * u * sg * (1.f + g * (1.f - sg)));
        dgu[n * 2 * F + F + f] = __float2bfloat16(d * g * sg);
    }
}

static int grid_for(size_t n) { size_t g = (n + 255) / 256; return (int)(g > 65536 ? 65536 : (g ? g : 1)); }

extern "C" void cuda_swiglu_forward(halo_bf16 *out, const halo_bf16 *gu, int N, int F, cudaStream_t s) {
    k_swiglu_fwd<<<grid_for((size_t)N * F), 256, 0, s>>>((bf16 *)out, (const bf16 *)gu, N, F);
    CUDA_LAUNCH_CHECK();
}
extern "C" void cuda_swiglu_backward(halo_bf16 *dgu, const halo_bf16 *dout, const halo_bf16 *gu, int N, int F,
                                     cudaStream_t s) {
    k_swiglu_bwd<<<grid_for((size_t)N * F), 256, 0, s>>>((bf16 *)dgu, (const bf16 *)dout, (const bf16 *)gu, N, F);
    CUDA_LAUNCH_CHECK();
}
