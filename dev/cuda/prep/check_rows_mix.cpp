// Host check of prep/10_rows_mix8.patch's rows_mix (k_rows's order-K mix, 8 rows a thread, unrolled sign words;
// `bash dev/cuda/prep/check_on_cpu.sh 10` extracts it from the patched halo_kernels.cu) against halo_hadamard_rows,
// bit for bit, at the widths whose orders take the generic row kernel (28, 36, 44, 76, 108, 140, 148, 172).
#include "check_host.h"

int main() {
    const int dims[] = {896, 5632, 4864, 11008, 13824, 8960, 18944, 1536 * 3};
    long total_bad = 0;
    unsigned s = 777;
    for (int di = 0; di < 8; di++) {
        const int d = dims[di];
        halo_hadamard h;
        if (halo_hadamard_plan(&h, d, 0)) { printf("plan %d failed\n", d); return 1; }
        const int K = h.K, P = h.P, KW = (K + 31) / 32;
        if (K == 1 || P < 32) { printf("d=%d K=%d P=%d: not the sign-mask mix, skipped\n", d, K, P); continue; }
        for (int tr = 0; tr < 2; tr++) {
            // had_upload's masks: k_rows reads dSgn for transpose = 1 (HKf), dSgnT for transpose = 0 (HKtf)
            const float *M = tr ? h.HKf : h.HKtf;
            unsigned *sg = (unsigned *)calloc((size_t)K * KW, 4);
            for (int i = 0; i < K; i++)
                for (int c = 0; c < K; c++) if (M[(size_t)i * K + c] < 0) sg[(size_t)i * KW + c / 32] |= 1u << (c % 32);
            const int rows = 3;
            float *x = (float *)malloc(sizeof(float) * rows * d), *ref = (float *)malloc(sizeof(float) * rows * d);
            for (long i = 0; i < (long)rows * d; i++) { s = s * 1664525u + 1013904223u; x[i] = ((s >> 8) / 16777216.f - 0.5f) * (i % 131 == 0 ? 50.f : 1.f); }
            memcpy(ref, x, sizeof(float) * rows * d);
            halo_hadamard_rows(&h, ref, rows, d, tr);
            long bad = 0;
            float *sm = (float *)malloc(sizeof(float) * d);
            for (int r = 0; r < rows; r++) {
                memcpy(sm, x + (long)r * d, sizeof(float) * d);
                for (int c = 0; c < K; c++) fwht_gpu(sm + (long)c * P, P);
                for (int j = 0; j < P; j++)
                    for (int i0 = 0; i0 < K; i0 += MIX_ROWS) {
                        float acc[MIX_ROWS];
                        rows_mix(sm + j, P, sg, KW, K, i0, acc);
                        for (int q = 0; q < MIX_ROWS && i0 + q < K; q++)
                            bad += memcmp(&ref[(long)r * d + (long)(i0 + q) * P + j], &(const float &)(float){acc[q] * h.scale}, 4) != 0;
                    }
            }
            printf("d=%d K=%d P=%d %s: %ld of %ld values differ in any bit\n", d, K, P, tr ? "H^T" : "H", bad, (long)rows * d);
            total_bad += bad;
            free(sg); free(x); free(ref); free(sm);
        }
    }
    return total_bad != 0;
}
