// Host check of prep/8_rot_k76.patch's order-76 mix (`bash dev/cuda/prep/check_on_cpu.sh 8`, which extracts the code
// from the patched halo_kernels.cu): k_rot's phase 1 (the butterfly over each P-chunk) then hk_mix in four
// thread groups, against halo_hadamard_rows, bit for bit; also K = 28 through the same templates.
#include "check_host.h"

int main() {
    const int d = 4864;
    halo_hadamard h;
    if (halo_hadamard_plan(&h, d, 0) || h.K != 76 || h.P != 64) { printf("plan failed\n"); return 1; }
    // the compiled table against the CPU's matrix (hk_table_ok's job on the device)
    const int8_t *H = halo_hadamard_base(76);
    long tbad = 0;
    for (int i = 0; i < 76; i++)
        for (int c = 0; c < 76; c++) tbad += (H[i * 76 + c] < 0) != (int)hk_neg(76, i, c);
    const int rows = 16;
    float *x = (float *)malloc(sizeof(float) * rows * d), *ref = (float *)malloc(sizeof(float) * rows * d);
    float *sm = (float *)malloc(sizeof(float) * d), *out = (float *)malloc(sizeof(float) * d);
    long bad = 0;
    unsigned s = 12345;
    for (int tr = 0; tr < 2; tr++) {
        for (long i = 0; i < (long)rows * d; i++) { s = s * 1664525u + 1013904223u; x[i] = ((s >> 8) / 16777216.f - 0.5f) * (i % 97 == 0 ? 100.f : 1.f); }
        memcpy(ref, x, sizeof(float) * rows * d);
        halo_hadamard_rows(&h, ref, rows, d, tr);
        const int htr = !tr;   // rows_setup: a.htr = !transpose
        for (int r = 0; r < rows; r++) {
            memcpy(sm, x + (long)r * d, sizeof(float) * d);
            for (int c = 0; c < 76; c++) fwht_gpu(sm + c * 64, 64);
            constexpr int K = 76, NG = 4, KI = 19;
            for (int w = 0; w < 64 * NG; w++) {
                const int j = w & 63, q = w >> 6;
                float xv[K];
                for (int c = 0; c < K; c++) xv[c] = sm[c * 64 + j];
                auto o = [&](int i, float acc) { out[i * 64 + j] = acc * h.scale; };
                if (q == 0) hk_mix<K, 0, KI>(xv, htr, o);
                else if (q == 1) hk_mix<K, KI, 2 * KI>(xv, htr, o);
                else if (q == 2) hk_mix<K, 2 * KI, 3 * KI>(xv, htr, o);
                else hk_mix<K, 3 * KI, K>(xv, htr, o);
            }
            for (int e = 0; e < d; e++) bad += memcmp(&out[e], &ref[(long)r * d + e], 4) != 0;
        }
    }
    // K = 28 through the same templates (one group), 14336 = 28 * 512
    halo_hadamard h28;
    halo_hadamard_plan(&h28, 14336, 0);
    long bad28 = 0;
    {
        const int P = h28.P, K = 28;
        float *v = (float *)malloc(sizeof(float) * 14336), *rf = (float *)malloc(sizeof(float) * 14336), *sm2 = (float *)malloc(sizeof(float) * 14336), *o2 = (float *)malloc(sizeof(float) * 14336);
        for (int i = 0; i < 14336; i++) { s = s * 1664525u + 1013904223u; v[i] = (s >> 8) / 16777216.f - 0.5f; }
        memcpy(rf, v, sizeof(float) * 14336);
        halo_hadamard_rows(&h28, rf, 1, 14336, 0);
        memcpy(sm2, v, sizeof(float) * 14336);
        for (int c = 0; c < K; c++) fwht_gpu(sm2 + c * P, P);
        for (int j = 0; j < P; j++) {
            float xv[K];
            for (int c = 0; c < K; c++) xv[c] = sm2[c * P + j];
            auto o = [&](int i, float acc) { o2[i * P + j] = acc * h28.scale; };
            hk_mix<K, 0, K>(xv, 1, o);
        }
        for (int e = 0; e < 14336; e++) bad28 += memcmp(&o2[e], &rf[e], 4) != 0;
    }
    printf("K=76 table entries differing from the CPU's matrix: %ld\n", tbad);
    printf("K=76 rows (%d x %d, H and H^T): %ld values differ in any bit\n", rows, d, bad);
    printf("K=28 row (14336): %ld values differ in any bit\n", bad28);
    return tbad || bad || bad28;
}
