// Prints the body of hk_neg_mask (src/cuda/halo_kernels.cu): bit c of row i set where H_K[i][c] == -1, for the
// orders k_rot mixes with, from the CPU's base matrices. had_upload checks the compiled table against them, so a
// change of a base matrix turns k_rot off for that order until this is run again and pasted in.
//   make && cc -Isrc scripts/gen_hk_signs.c build/libhalo.a -lm -fopenmp -lopenblas -o /tmp/gen_hk_signs && /tmp/gen_hk_signs
#include <stdint.h>
#include <stdio.h>
#include "halo/hadamard.h"

int main(void) {
    const int Ks[] = {12, 20, 28};
    for (int t = 0; t < 3; t++) {
        const int K = Ks[t];
        const int8_t *H = halo_hadamard_base(K);
        printf("    %s K == %d ? (", t ? ":" : "return", K);
        for (int i = 0; i < K; i++) {
            unsigned m = 0;
            for (int c = 0; c < K; c++)
                if (H[i * K + c] < 0) m |= 1u << c;
            printf("%si == %d ? 0x%07xu", i ? " : " : "", i, m);
            if (i % 5 == 4 && i != K - 1) printf("\n                 ");
        }
        printf(" : 0u)\n");
    }
    printf("    : 0u;\n");
    return 0;
}
