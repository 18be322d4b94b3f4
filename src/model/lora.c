// LoRA adapters (see lora.h): parameters in one buffer with a named table in PEFT's names, the forward and backward
// hooks called by model/linear.c, merging, and the PEFT adapter files.
#include <cblas.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "io/safetensors.h"
#include "model/linear.h"
#include "model/lora.h"
#include "util/error.h"
#include "util/json.h"
#include "util/fileio.h"

struct llama_lora {
    lora_config cfg;
    float scale;            // alpha / r
    size_t n_params;
    float *params, *grads;
    llama_param *table;     // [n_table]: A then B of each adapted linear, layer by layer in HF order
    int n_table;
    int *a_of;              // [n_layers * LIN_COUNT]: table index of A (B follows it), -1 = no adapter
    float **u;              // [n_layers * LIN_COUNT]: (alpha/r) * dropout(X) A^T of the last forward, [b, r]
    size_t *u_cap;
    float *xd;              // dropout(X) scratch
    size_t xd_cap;
    int training;
    uint64_t key;
};

// PEFT's target_modules name of a linear: "q_proj" of "self_attn.q_proj"
static const char *peft_module(int kind) { return strchr(LLAMA_LINEAR_NAMES[kind], '.') + 1; }
#define PEFT_PREFIX "base_model.model."

lora_config lora_config_default(void) {
    return (lora_config){.rank = 16, .alpha = 8, .dropout = 0.05, .kinds = (1u << LIN_COUNT) - 1};
}

static int check_config(const lora_config *c, const char *where) {
    if (c->rank <= 0) return halo_fail("%sLoRA rank %d: must be positive", where, c->rank);
    if (!(c->alpha > 0) || !isfinite(c->alpha)) return halo_fail("%sLoRA alpha %g: must be positive", where, c->alpha);
    if (c->alpha > 1e6)   // alpha / r scales the adapters in fp32: 1e300 made it infinite and every loss NaN
        return halo_fail("%sLoRA alpha %g: must be at most 1e6", where, c->alpha);
    if (!(c->dropout >= 0 && c->dropout < 1)) return halo_fail("%sLoRA dropout %g: must be in [0, 1)", where, c->dropout);
    if (!(c->kinds & ((1u << LIN_COUNT) - 1))) return halo_fail("%sLoRA on no linear", where);
    return HALO_OK;
}

// splitmix64 finalizer: one well-mixed u64 per (key, linear, group of four elements)
static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
uint32_t lora_dropout_threshold(double p) { return (uint32_t)ceil(p * 65536.0); }
// Elements 4q .. 4q + 3 of linear lin: element 4q + e is kept (bit e) when bits 16e .. 16e + 15 of the hash of
// (key, lin, q) are >= thr
static inline unsigned dropout_keeps4(uint64_t key, int lin, size_t q, uint32_t thr) {
    const uint64_t z = mix64(key + 0x9E3779B97F4A7C15ULL * ((uint64_t)lin * 0x100000000ULL + q + 1));
    unsigned m = 0;
    for (int e = 0; e < 4; e++) m |= (unsigned)(((z >> (16 * e)) & 0xFFFF) >= thr) << e;
    return m;
}
int lora_dropout_keeps(uint64_t key, int lin, size_t i, uint32_t thr) {
    return (dropout_keeps4(key, lin, i / 4, thr) >> (i & 3)) & 1;
}

void llama_lora_free(llama_model *m) {
    struct llama_lora *a = m->lora;
    if (!a) return;
    for (int i = 0; i < m->cfg.n_layers * LIN_COUNT; i++) free(a->u[i]);
    free(a->u); free(a->u_cap); free(a->xd);
    free(a->params); free(a->grads); free(a->table); free(a->a_of);
    free(a);
    m->lora = NULL;
}

int llama_lora_enable(llama_model *m, const lora_config *c, uint64_t seed) {
    if (check_config(c, "")) return HALO_ERR;
    const unsigned fused = (1u << LIN_Q) | (1u << LIN_K) | (1u << LIN_V) | (1u << LIN_GATE) | (1u << LIN_UP);
    if (m->cfg.arch == ARCH_PHI3 && (c->kinds & fused))   // PEFT adapts Phi-3's fused qkv_proj / gate_up_proj whole
        return halo_fail("LoRA on Phi-3: its q, k, v and gate, up are fused tensors (qkv_proj, gate_up_proj), which "
                         "the adapters here do not cover; use --lora-linears o,down (or full fine-tuning)");
    for (int k = 0; k < LIN_COUNT; k++) {   // a rank above min(in, out) adds parameters and no expressiveness
        const int in = model_linear_in_features(&m->cfg, k), out = model_linear_out_features(&m->cfg, k);
        if ((c->kinds & (1u << k)) && (c->rank > in || c->rank > out))
            return halo_fail("LoRA rank %d exceeds %s's smaller dimension (in %d, out %d)", c->rank,
                             LLAMA_LINEAR_NAMES[k], in, out);
    }
    llama_lora_free(m);
    const int L = m->cfg.n_layers, r = c->rank;
    struct llama_lora *a = xcalloc(1, sizeof *a);
    a->cfg = *c;
    a->scale = (float)(c->alpha / c->rank);
    a->a_of = xmalloc(sizeof(int) * (size_t)L * LIN_COUNT);
    a->u = xcalloc((size_t)L * LIN_COUNT, sizeof(float *));
    a->u_cap = xcalloc((size_t)L * LIN_COUNT, sizeof(size_t));
    a->table = xcalloc((size_t)2 * L * LIN_COUNT, sizeof(llama_param));
    size_t off = 0;
    for (int l = 0; l < L; l++)
        for (int k = 0; k < LIN_COUNT; k++) {
            a->a_of[l * LIN_COUNT + k] = -1;
            if (!(c->kinds & (1u << k))) continue;
            const int in = model_linear_in_features(&m->cfg, k), out = model_linear_out_features(&m->cfg, k);
            a->a_of[l * LIN_COUNT + k] = a->n_table;
            for (int ab = 0; ab < 2; ab++) {
                llama_param *p = &a->table[a->n_table++];
                snprintf(p->name, sizeof p->name, PEFT_PREFIX "model.layers.%d.%s.lora_%c.weight", l,
                         LLAMA_LINEAR_NAMES[k], ab ? 'B' : 'A');
                p->ndim = 2;
                p->shape[0] = ab ? out : r;
                p->shape[1] = ab ? r : in;
                p->numel = (size_t)p->shape[0] * p->shape[1];
                p->offset = off;
                off += p->numel;
            }
        }
    a->n_params = off;
    a->params = xcalloc(off, sizeof(float));
    a->grads = xcalloc(off, sizeof(float));
    uint64_t s = seed ^ 0x10AA5EEDULL;
    for (int i = 0; i < a->n_table; i += 2) {   // A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0
        const llama_param *p = &a->table[i];
        const double bound = 1.0 / sqrt((double)p->shape[1]);
        for (size_t j = 0; j < p->numel; j++) {
            s += 0x9E3779B97F4A7C15ULL;
            double u = (double)(mix64(s) >> 11) * (1.0 / 9007199254740992.0);
            a->params[p->offset + j] = (float)((2 * u - 1) * bound);
        }
    }
    m->lora = a;
    return HALO_OK;
}

const lora_config *llama_get_lora(const llama_model *m) { return m->lora ? &m->lora->cfg : NULL; }

void llama_lora_train(llama_model *m, int on, uint64_t key) {
    if (!m->lora) return;
    m->lora->training = on;
    m->lora->key = key;
}

llama_trainable llama_trainable_params(llama_model *m) {
    if (m->lora)
        return (llama_trainable){m->lora->params, m->lora->grads, m->lora->n_params, m->lora->table, m->lora->n_table};
    return (llama_trainable){m->params, m->grads, m->n_params, m->table, m->n_table};
}

void llama_lora_zero_grads(llama_model *m) {
    if (m->lora) memset(m->lora->grads, 0, sizeof(float) * m->lora->n_params);
}

// dropout(X) into the scratch buffer, or X itself when no dropout applies
static const float *dropped_input(struct llama_lora *a, int lin, const float *X, int b, int in) {
    const double p = a->cfg.dropout;
    if (!a->training || p == 0) return X;
    const size_t n = (size_t)b * in;
    if (n > a->xd_cap) { free(a->xd); a->xd = xmalloc(sizeof(float) * n); a->xd_cap = n; }
    const float keep = (float)(1.0 / (1.0 - p));
    float *xd = a->xd;
    const uint64_t key = a->key;
    const uint32_t thr = lora_dropout_threshold(p);
#pragma omp parallel for schedule(static) if (n > (1u << 16))
    for (size_t q = 0; q < (n + 3) / 4; q++) {   // one hash for four elements
        const unsigned m = dropout_keeps4(key, lin, q, thr);
        for (size_t i = 4 * q; i < 4 * q + 4 && i < n; i++) xd[i] = (m >> (i & 3)) & 1 ? X[i] * keep : 0.0f;
    }
    return xd;
}

void lora_linear_forward(llama_model *m, int layer, int kind, float *Y, const float *X, int b, int in, int out) {
    struct llama_lora *a = m->lora;
    if (!a) return;
    const int lin = layer * LIN_COUNT + kind, ia = a->a_of[lin], r = a->cfg.rank;
    if (ia < 0) return;
    const float *A = a->params + a->table[ia].offset, *B = a->params + a->table[ia + 1].offset;
    const size_t need = (size_t)b * r;
    if (need > a->u_cap[lin]) { free(a->u[lin]); a->u[lin] = xmalloc(sizeof(float) * need); a->u_cap[lin] = need; }
    float *U = a->u[lin];
    const float *xd = dropped_input(a, lin, X, b, in);
    // U = s * Xd A^T [b, r]; Y += U B^T [b, out]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b, r, in, a->scale, xd, in, A, in, 0.0f, U, r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b, out, r, 1.0f, U, r, B, r, 1.0f, Y, out);
}

void lora_linear_backward(llama_model *m, int layer, int kind, float *dX, const float *dY, const float *X, int b,
                          int in, int out) {
    struct llama_lora *a = m->lora;
    if (!a) return;
    const int lin = layer * LIN_COUNT + kind, ia = a->a_of[lin], r = a->cfg.rank;
    if (ia < 0) return;
    const llama_param *pa = &a->table[ia], *pb = &a->table[ia + 1];
    const float *A = a->params + pa->offset, *B = a->params + pb->offset;
    float *dA = a->grads + pa->offset, *dB = a->grads + pb->offset;
    const float *U = a->u[lin];
    // dB += dY^T U (U holds the scale); dU = s * dY B [b, r]
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, r, b, 1.0f, dY, out, U, r, 1.0f, dB, r);
    float *dU = xmalloc(sizeof(float) * (size_t)b * r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b, r, out, a->scale, dY, out, B, r, 0.0f, dU, r);
    // dA += dU^T Xd; dX += dropout'(dU A)
    const float *xd = dropped_input(a, lin, X, b, in);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, in, b, 1.0f, dU, r, xd, in, 1.0f, dA, in);
    if (dX) {
        const double p = a->cfg.dropout;
        if (!a->training || p == 0) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b, in, r, 1.0f, dU, r, A, in, 1.0f, dX, in);
        } else {   // the scratch is free again: dXd there, then masked into dX
            float *t = a->xd;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b, in, r, 1.0f, dU, r, A, in, 0.0f, t, in);
            const size_t n = (size_t)b * in;
            const float keep = (float)(1.0 / (1.0 - p));
            const uint64_t key = a->key;
            const uint32_t thr = lora_dropout_threshold(p);
#pragma omp parallel for schedule(static) if (n > (1u << 16))
            for (size_t q = 0; q < (n + 3) / 4; q++) {
                const unsigned m = dropout_keeps4(key, lin, q, thr);
                for (size_t i = 4 * q; i < 4 * q + 4 && i < n; i++)
                    if ((m >> (i & 3)) & 1) dX[i] += t[i] * keep;
            }
        }
    }
    free(dU);
}

void llama_lora_merge(llama_model *m) {
    struct llama_lora *a = m->lora;
    if (!a) return;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        for (int k = 0; k < LIN_COUNT; k++) {
            const int ia = a->a_of[l * LIN_COUNT + k];
            if (ia < 0) continue;
            const llama_param *pa = &a->table[ia], *pb = &a->table[ia + 1];
            const int out = (int)pb->shape[0], in = (int)pa->shape[1], r = a->cfg.rank;
            // W [out, in] += s * B [out, r] A [r, in]
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, r, a->scale, a->params + pb->offset, r,
                        a->params + pa->offset, in, 1.0f, llama_linear_weight(&m->w, l, (llama_linear_kind)k), in);
        }
    }
    llama_lora_free(m);
}

// ---- configuration text ----

// The configuration under PEFT's adapter_config.json keys (r, lora_alpha, lora_dropout, target_modules) into r.
static void config_to_obj(const lora_config *c, cJSON *r) {
    cJSON_AddNumberToObject(r, "r", c->rank);
    cJSON_AddNumberToObject(r, "lora_alpha", c->alpha);
    cJSON_AddNumberToObject(r, "lora_dropout", c->dropout);
    cJSON *t = cJSON_AddArrayToObject(r, "target_modules");
    for (int k = 0; k < LIN_COUNT; k++)
        if (c->kinds & (1u << k)) cJSON_AddItemToArray(t, cJSON_CreateString(peft_module(k)));
}

char *lora_config_to_json(const lora_config *c) {
    cJSON *r = cJSON_CreateObject();
    config_to_obj(c, r);
    char *s = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    return s;
}

// Reads r, lora_alpha, lora_dropout and target_modules from a parsed object (PEFT's adapter_config.json keys).
static int config_from_obj(const cJSON *r, const char *where, lora_config *c) {
    *c = lora_config_default();
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, "r");
    // range first: the cast of 1e300 to int is undefined
    if (!json_whole(v, -2147483647.0, 2147483647.0))
        return halo_fail("%s: key 'r' missing or not an integer", where);
    c->rank = (int)v->valuedouble;
    v = cJSON_GetObjectItemCaseSensitive(r, "lora_alpha");
    if (!cJSON_IsNumber(v)) return halo_fail("%s: key 'lora_alpha' missing or not a number", where);
    c->alpha = v->valuedouble;
    v = cJSON_GetObjectItemCaseSensitive(r, "lora_dropout");
    if (v && !cJSON_IsNull(v) && !cJSON_IsNumber(v)) return halo_fail("%s: key 'lora_dropout' is not a number", where);
    c->dropout = cJSON_IsNumber(v) ? v->valuedouble : 0;
    v = cJSON_GetObjectItemCaseSensitive(r, "target_modules");
    if (!cJSON_IsArray(v))
        return halo_fail("%s: key 'target_modules' is not a list of module names (a pattern string is not supported)",
                         where);
    c->kinds = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        int k = -1;
        for (int i = 0; i < LIN_COUNT && cJSON_IsString(e); i++) if (!strcmp(e->valuestring, peft_module(i))) k = i;
        if (k < 0)
            return halo_fail("%s: target_modules holds '%s', not one of q_proj, k_proj, v_proj, o_proj, gate_proj, "
                             "up_proj, down_proj", where, cJSON_IsString(e) ? e->valuestring : "(not a string)");
        c->kinds |= 1u << k;
    }
    char ctx[1100];
    snprintf(ctx, sizeof ctx, "%s: ", where);
    return check_config(c, ctx);
}

int lora_config_from_json(const char *json, const char *where, lora_config *c) {
    cJSON *r = cJSON_Parse(json);
    if (!cJSON_IsObject(r)) { cJSON_Delete(r); return halo_fail("%s: not a JSON object", where); }
    int rc = config_from_obj(r, where, c);
    cJSON_Delete(r);
    return rc;
}

void lora_describe(const lora_config *c, char *buf, size_t n) {
    char kinds[64];
    model_linear_kinds_text(c->kinds, kinds, sizeof kinds);
    snprintf(buf, n, "LoRA r %d, alpha %g, dropout %g on %s", c->rank, c->alpha, c->dropout, kinds);
}

// ---- PEFT adapter files ----

int llama_lora_save(const llama_model *m, const char *dir, const char *base_model, int bf16) {
    const struct llama_lora *a = m->lora;
    if (!a) return halo_fail("writing adapter %s: the model has no LoRA adapters", dir);
    if (halo_mkdirs(dir)) return halo_fail_ctx("writing adapter %s: ", dir);
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "peft_type", "LORA");
    cJSON_AddStringToObject(r, "task_type", "CAUSAL_LM");
    if (base_model) cJSON_AddStringToObject(r, "base_model_name_or_path", base_model);
    else cJSON_AddNullToObject(r, "base_model_name_or_path");
    config_to_obj(&a->cfg, r);
    cJSON_AddStringToObject(r, "bias", "none");
    cJSON_AddBoolToObject(r, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(r, "inference_mode", 1);
    cJSON_AddBoolToObject(r, "init_lora_weights", 1);
    cJSON_AddBoolToObject(r, "use_rslora", 0);
    cJSON_AddBoolToObject(r, "use_dora", 0);
    cJSON_AddNullToObject(r, "modules_to_save");
    cJSON_AddNullToObject(r, "layers_to_transform");
    char *json = cJSON_Print(r);
    cJSON_Delete(r);
    char *p = halo_path_join(dir, "adapter_config.json");
    size_t len = strlen(json);
    const void *parts[1] = {json};
    int rc = halo_write_file_atomic(p, parts, &len, 1);
    free(json); free(p);
    if (rc) return halo_fail_ctx("writing adapter %s: ", dir);
    st_writer *w = st_writer_new();
    for (int i = 0; i < a->n_table; i++) {
        const llama_param *q = &a->table[i];
        st_writer_add(w, q->name, bf16 ? ST_BF16 : ST_F32, ST_F32, a->params + q->offset, 2, q->shape);
    }
    st_writer_meta(w, "format", "pt");
    p = halo_path_join(dir, "adapter_model.safetensors");
    rc = st_writer_write(w, p);
    st_writer_free(w);
    free(p);
    return rc ? halo_fail_ctx("writing adapter %s: ", dir) : HALO_OK;
}

// PEFT options that change what the adapter computes and that this loader does not implement
static int refuse_unsupported(const cJSON *r, const char *where) {
    const char *flags[] = {"use_rslora", "use_dora", "fan_in_fan_out", "lora_bias"};
    for (size_t i = 0; i < sizeof flags / sizeof *flags; i++)
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, flags[i])))
            return halo_fail("%s: '%s' is true, which halo does not support", where, flags[i]);
    const char *empty[] = {"rank_pattern", "alpha_pattern"};
    for (size_t i = 0; i < sizeof empty / sizeof *empty; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, empty[i]);
        if (v && !cJSON_IsNull(v) && cJSON_GetArraySize(v) > 0)
            return halo_fail("%s: '%s' is not empty, which halo does not support", where, empty[i]);
    }
    const char *nulls[] = {"layers_to_transform", "modules_to_save"};
    for (size_t i = 0; i < sizeof nulls / sizeof *nulls; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, nulls[i]);
        if (v && !cJSON_IsNull(v) && !(cJSON_IsArray(v) && cJSON_GetArraySize(v) == 0))
            return halo_fail("%s: '%s' is set, which halo does not support", where, nulls[i]);
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, "peft_type");
    if (cJSON_IsString(v) && strcmp(v->valuestring, "LORA"))
        return halo_fail("%s: peft_type '%s' is not LORA", where, v->valuestring);
    v = cJSON_GetObjectItemCaseSensitive(r, "bias");
    if (cJSON_IsString(v) && strcmp(v->valuestring, "none"))
        return halo_fail("%s: bias '%s' is not none (halo's linears have no bias)", where, v->valuestring);
    return HALO_OK;
}

int llama_lora_load(llama_model *m, const char *dir) {
    char *cp = halo_path_join(dir, "adapter_config.json"), *text = NULL;
    if (halo_read_file(cp, &text, NULL)) { free(cp); return halo_fail_ctx("loading adapter %s: ", dir); }
    cJSON *r = cJSON_Parse(text);
    free(text);
    lora_config c;
    int rc = cJSON_IsObject(r) ? HALO_OK : halo_fail("%s: not a JSON object", cp);
    if (rc == HALO_OK) rc = refuse_unsupported(r, cp);
    if (rc == HALO_OK) rc = config_from_obj(r, cp, &c);
    cJSON_Delete(r);
    free(cp);
    if (rc) return rc;
    // the new adapters are built beside the model's current ones, which come back if the files are refused
    struct llama_lora *old = m->lora;
    m->lora = NULL;
    if (llama_lora_enable(m, &c, 0)) { m->lora = old; return halo_fail_ctx("%s/adapter_config.json: ", dir); }
    char *sp = halo_path_join(dir, "adapter_model.safetensors");
    st_file f;
    if (st_open(sp, &f)) { free(sp); llama_lora_free(m); m->lora = old; return halo_fail_ctx("loading adapter %s: ", dir); }
    struct llama_lora *a = m->lora;
    for (int i = 0; rc == HALO_OK && i < a->n_table; i++) {
        const llama_param *p = &a->table[i];
        if (!st_find(&f, p->name)) rc = halo_fail("%s: tensor '%s' is missing", sp, p->name);
        else if (st_read_f32(&f, p->name, a->params + p->offset, 2, p->shape)) rc = halo_fail_ctx("%s: ", sp);
        for (size_t j = 0; rc == HALO_OK && j < p->numel; j++)   // a NaN / Inf would poison every output
            if (!isfinite(a->params[p->offset + j]))
                rc = halo_fail("%s: tensor '%s' holds %g at element %zu", sp, p->name, (double)a->params[p->offset + j], j);
    }
    // a tensor this configuration does not expect (another layer count, a module not in target_modules)
    for (int i = 0; rc == HALO_OK && i < f.n_tensors; i++) {
        int known = 0;
        for (int j = 0; j < a->n_table && !known; j++) known = !strcmp(f.tensors[i].name, a->table[j].name);
        if (!known) rc = halo_fail("%s: tensor '%s' does not belong to this model's adapters (r %d on %d layers)", sp,
                                   f.tensors[i].name, c.rank, m->cfg.n_layers);
    }
    st_close(&f);
    free(sp);
    if (rc) { llama_lora_free(m); m->lora = old; }
    else if (old) { struct llama_lora *now = m->lora; m->lora = old; llama_lora_free(m); m->lora = now; }
    return rc;
}
