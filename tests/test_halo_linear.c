// Tests for the HALO linear layer: with the quantizer replaced by the identity every level reproduces the fp32
// layer (rotations placed and undone correctly), FP32/BF16 passthrough, quantized errors on inputs with outlier
// channels / tokens (level 2 input-gradient error several times below level 0 in INT8), telemetry JSON/table,
// granularities, stochastic gradient rounding, and the error paths (NaN/Inf, shapes, missing forward).
#include <cjson/cJSON.h>
#include "halo/halo_linear.h"
#include "test.h"
#include "util/error.h"

static unsigned long long g_seed = 4242;

typedef struct { int b, m, n; float *X, *W, *EY, *G0; double *Y, *EX, *G; } problem;

static void problem_make(problem *p, int b, int m, int n, int outliers) {
    p->b = b; p->m = m; p->n = n;
    p->X = malloc(sizeof(float) * b * m); p->W = malloc(sizeof(float) * n * m);
    p->EY = malloc(sizeof(float) * b * n); p->G0 = malloc(sizeof(float) * n * m);
    for (int i = 0; i < b * m; i++) p->X[i] = (float)t_rand_normal(&g_seed);
    for (int i = 0; i < n * m; i++) p->W[i] = (float)(0.05 * t_rand_normal(&g_seed));
    for (int i = 0; i < b * n; i++) p->EY[i] = (float)(1e-3 * t_rand_normal(&g_seed));
    for (int i = 0; i < n * m; i++) p->G0[i] = (float)(1e-2 * t_rand_normal(&g_seed));
    if (outliers) { // a few input channels and a few tokens of the gradient 100x the rest
        const int oc[4] = {3, m / 3, m / 2 + 1, m - 2}, ot[3] = {1, b / 2, b - 3};
        for (int t = 0; t < b; t++) for (int c = 0; c < 4; c++) p->X[t * m + oc[c]] *= 100;
        for (int r = 0; r < 3; r++) for (int j = 0; j < n; j++) p->EY[ot[r] * n + j] *= 100;
    }
    p->Y = calloc((size_t)b * n, sizeof(double)); p->EX = calloc((size_t)b * m, sizeof(double));
    p->G = calloc((size_t)n * m, sizeof(double));
    for (int i = 0; i < b; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int k = 0; k < m; k++) s += (double)p->X[i * m + k] * p->W[j * m + k];
            p->Y[i * n + j] = s;
        }
    for (int i = 0; i < b; i++)
        for (int j = 0; j < n; j++) {
            double e = p->EY[i * n + j];
            for (int k = 0; k < m; k++) p->EX[i * m + k] += e * p->W[j * m + k];
        }
    for (int j = 0; j < n; j++)
        for (int k = 0; k < m; k++) p->G[j * m + k] = p->G0[j * m + k];
    for (int t = 0; t < b; t++)
        for (int j = 0; j < n; j++) {
            double e = p->EY[t * n + j];
            for (int k = 0; k < m; k++) p->G[j * m + k] += e * p->X[t * m + k];
        }
}

static void problem_free(problem *p) {
    free(p->X); free(p->W); free(p->EY); free(p->G0); free(p->Y); free(p->EX); free(p->G);
}

static double rel_d(const float *a, const double *ref, size_t n, const float *sub) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double r = ref[i] - (sub ? sub[i] : 0), d = (a[i] - (sub ? sub[i] : 0)) - r;
        num += d * d; den += r * r;
    }
    return sqrt(num / den);
}

// Runs forward + backward; errors (relative L2 vs float64) of Y, E_X and dW = G - G0.
static int run(const halo_linear_config *cfg, const problem *p, double err[3], halo_linear *keep) {
    halo_linear L;
    halo_linear_init(&L, cfg, "model.layers.0.mlp.down_proj");
    float *Y = malloc(sizeof(float) * p->b * p->n), *EX = malloc(sizeof(float) * p->b * p->m);
    float *G = malloc(sizeof(float) * p->n * p->m);
    memcpy(G, p->G0, sizeof(float) * p->n * p->m);
    int rc = halo_linear_forward(&L, p->X, p->W, Y, p->b, p->m, p->n);
    if (!rc) rc = halo_linear_backward(&L, p->EY, p->W, EX, G, p->b, p->m, p->n);
    if (!rc) {
        err[0] = rel_d(Y, p->Y, (size_t)p->b * p->n, NULL);
        err[1] = rel_d(EX, p->EX, (size_t)p->b * p->m, NULL);
        err[2] = rel_d(G, p->G, (size_t)p->n * p->m, p->G0);
    }
    free(Y); free(EX); free(G);
    if (keep) *keep = L;
    else halo_linear_free(&L);
    return rc;
}

static void test_identity(void) {
    struct { int b, m, n, hb, hbb; halo_granularity gran; } cases[] = {
        {94, 172, 96, 0, 0, HALO_GRAN_TENSOR},  // b = 2*47 padded to 96 = 12*8; m = 172 Williamson
        {64, 192, 48, 64, 32, HALO_GRAN_ROW},   // block-diagonal H_m and H_b
        {40, 576, 36, 0, 0, HALO_GRAN_BLOCK128},// m = 36*16
        {33, 94, 20, 0, 0, HALO_GRAN_TENSOR},   // m = 94 unsupported: fallback blocks of 2; b = 33 -> 36
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        problem p;
        problem_make(&p, cases[c].b, cases[c].m, cases[c].n, c == 0);
        for (int prec = HALO_PREC_INT8; prec <= HALO_PREC_FP8; prec++)
            for (int lvl = 0; lvl <= 2; lvl++) {
                halo_linear_config cfg = halo_linear_config_make((halo_precision)prec, lvl);
                cfg.identity_quant = 1;
                cfg.had_block = cases[c].hb;
                cfg.had_block_b = cases[c].hbb;
                cfg.gran = cases[c].gran;
                double e[3];
                int rc = run(&cfg, &p, e, NULL);
                CHECK(rc == HALO_OK, "identity run: %s", rc ? halo_error() : "");
                if (rc) continue;
                CHECK(e[0] < 1e-5 && e[1] < 1e-5 && e[2] < 1e-5,
                      "identity quant b=%d m=%d n=%d %s level %d: rel err Y %.3g EX %.3g G %.3g", p.b, p.m, p.n,
                      halo_precision_name(prec), lvl, e[0], e[1], e[2]);
            }
        double e[3];
        halo_linear_config cfg = halo_linear_config_make(HALO_PREC_FP32, 0);
        CHECK(run(&cfg, &p, e, NULL) == HALO_OK && e[0] < 1e-5 && e[1] < 1e-5 && e[2] < 1e-5,
              "fp32 passthrough: %.3g %.3g %.3g", e[0], e[1], e[2]);
        cfg = halo_linear_config_make(HALO_PREC_BF16, 0);
        CHECK(run(&cfg, &p, e, NULL) == HALO_OK && e[0] > 1e-5 && e[0] < 1e-2 && e[1] > 1e-5 && e[1] < 1e-2 &&
                  e[2] > 1e-5 && e[2] < 1e-2, "bf16 passthrough errors at bf16 level: %.3g %.3g %.3g", e[0], e[1], e[2]);
        problem_free(&p);
    }
}

static void test_outliers(void) {
    problem p;
    problem_make(&p, 256, 512, 256, 1);
    double err[2][3][3];
    printf("relative errors vs float64 (X: 4 input channels x100, E_Y: 3 tokens x100), b=256 m=512 n=256\n");
    printf("%-5s %-5s %10s %10s %10s\n", "prec", "level", "Y", "E_X", "G");
    for (int pr = 0; pr < 2; pr++)
        for (int lvl = 0; lvl <= 2; lvl++) {
            halo_linear_config cfg = halo_linear_config_make(pr ? HALO_PREC_FP8 : HALO_PREC_INT8, lvl);
            int rc = run(&cfg, &p, err[pr][lvl], NULL);
            CHECK(rc == HALO_OK, "run: %s", rc ? halo_error() : "");
            printf("%-5s %-5d %10.4g %10.4g %10.4g\n", pr ? "fp8" : "int8", lvl, err[pr][lvl][0], err[pr][lvl][1],
                   err[pr][lvl][2]);
            for (int q = 0; q < 3; q++) CHECK(err[pr][lvl][q] > 0 && err[pr][lvl][q] < 0.5, "error in range");
        }
    double f_ex = err[0][0][1] / err[0][2][1];
    printf("INT8 E_X error level0/level2 = %.2fx, Y error level0/level1 = %.2fx\n", f_ex, err[0][0][0] / err[0][1][0]);
    CHECK(f_ex >= 3, "INT8 level 2 E_X error %.4g not >= 3x lower than level 0's %.4g", err[0][2][1], err[0][0][1]);
    CHECK(err[0][1][0] < err[0][0][0] / 2, "INT8 level 1 rotation lowers the Y error (%.4g vs %.4g)", err[0][1][0],
          err[0][0][0]);
    CHECK(err[0][2][1] < err[0][1][1], "INT8 level 2 E_X beats level 1");
    problem_free(&p);
}

static void test_telemetry(void) {
    problem p;
    problem_make(&p, 128, 256, 96, 1);
    halo_linear_config cfg = halo_linear_config_make(HALO_PREC_INT8, 2);
    cfg.telemetry = 1;
    cfg.telemetry_rows = 128;
    halo_linear L;
    double e[3];
    CHECK(run(&cfg, &p, e, &L) == HALO_OK, "telemetry run");
    for (int q = 0; q < 3; q++)
        CHECK(fabs(L.stats.rel_err[q] / e[q] - 1) < 0.05, "telemetry product %d rel err %.4g vs measured %.4g", q,
              L.stats.rel_err[q], e[q]);
    CHECK(L.stats.outlier[HALO_PROD_Y][0] > 3 * L.stats.outlier_rot[HALO_PROD_Y][0],
          "rotation spreads X outliers: %.1f -> %.1f", L.stats.outlier[0][0], L.stats.outlier_rot[0][0]);
    CHECK(L.stats.outlier[HALO_PROD_EX][0] > 3 * L.stats.outlier_rot[HALO_PROD_EX][0],
          "token rotation spreads E_Y outliers: %.1f -> %.1f", L.stats.outlier[1][0], L.stats.outlier_rot[1][0]);
    char buf[2048];
    int len = halo_linear_stats_json(&L, buf, sizeof buf);
    CHECK(len > 0 && (size_t)len < sizeof buf, "json length %d", len);
    cJSON *j = cJSON_Parse(buf);
    CHECK(j != NULL, "json parses: %s", buf);
    if (j) {
        cJSON *ex = cJSON_GetObjectItem(j, "EX");
        CHECK(!strcmp(cJSON_GetObjectItem(j, "layer")->valuestring, "model.layers.0.mlp.down_proj"), "layer name");
        CHECK(ex && fabs(cJSON_GetObjectItem(ex, "rel_err")->valuedouble - L.stats.rel_err[1]) < 1e-5 * L.stats.rel_err[1] + 1e-9,
              "EX rel_err in json");
        CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(ex, "outlier_a")) == 2, "outlier pair");
        cJSON_Delete(j);
    }
    char small[16];
    int need = halo_linear_stats_json(&L, small, sizeof small);
    CHECK(need == len && strlen(small) == sizeof small - 1, "json truncates safely, reports the full length");
    char *tb = NULL;
    size_t tl = 0;
    FILE *f = open_memstream(&tb, &tl);
    halo_linear *arr[1] = {&L};
    halo_linear_print_table(f, arr, 1);
    fclose(f);
    CHECK(strstr(tb, "mlp.down_proj") && strstr(tb, "int8") && strstr(tb, "errEX%"), "table:\n%s", tb);
    printf("%s", tb);
    free(tb);
    halo_linear_free(&L);
    problem_free(&p);
}

static void test_options(void) {
    problem p;
    problem_make(&p, 96, 256, 160, 0);
    const halo_granularity grans[4] = {HALO_GRAN_TENSOR, HALO_GRAN_ROW, HALO_GRAN_BLOCK1x128, HALO_GRAN_BLOCK128};
    for (int pr = 0; pr < 2; pr++)
        for (int g = 0; g < 4; g++)
            for (int lvl = 0; lvl <= 2; lvl++) {
                halo_linear_config cfg = halo_linear_config_make(pr ? HALO_PREC_FP8 : HALO_PREC_INT8, lvl);
                cfg.gran = grans[g];
                double e[3];
                int rc = run(&cfg, &p, e, NULL);
                double lim = pr ? 0.08 : 0.03;
                CHECK(rc == HALO_OK && e[0] < lim && e[1] < lim && e[2] < lim, "%s gran %d level %d: %.4g %.4g %.4g",
                      pr ? "fp8" : "int8", g, lvl, e[0], e[1], e[2]);
            }
    // FP8 with E5M2 gradients: coarser E_X / G than E4M3 gradients, still bounded.
    halo_linear_config cfg = halo_linear_config_make(HALO_PREC_FP8, 1);
    double e4[3], e5[3];
    run(&cfg, &p, e4, NULL);
    cfg.grad_e5m2 = 1;
    CHECK(run(&cfg, &p, e5, NULL) == HALO_OK && e5[1] > e4[1] && e5[1] < 0.15, "e5m2 grads: EX %.4g (e4m3 %.4g)", e5[1], e4[1]);
    // Stochastic gradient rounding: reproducible for the same seed/name; differs from nearest.
    cfg = halo_linear_config_make(HALO_PREC_INT8, 2);
    cfg.grad_rounding = HALO_ROUND_STOCHASTIC;
    double s1[3], s2[3], rn[3];
    run(&cfg, &p, s1, NULL);
    run(&cfg, &p, s2, NULL);
    cfg.grad_rounding = HALO_ROUND_NEAREST;
    run(&cfg, &p, rn, NULL);
    CHECK(s1[1] == s2[1] && s1[2] == s2[2] && s1[1] != rn[1] && s1[1] < 0.05, "stochastic: %.6g %.6g vs nearest %.6g",
          s1[1], s2[1], rn[1]);
    // Two layers sharing one workspace, interleaved like a two-layer network (fwd A, fwd B, bwd B, bwd A), give
    // bit-identical results to separate workspaces: nothing in the workspace lives from forward to backward.
    {
        cfg = halo_linear_config_make(HALO_PREC_INT8, 2);
        cfg.gran = HALO_GRAN_ROW;
        halo_workspace shw = {0};
        halo_linear A1, B1, A2, B2;
        halo_linear_init(&A1, &cfg, "a"); halo_linear_init(&B1, &cfg, "b");
        halo_linear_init(&A2, &cfg, "a"); halo_linear_init(&B2, &cfg, "b");
        halo_linear_share_workspace(&A2, &shw); halo_linear_share_workspace(&B2, &shw);
        size_t ny = (size_t)p.b * p.n, nx = (size_t)p.b * p.m, ng = (size_t)p.n * p.m;
        float *o[2][5];
        for (int v = 0; v < 2; v++) {
            for (int k = 0; k < 5; k++) o[v][k] = calloc(ng > ny ? (ng > nx ? ng : nx) : (ny > nx ? ny : nx), 4);
            halo_linear *la = v ? &A2 : &A1, *lb = v ? &B2 : &B1;
            int rc = halo_linear_forward(la, p.X, p.W, o[v][0], p.b, p.m, p.n);
            rc |= halo_linear_forward(lb, p.X, p.W, o[v][1], p.b, p.m, p.n);
            rc |= halo_linear_backward(lb, p.EY, p.W, o[v][2], o[v][3], p.b, p.m, p.n);
            rc |= halo_linear_backward(la, p.EY, p.W, o[v][4], o[v][3], p.b, p.m, p.n);
            CHECK(rc == HALO_OK, "interleaved run");
        }
        CHECK(!memcmp(o[0][0], o[1][0], 4 * ny) && !memcmp(o[0][1], o[1][1], 4 * ny) && !memcmp(o[0][2], o[1][2], 4 * nx) &&
                  !memcmp(o[0][3], o[1][3], 4 * ng) && !memcmp(o[0][4], o[1][4], 4 * nx),
              "shared workspace gives identical results");
        for (int v = 0; v < 2; v++) for (int k = 0; k < 5; k++) free(o[v][k]);
        halo_linear_free(&A1); halo_linear_free(&B1); halo_linear_free(&A2); halo_linear_free(&B2);
        halo_workspace_free(&shw);
    }
    // EX == NULL and G == NULL (frozen weight) work and leave G alone.
    halo_linear L;
    cfg = halo_linear_config_make(HALO_PREC_INT8, 2);
    halo_linear_init(&L, &cfg, "frozen");
    float *Y = malloc(sizeof(float) * p.b * p.n), *EX = malloc(sizeof(float) * p.b * p.m);
    CHECK(halo_linear_forward(&L, p.X, p.W, Y, p.b, p.m, p.n) == HALO_OK, "fwd");
    CHECK(halo_linear_backward(&L, p.EY, p.W, EX, NULL, p.b, p.m, p.n) == HALO_OK &&
              rel_d(EX, p.EX, (size_t)p.b * p.m, NULL) < 0.03, "frozen weight: E_X only");
    CHECK(halo_linear_backward(&L, p.EY, p.W, NULL, NULL, p.b, p.m, p.n) == HALO_OK, "nothing needed");
    // Shape mismatch and missing forward.
    CHECK(halo_linear_backward(&L, p.EY, p.W, EX, NULL, p.b - 1, p.m, p.n) == HALO_ERR && strstr(halo_error(), "frozen"),
          "shape mismatch named: %s", halo_error());
    halo_linear_free(&L);
    halo_linear_init(&L, &cfg, "fresh");
    CHECK(halo_linear_backward(&L, p.EY, p.W, EX, NULL, p.b, p.m, p.n) == HALO_ERR, "backward needs forward");
    // NaN / Inf: reported with the layer and product, never silently quantized.
    p.X[5 * p.m + 7] = NAN;
    CHECK(halo_linear_forward(&L, p.X, p.W, Y, p.b, p.m, p.n) == HALO_ERR && strstr(halo_error(), "fresh") &&
              strstr(halo_error(), "forward input X"), "NaN in X: %s", halo_error());
    p.X[5 * p.m + 7] = 0;
    p.EY[3] = INFINITY;
    CHECK(halo_linear_forward(&L, p.X, p.W, Y, p.b, p.m, p.n) == HALO_OK, "fwd ok");
    CHECK(halo_linear_backward(&L, p.EY, p.W, EX, NULL, p.b, p.m, p.n) == HALO_ERR && strstr(halo_error(), "E_Y"),
          "Inf in E_Y: %s", halo_error());
    cfg.level = 3;
    halo_linear_free(&L);
    halo_linear_init(&L, &cfg, "bad");
    CHECK(halo_linear_forward(&L, p.X, p.W, Y, p.b, p.m, p.n) == HALO_ERR, "level 3 rejected");
    halo_linear_free(&L);
    free(Y); free(EX);
    problem_free(&p);
}

static float absmax_of(const float *v, size_t n) {
    float a = 0;
    for (size_t i = 0; i < n; i++) a = fmaxf(a, fabsf(v[i]));
    return a;
}
static long bits_differ(const float *a, const float *b, size_t n) { return n ? (long)(memcmp(a, b, 4 * n) != 0) : 0; }

// Delayed scaling (halo_linear_config.delayed), INT8 and FP8, levels 0 and 1, inputs with outliers. A first call
// scales as the spec does: Y, E_X and G bit for bit those of a layer without the option. A second with X and E_Y
// halved and W at 0.8x (grids twice and 1.25x as coarse, nothing saturates): E_X within 2.5x the spec layer's error
// against float64. A third with X and E_Y 3x the first's and W back at 1x (values above a sixth of X's and E_Y's new
// maximum and above 0.8x of W's saturate): at level 0 its Y and E_X equal, bit for bit, the products of codes that
// halo_quantize makes with the second call's absmaxes (amax_scale, whose codes test_quant.c checks against their
// definition); at level 1 X and W are rotated and keep their own scales (Y as the spec layer's) while E_Y takes the
// last call's (E_X differs from the spec layer's); the absmaxes recorded are the call's own.
static void test_delayed(void) {
    problem p;
    problem_make(&p, 64, 128, 96, 1);
    const int b = p.b, m = p.m, n = p.n;
    float *X2 = malloc(4 * (size_t)b * m), *E2 = malloc(4 * (size_t)b * n), *W2 = malloc(4 * (size_t)n * m);
    float *Y[2], *EX[2], *G[2], *Yr = malloc(4 * (size_t)b * n), *EXr = malloc(4 * (size_t)b * m);
    for (int u = 0; u < 2; u++) {
        Y[u] = malloc(4 * (size_t)b * n); EX[u] = malloc(4 * (size_t)b * m); G[u] = calloc((size_t)n * m, 4);
    }
    for (int pr = 0; pr < 2; pr++)
        for (int lvl = 0; lvl <= 1; lvl++) {
            halo_linear_config cfg = halo_linear_config_make(pr ? HALO_PREC_FP8 : HALO_PREC_INT8, lvl);
            halo_linear L[2];   // [0] delayed, [1] the spec
            for (int u = 0; u < 2; u++) {
                cfg.delayed = u == 0;
                halo_linear_init(&L[u], &cfg, "model.layers.0.mlp.down_proj");
            }
            for (int call = 0; call < 3; call++) {
                const float f = call == 0 ? 1.f : call == 1 ? 0.5f : 3.f, fw = call == 1 ? 0.8f : 1.f;
                for (size_t i = 0; i < (size_t)b * m; i++) X2[i] = f * p.X[i];
                for (size_t i = 0; i < (size_t)b * n; i++) E2[i] = f * p.EY[i];
                for (size_t i = 0; i < (size_t)n * m; i++) W2[i] = fw * p.W[i];
                const float ax_prev = L[0].dly_amax[0], ae_prev = L[0].dly_amax[1], aw_prev = L[0].dly_amax[2];
                for (int u = 0; u < 2; u++) {
                    memset(G[u], 0, 4 * (size_t)n * m);
                    CHECK(halo_linear_forward(&L[u], X2, W2, Y[u], b, m, n) == HALO_OK &&
                          halo_linear_backward(&L[u], E2, W2, EX[u], G[u], b, m, n) == HALO_OK, "%s", halo_error());
                }
                const char *what = pr ? "fp8" : "int8";
                if (call == 0) {
                    CHECK(!bits_differ(Y[0], Y[1], (size_t)b * n) && !bits_differ(EX[0], EX[1], (size_t)b * m) &&
                          !bits_differ(G[0], G[1], (size_t)n * m), "%s L%d: a first delayed call equals the spec", what,
                          lvl);
                } else if (call == 2) {
                    if (lvl == 0) {   // the reference: codes with the last call's absmax
                        halo_qmat qx, qw, qe, qwt;
                        memset(&qx, 0, sizeof qx); memset(&qw, 0, sizeof qw);
                        memset(&qe, 0, sizeof qe); memset(&qwt, 0, sizeof qwt);
                        halo_qspec qs;
                        memset(&qs, 0, sizeof qs);
                        qs.fmt = pr ? HALO_Q_E4M3 : HALO_Q_INT8;
                        halo_qspec qd = qs;
                        qd.amax_scale = aw_prev;   // W back to 1.25x the last call's: its largest values saturate
                        halo_quantize(&qw, W2, n, m, m, 0, &qd, "W");
                        qd.amax_scale = ax_prev;
                        halo_quantize(&qx, X2, b, m, m, 0, &qd, "X");
                        halo_qgemm(&qx, &qw, Yr, n, 0);
                        qd.amax_scale = ae_prev;
                        halo_quantize(&qe, E2, b, n, n, 0, &qd, "E_Y");
                        halo_qmat_transpose(&qw, &qwt);
                        halo_qgemm(&qe, &qwt, EXr, m, 0);
                        CHECK(!bits_differ(Y[0], Yr, (size_t)b * n) && !bits_differ(EX[0], EXr, (size_t)b * m),
                              "%s L0: a delayed call's Y and E_X are the products of codes with the last absmax", what);
                        CHECK(bits_differ(Y[0], Y[1], (size_t)b * n), "%s L0: delayed Y differs from the spec's", what);
                        halo_qmat_free(&qx); halo_qmat_free(&qw); halo_qmat_free(&qe); halo_qmat_free(&qwt);
                    } else {
                        CHECK(!bits_differ(Y[0], Y[1], (size_t)b * n) && bits_differ(EX[0], EX[1], (size_t)b * m),
                              "%s L1: rotated X keeps its own scale, E_Y takes the last call's", what);
                    }
                    CHECK((lvl > 0 || (L[0].dly_amax[0] == absmax_of(X2, (size_t)b * m) &&
                                       L[0].dly_amax[2] == absmax_of(W2, (size_t)n * m))) &&
                          L[0].dly_amax[1] == absmax_of(E2, (size_t)b * n) && L[0].dly_ok[1],
                          "%s L%d: the recorded absmaxes are the call's own", what, lvl);
                } else {   // halved inputs: E_X against float64 (p.EX halved), the spec layer's error as the scale
                    double *ref = malloc(sizeof(double) * (size_t)b * m);
                    for (size_t i = 0; i < (size_t)b * m; i++) ref[i] = 0.5 * 0.8 * p.EX[i];   // E_Y and W scaled
                    const double ed = rel_d(EX[0], ref, (size_t)b * m, NULL), es = rel_d(EX[1], ref, (size_t)b * m, NULL);
                    printf("  delayed %s L%d, inputs halved: E_X error %.4g (spec %.4g)\n", what, lvl, ed, es);
                    CHECK(ed <= 2.5 * es + 1e-6, "%s L%d: delayed E_X error %.4g vs spec %.4g", what, lvl, ed, es);
                    free(ref);
                }
            }
            halo_linear_free(&L[0]); halo_linear_free(&L[1]);
        }
    for (int u = 0; u < 2; u++) { free(Y[u]); free(EX[u]); free(G[u]); }
    free(X2); free(E2); free(W2); free(Yr); free(EXr);
    problem_free(&p);
}

int main(void) {
    test_delayed();
    test_identity();
    test_outliers();
    test_telemetry();
    test_options();
    TEST_END();
}
