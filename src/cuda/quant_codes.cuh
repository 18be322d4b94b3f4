// The 8-bit quantizer's device arithmetic, shared by halo_kernels.cu's quantization kernels and the producers that
// write codes themselves (rmsnorm.cu, swiglu.cu, rope.cu: delayed scaling): scale(amax), the codes of one, four or
// eight values, the scale products, the producers' layout check, a 4 x 4 byte transpose and k_tile8's tiles. Codes equal the CPU's halo_quantize bit for bit.
#ifndef HALO_CUDA_QUANT_CODES_CUH
#define HALO_CUDA_QUANT_CODES_CUH
#include <cuda_fp8.h>
#include <float.h>
#include "cuda/common.cuh"
#include "cuda/halo_cuda.h"

__device__ __forceinline__ float scale_of(float amax, float qmax) {
    float s = amax / qmax;   // the CPU's float division
    if (amax == 0.f) s = 1.f;
    else if (s < FLT_MIN) s = FLT_MIN;
    return s;
}

// The quantizers take the reciprocal of the scale, r = 1 / scale (IEEE division once, as the CPU's per group):
// code = Q(x * r), the CPU's row[k] * r bit for bit.
__device__ __forceinline__ float rscale_of(float amax, float qmax) { return 1.f / scale_of(amax, qmax); }

__device__ __forceinline__ uint8_t quant1(float x, float r, int fmt) {
    float v = x * r;
    if (fmt == HALO_CUDA_INT8) {   // rint, then clamp to +-127 (the CPU's order; equal for every input, NaN -> 0)
        const int c = __float2int_rn(v);
        return (uint8_t)(int8_t)(c > 127 ? 127 : c < -127 ? -127 : c);
    }
    return (uint8_t)__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}

__device__ __forceinline__ float qmax_of(int fmt) { return fmt == HALO_CUDA_INT8 ? 127.f : 448.f; }

// The scale products of halo_cuda_alpha_job, computed by one thread of a quantization kernel.
__device__ __forceinline__ void run_alpha(const halo_cuda_alpha_job &aj) {
    const float q = qmax_of(aj.fmt);
    for (int i = 0; i < HALO_CUDA_ALPHA_JOBS; i++)
        if (aj.out[i]) *aj.out[i] = scale_of(*aj.a[i], q) * scale_of(*aj.b[i], q);
}

// The codes of 4 consecutive values, the first in the low byte; r: 1 / scale, as quant1.
__device__ __forceinline__ unsigned quant4(const float v[4], float r, int fmt) {
    if (fmt == HALO_CUDA_E4M3) {   // the same codes as quant1, two per conversion instruction (x: the low byte)
        const unsigned p0 = __nv_cvt_float2_to_fp8x2(make_float2(v[0] * r, v[1] * r), __NV_SATFINITE, __NV_E4M3);
        const unsigned p1 = __nv_cvt_float2_to_fp8x2(make_float2(v[2] * r, v[3] * r), __NV_SATFINITE, __NV_E4M3);
        return p0 | p1 << 16;
    }
    return (unsigned)quant1(v[0], r, fmt) | (unsigned)quant1(v[1], r, fmt) << 8 | (unsigned)quant1(v[2], r, fmt) << 16 |
           (unsigned)quant1(v[3], r, fmt) << 24;
}

__device__ __forceinline__ uint2 quant8(const float v[8], float r, int fmt) {   // 8 values, as quant4
    return make_uint2(quant4(v, r, fmt), quant4(v + 4, r, fmt));
}

// Whether a producer can take codes c (halo_cuda_codes) of an N x cols tensor, aborting with `who` in the message if
// not (an internal invariant: the model checks the shapes before it asks): the scale's amax set (amax_next may be NULL:
// nothing recorded), a layout to write,
// q's rows of at least cols codes and qt's of rows_pad >= N tokens, starting at `align`-byte boundaries.
static inline void codes_layout_check(const char *who, const halo_cuda_codes *c, int N, int cols, int align) {
    const int ok = c && c->amax && (c->q || c->qt) &&
                   (!c->q || (c->ldq >= cols && c->ldq % align == 0 && (uintptr_t)c->q % align == 0)) &&
                   (!c->qt || (c->rows_pad >= N && c->rows_pad % align == 0 && c->ldqt >= c->rows_pad &&
                               c->ldqt % align == 0 && (uintptr_t)c->qt % align == 0));
    if (!ok) {
        fprintf(stderr, "%s: unsupported codes layout (N %d, %d columns, rows at %d-byte boundaries)\n", who, N, cols,
                align);
        abort();
    }
}

// 4 x 4 byte transpose: o[y] byte x = w[x] byte y.
__device__ __forceinline__ void transpose4(const unsigned w[4], unsigned o[4]) {
    const unsigned t0 = __byte_perm(w[0], w[1], 0x5140), t1 = __byte_perm(w[0], w[1], 0x7362);
    const unsigned t2 = __byte_perm(w[2], w[3], 0x5140), t3 = __byte_perm(w[2], w[3], 0x7362);
    o[0] = __byte_perm(t0, t2, 0x5410); o[1] = __byte_perm(t0, t2, 0x7632);
    o[2] = __byte_perm(t1, t3, 0x5410); o[3] = __byte_perm(t1, t3, 0x7632);
}

// The 64 x 64 code tiles of k_tile8 (and of producers writing both layouts the same way), 64 threads: thread t holds
// the 8-code chunks of rows (t >> 3) + 8 k, columns (t & 7) * 8.. of the tile. tile8_put stores one into the shared
// tile (chunks XOR-swizzled by row group, so tile8_store_t's reads spread over the banks); after a __syncthreads,
// tile8_store_t transposes one 8 x 8 byte block a thread in registers and writes 8 bytes to each of 8 rows of
// qt [C][ldqt] (tile rows r0.., columns c0..; rows at or past Rpad, columns at or past C skipped).
typedef uint2 tile8_t[9];   // 72-byte rows
__device__ __forceinline__ void tile8_put(tile8_t *tile, int i, int cc, uint2 code) { tile[i][cc ^ ((i >> 3) & 7)] = code; }
// TR: the tile's rows (64, or 128 with 128 threads: each column's 128 tokens then fill a whole 128-byte line of qt).
template <int TR = 64>
__device__ __forceinline__ void tile8_store_t(const tile8_t *tile, int t, int r0, int c0, int C, int Rpad, uint8_t *qt,
                                              long ldqt) {
    const int bi = t % (TR / 8), bj = t / (TR / 8);   // the 8 x 8 block: rows bi * 8.., columns bj * 8..
    const int cj = c0 + bj * 8, ri = r0 + bi * 8;
    if (cj >= C || ri >= Rpad) return;
    unsigned lo[8], hi[8];
    #pragma unroll
    for (int x = 0; x < 8; x++) {
        const uint2 u = tile[bi * 8 + x][bj ^ (bi & 7)];
        lo[x] = u.x; hi[x] = u.y;
    }
    unsigned o[4][4];   // o[0]: rows 0-3 bytes 0-3, o[1]: rows 4-7 bytes 0-3, o[2]: rows 0-3 bytes 4-7, o[3]: rows 4-7 bytes 4-7
    transpose4(lo, o[0]); transpose4(lo + 4, o[1]); transpose4(hi, o[2]); transpose4(hi + 4, o[3]);
    #pragma unroll
    for (int y = 0; y < 8; y++) {
        const uint2 u = y < 4 ? make_uint2(o[0][y], o[1][y]) : make_uint2(o[2][y - 4], o[3][y - 4]);
        *(uint2 *)(qt + (long)(cj + y) * ldqt + ri) = u;
    }
}

#endif
