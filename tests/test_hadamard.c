// Tests for src/halo/hadamard: every base order is a Hadamard matrix, every model width's transform is orthonormal
// (norms and inner products of random vectors, dense H H^T = I up to 1024), the butterfly equals the dense
// product along rows and columns, forward/inverse round trips, block-diagonal plans, padding and fallbacks.
#include <stdint.h>
#include "halo/hadamard.h"
#include "test.h"
#include "util/error.h"

static unsigned long long g_seed = 12345;

static void fill_normal(float *x, size_t n) { for (size_t i = 0; i < n; i++) x[i] = (float)t_rand_normal(&g_seed); }

// Independent check of the base matrix: entries +-1 and H H^T = K I in integers.
static void check_base(int K) {
    const int8_t *H = halo_hadamard_base(K);
    CHECK(H != NULL, "order %d: %s", K, H ? "" : halo_error());
    if (!H) return;
    long bad = 0;
    for (int i = 0; i < K * K; i++) bad += (H[i] != 1 && H[i] != -1);
    for (int i = 0; i < K; i++)
        for (int j = 0; j < K; j++) {
            long s = 0;
            for (int t = 0; t < K; t++) s += H[i * K + t] * H[j * K + t];
            bad += (s != (i == j ? K : 0));
        }
    CHECK(bad == 0, "order %d (%s): %ld entries of H H^T != K I", K, halo_hadamard_construction(K), bad);
}

// Norm and inner-product preservation of the forward rows transform, and inverse(forward(x)) == x.
static void check_orthonormal(int d, int block) {
    halo_hadamard h;
    int rc = halo_hadamard_plan(&h, d, block);
    CHECK(rc == HALO_OK, "plan d=%d block=%d: %s", d, block, rc ? halo_error() : "");
    if (rc) return;
    float *x = malloc(sizeof(float) * 2 * d), *x0 = malloc(sizeof(float) * 2 * d);
    fill_normal(x, 2 * (size_t)d);
    memcpy(x0, x, sizeof(float) * 2 * d);
    halo_hadamard_rows(&h, x, 2, d, 0);
    double n0 = 0, n1 = 0, m0 = 0, m1 = 0, ip0 = 0, ip1 = 0;
    for (int i = 0; i < d; i++) {
        n0 += (double)x0[i] * x0[i]; n1 += (double)x[i] * x[i];
        m0 += (double)x0[d + i] * x0[d + i]; m1 += (double)x[d + i] * x[d + i];
        ip0 += (double)x0[i] * x0[d + i]; ip1 += (double)x[i] * x[d + i];
    }
    double enorm = fmax(fabs(sqrt(n1) / sqrt(n0) - 1), fabs(sqrt(m1) / sqrt(m0) - 1));
    double eip = fabs(ip1 - ip0) / sqrt(n0 * m0);
    CHECK(enorm < 1e-6 && eip < 1e-6, "d=%d block=%d (K=%d): norm err %.3g, inner-product err %.3g", d, block, h.K,
          enorm, eip);
    halo_hadamard_rows(&h, x, 2, d, 1);
    double em = 0;
    for (int i = 0; i < 2 * d; i++) em = fmax(em, fabs(x[i] - x0[i]));
    CHECK(em < 1e-5, "d=%d block=%d: inverse(forward(x)) max err %.3g", d, block, em);
    free(x); free(x0);
}

// Dense H H^T = I and butterfly == dense product along rows (x H, x H^T) and columns (H A, H^T A).
static void check_dense(int d, int block) {
    halo_hadamard h;
    if (halo_hadamard_plan(&h, d, block)) { CHECK(0, "plan %d/%d: %s", d, block, halo_error()); return; }
    double *M = malloc(sizeof(double) * d * d);
    halo_hadamard_dense(&h, M);
    double e = 0;
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            double s = 0;
            for (int t = 0; t < d; t++) s += M[(size_t)i * d + t] * M[(size_t)j * d + t];
            e = fmax(e, fabs(s - (i == j)));
        }
    CHECK(e < 1e-6, "dense d=%d block=%d: max |H H^T - I| = %.3g", d, block, e);
    const int R = 3, Cc = 5;
    float *x = malloc(sizeof(float) * R * d), *A = malloc(sizeof(float) * d * Cc);
    for (int tr = 0; tr < 2; tr++) {
        fill_normal(x, (size_t)R * d);
        double *ref = malloc(sizeof(double) * R * d);
        for (int r = 0; r < R; r++)
            for (int j = 0; j < d; j++) {
                double s = 0;
                for (int i = 0; i < d; i++) s += x[r * d + i] * (tr ? M[(size_t)j * d + i] : M[(size_t)i * d + j]);
                ref[r * d + j] = s;
            }
        halo_hadamard_rows(&h, x, R, d, tr);
        double er = 0, nr = 0;
        for (int i = 0; i < R * d; i++) { er = fmax(er, fabs(x[i] - ref[i])); nr = fmax(nr, fabs(ref[i])); }
        CHECK(er <= 1e-5 * nr, "rows d=%d block=%d transpose=%d: butterfly vs dense max err %.3g", d, block, tr, er);
        // columns: A [d][Cc] with leading dimension Cc
        fill_normal(A, (size_t)d * Cc);
        double *refc = malloc(sizeof(double) * d * Cc);
        for (int i = 0; i < d; i++)
            for (int c = 0; c < Cc; c++) {
                double s = 0;
                for (int t = 0; t < d; t++) s += (tr ? M[(size_t)t * d + i] : M[(size_t)i * d + t]) * A[t * Cc + c];
                refc[i * Cc + c] = s;
            }
        halo_hadamard_cols(&h, A, Cc, Cc, tr);
        double ec = 0, nc = 0;
        for (int i = 0; i < d * Cc; i++) { ec = fmax(ec, fabs(A[i] - refc[i])); nc = fmax(nc, fabs(refc[i])); }
        CHECK(ec <= 1e-5 * nc, "cols d=%d block=%d transpose=%d: butterfly vs dense max err %.3g", d, block, tr, ec);
        free(ref); free(refc);
    }
    free(x); free(A); free(M);
}

int main(void) {
    // Base orders required by the model widths, plus a few more the constructions give.
    const int orders[] = {12, 20, 28, 36, 40, 44, 52, 60, 76, 108, 140, 148, 156, 172, 344};
    for (size_t i = 0; i < sizeof orders / sizeof orders[0]; i++) check_base(orders[i]);
    CHECK(!strcmp(halo_hadamard_construction(28), "paley1"), "28 via Paley I over GF(27)");
    CHECK(!strcmp(halo_hadamard_construction(52), "paley2"), "52 via Paley II over GF(25)");
    CHECK(!strcmp(halo_hadamard_construction(172), "williamson"), "172 via Williamson");
    CHECK(!strcmp(halo_hadamard_construction(156), "williamson"), "156 via Williamson");
    CHECK(!strcmp(halo_hadamard_construction(40), "doubling"), "40 via doubling");
    CHECK(halo_hadamard_base(188) == NULL && strstr(halo_error(), "188"), "order 188 has no construction here");

    // Model widths: Llama 2/3, Mistral, TinyLlama, SmolLM, Qwen 2.5, stories260K.
    const int widths[] = {11008, 13824, 14336, 5632, 3072, 1536, 576, 18944, 172, 64, 4096, 8192, 2048, 896, 4864,
                          8960, 3584, 5120, 960, 2560, 28672, 27648};
    for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++) check_orthonormal(widths[i], 0);
    for (size_t i = 0; i < sizeof orders / sizeof orders[0]; i++) {
        check_orthonormal(orders[i], 0);
        check_orthonormal(orders[i] * 4, 0);
        check_orthonormal(orders[i] * 32, 0);
    }
    int K, P;
    CHECK(halo_hadamard_supported(11008, &K, &P) && K == 172 && P == 64, "11008 = 172*64 (K=%d P=%d)", K, P);
    CHECK(halo_hadamard_supported(14336, &K, &P) && K == 28 && P == 512, "14336 = 28*512 (K=%d P=%d)", K, P);
    CHECK(halo_hadamard_supported(18944, &K, &P) && K == 148, "18944 uses 148 (K=%d)", K);
    CHECK(halo_hadamard_supported(576, &K, &P) && K == 36, "576 uses 36 (K=%d)", K);

    // Dense checks for sizes <= 1024, full and block-diagonal.
    const int dense[] = {8, 12, 20, 28, 36, 40, 44, 52, 60, 108, 140, 148, 156, 172, 48, 64, 256, 344, 576};
    for (size_t i = 0; i < sizeof dense / sizeof dense[0]; i++) check_dense(dense[i], 0);
    check_dense(768, 64);
    check_dense(576, 192);
    check_orthonormal(4096, 128);
    check_orthonormal(14336, 28 * 4);

    // Natural (Sylvester) order: x = e_i gives row i of H_8 = (-1)^popcount(i&j) / sqrt(8).
    {
        halo_hadamard h;
        halo_hadamard_plan(&h, 8, 0);
        long bad = 0;
        for (int i = 0; i < 8; i++) {
            float e[8] = {0};
            e[i] = 1;
            halo_hadamard_rows(&h, e, 1, 8, 0);
            for (int j = 0; j < 8; j++)
                bad += fabs(e[j] - ((__builtin_popcount(i & j) & 1) ? -1 : 1) / sqrt(8.0)) > 1e-7;
        }
        CHECK(bad == 0, "H_8 is in natural Sylvester order (%ld entries differ)", bad);
    }

    // Rows with a leading dimension larger than d: the tail is untouched.
    {
        halo_hadamard h;
        halo_hadamard_plan(&h, 12, 0);
        float a[2 * 15];
        for (int i = 0; i < 30; i++) a[i] = (float)i;
        halo_hadamard_rows(&h, a, 2, 15, 0);
        CHECK(a[12] == 12 && a[13] == 13 && a[14] == 14 && a[27] == 27, "ld > d leaves the row tail alone");
    }

    // Unsupported sizes: a clear error, and the fallback that says what it chose.
    {
        halo_hadamard h;
        CHECK(halo_hadamard_plan(&h, 94, 0) == HALO_ERR && strstr(halo_error(), "94"), "94 unsupported: %s", halo_error());
        CHECK(halo_hadamard_plan(&h, 96, 64) == HALO_ERR, "block 64 does not divide 96");
        char note[200];
        halo_hadamard_plan_fallback(&h, 94, note, sizeof note);
        CHECK(h.block == 2 && strstr(note, "blocks of 2"), "fallback for 94: block %d, note '%s'", h.block, note);
        halo_hadamard_plan_fallback(&h, 47, note, sizeof note);
        CHECK(h.block == 1 && strstr(note, "no rotation"), "fallback for 47: '%s'", note);
        halo_hadamard_plan_fallback(&h, 3008, note, sizeof note); // 47*64: K = 752 (Paley I, 751 prime)
        CHECK(h.block == 3008 && note[0] == 0, "3008 full transform, K=%d", h.K);
        CHECK(halo_hadamard_pad_size(94, 172) == 96, "pad 94 -> %d", halo_hadamard_pad_size(94, 172));
        CHECK(halo_hadamard_pad_size(128, 172) == 128, "pad 128 stays");
        CHECK(halo_hadamard_pad_size(1, 172) == 1, "pad 1 stays");
    }
    TEST_END();
}
