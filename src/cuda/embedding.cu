// Token embedding on the GPU: forward gathers bf16 rows into the fp32 residual stream; backward scatters the fp32
// residual gradient into the fp32 table gradient with atomics (repeated tokens add up).
#include "cuda/common.cuh"

__global__ void k_embed_fwd(float *out, const int32_t *ids, const bf16 *table, int D) {
    int n = blockIdx.x;
    const bf16 *row = table + (size_t)ids[n] * D;
    float *o = out + (size_t)n * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] = __bfloat162float(row[d]);
}

__global__ void k_embed_bwd(float *dtable, const int32_t *ids, const float *dout, int D, int skip_id) {
    int n = blockIdx.x;
    if (ids[n] == skip_id) return;
    float *row = dtable + (size_t)ids[n] * D;
    const float *g = dout + (size_t)n * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) atomicAdd(&row[d], g[d]);
}

extern "C" void cuda_embedding_forward(float *out, const int32_t *ids, const halo_bf16 *table, int N, int D,
                                       cudaStream_t s) {
    if (N == 0) return;
    k_embed_fwd<<<N, 256, 0, s>>>(out, ids, (const bf16 *)table, D);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_embedding_backward(float *dtable, const int32_t *ids, const float *dout, int N, int D,
                                        int skip_id, cudaStream_t s) {
    if (N == 0) return;
    k_embed_bwd<<<N, 256, 0, s>>>(dtable, ids, dout, D, skip_id);
    CUDA_LAUNCH_CHECK();
}
