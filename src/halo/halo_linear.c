// HALO linear layer: levels 0/1/2 of docs/halo-method.md section 4 in INT8/FP8 (software quantizers, int8 GEMM or
// fp8-decoded sgemm), FP32/BF16 passthrough, and telemetry. One layer object per call site: forward saves the
// 8-bit rotated operands that the following backward uses.
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "halo/halo_linear.h"
#include "util/error.h"

// Largest dense base order used when zero-padding the token dimension for H_b.
#define HALO_HB_MAX_K 172

halo_linear_config halo_linear_config_make(halo_precision prec, int level) {
    halo_linear_config c;
    memset(&c, 0, sizeof c);
    c.prec = prec;
    c.level = level;
    c.gran = HALO_GRAN_TENSOR;
    c.block = 128;
    c.seed = 0x5eedULL;
    c.telemetry_rows = 64;
    return c;
}

const char *halo_precision_name(halo_precision p) {
    switch (p) {
    case HALO_PREC_FP32: return "fp32";
    case HALO_PREC_BF16: return "bf16";
    case HALO_PREC_INT8: return "int8";
    case HALO_PREC_FP8: return "fp8";
    }
    return "?";
}

void halo_linear_init(halo_linear *L, const halo_linear_config *cfg, const char *name) {
    memset(L, 0, sizeof *L);
    if (cfg) L->cfg = *cfg;
    else L->cfg = halo_linear_config_make(HALO_PREC_FP32, 0);
    if (L->cfg.block <= 0) L->cfg.block = 128;
    if (L->cfg.telemetry_rows <= 0) L->cfg.telemetry_rows = 64;
    snprintf(L->name, sizeof L->name, "%s", name ? name : "linear");
    for (int p = 0; p < 3; p++) {
        L->stats.rel_err[p] = NAN;
        for (int o = 0; o < 2; o++) L->stats.outlier[p][o] = L->stats.outlier_rot[p][o] = NAN;
    }
}

void halo_workspace_free(halo_workspace *w) {
    for (int i = 0; i < 4; i++) free(w->buf[i]);
    halo_qmat_free(&w->qa); halo_qmat_free(&w->qb);
    memset(w, 0, sizeof *w);
}

void halo_linear_free(halo_linear *L) {
    halo_qmat_free(&L->qx); halo_qmat_free(&L->qw);
    halo_workspace_free(&L->own);
    free(L->xkeep);
    memset(L, 0, sizeof *L);
}

void halo_linear_share_workspace(halo_linear *L, halo_workspace *w) { L->shared = w; }

static halo_workspace *wsp(halo_linear *L) { return L->shared ? L->shared : &L->own; }

static float *ws(halo_linear *L, int i, size_t nfloats) {
    halo_workspace *w = wsp(L);
    if (nfloats + 1 > w->cap[i]) {
        free(w->buf[i]);
        w->cap[i] = nfloats + 1;
        w->buf[i] = xmalloc(sizeof(float) * w->cap[i]);
    }
    return w->buf[i];
}

static int is_8bit(const halo_linear *L) { return L->cfg.prec == HALO_PREC_INT8 || L->cfg.prec == HALO_PREC_FP8; }

static uint64_t layer_seed(const halo_linear *L) {
    uint64_t h = 1469598103934665603ULL; // FNV-1a of the name, so layers draw independent streams
    for (const char *p = L->name; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ULL;
    return L->cfg.seed ^ h;
}

static halo_qspec spec_fwd(const halo_linear *L) {
    halo_qspec q;
    memset(&q, 0, sizeof q);
    q.fmt = L->cfg.identity_quant ? HALO_Q_IDENTITY : L->cfg.prec == HALO_PREC_INT8 ? HALO_Q_INT8 : HALO_Q_E4M3;
    q.gran = L->cfg.gran;
    q.block = L->cfg.block;
    q.rnd = HALO_ROUND_NEAREST;
    return q;
}

// Delayed scaling of X (which 0, level 0), E_Y (which 1, levels 0-1) or W (which 2, level 0) in this call
// (halo_linear_config.delayed): q then scales by the last call's absmax, if any, and reports the tensor's own into *seen.
static int delayed_use(const halo_linear *L, int which, halo_qspec *q, float *seen) {
    if (!L->cfg.delayed || L->cfg.gran != HALO_GRAN_TENSOR || L->cfg.identity_quant ||
        L->cfg.level > (which == 2 ? 0 : which))
        return 0;
    q->amax_scale = L->dly_ok[which] ? L->dly_amax[which] : 0.f;
    q->amax_seen = seen;
    return 1;
}
// ... and the absmax delayed_use reported, kept for the next call
static void delayed_record(halo_linear *L, int which, float seen) {
    L->dly_amax[which] = seen;
    L->dly_ok[which] = 1;
}

static halo_qspec spec_grad(const halo_linear *L, int stream) {
    halo_qspec q = spec_fwd(L);
    if (!L->cfg.identity_quant && L->cfg.prec == HALO_PREC_FP8 && L->cfg.grad_e5m2) q.fmt = HALO_Q_E5M2;
    q.rnd = L->cfg.grad_rounding;
    q.seed = layer_seed(L);
    q.counter = L->step * 4 + (uint64_t)stream;
    return q;
}

static int check_shapes(const halo_linear *L, int b, int m, int n) {
    if (b < 1 || m < 1 || n < 1) return halo_fail("%s: bad shapes b=%d m=%d n=%d", L->name, b, m, n);
    if ((long)b * m > 2000000000L || (long)n * m > 2000000000L || (long)b * n > 2000000000L)
        return halo_fail("%s: tensor too large (b=%d m=%d n=%d)", L->name, b, m, n);
    if (L->cfg.level < 0 || L->cfg.level > 2) return halo_fail("%s: level %d is not 0, 1 or 2", L->name, L->cfg.level);
    if ((L->cfg.gran == HALO_GRAN_BLOCK1x128 || L->cfg.gran == HALO_GRAN_BLOCK128) && L->cfg.block % 4)
        return halo_fail("%s: scale block %d must be a multiple of 4", L->name, L->cfg.block);
    return HALO_OK;
}

static void note_once(halo_linear *L, const char *msg) {
    if (!msg[0] || L->note[0]) return;
    snprintf(L->note, sizeof L->note, "%s", msg);
    fprintf(stderr, "halo_linear %s: %s\n", L->name, msg);
}

static int plan_hm(halo_linear *L, int m) {
    if (L->hm_d == m) return HALO_OK;
    if (L->cfg.had_block > 0) {
        if (halo_hadamard_plan(&L->hm, m, L->cfg.had_block)) return halo_fail_ctx("%s: in_features %d: ", L->name, m);
    } else {
        char note[200];
        halo_hadamard_plan_fallback(&L->hm, m, note, sizeof note);
        note_once(L, note);
    }
    L->hm_d = m;
    return HALO_OK;
}

static int plan_hb(halo_linear *L, int b) {
    if (L->hb_b == b) return HALO_OK;
    int bs = L->cfg.had_block_b, pad;
    if (bs > 0) {
        pad = (b + bs - 1) / bs * bs;
        if (halo_hadamard_plan(&L->hb, pad, bs)) return halo_fail_ctx("%s: token Hadamard: ", L->name);
    } else {
        // Zero-padding is exact: H_b^T [E;0] rotated, multiplied, rotated back, first b rows = the unpadded result.
        pad = halo_hadamard_pad_size(b, HALO_HB_MAX_K);
        if (halo_hadamard_plan(&L->hb, pad, 0)) return halo_fail_ctx("%s: token Hadamard: ", L->name);
    }
    L->hb_b = b;
    L->hb_pad = pad;
    return HALO_OK;
}

// ---- telemetry helpers ---------------------------------------------------------------------------------------

static double outlier_ratio(const float *a, size_t n) {
    double mx = 0, ss = 0;
    #pragma omp parallel for reduction(max : mx) reduction(+ : ss) schedule(static) if (n > (1u << 16))
    for (size_t i = 0; i < n; i++) {
        double v = fabs((double)a[i]);
        mx = v > mx ? v : mx;
        ss += v * v;
    }
    return ss > 0 ? mx / sqrt(ss / (double)n) : 0.0;
}

static int sample_rows(const halo_linear *L, int rows, int *idx) {
    int R = rows < L->cfg.telemetry_rows ? rows : L->cfg.telemetry_rows;
    if (R > 1024) R = 1024;
    for (int s = 0; s < R; s++) idx[s] = (int)((long)s * rows / R);
    return R;
}

// rel error of got rows vs exact rows: sum ||got_r - exact_r||^2 / sum ||exact_r||^2 (sqrt).
static double rel_rows(const float *got, long ldg, const int *idx, int R, const float *exact, int cols) {
    double num = 0, den = 0;
    for (int s = 0; s < R; s++) {
        const float *g = got + (long)idx[s] * ldg, *e = exact + (size_t)s * cols;
        for (int j = 0; j < cols; j++) { double d = (double)g[j] - e[j]; num += d * d; den += (double)e[j] * e[j]; }
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

// The sampled rows of a product OUT [b][kout] = A [b][ka] W^T (trans_w, W [kout][ka]) or A W (W [ka][kout]) against
// fp32 from A's rows: the relative error of product prod.
static void tele_rows(halo_linear *L, int prod, const float *A, int ka, const float *W, int trans_w, const float *OUT,
                      int kout, int b) {
    int idx[1024];
    int R = sample_rows(L, b, idx);
    float *as = xmalloc(sizeof(float) * (size_t)R * ka), *ex = xmalloc(sizeof(float) * (size_t)R * kout);
    for (int s = 0; s < R; s++) memcpy(as + (size_t)s * ka, A + (size_t)idx[s] * ka, sizeof(float) * (size_t)ka);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_w ? CblasTrans : CblasNoTrans, R, kout, ka, 1.0f, as, ka, W,
                trans_w ? ka : kout, 0.0f, ex, kout);
    L->stats.rel_err[prod] = rel_rows(OUT, kout, idx, R, ex, kout);
    free(as); free(ex);
}
static void tele_y(halo_linear *L, const float *X, const float *W, const float *Y, int b, int m, int n) {
    tele_rows(L, HALO_PROD_Y, X, m, W, 1, Y, n, b);
}
static void tele_ex(halo_linear *L, const float *EY, const float *W, const float *EX, int b, int m, int n) {
    tele_rows(L, HALO_PROD_EX, EY, n, W, 0, EX, m, b);
}

static void tele_g(halo_linear *L, const float *EY, const float *X, const float *dW, int b, int m, int n) {
    int idx[1024];
    int R = sample_rows(L, n, idx);
    float *ec = xmalloc(sizeof(float) * (size_t)R * b), *ex = xmalloc(sizeof(float) * (size_t)R * m);
    for (int s = 0; s < R; s++)
        for (int t = 0; t < b; t++) ec[(size_t)s * b + t] = EY[(size_t)t * n + idx[s]];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, m, b, 1.0f, ec, b, X, m, 0.0f, ex, m);
    L->stats.rel_err[HALO_PROD_G] = rel_rows(dW, m, idx, R, ex, m);
    free(ec); free(ex);
}

// ---- FP32 / BF16 passthrough ---------------------------------------------------------------------------------

static const float *bf16_copy(halo_linear *L, int slot, const float *src, size_t n) {
    float *d = ws(L, slot, n);
    #pragma omp parallel for schedule(static) if (n > (1u << 16))
    for (size_t i = 0; i < n; i++) d[i] = halo_round_bf16(src[i]);
    return d;
}

static int fwd_plain(halo_linear *L, const float *X, const float *W, float *Y, int b, int m, int n) {
    const float *x = X, *w = W;
    if (L->cfg.prec == HALO_PREC_BF16) {
        x = bf16_copy(L, 0, X, (size_t)b * m);
        w = bf16_copy(L, 1, W, (size_t)n * m);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b, n, m, 1.0f, x, m, w, m, 0.0f, Y, n);
    if (L->cfg.telemetry) {
        L->stats.calls[HALO_PROD_Y]++;
        L->stats.outlier[HALO_PROD_Y][0] = L->stats.outlier_rot[HALO_PROD_Y][0] = outlier_ratio(X, (size_t)b * m);
        L->stats.outlier[HALO_PROD_Y][1] = L->stats.outlier_rot[HALO_PROD_Y][1] = outlier_ratio(W, (size_t)n * m);
        tele_y(L, X, W, Y, b, m, n);
    }
    return HALO_OK;
}

static int bwd_plain(halo_linear *L, const float *EY, const float *W, float *EX, float *G, int b, int m, int n) {
    const float *e = EY, *w = W, *x = L->X;
    const int bf = L->cfg.prec == HALO_PREC_BF16;
    if (bf) e = bf16_copy(L, 2, EY, (size_t)b * n);
    if (EX) {
        if (bf) w = bf16_copy(L, 1, W, (size_t)n * m);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b, m, n, 1.0f, e, n, w, m, 0.0f, EX, m);
    }
    float *dW = NULL;
    if (G) {
        if (bf) x = bf16_copy(L, 0, L->X, (size_t)b * m);
        if (L->cfg.telemetry) {
            dW = ws(L, 3, (size_t)n * m);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, m, b, 1.0f, e, n, x, m, 0.0f, dW, m);
            for (size_t i = 0; i < (size_t)n * m; i++) G[i] += dW[i];
        } else {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, m, b, 1.0f, e, n, x, m, 1.0f, G, m);
        }
    }
    if (L->cfg.telemetry) {
        double oe = outlier_ratio(EY, (size_t)b * n);
        if (EX) {
            L->stats.calls[HALO_PROD_EX]++;
            L->stats.outlier[HALO_PROD_EX][0] = L->stats.outlier_rot[HALO_PROD_EX][0] = oe;
            L->stats.outlier[HALO_PROD_EX][1] = L->stats.outlier_rot[HALO_PROD_EX][1] = outlier_ratio(W, (size_t)n * m);
            tele_ex(L, EY, W, EX, b, m, n);
        }
        if (G) {
            L->stats.calls[HALO_PROD_G]++;
            L->stats.outlier[HALO_PROD_G][0] = L->stats.outlier_rot[HALO_PROD_G][0] = oe;
            L->stats.outlier[HALO_PROD_G][1] = L->stats.outlier_rot[HALO_PROD_G][1] = outlier_ratio(L->X, (size_t)b * m);
            tele_g(L, EY, L->X, dW, b, m, n);
        }
    }
    return HALO_OK;
}

// ---- weight codes (sharded weights gathered in 8 bits) ----------------------------------------------------------

// Given codes must be exactly what forward would make of an [n][m] W: shape, format and scale grid.
static int check_given_codes(const halo_linear *L, int n, int m) {
    const halo_qmat *q = &L->qw;
    const halo_qspec qs = spec_fwd(L);
    const halo_qgrid g = halo_qgrid_of(&qs, n, m);
    if (q->rows != n || q->cols != m)
        return halo_fail("%s: given weight codes are %dx%d, the weight is %dx%d", L->name, q->rows, q->cols, n, m);
    if (q->fmt != qs.fmt)
        return halo_fail("%s: given weight codes are %s, the layer quantizes to %s", L->name, halo_qformat_name(q->fmt),
                         halo_qformat_name(qs.fmt));
    if (q->gr != g.gr || q->gc != g.gc)
        return halo_fail("%s: given weight codes have %dx%d scale groups, the layer uses %dx%d", L->name, q->gr, q->gc,
                         g.gr, g.gc);
    return HALO_OK;
}

size_t halo_linear_weight_grid_len(const halo_linear *L, int n, int m) {
    const halo_qspec qs = spec_fwd(L);
    const halo_qgrid g = halo_qgrid_of(&qs, n, m);
    return (size_t)g.srows * g.scols;
}

// Rows [lo, hi) of the weight operand before quantization: Wrows as given (level 0) or rotated, W H_m, in scratch.
static int weight_rows(halo_linear *L, const float *Wrows, int lo, int hi, int n, int m, const float **wr) {
    if (!is_8bit(L))
        return halo_fail("%s: weight codes are for int8/fp8 layers (this one is %s)", L->name,
                         halo_precision_name(L->cfg.prec));
    if (check_shapes(L, 1, m, n)) return HALO_ERR;
    if (lo < 0 || hi < lo || hi > n)
        return halo_fail("%s: weight rows [%d,%d) are not within out_features %d", L->name, lo, hi, n);
    if (!Wrows && hi > lo) return halo_fail("%s: weight rows [%d,%d) are NULL", L->name, lo, hi);
    *wr = Wrows;
    if (L->cfg.level >= 1 && hi > lo) {
        if (plan_hm(L, m)) return HALO_ERR;
        float *wb = ws(L, 1, (size_t)(hi - lo) * m);
        memcpy(wb, Wrows, sizeof(float) * (size_t)(hi - lo) * m);
        halo_hadamard_rows(&L->hm, wb, hi - lo, m, 0); // W H_m
        *wr = wb;
    }
    return HALO_OK;
}

int halo_linear_weight_amax(halo_linear *L, const float *Wrows, int lo, int hi, int n, int m, float *amax) {
    const float *wr;
    if (weight_rows(L, Wrows, lo, hi, n, m, &wr)) return HALO_ERR;
    char what[256];
    snprintf(what, sizeof what, "%s: weight W (Y product)", L->name); // forward's message for the same element
    const halo_qspec qs = spec_fwd(L);
    return halo_absmax_rows(amax, wr, m, lo, hi, n, m, &qs, what);
}

int halo_linear_weight_codes(halo_linear *L, const float *Wrows, int lo, int hi, int n, int m, const float *amax,
                             halo_qmat *out) {
    const float *wr;
    if (weight_rows(L, Wrows, lo, hi, n, m, &wr)) return HALO_ERR;
    char what[256];
    snprintf(what, sizeof what, "%s: weight W (Y product)", L->name);
    const halo_qspec qs = spec_fwd(L);
    return halo_quantize_rows(out, wr, m, lo, hi, n, m, &qs, amax, what);
}

int halo_linear_set_weight_codes(halo_linear *L, const halo_qmat *qw) {
    if (!qw) { L->qw_given = 0; return HALO_OK; }
    if (!is_8bit(L))
        return halo_fail("%s: weight codes are for int8/fp8 layers (this one is %s)", L->name,
                         halo_precision_name(L->cfg.prec));
    if (qw != &L->qw) halo_qmat_copy(&L->qw, qw);
    L->qw_given = 1;
    L->have_fwd = 0; // the saved operand changed: a backward needs a forward with it
    return HALO_OK;
}

// ---- 8-bit levels --------------------------------------------------------------------------------------------

int halo_linear_forward(halo_linear *L, const float *X, const float *W, float *Y, int b, int m, int n) {
    if (check_shapes(L, b, m, n)) return HALO_ERR;
    const int given = is_8bit(L) && L->qw_given;
    if (!W && !given) return halo_fail("%s: forward without a weight W", L->name);
    if (!W && L->cfg.telemetry)
        return halo_fail("%s: telemetry measures against the fp32 weight W, which is NULL (weight codes given)", L->name);
    if (given && check_given_codes(L, n, m)) return HALO_ERR;
    L->have_fwd = 0;
    L->xkeep_ok = 0;
    L->b = b; L->m = m; L->n = n;
    L->X = X;
    if (!is_8bit(L)) {
        if (fwd_plain(L, X, W, Y, b, m, n)) return HALO_ERR;
        L->have_fwd = 1;
        return HALO_OK;
    }
    const int lvl = L->cfg.level;
    const float *xr = X, *wr = W;
    if (lvl >= 1) {
        if (plan_hm(L, m)) return HALO_ERR;
        float *xb = ws(L, 0, (size_t)b * m);
        memcpy(xb, X, sizeof(float) * (size_t)b * m);
        halo_hadamard_rows(&L->hm, xb, b, m, 0); // X H_m
        xr = xb;
        if (!given || L->cfg.telemetry) { // given codes: W H_m only for telemetry's outlier ratio
            float *wb = ws(L, 1, (size_t)n * m);
            memcpy(wb, W, sizeof(float) * (size_t)n * m);
            halo_hadamard_rows(&L->hm, wb, n, m, 0); // W H_m
            wr = wb;
        }
    }
    char what[256];
    halo_qspec qs = spec_fwd(L), qx = qs;
    float seen = 0;
    const int dx = delayed_use(L, 0, &qx, &seen);
    snprintf(what, sizeof what, "%s: forward input X (Y product)", L->name);
    if (halo_quantize(&L->qx, xr, b, m, m, 0, &qx, what)) return HALO_ERR;
    if (dx) delayed_record(L, 0, seen);
    snprintf(what, sizeof what, "%s: weight W (Y product)", L->name);
    halo_qspec qw = qs;
    float seen_w = 0;
    const int dw = !given && delayed_use(L, 2, &qw, &seen_w);
    if (!given && halo_quantize(&L->qw, wr, n, m, m, 0, &qw, what)) return HALO_ERR;
    if (dw) delayed_record(L, 2, seen_w);
    if (halo_qgemm(&L->qx, &L->qw, Y, n, 0)) return halo_fail_ctx("%s: forward: ", L->name);
    if (L->cfg.telemetry) {
        L->stats.calls[HALO_PROD_Y]++;
        L->stats.outlier[HALO_PROD_Y][0] = outlier_ratio(X, (size_t)b * m);
        L->stats.outlier[HALO_PROD_Y][1] = outlier_ratio(W, (size_t)n * m);
        L->stats.outlier_rot[HALO_PROD_Y][0] = lvl ? outlier_ratio(xr, (size_t)b * m) : L->stats.outlier[HALO_PROD_Y][0];
        L->stats.outlier_rot[HALO_PROD_Y][1] = lvl ? outlier_ratio(wr, (size_t)n * m) : L->stats.outlier[HALO_PROD_Y][1];
        tele_y(L, X, W, Y, b, m, n);
        if (L->xkeep_cap < (size_t)b * m) { free(L->xkeep); L->xkeep_cap = (size_t)b * m; L->xkeep = xmalloc(sizeof(float) * L->xkeep_cap); }
        memcpy(L->xkeep, X, sizeof(float) * (size_t)b * m);
        L->xkeep_ok = 1;
    }
    L->have_fwd = 1;
    return HALO_OK;
}

// qb <- the saved 8-bit operand `saved` ([r][m]) transposed to [m][r]. Per-tensor and square-block scales transpose
// exactly; per-row / 1xB scales would lie along the new inner dimension, so the operand is re-quantized along the
// new outer dimension: from `recompute` (fp32, [r][m]) when given, else from the dequantized saved codes.
static int transposed_operand(halo_linear *L, const halo_qmat *saved, const float *recompute, int r, int m,
                              halo_qmat *qb, const char *what) {
    if (L->cfg.gran == HALO_GRAN_TENSOR || L->cfg.gran == HALO_GRAN_BLOCK128 || L->cfg.identity_quant) {
        halo_qmat_transpose(saved, qb);
        return HALO_OK;
    }
    const float *src = recompute;
    if (!src) {
        float *d = ws(L, 0, (size_t)r * m);
        halo_dequantize(saved, d);
        src = d;
    }
    halo_qspec qs = spec_fwd(L);
    return halo_quantize(qb, src, r, m, m, 1, &qs, what);
}

int halo_linear_backward(halo_linear *L, const float *EY, const float *W, float *EX, float *G, int b, int m, int n) {
    if (check_shapes(L, b, m, n)) return HALO_ERR;
    if (!L->have_fwd) return halo_fail("%s: backward without a preceding forward", L->name);
    if (b != L->b || m != L->m || n != L->n)
        return halo_fail("%s: backward shapes b=%d m=%d n=%d differ from forward's b=%d m=%d n=%d", L->name, b, m, n,
                         L->b, L->m, L->n);
    if (!W && EX) {
        if (!(is_8bit(L) && L->qw_given))
            return halo_fail("%s: backward without a weight W (the input-gradient product needs it)", L->name);
        if (!(L->cfg.gran == HALO_GRAN_TENSOR || L->cfg.gran == HALO_GRAN_BLOCK128))
            return halo_fail("%s: %s scales re-quantize the weight along out_features for the input-gradient product, "
                             "which needs the fp32 W (NULL given with weight codes)", L->name,
                             L->cfg.gran == HALO_GRAN_ROW ? "per-row" : "1xB block");
        if (L->cfg.telemetry)
            return halo_fail("%s: telemetry measures against the fp32 weight W, which is NULL (weight codes given)",
                             L->name);
    }
    if (!is_8bit(L)) {
        int rc = bwd_plain(L, EY, W, EX, G, b, m, n);
        L->step++;
        return rc;
    }
    const int lvl = L->cfg.level;
    char what[256];
    double oe = L->cfg.telemetry ? outlier_ratio(EY, (size_t)b * n) : 0;
    halo_qspec dq;   // delayed scaling of E_Y (levels 0-1): both of its quantizations take the last call's absmax
    memset(&dq, 0, sizeof dq);
    float seen_ey = 0;
    const int de = delayed_use(L, 1, &dq, &seen_ey);

    if (EX) {
        halo_qspec gq;
        int rows = b;
        const float *ey = EY;
        if (lvl == 2) {
            if (plan_hb(L, b)) return HALO_ERR;
            rows = L->hb_pad;
            float *e = ws(L, 2, (size_t)rows * n);
            memcpy(e, EY, sizeof(float) * (size_t)b * n);
            memset(e + (size_t)b * n, 0, sizeof(float) * (size_t)(rows - b) * n);
            halo_hadamard_cols(&L->hb, e, n, n, 1); // H_b^T E_Y
            ey = e;
            gq = spec_grad(L, 1);
        } else {
            gq = spec_grad(L, 0);
            gq.amax_scale = dq.amax_scale;
            gq.amax_seen = dq.amax_seen;
        }
        snprintf(what, sizeof what, "%s: output gradient E_Y (E_X product)", L->name);
        if (halo_quantize(&wsp(L)->qa, ey, rows, n, n, 0, &gq, what)) return HALO_ERR;
        const float *wr = NULL;
        if (!(L->cfg.gran == HALO_GRAN_TENSOR || L->cfg.gran == HALO_GRAN_BLOCK128)) {
            float *wb = ws(L, 1, (size_t)n * m);
            memcpy(wb, W, sizeof(float) * (size_t)n * m);
            if (lvl >= 1) halo_hadamard_rows(&L->hm, wb, n, m, 0);
            wr = wb;
        }
        snprintf(what, sizeof what, "%s: weight W (E_X product)", L->name);
        if (transposed_operand(L, &L->qw, wr, n, m, &wsp(L)->qb, what)) return HALO_ERR;
        float *T = lvl == 2 ? ws(L, 3, (size_t)rows * m) : EX;
        if (halo_qgemm(&wsp(L)->qa, &wsp(L)->qb, T, m, 0)) return halo_fail_ctx("%s: input gradient: ", L->name);
        if (lvl >= 1) halo_hadamard_rows(&L->hm, T, rows, m, 1); // [..] H_m^T
        if (lvl == 2) {
            halo_hadamard_cols(&L->hb, T, m, m, 0); // H_b [..]
            memcpy(EX, T, sizeof(float) * (size_t)b * m);
        }
        if (L->cfg.telemetry) {
            L->stats.calls[HALO_PROD_EX]++;
            L->stats.outlier[HALO_PROD_EX][0] = oe;
            L->stats.outlier_rot[HALO_PROD_EX][0] = lvl == 2 ? outlier_ratio(ey, (size_t)rows * n) : oe;
            L->stats.outlier[HALO_PROD_EX][1] = outlier_ratio(W, (size_t)n * m);
            L->stats.outlier_rot[HALO_PROD_EX][1] = L->stats.outlier_rot[HALO_PROD_Y][1];
            if (lvl == 0) L->stats.outlier_rot[HALO_PROD_EX][1] = L->stats.outlier[HALO_PROD_EX][1];
            tele_ex(L, EY, W, EX, b, m, n);
        }
    }

    if (G) {
        // E_Y quantized along the other orientation with the same stream as the E_X product at levels 0/1, so with
        // per-tensor scales the codes are exactly those of Q(E_Y) transposed ("quantized once, reused").
        halo_qspec gq = spec_grad(L, 0);
        gq.amax_scale = dq.amax_scale;
        gq.amax_seen = dq.amax_seen;
        snprintf(what, sizeof what, "%s: output gradient E_Y (weight-gradient product)", L->name);
        if (halo_quantize(&wsp(L)->qa, EY, b, n, n, 1, &gq, what)) return HALO_ERR;
        snprintf(what, sizeof what, "%s: saved input X (weight-gradient product)", L->name);
        if (transposed_operand(L, &L->qx, NULL, b, m, &wsp(L)->qb, what)) return HALO_ERR;
        const int direct = lvl == 0 && !L->cfg.telemetry;
        float *T = direct ? G : ws(L, 3, (size_t)n * m);
        if (halo_qgemm(&wsp(L)->qa, &wsp(L)->qb, T, m, direct)) return halo_fail_ctx("%s: weight gradient: ", L->name);
        if (!direct) {
            if (lvl >= 1) halo_hadamard_rows(&L->hm, T, n, m, 1); // [..] H_m^T
            const size_t nm = (size_t)n * m;
            #pragma omp parallel for schedule(static) if (nm > (1u << 16))
            for (size_t i = 0; i < nm; i++) G[i] += T[i];
            if (L->cfg.telemetry && L->xkeep_ok) { // X of this forward is needed for the exact product
                L->stats.calls[HALO_PROD_G]++;
                L->stats.outlier[HALO_PROD_G][0] = L->stats.outlier_rot[HALO_PROD_G][0] = oe;
                L->stats.outlier[HALO_PROD_G][1] = L->stats.outlier[HALO_PROD_Y][0];
                L->stats.outlier_rot[HALO_PROD_G][1] = L->stats.outlier_rot[HALO_PROD_Y][0];
                tele_g(L, EY, L->xkeep, T, b, m, n);
            }
        }
    }
    if (de && (G || EX)) delayed_record(L, 1, seen_ey);
    L->step++;
    return HALO_OK;
}

// ---- reporting -----------------------------------------------------------------------------------------------

static int jnum(char *buf, size_t cap, double v) {
    if (isnan(v) || isinf(v)) return snprintf(buf, cap, "null");
    return snprintf(buf, cap, "%.6g", v);
}

int halo_stats_json(const char *name, halo_precision prec, int level, const halo_linear_stats *s, char *buf, size_t cap) {
    static const char *pname[3] = {"Y", "EX", "G"};
    size_t k = 0;
    char tmp[64];
#define PUT(...) do { int _w = snprintf(buf ? buf + (k < cap ? k : cap) : NULL, k < cap ? cap - k : 0, __VA_ARGS__); \
    if (_w > 0) k += (size_t)_w; } while (0)
    PUT("{\"layer\":\"");
    for (const char *p = name; *p; p++) {
        if (*p == '"' || *p == '\\') PUT("\\%c", *p);
        else if ((unsigned char)*p < 0x20) PUT("\\u%04x", (unsigned char)*p);
        else PUT("%c", *p);
    }
    PUT("\",\"prec\":\"%s\",\"level\":%d", halo_precision_name(prec), level);
    for (int p = 0; p < 3; p++) {
        PUT(",\"%s\":{\"calls\":%ld,\"rel_err\":", pname[p], s->calls[p]);
        jnum(tmp, sizeof tmp, s->rel_err[p]); PUT("%s", tmp);
        for (int o = 0; o < 2; o++) {
            PUT(",\"outlier_%c\":[", o ? 'b' : 'a');
            jnum(tmp, sizeof tmp, s->outlier[p][o]); PUT("%s,", tmp);
            jnum(tmp, sizeof tmp, s->outlier_rot[p][o]); PUT("%s]", tmp);
        }
        PUT("}");
    }
    PUT("}");
#undef PUT
    return (int)k;
}

int halo_linear_stats_json(const halo_linear *L, char *buf, size_t cap) {
    return halo_stats_json(L->name, L->cfg.prec, L->cfg.level, &L->stats, buf, cap);
}

void halo_stats_print_header(FILE *f) {
    fprintf(f, "%-36s %-4s %1s %8s %8s %8s  %-13s %-13s %-13s\n", "layer", "prec", "L", "errY%", "errEX%", "errG%",
            "X max/rms", "W max/rms", "EY max/rms");
}

void halo_stats_print_row(FILE *f, const char *name, halo_precision prec, int level, const halo_linear_stats *s) {
    char e[3][16], o[3][24];
    for (int p = 0; p < 3; p++) {
        if (isnan(s->rel_err[p])) snprintf(e[p], sizeof e[p], "-");
        else snprintf(e[p], sizeof e[p], "%.3f", 100 * s->rel_err[p]);
    }
    // X: Y product operand a; W: Y product operand b; EY: E_X product operand a.
    const double pairs[3][2] = {{s->outlier[0][0], s->outlier_rot[0][0]}, {s->outlier[0][1], s->outlier_rot[0][1]},
                                {s->outlier[1][0], s->outlier_rot[1][0]}};
    for (int p = 0; p < 3; p++) {
        if (isnan(pairs[p][0])) snprintf(o[p], sizeof o[p], "-");
        else snprintf(o[p], sizeof o[p], "%.1f->%.1f", pairs[p][0], pairs[p][1]);
    }
    size_t ln = strlen(name);
    if (ln > 36) name += ln - 36;
    fprintf(f, "%-36s %-4s %1d %8s %8s %8s  %-13s %-13s %-13s\n", name, halo_precision_name(prec), level, e[0], e[1],
            e[2], o[0], o[1], o[2]);
}

void halo_linear_print_table(FILE *f, halo_linear *const *layers, int count) {
    halo_stats_print_header(f);
    for (int i = 0; i < count; i++) halo_stats_print_row(f, layers[i]->name, layers[i]->cfg.prec, layers[i]->cfg.level,
                                                         &layers[i]->stats);
}
