// The training loop: batches from a data source, forward/backward with gradient accumulation, clipping, AdamW
// with a learning-rate schedule, a progress line and a metrics JSONL line per step, periodic evaluation and
// atomic checkpoints from which a run resumes bit for bit (on the CPU; see trainer_use_cuda). The model
// computations go through a small backend table (train_backend) so that a GPU backend can replace the CPU one
// without touching the loop.
#ifndef HALO_TRAINER_H
#define HALO_TRAINER_H
#include <stdint.h>
#include <stdio.h>
#include "model/batch.h"
#include "model/llama.h"
#include "train/adamw.h"

typedef struct {
    int steps;            // optimizer steps in the whole run
    int batch_size;       // rows per micro-batch (B)
    int seq_len;          // tokens per row (T)
    int grad_accum;       // micro-batches per optimizer step; each backward is scaled by 1/grad_accum
    double lr, min_lr;
    int warmup;
    lr_decay_kind decay;
    adamw_config adamw;
    float clip;           // max global gradient norm; 0 = no clipping
    uint64_t seed;        // seeds the data order (passed to the data source) and the trainer's RNG
    int eval_every;       // 0 = only at the end (when an eval callback is set)
    int ckpt_every;       // 0 = only at the end (when ckpt_dir is set)
    int keep_ckpts;       // keep only the newest N checkpoints in ckpt_dir; 0 = keep all
    const char *ckpt_dir;       // NULL = no checkpoints
    const char *metrics_path;   // NULL = no metrics file; appended to when resuming
    int log_every;        // progress line every N steps (1 = every step); 0 = silent
} train_options;

train_options train_options_default(void);

// Where a data source is in its stream; saved in checkpoints so that a resumed run sees the same batches.
typedef struct {
    int64_t epoch;
    int64_t position;     // batches (or examples, the source's choice) consumed in this epoch
    uint64_t rng;         // the source's RNG state
} train_data_state;

// A batch source. `next` fills every array of b (input_ids, targets, pos, seg), which the trainer allocated as
// batch_size x seq_len. get_state/set_state may be NULL for a source without state.
typedef struct {
    void *ctx;
    int (*next)(void *ctx, halo_batch *b);
    void (*get_state)(void *ctx, train_data_state *st);
    int (*set_state)(void *ctx, const train_data_state *st);
} train_data_source;

// Named values an evaluation returns; they go to the progress output and the metrics file.
#define TRAIN_MAX_METRICS 8
typedef struct {
    int n;
    char name[TRAIN_MAX_METRICS][32];
    double value[TRAIN_MAX_METRICS];
} train_metrics;
void train_metrics_add(train_metrics *mt, const char *name, double value);
// Evaluation callback: called with the current model (on the host) after optimizer step `step` (1-based count).
typedef int (*train_eval_fn)(void *ctx, llama_model *m, int step, train_metrics *out);

struct trainer;
// The model computations of one optimizer step. The CPU backend calls llama_forward/llama_backward and
// adamw_step on host buffers; a device backend keeps its own copies and syncs them with the host ones (the
// model's params and the optimizer's m/v) on request, before a checkpoint or evaluation and after a resume.
typedef struct {
    const char *name;
    void (*zero_grads)(struct trainer *t);
    float (*forward_backward)(struct trainer *t, const halo_batch *b, float grad_scale);   // returns the loss
    double (*clip_grads)(struct trainer *t, float max_norm);                               // returns the norm
    void (*optimizer_step)(struct trainer *t, double lr);
    void (*to_host)(struct trainer *t);
    void (*from_host)(struct trainer *t);
    void (*release)(struct trainer *t);   // frees be_ctx (NULL: nothing to free)
    // Copies the optimizer's moments into t->opt before a checkpoint (NULL: t->opt is already current). Apart from
    // to_host because evaluations need only the weights.
    int (*opt_to_host)(struct trainer *t);
    // Data parallel: 1 when opt_to_host is collective (the backend holds sharded moments and gathers them):
    // trainer_save calls it on every rank (the lead rank's t->opt gets the whole moments); 0: only the lead rank does.
    int opt_to_host_all_ranks;
    // HALO quantization telemetry on the backend's own layers (NULL: the host model's, llama_halo_telemetry):
    // switch measuring on/off for the following steps; print the table to `table` and the metrics file's lines.
    void (*telemetry)(struct trainer *t, int on);
    void (*telemetry_report)(struct trainer *t, FILE *table);
    // The backend's own HALO layers that met a NaN or Inf in this step, as a message naming them (NULL: none, or
    // the backend has no layers of its own; the host model's are read by llama_halo_take_error)
    const char *(*halo_error)(struct trainer *t);
    // The mean next-token loss of one batch on the backend's own weights, forward only (NULL: the backend has no
    // model of its own; evaluations run on the host model). Batches up to the training batch's B and T.
    float (*forward_loss)(struct trainer *t, const halo_batch *b);
    // Data parallel (trainer_set_comm): sums the step's gradients over the ranks (NULL: the backend cannot run as one
    // rank of several)
    int (*allreduce_grads)(struct trainer *t);
} train_backend;
extern const train_backend TRAIN_BACKEND_CPU;

typedef struct {
    int step;             // 1-based number of the optimizer step just taken
    float loss;           // the step's mean loss per loss token (micro-batches weighted by their loss tokens)
    double lr;
    double grad_norm;     // before clipping
    double tokens_per_s;
    double elapsed_s;
} train_step_info;

struct halo_comm;

typedef struct trainer {
    llama_model *model;
    adamw_state opt;
    train_options o;
    lr_schedule sched;
    train_backend be;
    void *be_ctx;                 // backend private state
    train_data_source data;
    train_eval_fn eval;
    void *eval_ctx;
    halo_batch *batches;          // [grad_accum] micro-batches of a step, each [batch_size, seq_len]
    int64_t *batch_tokens;        // [grad_accum] their loss tokens
    int step;                     // optimizer steps done
    int micro;                    // the micro-batch of the step being computed (0 .. grad_accum - 1)
    uint64_t rng;                 // trainer RNG state (reserved for stochastic training features; checkpointed)
    double elapsed_before;        // seconds spent in earlier runs of a resumed training
    double t_start;
    int step0;                    // step at which this process started (for tokens/s and ETA)
    FILE *metrics;
    char *app_meta;               // caller's JSON stored in checkpoints (e.g. the demo's task); may be NULL
    char *options_json;           // options as stored in checkpoints
    train_step_info last;
    struct halo_comm *comm;       // data parallel: this trainer is one rank of comm (NULL: the only one)
    int gpu_comm;                 // data parallel on GPUs: train_dist_options.gpu_comm
    struct train_shard *shard;    // data parallel with sharded optimizer state (NULL: whole moments on every rank)
    halo_batch other;             // data parallel: where the other ranks' micro-batches are read (and skipped)
    // the lowest val_loss of this run's evaluations (lead rank; a resumed run starts over): its step (-1: none yet),
    // how many evaluations since have not beaten it, and with trainer_keep_best a copy of the trainable weights then
    double best_val;
    int best_step, evals_since_best;
    float *best_params;
    int keep_best;
} trainer;

// Prepares a run from step 0: allocates grads, optimizer state and the batch. The model must be initialized.
// Strings in `o` are copied.
int trainer_init(trainer *t, llama_model *m, const train_options *o, train_data_source data);
void trainer_set_eval(trainer *t, train_eval_fn fn, void *ctx);
// Data parallel: makes this trainer rank comm->rank of comm->world, each rank with the same model, options and data
// source. A step is then world x grad_accum micro-batches, global micro-batch a * world + r computed by rank r (every
// rank reads all of them from its own copy of the source, so the data position stays the global one), weighted by
// loss tokens over all of them, the gradients summed over the ranks before clipping. The result is the one-rank run
// with grad_accum x world micro-batches, up to the order of the fp32 gradient sums. Ranks stay identical; only rank 0
// writes the progress lines, metrics, evaluations and checkpoints. Call after trainer_init, before trainer_resume
// (every rank resumes from the same checkpoint), then call trainer_save on every rank (rank 0 writes). On GPUs, call
// trainer_use_cuda after this (gpu_comm says how the GPUs exchange data; shard_optimizer shards the GPU's moments
// instead, gather_8bit is CPU-only).
typedef struct {
    int shard_optimizer;   // ZeRO-1: each rank keeps the AdamW moments of 1/world of every tensor's rows, updates
                           // those rows and all-gathers them (same numbers; moments memory / world)
    int gather_8bit;       // with shard_optimizer: the INT8/FP8 HALO weights' updated rows are exchanged as the 8-bit
                           // operand the products use (rotated and quantized by their owner with the whole weight's
                           // scale: the same codes, 1 byte a weight instead of 4); their fp32 rows are gathered only
                           // for evaluations, checkpoints, telemetry and trainer_sync_weights
    int poison_unowned;    // tests: NaN into the fp32 rows of other ranks' HALO weights after each step
    int gpu_comm;          // with trainer_use_cuda: how the GPUs exchange data (train_gpu_comm; 0 = auto)
} train_dist_options;
// How data parallel training on GPUs exchanges gradients and weights: NCCL (GPU r for rank r, device to device), or
// HOST (src/cuda/comm_staged.h: through host memory and the ranks' `local` communicator; slower, needs no NCCL, and
// ranks may share GPUs: rank r takes GPU r mod the GPU count). AUTO takes NCCL when the build has it and there is a GPU
// for every rank, else HOST.
typedef enum { TRAIN_GPU_COMM_AUTO = 0, TRAIN_GPU_COMM_NCCL, TRAIN_GPU_COMM_HOST } train_gpu_comm;
// The transport `want` gives for `world` ranks on `ngpu` GPUs in this build (NCCL or HOST), or -1 with a message
// when it cannot be had (NCCL asked for without NCCL in the build, or with fewer GPUs than ranks; no GPU at all).
int train_gpu_comm_pick(int want, int world, int ngpu);
// Its name ("nccl", "host"), and the parse of one (auto, nccl, host): the value, or -1.
const char *train_gpu_comm_name(int comm);
int train_gpu_comm_parse(const char *s);
// Data parallel with weights gathered in 8 bits: brings every rank's fp32 weights up to date (collective: every rank
// calls it); before exporting the model. Nothing otherwise.
int trainer_sync_weights(trainer *t);
int trainer_set_comm(trainer *t, struct halo_comm *comm, const train_dist_options *d);
void trainer_set_app_meta(trainer *t, const char *json);
// Restores params, optimizer moments, step, data position and RNG from a checkpoint written by this trainer.
int trainer_resume(trainer *t, const char *ckpt_path);
// One optimizer step (grad_accum micro-batches). Fills *info when not NULL.
// The LoRA dropout key of the micro-batch being computed (t->step, t->micro): both backends draw their masks from it,
// so a resumed run, and a run on the other device, drop the same elements.
uint64_t trainer_lora_key(const trainer *t);
int trainer_step(trainer *t, train_step_info *info);
// Quantization telemetry of the model's HALO layers, on whichever device the steps run: measure during the following
// steps (on) or not; report prints the last measured step's table to `table` and writes one metrics line per layer.
void trainer_halo_telemetry(trainer *t, int on);
void trainer_halo_telemetry_report(trainer *t, FILE *table);
// Runs to o.steps with logging, metrics, evaluation and checkpoints.
int trainer_run(trainer *t);
// Writes a checkpoint now (to `path`, or to ckpt_dir/step_NNNNNNNN.safetensors when path is NULL).
int trainer_save(trainer *t, const char *path);
// For callers that drive trainer_step themselves: open (or, after a resume, append to) the metrics file, print
// the progress line of a step, and write its metrics line. trainer_run does all three.
int trainer_open_metrics(trainer *t);
void trainer_log_step(trainer *t, const train_step_info *s);
void trainer_log_metrics(trainer *t, const train_step_info *s);
// Moves training to the GPU (src/train/trainer_cuda.c): uploads the model, then every step runs there; the host
// model is refreshed before evaluations and at the end. BF16 products with fp32 master weights and moments.
// HALO_ERR when the build has no CUDA or no GPU is present. Call after trainer_init (and trainer_resume, whose
// weights and moments it uploads), before the first step. Checkpoints hold the same tensors as a CPU run's, so
// either device resumes the other's; GPU steps are not bit-reproducible (attention backward sums with atomics).
// mem (NULL: all off) trades time or precision for device memory (see llama_cuda_opts in src/cuda/cuda_backend.h).
// Data parallel (after trainer_set_comm with the `local` communicator of halo_comm_run_local's forked ranks): each
// rank takes a GPU and a device communicator made from the local one (collective: every rank calls this), NCCL's (GPU
// r) or the host-staged one (GPU r mod the count), as train_gpu_comm_pick decides from gpu_comm; the gradients are
// summed over the ranks on the model's stream (fp32, bf16 or LoRA adapters' gradients), the loss and the step's error
// flag still go through the local communicator. Refused when the transport asked for cannot be had (NCCL without NCCL
// in the build or with fewer GPUs than ranks). With shard_optimizer (trainer_set_comm) the GPU model shards the moments
// itself (llama_cuda_opts.shard_comm: rank r keeps those of piece r of the flat device buffer, updates that piece and
// all-gathers the fp32 master through the device communicator): the host-side shard is undone here (t->opt holds the whole moments again, gathered over the ranks when a
// resume had cut them), checkpoints gather the GPUs' moments on every rank (rank 0 writes them) and a resume keeps
// each rank's piece. gather_8bit is refused on GPUs. CUDA must not have started in the process that forked the ranks.
typedef struct {
    int recompute;          // 0 none, 1 whole layers, 2 the MLP's [gate | up] product
    int recompute_norms;    // rmsnorm outputs recomputed in backward (bit-identical)
    int bf16_moments;       // AdamW moments in bf16
    int bf16_grads;         // weight-matrix gradients in bf16
} train_cuda_mem;
int trainer_use_cuda(trainer *t, const train_cuda_mem *mem);
// This rank's GPU model's device bytes: all of them and the AdamW moments' (0 and 0 when the steps do not run on a
// GPU).
void trainer_cuda_bytes(const trainer *t, size_t *total, size_t *moments);
// Runs the eval callback (if any), prints and logs its metrics, and on the lead rank follows the best val_loss
// (best_val, best_step, evals_since_best).
int trainer_evaluate(trainer *t);
// Keep a copy of the trainable weights (the adapters' with LoRA) at each evaluation that lowers val_loss (lead rank;
// the host model's weights, which every evaluation brings up to date).
void trainer_keep_best(trainer *t);
// Puts the kept best weights into the host model (lead rank); returns their step, or -1 when none was kept. The
// device copy and the optimizer are untouched: call it for an export after the last checkpoint.
int trainer_restore_best(trainer *t);
// Whether the backend computes losses on its own weights (the GPU), and that loss for one batch (ctx: the trainer);
// an evaluation callback may use them instead of the host model's forward (finetune's validation loss does).
int trainer_has_device_loss(const trainer *t);
float trainer_device_loss(void *t, const halo_batch *b);
void trainer_free(trainer *t);

// JSON of the options (everything but the paths) and its inverse, used by checkpoints.
char *train_options_to_json(const train_options *o);
int train_options_from_json(const char *json, train_options *o);
#endif
