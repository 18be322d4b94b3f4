// AdamW (torch.optim.AdamW's update) over one flat range of fp32 master weights in a single launch, with the global
// gradient-norm clip factor read from the device (no host synchronization), and the bf16 working copy refreshed in
// the same pass. Moments fp32 or bf16, gradients fp32 or bf16. Four elements per thread and step of the loop
// (16-byte fp32 / 8-byte bf16 loads and stores) when every pointer allows it; the tail element by element.
#include "cuda/common.cuh"
#include "cuda/hadamard_warp.cuh"
#include "cuda/quant_codes.cuh"

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

// (the rest of the gradient next to the weight gradients' fused sums; each range from a 4-element boundary in float4)
__global__ void k_sumsq_ranges(double *out, const float *g, const unsigned long long *rg, int n) {
    float acc = 0.f;
    const size_t stride = (size_t)gridDim.x * blockDim.x, t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    for (int r = 0; r < n; r++) {
        const size_t off = rg[2 * r], len = rg[2 * r + 1];
        size_t head = (4 - off % 4) % 4;
        if (head > len) head = len;
        const float *p = g + off;
        for (size_t i = t; i < head; i += stride) acc += p[i] * p[i];
        const float4 *q = (const float4 *)(p + head);
        const size_t n4 = (len - head) / 4;
        for (size_t i = t; i < n4; i += stride) {
            const float4 v = q[i];
            acc += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
        for (size_t i = head + 4 * n4 + t; i < len; i += stride) acc += p[i] * p[i];
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) atomicAdd(out, (double)acc);
}
extern "C" void cuda_sumsq_ranges(double *sumsq, const float *g, const unsigned long long *ranges, int n, size_t total,
                                  cudaStream_t s) {
    if (n < 1 || !total) return;
    const size_t blocks = (total + 4095) / 4096;
    k_sumsq_ranges<<<(int)(blocks > 1024 ? 1024 : blocks), 256, 0, s>>>(sumsq, g, ranges, n);
    CUDA_LAUNCH_CHECK();
}

// The step's hyperparameters as the kernels use them (bc1 = 1 - beta1^step, sqrt_bc2 = sqrt(1 - beta2^step)).
struct adamw_hp {
    float lr, b1, b2, eps, wd, bc1, sqrt_bc2;
};
static adamw_hp hp_of(float lr, float beta1, float beta2, float eps, float wd, int step) {
    return adamw_hp{lr, beta1, beta2, eps, wd, 1.f - powf(beta1, (float)step), sqrtf(1.f - powf(beta2, (float)step))};
}
// the gradients' scale: clip / (norm + 1e-6) when norm = sqrt(*sumsq) exceeds clip > 0, else 1
__device__ __forceinline__ float clip_scale(const double *sumsq, float clip) {
    if (!sumsq || clip <= 0.f) return 1.f;
    const float norm = (float)sqrt(*sumsq);
    return norm > clip ? clip / (norm + 1e-6f) : 1.f;
}

// one element's update, every operation spelled out (explicit roundings, one fma), so that each inlined copy (vector
// and tail loops, k_adamw and k_adamw_seg) gives the same bits: with plain operators the compiler contracted the tail
// loop's copy differently from the vector loop's (a few elements in 1000 differed in their last bit)
__device__ __forceinline__ void adamw_one(float &p, float &m, float &v, float g, const adamw_hp &h) {
    m = __fmaf_rn(h.b1, m, __fmul_rn(1.f - h.b1, g));                            // b1 m + (1 - b1) g
    v = __fmaf_rn(h.b2, v, __fmul_rn(__fmul_rn(1.f - h.b2, g), g));              // b2 v + (1 - b2) g^2
    p = __fmul_rn(p, __fsub_rn(1.f, __fmul_rn(h.lr, h.wd)));                     // decoupled weight decay
    const float den = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), h.sqrt_bc2), h.eps);
    p = __fsub_rn(p, __fdiv_rn(__fmul_rn(__fdiv_rn(h.lr, h.bc1), m), den));   // lr / bc1 m / (sqrt(v) / sqrt(bc2) + eps)
}
// the 4 elements at vector index j of every array: updated, m, v and p stored; returns p's new values
template <typename MT, typename GT>
__device__ __forceinline__ f4 adamw_vec4(float *p, const GT *g, MT *m, MT *v, size_t j, float gs, const adamw_hp &h) {
    f4 pp = ld4(p, j), gg = ld4(g, j), mm = ld4(m, j), vv = ld4(v, j);
#pragma unroll
    for (int k = 0; k < 4; k++) adamw_one(pp.a[k], mm.a[k], vv.a[k], __fmul_rn(gg.a[k], gs), h);
    st4(m, j, mm);
    st4(v, j, vv);
    st4(p, j, pp);
    return pp;
}
// element e: updated, m, v, p and the bf16 copy stored; returns that bf16 value
template <typename MT, typename GT>
__device__ __forceinline__ bf16 adamw_elem(float *p, bf16 *w16, const GT *g, MT *m, MT *v, size_t e, float gs,
                                           const adamw_hp &h) {
    float pi = p[e], mi = ld1(m, e), vi = ld1(v, e);
    adamw_one(pi, mi, vi, __fmul_rn(ld1(g, e), gs), h);
    m[e] = (MT)mi;
    v[e] = (MT)vi;
    p[e] = pi;
    const bf16 b = __float2bfloat16(pi);
    w16[e] = b;
    return b;
}

template <typename MT, typename GT>
__global__ void k_adamw(float *p, bf16 *w16, const GT *g, MT *m, MT *v, size_t n, size_t n4, adamw_hp h,
                        const double *sumsq, float clip) {
    const float gs = clip_scale(sumsq, clip);
    size_t stride = (size_t)gridDim.x * blockDim.x, t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    for (size_t i = t; i < n4; i += stride) st4(w16, i, adamw_vec4(p, g, m, v, i, gs, h));
    for (size_t i = 4 * n4 + t; i < n; i += stride) adamw_elem(p, w16, g, m, v, i, gs, h);
}

template <typename MT, typename GT>
static void adamw_launch(float *p, bf16 *w16, const GT *g, MT *m, MT *v, size_t n, const adamw_hp &h,
                         const double *sumsq, float clip, cudaStream_t s) {
    int g16 = sizeof(GT) == 2, m16 = sizeof(MT) == 2;
    int vec = aligned16(p) && aligned8(w16) && vec_ok(g, g16) && vec_ok(m, m16) && vec_ok(v, m16);
    size_t n4 = vec ? n / 4 : 0, blocks = (n + 1023) / 1024;
    int grid = (int)(blocks > 132 * 8 ? 132 * 8 : blocks);
    k_adamw<MT, GT><<<grid, 256, 0, s>>>(p, w16, g, m, v, n, n4, h, sumsq, clip);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_adamw(float *p, halo_bf16 *w16, const void *g, int g_bf16, void *m, void *v, int mom_bf16,
                           size_t n, float lr, float beta1, float beta2, float eps, float weight_decay, int step,
                           const double *sumsq, float clip, cudaStream_t s) {
    if (!n) return;
    const adamw_hp h = hp_of(lr, beta1, beta2, eps, weight_decay, step);
    bf16 *w = (bf16 *)w16;
#define ADAMW_CASE(MT, GT) adamw_launch<MT, GT>(p, w, (const GT *)g, (MT *)m, (MT *)v, n, h, sumsq, clip, s)
    if (mom_bf16 && g_bf16) ADAMW_CASE(bf16, bf16);
    else if (mom_bf16) ADAMW_CASE(bf16, float);
    else if (g_bf16) ADAMW_CASE(float, bf16);
    else ADAMW_CASE(float, float);
#undef ADAMW_CASE
}

// ---- AdamW over segments, with the HALO layers' W amax ----
// The flat range cut into chunks of AW_CHUNK elements, each inside one segment (segment i's chunks numbered from
// first_chunk); block b runs chunks b, b + grid, .. (neighbouring blocks on neighbouring memory, as k_adamw's
// grid-stride loop). k_adamw's update of every element (the same arithmetic, so the same bits), and the amax of the
// stored bf16 values of each segment with a slot, one reduction and atomic per block and visit of a segment: rot_lb 0:
// max |w|; rot_lb 3..8 (n a multiple of 256, rows of 256-multiples): max |w H| with H in blocks of 2^rot_lb along the
// rows, scaled by rot_scale (rot256_absmax_halves: the layer's absmax pass bit for bit); *nf |= 1 on a NaN or Inf
// among them. A warp takes 256 consecutive elements at a time as two coalesced 16-byte loads a lane per array (8
// consecutive a lane made AdamW 10-13% slower on the 1B model: half-used sectors).
enum { AW_CHUNK = 256 * 8 * 4 };

__device__ __forceinline__ void stbf4(bf16 *w16, size_t i, __nv_bfloat162 lo, __nv_bfloat162 hi) {
    uint2 u;
    memcpy(&u.x, &lo, 4);
    memcpy(&u.y, &hi, 4);
    ((uint2 *)w16)[i] = u;
}

// One chunk's update (len elements from base: 256-element groups a warp at a time, the tail one a thread), its amax
// into mx when `amax`; with q (amax set, len % 256 == 0), the bf16 values' codes (1 / scale rs) at q[0 .. len).
template <typename MT>
__device__ __forceinline__ void adamw_chunk(float *p, bf16 *w16, const float *g, MT *m, MT *v, size_t base, size_t len,
                                            float gs, const adamw_hp &h, bool amax, int rot_lb, float rot_scale,
                                            uint8_t *q, float rs, int fmt, float &mx, int &bad) {
    const int lane = threadIdx.x & 31;
    const size_t groups = len / 256;
    for (size_t gi = threadIdx.x >> 5; gi < groups; gi += blockDim.x >> 5) {   // whole warps
        float w[8];
#pragma unroll
        for (int k = 0; k < 2; k++) {
            const size_t j = base / 4 + gi * 64 + 32 * k + lane;
            const f4 pp = adamw_vec4(p, g, m, v, j, gs, h);
            const __nv_bfloat162 b01 = __floats2bfloat162_rn(pp.a[0], pp.a[1]), b23 = __floats2bfloat162_rn(pp.a[2], pp.a[3]);
            stbf4(w16, j, b01, b23);
            if (amax) {
                bad |= nonfinite_bf2(b01) | nonfinite_bf2(b23);
                const float2 f01 = __bfloat1622float2(b01), f23 = __bfloat1622float2(b23);
                w[4 * k] = f01.x; w[4 * k + 1] = f01.y; w[4 * k + 2] = f23.x; w[4 * k + 3] = f23.y;
                if (q) *(unsigned *)(q + 4 * (gi * 64 + 32 * k + lane)) = quant4(w + 4 * k, rs, fmt);
            }
        }
        if (amax && rot_lb) mx = fmaxf(mx, rot256_absmax_halves(w, lane, rot_lb, rot_scale));
        else if (amax)
#pragma unroll
            for (int k = 0; k < 8; k++) mx = fmaxf(mx, fabsf(w[k]));
    }
    for (size_t i = groups * 256 + threadIdx.x; i < len; i += blockDim.x) {
        const float f = __bfloat162float(adamw_elem(p, w16, g, m, v, base + i, gs, h));
        mx = fmaxf(mx, fabsf(f));
        bad |= !isfinite(f);
    }
}

template <typename MT>
__global__ void __launch_bounds__(256) k_adamw_seg(float *p, bf16 *w16, const float *g, MT *m, MT *v,
                                                   const cuda_adamw_seg *seg, int nseg, unsigned chunks, adamw_hp h,
                                                   const double *sumsq, float clip) {
    const float gs = clip_scale(sumsq, clip), wd = h.wd;
    unsigned c = blockIdx.x;
    int lo = 0, hi = nseg - 1;   // the segment of chunk c: the last whose first chunk is <= c
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (seg[mid].first_chunk <= c) lo = mid; else hi = mid - 1;
    }
    float mx = 0.f;
    int bad = 0;
    for (int si = lo; c < chunks;) {   // (every loop condition below is uniform per block)
        const cuda_adamw_seg sg = seg[si];
        const size_t c0 = (size_t)(c - sg.first_chunk) * AW_CHUNK;
        h.wd = sg.decay ? wd : 0.f;
        adamw_chunk<MT>(p, w16, g, m, v, sg.off + c0, sg.n - c0 < AW_CHUNK ? sg.n - c0 : AW_CHUNK, gs, h,
                        sg.amax != NULL, sg.rot_lb, sg.rot_scale, sg.q ? sg.q + c0 : NULL,
                        sg.q ? rscale_of(*sg.code_amax, qmax_of(sg.fmt)) : 1.f, sg.fmt, mx, bad);
        c += gridDim.x;
        const int si0 = si;
        while (si + 1 < nseg && seg[si + 1].first_chunk <= c) si++;
        if (si != si0 || c >= chunks) {   // leaving the segment: its amax and flag
            if (sg.amax) {
                mx = block_max(mx);
                if (threadIdx.x == 0) atomicMax((unsigned *)sg.amax, __float_as_uint(mx));
                block_flags(bad, sg.nf);
            }
            mx = 0.f;
            bad = 0;
        }
    }
}

__global__ void k_adamw_seg_zero(const cuda_adamw_seg *seg, int nseg) {
    for (int i = threadIdx.x; i < nseg; i += blockDim.x)
        if (seg[i].amax) {
            if (seg[i].q) *seg[i].code_amax = *seg[i].amax;   // the codes' scale: the weights' amax before the update
            *seg[i].amax = 0.f;
        }
}

extern "C" int cuda_adamw_seg_check(const cuda_adamw_seg *seg, int nseg) {
    unsigned next = 0;
    for (int i = 0; i < nseg; i++) {
        const cuda_adamw_seg *sg = &seg[i];
        if (sg->off % 8 || !sg->n || sg->first_chunk != next || (sg->rot_lb && (sg->rot_lb < 3 || sg->rot_lb > 8 ||
                                                                                 sg->n % 256 || !sg->amax)))
            return 0;
        if (sg->q && (sg->rot_lb || !sg->amax || !sg->code_amax || sg->n % 256 || (uintptr_t)sg->q % 16 ||
                      (sg->fmt != HALO_CUDA_INT8 && sg->fmt != HALO_CUDA_E4M3)))
            return 0;
        next += (unsigned)((sg->n + AW_CHUNK - 1) / AW_CHUNK);
    }
    return (int)next;
}

extern "C" void cuda_adamw_segments(float *p, halo_bf16 *w16, const float *g, void *m, void *v, int mom_bf16,
                                    const cuda_adamw_seg *seg_dev, int nseg, int chunks, float lr, float beta1,
                                    float beta2, float eps, float weight_decay, int step, const double *sumsq,
                                    float clip, cudaStream_t s) {
    if (!nseg || !chunks) return;
    const adamw_hp h = hp_of(lr, beta1, beta2, eps, weight_decay, step);
    k_adamw_seg_zero<<<1, 256, 0, s>>>(seg_dev, nseg);
    CUDA_LAUNCH_CHECK();
    const int grid = chunks < 132 * 8 ? chunks : 132 * 8;   // k_adamw's grid
    if (mom_bf16)
        k_adamw_seg<bf16><<<grid, 256, 0, s>>>(p, (bf16 *)w16, g, (bf16 *)m, (bf16 *)v, seg_dev, nseg, (unsigned)chunks,
                                               h, sumsq, clip);
    else
        k_adamw_seg<float><<<grid, 256, 0, s>>>(p, (bf16 *)w16, g, (float *)m, (float *)v, seg_dev, nseg,
                                                (unsigned)chunks, h, sumsq, clip);
    CUDA_LAUNCH_CHECK();
}
