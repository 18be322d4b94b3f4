// Data parallel training on GPUs (trainer_set_comm, then trainer_use_cuda: one forked process per rank, the gradients
// summed on the model's stream through the host-staged communicator (src/cuda/comm_staged.h; with one GPU both ranks
// share it) and, with 2 GPUs and NCCL in the build, through NCCL, each backend in turn) against one GPU taking the
// same global batch: a small random
// Llama trained STEPS steps with 2 ranks x 1 micro-batch and with 1 rank x 2 micro-batches, in BF16, HALO INT8 level
// 2, BF16 with bf16 gradients, and LoRA adapters. Checked: every rank's weights equal rank 0's bit for bit (rank 0's
// broadcast over the `local` communicator, compared on each rank); step 1's loss and gradient norm equal the one-GPU
// run's up to the order of fp32 sums; every step's loss and norm, and the final weights, within the tolerances below.
// Every CUDA run happens in a forked child (halo_comm_run_local, the one-GPU reference too): CUDA never starts in
// this process, which forks the ranks, and neither does OpenMP (a forked child cannot use its parent's pool): the
// model is built in the children only, which hand back its initial weights too. Skips without CUDA or a usable GPU.
//
// Tolerances. GPU steps are not bit-reproducible (attention backward and the embedding gradient sum with atomics),
// and the two runs add the micro-batches' gradients in different places (cuBLASLt's beta = 1 accumulation on one GPU,
// NCCL's sum over two), so the runs differ by fp32 rounding (~1e-7 relative) from step 1 on, and AdamW's
// normalization turns that into update differences of the same relative size except where a gradient is at the
// noise level; bf16 working weights and INT8 codes then flip for the few elements next to a rounding boundary. The
// measure for the weights is ||W_2gpu - W_1gpu|| / ||W_1gpu - W_0|| (the difference relative to how far training
// moved them): expected ~1e-4 to 1e-3, bounded by 1e-2 (3e-2 for INT8, whose codes flip in steps of 1/127). A broken
// sum gives O(1): without it each rank follows its own half batch; twice the sum changes the gradient norm (checked
// each step within 1e-2, the clip at 1.0 acts on it) though AdamW alone would hide it. The one-GPU run is repeated
// and its own run-to-run distance printed next to each result, for calibration.
//
// Sharded AdamW moments on the GPUs (ZeRO-1, train_dist_options.shard_optimizer: each GPU holds the moments of its
// piece of the flat parameter buffer, updates that piece and all-gathers the fp32 master), in BF16, HALO INT8 level 2
// and BF16 with bf16 gradients and bf16 moments: 2 GPUs sharded against 2 GPUs with whole moments, the same run.
// Expected: given the same summed gradients a sharded step writes the same bits as a whole one (AdamW is element-wise
// with the same kernel arithmetic per element; the clipping scale comes from the norm of the whole all-reduced
// gradient on every rank; the gather copies bits and the bf16 copy of other ranks' pieces is converted with AdamW's
// rounding), so the runs differ only by the GPU's run-to-run noise (atomics in backward): the distance is that of two
// whole-moment runs (printed next to it), bounded like the 2-vs-1 comparison. Checked too: every rank's weights equal
// rank 0's bit for bit; each GPU holds half the moments' bytes (up to the 128-element rounding of its piece); and a
// checkpoint after step CKPT_STEP: the moments gathered to rank 0 (trainer_save's collective copy) uploaded back on
// every rank (each keeps its piece) and gathered again give the same bits (a piece kept or gathered at the wrong
// place cannot), then the run goes on from the checkpoint file in a new trainer, GPU model and NCCL communicator
// (trainer_resume keeps each rank's rows of the moments on the host, trainer_use_cuda gathers them and the GPU keeps
// its piece) and ends within the same bounds of the uninterrupted sharded run.
#include "test.h"
#if defined(HALO_CUDA)
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include "cuda/cuda_backend.h"
#include "dist/comm.h"
#include "model/linear.h"
#include "model/llama.h"
#include "model/lora.h"
#include "train/trainer.h"
#include "util/error.h"

enum { STEPS = 5, WORLD = 2, B = 2, T = 64, CKPT_STEP = 2 };
static int g_gpu_comm;   // the transport of this pass (train_gpu_comm)

typedef struct {
    const char *name;
    int prec, level, bf16_grads, lora;
    double weight_tol;
    int bf16_moments;
} run_cfg;

static const run_cfg CFGS[] = {
    {"BF16", HALO_PREC_FP32, 0, 0, 0, 1e-2, 0},
    {"HALO INT8 level 2", HALO_PREC_INT8, 2, 0, 0, 3e-2, 0},
    {"BF16, bf16 gradients", HALO_PREC_FP32, 0, 1, 0, 1e-2, 0},
    {"BF16 + LoRA r16", HALO_PREC_FP32, 0, 0, 1, 1e-2, 0},
};
static const run_cfg SHARD_CFGS[] = {
    {"BF16, sharded moments", HALO_PREC_FP32, 0, 0, 0, 1e-2, 0},
    {"HALO INT8 level 2, sharded moments", HALO_PREC_INT8, 2, 0, 0, 3e-2, 0},
    {"BF16, bf16 gradients and moments, sharded", HALO_PREC_FP32, 0, 1, 0, 1e-2, 1},
};

// What a run hands back to this process (shared memory mapped before the fork).
typedef struct {
    int ok[WORLD];            // the rank trained every step
    long rank_diff[WORLD];    // elements of the rank's trainable weights that differ from rank 0's (-1: not compared)
    float loss[STEPS];
    double norm[STEPS];
    char err[WORLD][256];
    size_t dev_bytes[WORLD], mom_bytes[WORLD];   // each rank's GPU model: all bytes, AdamW moments' bytes
    long rt_diff;             // checkpoint runs: moment values that differ after the upload / gather round trip
    size_t n;                 // trainable values (rank 0's)
    float w[];                // [W_CAP] rank 0's trainable weights after the last step, then [W_CAP] before the first
} run_out;
enum { W_CAP = 8 << 20 };     // room for the trainable values (the model has 2.4 M; untouched pages cost nothing)

typedef struct {
    const run_cfg *cfg;
    int grad_accum;
    int shard;                // sharded moments (train_dist_options.shard_optimizer)
    int ckpt_step;            // > 0: checkpoint after this step, round trip, go on from the file (see the top)
    const char *ckpt_path;
    run_out *out;
} run_arg;

static llama_config small_config(void) {
    llama_config c;
    memset(&c, 0, sizeof c);
    c.vocab_size = 512; c.dim = 256; c.hidden_dim = 640; c.n_layers = 3; c.n_heads = 4; c.n_kv_heads = 2;
    c.head_dim = 64; c.max_pos = 256; c.norm_eps = 1e-5f; c.rope_theta = 10000.f; c.tie_embeddings = 0;
    c.bos_id = c.eos_id = -1;
    return c;
}

// The same model in every process: seeded random weights, the run's HALO configuration, LoRA adapters when asked.
static int build_model(llama_model *m, const run_cfg *rc) {
    llama_config c = small_config();
    if (llama_init(m, &c) != HALO_OK) return HALO_ERR;
    llama_init_random(m, 11);
    model_halo_config hc = model_halo_config_default();
    hc.prec = (halo_precision)rc->prec;
    hc.level = rc->level;
    if (rc->prec != HALO_PREC_FP32 && llama_set_halo(m, &hc) != HALO_OK) { llama_free(m); return HALO_ERR; }
    if (rc->lora) {
        lora_config lc = lora_config_default();
        if (llama_lora_enable(m, &lc, 7) != HALO_OK) { llama_free(m); return HALO_ERR; }
    }
    return HALO_OK;
}

// Seeded random tokens among the first 64 ids (something to learn: the loss falls from ln 512 towards ln 64): batch k
// of the stream is the same in every process.
typedef struct { unsigned long long k; } token_src;
static int token_next(void *ctx, halo_batch *b) {
    token_src *s = ctx;
    unsigned long long r = 0x5eed + 1000003ULL * s->k++;
    for (int i = 0; i < b->B * b->T; i++) b->input_ids[i] = (int)(t_rng_next(&r) % 64u);
    halo_batch_shift_targets(b);
    return HALO_OK;
}

// Model, trainer and GPU backend of one rank (a resume from `ckpt` when not NULL); *have_* say what to free.
static int start_rank(halo_comm *c, run_arg *a, llama_model *m, trainer *t, int *have_model, int *have_trainer,
                      token_src *src, const char *ckpt) {
    run_out *out = a->out;
    const int R = c->rank;
    memset(t, 0, sizeof *t);
    *have_model = *have_trainer = 0;
    int rc = build_model(m, a->cfg);
    *have_model = rc == HALO_OK;
    if (*have_model && llama_trainable_params(m).n > W_CAP) rc = halo_fail("%zu trainable values, room for %d",
                                                                           llama_trainable_params(m).n, (int)W_CAP);
    if (rc == HALO_OK && R == 0 && !ckpt)
        memcpy(out->w + W_CAP, llama_trainable_params(m).params, llama_trainable_params(m).n * sizeof(float));
    train_options o = train_options_default();
    o.steps = STEPS; o.batch_size = B; o.seq_len = T; o.grad_accum = a->grad_accum; o.lr = 2e-3; o.warmup = 0;
    o.clip = 1.0f; o.log_every = 0; o.seed = 3;
    if (rc == HALO_OK) {
        rc = trainer_init(t, m, &o, (train_data_source){src, token_next, NULL, NULL});
        *have_trainer = 1;
    }
    train_dist_options d = {.shard_optimizer = a->shard, .gpu_comm = g_gpu_comm};
    if (rc == HALO_OK) rc = trainer_set_comm(t, c, &d);
    if (rc == HALO_OK && ckpt) rc = trainer_resume(t, ckpt);   // the source goes on where it was (no data state)
    train_cuda_mem mem = {.bf16_grads = a->cfg->bf16_grads, .bf16_moments = a->cfg->bf16_moments};
    if (rc == HALO_OK) rc = trainer_use_cuda(t, &mem);
    if (rc == HALO_OK && !ckpt) trainer_cuda_bytes(t, &out->dev_bytes[R], &out->mom_bytes[R]);
    return rc;
}

// After step a->ckpt_step: the checkpoint (every rank calls trainer_save; sharded, each takes part in the moments'
// gather and rank 0 writes), the round trip of the gathered moments (see the top), then everything torn down.
static int ckpt_round_trip(halo_comm *c, run_arg *a, trainer *t, llama_model *m) {
    const int R = c->rank;
    if (trainer_save(t, a->ckpt_path) != HALO_OK) return HALO_ERR;
    const size_t n = llama_trainable_params(m).n, bytes = n * sizeof(float);
    float *mv = malloc(2 * bytes);   // the whole moments rank 0 got, sent to every rank
    if (R == 0) { memcpy(mv, t->opt.m, bytes); memcpy(mv + n, t->opt.v, bytes); }
    int rc = c->broadcast(c, mv, 2 * bytes, 0);
    if (rc == HALO_OK) {
        t->be.to_host(t);   // the host weights from this rank's (whole) master, so from_host uploads them unchanged
        memcpy(t->opt.m, mv, bytes);
        memcpy(t->opt.v, mv + n, bytes);
        t->be.from_host(t);   // each rank keeps its piece of the moments
        memset(t->opt.m, 0xff, bytes);   // NaN: a range the gather misses shows
        memset(t->opt.v, 0xff, bytes);
        rc = t->be.opt_to_host ? t->be.opt_to_host(t) : halo_fail("the GPU backend has no opt_to_host");
    }
    if (rc == HALO_OK && R == 0) {
        long diff = 0;
        for (size_t i = 0; i < n; i++)
            diff += memcmp(&mv[i], &t->opt.m[i], sizeof(float)) != 0 ||
                    memcmp(&mv[n + i], &t->opt.v[i], sizeof(float)) != 0;
        a->out->rt_diff = diff;
    }
    free(mv);
    return rc;
}

// One rank of a run (world 1: the one-GPU reference with grad_accum micro-batches).
static int train_rank(halo_comm *c, void *arg) {
    run_arg *a = arg;
    run_out *out = a->out;
    const int R = c->rank;
    llama_model m;
    trainer t;
    int have_model = 0, have_trainer = 0;
    token_src src = {0};
    int rc = start_rank(c, a, &m, &t, &have_model, &have_trainer, &src, NULL);
    for (int s = 0; s < STEPS && rc == HALO_OK; s++) {
        train_step_info si;
        rc = trainer_step(&t, &si);
        if (rc == HALO_OK && R == 0) { out->loss[s] = si.loss; out->norm[s] = si.grad_norm; }
        if (rc == HALO_OK && s + 1 == a->ckpt_step) {   // then on from the file, in a new trainer, model and NCCL comm
            rc = ckpt_round_trip(c, a, &t, &m);
            // a failed round trip ends the run for every rank first: the teardown's `local` barrier (before NCCL's
            // finalize) must not meet a peer still in the round trip's broadcast or moment gather
            if (rc != HALO_OK) {
                snprintf(out->err[R], sizeof out->err[R], "%s", halo_error());   // before the teardown's messages
                halo_comm_abort(c);
            }
            if (have_trainer) trainer_free(&t);
            if (have_model) llama_free(&m);
            have_model = have_trainer = 0;
            if (rc == HALO_OK) rc = start_rank(c, a, &m, &t, &have_model, &have_trainer, &src, a->ckpt_path);
        }
    }
    llama_trainable p = have_model ? llama_trainable_params(&m) : (llama_trainable){0};
    if (rc == HALO_OK) t.be.to_host(&t);
    if (rc == HALO_OK && c->world > 1) {   // every rank holds rank 0's weights
        float *w0 = malloc(p.n * sizeof(float));
        memcpy(w0, p.params, p.n * sizeof(float));
        rc = c->broadcast(c, w0, p.n * sizeof(float), 0);
        long diff = 0;
        for (size_t i = 0; i < p.n; i++) diff += memcmp(&w0[i], &p.params[i], sizeof(float)) != 0;
        out->rank_diff[R] = rc == HALO_OK ? diff : -1;
        free(w0);
    }
    if (rc == HALO_OK && R == 0) { out->n = p.n; memcpy(out->w, p.params, p.n * sizeof(float)); }
    if (rc != HALO_OK) {
        if (!out->err[R][0]) snprintf(out->err[R], sizeof out->err[R], "%s", halo_error());
        halo_comm_abort(c);   // the peers stop too; the GPU teardown below then aborts NCCL instead of waiting
    }
    out->ok[R] = rc == HALO_OK;
    if (have_trainer) trainer_free(&t);
    if (have_model) llama_free(&m);
    return rc == HALO_OK ? 0 : 1;
}

static const size_t RUN_BYTES = sizeof(run_out) + 2 * (size_t)W_CAP * sizeof(float);

static run_out *run_ex(const run_cfg *cfg, int world, int grad_accum, int shard, int ckpt_step, const char *ckpt) {
    const size_t bytes = RUN_BYTES;
    run_out *out = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (out == MAP_FAILED) { fprintf(stderr, "mmap of %zu bytes failed\n", bytes); abort(); }
    for (int r = 0; r < WORLD; r++) out->rank_diff[r] = -1;
    out->rt_diff = -1;
    run_arg a = {cfg, grad_accum, shard, ckpt_step, ckpt, out};
    const double t0 = t_now();
    const int rc = halo_comm_run_local(world, train_rank, &a, NULL);
    int ok = rc == HALO_OK;
    for (int r = 0; r < world; r++) ok &= out->ok[r];
    const char *how = ckpt_step ? ", checkpoint round trip" : shard ? ", sharded" : world > 1 ? ", whole moments" : "";
    CHECK(ok, "%s, %d rank(s) x %d micro-batch(es)%s: %s%s%s", cfg->name, world, grad_accum, how,
          rc ? halo_error() : "", out->err[0], world > 1 ? out->err[1] : "");
    printf("  %s: %d GPU(s) x %d micro-batch(es)%s trained in %.1f s\n", cfg->name, world, grad_accum, how,
           t_now() - t0);
    fflush(stdout);
    if (ok) return out;
    munmap(out, bytes);
    return NULL;
}

static run_out *run(const run_cfg *cfg, int world, int grad_accum) {
    return run_ex(cfg, world, grad_accum, 0, 0, NULL);
}

static double rel_update_diff(const float *a, const float *b, const float *w0, size_t n) {
    double d = 0, u = 0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        u += ((double)b[i] - w0[i]) * ((double)b[i] - w0[i]);
    }
    return u > 0 ? sqrt(d / u) : INFINITY;
}
static double rel(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-30); }

static void test_config(const run_cfg *cfg) {
    printf("%s:\n", cfg->name);
    run_out *one = run(cfg, 1, WORLD), *again = run(cfg, 1, WORLD), *two = run(cfg, WORLD, 1);
    if (one && two) {
        const size_t n = one->n;
        const float *w0 = one->w + W_CAP;   // the initial weights
        CHECK(two->n == n && n > 0, "%s: %zu and %zu trainable values", cfg->name, two->n, n);
        for (int r = 1; r < WORLD; r++)
            CHECK(two->rank_diff[r] == 0, "%s: rank %d's weights differ from rank 0's in %ld values", cfg->name, r,
                  two->rank_diff[r]);
        CHECK(rel(two->loss[0], one->loss[0]) <= 1e-5, "%s: step 1 loss %.9g, one GPU %.9g", cfg->name, two->loss[0],
              one->loss[0]);
        CHECK(rel(two->norm[0], one->norm[0]) <= 1e-4, "%s: step 1 gradient norm %.9g, one GPU %.9g", cfg->name,
              two->norm[0], one->norm[0]);
        double worst_loss = 0, worst_norm = 0;
        for (int s = 0; s < STEPS; s++) {
            worst_loss = fmax(worst_loss, rel(two->loss[s], one->loss[s]));
            worst_norm = fmax(worst_norm, rel(two->norm[s], one->norm[s]));
        }
        CHECK(worst_loss <= 1e-3, "%s: losses differ by %.3g relative", cfg->name, worst_loss);
        CHECK(worst_norm <= 1e-2, "%s: gradient norms differ by %.3g relative", cfg->name, worst_norm);
        CHECK(cfg->lora || one->loss[STEPS - 1] < one->loss[0], "%s: the one-GPU run trains (loss %.6f -> %.6f)", cfg->name,
              one->loss[0], one->loss[STEPS - 1]);
        const double dw = rel_update_diff(two->w, one->w, w0, n);
        const double noise = again ? rel_update_diff(again->w, one->w, w0, n) : NAN;
        CHECK(dw <= cfg->weight_tol, "%s: 2 ranks vs 1: weights differ by %.3g of the update (bound %.0e)", cfg->name,
              dw, cfg->weight_tol);
        printf("  losses %.6f -> %.6f (2 ranks) vs %.6f -> %.6f; worst step: loss %.2g, norm %.2g relative\n",
               two->loss[0], two->loss[STEPS - 1], one->loss[0], one->loss[STEPS - 1], worst_loss, worst_norm);
        printf("  weights: 2 ranks vs 1 differ by %.3g of the update (bound %.0e); 1 GPU run to run: %.3g; ranks "
               "identical: %s\n", dw, cfg->weight_tol, noise, two->rank_diff[1] == 0 ? "yes" : "NO");
    }
    if (one) munmap(one, RUN_BYTES);
    if (again) munmap(again, RUN_BYTES);
    if (two) munmap(two, RUN_BYTES);
}

// b against a (the reference) on 2 GPUs: ranks identical, losses and norms, weights (see the top for the bounds).
static void compare_runs(const run_cfg *cfg, const char *what, const run_out *b, const run_out *a, const run_out *again,
                         int first_step_tight) {
    const size_t n = a->n;
    const float *w0 = a->w + W_CAP;
    CHECK(b->n == n && n > 0, "%s, %s: %zu and %zu trainable values", cfg->name, what, b->n, n);
    for (int r = 1; r < WORLD; r++)
        CHECK(b->rank_diff[r] == 0, "%s, %s: rank %d's weights differ from rank 0's in %ld values", cfg->name, what, r,
              b->rank_diff[r]);
    // step 1 runs from the same weights with the same summed gradients up to backward's atomics
    if (first_step_tight) {
        CHECK(rel(b->loss[0], a->loss[0]) <= 1e-6, "%s, %s: step 1 loss %.9g vs %.9g", cfg->name, what, b->loss[0],
              a->loss[0]);
        CHECK(rel(b->norm[0], a->norm[0]) <= 1e-5, "%s, %s: step 1 gradient norm %.9g vs %.9g", cfg->name, what,
              b->norm[0], a->norm[0]);
    }
    double worst_loss = 0, worst_norm = 0;
    for (int s = 0; s < STEPS; s++) {
        worst_loss = fmax(worst_loss, rel(b->loss[s], a->loss[s]));
        worst_norm = fmax(worst_norm, rel(b->norm[s], a->norm[s]));
    }
    CHECK(worst_loss <= 1e-3, "%s, %s: losses differ by %.3g relative", cfg->name, what, worst_loss);
    CHECK(worst_norm <= 1e-2, "%s, %s: gradient norms differ by %.3g relative", cfg->name, what, worst_norm);
    const double dw = rel_update_diff(b->w, a->w, w0, n);
    const double noise = again ? rel_update_diff(again->w, a->w, w0, n) : NAN;
    CHECK(dw <= cfg->weight_tol, "%s, %s: weights differ by %.3g of the update (bound %.0e)", cfg->name, what, dw,
          cfg->weight_tol);
    printf("  %s: losses %.6f -> %.6f vs %.6f -> %.6f; worst step: loss %.2g, norm %.2g relative; weights differ by "
           "%.3g of the update (bound %.0e; reference run to run %.3g); ranks identical: %s\n", what, b->loss[0],
           b->loss[STEPS - 1], a->loss[0], a->loss[STEPS - 1], worst_loss, worst_norm, dw, cfg->weight_tol, noise,
           b->rank_diff[1] == 0 ? "yes" : "NO");
}

static void test_sharded(const run_cfg *cfg, const char *ckpt) {
    printf("%s:\n", cfg->name);
    run_out *whole = run_ex(cfg, WORLD, 1, 0, 0, NULL), *again = run_ex(cfg, WORLD, 1, 0, 0, NULL),
            *sh = run_ex(cfg, WORLD, 1, 1, 0, NULL), *ck = run_ex(cfg, WORLD, 1, 1, CKPT_STEP, ckpt);
    if (whole && sh) {
        compare_runs(cfg, "sharded vs whole moments", sh, whole, again, 1);
        CHECK(whole->loss[STEPS - 1] < whole->loss[0], "%s: the run trains (loss %.6f -> %.6f)", cfg->name,
              whole->loss[0], whole->loss[STEPS - 1]);
        // each GPU holds half of the moments, its piece rounded up to 128 elements (2 buffers, <= 4 bytes each)
        for (int r = 0; r < WORLD; r++) {
            const size_t half = whole->mom_bytes[r] / WORLD;
            CHECK(whole->mom_bytes[r] > 0 && sh->mom_bytes[r] >= half && sh->mom_bytes[r] <= half + 2 * 128 * 4,
                  "%s: rank %d holds %zu bytes of moments sharded, %zu whole", cfg->name, r, sh->mom_bytes[r],
                  whole->mom_bytes[r]);
            printf("  rank %d: moments %.2f MiB sharded vs %.2f MiB whole; all device memory %.1f vs %.1f MiB\n", r,
                   sh->mom_bytes[r] / 1048576.0, whole->mom_bytes[r] / 1048576.0, sh->dev_bytes[r] / 1048576.0,
                   whole->dev_bytes[r] / 1048576.0);
        }
    }
    if (ck) {
        CHECK(ck->rt_diff == 0, "%s: moments gathered, uploaded to the shards and gathered again: %ld values differ",
              cfg->name, ck->rt_diff);
        printf("  checkpoint after step %d: the moments' round trip differs in %ld values\n", CKPT_STEP, ck->rt_diff);
    }
    if (ck && sh) compare_runs(cfg, "resumed from the checkpoint vs uninterrupted (sharded)", ck, sh, NULL, 1);
    run_out *all[] = {whole, again, sh, ck};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) if (all[i]) munmap(all[i], RUN_BYTES);
}
#endif

int main(void) {
#if !defined(HALO_CUDA)
    SKIP("built without CUDA (no nvcc, or SAN=1): GPU data parallel tests skipped");
    TEST_END();
#else
    char why[256] = "";
    const int ngpu = cuda_device_count_forked(why, sizeof why);   // CUDA must not start in this process
    if (ngpu < 1) {
        SKIP("no usable GPU%s%s: GPU data parallel tests skipped", *why ? ": " : "", why);
        TEST_END();
    }
    setenv("HALO_NCCL_TIMEOUT_S", "120", 0);   // a barrier waiting on a lost peer gives up within the test's time
    char dir[] = "/tmp/halo_cuda_dist_XXXXXX", ckpt[sizeof dir + 32];
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp: %s", strerror(errno)); TEST_END(); }
    snprintf(ckpt, sizeof ckpt, "%s/ck.safetensors", dir);
    // the host-staged transport always (ranks share a GPU when there is one); NCCL with a GPU per rank
    const int passes[] = {TRAIN_GPU_COMM_HOST, TRAIN_GPU_COMM_NCCL};
    for (int p = 0; p < 2; p++) {
        g_gpu_comm = passes[p];
        if (train_gpu_comm_pick(g_gpu_comm, WORLD, ngpu) != g_gpu_comm) {
            printf("SKIP: %s pass: %s\n", train_gpu_comm_name(g_gpu_comm), halo_error());
            continue;
        }
        printf("== %s transport: %d ranks on %d GPU(s)%s\n", train_gpu_comm_name(g_gpu_comm), WORLD,
               ngpu < WORLD ? ngpu : WORLD, ngpu < WORLD ? " (shared)" : "");
        printf("GPU data parallel: %d ranks x 1 micro-batch vs 1 GPU x %d micro-batches, %d steps of %d x %d tokens\n",
               WORLD, WORLD, STEPS, B, T);
        for (size_t k = 0; k < sizeof CFGS / sizeof CFGS[0]; k++) test_config(&CFGS[k]);
        printf("sharded AdamW moments on %d ranks vs whole moments, and a checkpoint after step %d\n", WORLD, CKPT_STEP);
        for (size_t k = 0; k < sizeof SHARD_CFGS / sizeof SHARD_CFGS[0]; k++) test_sharded(&SHARD_CFGS[k], ckpt);
        remove(ckpt);
    }
    rmdir(dir);
    TEST_END();
#endif
}
