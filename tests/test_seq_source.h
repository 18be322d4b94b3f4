// A seeded training-data source for trainer tests (test_checkpoint, test_lora).
#ifndef HALO_TEST_SEQ_SOURCE_H
#define HALO_TEST_SEQ_SOURCE_H
#include "model/batch.h"
#include "train/rng.h"
#include "train/trainer.h"
#include "util/error.h"

// A seeded stream whose whole state is (rng, position): each row starts at a random token and continues with
// x -> (3x + 1) mod vocab, so there is something to learn.
typedef struct { uint64_t rng; int64_t pos; int vocab; } rand_src;
static inline int rs_next(void *ctx, halo_batch *b) {
    rand_src *s = ctx;
    halo_rng r = {s->rng};
    for (int row = 0; row < b->B; row++) {
        int32_t *x = b->input_ids + row * b->T;
        x[0] = (int32_t)halo_rng_below(&r, (uint64_t)s->vocab);
        for (int i = 1; i < b->T; i++) x[i] = (3 * x[i - 1] + 1) % s->vocab;
    }
    halo_batch_shift_targets(b);
    // The first row carries loss only on its second half, like prompt-masked fine-tuning data.
    for (int i = 0; i < b->T / 2; i++) b->targets[i] = -1;
    s->rng = r.s;
    s->pos++;
    return HALO_OK;
}
static inline void rs_get(void *ctx, train_data_state *st) { rand_src *s = ctx; st->epoch = 3; st->position = s->pos; st->rng = s->rng; }
static inline int rs_set(void *ctx, const train_data_state *st) { rand_src *s = ctx; s->pos = st->position; s->rng = st->rng; return HALO_OK; }
#endif
