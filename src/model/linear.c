// Dispatch of the model's block linears: fp32 BLAS, or one halo_linear per (layer, kind) when HALO is on.
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "model/linear.h"
#include "model/lora.h"
#include "ops/ops.h"
#include "util/error.h"
#include "util/json.h"

struct model_halo {
    model_halo_config cfg;
    halo_linear *lin;        // [n_layers * LIN_COUNT]; NULL entries' layers are not covered
    unsigned char *on;       // [n_layers * LIN_COUNT] 1 = this linear runs through HALO
    float *scratch;          // input-gradient scratch for accumulating products
    size_t scratch_cap;
    char error[512];         // first NaN/Inf report since the last llama_halo_take_error
    int bypass;              // 1: every linear runs as the plain fp32 product (llama_halo_bypass)
};

static const char *const KIND_SHORT[LIN_COUNT] = {"q", "k", "v", "o", "gate", "up", "down"};

model_halo_config model_halo_config_default(void) {
    model_halo_config c;
    memset(&c, 0, sizeof c);
    c.prec = HALO_PREC_FP32;
    c.kinds = (1u << LIN_COUNT) - 1;
    return c;
}

void llama_linears_free(llama_model *m) {
    struct model_halo *h = m->halo;
    if (!h) return;
    for (int i = 0; i < m->cfg.n_layers * LIN_COUNT; i++)
        if (h->on[i]) halo_linear_free(&h->lin[i]);
    free(h->lin); free(h->on); free(h->scratch); free(h);
    m->halo = NULL;
}

int llama_set_halo(llama_model *m, const model_halo_config *hc) {
    if (hc->level < 0 || hc->level > 2) return halo_fail("HALO level %d is not 0, 1 or 2", hc->level);
    if ((unsigned)hc->prec > HALO_PREC_FP8) return halo_fail("unknown HALO precision %d", (int)hc->prec);
    if (hc->had_block_b) {   // a block size the token Hadamard can take, checked now rather than at the first backward
        halo_hadamard t;
        if (hc->had_block_b < 0 || halo_hadamard_plan(&t, hc->had_block_b, hc->had_block_b))
            return halo_fail("token Hadamard block %d: not a supported Hadamard size (K * 2^p with a known order K)",
                             hc->had_block_b);
    }
    if (hc->delayed && (hc->prec != HALO_PREC_INT8 && hc->prec != HALO_PREC_FP8))
        return halo_fail("delayed scaling is an option of HALO's 8-bit products (int8 or fp8); this run is %s",
                         halo_precision_name(hc->prec));
    if (hc->delayed && hc->gran != HALO_GRAN_TENSOR)
        return halo_fail("delayed scaling takes per-tensor scales only (this run's scale granularity is %s)",
                         hc->gran == HALO_GRAN_ROW ? "row" : "block");
    // refused here, before any step, rather than by the layer's plan at its first use
    if (hc->prec != HALO_PREC_FP32 && model_halo_check_blocks(&m->cfg, hc) != HALO_OK) return HALO_ERR;
    llama_linears_free(m);
    if (hc->prec == HALO_PREC_FP32) return HALO_OK;
    int L = m->cfg.n_layers;
    struct model_halo *h = xcalloc(1, sizeof *h);
    h->cfg = *hc;
    h->lin = xcalloc((size_t)L * LIN_COUNT, sizeof(halo_linear));
    h->on = xcalloc((size_t)L * LIN_COUNT, 1);
    halo_linear_config lc = halo_linear_config_make(hc->prec, hc->level);
    lc.gran = hc->gran;
    lc.grad_e5m2 = hc->grad_e5m2;
    lc.grad_rounding = hc->stochastic ? HALO_ROUND_STOCHASTIC : HALO_ROUND_NEAREST;
    lc.had_block = hc->had_block;
    lc.had_block_b = hc->had_block_b;
    lc.identity_quant = hc->identity_quant;
    lc.delayed = hc->delayed;
    for (int l = 0; l < L; l++) {
        for (int k = 0; k < LIN_COUNT; k++) {
            if (!model_halo_selects(hc, l, k, L)) continue;
            char name[160];
            model_halo_layer_name(name, sizeof name, l, k);
            lc.seed = 0x5eedULL + (uint64_t)(l * LIN_COUNT + k);
            halo_linear_init(&h->lin[l * LIN_COUNT + k], &lc, name);
            h->on[l * LIN_COUNT + k] = 1;
        }
    }
    m->halo = h;
    return HALO_OK;
}

_Static_assert(BIAS_QKV == (1 << LIN_Q | 1 << LIN_K | 1 << LIN_V) && BIAS_ATTENTION == (BIAS_QKV | 1 << LIN_O) &&
               BIAS_MLP == (1 << LIN_GATE | 1 << LIN_UP | 1 << LIN_DOWN), "config.h's bias masks follow llama_linear_kind");
int model_linear_in_features(const llama_config *c, int kind) {
    return kind == LIN_O ? c->n_heads * c->head_dim : kind == LIN_DOWN ? c->hidden_dim : c->dim;
}
int model_linear_out_features(const llama_config *c, int kind) {
    return kind == LIN_Q ? c->n_heads * c->head_dim : kind == LIN_K || kind == LIN_V ? c->n_kv_heads * c->head_dim
         : kind == LIN_GATE || kind == LIN_UP ? c->hidden_dim : c->dim;
}

int model_halo_check_blocks(const llama_config *c, const model_halo_config *hc) {
    if (hc->level < 1 || hc->had_block <= 0) return HALO_OK;
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < LIN_COUNT; k++) {
            halo_hadamard t;
            const int in = model_linear_in_features(c, k);
            if (!model_halo_selects(hc, l, k, c->n_layers) || !halo_hadamard_plan(&t, in, hc->had_block)) continue;
            char name[160];
            model_halo_layer_name(name, sizeof name, l, k);
            return halo_fail_ctx("HALO H_m block %d: %s: in_features %d: ", hc->had_block, name, in);
        }
    return HALO_OK;
}

int model_halo_selects(const model_halo_config *hc, int layer, int kind, int n_layers) {
    return layer >= hc->skip_first && layer < n_layers - hc->skip_last && (hc->kinds & (1u << kind));
}

void model_halo_layer_name(char *buf, size_t cap, int layer, int kind) {
    snprintf(buf, cap, "model.layers.%d.%s", layer, LLAMA_LINEAR_NAMES[kind]);
}

const model_halo_config *llama_get_halo(const llama_model *m) { return m->halo ? &m->halo->cfg : NULL; }

void llama_halo_bypass(llama_model *m, int on) { if (m->halo) m->halo->bypass = on; }

static halo_linear *layer_of(llama_model *m, int layer, llama_linear_kind kind) {
    struct model_halo *h = m->halo;
    if (!h || h->bypass || !h->on[layer * LIN_COUNT + kind]) return NULL;
    return &h->lin[layer * LIN_COUNT + kind];
}

struct halo_linear *llama_halo_layer(llama_model *m, int layer, int kind) {
    struct model_halo *h = m->halo;
    if (!h || layer < 0 || layer >= m->cfg.n_layers || kind < 0 || kind >= LIN_COUNT || !h->on[layer * LIN_COUNT + kind])
        return NULL;
    return &h->lin[layer * LIN_COUNT + kind];
}

static void note_error(llama_model *m) {
    if (!m->halo->error[0]) snprintf(m->halo->error, sizeof m->halo->error, "%s", halo_error());
}

const char *llama_halo_take_error(llama_model *m) {
    static _Thread_local char msg[512];
    if (!m->halo || !m->halo->error[0]) return NULL;
    snprintf(msg, sizeof msg, "%s", m->halo->error);
    m->halo->error[0] = 0;
    return msg;
}

// Y[t, :] += bias for each of the b rows (the bias is not quantized: HALO covers the product only)
static void bias_forward(float *Y, const float *bias, int b, int out) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < b; t++)
        for (int j = 0; j < out; j++) Y[(size_t)t * out + j] += bias[j];
}

// db[j] += sum_t dY[t, j], each column's sum in double over rows in order
static void bias_backward(float *db, const float *dY, int b, int out) {
#pragma omp parallel for schedule(static)
    for (int j = 0; j < out; j++) {
        double s = 0;
        for (int t = 0; t < b; t++) s += dY[(size_t)t * out + j];
        db[j] += (float)s;
    }
}

void model_linear_forward(llama_model *m, int layer, llama_linear_kind kind, float *Y, const float *X, const float *W,
                          int b, int in, int out) {
    halo_linear *L = layer_of(m, layer, kind);
    if (!L) linear_forward(Y, X, W, b, in, out);
    else if (halo_linear_forward(L, X, W, Y, b, in, out) != HALO_OK) note_error(m);
    const float *bias = m->w.layers[layer].bias[kind];
    if (bias) bias_forward(Y, bias, b, out);
    lora_linear_forward(m, layer, kind, Y, X, b, in, out);
}

void model_linear_backward(llama_model *m, int layer, llama_linear_kind kind, float *dX, float *dW, const float *dY,
                           const float *X, const float *W, int b, int in, int out, int accumulate_dx) {
    if (m->lora) dW = NULL;   // LoRA: the base weight is frozen (no weight-gradient product)
    if (dW && m->grads && m->g.layers[layer].bias[kind]) bias_backward(m->g.layers[layer].bias[kind], dY, b, out);
    halo_linear *L = layer_of(m, layer, kind);
    if (!L) {
        linear_backward(dX, dW, dY, X, W, b, in, out, accumulate_dx);
        lora_linear_backward(m, layer, kind, dX, dY, X, b, in, out);
        return;
    }
    float *ex = dX;
    struct model_halo *h = m->halo;
    if (dX && accumulate_dx) {   // the HALO layer overwrites E_X: compute into scratch, then add
        size_t need = (size_t)b * in;
        if (need > h->scratch_cap) { free(h->scratch); h->scratch = xmalloc(sizeof(float) * need); h->scratch_cap = need; }
        ex = h->scratch;
    }
    if (halo_linear_backward(L, dY, W, ex, dW, b, in, out) != HALO_OK) note_error(m);
    if (ex != dX) {
        size_t n = (size_t)b * in;
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) dX[i] += ex[i];
    }
    lora_linear_backward(m, layer, kind, dX, dY, X, b, in, out);
}

// ---- configuration text ----

static const char *const PREC_NAMES[] = {"fp32", "bf16", "int8", "fp8"};
static const char *const GRAN_NAMES[] = {"tensor", "row", "block1x128", "block128"};

char *model_halo_config_to_json(const model_halo_config *hc) {
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "precision", PREC_NAMES[hc->prec]);
    cJSON_AddNumberToObject(r, "level", hc->level);
    cJSON *k = cJSON_AddArrayToObject(r, "linears");
    for (int i = 0; i < LIN_COUNT; i++)
        if (hc->kinds & (1u << i)) cJSON_AddItemToArray(k, cJSON_CreateString(KIND_SHORT[i]));
    cJSON_AddNumberToObject(r, "skip_first_blocks", hc->skip_first);
    cJSON_AddNumberToObject(r, "skip_last_blocks", hc->skip_last);
    cJSON_AddStringToObject(r, "scale", GRAN_NAMES[hc->gran]);
    cJSON_AddBoolToObject(r, "grad_e5m2", hc->grad_e5m2);
    cJSON_AddBoolToObject(r, "stochastic_rounding", hc->stochastic);
    cJSON_AddNumberToObject(r, "hadamard_block", hc->had_block);
    cJSON_AddNumberToObject(r, "hadamard_block_tokens", hc->had_block_b);
    cJSON_AddBoolToObject(r, "delayed_scaling", hc->delayed);
    char *s = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    return s;
}

static int name_index(const char *s, const char *const *names, int n) {
    for (int i = 0; i < n; i++) if (!strcmp(s, names[i])) return i;
    return -1;
}

int model_halo_parse_linears(const char *list, unsigned *kinds) {
    if (!strcmp(list, "all")) { *kinds = (1u << LIN_COUNT) - 1; return HALO_OK; }
    unsigned k = 0;
    char *dup = xstrdup(list), *save = NULL;
    for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int i = name_index(t, KIND_SHORT, LIN_COUNT);
        if (i < 0) {
            halo_fail("linear '%s' is not one of q,k,v,o,gate,up,down (or all)", t);   // before t's buffer is freed
            free(dup);
            return HALO_ERR;
        }
        k |= 1u << i;
    }
    free(dup);
    *kinds = k;
    return HALO_OK;
}

// An integer key of halo_config.json: absent (*out unchanged), or a whole number in [lo, hi]; HALO_ERR naming it.
static int halo_int_key(const cJSON *r, const char *key, int lo, int hi, const char *where, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, key);
    if (!v) return HALO_OK;
    if (!json_whole(v, lo, hi))
        return halo_fail("%s: '%s' is not an integer in [%d, %d]", where, key, lo, hi);
    *out = (int)v->valuedouble;
    return HALO_OK;
}
static int halo_bool_key(const cJSON *r, const char *key, const char *where, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, key);
    if (!v) return HALO_OK;
    if (!cJSON_IsBool(v)) return halo_fail("%s: '%s' is not true or false", where, key);
    *out = cJSON_IsTrue(v);
    return HALO_OK;
}

int model_halo_config_from_json(const char *json, const char *where, model_halo_config *hc) {
    *hc = model_halo_config_default();
    cJSON *r = cJSON_Parse(json);
    if (!cJSON_IsObject(r)) { cJSON_Delete(r); return halo_fail("%s: not a JSON object", where); }
    int rc = HALO_OK;
    // a key present with the wrong type is refused (not read as its default: another precision than the run's)
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, "precision");
    if (v) {
        int i = cJSON_IsString(v) ? name_index(v->valuestring, PREC_NAMES, 4) : -1;
        if (i < 0) rc = halo_fail("%s: precision %s%s%s is not fp32, bf16, int8 or fp8", where, cJSON_IsString(v) ? "'" : "",
                                  cJSON_IsString(v) ? v->valuestring : "(not a string)", cJSON_IsString(v) ? "'" : "");
        else hc->prec = (halo_precision)i;
    }
    if (rc == HALO_OK) rc = halo_int_key(r, "level", 0, 2, where, &hc->level);
    v = cJSON_GetObjectItemCaseSensitive(r, "linears");
    if (rc == HALO_OK && v) {
        if (!cJSON_IsArray(v)) rc = halo_fail("%s: 'linears' is not a list of linear names", where);
        hc->kinds = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, v) {
            if (rc != HALO_OK) break;
            int i = cJSON_IsString(e) ? name_index(e->valuestring, KIND_SHORT, LIN_COUNT) : -1;
            if (i < 0) { rc = halo_fail("%s: 'linears' holds an unknown linear", where); break; }
            hc->kinds |= 1u << i;
        }
    }
    v = cJSON_GetObjectItemCaseSensitive(r, "scale");
    if (rc == HALO_OK && v) {
        int i = cJSON_IsString(v) ? name_index(v->valuestring, GRAN_NAMES, 4) : -1;
        if (i < 0) rc = halo_fail("%s: 'scale' is not tensor, row, block1x128 or block128", where);
        else hc->gran = (halo_granularity)i;
    }
    // block counts and Hadamard sizes: >= 0 and bounded (skip_first + skip_last is summed as int by the callers)
    if (rc == HALO_OK) rc = halo_int_key(r, "skip_first_blocks", 0, 1 << 20, where, &hc->skip_first);
    if (rc == HALO_OK) rc = halo_int_key(r, "skip_last_blocks", 0, 1 << 20, where, &hc->skip_last);
    if (rc == HALO_OK) rc = halo_int_key(r, "hadamard_block", 0, 1 << 24, where, &hc->had_block);
    if (rc == HALO_OK) rc = halo_int_key(r, "hadamard_block_tokens", 0, 1 << 24, where, &hc->had_block_b);
    if (rc == HALO_OK) rc = halo_bool_key(r, "grad_e5m2", where, &hc->grad_e5m2);
    if (rc == HALO_OK) rc = halo_bool_key(r, "stochastic_rounding", where, &hc->stochastic);
    if (rc == HALO_OK) rc = halo_bool_key(r, "delayed_scaling", where, &hc->delayed);
    cJSON_Delete(r);
    return rc;
}

void model_linear_kinds_text(unsigned kinds, char *buf, size_t n) {
    if (n) buf[0] = 0;
    for (int i = 0; i < LIN_COUNT; i++)
        if (kinds & (1u << i)) snprintf(buf + strlen(buf), n - strlen(buf), "%s%s", buf[0] ? "," : "", KIND_SHORT[i]);
}

void model_halo_describe(const model_halo_config *hc, int n_layers, char *buf, size_t n) {
    if (hc->prec == HALO_PREC_FP32) { snprintf(buf, n, "fp32 (HALO off)"); return; }
    char kinds[64];
    model_linear_kinds_text(hc->kinds, kinds, sizeof kinds);
    if (hc->prec == HALO_PREC_BF16)
        snprintf(buf, n, "bf16 products (%s; blocks %d..%d of %d)", kinds, hc->skip_first, n_layers - 1 - hc->skip_last, n_layers);
    else
        snprintf(buf, n, "HALO %s level %d, %s scales (%s; blocks %d..%d of %d)", PREC_NAMES[hc->prec], hc->level,
                 GRAN_NAMES[hc->gran], kinds, hc->skip_first, n_layers - 1 - hc->skip_last, n_layers);
    if (hc->prec != HALO_PREC_BF16 && hc->level >= 1 && hc->had_block > 0 && strlen(buf) + 1 < n)
        snprintf(buf + strlen(buf), n - strlen(buf), ", H_m in blocks of %d", hc->had_block);
    if (hc->prec != HALO_PREC_BF16 && hc->level == 2 && hc->had_block_b > 0 && strlen(buf) + 1 < n)
        snprintf(buf + strlen(buf), n - strlen(buf), ", token Hadamard in blocks of %d", hc->had_block_b);
    if (hc->prec != HALO_PREC_BF16 && hc->delayed && strlen(buf) + 1 < n)
        snprintf(buf + strlen(buf), n - strlen(buf), ", delayed scaling");
}

// ---- telemetry ----

void llama_halo_telemetry(llama_model *m, int on) {
    struct model_halo *h = m->halo;
    if (!h) return;
    for (int i = 0; i < m->cfg.n_layers * LIN_COUNT; i++)
        if (h->on[i]) h->lin[i].cfg.telemetry = on;
}

void llama_halo_print_telemetry(const llama_model *m, FILE *f) {
    struct model_halo *h = m->halo;
    if (!h) return;
    int n = 0;
    halo_linear **ls = xmalloc(sizeof(halo_linear *) * (size_t)(m->cfg.n_layers * LIN_COUNT));
    for (int i = 0; i < m->cfg.n_layers * LIN_COUNT; i++)
        if (h->on[i]) ls[n++] = &h->lin[i];
    halo_linear_print_table(f, ls, n);
    free(ls);
}

void llama_halo_write_telemetry(const llama_model *m, FILE *f, int step) {
    struct model_halo *h = m->halo;
    if (!h || !f) return;
    char buf[4096];
    for (int i = 0; i < m->cfg.n_layers * LIN_COUNT; i++) {
        if (!h->on[i]) continue;
        halo_linear_stats_json(&h->lin[i], buf, sizeof buf);
        fprintf(f, "{\"type\":\"quant\",\"step\":%d,\"layer\":%s}\n", step, buf);
    }
    fflush(f);
}
