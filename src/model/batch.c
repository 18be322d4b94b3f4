// Batch allocation and the plain language-model target layout.
#include <stdlib.h>
#include "model/batch.h"
#include "util/error.h"

void halo_batch_alloc(halo_batch *b, int B, int T) {
    size_t n = (size_t)B * T;
    b->B = B; b->T = T;
    b->input_ids = xcalloc(n, sizeof(int32_t));
    b->targets = xcalloc(n, sizeof(int32_t));
    b->pos = xcalloc(n, sizeof(int32_t));
    b->seg = xcalloc(n, sizeof(int32_t));
}

void halo_batch_free(halo_batch *b) {
    free(b->input_ids); free(b->targets); free(b->pos); free(b->seg);
    b->input_ids = b->targets = b->pos = b->seg = NULL;
}

void halo_batch_shift_targets(halo_batch *b) {
    for (int r = 0; r < b->B; r++)
        for (int t = 0; t < b->T; t++) {
            size_t i = (size_t)r * b->T + t;
            b->targets[i] = t + 1 < b->T ? b->input_ids[i + 1] : -1;
            if (b->pos) b->pos[i] = t;
            if (b->seg) b->seg[i] = 0;
        }
}

int64_t halo_batch_loss_tokens(const halo_batch *b) {
    int64_t n = 0;
    for (size_t i = 0; i < (size_t)b->B * b->T; i++) n += b->targets[i] >= 0;
    return n;
}
