// Host shims for the CPU checks of GPU prep patches (check_on_cpu.sh): device qualifiers and bit casts as plain C++,
// then the code extract.h takes from the patched src/cuda/halo_kernels.cu (bfly8 and the patch's mix), and the
// butterfly of k_rot's / k_rows's first phase over a P-chunk built on that bfly8: stages h = 1, 2, 4 in it, then
// h = 8 .. P / 2 as lower + upper, lower - upper (the shuffles' and the shared-memory stages' values).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>
#define __host__
#define __device__
#define __forceinline__ inline
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
#include "extract.h"
static void fwht_gpu(float *x, int P) {
    for (int i = 0; i < P; i += 8) bfly8(x + i);
    for (int h = 8; h < P; h *= 2)
        for (int i = 0; i < P; i += 2 * h)
            for (int j = i; j < i + h; j++) { const float a = x[j], b = x[j + h]; x[j] = a + b; x[j + h] = a - b; }
}
extern "C" {
#include "halo/hadamard.h"
}
