// Ten AdamW steps on one batch against torch.optim.AdamW (lr 1e-3, betas 0.9/0.95, eps 1e-8, no weight decay)
// run by Hugging Face transformers in float64: the goldens' losses_adamw, for stories260K and tiny-llama3.
#include <cjson/cJSON.h>
#include "io/safetensors.h"
#include "model/llama.h"
#include "test.h"
#include "test_golden.h"
#include "train/adamw.h"
#include "util/error.h"
#include "util/fileio.h"

static void check_adamw_golden(const char *model_dir, const char *golden_st, const char *golden_json) {
    char *text;
    if (halo_read_file(golden_json, &text, NULL) != HALO_OK) { CHECK(0, "%s", halo_error()); return; }
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *losses = cJSON_GetObjectItem(root, "losses_adamw");
    CHECK(cJSON_GetArraySize(losses) == 10, "%s: losses_adamw has 10 entries", golden_json);
    llama_model m;
    st_file g;
    if (llama_load(&m, model_dir) != HALO_OK) { CHECK(0, "%s", halo_error()); cJSON_Delete(root); return; }
    if (st_open(golden_st, &g) != HALO_OK) { CHECK(0, "%s", halo_error()); llama_free(&m); cJSON_Delete(root); return; }
    halo_batch b;
    if (t_golden_batch(&g, &b) != HALO_OK) { st_close(&g); llama_free(&m); cJSON_Delete(root); return; }
    llama_alloc_grads(&m);
    adamw_config ac = adamw_config_default();
    ac.beta1 = 0.9; ac.beta2 = 0.95; ac.eps = 1e-8; ac.weight_decay = 0;
    adamw_state opt;
    adamw_init(&opt, &ac, m.n_params, m.table, m.n_table);
    double worst = 0;
    for (int s = 0; s < 10; s++) {
        llama_zero_grads(&m);
        float loss = llama_forward(&m, &b, NULL);
        llama_backward(&m, &b, 1.0f);
        double want = cJSON_GetArrayItem(losses, s)->valuedouble;
        double e = fabs(loss - want) / want;
        if (e > worst) worst = e;
        CHECK_REL(loss, want, 1e-3, "AdamW step loss");
        adamw_step(&opt, m.params, m.grads, 1e-3);
    }
    printf("%s: 10 AdamW losses, worst rel err %.3g\n", model_dir, worst);
    adamw_free(&opt);
    halo_batch_free(&b);
    st_close(&g);
    llama_free(&m);
    cJSON_Delete(root);
}

int main(void) {
    if (!test_shared()) { SKIP("shared data folder not found (set HALO_SHARED); AdamW goldens skipped"); TEST_END(); }
    check_adamw_golden(test_shared_path("models/stories260K"), test_shared_path("goldens/stories260K_train.safetensors"),
                       test_shared_path("goldens/stories260K_train.json"));
    check_adamw_golden(test_shared_path("goldens/tiny-llama3"), test_shared_path("goldens/tiny-llama3_train.safetensors"),
                       test_shared_path("goldens/tiny-llama3_train.json"));
    TEST_END();
}
