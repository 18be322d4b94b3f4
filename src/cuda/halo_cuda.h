// HALO on the GPU (issue 6): Hadamard rotations, absmax and INT8 / FP8 E4M3 quantizers, 8-bit cuBLASLt products and
// the HALO linear layer (levels 0, 1, 2) on device pointers, mirroring src/halo/{hadamard,quant,halo_linear}.c so
// that rotations and codes agree bit for bit with the CPU. Scales never leave the device.
#ifndef HALO_CUDA_HALO_H
#define HALO_CUDA_HALO_H
#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "cuda/cuda_backend.h"
#include "halo/halo_linear.h"

// ---- Hadamard plan on the device (halo_hadamard_kernels.cu) ----
// H_d = blockdiag(H_K (x) H_P) / sqrt(block), as halo_hadamard_plan builds it; the order-K base matrix is the CPU's.
typedef struct halo_cuda_had {
    int d, block, K, P;   // rotated length, diagonal block (== d for the full transform), block = K * P
    float scale;          // 1 / sqrt(block), the CPU plan's float
    float *dHf;           // device [K][K] H_K as float (NULL when K == 1)
    float *dHtf;          // device [K][K] H_K^T
    unsigned *dSgn;       // device [K][KW] sign bits of H_K (bit c of row i set where the entry is -1), NULL
    unsigned *dSgnT;      //   when an entry is not +-1; KW = (K + 31) / 32. dSgnT: the same for H_K^T
    int ck;               // 1 when the fast row kernel's compiled sign table is H_K (K = 12, 20, 28)
} halo_cuda_had;

// Like halo_hadamard_plan (HALO_ERR with its message). Blocks longer than 32768 are refused (shared memory).
int halo_cuda_had_plan(halo_cuda_had *h, int d, int block);
// Like halo_hadamard_plan_fallback (full transform, else the largest supported block dividing d).
int halo_cuda_had_plan_fallback(halo_cuda_had *h, int d, char *note, size_t note_cap);
void halo_cuda_had_free(halo_cuda_had *h);
// 1 when rows rotated by h (K > 1) take the generic row kernel's order-K mix, whose signs come from shared memory:
// several times the fast kernel's instructions per value (README, "The variants' shapes").
int halo_cuda_had_generic_mix(const halo_cuda_had *h);

enum { HALO_CUDA_BF16 = 0, HALO_CUDA_F32 = 1, HALO_CUDA_I32 = 2 };   // element types of kernel inputs
enum { HALO_CUDA_INT8 = 0, HALO_CUDA_E4M3 = 1 };                    // 8-bit formats
// Scale products that a quantization kernel computes on the side (one thread of its first block) instead of separate
// launches: *out[i] = scale(*a[i]) * scale(*b[i]) for each out[i] != NULL, as halo_cuda_alpha (fmt: HALO_CUDA_INT8 /
// E4M3). The amax values must be final when the kernel runs (stream order).
enum { HALO_CUDA_ALPHA_JOBS = 4 };
typedef struct halo_cuda_alpha_job {
    float *out[HALO_CUDA_ALPHA_JOBS];
    const float *a[HALO_CUDA_ALPHA_JOBS], *b[HALO_CUDA_ALPHA_JOBS];
    int fmt;
} halo_cuda_alpha_job;

// Along rows of in[rows][ld_in] (type in_type), the first h->d entries of each row:
// out[r, :] (=, or += when accumulate and out is fp32) = (in[r, :] * *in_scale) H (transpose = 0) or H^T (1).
// in_scale (device, may be NULL) dequantizes an int32 product first. out may equal in (same type, same ld).
void halo_cuda_had_rows(const halo_cuda_had *h, int transpose, const void *in, int in_type, long ld_in,
                        const float *in_scale, void *out, int out_f32, long ld_out, int accumulate, int rows,
                        cudaStream_t s);
// 0: the rotated row kernels above take the generic one-row-per-block path only (tests compare both); 1: default,
// the fast path (halo_kernels.cu, k_rot) where the shape allows.
void halo_cuda_rows_fast(int on);
// The small-block rotation kernels (blocks of 8..256): 0 = 8 values a lane only, 1 = 32 values a lane where the rows
// allow, 2 (default; HALO_CUDA_ROT_TILE=0 makes it 1) = bf16 absmax / quantize passes by tiles of 32 x 256 through
// shared memory (k_rot_tile). Tests compare all three.
void halo_cuda_rows_small_form(int form);
// The generic rotated-row kernel's most threads per block (64..1024, default 512; benchmarks compare).
void halo_cuda_rows_threads(int n);
// max |v| over v = rows of in (rotated by h when h != NULL, else the first d entries): *amax = max(*amax, ...)
// (atomic on the float bits; zero it first), amax_row[rows] likewise per row when not NULL; *nonfinite |= 1 when a
// NaN/Inf is seen (may be NULL).
void halo_cuda_absmax_rows(const halo_cuda_had *h, int transpose, const void *in, int in_type, long ld_in, int rows,
                           int d, float *amax, float *amax_row, int *nonfinite, cudaStream_t s);
// q[r][k] = Q(v[r][k] * (1 / s)) with v as in absmax_rows and s = scale(amax_row[r]) when amax_row != NULL, else
// scale(*amax); scale(a) = a / qmax (1 when a == 0, at least FLT_MIN); 1 / s one fp32 division, as halo_quantize's
// nearest rounding (every quantizer here multiplies by it). INT8: round half even, clamp +-127.
// E4M3: __nv_cvt_float_to_fp8(.., __NV_SATFINITE, __NV_E4M3) (RNE, saturating).
void halo_cuda_quant_rows(const halo_cuda_had *h, int transpose, const void *in, int in_type, long ld_in, int rows,
                          int d, const float *amax, const float *amax_row, int fmt, uint8_t *q, long ldq,
                          cudaStream_t s);
// halo_cuda_quant_rows, then the scale products of alpha (may be NULL) by the same kernel.
void halo_cuda_quant_rows_alpha(const halo_cuda_had *h, int transpose, const void *in, int in_type, long ld_in,
                                int rows, int d, const float *amax, const float *amax_row, int fmt, uint8_t *q,
                                long ldq, const halo_cuda_alpha_job *alpha, cudaStream_t s);
// One rotation for both passes of a rotated quantization: out[r][k] = (in[r, :] H)[k] as fp32 (the values absmax_rows
// and quant_rows compute, bit for bit) and *amax = max(*amax, max |out|) (atomic; *nonfinite |= 1 on NaN/Inf), so that
// the codes come from the unrotated quant_rows on out. k_rot or k_rot_small (block-diagonal H with power-of-two blocks
// of 8..256; out 16-byte aligned with ld_out a multiple of 4) where they take the shape, else the generic row kernel;
// halo_cuda_rot_amax_ok is 0 only for those other shapes under HALO_CUDA_ROT_ONCE_ROWS=0 (then nothing is launched).
int halo_cuda_rot_amax_ok(const halo_cuda_had *h, const void *in, long ld_in, int rows);
void halo_cuda_rot_amax(const halo_cuda_had *h, const halo_bf16 *in, long ld_in, int rows, float *out, long ld_out,
                        float *amax, int *nonfinite, cudaStream_t s);
// Rotated (blocks of 16..256) per-tensor quantization of bf16 rows into both layouts in one pass: q [rows][ldq] and
// qt [d][ldqt] (rows_pad columns, zero codes past rows), the codes of halo_cuda_quant_rows + an 8-bit transpose.
// Launch only where halo_cuda_rot_quant_both_ok.
int halo_cuda_rot_quant_both_ok(const halo_cuda_had *h, const halo_bf16 *in, long ld_in, int rows, int d,
                                const uint8_t *q, long ldq, const uint8_t *qt, long ldqt, int rows_pad);
void halo_cuda_rot_quant_both(const halo_cuda_had *h, const halo_bf16 *in, long ld_in, int rows, int d,
                              const float *amax, int fmt, uint8_t *q, long ldq, uint8_t *qt, long ldqt, int rows_pad,
                              const halo_cuda_alpha_job *alpha, cudaStream_t s);
// Level 2's token rotations in the matrices' own layout (no transposes), h: H_b over h->d >= rows tokens, the rows
// past `rows` zeros; values bit-identical to halo_hadamard_cols (and to the row kernels on the transpose). Two tiled
// passes when h->block > 128 (stages h = 1..64, then the rest), else one. halo_cuda_colrot_ok: h is a K = 1 plan
// (full, or block-diagonal with blocks of a power of two) with 2 <= block <= 32768 (else transpose and use the row
// kernels).
int halo_cuda_colrot_ok(const halo_cuda_had *h);
// E_Y [rows][ld] bf16: the first pass into scratch (fp32 [h->d][cols], halo_cuda_colrot_scratch bytes, 0 for one
// pass), then the last stages read it twice: *amax = max(*amax, max |v|) (atomic on the float bits; zero it first;
// *nonfinite |= 1 on NaN/Inf, may be NULL), then q[t][c] = Q(v[t][c] * (1 / scale(*amax))) for t < h->d, c < cols, as
// quant_rows, zero codes for cols <= c < cols_pad.
// tq (may be NULL): the first of these kernels that reads E_Y (colrot_first with two passes, else colrot_absmax) also
// writes E_Y's unrotated codes transposed, q[c][t] = Q(E_Y[t][c] * (1 / scale(*amax))) for t < rows (a multiple of 8;
// zero codes for tokens past the input's rows), as halo_cuda_quant_tile's qt: G's operand, without its own read of
// E_Y. Taken when halo_cuda_colrot_tq_ok (8-byte aligned q, ldq % 8 == 0, blocks of >= 8 tokens), else the caller
// quantizes separately. alpha (may be NULL): scale products that colrot_absmax / colrot_quant form on the side.
typedef struct halo_cuda_colrot_tq {
    uint8_t *q;
    long ldq;
    int rows, fmt;
    const float *amax;
} halo_cuda_colrot_tq;
int halo_cuda_colrot_tq_ok(const halo_cuda_had *h, const halo_cuda_colrot_tq *tq);
size_t halo_cuda_colrot_scratch(const halo_cuda_had *h, int cols);
void halo_cuda_colrot_first(const halo_cuda_had *h, const halo_bf16 *in, long ld, int rows, int cols, float *scratch,
                            const halo_cuda_colrot_tq *tq, cudaStream_t s);
void halo_cuda_colrot_absmax(const halo_cuda_had *h, const halo_bf16 *in, long ld, int rows, int cols,
                             const float *scratch, float *amax, int *nonfinite, const halo_cuda_colrot_tq *tq,
                             const halo_cuda_alpha_job *alpha, cudaStream_t s);
// tq (may be NULL): G's unrotated codes ride along here instead (one pass only: the producer took the rotated amax).
void halo_cuda_colrot_quant(const halo_cuda_had *h, const halo_bf16 *in, long ld, int rows, int cols,
                            const float *scratch, const float *amax, int fmt, uint8_t *q, long ldq, int cols_pad,
                            const halo_cuda_colrot_tq *tq, const halo_cuda_alpha_job *alpha, cudaStream_t s);
// Level 2's E_X = H_b R on the fp32 product R [h->d][ld_in] (all h->d token rows), in R's layout: out[t][c] =
// (H_b R)[t][c] for t < rows_out, c < cols, bf16 (RNE) or fp32 (out_f32; += when accumulate), the values of
// transpose -> halo_cuda_had_rows(h, 1, ..) -> transpose bit for bit. R is overwritten (the first pass runs in place).
void halo_cuda_colrot_f32(const halo_cuda_had *h, float *in, long ld_in, int cols, void *out, int out_f32, long ldo,
                          int rows_out, int accumulate, cudaStream_t s);
// Unrotated per-tensor quantization of in[rows][cols] reading it once and writing the codes row-major q[rows][ldq]
// and/or transposed qt[cols][ldqt] (either may be NULL); qt's columns rows..rows_pad-1 are zero codes.
void halo_cuda_quant_tile(const void *in, int in_type, long ld_in, int rows, int cols, const float *amax, int fmt,
                          uint8_t *q, long ldq, uint8_t *qt, long ldqt, int rows_pad, cudaStream_t s);
// halo_cuda_quant_tile, then the scale products of alpha (may be NULL).
void halo_cuda_quant_tile_alpha(const void *in, int in_type, long ld_in, int rows, int cols, const float *amax, int fmt,
                                uint8_t *q, long ldq, uint8_t *qt, long ldqt, int rows_pad,
                                const halo_cuda_alpha_job *alpha, cudaStream_t s);
// out[c][r] = in[r][c] for c < cols, r < rows; zeros for rows <= r < rows_pad. Types: (u8 -> u8), (bf16 -> bf16),
// (f32 -> f32), (f32 -> bf16): in_type/out_type are HALO_CUDA_* with 3 meaning uint8.
enum { HALO_CUDA_U8 = 3 };
void halo_cuda_transpose(const void *in, int in_type, long ld_in, int rows, int cols, void *out, int out_type,
                         long ld_out, int rows_pad, cudaStream_t s);
// *alpha = scale(*amax_a) * scale(*amax_b) (the product's dequantization factor, on the device).
void halo_cuda_alpha(float *alpha, const float *amax_a, const float *amax_b, int fmt, cudaStream_t s);
// out[i][j] (=, or += when accumulate and out is fp32) = (float)C[i][j] * *alpha (* row_scale[i]) (* col_scale[j]).
void halo_cuda_dequant_i32(void *out, int out_f32, long ldo, const int32_t *C, long ldc, int M, int N,
                           const float *alpha, const float *row_scale, const float *col_scale, int accumulate,
                           cudaStream_t s);
// out[i][j] = res[i][j] + (float)C[i][j] * *alpha (fp32; res [M][ldo], may be out): a residual add in the same pass.
void halo_cuda_dequant_i32_res(float *out, long ldo, const int32_t *C, long ldc, int M, int N, const float *alpha,
                               const float *res, cudaStream_t s);

// ---- 8-bit products through cuBLASLt (halo_gemm.cu). Row-major, both operands K-major ("TN"):
// D[M][N] = A[M][K] B[N][K]^T. lda/ldb/ldd in elements; FP8 needs 16-byte multiples for lda/ldb.
// FP8 E4M3: fp32 accumulation, D = *alpha * A B^T (+ D when accumulate; D must be fp32 then), alpha a device
// pointer (CUBLASLT_POINTER_MODE_DEVICE), D bf16 or fp32. HALO_FP8_FAST_ACCUM=1 turns on cuBLASLt's fast accumulation.
int halo_cuda_gemm_fp8(void *D, int d_f32, long ldd, const uint8_t *A, long lda, const uint8_t *B, long ldb, int M,
                       int N, int K, const float *alpha, int accumulate, cudaStream_t s);
// The same into fp32 D with a separate addend: D = *alpha * A B^T + C (C [M][ldd] fp32, may be D).
int halo_cuda_gemm_fp8_res(float *D, long ldd, const float *C, const uint8_t *A, long lda, const uint8_t *B, long ldb,
                           int M, int N, int K, const float *alpha, cudaStream_t s);
// INT8: int32 accumulation, D int32 (CUBLAS_COMPUTE_32I); dequantize with halo_cuda_dequant_i32 or had_rows.
int halo_cuda_gemm_s8(int32_t *D, long ldd, const int8_t *A, long lda, const int8_t *B, long ldb, int M, int N, int K,
                      cudaStream_t s);
void halo_cuda_gemm_shutdown(void);
// INT8 with the dequantization in the product's epilogue (int8_gemm.cu: own wgmma kernel, Hopper 9.0 only):
// D[Mo][No] (fp32: =, += when accumulate, or = res + with res [Mo][ldd] fp32, may be D; bf16: = or = res + with res
// [Mo][ldd] fp32, the fp32 sum rounded once) = *alpha * A B^T for the first Mo rows, No columns of the M x N product;
// values equal halo_cuda_gemm_s8 + halo_cuda_dequant_i32 (+ the rounding of the fp32 form) bit for bit.
// halo_cuda_gemm_s8_dq_ok: whether it takes the call (M >= 128, N >= 256, K >= 16; lda, ldb multiples of 16 and
// 16-byte aligned operands; No, ldd even; on by default, off by halo_cuda_gemm_s8_own(0) or HALO_INT8_OWN_GEMM=0).
int halo_cuda_gemm_s8_dq_ok(const void *D, int d_f32, long ldd, const float *res, const int8_t *A, long lda,
                            const int8_t *B, long ldb, int M, int N, int K, int Mo, int No);
// rot (may be NULL): each output row is then rotated by rot's block-diagonal H_B before the store (D = (alpha A B^T)
// H_B, B = rot->block, += / res + after the rotation), the values of halo_cuda_gemm_s8 + halo_cuda_had_rows(rot, 1,
// int32, alpha) bit for bit; halo_cuda_gemm_s8_dq_rot_ok: rot is a K = 1 plan over the No columns with blocks of a
// power of two from 2 to 256 (a tile's 256 columns hold whole blocks).
int halo_cuda_gemm_s8_dq_rot_ok(const halo_cuda_had *rot, int No);
int halo_cuda_gemm_s8_dq(void *D, int d_f32, long ldd, const float *res, int accumulate, const int8_t *A, long lda,
                         const int8_t *B, long ldb, int M, int N, int K, int Mo, int No, const float *alpha,
                         const halo_cuda_had *rot, cudaStream_t s);
// The same with tok (may be NULL) too: after rot, the columns (over the rows of D: tokens) rotated by tok's
// block-diagonal H_T, T = tok->block, a power of two from 2 to 64 (halo_cuda_gemm_s8_dq_tok_ok; a warpgroup's 64 rows
// hold whole blocks), M a multiple of T: the values of rot's product into fp32 + halo_cuda_colrot_f32(tok) bit for bit.
int halo_cuda_gemm_s8_dq_tok_ok(const halo_cuda_had *tok);
int halo_cuda_gemm_s8_dq_tok(void *D, int d_f32, long ldd, const float *res, int accumulate, const int8_t *A, long lda,
                             const int8_t *B, long ldb, int M, int N, int K, int Mo, int No, const float *alpha,
                             const halo_cuda_had *rot, const halo_cuda_had *tok, cudaStream_t s);
// The same (no rotations) with a LoRA adapter's U B^T added before the store, in fp32 (U [Mo][r] and B [No][r] bf16,
// U 4-byte and B 16-byte aligned; r 8, 16 or 32: halo_cuda_gemm_s8_dq_lora_ok): D = *alpha A B^T + U B^T (fp32: =, += or res + that).
int halo_cuda_gemm_s8_dq_lora_ok(const halo_bf16 *U, const halo_bf16 *Bl, int r);
int halo_cuda_gemm_s8_dq_lora(void *D, int d_f32, long ldd, const float *res, int accumulate, const int8_t *A, long lda,
                              const int8_t *B, long ldb, int M, int N, int K, int Mo, int No, const float *alpha,
                              const halo_bf16 *U, const halo_bf16 *Bl, int r, cudaStream_t s);
// The fp32 form (=, or += with accumulate; rot may be NULL) adding the sum of squares of the values it writes into
// *sumsq (device double): a weight gradient's share of the gradient norm without a pass over it. Float sums a
// thread, one double atomic a warp.
int halo_cuda_gemm_s8_dq_sumsq(float *D, long ldd, int accumulate, const int8_t *A, long lda, const int8_t *B, long ldb,
                               int M, int N, int K, int Mo, int No, const float *alpha, const halo_cuda_had *rot,
                               double *sumsq, cudaStream_t s);
// The bf16 form (=; rot may be NULL) where D is down_proj's input gradient [Mo][F]: the SwiGLU backward's max
// |dgate| and |dup| (cuda_swiglu_backward_amax's values bit for bit, from D as stored and gate / up in gu [Mo][ldgu],
// gate's columns then up's at F) go into *amax_g / *amax_u (atomic max on the float bits: zero them first) and their
// NaN / Inf flags into *nf_g / *nf_u (may be NULL), so that gate's and up's E_Y scales need no pass of their own.
// halo_cuda_gemm_s8_dq_swiglu_ok: F == No, a multiple of 8, D's and gu's rows 16-byte aligned.
typedef struct halo_cuda_swiglu_amax {
    const halo_bf16 *gu;
    long ldgu;
    int F;
    float *amax_g, *amax_u;
    int *nf_g, *nf_u;
} halo_cuda_swiglu_amax;
int halo_cuda_gemm_s8_dq_swiglu_ok(const halo_bf16 *D, long ldd, int No, const halo_cuda_swiglu_amax *sw);
int halo_cuda_gemm_s8_dq_swiglu(halo_bf16 *D, long ldd, const int8_t *A, long lda, const int8_t *B, long ldb, int M,
                                int N, int K, int Mo, int No, const float *alpha, const halo_cuda_had *rot,
                                const halo_cuda_swiglu_amax *sw, cudaStream_t s);
// A group of INT8 products into one fp32 D [Mo][No] (ldd): D = (accumulate ? D : 0) + sum over the segments of
// *alpha_s A_s B_s^T (each rotated by rot first, when given), each A_s [M][K_s] and B_s [N][K_s] with its own K and
// scale, in one launch of the own kernel: each tile's segments one after the other, segment s adding into what s - 1
// wrote moments before (still in L2), so that the values equal nseg sequential halo_cuda_gemm_s8_dq calls (the first
// with accumulate, the rest adding) bit for bit. Up to 4 segments. halo_cuda_gemm_s8_dq_group_ok: whether it takes
// them (each as halo_cuda_gemm_s8_dq_ok, the sum of K as halo_cuda_gemm_s8_dq_suits; on by default, off by
// halo_cuda_gemm_s8_dq_group_on(0) or HALO_INT8_GROUP=0).
typedef struct halo_cuda_s8_seg {
    const int8_t *A, *B;
    long lda, ldb;
    int K;
    const float *alpha;
} halo_cuda_s8_seg;
int halo_cuda_gemm_s8_dq_group_ok(const float *D, long ldd, const halo_cuda_s8_seg *seg, int nseg, int M, int N,
                                  int Mo, int No);
int halo_cuda_gemm_s8_dq_group(float *D, long ldd, int accumulate, const halo_cuda_s8_seg *seg, int nseg, int M, int N,
                               int Mo, int No, const halo_cuda_had *rot, cudaStream_t s);
void halo_cuda_gemm_s8_dq_group_on(int on);
int halo_cuda_gemm_s8_dq_grouping(void);   // the setting (bench JSON)
// Products stacked by rows into one fp32 D (the weight gradients of q, k and v: one [n_q + n_k + n_v][m] buffer): rows
// start[s] .. of D = (accumulate ? D : 0) + *alpha_s A_s B_s^T (rotated by rot first, when given), A_s [rows[s]][K_s],
// B_s [N][K_s], in one launch of the own kernel (each tile belongs to one product): the values of nseg
// halo_cuda_gemm_s8_dq calls bit for bit. Every rows[s] but the last a multiple of 128; up to 4 products.
// halo_cuda_gemm_s8_dq_stack_ok: whether it takes them (each as halo_cuda_gemm_s8_dq_ok).
int halo_cuda_gemm_s8_dq_stack_ok(const float *D, long ldd, const halo_cuda_s8_seg *seg, const int *rows, int nseg,
                                  int N, int No);
int halo_cuda_gemm_s8_dq_stack(float *D, long ldd, int accumulate, const halo_cuda_s8_seg *seg, const int *rows,
                               int nseg, int N, int No, const halo_cuda_had *rot, cudaStream_t s);
// Whether an M x N product alone fills fewer than two waves of the own kernel's tiles (stacking it with its group's
// others pays; the groups whose products all fill more gain nothing or lose, so the layers leave them one by one).
int halo_cuda_gemm_s8_dq_small(int M, int N);
// Stacked by columns instead (the forward products of q, k and v into their columns of one Y [M][ldd], bf16 or fp32):
// columns start[s] .. of D = *alpha_s A_s B_s^T, B_s [cols[s]][K_s] (each but the last a multiple of 256), D's first
// No <= sum(cols) columns written (the last product's padding rows of B cut). The values of nseg calls bit for bit;
// one launch. _ok: whether it takes them.
int halo_cuda_gemm_s8_dq_stack_cols_ok(const void *D, int d_f32, long ldd, const halo_cuda_s8_seg *seg, const int *cols,
                                       int nseg, int M, int Mo, int No);
int halo_cuda_gemm_s8_dq_stack_cols(void *D, int d_f32, long ldd, const halo_cuda_s8_seg *seg, const int *cols,
                                    int nseg, int M, int Mo, int No, cudaStream_t s);
// halo_cuda_gemm_s8_dq_suits: 0 when cuBLASLt's int32 product (in smaller tiles) + the dequantize pass is the
// faster choice: fewer 128 x 256 tiles than half the SMs over K >= 4096 (on by default; off, the own kernel takes every
// shape it can, by halo_cuda_gemm_s8_few_tiles_lt(0) or HALO_INT8_FEW_TILES_LT=0). The values are the same bits.
int halo_cuda_gemm_s8_dq_suits(int M, int N, int K);
void halo_cuda_gemm_s8_few_tiles_lt(int on);
int halo_cuda_gemm_s8_few_tiles_lt_on(void);   // the setting (bench JSON)
void halo_cuda_gemm_s8_own(int on);
int halo_cuda_gemm_s8_owning(void);   // 1 when the own kernel is on and this device runs it
// 1 (default): each new INT8 product shape (FP8: with K <= 1024) takes the fastest of cuBLASLt's first 8 algorithms
// if it beats the first by 15%, timed once on its operands
// (one stream synchronization per shape); 0 (or HALO_GEMM_TUNE=0): cuBLASLt's first choice. Set before the first product.
// HALO_GEMM_TUNE=2 times FP8 at every K too (only to study that rule: README, HALO on the GPU).
void halo_cuda_gemm_tune(int on);
int halo_cuda_gemm_tuning(void);   // the setting in force (the setter's, else the environment's)

// ---- the HALO linear layer on the GPU (halo_linear_cuda.cu) ----
// Same products, rotations and quantizers as halo_linear.c with per-tensor scales and nearest rounding (its default
// configuration): INT8 or FP8 E4M3, level 0, 1 or 2, H_m full (or the CPU's block-diagonal fallback, or the blocks of
// halo_cuda_linear_hm_block), H_b over the token count zero-padded to halo_hadamard_pad_size(b, 172). Saved from
// forward to backward: Q(X H_m) [b][mp] and Q(W H_m) [np][mp] with their absmax on the device (mp, np: m, n rounded up
// to 16 with zero codes, so that any m, n work: the 8-bit products need 16-byte leading dimensions and zero codes add
// nothing). Level 0 saves them in the layouts the backward products read, Q(X)^T [mp][b16] and Q(W)^T [mp][np], written
// by the forward's quantizer together with the row-major codes its own product reads (workspace): no transposes in the
// backward.

// Transient scratch of forward/backward, grow-only. Nothing in it lives from a forward to its backward, so layers
// that run one after another on one stream may share one (halo_cuda_linear_share_workspace).
enum { HALO_CUDA_NWS = 20 };   // 8..11, 12..15: a group's E_Y codes (HALO_CUDA_EX_GROUP, HALO_CUDA_G_GROUP); 16..19:
                               // its W codes (HALO_CUDA_Y_GROUP)
typedef struct halo_cuda_ws {
    void *buf[HALO_CUDA_NWS];
    size_t cap[HALO_CUDA_NWS];
    const void *qxt_key;        // slot 6 holds Q(X H_m)^T of these codes (the saved qx pointer) at generation
    unsigned long qxt_gen;      //   qxt_gen: layers sharing X codes (halo_cuda_linear_share_x) transpose them once
    unsigned long xrow_gen;     // level 0: slot 7 holds the row-major X codes of this generation (for sharing layers)
} halo_cuda_ws;
void halo_cuda_ws_free(halo_cuda_ws *w);

// Slots of halo_cuda_linear.dev (NONFIN..NONFIN + 2 hold ints: the non-finite flags of X, W, E_Y).
enum { HALO_DEV_AX = 0, HALO_DEV_AW = 1, HALO_DEV_AE = 2, HALO_DEV_AER = 3, HALO_DEV_ALY = 4, HALO_DEV_ALEX = 5,
       HALO_DEV_ALG = 6, HALO_DEV_AED = 7, HALO_DEV_NONFIN = 8, HALO_DEV_AXD = 11, HALO_DEV_AWC = 12 };
typedef struct halo_cuda_linear {
    int prec;                 // HALO_PREC_INT8 or HALO_PREC_FP8 (halo/halo_linear.h)
    int level;
    char name[160];
    int b, m, n, have_fwd;
    halo_cuda_had hm, hb;     // H_m (levels 1, 2) and H_b (level 2, over hb_pad tokens)
    int hm_d, hb_b, hb_pad;
    int hb_block;             // level 2: 0 = H_b over all (padded) tokens, else block-diagonal blocks of this many
    int hm_block;             // levels 1-2: 0 = H_m over all in_features, else block-diagonal blocks of this many
    uint8_t *qx, *qw;         // saved codes [b][mp], [np][mp] (level 0: [mp][b16], [mp][np])
    size_t cap_qx, cap_qw;
    const struct halo_cuda_linear *xsrc;   // halo_cuda_linear_share_x: the layer whose X codes this one reuses
    const void *x_in;         // the X pointer of the last forward (a sharing layer checks it against its own)
    const uint8_t *qx_use;    // the X codes of the last forward: qx, or xsrc's
    const float *ax_use;      // their amax on the device: dev + 0, or xsrc's
    unsigned long xgen;       // generation of those codes (a new one at every quantization of X)
    float *dev;               // device [16]: 0 amax X, 1 amax W, 2 amax E_Y, 3 amax H_b^T E_Y, 4 alpha Y, 5 alpha
                              // E_X, 6 alpha G, 8..10 (int) non-finite flags of X, W, E_Y; delayed scaling's second
                              // amax slots (the two alternate): 7 E_Y, 11 X; 12: the scale's amax of W's codes
                              // when the optimizer wrote them
    int *nonfin;              // device [3]: where the quantizers flag a NaN / Inf in X, W, E_Y (dev + 8, or the
                              // caller's array: halo_cuda_linear_nonfinite_slots)
    halo_cuda_ws own;         // scratch when no shared one is set
    halo_cuda_ws *shared;     // shared scratch (not owned), or NULL
    const void *w_in;         // the W pointer of the last forward (telemetry's E_X reference)
    struct halo_cuda_tele *tele;   // telemetry state (halo_telemetry.cu), NULL until first switched on
    int tele_on;
    const float *tele_snap, *tele_snap_g;   // telemetry: snapshots of the rows a call adds into
    const halo_bf16 *lora_u, *lora_b;   // halo_cuda_linear_lora_next: an adapter for the next forward's epilogue
    int lora_r, lora_added;
    // delayed scaling (halo_cuda_linear_delayed): 1 + the dev slot holding the last call's amax of X / E_Y (0: none
    // yet), and the codes a producer was told to write for the next forward (xc_*) / backward (ec_*)
    int delayed, x_hist, ey_hist;
    int xc_on, xc_b, xc_use, xc_rec, ec_on, ec_b, ec_rec;
    uint8_t *ec_q, *ec_qt;
    long ec_ldq;
    // W's codes from the optimizer (halo_cuda_linear_w_codes): row-major [wc_n][wc_m] (Q(W)^T goes to qw); the dev
    // slot of the scale's amax of the W codes the last forward used (0: AW); the X amax whose product with W's scale a
    // producer forms as this forward's alpha (halo_cuda_linear_y_alpha, NULL: none)
    uint8_t *qw_rp;
    int wc_m, wc_n, aw_slot;
    const float *aly_ax;
    // HALO_CUDA_EX_GROUP: the place in the group (halo_cuda_linear_ex_group_ok) and the E_X product the backward
    // recorded for halo_cuda_linear_ex_group_run (with its H_m^T when exg_post)
    int exg_pos, exg_set, exg_post, exg_mp;
    halo_cuda_s8_seg exg;
    // HALO_CUDA_G_GROUP: the weight-gradient product recorded for halo_cuda_linear_g_group_run (into gg_G)
    int gg_set, gg_post, gg_acc, gg_mp;
    halo_cuda_s8_seg gg;
    float *gg_G;
    // halo_cuda_linear_g_sumsq: where the weight-gradient product adds its sum of squares (NULL: nowhere), and
    // whether the last backward's did
    double *g_ss;
    int g_ss_added;
    // halo_cuda_linear_ex_swiglu_amax: gate's and up's E_Y amax for the bf16 E_X product to take (ex_sw_on), and
    // whether the last backward's did
    halo_cuda_swiglu_amax ex_sw;
    int ex_sw_on, ex_sw_done;
    // HALO_CUDA_Y_GROUP: the forward product recorded for halo_cuda_linear_y_group_run (into yg_Y)
    int yg_set, yg_f32, yg_np;
    long yg_ldy;
    halo_cuda_s8_seg yg;
    void *yg_Y;
    char note[256];
} halo_cuda_linear;

// ---- Delayed scaling: an option beyond the spec (halo-method.md section 2 scales by the tensor's own absmax) ----
// With halo_cuda_linear_delayed(L, 1) the kernel producing a layer's X (level 0) or E_Y (levels 0, 1) may write the
// 8-bit codes itself, scaled by the amax the same tensor had at the layer's previous call, instead of a bf16 tensor
// the layer reads twice (absmax, quantizer). It records this call's amax for the next call; values beyond the old
// amax saturate. A layer's first call, and any call whose producer does not take this path, scale as the spec does.
// The codes equal halo_cuda_quant_tile's of the producer's bf16 values with *amax (tests/test_cuda_halo.c).
typedef struct halo_cuda_codes {
    uint8_t *q;
    long ldq;                // row-major codes [rows][ldq] (NULL: not needed)
    uint8_t *qt;
    long ldqt;               // transposed codes [cols][ldqt]: rows_pad columns, zero codes past rows (NULL: not needed)
    int rows_pad, fmt;       // fmt: HALO_CUDA_INT8 / E4M3
    const float *amax;       // the scale's amax (the previous call's), final on the stream
    float *amax_next;        // zeroed on the stream; the producer maxes this call's max |value| in (float bits, atomic);
                             // NULL: nothing recorded (halo_cuda_linear_ey_codes_now: the amax is this call's)
    int *nonfinite;          // |= 1 on a NaN / Inf (the layer's flag for the tensor)
    halo_cuda_alpha_job aj;  // scale products the producer forms on the side (one thread)
} halo_cuda_codes;
// The setting of one layer (off by default; off forgets the amax history).
void halo_cuda_linear_delayed(halo_cuda_linear *L, int on);
// Tests: the slots L's next delayed-scaled calls take X's and E_Y's scales from, read into h (set 0) or set from it
// (set 1). A call records into the other slot, so setting what was read before a pass gives the next pass the same
// scales.
void halo_cuda_linear_delayed_hist(halo_cuda_linear *L, int h[2], int set);
// E_Y [b][n] (levels 0, 1): 1 when L's next backward takes its E_Y codes from E_Y's producer, c filled: row-major into
// q [b][ldq] when want_ex (the caller's buffer; 16-byte aligned, ldq % 16 == 0, n % 16 == 0), transposed into qt
// [n][pad16(b)] when want_g. That backward must pass HALO_CUDA_EY_CODES (its E_Y pointer is not read). 0: the spec's
// path (no history yet, delayed off, level 2, telemetry on, or shapes it does not take).
int halo_cuda_linear_ey_codes(halo_cuda_linear *L, int b, int n, uint8_t *q, long ldq, uint8_t *qt, int want_ex,
                              int want_g, halo_cuda_codes *c, cudaStream_t s);
enum { HALO_CUDA_EY_CODES = 512 };
// The spec's scale, codes from the producer (levels 0, 1; not delayed): as halo_cuda_linear_ey_codes, but scaled by
// this call's E_Y amax, which the producer has already taken into the layer's slot (halo_cuda_linear_ey_amax: an
// amax-only pass before the codes pass); c->amax_next NULL. The same codes the layer's own quantizer would write
// from the producer's bf16 E_Y. Off with HALO_CUDA_EY_CODES_SPEC=0 or halo_cuda_ey_codes_spec(0).
int halo_cuda_linear_ey_codes_now(halo_cuda_linear *L, int b, int n, uint8_t *q, long ldq, uint8_t *qt, int want_ex,
                                  int want_g, halo_cuda_codes *c, cudaStream_t s);
void halo_cuda_ey_codes_spec(int on);
int halo_cuda_ey_codes_spec_on(void);   // the setting (bench JSON)
// X [b][m] (level 0, m % 16 == 0, a layer that does not borrow X codes): 1 when L's next forward takes X's codes from
// X's producer, c filled with the layer's own buffers (row-major for the product, transposed for G when save_g). That
// forward must pass HALO_CUDA_X_CODES (its X pointer is not read). 0: the spec's path.
int halo_cuda_linear_x_codes(halo_cuda_linear *L, int b, int m, int save_g, halo_cuda_codes *c, cudaStream_t s);
enum { HALO_CUDA_X_CODES = 1024 };
// W [n][m] (level 0, m and n multiples of 16, n * m of 256): 1 when the optimizer may write L's W codes in its update
// (cuda_adamw_seg.q, fmt, code_amax, filled here; q is the layer's row-major buffer, allocated now and kept). A forward
// passing HALO_CUDA_W_CODES then uses those codes instead of quantizing W (and transposes them for the backward); pass
// it only while W is what that update wrote. The codes' scale is the amax W had before the update (its slot AW, which
// the update then refills). 0: the spec's path (delayed scaling off, another level, telemetry on, or another shape).
int halo_cuda_linear_w_codes(halo_cuda_linear *L, int m, int n, uint8_t **q, int *fmt, float **code_amax);
// Off by default (no step gain on an H100: dev/cuda/NOTES.md runs 30-31): on with HALO_CUDA_W_CODES=1 in the
// environment or this call, before the model's first update.
void halo_cuda_w_codes_on(int on);
enum { HALO_CUDA_W_CODES = 2048 };
// With W codes: the product Y = Q(X) Q(W)^T's scale, formed by X's producer (aj, HALO_CUDA_ALPHA_JOBS slots) from
// ax, the amax of X's codes' scale (that producer's c->amax; k, v and up use their group's first layer's). 1 when
// added; the next forward then skips its own launch for it when its X codes' amax is ax. halo_cuda_y_alpha_jobs(0):
// never (the forward's own launch, for the tests).
int halo_cuda_linear_y_alpha(halo_cuda_linear *L, const float *ax, halo_cuda_alpha_job *aj);
void halo_cuda_y_alpha_jobs(int on);
// The producers that write codes (swiglu.cu), over fused [gate | up] rows gu [N][2F], F % 64 == 0: down_proj's X =
// silu(gate) * up into c; gate's and up's E_Y (dgate, dup from dout [N][F]) into gate, up. Values as the bf16 kernels
// store them (cuda_swiglu_forward / _backward), codes as halo_cuda_quant_tile's of those values with *c->amax.
void cuda_swiglu_forward_codes(const halo_bf16 *gu, int N, int F, const halo_cuda_codes *c, cudaStream_t s);
// The RMSNorm forward writing a HALO layer's X codes (and rstd; no bf16 output), x [N][D] fp32: values and rstd as
// cuda_rmsnorm_forward's, codes as halo_cuda_quant_tile's of those values with *c->amax. cuda_rmsnorm_codes_ok: D a
// multiple of 16 whose 32-row code tile fits shared memory (D <= 6396).
int cuda_rmsnorm_codes_ok(int D);
// The RMSNorm backward (cuda_rmsnorm_backward_amax's dx, dw and residual sum) writing the codes of its bf16 copy of dx
// (the next HALO layer's E_Y: o's, or the previous layer's down_proj's) instead of that copy. D 256, 512, 1024 or 2048
// (the register-held kernel): cuda_rmsnorm_backward_codes_ok. dout32 (may be NULL): an fp32 dout, read instead of dout.
int cuda_rmsnorm_backward_codes_ok(int D);
void cuda_rmsnorm_backward_codes(float *dx, float *dw, const halo_bf16 *dout, const float *dout32, const float *x,
                                 const halo_bf16 *w, const float *rstd, const float *dres, int N, int D,
                                 const halo_cuda_codes *c, cudaStream_t s);
void cuda_rmsnorm_forward_codes(float *rstd, const float *x, const halo_bf16 *w, int N, int D, float eps,
                                const halo_cuda_codes *c, cudaStream_t s);
// The RoPE backward over fused q|k|v rows dqkv [N][(Hq + 2 Hkv) hd] (not changed) writing the q, k and v layers' E_Y
// codes: the values of cuda_rope_backward_amax (the q and k heads rotated back, v as it is), codes as
// halo_cuda_quant_tile's of them with each one's *amax. cuda_rope_codes_ok: hd % 16 == 0 and q's and k's widths
// multiples of 64.
int cuda_rope_codes_ok(int Hq, int Hkv, int hd);
void cuda_rope_backward_codes(const halo_bf16 *dqkv, const int32_t *pos, const float *cos_t, const float *sin_t, int N,
                              int Hq, int Hkv, int hd, const halo_cuda_codes *q, const halo_cuda_codes *k,
                              const halo_cuda_codes *v, cudaStream_t s);
void cuda_swiglu_backward_codes(const halo_bf16 *dout, const halo_bf16 *gu, int N, int F, const halo_cuda_codes *gate,
                                const halo_cuda_codes *up, cudaStream_t s);
// The backward's tiles: 128 tokens (the default; whole 128-byte lines of the transposed codes) or 64; the
// environment's HALO_SWIGLU_CODES_TR=64 sets 64 unless this was called. The same codes either way.
void cuda_swiglu_codes_tile(int tokens);

// prec: HALO_PREC_INT8 / HALO_PREC_FP8; level 0..2. HALO_ERR with a message otherwise.
int halo_cuda_linear_init(halo_cuda_linear *L, int prec, int level, const char *name);
void halo_cuda_linear_free(halo_cuda_linear *L);
// Uses w (owned by the caller, outliving the layer's use) for scratch instead of the layer's own; NULL reverts.
void halo_cuda_linear_share_workspace(halo_cuda_linear *L, halo_cuda_ws *w);
// L reuses src's X codes (and their scale) when its forward gets the same X pointer and shapes as src's last
// forward, which must come first (q, k, v reading one normed input: k and v share q's codes). Same precision and
// level required; the codes are the ones L would compute itself, so results are unchanged. NULL reverts.
void halo_cuda_linear_share_x(halo_cuda_linear *L, const halo_cuda_linear *src);
// Level 2's token Hadamard block-diagonal with blocks of bs tokens (the CPU layer's had_block_b; the token count is
// zero-padded to a multiple of bs), 0 = over all tokens (default). GPU: bs a power of two (checked at the backward).
// INT8 with bs <= 64 and an H_m block <= 256: an input gradient that is not group-summed (o, down) gets H_b in the own
// kernel's epilogue after H_m^T (halo_cuda_gemm_s8_dq_tok; HALO_CUDA_TOK_FUSED=0: a column pass instead, which
// halo_cuda_tok_fusing() then reports as 0).
int halo_cuda_tok_fusing(void);
void halo_cuda_linear_token_block(halo_cuda_linear *L, int bs);
// H_m block-diagonal with blocks of bs in_features (the CPU layer's had_block; bs must divide in_features), 0 = the
// full H_m (default). INT8 with blocks of a power of two <= 256: the products that need H_m^T after them (G; E_X at
// levels 1-2) rotate in the own INT8 kernel's epilogue (halo_cuda_gemm_s8_dq with rot) instead of a separate pass.
void halo_cuda_linear_hm_block(halo_cuda_linear *L, int bs);
// A NaN or Inf met by the layer's absmax passes (X and W in the forward, E_Y in the backward; INT8 codes treat NaN as 0
// and saturate Inf, so INT8 products stay finite and would hide it) sets a device flag per tensor; where a producer
// takes the amax instead (HALO_CUDA_X_AMAX, HALO_CUDA_EY_AMAX, HALO_CUDA_W_AMAX), the producer sets it
// (halo_cuda_linear_x_nonfinite, _ey_nonfinite; AdamW's segments for W). By default in the layer's own device state;
// flags3 (device, 3 ints: X, W, E_Y) redirects them, so that a model reads all its layers' flags with one copy (NULL:
// back to the layer's own; llama_cuda_halo_error reads them).
void halo_cuda_linear_nonfinite_slots(halo_cuda_linear *L, int *flags3);
const char *halo_cuda_nonfinite_what(int which);   // "its input X", "its weight W", "its output gradient E_Y"
// Allocates the saved codes for b tokens now (device memory errors at init rather than in the first step); save_x 0:
// only W's, for a layer that always runs with HALO_CUDA_NO_G.
void halo_cuda_linear_reserve(halo_cuda_linear *L, int b, int m, int n, int save_x);
// X [b][m] bf16, W [n][m] bf16, Y [b][n] (fp32 when y_f32, else bf16). Asynchronous on s.
int halo_cuda_linear_forward(halo_cuda_linear *L, const halo_bf16 *X, const halo_bf16 *W, void *Y, int y_f32, int b,
                             int m, int n, cudaStream_t s);
// The same with Y's row stride ldy >= n (Y a column slice of a wider activation) and an optional residual:
// R != NULL (needs y_f32; R [b][ldy] fp32, may alias Y): Y = R + X W^T.
int halo_cuda_linear_forward_ex(halo_cuda_linear *L, const halo_bf16 *X, const halo_bf16 *W, void *Y, int y_f32,
                                long ldy, const float *R, int b, int m, int n, cudaStream_t s);
// The same with flags: HALO_CUDA_X_AMAX: max |X| (the b x m bf16 input) is already in halo_cuda_linear_x_amax(L),
// computed by the kernel that produced X (the caller zeroes the slot before it runs); used at level 0 (unrotated X)
// and at levels 1-2 where halo_cuda_linear_x_rot_amax says yes (then it is max |X H_m|, the rotated X's), ignored
// otherwise. Skips the layer's own absmax pass of X.
enum { HALO_CUDA_X_AMAX = 8 };
float *halo_cuda_linear_x_amax(halo_cuda_linear *L);
// The layer's X non-finite flag, for that producer to set (its absmax pass, which would, is skipped).
int *halo_cuda_linear_x_nonfinite(halo_cuda_linear *L);
// Levels 1-2: 1 when the producer of X (m inputs) can take max |X H_m| itself: H_m in power-of-two blocks of 2^lb,
// 8..256, m % 256 == 0 (cuda_rmsnorm_forward_amax / cuda_swiglu_forward_amax with rot_lb = *lb, rot_scale = *scale);
// plans H_m. 0 otherwise, or with HALO_CUDA_X_ROT_AMAX=0.
int halo_cuda_linear_x_rot_amax(halo_cuda_linear *L, int m, int *lb, float *scale);
// Process-wide: 0 turns the producers' rotated X amax off (HALO_CUDA_X_ROT_AMAX=0 does the same), 1 back on.
void halo_cuda_x_rot_amax(int on);
// HALO_CUDA_W_AMAX: max |W| (level 0) or max |W H_m| (levels 1-2) of this very W is already in the layer's W amax
// slot, taken by the optimizer's update that wrote W (cuda_adamw_segments with halo_cuda_linear_w_amax's slot and
// rotation), so the layer skips its absmax pass of W; ignored where halo_cuda_linear_w_amax says no.
enum { HALO_CUDA_W_AMAX = 128 };
// 1 when the layer takes W's amax from its producer (m inputs): level 0 (*lb = 0, *scale = 1), or levels 1-2 with H_m
// in power-of-two blocks of 8..256 and m % 256 == 0 (*lb = log2(block), *scale = the plan's); *amax = the slot. 0
// otherwise, or with HALO_CUDA_W_AMAX=0 in the environment or halo_cuda_w_amax(0) (process-wide; 1 back on).
int halo_cuda_linear_w_amax(halo_cuda_linear *L, int m, float **amax, int *lb, float *scale);
void halo_cuda_w_amax(int on);
// HALO_CUDA_NO_G: no weight gradient follows this forward (a frozen weight: LoRA's base), so X's codes are made only
// for the product (row-major, in the scratch) and not saved transposed for G; a backward asking for G then fails.
// Where the layer saves its codes row-major anyway (levels 1-2 with halo_cuda_fwd_tcodes(0)) it changes nothing.
enum { HALO_CUDA_NO_G = 256 };
int halo_cuda_linear_forward_flags(halo_cuda_linear *L, const halo_bf16 *X, const halo_bf16 *W, void *Y, int y_f32,
                                   long ldy, const float *R, int flags, int b, int m, int n, cudaStream_t s);
// A LoRA adapter on this linear for the next forward only: U [b][r] and B [n][r] bf16 (U = s dropout(X) A^T). That
// forward adds U B^T into Y before its store when its product runs on the own INT8 kernel's plain dequantizing path
// (halo_cuda_gemm_s8_dq_lora; no telemetry), and halo_cuda_linear_lora_added then says 1; else 0 and the caller adds
// it. HALO_LORA_EPILOGUE=0 (or halo_cuda_lora_epilogue(0), process-wide) never adds it there.
void halo_cuda_linear_lora_next(halo_cuda_linear *L, const halo_bf16 *U, const halo_bf16 *B, int r);
int halo_cuda_linear_lora_added(const halo_cuda_linear *L);
void halo_cuda_lora_epilogue(int on);
// EY [b][n] bf16; EX [b][m] overwritten (fp32 when ex_f32, else bf16; NULL = not needed); G [n][m] fp32
// accumulated (G += dW; NULL = frozen weight). Uses the codes saved by the preceding forward.
int halo_cuda_linear_backward(halo_cuda_linear *L, const halo_bf16 *EY, void *EX, int ex_f32, float *G, int b, int m,
                              int n, cudaStream_t s);
// The same with E_Y's row stride ldey >= n.
int halo_cuda_linear_backward_ex(halo_cuda_linear *L, const halo_bf16 *EY, long ldey, void *EX, int ex_f32, float *G,
                                 int b, int m, int n, cudaStream_t s);
// The same with flags: HALO_CUDA_EX_ADD: EX += E_X (fp32 EX only) instead of EX = E_X (the summed input gradient of
// linears sharing an input, without a separate add pass); HALO_CUDA_G_SET: G = dW instead of G += dW (the first
// write after zeroing gradients, without the zeroing pass); HALO_CUDA_EY_AMAX: max |E_Y| (over the n columns this
// layer reads) is already in halo_cuda_linear_ey_amax(L), computed by the kernel that produced E_Y (the caller zeroes
// the slot before that kernel runs), so the layer skips its absmax pass.
enum { HALO_CUDA_EX_ADD = 1, HALO_CUDA_G_SET = 2, HALO_CUDA_EY_AMAX = 4 };
// Linears that share an input and sum their input gradients (q, k, v; gate, up) at levels 1-2 can rotate the sum once:
// with HALO_CUDA_EX_DEFER the layer writes (HALO_CUDA_EX_ADD: adds) into EX (fp32, [rows][m] with rows =
// halo_cuda_linear_ex_defer_rows(L, b)) its dequantized E_X product before the inverse rotations, and
// halo_cuda_linear_ex_finish then applies H_m^T (and level 2's H_b) to the sum and writes the first b rows to out.
// ex_defer_rows is 0 where this does not apply (level 0, telemetry on, level 2 without the column kernels).
enum { HALO_CUDA_EX_DEFER = 16 };
int halo_cuda_linear_ex_defer_rows(halo_cuda_linear *L, int b);
void halo_cuda_ex_defer(int on);   // 0: every linear rotates its own E_X (the A/B; also HALO_CUDA_EX_DEFER=0)
int halo_cuda_ex_deferring(void);  // the setting in force
int halo_cuda_linear_ex_finish(halo_cuda_linear *L, float *R, void *out, int out_f32, int b, int m, cudaStream_t s);
// Linears that share an input and sum their input gradients (q, k, v; gate, up) in fp32, at levels 0-1 in INT8 on the
// own kernel: their E_X products in one launch (halo_cuda_gemm_s8_dq_group), each tile's sum written once instead of
// read and written by every product after the first. halo_cuda_linear_ex_group_ok(Ls, n, b): whether the n <= 4
// linears can and should (INT8, levels 0-1, no telemetry, the same m, out_features <= 4096: q, k, v, not gate and up,
// whose long products gain nothing; the own kernel on, HALO_INT8_GROUP not 0); it gives each its place. Each one's
// backward then takes HALO_CUDA_EX_GROUP with the flags it would get otherwise (EX_ADD after the first, EX_DEFER; EX
// fp32): it quantizes E_Y and records its E_X product instead of running it, and
// halo_cuda_linear_ex_group_run(Ls, n, EX, accumulate, b, m) runs them: EX (fp32 [b][m]) = (accumulate ? EX : 0) +
// the products, the values of the backwards without the flag bit for bit (sequential products where the group
// kernel does not take the shapes).
enum { HALO_CUDA_EX_GROUP = 4096 };
int halo_cuda_linear_ex_group_ok(halo_cuda_linear *const *Ls, int n, int b);
int halo_cuda_linear_ex_group_run(halo_cuda_linear *const *Ls, int n, float *EX, int accumulate, int b, int m,
                                  cudaStream_t s);
// The same group's weight gradients, one buffer [n_1 + .. + n_k][m] (q, k, v: the layer's qkv weight): stacked by rows
// in one launch of the own kernel (halo_cuda_gemm_s8_dq_stack) instead of one product each (at 1B, k's and v's run
// on 32 tiles each). halo_cuda_linear_g_group_ok(Ls, n, b): whether they can (as ex_group_ok, every out_features but
// the last a multiple of 128, one product halo_cuda_gemm_s8_dq_small: q, k, v, not gate and up; off by default:
// halo_cuda_linear_g_stack_on(1) or HALO_INT8_STACK=1, see README); it gives each its place (ex_group_ok's). Each
// backward then takes HALO_CUDA_G_GROUP (G_SET as usual, the same for all) with G pointing at its rows of the buffer:
// it records its G product, and halo_cuda_linear_g_group_run(Ls, n, m) runs them, the values of the products one by
// one bit for bit.
enum { HALO_CUDA_G_GROUP = 8192 };
int halo_cuda_linear_g_group_ok(halo_cuda_linear *const *Ls, int n, int b);
int halo_cuda_linear_g_group_run(halo_cuda_linear *const *Ls, int n, int m, cudaStream_t s);
void halo_cuda_linear_g_stack_on(int on);
int halo_cuda_linear_g_stacking(void);   // the setting (bench JSON)
// The gradient norm without a pass over the weight gradients: with acc set (device double; NULL turns it off), each
// backward whose weight-gradient product runs on the own INT8 kernel (halo_cuda_gemm_s8_dq_sumsq: one product, not a
// stack) adds the sum of squares of the G it writes (the running sum when accumulating) into *acc;
// halo_cuda_linear_g_sumsq_added says whether the last backward's did. The caller zeroes *acc.
void halo_cuda_linear_g_sumsq(halo_cuda_linear *L, double *acc);
int halo_cuda_linear_g_sumsq_added(const halo_cuda_linear *L);
// down_proj's backward taking gate's and up's E_Y amax (halo_cuda_gemm_s8_dq_swiglu): with sw set (NULL clears it),
// each later backward whose input-gradient product writes a bf16 E_X on the own INT8 kernel also takes sw's amaxes
// and flags from it; halo_cuda_linear_ex_swiglu_amax_done says whether the last backward's did.
void halo_cuda_linear_ex_swiglu_amax(halo_cuda_linear *L, const halo_cuda_swiglu_amax *sw);
int halo_cuda_linear_ex_swiglu_amax_done(const halo_cuda_linear *L);
// The group's forward products (q, k and v, or gate and up: one X, outputs side by side in one Y) stacked by columns
// in one launch of the own kernel (halo_cuda_gemm_s8_dq_stack_cols). halo_cuda_linear_y_group_ok(Ls, n, b, widths):
// whether they can and it pays (INT8, any level, no telemetry or adapter, every width but the last a multiple of 256,
// one product halo_cuda_gemm_s8_dq_small: q, k, v, not gate and up; off by default: halo_cuda_linear_y_stack_on(1)
// or HALO_INT8_Y_STACK=1); it gives each its place. Each forward then takes HALO_CUDA_Y_GROUP
// (bf16 or fp32 Y without a residual, Y pointing at its columns): it quantizes and records its product, and
// halo_cuda_linear_y_group_run(Ls, n) runs them (where the kernel cannot, one by one): the same values bit for bit.
enum { HALO_CUDA_Y_GROUP = 16384 };
int halo_cuda_linear_y_group_ok(halo_cuda_linear *const *Ls, int n, int b, const int *widths);
int halo_cuda_linear_y_group_run(halo_cuda_linear *const *Ls, int n, cudaStream_t s);
void halo_cuda_linear_y_stack_on(int on);
int halo_cuda_linear_y_stacking(void);   // the setting (bench JSON)
float *halo_cuda_linear_ey_amax(halo_cuda_linear *L);
// The layer's E_Y non-finite flag, for that producer to set (its absmax pass, which would, is skipped).
int *halo_cuda_linear_ey_nonfinite(halo_cuda_linear *L);
// Level 2 with E_Y's token rotation in one column pass (H_b in power-of-two blocks of 8..64 over b tokens) and both
// gradients: 1 when E_Y's producer can take max |H_b^T E_Y| itself (cuda_swiglu_backward_amax_tok with tok_lb = *lb,
// tok_scale = *scale) into *amax (zero it before the producer runs), flagging a NaN / Inf in *nonfinite; the backward
// then gets HALO_CUDA_EYR_AMAX (with HALO_CUDA_EY_AMAX) and skips its absmax pass of H_b^T E_Y. Plans H_b. 0
// otherwise, or with HALO_CUDA_EY_ROT_AMAX=0.
int halo_cuda_linear_ey_rot_amax(halo_cuda_linear *L, int b, int *lb, float *scale, float **amax, int **nonfinite);
enum { HALO_CUDA_EYR_AMAX = 64 };
// Process-wide: 0 turns the producers' rotated E_Y amax off (HALO_CUDA_EY_ROT_AMAX=0 does the same), 1 back on.
void halo_cuda_ey_rot_amax(int on);
int halo_cuda_linear_backward_flags(halo_cuda_linear *L, const halo_bf16 *EY, long ldey, void *EX, int ex_f32,
                                    float *G, int flags, int b, int m, int n, cudaStream_t s);
// The last linear of a group sharing an input: EX (bf16 [b][m]) = ex_sum (fp32 [b][m], the earlier linears' E_X
// summed with HALO_CUDA_EX_ADD) + this one's E_X, rounded once; the values of backward_flags with EX_ADD into ex_sum
// and a rounding pass, bit for bit. By default (halo_cuda_sum_fused(0) or HALO_CUDA_SUM_FUSED=0 in the environment
// turn it off), where the own INT8 kernel takes the product (levels 0-1, no telemetry), it adds ex_sum in its
// epilogue and leaves it as it was; otherwise ex_sum is overwritten with the sum. flags: neither
// EX_ADD nor EX_DEFER.
int halo_cuda_linear_backward_sum(halo_cuda_linear *L, const halo_bf16 *EY, long ldey, halo_bf16 *EX, float *ex_sum,
                                  float *G, int flags, int b, int m, int n, cudaStream_t s);
void halo_cuda_sum_fused(int on);   // process-wide
int halo_cuda_sum_fusing(void);     // the setting in force
// Rotated quantizations (levels 1, 2): 1 (default) = one rotation into fp32 scratch with the absmax, then the codes
// from it (halo_cuda_rot_amax where it applies); 0 = rotate in both passes (absmax, then codes). Same codes.
void halo_cuda_rot_once(int on);
// Levels 1-2: 1 (default) = the forward's quantizers also write the transposed codes, which are the saved ones (as
// level 0 always does), so the backward transposes nothing; 0 = codes saved row-major and transposed in backward.
// Same codes either way. Call before any layer is reserved or run.
void halo_cuda_fwd_tcodes(int on);
// Level 2 backward: 1 (default) = the token rotations of E_Y and of the E_X product by the column kernels above
// (halo_cuda_colrot_*) where H_b allows, 0 = transpose, rotated rows, transpose back. Both give the same codes and
// the same E_X bits. Env HALO_CUDA_L2_COLROT=0 turns them off at the first backward unless this was called.
void halo_cuda_l2_colrot(int on);
// Quantization telemetry, as the CPU layer's cfg.telemetry (halo_telemetry.cu): while on, every forward and backward
// also measures each product's relative error on sampled rows (vs the fp32 product of its bf16 operands) and the
// outlier ratios max|x| / rms(x) of X, W, E_Y before and after rotation. The G error needs the forward's X unchanged
// at backward time. Off (the default): one branch per call, nothing launched.
void halo_cuda_linear_telemetry(halo_cuda_linear *L, int on);
// The statistics of the last measured calls, in the CPU's struct (NAN = not measured). Synchronizes with the device.
int halo_cuda_linear_telemetry_read(halo_cuda_linear *L, halo_linear_stats *st);
// Hooks of the layer's calls (internal: halo_linear_cuda.cu calls them while tele_on).
typedef struct halo_cuda_tele halo_cuda_tele;
void halo_cuda_tele_free(halo_cuda_linear *L);
void halo_cuda_tele_fwd_begin(halo_cuda_linear *L, const float *R, long ldy, int b, int n, cudaStream_t s);
void halo_cuda_tele_fwd_end(halo_cuda_linear *L, const halo_bf16 *X, const halo_bf16 *W, const void *Y, int y_f32,
                            long ldy, int b, int m, int n, cudaStream_t s);
void halo_cuda_tele_bwd_begin(halo_cuda_linear *L, const halo_bf16 *EY, long ldey, const void *EX, int ex_add,
                              const float *G, int g_acc, int b, int m, int n, cudaStream_t s);
void halo_cuda_tele_bwd_end(halo_cuda_linear *L, const void *EX, int ex_f32, const float *G, int b, int m, int n,
                            cudaStream_t s);

// ---- per-launch profiling of the layer (bench_cuda_halo --breakdown). Off by default: then each launch costs one
// branch. While on, every kernel / product launched by halo_cuda_linear_forward*/backward* is bracketed by CUDA events.
typedef struct halo_cuda_prof_rec {
    const char *name;   // static string, e.g. "fwd quant X"
    double bytes;       // bytes the launch must read + write (the kernel's floor)
    float ms;           // event-timed, filled by halo_cuda_prof_collect
} halo_cuda_prof_rec;
void halo_cuda_prof_enable(int on);
// Waits for the recorded events, copies up to cap records (launch order) into out, clears them; returns the count.
int halo_cuda_prof_collect(halo_cuda_prof_rec *out, int cap);

// out[r][c] (=, or += when accumulate and out is fp32; bf16 otherwise) = in[r][c] for r < rows, c < cols.
void halo_cuda_store_f32(void *out, int out_f32, long ldo, const float *in, long ldi, int rows, int cols,
                         int accumulate, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
