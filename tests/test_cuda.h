// Device-memory helpers of the HALO GPU tests (test_cuda_halo.c, test_cuda_halo_train.c); include under HALO_CUDA.
#ifndef HALO_TEST_CUDA_H
#define HALO_TEST_CUDA_H
#include <cuda_runtime_api.h>
#include "cuda/cuda_backend.h"
#include "test.h"

// Device copy of bytes host bytes, with 256 bytes of slack after them; aborts when the allocation fails.
static inline void *t_dev_copy(const void *h, size_t bytes) {
    void *d = NULL;
    if (cudaMalloc(&d, bytes + 256) != cudaSuccess) { fprintf(stderr, "cudaMalloc failed\n"); abort(); }
    cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice);
    return d;
}
// Device bf16 copy of v[n] (round to nearest even; v unchanged).
static inline void *t_dev_bf16(const float *v, size_t n) {
    halo_bf16 *h = malloc(2 * n);
    cuda_f32_to_bf16_host(h, v, n);
    void *d = t_dev_copy(h, 2 * n);
    free(h);
    return d;
}
// Rounds v[n] to bf16 values in place.
static inline void t_round_bf16(float *v, size_t n) {
    halo_bf16 *h = malloc(2 * n);
    cuda_f32_to_bf16_host(h, v, n);
    cuda_bf16_to_f32_host(v, h, n);
    free(h);
}
// Host copy of bytes device bytes, after the device is idle (malloc'ed).
static inline void *t_host_of(const void *d, size_t bytes) {
    void *h = malloc(bytes);
    cudaDeviceSynchronize();
    cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost);
    return h;
}
#endif
