// The training loop (see trainer.h). All model computations go through t->be; everything else here (batches,
// schedule, logging, metrics, checkpoints) is backend-neutral host code.
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "dist/comm.h"
#include "io/safetensors.h"
#include "model/linear.h"
#include "model/lora.h"
#include "train/trainer_dist.h"
#include "train/checkpoint.h"
#include "train/rng.h"
#include "train/trainer.h"
#include "util/error.h"
#include "util/json.h"
#include "util/fileio.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

train_options train_options_default(void) {
    return (train_options){.steps = 100, .batch_size = 8, .seq_len = 64, .grad_accum = 1, .lr = 1e-3f,
                           .min_lr = 1e-4, .warmup = 0, .decay = LR_COSINE, .adamw = adamw_config_default(),
                           .clip = 1.0f, .seed = 1, .log_every = 1};
}

void train_metrics_add(train_metrics *mt, const char *name, double value) {
    if (mt->n >= TRAIN_MAX_METRICS) return;
    snprintf(mt->name[mt->n], sizeof mt->name[0], "%s", name);
    mt->value[mt->n++] = value;
}

// ---- options <-> JSON ------------------------------------------------------------------------------------------

char *train_options_to_json(const train_options *o) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "steps", o->steps);
    cJSON_AddNumberToObject(j, "batch_size", o->batch_size);
    cJSON_AddNumberToObject(j, "seq_len", o->seq_len);
    cJSON_AddNumberToObject(j, "grad_accum", o->grad_accum);
    cJSON_AddNumberToObject(j, "lr", o->lr);
    cJSON_AddNumberToObject(j, "min_lr", o->min_lr);
    cJSON_AddNumberToObject(j, "warmup", o->warmup);
    cJSON_AddStringToObject(j, "decay", lr_decay_name(o->decay));
    cJSON_AddNumberToObject(j, "beta1", o->adamw.beta1);
    cJSON_AddNumberToObject(j, "beta2", o->adamw.beta2);
    cJSON_AddNumberToObject(j, "eps", o->adamw.eps);
    cJSON_AddNumberToObject(j, "weight_decay", o->adamw.weight_decay);
    cJSON_AddNumberToObject(j, "decay_all", o->adamw.decay_all);
    cJSON_AddNumberToObject(j, "clip", o->clip);
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)o->seed);
    cJSON_AddStringToObject(j, "seed", seed);
    cJSON_AddNumberToObject(j, "eval_every", o->eval_every);
    cJSON_AddNumberToObject(j, "ckpt_every", o->ckpt_every);
    cJSON_AddNumberToObject(j, "keep_ckpts", o->keep_ckpts);
    cJSON_AddNumberToObject(j, "log_every", o->log_every);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

// A number of the options object: finite, and for an integer option a whole number in int's range (a cast of 1e300
// to int is undefined); HALO_ERR naming the key otherwise.
static int option_num(const cJSON *j, const char *key, int integer, double *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || fabs(it->valuedouble) > 3.4e38)
        return halo_fail("training options: '%s' missing or not a number", key);
    if (integer && !json_whole(it, -2147483647.0, 2147483647.0))
        return halo_fail("training options: '%s' = %g is not an integer", key, it->valuedouble);
    *out = it->valuedouble;
    return HALO_OK;
}

int train_options_from_json(const char *json, train_options *o) {
    cJSON *j = cJSON_Parse(json);
    if (!cJSON_IsObject(j)) { cJSON_Delete(j); return halo_fail("training options: not a JSON object"); }
    int rc = HALO_OK;
    double x = 0;
#define NUM(key, dst, type) do { if ((rc = option_num(j, key, (type)0.5 == 0, &x))) goto out; dst = (type)x; } while (0)
    NUM("steps", o->steps, int); NUM("batch_size", o->batch_size, int); NUM("seq_len", o->seq_len, int);
    NUM("grad_accum", o->grad_accum, int); NUM("lr", o->lr, double); NUM("min_lr", o->min_lr, double);
    NUM("warmup", o->warmup, int); NUM("beta1", o->adamw.beta1, double); NUM("beta2", o->adamw.beta2, double);
    NUM("eps", o->adamw.eps, double); NUM("weight_decay", o->adamw.weight_decay, double);
    NUM("decay_all", o->adamw.decay_all, int); NUM("clip", o->clip, float); NUM("eval_every", o->eval_every, int);
    NUM("ckpt_every", o->ckpt_every, int); NUM("keep_ckpts", o->keep_ckpts, int); NUM("log_every", o->log_every, int);
#undef NUM
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "decay"), *s = cJSON_GetObjectItemCaseSensitive(j, "seed");
    if (!cJSON_IsString(d) || lr_decay_parse(d->valuestring, &o->decay)) { rc = halo_fail("training options: bad 'decay'"); goto out; }
    char *end = NULL;
    if (cJSON_IsString(s)) { errno = 0; o->seed = strtoull(s->valuestring, &end, 10); }
    if (!cJSON_IsString(s) || end == s->valuestring || *end || s->valuestring[0] == '-' || errno == ERANGE) {
        rc = halo_fail("training options: 'seed' missing or not a u64");
        goto out;
    }
out:
    cJSON_Delete(j);
    return rc;
}

// ---- the CPU backend -------------------------------------------------------------------------------------------

static uint64_t mix_seed(uint64_t seed, uint64_t salt);

static void cpu_zero_grads(trainer *t) { llama_zero_grads(t->model); }
static float cpu_forward_backward(trainer *t, const halo_batch *b, float grad_scale) {
    // LoRA dropout: masks from the seed and the micro-batch's number, so a resumed run draws the same ones
    llama_lora_train(t->model, 1, trainer_lora_key(t));
    float loss = llama_forward(t->model, b, NULL);
    llama_backward(t->model, b, grad_scale);
    llama_lora_train(t->model, 0, 0);
    return loss;
}
static double cpu_clip_grads(trainer *t, float max_norm) {
    llama_trainable p = llama_trainable_params(t->model);
    return grad_clip_global_norm(p.grads, p.n, max_norm);
}
static void cpu_optimizer_step(trainer *t, double lr) {
    llama_trainable p = llama_trainable_params(t->model);
    adamw_step(&t->opt, p.params, p.grads, lr);
}
static void cpu_nothing(trainer *t) { (void)t; }
static int cpu_allreduce_grads(trainer *t) {
    llama_trainable p = llama_trainable_params(t->model);
    return t->comm->allreduce(t->comm, p.grads, p.n, HALO_F32, HALO_SUM);
}

const train_backend TRAIN_BACKEND_CPU = {
    .name = "cpu", .zero_grads = cpu_zero_grads, .forward_backward = cpu_forward_backward,
    .clip_grads = cpu_clip_grads, .optimizer_step = cpu_optimizer_step, .to_host = cpu_nothing,
    .from_host = cpu_nothing, .allreduce_grads = cpu_allreduce_grads,
};

void trainer_halo_telemetry(trainer *t, int on) {
    if (on && trainer_sync_weights(t)) halo_comm_abort(t->comm);   // telemetry's exact products read the fp32 W
    if (t->be.telemetry) t->be.telemetry(t, on);
    else llama_halo_telemetry(t->model, on);
}

void trainer_halo_telemetry_report(trainer *t, FILE *table) {
    if (t->be.telemetry_report) { t->be.telemetry_report(t, table); return; }
    if (table) llama_halo_print_telemetry(t->model, table);
    llama_halo_write_telemetry(t->model, t->metrics, t->step);
}

// ---- setup -----------------------------------------------------------------------------------------------------

static uint64_t mix_seed(uint64_t seed, uint64_t salt) {
    halo_rng r;
    halo_rng_seed(&r, seed ^ (salt * 0xD1B54A32D192ED03ULL));
    return halo_rng_next(&r);
}

uint64_t trainer_lora_key(const trainer *t) {
    const uint64_t per_step = (uint64_t)t->o.grad_accum * (t->comm ? (uint64_t)t->comm->world : 1);
    return mix_seed(t->o.seed, 3 + (uint64_t)t->step * per_step + t->micro);
}

int trainer_init(trainer *t, llama_model *m, const train_options *o, train_data_source data) {
    memset(t, 0, sizeof *t);
    if (o->steps <= 0 || o->batch_size <= 0 || o->seq_len <= 0 || o->grad_accum <= 0)
        return halo_fail("training options: steps, batch size, sequence length and grad_accum must be positive");
    if (!(o->lr >= 0) || !(o->min_lr >= 0)) return halo_fail("training options: learning rates must be >= 0");
    if (!data.next) return halo_fail("training: the data source has no next() function");
    if (llama_config_check_len(&m->cfg, o->seq_len, "training sequence length (--seq-len)")) return HALO_ERR;
    t->model = m;
    t->o = *o;
    t->o.ckpt_dir = o->ckpt_dir ? xstrdup(o->ckpt_dir) : NULL;
    t->o.metrics_path = o->metrics_path ? xstrdup(o->metrics_path) : NULL;
    t->sched = (lr_schedule){.lr = o->lr, .min_lr = o->min_lr, .warmup = o->warmup, .total = o->steps, .decay = o->decay};
    t->be = TRAIN_BACKEND_CPU;
    t->data = data;
    if (!m->grads && !m->lora) llama_alloc_grads(m);   // LoRA: the adapters have their own
    llama_trainable tp = llama_trainable_params(m);   // the adapters only, when the model has LoRA adapters
    adamw_init(&t->opt, &o->adamw, tp.n, tp.table, tp.n_table);
    t->batches = xcalloc((size_t)o->grad_accum, sizeof *t->batches);
    t->batch_tokens = xcalloc((size_t)o->grad_accum, sizeof *t->batch_tokens);
    for (int a = 0; a < o->grad_accum; a++) halo_batch_alloc(&t->batches[a], o->batch_size, o->seq_len);
    t->rng = mix_seed(o->seed, 1);
    t->options_json = train_options_to_json(&t->o);
    t->best_step = -1;
    // The seed decides the data order: the source starts from a state derived from it.
    if (data.set_state) {
        train_data_state st = {.epoch = 0, .position = 0, .rng = mix_seed(o->seed, 2)};
        if (data.set_state(data.ctx, &st)) return halo_fail_ctx("training data: ");
    }
    if (t->o.ckpt_dir && halo_mkdirs(t->o.ckpt_dir)) return halo_fail_ctx("checkpoint folder: ");
    return HALO_OK;
}

void trainer_set_eval(trainer *t, train_eval_fn fn, void *ctx) { t->eval = fn; t->eval_ctx = ctx; }

int trainer_set_comm(trainer *t, halo_comm *comm, const train_dist_options *d) {
    if (!comm || comm->world == 1) { t->comm = NULL; return HALO_OK; }
    if (!t->be.allreduce_grads)
        return halo_fail("data parallel training (%d ranks) with --device %s: set the ranks before moving the trainer "
                         "to the device (trainer_set_comm, then trainer_use_cuda)", comm->world, t->be.name);
    if (t->step > 0) return halo_fail("data parallel: set the ranks before resuming (every rank loads the checkpoint)");
    t->comm = comm;
    t->gpu_comm = d ? d->gpu_comm : TRAIN_GPU_COMM_AUTO;
    if (!t->other.input_ids) halo_batch_alloc(&t->other, t->o.batch_size, t->o.seq_len);
    cJSON *oj = cJSON_Parse(t->options_json);   // checkpoints record the ranks (a resume with others is told so)
    if (oj) {
        cJSON_DeleteItemFromObjectCaseSensitive(oj, "ranks");
        cJSON_AddNumberToObject(oj, "ranks", comm->world);
        free(t->options_json);
        t->options_json = cJSON_PrintUnformatted(oj);
        cJSON_Delete(oj);
    }
    if (d && d->gather_8bit && !d->shard_optimizer) {
        t->comm = NULL;
        return halo_fail("weights gathered in 8 bits: only with the optimizer state sharded (each rank updates its rows)");
    }
    if (d && d->shard_optimizer && dist_shard_init(t, d)) { t->comm = NULL; return HALO_ERR; }
    return HALO_OK;
}

int trainer_sync_weights(trainer *t) {
    return t->shard && dist_sync_weights(t) ? halo_fail_ctx("rank %d of %d: ", t->comm->rank, t->comm->world) : HALO_OK;
}

// Rank 0 (or the only rank) writes what a run prints and saves.
static int lead_rank(const trainer *t) { return !t->comm || t->comm->rank == 0; }
void trainer_set_app_meta(trainer *t, const char *json) { free(t->app_meta); t->app_meta = json ? xstrdup(json) : NULL; }

void trainer_free(trainer *t) {
    if (t->be.release) t->be.release(t);
    if (t->metrics) fclose(t->metrics);
    adamw_free(&t->opt);
    for (int a = 0; t->batches && a < t->o.grad_accum; a++) halo_batch_free(&t->batches[a]);
    free(t->batches);
    free(t->batch_tokens);
    if (t->other.input_ids) halo_batch_free(&t->other);
    dist_shard_free(t);
    free((char *)t->o.ckpt_dir); free((char *)t->o.metrics_path);
    free(t->app_meta); free(t->options_json);
    free(t->best_params);
    memset(t, 0, sizeof *t);
}

// ---- metrics file ----------------------------------------------------------------------------------------------

// Opens the metrics file: truncated for a fresh run, appended to for a resumed one.
int trainer_open_metrics(trainer *t) {
    if (t->metrics || !t->o.metrics_path || !lead_rank(t)) return HALO_OK;
    t->metrics = fopen(t->o.metrics_path, t->step > 0 ? "a" : "w");
    if (!t->metrics) return halo_fail("cannot open metrics file %s: %s", t->o.metrics_path, strerror(errno));
    return HALO_OK;
}

// A resumed run drops the lines a killed run wrote after its last checkpoint (and any torn last line), so that
// the file reads as one uninterrupted run.
static int metrics_truncate_after(const char *path, int64_t step) {
    FILE *f = fopen(path, "rb");
    if (!f) return HALO_OK;
    size_t cap = 1 << 16, len = 0;
    char *keep = xmalloc(cap), *line = NULL;
    size_t lcap = 0;
    ssize_t n;
    while ((n = getline(&line, &lcap, f)) > 0) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "step");
        int ok = line[n - 1] == '\n' && cJSON_IsNumber(s) && s->valuedouble <= (double)step;
        cJSON_Delete(j);
        if (!ok) continue;
        while (len + (size_t)n > cap) { cap *= 2; keep = xrealloc(keep, cap); }
        memcpy(keep + len, line, (size_t)n);
        len += (size_t)n;
    }
    free(line);
    fclose(f);
    const void *parts[1] = {keep};
    int rc = halo_write_file_atomic(path, parts, &len, 1);
    free(keep);
    return rc ? halo_fail_ctx("rewriting metrics file %s: ", path) : HALO_OK;
}

// ---- steps -----------------------------------------------------------------------------------------------------

int trainer_step(trainer *t, train_step_info *info) {
    double t0 = now_s();
    if (t->t_start == 0) { t->t_start = t0; t->step0 = t->step; }
    t->be.zero_grads(t);
    // Accumulation is one batch of grad_accum x batch_size rows: each micro-batch's mean loss weighs by its share of
    // the step's loss tokens (an unweighted mean of the means would count a token of a short-answer micro-batch more)
    const int A = t->o.grad_accum, W = t->comm ? t->comm->world : 1, R = t->comm ? t->comm->rank : 0;
    // data parallel: global micro-batch a * W + r is rank r's a-th; every rank reads all, so all know every count
    int64_t total = 0, first = -1;
    int equal = 1;
    for (int a = 0; a < A; a++)
        for (int r = 0; r < W; r++) {
            halo_batch *b = r == R ? &t->batches[a] : &t->other;
            if (t->data.next(t->data.ctx, b)) return halo_fail_ctx("training data at step %d: ", t->step + 1);
            int64_t n = halo_batch_loss_tokens(b);
            if (r == R) t->batch_tokens[a] = n;
            if (first < 0) first = n;
            equal &= n == first;
            total += n;
        }
    const int M = A * W;
    double loss_sum = 0;
    for (int a = 0; a < A; a++) {
        // equal counts: exactly 1 / M, the arithmetic of unweighted accumulation
        const double w = equal || !total ? 1.0 / M : (double)t->batch_tokens[a] / (double)total;
        t->micro = a * W + R;
        const float l = t->be.forward_backward(t, &t->batches[a], equal ? 1.0f / (float)M : (float)w);
        loss_sum += equal ? l : w * l;
    }
    // a HALO product of the host model that failed in this step (its quantizer refusing a NaN / Inf): no update
    const char *herr = t->model ? llama_halo_take_error(t->model) : NULL;
    const char *berr = t->be.halo_error ? t->be.halo_error(t) : NULL;
    if (t->comm) {   // every rank learns the loss and whether any rank's step failed, then sums the gradients
        double v[2] = {loss_sum, herr || berr};
        if (t->comm->allreduce(t->comm, v, 2, HALO_F64, HALO_SUM) || (!v[1] && t->be.allreduce_grads(t)))
            return halo_fail_ctx("step %d (rank %d of %d): ", t->step + 1, R, W);
        loss_sum = v[0];
        if (v[1] && !herr && !berr)
            return halo_fail("step %d not applied: a HALO product failed on another rank", t->step + 1);
    }
    float loss = (float)(equal ? loss_sum / M : loss_sum);
    if (herr) return halo_fail("step %d not applied: a HALO product failed: %s", t->step + 1, herr);
    if (berr) return halo_fail("step %d not applied: a HALO product failed (--device %s): %s", t->step + 1, t->be.name,
                               berr);
    if (!isfinite(loss)) return halo_fail("training diverged: loss is %f at step %d", loss, t->step + 1);
    double norm = t->be.clip_grads(t, t->o.clip);
    // a NaN / Inf gradient with a finite loss (a backward product overflowing, a NaN weight the forward did not
    // reach): the update would write it into the weights
    if (!isfinite(norm))
        return halo_fail("step %d not applied: the gradient norm is %g (a NaN or Inf in the gradients)", t->step + 1,
                         norm);
    double lr = lr_schedule_at(&t->sched, t->step);
    if (!t->shard) t->be.optimizer_step(t, lr);
    else if (dist_optimizer_step(t, lr)) return halo_fail_ctx("step %d (rank %d of %d): ", t->step + 1, R, W);
    t->step++;
    double t1 = now_s();
    train_step_info s = {.step = t->step, .loss = loss, .lr = lr, .grad_norm = norm,
                         .tokens_per_s = (double)t->o.batch_size * t->o.seq_len * M / (t1 - t0),
                         .elapsed_s = t->elapsed_before + (t1 - t->t_start)};
    t->last = s;
    if (info) *info = s;
    return HALO_OK;
}

static void fmt_duration(char *buf, size_t cap, double s) {
    long v = (long)(s + 0.5);
    if (v >= 3600) snprintf(buf, cap, "%ld:%02ld:%02ld", v / 3600, v / 60 % 60, v % 60);
    else snprintf(buf, cap, "%ld:%02ld", v / 60, v % 60);
}

void trainer_log_step(trainer *t, const train_step_info *s) {
    if (!lead_rank(t)) return;
    double run = now_s() - t->t_start;
    int done = t->step - t->step0;
    double eta = done > 0 ? run / done * (t->o.steps - t->step) : 0;
    char el[32], et[32];
    fmt_duration(el, sizeof el, s->elapsed_s);
    fmt_duration(et, sizeof et, eta);
    int w = snprintf(NULL, 0, "%d", t->o.steps);
    printf("step %*d/%d | loss %.6f | lr %.3e | gnorm %.4f | %.0f tok/s | %s elapsed | ETA %s\n", w, s->step,
           t->o.steps, s->loss, s->lr, s->grad_norm, s->tokens_per_s, el, et);
    fflush(stdout);
}

void trainer_log_metrics(trainer *t, const train_step_info *s) {
    if (!t->metrics) return;
    fprintf(t->metrics, "{\"type\":\"train\",\"step\":%d,\"loss\":%.9g,\"lr\":%.9g,\"grad_norm\":%.9g,"
            "\"tokens_per_s\":%.1f,\"elapsed_s\":%.3f}\n", s->step, s->loss, s->lr, s->grad_norm, s->tokens_per_s,
            s->elapsed_s);
    fflush(t->metrics);
}

int trainer_evaluate(trainer *t) {
    if (t->eval && trainer_sync_weights(t)) return HALO_ERR;   // every rank takes part
    if (!t->eval || !lead_rank(t)) return HALO_OK;   // the ranks hold the same weights: rank 0 evaluates
    t->be.to_host(t);
    train_metrics mt = {0};
    if (t->eval(t->eval_ctx, t->model, t->step, &mt)) return halo_fail_ctx("evaluation at step %d: ", t->step);
    // a HALO product of the evaluation's forward passes that refused a NaN / Inf: its metrics are not valid (and the
    // error is the evaluation's, not the next training step's). The backend's own layers flag only forward passes
    // run since the last step (whose flags trainer_step has read), so a flag now is the evaluation's.
    const char *herr = llama_halo_take_error(t->model);
    if (!herr && t->be.forward_loss && t->be.halo_error) herr = t->be.halo_error(t);
    if (herr) return halo_fail("evaluation at step %d: a HALO product failed: %s", t->step, herr);
    if (t->o.log_every) {
        printf("eval step %d |", t->step);
        for (int i = 0; i < mt.n; i++) printf(" %s %.6g%s", mt.name[i], mt.value[i], i + 1 < mt.n ? " |" : "");
        printf("\n");
        fflush(stdout);
    }
    if (t->metrics) {
        fprintf(t->metrics, "{\"type\":\"eval\",\"step\":%d", t->step);
        for (int i = 0; i < mt.n; i++) fprintf(t->metrics, ",\"%s\":%.9g", mt.name[i], mt.value[i]);
        fprintf(t->metrics, "}\n");
        fflush(t->metrics);
    }
    for (int i = 0; i < mt.n; i++) {
        if (strcmp(mt.name[i], "val_loss") || !isfinite(mt.value[i])) continue;
        if (t->best_step < 0 || mt.value[i] < t->best_val) {
            t->best_val = mt.value[i];
            t->best_step = t->step;
            t->evals_since_best = 0;
            if (t->keep_best) {
                llama_trainable tp = llama_trainable_params(t->model);
                if (!t->best_params) t->best_params = xmalloc(sizeof(float) * tp.n);
                memcpy(t->best_params, tp.params, sizeof(float) * tp.n);
            }
        } else t->evals_since_best++;
    }
    return HALO_OK;
}

void trainer_keep_best(trainer *t) { t->keep_best = 1; }

int trainer_restore_best(trainer *t) {
    if (!t->best_params) return -1;
    llama_trainable tp = llama_trainable_params(t->model);
    memcpy(tp.params, t->best_params, sizeof(float) * tp.n);
    return t->best_step;
}

int trainer_has_device_loss(const trainer *t) { return t->be.forward_loss != NULL; }

float trainer_device_loss(void *t, const halo_batch *b) {
    trainer *tr = t;
    return tr->be.forward_loss(tr, b);
}

int trainer_save(trainer *t, const char *path) {
    char buf[4096];
    if (!path) {
        if (!t->o.ckpt_dir) return halo_fail("trainer_save: no path and no checkpoint folder");
        checkpoint_path(buf, sizeof buf, t->o.ckpt_dir, t->step);
        path = buf;
    }
    adamw_state whole, *opt = &t->opt;   // sharded moments are gathered first: every rank takes part
    if (trainer_sync_weights(t)) return halo_fail_ctx("checkpoint at step %d: ", t->step);
    if (t->shard) {
        if (dist_gather_moments(t, &whole)) return halo_fail_ctx("checkpoint at step %d: ", t->step);
        opt = &whole;
    }
    int rc = HALO_OK;
    // a backend holding sharded moments gathers them itself: every rank takes part, the lead rank's t->opt gets them
    const int all_ranks = t->be.opt_to_host && t->be.opt_to_host_all_ranks;
    if (all_ranks && t->be.opt_to_host(t)) rc = halo_fail_ctx("checkpoint at step %d: ", t->step);
    if (lead_rank(t)) {
        t->be.to_host(t);
        if (!rc && !all_ranks && t->be.opt_to_host && t->be.opt_to_host(t))
            rc = halo_fail_ctx("checkpoint at step %d: ", t->step);
        checkpoint_meta meta = {.step = t->step, .rng = t->rng, .options_json = t->options_json,
                                .app_json = t->app_meta,
                                .elapsed_s = t->elapsed_before + (t->t_start ? now_s() - t->t_start : 0)};
        if (t->data.get_state) t->data.get_state(t->data.ctx, &meta.data);
        if (!rc) rc = checkpoint_save(path, t->model, opt, &meta);
        if (!rc && t->o.ckpt_dir) checkpoint_prune(t->o.ckpt_dir, t->o.keep_ckpts, t->step);
    }
    if (t->shard) adamw_free(&whole);
    return rc;
}

// The options JSON without the bookkeeping keys (how often to log, evaluate, checkpoint), which do not change the
// numbers: resuming with other values of those still reproduces the run.
static char *options_that_matter(const char *json) {
    cJSON *j = cJSON_Parse(json);
    if (!j) return xstrdup(json);
    const char *keys[] = {"eval_every", "ckpt_every", "keep_ckpts", "log_every"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) cJSON_DeleteItemFromObjectCaseSensitive(j, keys[i]);
    // data parallel ranks multiply the batch: a one-process run's options (no key) have 1
    if (!cJSON_GetObjectItemCaseSensitive(j, "ranks")) cJSON_AddNumberToObject(j, "ranks", 1);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

// "batch_size 2 -> 4, lr 4e-05 -> 0.001": the options whose values differ between two options objects (ignoring the
// ones that do not change the run), or "" when none do. malloc'ed.
static char *options_diff(const char *was_json, const char *now_json) {
    char *a = options_that_matter(was_json), *b = options_that_matter(now_json);
    cJSON *wa = cJSON_Parse(a), *wb = cJSON_Parse(b);
    free(a); free(b);
    size_t cap = 256, len = 0;
    char *out = xmalloc(cap);
    out[0] = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, wb) {
        const cJSON *y = cJSON_GetObjectItemCaseSensitive(wa, x->string);
        char *vx = cJSON_PrintUnformatted(x), *vy = y ? cJSON_PrintUnformatted(y) : xstrdup("(absent)");
        if (strcmp(vx, vy)) {
            char num_x[64], num_y[64];   // numbers as %g (the fp32 options print with many digits)
            if (cJSON_IsNumber(x)) snprintf(num_x, sizeof num_x, "%g", x->valuedouble);
            if (y && cJSON_IsNumber(y)) snprintf(num_y, sizeof num_y, "%g", y->valuedouble);
            const char *sx = cJSON_IsNumber(x) ? num_x : vx, *sy = y && cJSON_IsNumber(y) ? num_y : vy;
            size_t need = len + strlen(x->string) + strlen(sx) + strlen(sy) + 16;
            if (need > cap) { cap = 2 * need; out = xrealloc(out, cap); }
            len += (size_t)snprintf(out + len, cap - len, "%s%s %s -> %s", len ? ", " : "", x->string, sy, sx);
        }
        free(vx); free(vy);
    }
    cJSON_Delete(wa); cJSON_Delete(wb);
    return out;
}

int trainer_resume(trainer *t, const char *ckpt_path) {
    checkpoint_meta meta;
    llama_config ccfg;
    // the step first: a checkpoint past the run is refused before anything is loaded
    if (checkpoint_read_meta(ckpt_path, &ccfg, &meta)) return HALO_ERR;
    if (meta.step > t->o.steps) {
        halo_fail("checkpoint %s is at step %lld, past the run's %d steps", ckpt_path, (long long)meta.step, t->o.steps);
        checkpoint_meta_free(&meta);
        return HALO_ERR;
    }
    // the data position next (the source may refuse it), put back if the tensors are then refused: a failed resume
    // leaves the trainer, its model and optimizer (checkpoint_load checks all before it copies) and the source as
    // they were
    train_data_state was_data = {0};
    if (t->data.get_state) t->data.get_state(t->data.ctx, &was_data);
    if (t->data.set_state && t->data.set_state(t->data.ctx, &meta.data)) {
        if (t->data.get_state) t->data.set_state(t->data.ctx, &was_data);
        checkpoint_meta_free(&meta);
        return halo_fail_ctx("checkpoint %s: data state: ", ckpt_path);
    }
    checkpoint_meta_free(&meta);
    adamw_state whole, *opt = &t->opt;   // sharded: the whole moments, of which this rank keeps its rows
    if (t->shard) {
        llama_trainable tp = llama_trainable_params(t->model);
        adamw_init(&whole, &t->opt.cfg, tp.n, tp.table, tp.n_table);
        opt = &whole;
    }
    if (checkpoint_load(ckpt_path, t->model, opt, &meta)) {
        if (t->shard) adamw_free(&whole);
        if (t->data.set_state && t->data.get_state) t->data.set_state(t->data.ctx, &was_data);
        return HALO_ERR;
    }
    if (t->shard) { dist_take_moments(t, &whole); adamw_free(&whole); dist_drop_codes(t); }   // codes of the old W
    int rc = HALO_OK;
    char *diff = meta.options_json ? options_diff(meta.options_json, t->options_json) : NULL;
    if (diff && *diff && lead_rank(t))
        fprintf(stderr, "warning: resuming %s with different training options (%s); the run will not reproduce the "
                "original one\n", ckpt_path, diff);
    free(diff);
    t->step = (int)meta.step;
    t->rng = meta.rng;
    t->elapsed_before = meta.elapsed_s;
    t->be.from_host(t);
    if (t->o.metrics_path && lead_rank(t)) rc = metrics_truncate_after(t->o.metrics_path, meta.step);
    checkpoint_meta_free(&meta);
    return rc;
}

int trainer_run(trainer *t) {
    if (trainer_open_metrics(t)) return HALO_ERR;
    while (t->step < t->o.steps) {
        train_step_info s;
        if (trainer_step(t, &s)) return HALO_ERR;
        int last = t->step == t->o.steps;
        // every rank: the evaluation's and the checkpoint's gathers are collective (rank 0 alone logs, evaluates and
        // writes)
        if (t->o.log_every > 0 && (t->step % t->o.log_every == 0 || t->step == 1 || last)) trainer_log_step(t, &s);
        trainer_log_metrics(t, &s);
        if (t->eval && ((t->o.eval_every > 0 && t->step % t->o.eval_every == 0) || last))
            if (trainer_evaluate(t)) return HALO_ERR;
        if (t->o.ckpt_dir && ((t->o.ckpt_every > 0 && t->step % t->o.ckpt_every == 0) || last))
            if (trainer_save(t, NULL)) return HALO_ERR;
    }
    return HALO_OK;
}
