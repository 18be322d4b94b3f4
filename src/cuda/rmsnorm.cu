// RMSNorm on the GPU: fp32 residual in, bf16 normalized output (the next product's operand), fp32 rstd saved.
// Backward adds the input gradient to the residual gradient in place and keeps a bf16 copy for the products, and
// reduces the weight gradient in the same pass (shared-memory column sums, one global atomic per column and block).
#include "cuda/common.cuh"
#include "cuda/hadamard_warp.cuh"
#include "cuda/quant_codes.cuh"

// 1 / rms of a row x4 [D / 4] (D % 4 == 0), one warp: lane-strided sums of squares, then the warp's sum
__device__ __forceinline__ float row_rstd4(const float4 *x4, int D, float eps, int lane) {
    float ss = 0.f;
    for (int d = lane; d < D / 4; d += 32) {
        const float4 v = x4[d];
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    return rsqrtf(warp_sum(ss) / D + eps);
}

// bf16(x * r * w) of x4[d] (4 values) as two pairs
__device__ __forceinline__ void norm4_vals(const float4 *x4, const bf16 *w, int d, float r, __nv_bfloat162 &o01,
                                           __nv_bfloat162 &o23) {
    const float4 v = x4[d];
    const float2 w01 = __bfloat1622float2(((const __nv_bfloat162 *)w)[2 * d]);
    const float2 w23 = __bfloat1622float2(((const __nv_bfloat162 *)w)[2 * d + 1]);
    o01 = __floats2bfloat162_rn(v.x * r * w01.x, v.y * r * w01.y);
    o23 = __floats2bfloat162_rn(v.z * r * w23.x, v.w * r * w23.y);
}

// out[4d .. 4d + 3] = bf16(x * r * w), also returned as two pairs
__device__ __forceinline__ void norm4(const float4 *x4, const bf16 *w, bf16 *o, int d, float r, __nv_bfloat162 &o01,
                                      __nv_bfloat162 &o23) {
    norm4_vals(x4, w, d, r, o01, o23);
    ((__nv_bfloat162 *)o)[2 * d] = o01;
    ((__nv_bfloat162 *)o)[2 * d + 1] = o23;
}

// The codes of two bf16 pairs (4 values), as quant4
__device__ __forceinline__ uint32_t quant_pairs(__nv_bfloat162 a, __nv_bfloat162 b, float r, int fmt) {
    const float2 fa = __bfloat1622float2(a), fb = __bfloat1622float2(b);
    const float f[4] = {fa.x, fa.y, fb.x, fb.y};
    return quant4(f, r, fmt);
}

// one warp per row; D % 4 == 0 takes 16-byte loads of x and 8-byte stores of out. keep_rstd: rstd holds the row
// scales already (a recomputation from the stored rstd: the same products, so the same bf16 bits). amax (may be
// NULL): max |out| of the stored bf16 values, one atomic per block (a HALO level-0 layer's X scale, without its own
// absmax pass; NaN is skipped, as there). rot_lb > 0 (D % 256 == 0, amax set): the amax is that of the output rotated
// in Hadamard blocks of 2^rot_lb <= 256 and scaled by rot_scale (a HALO level 1-2 layer's X scale); the lanes then
// store 8 consecutive values of each 256 (the same values: only the order of the stores differs). nonfinite (with
// amax; may be NULL): |= 1 when an output is a NaN or Inf (the layer's X flag, which its own absmax pass would set).
__global__ void k_rmsnorm_fwd(bf16 *out, float *rstd, const float *x, const bf16 *w, int N, int D, float eps,
                              int keep_rstd, unsigned *amax, int rot_lb, float rot_scale, int *nonfinite) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
    float mx = 0.f;
    int bad = 0;
    if (row < N) {
        const float *xr = x + (size_t)row * D;
        bf16 *o = out + (size_t)row * D;
        float ss = 0.f, r;
        if (D % 4 == 0) {
            const float4 *x4 = (const float4 *)xr;
            if (keep_rstd) r = rstd[row];
            else {
                r = row_rstd4(x4, D, eps, lane);
                if (lane == 0) rstd[row] = r;
            }
            if (rot_lb) {   // uniform per warp: all lanes take part in the shuffles
                for (int c = 0; c < D / 256; c++) {
                    const int d = c * 64 + 2 * lane;   // float4 index: 8 consecutive values
                    float f[8];
                    for (int h = 0; h < 2; h++) {
                        __nv_bfloat162 o01, o23;
                        norm4(x4, w, o, d + h, r, o01, o23);
                        bad |= nonfinite_bf2(o01) | nonfinite_bf2(o23);
                        const float2 a = __bfloat1622float2(o01), b = __bfloat1622float2(o23);
                        f[4 * h] = a.x; f[4 * h + 1] = a.y; f[4 * h + 2] = b.x; f[4 * h + 3] = b.y;
                    }
                    mx = fmaxf(mx, rot256_absmax8(f, lane, rot_lb, rot_scale));
                }
            } else {
                for (int d = lane; d < D / 4; d += 32) {
                    __nv_bfloat162 o01, o23;
                    norm4(x4, w, o, d, r, o01, o23);
                    if (amax) {
                        mx = absmax_bf2(absmax_bf2(mx, o01), o23);
                        bad |= nonfinite_bf2(o01) | nonfinite_bf2(o23);
                    }
                }
            }
        } else {
            if (keep_rstd) r = rstd[row];
            else {
                for (int d = lane; d < D; d += 32) ss += xr[d] * xr[d];
                ss = warp_sum(ss);
                r = rsqrtf(ss / D + eps);
                if (lane == 0) rstd[row] = r;
            }
            for (int d = lane; d < D; d += 32) {
                const bf16 v = __float2bfloat16(xr[d] * r * __bfloat162float(w[d]));
                o[d] = v;
                if (amax) {
                    mx = fmaxf(mx, fabsf(__bfloat162float(v)));
                    bad |= !isfinite(__bfloat162float(v));
                }
            }
        }
    }
    if (amax) {   // uniform branch: every thread of the block reaches the reduction
        mx = block_max(mx);
        if (threadIdx.x == 0) atomicMax(amax, __float_as_uint(mx));
        block_flags(bad, nonfinite);
    }
}

// The upstream gradient dout of the backward kernels below: bf16, or the fp32 sum a HALO group's products left
// (halo_cuda_linear_backward_flags into an fp32 buffer; no rounding pass). Values 4 d .. 4 d + 3, or value d.
__device__ __forceinline__ void load_g4(const bf16 *g, int d, float2 &g01, float2 &g23) {
    const __nv_bfloat162 *g2 = (const __nv_bfloat162 *)g;
    g01 = __bfloat1622float2(g2[2 * d]);
    g23 = __bfloat1622float2(g2[2 * d + 1]);
}
__device__ __forceinline__ void load_g4(const float *g, int d, float2 &g01, float2 &g23) {
    const float4 v = ((const float4 *)g)[d];
    g01 = make_float2(v.x, v.y);
    g23 = make_float2(v.z, v.w);
}
__device__ __forceinline__ float load_g1(const bf16 *g, int d) { return __bfloat162float(g[d]); }
__device__ __forceinline__ float load_g1(const float *g, int d) { return g[d]; }

// Four values of the input gradient from float4 d: dx = r (dy w) - c x (+ res), stored in fp32 (o) and, when o16, in
// bf16, with max |bf16 dx| into mx when amax (bad |= 1 when one of those is a NaN or Inf). code (may be NULL; then
// amax is set): instead of storing the bf16 values, their four 8-bit codes with 1 / scale rq (delayed scaling).
__device__ __forceinline__ void dx_store4(float *o, bf16 *o16, const float *res, int d, float2 g01, float2 g23,
                                          float2 w01, float2 w23, float4 xv, float r, float c, bool amax, float &mx,
                                          int &bad, uint32_t *code = NULL, float rq = 1.f, int fmt = 0) {
    float4 v;
    v.x = r * g01.x * w01.x - c * xv.x;
    v.y = r * g01.y * w01.y - c * xv.y;
    v.z = r * g23.x * w23.x - c * xv.z;
    v.w = r * g23.y * w23.y - c * xv.w;
    if (res) {
        const float4 rv = ((const float4 *)res)[d];
        v.x += rv.x; v.y += rv.y; v.z += rv.z; v.w += rv.w;
    }
    ((float4 *)o)[d] = v;
    if (o16 || code) {
        const __nv_bfloat162 b01 = __floats2bfloat162_rn(v.x, v.y), b23 = __floats2bfloat162_rn(v.z, v.w);
        if (o16) {
            ((__nv_bfloat162 *)o16)[2 * d] = b01;
            ((__nv_bfloat162 *)o16)[2 * d + 1] = b23;
        }
        if (amax) {
            const float2 f01 = __bfloat1622float2(b01), f23 = __bfloat1622float2(b23);
            mx = fmaxf(mx, fmaxf(fmaxf(fabsf(f01.x), fabsf(f01.y)), fmaxf(fabsf(f23.x), fabsf(f23.y))));
            bad |= nonfinite_bf2(b01) | nonfinite_bf2(b23);
            if (code) *code = quant_pairs(b01, b23, rq, fmt);
        }
    }
}

// The transposed codes of a shared tile tl [32][ldt] (32 tokens from r0, D columns, ldt = D + 4) into qt [D][ldqt]:
// each thread moves 4 x 4 byte blocks (transpose4), 8 threads writing one 32-byte sector of a qt row; tokens at or past
// rows_pad are left out. All threads of the block call it (blockDim.x threads).
__device__ __forceinline__ void tile32_store_t(const uint8_t *tl, int ldt, int D, int r0, int rows_pad, uint8_t *qt,
                                               long ldqt) {
    for (int idx = threadIdx.x; idx < (D / 4) * 8; idx += blockDim.x) {
        const int tb = idx & 7, cg = idx >> 3, t0 = r0 + 4 * tb;
        if (t0 >= rows_pad) continue;
        unsigned wv[4], o[4];
        #pragma unroll
        for (int k = 0; k < 4; k++) wv[k] = *(const uint32_t *)(tl + (size_t)(4 * tb + k) * ldt + 4 * cg);
        transpose4(wv, o);
        #pragma unroll
        for (int y = 0; y < 4; y++) *(uint32_t *)(qt + (size_t)(4 * cg + y) * ldqt + t0) = o[y];
    }
}

// Delayed scaling (halo_cuda.h, halo_cuda_codes): the forward writing a HALO layer's X codes instead of bf16 out. 32
// rows a block, 8 warps of 4 rows, each row as k_rmsnorm_fwd computes it (the same rstd, stored, and the same bf16
// values), quantized with the scale of *c.amax: row-major into c.q and into a shared tile [32][D + 4] (the padding
// spreads the reads below over the banks), which goes to c.qt transposed (zero codes for rows N..rows_pad-1): each
// thread moves 4 x 4 byte blocks (transpose4), 8 threads writing one 32-byte sector of a qt row. max |value| of the
// bf16 values into c.amax_next (one atomic per block; NaN skipped), a NaN / Inf sets c.nonfinite.
__global__ void __launch_bounds__(256) k_rmsnorm_codes(float *rstd, const float *x, const bf16 *w, int N, int D,
                                                       float eps, halo_cuda_codes c) {
    extern __shared__ __align__(16) uint8_t tl[];   // [32][D + 4]
    const int ldt = D + 4, r0 = blockIdx.x * 32, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (blockIdx.x == 0 && threadIdx.x == 0) run_alpha(c.aj);
    const float rs = rscale_of(*c.amax, qmax_of(c.fmt));
    float mx = 0.f;
    int bad = 0;
    for (int i = warp; i < 32; i += 8) {
        const int row = r0 + i;
        uint32_t *trow = (uint32_t *)(tl + (size_t)i * ldt);
        if (row >= N) {
            for (int d = lane; d < D / 4; d += 32) trow[d] = 0u;
            continue;
        }
        const float4 *x4 = (const float4 *)(x + (size_t)row * D);
        const float r = row_rstd4(x4, D, eps, lane);
        if (lane == 0) rstd[row] = r;
        for (int d = lane; d < D / 4; d += 32) {
            __nv_bfloat162 o01, o23;
            norm4_vals(x4, w, d, r, o01, o23);
            mx = absmax_bf2(absmax_bf2(mx, o01), o23);
            bad |= nonfinite_bf2(o01) | nonfinite_bf2(o23);
            const uint32_t code = quant_pairs(o01, o23, rs, c.fmt);
            if (c.q) *(uint32_t *)(c.q + (size_t)row * c.ldq + 4 * d) = code;
            trow[d] = code;
        }
    }
    __syncthreads();
    if (c.qt) tile32_store_t(tl, ldt, D, r0, c.rows_pad, c.qt, c.ldqt);
    mx = block_max(mx);
    if (threadIdx.x == 0 && c.amax_next) atomicMax((unsigned *)c.amax_next, __float_as_uint(mx));
    block_flags(bad, c.nonfinite);
}

extern "C" int cuda_rmsnorm_codes_ok(int D) { return D > 0 && D % 16 == 0 && 32 * (D + 4) <= 200 * 1024; }

extern "C" void cuda_rmsnorm_forward_codes(float *rstd, const float *x, const halo_bf16 *w, int N, int D, float eps,
                                           const halo_cuda_codes *c, cudaStream_t s) {
    const int rows = c->qt ? c->rows_pad : N;
    if (!cuda_rmsnorm_codes_ok(D)) {
        fprintf(stderr, "cuda_rmsnorm_forward_codes: unsupported D %d\n", D);
        abort();
    }
    codes_layout_check("cuda_rmsnorm_forward_codes", c, N, D, 4);
    if (rows <= 0) return;
    const size_t smem = 32 * (size_t)(D + 4);
    if (smem > 48 * 1024)   // every launch: the attribute is the current device's
        CUDA_CHECK(cudaFuncSetAttribute(k_rmsnorm_codes, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    k_rmsnorm_codes<<<cdiv(rows, 32), 256, smem, s>>>(rstd, x, (const bf16 *)w, N, D, eps, *c);
    CUDA_LAUNCH_CHECK();
}

// One pass: each block takes a contiguous range of rows, one warp per row at a time. A warp computes the row's dx
// (dx = r * (dy*w) - r^3 / D * x * sum(dy*w*x), plus dres) and adds dout * x * r into the block's shared dw[D]; the
// block then adds its dw to the global one, one atomic per column. VEC: D % 4 == 0 (16-byte x, 8-byte dout loads).
// nonfinite (with amax16; may be NULL): |= 1 when a dx16 value is a NaN or Inf (the HALO layer's E_Y flag, which its
// skipped absmax pass would set).
template <bool VEC, typename TG>
__global__ void k_rmsnorm_bwd(float *dx, bf16 *dx16, float *dw, const TG *dout, const float *x, const bf16 *w,
                              const float *rstd, const float *dres, int N, int D, int rows_per_block,
                              unsigned *amax16, int *nonfinite) {
    extern __shared__ float sdw[];   // [D]
    float mx = 0.f;                  // max |dx16| (amax16: a HALO layer's E_Y scale)
    int bad = 0;
    for (int d = threadIdx.x; d < D; d += blockDim.x) sdw[d] = 0.f;
    __syncthreads();
    int warp = threadIdx.x / 32, lane = threadIdx.x & 31, nwarps = blockDim.x / 32;
    int r0 = blockIdx.x * rows_per_block, r1 = min(N, r0 + rows_per_block);
    for (int row = r0 + warp; row < r1; row += nwarps) {
        const float *xr = x + (size_t)row * D;
        const TG *g = dout + (size_t)row * D;
        float *o = dx + (size_t)row * D;
        const float *res = dres ? dres + (size_t)row * D : NULL;
        bf16 *o16 = dx16 ? dx16 + (size_t)row * D : NULL;
        float r = rstd[row], dot = 0.f;
        if (VEC) {
            const float4 *x4 = (const float4 *)xr;
            const __nv_bfloat162 *w2 = (const __nv_bfloat162 *)w;
            for (int d = lane; d < D / 4; d += 32) {
                float4 xv = x4[d];
                float2 g01, g23;
                load_g4(g, d, g01, g23);
                float2 w01 = __bfloat1622float2(w2[2 * d]), w23 = __bfloat1622float2(w2[2 * d + 1]);
                dot += g01.x * w01.x * xv.x + g01.y * w01.y * xv.y + g23.x * w23.x * xv.z + g23.y * w23.y * xv.w;
            }
            dot = warp_sum(dot);
            float c = r * r * r * dot / D;
            for (int d = lane; d < D / 4; d += 32) {
                float4 xv = x4[d];
                float2 g01, g23;
                load_g4(g, d, g01, g23);
                float2 w01 = __bfloat1622float2(w2[2 * d]), w23 = __bfloat1622float2(w2[2 * d + 1]);
                dx_store4(o, o16, res, d, g01, g23, w01, w23, xv, r, c, amax16 != NULL, mx, bad);
                // component-major (sdw[j * D/4 + d] holds column 4 d + j): a warp's 32 lanes hit 32 banks
                if (dw) {
                    atomicAdd(&sdw[d], g01.x * xv.x * r);
                    atomicAdd(&sdw[D / 4 + d], g01.y * xv.y * r);
                    atomicAdd(&sdw[D / 2 + d], g23.x * xv.z * r);
                    atomicAdd(&sdw[3 * (D / 4) + d], g23.y * xv.w * r);
                }
            }
        } else {
            for (int d = lane; d < D; d += 32) dot += load_g1(g, d) * __bfloat162float(w[d]) * xr[d];
            dot = warp_sum(dot);
            float c = r * r * r * dot / D;
            for (int d = lane; d < D; d += 32) {
                float gd = load_g1(g, d), xd = xr[d];
                float v = r * gd * __bfloat162float(w[d]) - c * xd;
                if (res) v += res[d];
                o[d] = v;
                if (o16) {
                    o16[d] = __float2bfloat16(v);
                    if (amax16) {
                        const float f = __bfloat162float(o16[d]);
                        mx = fmaxf(mx, fabsf(f));
                        bad |= !isfinite(f);
                    }
                }
                if (dw) atomicAdd(&sdw[d], gd * xd * r);
            }
        }
    }
    __syncthreads();
    if (r0 < r1 && dw)   // dw NULL: a frozen norm (LoRA)
        for (int d = threadIdx.x; d < D; d += blockDim.x)
            atomicAdd(&dw[d], VEC ? sdw[(d & 3) * (D / 4) + d / 4] : sdw[d]);
    if (amax16) {
        mx = block_max(mx);
        if (threadIdx.x == 0) atomicMax(amax16, __float_as_uint(mx));
        block_flags(bad, nonfinite);
    }
}

// The same for D = 128 NV (Llama-3.2-1B: 2048, NV 16; 1024, NV 8), one read of each row's x: a lane keeps its NV
// float4 of x in registers between the dot product and the output (k_rmsnorm_bwd reads x twice; dout, half the bytes,
// is still read twice: both in registers spill at NV 16), the same arithmetic in the same order. 2 blocks of 8 warps
// an SM (<= 128 registers a thread).
// CODES (delayed scaling, halo_cuda_codes; rows_per_block a multiple of 32): no dx16; the bf16 values' 8-bit codes with
// the scale of *cq.amax go row-major to cq.q and, 32 rows at a time, through a shared tile [32][D + 4] after sdw to
// cq.qt transposed (zero codes for rows N..rows_pad-1); amax16 / nonfinite are then cq's amax_next / nonfinite; one
// thread forms cq's scale products.
template <int NV, bool CODES, typename TG>
__global__ void __launch_bounds__(256, 2)
k_rmsnorm_bwd_reg(float *dx, bf16 *dx16, float *dw, const TG *dout, const float *x, const bf16 *w,
                  const float *rstd, const float *dres, int N, int rows_per_block, unsigned *amax16,
                  int *nonfinite, halo_cuda_codes cq) {
    constexpr int D = 128 * NV, Q = D / 4, LDT = D + 4;
    extern __shared__ float sdw[];   // [D], component-major as in k_rmsnorm_bwd; CODES: then the code tile
    uint8_t *tl = (uint8_t *)(sdw + D);
    if (CODES && blockIdx.x == 0 && threadIdx.x == 0) run_alpha(cq.aj);   // the products' scales
    const float rq = CODES ? rscale_of(*cq.amax, qmax_of(cq.fmt)) : 1.f;
    float mx = 0.f;
    int bad = 0;
    for (int d = threadIdx.x; d < D; d += blockDim.x) sdw[d] = 0.f;
    __syncthreads();
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, nwarps = blockDim.x / 32;
    const int r0 = blockIdx.x * rows_per_block, r1 = min(N, r0 + rows_per_block);
    const __nv_bfloat162 *w2 = (const __nv_bfloat162 *)w;
    // CODES: chunks of 32 rows, up to rows_pad (the transposed layout's zero codes); else one chunk of all rows
    const int rend = CODES ? min(r0 + rows_per_block, max(N, cq.rows_pad)) : r1;
    for (int cs = r0; cs < rend; cs += CODES ? 32 : rows_per_block) {
        for (int row = cs + warp; row < (CODES ? cs + 32 : r1); row += nwarps) {
            if (CODES && row >= r1) {   // past the rows: zero codes in the tile
                for (int d = lane; d < Q; d += 32) ((uint32_t *)(tl + (size_t)(row - cs) * LDT))[d] = 0u;
                continue;
            }
            const float4 *x4 = (const float4 *)(x + (size_t)row * D);
            const TG *gr = dout + (size_t)row * D;
            float4 xv[NV];
#pragma unroll
            for (int i = 0; i < NV; i++) xv[i] = x4[lane + 32 * i];
            const float r = rstd[row];
            float dot = 0.f;
#pragma unroll
            for (int i = 0; i < NV; i++) {
                const int d = lane + 32 * i;
                float2 g01, g23;
                load_g4(gr, d, g01, g23);
                const float2 w01 = __bfloat1622float2(w2[2 * d]), w23 = __bfloat1622float2(w2[2 * d + 1]);
                dot += g01.x * w01.x * xv[i].x + g01.y * w01.y * xv[i].y + g23.x * w23.x * xv[i].z +
                       g23.y * w23.y * xv[i].w;
            }
            dot = warp_sum(dot);
            const float c = r * r * r * dot / D;
            float *o = dx + (size_t)row * D;
            const float *res = dres ? dres + (size_t)row * D : NULL;
            bf16 *o16 = dx16 ? dx16 + (size_t)row * D : NULL;
#pragma unroll
            for (int i = 0; i < NV; i++) {
                const int d = lane + 32 * i;
                float2 g01, g23;
                load_g4(gr, d, g01, g23);
                const float2 w01 = __bfloat1622float2(w2[2 * d]), w23 = __bfloat1622float2(w2[2 * d + 1]);
                uint32_t code;
                dx_store4(o, o16, res, d, g01, g23, w01, w23, xv[i], r, c, amax16 != NULL, mx, bad,
                          CODES ? &code : NULL, rq, cq.fmt);
                if (CODES) {
                    if (cq.q) *(uint32_t *)(cq.q + (size_t)row * cq.ldq + 4 * d) = code;
                    ((uint32_t *)(tl + (size_t)(row - cs) * LDT))[d] = code;
                }
                if (dw) {
                    atomicAdd(&sdw[d], g01.x * xv[i].x * r);
                    atomicAdd(&sdw[Q + d], g01.y * xv[i].y * r);
                    atomicAdd(&sdw[2 * Q + d], g23.x * xv[i].z * r);
                    atomicAdd(&sdw[3 * Q + d], g23.y * xv[i].w * r);
                }
            }
        }
        if (CODES) {
            __syncthreads();
            if (cq.qt) tile32_store_t(tl, LDT, D, cs, cq.rows_pad, cq.qt, cq.ldqt);
            __syncthreads();
        }
    }
    __syncthreads();
    if (r0 < r1 && dw)
        for (int d = threadIdx.x; d < D; d += blockDim.x) atomicAdd(&dw[d], sdw[(d & 3) * Q + d / 4]);
    if (amax16) {
        mx = block_max(mx);
        if (threadIdx.x == 0) atomicMax(amax16, __float_as_uint(mx));
        block_flags(bad, nonfinite);
    }
}

extern "C" void cuda_rmsnorm_forward(halo_bf16 *out, float *rstd, const float *x, const halo_bf16 *w, int N, int D,
                                     float eps, cudaStream_t s) {
    if (N == 0) return;
    k_rmsnorm_fwd<<<cdiv(N, 8), 256, 0, s>>>((bf16 *)out, rstd, x, (const bf16 *)w, N, D, eps, 0, NULL, 0, 1.f, NULL);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_rmsnorm_forward_amax(halo_bf16 *out, float *rstd, const float *x, const halo_bf16 *w, int N,
                                          int D, float eps, float *amax, int rot_lb, float rot_scale, int *nonfinite,
                                          cudaStream_t s) {
    if (N == 0) return;
    if (rot_lb && (rot_lb < 3 || rot_lb > 8 || D % 256)) {
        fprintf(stderr, "cuda_rmsnorm_forward_amax: rotated amax needs blocks of 8..256 and D %% 256 == 0 (D %d, "
                        "block %d)\n", D, 1 << rot_lb);
        abort();
    }
    // 32 rows (warps) a block: fewer atomics on the one amax address
    k_rmsnorm_fwd<<<cdiv(N, 32), 1024, 0, s>>>((bf16 *)out, rstd, x, (const bf16 *)w, N, D, eps, 0, (unsigned *)amax,
                                                rot_lb, rot_scale, amax ? nonfinite : NULL);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_rmsnorm_recompute(halo_bf16 *out, const float *rstd, const float *x, const halo_bf16 *w, int N,
                                       int D, cudaStream_t s) {
    if (N == 0) return;
    k_rmsnorm_fwd<<<cdiv(N, 8), 256, 0, s>>>((bf16 *)out, (float *)rstd, x, (const bf16 *)w, N, D, 0.f, 1, NULL, 0,
                                             1.f, NULL);
    CUDA_LAUNCH_CHECK();
}

static int sm_count(void) {
    static int n;
    if (!n) {
        int dev = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    }
    return n;
}

template <typename TG>
static void bwd_amax_launch(float *dx, bf16 *dx16, float *dw, const TG *dout, const float *x, const bf16 *w,
                            const float *rstd, const float *dres, int N, int D, unsigned *amax16, int *nonfinite,
                            cudaStream_t s) {
    // dres may alias dx: each element is read once by the thread that then writes it
    size_t smem = (size_t)D * sizeof(float);
    static size_t smem_set;   // the opt-in above 48 KiB, once per size (and dout type)
    if (smem > (48u << 10) && smem > smem_set) {
        CUDA_CHECK(cudaFuncSetAttribute(k_rmsnorm_bwd<true, TG>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
        CUDA_CHECK(cudaFuncSetAttribute(k_rmsnorm_bwd<false, TG>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
        smem_set = smem;
    }
    // the register-held rows (HALO_CUDA_RMSNORM_REG=0: the two-read kernel), 2 blocks an SM, one wave
    static int reg = -1;
    if ((D == 2048 || D == 1024) && env_switch(&reg, "HALO_CUDA_RMSNORM_REG")) {
        int blocks = sm_count() * 2;
        const int rows_per_block = cdiv(N, blocks);
        blocks = cdiv(N, rows_per_block);
        halo_cuda_codes none;
        memset(&none, 0, sizeof none);
        if (D == 2048)
            k_rmsnorm_bwd_reg<16, false, TG><<<blocks, 256, smem, s>>>(dx, dx16, dw, dout, x, w, rstd, dres, N,
                                                                        rows_per_block, amax16, nonfinite, none);
        else
            k_rmsnorm_bwd_reg<8, false, TG><<<blocks, 256, smem, s>>>(dx, dx16, dw, dout, x, w, rstd, dres, N,
                                                                       rows_per_block, amax16, nonfinite, none);
        CUDA_LAUNCH_CHECK();
        return;
    }
    // blocks of 8 warps, at least 16 rows per block, at most 4 blocks per SM: fewer blocks mean fewer dw atomics
    // (D per block), more mean more loads in flight
    int blocks = cdiv(N, 16), cap = sm_count() * 4;
    if (blocks > cap) blocks = cap;
    if (blocks < 1) blocks = 1;
    int rows_per_block = cdiv(N, blocks);
    blocks = cdiv(N, rows_per_block);
    if (D % 4 == 0)
        k_rmsnorm_bwd<true, TG><<<blocks, 256, smem, s>>>(dx, dx16, dw, dout, x, w, rstd, dres, N, D, rows_per_block,
                                                          amax16, nonfinite);
    else
        k_rmsnorm_bwd<false, TG><<<blocks, 256, smem, s>>>(dx, dx16, dw, dout, x, w, rstd, dres, N, D, rows_per_block,
                                                           amax16, nonfinite);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_rmsnorm_backward_amax(float *dx, halo_bf16 *dx16, float *dw, const halo_bf16 *dout,
                                           const float *dout32, const float *x, const halo_bf16 *w, const float *rstd,
                                           const float *dres, int N, int D, float *amax16, int *nonfinite,
                                           cudaStream_t s) {
    if (N == 0) return;
    if (!amax16) nonfinite = NULL;
    if (dout32)
        bwd_amax_launch(dx, (bf16 *)dx16, dw, dout32, x, (const bf16 *)w, rstd, dres, N, D, (unsigned *)amax16,
                        nonfinite, s);
    else
        bwd_amax_launch(dx, (bf16 *)dx16, dw, (const bf16 *)dout, x, (const bf16 *)w, rstd, dres, N, D,
                        (unsigned *)amax16, nonfinite, s);
}

extern "C" int cuda_rmsnorm_backward_codes_ok(int D) { return D == 2048 || D == 1024 || D == 512 || D == 256; }

template <int NV, typename TG>
static void bwd_codes_launch(int blocks, size_t smem, float *dx, float *dw, const TG *dout, const float *x,
                             const halo_bf16 *w, const float *rstd, const float *dres, int N, int rows_per_block,
                             const halo_cuda_codes *c, cudaStream_t s) {
    CUDA_CHECK(cudaFuncSetAttribute(k_rmsnorm_bwd_reg<NV, true, TG>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)smem));
    k_rmsnorm_bwd_reg<NV, true, TG><<<blocks, 256, smem, s>>>(dx, NULL, dw, dout, x, (const bf16 *)w, rstd, dres, N,
                                                               rows_per_block, (unsigned *)c->amax_next, c->nonfinite,
                                                               *c);
}
template <typename TG>
static void bwd_codes_dispatch(int D, int blocks, size_t smem, float *dx, float *dw, const TG *dout, const float *x,
                               const halo_bf16 *w, const float *rstd, const float *dres, int N, int rows_per_block,
                               const halo_cuda_codes *c, cudaStream_t s) {
    if (D == 2048) bwd_codes_launch<16>(blocks, smem, dx, dw, dout, x, w, rstd, dres, N, rows_per_block, c, s);
    else if (D == 1024) bwd_codes_launch<8>(blocks, smem, dx, dw, dout, x, w, rstd, dres, N, rows_per_block, c, s);
    else if (D == 512) bwd_codes_launch<4>(blocks, smem, dx, dw, dout, x, w, rstd, dres, N, rows_per_block, c, s);
    else bwd_codes_launch<2>(blocks, smem, dx, dw, dout, x, w, rstd, dres, N, rows_per_block, c, s);
}

extern "C" void cuda_rmsnorm_backward_codes(float *dx, float *dw, const halo_bf16 *dout, const float *dout32,
                                            const float *x, const halo_bf16 *w, const float *rstd, const float *dres,
                                            int N, int D, const halo_cuda_codes *c, cudaStream_t s) {
    if (!cuda_rmsnorm_backward_codes_ok(D)) {
        fprintf(stderr, "cuda_rmsnorm_backward_codes: unsupported D %d\n", D);
        abort();
    }
    codes_layout_check("cuda_rmsnorm_backward_codes", c, N, D, 4);
    if (N == 0) return;
    // the register-held rows' kernel (the same arithmetic as k_rmsnorm_bwd's), 2 blocks an SM, rows in chunks of 32
    int blocks = sm_count() * 2;
    const int rows_per_block = cdiv(cdiv(N, blocks), 32) * 32;
    blocks = cdiv(N, rows_per_block);
    const size_t smem = (size_t)D * sizeof(float) + 32 * (size_t)(D + 4);
    if (dout32) bwd_codes_dispatch(D, blocks, smem, dx, dw, dout32, x, w, rstd, dres, N, rows_per_block, c, s);
    else bwd_codes_dispatch(D, blocks, smem, dx, dw, (const bf16 *)dout, x, w, rstd, dres, N, rows_per_block, c, s);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_rmsnorm_backward(float *dx, halo_bf16 *dx16, float *dw, const halo_bf16 *dout, const float *x,
                                      const halo_bf16 *w, const float *rstd, const float *dres, int N, int D,
                                      cudaStream_t s) {
    cuda_rmsnorm_backward_amax(dx, dx16, dw, dout, NULL, x, w, rstd, dres, N, D, NULL, NULL, s);
}
