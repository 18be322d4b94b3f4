// SwiGLU on the GPU over fused [gate | up] rows: out = silu(gate) * up in fp32 arithmetic, bf16 storage.
#include "cuda/common.cuh"
#include "cuda/hadamard_warp.cuh"

// V consecutive bf16 values as V / 2 pairs (V = 2: one 4-byte access, 8: one 16-byte access)
template <int V> struct alignas(2 * V) bvec { uint32_t w[V / 2]; };
template <int V> __device__ __forceinline__ bvec<V> ldv(const bf16 *p) { return *(const bvec<V> *)p; }
template <int V> __device__ __forceinline__ void stv(bf16 *p, const bvec<V> &v) { *(bvec<V> *)p = v; }
__device__ __forceinline__ float2 pair_f2(uint32_t w) {
    __nv_bfloat162 h;
    memcpy(&h, &w, 4);
    return __bfloat1622float2(h);
}
__device__ __forceinline__ uint32_t pair_bf(float a, float b, float *amax) {   // amax (may be NULL): updated
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    if (amax) *amax = absmax_bf2(*amax, h);
    uint32_t w;
    memcpy(&w, &h, 4);
    return w;
}

// grid: x over groups of V columns (V = 8 when F % 8 == 0, else 2; F even for every Llama MLP size), y strides over
// rows. amax (may be NULL): max |out| of the stored bf16 values, one atomic per block (a HALO level-0 down_proj's X
// scale; NaN skipped). rot_lb > 0 (V = 8, F % 256 == 0: a warp holds 256 consecutive columns of a row): the amax of
// the output rotated in Hadamard blocks of 2^rot_lb and scaled by rot_scale (a level 1-2 down_proj's X scale).
template <int V>
__global__ void k_swiglu_fwd(bf16 *out, const bf16 *gu, int N, int F, unsigned *amax, int rot_lb, float rot_scale) {
    int j = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    float mx = 0.f;
    for (int n = blockIdx.y; n < N && j < F; n += gridDim.y) {
        const bf16 *row = gu + (size_t)n * 2 * F;
        const bvec<V> g2 = ldv<V>(row + j), u2 = ldv<V>(row + F + j);
        bvec<V> o2;
#pragma unroll
        for (int k = 0; k < V / 2; k++) {
            const float2 g = pair_f2(g2.w[k]), u = pair_f2(u2.w[k]);
            o2.w[k] = pair_bf(g.x / (1.f + __expf(-g.x)) * u.x, g.y / (1.f + __expf(-g.y)) * u.y,
                              amax && !rot_lb ? &mx : NULL);
        }
        stv<V>(out + (size_t)n * F + j, o2);
        if (V == 8 && rot_lb) {   // uniform per warp (F % 256 == 0: j < F for all its lanes or none)
            float f[8];
            #pragma unroll
            for (int k = 0; k < 4; k++) {
                const float2 p = pair_f2(o2.w[k]);
                f[2 * k] = p.x; f[2 * k + 1] = p.y;
            }
            mx = fmaxf(mx, rot256_absmax8(f, threadIdx.x & 31, rot_lb, rot_scale));
        }
    }
    if (amax) {
        mx = block_max(mx);
        if (threadIdx.x == 0) atomicMax(amax, __float_as_uint(mx));
    }
}

// amax_g / amax_u (both or neither): max |dgate|, |dup| of the stored bf16 values, one atomic each per block (the
// gate and up HALO layers' E_Y scales, without their own absmax pass).
template <int V>
__global__ void k_swiglu_bwd(bf16 *dgu, const bf16 *dout, const bf16 *gu, int N, int F, unsigned *amax_g,
                             unsigned *amax_u) {
    int j = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    float mg = 0.f, mu = 0.f;
    for (int n = blockIdx.y; n < N && j < F; n += gridDim.y) {
        const bf16 *row = gu + (size_t)n * 2 * F;
        const bvec<V> g2 = ldv<V>(row + j), u2 = ldv<V>(row + F + j), d2 = ldv<V>(dout + (size_t)n * F + j);
        bvec<V> dg2, du2;
#pragma unroll
        for (int k = 0; k < V / 2; k++) {
            const float2 g = pair_f2(g2.w[k]), u = pair_f2(u2.w[k]), d = pair_f2(d2.w[k]);
            float sx = 1.f / (1.f + __expf(-g.x)), sy = 1.f / (1.f + __expf(-g.y));
            dg2.w[k] = pair_bf(d.x * u.x * sx * (1.f + g.x * (1.f - sx)), d.y * u.y * sy * (1.f + g.y * (1.f - sy)),
                               amax_g ? &mg : NULL);
            du2.w[k] = pair_bf(d.x * g.x * sx, d.y * g.y * sy, amax_g ? &mu : NULL);
        }
        bf16 *drow = dgu + (size_t)n * 2 * F;
        stv<V>(drow + j, dg2);
        stv<V>(drow + F + j, du2);
    }
    if (amax_g) {   // NaN compares false: a NaN gradient leaves the scale finite (the absmax pass flags it instead)
        mg = block_max(mg);
        mu = block_max(mu);
        if (threadIdx.x == 0) { atomicMax(amax_g, __float_as_uint(mg)); atomicMax(amax_u, __float_as_uint(mu)); }
    }
}

// One launch of each kernel, 8 columns a thread when F % 8 == 0, else 2. rows: row blocks at most (the amax forms take
// fewer, 1024: one atomic per block and address; with 8 columns a thread 256 left the 1B backward at 3.39 ms a step
// against 3.10 with 2 columns a thread).
static void swiglu_launch(bool fwd, halo_bf16 *dst, const halo_bf16 *dout, const halo_bf16 *gu, int N, int F, int rows,
                          float *amax_a, float *amax_b, int rot_lb, float rot_scale, cudaStream_t s) {
    if (N == 0) return;
    if (F % 2) { fprintf(stderr, "cuda_swiglu: odd intermediate size %d unsupported\n", F); abort(); }
    if (rot_lb && (rot_lb < 3 || rot_lb > 8 || F % 256 || !amax_a)) {
        fprintf(stderr, "cuda_swiglu_forward_amax: rotated amax needs blocks of 8..256 and F %% 256 == 0 (F %d, "
                        "block %d)\n", F, 1 << rot_lb);
        abort();
    }
    const dim3 grid(cdiv(F / (F % 8 ? 2 : 8), 256), N < rows ? N : rows);
    bf16 *d = (bf16 *)dst;
    const bf16 *g = (const bf16 *)gu, *o = (const bf16 *)dout;
    unsigned *a = (unsigned *)amax_a, *b = (unsigned *)amax_b;
    if (fwd && F % 8) k_swiglu_fwd<2><<<grid, 256, 0, s>>>(d, g, N, F, a, 0, 1.f);
    else if (fwd) k_swiglu_fwd<8><<<grid, 256, 0, s>>>(d, g, N, F, a, rot_lb, rot_scale);
    else if (F % 8) k_swiglu_bwd<2><<<grid, 256, 0, s>>>(d, o, g, N, F, a, b);
    else k_swiglu_bwd<8><<<grid, 256, 0, s>>>(d, o, g, N, F, a, b);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_swiglu_forward(halo_bf16 *out, const halo_bf16 *gu, int N, int F, cudaStream_t s) {
    swiglu_launch(true, out, NULL, gu, N, F, 8192, NULL, NULL, 0, 1.f, s);
}
extern "C" void cuda_swiglu_forward_amax(halo_bf16 *out, const halo_bf16 *gu, int N, int F, float *amax, int rot_lb,
                                         float rot_scale, cudaStream_t s) {
    swiglu_launch(true, out, NULL, gu, N, F, 1024, amax, NULL, rot_lb, rot_scale, s);
}
extern "C" void cuda_swiglu_backward(halo_bf16 *dgu, const halo_bf16 *dout, const halo_bf16 *gu, int N, int F,
                                     cudaStream_t s) {
    swiglu_launch(false, dgu, dout, gu, N, F, 8192, NULL, NULL, 0, 1.f, s);
}
extern "C" void cuda_swiglu_backward_amax(halo_bf16 *dgu, const halo_bf16 *dout, const halo_bf16 *gu, int N, int F,
                                          float *amax_gate, float *amax_up, cudaStream_t s) {
    swiglu_launch(false, dgu, dout, gu, N, F, 1024, amax_gate, amax_up, 0, 1.f, s);
}
