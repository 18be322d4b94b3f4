// Rotary position embedding on the GPU, in place on bf16 q/k heads inside the fused qkv rows, HF half-split pairs
// (i, i + hd/2), angles from the CPU's rope_tables (llama3 scaling included there). Backward is the inverse rotation.
#include "cuda/common.cuh"

// grid: x over (head, pair) of one token, y strides over tokens
__global__ void k_rope(bf16 *x, int ld, const int32_t *pos, const float *cos_t, const float *sin_t, int N, int H,
                       int hd, float sign) {
    int half = hd / 2, i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= H * half) return;
    int h = i / half, j = i - h * half;
    for (int n = blockIdx.y; n < N; n += gridDim.y) {
        bf16 *v = x + (size_t)n * ld + (size_t)h * hd;
        float c = cos_t[(size_t)pos[n] * half + j], s = sign * sin_t[(size_t)pos[n] * half + j];
        float a = __bfloat162float(v[j]), b = __bfloat162float(v[j + half]);
        v[j] = __float2bfloat16(a * c - b * s);
        v[j + half] = __float2bfloat16(b * c + a * s);
    }
}

static void launch(halo_bf16 *x, int ld, const int32_t *pos, const float *c, const float *sn, int N, int H, int hd,
                   float sign, cudaStream_t s) {
    if (N == 0 || H == 0) return;
    k_rope<<<dim3(cdiv(H * (hd / 2), 256), N < 8192 ? N : 8192), 256, 0, s>>>((bf16 *)x, ld, pos, c, sn, N, H, hd, sign);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_rope_forward(halo_bf16 *x, int ld, const int32_t *pos, const float *cos_t, const float *sin_t,
                                  int N, int H, int hd, cudaStream_t s) {
    launch(x, ld, pos, cos_t, sin_t, N, H, hd, 1.f, s);
}
extern "C" void cuda_rope_backward(halo_bf16 *dx, int ld, const int32_t *pos, const float *cos_t, const float *sin_t,
                                   int N, int H, int hd, cudaStream_t s) {
    launch(dx, ld, pos, cos_t, sin_t, N, H, hd, -1.f, s);
}
