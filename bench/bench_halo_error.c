// Quantization error table of the HALO linear layer: relative errors (vs float64) of Y, E_X and G for levels 0, 1, 2
// in INT8 and FP8 on inputs with outlier channels in X and outlier tokens in E_Y, for a few scale granularities.
// Usage: bench_halo_error [b m n]   (default 512 1024 1024). A second table: block-diagonal H_m (levels 1, 2).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "halo/halo_linear.h"
#include "util/error.h"

static unsigned long long g_s = 99;
static double rnorm(void) {
    unsigned long long z;
    double u[2];
    for (int i = 0; i < 2; i++) {
        z = (g_s += 0x9E3779B97F4A7C15ULL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL; z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL; z ^= z >> 31;
        u[i] = ((z >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    }
    return sqrt(-2 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

static double rel(const float *a, const double *r, const float *sub, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double rr = r[i] - (sub ? sub[i] : 0), d = a[i] - (sub ? sub[i] : 0) - rr;
        num += d * d; den += rr * rr;
    }
    return sqrt(num / den);
}

// The layer's forward and backward with cfg on (X, W, E_Y); e = relative errors of Y, E_X, G vs the float64 products.
typedef struct {
    int b, m, n;
    const float *X, *W, *EY;
    const double *Yr, *EXr, *Gr;
    float *Y, *EX, *G;
} problem;
static int run_cfg(const problem *p, const halo_linear_config *cfg, double e[3]) {
    halo_linear L;
    halo_linear_init(&L, cfg, "bench");
    memset(p->G, 0, sizeof(float) * p->n * p->m);
    if (halo_linear_forward(&L, p->X, p->W, p->Y, p->b, p->m, p->n) ||
        halo_linear_backward(&L, p->EY, p->W, p->EX, p->G, p->b, p->m, p->n)) {
        fprintf(stderr, "error: %s\n", halo_error());
        halo_linear_free(&L);
        return 1;
    }
    e[0] = rel(p->Y, p->Yr, NULL, (size_t)p->b * p->n);
    e[1] = rel(p->EX, p->EXr, NULL, (size_t)p->b * p->m);
    e[2] = rel(p->G, p->Gr, NULL, (size_t)p->n * p->m);
    halo_linear_free(&L);
    return 0;
}

int main(int argc, char **argv) {
    int b = 512, m = 1024, n = 1024;
    if (argc == 4) { b = atoi(argv[1]); m = atoi(argv[2]); n = atoi(argv[3]); }
    float *X = malloc(sizeof(float) * b * m), *W = malloc(sizeof(float) * n * m), *EY = malloc(sizeof(float) * b * n);
    for (long i = 0; i < (long)b * m; i++) X[i] = (float)rnorm();
    for (long i = 0; i < (long)n * m; i++) W[i] = (float)(0.03 * rnorm());
    for (long i = 0; i < (long)b * n; i++) EY[i] = (float)(1e-3 * rnorm());
    for (int t = 0; t < b; t++) for (int c = 0; c < 6; c++) X[(long)t * m + (c * 997 + 5) % m] *= 100;
    for (int r = 0; r < 4; r++) for (int j = 0; j < n; j++) EY[(long)((r * 131 + 7) % b) * n + j] *= 100;
    // float64 references (products computed in double from the float inputs)
    double *Yr = calloc((size_t)b * n, 8), *EXr = calloc((size_t)b * m, 8), *Gr = calloc((size_t)n * m, 8);
    #pragma omp parallel for
    for (int i = 0; i < b; i++) {
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int k = 0; k < m; k++) s += (double)X[(long)i * m + k] * W[(long)j * m + k];
            Yr[(long)i * n + j] = s;
        }
        for (int j = 0; j < n; j++) {
            double e = EY[(long)i * n + j];
            for (int k = 0; k < m; k++) EXr[(long)i * m + k] += e * W[(long)j * m + k];
        }
    }
    #pragma omp parallel for
    for (int j = 0; j < n; j++)
        for (int t = 0; t < b; t++) {
            double e = EY[(long)t * n + j];
            for (int k = 0; k < m; k++) Gr[(long)j * m + k] += e * X[(long)t * m + k];
        }
    float *Y = malloc(sizeof(float) * b * n), *EX = malloc(sizeof(float) * b * m), *G = calloc((size_t)n * m, 4);
    printf("HALO relative errors vs float64, b=%d m=%d n=%d; X: 6 input channels x100, E_Y: 4 tokens x100\n", b, m, n);
    printf("%-5s %-8s %-5s %9s %9s %9s\n", "prec", "scales", "level", "Y", "E_X", "G");
    const char *gname[] = {"tensor", "row", "1x128", "128x128"};
    const problem pb = {b, m, n, X, W, EY, Yr, EXr, Gr, Y, EX, G};
    double ex0 = 0, ex2 = 0, y0 = 0, y1 = 0, g0 = 0, g1 = 0;
    for (int gran = 0; gran < 4; gran++)
        for (int pr = 0; pr < 2; pr++)
            for (int lvl = 0; lvl <= 2; lvl++) {
                halo_linear_config cfg = halo_linear_config_make(pr ? HALO_PREC_FP8 : HALO_PREC_INT8, lvl);
                cfg.gran = (halo_granularity)gran;
                double e[3];
                if (run_cfg(&pb, &cfg, e)) return 1;
                printf("%-5s %-8s %-5d %9.5f %9.5f %9.5f\n", pr ? "fp8" : "int8", gname[gran], lvl, e[0], e[1], e[2]);
                if (gran == 0 && pr == 0) {
                    if (lvl == 0) { ex0 = e[1]; y0 = e[0]; g0 = e[2]; }
                    if (lvl == 1) { y1 = e[0]; g1 = e[2]; }
                    if (lvl == 2) ex2 = e[1];
                }
            }
    printf("INT8 per-tensor factors: E_X level0/level2 = %.2fx, Y level0/level1 = %.2fx, G level0/level1 = %.2fx\n",
           ex0 / ex2, y0 / y1, g0 / g1);
    // block-diagonal H_m (--halo-hadamard-block), per-tensor scales: what a smaller rotation costs in accuracy
    printf("\nblock-diagonal H_m (per-tensor scales): relative errors vs float64\n");
    printf("%-5s %-5s %-8s %9s %9s %9s\n", "prec", "level", "H_m", "Y", "E_X", "G");
    const int hblocks[4] = {0, 256, 128, 64};
    for (int pr = 0; pr < 2; pr++)
        for (int lvl = 1; lvl <= 2; lvl++)
            for (int hb = 0; hb < 4; hb++) {
                if (hblocks[hb] && m % hblocks[hb]) continue;
                halo_linear_config cfg = halo_linear_config_make(pr ? HALO_PREC_FP8 : HALO_PREC_INT8, lvl);
                cfg.had_block = hblocks[hb];
                double e[3];
                if (run_cfg(&pb, &cfg, e)) return 1;
                char hn[16];
                if (hblocks[hb]) snprintf(hn, sizeof hn, "%d", hblocks[hb]);
                else snprintf(hn, sizeof hn, "full");
                printf("%-5s %-5d %-8s %9.5f %9.5f %9.5f\n", pr ? "fp8" : "int8", lvl, hn, e[0], e[1], e[2]);
            }
    free(X); free(W); free(EY); free(Y); free(EX); free(G); free(Yr); free(EXr); free(Gr);
    return 0;
}
