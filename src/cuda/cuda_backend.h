// The CUDA backend's C API: BF16 operations on device pointers (one .cu per operation, forward and backward, the
// same semantics as the fp32 CPU ops in src/ops/ops.h) and the GPU Llama model (src/cuda/llama_cuda.cu) that trains
// with BF16 weights, fp32 master weights, fp32 (or BF16) AdamW moments and fp32 (or BF16) gradients.
#ifndef HALO_CUDA_BACKEND_H
#define HALO_CUDA_BACKEND_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "dist/comm.h"
#include "model/batch.h"
#include "model/config.h"
#include "model/linear.h"
#include "model/llama.h"
#include "train/generate.h"

typedef uint16_t halo_bf16;   // bfloat16 bits (the kernels use __nv_bfloat16; C code only moves them)

// Number of usable CUDA devices; 0 when there is no driver or no GPU (never fails).
int cuda_device_count(void);
// 1 when the current device can run this build's kernels (compiled for sm_90a: compute capability 9.0, the H100 and
// H200); else 0 with the reason (no device, or its name and compute capability) in why.
int cuda_device_usable(char *why, size_t cap);
// The number of usable devices (cuda_device_usable on each), counted in a forked child process so that CUDA does not
// start in this one: a process that forks ranks must not initialize CUDA first (a forked child cannot use its
// parent's CUDA). 0 with the reason in why when none is usable (else why holds the last unusable device's reason, or
// ""). Never fails.
int cuda_device_count_forked(char *why, size_t cap);
// Makes device `dev` current for the calling thread: HALO_OK, or HALO_ERR naming the device and how many there are.
int cuda_select_device(int dev);
// Host-side conversions (round to nearest even), for tests and uploads.
void cuda_f32_to_bf16_host(halo_bf16 *dst, const float *src, size_t n);
void cuda_bf16_to_f32_host(float *dst, const halo_bf16 *src, size_t n);
// Device conversions.
void cuda_f32_to_bf16(halo_bf16 *dst, const float *src, size_t n, cudaStream_t s);
void cuda_bf16_to_f32(float *dst, const halo_bf16 *src, size_t n, cudaStream_t s);

// ---- matrix products (matmul.cu, cuBLASLt, BF16 operands, fp32 accumulation) ----
// Row-major, like linear_forward in ops.h. Y[b, n] = X[b, m] W[n, m]^T (+ R[b, n] when R != NULL; then Y is fp32).
// y_f32 selects Y's type (fp32 or bf16). R may alias Y.
void cuda_linear_forward(void *Y, int y_f32, const halo_bf16 *X, const halo_bf16 *W, const float *R,
                         int b, int m, int n, cudaStream_t s);
// dX[b, m] = dY[b, n] W[n, m] (bf16 out)
void cuda_linear_backward_dx(halo_bf16 *dX, const halo_bf16 *dY, const halo_bf16 *W, int b, int m, int n,
                             cudaStream_t s);
// dW[n, m] += dY[b, n]^T X[b, m] (fp32 accumulate into the gradient)
void cuda_linear_backward_dw(float *dW, const halo_bf16 *dY, const halo_bf16 *X, int b, int m, int n,
                             cudaStream_t s);
// dW[n, m] = dY^T X (overwrites: the first gradient write of a step needs no zeroed buffer)
void cuda_linear_backward_dw_set(float *dW, const halo_bf16 *dY, const halo_bf16 *X, int b, int m, int n,
                                 cudaStream_t s);
// bf16 dW[n, m] = dY^T X (+ dW when accumulate): fp32 accumulation inside the product, one bf16 rounding per call
void cuda_linear_backward_dw_bf16(halo_bf16 *dW, const halo_bf16 *dY, const halo_bf16 *X, int b, int m, int n,
                                  int accumulate, cudaStream_t s);
// General row-major product for small or strided operands (the LoRA adapters): C[M, N] (row stride ldc; fp32 or
// bf16) = alpha op(A) op(B) + beta C, op(A) [M, K] is A [M, K] (row stride lda) or, when ta, A^T of A [K, M];
// op(B) [K, N] is B [K, N] or, when tb, B^T of B [N, K]. Any pointer alignment (plans are chosen for the pointers'
// actual alignments), so C may be a column slice of a wider activation.
void cuda_gemm_rm(void *C, int c_f32, long ldc, const halo_bf16 *A, long lda, int ta, const halo_bf16 *B, long ldb,
                  int tb, int M, int N, int K, float alpha, float beta, cudaStream_t s);
// Frees the cuBLASLt handle, workspace and cached algorithms.
void cuda_matmul_shutdown(void);
// Changes whenever cuda_matmul_shutdown frees the products' workspace and plans (CUDA graphs that captured products
// before that are stale).
int cuda_matmul_generation(void);

// ---- element-wise and row operations ----
// out[N, D] (fp32 residual stream) = table[ids[n], :]
void cuda_embedding_forward(float *out, const int32_t *ids, const halo_bf16 *table, int N, int D, cudaStream_t s);
// dtable[V, D] += scatter of dout[N, D]
// skip_id: a token id whose row gets nothing (the config's pad_token_id, as the CPU's embedding_backward); -1: none
void cuda_embedding_backward(float *dtable, const int32_t *ids, const float *dout, int N, int D, int skip_id,
                             cudaStream_t s);

// out[N, D] = x / rms(x) * w (bf16), rstd[N]
void cuda_rmsnorm_forward(halo_bf16 *out, float *rstd, const float *x, const halo_bf16 *w, int N, int D, float eps,
                          cudaStream_t s);
// The same, and *amax = max(*amax, max |out|) over the stored bf16 values (atomic on the float bits; zero it first).
// rot_lb > 0 (3..8, D % 256 == 0): max |out rotated in Hadamard blocks of 2^rot_lb, times rot_scale| instead (a HALO
// level 1-2 layer's X scale, bit for bit its absmax pass's); 0: unrotated. *nonfinite |= 1 when an output is a NaN
// or Inf (the layer's X flag, which its skipped absmax pass would have set; may be NULL).
void cuda_rmsnorm_forward_amax(halo_bf16 *out, float *rstd, const float *x, const halo_bf16 *w, int N, int D,
                               float eps, float *amax, int rot_lb, float rot_scale, int *nonfinite, cudaStream_t s);
// out = x * rstd * w from the rstd a forward stored: the forward's bf16 bits again (norm recomputation)
void cuda_rmsnorm_recompute(halo_bf16 *out, const float *rstd, const float *x, const halo_bf16 *w, int N, int D,
                            cudaStream_t s);
// One pass (rows in blocks, dw summed per block in shared memory).
// dx[N, D] = dres (or 0 when NULL; may alias dx) + d(rmsnorm)/dx · dout; dx16 (optional) = bf16(dx);
// dw[D] += sum_n dout * x * rstd (dw NULL: not computed, a frozen norm).
void cuda_rmsnorm_backward(float *dx, halo_bf16 *dx16, float *dw, const halo_bf16 *dout, const float *x,
                           const halo_bf16 *w, const float *rstd, const float *dres, int N, int D, cudaStream_t s);
// The same, and *amax16 = max(*amax16, max |dx16|) (atomic on the float bits; dx16 required): the E_Y scale of the
// HALO layer that reads dx16 next, without its own absmax pass; *nonfinite |= 1 (with amax16; may be NULL) when a
// dx16 value is a NaN or Inf (that layer's E_Y flag, which the skipped pass would set). dout32 (may be NULL): an fp32
// dout [N, D], read instead of dout (a HALO group's summed input gradients, left unrounded).
void cuda_rmsnorm_backward_amax(float *dx, halo_bf16 *dx16, float *dw, const halo_bf16 *dout, const float *dout32,
                                const float *x, const halo_bf16 *w, const float *rstd, const float *dres, int N, int D,
                                float *amax16, int *nonfinite, cudaStream_t s);

// In-place RoPE of the first H heads of each row of x[N, ld] (HF half-split pairs (i, i + hd/2)) at positions
// pos[N]; tables cos/sin[max_pos, hd/2] fp32 (from rope_tables). Backward rotates by the inverse angle.
void cuda_rope_forward(halo_bf16 *x, int ld, const int32_t *pos, const float *cos_t, const float *sin_t, int N,
                       int H, int hd, cudaStream_t s);
void cuda_rope_backward(halo_bf16 *dx, int ld, const int32_t *pos, const float *cos_t, const float *sin_t, int N,
                        int H, int hd, cudaStream_t s);
// The backward on whole fused rows dqkv[N, (Hq + 2 Hkv) hd] (q and k heads rotated), also taking max |dq|, |dk|, |dv|
// of the stored values into amax_q/k/v (atomic max on the float bits: zero them first): HALO's q, k, v E_Y scales;
// *nf_q / *nf_k / *nf_v |= 1 when one of those values is a NaN or Inf (their E_Y flags; all three or none, NULL).
void cuda_rope_backward_amax(halo_bf16 *dqkv, const int32_t *pos, const float *cos_t, const float *sin_t, int N,
                             int Hq, int Hkv, int hd, float *amax_q, float *amax_k, float *amax_v, int *nf_q,
                             int *nf_k, int *nf_v, cudaStream_t s);

// The Llama variants' additions to the fused q, k, v product y[N, ld] (bias_headnorm.cu): y[t, 0..n) += bias (bf16);
// db[j] += sum_t dy[t, j] (fp32); an RMSNorm over each of the first Hq + Hkv heads of every row in place (q heads
// weighted by wq, k heads by wk; raw and rstd, when not NULL, keep the input [N, (Hq + Hkv) hd] and the scales
// [N, Hq + Hkv]); its backward in place on dy, dwq / dwk += the weights' gradients (NULL: frozen); hd <= 256.
void cuda_bias_rows_add(halo_bf16 *y, int ld, const halo_bf16 *bias, int N, int n, cudaStream_t s);
void cuda_bias_grad(float *db, const halo_bf16 *dy, int ld, int N, int n, cudaStream_t s);
void cuda_head_rmsnorm_forward(halo_bf16 *x, int ld, halo_bf16 *raw, float *rstd, const halo_bf16 *wq,
                               const halo_bf16 *wk, int N, int Hq, int Hkv, int hd, float eps, cudaStream_t s);
void cuda_head_rmsnorm_backward(halo_bf16 *dy, int ld, const halo_bf16 *raw, const float *rstd, const halo_bf16 *wq,
                                const halo_bf16 *wk, float *dwq, float *dwk, int N, int Hq, int Hkv, int hd,
                                cudaStream_t s);

// gu[N, 2F] holds [gate | up] per row; out[N, F] = silu(gate) * up
void cuda_swiglu_forward(halo_bf16 *out, const halo_bf16 *gu, int N, int F, cudaStream_t s);
// The same, and *amax = max(*amax, max |out|) over the stored bf16 values (atomic; zero it first). rot_lb > 0 (3..8,
// F % 256 == 0): the rotated amax, as cuda_rmsnorm_forward_amax's; nonfinite as there.
void cuda_swiglu_forward_amax(halo_bf16 *out, const halo_bf16 *gu, int N, int F, float *amax, int rot_lb,
                              float rot_scale, int *nonfinite, cudaStream_t s);
// dgu[N, 2F] = [dgate | dup]
void cuda_swiglu_backward(halo_bf16 *dgu, const halo_bf16 *dout, const halo_bf16 *gu, int N, int F, cudaStream_t s);
// The same, and *amax_gate / *amax_up = max(.., max |dgate| / |dup|) (atomic on the float bits): the gate and up HALO
// layers' E_Y scales; *nf_gate / *nf_up |= 1 when a dgate / dup value is a NaN or Inf (their E_Y flags; both or
// none, NULL). dgu NULL: the amaxes and flags only, nothing stored (the pass before a producer writes codes).
void cuda_swiglu_backward_amax(halo_bf16 *dgu, const halo_bf16 *dout, const halo_bf16 *gu, int N, int F,
                               float *amax_gate, float *amax_up, int *nf_gate, int *nf_up, cudaStream_t s);
// The same (F % 64 == 0), and *tok_amax_gate / *tok_amax_up = max(.., max |H_b^T dgate| / |H_b^T dup|) with H_b the
// token rotation in blocks of 2^tok_lb (3..6) scaled by tok_scale: a level-2 gate / up layer's rotated E_Y scale
// (halo_cuda_linear_ey_rot_amax); *nonfinite_* |= 1 on a NaN / Inf there (may be NULL).
void cuda_swiglu_backward_amax_tok(halo_bf16 *dgu, const halo_bf16 *dout, const halo_bf16 *gu, int N, int F,
                                   float *amax_gate, float *amax_up, float *tok_amax_gate, float *tok_amax_up,
                                   int *nonfinite_gate, int *nonfinite_up, int tok_lb, float tok_scale, cudaStream_t s);

// Causal GQA attention. qkv[N, (Hq + 2 Hkv) hd] rows hold [q heads | k heads | v heads] (RoPE applied);
// out[N, Hq hd]; lse[B, Hq, T] (natural log of the softmax denominators, kept for backward).
// seg[B, T] or NULL: a query attends only to keys with its segment id.
void cuda_attention_forward(halo_bf16 *out, float *lse, const halo_bf16 *qkv, const int32_t *seg, int B, int T,
                            int Hq, int Hkv, int hd, cudaStream_t s);
// The same, also maxing max |out| (the stored bf16 values) into *amax (float bits, atomic; zero it first) and setting
// *nf |= 1 (may be NULL) on a NaN / Inf among them: the o_proj HALO layer's X amax. Only where
// cuda_attention_forward_amax_ok(hd): the flash kernels, once turned on (off by default: HALO_ATTN_AMAX=1 or
// cuda_attention_amax_on(1)).
void cuda_attention_amax_on(int on);
int cuda_attention_forward_amax_ok(int hd);
void cuda_attention_forward_amax(halo_bf16 *out, float *lse, const halo_bf16 *qkv, const int32_t *seg, int B, int T,
                                 int Hq, int Hkv, int hd, float *amax, int *nf, cudaStream_t s);
// dqkv[N, (Hq + 2 Hkv) hd] overwritten. scratch: cuda_attention_scratch_bytes() bytes.
void cuda_attention_backward(halo_bf16 *dqkv, void *scratch, const halo_bf16 *dout, const halo_bf16 *out,
                             const float *lse, const halo_bf16 *qkv, const int32_t *seg, int B, int T, int Hq,
                             int Hkv, int hd, cudaStream_t s);
size_t cuda_attention_scratch_bytes(int B, int T, int Hq, int Hkv, int hd);
// 1 when the tensor-core (flash) kernels serve this head_dim; HALO_CUDA_ATTN=simple forces the simple kernels.
int cuda_attention_uses_flash(int hd);
// Flash kernel variants for benchmarks and tests (attention.cu lists them); -1 = the default (or the value of
// HALO_CUDA_ATTN_FWD / HALO_CUDA_ATTN_BWD).
void cuda_attention_set_fwd_variant(int v);
void cuda_attention_set_bwd_variant(int v);
enum { CUDA_ATTN_FWD_VARIANTS = 3, CUDA_ATTN_BWD_VARIANTS = 5 };

// Cross-entropy over bf16 logits[N, V] (fp32 arithmetic) with targets[N] (-1 ignored): *loss_sum += sum of row
// losses (double); dlogits[N, V] (optional, may alias logits) = scale * (softmax - onehot), 0 for ignored rows.
void cuda_cross_entropy(halo_bf16 *dlogits, double *loss_sum, const halo_bf16 *logits, const int32_t *targets, int N,
                        int V, float scale, cudaStream_t s);

// ---- optimizer (adamw.cu) ----
// *sumsq += sum of g[i]^2 (double accumulator on the device; fp32 partial sums per thread and block)
void cuda_sumsq(double *sumsq, const float *g, size_t n, cudaStream_t s);
void cuda_sumsq_bf16(double *sumsq, const halo_bf16 *g, size_t n, cudaStream_t s);
// Programmatic dependent launch for the kernels that take it (common.cuh, launch_pdl: the own INT8 product, the
// 8-bit tile quantizer): off by default until measured on a GPU (HALO_CUDA_PDL=1 turns it on); cuda_pdl_on sets it
// process-wide.
void cuda_pdl_on(int on);
int cuda_pdl(void);
// += the squares of g over n ranges (device table: offset, length pairs; total elements in all of them)
void cuda_sumsq_ranges(double *sumsq, const float *g, const unsigned long long *ranges, int n, size_t total,
                       cudaStream_t s);
// torch.optim.AdamW on p[n] fp32 master weights, gradients g (fp32, or bf16 when g_bf16), moments m/v (fp32, or bf16
// when mom_bf16), writes w16 = bf16(p). Gradients are scaled by clip / (norm + 1e-6) when clip > 0 and
// norm = sqrt(*sumsq) exceeds clip (sumsq on device).
void cuda_adamw(float *p, halo_bf16 *w16, const void *g, int g_bf16, void *m, void *v, int mom_bf16, size_t n,
                float lr, float beta1, float beta2, float eps, float weight_decay, int step, const double *sumsq,
                float clip, cudaStream_t s);
// The same update over segments [off, off + n) of one flat range (fp32 gradients, moments at the same offsets), one
// launch (weight decay per segment), that also takes each HALO weight's amax of its stored bf16 values for the next forward (the layer's W scale
// without its absmax pass): amax (device, may be NULL: none) = max |w| (rot_lb 0) or max |w H_m| with H_m in blocks of
// 2^rot_lb (3..8) along rows of a multiple of 256, scaled by rot_scale, bit for bit the layer's absmax pass; zeroed
// by the call first. *nf |= 1 (may be NULL) on a NaN or Inf among those values. off a multiple of 8; first_chunk:
// cuda_adamw_seg_check's numbering. seg_dev is the table in device memory.
typedef struct {
    size_t off, n;
    unsigned first_chunk;   // the segment's first block: the sum of the chunks (8192 elements) of those before it
    int decay;              // 1: weight_decay applies, 0: none
    int rot_lb;
    float rot_scale;
    float *amax;
    int *nf;
    // delayed scaling, level 0 (q != NULL): the launch first copies *amax (the weights' amax before this update) into
    // *code_amax, then writes the updated bf16 weights' codes scaled by it (halo_cuda_quant_tile's codes) into q
    // [0, n), in the weights' order (row-major): n % 256 == 0, q 16-byte aligned, rot_lb 0 and amax set
    uint8_t *q;
    int fmt;                // HALO_CUDA_INT8 / E4M3
    float *code_amax;
} cuda_adamw_seg;
// The total of chunks (blocks) when the host table is well formed (first_chunk numbering, alignment, rotated
// segments' sizes), else 0.
int cuda_adamw_seg_check(const cuda_adamw_seg *seg, int nseg);
void cuda_adamw_segments(float *p, halo_bf16 *w16, const float *g, void *m, void *v, int mom_bf16,
                         const cuda_adamw_seg *seg_dev, int nseg, int chunks, float lr, float beta1, float beta2,
                         float eps, float weight_decay, int step, const double *sumsq, float clip, cudaStream_t s);

// LoRA (src/cuda/lora.cu). lora.c's dropout mask on the product + mask path: out = x where kept (element i of x,
// adapter lin, key; thr = lora_dropout_threshold(p)), else 0; dx += keep t where kept.
void cuda_lora_mask(halo_bf16 *out, const halo_bf16 *x, size_t n, uint64_t key, int lin, uint32_t thr, cudaStream_t s);
void cuda_lora_mask_add(halo_bf16 *dx, const halo_bf16 *t, size_t n, uint64_t key, int lin, uint32_t thr, float keep,
                        cudaStream_t s);
// The adapters of one input X [N, in] (dense rows; q, k, v share one, gate and up one): up to 3, rank r, A_j [r, in]
// bf16, U_j and dU_j [N, r] bf16, A's gradient gA_j [r, in] fp32, and under dropout each adapter's keep bits
// (bits_j [N, in / 8]: bit b of byte (t * in + c) / 8 keeps element (t, c), c % 8 = b; NULL bits[0]: no dropout).
// Every pointer 16-byte aligned.
typedef struct {
    int n;
    const halo_bf16 *a[3];
    halo_bf16 *u[3];
    const halo_bf16 *du[3];
    float *ga[3];
    uint8_t *bits[3];
    int lin[3];   // mask ids (layer * LIN_COUNT + kind)
} cuda_lora_group;
int cuda_lora_group_ok(int r, int in, int n);   // 1 for r 8, 16 or 32, in a multiple of 32, 1..3 adapters
// The B side of the adapters on one output gradient dY (q, k, v share one; gate and up one): for each, dy_j = its
// first column of dY (rows of stride ld), B_j [out_j, r] and U_j [N, r] (the forward's) bf16; gB_j [out_j, r] fp32
// += dY_j^T U_j and dU_j [N, r] bf16 = scale dY_j B_j, in one pass over dY through partial sums in ws
// (cuda_lora_b_ws_floats) added in a fixed order (deterministic). cuda_lora_b_ok: 1 when the kernel takes them (r 8,
// 16 or 32, 1..3 adapters, out_j and ld multiples of 8, dy_j, U_j and B_j 16-byte aligned).
typedef struct {
    int n;
    const halo_bf16 *dy[3];
    int out[3];
    const halo_bf16 *b[3], *u[3];
    float *gb[3];
    halo_bf16 *du[3];
} cuda_lora_bgroup;
int cuda_lora_b_ok(const cuda_lora_bgroup *gr, int r, long ld);
size_t cuda_lora_b_ws_floats(int N, const int *outs, int n, int r);
void cuda_lora_b(const cuda_lora_bgroup *gr, int N, long ld, int r, float scale, float *ws, cudaStream_t s);
// U_j = alpha mask_j(X) A_j^T; under dropout hashes the masks (key, thr as cuda_lora_mask) and writes bits_j.
void cuda_lora_u(const cuda_lora_group *gr, const halo_bf16 *X, int N, int in, int r, float alpha, uint64_t key,
                 uint32_t thr, cudaStream_t s);
// gA_j += keep dU_j^T mask_j(X), through per-split partial sums in ws (cuda_lora_da_ws_floats), summed in a fixed
// order (deterministic).
void cuda_lora_da(const cuda_lora_group *gr, const halo_bf16 *X, int N, int in, int r, float keep, float *ws,
                  cudaStream_t s);
size_t cuda_lora_da_ws_floats(int N, int in, int r, int n);
// dX [N, in] += keep sum_j mask_j(dU_j A_j) (fp32 sum, one bf16 rounding into dX).
void cuda_lora_dx(const cuda_lora_group *gr, halo_bf16 *dX, int N, int in, int r, float keep, cudaStream_t s);
// The same into an fp32 dX (16-byte aligned; nothing rounded).
void cuda_lora_dx_f32(const cuda_lora_group *gr, float *dX, int N, int in, int r, float keep, cudaStream_t s);
// One adapter's output: Y [N, out] (row stride ldy; bf16, or fp32 with y_f32) += U B^T, U [N, r], B [out, r] (bf16);
// cuda_lora_y_ok: r 8, 16 or 32, out a multiple of 32, ldy of 8, Y 16-byte (fp32: 32-byte) aligned.
int cuda_lora_y_ok(int r, int out, long ldy, int y_f32, const void *Y);
void cuda_lora_y(void *Y, int y_f32, long ldy, const halo_bf16 *U, const halo_bf16 *B, int N, int out, int r,
                 cudaStream_t s);

// ---- the GPU model (llama_cuda.cu) ----
typedef struct llama_cuda llama_cuda;

typedef struct {
    int max_B, max_T;       // largest batch the buffers are sized for
    int recompute;          // 1: keep only each layer's input; recompute the layer in backward
                            // 2: keep all but the MLP's [gate | up] product (the largest activation); recompute it
    int recompute_norms;    // 1: n1/n2 (the norm outputs) not kept per layer: one shared buffer, recomputed in
                            // backward from the stored residual and rstd (bit-identical values; saves
                            // 2 n_layers N D bytes). Implied by recompute 1.
    int bf16_moments;       // 1: AdamW moments in bf16
    int bf16_grads;         // 1: gradients of the weight matrices (and an untied lm_head) in bf16, written by bf16
                            // cuBLASLt dW products (beta 1 when accumulating); embedding and norms stay fp32.
                            // Refused with HALO (its layers accumulate fp32 gradients).
    int ce_chunk;           // tokens per lm_head + cross-entropy chunk (0 = automatic: ce_chunk_auto in llama_cuda.cu)
    int verbose;            // 1: print the memory breakdown at init
    model_halo_config halo; // HALO on the block linears, as on the CPU (src/model/linear.h): prec INT8 or FP8 runs
                            // the selected linears through halo_cuda_linear (per-tensor scales, nearest rounding,
                            // full H_m only); FP32 (zero-initialized) or BF16: every product in BF16 as before.
                            // q, k, v (and gate, up) are fused on the GPU: all of a group or none.
    halo_comm *shard_comm;  // data parallel, ZeRO-1 (NULL or one rank: whole moments): this model keeps AdamW moments
                            // only for rank r's range of the flat device parameter buffer (llama_cuda_shard_range:
                            // the buffer cut into W pieces of ceil(n / W) elements rounded up to 128, piece r), and
                            // llama_cuda_adamw_step updates that range of the fp32 master (and its bf16 copy), then
                            // all-gathers the fp32 master over comm so that every rank holds the whole updated weights
                            // (bit-identical: the bf16 copy of other ranks' ranges is converted from the gathered
                            // master). Moments take 8 / W bytes a parameter (fp32; 4 / W in bf16) instead of 8; master,
                            // weights and gradients stay whole (the gradients are all-reduced whole, so the clipping
                            // norm is the global one). comm as for llama_cuda_allreduce_grads: device buffers of this
                            // GPU, collectives enqueued on llama_cuda_stream(g) (set it after creation, before the
                            // first step); the model keeps the pointer. Refused with LoRA adapters.
} llama_cuda_opts;

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    float grad_clip;        // global-norm clip (0 = off)
    int decay_all;          // 1: decay norms and embeddings too
} llama_cuda_adamw;

// HALO_OK when the GPU HALO layers support these settings (per-tensor scales, nearest rounding, E4M3 gradients,
// full H_m, q/k/v and gate/up all or none; fp32 gradients); else HALO_ERR with the reason.
int llama_cuda_halo_check(const model_halo_config *hc, int bf16_grads);
// Uploads a host model (fp32 params; its tensor table gives the no-decay tensors). Returns HALO_ERR with a message
// when no device is present or memory runs out.
// A host model with LoRA adapters (llama_get_lora): only the adapters train (fp32 values, gradients and AdamW moments,
// a bf16 copy for the products; clipping and weight decay over them alone, as the CPU trainer); the base weights are
// frozen, uploaded once as bf16 with no master, gradient or moment buffers, and every base weight-gradient product
// is skipped. Copy-back, moments and upload_state then move the adapters in llama_trainable_params' layout (the
// host's adapters; the CPU trainer's adamw_state). bf16_moments / bf16_grads are refused with LoRA.
int llama_cuda_init(llama_cuda **out, const llama_model *host, const llama_cuda_opts *o);
// What llama_cuda_init (and _init_random) say of a model whose additions the GPU model lacks. It runs q, k, v biases
// (Qwen2), q/k norms (Qwen3: heads up to 256 wide) and layers without RoPE (SmolLM3); o, gate, up and down biases
// (Llama's attention_bias, mlp_bias) are not written.
#define LLAMA_CUDA_NO_VARIANT "the GPU model does not run this architecture's additions (o, gate, up or down " \
                              "biases: Llama's attention_bias, mlp_bias; q/k norms over heads wider than 256)"
#define LLAMA_CUDA_NO_BIAS LLAMA_CUDA_NO_VARIANT ": this model runs on the CPU (--device cpu)"
int llama_cuda_variant_ok(const llama_config *c);   // 1 when the GPU model runs c's biases and q/k norms
// LoRA dropout on the adapters' inputs (as llama_lora_train): on, with the masks of lora.c drawn from `key` (the
// trainer's trainer_lora_key per micro-batch), for the forward passes and backward passes that follow; off (the
// default): no dropout, as evaluation. Nothing without adapters.
void llama_cuda_lora_train(llama_cuda *g, int on, uint64_t key);
int llama_cuda_has_lora(const llama_cuda *g);   // 1 when the model trains LoRA adapters
// LoRA adapters through lora.cu's grouped kernels (on 1: the adapters of one input in one pass over it, the dropout
// mask inside) or each alone through cuBLASLt products and mask passes (0), for every model of this process; -1 (the
// start): on unless HALO_LORA_FUSED=0 is in the environment.
void llama_cuda_lora_fused(int on);
// Same, from a config with random weights made on the device (normal(0, 0.02) matrices, ones for norms).
int llama_cuda_init_random(llama_cuda **out, const llama_config *cfg, uint64_t seed, const llama_cuda_opts *o);
void llama_cuda_free(llama_cuda *g);

// Forward only; logits_host[B, T, V] filled when not NULL. Returns the mean loss over targets >= 0.
float llama_cuda_forward(llama_cuda *g, const halo_batch *b, float *logits_host);
// Forward and backward: grads += grad_scale * d(mean loss)/d(params). Does not synchronize; the loss is read by
// llama_cuda_last_loss (which does).
void llama_cuda_forward_backward(llama_cuda *g, const halo_batch *b, float grad_scale);
float llama_cuda_last_loss(llama_cuda *g);
void llama_cuda_zero_grads(llama_cuda *g);
// One AdamW step (step is 1-based, torch's `step` after increment), with clipping by the global norm. Sharded
// (opts.shard_comm): this rank's range, then the all-gather of the master (collective: every rank calls it);
// HALO_ERR with the collective's message (enqueue failures: a peer's failure shows at the next barrier). Else HALO_OK.
int llama_cuda_adamw_step(llama_cuda *g, const llama_cuda_adamw *h, int step);
// zero_grads + forward_backward(1) + adamw_step; returns the loss (the step's one host synchronization).
float llama_cuda_train_step(llama_cuda *g, const halo_batch *b, const llama_cuda_adamw *h, int step);
// Global gradient L2 norm (synchronizes).
double llama_cuda_grad_norm(llama_cuda *g);
// The stream every operation of the model is enqueued on (non-blocking: not ordered with the legacy default stream).
cudaStream_t llama_cuda_stream(const llama_cuda *g);
// Data parallel: sums the gradients over the ranks of comm, in place (after the step's forward_backward calls, before
// llama_cuda_grad_norm / adamw_step): the fp32 buffer (padding included: zero on every rank), bf16 gradients
// (bf16_grads) through an fp32 staging chunk of at most 64 MiB allocated at the first call (each sum rounded once to
// bf16), or the LoRA adapters' gradients. comm's buffers must be device memory of this model's GPU (the NCCL backend,
// src/cuda/comm_nccl.h) and its collectives must be enqueued on llama_cuda_stream(g) (halo_comm_set_stream),
// which keeps them in order with the backward before and the optimizer after; nothing waits on the host. Collective:
// every rank calls it with a model of the same configuration. NULL comm or one rank: nothing. HALO_ERR with the
// collective's message.
int llama_cuda_allreduce_grads(llama_cuda *g, halo_comm *comm);
// The HALO layers that met a NaN or Inf since the last zero_grads (INT8 codes treat NaN as zero and saturate Inf, so
// the step's products and loss can stay finite and hide it), as "model.layers.3.mlp.down_proj: a NaN or Inf
// in its weight W; ..." (at most three named), or NULL when none did or no layer runs through HALO. Synchronizes.
const char *llama_cuda_halo_error(llama_cuda *g);

// Copies fp32 master weights / gradients into a host model of the same config (views by its tensor table); with
// LoRA, the adapters' values / gradients into the host's adapters (llama_trainable_params).
int llama_cuda_copy_params(llama_cuda *g, llama_model *host);
int llama_cuda_copy_grads(llama_cuda *g, llama_model *host);

// Quantization telemetry of the HALO layers (as llama_halo_telemetry on the CPU): measured during the following steps
// while on (down's input is then recomputed for its G reference); report reads every layer's statistics (one
// synchronization each), prints the table to `table` and writes one {"type":"quant",...} line per layer to
// `metrics` (either may be NULL). Nothing happens without HALO layers.
void llama_cuda_halo_telemetry(llama_cuda *g, int on);
// HALO delayed scaling (an option beyond the spec; halo_cuda.h, halo_cuda_codes): on = 1 lets the SwiGLU kernels
// write down_proj's X codes (level 0) and gate's and up's E_Y codes (levels 0, 1) themselves, scaled by the amax of the
// layer's previous call. On at setup when opts.halo.delayed (--halo-delayed-scaling) or HALO_DELAYED_SCALING=1.
void llama_cuda_halo_delayed(llama_cuda *g, int on);
// Tests: every HALO linear's delayed-scale history (halo_cuda_linear_delayed_hist), 2 ints a linear in h
// (n_layers * 7 * 2), read (set 0) or set (1).
void llama_cuda_halo_delayed_hist(llama_cuda *g, int *h, int set);
// Whether a HALO group's fp32 input-gradient sum goes to the norm backward unrounded (levels 0-1 without deferred
// rotation; LoRA adapters add into it where the grouped kernel takes them): on unless HALO_CUDA_DNORM_F32=0 (then
// rounded to bf16 first, as before; for A/B timings).
int llama_cuda_dnorm_f32(void);
// The gradient norm from the HALO weight gradients' own products (halo_cuda_linear_g_sumsq): each backward's own-kernel
// weight-gradient products add their squares into a device sum, and the norm reads only the rest of the gradient
// (one pass instead of one over every gradient). Off by default until measured on a GPU: HALO_G_SUMSQ=1 or
// llama_cuda_g_sumsq_on(1) turn it on; not with LoRA, bf16 gradients or sharded moments; an all-reduce of the
// gradients falls back to the full pass.
void llama_cuda_g_sumsq_on(int on);
int llama_cuda_g_sumsq(void);   // the setting in force
// gate's and up's E_Y amax (levels 0-1, the spec's scales) taken by down_proj's input-gradient product on the own INT8
// kernel (halo_cuda_gemm_s8_dq_swiglu) instead of the SwiGLU backward's amax-only pass: off by default until measured
// on a GPU (HALO_CUDA_EX_SWIGLU_AMAX=1 or llama_cuda_ex_swiglu_amax_on(1) turn it on); the same values bit for bit.
void llama_cuda_ex_swiglu_amax_on(int on);
int llama_cuda_ex_swiglu_amax(void);
// Elements of the gradient whose squares the last backward's products summed (0: the norm reads every gradient).
size_t llama_cuda_g_sumsq_covered(const llama_cuda *g);
void llama_cuda_halo_telemetry_report(llama_cuda *g, FILE *table, FILE *metrics, int step);

// Profiling: with it on, each step records device events around every operation; llama_cuda_profile_print prints
// the mean device time per step by operation (attention, products, norms, ...). Turning it on resets the sums.
void llama_cuda_profile(llama_cuda *g, int on);
void llama_cuda_profile_print(llama_cuda *g);

// Bytes this model allocated on the device (weights, master, grads, moments, activations, workspace).
size_t llama_cuda_bytes(const llama_cuda *g);
size_t llama_cuda_param_count(const llama_cuda *g);
// Bytes of AdamW moments on this device (the whole buffer's, or this rank's range's when sharded).
size_t llama_cuda_moment_bytes(const llama_cuda *g);
// The range [*lo, *hi) of the flat device parameter buffer (*n_all elements, padding between tensors included) whose
// moments this model holds: all of it, or this rank's piece when sharded (empty for a rank past the end).
void llama_cuda_shard_range(const llama_cuda *g, size_t *lo, size_t *hi, size_t *n_all);

// Training state for checkpoints (host layout: the host model's flat buffer and adamw_state's m/v).
// Copies the AdamW moments into m_host/v_host [host->n_params] fp32 (bf16 device moments are widened exactly).
// Sharded (opts.shard_comm): the whole moments, every rank's range all-gathered through a 32 MiB device stage
// (collective: every rank calls it; m_host/v_host NULL on a rank that only takes part, e.g. all but the one that
// writes the checkpoint); the host waits on comm's barrier (its timeout) after each piece.
int llama_cuda_copy_moments(llama_cuda *g, const llama_model *host, float *m_host, float *v_host);
// Replaces the device state: fp32 master weights from host->params (the bf16 working copy follows) and the moments
// from m_host/v_host (NULL: zeros; bf16 device moments round to nearest even, so bf16 moments copied back by
// llama_cuda_copy_moments come back bit for bit). Used to resume a checkpoint on the GPU. Sharded: m_host/v_host are
// the whole moments (host layout) of which this rank keeps its range; not collective.
int llama_cuda_upload_state(llama_cuda *g, const llama_model *host, const float *m_host, const float *v_host);

// Device pointers of the GPU model's BF16 working weights, as laid out by llama_cuda.cu (per layer the fused
// [wq; wk; wv] and [w_gate; w_up] matrices), for the decoder below. `layers` is malloc'ed: free it.
typedef struct {
    const halo_bf16 *attn_norm, *wqkv, *wo, *ffn_norm, *wgu, *wdown;
    const halo_bf16 *bqkv;             // the q, k, v biases [(Hq + 2 Hkv) hd] (Qwen2), or NULL
    const halo_bf16 *q_norm, *k_norm;  // the per-head q / k norm weights [hd] (Qwen3), or NULL
} llama_cuda_layer_ptrs;
typedef struct {
    llama_config cfg;
    const halo_bf16 *embed, *lm_head, *final_norm;
    llama_cuda_layer_ptrs *layers;   // [cfg.n_layers]
    cudaStream_t stream;             // the model's stream (the cuBLASLt workspace is shared: one stream at a time)
    int halo_on;                     // 1 when some block linear trains through HALO
} llama_cuda_weight_ptrs;
void llama_cuda_weights(llama_cuda *g, llama_cuda_weight_ptrs *out);

// ---- KV-cache decoding (decode.cu) ----
// BF16 products (cuBLASLt), fp32 residual stream, a bf16 KV cache [layers][max_seqs][max_len][Hkv hd] for K and V,
// single-query attention over the cache with an fp32 softmax, fp32 logits. HALO layers are not used: like the
// CPU's optional quantized evaluation, generation on the GPU runs the BF16 weights.
typedef struct cuda_decoder cuda_decoder;
// Over a GPU model's weights (borrowed: the model must outlive the decoder and its stream is used; refused when the
// model has LoRA adapters, which the decoder does not apply) ...
int cuda_decoder_init(cuda_decoder **out, llama_cuda *g, int max_seqs, int max_len, int max_rows);
// ... or over a host model's weights, uploaded once as BF16 (the decoder owns them; no training buffers).
// max_rows: most tokens one cuda_decoder_forward call takes (prefill runs in chunks of it; >= max_seqs).
int cuda_decoder_init_host(cuda_decoder **out, const llama_model *host, int max_seqs, int max_len, int max_rows);
void cuda_decoder_free(cuda_decoder *d);
// Runs n <= max_rows tokens: row i is token tok[i] of sequence seq[i] (< max_seqs) at position pos[i] (< max_len).
// Every row's K/V goes into the cache before any row attends, so one call may hold consecutive positions of a
// sequence (prefill) and/or one token of several sequences (a decode step); row i attends to positions 0..pos[i]
// of its sequence, earlier ones written by earlier calls. logits[n_out, V] (host, fp32) for rows out_rows[n_out].
// HALO_ERR (nothing run) on out-of-range tokens, sequences, positions or counts.
int cuda_decoder_forward(cuda_decoder *d, int n, const int32_t *seq, const int32_t *tok, const int32_t *pos,
                         int n_out, const int32_t *out_rows, float *logits);
// Same, returning only the greedy token of each output row (argmax on the device, lowest id on ties).
int cuda_decoder_forward_greedy(cuda_decoder *d, int n, const int32_t *seq, const int32_t *tok, const int32_t *pos,
                                int n_out, const int32_t *out_rows, int32_t *next);
// gen_generate (train/generate.h) for n_seqs <= max_seqs prompts at once: the same options, each sequence sampled
// with its own RNG seeded with o->seed (so it matches the CPU run of that prompt alone); on_token is called only
// when n_seqs == 1. out[s][max_new_tokens], n_out[s]: generated tokens of sequence s (eos included).
int cuda_generate(cuda_decoder *d, int n_seqs, const int32_t *const *prompts, const int *n_prompt,
                  const gen_options *o, int32_t *const *out, int *n_out);
// Decode steps (calls of at most max_seqs rows) replay a CUDA graph per (rows, outputs, greedy) after their first
// eager run: the same launches, without the per-launch host cost. 0 turns it off (the A/B; HALO_CUDA_DECODE_GRAPHS=0
// too).
void cuda_decoder_graphs(cuda_decoder *d, int on);

#ifdef __cplusplus
}
#endif
#endif
