// Options every model-running verb shares (demo, finetune, eval, generate, debug-step): the precision and HALO
// level of the block linears, which linears and blocks they cover, telemetry, and the thread count.
#ifndef HALO_CLI_COMMON_H
#define HALO_CLI_COMMON_H
#include "data/dataset.h"
#include "model/batch.h"
#include "model/linear.h"
#include "model/llama.h"
#include "train/adamw.h"
#include "train/trainer.h"
#include "train/generate.h"

typedef struct {
    model_halo_config hc;
    int given;              // 1 when any precision/HALO flag was on the command line
    int level_given;        // --halo-level was given (else the precision picks the paper's level)
    int telemetry_every;    // print and log quantization telemetry every N training steps (0 = off)
    char desc[256];
} halo_common_opts;

halo_common_opts halo_common_opts_default(void);
// Consumes argv[*i] (and its value) if it is a common option: returns 1; 0 when it is not one; -1 on a bad value
// (message in halo_error()). Options: --precision fp32|bf16|int8|fp8, --halo-level 0|1|2,
// --halo-linears all|q,k,v,o,gate,up,down, --halo-skip-first N, --halo-skip-last N,
// --halo-scale tensor|row|block1x128|block128, --halo-grad-e5m2, --halo-stochastic, --halo-hadamard-block N,
// --halo-telemetry N.
int halo_common_opts_parse(halo_common_opts *o, int argc, char **argv, int *i);
// Applies the options to the model. Without precision flags, a halo_config.json in `model_dir` (written by an
// export) is applied instead, so that evaluation runs the forward the model was trained with.
int halo_common_apply_dir(halo_common_opts *o, llama_model *m, const char *model_dir);
int halo_common_apply(halo_common_opts *o, llama_model *m);
const char *halo_common_describe(const halo_common_opts *o);
// --adapter DIR (eval, generate): the GPU model runs adapters in its forward (gpu_ok: the loss evaluation), the GPU
// decoder does not (generation): there *use_cuda -1 (no --device) becomes 0 and 1 (--device cuda) is refused with a
// message. Nothing when adapter is NULL or gpu_ok.
int cli_adapter_device(const char *adapter, int gpu_ok, int *use_cuda);
// Loads the model directory, then the PEFT adapter (when not NULL), then the precision: the flags, else the
// halo_config.json of the adapter's folder (the precision it was trained with) or, without an adapter, of the model's.
int cli_load_model(llama_model *m, const char *model_dir, const char *adapter, halo_common_opts *co);
// Writes DIR/halo_config.json when HALO is on for the model.
int halo_common_save(const halo_common_opts *o, const llama_model *m, const char *dir);
int halo_config_write(const model_halo_config *hc, const char *dir);   // DIR/halo_config.json of hc
// Reads DIR/halo_config.json into hc when it exists (*found then 1; hc untouched and *found 0 without one); an
// unreadable or invalid file is an error naming it.
int halo_config_read(const char *dir, model_halo_config *hc, int *found);
void halo_common_usage(void);

// Consumes argv[*i] if it is a dataset option shared by finetune and eval: --preset, --prompt-template,
// --answer-template, --prompt-field, --answer-field, --plain-template, --system, --chat auto|llama3|llama2|plain,
// --seq-len, --val-fraction, --val-count, --pack, --loss-on-all, --loss-last-turn, --skip-bad-lines. Returns 1, 0
// (not one) or -1.
int cli_dataset_opts_parse(dataset_config *dc, int argc, char **argv, int *i);

// Token-weighted mean loss over one split (at most max_batches batches of B x T; 0 = all of it).
int finetune_val_loss(llama_model *m, dataset *ds, dataset_split split, int B, int T, long max_batches,
                      double *loss_out, long *tokens_out);
// Same with another forward: fwd(ctx, batch) returns the batch's mean loss over its targets (cli_gpu_forward).
int finetune_val_loss_with(float (*fwd)(void *ctx, const halo_batch *b), void *ctx, dataset *ds, dataset_split split,
                           int B, int T, long max_batches, double *loss_out, long *tokens_out);

// --device cpu|cuda (src/cli/device.c). cli_device_parse: *cuda = 0 or 1, HALO_ERR naming the flag otherwise.
int cli_device_parse(const char *value, int *cuda);
// No --device given: HALO_DEVICE=cpu|cuda when set; else 1 (cuda) when this build has the CUDA backend, a GPU is
// visible and the settings in co (may be NULL) and the model in model_dir (may be NULL: its config.json's biases) run
// there; else 0, with a note on stderr when a GPU is present but a setting or the model is CPU-only.
int cli_device_auto(const halo_common_opts *co, const char *model_dir, const char *verb);
// GPU memory flags of the training verbs: --bf16-moments, --bf16-grads, --recompute none|norms|mlp|all. Consumes
// argv[*i] when it is one: returns 1 (and sets *given), 0 when it is not one, -1 (error set) for a bad value.
int cli_gpu_mem_parse(train_cuda_mem *mem, int *given, int argc, char **argv, int *i);
// HALO_ERR naming the flags when they were given without --device cuda.
int cli_gpu_mem_check(int given, int use_cuda);
void cli_gpu_mem_usage(void);
// HALO_OK when --device cuda can run here; else an error naming the flag ("--device cuda: no CUDA device found",
// or "this build has no CUDA backend"). The verbs check this before loading anything.
int cli_cuda_check(void);
// --ranks N --device cuda, in the process that forks the ranks (before any CUDA call in it): the transport the ranks
// will use (train_gpu_comm_pick of `want`, a train_gpu_comm) with the usable GPUs counted in a forked probe, so CUDA
// does not start here; -1 with an error starting "--ranks N --device cuda: " when there is none (no usable GPU, or
// NCCL asked for without NCCL or with fewer GPUs than ranks).
int cli_cuda_ranks_check(int ranks, int want);
// In rank `rank` of --ranks N --device cuda: GPU `rank` mod the GPU count becomes this process's device (before
// anything else touches CUDA, so no context is made on another GPU). HALO_ERR naming the GPU when it cannot.
int cli_cuda_rank_device(int rank);
// The GPU model for eval and debug-step: BF16 products (or the model's HALO settings through the GPU HALO layers),
// fp32 master weights (src/cuda/llama_cuda.cu).
typedef struct cli_gpu cli_gpu;
int cli_gpu_open(cli_gpu **out, const llama_model *m, int max_B, int max_T);   // refuses what the GPU lacks
float cli_gpu_forward(void *gpu, const halo_batch *b);                          // mean loss (for _with above)
float cli_gpu_logits(cli_gpu *g, const halo_batch *b, float *logits);           // mean loss, logits [B, T, V]
int cli_gpu_grads(cli_gpu *g, const halo_batch *b, llama_model *m);             // m->grads = d(mean loss)/d(params)
// One AdamW step on b (no clipping, torch's update; step is 1-based); returns the loss before the update.
float cli_gpu_adamw_step(cli_gpu *g, const halo_batch *b, const adamw_config *ac, double lr, int step);
void cli_gpu_close(cli_gpu *g);
// GPU generation (src/cuda/decode.cu) for `generate` and `eval`: the host model's weights uploaded as BF16 (no
// training buffers), a KV cache for max_seqs sequences of max_len tokens. A model with HALO on gets a one-line note
// (verb names the command): generation on the GPU uses BF16 products. Run: gen_generate's contract for n prompts at
// once (train/generate.h; each sequence sampled with its own RNG seeded with o->seed).
typedef struct cli_gpu_gen cli_gpu_gen;
int cli_gpu_gen_open(cli_gpu_gen **out, const llama_model *m, int max_seqs, int max_len, const char *verb);
int cli_gpu_gen_run(cli_gpu_gen *g, int n, const int32_t *const *prompts, const int *n_prompt, const gen_options *o,
                    int32_t *const *out, int *n_out);
void cli_gpu_gen_close(cli_gpu_gen *g);

void halo_set_threads(int n);   // 0 = leave OpenMP's default
double halo_now(void);          // monotonic seconds
#endif
