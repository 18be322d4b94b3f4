// HALO's memory-bound GPU kernels: the row-wise Hadamard transform H_K (x) H_P (fast Walsh-Hadamard butterfly in
// registers, warp shuffles and shared memory, then the dense order-K mix), fused with absmax or with the INT8 /
// FP8 E4M3 quantizer; unrotated quantization writing both layouts; transposes; scale products; int32 dequant.
// The butterfly runs its stages in the CPU's order (h = 1, 2, 4, ...) and the dense mix sums c = 0..K-1, so rotated
// values equal halo_hadamard_rows's bit for bit, and so do the 8-bit codes.
#include <cuda_fp8.h>
#include <float.h>
#include <stdlib.h>
#include <string.h>
#include <type_traits>
#include <utility>
#include "cuda/common.cuh"
#include "cuda/halo_cuda.h"
#include "cuda/hadamard_warp.cuh"
#include "cuda/quant_codes.cuh"
extern "C" {
#include "halo/hadamard.h"
#include "util/error.h"
}

enum { MODE_STORE = 0, MODE_AMAX = 1, MODE_QUANT = 2, MODE_STORE_AMAX = 3 };   // STORE_AMAX: fp32 out and absmax
#define HALO_CUDA_MAX_BLOCK 32768

// ---------------------------------------------------------------------------------------------------------------
// Plans

// Sign masks of the order-K base matrices k_rot mixes with (bit c of row i set where H_K[i][c] == -1), compiled in
// so that the unrolled mix is plain additions and subtractions (constant-memory coefficients thrashed the constant
// cache at K = 28). Printed by scripts/gen_hk_signs.c from halo_hadamard_base(K); had_upload checks them against the
// CPU's matrix and leaves k_rot off for an order whose table disagrees.
__host__ __device__ constexpr unsigned hk_neg_mask(int K, int i) {
    return K == 12 ? (i == 0 ? 0x0000000u : i == 1 ? 0x0000475u : i == 2 ? 0x00008e9u : i == 3 ? 0x00001d3u : i == 4 ? 0x00003a5u
                  : i == 5 ? 0x0000749u : i == 6 ? 0x0000e91u : i == 7 ? 0x0000d23u : i == 8 ? 0x0000a47u : i == 9 ? 0x000048fu
                  : i == 10 ? 0x000091du : i == 11 ? 0x000023bu : 0u)
    : K == 20 ? (i == 0 ? 0x0000000u : i == 1 ? 0x00615e5u : i == 2 ? 0x00c2bc9u : i == 3 ? 0x0085793u : i == 4 ? 0x000af27u
                  : i == 5 ? 0x0015e4du : i == 6 ? 0x002bc99u : i == 7 ? 0x0057931u : i == 8 ? 0x00af261u : i == 9 ? 0x005e4c3u
                  : i == 10 ? 0x00bc985u : i == 11 ? 0x007930bu : i == 12 ? 0x00f2615u : i == 13 ? 0x00e4c2bu : i == 14 ? 0x00c9857u
                  : i == 15 ? 0x00930afu : i == 16 ? 0x002615fu : i == 17 ? 0x004c2bdu : i == 18 ? 0x0098579u : i == 19 ? 0x0030af3u : 0u)
    : K == 28 ? (i == 0 ? 0x0000000u : i == 1 ? 0x4a37785u : i == 2 ? 0x90ecf89u : i == 3 ? 0x255bb83u : i == 4 ? 0x513ac2fu
                  : i == 5 ? 0x866784fu : i == 6 ? 0x28dd41fu : i == 7 ? 0x8956d71u : i == 8 ? 0x323da71u : i == 9 ? 0x44eb4f1u
                  : i == 10 ? 0x6ef0929u : i == 11 ? 0xd9f1243u : i == 12 ? 0xb770495u : i == 13 ? 0x7585d45u : i == 14 ? 0xcf09e19u
                  : i == 15 ? 0xba83ca3u : i == 16 ? 0xadae225u : i == 17 ? 0x7b4e0c9u : i == 18 ? 0xd69e113u : i == 19 ? 0xe1251bbu
                  : i == 20 ? 0xe248767u : i == 21 ? 0xe092addu : i == 22 ? 0x0ba89d7u : i == 23 ? 0x13c333du : i == 24 ? 0x07946ebu
                  : i == 25 ? 0x5c44ab7u : i == 26 ? 0x9c191edu : i == 27 ? 0x3c2275bu : 0u)
    : 0u;
}
// K = 76 (Qwen2.5's 4864 = 76 * 64): word w (columns 32 w .. 32 w + 31) of row i, three words a row.
__host__ __device__ constexpr unsigned hk_neg_word76(int i, int w) {
    switch (3 * i + w) {
    case 0: return 0x00000002u; case 1: return 0x00000000u; case 2: return 0x00000000u;
    case 3: return 0xaaaaaaabu; case 4: return 0xaaaaaaaau; case 5: return 0x00000aaau;
    case 6: return 0xf00cf0c8u; case 7: return 0x300fcff3u; case 8: return 0x0000030fu;
    case 9: return 0x5aa65a6eu; case 10: return 0x9aa56559u; case 11: return 0x000009a5u;
    case 12: return 0xc033c320u; case 13: return 0xc03f3fcfu; case 14: return 0x00000c3cu;
    case 15: return 0x6a9969bau; case 16: return 0x6a959565u; case 17: return 0x00000696u;
    case 18: return 0x00cf0c8cu; case 19: return 0x00fcff3fu; case 20: return 0x000000f3u;
    case 21: return 0xaa65a6e6u; case 22: return 0xaa565595u; case 23: return 0x00000a59u;
    case 24: return 0x033c3230u; case 25: return 0x03f3fcfcu; case 26: return 0x000003ccu;
    case 27: return 0xa9969b9au; case 28: return 0xa9595656u; case 29: return 0x00000966u;
    case 30: return 0x0cf0c8c0u; case 31: return 0x0fcff3f0u; case 32: return 0x00000f30u;
    case 33: return 0xa65a6e6au; case 34: return 0xa565595au; case 35: return 0x0000059au;
    case 36: return 0x33c3230cu; case 37: return 0x3f3fcfc0u; case 38: return 0x00000cc0u;
    case 39: return 0x9969b9a6u; case 40: return 0x9595656au; case 41: return 0x0000066au;
    case 42: return 0xcf0c8c3cu; case 43: return 0xfcff3f00u; case 44: return 0x00000300u;
    case 45: return 0x65a6e696u; case 46: return 0x565595aau; case 47: return 0x000009aau;
    case 48: return 0x3c3230f0u; case 49: return 0xf3fcfc03u; case 50: return 0x00000c03u;
    case 51: return 0x969b9a5au; case 52: return 0x595656a9u; case 53: return 0x000006a9u;
    case 54: return 0xf0c8c3ccu; case 55: return 0xcff3f00cu; case 56: return 0x0000000fu;
    case 57: return 0x5a6e6966u; case 58: return 0x65595aa6u; case 59: return 0x00000aa5u;
    case 60: return 0xc3230f30u; case 61: return 0x3fcfc033u; case 62: return 0x0000003fu;
    case 63: return 0x69b9a59au; case 64: return 0x95656a99u; case 65: return 0x00000a95u;
    case 66: return 0x0c8c3cc0u; case 67: return 0xff3f00cfu; case 68: return 0x000000fcu;
    case 69: return 0xa6e6966au; case 70: return 0x5595aa65u; case 71: return 0x00000a56u;
    case 72: return 0x3230f300u; case 73: return 0xfcfc033cu; case 74: return 0x000003f3u;
    case 75: return 0x9b9a59aau; case 76: return 0x5656a996u; case 77: return 0x00000959u;
    case 78: return 0xc8c3cc00u; case 79: return 0xf3f00cf0u; case 80: return 0x00000fcfu;
    case 81: return 0x6e6966aau; case 82: return 0x595aa65au; case 83: return 0x00000565u;
    case 84: return 0x230f300cu; case 85: return 0xcfc033c3u; case 86: return 0x00000f3fu;
    case 87: return 0xb9a59aa6u; case 88: return 0x656a9969u; case 89: return 0x00000595u;
    case 90: return 0x8c3cc03cu; case 91: return 0x3f00cf0cu; case 92: return 0x00000cffu;
    case 93: return 0xe6966a96u; case 94: return 0x95aa65a6u; case 95: return 0x00000655u;
    case 96: return 0x30f300fcu; case 97: return 0xfc033c32u; case 98: return 0x000003fcu;
    case 99: return 0x9a59aa56u; case 100: return 0x56a9969bu; case 101: return 0x00000956u;
    case 102: return 0xc3cc03f0u; case 103: return 0xf00cf0c8u; case 104: return 0x00000ff3u;
    case 105: return 0x6966a95au; case 106: return 0x5aa65a6eu; case 107: return 0x00000559u;
    case 108: return 0x0f300fccu; case 109: return 0xc033c323u; case 110: return 0x00000fcfu;
    case 111: return 0xa59aa566u; case 112: return 0x6a9969b9u; case 113: return 0x00000565u;
    case 114: return 0x3cc03f3cu; case 115: return 0x00cf0c8cu; case 116: return 0x00000f3fu;
    case 117: return 0x966a9596u; case 118: return 0xaa65a6e6u; case 119: return 0x00000595u;
    case 120: return 0xf300fcfcu; case 121: return 0x033c3230u; case 122: return 0x00000cfcu;
    case 123: return 0x59aa5656u; case 124: return 0xa9969b9au; case 125: return 0x00000656u;
    case 126: return 0xcc03f3fcu; case 127: return 0x0cf0c8c3u; case 128: return 0x000003f0u;
    case 129: return 0x66a95956u; case 130: return 0xa65a6e69u; case 131: return 0x0000095au;
    case 132: return 0x300fcff0u; case 133: return 0x33c3230fu; case 134: return 0x00000fc0u;
    case 135: return 0x9aa5655au; case 136: return 0x9969b9a5u; case 137: return 0x0000056au;
    case 138: return 0xc03f3fccu; case 139: return 0xcf0c8c3cu; case 140: return 0x00000f00u;
    case 141: return 0x6a959566u; case 142: return 0x65a6e696u; case 143: return 0x000005aau;
    case 144: return 0x00fcff3cu; case 145: return 0x3c3230f3u; case 146: return 0x00000c03u;
    case 147: return 0xaa565596u; case 148: return 0x969b9a59u; case 149: return 0x000006a9u;
    case 150: return 0x03f3fcfcu; case 151: return 0xf0c8c3ccu; case 152: return 0x0000000cu;
    case 153: return 0xa9595656u; case 154: return 0x5a6e6966u; case 155: return 0x00000aa6u;
    case 156: return 0x0fcff3f0u; case 157: return 0xc3230f30u; case 158: return 0x00000033u;
    case 159: return 0xa565595au; case 160: return 0x69b9a59au; case 161: return 0x00000a99u;
    case 162: return 0x3f3fcfc0u; case 163: return 0x0c8c3cc0u; case 164: return 0x000000cfu;
    case 165: return 0x9595656au; case 166: return 0xa6e6966au; case 167: return 0x00000a65u;
    case 168: return 0xfcff3f00u; case 169: return 0x3230f300u; case 170: return 0x0000033cu;
    case 171: return 0x565595aau; case 172: return 0x9b9a59aau; case 173: return 0x00000996u;
    case 174: return 0xf3fcfc00u; case 175: return 0xc8c3cc03u; case 176: return 0x00000cf0u;
    case 177: return 0x595656aau; case 178: return 0x6e6966a9u; case 179: return 0x0000065au;
    case 180: return 0xcff3f00cu; case 181: return 0x230f300fu; case 182: return 0x000003c3u;
    case 183: return 0x65595aa6u; case 184: return 0xb9a59aa5u; case 185: return 0x00000969u;
    case 186: return 0x3fcfc030u; case 187: return 0x8c3cc03fu; case 188: return 0x00000f0cu;
    case 189: return 0x95656a9au; case 190: return 0xe6966a95u; case 191: return 0x000005a6u;
    case 192: return 0xff3f00ccu; case 193: return 0x30f300fcu; case 194: return 0x00000c32u;
    case 195: return 0x5595aa66u; case 196: return 0x9a59aa56u; case 197: return 0x0000069bu;
    case 198: return 0xfcfc033cu; case 199: return 0xc3cc03f3u; case 200: return 0x000000c8u;
    case 201: return 0x5656a996u; case 202: return 0x6966a959u; case 203: return 0x00000a6eu;
    case 204: return 0xf3f00cf0u; case 205: return 0x0f300fcfu; case 206: return 0x00000323u;
    case 207: return 0x595aa65au; case 208: return 0xa59aa565u; case 209: return 0x000009b9u;
    case 210: return 0xcfc033c0u; case 211: return 0x3cc03f3fu; case 212: return 0x00000c8cu;
    case 213: return 0x656a996au; case 214: return 0x966a9595u; case 215: return 0x000006e6u;
    case 216: return 0x3f00cf0cu; case 217: return 0xf300fcffu; case 218: return 0x00000230u;
    case 219: return 0x95aa65a6u; case 220: return 0x59aa5655u; case 221: return 0x00000b9au;
    case 222: return 0xfc033c30u; case 223: return 0xcc03f3fcu; case 224: return 0x000008c3u;
    case 225: return 0x56a9969au; case 226: return 0x66a95956u; case 227: return 0x00000e69u;
    default: return 0u;
    }
}
// 1 where H_K[i][c] == -1 (K = 12, 20, 28, 76)
__host__ __device__ constexpr unsigned hk_neg(int K, int i, int c) {
    return K <= 32 ? hk_neg_mask(K, i) >> c & 1u : hk_neg_word76(i, c >> 5) >> (c & 31) & 1u;
}

// sg: had_upload's sign masks of H_K, (K + 31) / 32 words a row.
static int hk_table_ok(int K, const unsigned *sg) {
    if (K != 12 && K != 20 && K != 28 && K != 76) return 0;
    const int KW = (K + 31) / 32;
    for (int i = 0; i < K; i++)
        for (int w = 0; w < KW; w++)
            if (sg[(size_t)i * KW + w] != (K <= 32 ? hk_neg_mask(K, i) : hk_neg_word76(i, w))) return 0;
    return 1;
}

static int had_upload(halo_cuda_had *h, const halo_hadamard *c) {
    memset(h, 0, sizeof *h);
    if (c->block > HALO_CUDA_MAX_BLOCK)
        return halo_fail("hadamard (cuda): block %d exceeds %d (one block's row must fit in shared memory)", c->block,
                         HALO_CUDA_MAX_BLOCK);
    h->d = c->d; h->block = c->block; h->K = c->K; h->P = c->P; h->scale = c->scale;
    if (c->K > 1) {
        size_t bytes = sizeof(float) * (size_t)c->K * c->K;
        CUDA_CHECK(cudaMalloc((void **)&h->dHf, bytes));
        CUDA_CHECK(cudaMalloc((void **)&h->dHtf, bytes));
        CUDA_CHECK(cudaMemcpy(h->dHf, c->HKf, bytes, cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(h->dHtf, c->HKtf, bytes, cudaMemcpyHostToDevice));
        // Sign bits for the fast mix (every known base matrix is +-1; else the kernels use the float matrix).
        const int KW = (c->K + 31) / 32;
        unsigned *sg = (unsigned *)calloc((size_t)2 * c->K * KW, sizeof(unsigned));
        int pm1 = sg != NULL;
        for (int i = 0; pm1 && i < c->K; i++)
            for (int j = 0; j < c->K; j++) {
                float f = c->HKf[(size_t)i * c->K + j], ft = c->HKtf[(size_t)i * c->K + j];
                if ((f != 1.f && f != -1.f) || (ft != 1.f && ft != -1.f)) { pm1 = 0; break; }
                if (f < 0) sg[(size_t)i * KW + j / 32] |= 1u << (j % 32);
                if (ft < 0) sg[(size_t)(c->K + i) * KW + j / 32] |= 1u << (j % 32);
            }
        h->ck = pm1 && hk_table_ok(c->K, sg);
        if (pm1) {
            size_t sb = sizeof(unsigned) * (size_t)c->K * KW;
            CUDA_CHECK(cudaMalloc((void **)&h->dSgn, sb));
            CUDA_CHECK(cudaMalloc((void **)&h->dSgnT, sb));
            CUDA_CHECK(cudaMemcpy(h->dSgn, sg, sb, cudaMemcpyHostToDevice));
            CUDA_CHECK(cudaMemcpy(h->dSgnT, sg + (size_t)c->K * KW, sb, cudaMemcpyHostToDevice));
        }
        free(sg);
        // a pageable upload may still be in flight when cudaMemcpy returns, and users may run on a non-blocking
        // stream that does not wait for the legacy stream: finish it here (plans are made once per layer)
        CUDA_CHECK(cudaDeviceSynchronize());
    }
    return HALO_OK;
}

extern "C" int halo_cuda_had_plan(halo_cuda_had *h, int d, int block) {
    halo_hadamard c;
    memset(h, 0, sizeof *h);
    if (halo_hadamard_plan(&c, d, block)) return HALO_ERR;
    return had_upload(h, &c);
}

extern "C" int halo_cuda_had_plan_fallback(halo_cuda_had *h, int d, char *note, size_t note_cap) {
    halo_hadamard c;
    halo_hadamard_plan_fallback(&c, d, note, note_cap);
    return had_upload(h, &c);
}

extern "C" void halo_cuda_had_free(halo_cuda_had *h) {
    if (h->dHf) cudaFree(h->dHf);
    if (h->dHtf) cudaFree(h->dHtf);
    if (h->dSgn) cudaFree(h->dSgn);
    if (h->dSgnT) cudaFree(h->dSgnT);
    memset(h, 0, sizeof *h);
}

// ---------------------------------------------------------------------------------------------------------------
// Element helpers

template <int T> __device__ __forceinline__ float load1(const void *p, long i) {
    if (T == HALO_CUDA_BF16) return __bfloat162float(((const bf16 *)p)[i]);
    if (T == HALO_CUDA_F32) return ((const float *)p)[i];
    return (float)((const int32_t *)p)[i];   // round to nearest even, like the CPU's (float) cast
}

// 8 consecutive elements from a 16-byte (bf16) / 32-byte aligned address.
template <int T> __device__ __forceinline__ void load8(const void *p, long i, float v[8]) {
    if (T == HALO_CUDA_BF16) {
        uint4 u = *(const uint4 *)((const bf16 *)p + i);
        const __nv_bfloat162 *b2 = (const __nv_bfloat162 *)&u;
        for (int k = 0; k < 4; k++) { float2 f = __bfloat1622float2(b2[k]); v[2 * k] = f.x; v[2 * k + 1] = f.y; }
    } else if (T == HALO_CUDA_F32) {
        const float4 *q = (const float4 *)((const float *)p + i);
        float4 a = q[0], b = q[1];
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else {
        const int4 *q = (const int4 *)((const int32_t *)p + i);
        int4 a = q[0], b = q[1];
        v[0] = (float)a.x; v[1] = (float)a.y; v[2] = (float)a.z; v[3] = (float)a.w;
        v[4] = (float)b.x; v[5] = (float)b.y; v[6] = (float)b.z; v[7] = (float)b.w;
    }
}

// FMT >= 0: the format fixed at compile time (no per-element branch); -1: `fmt` at run time.
template <int FMT> __device__ __forceinline__ uint8_t quantf(float x, float r, int fmt) {
    return quant1(x, r, FMT >= 0 ? FMT : fmt);
}

// The absmax passes' per-value step: mx = max |v| (NaN skipped, as the CPU's max), and chk turns NaN once a NaN or Inf
// passed (0 * NaN, 0 * Inf): one fma a value instead of a compare and an or; the flag is chk != 0 at the end. Where v is
// unscaled the pass multiplies the maximum by the scale once: max |v s| = s max |v|, rounding being monotonic.
__device__ __forceinline__ void amax_add(float &mx, float &chk, float v) {
    mx = fmaxf(mx, fabsf(v));
    chk = fmaf(v, 0.f, chk);
}

// ---------------------------------------------------------------------------------------------------------------
// The row kernel: one thread block per (row, diagonal block). Rotation: the block is loaded into shared memory
// (fp32) through the butterfly's first 8 stages in registers and shuffles; later stages in shared memory; the
// output phase applies the dense H_K mix and the scale per element and then stores / reduces / quantizes.

struct rows_args {
    const void *in; long ld_in; const float *in_scale;
    int rows, nseg, blk, K, P, lP; float scale; const float *Hop; int rotate;
    const unsigned *sgn;   // sign bits of Hop ([K][(K + 31) / 32]) or NULL: then the mix reads Hop per element
    void *out; long ld_out; int out_f32, accumulate;
    unsigned *amax_bits; unsigned *amax_row_bits; int *nonfinite;
    const float *amax_q; const float *amax_row_q; int fmt;
    int vec_in, vec_out;   // 1 when 8-element input loads / 4-element output stores are aligned
    int ck, htr;           // k_rot: H_K in constant memory (or K == 1); op = H_K^T (1) or H_K (0)
    halo_cuda_alpha_job aj;   // QUANT: scale products one thread of the first block forms (run_alpha)
};

// k_rows's order-K mix for one column: acc[r] = sum_c (+-1) x[c * P] for rows i = i0 + r (rows past K repeat row K - 1:
// computed, not emitted), c = 0..K-1 in the CPU's order (adding -x is the same as adding (-1) * x), the signs from
// bit masks (KW words a row, bit c % 32 of word c / 32 set for -1). Whole 32-column words are unrolled, so a term
// costs a shift by a constant, an xor-and and the addition (~3 instructions; the shared load of x is shared by
// MIX_ROWS terms).
enum { MIX_ROWS = 8 };
__device__ __forceinline__ void rows_mix(const float *x, int P, const unsigned *sgn, int KW, int K, int i0,
                                         float acc[MIX_ROWS]) {
    int ir[MIX_ROWS];
    #pragma unroll
    for (int r = 0; r < MIX_ROWS; r++) {
        ir[r] = i0 + r < K ? i0 + r : K - 1;
        acc[r] = 0.f;
    }
    for (int cw = 0; cw < KW; cw++) {
        unsigned mk[MIX_ROWS];
        #pragma unroll
        for (int r = 0; r < MIX_ROWS; r++) mk[r] = sgn[ir[r] * KW + cw];
        const float *xc = x + (long)cw * 32 * P;
        if (cw * 32 + 32 <= K) {
            #pragma unroll
            for (int cc = 0; cc < 32; cc++) {
                const unsigned xb = __float_as_uint(xc[(long)cc * P]);
                #pragma unroll
                for (int r = 0; r < MIX_ROWS; r++) acc[r] += __uint_as_float(xb ^ ((mk[r] << (31 - cc)) & 0x80000000u));
            }
        } else {
            for (int cc = 0; cc < K - cw * 32; cc++) {
                const unsigned xb = __float_as_uint(xc[(long)cc * P]);
                #pragma unroll
                for (int r = 0; r < MIX_ROWS; r++) {
                    acc[r] += __uint_as_float(xb ^ (mk[r] << 31));
                    mk[r] >>= 1;
                }
            }
        }
    }
}

template <int TIN, int MODE> __global__ void k_rows(rows_args a) {
    extern __shared__ float sm[];
    if (MODE == MODE_QUANT && blockIdx.x == 0 && threadIdx.x == 0) run_alpha(a.aj);
    // see k_rot
    const unsigned bid = MODE == MODE_AMAX || MODE == MODE_STORE_AMAX ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
    const long row = bid / a.nseg;
    const int seg = bid % a.nseg;
    const int tid = threadIdx.x, nthr = blockDim.x;
    const long in_off = row * a.ld_in + (long)seg * a.blk;
    const long out_off = row * a.ld_out + (long)seg * a.blk;
    const float isc = a.in_scale ? *a.in_scale : 1.f;
    const int blk = a.blk, K = a.K, P = a.P;

    // sign bits of the order-K matrix after the block's values (read in the output phase, after a __syncthreads)
    unsigned *ssg = (unsigned *)(sm + blk);
    const int fast_mix = a.rotate && K > 1 && a.sgn && P >= 32;
    if (fast_mix)
        for (int i = tid; i < K * ((K + 31) / 32); i += nthr) ssg[i] = a.sgn[i];

    if (a.rotate) {
        int h0 = 1;
        if (P % 8 == 0 && a.vec_in) {
            const int n8 = blk / 8;
            const int shuffles = P % 256 == 0;   // then every warp's 32 chunks lie in one P-chunk
            for (int g = tid; g < n8; g += nthr) {
                float v[8];
                load8<TIN>(a.in, in_off + (long)g * 8, v);
                if (a.in_scale) for (int k = 0; k < 8; k++) v[k] *= isc;
                bfly8(v);
                if (shuffles) {
                    const int lane = tid & 31;
                    #pragma unroll
                    for (int st = 0; st < 5; st++) shfl_stage(v, lane, st);
                }
                float4 *d = (float4 *)(sm + (long)g * 8);
                d[0] = make_float4(v[0], v[1], v[2], v[3]);
                d[1] = make_float4(v[4], v[5], v[6], v[7]);
            }
            h0 = shuffles ? 256 : 8;
        } else {
            for (int e = tid; e < blk; e += nthr) {
                float v = load1<TIN>(a.in, in_off + e);
                sm[e] = a.in_scale ? v * isc : v;
            }
        }
        __syncthreads();
        const int half = blk / 2, lhalfP = a.lP - 1;
        for (int h = h0, lh = 0; h < P; h *= 2) {
            while ((1 << lh) < h) lh++;
            for (int p = tid; p < half; p += nthr) {
                const int c = lhalfP >= 0 ? p >> lhalfP : 0, w = p & ((P >> 1) - 1);
                const int j = c * P + ((w >> lh) << (lh + 1)) + (w & (h - 1));
                float x = sm[j], y = sm[j + h];
                sm[j] = x + y; sm[j + h] = x - y;
            }
            __syncthreads();
        }
    }

    // Output phase.
    float mx = 0.f;
    int bad = 0;
    float qs = 1.f;
    if (MODE == MODE_QUANT) qs = rscale_of(a.amax_row_q ? a.amax_row_q[row] : *a.amax_q, qmax_of(a.fmt));
    auto value = [&](int e) -> float {
        if (!a.rotate) {
            float v = load1<TIN>(a.in, in_off + e);
            return a.in_scale ? v * isc : v;
        }
        if (K == 1) return sm[e] * a.scale;
        const int i = e / P, j = e - i * P;
        const float *hr = a.Hop + (long)i * K;
        float acc = 0.f;
        for (int c = 0; c < K; c++) acc += hr[c] * sm[c * P + j];
        return acc * a.scale;
    };
    auto emit = [&](int e, float v) {
        if (MODE == MODE_STORE) {
            if (a.out_f32) {
                float *o = (float *)a.out + out_off + e;
                *o = a.accumulate ? *o + v : v;
            } else {
                ((bf16 *)a.out)[out_off + e] = __float2bfloat16_rn(v);
            }
        } else if (MODE == MODE_AMAX || MODE == MODE_STORE_AMAX) {
            if (MODE == MODE_STORE_AMAX) ((float *)a.out)[out_off + e] = v;
            float av = fabsf(v);
            bad |= !(av <= FLT_MAX);
            mx = fmaxf(mx, av);
        } else {
            ((uint8_t *)a.out)[out_off + e] = quant1(v, qs, a.fmt);
        }
    };
    if (fast_mix) {
        // y[i * P + j] = scale * sum_c H[i][c] x[c * P + j], H = +-1: each thread sums MIX_ROWS rows i of one column j
        // (rows_mix)
        const int KW = (K + 31) / 32, nI = (K + MIX_ROWS - 1) / MIX_ROWS, lP = a.lP;
        for (int w = tid; w < P * nI; w += nthr) {
            const int j = w & (P - 1), i0 = (w >> lP) * MIX_ROWS;
            float acc[MIX_ROWS];
            rows_mix(sm + j, P, ssg, KW, K, i0, acc);
            #pragma unroll
            for (int r = 0; r < MIX_ROWS; r++)
                if (i0 + r < K) emit((i0 + r) * P + j, acc[r] * a.scale);
        }
    } else if (a.vec_out && blk % 4 == 0) {
        for (int e4 = tid; e4 < blk / 4; e4 += nthr) {
            const int e = e4 * 4;
            float v[4];
            if (a.rotate && K == 1) {   // one 16-byte shared load instead of four conflicting 4-byte ones
                const float4 t4 = *(const float4 *)(sm + e);
                v[0] = t4.x * a.scale; v[1] = t4.y * a.scale; v[2] = t4.z * a.scale; v[3] = t4.w * a.scale;
            } else {
                for (int k = 0; k < 4; k++) v[k] = value(e + k);
            }
            if (MODE == MODE_STORE && a.out_f32) {
                float4 *o = (float4 *)((float *)a.out + out_off + e);
                float4 r = make_float4(v[0], v[1], v[2], v[3]);
                if (a.accumulate) { float4 p = *o; r.x += p.x; r.y += p.y; r.z += p.z; r.w += p.w; }
                *o = r;
            } else if (MODE == MODE_STORE) {
                __nv_bfloat162 b[2] = {__floats2bfloat162_rn(v[0], v[1]), __floats2bfloat162_rn(v[2], v[3])};
                *(uint2 *)((bf16 *)a.out + out_off + e) = *(uint2 *)b;
            } else if (MODE == MODE_QUANT) {
                uchar4 q = make_uchar4(quant1(v[0], qs, a.fmt), quant1(v[1], qs, a.fmt), quant1(v[2], qs, a.fmt),
                                       quant1(v[3], qs, a.fmt));
                *(uchar4 *)((uint8_t *)a.out + out_off + e) = q;
            } else {
                for (int k = 0; k < 4; k++) emit(e + k, v[k]);
            }
        }
    } else {
        for (int e = tid; e < blk; e += nthr) emit(e, value(e));
    }
    if (MODE == MODE_AMAX || MODE == MODE_STORE_AMAX) {
        mx = block_max(mx);
        if (a.nonfinite) { if (__syncthreads_or(bad) && tid == 0) atomicOr(a.nonfinite, 1); }
        if (tid == 0) {
            if (a.amax_bits) atomicMax(a.amax_bits, __float_as_uint(mx));   // non-negative floats order as uints
            if (a.amax_row_bits) atomicMax(a.amax_row_bits + row, __float_as_uint(mx));
        }
    }
}

// At most 512 threads per block: down_proj's order-28 rotation (14336 = 28 * 512) at levels 1-2 took 6.87 ms with
// 1024, 6.13 with 512, 6.22 with 256 on the H200 (FP8 L1, 8192 tokens; bench_cuda_halo --rows-threads).
static int g_rows_max_threads = 512;   // halo_cuda_rows_threads
extern "C" void halo_cuda_rows_threads(int n) { g_rows_max_threads = n >= 64 && n <= 1024 ? n / 32 * 32 : 512; }

template <int TIN, int MODE> static void launch_rows_t(rows_args &a, cudaStream_t s) {
    int nthr;
    size_t smem = 0;
    if (a.rotate) {
        nthr = a.blk / 8;
        nthr = (nthr + 31) / 32 * 32;
        if (nthr < 64) nthr = 64;
        if (nthr > g_rows_max_threads) nthr = g_rows_max_threads;
        smem = sizeof(float) * (size_t)a.blk;
        if (a.K > 1 && a.sgn) smem += sizeof(unsigned) * (size_t)a.K * ((a.K + 31) / 32);
        static size_t smem_set = 0;   // per instantiation: raise the dynamic shared-memory limit when needed
        if (smem > 48 * 1024 && smem_set < smem) {
            CUDA_CHECK(cudaFuncSetAttribute(k_rows<TIN, MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
            smem_set = smem;
        }
    } else {
        nthr = a.blk >= 4096 ? 256 : 128;
    }
    long grid = (long)a.rows * a.nseg;
    if (grid <= 0) return;
    k_rows<TIN, MODE><<<(unsigned)grid, nthr, smem, s>>>(a);
    CUDA_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------------------------
// The fast rotated-row kernel k_rot, for blocks that are whole multiples of 256 (or K > 1 with P < 256) with P % 8 == 0,
// P <= 8192 and K in {1, 12, 20, 28, 76} (2048, 4096, 8192, 3072 = 12 * 256, 5120 = 20 * 256, 14336 = 28 * 512,
// 4864 = 76 * 64, 896 = 28 * 32, H_b over 8192 tokens; K = 44 runs k_rows, see rot_ok). 256 threads per (row, block); the same additions in the same order
// as the CPU, so the values are bit-identical:
//   phase 1: 16-byte loads, butterfly stages h = 1, 2, 4 in registers and h = 8 .. min(P, 256) / 2 by warp shuffles
//            (a warp holds 256 consecutive values), fp32 into shared memory;
//   phase 2: stages h = 256 .. P / 2: each thread takes the Q = P / 256 values j, j + 256, .. of one column j of one
//            P-chunk into registers (conflict-free), runs the stages there, and (K == 1) emits them, coalesced;
//   phase 3 (K > 1): each thread takes column j of all K chunks into registers and forms the K outputs (K = 76: a
//            quarter of them) y[i * P + j] = scale * sum_c H[i][c] x[c * P + j], c = 0..K-1 in order, as additions
//            and subtractions fixed at compile time (hk_neg; acc - x rounds as the CPU's acc + (-1) * x).
// Each row is read once per call; absmax and quantize stay two calls, each a single read of the bf16 input.

enum { ROT_THREADS = 256, ROT_QMAX = 32 };

// Outputs i in [I0, min(I1, K)) of one column of the order-K mix: out(i, sum_c H[i][c] x[c]) (htr: H[c][i]), c in
// order (the comma fold runs left to right), each term an addition or subtraction fixed at compile time (the sign is
// a template argument, so the front end evaluates the tables once per term, not the optimizer once per use).
template <int K, int I, int HT, int... C>
__device__ __forceinline__ float hk_row(const float *x, std::integer_sequence<int, C...>) {
    float acc = 0.f;
    ((acc = std::integral_constant<bool, (HT ? hk_neg(K, C, I) : hk_neg(K, I, C)) != 0u>::value ? acc - x[C]
                                                                                                : acc + x[C]),
     ...);
    return acc;
}
template <int K, int HT, int I0, typename F, int... I>
__device__ __forceinline__ void hk_rows(const float *x, F &out, std::integer_sequence<int, I...>) {
    (out(I0 + I, hk_row<K, I0 + I, HT>(x, std::make_integer_sequence<int, K>())), ...);
}
template <int K, int I0, int I1, typename F> __device__ __forceinline__ void hk_mix(const float *x, int htr, F out) {
    constexpr int N = (I1 < K ? I1 : K) - I0;
    if (htr) hk_rows<K, 1, I0>(x, out, std::make_integer_sequence<int, (N > 0 ? N : 0)>());   // op = H_K^T
    else hk_rows<K, 0, I0>(x, out, std::make_integer_sequence<int, (N > 0 ? N : 0)>());
}

// Occupancy: 4 blocks (1024 threads, <= 64 registers) per SM, 3 for K = 28, 2 for K = 76 (x[K] held in registers).
// QM: the most values per thread in phase 2 (P / 256 <= QM). RPB > 1 (K = 1, per-tensor amax / scale, one segment
// per row): the block takes RPB consecutive rows, so that short rows (2048) still keep enough loads in flight.
// NG: thread groups per column in phase 3 (4 where P * NG would otherwise leave most of the 256 threads idle).
template <int TIN, int MODE, int K, int QM, int RPB, int NG>
__global__ void __launch_bounds__(ROT_THREADS, K <= 20 ? 4 : K <= 28 ? 3 : 2) k_rot(rows_args a, int htr) {
    extern __shared__ __align__(16) float sm[];
    if (MODE == MODE_QUANT && blockIdx.x == 0 && threadIdx.x == 0) run_alpha(a.aj);
    // absmax walks the rows last to first and the quantizer (next) first to last: the rows read last are still in L2
    const unsigned bid = MODE == MODE_AMAX || MODE == MODE_STORE_AMAX ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
    const long row0 = (long)(bid / a.nseg) * RPB;
    const long row = row0;   // RPB == 1
    const int seg = bid % a.nseg;
    const int tid = threadIdx.x, lane = tid & 31;
    const long in_off = row * a.ld_in + (long)seg * a.blk;
    const long out_off = row * a.ld_out + (long)seg * a.blk;
    const int blk = a.blk, P = a.P, lP = a.lP, n8 = blk >> 3;
    const int nsh = lP - 3 < 5 ? lP - 3 : 5;   // shuffle stages: h = 8 .. 8 << (nsh - 1)
    const float isc = a.in_scale ? *a.in_scale : 1.f;
    constexpr int UN = RPB > 2 ? RPB : 2;   // loads in flight per thread
    const int ng = n8 * RPB;                // groups of 8 values in the block (RPB rows back to back in sm)

    // Whole warps take part or none (the shuffles): where n8 % 32 != 0 (blocks such as 896 = 28 * 32), the lanes past
    // the block run the stages on zeros and store nothing; P divides the block, so no P-chunk mixes with them.
    for (int g0 = tid; g0 - lane < ng; g0 += UN * ROT_THREADS) {
        float v[UN][8];
        #pragma unroll
        for (int u = 0; u < UN; u++) {
            const int g = g0 + u * ROT_THREADS;
            const int rl = RPB > 1 ? g / n8 : 0;
            if (g < ng && row0 + rl < a.rows)
                load8<TIN>(a.in, (RPB > 1 ? (row0 + rl) * a.ld_in + (g - rl * n8) * 8L : in_off + (long)g * 8), v[u]);
            else
                for (int k = 0; k < 8; k++) v[u][k] = 0.f;
        }
        #pragma unroll
        for (int u = 0; u < UN; u++) {
            const int g = g0 + u * ROT_THREADS;
            if (g - lane >= ng) break;
            if (RPB > 1 && row0 + g / n8 >= a.rows) continue;   // past the last row: whole warps
            float *w = v[u];
            if (a.in_scale) for (int k = 0; k < 8; k++) w[k] = __fmul_rn(w[k], isc);   // the dequant, never fused
            bfly8(w);
            #pragma unroll
            for (int st = 0; st < 5; st++) {
                if (st >= nsh) break;
                shfl_stage(w, lane, st);
            }
            if (g >= ng) continue;
            float4 *d = (float4 *)(sm + (long)g * 8);
            d[0] = make_float4(w[0], w[1], w[2], w[3]);
            d[1] = make_float4(w[4], w[5], w[6], w[7]);
        }
    }
    __syncthreads();

    float mx = 0.f, chk = 0.f;   // amax_add; MODE_AMAX: the values arrive unscaled (sc below)
    float qs = 1.f;
    if (MODE == MODE_QUANT) qs = rscale_of(a.amax_row_q ? a.amax_row_q[row] : *a.amax_q, qmax_of(a.fmt));
    auto emit_at = [&](long o_off, int e, float v) {
        if (MODE == MODE_STORE) {
            if (a.out_f32) {
                float *o = (float *)a.out + o_off + e;
                *o = a.accumulate ? *o + v : v;
            } else {
                ((bf16 *)a.out)[o_off + e] = __float2bfloat16_rn(v);
            }
        } else if (MODE == MODE_AMAX || MODE == MODE_STORE_AMAX) {
            if (MODE == MODE_STORE_AMAX) ((float *)a.out)[o_off + e] = v;
            amax_add(mx, chk, v);
        } else {
            ((uint8_t *)a.out)[o_off + e] = quant1(v, qs, a.fmt);
        }
    };
    auto emit = [&](int e, float v) { emit_at(out_off, e, v); };
    auto sc = [&](float v) { return MODE == MODE_AMAX ? v : __fmul_rn(v, a.scale); };

    const int Q = P > 256 ? P >> 8 : 1;
    if (K == 1 || Q > 1) {
        for (int it = tid; it < K * 256 * RPB; it += ROT_THREADS) {   // K == 1: P >= 256 (blk % 256 == 0)
            const int rl = RPB > 1 ? it / (K * 256) : 0, il = it - rl * K * 256;
            if (RPB > 1 && row0 + rl >= a.rows) break;
            const int base = rl * blk + (il >> 8) * P + (il & 255);
            float r[QM];
            #pragma unroll
            for (int k = 0; k < QM; k++) if (k < Q) r[k] = sm[base + 256 * k];
            #pragma unroll
            for (int st = 0; st < 5; st++) {
                const int h = 1 << st;
                if (h >= Q) break;
                #pragma unroll
                for (int k = 0; k < QM; k++)
                    if (k < Q && !(k & h)) { const float x = r[k], y = r[k + h]; r[k] = x + y; r[k + h] = x - y; }
            }
            const long o_off = RPB > 1 ? (row0 + rl) * a.ld_out : out_off;
            #pragma unroll
            for (int k = 0; k < QM; k++) {
                if (k >= Q) break;
                if (K == 1) emit_at(o_off, (il >> 8) * P + (il & 255) + 256 * k, sc(r[k]));
                else sm[base + 256 * k] = r[k];
            }
        }
        if (K > 1) __syncthreads();
    }
    if (K > 1) {
        // NG thread groups per column (K = 76 at P = 64, or P < 256: else most threads would have no column), each
        // forming outputs [g KI, (g + 1) KI) of it
        constexpr int KI = (K + NG - 1) / NG;
        for (int w = tid; w < P * NG; w += ROT_THREADS) {
            const int j = w & (P - 1), q = w >> lP;
            float x[K];
            #pragma unroll
            for (int c = 0; c < K; c++) x[c] = sm[c * P + j];
            auto out = [&](int i, float acc) { emit(i * P + j, sc(acc)); };
            if (q == 0) hk_mix<K, 0, KI>(x, htr, out);
            else if (NG > 1 && q == 1) hk_mix<K, KI, 2 * KI>(x, htr, out);
            else if (NG > 2 && q == 2) hk_mix<K, 2 * KI, 3 * KI>(x, htr, out);
            else if (NG > 3) hk_mix<K, 3 * KI, K>(x, htr, out);
        }
    }
    if (MODE == MODE_AMAX || MODE == MODE_STORE_AMAX) {
        mx = block_max(mx);
        if (MODE == MODE_AMAX) mx = __fmul_rn(mx, a.scale);
        if (a.nonfinite) { if (__syncthreads_or(chk != 0.f) && tid == 0) atomicOr(a.nonfinite, 1); }
        if (tid == 0) {
            if (a.amax_bits) atomicMax(a.amax_bits, __float_as_uint(mx));
            if (a.amax_row_bits) atomicMax(a.amax_row_bits + row, __float_as_uint(mx));
        }
    }
}

static int g_rot_off;       // halo_cuda_rows_fast(0): the generic k_rows only (tests compare both)
static int g_rot_rpb_off;   // halo_cuda_rows_fast(2): k_rot with one row per block only (tests compare both)
extern "C" void halo_cuda_rows_fast(int on) { g_rot_off = !on; g_rot_rpb_off = on == 2; }
static int vgrid(long items, int per_block);

// ---------------------------------------------------------------------------------------------------------------
// Block-diagonal rotations with small blocks (K = 1, B = 2^lb from 8 to 256, rows of a multiple of 256): a warp takes
// 32 * VPL consecutive values of a row, VPL per lane (VPL / 8 vector loads), runs stages h = 1 .. VPL / 2 in registers
// and the rest up to B / 2 by shuffles (k_rot's first phase, which finishes such a block), scales and writes from the
// registers: one read and one write, no shared memory, the values of k_rows / k_rot bit for bit. VPL = 32 (rows of a
// multiple of 1024, blocks of >= 32, bf16 input) needs at most 3 shuffle stages instead of 5: the shuffles, not the
// loads, bound the 8-value form on bf16 rows (1.2-2.3 TB/s; issuing four items' loads together made it slower). MODE_STORE (bf16 or fp32 out,
// += when accumulate), MODE_STORE_AMAX (fp32 out and the absmax), MODE_AMAX (the absmax only) or MODE_QUANT (8 codes
// per 8 values with the per-tensor scale, as k_rot's quantizer).
// Stages h = 1 .. min(VPL, B) / 2 of blocks of B (>= 8) on VPL consecutive values of a row held by one thread.
template <int VPL> __device__ __forceinline__ void reg_stages(float *v, int B) {
    #pragma unroll
    for (int g = 0; g < VPL / 8; g++) bfly8(v + 8 * g);
    #pragma unroll
    for (int h = 8; h < VPL; h *= 2)   // VPL = 32: stages 8 and 16 where the block has them
        if (h < B) {
            #pragma unroll
            for (int k = 0; k < VPL; k++)
                if (!(k & h)) { const float x = v[k], y = v[k + h]; v[k] = x + y; v[k + h] = x - y; }
        }
}
// VPL consecutive values of a lane (32 lanes: 32 * VPL values, blocks of 2^lb <= 256 of them): stages h = 1 .. B / 2,
// the first ones in registers, the rest by shuffles, then the scale.
template <int VPL> __device__ __forceinline__ void rs_rotate(float *v, int lane, int lb, float scale) {
    constexpr int LV = VPL == 32 ? 5 : 3, NG = VPL / 8;   // stages in registers, groups of 8 values
    reg_stages<VPL>(v, 1 << lb);
    #pragma unroll
    for (int st = 0; st < 5; st++)
        if (st < lb - LV) {
            #pragma unroll
            for (int g = 0; g < NG; g++) shfl_stage(v + 8 * g, lane, st);
        }
    #pragma unroll
    for (int k = 0; k < VPL; k++) v[k] = __fmul_rn(v[k], scale);
}

template <int TIN, int MODE, int VPL>
__global__ void __launch_bounds__(256) k_rot_small(rows_args a, long total, int per_row, int lb) {
    constexpr int NG = VPL / 8;   // groups of 8 values
    const int lane = threadIdx.x & 31;
    const long nw = ((long)gridDim.x * blockDim.x) >> 5;
    const float isc = a.in_scale ? *a.in_scale : 1.f;
    float mx = 0.f, qs = 1.f;
    int bad = 0;
    if (MODE == MODE_QUANT) {
        if (blockIdx.x == 0 && threadIdx.x == 0) run_alpha(a.aj);
        qs = rscale_of(*a.amax_q, qmax_of(a.fmt));
    }
    for (long w = (blockIdx.x * (long)blockDim.x + threadIdx.x) >> 5; w < total; w += nw) {   // whole warps
        const long r = w / per_row, c = (w - r * per_row) * (32 * VPL) + lane * VPL;
        float v[VPL];
        #pragma unroll
        for (int g = 0; g < NG; g++) load8<TIN>(a.in, r * a.ld_in + c + 8 * g, v + 8 * g);
        if (a.in_scale) for (int k = 0; k < VPL; k++) v[k] = __fmul_rn(v[k], isc);
        rs_rotate<VPL>(v, lane, lb, a.scale);
        #pragma unroll
        for (int g = 0; g < NG; g++) {
            float *u8 = v + 8 * g;
            const long o = r * a.ld_out + c + 8 * g;
            if (MODE == MODE_QUANT) {
                uint32_t lo = 0, hi = 0;
                for (int k = 0; k < 4; k++) {
                    lo |= (uint32_t)quant1(u8[k], qs, a.fmt) << (8 * k);
                    hi |= (uint32_t)quant1(u8[k + 4], qs, a.fmt) << (8 * k);
                }
                *(uint2 *)((uint8_t *)a.out + o) = make_uint2(lo, hi);
            } else if (MODE != MODE_AMAX && (MODE == MODE_STORE_AMAX || a.out_f32)) {
                float4 *d = (float4 *)((float *)a.out + o);
                if (MODE == MODE_STORE && a.accumulate) {
                    const float4 p = d[0], q = d[1];
                    u8[0] = p.x + u8[0]; u8[1] = p.y + u8[1]; u8[2] = p.z + u8[2]; u8[3] = p.w + u8[3];
                    u8[4] = q.x + u8[4]; u8[5] = q.y + u8[5]; u8[6] = q.z + u8[6]; u8[7] = q.w + u8[7];
                }
                d[0] = make_float4(u8[0], u8[1], u8[2], u8[3]);
                d[1] = make_float4(u8[4], u8[5], u8[6], u8[7]);
            } else if (MODE == MODE_STORE) {   // bf16
                uint4 u;
                __nv_bfloat162 *b2 = (__nv_bfloat162 *)&u;
                for (int k = 0; k < 4; k++) b2[k] = __floats2bfloat162_rn(u8[2 * k], u8[2 * k + 1]);
                *(uint4 *)((bf16 *)a.out + o) = u;
            }
        }
        if (MODE == MODE_STORE_AMAX || MODE == MODE_AMAX)
            for (int k = 0; k < VPL; k++) {
                const float av = fabsf(v[k]);
                bad |= !(av <= FLT_MAX);
                mx = fmaxf(mx, av);
            }
    }
    if (MODE == MODE_STORE_AMAX || MODE == MODE_AMAX) {
        mx = block_max(mx);
        if (a.nonfinite) { if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(a.nonfinite, 1); }
        if (threadIdx.x == 0 && a.amax_bits) atomicMax(a.amax_bits, __float_as_uint(mx));
    }
}

// k_rot_small's conditions: blocks of 8..256 (power of two, K = 1), rows whole multiples of 256 at vector-aligned
// addresses (out: 8 elements per lane, 16-byte aligned; codes 8-byte), per-tensor amax and scale only.
static int rot_small_ok(const rows_args &a, const void *out, long ld_out, int out_es) {
    const int al = out_es == 1 ? 8 : 16;
    return !g_rot_off && a.rotate && a.K == 1 && a.P == a.blk && a.blk >= 8 && a.blk <= 256 &&
           (long)a.blk * a.nseg % 256 == 0 && a.vec_in && !a.amax_row_bits && !a.amax_row_q &&
           ((uintptr_t)out % al) == 0 && (ld_out * out_es) % al == 0;
}

// halo_cuda_rows_small_form: 0 = the 8-value form only, 1 = the 32-value form where it applies, 2 = also k_rot_tile
// (the default; tests compare all three)
static int g_small32_off;
static int g_rot_tile = -1;   // -1: HALO_CUDA_ROT_TILE decides at the first use
extern "C" void halo_cuda_rows_small_form(int form) { g_small32_off = form < 1; g_rot_tile = form >= 2; }

template <int MODE, int VPL> static void launch_rot_small_v(int tin, rows_args &a, cudaStream_t s) {
    const int per_row = (int)((long)a.blk * a.nseg / (32 * VPL));
    const long total = (long)a.rows * per_row;
    if (total <= 0) return;
    const int grid = vgrid(total, 8);   // a warp per item, 8 warps per block
    if (tin == HALO_CUDA_BF16) k_rot_small<HALO_CUDA_BF16, MODE, VPL><<<grid, 256, 0, s>>>(a, total, per_row, a.lP);
    else if (tin == HALO_CUDA_F32) k_rot_small<HALO_CUDA_F32, MODE, VPL><<<grid, 256, 0, s>>>(a, total, per_row, a.lP);
    else k_rot_small<HALO_CUDA_I32, MODE, VPL><<<grid, 256, 0, s>>>(a, total, per_row, a.lP);
    CUDA_LAUNCH_CHECK();
}
template <int MODE> static void launch_rot_small(int tin, rows_args &a, cudaStream_t s) {
    // bf16 input only: with fp32 / int32 rows (64 / 128 bytes a lane) the 32-value form ran 2x slower (H_m^T of G)
    if (!g_small32_off && tin == HALO_CUDA_BF16 && a.blk >= 32 && (long)a.blk * a.nseg % 1024 == 0)
        launch_rot_small_v<MODE, 32>(tin, a, s);
    else launch_rot_small_v<MODE, 8>(tin, a, s);
}


// Tiles of 32 rows x 256 columns of bf16 rows, blocks of 16..256 (k_rot_small's stages and values, no shuffles):
// thread (r = tid / 8, j = tid % 8) loads columns 32j .. 32j + 31 of row r and runs stages h = 1 .. 16 in registers,
// then the tile goes through shared memory (fp32, 16-byte chunks XOR-swizzled: no bank conflicts either way) and the
// thread takes columns 32i + 4j + q (i = 0..7, q = 0..3): stages h = 32 .. 128 in registers. One exchange per value
// instead of three shuffles. QUANT = 0: the absmax (and the non-finite flag); 1: codes with the per-tensor scale
// (FMT: the format), row-major from the registers and, when qt, transposed (32 consecutive bytes a column, zero codes
// for rows past `rows`, nothing past rows_pad). On the H200 (dev/cuda/HALO_NOTES.md Run 15) it is issue-bound, so it
// counts instructions: gate's X into both layouts 0.051 ms, against 0.071-0.077 for the kernel it replaced
// (k_rot_small_both: the same tiles with 8-value warp shuffles). Two persistent forms ran slower: the next tile's loads
// in registers (3 blocks an SM; gate absmax X 0.053 vs 0.046 ms), and by cp.async into shared memory (4 blocks an SM;
// quantize X both layouts 0.058-0.068 vs 0.051 ms, absmax unchanged).
// LB = log2 of the block when fixed at compile time (8: blocks of 256, no run-time stage branches), 0: a.lP. With LB
// even the scale 1 / sqrt(B) is a power of two and the quantizer folds it into its reciprocal scale once (the same
// products: multiplying by a power of two is exact); the INT8 codes are rint then the clamp by one max and a saturating
// pack (cvt.pack.sat: 127 above, NaN -> 0 from the conversion), the absmax a NaN-propagating maximum (one instruction a
// value; the NaN-skipping maximum is recomputed only when a NaN came through).
enum { RT_ROWS = 32 };
__device__ __forceinline__ float fmax_abs_nan(float m, float v) {
    float r;
    asm("{ .reg .f32 t; abs.f32 t, %2; max.NaN.f32 %0, %1, t; }" : "=f"(r) : "f"(m), "f"(v));
    return r;
}
// Four int32 codes (already >= -127) to four bytes, c[0] lowest, saturating at 127.
__device__ __forceinline__ uint32_t pack_s8x4(const int c[4]) {
    uint32_t lo, out;
    asm("cvt.pack.sat.s8.s32.b32 %0, %1, %2, 0;" : "=r"(lo) : "r"(c[3]), "r"(c[2]));
    asm("cvt.pack.sat.s8.s32.b32 %0, %1, %2, %3;" : "=r"(out) : "r"(c[1]), "r"(c[0]), "r"(lo));
    return out;
}
template <int QUANT, int FMT, int LB>
__global__ void __launch_bounds__(256) k_rot_tile(rows_args a, int nseg256, int rows_pad, uint8_t *qt, long ldqt) {
    __shared__ __align__(16) float4 ex[RT_ROWS * 64];
    __shared__ __align__(16) uint32_t st[QUANT ? RT_ROWS * 64 : 1];
    __shared__ float qs_sm;
    constexpr bool FOLD = LB > 0 && LB % 2 == 0;
    const int tid = threadIdx.x, r = tid >> 3, j = tid & 7, B = LB ? 1 << LB : 1 << a.lP;
    if (QUANT && tid == 0) {   // the reciprocal scale once a block (a division), read after the exchange's barrier
        if (blockIdx.x == 0) run_alpha(a.aj);
        const float qs = rscale_of(*a.amax_q, qmax_of(a.fmt));
        qs_sm = FOLD ? qs * a.scale : qs;
    }
    const long r0 = (long)(blockIdx.x / nseg256) * RT_ROWS, c0 = (long)(blockIdx.x % nseg256) * 256, row = r0 + r;
    const bool live = row < a.rows;
    float v[32];
    if (live) {
        #pragma unroll
        for (int g = 0; g < 4; g++) load8<HALO_CUDA_BF16>(a.in, row * a.ld_in + c0 + 32 * j + 8 * g, v + 8 * g);
    } else {
        #pragma unroll
        for (int k = 0; k < 32; k++) v[k] = 0.f;
    }
    reg_stages<32>(v, B);
    #pragma unroll
    for (int c = 0; c < 8; c++)   // chunk c (columns 32j + 4c ..) at chunk 8j + (c ^ j) of the row
        ex[r * 64 + 8 * j + (c ^ j)] = make_float4(v[4 * c], v[4 * c + 1], v[4 * c + 2], v[4 * c + 3]);
    __syncthreads();
    #pragma unroll
    for (int i = 0; i < 8; i++) {   // columns 32i + 4j .. + 3
        const float4 f = ex[r * 64 + 8 * i + (j ^ i)];
        v[4 * i] = f.x; v[4 * i + 1] = f.y; v[4 * i + 2] = f.z; v[4 * i + 3] = f.w;
    }
    #pragma unroll
    for (int s = 1; s < 8; s *= 2)   // h = 32 s: values 4 s apart in v
        if (32 * s < B) {
            #pragma unroll
            for (int i = 0; i < 8; i++)
                if (!(i & s)) {
                    #pragma unroll
                    for (int q = 0; q < 4; q++) {
                        const float x = v[4 * i + q], y = v[4 * (i + s) + q];
                        v[4 * i + q] = x + y; v[4 * (i + s) + q] = x - y;
                    }
                }
        }
    if constexpr (!QUANT) {
        float mxn = 0.f;   // max |v| with NaN propagated, on the unscaled values (the scale once at the end)
        #pragma unroll
        for (int k = 0; k < 32; k++) mxn = fmax_abs_nan(mxn, v[k]);
        const bool bad = !(mxn <= FLT_MAX);   // a NaN or an Inf came through
        float mx = mxn;
        if (mxn != mxn) {   // NaN: the maximum that skips NaN, as the CPU's
            mx = 0.f;
            for (int k = 0; k < 32; k++) mx = fmaxf(mx, fabsf(v[k]));
        }
        mx = __fmul_rn(block_max(mx), a.scale);
        if (a.nonfinite) { if (__syncthreads_or(bad) && tid == 0) atomicOr(a.nonfinite, 1); }
        if (tid == 0 && a.amax_bits) atomicMax(a.amax_bits, __float_as_uint(mx));
    } else {
        if (!FOLD) {
            #pragma unroll
            for (int k = 0; k < 32; k++) v[k] = __fmul_rn(v[k], a.scale);
        }
        const float qs = qs_sm;
        uint32_t wd[8];
        #pragma unroll
        for (int i = 0; i < 8; i++) {
            const float *u = v + 4 * i;
            if (FMT == HALO_CUDA_INT8) {   // quant1's INT8 codes: rint, clamp to +-127, NaN -> 0
                int c[4];
                #pragma unroll
                for (int q = 0; q < 4; q++) c[q] = max(__float2int_rn(__fmul_rn(u[q], qs)), -127);
                wd[i] = pack_s8x4(c);
            } else {   // E4M3 by pairs (the same conversion as quant1's)
                const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(__fmul_rn(u[0], qs), __fmul_rn(u[1], qs)),
                                                            __NV_SATFINITE, __NV_E4M3);
                const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(__fmul_rn(u[2], qs), __fmul_rn(u[3], qs)),
                                                            __NV_SATFINITE, __NV_E4M3);
                wd[i] = lo | hi << 16;
            }
            if (live) *(uint32_t *)((uint8_t *)a.out + row * a.ld_out + c0 + 32 * i + 4 * j) = wd[i];
        }
        if (!qt) return;   // (block-uniform)
        // word 8i + j of row r (columns 32i + 4j ..) at word (8i + j) ^ swz(r) of the staged row: conflict-free stores
        // (a warp's 4 rows differ in r & 3) and loads (a warp's 4 row groups differ in r >> 3)
        auto swz = [](int row) { return ((row & 3) ^ (row >> 3 & 3)) << 3; };
        #pragma unroll
        for (int i = 0; i < 8; i++) st[r * 64 + ((8 * i + j) ^ swz(r))] = wd[i];
        __syncthreads();
        // thread (cg = tid / 4, rg = tid % 4): columns 4cg .. 4cg + 3 of rows 8rg .. 8rg + 7, a 4 x 4 byte transpose
        // by byte permutes per 4 rows, then 8 bytes a column
        const int cg = tid >> 2, rg = tid & 3;
        uint32_t w[8], col[4][2];
        #pragma unroll
        for (int k = 0; k < 8; k++) w[k] = st[(8 * rg + k) * 64 + (cg ^ swz(8 * rg + k))];
        #pragma unroll
        for (int h = 0; h < 2; h++) {
            const uint32_t *x = w + 4 * h;
            const uint32_t lo01 = __byte_perm(x[0], x[1], 0x5140), hi01 = __byte_perm(x[0], x[1], 0x7362);
            const uint32_t lo23 = __byte_perm(x[2], x[3], 0x5140), hi23 = __byte_perm(x[2], x[3], 0x7362);
            col[0][h] = __byte_perm(lo01, lo23, 0x5410);
            col[1][h] = __byte_perm(lo01, lo23, 0x7632);
            col[2][h] = __byte_perm(hi01, hi23, 0x5410);
            col[3][h] = __byte_perm(hi01, hi23, 0x7632);
        }
        if (r0 + 8 * rg < rows_pad) {
            #pragma unroll
            for (int c = 0; c < 4; c++)
                *(uint2 *)(qt + (c0 + 4 * cg + c) * ldqt + r0 + 8 * rg) = make_uint2(col[c][0], col[c][1]);
        }
    }
}

// k_rot_tile's conditions beyond rot_small_ok's (see halo_cuda_rows_small_form)
static int rot_tile_ok(const rows_args &a, int tin) {
    return env_switch(&g_rot_tile, "HALO_CUDA_ROT_TILE") && tin == HALO_CUDA_BF16 && !a.in_scale && a.blk >= 16;
}
template <int QUANT, int LB>
static void launch_rot_tile_lb(rows_args &a, int grid, int nseg256, int rows_pad, uint8_t *qt, long ldqt, cudaStream_t s) {
    if (!QUANT) k_rot_tile<0, -1, LB><<<grid, 256, 0, s>>>(a, nseg256, rows_pad, qt, ldqt);
    else if (a.fmt == HALO_CUDA_INT8) k_rot_tile<1, HALO_CUDA_INT8, LB><<<grid, 256, 0, s>>>(a, nseg256, rows_pad, qt, ldqt);
    else k_rot_tile<1, HALO_CUDA_E4M3, LB><<<grid, 256, 0, s>>>(a, nseg256, rows_pad, qt, ldqt);
}
template <int QUANT> static void launch_rot_tile(rows_args &a, int rows_pad, uint8_t *qt, long ldqt, cudaStream_t s) {
    const int nseg256 = (int)((long)a.blk * a.nseg / 256), grid = cdiv(QUANT && qt ? rows_pad : a.rows, RT_ROWS) * nseg256;
    if (grid <= 0) return;
    if (a.lP == 8) launch_rot_tile_lb<QUANT, 8>(a, grid, nseg256, rows_pad, qt, ldqt, s);
    else launch_rot_tile_lb<QUANT, 0>(a, grid, nseg256, rows_pad, qt, ldqt, s);
    CUDA_LAUNCH_CHECK();
}

// 1 when k_rot takes this launch (see its conditions above); a.htr is set by rows_setup.
// K = 44 stays on k_rows. K = 28 (down_proj, 14336 = 28 * 512) was there too while k_rot's mix read its coefficients
// from constant memory (level 1 on the H200: 6.34 ms with k_rows, 8.78 ms with k_rot); with compiled signs it is on
// k_rot for P <= 2048.
// K = 76 (4864 = 76 * 64, Qwen2.5's MLP width) ran k_rows's mix, which reads its signs from shared memory, at ~5 times
// k_rot's instructions per term; HALO_CUDA_ROT_K76=0 keeps it there (to compare).
// Blocks that are not a multiple of 256 (Qwen2.5's 896 = 28 * 32) need P < 256 there (the shuffles stay inside a
// P-chunk); they ran k_rows before, HALO_CUDA_ROT_SMALL_P=0 keeps them there (to compare).
static int g_rot_k76 = -1, g_rot_small_p = -1;
static int rot_ok(const rows_args &a) {
    return !g_rot_off &&
           (a.K == 1 || a.K == 12 || a.K == 20 || (a.K == 28 && a.P <= 2048) ||
            (a.K == 76 && a.P <= 2048 && env_switch(&g_rot_k76, "HALO_CUDA_ROT_K76"))) &&
           a.rotate && a.vec_in && a.ck && a.P % 8 == 0 && a.P >= 8 && a.P <= 256 * ROT_QMAX &&
           (a.blk % 256 == 0 || (a.K > 1 && a.P < 256 && env_switch(&g_rot_small_p, "HALO_CUDA_ROT_SMALL_P")));
}

template <int TIN, int MODE, int K, int QM, int RPB, int NG = (K > 32 ? 4 : 1)>
static void launch_rot_k(rows_args &a, cudaStream_t s) {
    const size_t smem = sizeof(float) * (size_t)a.blk * RPB;
    static size_t smem_set = 0;
    if (smem > 48 * 1024 && smem_set < smem) {
        CUDA_CHECK(cudaFuncSetAttribute(k_rot<TIN, MODE, K, QM, RPB, NG>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
        smem_set = smem;
    }
    const long grid = (long)(a.rows + RPB - 1) / RPB * a.nseg;
    if (grid <= 0) return;
    k_rot<TIN, MODE, K, QM, RPB, NG><<<(unsigned)grid, ROT_THREADS, smem, s>>>(a, a.htr);
    CUDA_LAUNCH_CHECK();
}

// K = 1 rows of <= 2048 (4096) with per-tensor amax / scale: 4 (2) rows per block (more loads in flight per SM)
// Orders 12, 20 and 28: P < 256 (blocks such as 896 = 28 * 32) has no phase 2 (QM = 1) and four thread groups a
// column in phase 3; else QM values a thread in phase 2.
template <int TIN, int MODE, int K, int QM> static void launch_rot_mix(rows_args &a, cudaStream_t s) {
    if (a.P < 256) launch_rot_k<TIN, MODE, K, 1, 1, 4>(a, s);
    else launch_rot_k<TIN, MODE, K, QM, 1>(a, s);
}

template <int TIN, int MODE> static void launch_rot(rows_args &a, cudaStream_t s) {
    const int multi = a.nseg == 1 && !a.amax_row_bits && !a.amax_row_q && !g_rot_rpb_off;
    switch (a.K) {
    case 1:
        if (a.P <= 2048 && multi) launch_rot_k<TIN, MODE, 1, 8, 4>(a, s);
        else if (a.P <= 2048) launch_rot_k<TIN, MODE, 1, 8, 1>(a, s);
        else if (a.P <= 4096 && multi) launch_rot_k<TIN, MODE, 1, 16, 2>(a, s);
        else if (a.P <= 4096) launch_rot_k<TIN, MODE, 1, 16, 1>(a, s);
        else launch_rot_k<TIN, MODE, 1, 32, 1>(a, s);
        break;
    case 12: launch_rot_mix<TIN, MODE, 12, 32>(a, s); break;
    case 20: launch_rot_mix<TIN, MODE, 20, 32>(a, s); break;
    case 28: launch_rot_mix<TIN, MODE, 28, 8>(a, s); break;
    default: launch_rot_k<TIN, MODE, 76, 8, 1>(a, s); break;
    }
}

template <int MODE> static void launch_rows(int tin, rows_args &a, cudaStream_t s) {
    if (rot_ok(a)) {
        if (tin == HALO_CUDA_BF16) launch_rot<HALO_CUDA_BF16, MODE>(a, s);
        else if (tin == HALO_CUDA_F32) launch_rot<HALO_CUDA_F32, MODE>(a, s);
        else launch_rot<HALO_CUDA_I32, MODE>(a, s);
        return;
    }
    if (tin == HALO_CUDA_BF16) launch_rows_t<HALO_CUDA_BF16, MODE>(a, s);
    else if (tin == HALO_CUDA_F32) launch_rows_t<HALO_CUDA_F32, MODE>(a, s);
    else launch_rows_t<HALO_CUDA_I32, MODE>(a, s);
}

static int ilog2(int x) { int l = 0; while ((1 << l) < x) l++; return l; }
static int aligned(const void *p, int bytes) { return ((uintptr_t)p % (uintptr_t)bytes) == 0; }
static int esize(int t) { return t == HALO_CUDA_BF16 ? 2 : t == HALO_CUDA_U8 ? 1 : 4; }

static rows_args rows_setup(const halo_cuda_had *h, int transpose, const void *in, int in_type, long ld_in, int rows,
                            int d) {
    rows_args a;
    memset(&a, 0, sizeof a);
    a.in = in; a.ld_in = ld_in; a.rows = rows;
    if (h) {
        a.rotate = 1; a.blk = h->block; a.nseg = h->d / h->block; a.K = h->K; a.P = h->P; a.lP = ilog2(h->P);
        a.scale = h->scale;
        // x H = (op x) with op = H_K^T (x) H_P along the row (the CPU's ht = 1); x H^T uses H_K.
        a.Hop = transpose ? h->dHf : h->dHtf;
        a.sgn = transpose ? h->dSgn : h->dSgnT;
        a.ck = h->K == 1 || h->ck; a.htr = !transpose;
    } else {
        a.rotate = 0; a.blk = d; a.nseg = 1; a.K = 1; a.P = d;
    }
    const int es = esize(in_type);
    a.vec_in = aligned(in, 32) && (ld_in * es) % 32 == 0 && ((long)a.blk * es) % 32 == 0;
    return a;
}

// ---------------------------------------------------------------------------------------------------------------
// Unrotated passes at memory bandwidth: 8 elements (16 bytes of bf16, 32 of fp32/int32) per load, 4 loads in flight
// per thread, grids sized to the GPU, absmax reduced by warp shuffles with one atomic per block. Used when the
// shapes and pointers allow 8-element vectors (every layer shape with m, n multiples of 8); else the kernels above.

static int num_sms(void) {
    static int n = 0;
    if (!n) {
        int dev = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    }
    return n;
}
static int vgrid(long items, int per_block) {   // enough blocks to fill the GPU, no more than the work needs
    long g = (items + per_block - 1) / per_block, cap = (long)num_sms() * 16;
    return (int)(g < cap ? (g > 0 ? g : 1) : cap);
}

// Offset of 8-element chunk i of a rows x (c8 * 8) matrix with row stride ld.
__device__ __forceinline__ long chunk_off(long i, int c8, long ld, int contig) {
    if (contig) return i * 8;
    const long r = i / c8;
    return r * ld + (i - r * c8) * 8;
}

enum { VEC_UNROLL = 4 };

template <int TIN> __global__ void __launch_bounds__(256) k_absmax_vec(const void *in, long ld, long total, int c8,
                                                                       unsigned *amax_bits, int *nonfinite) {
    const int contig = ld == (long)c8 * 8;
    const long stride = (long)gridDim.x * blockDim.x;
    float mx = 0.f;
    int bad = 0;
    // last chunk to first, so that the quantizer's pass (first to last) finds the chunks read last in L2
    for (long i0 = blockIdx.x * (long)blockDim.x + threadIdx.x; i0 < total; i0 += VEC_UNROLL * stride) {
        float v[VEC_UNROLL][8];
        #pragma unroll
        for (int u = 0; u < VEC_UNROLL; u++) {
            const long j = i0 + u * stride;
            if (j < total) load8<TIN>(in, chunk_off(total - 1 - j, c8, ld, contig), v[u]);
            else for (int k = 0; k < 8; k++) v[u][k] = 0.f;
        }
        #pragma unroll
        for (int u = 0; u < VEC_UNROLL; u++)
            #pragma unroll
            for (int k = 0; k < 8; k++) {
                const float av = fabsf(v[u][k]);
                bad |= !(av <= FLT_MAX);
                mx = fmaxf(mx, av);   // NaN is skipped, as in k_rows (the flag reports it)
            }
    }
    mx = block_max(mx);
    if (nonfinite) { if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(nonfinite, 1); }
    if (threadIdx.x == 0) atomicMax(amax_bits, __float_as_uint(mx));   // non-negative floats order as uints
}

template <int TIN> __global__ void __launch_bounds__(256) k_quant_vec(const void *in, long ld, long total, int c8,
                                                                      const float *amax, const float *amax_row,
                                                                      int fmt, uint8_t *q, long ldq,
                                                                      halo_cuda_alpha_job aj) {
    if (blockIdx.x == 0 && threadIdx.x == 0) run_alpha(aj);
    const int contig = ld == (long)c8 * 8 && ldq == (long)c8 * 8;
    const long stride = (long)gridDim.x * blockDim.x;
    const float qm = qmax_of(fmt), st = amax_row ? 1.f : rscale_of(*amax, qm);
    for (long i0 = blockIdx.x * (long)blockDim.x + threadIdx.x; i0 < total; i0 += VEC_UNROLL * stride) {
        float v[VEC_UNROLL][8];
        #pragma unroll
        for (int u = 0; u < VEC_UNROLL; u++) {
            const long i = i0 + u * stride;
            if (i < total) load8<TIN>(in, chunk_off(i, c8, ld, contig), v[u]);
        }
        #pragma unroll
        for (int u = 0; u < VEC_UNROLL; u++) {
            const long i = i0 + u * stride;
            if (i >= total) break;
            const long r = i / c8, c = (i - r * c8) * 8;
            const float sc = amax_row ? rscale_of(amax_row[r], qm) : st;
            *(uint2 *)(q + r * ldq + c) = quant8(v[u], sc, fmt);
        }
    }
}

// 64 x 64 tiles, 64 threads. Phase 1: each thread reads eight 8-element row chunks (quantizing them unless TIN is
// u8 codes), writes them row-major to q (when not NULL) and into shared memory (chunks XOR-swizzled by row group,
// so phase 2's reads spread over the banks). Phase 2: each thread transposes one 8 x 8 byte block in registers and
// writes 8 bytes to each of 8 rows of qt (rows r >= R give zero codes, up to Rpad). Needs C % 8 == 0, Rpad % 8 == 0.
template <int TIN> __global__ void __launch_bounds__(64) k_tile8(const void *in, long ld_in, int R, int C,
                                                                 const float *amax, int fmt, uint8_t *q, long ldq,
                                                                 uint8_t *qt, long ldqt, int Rpad,
                                                                 halo_cuda_alpha_job aj) {
    __shared__ __align__(16) uint2 tile[64][9];   // 72-byte rows + the swizzle: conflict-free phase 2
    const int r0 = blockIdx.y * 64, c0 = blockIdx.x * 64, t = threadIdx.x, cc = t & 7;
    pdl_wait();   // (launch_pdl)
    if (blockIdx.x == 0 && blockIdx.y == 0 && t == 0) run_alpha(aj);
    const float s = TIN == HALO_CUDA_U8 ? 1.f : rscale_of(*amax, qmax_of(fmt));
    const int c = c0 + cc * 8;
    uint2 code[8];
    #pragma unroll
    for (int k = 0; k < 8; k++) {
        const int i = (t >> 3) + 8 * k, r = r0 + i;
        code[k] = make_uint2(0u, 0u);
        if (r < R && c < C) {
            if (TIN == HALO_CUDA_U8) {
                code[k] = *(const uint2 *)((const uint8_t *)in + (long)r * ld_in + c);
            } else {
                float v[8];
                load8<TIN>(in, (long)r * ld_in + c, v);
                code[k] = quant8(v, s, fmt);
            }
        }
    }
    #pragma unroll
    for (int k = 0; k < 8; k++) {
        const int i = (t >> 3) + 8 * k, r = r0 + i;
        if (q && r < R && c < C) *(uint2 *)(q + (long)r * ldq + c) = code[k];
        tile8_put(tile, i, cc, code[k]);
    }
    if (!qt) return;
    __syncthreads();
    tile8_store_t(tile, t, r0, c0, C, Rpad, qt, ldqt);
}

template <int TIN> static void launch_tile8(const void *in, long ld_in, int R, int C, const float *amax, int fmt,
                                            uint8_t *q, long ldq, uint8_t *qt, long ldqt, int Rpad,
                                            const halo_cuda_alpha_job &aj, cudaStream_t s) {
    dim3 grid(cdiv(C, 64), cdiv(Rpad, 64));
    launch_pdl(k_tile8<TIN>, grid, dim3(64), 0, s, in, ld_in, R, C, amax, fmt, q, ldq, qt, ldqt, Rpad, aj);
}

// The 8-element paths' conditions: rows of in start on 16-byte boundaries (8-byte for u8) and are whole chunks.
static int vec8_ok(const void *in, int in_type, long ld_in, int cols) {
    const int al = in_type == HALO_CUDA_U8 ? 8 : 16;
    return cols % 8 == 0 && ld_in % 8 == 0 && ((uintptr_t)in % al) == 0;
}
static int out8_ok(const void *p, long ld) { return !p || (ld % 8 == 0 && ((uintptr_t)p % 8) == 0); }

extern "C" void halo_cuda_had_rows(const halo_cuda_had *h, int transpose, const void *in, int in_type, long ld_in,
                                   const float *in_scale, void *out, int out_f32, long ld_out, int accumulate,
                                   int rows, cudaStream_t s) {
    rows_args a = rows_setup(h, transpose, in, in_type, ld_in, rows, h->d);
    a.in_scale = in_scale; a.out = out; a.out_f32 = out_f32; a.ld_out = ld_out; a.accumulate = accumulate;
    const int es = out_f32 ? 4 : 2;
    a.vec_out = aligned(out, 4 * es) && (ld_out * es) % (4 * es) == 0;
    if (rot_small_ok(a, out, ld_out, es)) launch_rot_small<MODE_STORE>(in_type, a, s);
    else launch_rows<MODE_STORE>(in_type, a, s);
}

extern "C" int halo_cuda_had_generic_mix(const halo_cuda_had *h) {
    rows_args a = rows_setup(h, 0, NULL, HALO_CUDA_BF16, h->d, 1, h->d);
    a.vec_in = 1;   // (aligned rows assumed: the layers' are)
    return h->K > 1 && !rot_ok(a);
}

// (the fp32 output of rot_amax: rows of ld_in values when the caller's out has the input's shape; checked again at
// the call with the real out)
// Every plan: k_rot or k_rot_small where they apply, else the generic k_rows (orders such as 44 and 172), whose
// order-K mix costs ~3 instructions a term: rotating once saves the most there.
// HALO_CUDA_ROT_ONCE_ROWS=0 leaves k_rows's plans rotating in both passes (to compare).
static int g_rot_once_rows = -1;
extern "C" int halo_cuda_rot_amax_ok(const halo_cuda_had *h, const void *in, long ld_in, int rows) {
    const rows_args a = rows_setup(h, 0, in, HALO_CUDA_BF16, ld_in, rows, h->d);
    return rot_ok(a) || rot_small_ok(a, NULL, h->d, 4) || env_switch(&g_rot_once_rows, "HALO_CUDA_ROT_ONCE_ROWS");
}

extern "C" void halo_cuda_rot_amax(const halo_cuda_had *h, const halo_bf16 *in, long ld_in, int rows, float *out,
                                   long ld_out, float *amax, int *nonfinite, cudaStream_t s) {
    rows_args a = rows_setup(h, 0, in, HALO_CUDA_BF16, ld_in, rows, h->d);
    a.out = out; a.out_f32 = 1; a.ld_out = ld_out; a.amax_bits = (unsigned *)amax; a.nonfinite = nonfinite;
    if (rot_small_ok(a, out, ld_out, 4)) launch_rot_small<MODE_STORE_AMAX>(HALO_CUDA_BF16, a, s);
    else if (rot_ok(a)) launch_rot<HALO_CUDA_BF16, MODE_STORE_AMAX>(a, s);
    else launch_rows_t<HALO_CUDA_BF16, MODE_STORE_AMAX>(a, s);
}

extern "C" void halo_cuda_absmax_rows(const halo_cuda_had *h, int transpose, const void *in, int in_type, long ld_in,
                                      int rows, int d, float *amax, float *amax_row, int *nonfinite, cudaStream_t s) {
    if (!h && !amax_row && in_type != HALO_CUDA_U8 && vec8_ok(in, in_type, ld_in, d)) {
        const long total = (long)rows * (d / 8);
        if (total <= 0) return;
        const int c8 = d / 8;
        const int grid = vgrid(total, 256 * VEC_UNROLL);
        if (in_type == HALO_CUDA_BF16) k_absmax_vec<HALO_CUDA_BF16><<<grid, 256, 0, s>>>(in, ld_in, total, c8, (unsigned *)amax, nonfinite);
        else if (in_type == HALO_CUDA_F32) k_absmax_vec<HALO_CUDA_F32><<<grid, 256, 0, s>>>(in, ld_in, total, c8, (unsigned *)amax, nonfinite);
        else k_absmax_vec<HALO_CUDA_I32><<<grid, 256, 0, s>>>(in, ld_in, total, c8, (unsigned *)amax, nonfinite);
        CUDA_LAUNCH_CHECK();
        return;
    }
    rows_args a = rows_setup(h, transpose, in, in_type, ld_in, rows, d);
    a.amax_bits = (unsigned *)amax; a.amax_row_bits = (unsigned *)amax_row; a.nonfinite = nonfinite;
    a.vec_out = 1;
    if (!a.rotate) a.vec_out = 0;   // scalar loads of the unrotated input (any alignment)
    if (!rot_small_ok(a, NULL, 0, 4)) launch_rows<MODE_AMAX>(in_type, a, s);
    else if (rot_tile_ok(a, in_type)) launch_rot_tile<0>(a, rows, NULL, 0, s);
    else launch_rot_small<MODE_AMAX>(in_type, a, s);
}

// The scale products alone (nothing to quantize): one launch each.
static void alpha_alone(const halo_cuda_alpha_job &aj, cudaStream_t s) {
    for (int i = 0; i < HALO_CUDA_ALPHA_JOBS; i++)
        if (aj.out[i]) halo_cuda_alpha(aj.out[i], aj.a[i], aj.b[i], aj.fmt, s);
}
static halo_cuda_alpha_job alpha_or_none(const halo_cuda_alpha_job *alpha) {
    halo_cuda_alpha_job aj;
    memset(&aj, 0, sizeof aj);
    if (alpha) aj = *alpha;
    return aj;
}

extern "C" void halo_cuda_quant_rows_alpha(const halo_cuda_had *h, int transpose, const void *in, int in_type,
                                           long ld_in, int rows, int d, const float *amax, const float *amax_row,
                                           int fmt, uint8_t *q, long ldq, const halo_cuda_alpha_job *alpha,
                                           cudaStream_t s) {
    const halo_cuda_alpha_job aj = alpha_or_none(alpha);
    if (rows <= 0 || d <= 0) { alpha_alone(aj, s); return; }
    if (!h && in_type != HALO_CUDA_U8 && vec8_ok(in, in_type, ld_in, d) && out8_ok(q, ldq)) {
        const long total = (long)rows * (d / 8);
        const int c8 = d / 8;
        const int grid = vgrid(total, 256 * VEC_UNROLL);
        if (in_type == HALO_CUDA_BF16) k_quant_vec<HALO_CUDA_BF16><<<grid, 256, 0, s>>>(in, ld_in, total, c8, amax, amax_row, fmt, q, ldq, aj);
        else if (in_type == HALO_CUDA_F32) k_quant_vec<HALO_CUDA_F32><<<grid, 256, 0, s>>>(in, ld_in, total, c8, amax, amax_row, fmt, q, ldq, aj);
        else k_quant_vec<HALO_CUDA_I32><<<grid, 256, 0, s>>>(in, ld_in, total, c8, amax, amax_row, fmt, q, ldq, aj);
        CUDA_LAUNCH_CHECK();
        return;
    }
    rows_args a = rows_setup(h, transpose, in, in_type, ld_in, rows, d);
    a.aj = aj;
    a.amax_q = amax; a.amax_row_q = amax_row; a.fmt = fmt; a.out = q; a.ld_out = ldq;
    a.vec_out = aligned(q, 4) && ldq % 4 == 0;
    if (!rot_small_ok(a, q, ldq, 1)) launch_rows<MODE_QUANT>(in_type, a, s);
    else if (rot_tile_ok(a, in_type)) launch_rot_tile<1>(a, rows, NULL, 0, s);
    else launch_rot_small<MODE_QUANT>(in_type, a, s);
}

// k_rot_tile's conditions for both layouts: rot_small_ok and rot_tile_ok (bf16 rows of a multiple of 256, blocks of
// 16..256, tiles on), rows_pad a multiple of 16, qt 16-byte aligned with ldqt a multiple of 16.
extern "C" int halo_cuda_rot_quant_both_ok(const halo_cuda_had *h, const halo_bf16 *in, long ld_in, int rows, int d,
                                           const uint8_t *q, long ldq, const uint8_t *qt, long ldqt, int rows_pad) {
    if (!h || rows <= 0 || d != h->d || rows_pad % 16 || rows_pad < rows || ldqt % 16 || !aligned(qt, 16)) return 0;
    rows_args a = rows_setup(h, 0, in, HALO_CUDA_BF16, ld_in, rows, d);
    return rot_small_ok(a, q, ldq, 1) && rot_tile_ok(a, HALO_CUDA_BF16);
}

extern "C" void halo_cuda_rot_quant_both(const halo_cuda_had *h, const halo_bf16 *in, long ld_in, int rows, int d,
                                         const float *amax, int fmt, uint8_t *q, long ldq, uint8_t *qt, long ldqt,
                                         int rows_pad, const halo_cuda_alpha_job *alpha, cudaStream_t s) {
    rows_args a = rows_setup(h, 0, in, HALO_CUDA_BF16, ld_in, rows, d);
    a.aj = alpha_or_none(alpha);
    a.amax_q = amax; a.fmt = fmt; a.out = q; a.ld_out = ldq;
    launch_rot_tile<1>(a, rows_pad, qt, ldqt, s);
}

extern "C" void halo_cuda_quant_rows(const halo_cuda_had *h, int transpose, const void *in, int in_type, long ld_in,
                                     int rows, int d, const float *amax, const float *amax_row, int fmt, uint8_t *q,
                                     long ldq, cudaStream_t s) {
    halo_cuda_quant_rows_alpha(h, transpose, in, in_type, ld_in, rows, d, amax, amax_row, fmt, q, ldq, NULL, s);
}

// ---------------------------------------------------------------------------------------------------------------
// Unrotated quantization into both layouts, 64 x 64 tiles (block 32 x 8; each thread two adjacent columns).

template <int TIN> __global__ void k_quant_tile(const void *in, long ld_in, int R, int C, const float *amax, int fmt,
                                                uint8_t *q, long ldq, uint8_t *qt, long ldqt, int Rpad,
                                                halo_cuda_alpha_job aj) {
    __shared__ uint8_t tile[64][64 + 4];
    const int r0 = blockIdx.y * 64, c0 = blockIdx.x * 64, tx = threadIdx.x, ty = threadIdx.y;
    if (blockIdx.x == 0 && blockIdx.y == 0 && tx == 0 && ty == 0) run_alpha(aj);
    const float s = rscale_of(*amax, qmax_of(fmt));
    for (int i = ty; i < 64; i += 8) {
        const int r = r0 + i;
        for (int k = 0; k < 2; k++) {
            const int cc = 2 * tx + k, c = c0 + cc;
            uint8_t code = 0;
            if (r < R && c < C) {
                code = quant1(load1<TIN>(in, (long)r * ld_in + c), s, fmt);
                if (q) q[(long)r * ldq + c] = code;
            }
            tile[i][cc] = code;
        }
    }
    if (!qt) return;
    __syncthreads();
    for (int i = ty; i < 64; i += 8) {
        const int c = c0 + i;
        if (c >= C) continue;
        for (int k = 0; k < 2; k++) {
            const int rr = 2 * tx + k, r = r0 + rr;
            if (r < Rpad) qt[(long)c * ldqt + r] = tile[rr][i];
        }
    }
}

extern "C" void halo_cuda_quant_tile_alpha(const void *in, int in_type, long ld_in, int rows, int cols,
                                           const float *amax, int fmt, uint8_t *q, long ldq, uint8_t *qt, long ldqt,
                                           int rows_pad, const halo_cuda_alpha_job *alpha, cudaStream_t s) {
    const halo_cuda_alpha_job aj = alpha_or_none(alpha);
    if (rows_pad < rows) rows_pad = rows;
    if (cols <= 0 || rows_pad <= 0) { alpha_alone(aj, s); return; }   // nothing to quantize: the scale products alone
    if (in_type != HALO_CUDA_U8 && vec8_ok(in, in_type, ld_in, cols) && rows_pad % 8 == 0 && out8_ok(q, ldq) &&
        out8_ok(qt, ldqt)) {
        if (in_type == HALO_CUDA_BF16) launch_tile8<HALO_CUDA_BF16>(in, ld_in, rows, cols, amax, fmt, q, ldq, qt, ldqt, rows_pad, aj, s);
        else if (in_type == HALO_CUDA_F32) launch_tile8<HALO_CUDA_F32>(in, ld_in, rows, cols, amax, fmt, q, ldq, qt, ldqt, rows_pad, aj, s);
        else launch_tile8<HALO_CUDA_I32>(in, ld_in, rows, cols, amax, fmt, q, ldq, qt, ldqt, rows_pad, aj, s);
        return;
    }
    dim3 grid(cdiv(cols, 64), cdiv(rows_pad, 64)), blk(32, 8);
    if (in_type == HALO_CUDA_BF16) k_quant_tile<HALO_CUDA_BF16><<<grid, blk, 0, s>>>(in, ld_in, rows, cols, amax, fmt, q, ldq, qt, ldqt, rows_pad, aj);
    else if (in_type == HALO_CUDA_F32) k_quant_tile<HALO_CUDA_F32><<<grid, blk, 0, s>>>(in, ld_in, rows, cols, amax, fmt, q, ldq, qt, ldqt, rows_pad, aj);
    else k_quant_tile<HALO_CUDA_I32><<<grid, blk, 0, s>>>(in, ld_in, rows, cols, amax, fmt, q, ldq, qt, ldqt, rows_pad, aj);
    CUDA_LAUNCH_CHECK();
}

extern "C" void halo_cuda_quant_tile(const void *in, int in_type, long ld_in, int rows, int cols, const float *amax,
                                     int fmt, uint8_t *q, long ldq, uint8_t *qt, long ldqt, int rows_pad,
                                     cudaStream_t s) {
    halo_cuda_quant_tile_alpha(in, in_type, ld_in, rows, cols, amax, fmt, q, ldq, qt, ldqt, rows_pad, NULL, s);
}

// ---------------------------------------------------------------------------------------------------------------
// Transpose with zero padding of the output's columns, 32 x 32 tiles.

template <typename TI, typename TO> __device__ __forceinline__ TO conv(TI x) { return (TO)x; }
template <> __device__ __forceinline__ bf16 conv<float, bf16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ bf16 conv<bf16, bf16>(bf16 x) { return x; }

template <typename TI, typename TO> __global__ void k_transpose(const TI *in, long ld_in, int R, int C, TO *out,
                                                                long ld_out, int Rpad) {
    __shared__ TI tile[32][33];
    const int r0 = blockIdx.y * 32, c0 = blockIdx.x * 32, tx = threadIdx.x, ty = threadIdx.y;
    for (int i = ty; i < 32; i += 8) {
        const int r = r0 + i, c = c0 + tx;
        tile[i][tx] = (r < R && c < C) ? in[(long)r * ld_in + c] : TI();
    }
    __syncthreads();
    for (int i = ty; i < 32; i += 8) {
        const int c = c0 + i, r = r0 + tx;
        if (c < C && r < Rpad) out[(long)c * ld_out + r] = conv<TI, TO>(tile[tx][i]);
    }
}

extern "C" void halo_cuda_transpose(const void *in, int in_type, long ld_in, int rows, int cols, void *out,
                                    int out_type, long ld_out, int rows_pad, cudaStream_t s) {
    if (rows_pad < rows) rows_pad = rows;
    if (cols <= 0 || rows_pad <= 0) return;
    if (in_type == HALO_CUDA_U8 && out_type == HALO_CUDA_U8 && vec8_ok(in, in_type, ld_in, cols) && rows_pad % 8 == 0 &&
        out8_ok(out, ld_out)) {
        halo_cuda_alpha_job none;
        memset(&none, 0, sizeof none);
        launch_tile8<HALO_CUDA_U8>(in, ld_in, rows, cols, NULL, 0, NULL, 0, (uint8_t *)out, ld_out, rows_pad, none, s);
        return;
    }
    dim3 grid(cdiv(cols, 32), cdiv(rows_pad, 32)), blk(32, 8);
    if (in_type == HALO_CUDA_U8 && out_type == HALO_CUDA_U8)
        k_transpose<uint8_t, uint8_t><<<grid, blk, 0, s>>>((const uint8_t *)in, ld_in, rows, cols, (uint8_t *)out, ld_out, rows_pad);
    else if (in_type == HALO_CUDA_BF16 && out_type == HALO_CUDA_BF16)
        k_transpose<bf16, bf16><<<grid, blk, 0, s>>>((const bf16 *)in, ld_in, rows, cols, (bf16 *)out, ld_out, rows_pad);
    else if (in_type == HALO_CUDA_F32 && out_type == HALO_CUDA_F32)
        k_transpose<float, float><<<grid, blk, 0, s>>>((const float *)in, ld_in, rows, cols, (float *)out, ld_out, rows_pad);
    else if (in_type == HALO_CUDA_F32 && out_type == HALO_CUDA_BF16)
        k_transpose<float, bf16><<<grid, blk, 0, s>>>((const float *)in, ld_in, rows, cols, (bf16 *)out, ld_out, rows_pad);
    else {
        fprintf(stderr, "halo_cuda_transpose: unsupported types %d -> %d\n", in_type, out_type);
        abort();
    }
    CUDA_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------------------------
// Scale product and int32 dequantization.

__global__ void k_alpha(float *alpha, const float *aa, const float *ab, int fmt) {
    const float q = qmax_of(fmt);
    *alpha = scale_of(*aa, q) * scale_of(*ab, q);
}

extern "C" void halo_cuda_alpha(float *alpha, const float *amax_a, const float *amax_b, int fmt, cudaStream_t s) {
    k_alpha<<<1, 1, 0, s>>>(alpha, amax_a, amax_b, fmt);
    CUDA_LAUNCH_CHECK();
}

__global__ void k_dequant_i32(void *out, int out_f32, long ldo, const int32_t *C, long ldc, int M, int N,
                              const float *alpha, const float *rs, const float *cs, int acc, const float *res) {
    const int i = blockIdx.y;
    const float al = *alpha, r = rs ? rs[i] : 1.f;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < N; j += gridDim.x * blockDim.x) {
        float v = __fmul_rn((float)C[(long)i * ldc + j], al);   // the CPU's float(c32) * (sa * sb), rounded once (no fma)
        if (rs) v *= r;
        if (cs) v *= cs[j];
        if (out_f32) {
            float *o = (float *)out + (long)i * ldo + j;
            *o = res ? res[(long)i * ldo + j] + v : acc ? *o + v : v;
        } else {
            ((bf16 *)out)[(long)i * ldo + j] = __float2bfloat16_rn(v);
        }
    }
}

// The same, four elements per thread (16-byte int32 loads), over the whole matrix with a grid that fills the GPU.
__global__ void __launch_bounds__(256) k_dequant_vec(void *out, int out_f32, long ldo, const int32_t *C, long ldc,
                                                     long total, int n4, const float *alpha, const float *rs,
                                                     const float *cs, int acc, const float *res) {
    const float al = *alpha;
    const long stride = (long)gridDim.x * blockDim.x;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += stride) {
        const long r = i / n4, j = (i - r * n4) * 4;
        const int4 c = *(const int4 *)(C + r * ldc + j);
        // __fmul_rn: never contracted with the accumulation below into an fma (the CPU multiplies, then adds)
        float v[4] = {__fmul_rn((float)c.x, al), __fmul_rn((float)c.y, al), __fmul_rn((float)c.z, al),
                      __fmul_rn((float)c.w, al)};
        for (int k = 0; k < 4; k++) {
            if (rs) v[k] *= rs[r];
            if (cs) v[k] *= cs[j + k];
        }
        if (out_f32) {
            float4 *o = (float4 *)((float *)out + r * ldo + j);
            float4 w = make_float4(v[0], v[1], v[2], v[3]);
            if (res || acc) {   // out = res + v (res may be out itself) or out += v
                const float4 p = res ? *(const float4 *)(res + r * ldo + j) : *o;
                w.x = p.x + w.x; w.y = p.y + w.y; w.z = p.z + w.z; w.w = p.w + w.w;
            }
            *o = w;
        } else {
            __nv_bfloat162 b[2] = {__floats2bfloat162_rn(v[0], v[1]), __floats2bfloat162_rn(v[2], v[3])};
            *(uint2 *)((bf16 *)out + r * ldo + j) = *(uint2 *)b;
        }
    }
}

static void dequant(void *out, int out_f32, long ldo, const int32_t *C, long ldc, int M, int N, const float *alpha,
                    const float *row_scale, const float *col_scale, int accumulate, const float *res, cudaStream_t s) {
    if (M <= 0 || N <= 0) return;
    if (N % 4 == 0 && ldc % 4 == 0 && ldo % 4 == 0 && ((uintptr_t)C % 16) == 0 &&
        ((uintptr_t)out % (out_f32 ? 16 : 8)) == 0 && ((uintptr_t)res % 16) == 0) {
        const long total = (long)M * (N / 4);
        k_dequant_vec<<<vgrid(total, 256 * 4), 256, 0, s>>>(out, out_f32, ldo, C, ldc, total, N / 4, alpha, row_scale,
                                                             col_scale, accumulate, res);
        CUDA_LAUNCH_CHECK();
        return;
    }
    dim3 grid(cdiv(N, 1024) < 8 ? cdiv(N, 1024) : 8, M);
    k_dequant_i32<<<grid, 256, 0, s>>>(out, out_f32, ldo, C, ldc, M, N, alpha, row_scale, col_scale, accumulate, res);
    CUDA_LAUNCH_CHECK();
}

extern "C" void halo_cuda_dequant_i32(void *out, int out_f32, long ldo, const int32_t *C, long ldc, int M, int N,
                                      const float *alpha, const float *row_scale, const float *col_scale,
                                      int accumulate, cudaStream_t s) {
    dequant(out, out_f32, ldo, C, ldc, M, N, alpha, row_scale, col_scale, accumulate, NULL, s);
}

extern "C" void halo_cuda_dequant_i32_res(float *out, long ldo, const int32_t *C, long ldc, int M, int N,
                                          const float *alpha, const float *res, cudaStream_t s) {
    dequant(out, 1, ldo, C, ldc, M, N, alpha, NULL, NULL, 0, res, s);
}

// ---------------------------------------------------------------------------------------------------------------
// Column rotation: level 2's H_b (K = 1, P = h->d tokens) over the rows of a [P][cols] matrix in its own layout,
// with no transposes. The butterfly's stages split in two tiled passes: stages h = 1 .. 64 on tiles of 128
// consecutive tokens, then h = 128 .. P / 2 on tiles of P / 128 tokens spaced 128 apart (P <= 128: one pass). A
// block holds one tile of S tokens x 128 columns: a warp reads 128 consecutive columns of one token (16 bytes a
// thread for fp32, 8 for bf16), each thread owns 8 tokens of 4 columns and runs the tile's stages as radix-8 register
// passes (tokens exchanged through shared memory between them, float4 a thread). Every add is the CPU's, in its stage order (h = 1, 2, 4, ..), then the one multiply by
// the plan's scale, so values equal halo_hadamard_cols's bit for bit. The first pass writes unscaled fp32 (`tr_first`,
// in place allowed); the last one reduces (absmax), quantizes or stores (bf16 / fp32, = or +=).

enum { TR_CW = 128, TR_SPLIT = 128 };   // columns a tile (4 a thread), tokens of the first pass's tiles
__host__ __device__ constexpr int tr_log2(int x) { return x <= 1 ? 0 : 1 + tr_log2(x / 2); }
enum { TR_RAW = 0, TR_AMAX = 1, TR_QUANT = 2, TR_OUT = 3 };

struct tr_args {
    const void *in;     // [rows][ld_in] (tokens >= rows read as zeros)
    long ld_in;
    int rows, cols, span;   // span: columns the grid covers (QUANT: cols_pad, zero codes past cols)
    int hlo;                // token stride inside a tile: 1 (first stages) or 128 (last ones)
    float scale;
    void *out;              // RAW: fp32 [P][ldo]; OUT: bf16 / fp32 [rows_out][ldo]; QUANT: codes [P][ldo]
    long ldo;
    int rows_out, out_f32, acc, fmt;
    int vin, vout;          // 4-column vector accesses allowed (alignment and leading dimensions)
    unsigned *amax_bits;    // AMAX: max |v| (atomic on the float bits)
    int *nonfinite;         // AMAX: |= 1 on NaN / Inf (may be NULL)
    const float *amax_q;    // QUANT: the tensor's amax
    uint8_t *qt;            // bf16 input, hlo 1, S >= 8: also the unrotated codes of the input (scale from *amax_t),
    long ldqt;              //   transposed: qt[c][t] for t < rows_qt (zero codes for rows <= t: zeros read)
    int rows_qt;
    const float *amax_t;
    halo_cuda_alpha_job aj; // scale products one thread of the first block forms (run_alpha)
};

template <int R> __device__ __forceinline__ void tr_radix(float *v) {   // stages 1, 2, .. R/2 on v[0..R)
    #pragma unroll
    for (int st = 1; st < R; st *= 2)
        #pragma unroll
        for (int k = 0; k < R; k++)
            if (!(k & st)) { const float x = v[k], y = v[k + st]; v[k] = x + y; v[k + st] = x - y; }
}

// tile token of value k (of V) in register pass `ps`: groups of R tokens at stride d = 8^ps
template <int S, int V> __device__ __forceinline__ int tr_tok(int w, int ps, int k) {
    if (S <= 8) return k;
    int d = 1;
    for (int i = 0; i < ps; i++) d *= 8;
    const int lr = tr_log2(S) - 3 * ps, r = lr >= 3 ? 8 : 1 << lr;   // radix of this pass
    const int gi = w * (8 / r) + k / r, j = k % r;
    return gi % d + gi / d * d * r + j * d;
}

__device__ __forceinline__ float bf_lo(unsigned w) { return __uint_as_float(w << 16); }           // bf16 pair
__device__ __forceinline__ float bf_hi(unsigned w) { return __uint_as_float(w & 0xffff0000u); }   // -> fp32

// 4 consecutive columns of row-major data at element offset i: one 16-byte (fp32) / 8-byte (bf16) access when vec,
// else element by element for the first n (< 4) of them (zeros after).
template <int TIN> __device__ __forceinline__ void tr_ld4(const void *p, long i, int vec, int n, float *v) {
    if (vec) {
        if (TIN == HALO_CUDA_F32) {
            const float4 f = *(const float4 *)((const float *)p + i);
            v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
        } else {
            const uint2 u = *(const uint2 *)((const bf16 *)p + i);
            v[0] = bf_lo(u.x); v[1] = bf_hi(u.x); v[2] = bf_lo(u.y); v[3] = bf_hi(u.y);
        }
    } else {
        #pragma unroll
        for (int j = 0; j < 4; j++) v[j] = j < n ? load1<TIN>(p, i + j) : 0.f;
    }
}

template <int S> struct tr_cfg {
    static constexpr int T = 32 * (S >= 8 ? S / 8 : 1);   // threads: 8 tokens x 4 columns each
    static constexpr int MINB = T >= 1024 ? 1 : 1024 / T;  // <= 64 registers a thread
    static constexpr int SMEM = S > 8 ? S * TR_CW * 4 : S == 8 ? TR_CW * 8 : 0; // bytes: the fp32 tile (S = 8: staged codes)
};

// FULL: every token of the tile < rows (and rows_out, rows_qt), all 128 columns exist, vector accesses allowed: no
// per-element checks. FMT: see quantf.
template <int TIN, int S, int MODE, bool FULL, int FMT>
__device__ __forceinline__ void tokrot_tile(const tr_args &a, long t0, float4 *tr_sm4) {   // t0: tile token 0
    constexpr int V = S < 8 ? S : 8, NP = (tr_log2(S) + 2) / 3;   // tokens per thread, register passes
    const int c = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int col = blockIdx.x * TR_CW + 4 * c;
    const int ncol = a.cols - col;   // how many of this thread's 4 columns exist (>= 4: all)
    float v[4][V];   // v[j][k]: column col + j, tile token tr_tok(.., k)
    #pragma unroll
    for (int k = 0; k < V; k++) {
        const long t = t0 + (long)tr_tok<S, V>(w, 0, k) * a.hlo;
        float x[4] = {0.f, 0.f, 0.f, 0.f};
        if (FULL || (t < a.rows && ncol > 0)) tr_ld4<TIN>(a.in, t * a.ld_in + col, FULL || (a.vin && ncol >= 4), ncol, x);
        #pragma unroll
        for (int j = 0; j < 4; j++) v[j][k] = x[j];
    }
    if (TIN == HALO_CUDA_BF16 && V == 8 && a.qt) {   // block-uniform (it synchronizes)
        // the raw tile's own codes (G's unrotated Q(E_Y)^T): this thread's 8 consecutive tokens of each column are 8
        // bytes of row col + j of qt. Staged in shared memory as [128 columns][S / 8 chunks of 8 tokens] (the chunk
        // index XORed with the row's bits 2.., so that a warp's 32 columns fall in different banks), then stored row
        // by row: whole 32-byte sectors instead of 8 bytes in each of 32 rows per warp store.
        constexpr int CH = S >= 8 ? S / 8 : 1;
        uint2 *stage = (uint2 *)tr_sm4;
        const long tb = t0 + (long)tr_tok<S, V>(w, 0, 0);
        if (FULL || tb < a.rows_qt) {
            const float qs0 = rscale_of(*a.amax_t, qmax_of(a.fmt));
            #pragma unroll
            for (int j = 0; j < 4; j++) {
                if (!FULL && j >= ncol) break;
                unsigned lo = 0, hi = 0;
                #pragma unroll
                for (int k = 0; k < 4; k++) {
                    lo |= (unsigned)quantf<FMT>(v[j][k], qs0, a.fmt) << 8 * k;
                    hi |= (unsigned)quantf<FMT>(v[j][k + 4], qs0, a.fmt) << 8 * k;
                }
                const int r = 4 * c + j;
                stage[r * CH + (w ^ ((r >> 2) & (CH - 1)))] = make_uint2(lo, hi);
            }
        }
        __syncthreads();
        const int col0 = blockIdx.x * TR_CW;
        for (int i = threadIdx.x; i < TR_CW * CH; i += tr_cfg<S>::T) {
            const int r = i / CH, ch = i % CH;
            const long t = t0 + 8 * ch;
            if (FULL || (col0 + r < a.cols && t < a.rows_qt))
                *(uint2 *)(a.qt + (long)(col0 + r) * a.ldqt + t) = stage[r * CH + (ch ^ ((r >> 2) & (CH - 1)))];
        }
        __syncthreads();   // before the passes reuse the shared tile
    }
    #pragma unroll
    for (int ps = 0; ps < NP; ps++) {
        if (ps > 0) {
            __syncthreads();   // the previous pass's stores
            #pragma unroll
            for (int k = 0; k < V; k++) {
                const float4 f = tr_sm4[tr_tok<S, V>(w, ps, k) * (TR_CW / 4) + c];
                v[0][k] = f.x; v[1][k] = f.y; v[2][k] = f.z; v[3][k] = f.w;
            }
        }
        const int lr = tr_log2(S) - 3 * ps;
        #pragma unroll
        for (int j = 0; j < 4; j++) {
            if (lr >= 3) {
                tr_radix<8>(v[j]);
            } else if (lr == 2) {
                #pragma unroll
                for (int q = 0; q < V; q += 4) tr_radix<4>(v[j] + q);
            } else {
                #pragma unroll
                for (int q = 0; q < V; q += 2) tr_radix<2>(v[j] + q);
            }
        }
        if (ps + 1 < NP) {
            #pragma unroll
            for (int k = 0; k < V; k++)
                tr_sm4[tr_tok<S, V>(w, ps, k) * (TR_CW / 4) + c] = make_float4(v[0][k], v[1][k], v[2][k], v[3][k]);
        }
    }
    float mx = 0.f;
    float chk = 0.f;   // AMAX: amax_add
    float qs = 1.f;
    if (MODE == TR_QUANT) qs = rscale_of(*a.amax_q, qmax_of(a.fmt));
    const int nspan = a.span - col;
    #pragma unroll
    for (int k = 0; k < V; k++) {
        const long t = t0 + (long)tr_tok<S, V>(w, NP - 1, k) * a.hlo;
        float x[4];
        #pragma unroll
        // never fused; AMAX: the scale after the maximum (as k_rot_tile)
        for (int j = 0; j < 4; j++) x[j] = MODE == TR_RAW || MODE == TR_AMAX ? v[j][k] : __fmul_rn(v[j][k], a.scale);
        if (MODE == TR_RAW) {
            if (FULL || ncol > 0) {
                float *o = (float *)a.out + t * a.ldo + col;
                if (FULL || (a.vout && ncol >= 4)) *(float4 *)o = make_float4(x[0], x[1], x[2], x[3]);
                else for (int j = 0; j < 4 && j < ncol; j++) o[j] = x[j];
            }
        } else if (MODE == TR_AMAX) {
            #pragma unroll
            for (int j = 0; j < 4; j++) amax_add(mx, chk, x[j]);   // missing columns are 0
        } else if (MODE == TR_QUANT) {
            if (FULL || nspan > 0) {
                unsigned wd = 0;
                #pragma unroll
                for (int j = 0; j < 4; j++) wd |= (unsigned)(FULL || j < ncol ? quantf<FMT>(x[j], qs, a.fmt) : 0) << 8 * j;
                uint8_t *o = (uint8_t *)a.out + t * a.ldo + col;
                if (FULL || (a.vout && nspan >= 4)) *(unsigned *)o = wd;
                else for (int j = 0; j < 4 && j < nspan; j++) o[j] = (uint8_t)(wd >> 8 * j);
            }
        } else if (FULL || (t < a.rows_out && ncol > 0)) {
            if (a.out_f32) {
                float *o = (float *)a.out + t * a.ldo + col;
                if (FULL || (a.vout && ncol >= 4)) {
                    float4 f = make_float4(x[0], x[1], x[2], x[3]);
                    if (a.acc) { const float4 p = *(const float4 *)o; f.x += p.x; f.y += p.y; f.z += p.z; f.w += p.w; }
                    *(float4 *)o = f;
                } else {
                    for (int j = 0; j < 4 && j < ncol; j++) o[j] = a.acc ? o[j] + x[j] : x[j];
                }
            } else {
                bf16 *o = (bf16 *)a.out + t * a.ldo + col;
                if (FULL || (a.vout && ncol >= 4)) {
                    const __nv_bfloat162 lo = __floats2bfloat162_rn(x[0], x[1]), hi = __floats2bfloat162_rn(x[2], x[3]);
                    uint2 u;
                    u.x = *(const unsigned *)&lo;
                    u.y = *(const unsigned *)&hi;
                    *(uint2 *)o = u;
                } else {
                    for (int j = 0; j < 4 && j < ncol; j++) o[j] = __float2bfloat16_rn(x[j]);
                }
            }
        }
    }
    if (MODE == TR_AMAX) {
        mx = __fmul_rn(block_max(mx), a.scale);
        if (a.nonfinite) { if (__syncthreads_or(chk != 0.f) && threadIdx.x == 0) atomicOr(a.nonfinite, 1); }
        if (threadIdx.x == 0) atomicMax(a.amax_bits, __float_as_uint(mx));
    }
}

template <int TIN, int S, int MODE>
__global__ void __launch_bounds__(tr_cfg<S>::T, tr_cfg<S>::MINB) k_tokrot(tr_args a) {
    extern __shared__ float4 tr_sm4[];
    if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) run_alpha(a.aj);
    // global token of tile token 0, and of its last one
    const long t0 = (long)(blockIdx.y % a.hlo) + (long)(blockIdx.y / a.hlo) * a.hlo * S, tmax = t0 + (long)(S - 1) * a.hlo;
    const bool qt = TIN == HALO_CUDA_BF16 && S >= 8 && a.qt;   // the fused unrotated codes (tokrot_tile)
    const bool full = a.vin && (blockIdx.x + 1) * TR_CW <= a.cols && tmax < a.rows && (!qt || tmax < a.rows_qt) &&
                      (MODE == TR_AMAX || a.vout) && (MODE != TR_OUT || tmax < a.rows_out);   // block-uniform
    if (!full) tokrot_tile<TIN, S, MODE, false, -1>(a, t0, tr_sm4);
    else if (MODE == TR_OUT || (MODE != TR_QUANT && !qt)) tokrot_tile<TIN, S, MODE, true, -1>(a, t0, tr_sm4);
    else if (a.fmt == HALO_CUDA_INT8) tokrot_tile<TIN, S, MODE, true, HALO_CUDA_INT8>(a, t0, tr_sm4);
    else tokrot_tile<TIN, S, MODE, true, HALO_CUDA_E4M3>(a, t0, tr_sm4);
}

template <int TIN, int MODE, int S> static void tr_go(tr_args &a, int P, cudaStream_t s) {
    typedef tr_cfg<S> C;
    static int smem_set = 0;   // per instantiation
    if (C::SMEM > 48 * 1024 && !smem_set) {
        CUDA_CHECK(cudaFuncSetAttribute(k_tokrot<TIN, S, MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM));
        smem_set = 1;
    }
    dim3 grid(cdiv(a.span, TR_CW), P / S);
    k_tokrot<TIN, S, MODE><<<grid, C::T, C::SMEM, s>>>(a);
    CUDA_LAUNCH_CHECK();
}

// One pass of S tokens a tile (S = 2 .. 256).
template <int TIN, int MODE> static void tr_launch(tr_args &a, int P, int S, cudaStream_t s) {
    switch (S) {
    case 2: tr_go<TIN, MODE, 2>(a, P, s); break;
    case 4: tr_go<TIN, MODE, 4>(a, P, s); break;
    case 8: tr_go<TIN, MODE, 8>(a, P, s); break;
    case 16: tr_go<TIN, MODE, 16>(a, P, s); break;
    case 32: tr_go<TIN, MODE, 32>(a, P, s); break;
    case 64: tr_go<TIN, MODE, 64>(a, P, s); break;
    case 128: tr_go<TIN, MODE, 128>(a, P, s); break;
    case 256: tr_go<TIN, MODE, 256>(a, P, s); break;
    default: break;
    }
}

// Full H_b or block-diagonal with power-of-two blocks (each block rotated on its own: the tiles below never cross
// one, since a block of more than 128 tokens is a multiple of 128).
extern "C" int halo_cuda_colrot_ok(const halo_cuda_had *h) {
    return h && h->K == 1 && h->P == h->block && h->block >= 2 && h->block <= TR_SPLIT * 256 && h->d % h->block == 0;
}

static int tr_two(const halo_cuda_had *h) { return h->block > TR_SPLIT; }   // two passes (else one)

extern "C" size_t halo_cuda_colrot_scratch(const halo_cuda_had *h, int cols) {
    return tr_two(h) ? sizeof(float) * (size_t)h->d * cols : 0;
}

static tr_args tr_base(const halo_cuda_had *h, const void *in, int in_f32, long ld_in, int rows, int cols) {
    tr_args a;
    memset(&a, 0, sizeof a);
    a.in = in; a.ld_in = ld_in; a.rows = rows < h->d ? rows : h->d; a.cols = cols; a.span = cols;
    a.hlo = 1; a.scale = h->scale;
    a.vin = aligned(in, in_f32 ? 16 : 8) && ld_in % 4 == 0;
    return a;
}
// 4-column stores: out aligned to 4 elements of `bytes` each, ldo a multiple of 4
static int tr_vout(const void *out, int bytes, long ldo) { return aligned(out, 4 * bytes) && ldo % 4 == 0; }

// The first stages (h = 1 .. 64) of a two-pass plan: T [P][cols] fp32, unscaled (T may be `in` when fp32, same ld).
extern "C" int halo_cuda_colrot_tq_ok(const halo_cuda_had *h, const halo_cuda_colrot_tq *tq) {
    return tq && tq->q && aligned(tq->q, 8) && tq->ldq % 8 == 0 && tq->rows % 8 == 0 && (tr_two(h) || h->block >= 8);
}
// The unrotated transposed codes riding along the first kernel that reads E_Y, where tq (may be NULL) allows.
static void tr_set_tq(const halo_cuda_had *h, tr_args &a, const halo_cuda_colrot_tq *tq) {
    if (!halo_cuda_colrot_tq_ok(h, tq)) return;
    a.qt = tq->q; a.ldqt = tq->ldq; a.rows_qt = tq->rows; a.amax_t = tq->amax; a.fmt = tq->fmt;
}

// tq (bf16 input, may be NULL): G's unrotated codes ride along (tr_set_tq).
static void tr_first(const halo_cuda_had *h, const void *in, int in_f32, long ld_in, int rows, int cols, float *T,
                     const halo_cuda_colrot_tq *tq, cudaStream_t s) {
    tr_args a = tr_base(h, in, in_f32, ld_in, rows, cols);
    a.out = T; a.ldo = in == T ? ld_in : cols;
    a.vout = tr_vout(T, 4, a.ldo);
    if (!in_f32) tr_set_tq(h, a, tq);
    if (in_f32) tr_launch<HALO_CUDA_F32, TR_RAW>(a, h->d, TR_SPLIT, s);
    else tr_launch<HALO_CUDA_BF16, TR_RAW>(a, h->d, TR_SPLIT, s);
}

// The last pass's launch on `a` (its mode's fields set): from T after tr_first, else all stages from the input.
template <int MODE> static void tr_last(const halo_cuda_had *h, tr_args &a, int in_f32, cudaStream_t s) {
    if (tr_two(h)) {
        a.hlo = TR_SPLIT;
        tr_launch<HALO_CUDA_F32, MODE>(a, h->d, h->block / TR_SPLIT, s);
    } else if (in_f32) {
        tr_launch<HALO_CUDA_F32, MODE>(a, h->d, h->block, s);
    } else {
        tr_launch<HALO_CUDA_BF16, MODE>(a, h->d, h->block, s);
    }
}

extern "C" void halo_cuda_colrot_first(const halo_cuda_had *h, const halo_bf16 *in, long ld, int rows, int cols,
                                       float *scratch, const halo_cuda_colrot_tq *tq, cudaStream_t s) {
    if (cols > 0 && tr_two(h)) tr_first(h, in, 0, ld, rows, cols, scratch, tq, s);
}

static tr_args tr_last_base(const halo_cuda_had *h, const halo_bf16 *in, long ld, int rows, int cols,
                            const float *scratch) {
    // two passes: read the first pass's fp32 [P][cols] (all P rows); one pass: the bf16 input
    return tr_two(h) ? tr_base(h, scratch, 1, cols, h->d, cols) : tr_base(h, in, 0, ld, rows, cols);
}

extern "C" void halo_cuda_colrot_absmax(const halo_cuda_had *h, const halo_bf16 *in, long ld, int rows, int cols,
                                        const float *scratch, float *amax, int *nonfinite,
                                        const halo_cuda_colrot_tq *tq, const halo_cuda_alpha_job *alpha,
                                        cudaStream_t s) {
    if (cols <= 0) { alpha_alone(alpha_or_none(alpha), s); return; }
    tr_args a = tr_last_base(h, in, ld, rows, cols, scratch);
    a.aj = alpha_or_none(alpha);
    a.amax_bits = (unsigned *)amax; a.nonfinite = nonfinite;
    if (!tr_two(h)) tr_set_tq(h, a, tq);   // one pass: this one reads E_Y
    tr_last<TR_AMAX>(h, a, 0, s);
}

extern "C" void halo_cuda_colrot_quant(const halo_cuda_had *h, const halo_bf16 *in, long ld, int rows, int cols,
                                       const float *scratch, const float *amax, int fmt, uint8_t *q, long ldq,
                                       int cols_pad, const halo_cuda_colrot_tq *tq, const halo_cuda_alpha_job *alpha,
                                       cudaStream_t s) {
    if (cols_pad <= 0) { alpha_alone(alpha_or_none(alpha), s); return; }
    tr_args a = tr_last_base(h, in, ld, rows, cols, scratch);
    a.aj = alpha_or_none(alpha);
    if (!tr_two(h) && tq && tq->fmt == fmt) tr_set_tq(h, a, tq);   // (tr_set_tq sets a.fmt: the same format)
    a.span = cols_pad; a.amax_q = amax; a.fmt = fmt; a.out = q; a.ldo = ldq;
    a.vout = tr_vout(q, 1, ldq);
    tr_last<TR_QUANT>(h, a, 0, s);
}

extern "C" void halo_cuda_colrot_f32(const halo_cuda_had *h, float *in, long ld_in, int cols, void *out, int out_f32,
                                     long ldo, int rows_out, int accumulate, cudaStream_t s) {
    if (cols <= 0 || rows_out <= 0) return;
    if (tr_two(h)) tr_first(h, in, 1, ld_in, h->d, cols, in, NULL, s);   // in place
    tr_args a = tr_base(h, in, 1, ld_in, h->d, cols);
    a.out = out; a.ldo = ldo; a.rows_out = rows_out < h->d ? rows_out : h->d; a.out_f32 = out_f32;
    a.vout = tr_vout(out, out_f32 ? 4 : 2, ldo);
    a.acc = accumulate && out_f32;
    tr_last<TR_OUT>(h, a, 1, s);
}
