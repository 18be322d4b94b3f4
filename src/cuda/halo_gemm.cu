// HALO's 8-bit products through cuBLASLt: FP8 E4M3 x E4M3 with fp32 accumulation (alpha = sA sB read from the
// device, CUBLASLT_POINTER_MODE_DEVICE: no A/B scale pointers, which failed with status 15 in scalar mode) and
// INT8 x INT8 -> INT32 (CUBLAS_COMPUTE_32I). Row-major D[M][N] = A[M][K] B[N][K]^T is the column-major
// D^T = B^T(op T) A(op N): the "TN" layout both 8-bit paths need. Own handle, workspace and plan cache, so the BF16
// matmul.cu stays untouched.
#include <cublasLt.h>
#include <string.h>
#include "cuda/common.cuh"
#include "cuda/halo_cuda.h"
#include "cuda/lt_candidates.cuh"
extern "C" {
#include "util/error.h"
}

typedef struct {
    int fp8, M, N, K;
    long lda, ldb, ldd;
    int d_f32, acc, fast;
} qgemm_key;

typedef struct {
    qgemm_key key;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c, d;
    cublasLtMatmulAlgo_t algo;
} qgemm_plan;

enum { QGEMM_CACHE = 128 };
static cublasLtHandle_t g_lt;
static void *g_ws;
static size_t g_ws_bytes = 32u << 20;
static float *g_consts;   // device {0, 1}: beta for the device pointer mode
static qgemm_plan g_plans[QGEMM_CACHE];
static int g_nplans;

static int lt_status(cublasStatus_t st, const char *what) {
    if (st == CUBLAS_STATUS_SUCCESS) return HALO_OK;
    return halo_fail("cuBLASLt %s failed with status %d", what, (int)st);
}

static void lt_init(void) {
    if (g_lt) return;
    if (cublasLtCreate(&g_lt) != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "cublasLtCreate failed\n"); abort(); }
    CUDA_CHECK(cudaMalloc(&g_ws, g_ws_bytes));
    CUDA_CHECK(cudaMalloc((void **)&g_consts, 2 * sizeof(float)));
    const float c[2] = {0.f, 1.f};
    CUDA_CHECK(cudaMemcpy(g_consts, c, sizeof c, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaDeviceSynchronize());   // before any stream (non-blocking ones too) reads the constants
}

static void plan_destroy(qgemm_plan *p) {
    cublasLtMatmulDescDestroy(p->op);
    cublasLtMatrixLayoutDestroy(p->a); cublasLtMatrixLayoutDestroy(p->b);
    cublasLtMatrixLayoutDestroy(p->c); cublasLtMatrixLayoutDestroy(p->d);
}

extern "C" void halo_cuda_gemm_shutdown(void) {
    for (int i = 0; i < g_nplans; i++) plan_destroy(&g_plans[i]);
    g_nplans = 0;
    if (g_ws) cudaFree(g_ws);
    if (g_consts) cudaFree(g_consts);
    g_ws = NULL; g_consts = NULL;
    if (g_lt) cublasLtDestroy(g_lt);
    g_lt = NULL;
}

// Algorithm choice: the fastest of cuBLASLt's first QGEMM_TRY heuristics (or only its first with halo_cuda_gemm_tune(0)
// or HALO_GEMM_TUNE=0) by timing at plan time on the call's own operands, with the output into scratch (so accumulating
// calls keep their target). On an H200 the first choice was up to 1.7x slower for the small-K input gradients of k/v
// at the 1B shapes (bench_cuda_qgemm). The timing synchronizes the stream once per new shape.
// Only a clear win (15%) replaces the first choice, and FP8 products are timed only for K <= 1024: on the H200 the
// timed picks for FP8 level-1 8B layers (K 4096-14336) made whole layers 15-20% slower, every kernel of them included
// (gate 3.05 -> 3.48 ms, down 3.78 -> 4.61; power, by the look of it: dev/cuda/h200_2026-12-03e/call4_*, final_*),
// while INT8 gained at every shape (gate products 1.99 -> 1.73 ms) and FP8 most for the k/v input gradients (K 512:
// 0.086 -> 0.051 ms).
enum { QGEMM_TRY = 8, QGEMM_FP8_TUNE_MAX_K = 1024 };
static const float QGEMM_MIN_GAIN = 0.85f;
static int g_tune = -1;
extern "C" void halo_cuda_gemm_tune(int on) { g_tune = on ? 1 : 0; }
extern "C" int halo_cuda_gemm_tuning(void) { return env_switch(&g_tune, "HALO_GEMM_TUNE"); }
// HALO_GEMM_TUNE=2 (a study of the rule above, not for use): FP8 products are timed at every K too
static int tune_fp8_every_k(void) {
    static int v = -1;
    if (v < 0) { const char *e = getenv("HALO_GEMM_TUNE"); v = e && e[0] == '2'; }
    return v;
}

typedef struct {   // one call's operands, for timing the candidate algorithms
    const void *alpha, *beta, *A, *B, *C;
    size_t d_bytes;
    cudaStream_t s;
} qgemm_call;

static qgemm_plan *plan_get(const qgemm_key *k, const qgemm_call *call) {
    for (int i = 0; i < g_nplans; i++)
        if (!memcmp(&g_plans[i].key, k, sizeof *k)) return &g_plans[i];
    if (g_nplans == QGEMM_CACHE) { halo_cuda_gemm_shutdown(); lt_init(); }
    qgemm_plan p;
    memset(&p, 0, sizeof p);
    p.key = *k;
    cublasStatus_t st;
    const cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
    // cuBLASLt's A is our B ([N][K] row-major = K x N column-major, transposed), its B is our A.
    const int m = k->N, n = k->M, kk = k->K;
    if (k->fp8) {
        if ((st = cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F))) { lt_status(st, "fp8 desc"); return NULL; }
        cublasLtPointerMode_t pm = CUBLASLT_POINTER_MODE_DEVICE;
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pm, sizeof pm);
        int8_t fast = (int8_t)k->fast;
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast);
    } else {
        if ((st = cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32I, CUDA_R_32I))) { lt_status(st, "int8 desc"); return NULL; }
    }
    cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof tA);
    cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof tB);
    const cudaDataType_t ab = k->fp8 ? CUDA_R_8F_E4M3 : CUDA_R_8I;
    const cudaDataType_t dt = k->fp8 ? (k->d_f32 ? CUDA_R_32F : CUDA_R_16BF) : CUDA_R_32I;
    cublasLtMatrixLayoutCreate(&p.a, ab, kk, m, k->ldb);
    cublasLtMatrixLayoutCreate(&p.b, ab, kk, n, k->lda);
    cublasLtMatrixLayoutCreate(&p.c, dt, m, n, k->ldd);
    cublasLtMatrixLayoutCreate(&p.d, dt, m, n, k->ldd);
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &g_ws_bytes, sizeof g_ws_bytes);
    cublasLtMatmulHeuristicResult_t res[QGEMM_TRY];
    int found = 0;
    const int tune = halo_cuda_gemm_tuning() && (!k->fp8 || k->K <= QGEMM_FP8_TUNE_MAX_K || tune_fp8_every_k());
    st = cublasLtMatmulAlgoGetHeuristic(g_lt, p.op, p.a, p.b, p.c, p.d, pref, tune ? QGEMM_TRY : 1, res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || !found) {
        plan_destroy(&p);
        halo_fail("cuBLASLt: no %s algorithm for M=%d N=%d K=%d lda=%ld ldb=%ld ldd=%ld (status %d)",
                  k->fp8 ? "fp8" : "int8", k->M, k->N, k->K, k->lda, k->ldb, k->ldd, (int)st);
        return NULL;
    }
    int pick = 0;
    if (found > 1) {
        const lt_product lp = {g_lt, p.op, p.a, p.b, p.c, p.d, call->alpha, call->beta, call->A, call->B, call->C,
                               call->d_bytes, g_ws, g_ws_bytes, call->s};
        pick = lt_fastest_candidate(&lp, res, found, QGEMM_MIN_GAIN);
    }
    p.algo = res[pick].algo;
    g_plans[g_nplans] = p;
    return &g_plans[g_nplans++];
}

static int gemm_fp8(void *D, int d_f32, long ldd, const void *C, const uint8_t *A, long lda, const uint8_t *B,
                    long ldb, int M, int N, int K, const float *alpha, int accumulate, cudaStream_t s) {
    if (M <= 0 || N <= 0) return HALO_OK;
    if (accumulate && !d_f32) return halo_fail("halo_cuda_gemm_fp8: accumulation needs an fp32 output");
    lt_init();
    static int fast = -1;
    env_switch_off(&fast, "HALO_FP8_FAST_ACCUM");
    qgemm_key k;
    memset(&k, 0, sizeof k);
    k.fp8 = 1; k.M = M; k.N = N; k.K = K; k.lda = lda; k.ldb = ldb; k.ldd = ldd; k.d_f32 = d_f32;
    k.acc = accumulate; k.fast = fast;
    const float *beta = g_consts + (accumulate ? 1 : 0);
    const qgemm_call call = {alpha, beta, B, A, C ? C : (accumulate ? D : NULL), (size_t)ldd * M * (d_f32 ? 4 : 2), s};
    qgemm_plan *p = plan_get(&k, &call);
    if (!p) return HALO_ERR;
    return lt_status(cublasLtMatmul(g_lt, p->op, alpha, B, p->a, A, p->b, beta, C ? C : D, p->c, D, p->d, &p->algo,
                                    g_ws, g_ws_bytes, s), "fp8 matmul");
}

extern "C" int halo_cuda_gemm_fp8(void *D, int d_f32, long ldd, const uint8_t *A, long lda, const uint8_t *B,
                                  long ldb, int M, int N, int K, const float *alpha, int accumulate, cudaStream_t s) {
    return gemm_fp8(D, d_f32, ldd, NULL, A, lda, B, ldb, M, N, K, alpha, accumulate, s);
}

extern "C" int halo_cuda_gemm_fp8_res(float *D, long ldd, const float *C, const uint8_t *A, long lda, const uint8_t *B,
                                      long ldb, int M, int N, int K, const float *alpha, cudaStream_t s) {
    return gemm_fp8(D, 1, ldd, C, A, lda, B, ldb, M, N, K, alpha, 1, s);
}

extern "C" int halo_cuda_gemm_s8(int32_t *D, long ldd, const int8_t *A, long lda, const int8_t *B, long ldb, int M,
                                 int N, int K, cudaStream_t s) {
    if (M <= 0 || N <= 0) return HALO_OK;
    lt_init();
    qgemm_key k;
    memset(&k, 0, sizeof k);
    k.fp8 = 0; k.M = M; k.N = N; k.K = K; k.lda = lda; k.ldb = ldb; k.ldd = ldd;
    const int32_t one = 1, zero = 0;
    const qgemm_call call = {&one, &zero, B, A, NULL, (size_t)ldd * M * 4, s};
    qgemm_plan *p = plan_get(&k, &call);
    if (!p) return HALO_ERR;
    return lt_status(cublasLtMatmul(g_lt, p->op, &one, B, p->a, A, p->b, &zero, D, p->c, D, p->d, &p->algo, g_ws,
                                    g_ws_bytes, s), "int8 matmul");
}
