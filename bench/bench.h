// Helpers shared by the benchmarks: a monotonic clock, the median of repeated measurements, Llama-3 shapes.
#ifndef HALO_BENCH_H
#define HALO_BENCH_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "model/config.h"

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static inline int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
// sorts v in place; the upper median for even n, 0 for n = 0
static inline double median(double *v, int n) { qsort(v, (size_t)n, sizeof *v, cmp_d); return n ? v[n / 2] : 0; }

// The random-weight shapes of the GPU benchmarks: "llama3.2-1b" (hidden 2048, MLP 8192, 16 layers, tied head)
// or "llama3-8b" (4096, 14336, 32 layers), both 32 query / 8 KV heads, vocab 128256; "llama2-7b" (4096, 11008 =
// 172 x 64: a Hadamard order the GPU runs on its generic row kernel; 32 layers, 32 / 32 heads, vocab 32000); the
// variants "qwen2.5-0.5b" (896, 4864, 24 layers, 14 / 2 heads of 64, q/k/v biases) and "qwen3-0.6b" (1024, 3072,
// 28 layers, 16 / 8 heads of 128, q/k head norms), vocab 151936, tied head. layers > 0 overrides the count.
// Returns 0, or -1 (message printed) for an unknown name.
static inline int bench_llama3_config(llama_config *c, const char *model, int layers, int max_pos) {
    memset(c, 0, sizeof *c);
    c->vocab_size = 128256; c->n_kv_heads = 8; c->n_heads = 32; c->max_pos = max_pos; c->norm_eps = 1e-5f;
    c->rope_theta = 500000.f; c->bos_id = c->eos_id = -1;
    if (!strcmp(model, "llama3.2-1b")) { c->dim = 2048; c->hidden_dim = 8192; c->n_layers = 16; c->tie_embeddings = 1; }
    else if (!strcmp(model, "llama3-8b")) { c->dim = 4096; c->hidden_dim = 14336; c->n_layers = 32; c->tie_embeddings = 0; }
    else if (!strcmp(model, "llama2-7b")) {
        c->dim = 4096; c->hidden_dim = 11008; c->n_layers = 32; c->n_kv_heads = 32; c->vocab_size = 32000;
        c->rope_theta = 10000.f;
    } else if (!strcmp(model, "qwen2.5-0.5b") || !strcmp(model, "qwen3-0.6b")) {   // the variants' shapes
        const int q3 = model[4] == '3';
        c->vocab_size = 151936; c->rope_theta = 1000000.f; c->norm_eps = 1e-6f; c->tie_embeddings = 1;
        c->dim = q3 ? 1024 : 896; c->hidden_dim = q3 ? 3072 : 4864; c->n_layers = q3 ? 28 : 24;
        c->n_heads = q3 ? 16 : 14; c->n_kv_heads = q3 ? 8 : 2; c->head_dim = q3 ? 128 : 64;
        if (q3) c->qk_norm = 1;
        else c->bias_kinds = BIAS_QKV;   // Qwen2's q, k, v biases
    } else { fprintf(stderr, "unknown model %s\n", model); return -1; }
    if (layers > 0) c->n_layers = layers;
    if (!c->head_dim) c->head_dim = c->dim / c->n_heads;   // (Qwen3's is its own: 128)
    return 0;
}

#ifdef HALO_CUDA
#include <cuda_runtime_api.h>
// The median ms of `reps` (1..256) calls of run(ctx) on the default stream, each between two CUDA events, after
// `warmup` untimed calls; -1 when run returns non-zero in one of those. A CUDA error ends the program with a message.
static inline void bench_cuda_check(cudaError_t e, const char *what) {
    if (e != cudaSuccess) { fprintf(stderr, "CUDA %s: %s\n", what, cudaGetErrorString(e)); exit(1); }
}
static inline double bench_gpu_ms(int (*run)(const void *ctx), const void *ctx, int warmup, int reps) {
    cudaEvent_t e0, e1;
    bench_cuda_check(cudaEventCreate(&e0), "cudaEventCreate");
    bench_cuda_check(cudaEventCreate(&e1), "cudaEventCreate");
    double t[256];
    int rc = 0;
    for (int i = 0; i < warmup && !rc; i++) rc = run(ctx);
    for (int i = 0; i < reps && !rc; i++) {
        bench_cuda_check(cudaEventRecord(e0, 0), "cudaEventRecord");
        run(ctx);
        bench_cuda_check(cudaEventRecord(e1, 0), "cudaEventRecord");
        bench_cuda_check(cudaEventSynchronize(e1), "cudaEventSynchronize");
        float ms;
        bench_cuda_check(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
        t[i] = ms;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return rc ? -1 : median(t, reps);
}
#endif
#endif
