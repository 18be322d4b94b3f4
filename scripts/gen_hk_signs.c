// Prints the bodies of hk_neg_mask and hk_neg_word76 (src/cuda/halo_kernels.cu): bit c of row i set where
// H_K[i][c] == -1, for the orders k_rot mixes with, from the CPU's base matrices. had_upload checks the compiled
// tables against them, so a change of a base matrix turns k_rot off for that order until this is run again and
// pasted in.
//   make && cc -Isrc scripts/gen_hk_signs.c build/libhalo.a -lm -fopenmp -lopenblas -o /tmp/gen_hk_signs && /tmp/gen_hk_signs
#include <stdint.h>
#include <stdio.h>
#include "halo/hadamard.h"

static unsigned word(const int8_t *H, int K, int i, int w) {
    unsigned m = 0;
    for (int c = 32 * w; c < K && c < 32 * w + 32; c++)
        if (H[i * K + c] < 0) m |= 1u << (c - 32 * w);
    return m;
}

int main(void) {
    const int Ks[] = {12, 20, 28};
    for (int t = 0; t < 3; t++) {
        const int K = Ks[t];
        const int8_t *H = halo_hadamard_base(K);
        printf("    %s K == %d ? (", t ? ":" : "return", K);
        for (int i = 0; i < K; i++) {
            printf("%si == %d ? 0x%07xu", i ? " : " : "", i, word(H, K, i, 0));
            if (i % 5 == 4 && i != K - 1) printf("\n                 ");
        }
        printf(" : 0u)\n");
    }
    printf("    : 0u;\n\n");
    // K = 76: three words a row, as a switch on 3 * i + w
    const int8_t *H = halo_hadamard_base(76);
    printf("    switch (3 * i + w) {\n");
    for (int i = 0; i < 76; i++) {
        printf("   ");
        for (int w = 0; w < 3; w++) printf(" case %d: return 0x%08xu;", 3 * i + w, word(H, 76, i, w));
        printf("\n");
    }
    printf("    default: return 0u;\n    }\n");
    return 0;
}
