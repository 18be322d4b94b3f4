// Software 8-bit quantizers for HALO: INT8 symmetric and OCP FP8 (E4M3, E5M2) bit-exact encode/decode, scale
// grids (per tensor, per row, 1x128 and 128x128 blocks), nearest-even or counter-based stochastic rounding, and
// the scaled 8-bit matrix product C = A B^T (int8 x int8 -> int32 kernel; FP8 decoded to fp32 + sgemm).
#ifndef HALO_QUANT_H
#define HALO_QUANT_H
#include <stddef.h>
#include <stdint.h>

typedef enum { HALO_Q_INT8 = 0, HALO_Q_E4M3, HALO_Q_E5M2, HALO_Q_IDENTITY } halo_qformat;
typedef enum { HALO_GRAN_TENSOR = 0, HALO_GRAN_ROW, HALO_GRAN_BLOCK1x128, HALO_GRAN_BLOCK128 } halo_granularity;
typedef enum { HALO_ROUND_NEAREST = 0, HALO_ROUND_STOCHASTIC } halo_rounding;

// ---- FP8 (OCP 8-bit floating point, v1.0) -------------------------------------------------------------------
// E4M3: bias 7, max 448, no infinities, NaN = S.1111.111. E5M2: bias 15, max 57344, inf = S.11111.00, NaN =
// S.11111.{01,10,11}. Encoding rounds to nearest, ties to even. saturate = 1: out-of-range finite values and
// +-inf map to +-max finite; saturate = 0: E4M3 overflow -> NaN, E5M2 overflow -> +-inf (IEEE behaviour).
// Any NaN input encodes to the canonical NaN sign|0x7F (both formats), keeping the sign bit.
uint8_t halo_fp8_encode(float x, halo_qformat fmt, int saturate);
// Stochastic rounding: rounds |x| down or up to a neighbour with probability proportional to the distance;
// u is uniform in [0,1). Always saturating.
uint8_t halo_fp8_encode_sr(float x, halo_qformat fmt, double u);
float halo_fp8_decode(uint8_t code, halo_qformat fmt);
// Largest finite magnitude (448, 57344), 127 for INT8, 1 for IDENTITY.
float halo_qformat_max(halo_qformat fmt);
const char *halo_qformat_name(halo_qformat fmt);

// ---- counter-based random numbers (reproducible, parallel-safe) ------------------------------------------------
uint64_t halo_rng_hash(uint64_t seed, uint64_t counter, uint64_t index);
double quant_rng_uniform(uint64_t seed, uint64_t counter, uint64_t index); // [0,1), 53 bits

// ---- quantized matrices ------------------------------------------------------------------------------------------
// A rows x cols matrix M ~= dequant(q) with one scale per (gr x gc) group. Grow-only buffers; zero-init then use.
typedef struct halo_qmat {
    halo_qformat fmt;
    int rows, cols;        // logical shape R x C (row-major codes)
    int gr, gc;            // scale group extent along rows / along cols
    int srows, scols;      // scale grid: ceil(R/gr) x ceil(C/gc)
    uint8_t *q;            // [R][C] codes: int8 two's complement (INT8) or FP8 bit patterns; unused for IDENTITY
    float *f;              // [R][C] values, IDENTITY only (the quantizer replaced by the identity, for tests)
    float *s;              // [srows][scols] fp32 scales: M[i][k] ~= decode(q[i][k]) * s[i/gr][k/gc]
    size_t cap_q, cap_f, cap_s;
} halo_qmat;

typedef struct halo_qspec {
    halo_qformat fmt;
    halo_granularity gran;
    int block;             // block size for the block granularities (multiple of 4; default 128 when 0)
    halo_rounding rnd;
    uint64_t seed, counter; // stochastic rounding stream: u = hash(seed, counter, source element index)
    // Delayed scaling (per tensor only): amax_scale > 0 scales by this absmax instead of the tensor's own (values
    // beyond it saturate); amax_seen (may be NULL) receives the tensor's own absmax.
    float amax_scale;
    float *amax_seen;
} halo_qspec;

// Quantizes M = trans ? src^T : src, where src is [sr][sc] with leading dimension ld. With trans the random
// stream is keyed on the source element index, so quantizing a tensor and its transpose gives the same codes.
// A zero group gets scale 1 and codes 0. NaN/Inf in src: HALO_ERR with a message "<what>: non-finite ...".
// Nearest rounding encodes x * r with r = 1.0f / s (fp32, once per group; the GPU kernels compute the same), not
// x / s: codes differ from the quotient's only where x / s lies within an ulp of a rounding boundary.
int halo_quantize(halo_qmat *out, const float *src, int sr, int sc, long ld, int trans, const halo_qspec *qs,
                  const char *what);
// The scale grid halo_quantize gives an R x C matrix under qs: groups of gr rows x gc columns (clamped to the
// matrix), srows x scols of them; one scale each, row-major.
typedef struct { int gr, gc, srows, scols; } halo_qgrid;
halo_qgrid halo_qgrid_of(const halo_qspec *qs, int R, int C);

// ---- a row range with the whole matrix's scales (rows split across ranks) --------------------------------------
// A rank holding rows [lo, hi) of an R x C matrix M (src points at row lo, leading dimension ld) gets rows [lo, hi)
// of halo_quantize(M) bit for bit, for every granularity and any lo, hi (a 128x128 block cut by a rank boundary
// included), in three steps:
//   1. halo_absmax_rows: its part of the absmax grid ([srows][scols] of halo_qgrid_of(qs, R, C));
//   2. the elementwise max of every rank's grid (an allreduce MAX; max is exact, so the order does not matter);
//   3. halo_quantize_rows with that grid: every scale of M, and the codes of rows [lo, hi).
// Per-row and 1xB groups lie within one row, so there a group's absmax is its owner's alone (gathering the grid's
// rows instead of reducing it gives the same). Not for trans: the rows are rows of M itself.

// amax[srows][scols] = max |M| over the part of each scale group in rows [lo, hi); 0 for groups with no row there.
// NaN/Inf: HALO_ERR with halo_quantize's message (the element's position in the whole R x C matrix).
int halo_absmax_rows(float *amax, const float *src, long ld, int lo, int hi, int R, int C, const halo_qspec *qs,
                     const char *what);
// Shapes out as halo_quantize does an R x C matrix, sets every scale from amax (the grid reduced over all rows) and
// writes the codes (values for IDENTITY) of rows [lo, hi) at their place in out->q; other rows are left as they
// are (a gather fills them). HALO_ERR for NaN/Inf in the rows and for an amax below the rows' own absmax (a grid
// not reduced over every rank).
int halo_quantize_rows(halo_qmat *out, const float *src, long ld, int lo, int hi, int R, int C, const halo_qspec *qs,
                       const float *amax, const char *what);
// dst = src (shape, scales and codes / values).
void halo_qmat_copy(halo_qmat *dst, const halo_qmat *src);
// dst [R][C] = dequantized values.
void halo_dequantize(const halo_qmat *m, float *dst);
// out = in^T (codes, values and scale grid transposed; exact).
void halo_qmat_transpose(const halo_qmat *in, halo_qmat *out);
void halo_qmat_free(halo_qmat *m);

// C[i][j] (=, or += when accumulate) sum_k A[i][k] B[j][k] with the scales applied per k-chunk (so block scales
// along k are exact); A is [Ra][Kd], B is [Rb][Kd], C is [Ra][ldc]. INT8: int8 x int8 -> int32 per chunk, then
// fp32. FP8/IDENTITY: operands dequantized to fp32 and multiplied with sgemm. Formats of A and B may differ
// (E5M2 gradient x E4M3 weight); INT8 must pair with INT8.
int halo_qgemm(const halo_qmat *A, const halo_qmat *B, float *C, long ldc, int accumulate);
// Raw kernel: C32[M][N] = A[M][K] B[N][K]^T over int8 with int32 accumulation (|K| <= 65536). For tests/bench.
void halo_gemm_s8s8s32(const int8_t *A, const int8_t *B, int32_t *C, int M, int N, int K);
// Which int8 kernel was compiled in ("avx512-vnni" or "generic").
const char *halo_gemm_s8_kernel(void);

// bf16 round-to-nearest-even of a float (kept as float), for the BF16 passthrough mode.
float halo_round_bf16(float x);

#endif
