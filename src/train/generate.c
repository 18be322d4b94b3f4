// Greedy and sampled decoding (see generate.h). Sampling follows the usual order: temperature, then top-k, then
// top-p over the renormalized distribution, then one draw.
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include "train/generate.h"
#include "util/error.h"
#include "util/json.h"
#include "util/fileio.h"

gen_options gen_options_default(void) {
    return (gen_options){.max_new_tokens = 64, .temperature = 0, .top_k = 0, .top_p = 1, .seed = 0, .eos_id = -1};
}

static const float *g_sort_logits;   // qsort has no context argument; sorting happens on one thread at a time
static int cmp_desc(const void *a, const void *b) {
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    float x = g_sort_logits[i], y = g_sort_logits[j];
    if (x != y) return x > y ? -1 : 1;
    return (i > j) - (i < j);
}

int32_t gen_pick_token(float *logits, int V, const gen_options *o, halo_rng *rng, int32_t *work) {
    if (o->temperature <= 0) {
        int32_t best = 0;
        for (int i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }
    for (int i = 0; i < V; i++) { logits[i] /= o->temperature; work[i] = i; }
    g_sort_logits = logits;
    qsort(work, (size_t)V, sizeof *work, cmp_desc);
    int n = V;
    if (o->top_k > 0 && o->top_k < n) n = o->top_k;
    // Softmax over the kept candidates, in double.
    double mx = logits[work[0]], sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)logits[work[i]] - mx);
    if (o->top_p < 1) {
        double cum = 0;
        int keep = n;
        for (int i = 0; i < n; i++) {
            cum += exp((double)logits[work[i]] - mx) / sum;
            if (cum >= o->top_p) { keep = i + 1; break; }
        }
        n = keep;
        sum = 0;
        for (int i = 0; i < n; i++) sum += exp((double)logits[work[i]] - mx);
    }
    double u = halo_rng_uniform(rng) * sum, cum = 0;
    for (int i = 0; i < n; i++) {
        cum += exp((double)logits[work[i]] - mx);
        if (u < cum) return work[i];
    }
    return work[n - 1];
}

int gen_generate(llama_model *m, const int32_t *prompt, int n_prompt, const gen_options *o, int32_t *out, int *n_out) {
    const int V = m->cfg.vocab_size;
    *n_out = 0;
    if (n_prompt < 1) return halo_fail("generate: the prompt needs at least one token");
    int total = n_prompt + o->max_new_tokens;
    if (total > m->cfg.max_pos)
        return halo_fail("generate: prompt (%d) + new tokens (%d) exceed the model's max_position_embeddings %d",
                         n_prompt, o->max_new_tokens, m->cfg.max_pos);
    if (llama_config_check_len(&m->cfg, total, "generate: prompt + new tokens")) return HALO_ERR;
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= V) return halo_fail("generate: prompt token %d = %d is outside the vocabulary (size %d)", i, prompt[i], V);
    llama_kv_cache kv;
    llama_kv_init(&kv, &m->cfg, total);
    float *logits = xmalloc((size_t)V * sizeof(float));
    int32_t *work = xmalloc((size_t)V * sizeof(int32_t));
    halo_rng rng;
    halo_rng_seed(&rng, o->seed);
    for (int i = 0; i < n_prompt; i++) llama_decode_step(m, &kv, prompt[i], i, logits);
    int pos = n_prompt;
    for (int k = 0; k < o->max_new_tokens; k++) {
        int32_t tok = gen_pick_token(logits, V, o, &rng, work);
        out[(*n_out)++] = tok;
        if (o->on_token) o->on_token(o->on_token_ctx, tok);
        if (gen_is_end(o, tok)) break;
        if (k + 1 < o->max_new_tokens) llama_decode_step(m, &kv, tok, pos++, logits);
    }
    free(logits); free(work);
    llama_kv_free(&kv);
    return HALO_OK;
}

int gen_read_stops(const char *model_dir, gen_options *o) {
    char *path = halo_path_join(model_dir, "generation_config.json"), *text = NULL;
    if (!halo_file_exists(path)) { free(path); return HALO_OK; }
    int rc = halo_read_file(path, &text, NULL);
    cJSON *j = rc == HALO_OK ? cJSON_Parse(text) : NULL;
    if (rc == HALO_OK && !cJSON_IsObject(j)) rc = halo_fail("%s: not a JSON object", path);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "eos_token_id"), *it;
    // only whole numbers in int32's range (the range is checked before the cast: (int32_t)3e9 is undefined)
    if (cJSON_IsNumber(e)) { if (json_whole(e, -2147483648.0, 2147483647.0) && o->n_stop < 8) o->stop_ids[o->n_stop++] = (int32_t)e->valuedouble; }
    else if (cJSON_IsArray(e))
        cJSON_ArrayForEach(it, e)
            if (json_whole(it, -2147483648.0, 2147483647.0) && o->n_stop < 8) o->stop_ids[o->n_stop++] = (int32_t)it->valuedouble;
    cJSON_Delete(j);
    free(text);
    free(path);
    return rc;
}
