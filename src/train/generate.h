// Token generation with the model's KV cache: greedy (temperature 0) or sampled with temperature, top-k and
// top-p from a seeded RNG. Used by `halo generate` and by the demo's evaluation.
#ifndef HALO_GENERATE_H
#define HALO_GENERATE_H
#include <stdint.h>
#include "model/llama.h"
#include "train/rng.h"

typedef struct {
    int max_new_tokens;
    float temperature;   // 0 = greedy (argmax, lowest id on ties)
    int top_k;           // keep the k most likely tokens; 0 = all
    float top_p;         // keep the smallest set whose probability reaches top_p; 1 = all
    uint64_t seed;
    int32_t eos_id;      // stop after generating it; -1 = none
    int32_t stop_ids[8]; // more ids that end generation as eos_id does (generation_config.json's eos_token_id list)
    int n_stop;
    int ignore_eos;
    void (*on_token)(void *ctx, int32_t id);   // optional: called with each generated token as it is chosen
    void *on_token_ctx;
} gen_options;

gen_options gen_options_default(void);   // greedy, 64 new tokens, top_k 0, top_p 1, seed 0, eos -1

// Whether generating `tok` ends the sequence (eos_id or one of stop_ids; never with ignore_eos).
static inline int gen_is_end(const gen_options *o, int32_t tok) {
    if (o->ignore_eos) return 0;
    if (tok == o->eos_id) return 1;
    for (int i = 0; i < o->n_stop; i++) if (tok == o->stop_ids[i]) return 1;
    return 0;
}
// Adds generation_config.json's eos_token_id (a number or a list) in model_dir to o->stop_ids; no file, no change.
// HALO_ERR naming the file when it is not JSON.
int gen_read_stops(const char *model_dir, gen_options *o);

// Chooses the next token from logits[V] (overwritten: scaled, then turned into probabilities when sampling).
// work[V] int32 scratch for the candidate order. The RNG is only used when temperature > 0.
int32_t gen_pick_token(float *logits, int V, const gen_options *o, halo_rng *rng, int32_t *work);

// Runs `prompt` (n_prompt >= 1 tokens) through the cache and generates up to o->max_new_tokens tokens into
// out[max_new_tokens]; stops after eos unless ignore_eos. *n_out = tokens generated (eos included). HALO_ERR when
// the total length exceeds the model's max_pos or a token is out of the vocabulary.
int gen_generate(llama_model *m, const int32_t *prompt, int n_prompt, const gen_options *o, int32_t *out, int *n_out);
#endif
