// Walsh-Hadamard butterfly pieces shared by the HALO row kernels (halo_kernels.cu) and the kernels that produce a
// HALO layer's input (rmsnorm.cu, swiglu.cu: the rotated X's absmax on the side). Each stage is one addition with one
// rounding, in the CPU's order (h = 1, 2, 4, ...), so the values are the CPU's bit for bit.
#ifndef HALO_CUDA_HADAMARD_WARP_CUH
#define HALO_CUDA_HADAMARD_WARP_CUH
#include "cuda/common.cuh"

// Butterfly stages h = 1, 2, 4 on 8 consecutive values in registers (the CPU's fwht_vec radix-8 block).
__device__ __forceinline__ void bfly8(float v[8]) {
    const float a0 = v[0] + v[1], a1 = v[0] - v[1], a2 = v[2] + v[3], a3 = v[2] - v[3];
    const float a4 = v[4] + v[5], a5 = v[4] - v[5], a6 = v[6] + v[7], a7 = v[6] - v[7];
    const float b0 = a0 + a2, b1 = a1 + a3, b2 = a0 - a2, b3 = a1 - a3;
    const float b4 = a4 + a6, b5 = a5 + a7, b6 = a4 - a6, b7 = a5 - a7;
    v[0] = b0 + b4; v[1] = b1 + b5; v[2] = b2 + b6; v[3] = b3 + b7;
    v[4] = b0 - b4; v[5] = b1 - b5; v[6] = b2 - b6; v[7] = b3 - b7;
}

// Butterfly stage h = 8 << st across the lanes of a warp holding 8 consecutive values each: lower lane a + b, upper
// lane a - b (a = the lower lane's value), as fma(+-1, v, partner): one rounding, the CPU's values bit for bit.
__device__ __forceinline__ void shfl_stage(float v[8], int lane, int st) {
    const float sg = lane & (1 << st) ? -1.f : 1.f;
    #pragma unroll
    for (int k = 0; k < 8; k++) v[k] = fmaf(sg, v[k], __shfl_xor_sync(0xffffffffu, v[k], 1 << st));
}

// max |v scale| over 8 values (NaN compares false: skipped)
__device__ __forceinline__ float scaled_absmax8(const float v[8], float scale) {
    float mx = 0.f;
    #pragma unroll
    for (int k = 0; k < 8; k++) mx = fmaxf(mx, fabsf(__fmul_rn(v[k], scale)));
    return mx;
}

// max |H v| over one lane's 8 values after a warp's 256 consecutive values (8 per lane, lane order) are rotated in
// blocks of 2^lb (3 <= lb <= 8) and scaled: the absmax pass of k_rot_small on the same values. NaN compares false
// (skipped, as the producers' level-0 absmax does). Every lane of the warp must call it (shuffles).
__device__ __forceinline__ float rot256_absmax8(float v[8], int lane, int lb, float scale) {
    bfly8(v);
    #pragma unroll
    for (int st = 0; st < 5; st++)
        if (st < lb - 3) shfl_stage(v, lane, st);
    return scaled_absmax8(v, scale);
}
// rot256_absmax8's value for a warp's 256 consecutive values held as two coalesced halves: v[0..3] the values
// 4 lane .. 4 lane + 3, v[4..7] those 128 further on. The same stages h = 1, 2, 4, .. with a + b in the lower and
// a - b in the upper position (the lane stages by shfl_stage: h = 4 << st), so the same values bit for bit.
__device__ __forceinline__ float rot256_absmax_halves(float v[8], int lane, int lb, float scale) {
    #pragma unroll
    for (int o = 0; o < 8; o += 4) {   // h = 1, 2 within each half
        const float a0 = v[o] + v[o + 1], a1 = v[o] - v[o + 1], a2 = v[o + 2] + v[o + 3], a3 = v[o + 2] - v[o + 3];
        v[o] = a0 + a2; v[o + 1] = a1 + a3; v[o + 2] = a0 - a2; v[o + 3] = a1 - a3;
    }
    #pragma unroll
    for (int st = 0; st < 5; st++)   // h = 4 .. 64 across the lanes
        if (st < lb - 2) shfl_stage(v, lane, st);
    if (lb == 8)   // h = 128 between the halves
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            const float a = v[k], b = v[k + 4];
            v[k] = a + b;
            v[k + 4] = a - b;
        }
    return scaled_absmax8(v, scale);
}
#endif
