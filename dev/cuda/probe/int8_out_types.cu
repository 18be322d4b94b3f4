// Probe: which output types does cuBLASLt accept for INT8 x INT8 products (int32 accumulation) on this GPU?
// For each (scale type, D type) it asks for a heuristic, runs D = alpha * A B^T (row-major, K-contiguous operands, as
// halo_gemm.cu), checks against an exact int32 reference and times it. Build and run on the device:
//   nvcc -O2 -arch=sm_90 -o /tmp/probe dev/cuda/probe/int8_out_types.cu -lcublasLt && /tmp/probe
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <cuda_fp16.h>

static float to_f(const void *d, cudaDataType_t t, size_t i) {
    switch (t) {
    case CUDA_R_32I: return (float)((const int32_t *)d)[i];
    case CUDA_R_32F: return ((const float *)d)[i];
    case CUDA_R_16BF: return __bfloat162float(((const __nv_bfloat16 *)d)[i]);
    case CUDA_R_16F: return __half2float(((const __half *)d)[i]);
    case CUDA_R_8I: return (float)((const int8_t *)d)[i];
    default: return NAN;
    }
}
static size_t tsize(cudaDataType_t t) {
    return t == CUDA_R_32I || t == CUDA_R_32F ? 4 : t == CUDA_R_8I ? 1 : 2;
}

int main(int argc, char **argv) {
    const int M = argc > 1 ? atoi(argv[1]) : 8192, N = argc > 2 ? atoi(argv[2]) : 4096, K = argc > 3 ? atoi(argv[3]) : 4096;
    int8_t *hA = (int8_t *)malloc((size_t)M * K), *hB = (int8_t *)malloc((size_t)N * K);
    srand(7);
    for (size_t i = 0; i < (size_t)M * K; i++) hA[i] = (int8_t)(rand() % 255 - 127);
    for (size_t i = 0; i < (size_t)N * K; i++) hB[i] = (int8_t)(rand() % 255 - 127);
    int8_t *A, *B;
    void *D;
    cudaMalloc((void **)&A, (size_t)M * K);
    cudaMalloc((void **)&B, (size_t)N * K);
    cudaMalloc(&D, (size_t)M * N * 4);
    cudaMemcpy(A, hA, (size_t)M * K, cudaMemcpyHostToDevice);
    cudaMemcpy(B, hB, (size_t)N * K, cudaMemcpyHostToDevice);
    size_t ws_bytes = 32u << 20;
    void *ws;
    cudaMalloc(&ws, ws_bytes);
    cublasLtHandle_t lt;
    cublasLtCreate(&lt);
    // reference: int32 D (checked on a sample of entries against the host)
    int32_t *ref = (int32_t *)malloc((size_t)M * N * 4);
    struct { cudaDataType_t scale, d; const char *name; float alpha; } cases[] = {
        {CUDA_R_32I, CUDA_R_32I, "scale i32, D i32 (what halo uses)", 1.f},
        {CUDA_R_32F, CUDA_R_32I, "scale f32, D i32", 1.f},
        {CUDA_R_32F, CUDA_R_8I, "scale f32, D i8", 1.f / 4096.f},
        {CUDA_R_32F, CUDA_R_32F, "scale f32, D f32", 1e-3f},
        {CUDA_R_32F, CUDA_R_16BF, "scale f32, D bf16", 1e-3f},
        {CUDA_R_32F, CUDA_R_16F, "scale f32, D f16", 1e-3f},
    };
    printf("INT8 products M=%d N=%d K=%d (row-major D[M][N] = A[M][K] B[N][K]^T)\n", M, N, K);
    printf("| case | heuristics | status | max rel err vs int32 | ms | TOPS |\n|---|---|---|---|---|---|\n");
    for (int c = 0; c < (int)(sizeof cases / sizeof cases[0]); c++) {
        cublasLtMatmulDesc_t op;
        cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32I, cases[c].scale);
        cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof tA);
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof tB);
        cublasLtMatrixLayout_t la, lb, ld;
        cublasLtMatrixLayoutCreate(&la, CUDA_R_8I, K, N, K);
        cublasLtMatrixLayoutCreate(&lb, CUDA_R_8I, K, M, K);
        cublasLtMatrixLayoutCreate(&ld, cases[c].d, N, M, N);
        cublasLtMatmulPreference_t pref;
        cublasLtMatmulPreferenceCreate(&pref);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof ws_bytes);
        cublasLtMatmulHeuristicResult_t res[8];
        int found = 0;
        cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, ld, ld, pref, 8, res, &found);
        float ms = 0.f, err = NAN;
        cublasStatus_t rs = CUBLAS_STATUS_NOT_SUPPORTED;
        if (st == CUBLAS_STATUS_SUCCESS && found) {
            int32_t ai = 1, bi = 0;
            float af = cases[c].alpha, bf = 0.f;
            const void *alpha = cases[c].scale == CUDA_R_32I ? (const void *)&ai : (const void *)&af;
            const void *beta = cases[c].scale == CUDA_R_32I ? (const void *)&bi : (const void *)&bf;
            cudaMemset(D, 0, (size_t)M * N * 4);
            rs = cublasLtMatmul(lt, op, alpha, B, la, A, lb, beta, D, ld, D, ld, &res[0].algo, ws, ws_bytes, 0);
            cudaError_t ce = cudaDeviceSynchronize();
            if (rs == CUBLAS_STATUS_SUCCESS && ce == cudaSuccess) {
                size_t bytes = (size_t)M * N * tsize(cases[c].d);
                void *h = malloc(bytes);
                cudaMemcpy(h, D, bytes, cudaMemcpyDeviceToHost);
                if (c == 0) memcpy(ref, h, bytes);
                err = 0.f;
                for (size_t i = 0; i < (size_t)M * N; i += 97) {
                    float want = cases[c].alpha * (float)ref[i], got = to_f(h, cases[c].d, i);
                    if (cases[c].d == CUDA_R_8I) want = fmaxf(-128.f, fminf(127.f, rintf(want)));
                    float e = fabsf(got - want) / fmaxf(fabsf(want), cases[c].d == CUDA_R_8I ? 1.f : 1e-3f * cases[c].alpha * K * 127 * 127 / 16);
                    if (!(e <= err)) err = e;
                }
                free(h);
                if (c == 0) {   // the reference itself against the host, on a few entries
                    for (int s = 0; s < 64; s++) {
                        size_t i = (size_t)(rand() % M), j = (size_t)(rand() % N);
                        long acc = 0;
                        for (int k = 0; k < K; k++) acc += (long)hA[i * K + k] * hB[j * K + k];
                        if (acc != ref[i * N + j]) { printf("reference mismatch at %zu,%zu\n", i, j); err = INFINITY; }
                    }
                }
                cudaEvent_t e0, e1;
                cudaEventCreate(&e0); cudaEventCreate(&e1);
                cudaEventRecord(e0);
                for (int r = 0; r < 20; r++)
                    cublasLtMatmul(lt, op, alpha, B, la, A, lb, beta, D, ld, D, ld, &res[0].algo, ws, ws_bytes, 0);
                cudaEventRecord(e1);
                cudaEventSynchronize(e1);
                cudaEventElapsedTime(&ms, e0, e1);
                ms /= 20;
            } else cudaGetLastError();
        }
        printf("| %s | %d (status %d) | %d | %.3g | %.3f | %.0f |\n", cases[c].name, found, (int)st, (int)rs, err, ms,
               ms > 0 ? 2.0 * M * N * K / (ms * 1e9) : 0.0);
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(la); cublasLtMatrixLayoutDestroy(lb); cublasLtMatrixLayoutDestroy(ld);
        cublasLtMatmulDescDestroy(op);
    }
    return 0;
}
