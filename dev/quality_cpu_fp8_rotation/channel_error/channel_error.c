// Why H_m rotation hurts FP8 (E4M3) but helps INT8: the weight gradient G = E_Y^T X of one layer, per input channel
// (column of G), relative error against float64, at level 0 (G = Q(E_Y)^T Q(X)) and level 1
// (G = [Q(E_Y)^T Q(X H)] H^T), per-tensor scales, for E4M3 and INT8. X has channels of spread scales (log-normal,
// sigma 1, plus two channels x20), as activations do; E_Y has a few tokens x10. Channels are grouped by scale
// (smallest third, middle, largest third); the table gives each group's median relative error and the whole G's
// relative Frobenius error.
//   cc -O2 -fopenmp -Isrc dev/quality_cpu_fp8_rotation/channel_error/channel_error.c build/dev/libhalo.a \
//      -lopenblas -lcjson -lpcre2-8 -lm -o /tmp/channel_error && /tmp/channel_error [seed [sigma [outlier]]]
// (defaults: seed 0, sigma 1, outlier 20: the log-normal spread of channel scales and the factor of channels 3, 41)
//   /tmp/channel_error --model DIR TEXT [seed]: X is instead a real layer input, stories260K's layer-0 q/k/v input
//   (RMSNorm of the token embeddings times its weight) over the first 2048 tokens of TEXT
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "halo/hadamard.h"
#include "halo/quant.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/fileio.h"

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

// X = layer 0's attention-norm output for the first B tokens of `text` (the model's dim must be M); 0 on success
static int real_x(const char *dir, const char *text, float *X, double *scale) {
    llama_model m;
    halo_tokenizer *tok;
    char *buf;
    size_t len;
    if (llama_load(&m, dir) || tokenizer_load(dir, &tok) || halo_read_file(text, &buf, &len)) {
        fprintf(stderr, "%s\n", halo_error());
        return 1;
    }
    if (m.cfg.dim != M) { fprintf(stderr, "model dim %d, this experiment needs %d\n", m.cfg.dim, M); return 1; }
    int32_t *ids;
    size_t n;
    if (tokenizer_encode(tok, buf, len, false, &ids, &n) || n < B) { fprintf(stderr, "need %d tokens\n", B); return 1; }
    for (int c = 0; c < M; c++) scale[c] = 0;
    for (int t = 0; t < B; t++) {
        const float *e = m.w.embed + (size_t)ids[t] * M;
        double ss = 0;
        for (int c = 0; c < M; c++) ss += (double)e[c] * e[c];
        const double r = 1.0 / sqrt(ss / M + m.cfg.norm_eps);
        for (int c = 0; c < M; c++) {
            X[t * M + c] = (float)(e[c] * r * m.w.layers[0].attn_norm[c]);
            scale[c] += (double)X[t * M + c] * X[t * M + c];
        }
    }
    double lm = 0, l2 = 0, mn = 1e30, mx = 0;
    for (int c = 0; c < M; c++) {
        scale[c] = sqrt(scale[c] / B);
        lm += log(scale[c]);
        l2 += log(scale[c]) * log(scale[c]);
        mn = fmin(mn, scale[c]);
        mx = fmax(mx, scale[c]);
    }
    lm /= M;
    printf("X: %s layer 0 q/k/v input over %d tokens of %s; channel rms %.3g..%.3g (log-sd %.2f)\n", dir, B, text, mn, mx,
           sqrt(l2 / M - lm * lm));
    free(ids);
    free(buf);
    tokenizer_free(tok);
    llama_free(&m);
    return 0;
}

int main(int argc, char **argv) {
    const int real = argc > 3 && !strcmp(argv[1], "--model");
    const int sa = real ? 3 : 0;   // where the seed argument is
    if (argc > sa + 1) g_s += strtoull(argv[sa + 1], NULL, 10) * 0x9E3779B97F4A7C15ULL;
    const double sigma = !real && argc > 2 ? atof(argv[2]) : 1.0, outlier = !real && argc > 3 ? atof(argv[3]) : 20.0;
    static float X[B * M], E[B * N], Xq[B * M], Eq[B * N];
    static double G[N * M], Gq[N * M];
    double scale[M];
    for (int c = 0; c < M; c++) scale[c] = exp(sigma * nrand());
    scale[3] *= outlier;
    scale[41] *= outlier;
    if (real && real_x(argv[2], argv[3], X, scale)) return 1;
    for (int t = 0; t < B; t++) {
        if (!real)
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
    if (real) printf("G = E_Y^T X, b=%d, m=%d, n=%d; E_Y: 1 token in 257 x10\n", B, M, N);
    else printf("G = E_Y^T X, b=%d, m=%d, n=%d; channel scales log-normal (sigma %g) + 2 channels x%g; E_Y: 1 token in 257 x10\n",
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
