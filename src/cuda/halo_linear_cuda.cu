// The HALO linear layer on the GPU: levels 0, 1, 2 in INT8 or FP8 E4M3 with per-tensor scales, the same products,
// rotations and quantizations as halo_linear_forward / halo_linear_backward (src/halo/halo_linear.c), everything
// stream-ordered on the device (absmax by atomics, scales read by the kernels and by cuBLASLt from device memory).
// In/out features m, n are padded to mp, np (multiples of 16) with zero codes inside the layer.
// Scratch (halo_cuda_ws): 0 product before rotation / int32 product (fp32 or int32 [rows][cols]), 1 Q(E_Y) [rows][np],
// 2 Q(E_Y)^T [np][b16], 3 Q(W H)^T [mp][np] (level 0: the forward's row-major Q(W) [np][mp]), 4 level 2: the column
// kernels' first pass over E_Y, fp32 [bp][n] (transpose path: E_Y^T bf16 [n][bp] then its codes, then with
// HALO_CUDA_EX_ADD E_X fp32 [b][m] before the add), 5 level 2: the E_X product fp32 [bp][m] (transpose path: and its
// transpose), 6 Q(X H)^T [mp][b16] (tagged with its codes, so that layers sharing X codes
// transpose them once), 7 level 0: the forward's row-major Q(X) [b][mp] (tagged, for layers sharing X codes).
// Level 0 keeps Q(X)^T and Q(W)^T as its saved codes (halo_cuda.h), so its backward transposes nothing.
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include "cuda/common.cuh"
#include "cuda/halo_cuda.h"
extern "C" {
#include "halo/hadamard.h"
#include "halo/halo_linear.h"
#include "util/error.h"
}

#define HB_MAX_K 172   // as HALO_HB_MAX_K in halo_linear.c
enum { AX = HALO_DEV_AX, AW = HALO_DEV_AW, AE = HALO_DEV_AE, AER = HALO_DEV_AER, ALY = HALO_DEV_ALY,
       ALEX = HALO_DEV_ALEX, ALG = HALO_DEV_ALG, AED = HALO_DEV_AED, NONFIN = HALO_DEV_NONFIN, AXD = HALO_DEV_AXD,
       AWC = HALO_DEV_AWC };

static long pad16(long x) { return (x + 15) / 16 * 16; }

// The non-finite flag of the tensor whose amax slot is `slot`: X, W, or E_Y (plain or token-rotated).
static int *nonfin_of(halo_cuda_linear *L, int slot) { return L->nonfin + (slot == AX ? 0 : slot == AW ? 1 : 2); }

// ---- profiling hook (halo_cuda_prof_*): events around each launch while on, one branch per launch while off ----
enum { PROF_MAX = 16384 };
static int g_prof_on, g_prof_n, g_prof_made;
static cudaEvent_t g_prof_ev[PROF_MAX][2];
static halo_cuda_prof_rec g_prof_rec[PROF_MAX];

extern "C" void halo_cuda_prof_enable(int on) { g_prof_on = on; }

static int prof_begin(cudaStream_t s) {
    if (!g_prof_on || g_prof_n >= PROF_MAX) return -1;
    const int i = g_prof_n++;
    if (i >= g_prof_made) {
        CUDA_CHECK(cudaEventCreate(&g_prof_ev[i][0]));
        CUDA_CHECK(cudaEventCreate(&g_prof_ev[i][1]));
        g_prof_made = i + 1;
    }
    CUDA_CHECK(cudaEventRecord(g_prof_ev[i][0], s));
    return i;
}
static void prof_end(int i, const char *name, double bytes, cudaStream_t s) {
    if (i < 0) return;
    g_prof_rec[i].name = name;
    g_prof_rec[i].bytes = bytes;
    g_prof_rec[i].ms = 0.f;
    CUDA_CHECK(cudaEventRecord(g_prof_ev[i][1], s));
}

extern "C" int halo_cuda_prof_collect(halo_cuda_prof_rec *out, int cap) {
    const int n = g_prof_n < cap ? g_prof_n : cap;
    for (int i = 0; i < n; i++) {
        CUDA_CHECK(cudaEventSynchronize(g_prof_ev[i][1]));
        out[i] = g_prof_rec[i];
        CUDA_CHECK(cudaEventElapsedTime(&out[i].ms, g_prof_ev[i][0], g_prof_ev[i][1]));
    }
    g_prof_n = 0;
    return n;
}

// Runs stmt (a launch on stream s) between two profiling events when profiling is on.
#define PROF(name, bytes, stmt) do { const int _pi = prof_begin(s); stmt; prof_end(_pi, name, (double)(bytes), s); } while (0)
static int esz(int t) { return t == HALO_CUDA_BF16 ? 2 : t == HALO_CUDA_U8 ? 1 : 4; }

static halo_cuda_ws *ws_of(halo_cuda_linear *L) { return L->shared ? L->shared : &L->own; }
static void *ws(halo_cuda_linear *L, int i, size_t bytes) {
    halo_cuda_ws *w = ws_of(L);
    if (i == 6 && bytes > w->cap[i]) w->qxt_key = NULL;   // a new buffer holds no transpose yet
    return dev_grow(&w->buf[i], &w->cap[i], bytes);
}

extern "C" void halo_cuda_ws_free(halo_cuda_ws *w) {
    for (int i = 0; i < HALO_CUDA_NWS; i++) if (w->buf[i]) cudaFree(w->buf[i]);
    memset(w, 0, sizeof *w);
}

extern "C" void halo_cuda_linear_share_workspace(halo_cuda_linear *L, halo_cuda_ws *w) { L->shared = w; }

extern "C" int halo_cuda_linear_init(halo_cuda_linear *L, int prec, int level, const char *name) {
    memset(L, 0, sizeof *L);
    snprintf(L->name, sizeof L->name, "%s", name ? name : "linear");
    if (prec != HALO_PREC_INT8 && prec != HALO_PREC_FP8)
        return halo_fail("%s: the GPU HALO layer takes int8 or fp8 (got %s)", L->name, halo_precision_name((halo_precision)prec));
    if (level < 0 || level > 2) return halo_fail("%s: level %d is not 0, 1 or 2", L->name, level);
    L->prec = prec;
    L->level = level;
    CUDA_CHECK(cudaMalloc((void **)&L->dev, 16 * sizeof(float)));
    CUDA_CHECK(cudaMemset(L->dev, 0, 16 * sizeof(float)));
    L->nonfin = (int *)(L->dev + NONFIN);
    return HALO_OK;
}

extern "C" void halo_cuda_linear_nonfinite_slots(halo_cuda_linear *L, int *flags3) {
    L->nonfin = flags3 ? flags3 : (int *)(L->dev + NONFIN);
}

extern "C" const char *halo_cuda_nonfinite_what(int which) {
    static const char *const what[3] = {"its input X", "its weight W", "its output gradient E_Y"};
    return which >= 0 && which < 3 ? what[which] : "?";
}

extern "C" void halo_cuda_linear_free(halo_cuda_linear *L) {
    halo_cuda_had_free(&L->hm);
    halo_cuda_had_free(&L->hb);
    if (L->qx) cudaFree(L->qx);
    if (L->qw) cudaFree(L->qw);
    if (L->qw_rp) cudaFree(L->qw_rp);
    if (L->dev) cudaFree(L->dev);
    halo_cuda_ws_free(&L->own);
    halo_cuda_tele_free(L);
    memset(L, 0, sizeof *L);
}

extern "C" void halo_cuda_linear_share_x(halo_cuda_linear *L, const halo_cuda_linear *src) { L->xsrc = src; }

extern "C" float *halo_cuda_linear_ey_amax(halo_cuda_linear *L) { return L->dev + AE; }

static unsigned long g_xgen;   // generations of X codes (halo_cuda_ws.qxt_gen)

// The forward's quantizers write the saved codes transposed (the backward products' layouts) besides the row-major
// ones its product reads, so the backward transposes nothing: always at level 0; at levels 1-2 unless
// halo_cuda_fwd_tcodes(0) (the A/B: saved row-major, transposed in backward). Set before any layer reserves.
static int g_fwd_tcodes = 1;
extern "C" void halo_cuda_fwd_tcodes(int on) { g_fwd_tcodes = on; }
static int tposed(const halo_cuda_linear *L) { return L->level == 0 || g_fwd_tcodes; }
static size_t qx_bytes(const halo_cuda_linear *L, int b, int m) {
    return tposed(L) ? (size_t)pad16(m) * pad16(b) : (size_t)b * pad16(m);
}

extern "C" void halo_cuda_linear_reserve(halo_cuda_linear *L, int b, int m, int n, int save_x) {
    if (save_x && !L->xsrc) dev_grow((void **)&L->qx, &L->cap_qx, qx_bytes(L, b, m));   // a sharing layer needs its
                                                                                      // own only when the X pointers
                                                                                      // differ
    dev_grow((void **)&L->qw, &L->cap_qw, (size_t)pad16(n) * pad16(m));
}

static int fmt_of(const halo_cuda_linear *L) { return L->prec == HALO_PREC_INT8 ? HALO_CUDA_INT8 : HALO_CUDA_E4M3; }
// the amax of the scale of the W codes the last forward used: its own pass's or the update's (AW), or the optimizer's
// codes' (AWC)
static float *aw_of(halo_cuda_linear *L) { return L->dev + (L->aw_slot ? L->aw_slot : AW); }

// Scale-product jobs that quantization kernels run on the side: alpha_job(fmt), then up to HALO_CUDA_ALPHA_JOBS
// alpha_add.
static halo_cuda_alpha_job alpha_job(int fmt) {
    halo_cuda_alpha_job j;
    memset(&j, 0, sizeof j);
    j.fmt = fmt;
    return j;
}
static int alpha_free(const halo_cuda_alpha_job *j) {   // the first free slot, HALO_CUDA_ALPHA_JOBS when full
    int i = 0;
    while (i < HALO_CUDA_ALPHA_JOBS && j->out[i]) i++;
    return i;
}
static void alpha_add(halo_cuda_alpha_job *j, float *out, const float *amax_a, const float *amax_b) {
    const int i = alpha_free(j);
    assert(i < HALO_CUDA_ALPHA_JOBS);
    j->out[i] = out; j->a[i] = amax_a; j->b[i] = amax_b;
}

// Level 0: rows x cols of `in` (bf16) quantized in one read into row-major q [rows][ldq] and transposed
// qt [cols][ldqt] (zero codes in its columns rows..rows_pad-1), after the absmax pass into amax slot `slot`; aj: scale
// products computed by the quantizer (may be NULL).
static void quantize_both(halo_cuda_linear *L, const void *in, long ld, int rows, int cols, int slot, uint8_t *q,
                          long ldq, uint8_t *qt, long ldqt, int rows_pad, const halo_cuda_alpha_job *aj,
                          const char *name_a, const char *name_q, cudaStream_t s) {
    float *amax = L->dev + slot;
    const double elems = (double)rows * cols;
    if (name_a)   // NULL: the amax is there already (HALO_CUDA_X_AMAX)
        PROF(name_a, 2 * elems,
             halo_cuda_absmax_rows(NULL, 0, in, HALO_CUDA_BF16, ld, rows, cols, amax, NULL, nonfin_of(L, slot), s));
    PROF(name_q, 2 * elems + elems + (double)cols * rows_pad,
         halo_cuda_quant_tile_alpha(in, HALO_CUDA_BF16, ld, rows, cols, amax, fmt_of(L), q, ldq, qt, ldqt, rows_pad, aj,
                                    s));
}

extern "C" void halo_cuda_linear_hm_block(halo_cuda_linear *L, int bs) {
    if (bs != L->hm_block) L->hm_d = 0;   // re-plan at the next forward
    L->hm_block = bs > 0 ? bs : 0;
}

// Once a process: a rotation of 512 or more values that takes the generic row kernel's order-K mix (orders 44 and
// 172; Qwen2.5's 896 and 4864 took it before k_rot covered them, and its level 2 took 2.1x the BF16 step), with the
// option that avoids it.
static void note_generic_mix(const halo_cuda_linear *L, int m) {
    static int said;
    if (said || m < 512 || !halo_cuda_had_generic_mix(&L->hm)) return;
    said = 1;
    int b = 1;
    while (b < 256 && m % (2 * b) == 0) b *= 2;
    fprintf(stderr, "halo_cuda_linear %s: the Hadamard rotation of its %d inputs (order %d) runs on the GPU's generic "
                    "row kernel, which is slow at levels 1-2; --halo-hadamard-block with a power of two that divides "
                    "every layer's input width (%d here) keeps the fast kernels\n", L->name, m, L->hm.K, b);
}

static int plan_hm(halo_cuda_linear *L, int m) {
    if (L->hm_d == m) return HALO_OK;
    halo_cuda_had_free(&L->hm);
    if (L->hm_block) {   // as the CPU layer's had_block: the block must divide m
        if (halo_cuda_had_plan(&L->hm, m, L->hm_block))
            return halo_fail_ctx("%s: in_features %d, Hadamard block %d: ", L->name, m, L->hm_block);
        L->hm_d = m;
        return HALO_OK;
    }
    char note[200];
    if (halo_cuda_had_plan_fallback(&L->hm, m, note, sizeof note)) return halo_fail_ctx("%s: in_features %d: ", L->name, m);
    if (note[0] && !L->note[0]) {
        snprintf(L->note, sizeof L->note, "%s", note);
        fprintf(stderr, "halo_cuda_linear %s: %s\n", L->name, note);
    }
    L->hm_d = m;
    note_generic_mix(L, m);
    return HALO_OK;
}

// INT8 with a small-block H_m (power of two <= 256) on a device that runs the own kernel: the products that need
// H_m^T after them rotate in its epilogue. Decided per layer, not per call, so that a deferred group sum is either
// rotated by every product or by none (product() rotates with post 1 on any path).
static int hm_fused(const halo_cuda_linear *L) {
    return L->prec == HALO_PREC_INT8 && L->level >= 1 && L->hm_d > 0 && halo_cuda_gemm_s8_dq_rot_ok(&L->hm, L->hm_d) &&
           halo_cuda_gemm_s8_owning();
}

static int plan_hb(halo_cuda_linear *L, int b);

// A linear whose E_X product can join a group (halo_cuda_linear_ex_group_ok)
static int ex_groupable(const halo_cuda_linear *L) {
    return L->prec == HALO_PREC_INT8 && L->level < 2 && !L->tele_on && tposed(L);
}
// and whose forward product can join a stack (halo_cuda_linear_y_group_ok; every level: no rotation after it)
static int y_groupable(const halo_cuda_linear *L) { return L->prec == HALO_PREC_INT8 && !L->tele_on; }

// Level 2, INT8, both rotations of E_X in the own kernel's epilogue: H_m^T (hm_fused) and then H_b over the tokens
// (blocks of a power of two <= 64, planned for b tokens by plan_hb), instead of an fp32 product and a column pass.
// HALO_CUDA_TOK_FUSED=0 switches it off (to compare). Used where the input gradient is not deferred (o, down).
static int g_tok_fused = -1;
extern "C" int halo_cuda_tok_fusing(void) { return env_switch(&g_tok_fused, "HALO_CUDA_TOK_FUSED"); }
static int hb_fused(halo_cuda_linear *L, int b) {
    return L->level == 2 && hm_fused(L) && halo_cuda_tok_fusing() && plan_hb(L, b) == HALO_OK &&
           halo_cuda_gemm_s8_dq_tok_ok(&L->hb);
}

extern "C" void halo_cuda_linear_token_block(halo_cuda_linear *L, int bs) {
    if (bs != L->hb_block) L->hb_b = 0;   // re-plan at the next backward
    L->hb_block = bs > 0 ? bs : 0;
}

// As the CPU's plan_hb: blocks of hb_block tokens over b rounded up to a multiple, else the full H over b zero-padded
// to a supported size.
static int plan_hb(halo_cuda_linear *L, int b) {
    if (L->hb_b == b) return HALO_OK;
    halo_cuda_had_free(&L->hb);
    const int bs = L->hb_block;
    int pad = bs ? (b + bs - 1) / bs * bs : halo_hadamard_pad_size(b, HB_MAX_K);
    if (halo_cuda_had_plan(&L->hb, pad, bs)) return halo_fail_ctx("%s: token Hadamard: ", L->name);
    L->hb_b = b;
    L->hb_pad = pad;
    return HALO_OK;
}

// halo_cuda_l2_colrot: -1 = not set yet (the env decides at the first backward), else 0 / 1.
static int g_colrot = -1;
extern "C" void halo_cuda_l2_colrot(int on) { g_colrot = on ? 1 : 0; }
static int colrot_on(void) { return env_switch(&g_colrot, "HALO_CUDA_L2_COLROT"); }
static int g_lora_epi = -1;   // halo_cuda_lora_epilogue; -1: from HALO_LORA_EPILOGUE at the first use
static int lora_epilogue_on(void) { return env_switch(&g_lora_epi, "HALO_LORA_EPILOGUE"); }

static int check(const halo_cuda_linear *L, int b, int m, int n) {
    if (b < 1 || m < 1 || n < 1) return halo_fail("%s: bad shapes b=%d m=%d n=%d", L->name, b, m, n);
    return HALO_OK;
}

static int g_rot_once = 1;   // halo_cuda_rot_once
extern "C" void halo_cuda_rot_once(int on) { g_rot_once = on; }
// Small-block rotations (K = 1, blocks <= 256) cost little to compute: the absmax and quantize passes each rotate the
// bf16 rows again (k_rot_small) rather than storing and re-reading an fp32 rotation (2 + 3 bytes per element instead
// of 2 + 4 + 4 + 1).
static int rot_cheap(const halo_cuda_had *h) { return h && h->K == 1 && h->P == h->block && h->block <= 256; }

// Quantizes rows x d of `in` (rotated by h when not NULL) into q [rows][ldq] with the amax slot `slot` (zeroed here).
// name_a / name_q: the profiling names of the two passes. zero: clear the amax slot first (else the caller did).
// aj (may be NULL): scale products the quantizer forms on the side (the amax values they read final by then).
static void quantize_rows(halo_cuda_linear *L, const halo_cuda_had *h, const void *in, int in_type, long ld, int rows,
                          int d, int slot, uint8_t *q, long ldq, const char *name_a, const char *name_q, int zero,
                          const halo_cuda_alpha_job *aj, cudaStream_t s) {
    float *amax = L->dev + slot;
    const double elems = (double)rows * d;
    if (zero) PROF("memset amax", 4, CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(float), s)));
    if (h && name_a && g_rot_once && !rot_cheap(h) && in_type == HALO_CUDA_BF16 && halo_cuda_rot_amax_ok(h, in, ld, rows)) {
        // rotate once: the absmax pass keeps the rotated rows (fp32, scratch slot 0: free until the product), the
        // quantizer reads them unrotated at memory speed (the rotation, not the bytes, bounds these kernels)
        float *T = (float *)ws(L, 0, sizeof(float) * (size_t)rows * d);
        PROF(name_a, elems * 6.0,
             halo_cuda_rot_amax(h, (const halo_bf16 *)in, ld, rows, T, d, amax, nonfin_of(L, slot), s));
        PROF(name_q, elems * 5.0, halo_cuda_quant_rows_alpha(NULL, 0, T, HALO_CUDA_F32, d, rows, d, amax, NULL,
                                                             fmt_of(L), q, ldq, aj, s));
        return;
    }
    if (name_a)   // NULL: the amax is there already (HALO_CUDA_X_AMAX)
        PROF(name_a, elems * esz(in_type),
             halo_cuda_absmax_rows(h, 0, in, in_type, ld, rows, d, amax, NULL, nonfin_of(L, slot), s));
    PROF(name_q, elems * (esz(in_type) + 1),
         halo_cuda_quant_rows_alpha(h, 0, in, in_type, ld, rows, d, amax, NULL, fmt_of(L), q, ldq, aj, s));
}

// Rotated (levels 1-2) quantization into both layouts: q [rows][ldq] and qt [d][ldqt] (rows_pad columns, zero codes
// past rows). Rotate once into fp32 scratch, then the tile quantizer writes both from it; small blocks (<= 256): the
// absmax pass, then one pass that rotates again and writes both layouts; else the row quantizer and an 8-bit
// transpose.
static void quantize_rows_both(halo_cuda_linear *L, const halo_cuda_had *h, const halo_bf16 *in, long ld, int rows,
                               int d, int slot, uint8_t *q, long ldq, uint8_t *qt, long ldqt, int rows_pad,
                               const halo_cuda_alpha_job *aj, const char *name_a, const char *name_q, cudaStream_t s) {
    float *amax = L->dev + slot;
    const double elems = (double)rows * d;
    if (name_a && g_rot_once && !rot_cheap(h) && halo_cuda_rot_amax_ok(h, in, ld, rows)) {
        float *T = (float *)ws(L, 0, sizeof(float) * (size_t)rows * d);
        PROF(name_a, elems * 6.0, halo_cuda_rot_amax(h, in, ld, rows, T, d, amax, nonfin_of(L, slot), s));
        PROF(name_q, elems * 6.0 + (double)d * rows_pad,
             halo_cuda_quant_tile_alpha(T, HALO_CUDA_F32, d, rows, d, amax, fmt_of(L), q, ldq, qt, ldqt, rows_pad, aj,
                                        s));
        return;
    }
    if (rot_cheap(h) && halo_cuda_rot_quant_both_ok(h, in, ld, rows, d, q, ldq, qt, ldqt, rows_pad)) {
        // small blocks: the absmax pass (unless X's producer took it), then one pass that writes both layouts
        if (name_a)
            PROF(name_a, elems * 2.0,
                 halo_cuda_absmax_rows(h, 0, in, HALO_CUDA_BF16, ld, rows, d, amax, NULL, nonfin_of(L, slot), s));
        PROF(name_q, elems * 3.0 + (double)d * rows_pad,
             halo_cuda_rot_quant_both(h, in, ld, rows, d, amax, fmt_of(L), q, ldq, qt, ldqt, rows_pad, aj, s));
        return;
    }
    quantize_rows(L, h, in, HALO_CUDA_BF16, ld, rows, d, slot, q, ldq, name_a, name_q, 0, aj, s);
    PROF("fwd transpose codes", elems + (double)d * rows_pad,
         halo_cuda_transpose(q, HALO_CUDA_U8, ldq, rows, d, qt, HALO_CUDA_U8, ldqt, rows_pad, s));
}

// The forward's codes of X (which 0) or W (1), rows x d with leading dimension d: row-major q [rows][ldq] for the
// product and, where the layer saves its codes transposed (tposed), qt [d][ldqt] from the same quantization (levels
// 1-2: rotated by h). skip_absmax: the amax is in its slot already (HALO_CUDA_X_AMAX: level 0, or x_rot_amax).
static void quantize_fwd(halo_cuda_linear *L, const halo_cuda_had *h, int which, const halo_bf16 *in, int rows, int d,
                         uint8_t *q, long ldq, uint8_t *qt, long ldqt, int rows_pad, const halo_cuda_alpha_job *aj,
                         int skip_absmax, cudaStream_t s) {
    static const char *const name_a[2] = {"fwd absmax X", "fwd absmax W"};
    static const char *const name_q[2] = {"fwd quant X", "fwd quant W"};
    static const char *const name_qb[2] = {"fwd quant X (both layouts)", "fwd quant W (both layouts)"};
    const int slot = which ? AW : AX;
    const char *na = skip_absmax ? NULL : name_a[which];
    if (!tposed(L) || !qt) quantize_rows(L, h, in, HALO_CUDA_BF16, d, rows, d, slot, q, ldq, na, name_q[which], 0, aj, s);
    else if (h) quantize_rows_both(L, h, in, d, rows, d, slot, q, ldq, qt, ldqt, rows_pad, aj, na, name_qb[which], s);
    else quantize_both(L, in, d, rows, d, slot, q, ldq, qt, ldqt, rows_pad, aj, na, name_qb[which], s);
}

__global__ void k_store_f32(void *out, int out_f32, long ldo, const float *in, long ldi, int rows, int cols, int acc) {
    const long total = (long)rows * cols;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const long r = i / cols, c = i - r * cols;
        const float v = in[r * ldi + c];
        if (out_f32) {
            float *o = (float *)out + r * ldo + c;
            *o = acc ? *o + v : v;
        } else {
            ((bf16 *)out)[r * ldo + c] = __float2bfloat16_rn(v);
        }
    }
}

extern "C" void halo_cuda_store_f32(void *out, int out_f32, long ldo, const float *in, long ldi, int rows, int cols,
                                    int accumulate, cudaStream_t s) {
    const long total = (long)rows * cols;
    if (total <= 0) return;
    const int grid = total / 256 + 1 < 8192 ? (int)(total / 256 + 1) : 8192;
    k_store_f32<<<grid, 256, 0, s>>>(out, out_f32, ldo, in, ldi, rows, cols, accumulate && out_f32);
    CUDA_LAUNCH_CHECK();
}

// D [M][N] = A B^T * alpha (A [M][K], B [N][K], K-major); INT8 goes through an int32 buffer unless the own kernel
// (int8_gemm.cu) takes the call, which dequantizes in its epilogue (post 0 only). Written to out: its first
// Mo rows and No columns. post: 0 = the dequantized product (= or, when accumulate and out_f32, +=); 1 = rows rotated
// by H_m^T (hm.d == No); 2 = then the columns by H_b (INT8 own kernel only: the caller checked hb_fused and
// halo_cuda_gemm_s8_dq_ok). FP8 writes straight into out only when the shapes agree and out suits cuBLASLt (256-byte
// aligned, leading dimension a multiple of 16), else through an fp32 scratch.
// which: 0 = Y, 1 = E_X, 2 = G (profiling names only).
// res (forward only, fp32 [Mo][ldo], may be out): out = res + the product (accumulate must be 0).
static int product(halo_cuda_linear *L, const uint8_t *A, long lda, const uint8_t *B, long ldb, int M, int N, int K,
                   int Mo, int No, int alpha_slot, int post, void *out, int out_f32, long ldo, int accumulate,
                   int which, const float *res, cudaStream_t s) {
    static const char *gemm_name[3] = {"fwd gemm Y", "bwd gemm E_X", "bwd gemm G"};
    static const char *post_name[3][2] = {{"fwd store Y", "fwd H_m^T Y"}, {"bwd store E_X", "bwd H_m^T E_X"},
                                          {"bwd store G", "bwd H_m^T G"}};
    const float *alpha = L->dev + alpha_slot;
    const double ab = (double)M * K + (double)N * K, mn = (double)M * N, mono = (double)Mo * No;
    const double out_b = mono * ((out_f32 ? 4 : 2) + (accumulate && out_f32 ? 4 : 0));
    const char *pn = post_name[which][post ? 1 : 0];
    int rc = HALO_OK;
    if (post == 2) {   // H_m^T and H_b in the own kernel's epilogue (hb_fused)
        PROF("bwd gemm E_X + H_m^T + H_b", ab + out_b,
             rc = halo_cuda_gemm_s8_dq_tok(out, out_f32, ldo, NULL, accumulate && out_f32, (const int8_t *)A, lda,
                                           (const int8_t *)B, ldb, M, N, K, Mo, No, alpha, &L->hm, &L->hb, s));
        return rc;
    }
    if (L->prec == HALO_PREC_FP8) {
        const int direct = !post && M == Mo && N == No && ldo % 16 == 0 && ((uintptr_t)out & 255) == 0;
        if (direct && res && ((uintptr_t)res & 255) == 0) {   // cuBLASLt adds the residual (C = res, beta = 1)
            PROF(gemm_name[which], ab + out_b + 4 * mono,
                 rc = halo_cuda_gemm_fp8_res((float *)out, ldo, res, A, lda, B, ldb, M, N, K, alpha, s));
            return rc;
        }
        if (res && res != out) {   // else: copy it into out, then accumulate there
            PROF("fwd copy residual", 8.0 * mono, CUDA_CHECK(cudaMemcpy2DAsync(out, 4 * ldo, res, 4 * ldo, 4 * (size_t)No,
                                                                                Mo, cudaMemcpyDeviceToDevice, s)));
        }
        if (res) accumulate = 1;
        if (direct) {
            PROF(gemm_name[which], ab + out_b,
                 rc = halo_cuda_gemm_fp8(out, out_f32, ldo, A, lda, B, ldb, M, N, K, alpha, accumulate, s));
            return rc;
        }
        float *T = (float *)ws(L, 0, sizeof(float) * (size_t)M * N);
        PROF(gemm_name[which], ab + 4 * mn, rc = halo_cuda_gemm_fp8(T, 1, N, A, lda, B, ldb, M, N, K, alpha, 0, s));
        if (rc) return HALO_ERR;
        if (post) PROF(pn, 4 * mono + out_b,
                       halo_cuda_had_rows(&L->hm, 1, T, HALO_CUDA_F32, N, NULL, out, out_f32, ldo, accumulate, Mo, s));
        else PROF(pn, 4 * mono + out_b, halo_cuda_store_f32(out, out_f32, ldo, T, N, Mo, No, accumulate, s));
        return HALO_OK;
    }
    // dequantized (and, post 1 with a small-block H_m, rotated) in the product's epilogue (int8_gemm.cu)
    if ((!post || halo_cuda_gemm_s8_dq_rot_ok(&L->hm, No)) && halo_cuda_gemm_s8_dq_suits(M, N, K) &&
        halo_cuda_gemm_s8_dq_ok(out, out_f32, ldo, res, (const int8_t *)A, lda, (const int8_t *)B, ldb, M, N, K, Mo,
                                No)) {
        if (which == 0 && !post && L->lora_r && !L->tele_on && lora_epilogue_on() &&
            halo_cuda_gemm_s8_dq_lora_ok(L->lora_u, L->lora_b, L->lora_r)) {   // + a LoRA adapter's U B^T
            PROF("fwd gemm Y + LoRA U B^T", ab + out_b + (res ? 4 * mono : 0) + 2.0 * L->lora_r * (Mo + No),
                 rc = halo_cuda_gemm_s8_dq_lora(out, out_f32, ldo, res, accumulate && out_f32, (const int8_t *)A, lda,
                                                (const int8_t *)B, ldb, M, N, K, Mo, No, alpha, L->lora_u, L->lora_b,
                                                L->lora_r, s));
            L->lora_added = rc == HALO_OK;
            return rc;
        }
        static const char *fused_name[3] = {"fwd gemm Y + H_m^T", "bwd gemm E_X + H_m^T", "bwd gemm G + H_m^T"};
        if (which == 1 && L->ex_sw_on && !out_f32 && !res &&
            halo_cuda_gemm_s8_dq_swiglu_ok((const halo_bf16 *)out, ldo, No, &L->ex_sw)) {   // + gate/up E_Y amax
            PROF(post ? "bwd gemm E_X + H_m^T + SwiGLU amax" : "bwd gemm E_X + SwiGLU amax",
                 ab + out_b + 4.0 * Mo * No,
                 rc = halo_cuda_gemm_s8_dq_swiglu((halo_bf16 *)out, ldo, (const int8_t *)A, lda, (const int8_t *)B,
                                                  ldb, M, N, K, Mo, No, alpha, post ? &L->hm : NULL, &L->ex_sw, s));
            L->ex_sw_done = rc == HALO_OK;
            return rc;
        }
        if (which == 2 && L->g_ss && out_f32 && !res) {   // + G's sum of squares (halo_cuda_linear_g_sumsq)
            PROF(post ? "bwd gemm G + H_m^T + sumsq" : "bwd gemm G + sumsq", ab + out_b,
                 rc = halo_cuda_gemm_s8_dq_sumsq((float *)out, ldo, accumulate, (const int8_t *)A, lda,
                                                 (const int8_t *)B, ldb, M, N, K, Mo, No, alpha,
                                                 post ? &L->hm : NULL, L->g_ss, s));
            L->g_ss_added = rc == HALO_OK;
            return rc;
        }
        PROF(post ? fused_name[which] : gemm_name[which], ab + out_b + (res ? 4 * mono : 0),
             rc = halo_cuda_gemm_s8_dq(out, out_f32, ldo, res, accumulate && out_f32, (const int8_t *)A, lda,
                                       (const int8_t *)B, ldb, M, N, K, Mo, No, alpha, post ? &L->hm : NULL, s));
        return rc;
    }
    int32_t *C = (int32_t *)ws(L, 0, sizeof(int32_t) * (size_t)M * N);
    PROF(gemm_name[which], ab + 4 * mn,
         rc = halo_cuda_gemm_s8(C, N, (const int8_t *)A, lda, (const int8_t *)B, ldb, M, N, K, s));
    if (rc) return HALO_ERR;
    if (res) PROF(pn, 8 * mono + out_b, halo_cuda_dequant_i32_res((float *)out, ldo, C, N, Mo, No, alpha, res, s));
    else if (!post) PROF(pn, 4 * mono + out_b,
                         halo_cuda_dequant_i32(out, out_f32, ldo, C, N, Mo, No, alpha, NULL, NULL, accumulate, s));
    else PROF(pn, 4 * mono + out_b,
              halo_cuda_had_rows(&L->hm, 1, C, HALO_CUDA_I32, N, alpha, out, out_f32, ldo, accumulate, Mo, s));
    return HALO_OK;
}

extern "C" float *halo_cuda_linear_x_amax(halo_cuda_linear *L) { return L->dev + AX; }
extern "C" int *halo_cuda_linear_x_nonfinite(halo_cuda_linear *L) { return nonfin_of(L, AX); }
extern "C" int *halo_cuda_linear_ey_nonfinite(halo_cuda_linear *L) { return nonfin_of(L, AE); }

static int log2_of(int block) {   // block: a power of two
    int b = 0;
    while ((1 << b) < block) b++;
    return b;
}

// Levels 1-2: 1 when X's producer can take the rotated X's amax: H_m in power-of-two blocks of 8..256 (the
// quantizer rotates again anyway) over m inputs, m % 256 == 0; *lb = log2(block), *scale = the plan's.
// HALO_CUDA_X_ROT_AMAX=0: never (the layer's own absmax pass, to compare).
static int g_x_rot_amax = -1;
extern "C" void halo_cuda_x_rot_amax(int on) { g_x_rot_amax = on ? 1 : 0; }
static int rot_amax_plan(halo_cuda_linear *L, int m) {   // a warp's 256 values of a row hold whole H_m blocks
    return L->level >= 1 && m % 256 == 0 && plan_hm(L, m) == HALO_OK && rot_cheap(&L->hm) && L->hm.block >= 8;
}
static int x_rot_amax_ok(halo_cuda_linear *L, int m) {
    return env_switch(&g_x_rot_amax, "HALO_CUDA_X_ROT_AMAX") && rot_amax_plan(L, m);
}

// W's amax from the optimizer's update (cuda_adamw_segments): level 0, or levels 1-2 where X's producer could take the
// rotated amax (the same H_m along the same m inputs). HALO_CUDA_W_AMAX=0: never (the layer's own absmax pass).
static int g_w_amax = -1;
extern "C" void halo_cuda_w_amax(int on) { g_w_amax = on ? 1 : 0; }
static int w_amax_ok(halo_cuda_linear *L, int m) {
    return env_switch(&g_w_amax, "HALO_CUDA_W_AMAX") && (L->level == 0 || rot_amax_plan(L, m));
}
extern "C" int halo_cuda_linear_w_amax(halo_cuda_linear *L, int m, float **amax, int *lb, float *scale) {
    if (!w_amax_ok(L, m)) return 0;
    *lb = L->level ? log2_of(L->hm.block) : 0;
    *scale = L->level ? L->hm.scale : 1.f;
    *amax = L->dev + AW;
    return 1;
}
extern "C" int halo_cuda_linear_x_rot_amax(halo_cuda_linear *L, int m, int *lb, float *scale) {
    if (!x_rot_amax_ok(L, m)) return 0;
    *lb = log2_of(L->hm.block);
    *scale = L->hm.scale;
    return 1;
}

// Level 2: whether E_Y's producer can take max |H_b^T E_Y| (halo_cuda_linear_ey_rot_amax): the one-pass column
// kernels with G's codes riding along (the quantizer pass writes them then), blocks of 8..64 tokens.
static int g_ey_rot_amax = -1;
extern "C" void halo_cuda_ey_rot_amax(int on) { g_ey_rot_amax = on ? 1 : 0; }
static int ey_rot_amax_ok(halo_cuda_linear *L, int b) {
    if (L->level != 2 || !env_switch(&g_ey_rot_amax, "HALO_CUDA_EY_ROT_AMAX") || !colrot_on() || plan_hb(L, b))
        return 0;
    // (G's codes can ride along: b16 rows and leading dimension are multiples of 8, one pass; the backward checks
    // their buffer's alignment and takes its own absmax pass should that fail)
    const halo_cuda_had *h = &L->hb;
    return halo_cuda_colrot_ok(h) && h->block >= 8 && h->block <= 64 && L->hb_pad >= pad16(b);
}
extern "C" int halo_cuda_linear_ey_rot_amax(halo_cuda_linear *L, int b, int *lb, float *scale, float **amax,
                                            int **nonfinite) {
    if (!ey_rot_amax_ok(L, b)) return 0;
    *lb = log2_of(L->hb.block);
    *scale = L->hb.scale;
    *amax = L->dev + AER;
    *nonfinite = nonfin_of(L, AER);
    return 1;
}

extern "C" int halo_cuda_linear_forward_ex(halo_cuda_linear *L, const halo_bf16 *X, const halo_bf16 *W, void *Y,
                                           int y_f32, long ldy, const float *R, int b, int m, int n, cudaStream_t s) {
    return halo_cuda_linear_forward_flags(L, X, W, Y, y_f32, ldy, R, 0, b, m, n, s);
}

// ---- delayed scaling (halo_cuda.h): the last call's amax in one of two slots per tensor, the next call's recorded in
// the other, so that nothing copies a scale

extern "C" void halo_cuda_linear_delayed(halo_cuda_linear *L, int on) {
    L->delayed = on != 0;
    if (!on) L->x_hist = L->ey_hist = 0;
    L->xc_on = L->ec_on = 0;
}

extern "C" void halo_cuda_linear_delayed_hist(halo_cuda_linear *L, int h[2], int set) {
    if (set) { L->x_hist = h[0]; L->ey_hist = h[1]; }
    else { h[0] = L->x_hist; h[1] = L->ey_hist; }
}

// The codes' common part: the scale from slot `use`, this call's amax into slot `rec` (zeroed here; rec < 0: none
// recorded, amax_next NULL).
static void codes_common(halo_cuda_linear *L, int use, int rec, int flag_slot, halo_cuda_codes *c, cudaStream_t s) {
    c->fmt = fmt_of(L);
    c->amax = L->dev + use;
    c->amax_next = rec >= 0 ? L->dev + rec : NULL;
    c->nonfinite = nonfin_of(L, flag_slot);
    c->aj = alpha_job(c->fmt);
    if (rec >= 0) PROF("memset amax", 4, CUDA_CHECK(cudaMemsetAsync(L->dev + rec, 0, sizeof(float), s)));
}

// E_Y's codes from its producer, scaled by slot `use` (delayed: the last call's; the spec's form: this call's, AE),
// with this call's amax recorded into `rec` (< 0: none); 0 where the form is off (`on` 0) or the layer or the buffers
// do not take them.
static int ey_codes_fill(halo_cuda_linear *L, int on, int b, int n, uint8_t *q, long ldq, uint8_t *qt, int want_ex,
                         int want_g, int use, int rec, halo_cuda_codes *c, cudaStream_t s) {
    memset(c, 0, sizeof *c);
    L->ec_on = 0;
    if (!on || L->level > 1 || L->tele_on || !L->have_fwd || b != L->b || n != L->n || n % 16 || (!want_ex && !want_g))
        return 0;
    if (want_ex && (!q || ldq % 16 || (uintptr_t)q % 16)) return 0;
    if (want_g && (!qt || (uintptr_t)qt % 8)) return 0;
    c->q = want_ex ? q : NULL;
    c->ldq = ldq;
    c->qt = want_g ? qt : NULL;
    c->ldqt = c->rows_pad = (int)pad16(b);
    codes_common(L, use, rec, AE, c, s);
    if (want_ex) alpha_add(&c->aj, L->dev + ALEX, c->amax, aw_of(L));   // the products' scales, as the quantizer's
    if (want_g) alpha_add(&c->aj, L->dev + ALG, c->amax, L->ax_use);
    L->ec_on = 1;
    L->ec_b = b;
    L->ec_rec = rec >= 0 ? rec : use;   // (the backward's next scale slot: delayed, this call's record)
    L->ec_q = c->q;
    L->ec_qt = c->qt;
    L->ec_ldq = ldq;
    return 1;
}

extern "C" int halo_cuda_linear_ey_codes(halo_cuda_linear *L, int b, int n, uint8_t *q, long ldq, uint8_t *qt,
                                         int want_ex, int want_g, halo_cuda_codes *c, cudaStream_t s) {
    const int use = L->ey_hist - 1, rec = use == AE ? AED : AE;
    return ey_codes_fill(L, L->delayed && L->ey_hist, b, n, q, ldq, qt, want_ex, want_g, use, rec, c, s);
}

static int g_ey_codes_spec = -1;
extern "C" void halo_cuda_ey_codes_spec(int on) { g_ey_codes_spec = on != 0; }
extern "C" int halo_cuda_ey_codes_spec_on(void) { return env_switch(&g_ey_codes_spec, "HALO_CUDA_EY_CODES_SPEC"); }
extern "C" int halo_cuda_linear_ey_codes_now(halo_cuda_linear *L, int b, int n, uint8_t *q, long ldq, uint8_t *qt,
                                             int want_ex, int want_g, halo_cuda_codes *c, cudaStream_t s) {
    return ey_codes_fill(L, halo_cuda_ey_codes_spec_on(), b, n, q, ldq, qt, want_ex, want_g, AE, -1, c, s);
}

// Off by default: no step gain on an H100 in either form measured (dev/cuda/NOTES.md runs 30-31).
// HALO_CUDA_W_CODES=1 or halo_cuda_w_codes_on(1) turns it on.
static int g_w_codes = -1;
extern "C" void halo_cuda_w_codes_on(int on) { g_w_codes = on != 0; }
extern "C" int halo_cuda_linear_w_codes(halo_cuda_linear *L, int m, int n, uint8_t **q, int *fmt, float **code_amax) {
    if (!env_switch_off(&g_w_codes, "HALO_CUDA_W_CODES") || !L->delayed || L->level != 0 || L->tele_on || m % 16 ||
        n % 16 || (size_t)n * m % 256 || !w_amax_ok(L, m))
        return 0;
    const size_t bytes = (size_t)n * m;   // (m, n multiples of 16: no padding)
    if (!L->qw_rp || L->wc_m != m || L->wc_n != n) {
        if (L->qw_rp) cudaFree(L->qw_rp);
        L->qw_rp = NULL;
        CUDA_CHECK(cudaMalloc((void **)&L->qw_rp, bytes));
        L->wc_m = m;
        L->wc_n = n;
    }
    dev_grow((void **)&L->qw, &L->cap_qw, bytes);   // Q(W)^T [m][n], the level-0 saved codes the forward transposes to
    *q = L->qw_rp;
    *fmt = fmt_of(L);
    *code_amax = L->dev + AWC;
    return 1;
}

static int g_y_alpha_jobs = 1;
extern "C" void halo_cuda_y_alpha_jobs(int on) { g_y_alpha_jobs = on != 0; }
extern "C" int halo_cuda_linear_y_alpha(halo_cuda_linear *L, const float *ax, halo_cuda_alpha_job *aj) {
    L->aly_ax = NULL;
    if (!g_y_alpha_jobs || !L->qw_rp || !ax || alpha_free(aj) == HALO_CUDA_ALPHA_JOBS) return 0;
    alpha_add(aj, L->dev + ALY, ax, L->dev + AWC);
    L->aly_ax = ax;
    return 1;
}

extern "C" int halo_cuda_linear_x_codes(halo_cuda_linear *L, int b, int m, int save_g, halo_cuda_codes *c,
                                        cudaStream_t s) {
    memset(c, 0, sizeof *c);
    L->xc_on = 0;
    if (!L->delayed || !L->x_hist || L->level != 0 || L->tele_on || L->xsrc || m % 16 || b < 1) return 0;
    const int use = L->x_hist - 1, rec = use == AX ? AXD : AX;
    c->q = (uint8_t *)ws(L, 7, (size_t)b * m);
    c->ldq = m;
    c->qt = save_g ? (uint8_t *)dev_grow((void **)&L->qx, &L->cap_qx, qx_bytes(L, b, m)) : NULL;
    c->ldqt = c->rows_pad = (int)pad16(b);
    codes_common(L, use, rec, AX, c, s);
    L->xc_on = 1;
    L->xc_b = b;
    L->xc_use = use;
    L->xc_rec = rec;
    return 1;
}

static int forward_body(halo_cuda_linear *L, const halo_bf16 *X, const halo_bf16 *W, void *Y, int y_f32, long ldy,
                        const float *R, int flags, int b, int m, int n, cudaStream_t s) {
    if (check(L, b, m, n)) return HALO_ERR;
    if (ldy < n) return halo_fail("%s: output stride %ld < out_features %d", L->name, ldy, n);
    if (R && !y_f32) return halo_fail("%s: a residual input needs an fp32 output", L->name);
    const int xc = (flags & HALO_CUDA_X_CODES) != 0;   // X's producer wrote its codes (halo_cuda_linear_x_codes)
    const int wc = (flags & HALO_CUDA_W_CODES) != 0;   // the optimizer wrote W's (halo_cuda_linear_w_codes)
    if (wc && !(L->qw_rp && L->wc_m == m && L->wc_n == n && L->level == 0 && !L->tele_on))
        return halo_fail("%s: forward given W codes that halo_cuda_linear_w_codes did not arrange (%d x %d)", L->name, n,
                         m);
    const float *aly_ax = L->aly_ax;   // the producer formed the product's scale with this X amax (W codes only)
    L->aly_ax = NULL;
    if (xc && !(L->xc_on && L->xc_b == b && m % 16 == 0 && ((flags & HALO_CUDA_NO_G) || L->qx)))
        return halo_fail("%s: forward given X codes that halo_cuda_linear_x_codes did not arrange (b=%d m=%d)", L->name,
                         b, m);
    const int y_group = (flags & HALO_CUDA_Y_GROUP) != 0;   // the product recorded, not run
    if (y_group && !(y_groupable(L) && !R && !L->lora_r))
        return halo_fail("%s: a stacked forward needs INT8, no telemetry, adapter or residual "
                         "(halo_cuda_linear_y_group_ok)", L->name);
    L->yg_set = 0;
    L->xc_on = 0;
    L->have_fwd = 0;
    L->b = b; L->m = m; L->n = n;
    const long mp = pad16(m), np = pad16(n);
    const halo_cuda_had *h = NULL;
    if (L->level >= 1) {
        if (plan_hm(L, m)) return HALO_ERR;
        h = &L->hm;
    }
    const int t0 = tposed(L);
    const int no_g = t0 && (flags & HALO_CUDA_NO_G);   // X's codes only row-major, in the scratch
    const long b16 = pad16(b);
    // saved W codes (level 0: Q(W)^T [mp][np]) and the row-major ones this product reads
    uint8_t *qw = (uint8_t *)dev_grow((void **)&L->qw, &L->cap_qw, (size_t)np * mp);
    uint8_t *qw_row = wc ? L->qw_rp : t0 ? (uint8_t *)ws(L, y_group ? 16 + L->exg_pos : 3, (size_t)np * mp) : qw;
    // X's codes: those of the sharing source when it quantized this very X last, else our own (level 0: the source's
    // row-major codes must still be in its workspace)
    const halo_cuda_linear *xs = L->xsrc;
    const int borrow = !xc && xs && xs->have_fwd && xs->x_in == X && xs->b == b && xs->m == m && xs->prec == L->prec &&
                       xs->level == L->level && (!t0 || ws_of((halo_cuda_linear *)xs)->xrow_gen == xs->xgen) &&
                       (no_g || xs->qx_use);
    L->x_in = X;
    L->w_in = W;
    if (!wc && (mp != m || np != n)) {
        PROF("memset pad", (double)np * mp, CUDA_CHECK(cudaMemsetAsync(qw_row, 0, (size_t)np * mp, s)));
        if (t0) PROF("memset pad", (double)np * mp, CUDA_CHECK(cudaMemsetAsync(qw, 0, (size_t)np * mp, s)));
    }
    // X's amax from its producer (level 0: the unrotated X; levels 1-2: the rotated one, x_rot_amax_ok), else zeroed
    // here for the absmax pass
    const int x_amax = xc || ((flags & HALO_CUDA_X_AMAX) && (L->level == 0 || x_rot_amax_ok(L, m)));
    // W's from the optimizer's update that wrote W (halo_cuda_linear_w_amax), else zeroed here for the absmax pass
    // (with W codes, the update's amax of the W it wrote stays for the next update: see halo_cuda_linear_w_codes)
    const int w_amax = wc || ((flags & HALO_CUDA_W_AMAX) && w_amax_ok(L, m));
    if (!x_amax && !w_amax) PROF("memset amax", 8, CUDA_CHECK(cudaMemsetAsync(L->dev + AX, 0, 2 * sizeof(float), s)));
    else if (!x_amax || !w_amax)
        PROF("memset amax", 4, CUDA_CHECK(cudaMemsetAsync(L->dev + (x_amax ? AW : AX), 0, sizeof(float), s)));
    const uint8_t *qx_row;
    int y_aj_done = 0;
    if (borrow) {
        L->qx_use = xs->qx_use;
        L->ax_use = xs->ax_use;
        L->xgen = xs->xgen;
        qx_row = t0 ? (const uint8_t *)ws_of((halo_cuda_linear *)xs)->buf[7] : xs->qx_use;
    } else if (xc) {   // level 0: the codes are in the row-major scratch and the saved transposed buffer already
        L->xgen = ++g_xgen;
        ws_of(L)->xrow_gen = L->xgen;
        L->qx_use = no_g ? NULL : L->qx;
        L->ax_use = L->dev + L->xc_use;
        L->x_hist = 1 + L->xc_rec;
        qx_row = (const uint8_t *)ws_of(L)->buf[7];
    } else {
        uint8_t *qx = no_g ? NULL : (uint8_t *)dev_grow((void **)&L->qx, &L->cap_qx, qx_bytes(L, b, m));
        uint8_t *xr = t0 ? (uint8_t *)ws(L, 7, (size_t)b * mp) : qx;
        // zero codes in the padding (the quantizers write the first m columns of the first n rows only)
        if (mp != m) {
            PROF("memset pad", (double)b * mp, CUDA_CHECK(cudaMemsetAsync(xr, 0, (size_t)b * mp, s)));
            if (qx && t0) PROF("memset pad", (double)mp * b16, CUDA_CHECK(cudaMemsetAsync(qx, 0, (size_t)mp * b16, s)));
        }
        L->xgen = ++g_xgen;
        halo_cuda_alpha_job yaj = alpha_job(fmt_of(L));   // W codes: the product's scale, formed by this quantizer
        if (wc) alpha_add(&yaj, L->dev + ALY, L->dev + AX, L->dev + AWC);
        y_aj_done = wc;
        quantize_fwd(L, h, 0, X, b, m, xr, mp, qx, b16, (int)b16, wc ? &yaj : NULL, x_amax, s);   // Q(X [H_m])
        if (t0) ws_of(L)->xrow_gen = L->xgen;
        L->qx_use = qx;
        L->ax_use = L->dev + AX;
        if (L->level == 0) L->x_hist = 1 + AX;   // delayed scaling's first scale: this call's own
        qx_row = xr;
    }
    // Q(W) (levels 1-2: Q(W H_m)), in both layouts unless halo_cuda_fwd_tcodes(0); the quantizer also forms the
    // product's scale. W codes: the product's scale by X's producer, or by X's quantizer above (y_aj), else here.
    L->aw_slot = wc ? AWC : 0;
    if (!wc) {
        halo_cuda_alpha_job aj = alpha_job(fmt_of(L));
        alpha_add(&aj, L->dev + ALY, L->ax_use, L->dev + AW);
        quantize_fwd(L, h, 1, W, n, m, qw_row, mp, qw, np, (int)np, &aj, w_amax, s);
    } else if (!y_aj_done && aly_ax != L->ax_use)
        PROF("fwd alpha", 8, halo_cuda_alpha(L->dev + ALY, L->ax_use, L->dev + AWC, fmt_of(L), s));
    if (wc)   // the update wrote the row-major codes: Q(W)^T for the backward
        PROF("fwd transpose W codes", 2.0 * n * m,
             halo_cuda_transpose(L->qw_rp, HALO_CUDA_U8, m, n, m, qw, HALO_CUDA_U8, np, (int)np, s));
    if (y_group) {   // recorded for halo_cuda_linear_y_group_run
        L->yg = (halo_cuda_s8_seg){(const int8_t *)qx_row, (const int8_t *)qw_row, mp, mp, (int)mp, L->dev + ALY};
        L->yg_Y = Y;
        L->yg_f32 = y_f32;
        L->yg_ldy = ldy;
        L->yg_np = (int)np;
        L->yg_set = 1;
    } else if (product(L, qx_row, mp, qw_row, mp, b, (int)np, (int)mp, b, n, ALY, 0, Y, y_f32, ldy, 0, 0, R, s))
        return halo_fail_ctx("%s: forward: ", L->name);
    L->have_fwd = 1;
    return HALO_OK;
}

extern "C" void halo_cuda_lora_epilogue(int on) { g_lora_epi = on < 0 ? -1 : on != 0; }
extern "C" void halo_cuda_linear_lora_next(halo_cuda_linear *L, const halo_bf16 *U, const halo_bf16 *B, int r) {
    L->lora_u = U;
    L->lora_b = B;
    L->lora_r = r;
}
extern "C" int halo_cuda_linear_lora_added(const halo_cuda_linear *L) { return L->lora_added; }

static int forward_one(halo_cuda_linear *L, const halo_bf16 *X, const halo_bf16 *W, void *Y, int y_f32, long ldy,
                       const float *R, int flags, int b, int m, int n, cudaStream_t s);
extern "C" int halo_cuda_linear_forward_flags(halo_cuda_linear *L, const halo_bf16 *X, const halo_bf16 *W, void *Y,
                                              int y_f32, long ldy, const float *R, int flags, int b, int m, int n,
                                              cudaStream_t s) {
    L->lora_added = 0;
    const int rc = forward_one(L, X, W, Y, y_f32, ldy, R, flags, b, m, n, s);
    L->lora_r = 0;   // the adapter was for this forward only
    return rc;
}
static int forward_one(halo_cuda_linear *L, const halo_bf16 *X, const halo_bf16 *W, void *Y, int y_f32, long ldy,
                       const float *R, int flags, int b, int m, int n, cudaStream_t s) {
    if (!L->tele_on) return forward_body(L, X, W, Y, y_f32, ldy, R, flags, b, m, n, s);
    // telemetry: the residual's sampled rows before the product adds into them, the errors after
    const int ok = b > 0 && n > 0 && ldy >= n && (!R || y_f32);
    if (ok) halo_cuda_tele_fwd_begin(L, R, ldy, b, n, s);
    const int rc = forward_body(L, X, W, Y, y_f32, ldy, R, flags, b, m, n, s);
    if (rc == HALO_OK) halo_cuda_tele_fwd_end(L, X, W, Y, y_f32, ldy, b, m, n, s);
    return rc;
}

extern "C" int halo_cuda_linear_forward(halo_cuda_linear *L, const halo_bf16 *X, const halo_bf16 *W, void *Y,
                                        int y_f32, int b, int m, int n, cudaStream_t s) {
    return halo_cuda_linear_forward_ex(L, X, W, Y, y_f32, n, NULL, b, m, n, s);
}

// ex_sum (levels 0-1, bf16 EX, neither EX_ADD nor EX_DEFER; else NULL): EX = bf16(ex_sum + E_X), see
// halo_cuda_linear_backward_sum. g_sum_fused: -1 = not set yet (then the epilogue form, unless HALO_CUDA_SUM_FUSED=0
// in the environment), else 0 / 1.
static int g_sum_fused = -1;
extern "C" void halo_cuda_sum_fused(int on) { g_sum_fused = on ? 1 : 0; }
extern "C" int halo_cuda_sum_fusing(void) { return env_switch(&g_sum_fused, "HALO_CUDA_SUM_FUSED"); }
// EX (bf16) = the fp32 sum, rounded once: the pass the epilogue form replaces
static void round_sum(halo_bf16 *EX, const float *ex_sum, int b, int m, cudaStream_t s) {
    PROF("bwd round E_X sum", 6.0 * b * m, cuda_f32_to_bf16(EX, ex_sum, (size_t)b * m, s));
}
static int backward_body(halo_cuda_linear *L, const halo_bf16 *EY, long ldey, void *EX, int ex_f32, float *G, int flags,
                         int b, int m, int n, float *ex_sum, cudaStream_t s) {
    if (check(L, b, m, n)) return HALO_ERR;
    const int ex_add = EX && (flags & HALO_CUDA_EX_ADD), g_acc = !(flags & HALO_CUDA_G_SET);
    const int defer = EX && (flags & HALO_CUDA_EX_DEFER);
    const int group = EX && (flags & HALO_CUDA_EX_GROUP);   // E_X's product recorded, not run
    const int g_group = G && (flags & HALO_CUDA_G_GROUP);    // G's too
    if (ex_add && !ex_f32) return halo_fail("%s: adding into the input gradient needs an fp32 one", L->name);
    if (defer && (!ex_f32 || !halo_cuda_linear_ex_defer_rows(L, b)))
        return halo_fail("%s: no deferred input-gradient rotation here (it needs level 1 or 2, an fp32 sum, no "
                         "telemetry, and H_m^T not already in the products: halo_cuda_linear_ex_defer_rows)", L->name);
    if (group && (!ex_f32 || !ex_groupable(L) || ex_sum))
        return halo_fail("%s: a grouped input gradient needs an fp32 one, INT8 at level 0 or 1 and no telemetry "
                         "(halo_cuda_linear_ex_group_ok)", L->name);
    if (g_group && !ex_groupable(L))
        return halo_fail("%s: a stacked weight gradient needs INT8 at level 0 or 1 and no telemetry "
                         "(halo_cuda_linear_g_group_ok)", L->name);
    L->exg_set = 0;
    L->gg_set = 0;
    L->g_ss_added = 0;
    L->ex_sw_done = 0;
    if (!L->have_fwd) return halo_fail("%s: backward without a preceding forward", L->name);
    if (G && !L->qx_use)
        return halo_fail("%s: weight gradient after a forward that saved no X codes for it (HALO_CUDA_NO_G)", L->name);
    if (b != L->b || m != L->m || n != L->n)
        return halo_fail("%s: backward shapes b=%d m=%d n=%d differ from forward's b=%d m=%d n=%d", L->name, b, m, n,
                         L->b, L->m, L->n);
    if (ldey < n) return halo_fail("%s: gradient stride %ld < out_features %d", L->name, ldey, n);
    const int lvl = L->level, fmt = fmt_of(L);
    const long b16 = pad16(b), mp = pad16(m), np = pad16(n);
    float *amax_e = L->dev + AE;
    // E_Y's producer wrote its codes (delayed scaling, halo_cuda_linear_ey_codes) into the caller's buffers
    const int ec = (flags & HALO_CUDA_EY_CODES) != 0;
    if (ec && !(L->ec_on && L->ec_b == b && lvl < 2 && (!EX || L->ec_q) && (!G || L->ec_qt)))
        return halo_fail("%s: backward given E_Y codes that halo_cuda_linear_ey_codes did not arrange (b=%d)", L->name,
                         b);
    L->ec_on = 0;
    long ldqe = np;   // Q(E_Y)'s row stride

    // Q(E_Y) (levels 0/1: for E_X and, transposed, for G; level 2: only transposed, for G), one read of E_Y.
    uint8_t *qe = NULL, *qet = NULL;
    halo_cuda_colrot_tq tq, *tqp = NULL;   // level 2: Q(E_Y)^T written by the token rotation's first kernel
    if (ec) {   // the codes and the products' scales are there; the next call's scale is the amax recorded now
        qe = L->ec_q;
        qet = L->ec_qt;
        ldqe = L->ec_ldq;
        L->ey_hist = 1 + L->ec_rec;
    } else if ((EX && lvl < 2) || G) {
        if (lvl < 2) L->ey_hist = 1 + AE;   // delayed scaling's first scale: this call's own
        if (!(flags & HALO_CUDA_EY_AMAX)) {
            PROF("memset amax", 4, CUDA_CHECK(cudaMemsetAsync(amax_e, 0, sizeof(float), s)));
            PROF("bwd absmax E_Y", 2.0 * b * n,
                 halo_cuda_absmax_rows(NULL, 0, EY, HALO_CUDA_BF16, ldey, b, n, amax_e, NULL, nonfin_of(L, AE),
                                       s));
        }
        if (EX && lvl < 2) {   // (a group's linears keep theirs until the group's product: slots 8..11)
            qe = (uint8_t *)ws(L, group ? 8 + L->exg_pos : 1, (size_t)b * np);
            if (np != n) PROF("memset pad", (double)b * np, CUDA_CHECK(cudaMemsetAsync(qe, 0, (size_t)b * np, s)));
        }
        if (G) {
            qet = (uint8_t *)ws(L, g_group ? 12 + L->exg_pos : 2, (size_t)np * b16);   // (a group's: kept)
            if (np != n) PROF("memset pad", (double)np * b16, CUDA_CHECK(cudaMemsetAsync(qet, 0, (size_t)np * b16, s)));
        }
        // level 2 with the column kernels: G's codes come from the first kernel that reads E_Y for its token rotation
        if (G && EX && lvl == 2 && colrot_on()) {
            if (plan_hb(L, b)) return HALO_ERR;
            tq = (halo_cuda_colrot_tq){qet, b16, (int)b16, fmt, amax_e};
            if (halo_cuda_colrot_ok(&L->hb) && L->hb_pad >= b16 && halo_cuda_colrot_tq_ok(&L->hb, &tq)) tqp = &tq;
        }
        // the quantizer also forms the scales of the products that read Q(E_Y): E_X (levels 0, 1) and G
        halo_cuda_alpha_job aj = alpha_job(fmt);
        if (EX && lvl < 2) alpha_add(&aj, L->dev + ALEX, amax_e, aw_of(L));
        if (G) alpha_add(&aj, L->dev + ALG, amax_e, L->ax_use);
        if (!tqp)
            PROF("bwd quant E_Y (both layouts)", 2.0 * b * n + (qe ? (double)b * n : 0) + (qet ? (double)n * b16 : 0),
                 halo_cuda_quant_tile_alpha(EY, HALO_CUDA_BF16, ldey, b, n, amax_e, fmt, qe, np, qet, b16, (int)b16,
                                            &aj, s));
    }

    if (EX) {
        // Q(W H_m)^T [mp][np]: the E_X product's second operand, K-major (zero codes in the padding); level 0 saved it
        uint8_t *qwt = L->qw;
        if (!tposed(L)) {
            qwt = (uint8_t *)ws(L, 3, (size_t)mp * np);
            PROF("bwd transpose qW", 2.0 * np * mp,
                 halo_cuda_transpose(L->qw, HALO_CUDA_U8, mp, (int)np, (int)mp, qwt, HALO_CUDA_U8, np, (int)np, s));
        }
        if (lvl < 2 && group) {
            L->exg = (halo_cuda_s8_seg){(const int8_t *)qe, (const int8_t *)qwt, ldqe, np, (int)np, L->dev + ALEX};
            L->exg_post = lvl == 1 && !defer;
            L->exg_mp = (int)mp;
            L->exg_set = 1;
        } else if (lvl < 2) {
            const int post = lvl == 1 && !defer;
            // the group's sum added in the own INT8 kernel's epilogue, rounded to bf16 there (product() takes this
            // path for these arguments); else added into ex_sum and rounded by a pass
            const int sum_fused = ex_sum && halo_cuda_sum_fusing() &&
                                  L->prec == HALO_PREC_INT8 && (!post || halo_cuda_gemm_s8_dq_rot_ok(&L->hm, m)) &&
                                  halo_cuda_gemm_s8_dq_ok(EX, 0, m, ex_sum, (const int8_t *)qe, ldqe,
                                                          (const int8_t *)qwt, np, b, (int)mp, (int)np, b, m);
            if (ex_sum && !sum_fused) {
                if (product(L, qe, ldqe, qwt, np, b, (int)mp, (int)np, b, m, ALEX, post, ex_sum, 1, m, 1, 1, NULL, s))
                    return halo_fail_ctx("%s: input gradient: ", L->name);
                round_sum((halo_bf16 *)EX, ex_sum, b, m, s);
            } else if (product(L, qe, ldqe, qwt, np, b, (int)mp, (int)np, b, m, ALEX, post, EX, ex_f32, m, ex_add, 1,
                               sum_fused ? ex_sum : NULL, s))
                return halo_fail_ctx("%s: input gradient: ", L->name);
        } else {
            if (plan_hb(L, b)) return HALO_ERR;
            const int bp = L->hb_pad;
            // Q(H_b^T [E_Y; 0]) as [bp][np] codes, zero in the columns n..np-1.
            qe = (uint8_t *)ws(L, 1, (size_t)bp * np);
            // E_X's scale product, formed by the quantizer of H_b^T E_Y (after the absmax pass made AER final)
            halo_cuda_alpha_job ajx = alpha_job(fmt);
            alpha_add(&ajx, L->dev + ALEX, L->dev + AER, L->dev + AW);
            if (colrot_on() && halo_cuda_colrot_ok(&L->hb)) {
                // column kernels on E_Y in its layout: the first stages into fp32 scratch, then the last ones twice
                float *amax = L->dev + AER;
                const size_t scb = halo_cuda_colrot_scratch(&L->hb, n);
                float *T = (float *)ws(L, 4, scb + 16);
                const int two = scb > 0;
                const double rd = two ? 4.0 * bp * n : 2.0 * b * n;   // what the last passes read
                // E_Y's producer took max |H_b^T E_Y| (HALO_CUDA_EYR_AMAX): no absmax pass; G's codes and scale
                // ride along the quantizer pass instead
                const int eyr = (flags & HALO_CUDA_EYR_AMAX) && (flags & HALO_CUDA_EY_AMAX) && tqp && !two &&
                                ey_rot_amax_ok(L, b);
                const double tqb = tqp ? (double)n * b16 : 0;   // G's codes, when they ride along
                if (eyr) {
                    alpha_add(&ajx, L->dev + ALG, amax_e, L->ax_use);
                    PROF("bwd quant H_b E_Y (cols) + Q(E_Y)^T", rd + (double)bp * np + tqb,
                         halo_cuda_colrot_quant(&L->hb, EY, ldey, b, n, T, amax, fmt, qe, np, (int)np, tqp, &ajx, s));
                } else {
                    PROF("memset amax", 4, CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(float), s)));
                    if (two)
                        PROF(tqp ? "bwd H_b E_Y first stages + Q(E_Y)^T" : "bwd H_b E_Y first stages (cols)",
                             2.0 * b * n + 4.0 * bp * n + tqb, halo_cuda_colrot_first(&L->hb, EY, ldey, b, n, T, tqp, s));
                    halo_cuda_alpha_job ajg = alpha_job(fmt);   // G's, when its codes ride along: by the absmax pass
                    if (tqp) alpha_add(&ajg, L->dev + ALG, amax_e, L->ax_use);
                    PROF(tqp && !two ? "bwd absmax H_b E_Y + Q(E_Y)^T" : "bwd absmax H_b E_Y (cols)",
                         rd + (two ? 0 : tqb),
                         halo_cuda_colrot_absmax(&L->hb, EY, ldey, b, n, T, amax, nonfin_of(L, AER), tqp, &ajg, s));
                    PROF("bwd quant H_b E_Y (cols)", rd + (double)bp * np,
                         halo_cuda_colrot_quant(&L->hb, EY, ldey, b, n, T, amax, fmt, qe, np, (int)np, NULL, &ajx, s));
                }
            } else {
                // rows of the zero-padded E_Y^T [n][bp] rotated by H_b (row form x H), then the codes transposed back
                halo_bf16 *eyt = (halo_bf16 *)ws(L, 4, (size_t)n * bp * 2 + (size_t)n * bp);
                uint8_t *codes_t = (uint8_t *)eyt + (size_t)n * bp * 2;
                PROF("bwd transpose E_Y^T", 2.0 * b * n + 2.0 * n * bp,
                     halo_cuda_transpose(EY, HALO_CUDA_BF16, ldey, b, n, eyt, HALO_CUDA_BF16, bp, bp, s));
                quantize_rows(L, &L->hb, eyt, HALO_CUDA_BF16, bp, n, bp, AER, codes_t, bp, "bwd absmax H_b E_Y",
                              "bwd quant H_b E_Y", 1, &ajx, s);
                PROF("bwd transpose codes H_b E_Y", (double)n * bp + (double)bp * np,
                     halo_cuda_transpose(codes_t, HALO_CUDA_U8, bp, n, bp, qe, HALO_CUDA_U8, np, (int)np, s));
            }
            // R [bp][m] = [Q(H_b^T E_Y) Q(W H_m)] H_m^T (fp32), then E_X = first b rows of H_b R: by the column
            // kernel in R's layout, else Rt = R^T [m][bp] rotated by H_b in place (row form) and transposed back.
            const int colr = colrot_on() && halo_cuda_colrot_ok(&L->hb);
            if (defer) {   // the group's sum [bp][m] before H_b (and H_m^T unless the products rotate: hm_fused)
                if (!colr) return halo_fail("%s: deferred input-gradient rotation without the column kernels", L->name);
                if (product(L, qe, np, qwt, np, bp, (int)mp, (int)np, bp, m, ALEX, hm_fused(L), EX, 1, m, ex_add, 1,
                            NULL, s))
                    return halo_fail_ctx("%s: input gradient: ", L->name);
            } else if (hb_fused(L, b) && halo_cuda_gemm_s8_dq_ok(EX, ex_f32, m, NULL, (const int8_t *)qe, np,
                                                                 (const int8_t *)qwt, np, bp, (int)mp, (int)np, b, m)) {
                // E_X = H_b [..] H_m^T straight from the product's epilogue (its first b rows)
                if (product(L, qe, np, qwt, np, bp, (int)mp, (int)np, b, m, ALEX, 2, EX, ex_f32, m, ex_add, 1, NULL, s))
                    return halo_fail_ctx("%s: input gradient: ", L->name);
            } else {
                float *R = (float *)ws(L, 5, sizeof(float) * (size_t)bp * m * (colr ? 1 : 2));
                float *Rt = R + (size_t)bp * m;
                if (product(L, qe, np, qwt, np, bp, (int)mp, (int)np, bp, m, ALEX, 1, R, 1, m, 0, 1, NULL, s))
                    return halo_fail_ctx("%s: input gradient: ", L->name);
                if (colr) {   // in R's layout, adding into EX itself with HALO_CUDA_EX_ADD
                    PROF("bwd H_b cols E_X", (8.0 * bp + 4.0 * bp + (ex_f32 ? (ex_add ? 8 : 4) : 2) * (double)b) * m,
                         halo_cuda_colrot_f32(&L->hb, R, m, m, EX, ex_f32, m, b, ex_add, s));
                } else {
                    // with HALO_CUDA_EX_ADD: E_X into scratch first, then added (the transposes cannot accumulate)
                    void *ex_out = ex_add ? ws(L, 4, sizeof(float) * (size_t)b * m) : EX;
                    PROF("bwd transpose R", 8.0 * bp * m,
                         halo_cuda_transpose(R, HALO_CUDA_F32, m, bp, m, Rt, HALO_CUDA_F32, bp, bp, s));   // [m][bp]
                    PROF("bwd H_b rows R", 8.0 * bp * m,   // H_b [..] (row form)
                         halo_cuda_had_rows(&L->hb, 1, Rt, HALO_CUDA_F32, bp, NULL, Rt, 1, bp, 0, m, s));
                    PROF("bwd transpose E_X", (4.0 + (ex_f32 ? 4 : 2)) * (double)b * m,
                         halo_cuda_transpose(Rt, HALO_CUDA_F32, bp, m, b, ex_out,
                                             ex_f32 ? HALO_CUDA_F32 : HALO_CUDA_BF16, m, m, s));
                    if (ex_add)
                        PROF("bwd add E_X", 12.0 * b * m,
                             halo_cuda_store_f32(EX, 1, m, (const float *)ex_out, m, b, m, 1, s));
                }
            }
        }
    }

    if (G) {
        // Q(X H_m)^T [mp][b16] (zero codes past b and past m), then [n][m] = Q(E_Y)^T Q(X H_m) (H_m^T at levels 1, 2)
        // into G.
        // (skipped when slot 6 already holds the transpose of these codes: layers sharing X codes)
        // (level 0: saved in that layout)
        const uint8_t *qxt = L->qx_use;
        if (!tposed(L)) {
            halo_cuda_ws *w = ws_of(L);
            uint8_t *t = (uint8_t *)ws(L, 6, (size_t)mp * b16);
            if (w->qxt_key != L->qx_use || w->qxt_gen != L->xgen) {
                PROF("bwd transpose qX", (double)b * mp + (double)mp * b16,
                     halo_cuda_transpose(L->qx_use, HALO_CUDA_U8, mp, b, (int)mp, t, HALO_CUDA_U8, b16, (int)b16, s));
                w->qxt_key = L->qx_use;
                w->qxt_gen = L->xgen;
            }
            qxt = t;
        }
        if (g_group) {   // recorded for halo_cuda_linear_g_group_run
            L->gg = (halo_cuda_s8_seg){(const int8_t *)qet, (const int8_t *)qxt, b16, b16, (int)b16, L->dev + ALG};
            L->gg_G = G;
            L->gg_post = lvl >= 1;
            L->gg_acc = g_acc;
            L->gg_mp = (int)mp;
            L->gg_set = 1;
        } else if (product(L, qet, b16, qxt, b16, (int)np, (int)mp, (int)b16, n, m, ALG, lvl >= 1, G, 1, m, g_acc, 2,
                           NULL, s))
            return halo_fail_ctx("%s: weight gradient: ", L->name);
    }
    return HALO_OK;
}

// Whether backward products of L can run in one launch with those of L0, the group's first (INT8 levels 0-1, the same
// in_features, level and H_m)
static int joins_backward_group(const halo_cuda_linear *L, const halo_cuda_linear *L0) {
    return L && ex_groupable(L) && L->m == L0->m && L->level == L0->level &&
           (L->level != 1 || (L->hm.block == L0->hm.block && L->hm.d == L0->hm.d));
}
// A group's linears told their places (the workspace slots that keep their codes until the group's launch); returns 1
static int group_places(halo_cuda_linear *const *Ls, int n) {
    for (int i = 0; i < n; i++) Ls[i]->exg_pos = i;
    return 1;
}

extern "C" int halo_cuda_linear_ex_group_ok(halo_cuda_linear *const *Ls, int n, int b) {
    if (n < 1 || n > 4 || b < 1 || !halo_cuda_gemm_s8_dq_grouping() || !halo_cuda_gemm_s8_owning()) return 0;
    for (int i = 0; i < n; i++)
        // long products gain nothing (bench_cuda_int8, H100: 1B gate+up 0.380 ms one by one, 0.382 grouped; 8B
        // 1.251 / 1.326): grouped where every K (the out_features) is at most 4096 (1B q+k+v 0.210 / 0.146)
        if (!joins_backward_group(Ls[i], Ls[0]) || Ls[i]->n > 4096) return 0;
    return group_places(Ls, n);
}

extern "C" int halo_cuda_linear_ex_group_run(halo_cuda_linear *const *Ls, int n, float *EX, int accumulate, int b,
                                             int m, cudaStream_t s) {
    halo_cuda_s8_seg seg[4];
    if (n < 1 || n > 4) return halo_fail("halo_cuda_linear_ex_group_run: %d linears (1 to 4)", n);
    for (int i = 0; i < n; i++) {
        const halo_cuda_linear *L = Ls[i];
        if (!L->exg_set || L->b != b || L->m != m || L->exg_post != Ls[0]->exg_post || L->exg_mp != Ls[0]->exg_mp)
            return halo_fail("%s: no recorded input-gradient product for this group (b=%d m=%d): its backward needs "
                             "HALO_CUDA_EX_GROUP", L->name, b, m);
        seg[i] = L->exg;
    }
    halo_cuda_linear *L = Ls[0];
    const int post = L->exg_post, mp = L->exg_mp;
    double ab = 0;
    for (int i = 0; i < n; i++) ab += ((double)b + mp) * seg[i].K;
    int rc = HALO_OK;
    if ((!post || halo_cuda_gemm_s8_dq_rot_ok(&L->hm, m)) && halo_cuda_gemm_s8_dq_group_ok(EX, m, seg, n, b, mp, b, m)) {
        PROF(post ? "bwd gemm E_X (group) + H_m^T" : "bwd gemm E_X (group)", ab + (double)b * m * (accumulate ? 8 : 4),
             rc = halo_cuda_gemm_s8_dq_group(EX, m, accumulate, seg, n, b, mp, b, m, post ? &L->hm : NULL, s));
    } else {
        for (int i = 0; i < n && rc == HALO_OK; i++)
            rc = product(Ls[i], (const uint8_t *)seg[i].A, seg[i].lda, (const uint8_t *)seg[i].B, seg[i].ldb, b, mp,
                         seg[i].K, b, m, ALEX, post, EX, 1, m, accumulate || i > 0, 1, NULL, s);
    }
    for (int i = 0; i < n; i++) Ls[i]->exg_set = 0;
    return rc == HALO_OK ? HALO_OK : halo_fail_ctx("%s (group of %d): input gradient: ", L->name, n);
}

extern "C" void halo_cuda_linear_g_sumsq(halo_cuda_linear *L, double *acc) { L->g_ss = acc; }
extern "C" void halo_cuda_linear_ex_swiglu_amax(halo_cuda_linear *L, const halo_cuda_swiglu_amax *sw) {
    L->ex_sw_on = sw != NULL;
    if (sw) L->ex_sw = *sw;
}
extern "C" int halo_cuda_linear_ex_swiglu_amax_done(const halo_cuda_linear *L) { return L->ex_sw_done; }
extern "C" int halo_cuda_linear_g_sumsq_added(const halo_cuda_linear *L) { return L->g_ss_added; }

// g_g_stack: HALO_INT8_STACK (-1: not read yet); off (the default, as g_y_stack), g_group_ok says no
static int g_g_stack = -1;
extern "C" void halo_cuda_linear_g_stack_on(int on) { g_g_stack = on ? 1 : 0; }
extern "C" int halo_cuda_linear_g_stacking(void) { return env_switch_off(&g_g_stack, "HALO_INT8_STACK"); }
extern "C" int halo_cuda_linear_g_group_ok(halo_cuda_linear *const *Ls, int n, int b) {
    if (n < 1 || n > 4 || b < 1 || !halo_cuda_linear_g_stacking() || !halo_cuda_gemm_s8_owning()) return 0;
    int small = 0;   // (some product alone fills few tiles: else stacking gains nothing)
    for (int i = 0; i < n; i++) {
        if (!joins_backward_group(Ls[i], Ls[0]) || (i + 1 < n && Ls[i]->n % 128)) return 0;
        small |= halo_cuda_gemm_s8_dq_small(Ls[i]->n, Ls[i]->m);
    }
    return small && group_places(Ls, n);
}

extern "C" int halo_cuda_linear_g_group_run(halo_cuda_linear *const *Ls, int n, int m, cudaStream_t s) {
    halo_cuda_s8_seg seg[4];
    int rows[4];
    if (n < 1 || n > 4) return halo_fail("halo_cuda_linear_g_group_run: %d linears (1 to 4)", n);
    halo_cuda_linear *L = Ls[0];
    long off = 0;
    for (int i = 0; i < n; i++) {
        const halo_cuda_linear *Li = Ls[i];
        if (!Li->gg_set || Li->m != m || Li->gg_post != L->gg_post || Li->gg_acc != L->gg_acc || Li->gg_mp != L->gg_mp)
            return halo_fail("%s: no recorded weight-gradient product for this group (m=%d): its backward needs "
                             "HALO_CUDA_G_GROUP", Li->name, m);
        if (Li->gg_G != L->gg_G + off * m)
            return halo_fail("%s: its weight gradient does not follow %s's in memory (the stacked product writes one "
                             "buffer)", Li->name, L->name);
        seg[i] = Li->gg;
        rows[i] = Li->n;
        off += Li->n;
    }
    const int post = L->gg_post, mp = L->gg_mp, acc = L->gg_acc;
    double ab = 0;
    for (int i = 0; i < n; i++) ab += ((double)rows[i] + mp) * seg[i].K;
    int rc = HALO_OK;
    if ((!post || halo_cuda_gemm_s8_dq_rot_ok(&L->hm, m)) &&
        halo_cuda_gemm_s8_dq_stack_ok(L->gg_G, m, seg, rows, n, mp, m)) {
        PROF(post ? "bwd gemm G (stack) + H_m^T" : "bwd gemm G (stack)", ab + (double)off * m * (acc ? 8 : 4),
             rc = halo_cuda_gemm_s8_dq_stack(L->gg_G, m, acc, seg, rows, n, mp, m, post ? &L->hm : NULL, s));
    } else {
        for (int i = 0; i < n && rc == HALO_OK; i++)
            rc = product(Ls[i], (const uint8_t *)seg[i].A, seg[i].lda, (const uint8_t *)seg[i].B, seg[i].ldb,
                         pad16(rows[i]), mp, seg[i].K, rows[i], m, ALG, post, Ls[i]->gg_G, 1, m, acc, 2, NULL, s);
    }
    for (int i = 0; i < n; i++) Ls[i]->gg_set = 0;
    return rc == HALO_OK ? HALO_OK : halo_fail_ctx("%s (group of %d): weight gradient: ", L->name, n);
}

// g_y_stack: HALO_INT8_Y_STACK (-1: not read yet); off (the default: no step gain measured, README), y_group_ok says no
static int g_y_stack = -1;
extern "C" void halo_cuda_linear_y_stack_on(int on) { g_y_stack = on ? 1 : 0; }
extern "C" int halo_cuda_linear_y_stacking(void) { return env_switch_off(&g_y_stack, "HALO_INT8_Y_STACK"); }
extern "C" int halo_cuda_linear_y_group_ok(halo_cuda_linear *const *Ls, int n, int b, const int *widths) {
    if (n < 1 || n > 4 || b < 1 || !halo_cuda_linear_y_stacking() || !halo_cuda_gemm_s8_owning()) return 0;
    int small = 0;   // (as g_group_ok)
    for (int i = 0; i < n; i++) {
        const halo_cuda_linear *L = Ls[i];
        if (!L || !y_groupable(L) || L->level != Ls[0]->level || (i + 1 < n && widths[i] % 256)) return 0;
        small |= halo_cuda_gemm_s8_dq_small(b, widths[i]);
    }
    return small && group_places(Ls, n);
}

extern "C" int halo_cuda_linear_y_group_run(halo_cuda_linear *const *Ls, int n, cudaStream_t s) {
    halo_cuda_s8_seg seg[4];
    int cols[4];
    if (n < 1 || n > 4) return halo_fail("halo_cuda_linear_y_group_run: %d linears (1 to 4)", n);
    halo_cuda_linear *L = Ls[0];
    const int esz = L->yg_f32 ? 4 : 2;
    long off = 0;
    for (int i = 0; i < n; i++) {
        const halo_cuda_linear *Li = Ls[i];
        if (!Li->yg_set || Li->b != L->b || Li->yg_f32 != L->yg_f32 || Li->yg_ldy != L->yg_ldy)
            return halo_fail("%s: no recorded forward product for this group (b=%d): its forward needs "
                             "HALO_CUDA_Y_GROUP", Li->name, L->b);
        if ((const char *)Li->yg_Y != (const char *)L->yg_Y + off * esz)
            return halo_fail("%s: its output columns do not follow %s's (the stacked product writes one Y)", Li->name,
                             L->name);
        seg[i] = Li->yg;
        cols[i] = i + 1 < n ? Li->n : Li->yg_np;
        off += Li->n;
    }
    double ab = 0;
    for (int i = 0; i < n; i++) ab += ((double)L->b + cols[i]) * seg[i].K;
    int rc = HALO_OK;
    if (halo_cuda_gemm_s8_dq_stack_cols_ok(L->yg_Y, L->yg_f32, L->yg_ldy, seg, cols, n, L->b, L->b, (int)off)) {
        PROF("fwd gemm Y (stack)", ab + (double)L->b * off * esz,
             rc = halo_cuda_gemm_s8_dq_stack_cols(L->yg_Y, L->yg_f32, L->yg_ldy, seg, cols, n, L->b, L->b, (int)off,
                                                  s));
    } else {
        for (int i = 0; i < n && rc == HALO_OK; i++) {
            halo_cuda_linear *Li = Ls[i];
            rc = product(Li, (const uint8_t *)seg[i].A, seg[i].lda, (const uint8_t *)seg[i].B, seg[i].ldb, Li->b,
                         Li->yg_np, seg[i].K, Li->b, Li->n, ALY, 0, Li->yg_Y, Li->yg_f32, Li->yg_ldy, 0, 0, NULL, s);
        }
    }
    for (int i = 0; i < n; i++) Ls[i]->yg_set = 0;
    return rc == HALO_OK ? HALO_OK : halo_fail_ctx("%s (group of %d): forward: ", L->name, n);
}

// halo_cuda_ex_defer: -1 = not set yet (HALO_CUDA_EX_DEFER=0 in the environment turns it off, env_switch), else 0 / 1.
static int g_ex_defer = -1;
extern "C" void halo_cuda_ex_defer(int on) { g_ex_defer = on ? 1 : 0; }
extern "C" int halo_cuda_ex_deferring(void) { return env_switch(&g_ex_defer, "HALO_CUDA_EX_DEFER"); }

extern "C" int halo_cuda_linear_ex_defer_rows(halo_cuda_linear *L, int b) {
    if (!halo_cuda_ex_deferring() || L->level < 1 || L->tele_on || b < 1) return 0;
    if (L->level == 1) return hm_fused(L) ? 0 : b;   // fused: each product rotates its own, nothing left to defer
    if (!colrot_on() || plan_hb(L, b) || !halo_cuda_colrot_ok(&L->hb)) return 0;
    return L->hb_pad;
}

extern "C" int halo_cuda_linear_ex_finish(halo_cuda_linear *L, float *R, void *out, int out_f32, int b, int m,
                                          cudaStream_t s) {
    const int rows = halo_cuda_linear_ex_defer_rows(L, b);
    if (!rows || m != L->m) return halo_fail("%s: no deferred input gradient to finish (b=%d m=%d)", L->name, b, m);
    if (L->level == 1) {
        PROF("bwd H_m^T E_X (group)", 4.0 * b * m + (out_f32 ? 4.0 : 2.0) * b * m,
             halo_cuda_had_rows(&L->hm, 1, R, HALO_CUDA_F32, m, NULL, out, out_f32, m, 0, b, s));
        return HALO_OK;
    }
    if (!hm_fused(L))   // else the products rotated already
        PROF("bwd H_m^T E_X (group)", 8.0 * rows * m,
             halo_cuda_had_rows(&L->hm, 1, R, HALO_CUDA_F32, m, NULL, R, 1, m, 0, rows, s));
    PROF("bwd H_b cols E_X (group)", (8.0 * rows + 4.0 * rows + (out_f32 ? 4 : 2) * (double)b) * m,
         halo_cuda_colrot_f32(&L->hb, R, m, m, out, out_f32, m, b, 0, s));
    return HALO_OK;
}

extern "C" int halo_cuda_linear_backward_flags(halo_cuda_linear *L, const halo_bf16 *EY, long ldey, void *EX,
                                               int ex_f32, float *G, int flags, int b, int m, int n, cudaStream_t s) {
    if (!L->tele_on) return backward_body(L, EY, ldey, EX, ex_f32, G, flags, b, m, n, NULL, s);
    // telemetry: the references (they read E_Y, W and the forward's X before E_X may overwrite X's buffer) and
    // snapshots of the rows the products add into, then the errors after
    const int ex_add = EX && (flags & HALO_CUDA_EX_ADD), g_acc = !(flags & HALO_CUDA_G_SET);
    const int ok = L->have_fwd && b == L->b && m == L->m && n == L->n && ldey >= n && !(ex_add && !ex_f32);
    if (ok) halo_cuda_tele_bwd_begin(L, EY, ldey, EX, ex_add, G, g_acc, b, m, n, s);
    const int rc = backward_body(L, EY, ldey, EX, ex_f32, G, flags, b, m, n, NULL, s);
    if (rc == HALO_OK) halo_cuda_tele_bwd_end(L, EX, ex_f32, G, b, m, n, s);
    return rc;
}

extern "C" int halo_cuda_linear_backward_sum(halo_cuda_linear *L, const halo_bf16 *EY, long ldey, halo_bf16 *EX,
                                             float *ex_sum, float *G, int flags, int b, int m, int n, cudaStream_t s) {
    if (!EX || !ex_sum || (flags & (HALO_CUDA_EX_ADD | HALO_CUDA_EX_DEFER)))
        return halo_fail("%s: a summed input gradient needs EX, the fp32 sum, and neither EX_ADD nor EX_DEFER", L->name);
    if (!L->tele_on && L->level < 2) return backward_body(L, EY, ldey, EX, 0, G, flags, b, m, n, ex_sum, s);
    const int rc = halo_cuda_linear_backward_flags(L, EY, ldey, ex_sum, 1, G, flags | HALO_CUDA_EX_ADD, b, m, n, s);
    if (rc == HALO_OK) round_sum(EX, ex_sum, b, m, s);
    return rc;
}

extern "C" int halo_cuda_linear_backward_ex(halo_cuda_linear *L, const halo_bf16 *EY, long ldey, void *EX, int ex_f32,
                                            float *G, int b, int m, int n, cudaStream_t s) {
    return halo_cuda_linear_backward_flags(L, EY, ldey, EX, ex_f32, G, 0, b, m, n, s);
}

extern "C" int halo_cuda_linear_backward(halo_cuda_linear *L, const halo_bf16 *EY, void *EX, int ex_f32, float *G,
                                         int b, int m, int n, cudaStream_t s) {
    return halo_cuda_linear_backward_ex(L, EY, n, EX, ex_f32, G, b, m, n, s);
}
