// Picking among cuBLASLt's heuristic candidates by timing them on a call's own operands (BF16 products in
// matmul.cu under HALO_BF16_GEMM=tune, the 8-bit products in halo_gemm.cu).
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

typedef struct {   // one product as cuBLASLt runs it; alpha / beta point where the descriptor's pointer mode says
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c, d;
    const void *alpha, *beta, *A, *B;
    const void *C;        // read when beta != 0; NULL: the scratch output (its contents are then undefined)
    size_t d_bytes;       // size of the output D
    void *ws;
    size_t ws_bytes;
    cudaStream_t s;
} lt_product;

// Index of the fastest of res[0..found) (a warm-up, then 5 calls timed by events, output into scratch so the real
// output keeps its contents), or 0 unless it takes at most min_ratio of the first candidate's time. 0 as well when
// the scratch cannot be allocated or the stream is being captured. Synchronizes the stream once per candidate.
int lt_fastest_candidate(const lt_product *p, const cublasLtMatmulHeuristicResult_t *res, int found, float min_ratio);
