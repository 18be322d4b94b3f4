// Helpers of the tests that compare halo against ../shared/goldens (CPU and GPU tests alike).
#ifndef HALO_TEST_GOLDEN_H
#define HALO_TEST_GOLDEN_H
#include <cjson/cJSON.h>
#include "io/safetensors.h"
#include "model/batch.h"
#include "test.h"
#include "util/error.h"

// The golden's int32 `input_ids` [B, T] as a batch with next-token targets (halo_batch_shift_targets), checked
// (one CHECK); HALO_ERR when the tensor is missing or not 2-D, and the batch is allocated only on success.
static inline int t_golden_batch(st_file *g, halo_batch *b) {
    int32_t *ids = NULL;
    int nd = 0;
    int64_t shape[8];
    int rc = st_read_i32(g, "input_ids", &ids, &nd, shape);
    if (rc == HALO_OK && nd != 2) { free(ids); rc = halo_fail("input_ids: %d dimensions, expected [B, T]", nd); }
    CHECK(rc == HALO_OK, "input_ids: %s", halo_error());
    if (rc != HALO_OK) return HALO_ERR;
    halo_batch_alloc(b, (int)shape[0], (int)shape[1]);
    memcpy(b->input_ids, ids, sizeof(int32_t) * (size_t)b->B * b->T);
    free(ids);
    halo_batch_shift_targets(b);
    return HALO_OK;
}

// Runs cmd (a `halo debug-step ... --adamw-steps N` command line) and collects the "loss" of each JSON line it prints
// into losses[max]; returns how many, *rc = the command's exit status (-1 when it could not start).
static inline int t_debug_step_losses(const char *cmd, double *losses, int max, int *rc) {
    FILE *p = popen(cmd, "r");
    int n = 0;
    char line[256];
    while (p && fgets(line, sizeof line, p)) {
        cJSON *o = cJSON_Parse(line);
        cJSON *l = cJSON_GetObjectItem(o, "loss");
        if (cJSON_IsNumber(l) && n < max) losses[n++] = l->valuedouble;
        cJSON_Delete(o);
    }
    *rc = p ? pclose(p) : -1;
    return n;
}
#endif
