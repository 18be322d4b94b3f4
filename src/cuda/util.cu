// Device discovery and bf16 <-> fp32 conversions (host and device) used by the model and the tests.
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "cuda/common.cuh"
extern "C" {
#include "util/error.h"
}

static int g_pdl = -1;   // cuda_pdl_on / HALO_CUDA_PDL (-1: not read yet); off until measured on a GPU
extern "C" void cuda_pdl_on(int on) { g_pdl = on ? 1 : 0; }
extern "C" int cuda_pdl(void) { return env_switch_off(&g_pdl, "HALO_CUDA_PDL"); }

extern "C" int cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) { cudaGetLastError(); return 0; }
    return n;
}

extern "C" int cuda_device_usable(char *why, size_t cap) {
    const int n = cuda_device_count();
    if (n <= 0) {
        snprintf(why, cap, "no CUDA device found (no NVIDIA driver, or no GPU visible to this process)");
        return 0;
    }
    int dev = 0;
    cudaDeviceProp p;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) {
        cudaGetLastError();
        snprintf(why, cap, "the CUDA device could not be queried");
        return 0;
    }
    if (p.major != 9 || p.minor != 0) {   // the Makefile builds for sm_90a only (wgmma, TMA, FP8)
        snprintf(why, cap, "%s has compute capability %d.%d, and this build's CUDA kernels are for 9.0 (H100, H200)",
                 p.name, p.major, p.minor);
        return 0;
    }
    return 1;
}

extern "C" int cuda_device_count_forked(char *why, size_t cap) {
    struct probe { int n; char why[256]; };
    int fd[2];
    if (cap) why[0] = 0;
    if (pipe(fd) != 0) { snprintf(why, cap, "the GPU probe could not start (pipe failed)"); return 0; }
    fflush(stdout);
    fflush(stderr);
    const pid_t pid = fork();
    if (pid == 0) {   // the probe: CUDA starts here and ends with this process
        close(fd[0]);
        probe m;
        memset(&m, 0, sizeof m);
        const int n = cuda_device_count();
        for (int d = 0; d < n; d++)
            if (cudaSetDevice(d) == cudaSuccess && cuda_device_usable(m.why, sizeof m.why)) m.n++;
        if (n == 0) cuda_device_usable(m.why, sizeof m.why);
        const ssize_t w = write(fd[1], &m, sizeof m);
        _exit(w == (ssize_t)sizeof m ? 0 : 1);
    }
    close(fd[1]);
    probe m;
    memset(&m, 0, sizeof m);
    if (pid < 0 || read(fd[0], &m, sizeof m) != (ssize_t)sizeof m) {
        m.n = 0;
        snprintf(m.why, sizeof m.why, "the GPU probe process failed");
    }
    close(fd[0]);
    if (pid > 0) waitpid(pid, NULL, 0);
    m.why[sizeof m.why - 1] = 0;
    snprintf(why, cap, "%s", m.why);
    return m.n;
}

extern "C" int cuda_select_device(int dev) {
    const int n = cuda_device_count();
    if (dev < 0 || dev >= n) return halo_fail("CUDA device %d: this process sees %d GPU(s)", dev, n);
    const cudaError_t e = cudaSetDevice(dev);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return halo_fail("CUDA device %d: %s", dev, cudaGetErrorString(e));
    }
    return HALO_OK;
}

extern "C" void cuda_f32_to_bf16_host(halo_bf16 *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &src[i], 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) { dst[i] = (halo_bf16)((u >> 16) | 0x40); continue; }   // NaN stays NaN
        u += 0x7fffu + ((u >> 16) & 1u);
        dst[i] = (halo_bf16)(u >> 16);
    }
}

extern "C" void cuda_bf16_to_f32_host(float *dst, const halo_bf16 *src, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)src[i] << 16;
        memcpy(&dst[i], &u, 4);
    }
}

__global__ void k_f32_to_bf16(bf16 *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16(src[i]);
}
__global__ void k_bf16_to_f32(float *dst, const bf16 *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __bfloat162float(src[i]);
}

static int grid_for(size_t n) { size_t g = (n + 255) / 256; return (int)(g > 65536 ? 65536 : (g ? g : 1)); }

extern "C" void cuda_f32_to_bf16(halo_bf16 *dst, const float *src, size_t n, cudaStream_t s) {
    k_f32_to_bf16<<<grid_for(n), 256, 0, s>>>((bf16 *)dst, src, n);
    CUDA_LAUNCH_CHECK();
}
extern "C" void cuda_bf16_to_f32(float *dst, const halo_bf16 *src, size_t n, cudaStream_t s) {
    k_bf16_to_f32<<<grid_for(n), 256, 0, s>>>(dst, (const bf16 *)src, n);
    CUDA_LAUNCH_CHECK();
}
