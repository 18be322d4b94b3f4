// Probe: where the SwiGLU backward's codes kernel (delayed scaling's gate / up E_Y producer) loses against the bf16
// kernel that writes the same number of bytes. Times, at the 1B model's shape (8192 tokens, F 8192) unless given,
// the bf16 backward (plain, taking the amaxes, the amaxes without stores), the codes kernel writing both layouts, the row-major codes only
// and the transposed only, with 64- and 128-token tiles, and the spec's E_Y quantizer (k_tile8 over the bf16 dgate
// and dup). One layer; x16 for a 1B step. dev/cuda/probe/swiglu_codes_ab.sh builds it here (into build/dev-gpu/bench,
// where scripts/device_sync.sh picks it up) and runs it on the device.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cuda_runtime.h>
#include "cuda/cuda_backend.h"
#include "cuda/halo_cuda.h"

static unsigned short bf16_of(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return (unsigned short)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

static void *dev_rand_bf16(size_t n, float scale, unsigned long long *st) {
    unsigned short *h = malloc(2 * n);
    for (size_t i = 0; i < n; i++) {
        *st = *st * 6364136223846793005ULL + 1442695040888963407ULL;
        h[i] = bf16_of(scale * ((float)(*st >> 40) / (float)(1ULL << 24) * 2.f - 1.f));
    }
    void *d = NULL;
    cudaMalloc(&d, 2 * n);
    cudaMemcpy(d, h, 2 * n, cudaMemcpyHostToDevice);
    free(h);
    return d;
}

enum { V_BF16, V_BF16_AMAX, V_AMAX_ONLY, V_BOTH, V_Q, V_QT, V_SPEC_QUANT };
static const char *vname[] = {"bf16 backward", "bf16 backward + amax", "amax only (no stores)", "codes, both layouts", "codes, row-major only",
                              "codes, transposed only", "spec E_Y quantizer (k_tile8, gate + up)"};

int main(int argc, char **argv) {
    const int N = argc > 1 ? atoi(argv[1]) : 8192, F = argc > 2 ? atoi(argv[2]) : 8192, reps = 20;
    const int n16 = (N + 15) / 16 * 16;
    unsigned long long st = 7;
    halo_bf16 *gu = dev_rand_bf16((size_t)N * 2 * F, 2.f, &st), *dout = dev_rand_bf16((size_t)N * F, 0.01f, &st);
    halo_bf16 *dgu = NULL;
    uint8_t *q = NULL;
    float *am = NULL;
    int *nf = NULL;
    cudaMalloc((void **)&dgu, 2 * (size_t)N * 2 * F);
    cudaMalloc((void **)&q, (size_t)N * 2 * F + (size_t)2 * F * n16);
    cudaMalloc((void **)&am, 64);
    cudaMalloc((void **)&nf, 16);
    cudaMemset(nf, 0, 16);
    cuda_swiglu_backward_amax(dgu, dout, gu, N, F, am, am + 1, nf, nf + 1, 0);   // the amaxes the codes scale by
    uint8_t *qt = q + (size_t)N * 2 * F;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    printf("# SwiGLU backward parts, N %d F %d, one layer (ms), GB/s of its reads + writes\n", N, F);
    printf("| variant | tile | ms | GB/s | x16 (1B step) |\n|---|---|---|---|---|\n");
    for (int v = V_BF16; v <= V_SPEC_QUANT; v++)
        for (int tr = 64; tr <= 128; tr *= 2) {
            if (tr == 128 && (v == V_BF16 || v == V_BF16_AMAX || v == V_AMAX_ONLY || v == V_SPEC_QUANT)) continue;
            cuda_swiglu_codes_tile(tr);
            halo_cuda_codes c[2];
            memset(c, 0, sizeof c);
            for (int u = 0; u < 2; u++) {
                c[u].q = v == V_QT ? NULL : q + (size_t)u * F;
                c[u].ldq = 2L * F;
                c[u].qt = v == V_Q ? NULL : qt + (size_t)u * F * n16;
                c[u].ldqt = c[u].rows_pad = n16;
                c[u].fmt = HALO_CUDA_INT8;
                c[u].amax = am + u;
                c[u].amax_next = am + 2 + u;
                c[u].nonfinite = nf + 2 + u;
                c[u].aj.fmt = HALO_CUDA_INT8;
            }
            double bytes = 6.0 * N * F;   // reads: gate, up, dout
            if (v == V_BF16 || v == V_BF16_AMAX) bytes += 4.0 * N * F;
            else if (v == V_BOTH) bytes += 4.0 * N * F;
            else if (v == V_Q || v == V_QT) bytes += 2.0 * N * F;
            else bytes = 4.0 * N * F + 4.0 * N * F;   // k_tile8: bf16 in, both layouts out
            float ms = 0.f;
            for (int it = 0; it < reps + 3; it++) {
                if (it == 3) cudaEventRecord(e0, 0);
                switch (v) {
                case V_BF16: cuda_swiglu_backward(dgu, dout, gu, N, F, 0); break;
                case V_BF16_AMAX: cuda_swiglu_backward_amax(dgu, dout, gu, N, F, am + 4, am + 5, nf, nf + 1, 0); break;
                case V_AMAX_ONLY: cuda_swiglu_backward_amax(NULL, dout, gu, N, F, am + 4, am + 5, nf, nf + 1, 0); break;
                case V_SPEC_QUANT:
                    for (int u = 0; u < 2; u++)
                        halo_cuda_quant_tile(dgu + (size_t)u * F, HALO_CUDA_BF16, 2L * F, N, F, am + u, HALO_CUDA_INT8,
                                             q + (size_t)u * F, 2L * F, qt + (size_t)u * F * n16, n16, n16, 0);
                    break;
                default: cuda_swiglu_backward_codes(dout, gu, N, F, &c[0], &c[1], 0);
                }
            }
            cudaEventRecord(e1, 0);
            cudaEventSynchronize(e1);
            cudaEventElapsedTime(&ms, e0, e1);
            ms /= reps;
            printf("| %s | %d | %.4f | %.0f | %.2f |\n", vname[v], tr, ms, bytes / (ms * 1e6), 16 * ms);
        }
    cudaError_t err = cudaDeviceSynchronize();
    if (err != cudaSuccess) { fprintf(stderr, "CUDA error: %s\n", cudaGetErrorString(err)); return 1; }
    return 0;
}
