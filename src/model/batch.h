// One training or evaluation batch as the model consumes it: B rows of T tokens.
#ifndef HALO_BATCH_H
#define HALO_BATCH_H
#include <stdint.h>

typedef struct {
    int B, T;
    int32_t *input_ids;  // [B, T] token ids (padding positions hold any valid id, e.g. 0)
    int32_t *targets;    // [B, T] next-token labels; -1 = no loss at this position (prompt, padding, row end)
    int32_t *pos;        // [B, T] RoPE position ids, restarting at each packed example; NULL = 0..T-1 per row
    int32_t *seg;        // [B, T] segment ids: a query attends only to earlier keys with the same id; NULL = one per row
} halo_batch;

// Allocates the four arrays (pos and seg included) for B x T; halo_batch_free releases them.
void halo_batch_alloc(halo_batch *b, int B, int T);
void halo_batch_free(halo_batch *b);
// Fills targets with input_ids shifted left by one and -1 at each row's last position, pos = 0..T-1, seg = 0:
// the HF `labels = input_ids` convention used by the goldens.
void halo_batch_shift_targets(halo_batch *b);
// Positions with a target (targets >= 0): the tokens the loss averages over.
int64_t halo_batch_loss_tokens(const halo_batch *b);
#endif
