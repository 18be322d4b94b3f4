// Causal GQA flash attention on the GPU, every kernel variant: forward and backward timed separately (CUDA events,
// 3 warm-up runs, median of --reps), TFLOP/s counting the causal forward as 4 B T^2 Hq hd / 2 and the backward as
// 2.5x that, and each variant's outputs compared with variant 0's on the same inputs (relative L2 of out and lse,
// and the worst of dq, dk, dv). Every backward variant starts from variant 0's forward out/lse. Prints a table last.
//   build/bench/bench_cuda_attention [--B 4] [--T 2048] [--hq 32] [--hkv 8] [--hd 64|128 (default both)]
//                                    [--reps 10] [--seg L (packed segments of L tokens; default none)]
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef HALO_CUDA
#include <cuda_runtime_api.h>
#include "bench.h"
#include "cuda/cuda_backend.h"


static void check(cudaError_t e, const char *what) {
    if (e != cudaSuccess) { fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(e)); exit(1); }
}
static void *dev_alloc(size_t bytes) {
    void *d;
    if (cudaMalloc(&d, bytes) != cudaSuccess) { fprintf(stderr, "out of device memory (%zu bytes)\n", bytes); exit(1); }
    return d;
}
static void *dev_rand_bf16(size_t n, float sd, unsigned long long seed) {
    halo_bf16 *h = malloc(2 * n);
    unsigned long long s = seed;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        float f = sd * (float)(((int)(s >> 40) % 2001 - 1000) * 1e-3);
        cuda_f32_to_bf16_host(&h[i], &f, 1);
    }
    void *d = dev_alloc(2 * n);
    check(cudaMemcpy(d, h, 2 * n, cudaMemcpyHostToDevice), "upload");
    free(h);
    return d;
}
static float *host_bf16(const void *d, size_t n) {
    halo_bf16 *h = malloc(2 * n);
    float *f = malloc(4 * n);
    check(cudaMemcpy(h, d, 2 * n, cudaMemcpyDeviceToHost), "download");
    cuda_bf16_to_f32_host(f, h, n);
    free(h);
    return f;
}
static float *host_f32(const void *d, size_t n) {
    float *f = malloc(4 * n);
    check(cudaMemcpy(f, d, 4 * n, cudaMemcpyDeviceToHost), "download");
    return f;
}
// ||a - b|| / ||b|| over n elements with stride ld starting at column c0, width w per row (rows = n / ld)
static double rel_l2_cols(const float *a, const float *b, size_t rows, int ld, int c0, int w) {
    double num = 0, den = 0;
    for (size_t r = 0; r < rows; r++)
        for (int c = c0; c < c0 + w; c++) {
            double d = (double)a[r * ld + c] - b[r * ld + c];
            num += d * d;
            den += (double)b[r * ld + c] * b[r * ld + c];
        }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

// median ms of reps runs of body after 3 warm-up runs
#define TIME_MS(reps, out, body) do { cudaEvent_t _a, _b; cudaEventCreate(&_a); cudaEventCreate(&_b); \
    double _t[256]; for (int _w = 0; _w < 3; _w++) { body; } check(cudaDeviceSynchronize(), "warm-up"); \
    for (int _i = 0; _i < (reps); _i++) { cudaEventRecord(_a, 0); body; cudaEventRecord(_b, 0); \
        cudaEventSynchronize(_b); float _ms; cudaEventElapsedTime(&_ms, _a, _b); _t[_i] = _ms; } \
    qsort(_t, (reps), sizeof(double), cmp_d); out = _t[(reps) / 2]; cudaEventDestroy(_a); cudaEventDestroy(_b); \
    check(cudaGetLastError(), "timed runs"); } while (0)

static char table[64][160];
static int nrows;

static void bench(int B, int T, int Hq, int Hkv, int hd, int reps, int seglen) {
    int N = B * T, ld = (Hq + 2 * Hkv) * hd;
    size_t nq = (size_t)N * Hq * hd;
    double ffl = 4.0 * B * (double)T * T * Hq * hd / 2, bfl = 2.5 * ffl;
    void *qkv = dev_rand_bf16((size_t)N * ld, 1.f, 11), *dout = dev_rand_bf16(nq, 1.f, 12);
    void *out = dev_alloc(2 * nq), *dqkv = dev_alloc(2 * (size_t)N * ld);
    float *lse = dev_alloc(4 * (size_t)N * Hq);
    void *ref_out = dev_alloc(2 * nq);
    float *ref_lse = dev_alloc(4 * (size_t)N * Hq);
    void *scratch = dev_alloc(cuda_attention_scratch_bytes(B, T, Hq, Hkv, hd));
    int32_t *seg = NULL;
    if (seglen > 0) {
        int32_t *h = malloc(4 * (size_t)N);
        for (int n = 0; n < N; n++) h[n] = (n % T) / seglen;
        seg = dev_alloc(4 * (size_t)N);
        check(cudaMemcpy(seg, h, 4 * (size_t)N, cudaMemcpyHostToDevice), "upload");
        free(h);
    }
    printf("B%d T%d H%d/%d hd%d%s: forward %.2f GFLOP, backward %.2f GFLOP\n", B, T, Hq, Hkv, hd,
           seg ? " seg" : "", ffl * 1e-9, bfl * 1e-9);
    float *o0 = NULL, *l0 = NULL, *d0 = NULL;
    for (int v = 0; v < CUDA_ATTN_FWD_VARIANTS; v++) {
        cuda_attention_set_fwd_variant(v);
        double ms;
        TIME_MS(reps, ms, cuda_attention_forward(out, lse, qkv, seg, B, T, Hq, Hkv, hd, 0));
        float *o = host_bf16(out, nq), *l = host_f32(lse, (size_t)N * Hq);
        double err = 0;
        if (v == 0) {
            o0 = o; l0 = l;
            check(cudaMemcpy(ref_out, out, 2 * nq, cudaMemcpyDeviceToDevice), "copy");
            check(cudaMemcpy(ref_lse, lse, 4 * (size_t)N * Hq, cudaMemcpyDeviceToDevice), "copy");
        } else {
            double eo = rel_l2_cols(o, o0, N, Hq * hd, 0, Hq * hd), el = rel_l2_cols(l, l0, N, Hq, 0, Hq);
            err = eo > el ? eo : el;
            free(o); free(l);
        }
        printf("  fwd variant %d: %.3f ms, %.0f TFLOP/s, rel L2 vs variant 0 %.2e\n", v, ms, ffl / ms * 1e-9, err);
        if (nrows < 64)
            snprintf(table[nrows++], 160, "| hd%-3d | fwd | %d | %8.3f | %6.1f | %.2e |", hd, v, ms, ffl / ms * 1e-9, err);
    }
    cuda_attention_set_fwd_variant(-1);
    for (int v = 0; v < CUDA_ATTN_BWD_VARIANTS; v++) {
        cuda_attention_set_bwd_variant(v);
        double ms;
        TIME_MS(reps, ms, cuda_attention_backward(dqkv, scratch, dout, ref_out, ref_lse, qkv, seg, B, T, Hq, Hkv, hd, 0));
        float *d = host_bf16(dqkv, (size_t)N * ld);
        double err = 0;
        if (v == 0) d0 = d;
        else {
            double eq = rel_l2_cols(d, d0, N, ld, 0, Hq * hd), ek = rel_l2_cols(d, d0, N, ld, Hq * hd, Hkv * hd);
            double ev = rel_l2_cols(d, d0, N, ld, (Hq + Hkv) * hd, Hkv * hd);
            err = fmax(eq, fmax(ek, ev));
            if (!(err == err)) err = INFINITY;
            free(d);
        }
        printf("  bwd variant %d: %.3f ms, %.0f TFLOP/s, worst rel L2 (dq, dk, dv) vs variant 0 %.2e\n", v, ms,
               bfl / ms * 1e-9, err);
        if (nrows < 64)
            snprintf(table[nrows++], 160, "| hd%-3d | bwd | %d | %8.3f | %6.1f | %.2e |", hd, v, ms, bfl / ms * 1e-9, err);
    }
    cuda_attention_set_bwd_variant(-1);
    free(o0); free(l0); free(d0);
    cudaFree(qkv); cudaFree(dout); cudaFree(out); cudaFree(dqkv); cudaFree(lse); cudaFree(ref_out); cudaFree(ref_lse);
    cudaFree(scratch); cudaFree(seg);
}
#endif

int main(int argc, char **argv) {
#ifndef HALO_CUDA
    (void)argc; (void)argv;
    printf("bench_cuda_attention: built without CUDA\n");
    return 0;
#else
    int B = 4, T = 2048, Hq = 32, Hkv = 8, hd = 0, reps = 10, seglen = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--B") && i + 1 < argc) B = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--T") && i + 1 < argc) T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--hq") && i + 1 < argc) Hq = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--hkv") && i + 1 < argc) Hkv = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--hd") && i + 1 < argc) hd = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seg") && i + 1 < argc) seglen = atoi(argv[++i]);
        else {
            printf("usage: bench_cuda_attention [--B 4] [--T 2048] [--hq 32] [--hkv 8] [--hd 64|128] [--reps 10] "
                   "[--seg L]\n");
            return 0;
        }
    }
    if (B < 1 || T < 1 || Hq < 1 || Hkv < 1 || Hq % Hkv || (hd && hd != 64 && hd != 128) || reps < 1) {
        fprintf(stderr, "bench_cuda_attention: need B, T, hq, hkv >= 1, hq a multiple of hkv, hd 64 or 128\n");
        return 1;
    }
    if (reps > 256) reps = 256;
    if (cuda_device_count() == 0) { printf("bench_cuda_attention: no CUDA device\n"); return 0; }
    if (!hd || hd == 64) bench(B, T, Hq, Hkv, 64, reps, seglen);
    if (!hd || hd == 128) bench(B, T, Hq, Hkv, 128, reps, seglen);
    printf("\n| head_dim | pass | variant | ms | TFLOP/s | rel L2 vs variant 0 |\n|---|---|---|---|---|---|\n");
    for (int i = 0; i < nrows; i++) printf("%s\n", table[i]);
    return 0;
#endif
}
