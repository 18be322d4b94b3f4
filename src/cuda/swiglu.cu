// SwiGLU on the GPU over fused [gate | up] rows: out = silu(gate) * up in fp32 arithmetic, bf16 storage.
#include "cuda/common.cuh"

// grid: x over column pairs, y strides over rows; F even (every Llama MLP size), bf16x2 accesses. amax (may be NULL):
// max |out| of the stored bf16 values, one atomic per block (a HALO level-0 down_proj's X scale; NaN skipped).
__global__ void k_swiglu_fwd(bf16 *out, const bf16 *gu, int N, int F, unsigned *amax) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    float mx = 0.f;
    for (int n = blockIdx.y; n < N && 2 * j < F; n += gridDim.y) {
        const bf16 *row = gu + (size_t)n * 2 * F;
        float2 g = __bfloat1622float2(((const __nv_bfloat162 *)row)[j]);
        float2 u = __bfloat1622float2(((const __nv_bfloat162 *)(row + F))[j]);
        const __nv_bfloat162 o = __floats2bfloat162_rn(g.x / (1.f + __expf(-g.x)) * u.x, g.y / (1.f + __expf(-g.y)) * u.y);
        ((__nv_bfloat162 *)(out + (size_t)n * F))[j] = o;
        if (amax) mx = absmax_bf2(mx, o);
    }
    if (amax) {
        mx = block_max(mx);
        if (threadIdx.x == 0) atomicMax(amax, __float_as_uint(mx));
    }
}

// amax_g / amax_u (both or neither): max |dgate|, |dup| of the stored bf16 values, one atomic each per block (the
// gate and up HALO layers' E_Y scales, without their own absmax pass).
__global__ void k_swiglu_bwd(bf16 *dgu, const bf16 *dout, const bf16 *gu, int N, int F, unsigned *amax_g,
                             unsigned *amax_u) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    float mg = 0.f, mu = 0.f;
    for (int n = blockIdx.y; n < N && 2 * j < F; n += gridDim.y) {
        const bf16 *row = gu + (size_t)n * 2 * F;
        float2 g = __bfloat1622float2(((const __nv_bfloat162 *)row)[j]);
        float2 u = __bfloat1622float2(((const __nv_bfloat162 *)(row + F))[j]);
        float2 d = __bfloat1622float2(((const __nv_bfloat162 *)(dout + (size_t)n * F))[j]);
        float sx = 1.f / (1.f + __expf(-g.x)), sy = 1.f / (1.f + __expf(-g.y));
        bf16 *drow = dgu + (size_t)n * 2 * F;
        const __nv_bfloat162 dg = __floats2bfloat162_rn(d.x * u.x * sx * (1.f + g.x * (1.f - sx)),
                                                        d.y * u.y * sy * (1.f + g.y * (1.f - sy)));
        const __nv_bfloat162 du = __floats2bfloat162_rn(d.x * g.x * sx, d.y * g.y * sy);
        ((__nv_bfloat162 *)drow)[j] = dg;
        ((__nv_bfloat162 *)(drow + F))[j] = du;
        if (amax_g) {
            mg = absmax_bf2(mg, dg);
            mu = absmax_bf2(mu, du);
        }
    }
    if (amax_g) {   // NaN compares false: a NaN gradient leaves the scale finite (the absmax pass flags it instead)
        mg = block_max(mg);
        mu = block_max(mu);
        if (threadIdx.x == 0) { atomicMax(amax_g, __float_as_uint(mg)); atomicMax(amax_u, __float_as_uint(mu)); }
    }
}

static dim3 grid_for(int N, int F) { return dim3(cdiv(F / 2, 256), N < 8192 ? N : 8192); }

extern "C" void cuda_swiglu_forward(halo_bf16 *out, const halo_bf16 *gu, int N, int F, cudaStream_t s) {
    if (N == 0) return;
    if (F % 2) { fprintf(stderr, "cuda_swiglu: odd intermediate size %d unsupported\n", F); abort(); }
    k_swiglu_fwd<<<grid_for(N, F), 256, 0, s>>>((bf16 *)out, (const bf16 *)gu, N, F, NULL);
    CUDA_LAUNCH_CHECK();
}
extern "C" void cuda_swiglu_forward_amax(halo_bf16 *out, const halo_bf16 *gu, int N, int F, float *amax,
                                         cudaStream_t s) {
    if (N == 0) return;
    if (F % 2) { fprintf(stderr, "cuda_swiglu: odd intermediate size %d unsupported\n", F); abort(); }
    const dim3 grid(cdiv(F / 2, 256), N < 256 ? N : 256);   // fewer row blocks: one atomic each
    k_swiglu_fwd<<<grid, 256, 0, s>>>((bf16 *)out, (const bf16 *)gu, N, F, (unsigned *)amax);
    CUDA_LAUNCH_CHECK();
}
extern "C" void cuda_swiglu_backward(halo_bf16 *dgu, const halo_bf16 *dout, const halo_bf16 *gu, int N, int F,
                                     cudaStream_t s) {
    if (N == 0) return;
    if (F % 2) { fprintf(stderr, "cuda_swiglu: odd intermediate size %d unsupported\n", F); abort(); }
    k_swiglu_bwd<<<grid_for(N, F), 256, 0, s>>>((bf16 *)dgu, (const bf16 *)dout, (const bf16 *)gu, N, F, NULL, NULL);
    CUDA_LAUNCH_CHECK();
}
extern "C" void cuda_swiglu_backward_amax(halo_bf16 *dgu, const halo_bf16 *dout, const halo_bf16 *gu, int N, int F,
                                          float *amax_gate, float *amax_up, cudaStream_t s) {
    if (N == 0) return;
    if (F % 2) { fprintf(stderr, "cuda_swiglu: odd intermediate size %d unsupported\n", F); abort(); }
    // fewer row blocks than the plain kernel: two atomics per block on one address each
    const dim3 grid(cdiv(F / 2, 256), N < 256 ? N : 256);
    k_swiglu_bwd<<<grid, 256, 0, s>>>((bf16 *)dgu, (const bf16 *)dout, (const bf16 *)gu, N, F, (unsigned *)amax_gate,
                                      (unsigned *)amax_up);
    CUDA_LAUNCH_CHECK();
}
