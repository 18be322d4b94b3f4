// The verbs' GPU paths (skips without a GPU):
// 1. Checkpoints of GPU training (stories260K, trainer + trainer_use_cuda): the weights and AdamW moments written at
//    step 6 come back from the GPU bit for bit after a resume; the resumed run's losses for steps 7..12 match the
//    uninterrupted run's within max(2%, 5x the difference between two resumes of that checkpoint): the state at
//    the resume is checked bit for bit, so only run-to-run nondeterminism (fp32 atomics in attention, RMSNorm and
//    embedding backward) separates them, and six steps from one state measure exactly that. A resume that lost the
//    moments misses by ~0.24 and must stay beyond 2x the bound, so the bound can tell. The CPU resumes the GPU
//    checkpoint and the GPU a CPU one (first losses within BF16's max(1e-2, 4x what BF16 weights alone change));
//    bf16 device moments round-trip exactly through the host.
// 2. `halo debug-step --device cuda` against the goldens with test_cuda_model's BF16 tolerances.
// 3. `halo finetune --device cuda --halo-telemetry` (below).
// 4. Validation losses on the GPU's own weights against the CPU's forward (below).
// 5. `halo finetune --lora --device cuda` writes a PEFT adapter that `halo eval --adapter` reads back (below).
// `test_cuda_verbs --cpu` runs part 1 with the CPU backend instead (no GPU needed; there everything is exact).
#include <cjson/cJSON.h>
#include "test.h"
#include "test_cli.h"
#include "test_golden.h"
#ifdef HALO_CUDA
#include "cuda/cuda_backend.h"
#include "io/safetensors.h"
#include "model/linear.h"
#include "model/llama.h"
#include "train/checkpoint.h"
#include "train/trainer.h"
#include "util/error.h"
#include "util/fileio.h"

enum { STEPS = 12, SAVE_AT = 6 };
static const double LOSS_TOL = 1e-3;   // resumed vs uninterrupted GPU run, relative, steps 7..12

// Batches from the golden's input_ids [4, 64] (real TinyStories text): batch k holds rows 2k, 2k+1 (mod 4), so
// the data position matters. The whole state is the position.
typedef struct { int32_t *ids; int rows, len; int64_t pos; } gold_src;
static int gs_next(void *ctx, halo_batch *b) {
    gold_src *s = ctx;
    for (int r = 0; r < b->B; r++)
        memcpy(b->input_ids + (size_t)r * b->T, s->ids + (size_t)((s->pos * b->B + r) % s->rows) * s->len,
               sizeof(int32_t) * (size_t)b->T);
    halo_batch_shift_targets(b);
    s->pos++;
    return HALO_OK;
}
static void gs_get(void *ctx, train_data_state *st) { gold_src *s = ctx; st->epoch = 0; st->position = s->pos; st->rng = 0; }
static int gs_set(void *ctx, const train_data_state *st) { gold_src *s = ctx; s->pos = st->position; return HALO_OK; }

static gold_src g_src;

static train_options run_options(void) {
    train_options o = train_options_default();
    o.steps = STEPS; o.batch_size = 2; o.seq_len = 64; o.lr = 1e-3; o.min_lr = 1e-4; o.warmup = 2;
    o.decay = LR_COSINE; o.adamw.weight_decay = 0.1; o.clip = 1.0f; o.seed = 7; o.log_every = 0;
    return o;
}

// Host copies of a trainer's state (params, moments, step counter).
typedef struct { float *p, *m, *v; int64_t t; size_t n; } state_copy;
static void state_keep(state_copy *s, const trainer *t) {
    s->n = t->model->n_params;
    s->p = malloc(4 * s->n); s->m = malloc(4 * s->n); s->v = malloc(4 * s->n);
    memcpy(s->p, t->model->params, 4 * s->n);
    memcpy(s->m, t->opt.m, 4 * s->n);
    memcpy(s->v, t->opt.v, 4 * s->n);
    s->t = t->opt.t;
}
static void state_free(state_copy *s) { free(s->p); free(s->m); free(s->v); memset(s, 0, sizeof *s); }
static int state_equal(const state_copy *s, const trainer *t) {
    return s->n == t->model->n_params && s->t == t->opt.t && !memcmp(s->p, t->model->params, 4 * s->n) &&
           !memcmp(s->m, t->opt.m, 4 * s->n) && !memcmp(s->v, t->opt.v, 4 * s->n);
}

typedef struct {
    int cuda;               // train on the GPU
    const char *resume;     // checkpoint to resume, or NULL
    const char *save;       // checkpoint written at step SAVE_AT, or NULL
    int lose_moments;       // zero the resumed moments before the upload (a broken resume)
    const state_copy *expect;   // after the resume: the state that must come back from the device bit for bit
    state_copy *kept;       // filled with the state written at SAVE_AT
    double *bf16_probe;     // after the resume: how much BF16-rounded weights move the next batch's CPU loss
} run_spec;

// Relative change of the CPU model's loss on the next batch when its weights are rounded to BF16 (the yardstick
// for comparing a GPU loss with a CPU one on the same weights). The data position is left as it was.
static double bf16_loss_change(llama_model *m, const train_options *o) {
    halo_batch pb;
    halo_batch_alloc(&pb, o->batch_size, o->seq_len);
    int64_t pos = g_src.pos;
    gs_next(&g_src, &pb);
    g_src.pos = pos;
    float l32 = llama_forward(m, &pb, NULL);
    float *saved = malloc(4 * m->n_params);
    halo_bf16 *tmp = malloc(2 * m->n_params);
    memcpy(saved, m->params, 4 * m->n_params);
    cuda_f32_to_bf16_host(tmp, m->params, m->n_params);
    cuda_bf16_to_f32_host(m->params, tmp, m->n_params);
    float l16 = llama_forward(m, &pb, NULL);
    memcpy(m->params, saved, 4 * m->n_params);
    free(saved); free(tmp);
    halo_batch_free(&pb);
    return fabs((double)l16 - l32) / l32;
}

// Runs stories260K to step STEPS; losses[k] = loss of step k + 1 (steps before a resume stay NAN).
static int train_run(const run_spec *r, float *losses) {
    for (int i = 0; i < STEPS; i++) losses[i] = NAN;
    llama_model m;
    if (llama_load(&m, test_shared_path("models/stories260K")) != HALO_OK) { CHECK(0, "%s", halo_error()); return 1; }
    train_options o = run_options();
    train_data_source src = {&g_src, gs_next, gs_get, gs_set};
    trainer t;
    int rc = trainer_init(&t, &m, &o, src);
    if (rc == HALO_OK && r->resume) rc = trainer_resume(&t, r->resume);
    if (rc == HALO_OK && r->bf16_probe) *r->bf16_probe = bf16_loss_change(&m, &o);
    if (rc == HALO_OK && r->lose_moments) {
        memset(t.opt.m, 0, 4 * m.n_params);
        memset(t.opt.v, 0, 4 * m.n_params);
    }
    if (rc == HALO_OK && r->cuda) rc = trainer_use_cuda(&t, NULL);
    if (rc == HALO_OK && r->expect) {
        CHECK(t.step == SAVE_AT && state_equal(r->expect, &t), "resumed host state equals the state saved at step %d",
              SAVE_AT);
        if (r->cuda) {   // scribble over the host copies, then fetch the device's
            memset(m.params, 0xff, 4 * m.n_params);
            memset(t.opt.m, 0xff, 4 * m.n_params);
            memset(t.opt.v, 0xff, 4 * m.n_params);
            t.be.to_host(&t);
            CHECK(t.be.opt_to_host && t.be.opt_to_host(&t) == HALO_OK, "moments from the GPU: %s", halo_error());
            int same = state_equal(r->expect, &t);
            CHECK(same, "weights and moments uploaded on resume come back from the GPU bit for bit");
            if (same) printf("resume: %zu weights and 2 x %zu moments came back from the GPU bit for bit\n",
                             m.n_params, m.n_params);
        }
    }
    while (rc == HALO_OK && t.step < STEPS) {
        train_step_info si;
        rc = trainer_step(&t, &si);
        if (rc == HALO_OK) losses[t.step - 1] = si.loss;
        if (rc == HALO_OK && r->save && t.step == SAVE_AT) {
            rc = trainer_save(&t, r->save);
            if (rc == HALO_OK && r->kept) state_keep(r->kept, &t);
        }
    }
    if (rc != HALO_OK) CHECK(0, "training run: %s", halo_error());
    trainer_free(&t);
    llama_free(&m);
    return rc;
}

static double max_rel(const float *a, const float *b, int from, int to) {
    double w = 0;
    for (int i = from; i < to; i++) {
        double e = fabs((double)a[i] - b[i]) / fabs((double)b[i]);
        if (e > w || isnan(e)) w = isnan(e) ? INFINITY : e;
    }
    return w;
}

static void print_losses(const char *name, const float *l) {
    printf("  %-34s", name);
    for (int i = 0; i < STEPS; i++) printf(isnan(l[i]) ? "       -" : " %7.4f", l[i]);
    printf("\n");
}

// The golden's token rows for g_src (parts 1 and 4 read them; main frees them after the last part).
static int gold_src_load(void) {
    st_file gf;
    if (st_open(test_shared_path("goldens/stories260K_train.safetensors"), &gf) != HALO_OK) { CHECK(0, "%s", halo_error()); return 1; }
    int nd; int64_t shape[8];
    int rc = st_read_i32(&gf, "input_ids", &g_src.ids, &nd, shape);
    st_close(&gf);
    if (rc != HALO_OK || nd != 2 || shape[1] < 64) { CHECK(0, "golden input_ids: %s", halo_error()); return 1; }
    g_src.rows = (int)shape[0]; g_src.len = (int)shape[1];
    return 0;
}

static void test_checkpoints(int cuda) {
    const char *dev = cuda ? "GPU" : "CPU";
    if (!g_src.ids) { CHECK(0, "golden input_ids not loaded"); return; }
    char ck_dev[256], ck_cpu[256];
    snprintf(ck_dev, sizeof ck_dev, "/tmp/halo_cuda_verbs_%d_dev.safetensors", (int)getpid());
    snprintf(ck_cpu, sizeof ck_cpu, "/tmp/halo_cuda_verbs_%d_cpu.safetensors", (int)getpid());
    float a[STEPS], b[STEPS], c[STEPS], c2[STEPS], d[STEPS], e[STEPS], f[STEPS], g[STEPS];
    state_copy kept = {0};
    run_spec ra = {.cuda = cuda};
    run_spec rb = {.cuda = cuda, .save = ck_dev, .kept = &kept};
    if (train_run(&ra, a) || train_run(&rb, b)) goto out;
    run_spec rc_ = {.cuda = cuda, .resume = ck_dev, .expect = &kept};
    run_spec rc2 = {.cuda = cuda, .resume = ck_dev};   // a second resume: the noise of 6 steps from one state
    run_spec rd = {.cuda = cuda, .resume = ck_dev, .lose_moments = 1};
    double probe_e = 0, probe_g = 0;
    run_spec re = {.cuda = 0, .resume = ck_dev, .bf16_probe = &probe_e};   // the CPU resumes the device's checkpoint
    run_spec rf = {.cuda = 0, .save = ck_cpu};                             // a CPU run, checkpoint at SAVE_AT
    run_spec rg = {.cuda = cuda, .resume = ck_cpu, .bf16_probe = &probe_g}; // the device resumes it
    if (train_run(&rc_, c) || train_run(&rc2, c2) || train_run(&rd, d) || train_run(&re, e) || train_run(&rf, f) || train_run(&rg, g)) goto out;
    printf("losses by step (1..%d), stories260K on golden text, checkpoint at step %d:\n", STEPS, SAVE_AT);
    print_losses(cuda ? "GPU uninterrupted A" : "CPU uninterrupted A", a);
    print_losses(cuda ? "GPU uninterrupted B (saves at 6)" : "CPU uninterrupted B (saves at 6)", b);
    print_losses("resumed from B's checkpoint", c);
    print_losses("resumed from B's checkpoint again", c2);
    print_losses("resumed, moments lost", d);
    print_losses("CPU resumes B's checkpoint", e);
    print_losses("CPU run F (saves at 6)", f);
    print_losses("resumes F's CPU checkpoint", g);
    double noise = max_rel(a, b, 0, STEPS), res_b = max_rel(c, b, SAVE_AT, STEPS), res_a = max_rel(c, a, SAVE_AT, STEPS);
    double lost = max_rel(d, b, SAVE_AT + 1, STEPS), noise6 = max_rel(c2, c, SAVE_AT, STEPS);
    printf("%s: uninterrupted A vs B %.3g (run-to-run over 12 steps), two resumes %.3g (over 6 steps from one state), "
           "resumed vs B %.3g, vs A %.3g (bound %.0e); moments lost: %.3g\n", dev, noise, noise6, res_b, res_a, LOSS_TOL,
           lost);
    // The CPU resumes bit for bit. The GPU is not bit-reproducible (fp32 atomics): on an H200 (2026-12-02) two
    // uninterrupted 12-step runs differed by up to 0.61% in loss, so a GPU resume is held to 3x the measured
    // run-to-run difference (at least LOSS_TOL) and the run-to-run difference itself to 5%. The resumed state is
    // checked bit for bit above; a resume that lost its moments misses by ~0.24. With the one-pass RMSNorm backward
    // (atomics per block) the run-to-run difference measured 1.85% (H200, 2026-12-02, second call), so the bound
    // became 5.5% and the lost-moments run must stay at least 2x beyond it to show the check can tell.
    // 2026-12-03: A and B drifted apart by 1.6% at step 5 and 7.2% at step 7 (the losses oscillate 0.15 .. 2 while
    // overfitting one batch, and a last-bit difference grows), while the resume matched B to 0.2%; in a later call,
    // with other runs sharing the GPU, two resumes of one checkpoint differed by 0.34% and a resume from B by 1.17%.
    // So runs from one state differ by 0.2-1.2% over 6 steps: the resume is held to max(2%, 5x the two resumes'
    // difference), which a resume that lost state cannot meet (the lost-moments run misses by ~24%), and the 12-step
    // drift only to 25%.
    double tol = cuda ? fmax(0.02, 5 * noise6) : 0;
    CHECK(res_b <= tol, "%s resumed losses vs uninterrupted B: %.3g > %.3g", dev, res_b, tol);
    CHECK(res_a <= (cuda ? fmax(tol, 3 * noise) : 0), "%s resumed losses vs uninterrupted A: %.3g", dev, res_a);
    // measured on the H200 (losses 0.15-2 after overfitting one batch): 0.61%, 1.85%, 2.59%, 7.24% over four sessions
    CHECK(noise <= (cuda ? 0.25 : 0), "%s two uninterrupted runs differ by %.3g", dev, noise);
    CHECK(lost > 2 * fmax(tol, LOSS_TOL), "a resume without its moments differs by only %.3g (bound %.3g cannot tell)",
          lost, tol);
    // across devices: the first step after the resume runs on the same weights, so only BF16 separates the losses
    // (bound: max(1e-2, 4 x the change BF16-rounded weights alone make to the CPU loss), as for the goldens)
    double x_cpu = fabs((double)e[SAVE_AT] - c[SAVE_AT]) / c[SAVE_AT], b_cpu = fmax(1e-2, 4 * probe_e);
    double x_dev = fabs((double)g[SAVE_AT] - f[SAVE_AT]) / f[SAVE_AT], b_dev = fmax(1e-2, 4 * probe_g);
    printf("step %d after a cross-device resume: CPU from %s checkpoint %.3g (bound %.3g), %s from CPU checkpoint "
           "%.3g (bound %.3g); later steps differ by up to %.3g and %.3g; BF16 weights alone: %.3g, %.3g\n",
           SAVE_AT + 1, dev, x_cpu, b_cpu, dev, x_dev, b_dev, max_rel(e, c, SAVE_AT, STEPS),
           max_rel(g, f, SAVE_AT, STEPS), probe_e, probe_g);
    CHECK(x_cpu <= b_cpu && x_dev <= b_dev, "cross-device resume, first loss: %.3g > %.3g or %.3g > %.3g", x_cpu,
          b_cpu, x_dev, b_dev);
    for (int i = SAVE_AT; i < STEPS; i++) CHECK(isfinite(e[i]) && isfinite(g[i]), "cross-device resumed loss %d", i + 1);
out:
    state_free(&kept);
    remove(ck_dev);
    remove(ck_cpu);
}

// bf16 device moments: copy back, upload into a second device model, copy back again: identical.
static void test_bf16_moments(void) {
    llama_model m;
    if (llama_load(&m, test_shared_path("models/stories260K")) != HALO_OK) { CHECK(0, "%s", halo_error()); return; }
    halo_batch b;
    halo_batch_alloc(&b, 2, 32);
    for (int i = 0; i < 64; i++) b.input_ids[i] = (i * 37 + 5) % m.cfg.vocab_size;
    halo_batch_shift_targets(&b);
    llama_cuda_opts o;
    memset(&o, 0, sizeof o);
    o.max_B = 2; o.max_T = 32; o.bf16_moments = 1;
    llama_cuda_adamw h = {1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 0};
    llama_cuda *g1, *g2;
    if (llama_cuda_init(&g1, &m, &o) != HALO_OK) { CHECK(0, "%s", halo_error()); goto out; }
    for (int s = 1; s <= 3; s++) llama_cuda_train_step(g1, &b, &h, s);
    size_t n = m.n_params;
    float *m1 = malloc(4 * n), *v1 = malloc(4 * n), *m2 = malloc(4 * n), *v2 = malloc(4 * n), *p1 = malloc(4 * n);
    CHECK(llama_cuda_copy_moments(g1, &m, m1, v1) == HALO_OK && llama_cuda_copy_params(g1, &m) == HALO_OK, "%s",
          halo_error());
    memcpy(p1, m.params, 4 * n);
    size_t nz = 0;
    for (size_t i = 0; i < n; i++) nz += v1[i] != 0;
    CHECK(nz > n / 2, "bf16 moments after 3 steps: only %zu of %zu second moments nonzero", nz, n);
    if (llama_cuda_init(&g2, &m, &o) == HALO_OK) {
        CHECK(llama_cuda_upload_state(g2, &m, m1, v1) == HALO_OK, "%s", halo_error());
        memset(m.params, 0, 4 * n);
        CHECK(llama_cuda_copy_moments(g2, &m, m2, v2) == HALO_OK && llama_cuda_copy_params(g2, &m) == HALO_OK, "%s",
              halo_error());
        int same = !memcmp(m1, m2, 4 * n) && !memcmp(v1, v2, 4 * n) && !memcmp(p1, m.params, 4 * n);
        CHECK(same, "bf16 moments and master weights round-trip through the host bit for bit");
        // the next step from the uploaded state equals the next step of the original (same inputs, same state)
        float l1 = llama_cuda_train_step(g1, &b, &h, 4), l2 = llama_cuda_train_step(g2, &b, &h, 4);
        CHECK(fabsf(l1 - l2) <= 1e-6f * fabsf(l1), "step 4 loss original %.9g vs uploaded copy %.9g", l1, l2);
        printf("bf16 moments: round trip %s; step 4 loss %.7f vs %.7f from the uploaded copy\n", same ? "exact" : "DIFFERS",
               l1, l2);
        llama_cuda_free(g2);
    } else CHECK(0, "%s", halo_error());
    llama_cuda_free(g1);
    free(m1); free(v1); free(m2); free(v2); free(p1);
out:
    halo_batch_free(&b);
    llama_free(&m);
}

// `halo debug-step --device cuda` vs the goldens (tolerances of test_cuda_model.c's check_golden).
static void test_debug_step(const char *label, const char *model_rel, const char *golden_rel) {
    const char *bin = getenv("BUILD");
    char golden_st[4096], golden_js[4096], out[256], cmd[10000];
    snprintf(golden_st, sizeof golden_st, "%s.safetensors", test_shared_path(golden_rel));
    snprintf(golden_js, sizeof golden_js, "%s.json", test_shared_path(golden_rel));
    snprintf(out, sizeof out, "/tmp/halo_cuda_debug_step_%d.safetensors", (int)getpid());
    snprintf(cmd, sizeof cmd, "%s/halo debug-step --device cuda --model %s --batch %s --out %s --adamw-steps 10",
             bin && *bin ? bin : "build", test_shared_path(model_rel), golden_st, out);
    double losses[10];
    int rc, n = t_debug_step_losses(cmd, losses, 10, &rc);
    CHECK(rc == 0 && n == 10, "%s: `%s` exited %d and printed %d losses", label, cmd, rc, n);
    if (rc != 0) return;
    char *text;
    if (halo_read_file(golden_js, &text, NULL) != HALO_OK) { CHECK(0, "%s", halo_error()); return; }
    cJSON *js = cJSON_Parse(text);
    free(text);
    llama_model m;
    st_file a, gf;
    if (llama_load(&m, test_shared_path(model_rel)) != HALO_OK) { CHECK(0, "%s", halo_error()); cJSON_Delete(js); return; }
    if (st_open(out, &a) != HALO_OK || st_open(golden_st, &gf) != HALO_OK) { CHECK(0, "%s", halo_error()); goto out_model; }
    // logits and loss
    halo_batch b;
    if (t_golden_batch(&gf, &b) != HALO_OK) { st_close(&a); st_close(&gf); goto out_model; }
    size_t nlog = (size_t)b.B * b.T * m.cfg.vocab_size;
    int64_t lshape[3] = {b.B, b.T, m.cfg.vocab_size};
    float *x = malloc(4 * nlog), *y = malloc(4 * nlog), loss;
    CHECK(st_read_f32(&a, "logits", x, 3, lshape) == HALO_OK && st_read_f32(&gf, "logits", y, 3, lshape) == HALO_OK,
          "logits: %s", halo_error());
    double el = rel_l2_f(x, y, nlog), gl = cJSON_GetObjectItem(js, "loss")->valuedouble;
    CHECK(st_read_f32(&a, "loss", &loss, 0, NULL) == HALO_OK, "loss: %s", halo_error());
    double eloss = fabs(loss - gl) / gl;
    free(x); free(y);
    // gradients: per tensor within max(5e-2, 4 x what BF16 weights alone do to the CPU model), all within max(2e-2, 4x)
    float *gpu = calloc(m.n_params, 4), *ref = calloc(m.n_params, 4);
    for (int i = 0; i < m.n_table; i++) {
        char name[128];
        snprintf(name, sizeof name, "grad.%s", m.table[i].name);
        CHECK(st_read_f32(&a, name, gpu + m.table[i].offset, m.table[i].ndim, m.table[i].shape) == HALO_OK &&
              st_read_f32(&gf, name, ref + m.table[i].offset, m.table[i].ndim, m.table[i].shape) == HALO_OK,
              "%s: %s", name, halo_error());
    }
    halo_bf16 *tmp16 = malloc(2 * m.n_params);
    cuda_f32_to_bf16_host(tmp16, m.params, m.n_params);
    cuda_bf16_to_f32_host(m.params, tmp16, m.n_params);
    free(tmp16);
    llama_alloc_grads(&m);
    llama_zero_grads(&m);
    llama_forward(&m, &b, NULL);
    llama_backward(&m, &b, 1.0f);
    double worst_ratio = 0, worst_e = 0, worst_bound = 0;
    const char *wn = "";
    for (int i = 0; i < m.n_table; i++) {
        const llama_param *q = &m.table[i];
        double e = rel_l2_f(gpu + q->offset, ref + q->offset, q->numel);
        double bound = fmax(5e-2, 4 * rel_l2_f(m.grads + q->offset, ref + q->offset, q->numel));
        double r = isnan(e) ? INFINITY : e / bound;
        if (r >= worst_ratio) { worst_ratio = r; worst_e = e; worst_bound = bound; wn = q->name; }
    }
    double eall = rel_l2_f(gpu, ref, m.n_params), ball = fmax(2e-2, 4 * rel_l2_f(m.grads, ref, m.n_params));
    cJSON *la = cJSON_GetObjectItem(js, "losses_adamw");
    double eadam = 0;
    for (int s = 0; s < n && s < cJSON_GetArraySize(la); s++) {
        double want = cJSON_GetArrayItem(la, s)->valuedouble, e = fabs(losses[s] - want) / want;
        if (e > eadam || isnan(e)) eadam = isnan(e) ? INFINITY : e;
    }
    printf("debug-step --device cuda %-12s logits %.2e (2e-2) | loss %.2e (1e-2) | worst grad %s %.2e (%.0e) | all "
           "grads %.2e (%.0e) | 10 AdamW losses %.2e (3e-2)\n", label, el, eloss, wn, worst_e, worst_bound, eall, ball,
           eadam);
    CHECK(el <= 2e-2, "%s logits rel err %.3g", label, el);
    CHECK(eloss <= 1e-2, "%s loss rel err %.3g", label, eloss);
    CHECK(worst_ratio <= 1, "%s gradient %s rel err %.3g > %.3g", label, wn, worst_e, worst_bound);
    CHECK(eall <= ball, "%s all gradients rel err %.3g > %.3g", label, eall, ball);
    CHECK(eadam <= 3e-2, "%s AdamW losses rel err %.3g", label, eadam);
    free(gpu); free(ref);
    halo_batch_free(&b);
    st_close(&a); st_close(&gf);
out_model:
    llama_free(&m);
    cJSON_Delete(js);
    remove(out);
}

// 4. The validation loss on the GPU's own weights (trainer_device_loss, what `finetune --device cuda` reports) against
// the CPU's forward on the same weights copied back, after 6 steps of stories260K: BF16 and INT8 level 2 (the GPU
// HALO layers' forward). Within max(1e-2, 4x what BF16 weights alone change), the bound of the CPU/GPU resume checks.
static void test_device_val_loss(int int8) {
    llama_model m;
    if (llama_load(&m, test_shared_path("models/stories260K")) != HALO_OK) { CHECK(0, "%s", halo_error()); return; }
    if (int8) {
        model_halo_config hc = model_halo_config_default();
        hc.prec = HALO_PREC_INT8;
        hc.level = 2;
        if (llama_set_halo(&m, &hc) != HALO_OK) { CHECK(0, "%s", halo_error()); llama_free(&m); return; }
    }
    train_options o = run_options();
    g_src.pos = 0;
    trainer t;
    int rc = trainer_init(&t, &m, &o, (train_data_source){&g_src, gs_next, gs_get, gs_set});
    if (rc != HALO_OK) { CHECK(0, "%s", halo_error()); llama_free(&m); return; }
    rc = trainer_use_cuda(&t, NULL);
    while (rc == HALO_OK && t.step < SAVE_AT) {
        train_step_info si;
        rc = trainer_step(&t, &si);
    }
    if (rc != HALO_OK) { CHECK(0, "%s", halo_error()); trainer_free(&t); llama_free(&m); return; }
    CHECK(trainer_has_device_loss(&t), "the GPU backend computes validation losses on its weights");
    t.be.to_host(&t);
    const double yard = fmax(1e-2, 4 * bf16_loss_change(&m, &o));
    halo_batch b;
    halo_batch_alloc(&b, o.batch_size, o.seq_len);
    double worst = 0;
    for (int k = 0; k < 4; k++) {   // four validation batches past the training ones
        gs_next(&g_src, &b);
        const float lg = trainer_device_loss(&t, &b), lc = llama_forward(&m, &b, NULL);
        const double e = fabs((double)lg - lc) / lc;
        worst = fmax(worst, isnan(e) ? INFINITY : e);
        printf("   device validation loss (%s) batch %d: GPU %.6f CPU %.6f\n", int8 ? "INT8 L2" : "BF16", k, lg, lc);
    }
    CHECK(worst <= yard, "%s validation loss on the GPU within %.3g of the CPU's on the same weights (worst %.3g)",
          int8 ? "INT8 L2" : "BF16", yard, worst);
    const char *herr = t.be.halo_error ? t.be.halo_error(&t) : NULL;
    CHECK(!herr, "no HALO flag from the GPU evaluation: %s", herr ? herr : "");
    halo_batch_free(&b);
    trainer_free(&t);
    llama_free(&m);
}

// 3. `halo finetune --device cuda --halo-telemetry 2`: the GPU HALO layers' telemetry reaches the table and the metrics
// file: every step 2 and 4, one line per HALO linear (5 blocks x 7) with all three products measured, errors in
// (0, 0.5) (INT8 level 2 on stories260K at steps 2 and 4 measured 0.7% to 21% on an H200; a wrong row or a missing
// snapshot gives 100% or more) and outlier ratios >= 1.
static void test_finetune_telemetry(void) {
    const char *bin = getenv("BUILD");
    char metrics[256], cmd[8192];
    snprintf(metrics, sizeof metrics, "/tmp/halo_cuda_tele_%d.jsonl", (int)getpid());
    snprintf(cmd, sizeof cmd, "%s/halo finetune --device cuda --model %s --data %s --steps 4 --batch 2 --seq-len 64 "
             "--precision int8 --halo-level 2 --halo-telemetry 2 --metrics %s 2>&1", bin && *bin ? bin : "build",
             test_shared_path("models/stories260K"), test_shared_path("data/text/tinystories_sample.txt"), metrics);
    FILE *p = popen(cmd, "r");
    char line[4096];
    int tables = 0;
    while (p && fgets(line, sizeof line, p)) tables += !strncmp(line, "quantization telemetry after step", 33);
    int rc = p ? pclose(p) : -1;
    CHECK(rc == 0 && tables == 2, "`%s` exited %d with %d telemetry tables", cmd, rc, tables);
    char *text;
    if (halo_read_file(metrics, &text, NULL) != HALO_OK) { CHECK(0, "%s", halo_error()); return; }
    int lines = 0, bad = 0;
    double lo = 1, hi = 0;
    for (char *l = strtok(text, "\n"); l; l = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(l);
        cJSON *t = cJSON_GetObjectItem(j, "type"), *L = cJSON_GetObjectItem(j, "layer");
        if (cJSON_IsString(t) && !strcmp(t->valuestring, "quant") && L) {
            lines++;
            static const char *pn[3] = {"Y", "EX", "G"};
            for (int q = 0; q < 3; q++) {
                cJSON *P = cJSON_GetObjectItem(L, pn[q]), *e = cJSON_GetObjectItem(P, "rel_err");
                cJSON *oa = cJSON_GetObjectItem(P, "outlier_a"), *ob = cJSON_GetObjectItem(P, "outlier_b");
                double v = cJSON_IsNumber(e) ? e->valuedouble : NAN;
                lo = fmin(lo, v); hi = fmax(hi, v);
                int ok = v > 0 && v < 0.5;
                for (int k = 0; k < 2; k++) {
                    cJSON *a = cJSON_GetArrayItem(oa, k), *b = cJSON_GetArrayItem(ob, k);
                    ok = ok && cJSON_IsNumber(a) && a->valuedouble >= 1 && cJSON_IsNumber(b) && b->valuedouble >= 1;
                }
                bad += !ok;
            }
        }
        cJSON_Delete(j);
    }
    free(text);
    remove(metrics);
    printf("   finetune --device cuda --halo-telemetry 2: %d telemetry lines, errors %.4f..%.4f, %d bad\n", lines, lo,
           hi, bad);
    CHECK(lines == 2 * 35 && bad == 0, "telemetry metrics: %d lines (want 70), %d products out of range", lines, bad);
}

// 5. `halo finetune --lora-rank 4 --device cuda` on stories260K writes a PEFT adapter; `halo eval --task loss
// --adapter` gives the run's last validation loss (the GPU's forward of its own adapters) on the GPU within 1e-4
// (the same forward on the same bf16 weights; only the loss sum's atomics differ) and on the CPU within 2e-2 (fp32
// vs BF16 products). The run's log names the frozen base; first estimates, to be calibrated on the device.
static void test_finetune_lora(void) {
    const char *b = getenv("BUILD");
    char bin[512], dir[256], cmd[8192], path[512], base[1024], data[1024];
    snprintf(bin, sizeof bin, "%s/halo", b && *b ? b : "build");
    snprintf(dir, sizeof dir, "/tmp/halo_cuda_lora_cli_%d", (int)getpid());
    snprintf(base, sizeof base, "%s", test_shared_path("models/stories260K"));
    snprintf(data, sizeof data, "%s", test_shared_path("data/text/tinystories_sample.txt"));
    const char *same = "--seq-len 48 --batch 2 --val-count 4 --seed 3";
    snprintf(cmd, sizeof cmd, "mkdir -p %s && %s finetune --device cuda --model %s --data %s %s --steps 5 --lr 5e-3 "
             "--warmup 1 --lora-rank 4 --lora-alpha 8 --metrics %s/m.jsonl --out %s/adapter > %s/ft.log 2>&1", dir, bin,
             base, data, same, dir, dir, dir);
    CHECK(system(cmd) == 0, "`%s` ran", cmd);
    snprintf(path, sizeof path, "%s/ft.log", dir);
    CHECK(file_has(path, "base parameters are frozen"), "the GPU LoRA run prints the frozen base's memory line");
    snprintf(path, sizeof path, "%s/m.jsonl", dir);
    const double v = last_eval(path, "val_loss");
    double ev[2];
    for (int k = 0; k < 2; k++) {
        snprintf(cmd, sizeof cmd, "%s eval --device %s --model %s --adapter %s/adapter --data %s --task loss %s > "
                 "%s/eval%d.log 2>&1", bin, k ? "cuda" : "cpu", base, dir, data, same, dir, k);
        CHECK(system(cmd) == 0, "`%s` ran", cmd);
        snprintf(path, sizeof path, "%s/eval%d.log", dir, k);
        ev[k] = eval_loss(path);
    }
    printf("   finetune --lora --device cuda: last val_loss %.6f; eval --adapter: GPU %.6f, CPU %.6f\n", v, ev[1], ev[0]);
    CHECK(fabs(ev[1] - v) <= 1e-4 * v, "eval --adapter --device cuda %.6f vs the run's val_loss %.6f", ev[1], v);
    CHECK(fabs(ev[0] - v) <= 2e-2 * v, "eval --adapter --device cpu %.6f vs the run's val_loss %.6f", ev[0], v);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (!getenv("KEEP") && system(cmd)) {}
}

#endif

int main(int argc, char **argv) {
#ifndef HALO_CUDA
    (void)argc; (void)argv;
    SKIP("built without CUDA (no nvcc, or SAN=1): GPU verb tests skipped");
    TEST_END();
#else
    setvbuf(stdout, NULL, _IOLBF, 0);   // an abort in a GPU check keeps the lines before it in the log
    if (!test_shared()) { SKIP("shared data folder not found (set HALO_SHARED)"); TEST_END(); }
    if (gold_src_load()) TEST_END();   // the token rows of parts 1 and 4
    char gpu_why[256];
    if (argc > 1 && !strcmp(argv[1], "--cpu")) test_checkpoints(0);
    else if (!cuda_device_usable(gpu_why, sizeof gpu_why)) SKIP("%s: GPU verb tests skipped", gpu_why);
    else if (argc > 1 && !strcmp(argv[1], "--val-loss")) {   // part 4 alone (e.g. under compute-sanitizer)
        test_device_val_loss(0);
        test_device_val_loss(1);
    } else {
        test_checkpoints(1);
        test_bf16_moments();
        test_debug_step("stories260K", "models/stories260K", "goldens/stories260K_train");
        test_debug_step("tiny-llama3", "goldens/tiny-llama3", "goldens/tiny-llama3_train");
        test_finetune_telemetry();
        test_device_val_loss(0);
        test_device_val_loss(1);
        test_finetune_lora();
    }
    free(g_src.ids);
    TEST_END();
#endif
}
