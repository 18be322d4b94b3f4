// CPU speed of the HALO pieces: the int8 GEMM kernel and fp8 (decode + sgemm) vs fp32 sgemm, and each HALO level's
// forward + backward vs the fp32 layer. Best of several repetitions, wall clock.
// Usage: bench_halo_cpu [b m n]   (default 512 1024 1024)
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "halo/halo_linear.h"
#include "util/error.h"

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

static void fill(float *a, size_t n, unsigned s) {
    for (size_t i = 0; i < n; i++) { s = s * 1664525u + 1013904223u; a[i] = ((s >> 8) / 16777216.0f - 0.5f); }
}

#define BEST(reps, expr) ({ double _b = 1e30; for (int _r = 0; _r < (reps); _r++) { double _t = now(); expr; \
    double _d = now() - _t; if (_d < _b) _b = _d; } _b; })

static void gemm_row(int M, int N, int K) {
    float *a = malloc(sizeof(float) * M * K), *b = malloc(sizeof(float) * N * K), *c = malloc(sizeof(float) * M * N);
    int8_t *qa = malloc((size_t)M * K), *qb = malloc((size_t)N * K);
    int32_t *c32 = malloc(sizeof(int32_t) * M * N);
    fill(a, (size_t)M * K, 1); fill(b, (size_t)N * K, 2);
    for (long i = 0; i < (long)M * K; i++) qa[i] = (int8_t)(a[i] * 250);
    for (long i = 0; i < (long)N * K; i++) qb[i] = (int8_t)(b[i] * 250);
    halo_qmat A = {0}, B = {0}, A8 = {0}, B8 = {0};
    halo_qspec qi = {HALO_Q_INT8, HALO_GRAN_TENSOR, 0, HALO_ROUND_NEAREST, 0, 0, 0, NULL}, qf = qi;
    qf.fmt = HALO_Q_E4M3;
    halo_quantize(&A, a, M, K, K, 0, &qi, "a"); halo_quantize(&B, b, N, K, K, 0, &qi, "b");
    halo_quantize(&A8, a, M, K, K, 0, &qf, "a"); halo_quantize(&B8, b, N, K, K, 0, &qf, "b");
    int reps = (double)M * N * K > 1e9 ? 8 : 20;
    double ops = 2.0 * M * N * K;
    double t_f32 = BEST(reps, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, a, K, b, K, 0, c, N));
    double t_s8 = BEST(reps, halo_gemm_s8s8s32(qa, qb, c32, M, N, K));
    double t_q8 = BEST(reps, halo_qgemm(&A, &B, c, N, 0));
    double t_fp8 = BEST(reps, halo_qgemm(&A8, &B8, c, N, 0));
    printf("%5d x %5d x %5d | %8.1f GFLOP/s %8.1f GOP/s (%.2fx) %8.1f GOP/s (%.2fx) %8.1f GFLOP/s (%.2fx)\n", M, N, K,
           ops / t_f32 * 1e-9, ops / t_s8 * 1e-9, t_f32 / t_s8, ops / t_q8 * 1e-9, t_f32 / t_q8, ops / t_fp8 * 1e-9,
           t_f32 / t_fp8);
    halo_qmat_free(&A); halo_qmat_free(&B); halo_qmat_free(&A8); halo_qmat_free(&B8);
    free(a); free(b); free(c); free(qa); free(qb); free(c32);
}

int main(int argc, char **argv) {
    int b = 512, m = 1024, n = 1024;
    if (argc == 4) { b = atoi(argv[1]); m = atoi(argv[2]); n = atoi(argv[3]); }
    printf("threads: %d, int8 kernel: %s\n", omp_get_max_threads(), halo_gemm_s8_kernel());
    printf("GEMM C = A B^T (M x N x K) | fp32 sgemm | int8 raw kernel (vs sgemm) | int8 scaled qgemm | fp8 decode+sgemm\n");
    gemm_row(256, 256, 256);
    gemm_row(b, n, m);
    gemm_row(512, 4096, 1024);
    float *X = malloc(sizeof(float) * b * m), *W = malloc(sizeof(float) * n * m), *EY = malloc(sizeof(float) * b * n);
    float *Y = malloc(sizeof(float) * b * n), *EX = malloc(sizeof(float) * b * m), *G = calloc((size_t)n * m, 4);
    fill(X, (size_t)b * m, 3); fill(W, (size_t)n * m, 4); fill(EY, (size_t)b * n, 5);
    printf("\nlinear layer forward + backward (E_X and G), b=%d m=%d n=%d, ms (best of 10)\n", b, m, n);
    printf("%-6s %-5s %9s %9s %9s %9s\n", "prec", "level", "fwd", "bwd", "total", "vs fp32");
    double t_ref = 0;
    const halo_precision precs[4] = {HALO_PREC_FP32, HALO_PREC_BF16, HALO_PREC_INT8, HALO_PREC_FP8};
    for (int p = 0; p < 4; p++)
        for (int lvl = 0; lvl <= (p >= 2 ? 2 : 0); lvl++) {
            halo_linear_config cfg = halo_linear_config_make(precs[p], lvl);
            halo_linear L;
            halo_linear_init(&L, &cfg, "bench");
            double tf = 1e30, tb = 1e30;
            for (int r = 0; r < 11; r++) {
                double t0 = now();
                if (halo_linear_forward(&L, X, W, Y, b, m, n)) { fprintf(stderr, "%s\n", halo_error()); return 1; }
                double t1 = now();
                if (halo_linear_backward(&L, EY, W, EX, G, b, m, n)) { fprintf(stderr, "%s\n", halo_error()); return 1; }
                double t2 = now();
                if (r) { tf = fmin(tf, t1 - t0); tb = fmin(tb, t2 - t1); }
            }
            if (p == 0) t_ref = tf + tb;
            printf("%-6s %-5d %9.2f %9.2f %9.2f %8.2fx\n", halo_precision_name(precs[p]), lvl, tf * 1e3, tb * 1e3,
                   (tf + tb) * 1e3, t_ref / (tf + tb));
            halo_linear_free(&L);
        }
    free(X); free(W); free(EY); free(Y); free(EX); free(G);
    return 0;
}
