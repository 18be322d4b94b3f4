// `halo debug-step` end to end, as another framework would use it: the written file has the goldens' layout and
// values, and the ten AdamW losses it prints match torch.optim.AdamW's (goldens/*_train.json) within 1e-3 relative.
#include <cjson/cJSON.h>
#include "io/safetensors.h"
#include "test.h"
#include "test_golden.h"
#include "util/error.h"
#include "util/fileio.h"

static void check_model(const char *model_rel, const char *golden_rel) {
    const char *bin_dir = getenv("BUILD");
    char golden_st[4096], golden_json[4096], out[512], cmd[10000];
    snprintf(golden_st, sizeof golden_st, "%s.safetensors", test_shared_path(golden_rel));
    snprintf(golden_json, sizeof golden_json, "%s.json", test_shared_path(golden_rel));
    snprintf(out, sizeof out, "/tmp/halo_debug_step_%d.safetensors", (int)getpid());
    snprintf(cmd, sizeof cmd, "%s/halo debug-step --model %s --batch %s --out %s --adamw-steps 10 2>/dev/null",
             bin_dir && *bin_dir ? bin_dir : "build", test_shared_path(model_rel), golden_st, out);
    double losses[10];
    int rc, n = t_debug_step_losses(cmd, losses, 10, &rc);
    CHECK(rc == 0 && n == 10, "%s: debug-step exited %d and printed %d losses", model_rel, rc, n);
    char *text;
    if (halo_read_file(golden_json, &text, NULL) != HALO_OK) { CHECK(0, "%s", halo_error()); return; }
    cJSON *root = cJSON_Parse(text);
    free(text);
    cJSON *ref = cJSON_GetObjectItem(root, "losses_adamw");
    for (int i = 0; i < n && i < cJSON_GetArraySize(ref); i++) {
        char what[64];
        snprintf(what, sizeof what, "%s AdamW loss %d", model_rel, i);
        CHECK_REL(losses[i], cJSON_GetArrayItem(ref, i)->valuedouble, 1e-3, what);
    }
    // Written tensors: same names and shapes as the golden file, values within the goldens' tolerances.
    st_file a, g;
    if (st_open(out, &a) != HALO_OK || st_open(golden_st, &g) != HALO_OK) { CHECK(0, "%s", halo_error()); cJSON_Delete(root); return; }
    int compared = 0;
    for (int i = 0; i < g.n_tensors; i++) {
        const st_tensor *t = &g.tensors[i];
        if (!strcmp(t->name, "input_ids")) continue;
        const st_tensor *u = st_find(&a, t->name);
        CHECK(u != NULL, "%s missing from debug-step output", t->name);
        if (!u) continue;
        float *x = malloc(4 * (t->numel + 1)), *y = malloc(4 * (t->numel + 1));
        CHECK(st_read_f32(&a, t->name, x, t->ndim, t->shape) == HALO_OK, "%s", halo_error());
        st_read_f32(&g, t->name, y, t->ndim, t->shape);
        double e = rel_l2_f(x, y, t->numel);
        CHECK(e < (strncmp(t->name, "grad.", 5) ? 1e-4 : 1e-3), "%s rel err %.3g", t->name, e);
        compared++;
        free(x); free(y);
    }
    float loss;
    CHECK(st_read_f32(&a, "loss", &loss, 0, NULL) == HALO_OK, "loss tensor written");
    CHECK_REL(loss, cJSON_GetObjectItem(root, "loss")->valuedouble, 1e-4, "written loss");
    printf("%s: %d tensors and %d AdamW losses match\n", model_rel, compared, n);
    st_close(&a); st_close(&g);
    cJSON_Delete(root);
    remove(out);
}

int main(void) {
    if (!test_shared()) { SKIP("shared data folder not found (set HALO_SHARED)"); TEST_END(); }
    check_model("models/stories260K", "goldens/stories260K_train");
    check_model("goldens/tiny-llama3", "goldens/tiny-llama3_train");
    TEST_END();
}
