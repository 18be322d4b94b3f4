// Matrix products through cuBLASLt: BF16 operands, fp32 accumulation, BF16 or fp32 outputs. Row-major X[b, m] is
// the column-major m x b matrix X^T, so every product of the Llama layers maps onto one cuBLASLt call without any
// transpose copy (forward TN, dX NN, dW NT). Descriptors and the heuristic's algorithm are cached per shape.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <string.h>
#include "cuda/common.cuh"
#include "cuda/lt_candidates.cuh"

#define CUBLAS_CHECK(call) do { cublasStatus_t _s = (call); if (_s != CUBLAS_STATUS_SUCCESS) { \
    fprintf(stderr, "cuBLASLt error %d at %s:%d\n", (int)_s, __FILE__, __LINE__); abort(); } } while (0)

typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldd, d_f32, has_c;
    int al_a, al_b, al_d;   // the operands' pointer alignments in bytes (0: not given, cuBLASLt assumes 256)
} gemm_key;

typedef struct {
    gemm_key key;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c, d;
    cublasLtMatmulAlgo_t algo;
} gemm_plan;

enum { GEMM_CACHE = 256 };   // the model's shapes, and LoRA's small products (several per adapted shape)
static cublasLtHandle_t g_lt;
static void *g_ws;                      // workspace shared by every product (one stream at a time)
static size_t g_ws_bytes = 64u << 20;
static gemm_plan g_plans[GEMM_CACHE];
static int g_nplans;

static void lt_init(void) {
    if (g_lt) return;
    CUBLAS_CHECK(cublasLtCreate(&g_lt));
    CUDA_CHECK(cudaMalloc(&g_ws, g_ws_bytes));
}

// HALO_BF16_GEMM (an A/B switch, bench_cuda_gemm and bench_cuda_train): unset or "lt", cuBLASLt's first heuristic
// candidate; "ex", cublasGemmEx (cuBLAS's own choice, the call PyTorch's mm makes) wherever C is D's buffer;
// "tune", the fastest of cuBLASLt's first 8 candidates timed once per shape on the call's operands into scratch, kept
// only when 5% faster than the first.
enum { MODE_LT, MODE_EX, MODE_TUNE };
static int g_mode = -1;
static int gemm_mode(void) {
    if (g_mode < 0) {
        const char *e = getenv("HALO_BF16_GEMM");
        g_mode = e && !strcmp(e, "ex") ? MODE_EX : e && !strcmp(e, "tune") ? MODE_TUNE : MODE_LT;
    }
    return g_mode;
}
static cublasHandle_t g_cb;

static int g_generation;   // bumped when the workspace and plans go: CUDA graphs holding them must be rebuilt
extern "C" int cuda_matmul_generation(void) { return g_generation; }

extern "C" void cuda_matmul_shutdown(void) {
    g_generation++;
    for (int i = 0; i < g_nplans; i++) {
        cublasLtMatmulDescDestroy(g_plans[i].op);
        cublasLtMatrixLayoutDestroy(g_plans[i].a); cublasLtMatrixLayoutDestroy(g_plans[i].b);
        cublasLtMatrixLayoutDestroy(g_plans[i].c); cublasLtMatrixLayoutDestroy(g_plans[i].d);
    }
    g_nplans = 0;
    if (g_cb) cublasDestroy(g_cb);
    g_cb = NULL;
    if (g_ws) cudaFree(g_ws);
    g_ws = NULL;
    if (g_lt) cublasLtDestroy(g_lt);
    g_lt = NULL;
}

typedef struct {   // one call's operands, for timing candidates (MODE_TUNE)
    const void *A, *B, *C;
    float alpha, beta;
    cudaStream_t s;
} gemm_call;

static gemm_plan *plan_get(const gemm_key *k, const gemm_call *call) {
    for (int i = 0; i < g_nplans; i++)
        if (!memcmp(&g_plans[i].key, k, sizeof *k)) return &g_plans[i];
    if (g_nplans == GEMM_CACHE) {   // cache full: recycle the oldest slot (shapes of one model never get here)
        cuda_matmul_shutdown();
        lt_init();
    }
    gemm_plan *p = &g_plans[g_nplans];
    memset(p, 0, sizeof *p);
    p->key = *k;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = k->ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = k->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    // stored shapes (column-major): op(A) is M x K, op(B) is K x N
    int ar = k->ta ? k->K : k->M, ac = k->ta ? k->M : k->K;
    int br = k->tb ? k->N : k->K, bc = k->tb ? k->K : k->N;
    cudaDataType_t dt = k->d_f32 ? CUDA_R_32F : CUDA_R_16BF;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, ar, ac, k->lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, br, bc, k->ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->c, dt, k->M, k->N, k->ldd));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->d, dt, k->M, k->N, k->ldd));
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &g_ws_bytes,
                                                      sizeof g_ws_bytes));
    if (k->al_a) {   // algorithms valid for pointers only this aligned (C is D's buffer)
        uint32_t a = (uint32_t)k->al_a, b = (uint32_t)k->al_b, d = (uint32_t)k->al_d;
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a, sizeof a));
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &b, sizeof b));
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &d, sizeof d));
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &d, sizeof d));
    }
    cublasLtMatmulHeuristicResult_t res[8];
    int found = 0, pick = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(g_lt, p->op, p->a, p->b, p->c, p->d, pref,
                                                gemm_mode() == MODE_TUNE ? 8 : 1, res, &found));
    cublasLtMatmulPreferenceDestroy(pref);
    if (!found) {
        fprintf(stderr, "cuBLASLt: no algorithm for M=%d N=%d K=%d ta=%d tb=%d\n", k->M, k->N, k->K, k->ta, k->tb);
        abort();
    }
    if (found > 1) {
        const lt_product lp = {g_lt, p->op, p->a, p->b, p->c, p->d, &call->alpha, &call->beta, call->A, call->B,
                               call->C, (size_t)k->ldd * k->N * (k->d_f32 ? 4 : 2), g_ws, g_ws_bytes, call->s};
        pick = lt_fastest_candidate(&lp, res, found, 0.95f);
    }
    p->algo = res[pick].algo;
    g_nplans++;
    return p;
}

// Largest power of two (at most 256) dividing the address.
static int ptr_align(const void *p) {
    uintptr_t v = (uintptr_t)p;
    int a = 256;
    while (a > 1 && v % a) a >>= 1;
    return a;
}

// D[M, N] (column-major, ld ldd) = alpha op(A) op(B) + beta C, with C = D's buffer or `C` (same layout).
// aligned 0: the pointers are 256-byte aligned (the model's buffers); 1: plans chosen for their actual alignment.
static void gemm_ex(int ta, int tb, int M, int N, int K, const bf16 *A, int lda, const bf16 *B, int ldb, void *D,
                    int d_f32, int ldd, const void *C, float alpha, float beta, int aligned, cudaStream_t s) {
    if (M == 0 || N == 0) return;
    lt_init();
    if (gemm_mode() == MODE_EX && (!C || C == D)) {
        if (!g_cb) CUBLAS_CHECK(cublasCreate(&g_cb));
        CUBLAS_CHECK(cublasSetStream(g_cb, s));   // (which resets the workspace to cuBLAS's own pool)
        CUBLAS_CHECK(cublasSetWorkspace(g_cb, g_ws, g_ws_bytes));
        CUBLAS_CHECK(cublasGemmEx(g_cb, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, M, N, K, &alpha,
                                  A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb, &beta, D, d_f32 ? CUDA_R_32F : CUDA_R_16BF,
                                  ldd, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        return;
    }
    gemm_key k;
    memset(&k, 0, sizeof k);
    k.ta = ta; k.tb = tb; k.M = M; k.N = N; k.K = K; k.lda = lda; k.ldb = ldb; k.ldd = ldd; k.d_f32 = d_f32;
    k.has_c = beta != 0.f;
    if (aligned) { k.al_a = ptr_align(A); k.al_b = ptr_align(B); k.al_d = ptr_align(D); }
    const gemm_call call = {A, B, C, alpha, beta, s};
    gemm_plan *p = plan_get(&k, &call);
    CUBLAS_CHECK(cublasLtMatmul(g_lt, p->op, &alpha, A, p->a, B, p->b, &beta, C ? C : D, p->c, D, p->d, &p->algo,
                                g_ws, g_ws_bytes, s));
}

static void gemm(int ta, int tb, int M, int N, int K, const bf16 *A, int lda, const bf16 *B, int ldb, void *D,
                 int d_f32, int ldd, const void *C, float beta, cudaStream_t s) {
    gemm_ex(ta, tb, M, N, K, A, lda, B, ldb, D, d_f32, ldd, C, 1.f, beta, 0, s);
}

extern "C" void cuda_gemm_rm(void *C, int c_f32, long ldc, const halo_bf16 *A, long lda, int ta, const halo_bf16 *B,
                             long ldb, int tb, int M, int N, int K, float alpha, float beta, cudaStream_t s) {
    if (M == 0 || N == 0) return;
    if (K == 0) {   // nothing to multiply: C = beta C (only beta 0 and 1 occur)
        if (beta == 0.f)
            for (int i = 0; i < M; i++) CUDA_CHECK(cudaMemsetAsync((char *)C + (size_t)i * ldc * (c_f32 ? 4 : 2), 0,
                                                                   (size_t)N * (c_f32 ? 4 : 2), s));
        return;
    }
    // row-major C is the column-major N x M matrix C^T = op(B)^T op(A)^T
    gemm_ex(tb, ta, N, M, K, (const bf16 *)B, (int)ldb, (const bf16 *)A, (int)lda, C, c_f32, (int)ldc, NULL, alpha, beta,
            1, s);
}

extern "C" void cuda_linear_forward(void *Y, int y_f32, const halo_bf16 *X, const halo_bf16 *W, const float *R,
                                    int b, int m, int n, cudaStream_t s) {
    // Y^T (n x b) = W^T^T (n x m) X^T (m x b): A = W stored m x n (T), B = X stored m x b (N)
    gemm(1, 0, n, b, m, (const bf16 *)W, m, (const bf16 *)X, m, Y, y_f32 || R, n, R, R ? 1.f : 0.f, s);
}

extern "C" void cuda_linear_backward_dx(halo_bf16 *dX, const halo_bf16 *dY, const halo_bf16 *W, int b, int m, int n,
                                        cudaStream_t s) {
    // dX^T (m x b) = W^T (m x n) dY^T (n x b)
    gemm(0, 0, m, b, n, (const bf16 *)W, m, (const bf16 *)dY, n, dX, 0, m, NULL, 0.f, s);
}

extern "C" void cuda_linear_backward_dw(float *dW, const halo_bf16 *dY, const halo_bf16 *X, int b, int m, int n,
                                        cudaStream_t s) {
    // dW^T (m x n) += X^T (m x b) (dY^T)^T (b x n)
    gemm(0, 1, m, n, b, (const bf16 *)X, m, (const bf16 *)dY, n, dW, 1, m, NULL, 1.f, s);
}

extern "C" void cuda_linear_backward_dw_set(float *dW, const halo_bf16 *dY, const halo_bf16 *X, int b, int m, int n,
                                            cudaStream_t s) {
    gemm(0, 1, m, n, b, (const bf16 *)X, m, (const bf16 *)dY, n, dW, 1, m, NULL, 0.f, s);
}

extern "C" void cuda_linear_backward_dw_bf16(halo_bf16 *dW, const halo_bf16 *dY, const halo_bf16 *X, int b, int m,
                                             int n, int accumulate, cudaStream_t s) {
    gemm(0, 1, m, n, b, (const bf16 *)X, m, (const bf16 *)dY, n, dW, 0, m, NULL, accumulate ? 1.f : 0.f, s);
}
