// Sharded weights gathered in 8 bits: ranks holding uneven row ranges of W (a rank with no rows included) quantize
// their rows with the reduced absmax grid; the gathered codes and scales are bit-identical to the whole-matrix
// quantization (quantizer level and layer level: INT8 / FP8, levels 0/1/2, every granularity, 128x128 blocks cut
// by rank boundaries, K*2^p Hadamards), and the layer given the gathered codes (W NULL where allowed) computes
// Y, E_X and G bit for bit as the ordinary layer. Refusals name the layer.
#include "halo/halo_linear.h"
#include "test.h"
#include "util/error.h"

#define NAME "model.layers.3.mlp.up_proj"

static unsigned long long g_seed = 9173;

typedef struct { int b, m, n; float *X, *W, *EY, *G0; } prob;

static void prob_make(prob *p, int b, int m, int n) {
    p->b = b; p->m = m; p->n = n;
    p->X = t_rand_vec(&g_seed, (size_t)b * m, 1.0);
    p->W = t_rand_vec(&g_seed, (size_t)n * m, 0.05);
    p->EY = t_rand_vec(&g_seed, (size_t)b * n, 1e-3);
    p->G0 = t_rand_vec(&g_seed, (size_t)n * m, 1e-2);
    const int oc[3] = {2, m / 3, m - 5}; // outlier input channels of X and W, outlier tokens of E_Y
    for (int c = 0; c < 3; c++) {
        for (int t = 0; t < b; t++) p->X[(size_t)t * m + oc[c]] *= 100;
        for (int j = 0; j < n; j++) p->W[(size_t)j * m + oc[c]] *= 30;
    }
    for (int j = 0; j < n; j++) p->EY[(size_t)(b / 2) * n + j] *= 100;
    memset(p->W + (size_t)(n / 2) * m, 0, sizeof(float) * (size_t)m); // a zero row: zero groups get scale 1
}

static void prob_free(prob *p) { free(p->X); free(p->W); free(p->EY); free(p->G0); }

// Cuts n rows into `world` uneven ranges [cut[r], cut[r+1]); rank 1 has none when world >= 3.
static void split_rows(int n, int world, int *cut) {
    cut[0] = 0; cut[world] = n;
    for (int r = 1; r < world; r++) cut[r] = (int)(t_rand_uniform(&g_seed) * (n + 1));
    for (int i = 1; i < world; i++) // sort
        for (int j = i; j > 1 && cut[j] < cut[j - 1]; j--) { int t = cut[j]; cut[j] = cut[j - 1]; cut[j - 1] = t; }
    if (world >= 3) cut[2] = cut[1];
}

static const char *gran_name(halo_granularity g) {
    return g == HALO_GRAN_ROW ? "row" : g == HALO_GRAN_BLOCK1x128 ? "1xB" : g == HALO_GRAN_BLOCK128 ? "BxB" : "tensor";
}

static int same_qmat(const halo_qmat *a, const halo_qmat *b) {
    return a->fmt == b->fmt && a->rows == b->rows && a->cols == b->cols && a->gr == b->gr && a->gc == b->gc &&
           a->srows == b->srows && a->scols == b->scols &&
           !memcmp(a->s, b->s, sizeof(float) * (size_t)a->srows * a->scols) &&
           !memcmp(a->q, b->q, (size_t)a->rows * a->cols);
}

static int g_cut_blocks; // BxB cases where a rank boundary cut a scale block

// ---- quantizer level: halo_absmax_rows + halo_quantize_rows == halo_quantize --------------------------------------

static void test_quant_rows(void) {
    const halo_qformat fmts[3] = {HALO_Q_INT8, HALO_Q_E4M3, HALO_Q_E5M2};
    const halo_granularity grans[4] = {HALO_GRAN_TENSOR, HALO_GRAN_ROW, HALO_GRAN_BLOCK1x128, HALO_GRAN_BLOCK128};
    const int shapes[3][3] = {{77, 100, 16}, {130, 172, 128}, {9, 33, 4}}; // R, C, block
    for (int sh = 0; sh < 3; sh++) {
        const int R = shapes[sh][0], C = shapes[sh][1];
        float *M = t_rand_vec(&g_seed, (size_t)R * C, 1.0);
        for (int i = 0; i < R; i++) M[(size_t)i * C + C / 2] *= 50;
        for (int k = 0; k < C; k++) M[(size_t)(R / 3) * C + k] *= 1e-40f; // subnormal row: the FLT_MIN scale clamp
        for (int f = 0; f < 3; f++)
            for (int g = 0; g < 4; g++)
                for (int sto = 0; sto < 2; sto++) {
                    halo_qspec qs = {fmts[f], grans[g], shapes[sh][2], sto ? HALO_ROUND_STOCHASTIC : HALO_ROUND_NEAREST,
                                     11, 3, 0, NULL};
                    halo_qmat whole = {0}, part = {0};
                    CHECK(!halo_quantize(&whole, M, R, C, C, 0, &qs, "M"), "quantize: %s", halo_error());
                    const halo_qgrid gd = halo_qgrid_of(&qs, R, C);
                    CHECK(gd.gr == whole.gr && gd.gc == whole.gc && gd.srows == whole.srows && gd.scols == whole.scols,
                          "grid of %s/%s", halo_qformat_name(fmts[f]), gran_name(grans[g]));
                    const size_t ng = (size_t)gd.srows * gd.scols;
                    for (int world = 1; world <= 5; world++) {
                        int cut[6];
                        split_rows(R, world, cut);
                        float *red = calloc(ng, sizeof(float)), *mine = malloc(sizeof(float) * ng);
                        int ok = 1;
                        for (int r = 0; r < world; r++) {
                            ok &= !halo_absmax_rows(mine, M + (size_t)cut[r] * C, C, cut[r], cut[r + 1], R, C, &qs, "M");
                            for (size_t a = 0; a < ng; a++) red[a] = fmaxf(red[a], mine[a]);
                        }
                        halo_qmat gathered = {0};
                        for (int r = 0; r < world; r++) {
                            ok &= !halo_quantize_rows(&part, M + (size_t)cut[r] * C, C, cut[r], cut[r + 1], R, C, &qs,
                                                      red, "M");
                            if (r == 0) halo_qmat_copy(&gathered, &part);
                            ok &= !memcmp(part.s, whole.s, sizeof(float) * ng);
                            memcpy(gathered.q + (size_t)cut[r] * C, part.q + (size_t)cut[r] * C,
                                   (size_t)(cut[r + 1] - cut[r]) * C);
                        }
                        CHECK(ok && same_qmat(&gathered, &whole), "%s %s %s R=%d C=%d world %d: gathered codes differ",
                              halo_qformat_name(fmts[f]), gran_name(grans[g]), sto ? "stochastic" : "nearest", R, C,
                              world);
                        halo_qmat_free(&gathered);
                        free(red); free(mine);
                    }
                    halo_qmat_free(&whole); halo_qmat_free(&part);
                }
        free(M);
    }
    // refusals: rows outside the matrix, NaN (position in the whole matrix), an unreduced grid
    float M[4 * 8], amax[1], big[1] = {1e30f};
    for (int i = 0; i < 32; i++) M[i] = (float)(i - 16);
    halo_qspec qs = {HALO_Q_INT8, HALO_GRAN_TENSOR, 0, HALO_ROUND_NEAREST, 0, 0, 0, NULL};
    halo_qmat q = {0};
    CHECK(halo_absmax_rows(amax, M, 8, 2, 5, 4, 8, &qs, "M") == HALO_ERR && strstr(halo_error(), "row range"),
          "rows past the end: %s", halo_error());
    M[2 * 8 + 3] = NAN;
    CHECK(halo_absmax_rows(amax, M + 16, 8, 2, 4, 4, 8, &qs, "M") == HALO_ERR && strstr(halo_error(), "at [2,3]"),
          "NaN position: %s", halo_error());
    CHECK(halo_quantize_rows(&q, M + 16, 8, 2, 4, 4, 8, &qs, big, "M") == HALO_ERR && strstr(halo_error(), "at [2,3]"),
          "NaN refused by quantize_rows: %s", halo_error());
    M[2 * 8 + 3] = 1;
    CHECK(!halo_absmax_rows(amax, M + 16, 8, 2, 4, 4, 8, &qs, "M") && amax[0] == 15, "amax of rows [2,4): %g", amax[0]);
    CHECK(halo_quantize_rows(&q, M, 8, 0, 2, 4, 8, &qs, amax, "M") == HALO_ERR &&
          strstr(halo_error(), "not reduced"), "unreduced grid: %s", halo_error());
    halo_qmat_free(&q);
}

// ---- layer level ------------------------------------------------------------------------------------------------

// Ordinary layer vs `world` ranks gathering codes; the consumer layer (the last rank's) runs with W NULL where
// allowed.
static void check_layer(const halo_linear_config *cfg, const prob *p, int world, const char *tag) {
    const int b = p->b, m = p->m, n = p->n;
    const size_t nm = (size_t)n * m;
    halo_linear ref;
    halo_linear_init(&ref, cfg, NAME);
    float *Y0 = malloc(sizeof(float) * b * n), *EX0 = malloc(sizeof(float) * b * m), *G0 = malloc(sizeof(float) * nm);
    float *Y1 = malloc(sizeof(float) * b * n), *EX1 = malloc(sizeof(float) * b * m), *G1 = malloc(sizeof(float) * nm);
    memcpy(G0, p->G0, sizeof(float) * nm); memcpy(G1, p->G0, sizeof(float) * nm);
    int rc = halo_linear_forward(&ref, p->X, p->W, Y0, b, m, n);
    rc |= halo_linear_backward(&ref, p->EY, p->W, EX0, G0, b, m, n);
    CHECK(!rc, "%s: reference layer: %s", tag, halo_error());

    int cut[6];
    split_rows(n, world, cut);
    if (cfg->gran == HALO_GRAN_BLOCK128)
        for (int r = 1; r < world; r++) g_cut_blocks += cut[r] % cfg->block != 0 && cut[r] < n;
    halo_linear R[5];
    halo_qmat q[5];
    memset(q, 0, sizeof q);
    const size_t glen = halo_linear_weight_grid_len(&ref, n, m);
    float *red = calloc(glen, sizeof(float)), *mine = malloc(sizeof(float) * glen);
    int ok = 1;
    for (int r = 0; r < world; r++) {
        halo_linear_init(&R[r], cfg, NAME);
        ok &= !halo_linear_weight_amax(&R[r], p->W + (size_t)cut[r] * m, cut[r], cut[r + 1], n, m, mine);
        for (size_t a = 0; a < glen; a++) red[a] = fmaxf(red[a], mine[a]); // allreduce MAX
    }
    for (int r = 0; r < world; r++) {
        ok &= !halo_linear_weight_codes(&R[r], p->W + (size_t)cut[r] * m, cut[r], cut[r + 1], n, m, red, &q[r]);
        ok &= q[r].srows * q[r].scols == (int)glen && !memcmp(q[r].s, ref.qw.s, sizeof(float) * glen);
    }
    halo_qmat *all = &q[world - 1]; // allgather of the code rows into the last rank's buffer
    for (int r = 0; r < world - 1; r++)
        memcpy(all->q + (size_t)cut[r] * m, q[r].q + (size_t)cut[r] * m, (size_t)(cut[r + 1] - cut[r]) * m);
    CHECK(ok && same_qmat(all, &ref.qw), "%s world %d: gathered weight codes/scales differ from the layer's (%s)", tag,
          world, halo_error());

    halo_linear *L = &R[world - 1];
    const int wnull_bwd = cfg->gran == HALO_GRAN_TENSOR || cfg->gran == HALO_GRAN_BLOCK128;
    rc = halo_linear_set_weight_codes(L, all);
    rc |= halo_linear_forward(L, p->X, NULL, Y1, b, m, n);
    rc |= halo_linear_backward(L, p->EY, wnull_bwd ? NULL : p->W, EX1, G1, b, m, n);
    CHECK(!rc && !memcmp(Y0, Y1, sizeof(float) * b * n) && !memcmp(EX0, EX1, sizeof(float) * b * m) &&
          !memcmp(G0, G1, sizeof(float) * nm), "%s world %d: Y/EX/G with gathered codes differ (%s)", tag, world,
          rc ? halo_error() : "");

    for (int r = 0; r < world; r++) { halo_linear_free(&R[r]); halo_qmat_free(&q[r]); }
    halo_linear_free(&ref);
    free(red); free(mine);
    free(Y0); free(EX0); free(G0); free(Y1); free(EX1); free(G1);
}

static void test_layers(void) {
    const int shapes[3][3] = {{24, 128, 77}, {16, 172, 45}, {20, 176, 131}}; // b, m, n: 172 and 44 * 4 are K * 2^p
    int K, P;
    CHECK(halo_hadamard_supported(172, &K, &P) && K > 1, "m=172 needs a K*2^p Hadamard (K=%d)", K);
    CHECK(halo_hadamard_supported(176, &K, &P) && K > 1, "m=176 needs a K*2^p Hadamard (K=%d)", K);
    const halo_precision precs[2] = {HALO_PREC_INT8, HALO_PREC_FP8};
    const struct { halo_granularity g; int block; } grans[5] = {
        {HALO_GRAN_TENSOR, 128}, {HALO_GRAN_ROW, 128}, {HALO_GRAN_BLOCK1x128, 32}, {HALO_GRAN_BLOCK128, 32},
        {HALO_GRAN_BLOCK128, 128}};
    for (int sh = 0; sh < 3; sh++) {
        prob p;
        prob_make(&p, shapes[sh][0], shapes[sh][1], shapes[sh][2]);
        for (int pr = 0; pr < 2; pr++)
            for (int lvl = 0; lvl <= 2; lvl++)
                for (int g = 0; g < 5; g++) {
                    halo_linear_config cfg = halo_linear_config_make(precs[pr], lvl);
                    cfg.gran = grans[g].g;
                    cfg.block = grans[g].block;
                    char tag[128];
                    snprintf(tag, sizeof tag, "%s level %d %s/%d b=%d m=%d n=%d", halo_precision_name(precs[pr]), lvl,
                             gran_name(cfg.gran), cfg.block, p.b, p.m, p.n);
                    for (int world = 1; world <= 5; world++) check_layer(&cfg, &p, world, tag);
                }
        prob_free(&p);
    }
    CHECK(g_cut_blocks > 0, "some rank boundary cut a 128x128-style block (%d)", g_cut_blocks);
}

// Codes given and W passed: telemetry runs and matches the ordinary layer's; set_weight_codes(NULL) returns to
// quantizing W; codes set between forward and backward are refused.
static void test_telemetry_and_modes(void) {
    prob p;
    prob_make(&p, 12, 64, 40);
    const int b = p.b, m = p.m, n = p.n;
    halo_linear_config cfg = halo_linear_config_make(HALO_PREC_INT8, 2);
    cfg.telemetry = 1;
    halo_linear ref, L;
    halo_linear_init(&ref, &cfg, NAME);
    halo_linear_init(&L, &cfg, NAME);
    float *Y0 = malloc(sizeof(float) * b * n), *EX0 = malloc(sizeof(float) * b * m), *G0 = calloc((size_t)n * m, 4);
    float *Y1 = malloc(sizeof(float) * b * n), *EX1 = malloc(sizeof(float) * b * m), *G1 = calloc((size_t)n * m, 4);
    int rc = halo_linear_forward(&ref, p.X, p.W, Y0, b, m, n);
    rc |= halo_linear_backward(&ref, p.EY, p.W, EX0, G0, b, m, n);
    halo_qmat codes = {0};
    float amax[1];
    rc |= halo_linear_weight_amax(&L, p.W, 0, n, n, m, amax);
    rc |= halo_linear_weight_codes(&L, p.W, 0, n, n, m, amax, &codes);
    rc |= halo_linear_set_weight_codes(&L, &codes);
    rc |= halo_linear_forward(&L, p.X, p.W, Y1, b, m, n);
    rc |= halo_linear_backward(&L, p.EY, p.W, EX1, G1, b, m, n);
    CHECK(!rc && !memcmp(Y0, Y1, sizeof(float) * b * n) && !memcmp(EX0, EX1, sizeof(float) * b * m) &&
          !memcmp(G0, G1, sizeof(float) * n * m), "telemetry on, codes given: results differ (%s)", halo_error());
    CHECK(!memcmp(ref.stats.rel_err, L.stats.rel_err, sizeof ref.stats.rel_err) &&
          !memcmp(ref.stats.outlier_rot, L.stats.outlier_rot, sizeof ref.stats.outlier_rot),
          "telemetry with codes given: stats differ (errY %g vs %g)", ref.stats.rel_err[0], L.stats.rel_err[0]);
    CHECK(halo_linear_forward(&L, p.X, NULL, Y1, b, m, n) == HALO_ERR && strstr(halo_error(), NAME) &&
          strstr(halo_error(), "telemetry"), "telemetry with NULL W refused: %s", halo_error());

    // codes replaced between forward and backward: the backward has no forward for them
    L.cfg.telemetry = 0;
    rc = halo_linear_forward(&L, p.X, NULL, Y1, b, m, n);
    rc |= halo_linear_set_weight_codes(&L, &codes);
    CHECK(!rc && halo_linear_backward(&L, p.EY, NULL, EX1, G1, b, m, n) == HALO_ERR &&
          strstr(halo_error(), "without a preceding forward"), "codes set between forward and backward: %s",
          halo_error());

    // back to quantizing W: a W changed since the codes were made is used
    for (size_t i = 0; i < (size_t)n * m; i++) p.W[i] *= 0.5f;
    CHECK(!halo_linear_set_weight_codes(&L, NULL), "clear codes");
    CHECK(halo_linear_forward(&L, p.X, NULL, Y1, b, m, n) == HALO_ERR && strstr(halo_error(), NAME),
          "NULL W without codes refused: %s", halo_error());
    ref.cfg.telemetry = 0;
    rc = halo_linear_forward(&ref, p.X, p.W, Y0, b, m, n);
    rc |= halo_linear_forward(&L, p.X, p.W, Y1, b, m, n);
    CHECK(!rc && !memcmp(Y0, Y1, sizeof(float) * b * n) && !L.qw_given, "codes cleared: the layer quantizes W again");

    halo_qmat_free(&codes);
    halo_linear_free(&ref); halo_linear_free(&L);
    free(Y0); free(EX0); free(G0); free(Y1); free(EX1); free(G1);
    prob_free(&p);
}

static void test_refusals(void) {
    prob p;
    prob_make(&p, 8, 64, 20);
    const int b = p.b, m = p.m, n = p.n;
    float *Y = malloc(sizeof(float) * b * n), *EX = malloc(sizeof(float) * b * m), *G = calloc((size_t)n * m, 4);
    float *G0 = calloc((size_t)n * m, 4), grid[64];

    // per-row and 1xB scales: E_X needs the fp32 W; G alone does not (and is bit-identical)
    for (int g = 0; g < 2; g++) {
        halo_linear_config cfg = halo_linear_config_make(HALO_PREC_FP8, 1);
        cfg.gran = g ? HALO_GRAN_BLOCK1x128 : HALO_GRAN_ROW;
        cfg.block = 32;
        halo_linear L, ref;
        halo_linear_init(&L, &cfg, NAME);
        halo_linear_init(&ref, &cfg, NAME);
        halo_qmat codes = {0};
        CHECK(halo_linear_weight_grid_len(&L, n, m) <= 64, "grid fits");
        int rc = halo_linear_weight_amax(&L, p.W, 0, n, n, m, grid);
        rc |= halo_linear_weight_codes(&L, p.W, 0, n, n, m, grid, &codes);
        rc |= halo_linear_set_weight_codes(&L, &codes);
        rc |= halo_linear_forward(&L, p.X, NULL, Y, b, m, n);
        CHECK(!rc, "%s codes: %s", gran_name(cfg.gran), halo_error());
        CHECK(halo_linear_backward(&L, p.EY, NULL, EX, G, b, m, n) == HALO_ERR && strstr(halo_error(), NAME) &&
              strstr(halo_error(), g ? "1xB" : "per-row") && strstr(halo_error(), "fp32 W"),
              "%s scales, NULL W for E_X: %s", gran_name(cfg.gran), halo_error());
        rc = halo_linear_backward(&L, p.EY, NULL, NULL, G, b, m, n);
        rc |= halo_linear_forward(&ref, p.X, p.W, Y, b, m, n);
        rc |= halo_linear_backward(&ref, p.EY, p.W, NULL, G0, b, m, n);
        CHECK(!rc && !memcmp(G, G0, sizeof(float) * n * m), "%s scales, NULL W, G only: %s", gran_name(cfg.gran),
              halo_error());
        // codes of another granularity, or another shape, are refused by forward
        halo_linear T;
        halo_linear_config ct = cfg;
        ct.gran = HALO_GRAN_TENSOR;
        halo_linear_init(&T, &ct, NAME);
        CHECK(!halo_linear_set_weight_codes(&T, &codes) && halo_linear_forward(&T, p.X, NULL, Y, b, m, n) == HALO_ERR &&
              strstr(halo_error(), NAME) && strstr(halo_error(), "scale groups"), "codes of another grid: %s",
              halo_error());
        CHECK(halo_linear_forward(&L, p.X, NULL, Y, b - 1, m, n - 1) == HALO_ERR && strstr(halo_error(), NAME) &&
              strstr(halo_error(), "are 20x64"), "codes of another shape: %s", halo_error());
        halo_linear_free(&T); halo_linear_free(&L); halo_linear_free(&ref);
        halo_qmat_free(&codes);
    }

    // fp32 layers have no weight codes; rows out of range; an unreduced grid
    halo_linear_config c32 = halo_linear_config_make(HALO_PREC_FP32, 0);
    halo_linear F;
    halo_linear_init(&F, &c32, NAME);
    halo_qmat codes = {0};
    CHECK(halo_linear_weight_amax(&F, p.W, 0, n, n, m, grid) == HALO_ERR && strstr(halo_error(), NAME),
          "fp32 amax: %s", halo_error());
    CHECK(halo_linear_set_weight_codes(&F, &codes) == HALO_ERR && strstr(halo_error(), NAME), "fp32 codes: %s",
          halo_error());
    halo_linear_free(&F);
    halo_linear_config c8 = halo_linear_config_make(HALO_PREC_INT8, 2);
    halo_linear L;
    halo_linear_init(&L, &c8, NAME);
    CHECK(halo_linear_weight_amax(&L, p.W, 5, n + 1, n, m, grid) == HALO_ERR && strstr(halo_error(), NAME) &&
          strstr(halo_error(), "[5,21)"), "rows out of range: %s", halo_error());
    CHECK(!halo_linear_weight_amax(&L, p.W, 0, 4, n, m, grid), "amax of rows [0,4)");
    grid[0] *= 0.5f;
    CHECK(halo_linear_weight_codes(&L, p.W, 0, 4, n, m, grid, &codes) == HALO_ERR && strstr(halo_error(), NAME) &&
          strstr(halo_error(), "not reduced"), "grid below the rows' absmax: %s", halo_error());

    // NaN in a rank's rows: the same message as the whole layer's forward
    p.W[(size_t)13 * m + 7] = NAN;
    char whole[512];
    halo_linear_init(&F, &c8, NAME);
    CHECK(halo_linear_forward(&F, p.X, p.W, Y, b, m, n) == HALO_ERR, "NaN in W refused by forward");
    snprintf(whole, sizeof whole, "%s", halo_error());
    CHECK(halo_linear_weight_amax(&L, p.W + (size_t)10 * m, 10, 15, n, m, grid) == HALO_ERR &&
          !strcmp(halo_error(), whole) && strstr(whole, NAME), "NaN in rows [10,15): '%s' vs '%s'", halo_error(), whole);
    halo_linear_free(&F); halo_linear_free(&L);
    halo_qmat_free(&codes);
    free(Y); free(EX); free(G); free(G0);
    prob_free(&p);
}

int main(void) {
    test_quant_rows();
    test_layers();
    test_telemetry_and_modes();
    test_refusals();
    TEST_END();
}
