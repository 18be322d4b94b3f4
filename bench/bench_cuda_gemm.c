// The BF16 block-linear products of one layer of the training step, each timed alone at a model's shapes (default
// Llama-3.2-1B, 8192 tokens), in five forms:
//   step:      as src/cuda/llama_cuda.cu calls them (q/k/v and gate/up fused; o and down write fp32 into the residual
//              with beta 1; dW written as fp32, the first micro-batch's form)
//   bf16 out:  every output bf16 with beta 0 (PyTorch's form: separate outputs, bf16 weight gradients)
//   GemmEx:    the step's form through cublasGemmEx (cuBLAS's own heuristic, the call PyTorch's mm makes)
//   GemmEx bf16: GemmEx with bf16 outputs, beta 0
//   best of N: the step's form with each of cuBLASLt's first N heuristic candidates (--cands, default 8) timed, and
//              the fastest kept (the step takes the first candidate, src/cuda/matmul.cu)
// Each is the median of --reps calls timed one by one after a synchronization (--back-to-back: the mean of --reps
// calls queued without a wait) over two rotating input sets; --rounds R (default 3) repeats
// every form R times, interleaved, and reports the median round (the GPU runs these at its power limit, and one
// product's time drifts by 5-15% between consecutive measurements). TFLOP/s counts 2 M N K.
// The last lines sum the layer's forms over the model's layers, to set beside the step's "block products" time
// (bench_cuda_train --breakdown) and dev/cuda/probe/torch_gemm_shapes.py's PyTorch timings of the same products.
//   build/bench/bench_cuda_gemm [--model llama3.2-1b|llama3-8b] [--tokens 8192] [--reps 20] [--cands 8] [--rounds 3] [--gauss] [--back-to-back]
//   (--gauss: normal inputs, weights of sd 0.02, as torch_gemm_shapes.py draws them; default uniform in [-1, 1))
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef HALO_CUDA
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include "bench.h"
#include "cuda/cuda_backend.h"

#define CK(x) bench_cuda_check((x), #x)
#define LT(x) do { cublasStatus_t _s = (x); if (_s != CUBLAS_STATUS_SUCCESS) { \
    fprintf(stderr, "cuBLASLt %d: %s\n", (int)_s, #x); exit(1); } } while (0)

enum { FWD, DX, DW };
typedef struct {
    const char *name;
    int kind, b, m, n;   // the step's shape arguments: X [b, m], W [n, m]
    int resid;           // forward of o / down: fp32 Y += X W^T
} product;

typedef struct {
    const product *p;
    int form;            // 0 step, 1 bf16 out, 2 GemmEx in the step's form, 3 GemmEx bf16 out
    void *X[2], *W[2], *dY[2], *out;
    int rot;
    cublasHandle_t cb;
} call;

// matmul.cu's column-major mapping of the step's products: D (M x N) = op(A) op(B), ta / tb transposes
typedef struct { int ta, tb, M, N, K, lda, ldb, ldd, f32; float beta; int a_is_w, b_is_x; } colmajor;
static colmajor map_product(const product *p, int step_form) {
    colmajor c;
    memset(&c, 0, sizeof c);
    if (p->kind == FWD) {   // Y^T = W^T^T X^T
        c.ta = 1; c.M = p->n; c.N = p->b; c.K = p->m; c.lda = p->m; c.ldb = p->m; c.ldd = p->n;
        c.f32 = step_form && p->resid; c.beta = c.f32 ? 1.f : 0.f; c.a_is_w = 1; c.b_is_x = 1;
    } else if (p->kind == DX) {   // dX^T = W^T dY^T
        c.M = p->m; c.N = p->b; c.K = p->n; c.lda = p->m; c.ldb = p->n; c.ldd = p->m; c.a_is_w = 1;
    } else {   // dW^T = X^T dY
        c.tb = 1; c.M = p->m; c.N = p->n; c.K = p->b; c.lda = p->m; c.ldb = p->n; c.ldd = p->m; c.f32 = step_form;
    }
    return c;
}

static int run_gemmex(call *c, int i) {
    const colmajor m = map_product(c->p, c->form == 2);
    const void *A = m.a_is_w ? c->W[i] : c->X[i], *B = m.b_is_x ? c->X[i] : c->dY[i];
    const float alpha = 1.f;
    return cublasGemmEx(c->cb, m.ta ? CUBLAS_OP_T : CUBLAS_OP_N, m.tb ? CUBLAS_OP_T : CUBLAS_OP_N, m.M, m.N, m.K,
                        &alpha, A, CUDA_R_16BF, m.lda, B, CUDA_R_16BF, m.ldb, &m.beta, c->out,
                        m.f32 ? CUDA_R_32F : CUDA_R_16BF, m.ldd, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)
           != CUBLAS_STATUS_SUCCESS;
}

static int run_call(const void *ctx) {
    call *c = (call *)ctx;
    const product *p = c->p;
    const int i = c->rot++ & 1;
    if (c->form >= 2) return run_gemmex(c, i);
    if (p->kind == FWD) {
        if (c->form == 0 && p->resid) cuda_linear_forward(c->out, 1, c->X[i], c->W[i], c->out, p->b, p->m, p->n, 0);
        else cuda_linear_forward(c->out, 0, c->X[i], c->W[i], NULL, p->b, p->m, p->n, 0);
    } else if (p->kind == DX) cuda_linear_backward_dx(c->out, c->dY[i], c->W[i], p->b, p->m, p->n, 0);
    else if (c->form == 0) cuda_linear_backward_dw_set(c->out, c->dY[i], c->X[i], p->b, p->m, p->n, 0);
    else cuda_linear_backward_dw_bf16(c->out, c->dY[i], c->X[i], p->b, p->m, p->n, 0, 0);
    return 0;
}

// By default bench.h's bench_gpu_ms: the median of calls each between its own events after a synchronization, which
// counts the launch from an idle GPU. --back-to-back: ms a call of `reps` calls queued between two events, after
// `warmup` calls, the way torch_gemm_shapes.py times PyTorch's (dev/cuda/NOTES.md run 23: ~1.8 ms less over the 1B
// products than the default, PyTorch's still ~5.6 ms less).
static int g_sync_each = 1;
static double gpu_ms(int (*run)(const void *ctx), const void *ctx, int warmup, int reps) {
    if (g_sync_each) return bench_gpu_ms(run, ctx, warmup, reps);
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    int rc = 0;
    for (int i = 0; i < warmup; i++) rc |= run(ctx);
    CK(cudaEventRecord(e0, 0));
    for (int i = 0; i < reps; i++) rc |= run(ctx);
    CK(cudaEventRecord(e1, 0));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    cudaEventDestroy(e0); cudaEventDestroy(e1);
    return rc ? -1 : ms / reps;
}

// The step's form as one column-major cuBLASLt call (matmul.cu's mapping) with a given algorithm
typedef struct {
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c, d;
    const cublasLtMatmulAlgo_t *algo;
    const void *A[2], *B[2];
    void *D, *ws;
    size_t ws_bytes;
    float beta;
    int rot;
} lt_call;

static int run_lt(const void *ctx) {
    lt_call *c = (lt_call *)ctx;
    const int i = c->rot++ & 1;
    const float alpha = 1.f;
    return cublasLtMatmul(c->lt, c->op, &alpha, c->A[i], c->a, c->B[i], c->b, &c->beta, c->D, c->c, c->D, c->d,
                          c->algo, c->ws, c->ws_bytes, 0) != CUBLAS_STATUS_SUCCESS;
}

// Times each of the first ncand (<= 32) candidates once into t[i]; returns how many there were.
static int time_candidates(cublasLtHandle_t lt, void *ws, size_t ws_bytes, const product *p, void *const X[2],
                           void *const W[2], void *const dY[2], void *out, int ncand, int reps, double *t) {
    const colmajor m = map_product(p, 1);
    const int ta = m.ta, tb = m.tb, M = m.M, N = m.N, K = m.K;
    lt_call c;
    memset(&c, 0, sizeof c);
    c.lt = lt; c.ws = ws; c.ws_bytes = ws_bytes; c.D = out; c.beta = m.beta;
    for (int i = 0; i < 2; i++) { c.A[i] = m.a_is_w ? W[i] : X[i]; c.B[i] = m.b_is_x ? X[i] : dY[i]; }
    LT(cublasLtMatmulDescCreate(&c.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    LT(cublasLtMatmulDescSetAttribute(c.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    LT(cublasLtMatmulDescSetAttribute(c.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    const cudaDataType_t dt = m.f32 ? CUDA_R_32F : CUDA_R_16BF;
    LT(cublasLtMatrixLayoutCreate(&c.a, CUDA_R_16BF, ta ? K : M, ta ? M : K, m.lda));
    LT(cublasLtMatrixLayoutCreate(&c.b, CUDA_R_16BF, tb ? N : K, tb ? K : N, m.ldb));
    LT(cublasLtMatrixLayoutCreate(&c.c, dt, M, N, m.ldd));
    LT(cublasLtMatrixLayoutCreate(&c.d, dt, M, N, m.ldd));
    cublasLtMatmulPreference_t pref;
    LT(cublasLtMatmulPreferenceCreate(&pref));
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof ws_bytes));
    cublasLtMatmulHeuristicResult_t res[32];
    int found = 0;
    LT(cublasLtMatmulAlgoGetHeuristic(lt, c.op, c.a, c.b, c.c, c.d, pref, ncand, res, &found));
    cublasLtMatmulPreferenceDestroy(pref);
    for (int i = 0; i < found; i++) {
        c.algo = &res[i].algo;
        t[i] = gpu_ms(run_lt, &c, 3, reps);   // -1 when the candidate fails
    }
    cublasLtMatmulDescDestroy(c.op);
    cublasLtMatrixLayoutDestroy(c.a); cublasLtMatrixLayoutDestroy(c.b);
    cublasLtMatrixLayoutDestroy(c.c); cublasLtMatrixLayoutDestroy(c.d);
    return found;
}

// bf16 values, uniform in [-1, 1), or with --gauss normal of standard deviation sd (torch_gemm_shapes.py's data; the
// choice moved neither program's timings by more than ~5%, dev/cuda/NOTES.md run 22, call 8)
static int g_gauss;
static void *dev_rand_bf16(size_t n, unsigned seed, float sd) {
    unsigned short *h = malloc(n * 2);
    unsigned s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        float f = ((float)(s >> 8) / 16777216.f) * 2.f - 1.f;
        if (g_gauss) {   // Box-Muller from two uniforms in (0, 1]
            s = s * 1664525u + 1013904223u;
            const float u1 = ((float)(s >> 8) + 1.f) / 16777216.f, u2 = (f + 1.f) * 0.5f;
            f = sd * sqrtf(-2.f * logf(u1)) * cosf(6.2831853f * u2);
        }
        unsigned u;
        memcpy(&u, &f, 4);
        h[i] = (unsigned short)(u >> 16);
    }
    void *d;
    CK(cudaMalloc(&d, n * 2));
    CK(cudaMemcpy(d, h, n * 2, cudaMemcpyHostToDevice));
    free(h);
    return d;
}

int main(int argc, char **argv) {
    const char *model = "llama3.2-1b";
    int tokens = 8192, reps = 20, ncand = 8, rounds = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) tokens = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cands") && i + 1 < argc) ncand = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gauss")) g_gauss = 1;
        else if (!strcmp(argv[i], "--back-to-back")) g_sync_each = 0;
        else {
            printf("usage: bench_cuda_gemm [--model llama3.2-1b|llama3-8b] [--tokens N] [--reps R] [--cands N] [--rounds R] [--gauss] [--back-to-back]\n");
            return strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    if (reps < 1 || reps > 256 || tokens < 1 || ncand < 1 || ncand > 32 || rounds < 1 || rounds > 15) {
        fprintf(stderr, "bad --reps (1-256), --tokens, --cands (1-32) or --rounds (1-15)\n");
        return 2;
    }
    llama_config cfg;
    if (bench_llama3_config(&cfg, model, 0, 4096)) return 2;
    const int D = cfg.dim, F = cfg.hidden_dim, kvd = cfg.n_kv_heads * cfg.head_dim, Nt = tokens;
    const product P[] = {
        {"qkv fwd", FWD, Nt, D, D + 2 * kvd, 0}, {"o fwd", FWD, Nt, D, D, 1},
        {"gate/up fwd", FWD, Nt, D, 2 * F, 0},   {"down fwd", FWD, Nt, F, D, 1},
        {"qkv dX", DX, Nt, D, D + 2 * kvd, 0},   {"o dX", DX, Nt, D, D, 0},
        {"gate/up dX", DX, Nt, D, 2 * F, 0},     {"down dX", DX, Nt, F, D, 0},
        {"qkv dW", DW, Nt, D, D + 2 * kvd, 0},   {"o dW", DW, Nt, D, D, 0},
        {"gate/up dW", DW, Nt, D, 2 * F, 0},     {"down dW", DW, Nt, F, D, 0},
    };
    const int np = (int)(sizeof P / sizeof P[0]);
    size_t xmax = 0, wmax = 0, ymax = 0, omax = 0;
    for (int i = 0; i < np; i++) {
        const size_t x = (size_t)P[i].b * P[i].m, w = (size_t)P[i].n * P[i].m, y = (size_t)P[i].b * P[i].n;
        if (x > xmax) xmax = x;
        if (w > wmax) wmax = w;
        if (y > ymax) ymax = y;
        const size_t o = P[i].kind == FWD ? y : P[i].kind == DX ? x : w;
        if (o > omax) omax = o;
    }
    void *X[2], *W[2], *dY[2], *out;
    for (int i = 0; i < 2; i++) {
        X[i] = dev_rand_bf16(xmax, 1 + i, 1.f); W[i] = dev_rand_bf16(wmax, 11 + i, 0.02f);
        dY[i] = dev_rand_bf16(ymax, 21 + i, 1.f);
    }
    CK(cudaMalloc(&out, omax * 4));
    CK(cudaMemset(out, 0, omax * 4));
    cublasLtHandle_t lt;
    LT(cublasLtCreate(&lt));
    const size_t ws_bytes = 64u << 20;
    void *ws;
    CK(cudaMalloc(&ws, ws_bytes));
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    cublasHandle_t cb;
    if (cublasCreate(&cb) != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "cublasCreate failed\n"); return 1; }
    printf("bench_cuda_gemm: %s, %s shapes, %d tokens, %s of %d calls, median of %d rounds, %d candidates, %s data\n\n",
           prop.name, model, tokens, g_sync_each ? "median" : "back-to-back mean", reps, rounds, ncand,
           g_gauss ? "normal" : "uniform");
    printf("| product | M x N x K | step (Lt first) ms | TFLOP/s | bf16 out | GemmEx | GemmEx bf16 | best of N ms (which) "
           "| TFLOP/s |\n|---|---|---|---|---|---|---|---|---|\n");
    enum { NF = 5 };   // step, bf16 out, GemmEx, GemmEx bf16, best candidate
    static const char *FN[NF] = {"step (Lt first)", "bf16 out", "GemmEx", "GemmEx bf16", "best of N"};
    double sum[NF], kind_sum[3][NF], flops = 0;
    memset(sum, 0, sizeof sum); memset(kind_sum, 0, sizeof kind_sum);
    for (int i = 0; i < np; i++) {
        const product *p = &P[i];
        const double f = 2.0 * p->b * p->m * p->n;
        double tf[4][15], tc[32][15], med[NF];
        int nfound = 0;
        for (int r = 0; r < rounds; r++) {
            for (int form = 0; form < 4; form++) {
                call c = {p, form, {X[0], X[1]}, {W[0], W[1]}, {dY[0], dY[1]}, out, 0, cb};
                tf[form][r] = gpu_ms(run_call, &c, 3, reps);
            }
            double t[32];
            nfound = time_candidates(lt, ws, ws_bytes, p, X, W, dY, out, ncand, reps, t);
            for (int k = 0; k < nfound; k++) tc[k][r] = t[k];
        }
        for (int form = 0; form < 4; form++) med[form] = median(tf[form], rounds);
        int bi = -1;
        med[4] = 1e30;
        for (int k = 0; k < nfound; k++) {
            const double m = median(tc[k], rounds);
            if (m > 0 && m < med[4]) { med[4] = m; bi = k; }
        }
        const colmajor cm = map_product(p, 1);
        printf("| %s | %d x %d x %d | %.3f | %.0f | %.3f | %.3f | %.3f | %.3f (%d of %d) | %.0f |\n", p->name, cm.M, cm.N,
               cm.K, med[0], f / med[0] / 1e9, med[1], med[2], med[3], med[4], bi, nfound, f / med[4] / 1e9);
        for (int k = 0; k < NF; k++) { sum[k] += med[k]; kind_sum[p->kind][k] += med[k]; }
        flops += f;
    }
    const int L = cfg.n_layers;
    printf("\n| over %d layers, ms |", L);
    for (int k = 0; k < NF; k++) printf(" %s |", FN[k]);
    printf("\n|---|---|---|---|---|---|\n");
    static const char *KN[3] = {"forward", "dX", "dW"};
    for (int q = 0; q < 3; q++) {
        printf("| %s |", KN[q]);
        for (int k = 0; k < NF; k++) printf(" %.2f |", L * kind_sum[q][k]);
        printf("\n");
    }
    printf("| all (%.1f TFLOP) |", L * flops / 1e12);
    for (int k = 0; k < NF; k++) printf(" %.2f (%.0f TFLOP/s) |", L * sum[k], flops / sum[k] / 1e9);
    printf("\n");
    cublasDestroy(cb);
    for (int i = 0; i < 2; i++) { cudaFree(X[i]); cudaFree(W[i]); cudaFree(dY[i]); }
    cudaFree(out); cudaFree(ws);
    cublasLtDestroy(lt);
    cuda_matmul_shutdown();
    return 0;
}
#else
int main(void) { printf("built without CUDA\n"); return 0; }
#endif
