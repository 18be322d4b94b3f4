// Why H_m rotation hurts FP8 (E4M3) but helps INT8: the weight gradient G = E_Y^T X of one layer, per input channel
// (column of G), relative error against float64, at level 0 (G = Q(E_Y)^T Q(X)) and level 1
// (G = [Q(E_Y)^T Q(X H)] H^T), per-tensor scales, for E4M3 and INT8. X has channels of spread scales (log-normal,
// sigma 1, plus two channels x20), as activations do; E_Y has a few tokens x10. Channels are grouped by scale
// (smallest third, middle, largest third); the table gives each group's median relative error and the whole G's
// relative Frobenius error.
//   cc -O2 -fopenmp -Isrc dev/quality_cpu_fp8_rotation/channel_error/channel_error.c build/dev/libhalo.a \
//      -lopenblas -lcjson -lpcre2-8 -lm -o /tmp/channel_error && /tmp/channel_error [seed [sigma [outlier]]]
// (defaults: seed 0, sigma 1, outlier 20: the log-normal spread of channel scales and the factor of channels 3, 41)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "halo/hadamard.h"
#include "halo/quant.h"

enum { B = 2048, M = 64, N = 64 };

static unsigned long long g_s = 88172645463325252ULL;
static double urand(void) { g_s ^= g_s << 13; g_s ^= g_s >> 7; g_s ^= g_s << 17; return (g_s >> 11) * (1.0 / 9007199254740992.0); }
static double nrand(void) { double u = urand() + 1e-300, v = urand(); return sqrt(-2 * log(u)) * cos(6.283185307179586 * v); }

// per-tensor quantize-dequantize in place
static void qdq(float *a, long n, halo_qformat f) {
    float amax = 0;
    for (long i = 0; i < n; i++) amax = fmaxf(amax, fabsf(a[i]));
    const float s = amax / halo_qformat_max(f);
    for (long i = 0; i < n; i++) {
        if (f == HALO_Q_INT8) {
            float q = rintf(a[i] / s);
            q = fminf(127.f, fmaxf(-127.f, q));
            a[i] = q * s;
        } else {
            a[i] = halo_fp8_decode(halo_fp8_encode(a[i] / s, f, 1), f) * s;
        }
    }
}

static int cmp_d(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }
static double median(double *v, int n) { qsort(v, n, sizeof *v, cmp_d); return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]); }

int main(int argc, char **argv) {
    if (argc > 1) g_s += strtoull(argv[1], NULL, 10) * 0x9E3779B97F4A7C15ULL;
    const double sigma = argc > 2 ? atof(argv[2]) : 1.0, outlier = argc > 3 ? atof(argv[3]) : 20.0;
    static float X[B * M], E[B * N], Xq[B * M], Eq[B * N];
    static double G[N * M], Gq[N * M];
    double scale[M];
    for (int c = 0; c < M; c++) scale[c] = exp(sigma * nrand());
    scale[3] *= outlier;
    scale[41] *= outlier;
    for (int t = 0; t < B; t++) {
        for (int c = 0; c < M; c++) X[t * M + c] = (float)(nrand() * scale[c]);
        const double ts = t % 257 == 5 ? 10 : 1;
        for (int j = 0; j < N; j++) E[t * N + j] = (float)(nrand() * ts);
    }
    for (int j = 0; j < N; j++)
        for (int c = 0; c < M; c++) {
            double s = 0;
            for (int t = 0; t < B; t++) s += (double)E[t * N + j] * X[t * M + c];
            G[j * M + c] = s;
        }
    int order[M];   // channels by scale
    for (int c = 0; c < M; c++) order[c] = c;
    for (int i = 0; i < M; i++)
        for (int k = i + 1; k < M; k++)
            if (scale[order[k]] < scale[order[i]]) { int t = order[i]; order[i] = order[k]; order[k] = t; }
    halo_hadamard h;
    if (halo_hadamard_plan(&h, M, 0)) { fprintf(stderr, "no Hadamard of %d\n", M); return 1; }
    printf("G = E_Y^T X, b=%d, m=%d, n=%d; channel scales log-normal (sigma %g) + 2 channels x%g; E_Y: 1 token in 257 x10\n",
           B, M, N, sigma, outlier);
    printf("| format | level | median rel. error, smallest third of channels | middle third | largest third | G overall |\n");
    printf("|---|---|---|---|---|---|\n");
    const halo_qformat fmts[2] = {HALO_Q_E4M3, HALO_Q_INT8};
    for (int fi = 0; fi < 2; fi++)
        for (int lvl = 0; lvl < 2; lvl++) {
            memcpy(Xq, X, sizeof X);
            memcpy(Eq, E, sizeof E);
            if (lvl) halo_hadamard_rows(&h, Xq, B, M, 0);   // X H
            qdq(Xq, (long)B * M, fmts[fi]);
            qdq(Eq, (long)B * N, fmts[fi]);
            static float Gf[N * M];
            for (int j = 0; j < N; j++)
                for (int c = 0; c < M; c++) {
                    double s = 0;
                    for (int t = 0; t < B; t++) s += (double)Eq[t * N + j] * Xq[t * M + c];
                    Gf[j * M + c] = (float)s;
                }
            if (lvl) halo_hadamard_rows(&h, Gf, N, M, 1);   // [..] H^T
            for (int i = 0; i < N * M; i++) Gq[i] = Gf[i];
            double err[M], num = 0, den = 0;
            for (int c = 0; c < M; c++) {
                double e = 0, g = 0;
                for (int j = 0; j < N; j++) {
                    const double d = Gq[j * M + c] - G[j * M + c];
                    e += d * d;
                    g += G[j * M + c] * G[j * M + c];
                }
                num += e;
                den += g;
                err[c] = sqrt(e / g);
            }
            double grp[3][M];
            int ng[3] = {0, 0, 0};
            for (int i = 0; i < M; i++) {
                const int k = i * 3 / M;
                grp[k][ng[k]++] = err[order[i]];
            }
            printf("| %s | %d | %.2f%% | %.2f%% | %.2f%% | %.2f%% |\n", fmts[fi] == HALO_Q_E4M3 ? "E4M3" : "INT8", lvl,
                   100 * median(grp[0], ng[0]), 100 * median(grp[1], ng[1]), 100 * median(grp[2], ng[2]),
                   100 * sqrt(num / den));
        }
    return 0;
}
