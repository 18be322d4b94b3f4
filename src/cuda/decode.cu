// KV-cache decoding on the GPU (cuda_backend.h): BF16 weights (borrowed from a llama_cuda model or uploaded from a
// host model), cuBLASLt products over the rows of a call (one row per token: a prompt chunk in prefill, one token
// per sequence in a decode step), the training kernels for embedding, RMSNorm, RoPE and SwiGLU, and two kernels of
// its own: the K/V append into the bf16 cache and single-query attention over the cache (one block per row and
// head, fp32 online softmax over tiles of keys). Logits come back to the host in fp32, where sampling happens with
// the CPU generator's gen_pick_token. HALO is not used here: generation runs the BF16 weights.
#include <math.h>
#include <string.h>
#include "cuda/common.cuh"
extern "C" {
#include "ops/ops.h"
#include "util/error.h"
}

enum { ATT_THREADS = 128, ATT_TILE = 128, ATT_MAXD = 2 * ATT_THREADS, DEC_GRAPHS = 32 };

struct cuda_decoder {
    llama_config c;
    int S, L, R;                 // max sequences, max length, max rows per call
    int Q, KV, QKV;              // Hq hd, Hkv hd, Q + 2 KV
    cudaStream_t st;
    int own_stream;
    bf16 *owned;                 // weights uploaded from a host model (NULL when borrowed)
    llama_cuda_weight_ptrs w;
    bf16 *kc, *vc;               // [layers][S][L][KV]
    float *x, *h, *xo, *rstd;    // [R, D] residual stream, after attention, gathered output rows; [R]
    bf16 *nrm, *qkv, *att, *gu, *sw, *nf;   // [R, D], [R, QKV], [R, Q], [R, 2F], [R, F], [R, D]
    float *logits;               // [S, V]: one lm_head chunk of S rows
    int32_t *amax;               // device [R]: greedy tokens of the output rows
    float *cos_t, *sin_t;        // [L, hd/2]
    int32_t *idx;                // device [4 R]: seq, tok, pos, out_rows
    int32_t *stage;              // pinned host [4 R]
    float *hlogits;              // pinned host [S, V] (cuda_generate)
    size_t bytes;
    // CUDA graphs of decode steps, one per (rows, output rows, greedy): seen once eagerly (which builds every product
    // plan), captured on the second call, replayed after; rebuilt when cuda_matmul_generation() moves
    struct { int n, n_out, greedy, gen; cudaGraphExec_t exec; } graph[DEC_GRAPHS];
    int n_graphs, graphs;        // entries in use; 1 = on, 0 = off (setter / environment / a failed capture)
};

// ---- kernels ----
// cache[seq, pos] = this row's K and V (after RoPE), for every row of the call
__global__ void k_kv_append(bf16 *kc, bf16 *vc, const bf16 *qkv, int ldq, int Q, int KV, const int32_t *seq,
                            const int32_t *pos, int L) {
    int r = blockIdx.x;
    size_t dst = ((size_t)seq[r] * L + pos[r]) * KV;
    const bf16 *src = qkv + (size_t)r * ldq + Q;
    for (int i = threadIdx.x; i < KV; i += blockDim.x) { kc[dst + i] = src[i]; vc[dst + i] = src[KV + i]; }
}

// One block per (row, query head): out = softmax(q K^T * scale) V over the cache positions 0..pos[row] of the row's
// sequence. Warps score keys (lanes split head_dim), then each thread accumulates up to two output dimensions.
__global__ void __launch_bounds__(ATT_THREADS) k_decode_attn(bf16 *out, const bf16 *qkv, int ldq, const bf16 *kc,
                                                             const bf16 *vc, const int32_t *seq, const int32_t *pos,
                                                             int L, int KV, int Hq, int Hkv, int hd, float scale) {
    __shared__ float qs[ATT_MAXD], ps[ATT_TILE];
    int r = blockIdx.x, h = blockIdx.y, kvh = h / (Hq / Hkv);
    int tid = threadIdx.x, lane = tid & 31, wp = tid >> 5, nw = ATT_THREADS / 32;
    int d0 = tid, d1 = tid + ATT_THREADS;
    const bf16 *q = qkv + (size_t)r * ldq + (size_t)h * hd;
    size_t base = (size_t)seq[r] * L * KV + (size_t)kvh * hd;
    const bf16 *K = kc + base, *V = vc + base;
    int P = pos[r] + 1;
    for (int d = tid; d < hd; d += ATT_THREADS) qs[d] = __bfloat162float(q[d]) * scale;
    float m = -INFINITY, l = 0.f, acc0 = 0.f, acc1 = 0.f;
    __syncthreads();
    for (int t0 = 0; t0 < P; t0 += ATT_TILE) {
        int nt = min(ATT_TILE, P - t0);
        for (int j = wp; j < nt; j += nw) {
            const bf16 *kr = K + (size_t)(t0 + j) * KV;
            float s = 0.f;
            for (int d = lane; d < hd; d += 32) s += qs[d] * __bfloat162float(kr[d]);
            s = warp_sum(s);
            if (lane == 0) ps[j] = s;
        }
        __syncthreads();
        float tm = -INFINITY;
        for (int j = 0; j < nt; j++) tm = fmaxf(tm, ps[j]);
        float mn = fmaxf(m, tm), corr = expf(m - mn);   // first tile: exp(-inf) = 0
        __syncthreads();                                 // every thread has read the scores
        for (int j = tid; j < nt; j += ATT_THREADS) ps[j] = expf(ps[j] - mn);
        __syncthreads();
        float ts = 0.f, a0 = 0.f, a1 = 0.f;
        for (int j = 0; j < nt; j++) {
            float p = ps[j];
            const bf16 *vr = V + (size_t)(t0 + j) * KV;
            ts += p;
            if (d0 < hd) a0 += p * __bfloat162float(vr[d0]);
            if (d1 < hd) a1 += p * __bfloat162float(vr[d1]);
        }
        l = l * corr + ts;
        acc0 = acc0 * corr + a0;
        acc1 = acc1 * corr + a1;
        m = mn;
        __syncthreads();                                 // before the next tile's scores overwrite ps
    }
    bf16 *o = out + (size_t)r * Hq * hd + (size_t)h * hd;
    if (d0 < hd) o[d0] = __float2bfloat16(acc0 / l);
    if (d1 < hd) o[d1] = __float2bfloat16(acc1 / l);
}

// dst[i, :] = src[rows[i], :]
__global__ void k_gather_rows(float *dst, const float *src, const int32_t *rows, int D) {
    const float *s = src + (size_t)rows[blockIdx.x] * D;
    float *o = dst + (size_t)blockIdx.x * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] = s[d];
}

// best[row] = argmax of logits[row, :V], the lowest id among equal maxima (as gen_pick_token); one block per row
__global__ void k_argmax(int32_t *best, const float *logits, int V) {
    const float *l = logits + (size_t)blockIdx.x * V;
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        if (l[i] > bv || bi == 0x7fffffff) { bv = l[i]; bi = i; }   // strided scan: ids ascend, so ties keep the first
    __shared__ float sv[32];
    __shared__ int si[32];
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) { sv[w] = bv; si[w] = bi; }
    __syncthreads();
    if (w == 0) {
        bv = lane < nw ? sv[lane] : -INFINITY;
        bi = lane < nw ? si[lane] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
        }
        if (lane == 0) best[blockIdx.x] = bi;
    }
}

// ---- init ----
static void *dec_alloc(cuda_decoder *d, size_t bytes, int *oom) {
    void *p = NULL;
    if (*oom) return NULL;
    if (cudaMalloc(&p, bytes ? bytes : 16) != cudaSuccess) {
        cudaGetLastError();
        *oom = 1;
        halo_fail("CUDA decoder: out of device memory allocating %.1f MiB (%.2f GiB allocated so far)",
                  bytes / 1048576.0, d->bytes / 1073741824.0);
        return NULL;
    }
    d->bytes += bytes;
    return p;
}

static int dec_common(cuda_decoder **out, const llama_config *c, int max_seqs, int max_len, int max_rows) {
    *out = NULL;
    if (!llama_cuda_variant_ok(c)) return halo_fail("%s", LLAMA_CUDA_NO_BIAS);
    char why[256];
    if (!cuda_device_usable(why, sizeof why)) return halo_fail("CUDA: %s", why);
    if (max_seqs < 1 || max_len < 1 || max_rows < max_seqs)
        return halo_fail("CUDA decoder: need max_seqs >= 1, max_len >= 1, max_rows >= max_seqs (got %d, %d, %d)",
                         max_seqs, max_len, max_rows);
    if (c->head_dim > ATT_MAXD || c->head_dim % 2 || c->n_heads % c->n_kv_heads)
        return halo_fail("CUDA decoder: head_dim %d (even, at most %d) and %d heads over %d KV heads unsupported",
                         c->head_dim, ATT_MAXD, c->n_heads, c->n_kv_heads);
    cuda_decoder *d = (cuda_decoder *)xcalloc(1, sizeof *d);
    d->c = *c;
    d->S = max_seqs; d->L = max_len; d->R = max_rows;
    d->Q = c->n_heads * c->head_dim;
    d->KV = c->n_kv_heads * c->head_dim;
    d->QKV = d->Q + 2 * d->KV;
    d->graphs = -1;   // the environment decides at the first call
    *out = d;
    return HALO_OK;
}

static int dec_buffers(cuda_decoder *d) {
    const llama_config *c = &d->c;
    size_t R = d->R, D = c->dim, F = c->hidden_dim, V = c->vocab_size, S = d->S;
    size_t cache = (size_t)c->n_layers * S * d->L * d->KV * 2;
    int oom = 0;
    d->kc = (bf16 *)dec_alloc(d, cache, &oom);
    d->vc = (bf16 *)dec_alloc(d, cache, &oom);
    d->x = (float *)dec_alloc(d, R * D * 4, &oom);
    d->h = (float *)dec_alloc(d, R * D * 4, &oom);
    d->xo = (float *)dec_alloc(d, R * D * 4, &oom);
    d->rstd = (float *)dec_alloc(d, R * 4, &oom);
    d->nrm = (bf16 *)dec_alloc(d, R * D * 2, &oom);
    d->qkv = (bf16 *)dec_alloc(d, R * d->QKV * 2, &oom);
    d->att = (bf16 *)dec_alloc(d, R * d->Q * 2, &oom);
    d->gu = (bf16 *)dec_alloc(d, R * 2 * F * 2, &oom);
    d->sw = (bf16 *)dec_alloc(d, R * F * 2, &oom);
    d->nf = (bf16 *)dec_alloc(d, R * D * 2, &oom);
    d->logits = (float *)dec_alloc(d, S * V * 4, &oom);
    size_t half = c->head_dim / 2, tn = (size_t)d->L * half;
    d->cos_t = (float *)dec_alloc(d, tn * 4 * 2, &oom);
    d->idx = (int32_t *)dec_alloc(d, R * 4 * 4, &oom);
    d->amax = (int32_t *)dec_alloc(d, R * 4, &oom);
    if (oom) return HALO_ERR;
    d->sin_t = d->cos_t + tn;
    if (cudaMallocHost((void **)&d->stage, R * 4 * 4) != cudaSuccess ||
        cudaMallocHost((void **)&d->hlogits, S * V * 4) != cudaSuccess)
        return halo_fail("CUDA decoder: pinned host buffers (%.1f MiB)", S * V * 4 / 1048576.0);
    // the CPU's RoPE tables, so both backends rotate by the same angles
    float *ct = (float *)xmalloc(tn * 4 * 2);
    rope_tables(ct, ct + tn, d->L, c->head_dim, c->rope_theta, (int)c->rope_scaling, c->rope_factor,
                c->rope_low_freq_factor, c->rope_high_freq_factor, c->rope_original_max_pos);
    CUDA_CHECK(cudaMemcpy(d->cos_t, ct, tn * 4 * 2, cudaMemcpyHostToDevice));
    free(ct);
    return HALO_OK;
}

extern "C" int cuda_decoder_init(cuda_decoder **out, llama_cuda *g, int max_seqs, int max_len, int max_rows) {
    *out = NULL;
    if (llama_cuda_has_lora(g))   // the decoder reads the base weights only
        return halo_fail("CUDA decoder: the GPU model has LoRA adapters, which the decoder does not apply (decode from "
                         "a host model with the adapters merged: llama_lora_merge, cuda_decoder_init_host)");
    llama_cuda_weight_ptrs w;
    llama_cuda_weights(g, &w);
    if (dec_common(out, &w.cfg, max_seqs, max_len, max_rows) != HALO_OK) { free(w.layers); return HALO_ERR; }
    cuda_decoder *d = *out;
    d->w = w;
    d->st = w.stream;
    if (dec_buffers(d) != HALO_OK) { cuda_decoder_free(d); *out = NULL; return HALO_ERR; }
    CUDA_CHECK(cudaDeviceSynchronize());
    return HALO_OK;
}

// 128 elements: every tensor 256-byte aligned, as in llama_cuda.cu
static size_t al(size_t x) { return (x + 127) & ~(size_t)127; }

extern "C" int cuda_decoder_init_host(cuda_decoder **out, const llama_model *host, int max_seqs, int max_len,
                                      int max_rows) {
    const llama_config *c = &host->cfg;
    if (dec_common(out, c, max_seqs, max_len, max_rows) != HALO_OK) return HALO_ERR;
    cuda_decoder *d = *out;
    size_t D = c->dim, F = c->hidden_dim, V = c->vocab_size, Q = d->Q, KV = d->KV;
    const int has_b = (c->bias_kinds & BIAS_QKV) != 0, has_n = c->qk_norm != 0;
    size_t per_layer = al(D) + al((Q + 2 * KV) * D) + al(D * Q) + al(D) + al(2 * F * D) + al(D * F) +
                       (has_b ? al(Q + 2 * KV) : 0) + (has_n ? 2 * al(c->head_dim) : 0);
    size_t total = per_layer * c->n_layers + al(V * D) * (c->tie_embeddings ? 1 : 2) + al(D);
    int oom = 0;
    d->owned = (bf16 *)dec_alloc(d, total * 2, &oom);
    if (oom || dec_buffers(d) != HALO_OK) { cuda_decoder_free(d); *out = NULL; return HALO_ERR; }
    CUDA_CHECK(cudaStreamCreateWithFlags(&d->st, cudaStreamNonBlocking));
    d->own_stream = 1;
    // tensor by tensor through one host bf16 buffer of the largest size
    size_t big = V * D > 2 * F * D ? V * D : 2 * F * D;
    if ((Q + 2 * KV) * D > big) big = (Q + 2 * KV) * D;
    halo_bf16 *tmp = (halo_bf16 *)xmalloc(big * 2);
    size_t cur = 0;
    bf16 *W = d->owned;
    // uploads n values of src at `cur` (+ sub-offset), synchronously (tmp is reused)
#define PUT(dst_off, src, n) do { cuda_f32_to_bf16_host(tmp, (src), (n)); \
        CUDA_CHECK(cudaMemcpy(W + (dst_off), tmp, (n) * 2, cudaMemcpyHostToDevice)); } while (0)
    d->w.cfg = *c;
    d->w.layers = (llama_cuda_layer_ptrs *)xcalloc((size_t)c->n_layers, sizeof(llama_cuda_layer_ptrs));
    for (int l = 0; l < c->n_layers; l++) {
        const llama_layer_weights *hw = &host->w.layers[l];
        llama_cuda_layer_ptrs *p = &d->w.layers[l];
        p->attn_norm = (const halo_bf16 *)(W + cur); PUT(cur, hw->attn_norm, D); cur += al(D);
        p->wqkv = (const halo_bf16 *)(W + cur);
        PUT(cur, hw->wq, Q * D); PUT(cur + Q * D, hw->wk, KV * D); PUT(cur + (Q + KV) * D, hw->wv, KV * D);
        cur += al((Q + 2 * KV) * D);
        p->wo = (const halo_bf16 *)(W + cur); PUT(cur, hw->wo, D * Q); cur += al(D * Q);
        p->ffn_norm = (const halo_bf16 *)(W + cur); PUT(cur, hw->ffn_norm, D); cur += al(D);
        p->wgu = (const halo_bf16 *)(W + cur); PUT(cur, hw->w_gate, F * D); PUT(cur + F * D, hw->w_up, F * D);
        cur += al(2 * F * D);
        p->wdown = (const halo_bf16 *)(W + cur); PUT(cur, hw->w_down, D * F); cur += al(D * F);
        if (has_b) {   // Qwen2: the q, k, v biases adjacent, over the fused product's columns
            p->bqkv = (const halo_bf16 *)(W + cur);
            PUT(cur, hw->bias[LIN_Q], Q); PUT(cur + Q, hw->bias[LIN_K], KV); PUT(cur + Q + KV, hw->bias[LIN_V], KV);
            cur += al(Q + 2 * KV);
        }
        if (has_n) {   // Qwen3: the per-head q and k norms
            p->q_norm = (const halo_bf16 *)(W + cur); PUT(cur, hw->q_norm, c->head_dim); cur += al(c->head_dim);
            p->k_norm = (const halo_bf16 *)(W + cur); PUT(cur, hw->k_norm, c->head_dim); cur += al(c->head_dim);
        }
    }
    d->w.embed = (const halo_bf16 *)(W + cur); PUT(cur, host->w.embed, V * D); cur += al(V * D);
    if (c->tie_embeddings) d->w.lm_head = d->w.embed;
    else { d->w.lm_head = (const halo_bf16 *)(W + cur); PUT(cur, host->w.lm_head, V * D); cur += al(V * D); }
    d->w.final_norm = (const halo_bf16 *)(W + cur); PUT(cur, host->w.final_norm, D); cur += al(D);
#undef PUT
    free(tmp);
    d->w.stream = d->st;
    d->w.halo_on = llama_get_halo(host) != NULL;
    return HALO_OK;
}

extern "C" void cuda_decoder_free(cuda_decoder *d) {
    if (!d) return;
    if (d->st) cudaStreamSynchronize(d->st);
    void *ptrs[] = {d->owned, d->kc, d->vc, d->x, d->h, d->xo, d->rstd, d->nrm, d->qkv, d->att, d->gu, d->sw, d->nf,
                    d->logits, d->cos_t, d->idx, d->amax};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) if (ptrs[i]) cudaFree(ptrs[i]);
    if (d->stage) cudaFreeHost(d->stage);
    if (d->hlogits) cudaFreeHost(d->hlogits);
    for (int i = 0; i < d->n_graphs; i++) if (d->graph[i].exec) cudaGraphExecDestroy(d->graph[i].exec);
    if (d->own_stream) cudaStreamDestroy(d->st);
    free(d->w.layers);
    free(d);
}

extern "C" void cuda_decoder_graphs(cuda_decoder *d, int on) { d->graphs = on ? 1 : 0; }

// ---- forward ----
// logits (host [n_out, V]) and/or next (host [n_out]: the greedy token of each output row, found on the device)
// The launches of one call after its rows are staged in d->idx: every layer over the n rows ...
static void dec_layers(cuda_decoder *d, int n) {
    const llama_config *c = &d->c;
    int D = c->dim, F = c->hidden_dim, Hq = c->n_heads, Hkv = c->n_kv_heads, hd = c->head_dim, R = d->R;
    cudaStream_t s = d->st;
    const int32_t *dseq = d->idx, *dtok = d->idx + R, *dpos = d->idx + 2 * R;
    const llama_cuda_weight_ptrs *w = &d->w;
    halo_bf16 *nrm = (halo_bf16 *)d->nrm, *qkv = (halo_bf16 *)d->qkv, *att = (halo_bf16 *)d->att;
    halo_bf16 *gu = (halo_bf16 *)d->gu, *sw = (halo_bf16 *)d->sw;
    size_t layer_cache = (size_t)d->S * d->L * d->KV;
    cuda_embedding_forward(d->x, dtok, w->embed, n, D, s);
    for (int l = 0; l < c->n_layers; l++) {
        const llama_cuda_layer_ptrs *p = &w->layers[l];
        cuda_rmsnorm_forward(nrm, d->rstd, d->x, p->attn_norm, n, D, c->norm_eps, s);
        cuda_linear_forward(qkv, 0, nrm, p->wqkv, NULL, n, D, d->QKV, s);
        if (p->bqkv) cuda_bias_rows_add(qkv, d->QKV, p->bqkv, n, d->QKV, s);   // Qwen2
        if (p->q_norm)   // Qwen3
            cuda_head_rmsnorm_forward(qkv, d->QKV, NULL, NULL, p->q_norm, p->k_norm, n, Hq, Hkv, hd, c->norm_eps, s);
        if (llama_layer_rope(c, l)) cuda_rope_forward(qkv, d->QKV, dpos, d->cos_t, d->sin_t, n, Hq + Hkv, hd, s);
        bf16 *kc = d->kc + l * layer_cache, *vc = d->vc + l * layer_cache;
        k_kv_append<<<n, 256, 0, s>>>(kc, vc, d->qkv, d->QKV, d->Q, d->KV, dseq, dpos, d->L);
        CUDA_LAUNCH_CHECK();
        k_decode_attn<<<dim3(n, Hq), ATT_THREADS, 0, s>>>(d->att, d->qkv, d->QKV, kc, vc, dseq, dpos, d->L, d->KV, Hq,
                                                          Hkv, hd, 1.f / sqrtf((float)hd));
        CUDA_LAUNCH_CHECK();
        cuda_linear_forward(d->h, 1, att, p->wo, d->x, n, d->Q, D, s);
        cuda_rmsnorm_forward(nrm, d->rstd, d->h, p->ffn_norm, n, D, c->norm_eps, s);
        cuda_linear_forward(gu, 0, nrm, p->wgu, NULL, n, D, 2 * F, s);
        cuda_swiglu_forward(sw, gu, n, F, s);
        cuda_linear_forward(d->x, 1, sw, p->wdown, d->h, n, F, D, s);
    }
}

// ... and output rows c0..c0+nc-1 of n_out (nc <= S; the gather and final norm of all n_out with the first chunk):
// logits into d->logits, greedy tokens into d->amax + c0.
static void dec_head(cuda_decoder *d, int n_out, int c0, int nc, int greedy) {
    const llama_config *c = &d->c;
    int D = c->dim, V = c->vocab_size, R = d->R;
    cudaStream_t s = d->st;
    if (c0 == 0) {
        k_gather_rows<<<n_out, 256, 0, s>>>(d->xo, d->x, d->idx + 3 * R, D);
        CUDA_LAUNCH_CHECK();
        cuda_rmsnorm_forward((halo_bf16 *)d->nf, d->rstd, d->xo, d->w.final_norm, n_out, D, c->norm_eps, s);
    }
    cuda_linear_forward(d->logits, 1, (const halo_bf16 *)d->nf + (size_t)c0 * D, d->w.lm_head, NULL, nc, D, V, s);
    if (greedy) {
        k_argmax<<<nc, 1024, 0, s>>>(d->amax + c0, d->logits, V);
        CUDA_LAUNCH_CHECK();
    }
}

// Runs the call's launches from a CUDA graph when it is a decode step (n <= S rows, outputs in one lm_head chunk)
// seen before; returns 0 when the caller must launch them itself (first sight, graphs off, a failed capture).
static int dec_graph_run(cuda_decoder *d, int n, int n_out, int greedy) {
    if (!env_switch(&d->graphs, "HALO_CUDA_DECODE_GRAPHS") || n > d->S || n_out > d->S || n_out < 1) return 0;
    const int gen = cuda_matmul_generation();
    int i = 0;
    while (i < d->n_graphs && !(d->graph[i].n == n && d->graph[i].n_out == n_out && d->graph[i].greedy == greedy)) i++;
    if (i == d->n_graphs) {   // first sight: the eager run builds the product plans the capture will find
        if (i == DEC_GRAPHS) return 0;
        d->graph[i].n = n; d->graph[i].n_out = n_out; d->graph[i].greedy = greedy;
        d->graph[i].gen = gen; d->graph[i].exec = NULL;
        d->n_graphs++;
        return 0;
    }
    if (d->graph[i].gen != gen) {   // the products' workspace or plans changed: run eagerly once more
        if (d->graph[i].exec) cudaGraphExecDestroy(d->graph[i].exec);
        d->graph[i].exec = NULL;
        d->graph[i].gen = gen;
        return 0;
    }
    if (!d->graph[i].exec) {
        cudaGraph_t graph = NULL;
        if (cudaStreamBeginCapture(d->st, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
            cudaGetLastError();
            d->graphs = 0;
            return 0;
        }
        dec_layers(d, n);
        dec_head(d, n_out, 0, n_out, greedy);
        cudaError_t e = cudaStreamEndCapture(d->st, &graph);
        if (e == cudaSuccess) e = cudaGraphInstantiate(&d->graph[i].exec, graph, 0);
        if (graph) cudaGraphDestroy(graph);
        if (e != cudaSuccess || cuda_matmul_generation() != gen) {   // nothing ran: the caller launches eagerly
            cudaGetLastError();
            if (d->graph[i].exec) cudaGraphExecDestroy(d->graph[i].exec);
            d->graph[i].exec = NULL;
            if (e != cudaSuccess) {
                fprintf(stderr, "CUDA decoder: graph capture failed (%s); decoding without graphs\n",
                        cudaGetErrorString(e));
                d->graphs = 0;
            }
            return 0;
        }
    }
    CUDA_CHECK(cudaGraphLaunch(d->graph[i].exec, d->st));
    return 1;
}

static int dec_run(cuda_decoder *d, int n, const int32_t *seq, const int32_t *tok, const int32_t *pos, int n_out,
                   const int32_t *out_rows, float *logits, int32_t *next) {
    const int V = d->c.vocab_size;
    if (n < 1 || n > d->R || n_out < 0 || n_out > n)
        return halo_fail("CUDA decoder: %d rows (1..%d) with %d outputs", n, d->R, n_out);
    for (int i = 0; i < n; i++) {
        if (seq[i] < 0 || seq[i] >= d->S) return halo_fail("CUDA decoder: row %d: sequence %d of %d", i, seq[i], d->S);
        if (tok[i] < 0 || tok[i] >= V)
            return halo_fail("CUDA decoder: row %d: token %d is outside the vocabulary (size %d)", i, tok[i], V);
        if (pos[i] < 0 || pos[i] >= d->L)
            return halo_fail("CUDA decoder: row %d: position %d beyond the cache length %d", i, pos[i], d->L);
    }
    for (int i = 0; i < n_out; i++)
        if (out_rows[i] < 0 || out_rows[i] >= n) return halo_fail("CUDA decoder: output row %d of %d", out_rows[i], n);
    cudaStream_t s = d->st;
    int R = d->R;
    memcpy(d->stage, seq, n * 4);
    memcpy(d->stage + R, tok, n * 4);
    memcpy(d->stage + 2 * R, pos, n * 4);
    if (n_out) memcpy(d->stage + 3 * R, out_rows, n_out * 4);
    CUDA_CHECK(cudaMemcpyAsync(d->idx, d->stage, (size_t)R * 4 * 4, cudaMemcpyHostToDevice, s));
    const int greedy = next != NULL;
    if (!dec_graph_run(d, n, n_out, greedy)) {
        dec_layers(d, n);
        // the lm_head in chunks of S rows, each chunk's logits copied out before the next overwrites them
        for (int c0 = 0; c0 < n_out; c0 += d->S) {
            int nc = n_out - c0 < d->S ? n_out - c0 : d->S;
            dec_head(d, n_out, c0, nc, greedy);
            if (logits)
                CUDA_CHECK(cudaMemcpyAsync(logits + (size_t)c0 * V, d->logits, (size_t)nc * V * 4,
                                           cudaMemcpyDeviceToHost, s));
        }
    } else if (logits && n_out) {   // a graph ran the one chunk
        CUDA_CHECK(cudaMemcpyAsync(logits, d->logits, (size_t)n_out * V * 4, cudaMemcpyDeviceToHost, s));
    }
    if (next && n_out) {
        CUDA_CHECK(cudaMemcpyAsync(d->stage, d->amax, (size_t)n_out * 4, cudaMemcpyDeviceToHost, s));
        CUDA_CHECK(cudaStreamSynchronize(s));
        memcpy(next, d->stage, (size_t)n_out * 4);
    }
    CUDA_CHECK(cudaStreamSynchronize(s));   // the staging buffer and the logits are free / ready
    return HALO_OK;
}

extern "C" int cuda_decoder_forward(cuda_decoder *d, int n, const int32_t *seq, const int32_t *tok,
                                    const int32_t *pos, int n_out, const int32_t *out_rows, float *logits) {
    return dec_run(d, n, seq, tok, pos, n_out, out_rows, logits, NULL);
}

extern "C" int cuda_decoder_forward_greedy(cuda_decoder *d, int n, const int32_t *seq, const int32_t *tok,
                                           const int32_t *pos, int n_out, const int32_t *out_rows, int32_t *next) {
    return dec_run(d, n, seq, tok, pos, n_out, out_rows, NULL, next);
}

// ---- generation ----
extern "C" int cuda_generate(cuda_decoder *d, int ns, const int32_t *const *prompts, const int *n_prompt,
                             const gen_options *o, int32_t *const *out, int *n_out) {
    const int V = d->c.vocab_size, R = d->R;
    if (ns < 1 || ns > d->S) return halo_fail("generate (GPU): %d prompts, the decoder holds 1..%d", ns, d->S);
    for (int s = 0; s < ns; s++) {
        n_out[s] = 0;
        int np = n_prompt[s], total = np + o->max_new_tokens;
        if (np < 1) return halo_fail("generate: the prompt needs at least one token");
        if (total > d->c.max_pos)
            return halo_fail("generate: prompt (%d) + new tokens (%d) exceed the model's max_position_embeddings %d",
                             np, o->max_new_tokens, d->c.max_pos);
        if (llama_config_check_len(&d->c, total, "generate: prompt + new tokens")) return HALO_ERR;
        if (total > d->L)
            return halo_fail("generate (GPU): prompt (%d) + new tokens (%d) exceed the decoder's cache length %d", np,
                             o->max_new_tokens, d->L);
        for (int i = 0; i < np; i++)
            if (prompts[s][i] < 0 || prompts[s][i] >= V)
                return halo_fail("generate: prompt token %d = %d is outside the vocabulary (size %d)", i,
                                 prompts[s][i], V);
    }
    int32_t *rseq = (int32_t *)xmalloc(sizeof(int32_t) * 4 * (size_t)R), *rtok = rseq + R, *rpos = rtok + R,
            *rout = rpos + R;
    int32_t *work = (int32_t *)xmalloc(sizeof(int32_t) * (size_t)V);
    int *row_of = (int *)xmalloc(sizeof(int) * 3 * (size_t)ns), *next_pos = row_of + ns, *fin = next_pos + ns;
    // greedy: the argmax is taken on the device and only token ids come back; sampling: logits to the host
    const int greedy = o->temperature <= 0;
    float *first = greedy ? NULL : (float *)xmalloc(sizeof(float) * (size_t)ns * V);   // logits after each prompt
    int32_t *first_tok = (int32_t *)xmalloc(sizeof(int32_t) * 2 * (size_t)ns), *next = first_tok + ns;
    halo_rng *rng = (halo_rng *)xmalloc(sizeof(halo_rng) * (size_t)ns);
    int rc = HALO_OK;
    // prefill: prompts packed into calls of up to R rows; a prompt's last row gives its first logits
    for (int s = 0, i = 0; s < ns && rc == HALO_OK;) {
        int n = 0, no = 0;
        while (s < ns && n < R) {
            int t = n_prompt[s] - i < R - n ? n_prompt[s] - i : R - n;
            for (int k = 0; k < t; k++, n++) { rseq[n] = s; rtok[n] = prompts[s][i + k]; rpos[n] = i + k; }
            i += t;
            if (i == n_prompt[s]) { fin[no] = s; rout[no++] = n - 1; s++; i = 0; }
        }
        rc = dec_run(d, n, rseq, rtok, rpos, no, rout, greedy ? NULL : d->hlogits, greedy ? next : NULL);
        for (int k = 0; k < no && rc == HALO_OK; k++) {
            if (greedy) first_tok[fin[k]] = next[k];
            else memcpy(first + (size_t)fin[k] * V, d->hlogits + (size_t)k * V, sizeof(float) * V);
        }
    }
    for (int s = 0; s < ns; s++) {
        halo_rng_seed(&rng[s], o->seed);
        row_of[s] = -1;
        next_pos[s] = n_prompt[s];
    }
    // decode: one row per live sequence and step, as gen_generate does for one
    for (int k = 0; k < o->max_new_tokens && rc == HALO_OK; k++) {
        int n = 0;
        for (int s = 0; s < ns; s++) {
            if (k > 0 && row_of[s] < 0) continue;   // finished
            int32_t tok;
            if (greedy) tok = k == 0 ? first_tok[s] : next[row_of[s]];
            else tok = gen_pick_token(k == 0 ? first + (size_t)s * V : d->hlogits + (size_t)row_of[s] * V, V, o,
                                      &rng[s], work);
            out[s][n_out[s]++] = tok;
            if (ns == 1 && o->on_token) o->on_token(o->on_token_ctx, tok);
            row_of[s] = -1;
            if (gen_is_end(o, tok)) continue;
            if (k + 1 < o->max_new_tokens) {
                rseq[n] = s; rtok[n] = tok; rpos[n] = next_pos[s]++; rout[n] = n;
                row_of[s] = n++;
            }
        }
        if (!n) break;
        rc = dec_run(d, n, rseq, rtok, rpos, n, rout, greedy ? NULL : d->hlogits, greedy ? next : NULL);
    }
    free(rseq); free(work); free(row_of); free(first); free(first_tok); free(rng);
    return rc;
}
