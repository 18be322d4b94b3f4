// AdamW with decoupled weight decay (torch.optim.AdamW's update, bias correction included), global-norm gradient
// clipping and the learning-rate schedule. Works on one flat fp32 parameter buffer plus the model's tensor table,
// which says which ranges are exempt from weight decay.
#ifndef HALO_ADAMW_H
#define HALO_ADAMW_H
#include <stddef.h>
#include <stdint.h>
#include "model/llama.h"

typedef struct {
    // double, as torch holds them in Python floats: 0.9f differs from 0.9 by 2.4e-7 relative, which shows
    // wherever the moment update cancels.
    double beta1, beta2, eps;
    double weight_decay; // decoupled: p -= lr * wd * p before the Adam update
    int decay_all;       // 1: decay every tensor; 0 (default): skip tensors marked no_decay (norms, embeddings)
} adamw_config;

// One contiguous range of the parameter buffer that shares a weight-decay setting; cut into pieces of at most
// ADAMW_CHUNK elements so that OpenMP threads get balanced work.
typedef struct { size_t off, n; int decay; size_t moff; } adamw_chunk;   // moff: where the chunk's moments start

typedef struct {
    adamw_config cfg;
    size_t n;            // number of parameters
    size_t n_owned;      // moments held: n, or the elements of the owned ranges (adamw_init_owned)
    float *m;            // [n_owned] first moment
    float *v;            // [n_owned] second moment
    int64_t t;           // optimizer steps taken (torch's `step`)
    adamw_chunk *chunks; // [n_chunks]
    int n_chunks;
} adamw_state;

adamw_config adamw_config_default(void);   // betas 0.9/0.95, eps 1e-8, wd 0.1, decay_all 0
// Zeroed moments for n parameters. `table` (n_table entries, may be NULL = one tensor that decays) gives the
// no_decay ranges; ranges the table does not cover are decayed.
void adamw_init(adamw_state *s, const adamw_config *cfg, size_t n, const llama_param *table, int n_table);
// Data parallel with sharded optimizer state: moments only for the owned ranges [off[i], off[i] + len[i]) of the n
// parameters (ascending, disjoint), stored one after another; adamw_step updates those elements only.
void adamw_init_owned(adamw_state *s, const adamw_config *cfg, size_t n, const llama_param *table, int n_table,
                      const size_t *off, const size_t *len, int n_ranges);
void adamw_free(adamw_state *s);
// One step at learning rate `lr`: t += 1, then for every element
//   p *= 1 - lr*wd (if decayed); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
void adamw_step(adamw_state *s, float *params, const float *grads, double lr);

// Global L2 norm of g[n], summed in double over fixed chunks in a fixed order, so the result does not depend on
// the number of threads (bit-exact resumes need that).
double grad_global_norm(const float *g, size_t n);
// Computes the global norm and, when max_norm > 0 and the norm exceeds it, scales g by max_norm / (norm + 1e-6)
// (torch.nn.utils.clip_grad_norm_). Returns the norm before clipping.
double grad_clip_global_norm(float *g, size_t n, float max_norm);

// Learning-rate schedule: linear warmup from lr/warmup to lr over `warmup` steps, then constant, cosine or linear
// decay to min_lr at step total-1.
typedef enum { LR_CONSTANT = 0, LR_COSINE, LR_LINEAR } lr_decay_kind;
typedef struct {
    double lr, min_lr;
    int warmup, total;
    lr_decay_kind decay;
} lr_schedule;
// Learning rate for 0-based optimizer step `step`.
double lr_schedule_at(const lr_schedule *s, int step);
const char *lr_decay_name(lr_decay_kind k);
int lr_decay_parse(const char *s, lr_decay_kind *out);   // "constant" | "cosine" | "linear"
#endif
