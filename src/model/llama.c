// The Llama model in fp32 on the CPU: parameter layout (HF names), loading and saving Hugging Face directories,
// forward with saved activations, backward, and a KV-cached single-token decoder. Reads top to bottom like HF's
// LlamaForCausalLM: embed -> [norm, attention, residual, norm, SwiGLU MLP, residual] x L -> norm -> lm_head -> loss.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cjson/cJSON.h>
#include "io/safetensors.h"
#include "model/linear.h"
#include "model/llama.h"
#include "model/lora.h"
#include "ops/ops.h"
#include "util/error.h"
#include "util/fileio.h"

const char *const LLAMA_LINEAR_NAMES[LIN_COUNT] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                   "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                   "mlp.down_proj"};

// Activations of one forward pass over N = B*T tokens, kept for backward. Sized for `cap_n` tokens.
typedef struct {
    float *res;      // [N, D] residual stream entering the layer
    float *xn1;      // [N, D] input_layernorm output
    float *rstd1;    // [N]
    float *q;        // [N, Hq*hd] after RoPE
    float *k;        // [N, Hkv*hd] after RoPE
    float *v;        // [N, Hkv*hd]
    float *probs;    // [B, Hq, T, T] attention softmax
    float *att;      // [N, Hq*hd] attention output (o_proj input)
    float *res_mid;  // [N, D] residual after attention
    float *xn2;      // [N, D] post_attention_layernorm output
    float *rstd2;    // [N]
    float *gate;     // [N, F]
    float *up;       // [N, F]
    float *hmid;     // [N, F] silu(gate) * up (down_proj input)
    float *qraw, *kraw;      // q_norm / k_norm models: q, k before their per-head norm [N, Hq*hd], [N, Hkv*hd]
    float *rstdq, *rstdk;    // and the norms' reciprocal rms [N*Hq], [N*Hkv]
} layer_acts;

struct llama_acts {
    int B, T;
    layer_acts *l;   // [n_layers]
    float *res_out;  // [N, D] residual after the last layer
    float *xf;       // [N, D] final norm output
    float *rstdf;    // [N]
    float *logits;   // [N, V] (turned into dlogits in backward)
    int32_t *pos;    // [N] positions used (batch pos or 0..T-1)
    float *cos_t, *sin_t;   // [rope_len, hd/2]
    int rope_len;
    // backward scratch
    float *dres, *dx, *dq, *dk, *dv, *datt, *dgate, *dup, *dh;
    float *dqraw, *dkraw;   // q_norm / k_norm models: gradients of q, k before their norms
};

static size_t layer_numel(const llama_config *c) {
    size_t D = c->dim, F = c->hidden_dim, qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    size_t n = 2 * D + qd * D + 2 * kvd * D + D * qd + 3 * F * D;
    for (int k = 0; k < LIN_COUNT; k++) if (c->bias_kinds >> k & 1) n += (size_t)model_linear_out_features(c, k);
    if (c->qk_norm) n += 2 * (size_t)c->head_dim;
    return n;
}

// Points a llama_weights view into a contiguous buffer laid out in the table's order.
static void bind_weights(llama_weights *w, float *base, const llama_config *c) {
    size_t D = c->dim, F = c->hidden_dim, qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    float *p = base;
    w->embed = p; p += (size_t)c->vocab_size * D;
    for (int l = 0; l < c->n_layers; l++) {
        llama_layer_weights *L = &w->layers[l];
        L->attn_norm = p; p += D;
        L->wq = p; p += qd * D;
        L->wk = p; p += kvd * D;
        L->wv = p; p += kvd * D;
        L->wo = p; p += D * qd;
        L->ffn_norm = p; p += D;
        L->w_gate = p; p += F * D;
        L->w_up = p; p += F * D;
        L->w_down = p; p += D * F;
        for (int k = 0; k < LIN_COUNT; k++) {
            L->bias[k] = c->bias_kinds >> k & 1 ? p : NULL;
            if (L->bias[k]) p += (size_t)model_linear_out_features(c, k);
        }
        L->q_norm = L->k_norm = NULL;
        if (c->qk_norm) { L->q_norm = p; p += c->head_dim; L->k_norm = p; p += c->head_dim; }
    }
    w->final_norm = p; p += D;
    w->lm_head = c->tie_embeddings ? w->embed : p;
}

static void add_param(llama_model *m, const char *name, const float *ptr, int ndim, int64_t d0, int64_t d1, int no_decay) {
    llama_param *p = &m->table[m->n_table++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->offset = (size_t)(ptr - m->params);
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = d1;
    p->numel = (size_t)d0 * (ndim == 2 ? (size_t)d1 : 1);
    p->no_decay = no_decay;
}

size_t llama_param_count(const llama_config *c) {
    const size_t D = c->dim;
    return (size_t)c->vocab_size * D + (size_t)c->n_layers * layer_numel(c) + D +
           (c->tie_embeddings ? 0 : (size_t)c->vocab_size * D);
}

int llama_init(llama_model *m, const llama_config *cfg) {
    memset(m, 0, sizeof *m);
    if (llama_config_validate(cfg, "model config") != HALO_OK) return HALO_ERR;
    m->cfg = *cfg;
    const llama_config *c = &m->cfg;
    m->n_params = llama_param_count(c);
    m->params = xcalloc(m->n_params, sizeof(float));
    m->w.layers = xcalloc((size_t)c->n_layers, sizeof(llama_layer_weights));
    m->g.layers = xcalloc((size_t)c->n_layers, sizeof(llama_layer_weights));
    bind_weights(&m->w, m->params, c);
    m->table = xcalloc((size_t)c->n_layers * (11 + LIN_COUNT) + 3, sizeof(llama_param));
    int qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim, F = c->hidden_dim;
    char name[96];
    add_param(m, "model.embed_tokens.weight", m->w.embed, 2, c->vocab_size, c->dim, 1);
    for (int l = 0; l < c->n_layers; l++) {
        llama_layer_weights *L = &m->w.layers[l];
#define P(suffix, ptr, nd, a, b, nodecay) \
        snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix); add_param(m, name, ptr, nd, a, b, nodecay)
        P("input_layernorm.weight", L->attn_norm, 1, c->dim, 0, 1);
        if (c->arch == ARCH_PHI3) {   // [wq; wk; wv] and [w_gate; w_up] lie adjacent: Phi-3's fused tensors
            P("self_attn.qkv_proj.weight", L->wq, 2, qd + 2 * kvd, c->dim, 0);
        } else {
            P("self_attn.q_proj.weight", L->wq, 2, qd, c->dim, 0);
            P("self_attn.k_proj.weight", L->wk, 2, kvd, c->dim, 0);
            P("self_attn.v_proj.weight", L->wv, 2, kvd, c->dim, 0);
        }
        P("self_attn.o_proj.weight", L->wo, 2, c->dim, qd, 0);
        P("post_attention_layernorm.weight", L->ffn_norm, 1, c->dim, 0, 1);
        if (c->arch == ARCH_PHI3) {
            P("mlp.gate_up_proj.weight", L->w_gate, 2, 2 * F, c->dim, 0);
        } else {
            P("mlp.gate_proj.weight", L->w_gate, 2, F, c->dim, 0);
            P("mlp.up_proj.weight", L->w_up, 2, F, c->dim, 0);
        }
        P("mlp.down_proj.weight", L->w_down, 2, c->dim, F, 0);
        for (int k = 0; k < LIN_COUNT; k++) {   // biases: no weight decay, as transformers' trainers leave them
            if (!L->bias[k]) continue;
            snprintf(name, sizeof name, "model.layers.%d.%s.bias", l, LLAMA_LINEAR_NAMES[k]);
            add_param(m, name, L->bias[k], 1, model_linear_out_features(c, k), 0, 1);
        }
        if (L->q_norm) {
            P("self_attn.q_norm.weight", L->q_norm, 1, c->head_dim, 0, 1);
            P("self_attn.k_norm.weight", L->k_norm, 1, c->head_dim, 0, 1);
        }
#undef P
    }
    add_param(m, "model.norm.weight", m->w.final_norm, 1, c->dim, 0, 1);
    if (!c->tie_embeddings) add_param(m, "lm_head.weight", m->w.lm_head, 2, c->vocab_size, c->dim, 0);
    return HALO_OK;
}

void llama_init_random(llama_model *m, uint64_t seed) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (int i = 0; i < m->n_table; i++) {
        const llama_param *p = &m->table[i];
        float *d = m->params + p->offset;
        if (p->ndim == 1) {   // norms 1, biases 0 (as HF's init)
            const float v = strstr(p->name, ".bias") ? 0.0f : 1.0f;
            for (size_t j = 0; j < p->numel; j++) d[j] = v;
            continue;
        }
        for (size_t j = 0; j < p->numel; j += 2) {   // Box-Muller pairs from splitmix64
            double u[2];
            for (int k = 0; k < 2; k++) {
                uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
                z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL; z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
                u[k] = ((z ^ (z >> 31)) >> 11) * (1.0 / 9007199254740992.0);
            }
            double r = sqrt(-2 * log(u[0] + 1e-300)), a = 6.283185307179586 * u[1];
            d[j] = (float)(0.02 * r * cos(a));
            if (j + 1 < p->numel) d[j + 1] = (float)(0.02 * r * sin(a));
        }
    }
}

float *llama_linear_weight(const llama_weights *v, int layer, llama_linear_kind kind) {
    const llama_layer_weights *W = &v->layers[layer];
    float *const w[LIN_COUNT] = {W->wq, W->wk, W->wv, W->wo, W->w_gate, W->w_up, W->w_down};
    return w[kind];
}

const llama_param *llama_find_param(const llama_model *m, const char *name) {
    for (int i = 0; i < m->n_table; i++)
        if (!strcmp(m->table[i].name, name)) return &m->table[i];
    return NULL;
}

// ---- loading ----

// Reads the shard list of model.safetensors.index.json: for each table entry, which shard file holds it.
static int load_sharded(llama_model *m, const char *dir, const char *index_path) {
    char *text;
    if (halo_read_file(index_path, &text, NULL) != HALO_OK) return HALO_ERR;
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) { cJSON_Delete(root); return halo_fail("%s: missing object 'weight_map'", index_path); }
    int rc = HALO_OK;
    // Open each distinct shard once, then read every parameter from its shard.
    char **names = NULL; st_file *files = NULL; int nf = 0;
    for (int i = 0; i < m->n_table && rc == HALO_OK; i++) {
        const llama_param *p = &m->table[i];
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(wm, p->name);
        if (!cJSON_IsString(f)) { rc = halo_fail("%s: weight_map has no entry for tensor '%s'", index_path, p->name); break; }
        int k = 0;
        while (k < nf && strcmp(names[k], f->valuestring)) k++;
        if (k == nf) {
            if (strchr(f->valuestring, '/') || !strcmp(f->valuestring, "") || !strcmp(f->valuestring, ".") ||
                !strcmp(f->valuestring, "..")) {
                rc = halo_fail("%s: tensor '%s': shard name '%s' must be a plain file name", index_path, p->name, f->valuestring);
                break;
            }
            names = xrealloc(names, sizeof(char *) * (size_t)(nf + 1));
            files = xrealloc(files, sizeof(st_file) * (size_t)(nf + 1));
            char *path = halo_path_join(dir, f->valuestring);
            rc = st_open(path, &files[nf]);
            free(path);
            if (rc != HALO_OK) { rc = halo_fail_ctx("%s: tensor '%s': ", index_path, p->name); break; }
            names[nf++] = xstrdup(f->valuestring);
        }
        rc = st_read_f32(&files[k], p->name, m->params + p->offset, p->ndim, p->shape);
    }
    for (int k = 0; k < nf; k++) { st_close(&files[k]); free(names[k]); }
    free(names); free(files);
    cJSON_Delete(root);
    return rc;
}

// Bytes of the weight files: model.safetensors, or the distinct shards the index names (missing ones count 0).
static int weights_bytes(const char *dir, const char *single, const char *index, double *bytes) {
    struct stat sb;
    *bytes = 0;
    if (halo_file_exists(single)) { if (stat(single, &sb) == 0) *bytes = (double)sb.st_size; return HALO_OK; }
    char *text;
    if (halo_read_file(index, &text, NULL) != HALO_OK) return HALO_ERR;
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map"), *e, *f;
    if (!cJSON_IsObject(wm)) { cJSON_Delete(root); return halo_fail("%s: missing object 'weight_map'", index); }
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/')) continue;   // load_sharded names these
        int seen = 0;
        for (f = wm->child; f != e && !seen; f = f->next) seen = cJSON_IsString(f) && !strcmp(f->valuestring, e->valuestring);
        char *path = halo_path_join(dir, e->valuestring);
        if (!seen && stat(path, &sb) == 0) *bytes += (double)sb.st_size;
        free(path);
    }
    cJSON_Delete(root);
    return HALO_OK;
}

int llama_load(llama_model *m, const char *dir) {
    char *cfg_path = halo_path_join(dir, "config.json");
    llama_config c;
    int rc = llama_config_load(cfg_path, &c);
    if (rc != HALO_OK) { free(cfg_path); return rc; }
    char *single = halo_path_join(dir, "model.safetensors");
    char *index = halo_path_join(dir, "model.safetensors.index.json");
    // Every parameter takes at least 2 bytes (F16/BF16) in the weights: a config.json asking for more is refused
    // before the parameters are allocated (sizes from a hostile file must not allocate gigabytes).
    double n = (double)c.vocab_size * c.dim * (c.tie_embeddings ? 1 : 2) + c.dim +
               (double)c.n_layers * (2.0 * c.dim + 2.0 * c.n_heads * c.head_dim * c.dim +
                                     2.0 * c.n_kv_heads * c.head_dim * c.dim + 3.0 * c.hidden_dim * c.dim);
    double have = 0;
    if (!halo_file_exists(single) && !halo_file_exists(index))
        rc = halo_fail("%s: neither model.safetensors nor model.safetensors.index.json found", dir);
    else rc = weights_bytes(dir, single, index, &have);
    if (rc == HALO_OK && 2 * n > have)
        rc = halo_fail("%s: vocab_size %d, hidden_size %d, intermediate_size %d, num_hidden_layers %d, "
                       "num_attention_heads %d, num_key_value_heads %d, head_dim %d make %.0f parameters (at least "
                       "%.0f bytes) but %s%s holds %.0f bytes", cfg_path, c.vocab_size, c.dim, c.hidden_dim, c.n_layers,
                       c.n_heads, c.n_kv_heads, c.head_dim, n, 2 * n, halo_file_exists(single) ? "" : "the shard list ",
                       halo_file_exists(single) ? single : index, have);
    free(cfg_path);
    if (rc == HALO_OK && llama_init(m, &c) != HALO_OK) rc = HALO_ERR;
    if (rc != HALO_OK) { free(single); free(index); return rc; }
    if (halo_file_exists(single)) {
        st_file f;
        rc = st_open(single, &f);
        if (rc == HALO_OK) {
            for (int i = 0; i < m->n_table && rc == HALO_OK; i++) {
                const llama_param *p = &m->table[i];
                rc = st_read_f32(&f, p->name, m->params + p->offset, p->ndim, p->shape);
            }
            st_close(&f);
        }
    } else {
        rc = load_sharded(m, dir, index);
    }
    free(single); free(index);
    if (rc != HALO_OK) { llama_free(m); return rc; }
    return HALO_OK;
}

int llama_save_hf(const llama_model *m, const char *dir, const char *torch_dtype, const char *tokenizer_src_dir) {
    int bf16 = !strcmp(torch_dtype, "bfloat16");
    if (!bf16 && strcmp(torch_dtype, "float32"))
        return halo_fail("export: dtype '%s' is not supported (float32 or bfloat16)", torch_dtype);
    if (halo_mkdirs(dir) != HALO_OK) return HALO_ERR;
    char *cfg = halo_path_join(dir, "config.json");
    int rc = llama_config_save(&m->cfg, cfg, torch_dtype);
    free(cfg);
    if (rc != HALO_OK) return rc;
    st_writer *w = st_writer_new();
    st_writer_meta(w, "format", "pt");
    for (int i = 0; i < m->n_table; i++) {
        const llama_param *p = &m->table[i];
        st_writer_add(w, p->name, bf16 ? ST_BF16 : ST_F32, ST_F32, m->params + p->offset, p->ndim, p->shape);
    }
    char *path = halo_path_join(dir, "model.safetensors");
    rc = st_writer_write(w, path);
    free(path);
    st_writer_free(w);
    if (rc != HALO_OK || !tokenizer_src_dir) return rc;
    const char *tok_files[] = {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                               "generation_config.json", "chat_template.jinja"};
    for (size_t i = 0; i < sizeof tok_files / sizeof *tok_files && rc == HALO_OK; i++) {
        char *src = halo_path_join(tokenizer_src_dir, tok_files[i]);
        char *dst = halo_path_join(dir, tok_files[i]);
        if (halo_file_exists(src) && strcmp(src, dst)) rc = halo_copy_file(src, dst);
        free(src); free(dst);
    }
    return rc;
}

static void acts_free(struct llama_acts *a, int n_layers) {
    if (!a) return;
    for (int l = 0; l < n_layers; l++) {
        layer_acts *L = &a->l[l];
        float *bufs[] = {L->res, L->xn1, L->rstd1, L->q, L->k, L->v, L->probs, L->att, L->res_mid, L->xn2, L->rstd2,
                         L->gate, L->up, L->hmid, L->qraw, L->kraw, L->rstdq, L->rstdk};
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    }
    free(a->l);
    float *bufs[] = {a->res_out, a->xf, a->rstdf, a->logits, a->cos_t, a->sin_t, a->dres, a->dx, a->dq, a->dk, a->dv,
                     a->datt, a->dgate, a->dup, a->dh, a->dqraw, a->dkraw};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    free(a->pos);
    free(a);
}

void llama_free(llama_model *m) {
    acts_free(m->acts, m->cfg.n_layers);
    llama_linears_free(m);
    llama_lora_free(m);
    free(m->params); free(m->grads); free(m->w.layers); free(m->g.layers); free(m->table);
    memset(m, 0, sizeof *m);
}

void llama_alloc_grads(llama_model *m) {
    if (m->grads) return;
    m->grads = xcalloc(m->n_params, sizeof(float));
    bind_weights(&m->g, m->grads, &m->cfg);
}

void llama_zero_grads(llama_model *m) {
    if (m->grads) memset(m->grads, 0, sizeof(float) * m->n_params);
    llama_lora_zero_grads(m);
}

// Makes sure activations fit B x T and the RoPE tables cover `rope_len` positions.
static struct llama_acts *acts_ensure(llama_model *m, int B, int T, int rope_len) {
    const llama_config *c = &m->cfg;
    struct llama_acts *a = m->acts;
    if (a && a->B == B && a->T == T && a->rope_len >= rope_len) return a;
    acts_free(a, c->n_layers);
    a = m->acts = xcalloc(1, sizeof *a);
    a->B = B; a->T = T;
    size_t N = (size_t)B * T, D = c->dim, F = c->hidden_dim, V = c->vocab_size;
    size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    a->l = xcalloc((size_t)c->n_layers, sizeof(layer_acts));
    for (int l = 0; l < c->n_layers; l++) {
        layer_acts *L = &a->l[l];
        L->res = xmalloc(sizeof(float) * N * D); L->xn1 = xmalloc(sizeof(float) * N * D);
        L->rstd1 = xmalloc(sizeof(float) * N); L->q = xmalloc(sizeof(float) * N * qd);
        L->k = xmalloc(sizeof(float) * N * kvd); L->v = xmalloc(sizeof(float) * N * kvd);
        L->probs = xmalloc(sizeof(float) * (size_t)B * c->n_heads * T * T);
        L->att = xmalloc(sizeof(float) * N * qd); L->res_mid = xmalloc(sizeof(float) * N * D);
        L->xn2 = xmalloc(sizeof(float) * N * D); L->rstd2 = xmalloc(sizeof(float) * N);
        L->gate = xmalloc(sizeof(float) * N * F); L->up = xmalloc(sizeof(float) * N * F);
        L->hmid = xmalloc(sizeof(float) * N * F);
        if (c->qk_norm) {
            L->qraw = xmalloc(sizeof(float) * N * qd); L->kraw = xmalloc(sizeof(float) * N * kvd);
            L->rstdq = xmalloc(sizeof(float) * N * c->n_heads); L->rstdk = xmalloc(sizeof(float) * N * c->n_kv_heads);
        }
    }
    a->res_out = xmalloc(sizeof(float) * N * D); a->xf = xmalloc(sizeof(float) * N * D);
    a->rstdf = xmalloc(sizeof(float) * N); a->logits = xmalloc(sizeof(float) * N * V);
    a->pos = xmalloc(sizeof(int32_t) * N);
    a->rope_len = rope_len;   // the positions in use: max_position_embeddings may be millions (or hostile)
    a->cos_t = xmalloc(sizeof(float) * (size_t)a->rope_len * (c->head_dim / 2));
    a->sin_t = xmalloc(sizeof(float) * (size_t)a->rope_len * (c->head_dim / 2));
    rope_tables(a->cos_t, a->sin_t, a->rope_len, c->head_dim, c->rope_theta, (int)c->rope_scaling,
                c->rope_factor, c->rope_low_freq_factor, c->rope_high_freq_factor, c->rope_original_max_pos);
    a->dres = xmalloc(sizeof(float) * N * D); a->dx = xmalloc(sizeof(float) * N * D);
    a->dq = xmalloc(sizeof(float) * N * qd); a->dk = xmalloc(sizeof(float) * N * kvd);
    a->dv = xmalloc(sizeof(float) * N * kvd); a->datt = xmalloc(sizeof(float) * N * qd);
    a->dgate = xmalloc(sizeof(float) * N * F); a->dup = xmalloc(sizeof(float) * N * F);
    a->dh = xmalloc(sizeof(float) * N * F);
    if (c->qk_norm) { a->dqraw = xmalloc(sizeof(float) * N * qd); a->dkraw = xmalloc(sizeof(float) * N * kvd); }
    return a;
}

static void vec_add(float *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

float llama_forward(llama_model *m, const halo_batch *b, float *logits_out) {
    const llama_config *c = &m->cfg;
    int B = b->B, T = b->T, N = B * T, D = c->dim, F = c->hidden_dim, V = c->vocab_size;
    int Hq = c->n_heads, Hkv = c->n_kv_heads, hd = c->head_dim, qd = Hq * hd, kvd = Hkv * hd;
    int max_pos = T;
    if (b->pos) for (int i = 0; i < N; i++) if (b->pos[i] + 1 > max_pos) max_pos = b->pos[i] + 1;
    struct llama_acts *a = acts_ensure(m, B, T, max_pos);
    for (int i = 0; i < N; i++) a->pos[i] = b->pos ? b->pos[i] : i % T;

    embedding_forward(m->acts->l[0].res, b->input_ids, m->w.embed, N, D);
    for (int l = 0; l < c->n_layers; l++) {
        layer_acts *L = &a->l[l];
        const llama_layer_weights *W = &m->w.layers[l];
        // attention block: res_mid = res + o_proj(attn(rope(q), rope(k), v))
        rmsnorm_forward(L->xn1, L->rstd1, L->res, W->attn_norm, N, D, c->norm_eps);
        model_linear_forward(m, l, LIN_Q, W->q_norm ? L->qraw : L->q, L->xn1, W->wq, N, D, qd);
        model_linear_forward(m, l, LIN_K, W->k_norm ? L->kraw : L->k, L->xn1, W->wk, N, D, kvd);
        model_linear_forward(m, l, LIN_V, L->v, L->xn1, W->wv, N, D, kvd);
        if (W->q_norm) {   // Qwen3: RMSNorm over each head of q and k (rows of hd), then RoPE
            rmsnorm_forward(L->q, L->rstdq, L->qraw, W->q_norm, N * Hq, hd, c->norm_eps);
            rmsnorm_forward(L->k, L->rstdk, L->kraw, W->k_norm, N * Hkv, hd, c->norm_eps);
        }
        if (llama_layer_rope(c, l)) {   // (SmolLM3's no_rope_layers skip it)
            rope_forward(L->q, a->pos, a->cos_t, a->sin_t, N, Hq, hd);
            rope_forward(L->k, a->pos, a->cos_t, a->sin_t, N, Hkv, hd);
        }
        attention_forward(L->att, L->probs, L->q, L->k, L->v, b->seg, B, T, Hq, Hkv, hd);
        model_linear_forward(m, l, LIN_O, L->res_mid, L->att, W->wo, N, qd, D);
        vec_add(L->res_mid, L->res, (size_t)N * D);
        // MLP block: out = res_mid + down(silu(gate(x)) * up(x))
        rmsnorm_forward(L->xn2, L->rstd2, L->res_mid, W->ffn_norm, N, D, c->norm_eps);
        model_linear_forward(m, l, LIN_GATE, L->gate, L->xn2, W->w_gate, N, D, F);
        model_linear_forward(m, l, LIN_UP, L->up, L->xn2, W->w_up, N, D, F);
        swiglu_forward(L->hmid, L->gate, L->up, N, F);
        float *out = l + 1 < c->n_layers ? a->l[l + 1].res : a->res_out;
        model_linear_forward(m, l, LIN_DOWN, out, L->hmid, W->w_down, N, F, D);
        vec_add(out, L->res_mid, (size_t)N * D);
    }
    rmsnorm_forward(a->xf, a->rstdf, a->res_out, m->w.final_norm, N, D, c->norm_eps);
    linear_forward(a->logits, a->xf, m->w.lm_head, N, D, V);
    if (logits_out) memcpy(logits_out, a->logits, sizeof(float) * (size_t)N * V);
    const int64_t count = halo_batch_loss_tokens(b);
    return count ? (float)(cross_entropy_forward(a->logits, b->targets, N, V) / count) : 0.0f;
}

void llama_backward(llama_model *m, const halo_batch *b, float grad_scale) {
    const llama_config *c = &m->cfg;
    struct llama_acts *a = m->acts;
    int B = b->B, T = b->T, N = B * T, D = c->dim, F = c->hidden_dim, V = c->vocab_size;
    int Hq = c->n_heads, Hkv = c->n_kv_heads, hd = c->head_dim, qd = Hq * hd, kvd = Hkv * hd;
    // LoRA: only the adapters train, so no base weight gets a gradient (nor a gradient buffer)
    const int frozen = m->lora != NULL;
    if (!frozen) llama_alloc_grads(m);
    const int64_t count = halo_batch_loss_tokens(b);
    if (!count) return;
    // loss -> logits -> final norm
    cross_entropy_forward_backward(a->logits, a->logits, b->targets, N, V, grad_scale / count);
    linear_backward(a->dx, frozen ? NULL : m->g.lm_head, a->logits, a->xf, m->w.lm_head, N, D, V, 0);
    memset(a->dres, 0, sizeof(float) * (size_t)N * D);
    rmsnorm_backward(a->dres, frozen ? NULL : m->g.final_norm, a->dx, a->res_out, m->w.final_norm, a->rstdf, N, D);
    const llama_layer_weights none = {0};   // the gradients of a frozen model: all NULL
    for (int l = c->n_layers - 1; l >= 0; l--) {
        layer_acts *L = &a->l[l];
        const llama_layer_weights *W = &m->w.layers[l];
        const llama_layer_weights *G = frozen ? &none : &m->g.layers[l];
        // MLP block; dres carries d(out) and passes straight through the residual to d(res_mid)
        model_linear_backward(m, l, LIN_DOWN, a->dh, G->w_down, a->dres, L->hmid, W->w_down, N, F, D, 0);
        swiglu_backward(a->dgate, a->dup, a->dh, L->gate, L->up, N, F);
        model_linear_backward(m, l, LIN_GATE, a->dx, G->w_gate, a->dgate, L->xn2, W->w_gate, N, D, F, 0);
        model_linear_backward(m, l, LIN_UP, a->dx, G->w_up, a->dup, L->xn2, W->w_up, N, D, F, 1);
        rmsnorm_backward(a->dres, G->ffn_norm, a->dx, L->res_mid, W->ffn_norm, L->rstd2, N, D);
        // attention block; dres now holds d(res_mid) and passes through to d(res)
        model_linear_backward(m, l, LIN_O, a->datt, G->wo, a->dres, L->att, W->wo, N, qd, D, 0);
        attention_backward(a->dq, a->dk, a->dv, a->datt, L->probs, L->q, L->k, L->v, B, T, Hq, Hkv, hd);
        if (llama_layer_rope(c, l)) {
            rope_backward(a->dq, a->pos, a->cos_t, a->sin_t, N, Hq, hd);
            rope_backward(a->dk, a->pos, a->cos_t, a->sin_t, N, Hkv, hd);
        }
        float *dq = a->dq, *dk = a->dk;
        if (W->q_norm) {   // through the per-head norms (rmsnorm_backward adds into its dx)
            memset(a->dqraw, 0, sizeof(float) * (size_t)N * qd);
            memset(a->dkraw, 0, sizeof(float) * (size_t)N * kvd);
            rmsnorm_backward(a->dqraw, G->q_norm, a->dq, L->qraw, W->q_norm, L->rstdq, N * Hq, hd);
            rmsnorm_backward(a->dkraw, G->k_norm, a->dk, L->kraw, W->k_norm, L->rstdk, N * Hkv, hd);
            dq = a->dqraw;
            dk = a->dkraw;
        }
        model_linear_backward(m, l, LIN_Q, a->dx, G->wq, dq, L->xn1, W->wq, N, D, qd, 0);
        model_linear_backward(m, l, LIN_K, a->dx, G->wk, dk, L->xn1, W->wk, N, D, kvd, 1);
        model_linear_backward(m, l, LIN_V, a->dx, G->wv, a->dv, L->xn1, W->wv, N, D, kvd, 1);
        rmsnorm_backward(a->dres, G->attn_norm, a->dx, L->res, W->attn_norm, L->rstd1, N, D);
    }
    if (!frozen) embedding_backward(m->g.embed, b->input_ids, a->dres, N, D, llama_embed_skip_id(c));
}

// ---- KV-cached decoding ----

void llama_kv_init(llama_kv_cache *kc, const llama_config *c, int max_len) {
    size_t kvd = (size_t)c->n_kv_heads * c->head_dim;
    kc->max_len = max_len;
    kc->k = xcalloc((size_t)c->n_layers * max_len * kvd, sizeof(float));
    kc->v = xcalloc((size_t)c->n_layers * max_len * kvd, sizeof(float));
    // scratch: x, xn, q, k, v, att, o, gate, up, h, scores, rope cos/sin
    size_t D = c->dim, F = c->hidden_dim, qd = (size_t)c->n_heads * c->head_dim;
    size_t half = c->head_dim / 2;
    kc->scratch = xcalloc(4 * D + 2 * qd + 2 * kvd + 3 * F + (size_t)max_len + 2 * (size_t)max_len * half, sizeof(float));
}

void llama_kv_free(llama_kv_cache *kc) {
    free(kc->k); free(kc->v); free(kc->scratch);
    memset(kc, 0, sizeof *kc);
}

void llama_decode_step(llama_model *m, llama_kv_cache *kc, int32_t token, int pos, float *logits) {
    const llama_config *c = &m->cfg;
    int D = c->dim, F = c->hidden_dim, Hq = c->n_heads, Hkv = c->n_kv_heads, hd = c->head_dim;
    int qd = Hq * hd, kvd = Hkv * hd, grp = Hq / Hkv, half = hd / 2, L_max = kc->max_len;
    float *x = kc->scratch, *xn = x + D, *o = xn + D, *tmp = o + D, *q = tmp + D, *att = q + qd, *k = att + qd;
    float *v = k + kvd, *gate = v + kvd, *up = gate + F, *h = up + F, *sc = h + F;
    float *cos_t = sc + L_max, *sin_t = cos_t + (size_t)L_max * half;
    if (pos == 0)   // tables are built once per sequence
        rope_tables(cos_t, sin_t, L_max, hd, c->rope_theta, (int)c->rope_scaling, c->rope_factor,
                    c->rope_low_freq_factor, c->rope_high_freq_factor, c->rope_original_max_pos);
    int32_t p32 = pos;
    float scale = 1.0f / sqrtf((float)hd);
    memcpy(x, m->w.embed + (size_t)token * D, sizeof(float) * (size_t)D);
    for (int l = 0; l < c->n_layers; l++) {
        const llama_layer_weights *W = &m->w.layers[l];
        float *kcache = kc->k + (size_t)l * L_max * kvd, *vcache = kc->v + (size_t)l * L_max * kvd;
        rmsnorm_forward(xn, tmp, x, W->attn_norm, 1, D, c->norm_eps);
        model_linear_forward(m, l, LIN_Q, q, xn, W->wq, 1, D, qd);
        model_linear_forward(m, l, LIN_K, k, xn, W->wk, 1, D, kvd);
        model_linear_forward(m, l, LIN_V, v, xn, W->wv, 1, D, kvd);
        if (W->q_norm) {   // in place, per head (tmp holds the heads' rstd: Hq <= D)
            rmsnorm_forward(q, tmp, q, W->q_norm, Hq, hd, c->norm_eps);
            rmsnorm_forward(k, tmp, k, W->k_norm, Hkv, hd, c->norm_eps);
        }
        if (llama_layer_rope(c, l)) {
            rope_forward(q, &p32, cos_t, sin_t, 1, Hq, hd);
            rope_forward(k, &p32, cos_t, sin_t, 1, Hkv, hd);
        }
        memcpy(kcache + (size_t)pos * kvd, k, sizeof(float) * (size_t)kvd);
        memcpy(vcache + (size_t)pos * kvd, v, sizeof(float) * (size_t)kvd);
        for (int hh = 0; hh < Hq; hh++) {
            const float *qh = q + (size_t)hh * hd;
            int kh = hh / grp;
            float mx = -INFINITY;
            for (int s = 0; s <= pos; s++) {
                const float *kr = kcache + (size_t)s * kvd + (size_t)kh * hd;
                float dot = 0;
                for (int d = 0; d < hd; d++) dot += qh[d] * kr[d];
                sc[s] = dot * scale;
                mx = sc[s] > mx ? sc[s] : mx;
            }
            double sum = 0;
            for (int s = 0; s <= pos; s++) { sc[s] = expf(sc[s] - mx); sum += sc[s]; }
            float *oh = att + (size_t)hh * hd;
            for (int d = 0; d < hd; d++) oh[d] = 0;
            for (int s = 0; s <= pos; s++) {
                float p = (float)(sc[s] / sum);
                const float *vr = vcache + (size_t)s * kvd + (size_t)kh * hd;
                for (int d = 0; d < hd; d++) oh[d] += p * vr[d];
            }
        }
        model_linear_forward(m, l, LIN_O, o, att, W->wo, 1, qd, D);
        for (int d = 0; d < D; d++) x[d] += o[d];
        rmsnorm_forward(xn, tmp, x, W->ffn_norm, 1, D, c->norm_eps);
        model_linear_forward(m, l, LIN_GATE, gate, xn, W->w_gate, 1, D, F);
        model_linear_forward(m, l, LIN_UP, up, xn, W->w_up, 1, D, F);
        swiglu_forward(h, gate, up, 1, F);
        model_linear_forward(m, l, LIN_DOWN, o, h, W->w_down, 1, F, D);
        for (int d = 0; d < D; d++) x[d] += o[d];
    }
    rmsnorm_forward(xn, tmp, x, m->w.final_norm, 1, D, c->norm_eps);
    linear_forward(logits, xn, m->w.lm_head, 1, D, c->vocab_size);
}
