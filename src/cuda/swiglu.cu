// SwiGLU on the GPU over fused [gate | up] rows: out = silu(gate) * up in fp32 arithmetic, bf16 storage.
#include "cuda/common.cuh"

// grid: x over column pairs, y strides over rows; F even (every Llama MLP size), bf16x2 accesses
__global__ void k_swiglu_fwd(bf16 *out, const bf16 *gu, int N, int F) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (2 * j >= F) return;
    for (int n = blockIdx.y; n < N; n += gridDim.y) {
        const bf16 *row = gu + (size_t)n * 2 * F;
        float2 g = __bfloat1622float2(((const __nv_bfloat162 *)row)[j]);
        float2 u = __bfloat1622float2(((const __nv_bfloat162 *)(row + F))[j]);
        ((__nv_bfloat162 *)(out + (size_t)n * F))[j] =
            __floats2bfloat162_rn(g.x / (1.f + __expf(-g.x)) * u.x, g.y / (1.f + __expf(-g.y)) * u.y);
    }
}

__global__ void k_swiglu_bwd(bf16 *dgu, const bf16 *dout, const bf16 *gu, int N, int F) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (2 * j >= F) return;
    for (int n = blockIdx.y; n < N; n += gridDim.y) {
        const bf16 *row = gu + (size_t)n * 2 * F;
        float2 g = __bfloat1622float2(((const __nv_bfloat162 *)row)[j]);
        float2 u = __bfloat1622float2(((const __nv_bfloat162 *)(row + F))[j]);
        float2 d = __bfloat1622float2(((const __nv_bfloat162 *)(dout + (size_t)n * F))[j]);
        float sx = 1.f / (1.f + __expf(-g.x)), sy = 1.f / (1.f + __expf(-g.y));
        bf16 *drow = dgu + (size_t)n * 2 * F;
        ((__nv_bfloat162 *)drow)[j] = __floats2bfloat162_rn(d.x * u.x * sx * (1.f + g.x * (1.f - sx)),
                                                            d.y * u.y * sy * (1.f + g.y * (1.f - sy)));
        ((__nv_bfloat162 *)(drow + F))[j] = __floats2bfloat162_rn(d.x * g.x * sx, d.y * g.y * sy);
    }
}

static dim3 grid_for(int N, int F) { return dim3(cdiv(F / 2, 256), N < 8192 ? N : 8192); }

extern "C" void cuda_swiglu_forward(halo_bf16 *out, const halo_bf16 *gu, int N, int F, cudaStream_t s) {
    if (N == 0) return;
    if (F % 2) { fprintf(stderr, "cuda_swiglu: odd intermediate size %d unsupported\n", F); abort(); }
    k_swiglu_fwd<<<grid_for(N, F), 256, 0, s>>>((bf16 *)out, (const bf16 *)gu, N, F);
    CUDA_LAUNCH_CHECK();
}
extern "C" void cuda_swiglu_backward(halo_bf16 *dgu, const halo_bf16 *dout, const halo_bf16 *gu, int N, int F,
                                     cudaStream_t s) {
    if (N == 0) return;
    if (F % 2) { fprintf(stderr, "cuda_swiglu: odd intermediate size %d unsupported\n", F); abort(); }
    k_swiglu_bwd<<<grid_for(N, F), 256, 0, s>>>((bf16 *)dgu, (const bf16 *)dout, (const bf16 *)gu, N, F);
    CUDA_LAUNCH_CHECK();
}
