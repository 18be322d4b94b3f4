// RMSNorm on the GPU: fp32 residual in, bf16 normalized output (the next product's operand), fp32 rstd saved.
// Backward adds the input gradient to the residual gradient in place and keeps a bf16 copy for the products;
// the weight gradient is a column reduction with one atomic per column and block.
#include "cuda/common.cuh"

// one warp per row; D % 4 == 0 takes 16-byte loads of x and 8-byte stores of out
__global__ void k_rmsnorm_fwd(bf16 *out, float *rstd, const float *x, const bf16 *w, int N, int D, float eps) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (row >= N) return;
    const float *xr = x + (size_t)row * D;
    bf16 *o = out + (size_t)row * D;
    float ss = 0.f;
    if (D % 4 == 0) {
        const float4 *x4 = (const float4 *)xr;
        for (int d = lane; d < D / 4; d += 32) { float4 v = x4[d]; ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w; }
        ss = warp_sum(ss);
        float r = rsqrtf(ss / D + eps);
        if (lane == 0) rstd[row] = r;
        for (int d = lane; d < D / 4; d += 32) {
            float4 v = x4[d];
            float2 w01 = __bfloat1622float2(((const __nv_bfloat162 *)w)[2 * d]);
            float2 w23 = __bfloat1622float2(((const __nv_bfloat162 *)w)[2 * d + 1]);
            ((__nv_bfloat162 *)o)[2 * d] = __floats2bfloat162_rn(v.x * r * w01.x, v.y * r * w01.y);
            ((__nv_bfloat162 *)o)[2 * d + 1] = __floats2bfloat162_rn(v.z * r * w23.x, v.w * r * w23.y);
        }
        return;
    }
    for (int d = lane; d < D; d += 32) ss += xr[d] * xr[d];
    ss = warp_sum(ss);
    float r = rsqrtf(ss / D + eps);
    if (lane == 0) rstd[row] = r;
    for (int d = lane; d < D; d += 32) o[d] = __float2bfloat16(xr[d] * r * __bfloat162float(w[d]));
}

// one warp per row: dx = r * (dy*w) - r^3 / D * x * sum(dy*w*x)
__global__ void k_rmsnorm_bwd_dx(float *dx, bf16 *dx16, const bf16 *dout, const float *x, const bf16 *w,
                                 const float *rstd, const float *dres, int N, int D) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (row >= N) return;
    const float *xr = x + (size_t)row * D;
    const bf16 *g = dout + (size_t)row * D;
    float dot = 0.f;
    for (int d = lane; d < D; d += 32) dot += __bfloat162float(g[d]) * __bfloat162float(w[d]) * xr[d];
    dot = warp_sum(dot);
    float r = rstd[row], c = r * r * r * dot / D;
    float *o = dx + (size_t)row * D;
    const float *res = dres ? dres + (size_t)row * D : NULL;
    bf16 *o16 = dx16 ? dx16 + (size_t)row * D : NULL;
    for (int d = lane; d < D; d += 32) {
        float v = r * __bfloat162float(g[d]) * __bfloat162float(w[d]) - c * xr[d];
        if (res) v += res[d];
        o[d] = v;
        if (o16) o16[d] = __float2bfloat16(v);
    }
}

// dw[d] += sum_n dout[n, d] * x[n, d] * rstd[n]; block = 32 columns x 8 row lanes, grid.y splits the rows
__global__ void k_rmsnorm_bwd_dw(float *dw, const bf16 *dout, const float *x, const float *rstd, int N, int D) {
    __shared__ float sh[8][33];
    int col = blockIdx.x * 32 + threadIdx.x, ty = threadIdx.y;
    int rows_per = (N + gridDim.y - 1) / gridDim.y, r0 = blockIdx.y * rows_per, r1 = min(N, r0 + rows_per);
    float acc = 0.f;
    if (col < D)
        for (int n = r0 + ty; n < r1; n += 8)
            acc += __bfloat162float(dout[(size_t)n * D + col]) * x[(size_t)n * D + col] * rstd[n];
    sh[ty][threadIdx.x] = acc;
    __syncthreads();
    if (ty == 0 && col < D) {
        for (int i = 1; i < 8; i++) acc += sh[i][threadIdx.x];
        atomicAdd(&dw[col], acc);
    }
}

extern "C" void cuda_rmsnorm_forward(halo_bf16 *out, float *rstd, const float *x, const halo_bf16 *w, int N, int D,
                                     float eps, cudaStream_t s) {
    if (N == 0) return;
    k_rmsnorm_fwd<<<cdiv(N, 8), 256, 0, s>>>((bf16 *)out, rstd, x, (const bf16 *)w, N, D, eps);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_rmsnorm_backward(float *dx, halo_bf16 *dx16, float *dw, const halo_bf16 *dout, const float *x,
                                      const halo_bf16 *w, const float *rstd, const float *dres, int N, int D,
                                      cudaStream_t s) {
    if (N == 0) return;
    // dw first: dx may alias dres, but neither is read by the dw reduction
    int ysplit = cdiv(N, 64);
    if (ysplit > 256) ysplit = 256;
    k_rmsnorm_bwd_dw<<<dim3(cdiv(D, 32), ysplit), dim3(32, 8), 0, s>>>(dw, (const bf16 *)dout, x, rstd, N, D);
    CUDA_LAUNCH_CHECK();
    k_rmsnorm_bwd_dx<<<cdiv(N, 8), 256, 0, s>>>(dx, (bf16 *)dx16, (const bf16 *)dout, x, (const bf16 *)w, rstd, dres,
                                                N, D);
    CUDA_LAUNCH_CHECK();
}
