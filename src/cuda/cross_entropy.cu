// Cross-entropy over one chunk of bf16 logits on the GPU (fp32 arithmetic): one block per row computes max and sum
// of exponentials in one online pass, adds the row loss to a double accumulator, and writes the bf16 gradient of the
// logits in a second pass, in place (the lm_head products that follow take bf16 operands).
#include "cuda/common.cuh"

// W values a thread at a time: 8 (16-byte accesses, V % 8 == 0: every Llama vocabulary), 2 (V even) or 1; with W = 8
// the running maximum moves once per 8 values. dlogits may alias logits: every element is read (pass 1) before the
// barrier inside the reductions and rewritten (pass 2) by the thread that reads it, and the target's logit is read up
// front.
template <int W>
__global__ void k_xent(bf16 *dlogits, double *loss_sum, const bf16 *logits, const int32_t *targets, int V,
                       float scale) {
    int row = blockIdx.x;
    const bf16 *x = logits + (size_t)row * V;
    int tgt = targets[row];
    bf16 *dl = dlogits ? dlogits + (size_t)row * V : NULL;
    if (tgt < 0) {
        if (dl) for (int j = threadIdx.x; j < V; j += blockDim.x) dl[j] = __float2bfloat16(0.f);
        return;
    }
    float xt = __bfloat162float(x[tgt]);
    float m = -INFINITY, s = 0.f;
    auto add = [&](float v) {
        if (v > m) { s = s * __expf(m - v) + 1.f; m = v; }
        else s += __expf(v - m);
    };
    if (W == 8) {
        const uint4 *x8 = (const uint4 *)x;
        for (int j = threadIdx.x; j < V / 8; j += blockDim.x) {
            const uint4 u = x8[j];
            const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;
            float v[8];
#pragma unroll
            for (int k = 0; k < 4; k++) { const float2 f = __bfloat1622float2(h[k]); v[2 * k] = f.x; v[2 * k + 1] = f.y; }
            float cm = v[0];
#pragma unroll
            for (int k = 1; k < 8; k++) cm = fmaxf(cm, v[k]);
            if (cm > m) { s = m == -INFINITY ? 0.f : s * __expf(m - cm); m = cm; }
#pragma unroll
            for (int k = 0; k < 8; k++) s += __expf(v[k] - m);
        }
    } else if (W == 2) {
        const __nv_bfloat162 *x2 = (const __nv_bfloat162 *)x;
        for (int j = threadIdx.x; j < V / 2; j += blockDim.x) { float2 v = __bfloat1622float2(x2[j]); add(v.x); add(v.y); }
    } else {
        for (int j = threadIdx.x; j < V; j += blockDim.x) add(__bfloat162float(x[j]));
    }
    float M = block_max(m);
    s = (m == -INFINITY) ? 0.f : s * __expf(m - M);
    float S = block_sum(s);
    if (threadIdx.x == 0) atomicAdd(loss_sum, (double)(logf(S) + M - xt));
    if (!dl) return;
    float inv = 1.f / S;
    if (W == 8) {
        const uint4 *x8 = (const uint4 *)x;
        uint4 *d8 = (uint4 *)dl;
        for (int j = threadIdx.x; j < V / 8; j += blockDim.x) {
            uint4 u = x8[j];
            __nv_bfloat162 *h = (__nv_bfloat162 *)&u;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const float2 v = __bfloat1622float2(h[k]);
                const float p0 = __expf(v.x - M) * inv - (8 * j + 2 * k == tgt ? 1.f : 0.f);
                const float p1 = __expf(v.y - M) * inv - (8 * j + 2 * k + 1 == tgt ? 1.f : 0.f);
                h[k] = __floats2bfloat162_rn(scale * p0, scale * p1);
            }
            d8[j] = u;
        }
    } else if (W == 2) {
        const __nv_bfloat162 *x2 = (const __nv_bfloat162 *)x;
        __nv_bfloat162 *d2 = (__nv_bfloat162 *)dl;
        for (int j = threadIdx.x; j < V / 2; j += blockDim.x) {
            float2 v = __bfloat1622float2(x2[j]);
            float p0 = __expf(v.x - M) * inv - (2 * j == tgt ? 1.f : 0.f);
            float p1 = __expf(v.y - M) * inv - (2 * j + 1 == tgt ? 1.f : 0.f);
            d2[j] = __floats2bfloat162_rn(scale * p0, scale * p1);
        }
    } else {
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            float p = __expf(__bfloat162float(x[j]) - M) * inv;
            dl[j] = __float2bfloat16(scale * (p - (j == tgt ? 1.f : 0.f)));
        }
    }
}

extern "C" void cuda_cross_entropy(halo_bf16 *dlogits, double *loss_sum, const halo_bf16 *logits, const int32_t *targets,
                                   int N, int V, float scale, cudaStream_t s) {
    if (N == 0) return;
    int nt = V >= 4096 ? 1024 : 256;
    if (V % 8 == 0) k_xent<8><<<N, nt, 0, s>>>((bf16 *)dlogits, loss_sum, (const bf16 *)logits, targets, V, scale);
    else if (V % 2 == 0) k_xent<2><<<N, nt, 0, s>>>((bf16 *)dlogits, loss_sum, (const bf16 *)logits, targets, V, scale);
    else k_xent<1><<<N, nt, 0, s>>>((bf16 *)dlogits, loss_sum, (const bf16 *)logits, targets, V, scale);
    CUDA_LAUNCH_CHECK();
}
