// The trainer's GPU backend: the step runs in the CUDA model (src/cuda/llama_cuda.cu), with the host model's HALO
// configuration; the host model is refreshed from the device's fp32 master weights before evaluations and at the
// end, and the host optimizer's moments from the device's before a checkpoint. A resume uploads both (checkpoints
// are the CPU backend's format). Validation losses can run on the GPU's own weights (forward_loss: the GPU forward,
// through its HALO layers); other evaluations (the demo's accuracy, generation) use the host model.
// LoRA: the GPU trains the adapters only (the base frozen in bf16); to_host, the moments and a resume move the
// adapters (llama_trainable_params), so checkpoints stay the CPU's format; dropout masks equal the CPU's.
// Data parallel (trainer_set_comm before trainer_use_cuda): each rank trains on a GPU with a device communicator made
// from the trainer's `local` one, NCCL (GPU r for rank r) or host-staged (src/cuda/comm_staged.h; GPU r mod the count:
// ranks may share one), as train_gpu_comm_pick decides; the gradients are summed over the ranks in order with the
// model's stream (allreduce_grads). With a sharded optimizer (trainer_set_comm's shard_optimizer) the GPU model holds
// the AdamW moments of its piece of the flat parameter buffer only (llama_cuda_opts.shard_comm) and all-gathers the
// updated master through that communicator; the host-side shard trainer_set_comm built is undone (t->opt whole
// again: what resumes and checkpoints move).
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "dist/comm.h"
#include "model/linear.h"
#include "train/trainer.h"
#include "train/trainer_dist.h"
#include "util/error.h"

#ifdef HALO_NCCL
static const int have_nccl = 1;
#else
static const int have_nccl = 0;
#endif

int train_gpu_comm_pick(int want, int world, int ngpu) {
    if (ngpu < 1) return halo_fail("data parallel on GPUs: no usable GPU");
    if (want == TRAIN_GPU_COMM_HOST) return TRAIN_GPU_COMM_HOST;
    const int nccl_ok = have_nccl && ngpu >= world;
    if (want == TRAIN_GPU_COMM_AUTO) return nccl_ok ? TRAIN_GPU_COMM_NCCL : TRAIN_GPU_COMM_HOST;
    if (want != TRAIN_GPU_COMM_NCCL) return halo_fail("data parallel on GPUs: unknown transport %d", want);
    if (!have_nccl)
        return halo_fail("--gpu-comm nccl: this build has no NCCL (libnccl.so was not found when it was built, or "
                         "NCCL=0); --gpu-comm host sums through host memory instead");
    if (!nccl_ok)
        return halo_fail("--gpu-comm nccl with %d ranks: one GPU per rank, and %d usable GPU%s found; --gpu-comm host "
                         "lets ranks share GPUs", world, ngpu, ngpu == 1 ? "" : "s");
    return TRAIN_GPU_COMM_NCCL;
}

const char *train_gpu_comm_name(int comm) {
    return comm == TRAIN_GPU_COMM_NCCL ? "nccl" : comm == TRAIN_GPU_COMM_HOST ? "host" : "auto";
}

int train_gpu_comm_parse(const char *s) {
    for (int k = TRAIN_GPU_COMM_AUTO; k <= TRAIN_GPU_COMM_HOST; k++)
        if (!strcmp(s, train_gpu_comm_name(k))) return k;
    return -1;
}

#ifdef HALO_CUDA
#include "cuda/comm_staged.h"
#include "cuda/cuda_backend.h"
#ifdef HALO_NCCL
#include "cuda/comm_nccl.h"
#endif

typedef struct {
    llama_cuda *g;
    llama_cuda_adamw h;
    halo_comm *dcomm;  // data parallel: this rank's device communicator (collectives on the model's stream), else NULL
    int sharded;       // the model holds this rank's piece of the moments (opt_to_host is collective)
} cuda_ctx;

static cuda_ctx *ctx_of(trainer *t) { return t->be_ctx; }
static void cu_zero_grads(trainer *t) { llama_cuda_zero_grads(ctx_of(t)->g); }
static float cu_forward_backward(trainer *t, const halo_batch *b, float grad_scale) {
    llama_cuda *g = ctx_of(t)->g;
    // LoRA dropout: the CPU backend's masks (the same key per step and micro-batch)
    if (llama_cuda_has_lora(g)) llama_cuda_lora_train(g, 1, trainer_lora_key(t));
    llama_cuda_forward_backward(g, b, grad_scale);
    llama_cuda_lora_train(g, 0, 0);
    return llama_cuda_last_loss(g);   // the step's host synchronization
}
// Clipping happens inside the device AdamW step; the norm is read here for the progress line.
static double cu_clip_grads(trainer *t, float max_norm) {
    ctx_of(t)->h.grad_clip = max_norm;
    return llama_cuda_grad_norm(ctx_of(t)->g);
}
static void cu_optimizer_step(trainer *t, double lr) {
    cuda_ctx *c = ctx_of(t);
    c->h.lr = (float)lr;
    if (llama_cuda_adamw_step(c->g, &c->h, (int)++t->opt.t) != HALO_OK) {
        // a sharded step's all-gather was refused (an aborted communicator, a peer's failure): this rank's weights
        // are not the others', so every rank stops at its next collective
        fprintf(stderr, "halo (rank %d): %s\n", t->comm ? t->comm->rank : 0, halo_error());
        if (c->dcomm) c->dcomm->abort(c->dcomm);
        halo_comm_abort(t->comm);
    }
}
static void cu_to_host(trainer *t) {
    if (llama_cuda_copy_params(ctx_of(t)->g, t->model) != HALO_OK)
        fprintf(stderr, "halo: copying weights from the GPU failed: %s\n", halo_error());
}
// Sharded: every rank takes part in the gather, the lead rank keeps the whole moments. The ranks meet on the host
// first (the `local` barrier, no time limit): trainer_save comes right after trainer_evaluate, which only rank 0 runs
// (the host model's evaluations can take minutes), and the gather's NCCL barriers would otherwise count that time
// against HALO_NCCL_TIMEOUT_S and abort the run.
static int cu_opt_to_host(trainer *t) {
    if (ctx_of(t)->sharded && t->comm && t->comm->barrier(t->comm) != HALO_OK)
        return halo_fail_ctx("gathering the sharded AdamW moments (rank %d of %d): ", t->comm->rank, t->comm->world);
    const int keep = !t->comm || t->comm->rank == 0 || !ctx_of(t)->sharded;
    return llama_cuda_copy_moments(ctx_of(t)->g, t->model, keep ? t->opt.m : NULL, keep ? t->opt.v : NULL);
}
static void cu_from_host(trainer *t) {
    if (llama_cuda_upload_state(ctx_of(t)->g, t->model, t->opt.m, t->opt.v) != HALO_OK)
        fprintf(stderr, "halo: uploading the training state to the GPU failed: %s\n", halo_error());
}
static void cu_telemetry(trainer *t, int on) { llama_cuda_halo_telemetry(ctx_of(t)->g, on); }
static void cu_telemetry_report(trainer *t, FILE *table) {
    llama_cuda_halo_telemetry_report(ctx_of(t)->g, table, t->metrics, t->step);
}
static const char *cu_halo_error(trainer *t) { return llama_cuda_halo_error(ctx_of(t)->g); }
static float cu_forward_loss(trainer *t, const halo_batch *b) { return llama_cuda_forward(ctx_of(t)->g, b, NULL); }
// The sum over the ranks, then the communicator's barrier: with NCCL the host waits for it with a timeout
// (HALO_NCCL_TIMEOUT_S) and sees a peer's NCCL failure, instead of blocking in the norm's stream synchronization.
static int cu_allreduce_grads(trainer *t) {
    cuda_ctx *c = ctx_of(t);
    if (!c->dcomm) return halo_fail("--device cuda: data parallel without a device communicator");
    if (llama_cuda_allreduce_grads(c->g, c->dcomm) != HALO_OK || c->dcomm->barrier(c->dcomm) != HALO_OK)
        return halo_fail_ctx("summing the gradients over the GPUs: ");
    return HALO_OK;
}

// Ends the device communicator: finalized when every rank got here (the `local` barrier: NCCL's end is collective),
// aborted when the run was aborted (a peer failed: finalizing would wait for it).
static void dcomm_end(halo_comm *dcomm, halo_comm *local) {
    if (!dcomm) return;
    if (!local || local->barrier(local) != HALO_OK) halo_comm_abort(dcomm);
    halo_comm_destroy(dcomm);
}

static void cu_release(trainer *t) {
    cuda_ctx *c = ctx_of(t);
    if (c) {
        dcomm_end(c->dcomm, t->comm);
        llama_cuda_free(c->g);
        free(c);
    }
    t->be_ctx = NULL;
}

// Collective over `local`: every rank learns whether all ranks got rc == HALO_OK (so none goes on to wait for a rank
// that stopped); a rank that did but has failed peers fails with a message naming `what` they could not do.
static int all_ranks_ok(halo_comm *local, int rc, const char *what) {
    int64_t failed = rc != HALO_OK;
    if (local->allreduce(local, &failed, 1, HALO_I64, HALO_SUM) != HALO_OK) return HALO_ERR;
    if (failed && rc == HALO_OK)
        return halo_fail("--device cuda: %lld other rank(s) could not %s", (long long)failed, what);
    return rc;
}

// Data parallel: this rank's device communicator from the trainer's `local` one (collective), with its GPU made
// current: NCCL's (GPU rank) or a host-staged one (GPU rank mod the count), as train_gpu_comm_pick decides (the same
// on every rank: they see the same GPUs).
static int dcomm_for_ranks(trainer *t, halo_comm **out) {
    *out = NULL;
    const int R = t->comm->rank, W = t->comm->world, ngpu = cuda_device_count();
    const int kind = train_gpu_comm_pick(t->gpu_comm, W, ngpu);
    if (kind < 0) return halo_fail_ctx("--device cuda, rank %d of %d: ", R, W);
    if (kind == TRAIN_GPU_COMM_NCCL) {
#ifdef HALO_NCCL
        if (halo_comm_nccl_from_local(t->comm, out) != HALO_OK)
            return halo_fail_ctx("--device cuda, rank %d of %d: ", R, W);
        return HALO_OK;
#endif
    }
    int rc = cuda_select_device(R % ngpu);
    if (rc == HALO_OK && !(*out = halo_comm_staged_create(t->comm, R % ngpu, 0))) rc = HALO_ERR;
    if (all_ranks_ok(t->comm, rc, "make their communicator") != HALO_OK) {
        halo_comm_destroy(*out);
        *out = NULL;
        return halo_fail_ctx("--device cuda, rank %d of %d: ", R, W);
    }
    return HALO_OK;
}

// Sharded optimizer: the GPU model shards the moments itself, so the host-side shard goes: t->opt becomes the whole
// moments again (gathered over the ranks: collective), which a resume or checkpoint moves. 8-bit gathers are refused.
static int unshard_host(trainer *t) {
    if (dist_shard_gathers_8bit(t))
        return halo_fail("--device cuda with %d ranks: --gather-8bit is built for the CPU only (the GPU's HALO layers "
                         "quantize their own whole weights); --shard-optimizer alone shards the AdamW moments over the "
                         "GPUs", t->comm->world);
    adamw_state whole;
    if (dist_gather_moments(t, &whole) != HALO_OK) return halo_fail_ctx("--device cuda, sharded moments: ");
    adamw_free(&t->opt);
    t->opt = whole;
    dist_shard_free(t);
    return HALO_OK;
}

int trainer_use_cuda(trainer *t, const train_cuda_mem *mem) {
    const int sharded = t->comm && t->shard;
    if (sharded && unshard_host(t) != HALO_OK) return HALO_ERR;
    // data parallel: the device communicator first, which makes the rank's GPU current before the model is created
    halo_comm *dcomm = NULL;
    if (t->comm && dcomm_for_ranks(t, &dcomm) != HALO_OK) return HALO_ERR;
    llama_cuda_opts o = {.max_B = t->o.batch_size, .max_T = t->o.seq_len, .verbose = !t->comm || t->comm->rank == 0};
    if (mem) {
        o.recompute = mem->recompute;
        o.recompute_norms = mem->recompute_norms;
        o.bf16_moments = mem->bf16_moments;
        o.bf16_grads = mem->bf16_grads;
    }
    // HALO: the same configuration as the host model's (int8/fp8 run through the GPU HALO layers; fp32 and bf16 run
    // every product in BF16 on the GPU); settings the GPU lacks are refused by llama_cuda_init with a message.
    const model_halo_config *hc = llama_get_halo(t->model);
    o.halo = hc ? *hc : model_halo_config_default();
    o.shard_comm = sharded ? dcomm : NULL;   // its stream is set below, before the first step's collectives
    cuda_ctx *c = xcalloc(1, sizeof *c);
    int rc = llama_cuda_init(&c->g, t->model, &o);
    if (rc != HALO_OK) halo_fail_ctx("--device cuda: ");
    // every rank learns whether all models were made (else all stop here, none waits in a step)
    if (t->comm) rc = all_ranks_ok(t->comm, rc, "create their GPU model");
    if (rc != HALO_OK) {
        dcomm_end(dcomm, t->comm);
        llama_cuda_free(c->g);
        free(c);
        return HALO_ERR;
    }
    c->dcomm = dcomm;
    c->sharded = sharded;
    halo_comm_set_stream(dcomm, llama_cuda_stream(c->g));   // in order with the backward and AdamW
    c->h = (llama_cuda_adamw){.beta1 = (float)t->o.adamw.beta1, .beta2 = (float)t->o.adamw.beta2,
                              .eps = (float)t->o.adamw.eps, .weight_decay = (float)t->o.adamw.weight_decay,
                              .grad_clip = t->o.clip, .decay_all = t->o.adamw.decay_all};
    t->be_ctx = c;
    t->be = (train_backend){.name = "cuda", .zero_grads = cu_zero_grads, .forward_backward = cu_forward_backward,
                            .clip_grads = cu_clip_grads, .optimizer_step = cu_optimizer_step, .to_host = cu_to_host,
                            .from_host = cu_from_host, .release = cu_release, .opt_to_host = cu_opt_to_host,
                            .telemetry = cu_telemetry, .telemetry_report = cu_telemetry_report,
                            .halo_error = cu_halo_error, .forward_loss = cu_forward_loss,
                            .opt_to_host_all_ranks = sharded,
                            // one rank, or trainer_set_comm after this call (refused: it comes first)
                            .allreduce_grads = dcomm ? cu_allreduce_grads : NULL};
    // after trainer_resume: the checkpoint's moments (the weights came with the upload above)
    if (t->opt.t > 0 && llama_cuda_upload_state(c->g, t->model, t->opt.m, t->opt.v) != HALO_OK)
        return halo_fail_ctx("--device cuda: ");
    return HALO_OK;
}

void trainer_cuda_bytes(const trainer *t, size_t *total, size_t *moments) {
    const int on_gpu = t->be_ctx && t->be.optimizer_step == cu_optimizer_step;
    *total = on_gpu ? llama_cuda_bytes(((const cuda_ctx *)t->be_ctx)->g) : 0;
    *moments = on_gpu ? llama_cuda_moment_bytes(((const cuda_ctx *)t->be_ctx)->g) : 0;
}
#else
int trainer_use_cuda(trainer *t, const train_cuda_mem *mem) {
    (void)t; (void)mem;
    return halo_fail("--device cuda: this build has no CUDA backend (nvcc was not found when it was built)");
}
void trainer_cuda_bytes(const trainer *t, size_t *total, size_t *moments) { (void)t; *total = *moments = 0; }
#endif
