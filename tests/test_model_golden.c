// The fp32 CPU model against Hugging Face transformers goldens (../shared/goldens): logits, loss, every parameter's
// gradient, and greedy generation with the KV cache. Tolerances from goldens/README.md.
#include <cjson/cJSON.h>
#include "io/safetensors.h"
#include "model/llama.h"
#include "test.h"
#include "test_golden.h"
#include "util/error.h"
#include "util/fileio.h"

// The golden's scalar loss lives in the .json beside the .safetensors.
static double golden_loss(const char *golden_path) {
    char json_path[4096], *text;
    snprintf(json_path, sizeof json_path, "%.*s.json", (int)(strlen(golden_path) - strlen(".safetensors")), golden_path);
    if (halo_read_file(json_path, &text, NULL) != HALO_OK) return NAN;
    cJSON *root = cJSON_Parse(text);
    free(text);
    cJSON *l = cJSON_GetObjectItem(root, "loss");
    double v = cJSON_IsNumber(l) ? l->valuedouble : NAN;
    cJSON_Delete(root);
    return v;
}

static void check_train_golden(const char *model_dir, const char *golden_path) {
    llama_model m;
    if (llama_load(&m, model_dir) != HALO_OK) { CHECK(0, "load %s: %s", model_dir, halo_error()); return; }
    st_file g;
    if (st_open(golden_path, &g) != HALO_OK) { CHECK(0, "%s", halo_error()); llama_free(&m); return; }
    halo_batch b;
    if (t_golden_batch(&g, &b) != HALO_OK) { st_close(&g); llama_free(&m); return; }
    size_t nlog = (size_t)b.B * b.T * m.cfg.vocab_size;
    float *logits = malloc(sizeof(float) * nlog), *ref = malloc(sizeof(float) * nlog);
    float loss = llama_forward(&m, &b, logits);
    int64_t lshape[3] = {b.B, b.T, m.cfg.vocab_size};
    CHECK(st_read_f32(&g, "logits", ref, 3, lshape) == HALO_OK, "%s", halo_error());
    double e = rel_l2_f(logits, ref, nlog);
    printf("%s: logits rel err %.3g\n", model_dir, e);
    CHECK(e < 1e-4, "logits rel err %.3g", e);
    CHECK_REL(loss, golden_loss(golden_path), 1e-4, "loss");
    llama_alloc_grads(&m);
    llama_zero_grads(&m);
    llama_backward(&m, &b, 1.0f);
    double worst = 0;
    for (int i = 0; i < m.n_table; i++) {
        const llama_param *p = &m.table[i];
        char name[128];
        snprintf(name, sizeof name, "grad.%s", p->name);
        float *gr = malloc(sizeof(float) * p->numel);
        int rc = st_read_f32(&g, name, gr, p->ndim, p->shape);
        CHECK(rc == HALO_OK, "%s", halo_error());
        if (rc == HALO_OK) {
            double ge = rel_l2_f(m.grads + p->offset, gr, p->numel);
            if (ge > worst) worst = ge;
            CHECK(ge < 1e-3, "%s rel err %.3g", name, ge);
        }
        free(gr);
    }
    printf("%s: worst gradient rel err %.3g over %d tensors\n", model_dir, worst, m.n_table);
    free(logits); free(ref);
    halo_batch_free(&b);
    st_close(&g);
    llama_free(&m);
}

static void check_greedy(const char *model_dir, const char *golden_json) {
    char *text;
    if (halo_read_file(golden_json, &text, NULL) != HALO_OK) { CHECK(0, "%s", halo_error()); return; }
    cJSON *root = cJSON_Parse(text);
    free(text);
    cJSON *prompt = cJSON_GetObjectItem(root, "prompt_ids"), *want = cJSON_GetObjectItem(root, "greedy_ids");
    CHECK(cJSON_IsArray(prompt) && cJSON_IsArray(want), "golden fields");
    llama_model m;
    if (llama_load(&m, model_dir) != HALO_OK) { CHECK(0, "%s", halo_error()); cJSON_Delete(root); return; }
    int np = cJSON_GetArraySize(prompt), nw = cJSON_GetArraySize(want);
    llama_kv_cache kc;
    llama_kv_init(&kc, &m.cfg, nw + 1);
    float *logits = malloc(sizeof(float) * m.cfg.vocab_size);
    int match = 1, tok = 0;
    for (int i = 0; i < nw - 1; i++) {
        tok = i < np ? cJSON_GetArrayItem(prompt, i)->valueint : tok;
        if (i >= np) CHECK(tok == cJSON_GetArrayItem(want, i)->valueint, "greedy token %d", i);
        llama_decode_step(&m, &kc, tok, i, logits);
        int best = 0;
        for (int v = 1; v < m.cfg.vocab_size; v++) if (logits[v] > logits[best]) best = v;
        if (i + 1 >= np && best != cJSON_GetArrayItem(want, i + 1)->valueint) match = 0;
        tok = best;
    }
    CHECK(match, "greedy generation differs from goldens/stories260K_greedy.json");
    printf("greedy: %d prompt + %d generated tokens %s\n", np, nw - np, match ? "match" : "DIFFER");
    free(logits);
    llama_kv_free(&kc);
    llama_free(&m);
    cJSON_Delete(root);
}

int main(void) {
    if (!test_shared()) { SKIP("shared data folder not found (set HALO_SHARED); golden tests skipped"); TEST_END(); }
    check_train_golden(test_shared_path("models/stories260K"), test_shared_path("goldens/stories260K_train.safetensors"));
    check_train_golden(test_shared_path("goldens/tiny-llama3"), test_shared_path("goldens/tiny-llama3_train.safetensors"));
    check_greedy(test_shared_path("models/stories260K"), test_shared_path("goldens/stories260K_greedy.json"));
    TEST_END();
}
