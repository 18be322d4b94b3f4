// LoRA adapters: the adapted model equals the model with merged weights W + (alpha/r) B A (loss, and the adapters'
// gradients equal the chain rule applied to the merged model's weight gradient, in float64); finite differences with
// dropout on; base weights frozen (no weight gradients, unchanged by training); a resumed LoRA run reproduces the
// uninterrupted one bit for bit; PEFT adapter files round-trip and bad ones are refused naming the key or tensor;
// HALO with identity quantizers under the adapters changes nothing; the dropout mask's statistics.
#include <sys/stat.h>
#include "io/safetensors.h"
#include "model/linear.h"
#include "model/llama.h"
#include "model/lora.h"
#include "test.h"
#include "test_seq_source.h"
#include "train/checkpoint.h"
#include "train/rng.h"
#include "train/trainer.h"
#include "util/error.h"
#include "util/fileio.h"

static char g_dir[256];

static llama_config tiny_config(void) {
    llama_config c = {0};
    c.vocab_size = 64; c.dim = 32; c.hidden_dim = 48; c.n_layers = 2; c.n_heads = 4; c.n_kv_heads = 2;
    c.head_dim = 8; c.max_pos = 64; c.norm_eps = 1e-5f; c.rope_theta = 10000; c.tie_embeddings = 0;
    c.bos_id = 1; c.eos_id = 2;
    return c;
}

static void tiny_model(llama_model *m, uint64_t seed) {
    llama_config c = tiny_config();
    llama_init(m, &c);
    llama_init_random(m, seed);
}

static void rand_batch(halo_batch *b, int B, int T, int vocab, unsigned long long seed) {
    halo_batch_alloc(b, B, T);
    for (int i = 0; i < B * T; i++) b->input_ids[i] = (int32_t)(t_rng_next(&seed) % (unsigned)vocab);
    halo_batch_shift_targets(b);
}

// Enables adapters and gives B (and A) random values, so that the adapters change the output.
static void lora_random(llama_model *m, const lora_config *c, unsigned long long seed) {
    CHECK(llama_lora_enable(m, c, 9) == HALO_OK, "enable: %s", halo_error());
    llama_trainable p = llama_trainable_params(m);
    for (size_t i = 0; i < p.n; i++) p.params[i] = (float)(0.2 * t_rand_normal(&seed));
}

static double loss_grads(llama_model *m, const halo_batch *b) {
    llama_alloc_grads(m);
    llama_zero_grads(m);
    double l = llama_forward(m, b, NULL);
    llama_backward(m, b, 1.0f);
    return l;
}

// The adapted model against the merged one: loss, and dA = s B^T dW', dB = s dW' A^T from the merged model's dW'.
static void test_merge_identity(unsigned kinds, const char *what) {
    llama_model m, mm;
    tiny_model(&m, 5);
    tiny_model(&mm, 5);
    lora_config c = {.rank = 4, .alpha = 6, .dropout = 0, .kinds = kinds};
    lora_random(&m, &c, 31);
    const double s = c.alpha / c.rank;
    const llama_param *tab = llama_trainable_params(&m).table;
    const float *lp = llama_trainable_params(&m).params;
    // merged weights in float64: W' = W + s B A
    int t = 0;
    for (int l = 0; l < m.cfg.n_layers; l++)
        for (int k = 0; k < LIN_COUNT; k++) {
            if (!(kinds & (1u << k))) continue;
            const llama_param *pa = &tab[t], *pb = &tab[t + 1];
            t += 2;
            const int r = (int)pa->shape[0], in = (int)pa->shape[1], out = (int)pb->shape[0];
            float *w = llama_linear_weight(&mm.w, l, k);
            for (int o = 0; o < out; o++)
                for (int i = 0; i < in; i++) {
                    double acc = w[(size_t)o * in + i];
                    for (int j = 0; j < r; j++) acc += s * lp[pb->offset + (size_t)o * r + j] * lp[pa->offset + (size_t)j * in + i];
                    w[(size_t)o * in + i] = (float)acc;
                }
        }
    halo_batch b;
    rand_batch(&b, 2, 12, m.cfg.vocab_size, 77);
    double ll = loss_grads(&m, &b), lm = loss_grads(&mm, &b);
    char name[160];
    snprintf(name, sizeof name, "%s: adapted loss vs merged", what);
    CHECK_REL(ll, lm, 1e-5, name);
    const llama_trainable tp = llama_trainable_params(&m);
    double worst = 0;
    t = 0;
    for (int l = 0; l < m.cfg.n_layers; l++)
        for (int k = 0; k < LIN_COUNT; k++) {
            if (!(kinds & (1u << k))) continue;
            const llama_param *pa = &tp.table[t], *pb = &tp.table[t + 1];
            t += 2;
            const int r = (int)pa->shape[0], in = (int)pa->shape[1], out = (int)pb->shape[0];
            const float *gw = llama_linear_weight(&mm.g, l, k);
            float *ra = malloc(sizeof(float) * pa->numel), *rb = malloc(sizeof(float) * pb->numel);
            for (int j = 0; j < r; j++)
                for (int i = 0; i < in; i++) {   // dA[j, i] = s sum_o B[o, j] dW'[o, i]
                    double acc = 0;
                    for (int o = 0; o < out; o++) acc += (double)lp[pb->offset + (size_t)o * r + j] * gw[(size_t)o * in + i];
                    ra[(size_t)j * in + i] = (float)(s * acc);
                }
            for (int o = 0; o < out; o++)
                for (int j = 0; j < r; j++) {   // dB[o, j] = s sum_i dW'[o, i] A[j, i]
                    double acc = 0;
                    for (int i = 0; i < in; i++) acc += (double)gw[(size_t)o * in + i] * lp[pa->offset + (size_t)j * in + i];
                    rb[(size_t)o * r + j] = (float)(s * acc);
                }
            double ea = rel_l2_f(tp.grads + pa->offset, ra, pa->numel), eb = rel_l2_f(tp.grads + pb->offset, rb, pb->numel);
            if (ea > worst) worst = ea;
            if (eb > worst) worst = eb;
            CHECK(ea < 1e-4 && eb < 1e-4, "%s: %s gradients vs chain rule: A %.3g, B %.3g", what, pa->name, ea, eb);
            free(ra); free(rb);
        }
    printf("%s: loss %.7f (merged %.7f), worst adapter-gradient rel err %.2e\n", what, ll, lm, worst);
    // frozen base: no weight gradients at all (the norms' are computed on the way and not used)
    double gsum = 0;
    for (int i = 0; i < m.n_table; i++)
        if (!strstr(m.table[i].name, "norm"))
            for (size_t j = 0; j < m.table[i].numel; j++) gsum += fabs(m.grads[m.table[i].offset + j]);
    CHECK(gsum == 0, "%s: base weight gradients are all zero (sum |g| = %g)", what, gsum);
    // llama_lora_merge gives the same model
    llama_lora_merge(&m);
    CHECK(!llama_get_lora(&m), "merge removes the adapters");
    snprintf(name, sizeof name, "%s: llama_lora_merge loss vs float64 merge", what);
    CHECK_REL(llama_forward(&m, &b, NULL), lm, 1e-6, name);
    halo_batch_free(&b);
    llama_free(&m); llama_free(&mm);
}

// Directional finite difference over all adapter parameters, dropout on (its masks fixed by the key).
static void test_finite_difference(void) {
    llama_model m;
    tiny_model(&m, 6);
    lora_config c = {.rank = 3, .alpha = 5, .dropout = 0.3, .kinds = (1u << LIN_COUNT) - 1};
    lora_random(&m, &c, 41);
    halo_batch b;
    rand_batch(&b, 2, 10, m.cfg.vocab_size, 78);
    llama_lora_train(&m, 1, 1234);
    double l0 = loss_grads(&m, &b);
    llama_trainable p = llama_trainable_params(&m);
    float *g = malloc(sizeof(float) * p.n), *p0 = malloc(sizeof(float) * p.n), *v = malloc(sizeof(float) * p.n);
    memcpy(g, p.grads, sizeof(float) * p.n);
    memcpy(p0, p.params, sizeof(float) * p.n);
    unsigned long long s = 99;
    for (int trial = 0; trial < 3; trial++) {
        double gv = 0;
        for (size_t i = 0; i < p.n; i++) { v[i] = (float)t_rand_normal(&s); gv += (double)g[i] * v[i]; }
        const double h = 1e-4;   // the adapters are large here (sd 0.2): 1e-3 is already past the linear range
        double lp, lm;
        for (size_t i = 0; i < p.n; i++) p.params[i] = (float)(p0[i] + h * v[i]);
        lp = llama_forward(&m, &b, NULL);
        for (size_t i = 0; i < p.n; i++) p.params[i] = (float)(p0[i] - h * v[i]);
        lm = llama_forward(&m, &b, NULL);
        memcpy(p.params, p0, sizeof(float) * p.n);
        double fd = (lp - lm) / (2 * h);
        printf("finite difference, dropout 0.3, direction %d: analytic %.6f numeric %.6f\n", trial, gv, fd);
        CHECK(fabs(fd - gv) <= 1e-2 * fabs(gv) + 1e-3, "directional derivative %d: analytic %.6g vs numeric %.6g", trial, gv, fd);
    }
    // gradients accumulate: two backward passes at half scale give the one at full scale
    llama_zero_grads(&m);
    for (int k = 0; k < 2; k++) { llama_forward(&m, &b, NULL); llama_backward(&m, &b, 0.5f); }
    double ea = rel_l2_f(p.grads, g, p.n);
    CHECK(ea < 1e-6, "adapter gradients accumulate over micro-batches: rel err %.3g", ea);
    // dropout changes the training forward, the same key repeats it, evaluation has none
    CHECK(llama_forward(&m, &b, NULL) == (float)l0, "same key, same masks");
    llama_lora_train(&m, 1, 4321);
    double l_other = llama_forward(&m, &b, NULL);
    llama_lora_train(&m, 0, 0);
    double l_eval = llama_forward(&m, &b, NULL);
    CHECK(l_other != l0 && l_eval != l0, "dropout masks matter: %.7f (key 1234), %.7f (key 4321), %.7f (eval)", l0, l_other, l_eval);
    free(g); free(p0); free(v);
    halo_batch_free(&b);
    llama_free(&m);
}

// ---- training: frozen base, bit-exact resume ----

// Trains 6 LoRA steps (from `resume` when given); the losses and the final adapter parameters.
static int run_lora(const char *ckpt_dir, const char *resume, float *losses, float *adapters, size_t *n, int check_frozen) {
    llama_model m;
    tiny_model(&m, 12);
    lora_config c = {.rank = 4, .alpha = 8, .dropout = 0.1, .kinds = (1u << LIN_COUNT) - 1};
    llama_lora_enable(&m, &c, 3);
    float *base = malloc(sizeof(float) * m.n_params);
    memcpy(base, m.params, sizeof(float) * m.n_params);
    train_options o = train_options_default();
    o.steps = 6; o.batch_size = 2; o.seq_len = 16; o.grad_accum = 2; o.lr = 1e-2; o.warmup = 1; o.seed = 5;
    o.log_every = 0; o.ckpt_dir = ckpt_dir; o.ckpt_every = 1;
    rand_src src = {.vocab = m.cfg.vocab_size};
    trainer t;
    int first = -1;
    if (trainer_init(&t, &m, &o, (train_data_source){&src, rs_next, rs_get, rs_set})) goto out;
    if (resume && trainer_resume(&t, resume)) { trainer_free(&t); goto out; }
    first = t.step;
    while (t.step < o.steps) {
        train_step_info s;
        if (trainer_step(&t, &s)) { first = -1; break; }
        losses[s.step - 1] = s.loss;
        if (ckpt_dir && trainer_save(&t, NULL)) { first = -1; break; }
    }
    if (check_frozen) {
        CHECK(!memcmp(base, m.params, sizeof(float) * m.n_params), "base weights unchanged by LoRA training");
        CHECK(!m.grads, "no gradient buffer for the base weights");
    }
    llama_trainable p = llama_trainable_params(&m);
    memcpy(adapters, p.params, sizeof(float) * p.n);
    *n = p.n;
    trainer_free(&t);
out:
    free(base);
    llama_free(&m);
    return first;
}

static void test_train_resume(void) {
    char dir[512], mid[600];
    snprintf(dir, sizeof dir, "%s/run", g_dir);
    float full[6] = {0}, res[6] = {0};
    float *a1 = malloc(1 << 20), *a2 = malloc(1 << 20);
    size_t n1 = 0, n2 = 0;
    CHECK(run_lora(dir, NULL, full, a1, &n1, 1) == 0, "LoRA run: %s", halo_error());
    CHECK(full[5] < full[0], "LoRA training lowers the loss: %g -> %g", full[0], full[5]);
    checkpoint_path(mid, sizeof mid, dir, 3);
    CHECK(run_lora(NULL, mid, res, a2, &n2, 0) == 3, "resumed at step 3: %s", halo_error());
    int same = n1 == n2 && !memcmp(a1, a2, n1 * sizeof(float));
    for (int i = 3; i < 6; i++) same &= !memcmp(&full[i], &res[i], sizeof(float));
    CHECK(same, "resumed LoRA run equals the uninterrupted one bit for bit (losses %.9g / %.9g at step 6)", full[5], res[5]);
    // a LoRA checkpoint holds the adapters only, and is refused by a model without them (and the other way round)
    st_file f;
    CHECK(st_open(mid, &f) == HALO_OK && f.n_tensors == 3 * 2 * LIN_COUNT * 2 &&
          st_find(&f, "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight") &&
          !st_find(&f, "model.embed_tokens.weight"), "checkpoint holds the adapters and their moments only");
    st_close(&f);
    llama_model m;
    tiny_model(&m, 12);
    checkpoint_meta meta;
    CHECK(checkpoint_load(mid, &m, NULL, &meta) == HALO_ERR && strstr(halo_error(), "LoRA") && strstr(halo_error(), mid),
          "LoRA checkpoint into a model without adapters: %s", halo_error());
    lora_config other = {.rank = 2, .alpha = 8, .dropout = 0.1, .kinds = (1u << LIN_COUNT) - 1};
    llama_lora_enable(&m, &other, 1);
    CHECK(checkpoint_load(mid, &m, NULL, &meta) == HALO_ERR && strstr(halo_error(), "differ"),
          "LoRA checkpoint of another rank: %s", halo_error());
    free(a1); free(a2);
    llama_free(&m);
}

// ---- PEFT adapter files ----

static void write_text(const char *dir, const char *name, const char *text) {
    char *p = halo_path_join(dir, name);
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
    free(p);
}

static void test_adapter_files(void) {
    char dir[512], bf[512], bad[512];
    snprintf(dir, sizeof dir, "%s/adapter", g_dir);
    snprintf(bf, sizeof bf, "%s/adapter_bf16", g_dir);
    snprintf(bad, sizeof bad, "%s/bad", g_dir);
    llama_model m, m2, m3;
    tiny_model(&m, 21);
    lora_config c = {.rank = 4, .alpha = 16, .dropout = 0.05, .kinds = (1u << LIN_Q) | (1u << LIN_V) | (1u << LIN_DOWN)};
    lora_random(&m, &c, 5);
    CHECK(llama_lora_save(&m, dir, "/models/base", 0) == HALO_OK, "save: %s", halo_error());
    CHECK(llama_lora_save(&m, bf, NULL, 1) == HALO_OK, "save bf16: %s", halo_error());
    tiny_model(&m2, 21);
    CHECK(llama_lora_load(&m2, dir) == HALO_OK, "load: %s", halo_error());
    const lora_config *c2 = llama_get_lora(&m2);
    CHECK(c2 && c2->rank == 4 && c2->alpha == 16 && c2->dropout == 0.05 && c2->kinds == c.kinds, "config round trip");
    llama_trainable p = llama_trainable_params(&m), p2 = llama_trainable_params(&m2);
    CHECK(p.n == p2.n && !memcmp(p.params, p2.params, sizeof(float) * p.n), "F32 adapter tensors round trip exactly");
    halo_batch b;
    rand_batch(&b, 2, 8, m.cfg.vocab_size, 5);
    CHECK(llama_forward(&m, &b, NULL) == llama_forward(&m2, &b, NULL), "loaded adapter gives the same loss");
    tiny_model(&m3, 21);
    CHECK(llama_lora_load(&m3, bf) == HALO_OK, "load bf16: %s", halo_error());
    llama_trainable p3 = llama_trainable_params(&m3);
    double worst = 0;
    for (size_t i = 0; i < p.n; i++) worst = fmax(worst, fabs(p3.params[i] - p.params[i]) / fmax(fabs(p.params[i]), 1e-30));
    CHECK(worst <= 1.0 / 256, "BF16 adapter within BF16 rounding: worst rel %.3g", worst);
    char *text = NULL, *cp = halo_path_join(dir, "adapter_config.json");
    CHECK(halo_read_file(cp, &text, NULL) == 0 && strstr(text, "\"peft_type\":\t\"LORA\"") &&
          strstr(text, "\"/models/base\"") && strstr(text, "\"down_proj\"") && !strstr(text, "\"k_proj\""),
          "adapter_config.json: %s", text ? text : "(missing)");
    free(text); free(cp);
    // bad files: each refused with the key or tensor named, and the model left without adapters
    mkdir(bad, 0777);
    char *src = halo_path_join(dir, "adapter_model.safetensors"), *dst = halo_path_join(bad, "adapter_model.safetensors");
    halo_copy_file(src, dst);
    struct { const char *config, *want; } cases[] = {
        {"{\"r\": 4, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\", \"v_proj\", \"down_proj\"], \"use_dora\": true}", "use_dora"},
        {"{\"r\": 4, \"lora_alpha\": 16, \"target_modules\": \"q_proj|v_proj\"}", "target_modules"},
        {"{\"r\": 4, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\", \"fc1\"]}", "fc1"},
        {"{\"lora_alpha\": 16, \"target_modules\": [\"q_proj\"]}", "'r'"},
        {"{\"r\": 0, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\"]}", "rank 0"},
        {"{\"r\": 4, \"lora_alpha\": 16, \"lora_dropout\": 1.5, \"target_modules\": [\"q_proj\"]}", "dropout"},
        {"{\"r\": 8, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\", \"v_proj\", \"down_proj\"]}", "lora_A"},
        {"{\"r\": 4, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\", \"v_proj\", \"down_proj\", \"k_proj\"]}", "k_proj.lora_A"},
        {"{\"r\": 4, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\", \"v_proj\"]}", "does not belong"},
        {"{\"r\": 4, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\"], \"bias\": \"all\"}", "bias"},
        {"not json", "adapter_config.json"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        write_text(bad, "adapter_config.json", cases[i].config);
        llama_model mb;
        tiny_model(&mb, 21);
        int rc = llama_lora_load(&mb, bad);
        CHECK(rc == HALO_ERR && strstr(halo_error(), cases[i].want) && !llama_get_lora(&mb),
              "bad adapter %zu refused naming '%s': %s", i, cases[i].want, rc ? halo_error() : "(loaded)");
        llama_free(&mb);
    }
    free(src); free(dst);
    halo_batch_free(&b);
    llama_free(&m); llama_free(&m2); llama_free(&m3);
}

// ---- HALO under the adapters ----

static void test_halo_lora(void) {
    halo_batch b;
    rand_batch(&b, 2, 16, 64, 8);
    lora_config c = {.rank = 4, .alpha = 8, .dropout = 0, .kinds = (1u << LIN_COUNT) - 1};
    llama_model ref;
    tiny_model(&ref, 30);
    lora_random(&ref, &c, 2);
    double l_ref = loss_grads(&ref, &b);
    llama_trainable pr = llama_trainable_params(&ref);
    for (int prec = HALO_PREC_INT8; prec <= HALO_PREC_FP8; prec++)
        for (int level = 0; level <= 2; level++)
            for (int identity = 1; identity >= 0; identity--) {
                llama_model m;
                tiny_model(&m, 30);
                model_halo_config hc = model_halo_config_default();
                hc.prec = (halo_precision)prec; hc.level = level; hc.identity_quant = identity;
                CHECK(llama_set_halo(&m, &hc) == HALO_OK, "%s", halo_error());
                lora_random(&m, &c, 2);
                double l = loss_grads(&m, &b);
                llama_trainable p = llama_trainable_params(&m);
                double e = rel_l2_f(p.grads, pr.grads, p.n);
                const char *pn = prec == HALO_PREC_INT8 ? "int8" : "fp8";
                if (identity) {
                    char name[96];
                    snprintf(name, sizeof name, "LoRA on HALO %s level %d, identity quantizers: loss", pn, level);
                    CHECK_REL(l, l_ref, 1e-5, name);
                    CHECK(e < 1e-5, "%s: adapter gradients rel err %.3g", name, e);
                } else {
                    printf("LoRA on HALO %s level %d: loss %.6f (fp32 base %.6f), adapter gradients rel err %.3g\n", pn,
                           level, l, l_ref, e);
                    CHECK(fabs(l - l_ref) < 0.02 * l_ref && e < 0.2, "LoRA on HALO %s level %d: loss %.6f vs %.6f, "
                          "gradient rel err %.3g", pn, level, l, l_ref, e);
                }
                llama_free(&m);
            }
    halo_batch_free(&b);
    llama_free(&ref);
}

static void test_init(void) {
    llama_model m;
    tiny_model(&m, 40);
    halo_batch b;
    rand_batch(&b, 2, 8, m.cfg.vocab_size, 3);
    float before = llama_forward(&m, &b, NULL);
    lora_config c = lora_config_default();
    CHECK(llama_lora_enable(&m, &c, 1) == HALO_OK, "enable: %s", halo_error());
    CHECK(llama_forward(&m, &b, NULL) == before, "fresh adapters (B = 0) leave the loss bit for bit");
    llama_trainable p = llama_trainable_params(&m);
    // A uniform in +-1/sqrt(in): the bound holds and the spread is the uniform's (variance bound^2 / 3)
    const llama_param *pa = &p.table[0];
    double bound = 1.0 / sqrt((double)pa->shape[1]), ss = 0, mx = 0;
    for (size_t i = 0; i < pa->numel; i++) { ss += (double)p.params[pa->offset + i] * p.params[pa->offset + i]; mx = fmax(mx, fabs(p.params[pa->offset + i])); }
    double var = ss / pa->numel, want = bound * bound / 3;
    CHECK(mx <= bound && fabs(var - want) < 0.25 * want, "A init: max %.4f <= %.4f, variance %.5f vs %.5f", mx, bound, var, want);
    lora_config badc = c;
    badc.rank = 0;
    CHECK(llama_lora_enable(&m, &badc, 1) == HALO_ERR && strstr(halo_error(), "rank"), "rank 0 refused: %s", halo_error());
    badc = c; badc.dropout = 1;
    CHECK(llama_lora_enable(&m, &badc, 1) == HALO_ERR && strstr(halo_error(), "dropout"), "dropout 1 refused: %s", halo_error());
    badc = c; badc.kinds = 0;
    CHECK(llama_lora_enable(&m, &badc, 1) == HALO_ERR && strstr(halo_error(), "no linear"), "no linears refused: %s", halo_error());
    // configuration JSON round trip
    c.rank = 7; c.alpha = 3.5; c.dropout = 0.125; c.kinds = (1u << LIN_K) | (1u << LIN_UP);
    char *j = lora_config_to_json(&c);
    lora_config back;
    CHECK(lora_config_from_json(j, "test", &back) == HALO_OK && back.rank == 7 && back.alpha == 3.5 &&
          back.dropout == 0.125 && back.kinds == c.kinds, "config JSON round trip: %s", j);
    free(j);
    halo_batch_free(&b);
    llama_free(&m);
}

// The dropout mask's statistics (one hash draws four elements' 16-bit values): for p 0.05, 0.3 and 0.5 over 4M
// elements, the kept fraction is 1 - ceil(p 2^16) / 2^16 within 4 standard errors, each element and the four before
// it (lanes of one hash, and across hashes) keep independently (joint frequency vs the product, 4.5 standard errors:
// 16 such checks a p), another key
// or linear draws another mask (about 2 p (1 - p) of the elements differ), and p 0 keeps all.
static void test_dropout_mask(void) {
    const size_t n = (size_t)1 << 22;
    const double ps[3] = {0.05, 0.3, 0.5};
    for (int k = 0; k < 3; k++) {
        const double p = ps[k];
        const uint32_t thr = lora_dropout_threshold(p);
        const double q = 1.0 - thr / 65536.0;   // the exact keep probability of a 16-bit draw
        const uint64_t key = 0xC0FFEEULL + k;
        size_t kept = 0, pair[4][4] = {{0}}, other_key = 0, other_lin = 0;   // pair[distance - 1][lane]
        int last[4] = {0};   // the keeps of elements i - 1 .. i - 4
        for (size_t i = 0; i < n; i++) {
            const int a = lora_dropout_keeps(key, 5, i, thr);
            kept += a;
            if (i >= 4)
                for (int d = 0; d < 4; d++) pair[d][i % 4] += a && last[d];
            for (int d = 3; d > 0; d--) last[d] = last[d - 1];
            last[0] = a;
            other_key += a != lora_dropout_keeps(key + 1, 5, i, thr);
            other_lin += a != lora_dropout_keeps(key, 6, i, thr);
        }
        char what[64];
        const double se = sqrt(q * (1 - q) / n), f = (double)kept / n;
        snprintf(what, sizeof what, "p %g: kept fraction %.5f vs %.5f", p, f, q);
        CHECK(fabs(f - q) < 4 * se && fabs(q - (1 - p)) < 2e-5, "dropout mask %s (4 se %.2e)", what, 4 * se);
        for (int d = 0; d < 4; d++)
            for (int lane = 0; lane < 4; lane++) {
                const double m = n / 4.0 - 1, jf = pair[d][lane] / m, sej = sqrt(q * q * (1 - q * q) / m);
                CHECK(fabs(jf - q * q) < 4.5 * sej, "dropout mask p %g: element of lane %d and the one %d before kept "
                      "together %.5f vs %.5f (4.5 se %.2e)", p, lane, d + 1, jf, q * q, 4.5 * sej);
            }
        const double d = 2 * q * (1 - q), sed = sqrt(d * (1 - d) / n);
        CHECK(fabs((double)other_key / n - d) < 4 * sed && fabs((double)other_lin / n - d) < 4 * sed,
              "dropout mask p %g: another key / linear differs in %.5f / %.5f of the elements, vs %.5f", p,
              (double)other_key / n, (double)other_lin / n, d);
    }
    size_t dropped = 0;
    for (size_t i = 0; i < 100000; i++) dropped += !lora_dropout_keeps(77, 3, i, lora_dropout_threshold(0));
    CHECK(dropped == 0, "dropout mask p 0 keeps every element (%zu dropped)", dropped);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/halo_test_lora_%d", (int)getpid());
    mkdir(g_dir, 0777);
    test_init();
    test_dropout_mask();
    test_merge_identity((1u << LIN_COUNT) - 1, "all seven linears");
    test_merge_identity((1u << LIN_Q) | (1u << LIN_V), "q and v");
    test_finite_difference();
    test_train_resume();
    test_adapter_files();
    test_halo_lora();
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd)) {}
    TEST_END();
}
