// Hugging Face config.json <-> llama_config. Refuses what the model does not implement, naming the key.
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "io/safetensors.h"
#include "model/config.h"
#include "util/error.h"
#include "util/json.h"
#include "util/fileio.h"

const char *const LLAMA_ARCH_CLASS[ARCH_COUNT] = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                                                  "Qwen3ForCausalLM", "SmolLM3ForCausalLM", "Phi3ForCausalLM"};
const char *const LLAMA_ARCH_TYPE[ARCH_COUNT] = {"llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3"};

// Reads an integer key; `required` controls whether absence is an error. Returns 1 if found.
static int get_int(const char *path, const cJSON *root, const char *key, int *out, int required, int *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) { *err = halo_fail("%s: missing required key '%s'", path, key); }
        return 0;
    }
    if (!json_whole(v, -2e9, 2e9)) {
        *err = halo_fail("%s: key '%s' must be an integer", path, key);
        return 0;
    }
    *out = (int)v->valuedouble;
    return 1;
}

static int get_float(const char *path, const cJSON *root, const char *key, float *out, int *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || !(fabs(v->valuedouble) <= FLT_MAX)) {   // 1e300 would become inf as a float
        *err = halo_fail("%s: key '%s' must be a finite number", path, key);
        return 0;
    }
    *out = (float)v->valuedouble;
    return 1;
}

// bos/eos may be an integer or a list (Llama 3.1 lists several eos ids; the first is used for stopping).
static void get_token_id(const char *path, const cJSON *root, const char *key, int *out, int *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (cJSON_IsArray(v) && cJSON_GetArraySize(v) > 0 && cJSON_IsNumber(cJSON_GetArrayItem(v, 0)))
        v = cJSON_GetArrayItem(v, 0);
    if (!cJSON_IsNumber(v)) return;
    if (!json_whole(v, -2e9, 2e9)) {   // (int)1e300 is undefined
        *err = halo_fail("%s: key '%s' must be an integer token id", path, key);
        return;
    }
    *out = (int)v->valuedouble;
}

// rope scaling lives in `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5, which also holds
// rope_theta). Accepted types: none/default, llama3, linear (positions divided by factor).
static int parse_rope(const char *path, const cJSON *root, llama_config *c) {
    int err = HALO_OK;
    const char *keys[2] = {"rope_parameters", "rope_scaling"};
    for (int k = 0; k < 2; k++) {
        const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, keys[k]);
        if (!rp || cJSON_IsNull(rp)) continue;
        if (!cJSON_IsObject(rp)) return halo_fail("%s: key '%s' must be an object", path, keys[k]);
        get_float(path, rp, "rope_theta", &c->rope_theta, &err);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(rp, "rope_type");
        if (!t) t = cJSON_GetObjectItemCaseSensitive(rp, "type");
        const char *type = cJSON_IsString(t) ? t->valuestring : "default";
        if (!strcmp(type, "default")) continue;
        if (!strcmp(type, "linear")) {
            c->rope_scaling = ROPE_SCALING_LINEAR;
            if (!get_float(path, rp, "factor", &c->rope_factor, &err))
                return err == HALO_OK ? halo_fail("%s: %s of type linear needs factor", path, keys[k]) : err;
            continue;
        }
        if (strcmp(type, "llama3"))
            return halo_fail("%s: %s.rope_type '%s' is not supported (supported: default, llama3, linear)", path,
                             keys[k], type);
        c->rope_scaling = ROPE_SCALING_LLAMA3;
        if (!get_float(path, rp, "factor", &c->rope_factor, &err) ||
            !get_float(path, rp, "low_freq_factor", &c->rope_low_freq_factor, &err) ||
            !get_float(path, rp, "high_freq_factor", &c->rope_high_freq_factor, &err) ||
            !get_int(path, rp, "original_max_position_embeddings", &c->rope_original_max_pos, 1, &err))
            return err == HALO_OK ? halo_fail("%s: %s of type llama3 needs factor, low_freq_factor, high_freq_factor "
                                              "and original_max_position_embeddings", path, keys[k]) : err;
    }
    return err;
}

// SmolLM3: no_rope_layers [num_hidden_layers] of 0 / 1 (1: the layer applies RoPE), or when absent every
// no_rope_layer_interval-th layer (default 4) without RoPE, as transformers' SmolLM3Config builds it.
static int parse_nope(const char *path, const cJSON *root, llama_config *c) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, "no_rope_layers");
    if (c->n_layers > LLAMA_MAX_NOPE_LAYERS)
        return halo_fail("%s: SmolLM3 with %d layers: at most %d are supported", path, c->n_layers, LLAMA_MAX_NOPE_LAYERS);
    if (list && !cJSON_IsNull(list)) {
        if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) != c->n_layers)
            return halo_fail("%s: 'no_rope_layers' must be a list of num_hidden_layers (%d) 0 / 1 values", path,
                             c->n_layers);
        int l = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, list) {
            if (!cJSON_IsNumber(v) || (v->valuedouble != 0 && v->valuedouble != 1))
                return halo_fail("%s: no_rope_layers[%d] must be 0 or 1", path, l);
            if (v->valuedouble == 0) c->nope[l / 64] |= 1ull << (l % 64);
            l++;
        }
        return HALO_OK;
    }
    int every = 4, err = HALO_OK;
    get_int(path, root, "no_rope_layer_interval", &every, 0, &err);
    if (err != HALO_OK) return err;
    if (every < 1) return halo_fail("%s: 'no_rope_layer_interval' must be positive (got %d)", path, every);
    for (int l = 0; l < c->n_layers; l++)
        if ((l + 1) % every == 0) c->nope[l / 64] |= 1ull << (l % 64);
    return HALO_OK;
}

int llama_config_validate(const llama_config *c, const char *where) {
#define POS(field, key) if (c->field <= 0) return halo_fail("%s: '%s' must be positive (got %d)", where, key, c->field)
    POS(vocab_size, "vocab_size"); POS(dim, "hidden_size"); POS(hidden_dim, "intermediate_size");
    POS(n_layers, "num_hidden_layers"); POS(n_heads, "num_attention_heads"); POS(n_kv_heads, "num_key_value_heads");
    POS(head_dim, "head_dim"); POS(max_pos, "max_position_embeddings");
#undef POS
    // the model multiplies these in int
    if ((long long)c->n_heads * c->head_dim > INT_MAX)
        return halo_fail("%s: num_attention_heads (%d) x head_dim (%d) is too large", where, c->n_heads, c->head_dim);
    if (c->n_heads % c->n_kv_heads)
        return halo_fail("%s: num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)", where,
                         c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2) return halo_fail("%s: head_dim %d must be even for RoPE", where, c->head_dim);
    if (c->qk_norm && c->n_heads > c->dim)   // the decoder keeps the heads' norm scales in a [hidden_size] buffer
        return halo_fail("%s: num_attention_heads (%d) above hidden_size (%d)", where, c->n_heads, c->dim);
    if (!(c->norm_eps > 0)) return halo_fail("%s: 'rms_norm_eps' must be positive", where);
    if (!(c->rope_theta > 0)) return halo_fail("%s: 'rope_theta' must be positive", where);
    // llama3 scaling divides by factor, each frequency factor and their difference
    if (c->rope_scaling == ROPE_SCALING_LLAMA3 &&
        (!(c->rope_factor > 0) || !(c->rope_low_freq_factor > 0) || !(c->rope_high_freq_factor > c->rope_low_freq_factor) ||
         c->rope_original_max_pos <= 0))
        return halo_fail("%s: rope_scaling (llama3) needs factor > 0, 0 < low_freq_factor < high_freq_factor and "
                         "original_max_position_embeddings > 0", where);
    if (c->rope_scaling == ROPE_SCALING_LINEAR && !(c->rope_factor > 0))
        return halo_fail("%s: rope_scaling (linear) needs factor > 0", where);
    return HALO_OK;
}

int llama_config_check_len(const llama_config *c, long len, const char *what) {
    if (c->sliding_window > 0 && len > c->sliding_window)
        return halo_fail("%s: %ld positions exceed the model's sliding_window of %d (config.json); attention over a "
                         "window is not implemented, so sequences must fit inside it", what, len, c->sliding_window);
    return HALO_OK;
}

int llama_config_load(const char *path, llama_config *c) {
    char *text;
    if (halo_read_file(path, &text, NULL) != HALO_OK) return HALO_ERR;
    int rc = llama_config_from_json(text, path, c);
    free(text);
    return rc;
}

int llama_config_from_json(const char *json, const char *path, llama_config *c) {
    cJSON *root = cJSON_Parse(json);
    if (!root || !cJSON_IsObject(root)) { cJSON_Delete(root); return halo_fail("%s: not a valid JSON object", path); }
    memset(c, 0, sizeof *c);
    int err = HALO_OK;
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const int by_class = cJSON_IsArray(arch) && cJSON_GetArraySize(arch) > 0;
    const cJSON *name = by_class ? cJSON_GetArrayItem(arch, 0) : mt;
    if (by_class || cJSON_IsString(mt)) {
        const char *const *names = by_class ? LLAMA_ARCH_CLASS : LLAMA_ARCH_TYPE;
        int a = 0;
        while (a < ARCH_COUNT && !(cJSON_IsString(name) && !strcmp(name->valuestring, names[a]))) a++;
        if (a == ARCH_COUNT)
            err = halo_fail("%s: %s is '%s'; supported: %s, %s, %s, %s, %s, %s", path,
                            by_class ? "architectures[0]" : "model_type", cJSON_IsString(name) ? name->valuestring : "?",
                            names[0], names[1], names[2], names[3], names[4], names[5]);
        else c->arch = (llama_arch)a;
    }
    c->qk_norm = c->arch == ARCH_QWEN3;
    // biases (1 << llama_linear_kind: q 0, k 1, v 2, o 3, gate 4, up 5, down 6)
    if (c->arch == ARCH_QWEN2) c->bias_kinds = BIAS_QKV;   // always: Qwen2's config has no key for them
    else {
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "attention_bias"))) c->bias_kinds |= BIAS_ATTENTION;
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "mlp_bias"))) c->bias_kinds |= BIAS_MLP;
    }
    if (err == HALO_OK && c->arch != ARCH_LLAMA && c->arch != ARCH_MISTRAL && c->arch != ARCH_PHI3 &&
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "use_sliding_window")))
        err = halo_fail("%s: 'use_sliding_window' is true; attention over a window is not implemented", path);
    float partial = 1.0f;   // Phi-4-mini and others rotate only part of each head
    if (err == HALO_OK && get_float(path, root, "partial_rotary_factor", &partial, &err) && partial != 1.0f)
        err = halo_fail("%s: 'partial_rotary_factor' %g is not supported (RoPE over whole heads only)", path, partial);
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (err == HALO_OK && act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu")))
        err = halo_fail("%s: hidden_act '%s' is not supported (only silu)", path, cJSON_IsString(act) ? act->valuestring : "?");
    const cJSON *tp = cJSON_GetObjectItemCaseSensitive(root, "pretraining_tp");
    if (err == HALO_OK && cJSON_IsNumber(tp) && tp->valuedouble != 1)
        err = halo_fail("%s: pretraining_tp %g is not supported (only 1)", path, tp->valuedouble);
    if (err == HALO_OK) {
        get_int(path, root, "vocab_size", &c->vocab_size, 1, &err);
        if (err == HALO_OK) get_int(path, root, "hidden_size", &c->dim, 1, &err);
        if (err == HALO_OK) get_int(path, root, "intermediate_size", &c->hidden_dim, 1, &err);
        if (err == HALO_OK) get_int(path, root, "num_hidden_layers", &c->n_layers, 1, &err);
        if (err == HALO_OK) get_int(path, root, "num_attention_heads", &c->n_heads, 1, &err);
    }
    if (err == HALO_OK) {
        c->n_kv_heads = c->n_heads;
        get_int(path, root, "num_key_value_heads", &c->n_kv_heads, 0, &err);
        c->head_dim = c->n_heads ? c->dim / c->n_heads : 0;
        get_int(path, root, "head_dim", &c->head_dim, 0, &err);
        c->max_pos = 2048;
        get_int(path, root, "max_position_embeddings", &c->max_pos, 0, &err);
        c->norm_eps = 1e-6f;
        get_float(path, root, "rms_norm_eps", &c->norm_eps, &err);
        c->rope_theta = 10000.0f;
        get_float(path, root, "rope_theta", &c->rope_theta, &err);
        c->tie_embeddings = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings"));
        c->bos_id = c->eos_id = -1;
        get_token_id(path, root, "bos_token_id", &c->bos_id, &err);
        get_token_id(path, root, "eos_token_id", &c->eos_id, &err);
        int pad = -1;
        get_token_id(path, root, "pad_token_id", &pad, &err);
        c->has_pad_id = pad >= 0;
        c->pad_id = pad >= 0 ? pad : 0;   // 0 when absent, as a zeroed config
        if ((c->arch == ARCH_MISTRAL || c->arch == ARCH_PHI3) &&
            get_int(path, root, "sliding_window", &c->sliding_window, 0, &err) && c->sliding_window < 1)
            err = halo_fail("%s: key 'sliding_window' must be positive or null (got %d)", path, c->sliding_window);
        if (err == HALO_OK && c->arch == ARCH_SMOLLM3) err = parse_nope(path, root, c);
    }
    if (err == HALO_OK) err = parse_rope(path, root, c);
    cJSON_Delete(root);
    if (err == HALO_OK) err = llama_config_validate(c, path);
    return err;
}

int llama_config_save(const llama_config *c, const char *path, const char *torch_dtype) {
    char *s = llama_config_to_json(c, torch_dtype, 1);
    size_t n = strlen(s);
    const void *parts[1] = {s};
    int rc = halo_write_file_atomic(path, parts, &n, 1);
    free(s);
    return rc;
}

char *llama_config_to_json(const llama_config *c, const char *torch_dtype, int pretty) {
    cJSON *r = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(r, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString(LLAMA_ARCH_CLASS[c->arch]));
    cJSON_AddStringToObject(r, "model_type", LLAMA_ARCH_TYPE[c->arch]);
    cJSON_AddNumberToObject(r, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(r, "hidden_size", c->dim);
    cJSON_AddNumberToObject(r, "intermediate_size", c->hidden_dim);
    cJSON_AddNumberToObject(r, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(r, "num_attention_heads", c->n_heads);
    cJSON_AddNumberToObject(r, "num_key_value_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(r, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(r, "max_position_embeddings", c->max_pos);
    cJSON_AddNumberToObject(r, "rms_norm_eps", c->norm_eps);
    cJSON_AddNumberToObject(r, "rope_theta", c->rope_theta);
    if (c->rope_scaling == ROPE_SCALING_LINEAR) {
        cJSON *rs = cJSON_AddObjectToObject(r, "rope_scaling");
        cJSON_AddStringToObject(rs, "rope_type", "linear");
        cJSON_AddNumberToObject(rs, "factor", c->rope_factor);
    }
    if (c->rope_scaling == ROPE_SCALING_LLAMA3) {
        cJSON *rs = cJSON_AddObjectToObject(r, "rope_scaling");
        cJSON_AddStringToObject(rs, "rope_type", "llama3");
        cJSON_AddNumberToObject(rs, "factor", c->rope_factor);
        cJSON_AddNumberToObject(rs, "low_freq_factor", c->rope_low_freq_factor);
        cJSON_AddNumberToObject(rs, "high_freq_factor", c->rope_high_freq_factor);
        cJSON_AddNumberToObject(rs, "original_max_position_embeddings", c->rope_original_max_pos);
    }
    cJSON_AddStringToObject(r, "hidden_act", "silu");
    cJSON_AddBoolToObject(r, "tie_word_embeddings", c->tie_embeddings);
    if (c->arch != ARCH_QWEN2) {   // Qwen2's q, k, v biases are its architecture, not a key
        cJSON_AddBoolToObject(r, "attention_bias", (c->bias_kinds & BIAS_ATTENTION) != 0);
        cJSON_AddBoolToObject(r, "mlp_bias", (c->bias_kinds & BIAS_MLP) != 0);
    }
    if (c->arch == ARCH_QWEN2 || c->arch == ARCH_QWEN3 || c->arch == ARCH_SMOLLM3) {
        cJSON_AddBoolToObject(r, "use_sliding_window", 0);
        cJSON_AddNullToObject(r, "sliding_window");
    }
    if (c->arch == ARCH_SMOLLM3) {
        cJSON *nl = cJSON_AddArrayToObject(r, "no_rope_layers");
        for (int l = 0; l < c->n_layers; l++) cJSON_AddItemToArray(nl, cJSON_CreateNumber(llama_layer_rope(c, l)));
    }
    if (c->bos_id >= 0) cJSON_AddNumberToObject(r, "bos_token_id", c->bos_id);
    if (c->eos_id >= 0) cJSON_AddNumberToObject(r, "eos_token_id", c->eos_id);
    // written either way: a class default (Phi-3's 32000) may lie outside a small vocabulary, which transformers refuses
    if (c->has_pad_id) cJSON_AddNumberToObject(r, "pad_token_id", c->pad_id);
    else cJSON_AddNullToObject(r, "pad_token_id");
    const int windowed = c->arch == ARCH_MISTRAL || c->arch == ARCH_PHI3;
    if (windowed && c->sliding_window > 0) cJSON_AddNumberToObject(r, "sliding_window", c->sliding_window);
    else if (windowed) cJSON_AddNullToObject(r, "sliding_window");
    if (torch_dtype) cJSON_AddStringToObject(r, "torch_dtype", torch_dtype);
    char *s = pretty ? cJSON_Print(r) : cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    return s;
}
