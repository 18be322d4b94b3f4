// AdamW (torch.optim.AdamW's update) over one flat range of fp32 master weights in a single launch, with the global
// gradient-norm clip factor read from the device (no host synchronization), and the bf16 working copy refreshed in
// the same pass. Moments fp32 or bf16, gradients fp32 or bf16. Four elements per thread and step of the loop
// (16-byte fp32 / 8-byte bf16 loads and stores) when every pointer allows it; the tail element by element.
#include "cuda/common.cuh"

struct f4 { float a[4]; };
__device__ __forceinline__ f4 ld4(const float *p, size_t i) {
    float4 v = ((const float4 *)p)[i];
    return f4{{v.x, v.y, v.z, v.w}};
}
__device__ __forceinline__ f4 ld4(const bf16 *p, size_t i) {
    uint2 u = ((const uint2 *)p)[i];
    float2 lo = __bfloat1622float2(*(const __nv_bfloat162 *)&u.x), hi = __bfloat1622float2(*(const __nv_bfloat162 *)&u.y);
    return f4{{lo.x, lo.y, hi.x, hi.y}};
}
__device__ __forceinline__ void st4(float *p, size_t i, const f4 &v) {
    ((float4 *)p)[i] = make_float4(v.a[0], v.a[1], v.a[2], v.a[3]);
}
__device__ __forceinline__ void st4(bf16 *p, size_t i, const f4 &v) {
    __nv_bfloat162 lo = __floats2bfloat162_rn(v.a[0], v.a[1]), hi = __floats2bfloat162_rn(v.a[2], v.a[3]);
    uint2 u;
    u.x = *(const uint32_t *)&lo;
    u.y = *(const uint32_t *)&hi;
    ((uint2 *)p)[i] = u;
}
__device__ __forceinline__ float ld1(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float ld1(const bf16 *p, size_t i) { return __bfloat162float(p[i]); }

static int aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }
static int aligned8(const void *p) { return ((uintptr_t)p & 7) == 0; }
// 16 bytes for fp32 arrays, 8 for bf16 ones: 4 elements each
static int vec_ok(const void *p, int is_bf16) { return is_bf16 ? aligned8(p) : aligned16(p); }

template <typename GT>
__global__ void k_sumsq(double *out, const GT *g, size_t n, size_t n4) {
    float acc = 0.f;
    size_t stride = (size_t)gridDim.x * blockDim.x, t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    for (size_t i = t; i < n4; i += stride) {
        f4 v = ld4(g, i);
        acc += v.a[0] * v.a[0] + v.a[1] * v.a[1] + v.a[2] * v.a[2] + v.a[3] * v.a[3];
    }
    for (size_t i = 4 * n4 + t; i < n; i += stride) { float x = ld1(g, i); acc += x * x; }
    acc = block_sum(acc);
    if (threadIdx.x == 0) atomicAdd(out, (double)acc);
}

template <typename GT>
static void sumsq_launch(double *sumsq, const GT *g, size_t n, int is_bf16, cudaStream_t s) {
    if (!n) return;
    size_t n4 = vec_ok(g, is_bf16) ? n / 4 : 0, blocks = (n + 4095) / 4096;
    k_sumsq<GT><<<(int)(blocks > 1024 ? 1024 : blocks), 256, 0, s>>>(sumsq, g, n, n4);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_sumsq(double *sumsq, const float *g, size_t n, cudaStream_t s) {
    sumsq_launch(sumsq, g, n, 0, s);
}
extern "C" void cuda_sumsq_bf16(double *sumsq, const halo_bf16 *g, size_t n, cudaStream_t s) {
    sumsq_launch(sumsq, (const bf16 *)g, n, 1, s);
}

// one element's update (the vector and tail loops share it, so both give the same bits)
__device__ __forceinline__ void adamw_one(float &p, float &m, float &v, float g, float b1, float b2, float lr,
                                          float wd, float bc1, float sqrt_bc2, float eps) {
    m = b1 * m + (1.f - b1) * g;
    v = b2 * v + (1.f - b2) * g * g;
    p = p * (1.f - lr * wd);
    p -= lr / bc1 * m / (sqrtf(v) / sqrt_bc2 + eps);
}

template <typename MT, typename GT>
__global__ void k_adamw(float *p, bf16 *w16, const GT *g, MT *m, MT *v, size_t n, size_t n4, float lr, float b1,
                        float b2, float eps, float wd, float bc1, float sqrt_bc2, const double *sumsq, float clip) {
    float gs = 1.f;
    if (sumsq && clip > 0.f) {
        float norm = (float)sqrt(*sumsq);
        if (norm > clip) gs = clip / (norm + 1e-6f);
    }
    size_t stride = (size_t)gridDim.x * blockDim.x, t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    for (size_t i = t; i < n4; i += stride) {
        f4 pp = ld4(p, i), gg = ld4(g, i), mm = ld4(m, i), vv = ld4(v, i);
#pragma unroll
        for (int k = 0; k < 4; k++)
            adamw_one(pp.a[k], mm.a[k], vv.a[k], gg.a[k] * gs, b1, b2, lr, wd, bc1, sqrt_bc2, eps);
        st4(m, i, mm);
        st4(v, i, vv);
        st4(p, i, pp);
        st4(w16, i, pp);
    }
    for (size_t i = 4 * n4 + t; i < n; i += stride) {
        float pi = p[i], mi = ld1(m, i), vi = ld1(v, i);
        adamw_one(pi, mi, vi, ld1(g, i) * gs, b1, b2, lr, wd, bc1, sqrt_bc2, eps);
        m[i] = (MT)mi;
        v[i] = (MT)vi;
        p[i] = pi;
        w16[i] = __float2bfloat16(pi);
    }
}

template <typename MT, typename GT>
static void adamw_launch(float *p, bf16 *w16, const GT *g, MT *m, MT *v, size_t n, float lr, float b1, float b2,
                         float eps, float wd, float bc1, float sbc2, const double *sumsq, float clip, cudaStream_t s) {
    int g16 = sizeof(GT) == 2, m16 = sizeof(MT) == 2;
    int vec = aligned16(p) && aligned8(w16) && vec_ok(g, g16) && vec_ok(m, m16) && vec_ok(v, m16);
    size_t n4 = vec ? n / 4 : 0, blocks = (n + 1023) / 1024;
    int grid = (int)(blocks > 132 * 8 ? 132 * 8 : blocks);
    k_adamw<MT, GT><<<grid, 256, 0, s>>>(p, w16, g, m, v, n, n4, lr, b1, b2, eps, wd, bc1, sbc2, sumsq, clip);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_adamw(float *p, halo_bf16 *w16, const void *g, int g_bf16, void *m, void *v, int mom_bf16,
                           size_t n, float lr, float beta1, float beta2, float eps, float weight_decay, int step,
                           const double *sumsq, float clip, cudaStream_t s) {
    if (!n) return;
    float bc1 = 1.f - powf(beta1, (float)step), sbc2 = sqrtf(1.f - powf(beta2, (float)step));
    bf16 *w = (bf16 *)w16;
#define ADAMW_CASE(MT, GT) adamw_launch<MT, GT>(p, w, (const GT *)g, (MT *)m, (MT *)v, n, lr, beta1, beta2, eps, \
                                                 weight_decay, bc1, sbc2, sumsq, clip, s)
    if (mom_bf16 && g_bf16) ADAMW_CASE(bf16, bf16);
    else if (mom_bf16) ADAMW_CASE(bf16, float);
    else if (g_bf16) ADAMW_CASE(float, bf16);
    else ADAMW_CASE(float, float);
#undef ADAMW_CASE
}
