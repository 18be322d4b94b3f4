// The byte-level mock encoder of the dataset tests: one id per byte, the seven special tokens of Llama 2 and Llama 3
// matched in the text (ids 256..262), so that every id can be predicted by hand.
#ifndef HALO_TEST_MOCK_ENCODER_H
#define HALO_TEST_MOCK_ENCODER_H
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include "data/dataset.h"

static const char *const SPECIAL[] = {"<s>", "</s>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                      "<|end_header_id|>", "<|eot_id|>"};
enum { ID_S = 256, ID_ES, ID_BOT, ID_EOT_TEXT, ID_SH, ID_EH, ID_EOT, MOCK_VOCAB };
typedef struct { bool llama3; } mock;   // llama3: all specials; else only <s> and </s>

static int n_special(const mock *m) { return m->llama3 ? 7 : 2; }

static int mock_encode(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n) {
    const mock *m = ctx;
    *ids = malloc((len + 1) * sizeof **ids);
    *n = 0;
    for (size_t i = 0; i < len;) {
        int hit = -1;
        for (int s = 0; s < n_special(m); s++)
            if (len - i >= strlen(SPECIAL[s]) && !memcmp(text + i, SPECIAL[s], strlen(SPECIAL[s]))) hit = s;
        if (hit >= 0) { (*ids)[(*n)++] = 256 + hit; i += strlen(SPECIAL[hit]); }
        else (*ids)[(*n)++] = (unsigned char)text[i++];
    }
    return 0;
}
static int32_t mock_token_id(void *ctx, const char *t) {
    for (int s = 0; s < n_special(ctx); s++) if (!strcmp(t, SPECIAL[s])) return 256 + s;
    return -1;
}
static const char *mock_piece(void *ctx, int32_t id) { return id >= 256 && id < 256 + n_special(ctx) ? SPECIAL[id - 256] : NULL; }

static mock M3 = {true}, M2 = {false};
static dataset_encoder enc3 = {&M3, mock_encode, mock_token_id, mock_piece, ID_BOT, ID_EOT_TEXT, NULL};
static dataset_encoder enc2 = {&M2, mock_encode, mock_token_id, mock_piece, ID_S, ID_ES, NULL};
#endif
