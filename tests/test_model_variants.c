// The Llama variants beyond Llama itself: linear biases (Qwen2's q, k, v; Llama's attention_bias / mlp_bias) and
// Qwen3's per-head q/k RMSNorm. config.json parsing and round trip; the model's loss against a float64 reference
// forward written out here; gradients against directional finite differences (all parameters, and the new tensors
// alone); zero biases give the bias-free model's loss and gradients bit for bit; the KV-cached decoder gives the
// forward's logits; HALO with identity quantizers reproduces fp32; a Hugging Face directory round-trips; LoRA
// leaves the new tensors frozen; `halo finetune` and `halo eval` run Qwen2 and Qwen3 directories.
#include <math.h>
#include "model/linear.h"
#include "model/llama.h"
#include "model/lora.h"
#include "test.h"
#include "test_cli.h"
#include "test_variants.h"
#include "util/error.h"
#include "util/fileio.h"

enum { LLAMA = T_LLAMA, QWEN2 = T_QWEN2, QWEN3 = T_QWEN3 };
static llama_config tiny(unsigned bias_kinds, int arch) {
    llama_config c = {0};
    c.vocab_size = 48; c.dim = 32; c.hidden_dim = 40; c.n_layers = 2; c.n_heads = 4; c.n_kv_heads = 2;
    c.head_dim = arch == QWEN3 ? 12 : 8;   // Qwen3's heads are wider than hidden_size / heads
    c.max_pos = 64; c.norm_eps = 1e-5f; c.rope_theta = 1000000; c.tie_embeddings = arch != LLAMA;
    c.bos_id = 1; c.eos_id = 2;
    t_make_variant(&c, arch);
    c.bias_kinds = bias_kinds;
    return c;
}

static int is_new_tensor(const char *name) { return t_is_variant_tensor(name); }

// random weights, and the biases and q/k norm weights drawn (test_variants.h)
static void random_model(llama_model *m, const llama_config *c, uint64_t seed) {
    CHECK(llama_init(m, c) == HALO_OK, "init: %s", halo_error());
    llama_init_random(m, seed);
    t_draw_variant_tensors(m, seed);
}

static void batch_of(halo_batch *b, int B, int T, int vocab, unsigned long long seed) {
    halo_batch_alloc(b, B, T);
    for (int i = 0; i < B * T; i++) b->input_ids[i] = (int32_t)(t_rng_next(&seed) % (unsigned)vocab);
    halo_batch_shift_targets(b);
}

// ---- float64 reference forward (mean next-token cross-entropy), straight from the HF modeling code ----

static void ref_rmsnorm(double *y, const double *x, const float *w, int D, double eps) {
    double ss = 0;
    for (int i = 0; i < D; i++) ss += x[i] * x[i];
    double r = 1.0 / sqrt(ss / D + eps);
    for (int i = 0; i < D; i++) y[i] = x[i] * r * w[i];
}
static void ref_rmsnorm_inplace(double *x, const float *w, int D, double eps) {
    double ss = 0;
    for (int i = 0; i < D; i++) ss += x[i] * x[i];
    double r = 1.0 / sqrt(ss / D + eps);
    for (int i = 0; i < D; i++) x[i] = x[i] * r * w[i];
}
static void ref_linear(double *y, const double *x, const float *W, const float *bias, int in, int out) {
    for (int o = 0; o < out; o++) {
        double s = bias ? bias[o] : 0;
        for (int i = 0; i < in; i++) s += (double)W[(size_t)o * in + i] * x[i];
        y[o] = s;
    }
}
static double g_ref_pos_scale = 1;   // linear RoPE scaling: positions divided by its factor
static void ref_rope(double *v, int pos, int hd, double theta) {   // HF's rotate_half layout
    for (int i = 0; i < hd / 2; i++) {
        double f = pos / g_ref_pos_scale / pow(theta, 2.0 * i / hd), c = cos(f), s = sin(f), a = v[i], b = v[i + hd / 2];
        v[i] = a * c - b * s;
        v[i + hd / 2] = b * c + a * s;
    }
}
static double ref_loss(const llama_model *m, const halo_batch *b) {
    const llama_config *c = &m->cfg;
    const int T = b->T, D = c->dim, F = c->hidden_dim, V = c->vocab_size, hd = c->head_dim, Hq = c->n_heads;
    const int Hkv = c->n_kv_heads, qd = Hq * hd, kvd = Hkv * hd;
    double *x = malloc(sizeof(double) * T * D), *xn = malloc(sizeof(double) * D), *q = malloc(sizeof(double) * T * qd);
    double *k = malloc(sizeof(double) * T * kvd), *v = malloc(sizeof(double) * T * kvd), *att = malloc(sizeof(double) * qd);
    double *o = malloc(sizeof(double) * D), *g = malloc(sizeof(double) * F), *u = malloc(sizeof(double) * F);
    double *lg = malloc(sizeof(double) * V), *sc = malloc(sizeof(double) * T);
    double total = 0;
    long count = 0;
    for (int bi = 0; bi < b->B; bi++) {
        const int32_t *ids = b->input_ids + (size_t)bi * T, *tg = b->targets + (size_t)bi * T;
        for (int t = 0; t < T; t++) for (int i = 0; i < D; i++) x[(size_t)t * D + i] = m->w.embed[(size_t)ids[t] * D + i];
        for (int l = 0; l < c->n_layers; l++) {
            const llama_layer_weights *W = &m->w.layers[l];
            for (int t = 0; t < T; t++) {
                ref_rmsnorm(xn, x + (size_t)t * D, W->attn_norm, D, c->norm_eps);
                ref_linear(q + (size_t)t * qd, xn, W->wq, W->bias[LIN_Q], D, qd);
                ref_linear(k + (size_t)t * kvd, xn, W->wk, W->bias[LIN_K], D, kvd);
                ref_linear(v + (size_t)t * kvd, xn, W->wv, W->bias[LIN_V], D, kvd);
                if (W->q_norm) {   // Qwen3: each head of q and k normalized (in place: one head at a time)
                    for (int h = 0; h < Hq; h++) ref_rmsnorm_inplace(q + (size_t)t * qd + h * hd, W->q_norm, hd, c->norm_eps);
                    for (int h = 0; h < Hkv; h++) ref_rmsnorm_inplace(k + (size_t)t * kvd + h * hd, W->k_norm, hd, c->norm_eps);
                }
                if (!llama_layer_rope(c, l)) continue;   // SmolLM3's layers without RoPE
                for (int h = 0; h < Hq; h++) ref_rope(q + (size_t)t * qd + h * hd, t, hd, c->rope_theta);
                for (int h = 0; h < Hkv; h++) ref_rope(k + (size_t)t * kvd + h * hd, t, hd, c->rope_theta);
            }
            for (int t = 0; t < T; t++) {   // causal attention, grouped heads
                for (int h = 0; h < Hq; h++) {
                    const int kh = h / (Hq / Hkv);
                    double mx = -1e300, sum = 0;
                    for (int s = 0; s <= t; s++) {
                        double d = 0;
                        for (int i = 0; i < hd; i++) d += q[(size_t)t * qd + h * hd + i] * k[(size_t)s * kvd + kh * hd + i];
                        sc[s] = d / sqrt((double)hd);
                        mx = sc[s] > mx ? sc[s] : mx;
                    }
                    for (int s = 0; s <= t; s++) { sc[s] = exp(sc[s] - mx); sum += sc[s]; }
                    for (int i = 0; i < hd; i++) {
                        double a = 0;
                        for (int s = 0; s <= t; s++) a += sc[s] / sum * v[(size_t)s * kvd + kh * hd + i];
                        att[h * hd + i] = a;
                    }
                }
                ref_linear(o, att, W->wo, W->bias[LIN_O], qd, D);
                // (k and v of every position came from the layer's input: the residual may change now)
                for (int i = 0; i < D; i++) x[(size_t)t * D + i] += o[i];
            }
            for (int t = 0; t < T; t++) {
                double *xt = x + (size_t)t * D;
                ref_rmsnorm(xn, xt, W->ffn_norm, D, c->norm_eps);
                ref_linear(g, xn, W->w_gate, W->bias[LIN_GATE], D, F);
                ref_linear(u, xn, W->w_up, W->bias[LIN_UP], D, F);
                for (int i = 0; i < F; i++) g[i] = g[i] / (1 + exp(-g[i])) * u[i];
                ref_linear(o, g, W->w_down, W->bias[LIN_DOWN], F, D);
                for (int i = 0; i < D; i++) xt[i] += o[i];
            }
        }
        for (int t = 0; t < T; t++) {
            if (tg[t] < 0) continue;
            ref_rmsnorm(xn, x + (size_t)t * D, m->w.final_norm, D, c->norm_eps);
            ref_linear(lg, xn, m->w.lm_head, NULL, D, V);
            double mx = -1e300, sum = 0;
            for (int i = 0; i < V; i++) mx = lg[i] > mx ? lg[i] : mx;
            for (int i = 0; i < V; i++) sum += exp(lg[i] - mx);
            total += log(sum) + mx - lg[tg[t]];
            count++;
        }
    }
    free(x); free(xn); free(q); free(k); free(v); free(att); free(o); free(g); free(u); free(lg); free(sc);
    return count ? total / count : 0;
}

static double loss_grads(llama_model *m, const halo_batch *b) {
    llama_alloc_grads(m);
    llama_zero_grads(m);
    double l = llama_forward(m, b, NULL);
    llama_backward(m, b, 1.0f);
    return l;
}

static void test_config(void) {
    const char *qwen = "{\"architectures\":[\"Qwen2ForCausalLM\"],\"model_type\":\"qwen2\",\"vocab_size\":48,"
                       "\"hidden_size\":32,\"intermediate_size\":40,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
                       "\"num_key_value_heads\":2,\"rms_norm_eps\":1e-6,\"rope_theta\":1000000.0,\"hidden_act\":\"silu\","
                       "\"tie_word_embeddings\":true,\"use_sliding_window\":false,\"sliding_window\":32768,"
                       "\"max_window_layers\":21,\"max_position_embeddings\":32768}";
    llama_config c;
    CHECK(llama_config_from_json(qwen, "qwen2 config", &c) == HALO_OK && c.arch == ARCH_QWEN2 && c.bias_kinds == 0x7 &&
          c.sliding_window == 0, "Qwen2ForCausalLM: q, k, v biases (bias_kinds %#x), no window: %s", c.bias_kinds,
          halo_error());
    char *js = llama_config_to_json(&c, "bfloat16", 0);
    llama_config back;
    CHECK(llama_config_from_json(js, "written config", &back) == HALO_OK && back.arch == ARCH_QWEN2 && back.bias_kinds == 0x7 &&
          strstr(js, "\"Qwen2ForCausalLM\"") && strstr(js, "\"model_type\":\"qwen2\"") &&
          strstr(js, "\"use_sliding_window\":false"), "the written Qwen2 config reads back: %s", js);
    free(js);
    char buf[2048];
    snprintf(buf, sizeof buf, "%s", qwen);
    memcpy(strstr(buf, "\"use_sliding_window\":false"), "\"use_sliding_window\":true ", 26);
    CHECK(llama_config_from_json(buf, "windowed", &c) == HALO_ERR && strstr(halo_error(), "use_sliding_window"),
          "use_sliding_window true is refused naming the key: %s", halo_error());
    const char *base = "\"vocab_size\":48,\"hidden_size\":32,\"intermediate_size\":40,\"num_hidden_layers\":2,"
                       "\"num_attention_heads\":4";
    snprintf(buf, sizeof buf, "{\"architectures\":[\"LlamaForCausalLM\"],%s,\"attention_bias\":true}", base);
    CHECK(llama_config_from_json(buf, "llama", &c) == HALO_OK && c.bias_kinds == 0xF && c.arch == ARCH_LLAMA,
          "Llama attention_bias: q, k, v, o biases (%#x)", c.bias_kinds);
    snprintf(buf, sizeof buf, "{\"architectures\":[\"LlamaForCausalLM\"],%s,\"mlp_bias\":true}", base);
    CHECK(llama_config_from_json(buf, "llama", &c) == HALO_OK && c.bias_kinds == 0x70, "Llama mlp_bias: gate, up, down");
    js = llama_config_to_json(&c, NULL, 0);
    CHECK(strstr(js, "\"mlp_bias\":true") && strstr(js, "\"attention_bias\":false"), "and written back: %s", js);
    free(js);
    const char *qwen3 = "{\"architectures\":[\"Qwen3ForCausalLM\"],\"model_type\":\"qwen3\",\"vocab_size\":48,"
                        "\"hidden_size\":32,\"intermediate_size\":40,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
                        "\"num_key_value_heads\":2,\"head_dim\":12,\"rms_norm_eps\":1e-6,\"rope_theta\":1000000,"
                        "\"attention_bias\":false,\"tie_word_embeddings\":true,\"use_sliding_window\":false}";
    CHECK(llama_config_from_json(qwen3, "qwen3 config", &c) == HALO_OK && c.arch == ARCH_QWEN3 && c.qk_norm &&
          c.bias_kinds == 0 && c.head_dim == 12, "Qwen3ForCausalLM: q/k norms, no biases, head_dim 12: %s", halo_error());
    js = llama_config_to_json(&c, NULL, 0);
    CHECK(llama_config_from_json(js, "written config", &back) == HALO_OK && back.arch == ARCH_QWEN3 && back.qk_norm &&
          strstr(js, "\"Qwen3ForCausalLM\""), "the written Qwen3 config reads back: %s", js);
    free(js);
    snprintf(buf, sizeof buf, "%s", qwen3);
    memcpy(strstr(buf, "\"attention_bias\":false"), "\"attention_bias\":true ", 22);
    CHECK(llama_config_from_json(buf, "qwen3 with biases", &c) == HALO_OK && c.bias_kinds == 0xF && c.qk_norm,
          "Qwen3 with attention_bias: q, k, v, o biases (%#x)", c.bias_kinds);
    // SmolLM3: no_rope_layers (1: RoPE) as given, or every no_rope_layer_interval-th layer without it
    const char *smol = "{\"architectures\":[\"SmolLM3ForCausalLM\"],\"vocab_size\":48,\"hidden_size\":32,"
                       "\"intermediate_size\":40,\"num_hidden_layers\":4,\"num_attention_heads\":4,"
                       "\"num_key_value_heads\":2,\"no_rope_layers\":[1,0,1,0],\"use_sliding_window\":false}";
    CHECK(llama_config_from_json(smol, "smollm3 config", &c) == HALO_OK && c.arch == ARCH_SMOLLM3 &&
          llama_layer_rope(&c, 0) && !llama_layer_rope(&c, 1) && llama_layer_rope(&c, 2) && !llama_layer_rope(&c, 3),
          "SmolLM3ForCausalLM: layers 1 and 3 without RoPE: %s", halo_error());
    js = llama_config_to_json(&c, NULL, 0);
    CHECK(llama_config_from_json(js, "written config", &back) == HALO_OK && back.arch == ARCH_SMOLLM3 &&
          back.nope[0] == c.nope[0] && strstr(js, "\"no_rope_layers\":[1,0,1,0]"), "the written SmolLM3 config: %s", js);
    free(js);
    CHECK(llama_config_from_json("{\"model_type\":\"smollm3\",\"vocab_size\":48,\"hidden_size\":32,"
                                 "\"intermediate_size\":40,\"num_hidden_layers\":8,\"num_attention_heads\":4}",
                                 "smollm3 default", &c) == HALO_OK && c.nope[0] == 0x88,
          "SmolLM3 without the list: every 4th layer without RoPE (mask %#llx)", (unsigned long long)c.nope[0]);
    snprintf(buf, sizeof buf, "%s", smol);
    memcpy(strstr(buf, "[1,0,1,0]"), "[1,0,1,2]", 9);
    CHECK(llama_config_from_json(buf, "bad smollm3", &c) == HALO_ERR && strstr(halo_error(), "no_rope_layers[3]"),
          "a no_rope_layers value other than 0 / 1 is refused naming it: %s", halo_error());
    // Phi-3: a window like Mistral's; a partial rotary factor is refused
    const char *phi = "{\"architectures\":[\"Phi3ForCausalLM\"],\"vocab_size\":48,\"hidden_size\":32,"
                      "\"intermediate_size\":40,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
                      "\"num_key_value_heads\":4,\"sliding_window\":2047,\"rope_scaling\":null}";
    CHECK(llama_config_from_json(phi, "phi3 config", &c) == HALO_OK && c.arch == ARCH_PHI3 && c.sliding_window == 2047,
          "Phi3ForCausalLM with its sliding_window: %s", halo_error());
    js = llama_config_to_json(&c, NULL, 0);
    CHECK(strstr(js, "\"Phi3ForCausalLM\"") && strstr(js, "\"sliding_window\":2047"), "written back: %s", js);
    CHECK(!c.has_pad_id && strstr(js, "\"pad_token_id\":null"), "no pad_token_id: none, written as null: %s", js);
    free(js);
    snprintf(buf, sizeof buf, "%.*s,\"pad_token_id\":32000}", (int)strlen(phi) - 1, phi);
    CHECK(llama_config_from_json(buf, "phi3 config", &c) == HALO_OK && c.has_pad_id && c.pad_id == 32000,
          "pad_token_id 32000 read: %s", halo_error());
    js = llama_config_to_json(&c, NULL, 0);
    CHECK(strstr(js, "\"pad_token_id\":32000") != NULL, "and written back: %s", js);
    snprintf(buf, sizeof buf, "%.*s,\"partial_rotary_factor\":0.75}", (int)strlen(phi) - 1, phi);
    CHECK(llama_config_from_json(buf, "phi4-mini-like", &c) == HALO_ERR && strstr(halo_error(), "partial_rotary_factor"),
          "partial_rotary_factor 0.75 refused naming the key: %s", halo_error());
    llama_model m;
    llama_config q3 = tiny(0, QWEN3);
    CHECK(llama_init(&m, &q3) == HALO_OK, "init");
    const llama_param *qn = llama_find_param(&m, "model.layers.1.self_attn.q_norm.weight");
    CHECK(qn && qn->ndim == 1 && qn->shape[0] == 12 && qn->no_decay && llama_find_param(&m, "model.layers.0.self_attn.k_norm.weight"),
          "tensor table: q_norm / k_norm [head_dim] without weight decay");
    llama_init_random(&m, 3);
    CHECK(qn && m.params[qn->offset] == 1.0f, "random init: q/k norm weights 1");
    llama_free(&m);
    llama_config q = tiny(0x7, QWEN2);
    CHECK(llama_init(&m, &q) == HALO_OK, "init");
    const llama_param *p = llama_find_param(&m, "model.layers.1.self_attn.k_proj.bias");
    CHECK(p && p->ndim == 1 && p->shape[0] == 16 && p->no_decay && !llama_find_param(&m, "model.layers.0.self_attn.o_proj.bias"),
          "tensor table: k_proj.bias [16] without weight decay, no o_proj.bias");
    llama_init_random(&m, 3);
    CHECK(p && m.params[p->offset] == 0.0f && m.params[p->offset + 15] == 0.0f, "random init: biases 0");
    llama_free(&m);
}

// float64 reference, finite differences, zero biases, HALO identity quantizers
static void test_model(unsigned kinds, int arch, const char *what) {
    llama_config c = tiny(kinds, arch);
    llama_model m;
    random_model(&m, &c, 11);
    halo_batch b;
    batch_of(&b, 2, 12, c.vocab_size, 5);
    const double l = loss_grads(&m, &b), lr = ref_loss(&m, &b);
    CHECK(fabs(l - lr) <= 2e-6 * lr, "%s: loss %.9g vs float64 reference %.9g (rel %.2g)", what, l, lr, fabs(l - lr) / lr);
    // directional derivatives: all parameters, then the biases alone
    float *g = malloc(sizeof(float) * m.n_params), *p0 = malloc(sizeof(float) * m.n_params), *v = malloc(sizeof(float) * m.n_params);
    memcpy(g, m.grads, sizeof(float) * m.n_params);
    memcpy(p0, m.params, sizeof(float) * m.n_params);
    unsigned long long s = 17;
    const int has_new = kinds || c.qk_norm;   // (SmolLM3 adds no tensor)
    for (int biases_only = 0; biases_only <= has_new; biases_only++) {
        memset(v, 0, sizeof(float) * m.n_params);
        double gv = 0;
        for (int i = 0; i < m.n_table; i++) {
            const llama_param *t = &m.table[i];
            if (biases_only && !is_new_tensor(t->name)) continue;
            for (size_t j = 0; j < t->numel; j++) {
                v[t->offset + j] = (float)t_rand_normal(&s);
                gv += (double)g[t->offset + j] * v[t->offset + j];
            }
        }
        const double h = 1e-4;   // 1e-3 is past the linear range along every parameter of the Qwen3 model
        for (size_t i = 0; i < m.n_params; i++) m.params[i] = (float)(p0[i] + h * v[i]);
        const double lp = ref_loss(&m, &b);
        for (size_t i = 0; i < m.n_params; i++) m.params[i] = (float)(p0[i] - h * v[i]);
        const double lm = ref_loss(&m, &b);
        memcpy(m.params, p0, sizeof(float) * m.n_params);
        const double fd = (lp - lm) / (2 * h);
        printf("%s: directional derivative along %s: analytic %.7f, float64 central difference %.7f\n", what,
               biases_only ? "the biases / q, k norms" : "every parameter", gv, fd);
        CHECK(fabs(fd - gv) <= 2e-3 * fabs(fd) + 1e-5, "%s: %s: analytic %.7g vs numeric %.7g", what,
              biases_only ? "biases / q, k norms" : "all parameters", gv, fd);
    }
    // the KV-cached decoder: the forward's logits, position by position (row 0 of the batch)
    {
        const int T = b.T, V = c.vocab_size;
        float *lf = malloc(sizeof(float) * (size_t)b.B * T * V), *ld = malloc(sizeof(float) * V);
        llama_forward(&m, &b, lf);
        llama_kv_cache kc;
        llama_kv_init(&kc, &c, T);
        double worst = 0;
        for (int t = 0; t < T; t++) {
            llama_decode_step(&m, &kc, b.input_ids[t], t, ld);
            worst = fmax(worst, rel_l2_f(ld, lf + (size_t)t * V, V));
        }
        llama_kv_free(&kc);
        CHECK(worst < 1e-5, "%s: KV-cached decoding gives the forward's logits (worst position rel %.2g)", what, worst);
        free(lf); free(ld);
    }
    if (kinds) {   // zero biases: the bias-free model (q/k norms kept), bit for bit
        llama_config c0 = c;
        c0.bias_kinds = 0;
        if (c0.arch == ARCH_QWEN2) c0.arch = ARCH_LLAMA;   // (Qwen2 always has them)
        llama_model m0;
        CHECK(llama_init(&m0, &c0) == HALO_OK, "init without biases");
        for (int i = 0; i < m.n_table; i++) {
            const llama_param *t = &m.table[i];
            const llama_param *t0 = llama_find_param(&m0, t->name);
            if (t0) memcpy(m0.params + t0->offset, m.params + t->offset, sizeof(float) * t->numel);
            else memset(m.params + t->offset, 0, sizeof(float) * t->numel);
        }
        const float lz = (float)loss_grads(&m, &b), l0 = (float)loss_grads(&m0, &b);
        int same = lz == l0;
        for (int i = 0; i < m0.n_table; i++) {
            const llama_param *t0 = &m0.table[i], *t = llama_find_param(&m, t0->name);
            same &= t && !memcmp(m0.grads + t0->offset, m.grads + t->offset, sizeof(float) * t0->numel);
        }
        CHECK(same, "%s: zero biases give the bias-free model's loss (%.9g vs %.9g) and gradients bit for bit", what, lz, l0);
        llama_free(&m0);
    }
    // HALO with identity quantizers: the biases and norms sit outside the rotated, quantized product
    memcpy(m.params, p0, sizeof(float) * m.n_params);
    const float lf = (float)loss_grads(&m, &b);
    memcpy(g, m.grads, sizeof(float) * m.n_params);
    for (int level = 0; level <= 2; level++) {
        model_halo_config hc = model_halo_config_default();
        hc.prec = HALO_PREC_INT8; hc.level = level; hc.identity_quant = 1;
        CHECK(llama_set_halo(&m, &hc) == HALO_OK, "%s", halo_error());
        const float lh = (float)loss_grads(&m, &b);
        const double e = rel_l2_f(m.grads, g, m.n_params);
        CHECK(fabs(lh - lf) <= 1e-5 * lf && e < 1e-5, "%s: HALO level %d, identity quantizers: loss %.9g vs %.9g, "
              "gradients rel %.2g", what, level, lh, lf, e);
    }
    free(g); free(p0); free(v);
    halo_batch_free(&b);
    llama_free(&m);
}

// export and reload; LoRA leaves the biases frozen
// export and reload; LoRA leaves the biases and norms frozen
static void test_files_and_lora(const char *dir, unsigned kinds, int arch, const char *what) {
    (void)what;
    llama_config c = tiny(kinds, arch);
    llama_model m, r;
    random_model(&m, &c, 21);
    CHECK(llama_save_hf(&m, dir, "float32", NULL) == HALO_OK, "save: %s", halo_error());
    CHECK(llama_load(&r, dir) == HALO_OK, "reload: %s", halo_error());
    CHECK(r.cfg.arch == c.arch && r.cfg.qk_norm == c.qk_norm && r.cfg.nope[0] == c.nope[0] &&
          r.cfg.bias_kinds == kinds && r.n_params == m.n_params && !memcmp(r.params, m.params, sizeof(float) * m.n_params),
          "%s: the Hugging Face directory round-trips", what);
    llama_free(&r);
    if (arch == T_PHI3) {   // the file holds the fused tensors under Phi-3's names
        char path[512];
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        char *text = NULL;
        size_t len = 0;
        CHECK(halo_read_file(path, &text, &len) == HALO_OK && memmem(text, len, "model.layers.1.self_attn.qkv_proj.weight", 40) &&
              memmem(text, len, "mlp.gate_up_proj.weight", 23) && !memmem(text, len, "q_proj", 6),
              "Phi-3: model.safetensors holds qkv_proj and gate_up_proj, no q_proj");
        free(text);
    }
    lora_config lc = {.rank = 2, .alpha = 4, .dropout = 0, .kinds = (1u << LIN_COUNT) - 1};
    if (arch == T_PHI3) {
        CHECK(llama_lora_enable(&m, &lc, 3) == HALO_ERR && strstr(halo_error(), "--lora-linears o,down"),
              "Phi-3: LoRA over the fused linears refused, naming what works: %s", halo_error());
        lc.kinds = (1u << LIN_O) | (1u << LIN_DOWN);
    }
    CHECK(llama_lora_enable(&m, &lc, 3) == HALO_OK, "lora: %s", halo_error());
    halo_batch b;
    batch_of(&b, 1, 10, c.vocab_size, 9);
    llama_zero_grads(&m);
    llama_forward(&m, &b, NULL);
    llama_backward(&m, &b, 1.0f);
    CHECK(!m.grads, "%s: LoRA leaves no base gradient buffer (biases and norms frozen with the weights)", what);
    halo_batch_free(&b);
    llama_free(&m);
}

// `halo finetune` on a random model directory of this architecture (stories260K's tokenizer), its export, and
// `halo eval` of the export
static void test_cli(const char *dir, unsigned kinds, int arch, const char *what) {
    llama_config c = tiny(kinds, arch);
    c.vocab_size = 512;
    c.max_pos = 256;
    llama_model m;
    random_model(&m, &c, 31);
    char model_dir[300], out[320], cmd[8192], path[512];
    snprintf(model_dir, sizeof model_dir, "%s/cli_%d", dir, arch);
    snprintf(out, sizeof out, "%s/out_%d", dir, arch);
    CHECK(llama_save_hf(&m, model_dir, "float32", test_shared_path("models/stories260K")) == HALO_OK, "save: %s",
          halo_error());
    const size_t n_params = m.n_params;
    llama_free(&m);
    const char *b = getenv("BUILD");
    // halo info: the architecture and the parameter count, without loading the weights
    snprintf(cmd, sizeof cmd, "%s/halo info --model %s > %s/info%d.txt 2>&1", b && *b ? b : "build", model_dir, dir, arch);
    CHECK(system(cmd) == 0, "%s: halo info", what);
    snprintf(path, sizeof path, "%s/info%d.txt", dir, arch);
    char want_arch[96], want_n[64];
    snprintf(want_arch, sizeof want_arch, "architecture %s", LLAMA_ARCH_CLASS[arch]);
    snprintf(want_n, sizeof want_n, "parameters   %zu ", n_params);
    CHECK(file_has(path, want_arch) && file_has(path, want_n) && file_has(path, "tokenizer    512 tokens"),
          "%s: halo info names the architecture, %zu parameters and the tokenizer", what, n_params);
    snprintf(cmd, sizeof cmd, "%s/halo finetune --model %s --data %s --seq-len 32 --batch 2 --steps 4 --lr 1e-3 "
             "--threads 1 --val-count 4 --metrics %s/m%d.jsonl --out %s > %s/ft%d.log 2>&1", b && *b ? b : "build",
             model_dir, test_shared_path("data/text/tinystories_sample.txt"), dir, arch, out, dir, arch);
    CHECK(system(cmd) == 0, "%s: halo finetune (log %s/ft%d.log)", what, dir, arch);
    snprintf(path, sizeof path, "%s/m%d.jsonl", dir, arch);
    const double v = last_eval(path, "val_loss");
    llama_model r, r0;
    CHECK(llama_load(&r, out) == HALO_OK && r.cfg.arch == c.arch && r.cfg.bias_kinds == kinds,
          "%s: the export has the architecture", what);
    CHECK(llama_load(&r0, model_dir) == HALO_OK, "the base reloads");
    const char *moved = kinds ? "model.layers.0.self_attn.q_proj.bias" : c.qk_norm ? "model.layers.0.self_attn.k_norm.weight"
                                                                           : "model.layers.1.self_attn.o_proj.weight";
    const llama_param *pb = llama_find_param(&r, moved), *pb0 = llama_find_param(&r0, moved);
    CHECK(pb && pb0 && memcmp(r.params + pb->offset, r0.params + pb0->offset, sizeof(float) * pb->numel),
          "%s: fine-tuning moved %s", what, moved);
    llama_free(&r);
    llama_free(&r0);
    snprintf(cmd, sizeof cmd, "%s/halo eval --model %s --data %s --task loss --seq-len 32 --batch 2 --threads 1 "
             "--val-count 4 > %s/ev%d.log 2>&1", b && *b ? b : "build", out,
             test_shared_path("data/text/tinystories_sample.txt"), dir, arch);
    CHECK(system(cmd) == 0, "%s: halo eval of the export", what);
    snprintf(path, sizeof path, "%s/ev%d.log", dir, arch);
    const double e = eval_loss(path);
    CHECK(v > 0 && fabs(e - v) <= 1e-5 * v, "%s: halo eval of the export %.9g == the run's last val_loss %.9g", what,
          e, v);
    if (arch == T_PHI3) {   // --lora without linears: o and down, with a note; the adapter names only those
        snprintf(cmd, sizeof cmd, "%s/halo finetune --model %s --data %s --seq-len 32 --batch 2 --steps 2 --threads 1 "
                 "--val-count 4 --lora --out %s/phi3_adapter > %s/phi3_lora.log 2>&1", b && *b ? b : "build", model_dir,
                 test_shared_path("data/text/tinystories_sample.txt"), dir, dir);
        CHECK(system(cmd) == 0, "Phi-3: finetune --lora");
        snprintf(path, sizeof path, "%s/phi3_lora.log", dir);
        CHECK(file_has(path, "LoRA on o and down"), "Phi-3: the note says which linears the adapters cover");
        snprintf(path, sizeof path, "%s/phi3_adapter/adapter_config.json", dir);
        CHECK(file_has(path, "o_proj") && file_has(path, "down_proj") && !file_has(path, "q_proj"),
              "Phi-3: the adapter targets o_proj and down_proj only");
    }
}

// Linear RoPE scaling (rope_type "linear": every frequency divided by factor): against the float64 reference with its
// positions divided by the factor; the factor changes the loss; the config round-trips.
static void test_linear_rope(void) {
    llama_config c = tiny(0, LLAMA);
    c.rope_scaling = ROPE_SCALING_LINEAR;
    c.rope_factor = 4;
    llama_model m;
    random_model(&m, &c, 17);
    for (int i = 0; i < m.n_table; i++)   // larger q, k: scores that depend on the rotation
        if (strstr(m.table[i].name, "q_proj") || strstr(m.table[i].name, "k_proj"))
            for (size_t j = 0; j < m.table[i].numel; j++) m.params[m.table[i].offset + j] *= 8;
    halo_batch b;
    batch_of(&b, 2, 12, c.vocab_size, 3);
    const double l = llama_forward(&m, &b, NULL);
    g_ref_pos_scale = 4;
    const double lr = ref_loss(&m, &b);
    g_ref_pos_scale = 1;
    const double l1 = ref_loss(&m, &b);
    CHECK(fabs(l - lr) <= 2e-6 * lr && fabs(l - l1) > 20 * fabs(l - lr) + 1e-6 * l1, "linear RoPE x4: loss %.9g vs float64 reference %.9g "
          "(unscaled reference %.9g)", l, lr, l1);
    char *js = llama_config_to_json(&c, NULL, 0);
    llama_config back;
    CHECK(llama_config_from_json(js, "linear", &back) == HALO_OK && back.rope_scaling == ROPE_SCALING_LINEAR &&
          back.rope_factor == 4 && strstr(js, "\"rope_type\":\"linear\""), "linear RoPE config round trip: %s", js);
    free(js);
    CHECK(llama_config_from_json("{\"vocab_size\":48,\"hidden_size\":32,\"intermediate_size\":40,\"num_hidden_layers\":2,"
                                 "\"num_attention_heads\":4,\"rope_scaling\":{\"type\":\"linear\"}}", "no factor", &back) ==
          HALO_ERR && strstr(halo_error(), "factor"), "linear without a factor: refused naming it: %s", halo_error());
    halo_batch_free(&b);
    llama_free(&m);
}

// pad_token_id (transformers' nn.Embedding(padding_idx)): the lookup gives the pad row no gradient; untied, that row
// is 0, tied it is the lm_head's part alone; every other gradient is the same bit for bit
static void test_pad_gradient(int tied) {
    llama_config c = tiny(0, LLAMA);
    c.tie_embeddings = tied;
    llama_model m;
    random_model(&m, &c, 21);
    halo_batch b;
    batch_of(&b, 2, 12, c.vocab_size, 5);
    const int pad = b.input_ids[5];
    float *g[2];
    for (int k = 0; k < 2; k++) {
        m.cfg.has_pad_id = k;
        m.cfg.pad_id = k ? pad : -1;
        llama_forward(&m, &b, NULL);
        llama_backward(&m, &b, 1.0f);
        g[k] = malloc(sizeof(float) * m.n_params);
        memcpy(g[k], m.grads, sizeof(float) * m.n_params);
        memset(m.grads, 0, sizeof(float) * m.n_params);
    }
    const llama_param *e = llama_find_param(&m, "model.embed_tokens.weight");
    const size_t row = e->offset + (size_t)pad * c.dim;
    size_t other = 0, zero = 0, changed = 0;
    for (size_t i = 0; i < m.n_params; i++) {
        if (i >= row && i < row + (size_t)c.dim) { zero += g[1][i] == 0.0f; changed += g[1][i] != g[0][i]; }
        else other += memcmp(&g[1][i], &g[0][i], 4) != 0;
    }
    CHECK(other == 0, "pad id %d (%s): %zu other gradient elements changed", pad, tied ? "tied" : "untied", other);
    if (tied)
        CHECK(changed == (size_t)c.dim && zero == 0, "tied: the pad row keeps the lm_head's part (%zu changed, %zu zero)",
              changed, zero);
    else
        CHECK(zero == (size_t)c.dim && changed == (size_t)c.dim, "untied: the pad row's gradient is 0 (%zu of %d)", zero,
              c.dim);
    free(g[0]); free(g[1]);
    halo_batch_free(&b);
    llama_free(&m);
}

int main(void) {
    test_config();
    test_pad_gradient(0);
    test_pad_gradient(1);
    test_linear_rope();
    test_model(0x7, QWEN2, "Qwen2 (q, k, v biases)");
    test_model(0, QWEN3, "Qwen3 (q/k norms)");
    test_model(0xF, QWEN3, "Qwen3 with attention_bias (q/k norms, q, k, v, o biases)");
    test_model(0x7F, LLAMA, "Llama, every linear with a bias (attention_bias + mlp_bias)");
    test_model(0, T_SMOLLM3, "SmolLM3 (layer 1 without RoPE)");
    test_model(0, T_PHI3, "Phi-3 (fused qkv_proj, gate_up_proj)");
    char dir[] = "/tmp/halo_variants_XXXXXX";
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp"); TEST_END(); }
    char model_dir[300];
    snprintf(model_dir, sizeof model_dir, "%s/qwen2", dir);
    test_files_and_lora(model_dir, 0x7, QWEN2, "Qwen2");
    snprintf(model_dir, sizeof model_dir, "%s/qwen3", dir);
    test_files_and_lora(model_dir, 0, QWEN3, "Qwen3");
    snprintf(model_dir, sizeof model_dir, "%s/smollm3", dir);
    test_files_and_lora(model_dir, 0, T_SMOLLM3, "SmolLM3");
    snprintf(model_dir, sizeof model_dir, "%s/phi3", dir);
    test_files_and_lora(model_dir, 0, T_PHI3, "Phi-3");
    if (!test_shared()) SKIP("shared data folder not found (set HALO_SHARED): the CLI part");
    else {
        test_cli(dir, 0x7, QWEN2, "Qwen2");
        test_cli(dir, 0, QWEN3, "Qwen3");
        test_cli(dir, 0, T_SMOLLM3, "SmolLM3");
        test_cli(dir, 0, T_PHI3, "Phi-3");
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (!getenv("KEEP") && system(cmd)) {}
    TEST_END();
}
