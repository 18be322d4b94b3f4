// dataset_load: the dataset_encoder seam filled from a halo_tokenizer. Kept in its own file so that code using
// dataset_load_with alone (tests with their own encoder) does not pull in the tokenizer.
#include "data/dataset.h"

static int tok_encode(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n_ids) {
    return tokenizer_encode(ctx, text, len, false, ids, n_ids);
}
static int32_t tok_token_id(void *ctx, const char *token) { return tokenizer_token_id(ctx, token); }
static const char *tok_piece(void *ctx, int32_t id) { return tokenizer_piece(ctx, id); }

int dataset_load(const dataset_config *cfg, const halo_tokenizer *tok, dataset **out) {
    dataset_encoder enc = {(void *)tok, tok_encode, tok_token_id, tok_piece, tokenizer_bos_id(tok), tokenizer_eos_id(tok),
                           tokenizer_chat_template(tok)};
    return dataset_load_with(cfg, &enc, out);
}
