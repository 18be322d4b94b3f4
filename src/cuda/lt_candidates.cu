// See lt_candidates.cuh.
#include "cuda/lt_candidates.cuh"

enum { TIMED_CALLS = 5 };

int lt_fastest_candidate(const lt_product *p, const cublasLtMatmulHeuristicResult_t *res, int found, float min_ratio) {
    // a stream being captured into a CUDA graph may not synchronize: keep the first
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(p->s, &cap) != cudaSuccess || cap != cudaStreamCaptureStatusNone) {
        cudaGetLastError();
        return 0;
    }
    void *scratch = NULL;
    if (cudaMalloc(&scratch, p->d_bytes) != cudaSuccess) { cudaGetLastError(); return 0; }   // keep the first
    cudaEvent_t e0, e1;
    if (cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
        cudaFree(scratch); cudaGetLastError(); return 0;
    }
    const void *C = p->C ? p->C : scratch;
    int best = 0;
    float best_ms = 1e30f, first_ms = 1e30f;
    for (int i = 0; i < found; i++) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
        cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
        for (int r = 0; r <= TIMED_CALLS && st == CUBLAS_STATUS_SUCCESS; r++) {   // r = 0: warm-up
            if (r == 1) cudaEventRecord(e0, p->s);
            st = cublasLtMatmul(p->lt, p->op, p->alpha, p->A, p->a, p->B, p->b, p->beta, C, p->c, scratch, p->d,
                                &res[i].algo, p->ws, p->ws_bytes, p->s);
        }
        cudaEventRecord(e1, p->s);
        cudaEventSynchronize(e1);
        float ms = 0.f;
        if (st != CUBLAS_STATUS_SUCCESS || cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess) continue;
        if (i == 0) first_ms = ms;
        if (ms < best_ms) { best_ms = ms; best = i; }
    }
    if (best_ms > min_ratio * first_ms) best = 0;   // a short timing flatters some: keep the heuristic's choice
    cudaEventDestroy(e0); cudaEventDestroy(e1);
    cudaFree(scratch);
    cudaGetLastError();
    return best;
}
