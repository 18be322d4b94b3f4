// The demo's self-generated task: D-digit addition over a byte-level vocabulary. 42 + 917 = 959 reads
//   BOS "240+719=" "9590" EOS
// every number least-significant digit first, zero-padded (operands to D digits, the sum to D+1). Reversed,
// each answer digit depends only on digits already seen (carries included), and answer digit k sits at a fixed
// distance from operand digits k, which RoPE attention finds quickly. Loss covers the answer digits and EOS. Pairs
// whose hash falls in a held-out bucket never appear in training; evaluation uses only those.
#ifndef HALO_TASK_ADDITION_H
#define HALO_TASK_ADDITION_H
#include <stdint.h>
#include "model/batch.h"
#include "model/llama.h"
#include "train/trainer.h"

#define ADD_VOCAB 258      // bytes 0..255, BOS 256, EOS 257
#define ADD_BOS 256
#define ADD_EOS 257
#define ADD_MAX_DIGITS 9

typedef struct {
    int digits;            // D, 1..ADD_MAX_DIGITS
    uint64_t rng;          // training stream state
    int64_t position;      // batches produced
    int n_eval;
    uint64_t *eval_a, *eval_b;   // [n_eval] held-out pairs (fixed for a given D, independent of the seed)
    int show;              // examples to print (0 = none) ...
    int show_at_step;      // ... at the evaluation after this step (the callback's; 0 = every evaluation)
    double last_accuracy;  // from the latest add_eval_callback
} add_task;

void add_task_init(add_task *t, int digits, int n_eval);
void add_task_free(add_task *t);
int add_seq_len(int digits);             // tokens in a full example: 3D + 5
int add_prompt_len(int digits);          // BOS through '=': 2D + 3
// Writes the full example into tok[add_seq_len(D)].
void add_encode(int digits, uint64_t a, uint64_t b, int32_t *tok);
int add_is_heldout(uint64_t a, uint64_t b);
// Fills a batch of B rows, T = add_seq_len - 1, from the training stream.
int add_next_batch(add_task *t, halo_batch *b);
train_data_source add_task_source(add_task *t);
// Greedy answers for the held-out pairs with the KV cache: exact-match accuracy (all D+1 digits and the EOS).
int add_evaluate(add_task *t, llama_model *m, double *accuracy);
// Trainer callback: accuracy (and the printed examples when t->show > 0).
int add_eval_callback(void *ctx, llama_model *m, int step, train_metrics *out);
#endif
