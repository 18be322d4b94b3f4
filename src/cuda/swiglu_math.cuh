// The SwiGLU backward's arithmetic on bf16 pairs, shared by swiglu.cu and the own INT8 kernel's epilogue
// (int8_gemm.cu: gate's and up's E_Y amax taken where down's input gradient is written), so both give the same bits.
#ifndef HALO_CUDA_SWIGLU_MATH_CUH
#define HALO_CUDA_SWIGLU_MATH_CUH
#include "cuda/common.cuh"

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

// dgate, dup of V consecutive columns from gate, up and dout (the bf16 pairs stored; mg / mu, may be NULL: their max)
template <int V>
__device__ __forceinline__ void swiglu_bwd_vec(const bvec<V> &g2, const bvec<V> &u2, const bvec<V> &d2, bvec<V> &dg2,
                                               bvec<V> &du2, float *mg, float *mu) {
#pragma unroll
    for (int k = 0; k < V / 2; k++) {
        const float2 g = pair_f2(g2.w[k]), u = pair_f2(u2.w[k]), d = pair_f2(d2.w[k]);
        float sx = 1.f / (1.f + __expf(-g.x)), sy = 1.f / (1.f + __expf(-g.y));
        dg2.w[k] = pair_bf(d.x * u.x * sx * (1.f + g.x * (1.f - sx)), d.y * u.y * sy * (1.f + g.y * (1.f - sy)), mg);
        du2.w[k] = pair_bf(d.x * g.x * sx, d.y * g.y * sy, mu);
    }
}

// 1 when a value of the V / 2 bf16 pairs is a NaN or Inf
template <int V> __device__ __forceinline__ int nonfinite_vec(const bvec<V> &v) {
    int bad = 0;
#pragma unroll
    for (int k = 0; k < V / 2; k++) {
        __nv_bfloat162 h;
        memcpy(&h, &v.w[k], 4);
        bad |= nonfinite_bf2(h);
    }
    return bad;
}

#endif
