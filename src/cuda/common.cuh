// Shared helpers of the CUDA kernels: error checks (device failures abort with file and line: they are not user
// errors), bf16 conversions and warp/block reductions.
#ifndef HALO_CUDA_COMMON_CUH
#define HALO_CUDA_COMMON_CUH
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "cuda/cuda_backend.h"

typedef __nv_bfloat16 bf16;

#define CUDA_CHECK(call) do { cudaError_t _e = (call); if (_e != cudaSuccess) { \
    fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(_e), __FILE__, __LINE__, cudaGetErrorString(_e)); \
    abort(); } } while (0)
// After every launch: catches bad launch configurations at once (no synchronization).
#define CUDA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

static inline int cdiv(long a, long b) { return (int)((a + b - 1) / b); }

// A default-on switch with an environment override: *flag < 0 = not set by its setter yet, then `name` decides at
// the first use ("0" turns it off); returns the cached 0 / 1.
static inline int env_switch(int *flag, const char *name) {
    if (*flag < 0) {
        const char *e = getenv(name);
        *flag = !(e && e[0] == '0');
    }
    return *flag;
}
// The same, default off: "1" turns it on.
static inline int env_switch_off(int *flag, const char *name) {
    if (*flag < 0) {
        const char *e = getenv(name);
        *flag = e && e[0] == '1';
    }
    return *flag;
}

// Programmatic dependent launch: a kernel started by launch_pdl may be scheduled while the kernel before it on the
// stream still runs (its launch latency hidden behind that kernel's last wave); it calls pdl_wait() before it reads or
// writes global memory, which returns once the kernel before has finished and its writes are visible. Off by default
// (not yet run on a GPU): HALO_CUDA_PDL=1 or cuda_pdl_on(1) turn it on; off, an ordinary launch, and pdl_wait returns
// at once.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
template <typename... P, typename... A>
static inline void launch_pdl(void (*k)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, A... args) {
    cudaLaunchAttribute at;
    at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t c = {};
    c.gridDim = grid;
    c.blockDim = block;
    c.dynamicSmemBytes = smem;
    c.stream = s;
    c.attrs = &at;
    c.numAttrs = cuda_pdl() ? 1 : 0;
    CUDA_CHECK(cudaLaunchKernelEx(&c, k, args...));
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float sh[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.f;
    return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v) {
    __shared__ float sh[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
    return warp_max(v);
}
// Grow-only device buffer: *p holds at least `bytes` afterwards (reallocated, with 256 bytes of slack, when *cap is
// smaller; cudaFree waits for the device, so pending users of the old buffer are done). Returns *p.
static inline void *dev_grow(void **p, size_t *cap, size_t bytes) {
    if (bytes > *cap) {
        if (*p) CUDA_CHECK(cudaFree(*p));
        CUDA_CHECK(cudaMalloc(p, bytes + 256));
        *cap = bytes;
    }
    return *p;
}
// max(m, |v.x|, |v.y|) of a bf16 pair (NaN skipped, as fmaxf)
__device__ __forceinline__ float absmax_bf2(float m, __nv_bfloat162 v) {
    const float2 f = __bfloat1622float2(v);
    return fmaxf(m, fmaxf(fabsf(f.x), fabsf(f.y)));
}
// 1 when either value of a bf16 pair is a NaN or an Inf (all exponent bits set)
__device__ __forceinline__ int nonfinite_bf2(__nv_bfloat162 v) {
    unsigned w;
    memcpy(&w, &v, 4);
    return (w & 0x7f80u) == 0x7f80u || (w & 0x7f800000u) == 0x7f800000u;
}
// The producers' non-finite flags, block-wide: *f0 / *f1 / *f2 |= 1 when any thread of the block set bit 0 / 1 / 2 of
// bad (f0 NULL: none; f1, f2 NULL when fewer). One __syncthreads_or, one more per flag when some bit is set with
// several flags. Every thread of the block must call it.
__device__ __forceinline__ void block_flags(int bad, int *f0, int *f1 = NULL, int *f2 = NULL) {
    if (!f0 || !__syncthreads_or(bad)) return;
    if (!f1) {
        if (threadIdx.x == 0) atomicOr(f0, 1);
        return;
    }
    int *const f[3] = {f0, f1, f2};
    for (int i = 0; i < 3; i++)
        if (f[i] && __syncthreads_or(bad & (1 << i)) && threadIdx.x == 0) atomicOr(f[i], 1);
}
// mma.sync m16n8k16, bf16 inputs, fp32 accumulators c += A B. Fragment layouts (g = lane / 4, t = lane % 4):
//   A 16x16 row: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
//   B 16x8 col:  b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g)
//   C 16x8:      c0,c1 (g, 2t..2t+1), c2,c3 (g+8, 2t..2t+1)
__device__ __forceinline__ void mma16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// ldmatrix: four 8x8 bf16 matrices from shared memory, transposed (B fragments of [k][n] tiles, A fragments of
// [k][m] ones) or not (A fragments of [m][k] tiles)
__device__ __forceinline__ void ldsm_x4_t(uint32_t *r, const bf16 *p) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm_x4(uint32_t *r, const bf16 *p) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
// cp.async (sm_80+): 16-byte global->shared copies that complete in the background; rows >= T are zero-filled
// with plain stores (visible after the next barrier).
__device__ __forceinline__ void cp_async16_s(uint32_t dst, const void *src) {   // dst: a shared-memory address
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp_async4(void *dst, const void *src) {   // 4 bytes (lse, D, segment ids)
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"((uint32_t)__cvta_generic_to_shared(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
    cp_async16_s((uint32_t)__cvta_generic_to_shared(dst), src);
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
#endif
