// The Llama model on one GPU: BF16 working weights, fp32 master weights, fp32 gradients (or BF16 ones for the
// matrices: opts.bf16_grads), fp32 or BF16 AdamW moments.
// Every buffer is allocated once at init and reused across layers and steps; a training step runs forward, the
// chunked lm_head + cross-entropy, backward and AdamW on one stream, and the host waits only to read the loss.
// Device layout per layer: [wq; wk; wv] fused into one [(Hq + 2 Hkv) hd, D] matrix and [w_gate; w_up] into [2F, D],
// so each of those is one product; the host model's HF tensors map onto these ranges for upload and copy-back.
// With HALO configured (opts.halo, INT8/FP8), each selected block linear runs through its own halo_cuda_linear
// instead: q, k, v (gate, up) as separate HALO products on the rows of the fused weight, writing their columns of the
// fused activation, as the CPU model quantizes each of them with its own scales.
// With LoRA adapters on the host model (llama_get_lora), only the adapters train: per adapted linear A and B in fp32
// (values, gradients, AdamW moments) with a bf16 copy for the products, added to the frozen base products (BF16 or
// HALO, forward and input gradient only); the base keeps its bf16 weights alone (no master, gradient or moment).
// The adapters that read one input run together through lora.cu's grouped kernels (lora_forward_u, ...).
// Data parallel with sharded moments (opts.shard_comm, ZeRO-1): rank r holds the moments of piece r of the flat
// parameter buffer only, updates that piece and all-gathers the fp32 master (see shard_setup).
#include <math.h>
#include <string.h>
#include "cuda/common.cuh"
#include "cuda/halo_cuda.h"
extern "C" {
#include "dist/comm.h"
#include "halo/hadamard.h"
#include "model/lora.h"
#include "ops/ops.h"
#include "util/error.h"
#include "util/ranges.h"
}

// A parameter range on the device and where it lives in the host model's flat buffer (host_off < 0: none).
typedef struct {
    size_t off, n;
    long host_off;
    int decay;
} dev_slot;

typedef struct {
    size_t attn_norm, wqkv, wo, ffn_norm, wgu, wdown;   // element offsets into the parameter buffers
    size_t bqkv, q_norm, k_norm;   // Qwen2's q, k, v biases, Qwen3's q / k norms (config bias_kinds, qk_norm)
} layer_offs;

// Activations of one layer's forward kept for its backward (one set per layer, or one shared set when recomputing).
typedef struct {
    bf16 *n1;      // [N, D] input_layernorm output
    float *r1;     // [N]
    bf16 *qkv;     // [N, (Hq + 2 Hkv) hd] after RoPE
    bf16 *att;     // [N, Hq hd] attention output
    float *lse;    // [B, Hq, T]
    float *h;      // [N, D] residual after attention
    bf16 *n2;      // [N, D] post_attention_layernorm output
    float *r2;     // [N]
    bf16 *gu;      // [N, 2F] [gate | up]
    bf16 *qk_raw;  // q/k norms: q and k before their per-head norm [N, (Hq + Hkv) hd]
    float *qk_rstd;   // and the heads' scales [N, Hq + Hkv]
} layer_acts;

enum { MEM_WEIGHTS, MEM_MASTER, MEM_GRADS, MEM_MOMENTS, MEM_ACTS, MEM_WORK, MEM_HALO, MEM_NCAT };
static const char *const MEM_NAMES[MEM_NCAT] = {"weights (bf16)", "master weights (fp32)", "gradients",
                                                "AdamW moments", "activations", "workspace",
                                                "HALO saved 8-bit codes"};

// Per-category device time of a step (llama_cuda_profile): events around each operation, summed after the step.
enum { PR_EMBED, PR_NORM_F, PR_NORM_R, PR_NORM_B, PR_ROPE, PR_ATT_F, PR_ATT_B, PR_SWIGLU_F, PR_SWIGLU_B, PR_MM_F, PR_MM_DX,
       PR_MM_DW, PR_HALO_B, PR_LM_F, PR_LM_B, PR_XENT, PR_ADAMW, PR_NORMSQ, PR_LORA, PR_MISC, PR_N };
static const char *const PR_NAMES[PR_N] = {
    "embedding fwd+bwd", "rmsnorm fwd", "rmsnorm recompute", "rmsnorm bwd", "rope fwd+bwd", "attention fwd", "attention bwd",
    "swiglu fwd (+recompute)", "swiglu bwd", "layer products fwd", "layer products dX", "layer products dW",
    "HALO layer products bwd", "lm_head product fwd", "lm_head products bwd", "cross-entropy", "adamw", "grad norm",
    "LoRA adapters fwd+bwd", "memsets, uploads"};
enum { PR_MAXEV = 8192 };

// One adapted (layer, linear) under LoRA: A [r, in] and B [out, r] at 128-element aligned offsets of the adapter
// buffers, their offsets in the host's llama_trainable_params buffer, and U = s dropout(X) A^T of the last forward
// (bf16 [N, r]), which B's gradient reads.
typedef struct {
    int on, in, out;
    size_t a, b;        // device offsets
    size_t ha, hb;      // host offsets
    bf16 *u;
    uint8_t *bits;      // [N, in / 8] its dropout mask of the last forward as bits (cuda_lora_u), or NULL
} lora_lin;

struct llama_cuda {
    llama_config c;
    llama_cuda_opts o;
    int N_max, ce_chunk, QKV, Q;
    cudaStream_t st;
    size_t n_all, n_true;        // padded buffer length, real parameter count
    float *master;               // [n_mast]: n_all, or W pieces when sharded (zero past n_all)
    size_t n_mast;
    // moments of [mo_lo, mo_hi) only: all of [0, n_all), or this rank's piece (shard_setup); element `off` of that
    // range at m[off - mo_lo]
    halo_comm *sh;               // sharded: the communicator (opts.shard_comm), else NULL
    size_t mo_lo, mo_hi, mo_len; // mo_len: the moment buffers' length (n_all, or the piece length)
    void *sh_stage;              // sharded: device stage of SH_STAGE_BYTES for gathering moments to the host
    float *grad;                 // fp32 gradients of [gbase, n_all): element `off` at grad[off - gbase] (gradf)
    bf16 *grad16;                // bf16_grads: [gbase] gradients of the matrices (and an untied lm_head)
    size_t gbase;                // bf16_grads: the embedding's offset (matrices come first), else 0
    bf16 *nbuf;                  // recompute_norms: the one [N, D] buffer every layer's n1 and n2 point to
    bf16 *w;                     // [n_all]
    void *m, *v;                 // [mo_len] fp32 or bf16
    dev_slot *slots;
    int n_slots;
    layer_offs *L;               // [n_layers]
    size_t embed, lm_head, final_norm;
    float **x;                   // [n_layers + 1] residual stream entering each layer, fp32 [N, D]
    layer_acts *acts;            // [n_layers] or [1] with recompute
    bf16 *sbuf;                  // [N, F] swiglu output / its gradient
    bf16 *dgu;                   // [N, 2F]
    bf16 *dnorm;                 // [N, D] gradient of a norm output
    float *dnorm32;              // non-NULL: that gradient is here in fp32 instead (a HALO group's sum left unrounded,
                                 // group_backward_halo), for the norm backward that reads it next
    bf16 *datt;                  // [N, Hq hd]
    bf16 *dqkv;                  // [N, QKV]
    bf16 *nf;                    // [N, D] final norm output
    float *rf;                   // [N]
    float *dres;                 // [N, D] residual gradient
    bf16 *dres16;                // [N, D] its bf16 copy (product operand)
    void *attn_scratch;
    bf16 *logits;                // [ce_chunk, V] bf16 logits, turned into their gradient in place
    int32_t *ids, *tgt, *pos, *seg;   // [N]
    int32_t *stage;              // pinned host [4 N]
    cudaEvent_t staged;          // the last upload from `stage` has completed
    float *cos_t, *sin_t;        // [rope_len, hd/2]
    int rope_len;
    double *loss_sum, *sumsq;    // device scalars
    // llama_cuda_g_sumsq: the HALO weight gradients' squares summed by their products (device scalar), which slots the
    // last backward's products covered (gcov, host), and the uncovered ranges the norm reads (gss_rg, device:
    // offset, length pairs; gss_nr of them, gss_len elements, for the covered set gss_up)
    double *gss;
    unsigned char *gcov, *gss_up;
    int gcov_any, gss_nr;
    int ex_sw_took;   // this layer's down_proj product took gate's and up's E_Y amax (llama_cuda_ex_swiglu_amax)
    unsigned long long *gss_rg;
    size_t gss_len;
    int last_count, has_seg, B, T;
    int grads_fresh;             // zero_grads ran and no backward since: the matrices' gradients hold garbage and
                                 // their first product overwrites them (only embedding and norm ranges were zeroed)
    size_t bytes[MEM_NCAT];
    int oom;
    // HALO (opts.halo INT8/FP8): one layer per (block, linear kind) that runs through HALO, NULL `hon` when off
    halo_cuda_linear *hl;        // [n_layers * LIN_COUNT]
    unsigned char *hon;          // [n_layers * LIN_COUNT] 1 = this linear runs through HALO
    halo_cuda_ws hws;            // scratch shared by every HALO layer (all run one after another on st)
    float *hacc;                 // [N, D] fp32: summed input gradients of q, k, v (gate, up)
    int *hnf;                    // [n_layers * LIN_COUNT * 3] the HALO layers' non-finite flags (X, W, E_Y), device;
                                 // zero_grads clears X and E_Y, a write of the weights W (weights_changed)
    // W amax by the optimizer (cuda_adamw_segments): its device table (one segment per slot), built for decay_all =
    // aseg_key (decay_all | delayed << 1; -1: not yet), and which linears it gives their W amax (1) and codes (2)
    cuda_adamw_seg *aseg;
    int aseg_chunks, aseg_key;
    size_t wc_bytes;             // the layers' row-major W codes for that update (delayed scaling), in bytes[MEM_HALO]
    unsigned char *hwam;         // [n_layers * LIN_COUNT]
    unsigned char *hwv;          // [n_layers * LIN_COUNT] 1: the linear's W amax slot (and W flag) are those of the
                                 // weights as they are (its forward or the update took them), so a forward skips its
                                 // absmax pass of W (HALO_CUDA_W_AMAX): after AdamW's segments, and under LoRA (frozen
                                 // base) or gradient accumulation after the first forward; 2: the update also wrote
                                 // the layer's W codes (delayed scaling: HALO_CUDA_W_CODES)
    char hnf_msg[1024];          // llama_cuda_halo_error's message
    int tele;                    // HALO quantization telemetry on (llama_cuda_halo_telemetry)
    int delayed;                 // HALO delayed scaling (llama_cuda_halo_delayed): producers write HALO codes
    int down_ey;                 // the flags of the next down_proj backward's E_Y (norm_backward)
    int prof, nev, prof_steps;   // profiling: on/off, events in flight, steps summed
    cudaEvent_t *ev;             // [PR_MAXEV]
    int *ev_cat;                 // [PR_MAXEV / 2]
    double prof_ms[PR_N];
    // LoRA: master, grad, grad16, m, v stay NULL (the base is frozen); the adapters live in their own buffers
    int lora, lrank;
    float lscale, lkeep;         // alpha / r; 1 / (1 - dropout)
    uint32_t lthr;               // dropout: element kept when its 16-bit draw >= lthr (lora_dropout_threshold), as lora.c
    int ltrain;                  // dropout on (llama_cuda_lora_train), with masks from lkey
    uint64_t lkey;
    lora_lin *la;                // [n_layers * LIN_COUNT]
    size_t ln_all, ln_true;      // padded adapter buffer length, adapter parameter count
    float *lp, *lg, *lm, *lv;    // [ln_all] adapter values, gradients, AdamW moments (fp32)
    bf16 *lw;                    // [ln_all] bf16 copy of lp, refreshed by AdamW
    bf16 *lu;                    // U of every adapted linear
    bf16 *ldu;                   // [3][lus] dU of the adapters of the input being differentiated
    size_t lus;                  // U's and dU's slot length (N r, aligned)
    bf16 *lxd;                   // [N, max in] dropout(X), then the input gradient before its mask (dropout > 0 only)
    uint8_t *lbits;              // every adapter's dropout keep bits of the last forward (lora_lin.bits; dropout > 0)
    float *lws;                  // the grouped kernels' partial sums (cuda_lora_da, cuda_lora_b)
    float *ar_tmp;               // data parallel with bf16 gradients: fp32 chunk the sums go through (allocated at the
    size_t ar_cap;               // first llama_cuda_allreduce_grads), its length
};

// Start and end marks alternate; a start is recorded only when its end has room too.
static void prof_mark(llama_cuda *g, int cat) {
    if (!g->prof) return;
    if (!(g->nev & 1)) {
        if (g->nev + 2 > PR_MAXEV) return;
        g->ev_cat[g->nev / 2] = cat;
    }
    CUDA_CHECK(cudaEventRecord(g->ev[g->nev++], g->st));
}
// wraps one operation: PROF(g, PR_X, call(...));
#define PROF(g, cat, ...) do { prof_mark(g, cat); __VA_ARGS__; prof_mark(g, cat); } while (0)

static void prof_collect(llama_cuda *g) {
    if (!g->prof) return;
    for (int i = 0; i + 1 < g->nev; i += 2) {
        float ms;
        CUDA_CHECK(cudaEventElapsedTime(&ms, g->ev[i], g->ev[i + 1]));
        g->prof_ms[g->ev_cat[i / 2]] += ms;
    }
    g->nev = 0;
}

extern "C" void llama_cuda_profile(llama_cuda *g, int on) {
    if (on && !g->ev) {
        g->ev = (cudaEvent_t *)xcalloc(PR_MAXEV, sizeof(cudaEvent_t));
        g->ev_cat = (int *)xcalloc(PR_MAXEV / 2, sizeof(int));
        for (int i = 0; i < PR_MAXEV; i++) CUDA_CHECK(cudaEventCreate(&g->ev[i]));
    }
    g->prof = on;
    g->nev = 0;
    g->prof_steps = 0;
    memset(g->prof_ms, 0, sizeof g->prof_ms);
}

extern "C" void llama_cuda_profile_print(llama_cuda *g) {
    if (!g->prof_steps) return;
    double tot = 0;
    for (int i = 0; i < PR_N; i++) tot += g->prof_ms[i];
    printf("device time per step by operation (%d profiled steps, events around each launch):\n", g->prof_steps);
    for (int i = 0; i < PR_N; i++)
        printf("  %-26s %8.2f ms  %5.1f%%\n", PR_NAMES[i], g->prof_ms[i] / g->prof_steps, 100 * g->prof_ms[i] / tot);
    printf("  %-26s %8.2f ms\n", "sum", tot / g->prof_steps);
}

static void *dalloc(llama_cuda *g, int cat, size_t bytes) {
    if (g->oom) return NULL;
    void *p = NULL;
    if (bytes == 0) bytes = 16;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        cudaGetLastError();
        g->oom = 1;
        halo_fail("CUDA: out of device memory allocating %.1f MiB for %s (%.2f GiB allocated so far)",
                  bytes / 1048576.0, MEM_NAMES[cat], llama_cuda_bytes(g) / 1073741824.0);
        return NULL;
    }
    g->bytes[cat] += bytes;
    return p;
}

extern "C" size_t llama_cuda_bytes(const llama_cuda *g) {
    size_t s = 0;
    for (int i = 0; i < MEM_NCAT; i++) s += g->bytes[i];
    return s;
}
extern "C" size_t llama_cuda_param_count(const llama_cuda *g) { return g->n_true; }

// ---- parameter layout ----
// 128 elements: every tensor starts 256-byte aligned in bf16 and fp32, what cuBLASLt's heuristics assume
static size_t align_up(size_t x) { return (x + 127) & ~(size_t)127; }

static void add_slot(llama_cuda *g, size_t *cur, size_t n, long host_off, int decay, int pad) {
    dev_slot *s = &g->slots[g->n_slots++];
    s->off = *cur; s->n = n; s->host_off = host_off; s->decay = decay;
    *cur += n;
    if (pad) *cur = align_up(*cur);
    g->n_true += n;
}

// Host offsets come from the host model's views (NULL host: no mapping). Matrices first, then the embedding, then
// norms, so that AdamW runs over few contiguous ranges with one weight-decay setting each.
static void layout_build(llama_cuda *g, const llama_model *host) {
    const llama_config *c = &g->c;
    size_t D = c->dim, F = c->hidden_dim, qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    g->slots = (dev_slot *)xcalloc((size_t)c->n_layers * 14 + 4, sizeof(dev_slot));
    g->L = (layer_offs *)xcalloc((size_t)c->n_layers, sizeof(layer_offs));
    size_t cur = 0;
#define HOFF(ptr) (host ? (long)((ptr) - host->params) : -1L)
    for (int l = 0; l < c->n_layers; l++) {
        const llama_layer_weights *W = host ? &host->w.layers[l] : NULL;
        layer_offs *o = &g->L[l];
        o->wqkv = cur;
        add_slot(g, &cur, qd * D, W ? HOFF(W->wq) : -1, 1, 0);    // q, k, v rows adjacent: one fused matrix
        add_slot(g, &cur, kvd * D, W ? HOFF(W->wk) : -1, 1, 0);
        add_slot(g, &cur, kvd * D, W ? HOFF(W->wv) : -1, 1, 1);
        o->wo = cur;
        add_slot(g, &cur, D * qd, W ? HOFF(W->wo) : -1, 1, 1);
        o->wgu = cur;
        add_slot(g, &cur, F * D, W ? HOFF(W->w_gate) : -1, 1, 0);
        add_slot(g, &cur, F * D, W ? HOFF(W->w_up) : -1, 1, 1);
        o->wdown = cur;
        add_slot(g, &cur, D * F, W ? HOFF(W->w_down) : -1, 1, 1);
    }
    if (!c->tie_embeddings) {
        g->lm_head = cur;
        add_slot(g, &cur, (size_t)c->vocab_size * D, host ? HOFF(host->w.lm_head) : -1, 1, 1);
    }
    g->embed = cur;
    add_slot(g, &cur, (size_t)c->vocab_size * D, host ? HOFF(host->w.embed) : -1, 0, 1);
    if (c->tie_embeddings) g->lm_head = g->embed;
    for (int l = 0; l < c->n_layers; l++) {
        const llama_layer_weights *W = host ? &host->w.layers[l] : NULL;
        g->L[l].attn_norm = cur;
        add_slot(g, &cur, D, W ? HOFF(W->attn_norm) : -1, 0, 1);
        g->L[l].ffn_norm = cur;
        add_slot(g, &cur, D, W ? HOFF(W->ffn_norm) : -1, 0, 1);
    }
    g->final_norm = cur;
    add_slot(g, &cur, D, host ? HOFF(host->w.final_norm) : -1, 0, 1);
    // the variants' vectors after the norms (in the range zero_grads clears; no weight decay by default)
    for (int l = 0; l < c->n_layers; l++) {
        const llama_layer_weights *W = host ? &host->w.layers[l] : NULL;
        if (c->bias_kinds & BIAS_QKV) {   // q, k, v biases adjacent: one vector over the fused product's columns
            g->L[l].bqkv = cur;
            add_slot(g, &cur, qd, W ? HOFF(W->bias[LIN_Q]) : -1, 0, 0);
            add_slot(g, &cur, kvd, W ? HOFF(W->bias[LIN_K]) : -1, 0, 0);
            add_slot(g, &cur, kvd, W ? HOFF(W->bias[LIN_V]) : -1, 0, 1);
        }
        if (c->qk_norm) {
            g->L[l].q_norm = cur;
            add_slot(g, &cur, c->head_dim, W ? HOFF(W->q_norm) : -1, 0, 1);
            g->L[l].k_norm = cur;
            add_slot(g, &cur, c->head_dim, W ? HOFF(W->k_norm) : -1, 0, 1);
        }
    }
#undef HOFF
    g->n_all = cur;
    // the host table's no_decay flags win over the defaults above
    if (host)
        for (int i = 0; i < g->n_slots; i++)
            for (int j = 0; j < host->n_table; j++)
                if ((long)host->table[j].offset == g->slots[i].host_off) g->slots[i].decay = !host->table[j].no_decay;
}

// ---- sharded moments (ZeRO-1) ----
enum { SH_STAGE_BYTES = 32 << 20 };   // device stage of the moments' gather to the host (llama_cuda_copy_moments)

// The cut: the flat buffer (n_all elements, a multiple of 128: tensors, the padding between them, the last one padded)
// in W equal pieces of P = ceil(n_all / W) rounded up to 128 elements; rank r owns [r P, min((r + 1) P, n_all)). Every
// piece starts 256-byte aligned in bf16 (512 in fp32), as the tensors do. A cut may fall inside a tensor or a run of
// padding: AdamW is element-wise (the clipping scale comes from the whole gradient's norm), so a run of tensors is
// updated as the pieces of it each rank owns, each element with the same arithmetic as unsharded; padding holds zero
// gradient, moments and weight, which AdamW keeps at zero. The master is W P long (zero past n_all) so that the
// all-gather of equal pieces lands in place.
static int shard_setup(llama_cuda *g) {
    halo_comm *c = g->o.shard_comm;
    g->n_mast = g->n_all;
    g->mo_lo = 0; g->mo_hi = g->mo_len = g->n_all;
    if (!c || c->world <= 1) return HALO_OK;
    if (g->lora)
        return halo_fail("sharded AdamW moments on the GPU: with LoRA only the adapters have moments (small, and not "
                         "sharded on the GPU); drop --shard-optimizer");
    const size_t W = (size_t)c->world, P = align_up((g->n_all + W - 1) / W), r = (size_t)c->rank;
    g->sh = c;
    g->n_mast = P * W;
    g->mo_len = P;
    g->mo_lo = r * P < g->n_all ? r * P : g->n_all;
    g->mo_hi = (r + 1) * P < g->n_all ? (r + 1) * P : g->n_all;
    return HALO_OK;
}

extern "C" size_t llama_cuda_moment_bytes(const llama_cuda *g) { return g->bytes[MEM_MOMENTS]; }
extern "C" void llama_cuda_shard_range(const llama_cuda *g, size_t *lo, size_t *hi, size_t *n_all) {
    *lo = g->mo_lo; *hi = g->mo_hi; *n_all = g->n_all;
}

// ---- init ----
__global__ void k_init_random(float *p, size_t n, uint64_t seed, float stdv) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint64_t z = seed + i * 0x9E3779B97F4A7C15ULL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL; z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL; z ^= z >> 31;
        float u1 = ((z >> 40) + 1) * (1.f / 16777217.f), u2 = (z & 0xffffff) * (1.f / 16777216.f);
        p[i] = stdv * sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
    }
}
__global__ void k_fill(float *p, size_t n, float v) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) p[i] = v;
}

// Whether HALO computes layer l's linear `kind` (known before halo_setup: the same selection).
static int halo_selects(const llama_cuda *g, int l, int kind) {
    const model_halo_config *hc = &g->o.halo;
    return (hc->prec == HALO_PREC_INT8 || hc->prec == HALO_PREC_FP8) && model_halo_selects(hc, l, kind, g->c.n_layers);
}
// Layer l's n1 (kind LIN_Q) / n2 (LIN_GATE) live in the one shared buffer nbuf instead of a copy per layer: with
// --recompute-norms, or when HALO computes the products that read it (their backward reads the saved 8-bit codes,
// so nothing needs the bf16 values). Layer recomputation recomputes them anyway.
static int norm_shared(const llama_cuda *g, int l, int kind) {
    return g->o.recompute != 1 && (g->o.recompute_norms || halo_selects(g, l, kind));
}
// ... and backward recomputes it from x/h and the stored rstd where something reads it: a BF16 weight gradient,
// HALO telemetry's G reference, the MLP recomputation (n2).
// LoRA: whether an adapter sits on layer l's linear `kind`, and on a linear reading norm `kind`'s output (q, k, v for
// LIN_Q; gate, up for LIN_GATE).
static int lora_on(const llama_cuda *g, int l, int kind) { return g->la && g->la[l * LIN_COUNT + kind].on; }
static int lora_reads_norm(const llama_cuda *g, int l, int kind) {
    return kind == LIN_Q ? lora_on(g, l, LIN_Q) || lora_on(g, l, LIN_K) || lora_on(g, l, LIN_V)
                         : lora_on(g, l, LIN_GATE) || lora_on(g, l, LIN_UP);
}
static int norm_recompute(const llama_cuda *g, int l, int kind) {
    return norm_shared(g, l, kind) &&
           ((!halo_selects(g, l, kind) && !g->lora) || g->tele || (kind == LIN_GATE && g->o.recompute == 2) ||
            lora_reads_norm(g, l, kind));
}
static int any_norm_shared(const llama_cuda *g) {
    for (int l = 0; l < g->c.n_layers; l++)
        if (norm_shared(g, l, LIN_Q) || norm_shared(g, l, LIN_GATE)) return 1;
    return 0;
}

// dgu's size: [N_max][2F] bf16 (delayed scaling puts 8-bit codes there too: mlp_backward_codes, qkv_backward_codes)
static size_t dgu_bytes(const llama_cuda *g) { return (size_t)g->N_max * 2 * g->c.hidden_dim * 2; }

static int alloc_all(llama_cuda *g) {
    const llama_config *c = &g->c;
    size_t N = (size_t)g->N_max, D = c->dim, F = c->hidden_dim, V = c->vocab_size;
    size_t P = g->n_all, msz = g->o.bf16_moments ? 2 : 4;
    g->w = (bf16 *)dalloc(g, MEM_WEIGHTS, P * 2);
    if (!g->lora) {   // LoRA: the base is frozen, its bf16 copy is all it needs
        g->master = (float *)dalloc(g, MEM_MASTER, g->n_mast * 4);
        g->grad = (float *)dalloc(g, MEM_GRADS, (P - g->gbase) * 4);
        if (g->gbase) g->grad16 = (bf16 *)dalloc(g, MEM_GRADS, g->gbase * 2);
        g->m = dalloc(g, MEM_MOMENTS, g->mo_len * msz);
        g->v = dalloc(g, MEM_MOMENTS, g->mo_len * msz);
        if (g->sh) g->sh_stage = dalloc(g, MEM_WORK, SH_STAGE_BYTES);
    }
    int nl = c->n_layers, nsets = g->o.recompute == 1 ? 1 : nl;
    g->x = (float **)xcalloc((size_t)nl + 1, sizeof(float *));
    for (int l = 0; l <= nl; l++) g->x[l] = (float *)dalloc(g, MEM_ACTS, N * D * 4);
    g->acts = (layer_acts *)xcalloc((size_t)nsets, sizeof(layer_acts));
    if (any_norm_shared(g)) g->nbuf = (bf16 *)dalloc(g, MEM_ACTS, N * D * 2);
    for (int i = 0; i < nsets; i++) {
        layer_acts *A = &g->acts[i];
        A->n1 = norm_shared(g, i, LIN_Q) ? g->nbuf : (bf16 *)dalloc(g, MEM_ACTS, N * D * 2);
        A->r1 = (float *)dalloc(g, MEM_ACTS, N * 4);
        A->qkv = (bf16 *)dalloc(g, MEM_ACTS, N * g->QKV * 2);
        A->att = (bf16 *)dalloc(g, MEM_ACTS, N * g->Q * 2);
        A->lse = (float *)dalloc(g, MEM_ACTS, N * c->n_heads * 4);
        A->h = (float *)dalloc(g, MEM_ACTS, N * D * 4);
        A->n2 = norm_shared(g, i, LIN_GATE) ? g->nbuf : (bf16 *)dalloc(g, MEM_ACTS, N * D * 2);
        A->r2 = (float *)dalloc(g, MEM_ACTS, N * 4);
        // recompute 2: one [gate | up] buffer shared by all layers
        A->gu = g->o.recompute == 2 && i > 0 ? g->acts[0].gu : (bf16 *)dalloc(g, MEM_ACTS, N * 2 * F * 2);
        if (c->qk_norm) {
            const size_t heads = (size_t)c->n_heads + c->n_kv_heads;
            A->qk_raw = (bf16 *)dalloc(g, MEM_ACTS, N * heads * c->head_dim * 2);
            A->qk_rstd = (float *)dalloc(g, MEM_ACTS, N * heads * 4);
        }
    }
    g->nf = (bf16 *)dalloc(g, MEM_ACTS, N * D * 2);
    g->rf = (float *)dalloc(g, MEM_ACTS, N * 4);
    g->sbuf = (bf16 *)dalloc(g, MEM_WORK, N * F * 2);
    g->dgu = (bf16 *)dalloc(g, MEM_WORK, dgu_bytes(g));
    g->dnorm = (bf16 *)dalloc(g, MEM_WORK, N * D * 2);
    g->datt = (bf16 *)dalloc(g, MEM_WORK, N * g->Q * 2);
    g->dqkv = (bf16 *)dalloc(g, MEM_WORK, N * g->QKV * 2);
    g->dres = (float *)dalloc(g, MEM_WORK, N * D * 4);
    g->dres16 = (bf16 *)dalloc(g, MEM_WORK, N * D * 2);
    g->attn_scratch = dalloc(g, MEM_WORK, cuda_attention_scratch_bytes(g->o.max_B, g->o.max_T, c->n_heads,
                                                                       c->n_kv_heads, c->head_dim));
    g->logits = (bf16 *)dalloc(g, MEM_WORK, (size_t)g->ce_chunk * V * 2);
    g->ids = (int32_t *)dalloc(g, MEM_WORK, N * 4 * 4);
    if (g->ids) { g->tgt = g->ids + N; g->pos = g->tgt + N; g->seg = g->pos + N; }
    g->rope_len = c->max_pos > g->o.max_T ? c->max_pos : g->o.max_T;
    g->cos_t = (float *)dalloc(g, MEM_WORK, (size_t)g->rope_len * (c->head_dim / 2) * 4 * 2);
    if (g->cos_t) g->sin_t = g->cos_t + (size_t)g->rope_len * (c->head_dim / 2);
    g->loss_sum = (double *)dalloc(g, MEM_WORK, 3 * sizeof(double));
    if (g->loss_sum) { g->sumsq = g->loss_sum + 1; g->gss = g->loss_sum + 2; }
    g->bytes[MEM_WORK] += 64u << 20;   // cuBLASLt workspace (matmul.cu)
    if (g->oom) return HALO_ERR;
    if (cudaMallocHost((void **)&g->stage, N * 4 * 4) != cudaSuccess) return halo_fail("CUDA: pinned host buffer");
    CUDA_CHECK(cudaEventCreateWithFlags(&g->staged, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventRecord(g->staged, g->st));
    if (!g->lora) {
        CUDA_CHECK(cudaMemsetAsync(g->master, 0, g->n_mast * 4, g->st));
        CUDA_CHECK(cudaMemsetAsync(g->grad, 0, (P - g->gbase) * 4, g->st));
        if (g->grad16) CUDA_CHECK(cudaMemsetAsync(g->grad16, 0, g->gbase * 2, g->st));
        CUDA_CHECK(cudaMemsetAsync(g->m, 0, g->mo_len * msz, g->st));
        CUDA_CHECK(cudaMemsetAsync(g->v, 0, g->mo_len * msz, g->st));
    } else CUDA_CHECK(cudaMemsetAsync(g->w, 0, P * 2, g->st));   // the padding between slots (never uploaded)
    // RoPE tables from the CPU implementation, so both backends rotate by the same angles
    size_t half = c->head_dim / 2, tn = (size_t)g->rope_len * half;
    float *ct = (float *)xmalloc(tn * 4 * 2);
    rope_tables(ct, ct + tn, g->rope_len, c->head_dim, c->rope_theta, (int)c->rope_scaling,
                c->rope_factor, c->rope_low_freq_factor, c->rope_high_freq_factor, c->rope_original_max_pos);
    CUDA_CHECK(cudaMemcpy(g->cos_t, ct, tn * 4 * 2, cudaMemcpyHostToDevice));
    free(ct);
    return HALO_OK;
}

static void print_memory(const llama_cuda *g) {
    printf("halo cuda: %zu parameters; device memory by category:\n", g->n_true);
    for (int i = 0; i < MEM_NCAT; i++) printf("  %-24s %9.3f GiB\n", MEM_NAMES[i], g->bytes[i] / 1073741824.0);
    printf("  %-24s %9.3f GiB  (batch %d x %d, %s%s, moments %s, gradients %s, lm_head chunk %d tokens)\n", "total",
           llama_cuda_bytes(g) / 1073741824.0, g->o.max_B, g->o.max_T,
           g->o.recompute == 1 ? "recompute layers" : g->o.recompute == 2 ? "recompute MLP gate/up" : "stored acts",
           g->o.recompute_norms && g->o.recompute != 1 ? " + norms" : g->nbuf ? ", HALO's normed inputs not kept" : "",
           g->o.bf16_moments ? "bf16" : "fp32",
           g->gbase ? "bf16 matrices, fp32 embedding and norms" : "fp32", g->ce_chunk);
    if (g->hon) {
        char d[256];
        model_halo_describe(&g->o.halo, g->c.n_layers, d, sizeof d);
        printf("  block linears: %s on the GPU (scratch shared by all layers, grown in the first step)\n", d);
    }
    if (g->sh)
        printf("  AdamW moments sharded (ZeRO-1): rank %d of %d holds elements [%zu, %zu) of %zu (the fp32 master is "
               "all-gathered after each update)\n", g->sh->rank, g->sh->world, g->mo_lo, g->mo_hi, g->n_all);
    if (g->lora)
        printf("  LoRA: %zu adapter parameters train (fp32 values, gradients and moments above, a bf16 copy); the "
               "%zu base parameters are frozen: bf16 weights only, no fp32 master, gradients or moments\n", g->ln_true,
               g->n_true);
}

// ---- HALO ----
static long pad16l(long x) { return (x + 15) / 16 * 16; }

// in_features (m), out_features (n) of block linear `kind`
static void lin_shape(const llama_cuda *g, int kind, int *m, int *n) {
    const llama_config *c = &g->c;
    int D = c->dim, F = c->hidden_dim, Q = g->Q, KV = c->n_kv_heads * c->head_dim;
    *m = model_linear_in_features(c, kind);
    *n = kind == LIN_Q ? Q : kind <= LIN_V ? KV : kind == LIN_O || kind == LIN_DOWN ? D : F;
}

// ---- LoRA ----
// The adapters' layout from the host model's (lora.c: A then B of each adapted linear, layer by layer, in
// llama_trainable_params' buffer), each tensor at a 128-element aligned device offset. No adapters: nothing.
static int lora_setup(llama_cuda *g, const llama_model *host) {
    const lora_config *lc = host ? llama_get_lora(host) : NULL;
    if (!lc) return HALO_OK;
    if (g->o.bf16_grads)
        return halo_fail("--bf16-grads: with LoRA only the adapters have gradients, kept in fp32 (the frozen base has "
                         "none); drop the flag");
    if (g->o.bf16_moments)
        return halo_fail("--bf16-moments: with LoRA only the adapters have AdamW moments, kept in fp32 (the frozen "
                         "base has none); drop the flag");
    llama_trainable tp = llama_trainable_params((llama_model *)host);
    g->lora = 1;
    g->lrank = lc->rank;
    g->lscale = (float)(lc->alpha / lc->rank);   // as lora.c's scale
    g->lkeep = (float)(1.0 / (1.0 - lc->dropout));
    g->lthr = lora_dropout_threshold(lc->dropout);
    const int nl = g->c.n_layers, r = lc->rank;
    g->la = (lora_lin *)xcalloc((size_t)nl * LIN_COUNT, sizeof(lora_lin));
    size_t cur = 0;
    int t = 0;
    for (int l = 0; l < nl; l++)
        for (int k = 0; k < LIN_COUNT; k++) {
            if (!(lc->kinds & (1u << k))) continue;
            if (t + 1 >= tp.n_table) return halo_fail("CUDA LoRA: the host model's adapter table is shorter than its "
                                                      "configuration");
            const llama_param *pa = &tp.table[t], *pb = &tp.table[t + 1];
            t += 2;
            int m, n;
            lin_shape(g, k, &m, &n);
            if (pa->shape[0] != r || pa->shape[1] != m || pb->shape[0] != n || pb->shape[1] != r)
                return halo_fail("CUDA LoRA: adapter tensor %s is [%lld, %lld], expected A [%d, %d] and B [%d, %d]",
                                 pa->name, (long long)pa->shape[0], (long long)pa->shape[1], r, m, n, r);
            lora_lin *a = &g->la[l * LIN_COUNT + k];
            a->on = 1; a->in = m; a->out = n;
            a->ha = pa->offset; a->hb = pb->offset;
            a->a = cur; cur = align_up(cur + pa->numel);
            a->b = cur; cur = align_up(cur + pb->numel);
            g->ln_true += pa->numel + pb->numel;
        }
    if (t != tp.n_table || g->ln_true != tp.n)
        return halo_fail("CUDA LoRA: the host model's adapter table (%d tensors, %zu values) does not match its "
                         "configuration", tp.n_table, tp.n);
    g->ln_all = cur;
    return HALO_OK;
}

static int lora_alloc(llama_cuda *g) {
    if (!g->lora) return HALO_OK;
    const size_t P = g->ln_all, N = g->N_max, us = align_up(N * g->lrank);
    g->lp = (float *)dalloc(g, MEM_MASTER, P * 4);
    g->lg = (float *)dalloc(g, MEM_GRADS, P * 4);
    g->lm = (float *)dalloc(g, MEM_MOMENTS, P * 4);
    g->lv = (float *)dalloc(g, MEM_MOMENTS, P * 4);
    g->lw = (bf16 *)dalloc(g, MEM_WEIGHTS, P * 2);
    int n_ad = 0, max_in = 0;
    for (int i = 0; i < g->c.n_layers * LIN_COUNT; i++)
        if (g->la[i].on) { n_ad++; max_in = g->la[i].in > max_in ? g->la[i].in : max_in; }
    g->lu = (bf16 *)dalloc(g, MEM_ACTS, (size_t)n_ad * us * 2);
    g->lus = us;
    g->ldu = (bf16 *)dalloc(g, MEM_WORK, 3 * us * 2);
    if (g->lkeep != 1.f) g->lxd = (bf16 *)dalloc(g, MEM_WORK, N * max_in * 2);
    // the grouped kernels' dropout bits (one byte per 8 inputs of each adapter, kept from forward to backward) and
    // partial sums (A gradients; B gradients and dU) for the largest group
    size_t nbits = 0, ws = 0;
    for (int i = 0; i < g->c.n_layers * LIN_COUNT; i++)
        if (g->la[i].on && cuda_lora_group_ok(g->lrank, g->la[i].in, 1)) nbits += align_up(N * g->la[i].in / 8);
    const int k0s[4] = {LIN_Q, LIN_O, LIN_GATE, LIN_DOWN}, nks[4] = {3, 1, 2, 1};
    for (int k = 0; k < 4; k++) {
        int m, n;
        lin_shape(g, k0s[k], &m, &n);
        if (!cuda_lora_group_ok(g->lrank, m, nks[k])) continue;
        size_t w = cuda_lora_da_ws_floats((int)N, m, g->lrank, nks[k]);
        ws = w > ws ? w : ws;
        // ... and the B side's (cuda_lora_b) for the whole group and for each of its adapters alone
        int outs[3];
        for (int j = 0; j < nks[k]; j++) lin_shape(g, k0s[k] + j, &m, &outs[j]);
        for (int j = -1; j < nks[k]; j++) {
            w = j < 0 ? cuda_lora_b_ws_floats((int)N, outs, nks[k], g->lrank)
                      : cuda_lora_b_ws_floats((int)N, outs + j, 1, g->lrank);
            ws = w > ws ? w : ws;
        }
    }
    if (g->lkeep != 1.f && nbits) g->lbits = (uint8_t *)dalloc(g, MEM_ACTS, nbits);
    if (ws) g->lws = (float *)dalloc(g, MEM_WORK, ws * 4);
    if (g->oom) return HALO_ERR;
    for (int i = 0, j = 0; i < g->c.n_layers * LIN_COUNT; i++)
        if (g->la[i].on) g->la[i].u = g->lu + (size_t)j++ * us;
    for (size_t i = 0, off = 0; g->lbits && i < (size_t)g->c.n_layers * LIN_COUNT; i++)
        if (g->la[i].on && cuda_lora_group_ok(g->lrank, g->la[i].in, 1)) {
            g->la[i].bits = g->lbits + off;
            off += align_up(N * g->la[i].in / 8);
        }
    CUDA_CHECK(cudaMemsetAsync(g->lp, 0, P * 4, g->st));   // the padding stays zero (AdamW keeps it there)
    CUDA_CHECK(cudaMemsetAsync(g->lg, 0, P * 4, g->st));
    CUDA_CHECK(cudaMemsetAsync(g->lm, 0, P * 4, g->st));
    CUDA_CHECK(cudaMemsetAsync(g->lv, 0, P * 4, g->st));
    return HALO_OK;
}

// Whether the host model's adapters are the ones this device model was made for.
static int lora_check_host(const llama_cuda *g, const llama_model *host, const char *what) {
    if (!llama_get_lora(host)) return halo_fail("CUDA %s: the device model trains LoRA adapters, the host model has none", what);
    if (llama_trainable_params((llama_model *)host).n != g->ln_true)
        return halo_fail("CUDA %s: host adapters have %zu values, device %zu", what,
                         llama_trainable_params((llama_model *)host).n, g->ln_true);
    return HALO_OK;
}

// Host adapter buffer (llama_trainable_params layout) <-> device one; the stream is idle for downloads.
static void lora_down(const llama_cuda *g, float *dst, const float *src) {
    for (int i = 0; i < g->c.n_layers * LIN_COUNT; i++) {
        const lora_lin *a = &g->la[i];
        if (!a->on) continue;
        CUDA_CHECK(cudaMemcpy(dst + a->ha, src + a->a, (size_t)g->lrank * a->in * 4, cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(dst + a->hb, src + a->b, (size_t)a->out * g->lrank * 4, cudaMemcpyDeviceToHost));
    }
}
static void lora_up(llama_cuda *g, float *dst, const float *src) {   // src NULL: zeros
    if (!src) { CUDA_CHECK(cudaMemsetAsync(dst, 0, g->ln_all * 4, g->st)); return; }
    for (int i = 0; i < g->c.n_layers * LIN_COUNT; i++) {
        const lora_lin *a = &g->la[i];
        if (!a->on) continue;
        CUDA_CHECK(cudaMemcpyAsync(dst + a->a, src + a->ha, (size_t)g->lrank * a->in * 4, cudaMemcpyHostToDevice, g->st));
        CUDA_CHECK(cudaMemcpyAsync(dst + a->b, src + a->hb, (size_t)a->out * g->lrank * 4, cudaMemcpyHostToDevice,
                                   g->st));
    }
}

// Checks the host's adapters (lora_check_host), waits for the stream, and downloads the device buffer s0 into the
// host buffer d0 (llama_trainable_params' layout), and s1 into d1 when d1 is given.
static int lora_copy_back(const llama_cuda *g, const llama_model *host, const char *what, float *d0, const float *s0,
                          float *d1, const float *s1) {
    if (lora_check_host(g, host, what) != HALO_OK) return HALO_ERR;
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    lora_down(g, d0, s0);
    if (d1) lora_down(g, d1, s1);
    return HALO_OK;
}

// The adapters' values from the host (the bf16 copy follows); synchronizes (the host buffer may go after).
static void lora_upload(llama_cuda *g, const llama_model *host) {
    lora_up(g, g->lp, llama_trainable_params((llama_model *)host).params);
    cuda_f32_to_bf16((halo_bf16 *)g->lw, g->lp, g->ln_all, g->st);
    CUDA_CHECK(cudaStreamSynchronize(g->st));
}

extern "C" void llama_cuda_lora_train(llama_cuda *g, int on, uint64_t key) {
    g->ltrain = on;
    g->lkey = key;
}
extern "C" int llama_cuda_has_lora(const llama_cuda *g) { return g->lora; }

static int aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

// HALO_LORA_FUSED=0 (or llama_cuda_lora_fused(0)): every adapter alone through cuBLASLt products, under dropout with
// the mask as passes over a masked copy of X (lxd). By default the adapters that read one input (q, k, v; gate, up;
// o; down) run together through lora.cu's grouped kernels (one pass over X or dX for all of them, the mask inside,
// hashed once in the forward and kept as bits) wherever those apply: rank 8, 16 or 32, inputs a multiple of 32 wide.
static int g_lora_fused = -1;   // llama_cuda_lora_fused; -1: from the environment at the first use
static int lora_fused_on(void) { return env_switch(&g_lora_fused, "HALO_LORA_FUSED"); }
// HALO_LORA_B_FUSED=0: on the grouped path, dB and dU through two cuBLASLt products an adapter instead of cuda_lora_b
static int g_lora_b_fused = -1;
static int lora_b_fused_on(void) { return env_switch(&g_lora_b_fused, "HALO_LORA_B_FUSED"); }
extern "C" void llama_cuda_lora_fused(int on) { g_lora_fused = on < 0 ? -1 : on != 0; }
static lora_lin *lora_of(llama_cuda *g, int l, int kind) { return lora_on(g, l, kind) ? &g->la[l * LIN_COUNT + kind] : NULL; }
static int lora_dropping(const llama_cuda *g) { return g->ltrain && g->lkeep != 1.f; }
static float lora_keep(const llama_cuda *g) { return lora_dropping(g) ? g->lkeep : 1.f; }   // 1 / (1 - p) under dropout
static bf16 *lora_du(const llama_cuda *g, int j) { return g->ldu + (size_t)j * g->lus; }   // dU of a group's j-th adapter

// The adapter's input: X [N, in] itself, or with dropout its masked copy in lxd (*keep = 1 / (1 - p), else 1).
static const halo_bf16 *lora_input(llama_cuda *g, int lin, const bf16 *X, int in, float *keep) {
    *keep = lora_keep(g);
    if (!lora_dropping(g)) return (const halo_bf16 *)X;
    cuda_lora_mask((halo_bf16 *)g->lxd, (const halo_bf16 *)X, (size_t)g->B * g->T * in, g->lkey, lin, g->lthr, g->st);
    return (const halo_bf16 *)g->lxd;
}

// One adapter alone: Y [N, out] (row stride ldy; fp32 or bf16) += s dropout(X) A^T B^T for layer l's linear `kind`,
// U kept.
static void lora_forward(llama_cuda *g, int l, int kind, const bf16 *X, void *Y, int y_f32, long ldy) {
    lora_lin *a = lora_of(g, l, kind);
    const int N = g->B * g->T, r = g->lrank;
    const halo_bf16 *Wl = (const halo_bf16 *)g->lw;
    float keep;
    const halo_bf16 *xd = lora_input(g, l * LIN_COUNT + kind, X, a->in, &keep);
    cuda_gemm_rm(a->u, 0, r, xd, a->in, 0, Wl + a->a, a->in, 1, N, r, a->in, g->lscale * keep, 0.f, g->st);
    cuda_gemm_rm(Y, y_f32, ldy, (const halo_bf16 *)a->u, r, 0, Wl + a->b, r, 1, N, a->out, r, 1.f, 1.f, g->st);
}
// ... its gradients from dY [N, out] (row stride lddy), both paths: dB += dY^T U, dU = s dY B (into du)
static void lora_backward_b(llama_cuda *g, const lora_lin *a, const bf16 *dY, long lddy, bf16 *du) {
    const int N = g->B * g->T, r = g->lrank;
    const halo_bf16 *dy = (const halo_bf16 *)dY;
    cuda_gemm_rm(g->lg + a->b, 1, r, dy, lddy, 1, (const halo_bf16 *)a->u, r, 0, a->out, r, N, 1.f, 1.f, g->st);
    cuda_gemm_rm(du, 0, r, dy, lddy, 0, (const halo_bf16 *)g->lw + a->b, r, 0, N, r, a->out, g->lscale, 0.f, g->st);
}
// ... the part that reads X [N, in], alone: those, then dA += dU^T dropout(X)
static void lora_backward_w(llama_cuda *g, int l, int kind, const bf16 *X, const bf16 *dY, long lddy, bf16 *du) {
    lora_lin *a = lora_of(g, l, kind);
    const int N = g->B * g->T, r = g->lrank;
    lora_backward_b(g, a, dY, lddy, du);
    float keep;
    const halo_bf16 *xd = lora_input(g, l * LIN_COUNT + kind, X, a->in, &keep);
    cuda_gemm_rm(g->lg + a->a, 1, a->in, (const halo_bf16 *)du, r, 1, xd, a->in, 0, r, a->in, N, keep, 1.f, g->st);
}
// ... and its input gradient: dX [N, in] (bf16, the base's input gradient) += dropout'(dU A).
static void lora_backward_dx(llama_cuda *g, int l, int kind, bf16 *dX, const bf16 *du) {
    lora_lin *a = lora_of(g, l, kind);
    const int N = g->B * g->T, r = g->lrank;
    const halo_bf16 *A = (const halo_bf16 *)g->lw + a->a;
    if (!lora_dropping(g)) {
        cuda_gemm_rm(dX, 0, a->in, (const halo_bf16 *)du, r, 0, A, a->in, 0, N, a->in, r, 1.f, 1.f, g->st);
        return;
    }
    // dU A into the scratch (dropout(X) is no longer needed), then added where the mask kept X
    cuda_gemm_rm(g->lxd, 0, a->in, (const halo_bf16 *)du, r, 0, A, a->in, 0, N, a->in, r, 1.f, 0.f, g->st);
    cuda_lora_mask_add((halo_bf16 *)dX, (const halo_bf16 *)g->lxd, (size_t)N * a->in, g->lkey, l * LIN_COUNT + kind,
                       g->lthr, g->lkeep, g->st);
}

// The adapters of layer l's linears k0 .. k0 + nk - 1 (one input X [N, in]; each with its column offset in the
// group's output and dU slot j) as a cuda_lora_group. Returns 1 when lora.cu's grouped kernels take them (with X and
// dX, when given, 16-byte aligned), else 0: each adapter then runs alone. kind[j]: the linear of the j-th adapter.
typedef struct { cuda_lora_group gr; int n, in, kind[3]; long col[3]; } lora_group;
static int lora_group_of(llama_cuda *g, int l, int k0, int nk, const bf16 *X, const bf16 *dX, lora_group *q) {
    memset(q, 0, sizeof *q);
    long col = 0;
    for (int k = k0; k < k0 + nk; k++) {
        int m, n;
        lin_shape(g, k, &m, &n);
        lora_lin *a = lora_of(g, l, k);
        if (a) {
            const int j = q->n++;
            q->kind[j] = k;
            q->col[j] = col;
            q->in = m;
            q->gr.a[j] = (const halo_bf16 *)(g->lw + a->a);
            q->gr.u[j] = (halo_bf16 *)a->u;
            q->gr.du[j] = (const halo_bf16 *)lora_du(g, j);
            q->gr.ga[j] = g->lg + a->a;
            q->gr.bits[j] = lora_dropping(g) ? a->bits : NULL;
            q->gr.lin[j] = l * LIN_COUNT + k;
        }
        col += n;
    }
    q->gr.n = q->n;
    // (under dropout every adapter whose input width the kernels take has its bits: lora_alloc)
    return q->n > 0 && lora_fused_on() && cuda_lora_group_ok(g->lrank, q->in, q->n) && aligned16(X) &&
           (!dX || aligned16(dX));
}

// The forward of the adapters on layer l's linears k0 .. k0 + nk - 1 reading X, in two parts around the base products.
// lora_forward_u, before them: on the grouped path U_j = s dropout(X) A_j^T for all of them (returns 1; the HALO
// products may then add U_j B_j^T in their epilogue: lora_epilogue_next); else nothing (0).
static int lora_forward_u(llama_cuda *g, int l, int k0, int nk, const bf16 *X, lora_group *q) {
    const int grouped = lora_group_of(g, l, k0, nk, X, NULL, q);
    if (!q->n || !grouped) return 0;
    prof_mark(g, PR_LORA);
    cuda_lora_u(&q->gr, (const halo_bf16 *)X, g->B * g->T, q->in, g->lrank, g->lscale * lora_keep(g), g->lkey, g->lthr,
                g->st);
    prof_mark(g, PR_LORA);
    return 1;
}
// Linear k's adapter (if any) for its HALO forward's epilogue (halo_cuda_linear_lora_next), on the grouped path;
// after that forward, lora_added_bit(q, k, L) is bit j when adapter j sat on k and L added it (0 otherwise).
static int lora_slot(const lora_group *q, int k) {
    for (int j = 0; j < q->n; j++)
        if (q->kind[j] == k) return j;
    return -1;
}
static void lora_epilogue_next(llama_cuda *g, int l, int k, halo_cuda_linear *L, const lora_group *q, int grouped) {
    const int j = grouped ? lora_slot(q, k) : -1;
    if (j >= 0) halo_cuda_linear_lora_next(L, q->gr.u[j], (const halo_bf16 *)g->lw + lora_of(g, l, k)->b, g->lrank);
}
static unsigned lora_added_bit(const lora_group *q, int k, const halo_cuda_linear *L) {
    const int j = lora_slot(q, k);
    return j >= 0 && halo_cuda_linear_lora_added(L) ? 1u << j : 0u;
}
// ... lora_forward_y, after them: Y [N, ldy] (fp32 or bf16) += each adapter's U B^T in its linear's columns where the
// product did not add it (bit j of added), or, off the grouped path, each adapter whole (U kept).
static void lora_forward_y(llama_cuda *g, int l, const bf16 *X, void *Y, int y_f32, long ldy, const lora_group *q,
                           int grouped, unsigned added) {
    const int N = g->B * g->T, r = g->lrank;
    if (!q->n || (grouped && added == (1u << q->n) - 1)) return;
    prof_mark(g, PR_LORA);
    for (int j = 0; j < q->n; j++) {
        void *Yj = (char *)Y + q->col[j] * (y_f32 ? 4 : 2);
        if (!grouped) lora_forward(g, l, q->kind[j], X, Yj, y_f32, ldy);
        else if (!(added >> j & 1)) {
            const lora_lin *a = lora_of(g, l, q->kind[j]);
            const halo_bf16 *B = (const halo_bf16 *)g->lw + a->b;
            if (cuda_lora_y_ok(r, a->out, ldy, y_f32, Yj)) cuda_lora_y(Yj, y_f32, ldy, q->gr.u[j], B, N, a->out, r, g->st);
            else cuda_gemm_rm(Yj, y_f32, ldy, q->gr.u[j], r, 0, B, r, 1, N, a->out, r, 1.f, 1.f, g->st);
        }
    }
    prof_mark(g, PR_LORA);
}
// Their gradients, the part that reads X (before the base's input gradient may overwrite it): dB_j and dU_j (slot j)
// from dY's columns, then dA_j.
static void lora_backward_w_group(llama_cuda *g, int l, int k0, int nk, const bf16 *X, const bf16 *dY, long lddy) {
    lora_group q;
    const int grouped = lora_group_of(g, l, k0, nk, X, NULL, &q), N = g->B * g->T, r = g->lrank;
    if (!q.n) return;
    prof_mark(g, PR_LORA);
    cuda_lora_bgroup bg = {.n = q.n};
    for (int j = 0; j < q.n; j++) {
        const lora_lin *a = lora_of(g, l, q.kind[j]);
        bg.dy[j] = (const halo_bf16 *)(dY + q.col[j]);
        bg.out[j] = a->out;
        bg.b[j] = (const halo_bf16 *)g->lw + a->b;
        bg.u[j] = (const halo_bf16 *)a->u;
        bg.gb[j] = g->lg + a->b;
        bg.du[j] = (halo_bf16 *)lora_du(g, j);
    }
    if (grouped && lora_b_fused_on() && cuda_lora_b_ok(&bg, r, lddy))
        cuda_lora_b(&bg, N, lddy, r, g->lscale, g->lws, g->st);
    else
        for (int j = 0; j < q.n; j++) {
            if (grouped) lora_backward_b(g, lora_of(g, l, q.kind[j]), dY + q.col[j], lddy, lora_du(g, j));
            else lora_backward_w(g, l, q.kind[j], X, dY + q.col[j], lddy, lora_du(g, j));
        }
    if (grouped) cuda_lora_da(&q.gr, (const halo_bf16 *)X, N, q.in, r, lora_keep(g), g->lws, g->st);
    prof_mark(g, PR_LORA);
}
// ... and their input gradients added into dX [N, in] (bf16, the base's), from the dU slots lora_backward_w_group
// wrote. X: the same input as there (for the same choice of path).
// dX32 (set only where lora_dx_f32_ok said yes): the group's input gradient is that fp32 sum instead of dX.
static void lora_backward_dx_group(llama_cuda *g, int l, int k0, int nk, const bf16 *X, bf16 *dX, float *dX32) {
    lora_group q;
    const int grouped = lora_group_of(g, l, k0, nk, X, dX, &q), N = g->B * g->T, r = g->lrank;
    if (!q.n) return;
    prof_mark(g, PR_LORA);
    if (dX32) cuda_lora_dx_f32(&q.gr, dX32, N, q.in, r, lora_keep(g), g->st);
    else if (grouped) cuda_lora_dx(&q.gr, (halo_bf16 *)dX, N, q.in, r, lora_keep(g), g->st);
    else
        for (int j = 0; j < q.n; j++) lora_backward_dx(g, l, q.kind[j], dX, lora_du(g, j));
    prof_mark(g, PR_LORA);
}

// Whether lora_backward_dx_group can add the adapters' input gradients of linears k0 .. k0 + nk - 1 into an fp32 sum:
// none there, or the grouped kernel takes them.
static int lora_dx_f32_ok(llama_cuda *g, int l, int k0, int nk, const bf16 *X) {
    lora_group q;
    const int grouped = lora_group_of(g, l, k0, nk, X, NULL, &q);
    return !q.n || grouped;
}

// The settings-only part of halo_setup's validation (no model needed): what the GPU HALO layers support.
extern "C" int llama_cuda_halo_check(const model_halo_config *hc, int bf16_grads) {
    if (hc->prec != HALO_PREC_INT8 && hc->prec != HALO_PREC_FP8) return HALO_OK;   // fp32 / bf16: BF16 products
    if (bf16_grads)   // the HALO layers accumulate fp32 weight gradients
        return halo_fail("HALO on the GPU keeps fp32 weight gradients: bf16 gradients (--bf16-grads) work with "
                         "--precision bf16 only");
    const unsigned qkv = (1u << LIN_Q) | (1u << LIN_K) | (1u << LIN_V), gu = (1u << LIN_GATE) | (1u << LIN_UP);
    if (hc->level < 0 || hc->level > 2) return halo_fail("HALO on the GPU: level %d is not 0, 1 or 2", hc->level);
    if (hc->gran != HALO_GRAN_TENSOR)
        return halo_fail("HALO on the GPU supports per-tensor scales only (asked for %s scales; train on the CPU for "
                         "row or block scales)", hc->gran == HALO_GRAN_ROW ? "row" : "block");
    if (hc->stochastic) return halo_fail("HALO on the GPU rounds to nearest only (stochastic rounding is CPU-only)");
    if (hc->grad_e5m2) return halo_fail("HALO on the GPU quantizes gradients as E4M3 only (E5M2 is CPU-only)");
    if (hc->had_block < 0 || hc->had_block > 32768)
        return halo_fail("HALO on the GPU: the Hadamard block must be from 1 to 32768 (got %d)", hc->had_block);
    if (hc->had_block_b && (hc->had_block_b < 2 || hc->had_block_b > 32768 || (hc->had_block_b & (hc->had_block_b - 1))))
        return halo_fail("HALO on the GPU: the token Hadamard block must be a power of two from 2 to 32768 (got %d)",
                         hc->had_block_b);
    if (hc->identity_quant) return halo_fail("HALO on the GPU has no identity quantizer (a CPU test option)");
    if ((hc->kinds & qkv) && (hc->kinds & qkv) != qkv)
        return halo_fail("HALO on the GPU: q, k and v share one fused weight there; select all three or none");
    if ((hc->kinds & gu) && (hc->kinds & gu) != gu)
        return halo_fail("HALO on the GPU: gate and up share one fused weight there; select both or neither");
    if (hc->skip_first < 0 || hc->skip_last < 0) return halo_fail("HALO on the GPU: negative skip counts");
    return HALO_OK;
}

// Validates opts.halo and builds one halo_cuda_linear per selected (block, linear), as llama_set_halo on the CPU.
static int halo_setup(llama_cuda *g) {
    const model_halo_config *hc = &g->o.halo;
    if (hc->prec != HALO_PREC_INT8 && hc->prec != HALO_PREC_FP8) return HALO_OK;   // fp32 / bf16: BF16 products
    if (llama_cuda_halo_check(hc, g->o.bf16_grads) != HALO_OK) return HALO_ERR;
    const llama_config *c = &g->c;
    const int nl = c->n_layers;
    if (hc->level >= 1 && (c->dim > 32768 || c->hidden_dim > 32768 || g->Q > 32768))
        return halo_fail("HALO on the GPU: rotations longer than 32768 are not supported (dim %d, hidden %d)", c->dim,
                         c->hidden_dim);
    if (model_halo_check_blocks(c, hc) != HALO_OK) return HALO_ERR;   // H_m's block divides every in_features
    if (hc->level == 2 && !hc->had_block_b && halo_hadamard_pad_size(g->N_max, 172) > 32768)
        return halo_fail("HALO level 2 on the GPU: %d tokens per batch pad to more than 32768 (the token rotation's "
                         "limit); use smaller batches", g->N_max);
    g->hl = (halo_cuda_linear *)xcalloc((size_t)nl * LIN_COUNT, sizeof(halo_cuda_linear));
    g->hon = (unsigned char *)xcalloc((size_t)nl * LIN_COUNT, 1);
    size_t codes = 0;
    int any_group = 0;
    for (int l = 0; l < nl; l++) {
        for (int k = 0; k < LIN_COUNT; k++) {
            if (!halo_selects(g, l, k)) continue;
            char name[160];
            model_halo_layer_name(name, sizeof name, l, k);
            halo_cuda_linear *L = &g->hl[l * LIN_COUNT + k];
            if (halo_cuda_linear_init(L, hc->prec, hc->level, name) != HALO_OK) return HALO_ERR;
            g->hon[l * LIN_COUNT + k] = 1;
            halo_cuda_linear_share_workspace(L, &g->hws);
            halo_cuda_linear_token_block(L, hc->had_block_b);
            halo_cuda_linear_hm_block(L, hc->had_block);
            // k, v reuse q's codes of the normed input, up reuses gate's (the groups are all-or-none)
            const int first = k == LIN_K || k == LIN_V ? LIN_Q : k == LIN_UP ? LIN_GATE : k;
            if (first != k) halo_cuda_linear_share_x(L, &g->hl[l * LIN_COUNT + first]);
            int m, n;
            lin_shape(g, k, &m, &n);
            // X's codes saved for the weight gradient: none under LoRA (frozen base, HALO_CUDA_NO_G)
            codes += (first == k && !g->lora ? (size_t)g->N_max * pad16l(m) : 0) + (size_t)pad16l(n) * pad16l(m);
            any_group |= k != LIN_O && k != LIN_DOWN;
        }
    }
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    if (codes + (64u << 20) > free_b)
        return halo_fail("CUDA: out of device memory for HALO's saved codes (%.1f MiB needed, %.1f MiB free)",
                         codes / 1048576.0, free_b / 1048576.0);
    g->hnf = (int *)dalloc(g, MEM_WORK, (size_t)nl * LIN_COUNT * 3 * sizeof(int));
    g->aseg = (cuda_adamw_seg *)dalloc(g, MEM_WORK, (size_t)g->n_slots * sizeof(cuda_adamw_seg));
    g->gss_rg = (unsigned long long *)dalloc(g, MEM_WORK, (size_t)(g->n_slots + 1) * 2 * sizeof(unsigned long long));
    g->gcov = (unsigned char *)xcalloc((size_t)nl * LIN_COUNT, 1);
    g->gss_up = (unsigned char *)xcalloc((size_t)nl * LIN_COUNT, 1);
    g->gss_nr = -1;
    if (g->oom) return HALO_ERR;
    CUDA_CHECK(cudaMemset(g->hnf, 0, (size_t)nl * LIN_COUNT * 3 * sizeof(int)));
    g->hwam = (unsigned char *)xcalloc((size_t)nl * LIN_COUNT, 1);
    g->hwv = (unsigned char *)xcalloc((size_t)nl * LIN_COUNT, 1);
    g->aseg_key = -1;
    for (int i = 0; i < nl * LIN_COUNT; i++)
        if (g->hon[i]) {
            int m, n;
            lin_shape(g, i % LIN_COUNT, &m, &n);
            halo_cuda_linear_reserve(&g->hl[i], g->N_max, m, n, !g->lora);
            halo_cuda_linear_nonfinite_slots(&g->hl[i], g->hnf + 3 * i);   // one copy reads every layer's flags
        }
    g->bytes[MEM_HALO] += codes;
    if (any_group) {   // summed input gradients of the fused groups
        g->hacc = (float *)dalloc(g, MEM_WORK, (size_t)g->N_max * c->dim * 4);
        if (g->oom) return HALO_ERR;
    }
    CUDA_CHECK(cudaDeviceSynchronize());   // the layers' device state was set on the legacy stream
    const char *dly = getenv("HALO_DELAYED_SCALING");   // the environment can turn it on for a benchmark
    if (hc->delayed || (dly && dly[0] == '1')) llama_cuda_halo_delayed(g, 1);
    return HALO_OK;
}

static int adamw_segments_apply(const llama_cuda *g);
static int delayed_on(const llama_cuda *g);
extern "C" void llama_cuda_halo_delayed_hist(llama_cuda *g, int *h, int set) {
    for (int i = 0; g->hon && i < g->c.n_layers * LIN_COUNT; i++)
        if (g->hon[i]) halo_cuda_linear_delayed_hist(&g->hl[i], h + 2 * i, set);
}

extern "C" void llama_cuda_halo_delayed(llama_cuda *g, int on) {
    g->delayed = on != 0;
    size_t wc = 0;   // the row-major W codes the update will write (allocated now, so the memory report has them)
    const int codes = delayed_on(g) && adamw_segments_apply(g);
    for (int i = 0; g->hon && i < g->c.n_layers * LIN_COUNT; i++)
        if (g->hon[i]) {
            halo_cuda_linear *L = &g->hl[i];
            halo_cuda_linear_delayed(L, g->delayed);
            int m, n, fmt;
            uint8_t *q;
            float *ca;
            lin_shape(g, i % LIN_COUNT, &m, &n);
            if (codes && halo_cuda_linear_w_codes(L, m, n, &q, &fmt, &ca))
                wc += (size_t)m * n;
        }
    if (wc > g->wc_bytes) {
        g->bytes[MEM_HALO] += wc - g->wc_bytes;
        g->wc_bytes = wc;
    }
}

extern "C" void llama_cuda_halo_telemetry(llama_cuda *g, int on) {
    if (!g->hon) return;
    g->tele = on;
    for (int i = 0; i < g->c.n_layers * LIN_COUNT; i++)
        if (g->hon[i]) halo_cuda_linear_telemetry(&g->hl[i], on);
}

// Tokens per lm_head + cross-entropy chunk when the caller leaves it to us: as many as fit 1 GiB of bf16 logits (256 MiB
// when a memory option is on: bf16 moments or gradients, recomputation), in multiples of 256, at least 1024. The
// lm_head's weight-gradient product sums over a chunk's tokens, and short chunks ran slower (H200, batch 4 x 2048,
// vocabulary 128256, dev/cuda/h200_2026-12-04d/call9_*: 1B step 132.3 ms with chunks of 1024, 130.5 with 2048 or
// 4096; Llama-3-8B shapes on 4 layers 136.3 with 1024, 132.5 with 4096; call10_*, this rule against 1024 twice in
// one call: 1B 132.6 / 131.9 vs 135.7 / 136.0 ms, +0.73 GiB; 8B shapes 135.0 / 135.2 vs 140.8 / 141.1).
static int ce_chunk_auto(int vocab, const llama_cuda_opts *o) {
    const long budget = o->bf16_moments || o->bf16_grads || o->recompute || o->recompute_norms ? 256L << 20 : 1L << 30;
    const long fit = budget / (2L * (vocab > 0 ? vocab : 1)) / 256 * 256;
    return fit > 1024 ? (int)(fit < (1 << 20) ? fit : 1 << 20) : 1024;
}

extern "C" void llama_cuda_halo_telemetry_report(llama_cuda *g, FILE *table, FILE *metrics, int step) {
    if (!g->hon) {
        if (table) fprintf(table, "(no 8-bit HALO layers: every product runs in BF16 on the GPU)\n");
        return;
    }
    if (table) halo_stats_print_header(table);
    char buf[4096];
    for (int i = 0; i < g->c.n_layers * LIN_COUNT; i++) {
        if (!g->hon[i]) continue;
        halo_cuda_linear *L = &g->hl[i];
        halo_linear_stats st;
        halo_cuda_linear_telemetry_read(L, &st);
        if (table) halo_stats_print_row(table, L->name, (halo_precision)L->prec, L->level, &st);
        if (metrics) {
            halo_stats_json(L->name, (halo_precision)L->prec, L->level, &st, buf, sizeof buf);
            fprintf(metrics, "{\"type\":\"quant\",\"step\":%d,\"layer\":%s}\n", step, buf);
        }
    }
    if (metrics) fflush(metrics);
}

static void halo_teardown(llama_cuda *g) {
    if (g->hon)
        for (int i = 0; i < g->c.n_layers * LIN_COUNT; i++)
            if (g->hon[i]) halo_cuda_linear_free(&g->hl[i]);
    halo_cuda_ws_free(&g->hws);
    free(g->hl); free(g->hon); free(g->hwam); free(g->hwv); free(g->gcov); free(g->gss_up);
    g->hl = NULL; g->hon = NULL;
}

extern "C" int llama_cuda_variant_ok(const llama_config *c) {
    if (!c->bias_kinds && !c->qk_norm && !c->nope[0] && !c->nope[1]) return 1;
    return (c->bias_kinds == 0 || c->bias_kinds == BIAS_QKV) && c->head_dim <= 256;
}

static int init_common(llama_cuda **out, const llama_config *cfg, const llama_model *host, const llama_cuda_opts *o) {
    *out = NULL;
    if (!llama_cuda_variant_ok(cfg)) return halo_fail("%s", LLAMA_CUDA_NO_BIAS);
    char why[256];
    if (!cuda_device_usable(why, sizeof why)) return halo_fail("CUDA: %s", why);
    if (o->max_B <= 0 || o->max_T <= 0) return halo_fail("CUDA: max_B and max_T must be positive");
    llama_cuda *g = (llama_cuda *)xcalloc(1, sizeof *g);
    g->c = *cfg;
    g->o = *o;
    g->N_max = o->max_B * o->max_T;
    g->Q = cfg->n_heads * cfg->head_dim;
    g->QKV = (cfg->n_heads + 2 * cfg->n_kv_heads) * cfg->head_dim;
    g->ce_chunk = o->ce_chunk > 0 ? o->ce_chunk : ce_chunk_auto(cfg->vocab_size, o);
    if (g->ce_chunk > g->N_max) g->ce_chunk = g->N_max;
    CUDA_CHECK(cudaStreamCreateWithFlags(&g->st, cudaStreamNonBlocking));
    layout_build(g, host);
    g->gbase = o->bf16_grads ? g->embed : 0;
    if (lora_setup(g, host) != HALO_OK || shard_setup(g) != HALO_OK || alloc_all(g) != HALO_OK ||
        lora_alloc(g) != HALO_OK || halo_setup(g) != HALO_OK) {
        llama_cuda_free(g);
        return HALO_ERR;
    }
    *out = g;
    return HALO_OK;
}

extern "C" int llama_cuda_init(llama_cuda **out, const llama_model *host, const llama_cuda_opts *o) {
    if (init_common(out, &host->cfg, host, o) != HALO_OK) return HALO_ERR;
    llama_cuda *g = *out;
    if (g->lora) {   // the frozen base straight to bf16 (rounded on the host, slot by slot), then the adapters
        size_t most = 0;
        for (int i = 0; i < g->n_slots; i++) most = g->slots[i].n > most ? g->slots[i].n : most;
        halo_bf16 *tmp = (halo_bf16 *)xmalloc(most * 2);
        CUDA_CHECK(cudaStreamSynchronize(g->st));
        for (int i = 0; i < g->n_slots; i++) {
            cuda_f32_to_bf16_host(tmp, host->params + g->slots[i].host_off, g->slots[i].n);
            CUDA_CHECK(cudaMemcpy((halo_bf16 *)g->w + g->slots[i].off, tmp, g->slots[i].n * 2, cudaMemcpyHostToDevice));
        }
        free(tmp);
        lora_upload(g, host);
    } else {
        for (int i = 0; i < g->n_slots; i++)
            CUDA_CHECK(cudaMemcpyAsync(g->master + g->slots[i].off, host->params + g->slots[i].host_off,
                                       g->slots[i].n * 4, cudaMemcpyHostToDevice, g->st));
        cuda_f32_to_bf16((halo_bf16 *)g->w, g->master, g->n_all, g->st);
    }
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    if (o->verbose) print_memory(g);
    return HALO_OK;
}

extern "C" int llama_cuda_init_random(llama_cuda **out, const llama_config *cfg, uint64_t seed,
                                      const llama_cuda_opts *o) {
    if (init_common(out, cfg, NULL, o) != HALO_OK) return HALO_ERR;
    llama_cuda *g = *out;
    for (int i = 0; i < g->n_slots; i++) {
        const dev_slot *s = &g->slots[i];
        int norm = s->n == (size_t)cfg->dim && s->off >= g->embed + (size_t)cfg->vocab_size * cfg->dim - 1;
        size_t blocks = (s->n + 255) / 256;
        int grid = (int)(blocks > 4096 ? 4096 : blocks);
        if (norm) k_fill<<<grid, 256, 0, g->st>>>(g->master + s->off, s->n, 1.f);
        else k_init_random<<<grid, 256, 0, g->st>>>(g->master + s->off, s->n, seed * 7919 + i * 0x1234567ULL, 0.02f);
        CUDA_LAUNCH_CHECK();
    }
    for (int l = 0; l < cfg->n_layers; l++) {   // as HF initializes them: biases 0, q/k norm weights 1
        const layer_offs *lo = &g->L[l];
        if (cfg->bias_kinds & BIAS_QKV) k_fill<<<cdiv(g->QKV, 256), 256, 0, g->st>>>(g->master + lo->bqkv, g->QKV, 0.f);
        if (cfg->qk_norm) {
            k_fill<<<1, 256, 0, g->st>>>(g->master + lo->q_norm, cfg->head_dim, 1.f);
            k_fill<<<1, 256, 0, g->st>>>(g->master + lo->k_norm, cfg->head_dim, 1.f);
        }
        CUDA_LAUNCH_CHECK();
    }
    cuda_f32_to_bf16((halo_bf16 *)g->w, g->master, g->n_all, g->st);
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    if (o->verbose) print_memory(g);
    return HALO_OK;
}

extern "C" void llama_cuda_free(llama_cuda *g) {
    if (!g) return;
    cudaStreamSynchronize(g->st);
    void *ptrs[] = {g->w, g->master, g->grad, g->grad16, g->nbuf, g->m, g->v, g->sh_stage, g->nf, g->rf, g->sbuf,
                    g->dgu, g->dnorm, g->datt, g->dqkv, g->dres, g->dres16, g->attn_scratch, g->logits, g->ids,
                    g->cos_t, g->loss_sum, g->hacc, g->hnf, g->aseg,
                    g->lp, g->lg, g->lm, g->lv, g->lw, g->lu, g->ldu, g->lxd, g->lbits, g->lws, g->ar_tmp};
    halo_teardown(g);
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) if (ptrs[i]) cudaFree(ptrs[i]);
    if (g->x) for (int l = 0; l <= g->c.n_layers; l++) if (g->x[l]) cudaFree(g->x[l]);
    int nsets = g->o.recompute == 1 ? 1 : g->c.n_layers;
    if (g->acts)
        for (int i = 0; i < nsets; i++) {
            layer_acts *A = &g->acts[i];
            void *ap[] = {A->n1 == g->nbuf ? NULL : A->n1, A->r1, A->qkv, A->att, A->lse, A->h,
                          A->n2 == g->nbuf ? NULL : A->n2, A->r2,
                          g->o.recompute == 2 && i > 0 ? NULL : A->gu, A->qk_raw, A->qk_rstd};
            for (size_t j = 0; j < sizeof ap / sizeof ap[0]; j++) if (ap[j]) cudaFree(ap[j]);
        }
    if (g->stage) { cudaFreeHost(g->stage); cudaEventDestroy(g->staged); }
    if (g->ev) { for (int i = 0; i < PR_MAXEV; i++) cudaEventDestroy(g->ev[i]); free(g->ev); free(g->ev_cat); }
    cudaStreamDestroy(g->st);
    free(g->x); free(g->acts); free(g->slots); free(g->L); free(g->la);
    free(g);
}

// ---- batches ----
static int upload_batch(llama_cuda *g, const halo_batch *b) {
    int N = b->B * b->T;
    if (b->B > g->o.max_B || b->T > g->o.max_T || N > g->N_max) {
        fprintf(stderr, "halo cuda: batch %d x %d exceeds the sizes given at init (%d x %d)\n", b->B, b->T, g->o.max_B,
                g->o.max_T);
        abort();
    }
    // the staging buffer mirrors the device layout (ids, tgt, pos, seg at strides of N_max, alloc_all), so a batch
    // smaller than the largest lands where the kernels read it
    const int Nm = g->N_max;
    int32_t *s = g->stage;
    CUDA_CHECK(cudaEventSynchronize(g->staged));   // waits only for the previous upload, never for a whole step
    memcpy(s, b->input_ids, N * 4);
    int count = 0;
    const int V = g->c.vocab_size;
    for (int i = 0; i < N; i++) {
        if (s[i] < 0 || s[i] >= V || (b->targets && b->targets[i] >= V)) {   // the kernels index tables with them
            fprintf(stderr, "halo cuda: token %d (input %d, target %d) outside the vocabulary [0, %d)\n", i, s[i],
                    b->targets ? b->targets[i] : -1, V);
            abort();
        }
        s[Nm + i] = b->targets ? b->targets[i] : -1;
        count += s[Nm + i] >= 0;
        int p = b->pos ? b->pos[i] : i % b->T;
        if (p < 0 || p >= g->rope_len) { fprintf(stderr, "halo cuda: position %d out of range\n", p); abort(); }
        s[2 * Nm + i] = p;
    }
    // segment ids matter only when some row holds more than one segment
    g->has_seg = 0;
    if (b->seg)
        for (int i = 0; i < N && !g->has_seg; i++) g->has_seg = b->seg[i] != b->seg[(i / b->T) * b->T];
    if (g->has_seg) memcpy(s + 3 * Nm, b->seg, N * 4);
    // earlier kernels that still read the device copies run before this copy (stream order)
    CUDA_CHECK(cudaMemcpyAsync(g->ids, s, ((size_t)Nm * (g->has_seg ? 3 : 2) + N) * 4, cudaMemcpyHostToDevice, g->st));
    CUDA_CHECK(cudaEventRecord(g->staged, g->st));
    g->B = b->B; g->T = b->T;
    return count;
}

// ---- layers ----
static layer_acts *acts_for(llama_cuda *g, int l) { return &g->acts[g->o.recompute == 1 ? 0 : l]; }

// ---- block linears: BF16 products, or HALO per linear ----
static halo_cuda_linear *hl_of(const llama_cuda *g, int l, int kind) {
    return g->hon && g->hon[l * LIN_COUNT + kind] ? &g->hl[l * LIN_COUNT + kind] : NULL;
}

// A HALO product cannot report an error to the step (no return value there): shapes were checked at init, so what
// is left are cuBLASLt failures, which end the run like the BF16 path's.
static void halo_check(int rc) {
    if (rc == HALO_OK) return;
    fprintf(stderr, "halo cuda: HALO layer failed: %s\n", halo_error());
    abort();
}

// Zeroes and returns the X amax slot of HALO linear (l, kind) when it runs at level 0, or at levels 1-2 with small
// power-of-two Hadamard blocks (*lb, *scale: the rotation the producer applies for the amax; lb = 0: none), for the
// kernel that produces its input (RMSNorm, SwiGLU); NULL otherwise (then the layer takes the amax itself). *nf: the
// layer's X non-finite flag, for that kernel to set.
static float *x_amax_prepare(llama_cuda *g, int l, int kind, int *lb, float *scale, int **nf) {
    halo_cuda_linear *L = hl_of(g, l, kind);
    int m, n;
    lin_shape(g, kind, &m, &n);
    *lb = 0;
    *scale = 1.f;
    *nf = NULL;
    if (!L || (L->level != 0 && !halo_cuda_linear_x_rot_amax(L, m, lb, scale))) return NULL;
    *nf = halo_cuda_linear_x_nonfinite(L);
    float *a = halo_cuda_linear_x_amax(L);
    PROF(g, PR_MISC, CUDA_CHECK(cudaMemsetAsync(a, 0, sizeof(float), g->st)));
    return a;
}
static int x_flag(const void *slot) { return slot ? HALO_CUDA_X_AMAX : 0; }
// HALO_CUDA_W_AMAX when linear (l, kind)'s W amax slot holds the current weights' (hwv); the forward it goes with
// leaves it so
// HALO forward flags for W: W_AMAX when the slot is current; NO_G under LoRA (the frozen base takes no weight
// gradient, so X's codes are not saved for one; telemetry's G reference needs them)
static int w_flag(llama_cuda *g, int l, int kind) {
    const int i = l * LIN_COUNT + kind;
    int f = g->hwv[i] ? HALO_CUDA_W_AMAX : 0;
    if (g->hwv[i] == 2 && delayed_on(g)) f |= HALO_CUDA_W_CODES;   // the update's codes (they stay current)
    else g->hwv[i] = 1;   // (the update's codes only until a forward quantizes W itself)
    return f | (g->lora && !g->tele ? HALO_CUDA_NO_G : 0);
}
// The weights were written: every HALO linear's W amax slot and W flag are stale, except those the writer took
// (kept, may be NULL), whose W flags it sets on the stream after this clears them.
static void weights_changed(llama_cuda *g, const unsigned char *kept) {
    if (!g->hnf) return;
    const int n = g->c.n_layers * LIN_COUNT;
    for (int i = 0; i < n; i++) g->hwv[i] = kept ? kept[i] : 0;
    CUDA_CHECK(cudaMemset2DAsync(g->hnf + 1, 3 * sizeof(int), 0, sizeof(int), (size_t)n, g->st));   // W column
}

// Y [N, ldy] (bf16) = X [N, D] Wg^T for a fused group of nk linears from kind k0 (q, k, v or gate, up) whose weight
// rows start at w_off: one BF16 product, or one HALO product per linear into its columns of Y. xf: HALO_CUDA_X_AMAX
// when X's producer took the first linear's X amax (x_amax_prepare); the others reuse its codes.
static void group_forward(llama_cuda *g, int l, int k0, int nk, bf16 *Y, int ldy, const bf16 *X, size_t w_off,
                          int xf) {
    int N = g->B * g->T, D = g->c.dim;
    const halo_bf16 *W = (const halo_bf16 *)g->w + w_off;
    long col = 0;
    lora_group q;   // LoRA: each adapter adds into its linear's columns
    const int grouped = lora_forward_u(g, l, k0, nk, X, &q);
    unsigned added = 0;
    // INT8 without adapters: the group's products stacked by columns in one launch (k's and v's alone fill few tiles)
    halo_cuda_linear *Ls[4];
    int widths[4], stacked = 0;
    if (hl_of(g, l, k0) && !g->lora && nk <= 4) {
        for (int i = 0, m; i < nk; i++) {
            Ls[i] = hl_of(g, l, k0 + i);
            lin_shape(g, k0 + i, &m, &widths[i]);
        }
        stacked = halo_cuda_linear_y_group_ok(Ls, nk, N, widths);
    }
    if (!hl_of(g, l, k0)) PROF(g, PR_MM_F, cuda_linear_forward(Y, 0, (const halo_bf16 *)X, W, NULL, N, D, ldy, g->st));
    else
        for (int k = k0; k < k0 + nk; k++) {
            int m, n;
            lin_shape(g, k, &m, &n);
            halo_cuda_linear *L = hl_of(g, l, k);
            lora_epilogue_next(g, l, k, L, &q, grouped);
            const int flags = (k == k0 ? xf : 0) | w_flag(g, l, k) | (stacked ? HALO_CUDA_Y_GROUP : 0);
            PROF(g, PR_MM_F, halo_check(halo_cuda_linear_forward_flags(L, (const halo_bf16 *)X, W + col * D, Y + col, 0,
                                                                       ldy, NULL, flags, N, D, n, g->st)));
            added |= lora_added_bit(&q, k, L);
            col += n;
        }
    if (stacked) PROF(g, PR_MM_F, halo_check(halo_cuda_linear_y_group_run(Ls, nk, g->st)));
    lora_forward_y(g, l, X, Y, 0, ldy, &q, grouped, added);
}

// Y [N, n] (fp32) = R + X [N, m] W^T for linear `kind` (o or down) with weight at w_off; xf as group_forward's.
static void resid_forward(llama_cuda *g, int l, int kind, float *Y, const bf16 *X, size_t w_off, const float *R,
                          int xf) {
    int N = g->B * g->T, m, n;
    lin_shape(g, kind, &m, &n);
    const halo_bf16 *W = (const halo_bf16 *)g->w + w_off;
    halo_cuda_linear *L = hl_of(g, l, kind);
    lora_group q;
    const int grouped = lora_forward_u(g, l, kind, 1, X, &q);
    unsigned added = 0;
    if (!L) PROF(g, PR_MM_F, cuda_linear_forward(Y, 1, (const halo_bf16 *)X, W, R, N, m, n, g->st));
    else {
        lora_epilogue_next(g, l, kind, L, &q, grouped);
        PROF(g, PR_MM_F, halo_check(halo_cuda_linear_forward_flags(L, (const halo_bf16 *)X, W, Y, 1, n, R,
                                                                   xf | w_flag(g, l, kind), N, m, n, g->st)));
        added = lora_added_bit(&q, kind, L);
    }
    lora_forward_y(g, l, X, Y, 1, n, &q, grouped, added);
}

// Delayed scaling applies (not under LoRA, whose adapters read the bf16 tensors, nor with telemetry).
static int delayed_on(const llama_cuda *g) { return g->delayed && !g->lora && !g->tele; }
// The norm before linear `kind` (q: the attention norm, gate: the MLP's) writes that HALO layer's X codes (c) instead
// of its bf16 output: 1 when it applies (k, v and up borrow the codes; a backward that reads the output recomputes it
// from the stored rstd: norm_recompute).
static int norm_codes(llama_cuda *g, int l, int kind, halo_cuda_codes *c) {
    halo_cuda_linear *L = hl_of(g, l, kind);
    return L && delayed_on(g) && cuda_rmsnorm_codes_ok(g->c.dim) &&
           halo_cuda_linear_x_codes(L, g->B * g->T, g->c.dim, 1, c, g->st);
}
// X codes c written by a producer for linears k0..k0+nk-1 of layer l (the first's codes, the others borrow them):
// those whose forward takes the update's W codes get their product's scale formed by the producer too
static void y_alpha_jobs(llama_cuda *g, int l, int k0, int nk, halo_cuda_codes *c) {
    for (int k = k0; k < k0 + nk; k++)
        if (g->hwv[l * LIN_COUNT + k] == 2) halo_cuda_linear_y_alpha(hl_of(g, l, k), c->amax, &c->aj);
}

// Layer l forward from x[l]; writes x[l + 1] when `full` (recomputation in backward needs everything but that).
static void layer_forward(llama_cuda *g, int l, layer_acts *A, int full) {
    const llama_config *c = &g->c;
    int N = g->B * g->T, D = c->dim, F = c->hidden_dim, Hq = c->n_heads, Hkv = c->n_kv_heads, hd = c->head_dim;
    const layer_offs *o = &g->L[l];
    halo_bf16 *W = (halo_bf16 *)g->w;
    cudaStream_t s = g->st;
    // each kernel producing a HALO layer's input also takes its amax where it can (the layer then skips that pass)
    // (delayed scaling: the norms and SwiGLU write the codes themselves, no bf16 X; not while recomputing a layer)
    int lb, *nf;
    float rs;
    halo_cuda_codes xc;
    float *aq = NULL;
    const int cq = full && norm_codes(g, l, LIN_Q, &xc);
    if (cq) y_alpha_jobs(g, l, LIN_Q, 3, &xc);
    if (cq) PROF(g, PR_NORM_F, cuda_rmsnorm_forward_codes(A->r1, g->x[l], W + o->attn_norm, N, D, c->norm_eps, &xc, s));
    else if ((aq = x_amax_prepare(g, l, LIN_Q, &lb, &rs, &nf)))
        PROF(g, PR_NORM_F, cuda_rmsnorm_forward_amax((halo_bf16 *)A->n1, A->r1, g->x[l], W + o->attn_norm, N, D,
                                                     c->norm_eps, aq, lb, rs, nf, s));
    else PROF(g, PR_NORM_F, cuda_rmsnorm_forward((halo_bf16 *)A->n1, A->r1, g->x[l], W + o->attn_norm, N, D, c->norm_eps, s));
    group_forward(g, l, LIN_Q, 3, A->qkv, g->QKV, A->n1, o->wqkv, cq ? HALO_CUDA_X_CODES : x_flag(aq));
    if (c->bias_kinds & BIAS_QKV)   // Qwen2
        PROF(g, PR_MM_F, cuda_bias_rows_add((halo_bf16 *)A->qkv, g->QKV, W + o->bqkv, N, g->QKV, s));
    if (c->qk_norm)   // Qwen3: each q and k head normalized before RoPE (its input and scales kept for backward)
        PROF(g, PR_NORM_F, cuda_head_rmsnorm_forward((halo_bf16 *)A->qkv, g->QKV, (halo_bf16 *)A->qk_raw, A->qk_rstd,
                                                     W + o->q_norm, W + o->k_norm, N, Hq, Hkv, hd, c->norm_eps, s));
    if (llama_layer_rope(c, l))   // (SmolLM3's no_rope_layers skip it)
        PROF(g, PR_ROPE, cuda_rope_forward((halo_bf16 *)A->qkv, g->QKV, g->pos, g->cos_t, g->sin_t, N, Hq + Hkv, hd, s));
    // (o_proj at level 0: the attention forward takes its X amax)
    const halo_cuda_linear *Lo = hl_of(g, l, LIN_O);
    float *ao = Lo && Lo->level == 0 && cuda_attention_forward_amax_ok(hd) ? x_amax_prepare(g, l, LIN_O, &lb, &rs, &nf)
                                                                           : NULL;
    PROF(g, PR_ATT_F, cuda_attention_forward_amax((halo_bf16 *)A->att, A->lse, (halo_bf16 *)A->qkv,
                                                  g->has_seg ? g->seg : NULL, g->B, g->T, Hq, Hkv, hd, ao,
                                                  ao ? nf : NULL, s));
    resid_forward(g, l, LIN_O, A->h, A->att, o->wo, g->x[l], x_flag(ao));
    float *ag = NULL;
    const int cg = full && norm_codes(g, l, LIN_GATE, &xc);
    if (cg) y_alpha_jobs(g, l, LIN_GATE, 2, &xc);
    if (cg) PROF(g, PR_NORM_F, cuda_rmsnorm_forward_codes(A->r2, A->h, W + o->ffn_norm, N, D, c->norm_eps, &xc, s));
    else if ((ag = x_amax_prepare(g, l, LIN_GATE, &lb, &rs, &nf)))
        PROF(g, PR_NORM_F, cuda_rmsnorm_forward_amax((halo_bf16 *)A->n2, A->r2, A->h, W + o->ffn_norm, N, D,
                                                     c->norm_eps, ag, lb, rs, nf, s));
    else PROF(g, PR_NORM_F, cuda_rmsnorm_forward((halo_bf16 *)A->n2, A->r2, A->h, W + o->ffn_norm, N, D, c->norm_eps, s));
    group_forward(g, l, LIN_GATE, 2, A->gu, 2 * F, A->n2, o->wgu, cg ? HALO_CUDA_X_CODES : x_flag(ag));
    if (!full) return;
    halo_cuda_linear *Ld = hl_of(g, l, LIN_DOWN);
    if (Ld && delayed_on(g) && F % 64 == 0 && halo_cuda_linear_x_codes(Ld, N, F, 1, &xc, s)) {
        y_alpha_jobs(g, l, LIN_DOWN, 1, &xc);
        PROF(g, PR_SWIGLU_F, cuda_swiglu_forward_codes((halo_bf16 *)A->gu, N, F, &xc, s));
        resid_forward(g, l, LIN_DOWN, g->x[l + 1], g->sbuf, o->wdown, A->h, HALO_CUDA_X_CODES);
        return;
    }
    float *ad = x_amax_prepare(g, l, LIN_DOWN, &lb, &rs, &nf);
    if (ad)
        PROF(g, PR_SWIGLU_F, cuda_swiglu_forward_amax((halo_bf16 *)g->sbuf, (halo_bf16 *)A->gu, N, F, ad, lb, rs, nf, s));
    else PROF(g, PR_SWIGLU_F, cuda_swiglu_forward((halo_bf16 *)g->sbuf, (halo_bf16 *)A->gu, N, F, s));
    resid_forward(g, l, LIN_DOWN, g->x[l + 1], g->sbuf, o->wdown, A->h, x_flag(ad));
}

// The fp32 gradient of parameter offset off (off >= gbase).
static float *gradf(const llama_cuda *g, size_t off) { return g->grad + (off - g->gbase); }
// ... or NULL under LoRA (the base is frozen: norms, embedding and HALO layers skip their weight gradients)
static float *gradw(const llama_cuda *g, size_t off) { return g->lora ? NULL : gradf(g, off); }

// Gradient of the weight at offset off (bf16 below gbase, fp32 above) (+)= dY^T X: set overwrites, else accumulates.
static void dw_at(llama_cuda *g, size_t off, int set, const halo_bf16 *dY, const halo_bf16 *X, int b, int m, int n) {
    if (off < g->gbase) cuda_linear_backward_dw_bf16((halo_bf16 *)g->grad16 + off, dY, X, b, m, n, !set, g->st);
    else if (set) cuda_linear_backward_dw_set(gradf(g, off), dY, X, b, m, n, g->st);
    else cuda_linear_backward_dw(gradf(g, off), dY, X, b, m, n, g->st);
}
// dW (+)= dY^T X for a block matrix: overwrite on the first write after zero_grads, accumulate otherwise
static void dw(llama_cuda *g, size_t off, const halo_bf16 *dY, const halo_bf16 *X, int b, int m, int n) {
    dw_at(g, off, g->grads_fresh, dY, X, b, m, n);
}

// HALO's weight gradient: overwritten on the first write after zero_grads, else accumulated.
static int halo_g_flag(const llama_cuda *g) { return g->grads_fresh ? HALO_CUDA_G_SET : 0; }

static void group_backward_halo(llama_cuda *g, int l, int k0, int nk, bf16 *dX, const bf16 *dY, int ldy, const bf16 *X,
                                size_t w_off, int ey_flag);
// Backward of a fused group (see group_forward): dX [N, D] (bf16) from dY [N, ldy]; weight gradients into the group's
// rows from w_off. HALO: each linear's input gradient in fp32, summed in hacc (the first overwrites, the others add),
// then rounded to bf16 once or read unrounded by the norm backward (group_backward_halo); at levels 1-2 the sum is
// taken before the inverse rotations, which then run once.
static void group_backward(llama_cuda *g, int l, int k0, int nk, bf16 *dX, const bf16 *dY, int ldy, const bf16 *X,
                           size_t w_off, int ey_flag) {
    int N = g->B * g->T, D = g->c.dim;
    if (!hl_of(g, l, k0)) {
        if (!g->lora) PROF(g, PR_MM_DW, dw(g, w_off, (const halo_bf16 *)dY, (const halo_bf16 *)X, N, D, ldy));
        PROF(g, PR_MM_DX, cuda_linear_backward_dx((halo_bf16 *)dX, (const halo_bf16 *)dY, (const halo_bf16 *)g->w + w_off,
                                                  N, D, ldy, g->st));
    } else group_backward_halo(g, l, k0, nk, dX, dY, ldy, X, w_off, ey_flag);
    // LoRA: each adapter's gradients from its columns of dY, its input gradient added to the group's (X, the normed
    // input, is not dX's buffer; into the fp32 sum where the HALO products left it unrounded)
    lora_backward_w_group(g, l, k0, nk, X, dY, ldy);
    lora_backward_dx_group(g, l, k0, nk, X, dX, g->dnorm32);
}

static int g_dnorm_f32 = -1;   // -1: not read from the environment yet
extern "C" int llama_cuda_dnorm_f32(void) { return env_switch(&g_dnorm_f32, "HALO_CUDA_DNORM_F32"); }

// group_backward's HALO products: each linear's input gradient in fp32, summed in hacc, rounded to bf16 into dX once
// (by the last linear's product where it can: halo_cuda_linear_backward_sum), or not at all: at levels 0-1 (no
// deferred rotation) the norm backward that reads dnorm next reads hacc instead (g->dnorm32; LoRA's input gradients
// are added there too).
static void group_backward_halo(llama_cuda *g, int l, int k0, int nk, bf16 *dX, const bf16 *dY, int ldy, const bf16 *X,
                                size_t w_off, int ey_flag) {
    int N = g->B * g->T, D = g->c.dim;
    float *G = gradw(g, w_off);   // HALO refuses bf16 gradients: fp32 here (NULL under LoRA: frozen)
    // levels 1-2: the products' sum in hacc before the inverse rotations, rotated once (when every linear of the group
    // allows it and the padded token count fits hacc)
    int defer = 1;
    for (int k = k0; k < k0 + nk; k++) {
        const int rows = halo_cuda_linear_ex_defer_rows(hl_of(g, l, k), N);
        defer &= rows > 0 && rows <= g->N_max;
    }
    // no rounding at all where the norm backward reads the fp32 sum (the group's input gradient goes to dnorm, and
    // LoRA adapters, if any, can add theirs into it; HALO_CUDA_DNORM_F32=0: rounded to bf16 as below)
    const int f32 = !defer && dX == g->dnorm && (!g->lora || lora_dx_f32_ok(g, l, k0, nk, X)) && llama_cuda_dnorm_f32();
    // INT8 levels 0-1 into the fp32 sum: the group's E_X products in one launch after the backwards (each tile's sum
    // written once, not read and written again by each product after the first)
    halo_cuda_linear *Ls[4];
    for (int i = 0; i < nk && i < 4; i++) Ls[i] = hl_of(g, l, k0 + i);
    const int grouped = (defer || f32) && nk <= 4 && halo_cuda_linear_ex_group_ok(Ls, nk, N);
    // and their weight gradients, rows of one buffer, stacked in one launch (k's and v's alone fill few tiles)
    const int g_stacked = G && nk <= 4 && halo_cuda_linear_g_group_ok(Ls, nk, N);
    long col = 0;
    for (int k = k0; k < k0 + nk; k++) {
        int m, n;
        lin_shape(g, k, &m, &n);
        const halo_bf16 *ey = (const halo_bf16 *)dY + col;
        float *gk = G ? G + col * D : NULL;
        col += n;
        if (!defer && !f32 && k == k0 + nk - 1) {   // the last: the sum + its E_X rounded to bf16 into dX once
            PROF(g, PR_HALO_B, halo_check(halo_cuda_linear_backward_sum(hl_of(g, l, k), ey, ldy, (halo_bf16 *)dX,
                                                                        g->hacc, gk, halo_g_flag(g) | ey_flag |
                                                                        (g_stacked ? HALO_CUDA_G_GROUP : 0), N, D, n,
                                                                        g->st)));
            continue;
        }
        const int flags = halo_g_flag(g) | ey_flag | (k == k0 ? 0 : HALO_CUDA_EX_ADD) | (defer ? HALO_CUDA_EX_DEFER : 0) |
                          (grouped ? HALO_CUDA_EX_GROUP : 0) | (g_stacked ? HALO_CUDA_G_GROUP : 0);
        PROF(g, PR_HALO_B, halo_check(halo_cuda_linear_backward_flags(hl_of(g, l, k), ey, ldy, g->hacc, 1, gk, flags, N,
                                                                      D, n, g->st)));
    }
    if (grouped) PROF(g, PR_HALO_B, halo_check(halo_cuda_linear_ex_group_run(Ls, nk, g->hacc, 0, N, D, g->st)));
    if (g_stacked) PROF(g, PR_HALO_B, halo_check(halo_cuda_linear_g_group_run(Ls, nk, D, g->st)));
    if (defer)
        PROF(g, PR_HALO_B, halo_check(halo_cuda_linear_ex_finish(hl_of(g, l, k0), g->hacc, dX, 0, N, D, g->st)));
    if (f32) g->dnorm32 = g->hacc;
}

// Backward of linear `kind` (o or down): dX [N, m] (bf16, may be X's buffer: X is read first) from dY [N, n].
// Zeroes and returns the E_Y amax slot of HALO linear (l, kind), for the kernel that produces its E_Y; NULL when that
// linear is not HALO (or l < 0). *nf: the layer's E_Y non-finite flag (NULL with the slot), for that kernel to set.
static float *ey_amax_prepare(llama_cuda *g, int l, int kind, int **nf) {
    halo_cuda_linear *L = l >= 0 ? hl_of(g, l, kind) : NULL;
    *nf = L ? halo_cuda_linear_ey_nonfinite(L) : NULL;
    if (!L) return NULL;
    float *a = halo_cuda_linear_ey_amax(L);
    PROF(g, PR_MISC, CUDA_CHECK(cudaMemsetAsync(a, 0, sizeof(float), g->st)));
    return a;
}
static int ey_flag(const void *slot) { return slot ? HALO_CUDA_EY_AMAX : 0; }

// An RMSNorm backward (dres (+)= dx, the norm's weight gradient into dw) whose bf16 copy dres16 is HALO linear
// (l, kind)'s E_Y (o: the MLP norm's; down: the next layer's attention norm's, or the final norm's). Returns the flags
// for that linear's backward: with delayed scaling the norm writes the linear's E_Y codes into dres16's memory
// instead of the copy (HALO_CUDA_EY_CODES), else it takes the E_Y amax (HALO_CUDA_EY_AMAX) or, without a HALO
// linear there, only the copy (0).
static int norm_backward(llama_cuda *g, int l, int kind, float *dw, const float *x, size_t w_off, const float *rstd,
                         const float *res) {
    const int N = g->B * g->T, D = g->c.dim;
    const halo_bf16 *w = (const halo_bf16 *)g->w + w_off, *dout = (const halo_bf16 *)g->dnorm;
    const float *d32 = g->dnorm32;   // (read instead of dout when set)
    g->dnorm32 = NULL;
    uint8_t *q = (uint8_t *)g->dres16;   // [N][D] row-major codes, then [D][n16]
    const size_t n16 = (size_t)pad16l(N);
    cudaStream_t s = g->st;
    halo_cuda_linear *L = l >= 0 ? hl_of(g, l, kind) : NULL;
    halo_cuda_codes c;
    if (L && delayed_on(g) && cuda_rmsnorm_backward_codes_ok(D) && (size_t)N * D + D * n16 <= (size_t)g->N_max * D * 2 &&
        halo_cuda_linear_ey_codes(L, N, D, q, D, q + (size_t)N * D, 1, 1, &c, s)) {
        PROF(g, PR_NORM_B, cuda_rmsnorm_backward_codes(g->dres, dw, dout, d32, x, w, rstd, res, N, D, &c, s));
        return HALO_CUDA_EY_CODES;
    }
    int *nf;
    float *a = ey_amax_prepare(g, l, kind, &nf);
    PROF(g, PR_NORM_B, cuda_rmsnorm_backward_amax(g->dres, (halo_bf16 *)g->dres16, dw, dout, d32, x, w, rstd, res, N, D,
                                                  a, nf, s));
    return ey_flag(a);
}

// ey_flag: HALO_CUDA_EY_AMAX when dY's producer computed the layer's E_Y amax (ey_amax_prepare), else 0.
static void single_backward(llama_cuda *g, int l, int kind, bf16 *dX, const bf16 *dY, const bf16 *X, size_t w_off,
                            int ey_flag) {
    int N = g->B * g->T, m, n;
    lin_shape(g, kind, &m, &n);
    halo_cuda_linear *L = hl_of(g, l, kind);
    lora_backward_w_group(g, l, kind, 1, X, dY, n);   // LoRA: reads X before dX (which may be X's buffer) is written
    if (!L) {
        if (!g->lora) PROF(g, PR_MM_DW, dw(g, w_off, (const halo_bf16 *)dY, (const halo_bf16 *)X, N, m, n));
        PROF(g, PR_MM_DX, cuda_linear_backward_dx((halo_bf16 *)dX, (const halo_bf16 *)dY, (const halo_bf16 *)g->w + w_off,
                                                  N, m, n, g->st));
    } else {
        float *G = gradw(g, w_off);
        PROF(g, PR_HALO_B, halo_check(halo_cuda_linear_backward_flags(L, (const halo_bf16 *)dY, n, dX, 0, G,
                                                                      halo_g_flag(g) | ey_flag, N, m, n, g->st)));
    }
    lora_backward_dx_group(g, l, kind, 1, X, dX, NULL);
}

static int mlp_backward_codes(llama_cuda *g, int l, layer_acts *A);
static int qkv_backward_codes(llama_cuda *g, int l);
static void mlp_backward_bf16(llama_cuda *g, int l, layer_acts *A);
static void attn_backward(llama_cuda *g, int l, layer_acts *A);
static int g_ex_sw = -1;   // llama_cuda_ex_swiglu_amax_on / HALO_CUDA_EX_SWIGLU_AMAX (-1: not read yet)
extern "C" void llama_cuda_ex_swiglu_amax_on(int on) { g_ex_sw = on ? 1 : 0; }
extern "C" int llama_cuda_ex_swiglu_amax(void) { return env_switch_off(&g_ex_sw, "HALO_CUDA_EX_SWIGLU_AMAX"); }
// Whether mlp_backward_codes applies to layer l (gate's and up's E_Y codes written by the SwiGLU backward)
static int mlp_codes_apply(const llama_cuda *g, int l) {
    const int N = g->B * g->T, F = g->c.hidden_dim;
    return hl_of(g, l, LIN_GATE) && hl_of(g, l, LIN_UP) && !g->lora && !g->tele &&
           F % 64 == 0 && (size_t)N * 2 * F + 2 * F * (size_t)pad16l(N) <= dgu_bytes(g);
}
// The spec's scales with llama_cuda_ex_swiglu_amax on: gate's and up's E_Y amax slots zeroed and down_proj told to
// take them in its input-gradient product (the SwiGLU backward's amax-only pass is then skipped); returns down's
// layer (NULL: not set up)
static halo_cuda_linear *ex_swiglu_amax_setup(llama_cuda *g, int l, layer_acts *A) {
    halo_cuda_linear *Ld = hl_of(g, l, LIN_DOWN);
    if (!llama_cuda_ex_swiglu_amax() || !Ld || !mlp_codes_apply(g, l) || delayed_on(g)) return NULL;
    const int F = g->c.hidden_dim;
    int *nfg, *nfu;
    float *ag = ey_amax_prepare(g, l, LIN_GATE, &nfg), *au = ey_amax_prepare(g, l, LIN_UP, &nfu);
    const halo_cuda_swiglu_amax sw = {(const halo_bf16 *)A->gu, 2L * F, F, ag, au, nfg, nfu};
    halo_cuda_linear_ex_swiglu_amax(Ld, &sw);
    return Ld;
}

// Layer l backward: g->dres holds dL/dx[l + 1] on entry (fp32 and bf16 copy) and dL/dx[l] on return.
static void layer_backward(llama_cuda *g, int l, layer_acts *A) {
    int N = g->B * g->T, F = g->c.hidden_dim;
    const layer_offs *o = &g->L[l];
    halo_bf16 *dr16 = (halo_bf16 *)g->dres16;
    cudaStream_t s = g->st;
    // MLP: x[l+1] = h + down(silu(gate) * up)
    // down's input, for its BF16 weight gradient (HALO kept its codes; telemetry's G reference needs it too)
    if ((!hl_of(g, l, LIN_DOWN) && !g->lora) || g->tele || lora_on(g, l, LIN_DOWN))
        PROF(g, PR_SWIGLU_F, cuda_swiglu_forward((halo_bf16 *)g->sbuf, (halo_bf16 *)A->gu, N, F, s));   // recomputed
    // down's E_Y scale: from the norm backward that wrote dr16 (the next layer's attention norm, or the final norm)
    halo_cuda_linear *Ld = ex_swiglu_amax_setup(g, l, A);
    single_backward(g, l, LIN_DOWN, g->sbuf, (bf16 *)dr16, g->sbuf, o->wdown, g->down_ey);
    g->ex_sw_took = Ld && halo_cuda_linear_ex_swiglu_amax_done(Ld);
    if (Ld) halo_cuda_linear_ex_swiglu_amax(Ld, NULL);
    if (!mlp_backward_codes(g, l, A)) mlp_backward_bf16(g, l, A);
    attn_backward(g, l, A);
}

typedef int (*ey_codes_fn)(halo_cuda_linear *L, int b, int n, uint8_t *q, long ldq, uint8_t *qt, int want_ex,
                           int want_g, halo_cuda_codes *c, cudaStream_t s);
// gate's and up's codes in dgu's memory: [N][2F] row-major (gate's columns, then up's), then [2F][n16] transposed
static int gate_up_ey_codes(llama_cuda *g, int l, ey_codes_fn fill, halo_cuda_codes *cg, halo_cuda_codes *cu) {
    const int N = g->B * g->T, F = g->c.hidden_dim;
    uint8_t *q = (uint8_t *)g->dgu, *qt = q + (size_t)N * 2 * F;
    return fill(hl_of(g, l, LIN_GATE), N, F, q, 2L * F, qt, 1, 1, cg, g->st) &&
           fill(hl_of(g, l, LIN_UP), N, F, q + F, 2L * F, qt + (size_t)F * pad16l(N), 1, 1, cu, g->st);
}

// The SwiGLU backward writes gate's and up's E_Y codes (both layouts, in dgu's memory) and their products read them;
// 0 (nothing launched) where it does not apply (levels 0-1, no LoRA or telemetry). Delayed scaling: with the last
// call's scales. The spec's scales: an amax-only pass first (no bf16 E_Y stored), then the codes pass with them.
static int mlp_backward_codes(llama_cuda *g, int l, layer_acts *A) {
    const int N = g->B * g->T, F = g->c.hidden_dim;
    if (!mlp_codes_apply(g, l)) return 0;
    cudaStream_t s = g->st;
    halo_cuda_codes cg, cu;
    // (a layer that said yes to the delayed form falls back to the spec's by its next backward's flags)
    if (!(delayed_on(g) && gate_up_ey_codes(g, l, halo_cuda_linear_ey_codes, &cg, &cu))) {
        if (!gate_up_ey_codes(g, l, halo_cuda_linear_ey_codes_now, &cg, &cu)) return 0;
        if (!g->ex_sw_took) {   // (else down's input-gradient product took the amaxes: ex_swiglu_amax_setup)
            int *nfg, *nfu;
            float *ag = ey_amax_prepare(g, l, LIN_GATE, &nfg), *au = ey_amax_prepare(g, l, LIN_UP, &nfu);
            PROF(g, PR_SWIGLU_B, cuda_swiglu_backward_amax(NULL, (halo_bf16 *)g->sbuf, (halo_bf16 *)A->gu, N, F, ag,
                                                           au, nfg, nfu, s));
        }
    }
    PROF(g, PR_SWIGLU_B, cuda_swiglu_backward_codes((halo_bf16 *)g->sbuf, (halo_bf16 *)A->gu, N, F, &cg, &cu, s));
    group_backward(g, l, LIN_GATE, 2, g->dnorm, g->dgu, 2 * F, A->n2, g->L[l].wgu, HALO_CUDA_EY_CODES);
    return 1;
}

// Delayed scaling: the RoPE backward writes the q, k and v layers' E_Y codes (both layouts, in dgu's memory, free
// after gate's and up's products) from attention's dqkv; 0 (nothing launched) where it does not apply (q/k norms
// or a bias, which change or read dqkv; a layer without RoPE).
static int qkv_backward_codes(llama_cuda *g, int l) {
    const llama_config *c = &g->c;
    const int N = g->B * g->T, Hq = c->n_heads, Hkv = c->n_kv_heads, hd = c->head_dim, QKV = g->QKV;
    halo_cuda_linear *L[3] = {hl_of(g, l, LIN_Q), hl_of(g, l, LIN_K), hl_of(g, l, LIN_V)};
    const size_t n16 = (size_t)pad16l(N);
    if (!L[0] || !L[1] || !L[2] || !delayed_on(g) || c->qk_norm || (c->bias_kinds & BIAS_QKV) ||
        !llama_layer_rope(c, l) || !cuda_rope_codes_ok(Hq, Hkv, hd) || QKV != (Hq + 2 * Hkv) * hd ||
        (size_t)N * QKV + (size_t)QKV * n16 > dgu_bytes(g))
        return 0;
    cudaStream_t s = g->st;
    uint8_t *q = (uint8_t *)g->dgu, *qt = q + (size_t)N * QKV;   // [N][QKV] row-major, then [QKV][n16]
    halo_cuda_codes cs[3];
    const int col[3] = {0, Hq * hd, (Hq + Hkv) * hd}, n[3] = {Hq * hd, Hkv * hd, Hkv * hd};
    for (int u = 0; u < 3; u++)
        if (!halo_cuda_linear_ey_codes(L[u], N, n[u], q + col[u], QKV, qt + (size_t)col[u] * n16, 1, 1, &cs[u], s))
            return 0;
    PROF(g, PR_ROPE, cuda_rope_backward_codes((halo_bf16 *)g->dqkv, g->pos, g->cos_t, g->sin_t, N, Hq, Hkv, hd, &cs[0],
                                              &cs[1], &cs[2], s));
    return 1;
}

// The MLP's backward from down's input gradient (in sbuf) on: SwiGLU's bf16 gradient, then gate's and up's products.
static void mlp_backward_bf16(llama_cuda *g, int l, layer_acts *A) {
    const int N = g->B * g->T, F = g->c.hidden_dim;
    const layer_offs *o = &g->L[l];
    cudaStream_t s = g->st;
    // each kernel producing a HALO layer's E_Y also takes its amax (the layer then skips that pass)
    int *nfg, *nfu;
    float *ag = ey_amax_prepare(g, l, LIN_GATE, &nfg), *au = ey_amax_prepare(g, l, LIN_UP, &nfu);
    // level 2: and the token-rotated E_Y amax of each (the layers then skip that absmax pass too; not under LoRA: a
    // frozen base computes no G, whose codes that pass's replacement writes)
    float *rg = NULL, *ru = NULL;
    int *fg = NULL, *fu = NULL, lg = 0, lu = 0;
    float sg = 1.f, su = 1.f;
    const int eyr = ag && au && !g->lora && F % 64 == 0 &&
                    halo_cuda_linear_ey_rot_amax(hl_of(g, l, LIN_GATE), N, &lg, &sg, &rg, &fg) &&
                    halo_cuda_linear_ey_rot_amax(hl_of(g, l, LIN_UP), N, &lu, &su, &ru, &fu) && lg == lu && sg == su;
    if (eyr) {
        PROF(g, PR_MISC, CUDA_CHECK(cudaMemsetAsync(rg, 0, sizeof(float), s)));
        PROF(g, PR_MISC, CUDA_CHECK(cudaMemsetAsync(ru, 0, sizeof(float), s)));
        PROF(g, PR_SWIGLU_B, cuda_swiglu_backward_amax_tok((halo_bf16 *)g->dgu, (halo_bf16 *)g->sbuf, (halo_bf16 *)A->gu,
                                                           N, F, ag, au, rg, ru, fg, fu, lg, sg, s));
    } else if (ag && au) {
        PROF(g, PR_SWIGLU_B, cuda_swiglu_backward_amax((halo_bf16 *)g->dgu, (halo_bf16 *)g->sbuf, (halo_bf16 *)A->gu, N,
                                                       F, ag, au, nfg, nfu, s));
    } else {
        PROF(g, PR_SWIGLU_B, cuda_swiglu_backward((halo_bf16 *)g->dgu, (halo_bf16 *)g->sbuf, (halo_bf16 *)A->gu, N, F, s));
    }
    group_backward(g, l, LIN_GATE, 2, g->dnorm, g->dgu, 2 * F, A->n2, o->wgu,
                   (ag && au ? HALO_CUDA_EY_AMAX : 0) | (eyr ? HALO_CUDA_EYR_AMAX : 0));
}

// Layer l's backward from the MLP's input gradient (in dnorm) on: the ffn norm, attention, q, k, v, the attention norm.
static void attn_backward(llama_cuda *g, int l, layer_acts *A) {
    const llama_config *c = &g->c;
    int N = g->B * g->T, D = c->dim, Hq = c->n_heads, Hkv = c->n_kv_heads, hd = c->head_dim;
    const layer_offs *o = &g->L[l];
    halo_bf16 *W = (halo_bf16 *)g->w, *dr16 = (halo_bf16 *)g->dres16;
    cudaStream_t s = g->st;
    const int fo = norm_backward(g, l, LIN_O, gradw(g, o->ffn_norm), A->h, o->ffn_norm, A->r2, g->dres);
    // attention: h = x[l] + o_proj(attn(rope(q), rope(k), v))
    single_backward(g, l, LIN_O, g->datt, (bf16 *)dr16, A->att, o->wo, fo);
    PROF(g, PR_ATT_B, cuda_attention_backward((halo_bf16 *)g->dqkv, g->attn_scratch, (halo_bf16 *)g->datt,
                                              (halo_bf16 *)A->att, A->lse, (halo_bf16 *)A->qkv,
                                              g->has_seg ? g->seg : NULL, g->B, g->T, Hq, Hkv, hd, s));
    // delayed scaling: the RoPE backward writes the q, k and v layers' E_Y codes (dqkv stays as attention wrote it)
    const int qkv_codes = qkv_backward_codes(g, l);
    int *nfq = NULL, *nfk = NULL, *nfv = NULL;
    float *aq = NULL, *ak = NULL, *av = NULL;
    if (!qkv_codes) {
        aq = ey_amax_prepare(g, l, LIN_Q, &nfq);
        ak = ey_amax_prepare(g, l, LIN_K, &nfk);
        av = ey_amax_prepare(g, l, LIN_V, &nfv);
    }
    // q, k, v E_Y scales from the RoPE backward (all three run HALO or none; not under q/k norms, whose backward
    // changes dq, dk after it)
    const int rope = llama_layer_rope(c, l) && !qkv_codes, qkv_amax = aq && ak && av && !c->qk_norm && rope;
    if (qkv_amax)
        PROF(g, PR_ROPE, cuda_rope_backward_amax((halo_bf16 *)g->dqkv, g->pos, g->cos_t, g->sin_t, N, Hq, Hkv, hd, aq, ak,
                                                 av, nfq, nfk, nfv, s));
    else if (rope)
        PROF(g, PR_ROPE, cuda_rope_backward((halo_bf16 *)g->dqkv, g->QKV, g->pos, g->cos_t, g->sin_t, N, Hq + Hkv, hd, s));
    if (c->qk_norm)
        PROF(g, PR_NORM_B, cuda_head_rmsnorm_backward((halo_bf16 *)g->dqkv, g->QKV, (const halo_bf16 *)A->qk_raw,
                                                      A->qk_rstd, W + o->q_norm, W + o->k_norm, gradw(g, o->q_norm),
                                                      gradw(g, o->k_norm), N, Hq, Hkv, hd, s));
    if ((c->bias_kinds & BIAS_QKV) && gradw(g, o->bqkv))
        PROF(g, PR_MM_DW, cuda_bias_grad(gradw(g, o->bqkv), (const halo_bf16 *)g->dqkv, g->QKV, N, g->QKV, s));
    if (norm_recompute(g, l, LIN_Q))   // n1 for the q, k, v weight gradients or telemetry (nbuf held n2)
        PROF(g, PR_NORM_R, cuda_rmsnorm_recompute((halo_bf16 *)A->n1, A->r1, g->x[l], W + o->attn_norm, N, D, s));
    group_backward(g, l, LIN_Q, 3, g->dnorm, g->dqkv, g->QKV, A->n1, o->wqkv,
                   qkv_codes ? HALO_CUDA_EY_CODES : qkv_amax ? HALO_CUDA_EY_AMAX : 0);
    // dr16 is the previous layer's down_proj E_Y
    g->down_ey = norm_backward(g, l - 1, LIN_DOWN, gradw(g, o->attn_norm), g->x[l], o->attn_norm, A->r1, g->dres);
}

// Forward through the final norm, then lm_head + cross-entropy chunk by chunk (with the lm_head backward of each
// chunk when training, so one chunk of logits exists at a time). Loss sum goes to g->loss_sum.
static void forward_and_head(llama_cuda *g, const halo_batch *b, float grad_scale, int train, float *logits_host) {
    const llama_config *c = &g->c;
    int count = upload_batch(g, b);
    g->last_count = count;
    int N = b->B * b->T, D = c->dim, V = c->vocab_size;
    halo_bf16 *W = (halo_bf16 *)g->w;
    cudaStream_t s = g->st;
    CUDA_CHECK(cudaMemsetAsync(g->loss_sum, 0, sizeof(double), s));
    PROF(g, PR_EMBED, cuda_embedding_forward(g->x[0], g->ids, W + g->embed, N, D, s));
    for (int l = 0; l < c->n_layers; l++) layer_forward(g, l, acts_for(g, l), 1);
    PROF(g, PR_NORM_F, cuda_rmsnorm_forward((halo_bf16 *)g->nf, g->rf, g->x[c->n_layers], W + g->final_norm, N, D,
                                            c->norm_eps, s));
    float scale = count ? grad_scale / count : 0.f;
    for (int c0 = 0; c0 < N; c0 += g->ce_chunk) {
        int nc = N - c0 < g->ce_chunk ? N - c0 : g->ce_chunk;
        halo_bf16 *xc = (halo_bf16 *)g->nf + (size_t)c0 * D;
        PROF(g, PR_LM_F, cuda_linear_forward(g->logits, 0, xc, W + g->lm_head, NULL, nc, D, V, s));
        if (logits_host) {   // tests and evaluation: bf16 chunk to fp32 on the host
            halo_bf16 *tmp = (halo_bf16 *)xmalloc((size_t)nc * V * 2);
            CUDA_CHECK(cudaMemcpyAsync(tmp, g->logits, (size_t)nc * V * 2, cudaMemcpyDeviceToHost, s));
            CUDA_CHECK(cudaStreamSynchronize(s));
            cuda_bf16_to_f32_host(logits_host + (size_t)c0 * V, tmp, (size_t)nc * V);
            free(tmp);
        }
        PROF(g, PR_XENT, cuda_cross_entropy(train ? (halo_bf16 *)g->logits : NULL, g->loss_sum, (halo_bf16 *)g->logits,
                                            g->tgt + c0, nc, V, scale, s));
        if (!train) continue;
        PROF(g, PR_LM_B, cuda_linear_backward_dx((halo_bf16 *)g->dnorm + (size_t)c0 * D, (halo_bf16 *)g->logits,
                                                 W + g->lm_head, nc, D, V, s));
        if (g->lora) continue;   // a frozen lm_head
        prof_mark(g, PR_LM_B);
        // tied: the embedding range was zeroed; untied: the first chunk may overwrite
        dw_at(g, g->lm_head, c0 == 0 && g->grads_fresh && !c->tie_embeddings, (halo_bf16 *)g->logits, xc, nc, D, V);
        prof_mark(g, PR_LM_B);
    }
}

extern "C" float llama_cuda_forward(llama_cuda *g, const halo_batch *b, float *logits_host) {
    forward_and_head(g, b, 0.f, 0, logits_host);
    return llama_cuda_last_loss(g);
}

static int g_gss_on = -1;   // llama_cuda_g_sumsq_on / HALO_G_SUMSQ (-1: not read yet; off until measured on a GPU)
extern "C" void llama_cuda_g_sumsq_on(int on) { g_gss_on = on ? 1 : 0; }
extern "C" int llama_cuda_g_sumsq(void) { return env_switch_off(&g_gss_on, "HALO_G_SUMSQ"); }
static int g_sumsq_applies(const llama_cuda *g) {
    return g->hon && g->gcov && !g->lora && !g->gbase && !g->sh && llama_cuda_g_sumsq();
}
// Before a backward: the sum zeroed and each HALO layer told where to add (or not to, when it does not apply)
static void g_sumsq_begin(llama_cuda *g) {
    g->gcov_any = 0;
    if (!g->hon) return;
    const int on = g_sumsq_applies(g);
    if (on) CUDA_CHECK(cudaMemsetAsync(g->gss, 0, sizeof(double), g->st));
    for (int i = 0; i < g->c.n_layers * LIN_COUNT; i++)
        if (g->hon[i]) halo_cuda_linear_g_sumsq(&g->hl[i], on ? g->gss : NULL);
}
// After it: which slots' squares are in the sum (their product added them, and the slot is that whole matrix)
static void g_sumsq_end(llama_cuda *g) {
    if (!g_sumsq_applies(g)) return;
    for (int i = 0; i < g->c.n_layers * LIN_COUNT; i++) {
        int m = 0, n = 0;
        if (g->hon[i]) lin_shape(g, i % LIN_COUNT, &m, &n);
        g->gcov[i] = g->hon[i] && halo_cuda_linear_g_sumsq_added(&g->hl[i]) && g->slots[i].n == (size_t)m * n;
        g->gcov_any |= g->gcov[i];
    }
}
extern "C" size_t llama_cuda_g_sumsq_covered(const llama_cuda *g) {
    size_t n = 0;
    for (int i = 0; g->gcov_any && i < g->c.n_layers * LIN_COUNT; i++) n += g->gcov[i] ? g->slots[i].n : 0;
    return n;
}
// The uncovered ranges of [0, n_all) uploaded for the covered set gcov (when it changed)
static void g_sumsq_ranges(llama_cuda *g) {
    const int nlin = g->c.n_layers * LIN_COUNT;
    if (g->gss_nr >= 0 && !memcmp(g->gss_up, g->gcov, (size_t)nlin)) return;
    size_t *off = (size_t *)xmalloc((size_t)nlin * 2 * sizeof(size_t)), *len = off + nlin;
    int nc = 0;
    for (int i = 0; i < nlin; i++)
        if (g->gcov[i]) { off[nc] = g->slots[i].off; len[nc] = g->slots[i].n; nc++; }
    unsigned long long *rg = (unsigned long long *)xmalloc((size_t)(nc + 1) * 2 * sizeof(unsigned long long));
    const int nr = ranges_gaps(off, len, nc, g->n_all, rg, &g->gss_len);
    if (nr > 0)
        CUDA_CHECK(cudaMemcpyAsync(g->gss_rg, rg, (size_t)nr * 2 * sizeof(unsigned long long),
                                   cudaMemcpyHostToDevice, g->st));
    CUDA_CHECK(cudaStreamSynchronize(g->st));   // rg is freed next
    free(rg);
    free(off);
    memcpy(g->gss_up, g->gcov, (size_t)nlin);
    g->gss_nr = nr;
}

extern "C" void llama_cuda_forward_backward(llama_cuda *g, const halo_batch *b, float grad_scale) {
    const llama_config *c = &g->c;
    forward_and_head(g, b, grad_scale, 1, NULL);
    int N = b->B * b->T, D = c->dim;
    cudaStream_t s = g->st;
    g_sumsq_begin(g);
    halo_bf16 *W = (halo_bf16 *)g->w;
    // the last down_proj's E_Y (scale, or codes)
    g->dnorm32 = NULL;   // (lm_head's input gradient is in dnorm)
    g->down_ey = norm_backward(g, c->n_layers - 1, LIN_DOWN, gradw(g, g->final_norm), g->x[c->n_layers],
                               g->final_norm, g->rf, NULL);
    for (int l = c->n_layers - 1; l >= 0; l--) {
        layer_acts *A = acts_for(g, l);
        if (g->o.recompute == 1) layer_forward(g, l, A, 0);
        if (norm_recompute(g, l, LIN_GATE))   // n2 for the gate/up products (recomputed or not), their weight
                                              // gradients or telemetry
            PROF(g, PR_NORM_R, cuda_rmsnorm_recompute((halo_bf16 *)A->n2, A->r2, A->h, W + g->L[l].ffn_norm, N, D, s));
        if (g->o.recompute == 2)   // the shared [gate | up] buffer holds the last layer's: recompute this one's
            group_forward(g, l, LIN_GATE, 2, A->gu, 2 * c->hidden_dim, A->n2, g->L[l].wgu, 0);
        layer_backward(g, l, A);
    }
    if (!g->lora)
        PROF(g, PR_EMBED, cuda_embedding_backward(gradf(g, g->embed), g->ids, g->dres, N, D,
                                                  llama_embed_skip_id(&g->c), s));
    g->grads_fresh = 0;
    g_sumsq_end(g);
}

extern "C" float llama_cuda_last_loss(llama_cuda *g) {
    double sum = 0;
    CUDA_CHECK(cudaMemcpyAsync(&sum, g->loss_sum, sizeof sum, cudaMemcpyDeviceToHost, g->st));
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    if (g->prof) { prof_collect(g); g->prof_steps++; }
    return g->last_count ? (float)(sum / g->last_count) : 0.f;
}

// Zeroes the ranges that are accumulated into (embedding, norms: atomics); the matrices' first products overwrite.
extern "C" void llama_cuda_zero_grads(llama_cuda *g) {
    if (g->lora) PROF(g, PR_MISC, CUDA_CHECK(cudaMemsetAsync(g->lg, 0, g->ln_all * 4, g->st)));   // all accumulated
    else PROF(g, PR_MISC, CUDA_CHECK(cudaMemsetAsync(gradf(g, g->embed), 0, (g->n_all - g->embed) * 4, g->st)));
    if (g->hnf) {   // a new step: the X and E_Y flags start clear (W's go with the weights: weights_changed)
        const size_t n = (size_t)g->c.n_layers * LIN_COUNT;
        PROF(g, PR_MISC, CUDA_CHECK(cudaMemset2DAsync(g->hnf, 3 * sizeof(int), 0, sizeof(int), n, g->st)));
        PROF(g, PR_MISC, CUDA_CHECK(cudaMemset2DAsync(g->hnf + 2, 3 * sizeof(int), 0, sizeof(int), n, g->st)));
    }
    g->grads_fresh = 1;
    g->gcov_any = 0;
}

extern "C" const char *llama_cuda_halo_error(llama_cuda *g) {
    if (!g->hnf) return NULL;
    const int n = g->c.n_layers * LIN_COUNT;
    int *f = (int *)xmalloc((size_t)n * 3 * sizeof(int));
    CUDA_CHECK(cudaMemcpyAsync(f, g->hnf, (size_t)n * 3 * sizeof(int), cudaMemcpyDeviceToHost, g->st));
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    int found = 0;
    size_t len = 0;
    g->hnf_msg[0] = 0;
    // in the order the step met them, so the first named is the likely source: X and W in the forward's order of the
    // linears, then E_Y in the backward's (a NaN weight's product spreads NaN through every later E_Y)
    for (int r = 0; r < 2 * n; r++) {
        const int i = r < n ? r : 2 * n - 1 - r;
        for (int t = r < n ? 0 : 2; t < (r < n ? 2 : 3); t++) {
            if (!g->hon[i] || !f[3 * i + t]) continue;
            if (found++ < 3 && len < sizeof g->hnf_msg)
                len += snprintf(g->hnf_msg + len, sizeof g->hnf_msg - len, "%s%s: a NaN or Inf in %s", found > 1 ? "; " : "",
                                g->hl[i].name, halo_cuda_nonfinite_what(t));
        }
    }
    if (found > 3 && len < sizeof g->hnf_msg)
        snprintf(g->hnf_msg + len, sizeof g->hnf_msg - len, "; and %d more", found - 3);
    free(f);
    return found ? g->hnf_msg : NULL;
}

// Makes every gradient valid when no backward ran since zero_grads.
static void grads_settle(llama_cuda *g) {
    if (!g->grads_fresh) return;
    if (g->lora) { g->grads_fresh = 0; return; }   // zero_grads zeroed every adapter gradient
    CUDA_CHECK(cudaMemsetAsync(g->grad, 0, (g->n_all - g->gbase) * 4, g->st));
    if (g->grad16) CUDA_CHECK(cudaMemsetAsync(g->grad16, 0, g->gbase * 2, g->st));
    g->grads_fresh = 0;
}

// *g->sumsq = sum of squared gradients (both types)
static void grad_sumsq(llama_cuda *g) {
    if (!g->lora && !g->grads_fresh && g->gcov_any && g_sumsq_applies(g)) {   // the products' sum + the rest
        g_sumsq_ranges(g);
        CUDA_CHECK(cudaMemcpyAsync(g->sumsq, g->gss, sizeof(double), cudaMemcpyDeviceToDevice, g->st));
        cuda_sumsq_ranges(g->sumsq, g->grad, g->gss_rg, g->gss_nr, g->gss_len, g->st);
        return;
    }
    CUDA_CHECK(cudaMemsetAsync(g->sumsq, 0, sizeof(double), g->st));
    if (g->lora) { cuda_sumsq(g->sumsq, g->lg, g->ln_all, g->st); return; }   // the adapters' only
    if (g->gbase) cuda_sumsq_bf16(g->sumsq, (const halo_bf16 *)g->grad16, g->gbase, g->st);
    cuda_sumsq(g->sumsq, g->grad, g->n_all - g->gbase, g->st);
}

// The one-launch update with the HALO layers' W amax (cuda_adamw_segments): HALO on, the whole buffer's moments on
// this GPU (not sharded), fp32 gradients, not LoRA, and at least one layer that takes it (halo_cuda_linear_w_amax).
// Builds the segment table (one per slot: the first 7 per block are q, k, v, o, gate, up, down, layout_build's order)
// for this decay and delayed-scaling setting when it changed (delayed scaling: the update also writes W's codes where
// the layer takes them, halo_cuda_linear_w_codes); 0 when this update does not apply.
static int adamw_segments_apply(const llama_cuda *g) {
    return g->hnf && !g->sh && !g->lora && !g->gbase && !g->mo_lo && g->mo_hi == g->n_all;
}
static int adamw_segments_ready(llama_cuda *g, int decay_all) {
    if (!adamw_segments_apply(g)) return 0;
    const int key = decay_all | delayed_on(g) << 1;   // (delayed scaling: the update writes W codes)
    if (g->aseg_key == key) return g->aseg_chunks > 0;
    const int nlin = g->c.n_layers * LIN_COUNT;
    cuda_adamw_seg *t = (cuda_adamw_seg *)xcalloc((size_t)g->n_slots, sizeof(cuda_adamw_seg));
    unsigned char *wam = (unsigned char *)xcalloc((size_t)nlin, 1);
    unsigned chunks = 0;
    int any = 0;
    for (int i = 0; i < g->n_slots; i++) {
        cuda_adamw_seg *sg = &t[i];
        sg->off = g->slots[i].off;
        sg->n = g->slots[i].n;
        sg->decay = decay_all || g->slots[i].decay;
        sg->rot_scale = 1.f;
        sg->first_chunk = chunks;
        chunks += (unsigned)((sg->n + 8191) / 8192);
        halo_cuda_linear *L = i < nlin ? hl_of(g, i / LIN_COUNT, i % LIN_COUNT) : NULL;
        int m, n;
        lin_shape(g, i % LIN_COUNT, &m, &n);
        if (L && sg->n == (size_t)m * n && halo_cuda_linear_w_amax(L, m, &sg->amax, &sg->rot_lb, &sg->rot_scale)) {
            sg->nf = g->hnf + 3 * i + 1;   // its W flag
            wam[i] = 1;
            any = 1;
            if (delayed_on(g) && !sg->rot_lb &&
                halo_cuda_linear_w_codes(L, m, n, &sg->q, &sg->fmt, &sg->code_amax)) {
                wam[i] = 2;
            }
        }
    }
    g->aseg_key = key;
    g->aseg_chunks = any ? cuda_adamw_seg_check(t, g->n_slots) : 0;
    if (g->aseg_chunks) {
        memcpy(g->hwam, wam, (size_t)nlin);
        CUDA_CHECK(cudaMemcpyAsync(g->aseg, t, (size_t)g->n_slots * sizeof(cuda_adamw_seg), cudaMemcpyHostToDevice,
                                   g->st));
        CUDA_CHECK(cudaStreamSynchronize(g->st));   // t is freed next
    }
    free(t);
    free(wam);
    return g->aseg_chunks > 0;
}

extern "C" int llama_cuda_adamw_step(llama_cuda *g, const llama_cuda_adamw *h, int step) {
    cudaStream_t s = g->st;
    grads_settle(g);
    const double *sumsq = NULL;
    if (h->grad_clip > 0) {
        PROF(g, PR_NORMSQ, grad_sumsq(g));
        sumsq = g->sumsq;
    }
    if (g->lora) {   // the adapters (lora.c's table has no no-decay tensor: all decay, as the CPU trainer's AdamW)
        PROF(g, PR_ADAMW, cuda_adamw(g->lp, (halo_bf16 *)g->lw, g->lg, 0, g->lm, g->lv, 0, g->ln_all, h->lr, h->beta1,
                                     h->beta2, h->eps, h->weight_decay, step, sumsq, h->grad_clip, s));
        return HALO_OK;
    }
    if (adamw_segments_ready(g, h->decay_all != 0)) {   // every slot in one launch, and the HALO layers' W amax
        weights_changed(g, g->hwam);
        PROF(g, PR_ADAMW, cuda_adamw_segments(g->master, (halo_bf16 *)g->w, g->grad, g->m, g->v, g->o.bf16_moments,
                                              g->aseg, g->n_slots, g->aseg_chunks, h->lr, h->beta1, h->beta2, h->eps,
                                              h->weight_decay, step, sumsq, h->grad_clip, s));
        return HALO_OK;
    }
    weights_changed(g, NULL);
    size_t msz = g->o.bf16_moments ? 2 : 4;
    // one launch per run of slots sharing a decay setting and gradient type (padding between slots is zero and stays
    // zero), clipped to the range whose moments this model holds (all of it unless sharded)
    for (int i = 0; i < g->n_slots;) {
        int decay = h->decay_all || g->slots[i].decay, j = i + 1, g16 = g->slots[i].off < g->gbase;
        while (j < g->n_slots && (h->decay_all || g->slots[j].decay) == decay && (g->slots[j].off < g->gbase) == g16)
            j++;
        size_t off = g->slots[i].off, end = g->slots[j - 1].off + g->slots[j - 1].n;
        i = j;
        if (off < g->mo_lo) off = g->mo_lo;
        if (end > g->mo_hi) end = g->mo_hi;
        if (off >= end) continue;
        const void *gr = g16 ? (const void *)(g->grad16 + off) : (const void *)gradf(g, off);
        const size_t mo = (off - g->mo_lo) * msz;
        PROF(g, PR_ADAMW, cuda_adamw(g->master + off, (halo_bf16 *)g->w + off, gr, g16, (char *)g->m + mo,
                                     (char *)g->v + mo, g->o.bf16_moments, end - off, h->lr, h->beta1, h->beta2, h->eps,
                                     decay ? h->weight_decay : 0.f, step, sumsq, h->grad_clip, s));
    }
    if (!g->sh) return HALO_OK;
    // every rank's updated piece of the master, in place (rank r's piece is at r P), then the bf16 copy of the pieces
    // the other ranks updated: the same conversion (round to nearest even) as AdamW's, so every rank's bf16 weights
    // are bit-identical
    const size_t P = g->mo_len;
    if (g->sh->allgather(g->sh, g->master + (size_t)g->sh->rank * P, g->master, P * 4) != HALO_OK)
        return halo_fail_ctx("sharded AdamW, rank %d of %d: gathering the updated weights: ", g->sh->rank,
                             g->sh->world);
    if (g->mo_lo > 0) PROF(g, PR_ADAMW, cuda_f32_to_bf16((halo_bf16 *)g->w, g->master, g->mo_lo, s));
    if (g->mo_hi < g->n_all)
        PROF(g, PR_ADAMW, cuda_f32_to_bf16((halo_bf16 *)g->w + g->mo_hi, g->master + g->mo_hi, g->n_all - g->mo_hi, s));
    return HALO_OK;
}

extern "C" float llama_cuda_train_step(llama_cuda *g, const halo_batch *b, const llama_cuda_adamw *h, int step) {
    llama_cuda_zero_grads(g);
    llama_cuda_forward_backward(g, b, 1.f);
    llama_cuda_adamw_step(g, h, step);   // one model: nothing to gather, nothing fails
    return llama_cuda_last_loss(g);
}

extern "C" cudaStream_t llama_cuda_stream(const llama_cuda *g) { return g->st; }

// Sums over the ranks: the fp32 gradient buffer whole (the padding between slots is zero on every rank and sums to
// zero), the bf16 one through an fp32 chunk (one rounding to bf16 of the fp32 sum, as a bf16 accumulation on one GPU),
// or the adapters' buffer. Everything is enqueued on g->st, which must be the stream comm enqueues on.
extern "C" int llama_cuda_allreduce_grads(llama_cuda *g, halo_comm *comm) {
    if (!comm || comm->world <= 1) return HALO_OK;
    grads_settle(g);   // no backward since zero_grads: the matrices' gradients are zeroed first
    g->gcov_any = 0;   // the products' squares were of this rank's gradients: the norm reads them all
    if (g->lora) return comm->allreduce(comm, g->lg, g->ln_all, HALO_F32, HALO_SUM);
    if (g->grad16) {
        const size_t chunk_max = (size_t)1 << 24;   // 64 MiB of fp32
        if (!g->ar_tmp) {
            g->ar_cap = g->gbase < chunk_max ? g->gbase : chunk_max;
            if (cudaMalloc((void **)&g->ar_tmp, g->ar_cap * 4) != cudaSuccess) {
                cudaGetLastError();
                g->ar_tmp = NULL;
                return halo_fail("CUDA gradient all-reduce: out of device memory for its %.0f MiB bf16 staging buffer",
                                 g->ar_cap * 4 / 1048576.0);
            }
            g->bytes[MEM_WORK] += g->ar_cap * 4;
        }
        for (size_t off = 0; off < g->gbase; off += g->ar_cap) {
            const size_t n = g->gbase - off < g->ar_cap ? g->gbase - off : g->ar_cap;
            halo_bf16 *part = (halo_bf16 *)g->grad16 + off;
            cuda_bf16_to_f32(g->ar_tmp, part, n, g->st);
            if (comm->allreduce(comm, g->ar_tmp, n, HALO_F32, HALO_SUM) != HALO_OK) return HALO_ERR;
            cuda_f32_to_bf16(part, g->ar_tmp, n, g->st);
        }
    }
    return comm->allreduce(comm, g->grad, g->n_all - g->gbase, HALO_F32, HALO_SUM);
}

extern "C" double llama_cuda_grad_norm(llama_cuda *g) {
    double ss = 0;
    grads_settle(g);
    grad_sumsq(g);
    CUDA_CHECK(cudaMemcpyAsync(&ss, g->sumsq, sizeof ss, cudaMemcpyDeviceToHost, g->st));
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    return sqrt(ss);
}

// Host layout: the host model's flat buffer (slot.host_off); device padding between slots is never copied.
static int check_host_map(const llama_cuda *g, const llama_model *host, const char *what) {
    if (host->n_params != g->n_true)
        return halo_fail("CUDA %s: host model has %zu parameters, device %zu", what, host->n_params, g->n_true);
    for (int i = 0; i < g->n_slots; i++)
        if (g->slots[i].host_off < 0) return halo_fail("CUDA %s: device model was not made from a host model", what);
    return HALO_OK;
}

// Device fp32 buffer src (device layout) into dst[host n_params] slot by slot; the stream is idle.
static void slots_down(const llama_cuda *g, float *dst, const float *src) {
    for (int i = 0; i < g->n_slots; i++)
        CUDA_CHECK(cudaMemcpy(dst + g->slots[i].host_off, src + g->slots[i].off, g->slots[i].n * 4,
                              cudaMemcpyDeviceToHost));
}

static int copy_back(llama_cuda *g, float *dst, const float *src, const llama_model *host) {
    if (check_host_map(g, host, "copy-back") != HALO_OK) return HALO_ERR;
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    slots_down(g, dst, src);
    return HALO_OK;
}

extern "C" int llama_cuda_copy_params(llama_cuda *g, llama_model *host) {
    if (g->lora)   // the adapters; the frozen base is the host's already
        return lora_copy_back(g, host, "copy-back", llama_trainable_params(host).params, g->lp, NULL, NULL);
    return copy_back(g, host->params, g->master, host);
}

extern "C" int llama_cuda_copy_grads(llama_cuda *g, llama_model *host) {
    if (g->lora)   // the adapters' gradients
        return lora_copy_back(g, host, "gradient copy-back", llama_trainable_params(host).grads, g->lg, NULL, NULL);
    if (!host->grads) llama_alloc_grads(host);
    grads_settle(g);
    if (check_host_map(g, host, "gradient copy-back") != HALO_OK) return HALO_ERR;
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    halo_bf16 *tmp = g->gbase ? (halo_bf16 *)xmalloc(g->gbase * 2) : NULL;
    if (tmp) CUDA_CHECK(cudaMemcpy(tmp, g->grad16, g->gbase * 2, cudaMemcpyDeviceToHost));
    for (int i = 0; i < g->n_slots; i++) {
        const dev_slot *sl = &g->slots[i];
        if (sl->off < g->gbase) cuda_bf16_to_f32_host(host->grads + sl->host_off, tmp + sl->off, sl->n);
        else CUDA_CHECK(cudaMemcpy(host->grads + sl->host_off, gradf(g, sl->off), sl->n * 4, cudaMemcpyDeviceToHost));
    }
    free(tmp);
    return HALO_OK;
}

// ---- training state to and from the host (checkpoints, resume) ----
// One device moment buffer (fp32, or bf16 widened exactly to fp32) into dst[host n_params]. The stream is idle.
static void moment_down(const llama_cuda *g, float *dst, const void *src) {
    if (!g->o.bf16_moments) { slots_down(g, dst, (const float *)src); return; }
    halo_bf16 *tmp = (halo_bf16 *)xmalloc(g->n_all * 2);
    CUDA_CHECK(cudaMemcpy(tmp, src, g->n_all * 2, cudaMemcpyDeviceToHost));
    for (int i = 0; i < g->n_slots; i++)
        cuda_bf16_to_f32_host(dst + g->slots[i].host_off, tmp + g->slots[i].off, g->slots[i].n);
    free(tmp);
}

// Sharded: every rank's piece of one moment buffer into dst[host n_params] (NULL: this rank only takes part), chunk
// k of every piece per all-gather through the device stage; the host waits on comm's barrier (with its timeout)
// before reading each chunk. Collective.
static int moment_gather(llama_cuda *g, float *dst, const void *src) {
    const size_t msz = g->o.bf16_moments ? 2 : 4, P = g->mo_len, W = (size_t)g->sh->world;
    size_t chunk = SH_STAGE_BYTES / msz / W;
    if (chunk > P) chunk = P;
    char *all = dst ? (char *)xmalloc(g->n_mast * msz) : NULL;   // device layout, every rank's piece
    int rc = HALO_OK;
    for (size_t co = 0; co < P && rc == HALO_OK; co += chunk) {
        const size_t cnt = P - co < chunk ? P - co : chunk;
        rc = g->sh->allgather(g->sh, (const char *)src + co * msz, g->sh_stage, cnt * msz);
        if (rc == HALO_OK) rc = g->sh->barrier(g->sh);
        for (size_t r = 0; all && rc == HALO_OK && r < W; r++)
            CUDA_CHECK(cudaMemcpy(all + (r * P + co) * msz, (const char *)g->sh_stage + r * cnt * msz, cnt * msz,
                                  cudaMemcpyDeviceToHost));
    }
    for (int i = 0; all && rc == HALO_OK && i < g->n_slots; i++) {
        const dev_slot *s = &g->slots[i];
        if (msz == 2) cuda_bf16_to_f32_host(dst + s->host_off, (const halo_bf16 *)all + s->off, s->n);
        else memcpy(dst + s->host_off, (const float *)all + s->off, s->n * 4);
    }
    free(all);
    return rc;
}

extern "C" int llama_cuda_copy_moments(llama_cuda *g, const llama_model *host, float *m_host, float *v_host) {
    if (g->lora)   // the adapters' moments, in llama_trainable_params' layout (the trainer's adamw_state)
        return lora_copy_back(g, host, "moment copy-back", m_host, g->lm, v_host, g->lv);
    if (check_host_map(g, host, "moment copy-back") != HALO_OK) return HALO_ERR;
    if (g->sh) {   // collective: a rank that refused above would leave the others waiting (same model on every rank)
        if (moment_gather(g, m_host, g->m) != HALO_OK || moment_gather(g, v_host, g->v) != HALO_OK)
            return halo_fail_ctx("gathering the sharded AdamW moments (rank %d of %d): ", g->sh->rank, g->sh->world);
        return HALO_OK;
    }
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    if (m_host) moment_down(g, m_host, g->m);
    if (v_host) moment_down(g, v_host, g->v);
    return HALO_OK;
}

// src[host n_params] fp32 (NULL: zeros) into one device moment buffer (fp32, or bf16 rounded to nearest even): the
// part of each tensor inside [mo_lo, mo_hi) (all of it unless sharded). Copies are queued on the stream from `stage`
// (mo_len elements of the device type), which the caller keeps until the stream is synchronized.
static void moment_up(llama_cuda *g, void *dst, const float *src, void *stage) {
    size_t msz = g->o.bf16_moments ? 2 : 4;
    if (!src) { CUDA_CHECK(cudaMemsetAsync(dst, 0, g->mo_len * msz, g->st)); return; }
    for (int i = 0; i < g->n_slots; i++) {
        const dev_slot *s = &g->slots[i];
        const size_t a = s->off > g->mo_lo ? s->off : g->mo_lo, b = s->off + s->n < g->mo_hi ? s->off + s->n : g->mo_hi;
        if (a >= b) continue;
        const float *from = src + s->host_off + (a - s->off);
        const size_t at = a - g->mo_lo;
        if (g->o.bf16_moments) cuda_f32_to_bf16_host((halo_bf16 *)stage + at, from, b - a);
        else memcpy((float *)stage + at, from, (b - a) * 4);
        CUDA_CHECK(cudaMemcpyAsync((char *)dst + at * msz, (char *)stage + at * msz, (b - a) * msz,
                                   cudaMemcpyHostToDevice, g->st));
    }
}

extern "C" int llama_cuda_upload_state(llama_cuda *g, const llama_model *host, const float *m_host,
                                       const float *v_host) {
    if (g->lora) {   // the adapters and their moments; the frozen base was uploaded at init
        if (lora_check_host(g, host, "state upload") != HALO_OK) return HALO_ERR;
        CUDA_CHECK(cudaStreamSynchronize(g->st));
        lora_up(g, g->lm, m_host);
        lora_up(g, g->lv, v_host);
        lora_upload(g, host);
        return HALO_OK;
    }
    if (check_host_map(g, host, "state upload") != HALO_OK) return HALO_ERR;
    size_t msz = g->o.bf16_moments ? 2 : 4;
    void *stage_m = xmalloc(g->mo_len * msz), *stage_v = xmalloc(g->mo_len * msz);
    CUDA_CHECK(cudaStreamSynchronize(g->st));   // no step still reads the buffers replaced here
    weights_changed(g, NULL);
    for (int i = 0; i < g->n_slots; i++)
        CUDA_CHECK(cudaMemcpyAsync(g->master + g->slots[i].off, host->params + g->slots[i].host_off,
                                   g->slots[i].n * 4, cudaMemcpyHostToDevice, g->st));
    cuda_f32_to_bf16((halo_bf16 *)g->w, g->master, g->n_all, g->st);
    moment_up(g, g->m, m_host, stage_m);
    moment_up(g, g->v, v_host, stage_v);
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    free(stage_m); free(stage_v);
    return HALO_OK;
}

// ---- weights for the KV-cache decoder (decode.cu) ----
extern "C" void llama_cuda_weights(llama_cuda *g, llama_cuda_weight_ptrs *out) {
    const halo_bf16 *W = (const halo_bf16 *)g->w;
    out->cfg = g->c;
    out->embed = W + g->embed;
    out->lm_head = W + g->lm_head;
    out->final_norm = W + g->final_norm;
    out->layers = (llama_cuda_layer_ptrs *)xcalloc((size_t)g->c.n_layers, sizeof(llama_cuda_layer_ptrs));
    for (int l = 0; l < g->c.n_layers; l++) {
        const layer_offs *o = &g->L[l];
        out->layers[l] = (llama_cuda_layer_ptrs){W + o->attn_norm, W + o->wqkv, W + o->wo, W + o->ffn_norm,
                                                 W + o->wgu, W + o->wdown,
                                                 g->c.bias_kinds & BIAS_QKV ? W + o->bqkv : NULL,
                                                 g->c.qk_norm ? W + o->q_norm : NULL, g->c.qk_norm ? W + o->k_norm : NULL};
    }
    out->stream = g->st;
    out->halo_on = g->hon != NULL;
}
