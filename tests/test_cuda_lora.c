// LoRA on the GPU (llama_cuda with a host model that has adapters) against the CPU LoRA model (src/model/lora.c):
// 1. a small random model and stories260K: the loss of a forward and the adapters' gradients after one
//    forward/backward, dropout 0 and dropout 0.1 (the GPU draws lora.c's masks: the same key gives the CPU's
//    gradients within the BF16 bound, another key does not), ranks 8 and 16; INT8 level 2 and FP8 level 0 under the
//    adapters against the CPU with the same HALO configuration; under dropout also the grouped kernels of lora.cu
//    (llama_cuda_lora_fused(1), the default: the adapters of one input together, the mask inside) against the product
//    + mask path (llama_cuda_lora_fused(0)) and the CPU, ranks 8, 16 and 32, and adapters on q and v only (a group
//    with a gap: k's columns between them) (stories260K's down_proj, in = 172, and
//    rank 4 take the product path either way; HALO_LORA_FUSED=0 runs every other row on the product path too);
// 2. the frozen base: its bf16 weights on the device bit-identical to the host's after training steps, and the memory
//    saved (no fp32 master, gradients or moments for it);
// 3. trainer runs (trainer_use_cuda) of stories260K on both devices with the same seeded batches and dropout keys:
//    the loss curves track, BF16 and INT8 level 2;
// 4. checkpoints: the adapters and AdamW moments of a GPU run come back bit for bit after a GPU resume, the resumed
//    run continues like the uninterrupted one, a CPU resume of the GPU checkpoint starts at the GPU's loss;
// 5. misuse (bf16 gradients or moments with LoRA) refused naming the flag; rank 4 (8-byte rows of U, dU).
// Bounds are first estimates (GPU: bf16 operands and activations, fp32 accumulation; CPU: fp32), to be calibrated on
// the device: every measured number is printed. Skips without a GPU.
#include "test.h"
#ifdef HALO_CUDA
#include <stdint.h>
#include <cuda_runtime_api.h>
#include "cuda/cuda_backend.h"
#include "cuda/halo_cuda.h"
#include "test_cuda.h"
#include "test_variants.h"
#include "model/linear.h"
#include "model/llama.h"
#include "model/lora.h"
#include "train/checkpoint.h"
#include "train/trainer.h"
#include "util/error.h"

static void row(const char *what, const char *detail, double err, double bound) {
    int ok = err <= bound && !isnan(err);
    printf("| %-36s | %-38s | %9.2e | %7.1e | %s |\n", what, detail, err, bound, ok ? "ok" : "FAIL");
    CHECK(ok, "%s %s: %.3g > %.3g", what, detail, err, bound);
}

static llama_config small_config(void) {
    llama_config c;
    memset(&c, 0, sizeof c);
    c.vocab_size = 512; c.dim = 256; c.hidden_dim = 640; c.n_layers = 3; c.n_heads = 4; c.n_kv_heads = 2;
    c.head_dim = 64; c.max_pos = 256; c.norm_eps = 1e-5f; c.rope_theta = 10000.f; c.tie_embeddings = 0;
    c.bos_id = c.eos_id = -1;
    return c;
}

// The model (random or stories260K) with its weights rounded to bf16, the GPU's working copy exactly.
static int load_model(llama_model *m, int stories) {
    if (stories) {
        const char *dir = test_shared_path("models/stories260K");
        if (!dir || llama_load(m, dir) != HALO_OK) return HALO_ERR;
    } else {
        llama_config c = small_config();
        if (llama_init(m, &c) != HALO_OK) return HALO_ERR;
        llama_init_random(m, 11);
    }
    t_round_bf16(m->params, m->n_params);
    return HALO_OK;
}

// Adapters with random A and B (B nonzero, so that every gradient is), bf16-rounded like the device's copy. B at
// 0.1 / sqrt(r): the product s B A stays a fraction of the base weights, as after fine-tuning (B at 1 / sqrt(r) took
// stories260K's loss from ~6 to 12-16 on random tokens, where BF16 activations moved its adapter gradients by 8-52%).
static unsigned g_kinds;   // the adapted linears (bits of LIN_*), 0: lora_config_default's (all seven)
static int lora_random(llama_model *m, int rank, double dropout, unsigned long long seed) {
    lora_config c = lora_config_default();
    c.rank = rank; c.alpha = 8; c.dropout = dropout;
    if (g_kinds) c.kinds = g_kinds;
    if (llama_lora_enable(m, &c, 9) != HALO_OK) return HALO_ERR;
    llama_trainable p = llama_trainable_params(m);
    for (int i = 0; i < p.n_table; i++) {
        const llama_param *q = &p.table[i];
        const int is_b = q->shape[1] == rank;   // B [out, r]; A [r, in] (in > r here)
        const double sd = (is_b ? 0.1 : 1.0) / sqrt((double)q->shape[1]);   // A: 1/sqrt(in), B: 0.1/sqrt(r)
        for (size_t j = 0; j < q->numel; j++) p.params[q->offset + j] = (float)(sd * t_rand_normal(&seed));
    }
    t_round_bf16(p.params, p.n);
    return HALO_OK;
}

static void rand_batch(halo_batch *b, int B, int T, int vocab, unsigned long long seed) {
    halo_batch_alloc(b, B, T);
    for (int i = 0; i < B * T; i++) b->input_ids[i] = (int32_t)(t_rng_next(&seed) % (unsigned)vocab);
    halo_batch_shift_targets(b);
}

static llama_cuda_opts opts_for(const halo_batch *b, const model_halo_config *hc) {
    llama_cuda_opts o;
    memset(&o, 0, sizeof o);
    o.max_B = b->B; o.max_T = b->T;
    o.halo = hc ? *hc : model_halo_config_default();
    return o;
}

// CPU: loss and adapter gradients of one forward/backward with dropout key `key` (0: dropout off), HALO hc.
static float cpu_grads(llama_model *m, const halo_batch *b, const model_halo_config *hc, uint64_t key, float *grads) {
    CHECK(llama_set_halo(m, hc) == HALO_OK, "%s", halo_error());
    llama_lora_train(m, key != 0, key);
    llama_lora_zero_grads(m);
    float loss = llama_forward(m, b, NULL);
    llama_backward(m, b, 1.0f);
    llama_lora_train(m, 0, 0);
    llama_trainable p = llama_trainable_params(m);
    memcpy(grads, p.grads, sizeof(float) * p.n);
    llama_set_halo(m, &(model_halo_config){.prec = HALO_PREC_FP32});
    return loss;
}

// GPU: the same; *eval_loss = the dropout-free forward's loss (llama_cuda_forward).
static float gpu_grads(llama_model *m, const halo_batch *b, const model_halo_config *hc, uint64_t key, float *grads,
                       float *eval_loss) {
    llama_cuda_opts o = opts_for(b, hc);
    llama_cuda *g;
    if (llama_cuda_init(&g, m, &o) != HALO_OK) { CHECK(0, "GPU init: %s", halo_error()); return NAN; }
    if (eval_loss) *eval_loss = llama_cuda_forward(g, b, NULL);
    llama_cuda_lora_train(g, key != 0, key);
    llama_cuda_zero_grads(g);
    llama_cuda_forward_backward(g, b, 1.0f);
    llama_cuda_lora_train(g, 0, 0);
    float loss = llama_cuda_last_loss(g);
    CHECK(llama_cuda_copy_grads(g, m) == HALO_OK, "%s", halo_error());
    llama_trainable p = llama_trainable_params(m);
    memcpy(grads, p.grads, sizeof(float) * p.n);
    llama_cuda_free(g);
    return loss;
}

static double l2(const float *v, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)v[i] * v[i];
    return sqrt(s);
}

// Worst per-tensor relative error, its name into *name.
static double worst_tensor(const llama_model *m, const float *a, const float *ref, const char **name) {
    llama_trainable p = llama_trainable_params((llama_model *)m);
    double w = -1;
    for (int i = 0; i < p.n_table; i++) {
        double e = rel_l2_f(a + p.table[i].offset, ref + p.table[i].offset, p.table[i].numel);
        if (isnan(e)) e = INFINITY;
        if (e > w) { w = e; *name = p.table[i].name; }
    }
    return w;
}

// ---- 1. loss and adapter gradients ----
// Bounds: loss 1e-2 relative; all adapter gradients as one vector 5e-2, each tensor 0.15 (BF16 activations and
// operands against fp32: ~1e-2 expected, as the full model's BF16 gradients in test_cuda_model). With HALO: max(0.1,
// 3x the BF16 LoRA error, 0.85x the CPU HALO's own error against the CPU fp32 LoRA gradients), the structure of
// test_cuda_halo_train's bounds (bf16 activations flip some 8-bit codes).
static void test_grads(int stories, int rank, double dropout) {
    llama_model m;
    if (load_model(&m, stories) != HALO_OK) { SKIP("%s not loaded: %s", stories ? "stories260K" : "model", halo_error()); return; }
    if (lora_random(&m, rank, dropout, 31 + rank) != HALO_OK) { CHECK(0, "%s", halo_error()); llama_free(&m); return; }
    halo_batch b;
    rand_batch(&b, 2, 64, m.cfg.vocab_size, 5);
    const size_t n = llama_trainable_params(&m).n;
    float *gc = malloc(4 * n), *gg = malloc(4 * n), *gh = malloc(4 * n), *g32 = malloc(4 * n);
    const uint64_t key = dropout > 0 ? 0x5EED1234ULL : 0;
    char det[96];
    snprintf(det, sizeof det, "%s r%d dropout %g%s", stories ? "stories260K" : "random", rank, dropout,
             g_kinds ? " q,v only" : "");
    const model_halo_config off = model_halo_config_default();
    float ev = NAN;
    const float lc = cpu_grads(&m, &b, &off, key, gc), lg = gpu_grads(&m, &b, &off, key, gg, &ev);
    llama_lora_train(&m, 0, 0);
    const float lc_eval = llama_forward(&m, &b, NULL);
    const char *wn = "";
    const double e_all = rel_l2_f(gg, gc, n), e_worst = worst_tensor(&m, gg, gc, &wn);
    row("LoRA eval forward loss GPU vs CPU", det, fabs(ev - lc_eval) / lc_eval, 1e-2);
    row("LoRA train loss GPU vs CPU", det, fabs(lg - lc) / lc, 1e-2);
    row("LoRA adapter grads GPU vs CPU", det, e_all, 5e-2);
    row("LoRA worst adapter tensor GPU vs CPU", det, e_worst, 0.15);
    printf("   worst tensor %s; adapter grad norms GPU %.4g CPU %.4g\n", wn, l2(gg, n), l2(gc, n));
    if (dropout > 0) {   // another key: other masks, gradients apart by far more than the BF16 error
        const float lo = gpu_grads(&m, &b, &off, key + 1, gh, NULL);
        const double e_other = rel_l2_f(gh, gc, n);
        printf("   dropout masks: GPU with the CPU's key %.3g, with another key %.3g (loss %.6f vs %.6f)\n", e_all,
               e_other, lo, lc);
        row("LoRA other dropout key differs by >3x", det, 3 * e_all / e_other, 1.0);
        // the grouped kernels (mask inside) against the product + mask path, and the CPU: the same masks, sums in
        // another order and one bf16 rounding fewer in the input gradient. The two paths round the forward's
        // activations differently (Y += U B^T by lora.cu or cuBLASLt), so they may be as far apart as either is from
        // the CPU: the bound is 1.5x the GPU's error against the CPU, at least 1e-2
        float *gf = malloc(4 * n), *gp = malloc(4 * n);
        llama_cuda_lora_fused(0);
        const float lp = gpu_grads(&m, &b, &off, key, gp, NULL);
        llama_cuda_lora_fused(1);
        const float lf = gpu_grads(&m, &b, &off, key, gf, NULL);
        llama_cuda_lora_fused(-1);
        const char *wf = "";
        row("LoRA grouped vs product path", det, rel_l2_f(gf, gp, n), fmax(1e-2, 1.5 * e_all));
        row("LoRA grouped loss vs product path", det, fabs(lf - lp) / lp, 1e-3);
        row("LoRA grouped grads vs CPU", det, rel_l2_f(gf, gc, n), 5e-2);
        row("LoRA grouped worst tensor vs CPU", det, worst_tensor(&m, gf, gc, &wf), 0.15);
        free(gf); free(gp);
    }
    if (rank == 16 && dropout == 0) {   // HALO under the adapters
        const struct { int prec, level; const char *name; } hcfg[] = {{HALO_PREC_INT8, 2, "int8 L2"},
                                                                       {HALO_PREC_FP8, 0, "fp8 L0"}};
        for (int k = 0; k < 2; k++) {
            model_halo_config hc = model_halo_config_default();
            hc.prec = (halo_precision)hcfg[k].prec;
            hc.level = hcfg[k].level;
            const float lhc = cpu_grads(&m, &b, &hc, key, g32), lhg = gpu_grads(&m, &b, &hc, key, gh, NULL);
            const double e_h = rel_l2_f(gh, g32, n), e_self = rel_l2_f(g32, gc, n);
            char d2[128];
            snprintf(d2, sizeof d2, "%s %s", det, hcfg[k].name);
            row("LoRA+HALO loss GPU vs CPU HALO", d2, fabs(lhg - lhc) / lhc, 2e-2);
            row("LoRA+HALO adapter grads GPU vs CPU", d2, e_h, fmax(fmax(0.1, 3 * e_all), 0.85 * e_self));
            printf("   CPU HALO vs CPU fp32 LoRA: loss rel %.2e, adapter grads %.3g\n", fabs(lhc - lc) / lc, e_self);
            if (hcfg[k].prec == HALO_PREC_INT8) {
                // U B^T added in the own INT8 kernel's epilogue (default; the random model's q, o, gate, up, down)
                // against a separate pass over Y: one bf16 rounding of Y fewer, which flips some 8-bit codes later
                float *ge = malloc(4 * n);
                halo_cuda_lora_epilogue(0);
                const float lsep = gpu_grads(&m, &b, &hc, key, ge, NULL);
                halo_cuda_lora_epilogue(-1);
                row("LoRA+HALO epilogue vs Y pass, loss", d2, fabs(lhg - lsep) / lsep, 1e-3);
                row("LoRA+HALO epilogue vs Y pass, grads", d2, rel_l2_f(gh, ge, n), fmax(1e-2, 1.5 * e_h));
                free(ge);
            }
        }
    }
    free(gc); free(gg); free(gh); free(g32);
    halo_batch_free(&b);
    llama_free(&m);
}

// ---- 2. the frozen base on the device, and the memory LoRA saves ----
// How many of the device's bf16 values dev[n] differ from host[n] rounded to bf16.
static long bf16_diff(const halo_bf16 *dev, const float *host, size_t n) {
    halo_bf16 *h = malloc(2 * n), *d = malloc(2 * n);
    cuda_f32_to_bf16_host(h, host, n);
    cudaMemcpy(d, dev, 2 * n, cudaMemcpyDeviceToHost);
    long bad = 0;
    for (size_t i = 0; i < n; i++) bad += h[i] != d[i];
    free(h); free(d);
    return bad;
}

// LoRA over the Llama variants on the GPU: the frozen
// base holds Qwen2's biases / Qwen3's q/k norms / SmolLM3's layers without RoPE; loss within 1e-2 and the adapter
// gradients within 5e-2 of the CPU's, as test_grads' BF16 bounds.
static void test_variants_lora(void) {
    for (int arch = T_QWEN2; arch <= T_SMOLLM3; arch++) {
        llama_config c = small_config();
        t_make_variant(&c, arch);
        llama_model m;
        if (llama_init(&m, &c) != HALO_OK) { CHECK(0, "%s", halo_error()); continue; }
        llama_init_random(&m, 11);
        t_draw_variant_tensors(&m, 11);
        t_round_bf16(m.params, m.n_params);
        if (lora_random(&m, 8, 0.0, 41) != HALO_OK) { CHECK(0, "%s", halo_error()); llama_free(&m); continue; }
        halo_batch b;
        rand_batch(&b, 2, 64, c.vocab_size, 7);
        const size_t n = llama_trainable_params(&m).n;
        float *gc = malloc(4 * n), *gg = malloc(4 * n);
        const model_halo_config off = model_halo_config_default();
        const float lc = cpu_grads(&m, &b, &off, 0, gc), lg = gpu_grads(&m, &b, &off, 0, gg, NULL);
        const char *what = arch == T_QWEN2 ? "Qwen2 biases" : arch == T_QWEN3 ? "Qwen3 q/k norms" : "SmolLM3 NoPE";
        row("variant under LoRA: loss GPU vs CPU", what, fabs(lg - lc) / lc, 1e-2);
        row("variant under LoRA: adapter grads", what, rel_l2_f(gg, gc, n), 5e-2);
        free(gc); free(gg);
        halo_batch_free(&b);
        llama_free(&m);
    }
}

static void test_frozen_base(void) {
    llama_model m;
    if (load_model(&m, 0) != HALO_OK) { CHECK(0, "%s", halo_error()); return; }
    halo_batch b;
    rand_batch(&b, 2, 64, m.cfg.vocab_size, 7);
    llama_cuda_opts o = opts_for(&b, NULL);
    o.verbose = 1;
    llama_cuda *full = NULL, *g = NULL;
    CHECK(llama_cuda_init(&full, &m, &o) == HALO_OK, "%s", halo_error());   // without adapters: the comparison
    const size_t bytes_full = full ? llama_cuda_bytes(full) : 0;
    llama_cuda_free(full);
    if (lora_random(&m, 16, 0.05, 77) != HALO_OK) { CHECK(0, "%s", halo_error()); llama_free(&m); return; }
    if (llama_cuda_init(&g, &m, &o) != HALO_OK) { CHECK(0, "%s", halo_error()); llama_free(&m); return; }
    const size_t bytes_lora = llama_cuda_bytes(g), P = m.n_params;
    printf("   device memory: full training %.2f MiB, LoRA %.2f MiB (%zu base parameters: %.2f MiB of fp32 master, "
           "gradients and moments not allocated)\n", bytes_full / 1048576.0, bytes_lora / 1048576.0, P, 16.0 * P / 1048576.0);
    // saved: 16 B per base parameter, less the adapters' own buffers (~18 B per adapter value: ~10% of it here)
    row("LoRA memory: 1 - saved / (16 B x base)", "random model r16", 1 - (double)(bytes_full - bytes_lora) / (16.0 * P),
        0.2);
    llama_trainable tp = llama_trainable_params(&m);
    float *a0 = malloc(4 * tp.n);
    memcpy(a0, tp.params, 4 * tp.n);
    llama_cuda_adamw h = {1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 0};
    float l0 = NAN, l5 = NAN;
    for (int s = 1; s <= 5; s++) {
        llama_cuda_lora_train(g, 1, 100 + s);
        const float l = llama_cuda_train_step(g, &b, &h, s);
        llama_cuda_lora_train(g, 0, 0);
        if (s == 1) l0 = l;
        l5 = l;
    }
    printf("   5 LoRA steps on one batch: loss %.5f -> %.5f\n", l0, l5);
    CHECK(l5 < l0, "LoRA steps lower the loss on their batch: %.5f -> %.5f", l0, l5);
    CHECK(llama_cuda_copy_params(g, &m) == HALO_OK, "%s", halo_error());
    CHECK(rel_l2_f(tp.params, a0, tp.n) > 1e-4, "the adapters changed (rel %.3g)", rel_l2_f(tp.params, a0, tp.n));
    // the device's bf16 base equals the host's weights rounded to bf16, every tensor
    llama_cuda_weight_ptrs w;
    llama_cuda_weights(g, &w);
    cudaDeviceSynchronize();
    const llama_config *c = &m.cfg;
    const size_t D = c->dim, F = c->hidden_dim, Q = (size_t)c->n_heads * c->head_dim, KV = (size_t)c->n_kv_heads * c->head_dim;
    long bad = 0;
    size_t checked = 0;
#define CMP(dev, host, count) do { size_t _n = (count); bad += bf16_diff((dev), (host), _n); checked += _n; } while (0)
    CMP(w.embed, m.w.embed, (size_t)c->vocab_size * D);
    CMP(w.lm_head, m.w.lm_head, (size_t)c->vocab_size * D);
    CMP(w.final_norm, m.w.final_norm, D);
    for (int l = 0; l < c->n_layers; l++) {
        const llama_layer_weights *L = &m.w.layers[l];
        CMP(w.layers[l].attn_norm, L->attn_norm, D);
        CMP(w.layers[l].ffn_norm, L->ffn_norm, D);
        CMP(w.layers[l].wqkv, L->wq, Q * D);
        CMP(w.layers[l].wqkv + Q * D, L->wk, KV * D);
        CMP(w.layers[l].wqkv + (Q + KV) * D, L->wv, KV * D);
        CMP(w.layers[l].wo, L->wo, D * Q);
        CMP(w.layers[l].wgu, L->w_gate, F * D);
        CMP(w.layers[l].wgu + F * D, L->w_up, F * D);
        CMP(w.layers[l].wdown, L->w_down, D * F);
    }
#undef CMP
    free(w.layers);
    printf("   frozen base after 5 steps: %ld of %zu bf16 weights differ from the host's\n", bad, checked);
    row("LoRA base weights changed (count)", "random model, 5 steps", (double)bad, 0);
    CHECK(checked == P, "compared every base parameter (%zu of %zu)", checked, P);
    cuda_decoder *d = NULL;
    CHECK(cuda_decoder_init(&d, g, 1, 16, 4) == HALO_ERR && strstr(halo_error(), "LoRA"),
          "the decoder over a LoRA GPU model is refused: %s", halo_error());
    llama_cuda_free(g);
    free(a0);
    halo_batch_free(&b);
    llama_free(&m);
}

// ---- 3. and 4.: trainer runs ----
// Seeded batches with structure to learn (a fixed permutation chain with probability 0.85), as test_cuda_halo_train.
typedef struct { unsigned long long s; int vocab, *perm, pos; } chain_src;
static int chain_next(void *ctx, halo_batch *b) {
    chain_src *c = ctx;
    unsigned long long s = 0x9E37ULL * (unsigned long long)(++c->pos);
    for (int r = 0; r < b->B; r++) {
        int tok = (int)(t_rng_next(&s) % (unsigned)c->vocab);
        for (int t = 0; t < b->T; t++) {
            b->input_ids[r * b->T + t] = tok;
            tok = t_rand_uniform(&s) < 0.85 ? c->perm[tok] : (int)(t_rng_next(&s) % (unsigned)c->vocab);
        }
    }
    halo_batch_shift_targets(b);
    return HALO_OK;
}
static void chain_get(void *ctx, train_data_state *st) { chain_src *c = ctx; st->epoch = 0; st->position = c->pos; st->rng = 0; }
static int chain_set(void *ctx, const train_data_state *st) { chain_src *c = ctx; c->pos = (int)st->position; return HALO_OK; }

static int *g_perm;
static chain_src chain_of(int vocab) {
    if (!g_perm) {
        unsigned long long s = 260260;
        g_perm = malloc(sizeof(int) * vocab);
        for (int i = 0; i < vocab; i++) g_perm[i] = i;
        for (int i = vocab - 1; i > 0; i--) { int j = (int)(t_rng_next(&s) % (unsigned)(i + 1)), t = g_perm[i]; g_perm[i] = g_perm[j]; g_perm[j] = t; }
    }
    return (chain_src){0, vocab, g_perm, 0};
}

static train_options lora_options(int steps) {
    train_options o = train_options_default();
    o.steps = steps; o.batch_size = 4; o.seq_len = 64; o.lr = 1e-2; o.min_lr = 1e-2; o.warmup = 2;
    o.decay = LR_CONSTANT; o.adamw.weight_decay = 0.01; o.clip = 1.0f; o.seed = 42; o.log_every = 0;
    return o;
}

// A stories260K model with the LoRA run's adapters (seeded: both devices start from the same A).
static int lora_model(llama_model *m, const model_halo_config *hc) {
    const char *dir = test_shared_path("models/stories260K");
    if (!dir || llama_load(m, dir) != HALO_OK) return HALO_ERR;
    lora_config c = lora_config_default();   // r 16, alpha 8, dropout 0.05, all seven linears
    if (hc && llama_set_halo(m, hc) != HALO_OK) { llama_free(m); return HALO_ERR; }
    if (llama_lora_enable(m, &c, 42) != HALO_OK) { llama_free(m); return HALO_ERR; }
    return HALO_OK;
}

// Runs `steps` trainer steps (from a fresh model and source, on the GPU when cuda); losses[steps].
static int run_trainer(int cuda, const model_halo_config *hc, int steps, float *losses) {
    llama_model m;
    if (lora_model(&m, hc) != HALO_OK) return HALO_ERR;
    train_options o = lora_options(steps);
    chain_src src = chain_of(m.cfg.vocab_size);
    trainer t;
    int rc = trainer_init(&t, &m, &o, (train_data_source){&src, chain_next, chain_get, chain_set});
    if (rc == HALO_OK && cuda) rc = trainer_use_cuda(&t, NULL);
    for (int s = 0; rc == HALO_OK && s < steps; s++) {
        train_step_info si;
        rc = trainer_step(&t, &si);
        losses[s] = si.loss;
    }
    trainer_free(&t);
    llama_free(&m);
    return rc;
}

// 3. The losses of 30 steps on both devices: every step within 3% (BF16) / 5% (INT8 L2), the last 10 steps' mean
// within 2% / 4%, and the GPU's last loss below 80% of its first (lr 1e-2, the adapters learn the chain).
static void test_training(const model_halo_config *hc, const char *name) {
    enum { S = 30 };
    float lc[S], lg[S];
    for (int i = 0; i < S; i++) lc[i] = lg[i] = NAN;
    if (run_trainer(0, hc, S, lc) != HALO_OK || run_trainer(1, hc, S, lg) != HALO_OK) {
        CHECK(0, "%s LoRA trainer runs: %s", name, halo_error());
        return;
    }
    printf("   LoRA training, stories260K %s, loss by step (CPU / GPU):\n  ", name);
    double worst = 0, mc = 0, mg = 0;
    for (int i = 0; i < S; i++) {
        printf(" %d:%.4f/%.4f", i + 1, lc[i], lg[i]);
        if (i % 6 == 5) printf("\n  ");
        const double e = fabs(lg[i] - lc[i]) / lc[i];
        worst = fmax(worst, isnan(e) ? INFINITY : e);
        if (i >= S - 10) { mc += lc[i] / 10; mg += lg[i] / 10; }
    }
    printf("\n");
    const int int8 = hc && hc->prec == HALO_PREC_INT8;
    row("LoRA trainer loss per step GPU vs CPU", name, worst, int8 ? 5e-2 : 3e-2);
    row("LoRA trainer last 10 steps GPU vs CPU", name, fabs(mg - mc) / mc, int8 ? 4e-2 : 2e-2);
    row("LoRA GPU trainer last / first loss", name, lg[S - 1] / lg[0], 0.8);
}

typedef struct { float *p, *m, *v; size_t n; } lora_state;
static void state_keep(lora_state *s, trainer *t) {
    llama_trainable tp = llama_trainable_params(t->model);
    s->n = tp.n;
    s->p = malloc(4 * tp.n); s->m = malloc(4 * tp.n); s->v = malloc(4 * tp.n);
    memcpy(s->p, tp.params, 4 * tp.n); memcpy(s->m, t->opt.m, 4 * tp.n); memcpy(s->v, t->opt.v, 4 * tp.n);
}
static long state_diff(const lora_state *s, trainer *t) {
    llama_trainable tp = llama_trainable_params(t->model);
    long d = 0;
    for (size_t i = 0; i < s->n; i++) d += s->p[i] != tp.params[i] || s->m[i] != t->opt.m[i] || s->v[i] != t->opt.v[i];
    return d;
}

// 4. A GPU run saved at step 6: the GPU resume holds its adapters and moments bit for bit and continues within 1e-2
// of the uninterrupted run for steps 7..12 (only fp32 atomics separate them); a CPU resume's step 7 within 3e-2 of
// the GPU's (BF16 vs fp32).
static void test_resume(void) {
    enum { S = 12, AT = 6 };
    char path[256];
    snprintf(path, sizeof path, "/tmp/halo_cuda_lora_%d.safetensors", (int)getpid());
    float full[S], res[S], cpu7 = NAN;
    lora_state kept = {0};
    int ok = 1;
    for (int run = 0; run < 3 && ok; run++) {   // 0: uninterrupted GPU (saves at AT), 1: GPU resume, 2: CPU resume
        llama_model m;
        if (lora_model(&m, NULL) != HALO_OK) { CHECK(0, "%s", halo_error()); return; }
        train_options o = lora_options(S);
        chain_src src = chain_of(m.cfg.vocab_size);
        trainer t;
        int rc = trainer_init(&t, &m, &o, (train_data_source){&src, chain_next, chain_get, chain_set});
        if (rc == HALO_OK && run > 0) rc = trainer_resume(&t, path);
        if (rc == HALO_OK && run < 2) rc = trainer_use_cuda(&t, NULL);
        if (rc == HALO_OK && run == 1) {   // what the GPU holds after the resume: the checkpoint's, bit for bit
            t.be.to_host(&t);
            rc = t.be.opt_to_host ? t.be.opt_to_host(&t) : HALO_OK;
            const long d = state_diff(&kept, &t);
            printf("   GPU resume: %ld of %zu adapter values / moments differ from the checkpoint's\n", d, kept.n);
            row("LoRA GPU resume state vs checkpoint", "adapters, m, v (count)", (double)d, 0);
        }
        while (rc == HALO_OK && t.step < S) {
            train_step_info si;
            rc = trainer_step(&t, &si);
            if (run == 0) full[t.step - 1] = si.loss;
            else if (run == 1) res[t.step - 1] = si.loss;
            else if (t.step == AT + 1) { cpu7 = si.loss; break; }
            if (rc == HALO_OK && run == 0 && t.step == AT) {
                rc = trainer_save(&t, path);
                state_keep(&kept, &t);
            }
        }
        if (rc != HALO_OK) { CHECK(0, "resume run %d: %s", run, halo_error()); ok = 0; }
        trainer_free(&t);
        llama_free(&m);
    }
    if (ok) {
        double worst = 0;
        for (int s = AT; s < S; s++) worst = fmax(worst, fabs(res[s] - full[s]) / full[s]);
        printf("   steps %d..%d uninterrupted / GPU-resumed:", AT + 1, S);
        for (int s = AT; s < S; s++) printf(" %.5f/%.5f", full[s], res[s]);
        printf("; CPU resume step %d: %.5f\n", AT + 1, cpu7);
        row("LoRA GPU resume vs uninterrupted", "steps 7-12, max rel", worst, 1e-2);
        row("LoRA CPU resume of a GPU checkpoint", "step 7 loss vs GPU", fabs(cpu7 - full[AT]) / full[AT], 3e-2);
    }
    free(kept.p); free(kept.m); free(kept.v);
    remove(path);
}

// ---- 5. misuse ----
static void test_refusals(void) {
    llama_model m;
    if (load_model(&m, 0) != HALO_OK || lora_random(&m, 8, 0, 3) != HALO_OK) { CHECK(0, "%s", halo_error()); return; }
    const char *flag[2] = {"--bf16-grads", "--bf16-moments"};
    for (int k = 0; k < 2; k++) {
        llama_cuda_opts o;
        memset(&o, 0, sizeof o);
        o.max_B = 1; o.max_T = 32;
        if (k == 0) o.bf16_grads = 1; else o.bf16_moments = 1;
        llama_cuda *g = NULL;
        const int rc = llama_cuda_init(&g, &m, &o);
        CHECK(rc == HALO_ERR && !g && strstr(halo_error(), flag[k]), "%s with LoRA refused naming it (rc %d): %s",
              flag[k], rc, halo_error());
        if (rc == HALO_OK) llama_cuda_free(g);
        else printf("   refused as expected: %s\n", halo_error());
    }
    llama_free(&m);
}
#endif

int main(void) {
#ifndef HALO_CUDA
    SKIP("built without CUDA (no nvcc, or SAN=1): GPU LoRA tests skipped");
    TEST_END();
#else
    char gpu_why[256];
    if (!cuda_device_usable(gpu_why, sizeof gpu_why)) { SKIP("%s: GPU LoRA tests skipped", gpu_why); TEST_END(); }
    if (!test_shared()) { SKIP("shared data folder not found (set HALO_SHARED): GPU LoRA tests skipped"); TEST_END(); }
    const double t0 = t_now();
    printf("| %-36s | %-38s | %9s | %7s | %s |\n", "check (GPU LoRA vs CPU LoRA)", "case", "rel err", "bound", "ok");
    test_refusals();
    for (int stories = 0; stories <= 1; stories++)
        for (int rank = 8; rank <= 16; rank += 8)
            for (int d = 0; d < 2; d++) test_grads(stories, rank, d ? 0.1 : 0.0);
    printf("(gradients: %.1f s)\n", t_now() - t0);
    test_frozen_base();
    test_training(NULL, "bf16");
    model_halo_config hc = model_halo_config_default();
    hc.prec = HALO_PREC_INT8;
    hc.level = 2;
    test_training(&hc, "int8 L2");
    printf("(training: %.1f s)\n", t_now() - t0);
    test_resume();
    test_variants_lora();
    test_grads(0, 32, 0.1);   // the grouped kernels' third rank (two m-tiles in the A gradient, two k-steps in dX)
    g_kinds = (1u << LIN_Q) | (1u << LIN_V);   // PEFT's classic Llama targets: q and v share a group, k between them
    test_grads(0, 16, 0.1);
    g_kinds = 0;
    test_grads(0, 4, 0.1);   // rank 4 last: 8-byte rows of U and dU (cuBLASLt plans for small alignments)
    printf("(total: %.1f s)\n", t_now() - t0);
    free(g_perm);
    cuda_matmul_shutdown();
    TEST_END();
#endif
}
