// 8-bit product rates through cuBLASLt at the shapes HALO's layers run (Llama-3.2-1B at 8192 tokens, one 8B shape),
// for the ways the scales can reach an FP8 product, against INT8 (int32 out) and BF16:
//   dev a,b   alpha and beta read from device memory (CUBLASLT_POINTER_MODE_DEVICE: what halo_gemm.cu does)
//   host      alpha = sA sB and beta from the host (what a host synchronization per product would allow)
//   scale ptr A/B scale pointers (device scalars, scalar mode) with host alpha = 1, beta = 0 or 1
//   a vector  alpha as a device vector over D's rows (CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST)
// Each variant's heuristic first choice and the best of its first 8 candidates (median of reps timed runs). The
// result of each variant is checked against the "dev a,b" product (max relative difference).
//   build/bench/bench_cuda_qgemm [--reps 10] [--only NAME]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef HALO_CUDA
#include <cuda_runtime_api.h>
#include <cublasLt.h>
#include "bench.h"

typedef struct { const char *name; int M, N, K; int d_f32, beta1; } shape;

static const shape SHAPES[] = {
    {"1B Y q/o", 8192, 2048, 2048, 0, 0},    {"1B Y k/v", 8192, 512, 2048, 0, 0},
    {"1B Y gate/up", 8192, 8192, 2048, 0, 0}, {"1B Y down (+res)", 8192, 2048, 8192, 1, 1},
    {"1B E_X q", 8192, 2048, 2048, 1, 0},    {"1B E_X k/v (+)", 8192, 2048, 512, 1, 1},
    {"1B E_X gate", 8192, 2048, 8192, 1, 0}, {"1B E_X down", 8192, 8192, 2048, 1, 0},
    {"1B G q/o (+)", 2048, 2048, 8192, 1, 1}, {"1B G k/v (+)", 512, 2048, 8192, 1, 1},
    {"1B G gate (+)", 8192, 2048, 8192, 1, 1}, {"1B G down (+)", 2048, 8192, 8192, 1, 1},
    {"8B Y gate", 8192, 14336, 4096, 0, 0},
};
enum { NSHAPE = sizeof SHAPES / sizeof SHAPES[0], NALGO = 8 };
enum { V_DEV, V_HOST, V_SCALE, V_AVEC, V_DEV_FAST, V_INT8, V_BF16, NVAR };
static const char *VNAME[NVAR] = {"fp8 dev a,b", "fp8 host", "fp8 scale ptr", "fp8 a vector", "fp8 dev fast",
                                  "int8", "bf16"};

static cublasLtHandle_t lt;
static void *ws;
static const size_t WS = 32u << 20;

#define CK(x) do { cudaError_t _e = (x); if (_e != cudaSuccess) { \
    fprintf(stderr, "CUDA %s: %s\n", #x, cudaGetErrorString(_e)); exit(1); } } while (0)

typedef struct {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c, d;
    cublasLtMatmulHeuristicResult_t res[NALGO];
    int n;
    const void *alpha, *beta;
    int st;
} plan;

// D[M][N] (row-major) = A[M][K] B[N][K]^T = column-major D^T = B^T(op T) A(op N).
static int plan_make(plan *p, int v, const shape *s, const float *d_ab, const float *d_avec, const float *d_sc) {
    memset(p, 0, sizeof *p);
    const int m = s->N, n = s->M, k = s->K;
    cublasComputeType_t ct = v == V_INT8 ? CUBLAS_COMPUTE_32I : CUBLAS_COMPUTE_32F;
    cudaDataType_t st = v == V_INT8 ? CUDA_R_32I : CUDA_R_32F;
    cudaDataType_t ab = v == V_INT8 ? CUDA_R_8I : v == V_BF16 ? CUDA_R_16BF : CUDA_R_8F_E4M3;
    cudaDataType_t dt = v == V_INT8 ? CUDA_R_32I : s->d_f32 ? CUDA_R_32F : CUDA_R_16BF;
    cublasLtMatmulDescCreate(&p->op, ct, st);
    const cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof tA);
    cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof tB);
    static const float one = 1.f, zero = 0.f, host_alpha = 0.125f;
    static const int32_t ione = 1, izero = 0;
    const int beta1 = s->beta1 && v != V_INT8;
    p->beta = beta1 ? &one : &zero;
    p->alpha = &host_alpha;
    if (v == V_DEV || v == V_DEV_FAST) {
        cublasLtPointerMode_t pm = CUBLASLT_POINTER_MODE_DEVICE;
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pm, sizeof pm);
        p->alpha = d_ab;
        p->beta = d_ab + (beta1 ? 2 : 1);   // d_ab = {0.125, 0, 1}
    } else if (v == V_SCALE) {
        const float *sa = d_sc, *sb = d_sc + 1;   // cuBLASLt's A is our B
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sb, sizeof sb);
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sa, sizeof sa);
        p->alpha = &one;
    } else if (v == V_AVEC) {
        cublasLtPointerMode_t pm = CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST;
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pm, sizeof pm);
        p->alpha = d_avec;
    } else if (v == V_INT8) {
        p->alpha = &ione; p->beta = &izero;
    }
    if (v == V_DEV_FAST) {
        int8_t fast = 1;
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast);
    }
    cublasLtMatrixLayoutCreate(&p->a, ab, k, m, k);
    cublasLtMatrixLayoutCreate(&p->b, ab, k, n, k);
    cublasLtMatrixLayoutCreate(&p->c, dt, m, n, m);
    cublasLtMatrixLayoutCreate(&p->d, dt, m, n, m);
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &WS, sizeof WS);
    p->st = cublasLtMatmulAlgoGetHeuristic(lt, p->op, p->a, p->b, p->c, p->d, pref, NALGO, p->res, &p->n);
    cublasLtMatmulPreferenceDestroy(pref);
    return p->st == CUBLAS_STATUS_SUCCESS && p->n > 0;
}

static void plan_free(plan *p) {
    cublasLtMatmulDescDestroy(p->op);
    cublasLtMatrixLayoutDestroy(p->a); cublasLtMatrixLayoutDestroy(p->b);
    cublasLtMatrixLayoutDestroy(p->c); cublasLtMatrixLayoutDestroy(p->d);
}

static int run(const plan *p, int algo, const void *A, const void *B, void *D) {
    return (int)cublasLtMatmul(lt, p->op, p->alpha, B, p->a, A, p->b, p->beta, D, p->c, D, p->d,
                               &p->res[algo].algo, ws, WS, 0);
}

static double time_ms(const plan *p, int algo, const void *A, const void *B, void *D, int reps) {
    cudaEvent_t a, b;
    cudaEventCreate(&a); cudaEventCreate(&b);
    double t[64];
    for (int i = 0; i < 3; i++) if (run(p, algo, A, B, D)) return -1;
    for (int i = 0; i < reps; i++) {
        cudaEventRecord(a, 0);
        run(p, algo, A, B, D);
        cudaEventRecord(b, 0);
        cudaEventSynchronize(b);
        float ms; cudaEventElapsedTime(&ms, a, b);
        t[i] = ms;
    }
    cudaEventDestroy(a); cudaEventDestroy(b);
    if (cudaGetLastError() != cudaSuccess) return -1;
    qsort(t, reps, sizeof(double), cmp_d);
    return t[reps / 2];
}

static void fill_random(void *d, size_t bytes, int kind, unsigned seed) {
    unsigned char *h = malloc(bytes);
    unsigned long long s = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t i = 0; i < bytes; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        unsigned r = (unsigned)(s >> 33);
        if (kind == 0) h[i] = (unsigned char)((r % 0x70) | (r & 0x80));      // E4M3 below 2^-... to ~240, no NaN
        else if (kind == 1) h[i] = (unsigned char)(int8_t)((int)(r % 255) - 127);
        else h[i] = (i & 1) ? (unsigned char)(0x3C + (r % 3) - 1) | (r & 0x80) : (unsigned char)r;   // bf16 ~[0.5, 2]
    }
    CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    free(h);
}

// max |x - ref| / max |ref| over D (fp32 or bf16 on the device).
static double rel_diff(const void *x, const void *ref, size_t n, int f32) {
    size_t bytes = n * (f32 ? 4 : 2);
    unsigned char *hx = malloc(bytes), *hr = malloc(bytes);
    CK(cudaMemcpy(hx, x, bytes, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hr, ref, bytes, cudaMemcpyDeviceToHost));
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        float a, b;
        if (f32) { a = ((float *)hx)[i]; b = ((float *)hr)[i]; }
        else {
            unsigned ua = (unsigned)((uint16_t *)hx)[i] << 16, ub = (unsigned)((uint16_t *)hr)[i] << 16;
            memcpy(&a, &ua, 4); memcpy(&b, &ub, 4);
        }
        double d = fabs((double)a - b);
        if (d > md || d != d) md = d != d ? INFINITY : d;
        if (fabs(b) > mr) mr = fabs(b);
    }
    free(hx); free(hr);
    return mr > 0 ? md / mr : md;
}
#endif

int main(int argc, char **argv) {
#ifndef HALO_CUDA
    (void)argc; (void)argv;
    printf("bench_cuda_qgemm: built without CUDA\n");
    return 0;
#else
    int reps = 10;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else { printf("usage: bench_cuda_qgemm [--reps N] [--only SHAPE-SUBSTRING]\n"); return 2; }
    }
    if (reps < 1) reps = 1;
    if (reps > 64) reps = 64;
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "cublasLtCreate failed\n"); return 1; }
    printf("cuBLASLt version %zu\n", cublasLtGetVersion());
    CK(cudaMalloc(&ws, WS));
    size_t maxA = 0, maxB = 0, maxD = 0;
    for (int i = 0; i < NSHAPE; i++) {
        const shape *s = &SHAPES[i];
        if ((size_t)s->M * s->K > maxA) maxA = (size_t)s->M * s->K;
        if ((size_t)s->N * s->K > maxB) maxB = (size_t)s->N * s->K;
        if ((size_t)s->M * s->N > maxD) maxD = (size_t)s->M * s->N;
    }
    void *A8, *B8, *Ai, *Bi, *A16, *B16, *D, *Dref;
    float *d_ab, *d_avec, *d_sc;
    CK(cudaMalloc(&A8, maxA)); CK(cudaMalloc(&B8, maxB)); CK(cudaMalloc(&Ai, maxA)); CK(cudaMalloc(&Bi, maxB));
    CK(cudaMalloc(&A16, 2 * maxA)); CK(cudaMalloc(&B16, 2 * maxB));
    CK(cudaMalloc(&D, 4 * maxD)); CK(cudaMalloc(&Dref, 4 * maxD));
    fill_random(A8, maxA, 0, 1); fill_random(B8, maxB, 0, 2); fill_random(Ai, maxA, 1, 3); fill_random(Bi, maxB, 1, 4);
    fill_random(A16, 2 * maxA, 2, 5); fill_random(B16, 2 * maxB, 2, 6);
    const float ab[3] = {0.125f, 0.f, 1.f}, sc[2] = {0.5f, 0.25f};
    CK(cudaMalloc((void **)&d_ab, sizeof ab)); CK(cudaMemcpy(d_ab, ab, sizeof ab, cudaMemcpyHostToDevice));
    CK(cudaMalloc((void **)&d_sc, sizeof sc)); CK(cudaMemcpy(d_sc, sc, sizeof sc, cudaMemcpyHostToDevice));
    {
        size_t nv = 16384;
        float *h = malloc(nv * 4);
        for (size_t i = 0; i < nv; i++) h[i] = 0.125f;
        CK(cudaMalloc((void **)&d_avec, nv * 4)); CK(cudaMemcpy(d_avec, h, nv * 4, cudaMemcpyHostToDevice));
        free(h);
    }
    printf("| shape | M x N x K | D | variant | first ms | TFLOP/s | best ms (#) | TFLOP/s | vs dev a,b |\n");
    printf("|---|---|---|---|---|---|---|---|---|\n");
    for (int si = 0; si < NSHAPE; si++) {
        const shape *s = &SHAPES[si];
        if (only && !strstr(s->name, only)) continue;
        const double flop = 2.0 * s->M * s->N * s->K;
        const size_t nd = (size_t)s->M * s->N;
        for (int v = 0; v < NVAR; v++) {
            plan p;
            if (!plan_make(&p, v, s, d_ab, d_avec, d_sc)) {
                printf("| %s | %dx%dx%d | %s | %s | no algorithm (status %d) | | | | |\n", s->name, s->M, s->N, s->K,
                       s->d_f32 ? "f32" : "bf16", VNAME[v], p.st);
                plan_free(&p);
                continue;
            }
            const void *A = v == V_INT8 ? Ai : v == V_BF16 ? A16 : A8, *B = v == V_INT8 ? Bi : v == V_BF16 ? B16 : B8;
            CK(cudaMemset(D, 0, 4 * nd));
            int rc = run(&p, 0, A, B, D);
            CK(cudaDeviceSynchronize());
            if (rc) {
                printf("| %s | %dx%dx%d | %s | %s | matmul status %d | | | | |\n", s->name, s->M, s->N, s->K,
                       s->d_f32 ? "f32" : "bf16", VNAME[v], rc);
                plan_free(&p);
                continue;
            }
            double check = -1;
            if (v == V_DEV) CK(cudaMemcpy(Dref, D, 4 * nd, cudaMemcpyDeviceToDevice));
            else if (v < V_INT8) check = rel_diff(D, Dref, nd, s->d_f32);
            const double t0 = time_ms(&p, 0, A, B, D, reps);
            double tb = t0;
            int ib = 0;
            for (int a = 1; a < p.n; a++) {
                const double t = time_ms(&p, a, A, B, D, reps);
                if (t > 0 && (tb < 0 || t < tb)) { tb = t; ib = a; }
            }
            char cs[32] = "";
            if (check >= 0) snprintf(cs, sizeof cs, "%.1e", check);
            printf("| %s | %dx%dx%d | %s | %s | %.4f | %.0f | %.4f (%d of %d) | %.0f | %s |\n", s->name, s->M, s->N,
                   s->K, v == V_INT8 ? "i32" : s->d_f32 ? "f32" : "bf16", VNAME[v], t0, flop / (t0 * 1e9), tb, ib,
                   p.n, flop / (tb * 1e9), cs);
            fflush(stdout);
            plan_free(&p);
        }
    }
    return 0;
#endif
}
