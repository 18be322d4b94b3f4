// Checkpoints: exact round trip of parameters, AdamW moments and metadata; bit-exact resume of a training run
// from a middle checkpoint; clear errors for truncated, corrupted, incomplete or mismatched files; folder helpers.
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include "io/safetensors.h"
#include "model/linear.h"
#include "model/llama.h"
#include "test.h"
#include "train/checkpoint.h"
#include "train/rng.h"
#include "train/trainer.h"
#include "util/error.h"

static llama_config tiny_config(void) {
    llama_config c = {0};
    c.vocab_size = 64; c.dim = 32; c.hidden_dim = 64; c.n_layers = 2; c.n_heads = 4; c.n_kv_heads = 2;
    c.head_dim = 8; c.max_pos = 64; c.norm_eps = 1e-5f; c.rope_theta = 10000; c.tie_embeddings = 0;
    c.bos_id = 1; c.eos_id = 2;
    return c;
}

#include "test_seq_source.h"

static char g_dir[256];

static train_options tiny_options(void) {
    train_options o = train_options_default();
    o.steps = 8; o.batch_size = 3; o.seq_len = 16; o.grad_accum = 2; o.lr = 3e-3; o.min_lr = 3e-4; o.warmup = 2;
    o.decay = LR_COSINE; o.adamw.weight_decay = 0.1; o.clip = 0.5f; o.seed = 1234; o.log_every = 0;
    o.ckpt_every = 1;
    return o;
}

static void test_round_trip(void) {
    llama_config c = tiny_config();
    llama_model m, m2;
    CHECK(llama_init(&m, &c) == HALO_OK, "init: %s", halo_error());
    llama_init_random(&m, 5);
    adamw_config ac = adamw_config_default();
    adamw_state opt, opt2;
    adamw_init(&opt, &ac, m.n_params, m.table, m.n_table);
    unsigned long long s = 3;
    for (size_t i = 0; i < m.n_params; i++) { opt.m[i] = (float)t_rand_normal(&s); opt.v[i] = (float)t_rand_uniform(&s); }
    opt.t = 17;
    checkpoint_meta meta = {.step = 17, .optim_t = 0, .data = {.epoch = 2, .position = 123456789012LL, .rng = 0xFEDCBA9876543210ULL},
                            .rng = 0xFFFFFFFFFFFFFFFFULL, .elapsed_s = 12.5, .options_json = "{\"x\":1}", .app_json = "{\"task\":\"t\"}"};
    char path[512];
    snprintf(path, sizeof path, "%s/rt.safetensors", g_dir);
    CHECK(checkpoint_save(path, &m, &opt, &meta) == HALO_OK, "save: %s", halo_error());
    llama_config c2;
    checkpoint_meta got;
    CHECK(checkpoint_read_meta(path, &c2, &got) == HALO_OK, "read meta: %s", halo_error());
    CHECK(!memcmp(&c, &c2, sizeof c), "config round trip");
    checkpoint_meta_free(&got);
    llama_init(&m2, &c2);
    adamw_init(&opt2, &ac, m2.n_params, m2.table, m2.n_table);
    CHECK(checkpoint_load(path, &m2, &opt2, &got) == HALO_OK, "load: %s", halo_error());
    CHECK(!memcmp(m.params, m2.params, m.n_params * sizeof(float)), "params bit-exact");
    CHECK(!memcmp(opt.m, opt2.m, m.n_params * sizeof(float)) && !memcmp(opt.v, opt2.v, m.n_params * sizeof(float)),
          "AdamW moments bit-exact");
    CHECK(opt2.t == 17 && got.step == 17 && got.optim_t == 17, "step counters %lld %lld", (long long)got.step, (long long)opt2.t);
    CHECK(got.data.epoch == 2 && got.data.position == 123456789012LL && got.data.rng == 0xFEDCBA9876543210ULL,
          "data state round trip");
    CHECK(got.rng == 0xFFFFFFFFFFFFFFFFULL && got.elapsed_s == 12.5, "rng/elapsed round trip");
    CHECK(got.options_json && !strcmp(got.options_json, "{\"x\":1}") && got.app_json && !strcmp(got.app_json, "{\"task\":\"t\"}"),
          "options/app JSON round trip");
    checkpoint_meta_free(&got);

    // A parameters-only file loads into a model but cannot resume training.
    char ponly[512];
    snprintf(ponly, sizeof ponly, "%s/params_only.safetensors", g_dir);
    CHECK(checkpoint_save(ponly, &m, NULL, &meta) == HALO_OK, "save params only");
    CHECK(checkpoint_load(ponly, &m2, NULL, &got) == HALO_OK, "params-only load without optimizer: %s", halo_error());
    checkpoint_meta_free(&got);
    CHECK(checkpoint_load(ponly, &m2, &opt2, &got) == HALO_ERR && strstr(halo_error(), "optim.m.") && strstr(halo_error(), ponly),
          "params-only file refused for resuming: %s", halo_error());

    // A different model shape is refused naming the file.
    llama_config c3 = c;
    c3.dim = 48; c3.head_dim = 12;
    llama_model m3;
    llama_init(&m3, &c3);
    CHECK(checkpoint_load(path, &m3, NULL, &got) == HALO_ERR && strstr(halo_error(), path) && strstr(halo_error(), "config"),
          "mismatched config refused: %s", halo_error());
    llama_free(&m3);

    // Truncated: every cut of the file fails with the file's name (header cuts and data cuts alike).
    struct stat st;
    stat(path, &st);
    char *buf = malloc(st.st_size);
    FILE *f = fopen(path, "rb");
    CHECK(fread(buf, 1, st.st_size, f) == (size_t)st.st_size, "read back");
    fclose(f);
    char bad[512];
    snprintf(bad, sizeof bad, "%s/bad.safetensors", g_dir);
    long cuts[] = {0, 5, 8, 100, st.st_size / 2, st.st_size - 1};
    int all_refused = 1;
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        f = fopen(bad, "wb");
        fwrite(buf, 1, cuts[k], f);
        fclose(f);
        int rc = checkpoint_load(bad, &m2, &opt2, &got);
        if (rc != HALO_ERR || !strstr(halo_error(), bad)) { all_refused = 0; fprintf(stderr, "cut %ld: %s\n", cuts[k], halo_error()); }
    }
    CHECK(all_refused, "truncated checkpoints are refused with the file name");
    printf("truncated checkpoint error: %s\n", halo_error());
    // Corrupted header: break the JSON.
    memcpy(bad, bad, 0);
    char *b2 = malloc(st.st_size);
    memcpy(b2, buf, st.st_size);
    b2[8] = 'X';
    f = fopen(bad, "wb"); fwrite(b2, 1, st.st_size, f); fclose(f);
    CHECK(checkpoint_load(bad, &m2, &opt2, &got) == HALO_ERR && strstr(halo_error(), bad), "corrupted header refused: %s", halo_error());
    // A metadata value that does not parse: rewrite "step" through the writer.
    st_writer *w = st_writer_new();
    for (int i = 0; i < m.n_table; i++) st_writer_add(w, m.table[i].name, ST_F32, ST_F32, m.params + m.table[i].offset, m.table[i].ndim, m.table[i].shape);
    char *cj = llama_config_to_json(&c, NULL, 0);
    st_writer_meta(w, "format", CHECKPOINT_FORMAT);
    st_writer_meta(w, "config", cj);
    st_writer_meta(w, "step", "seventeen");
    CHECK(st_writer_write(w, bad) == HALO_OK, "write bad meta");
    st_writer_free(w);
    free(cj);
    CHECK(checkpoint_load(bad, &m2, NULL, &got) == HALO_ERR && strstr(halo_error(), "'step'") && strstr(halo_error(), bad),
          "unparsable metadata refused: %s", halo_error());
    // Not a checkpoint at all: a model file without our metadata.
    w = st_writer_new();
    st_writer_add(w, "x", ST_F32, ST_F32, m.params, 1, (int64_t[]){4});
    st_writer_write(w, bad);
    st_writer_free(w);
    CHECK(checkpoint_load(bad, &m2, NULL, &got) == HALO_ERR && strstr(halo_error(), bad), "non-checkpoint refused: %s", halo_error());
    free(buf); free(b2);
    adamw_free(&opt); adamw_free(&opt2);
    llama_free(&m); llama_free(&m2);
}

// Trains `steps` steps from scratch or from `resume`, recording each step's loss into losses[step-1].
static int run_tiny(const char *ckpt_dir, const char *resume, float *losses, float *final_params, size_t *n) {
    llama_config c = tiny_config();
    llama_model m;
    llama_init(&m, &c);
    llama_init_random(&m, 77);
    train_options o = tiny_options();
    o.ckpt_dir = ckpt_dir;
    rand_src src = {.vocab = c.vocab_size};
    trainer t;
    if (trainer_init(&t, &m, &o, (train_data_source){&src, rs_next, rs_get, rs_set})) return HALO_ERR;
    if (resume && trainer_resume(&t, resume)) { trainer_free(&t); llama_free(&m); return HALO_ERR; }
    int first = t.step;
    while (t.step < o.steps) {
        train_step_info s;
        if (trainer_step(&t, &s)) return HALO_ERR;
        losses[s.step - 1] = s.loss;
        if (ckpt_dir && trainer_save(&t, NULL)) return HALO_ERR;
    }
    memcpy(final_params, m.params, m.n_params * sizeof(float));
    *n = m.n_params;
    trainer_free(&t);
    llama_free(&m);
    return first;
}

static void test_resume_bit_exact(void) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/run", g_dir);
    float full[8], resumed[8] = {0};
    float *p1 = malloc(1 << 20), *p2 = malloc(1 << 20);
    size_t n1, n2;
    CHECK(run_tiny(dir, NULL, full, p1, &n1) == 0, "uninterrupted run: %s", halo_error());
    CHECK(full[7] < full[0], "loss falls: %g -> %g", full[0], full[7]);
    char latest[600], mid[600];
    CHECK(checkpoint_find_latest(dir, latest, sizeof latest) == HALO_OK && strstr(latest, "step_00000008"), "latest = %s", latest);
    checkpoint_path(mid, sizeof mid, dir, 3);
    int first = run_tiny(NULL, mid, resumed, p2, &n2);
    CHECK(first == 3, "resumed at step %d: %s", first, halo_error());
    int same = 1;
    for (int i = 3; i < 8; i++) {
        same &= !memcmp(&full[i], &resumed[i], sizeof(float));
        printf("step %d: uninterrupted %.9g resumed %.9g\n", i + 1, full[i], resumed[i]);
    }
    CHECK(same, "losses after resuming equal the uninterrupted run bit for bit");
    CHECK(n1 == n2 && !memcmp(p1, p2, n1 * sizeof(float)), "final parameters equal bit for bit");
    // Folder helpers: prune keeps the newest, temp files are ignored.
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s/step_00000099.safetensors.tmp", dir);
    FILE *f = fopen(tmp, "w"); fputs("partial", f); fclose(f);
    CHECK(checkpoint_find_latest(dir, latest, sizeof latest) == HALO_OK && strstr(latest, "step_00000008.safetensors"), "temp files ignored: %s", latest);
    checkpoint_prune(dir, 3, 7);   // as after writing step 7 with step 8 left by an earlier run: 5, 6, 7 and 8 stay
    checkpoint_path(tmp, sizeof tmp, dir, 4);
    int gone4 = access(tmp, F_OK) != 0;
    int kept[4];
    for (int s = 5; s <= 8; s++) { checkpoint_path(tmp, sizeof tmp, dir, s); kept[s - 5] = access(tmp, F_OK) == 0; }
    CHECK(gone4 && kept[0] && kept[1] && kept[2] && kept[3], "prune to 3 at step 7: 4 goes, 5-7 and the later 8 stay");
    checkpoint_prune(dir, 2, 8);
    checkpoint_path(tmp, sizeof tmp, dir, 6);
    int gone = access(tmp, F_OK) != 0;
    checkpoint_path(tmp, sizeof tmp, dir, 7);
    CHECK(gone && access(tmp, F_OK) == 0, "prune keeps the newest two");
    char empty[600];
    snprintf(empty, sizeof empty, "%s/empty", g_dir);
    mkdir(empty, 0777);
    CHECK(checkpoint_find_latest(empty, latest, sizeof latest) == HALO_ERR && strstr(halo_error(), empty), "empty folder: %s", halo_error());
    free(p1); free(p2);
}

static void test_options_json(void) {
    train_options o = tiny_options(), p = train_options_default();
    o.seed = 0xFFFFFFFFFFFFFFF1ULL; o.decay = LR_LINEAR; o.adamw.decay_all = 1;
    char *j = train_options_to_json(&o);
    CHECK(train_options_from_json(j, &p) == HALO_OK, "parse options: %s", halo_error());
    char *j2 = train_options_to_json(&p);
    CHECK(!strcmp(j, j2) && p.seed == o.seed && p.decay == LR_LINEAR && p.lr == o.lr, "options JSON round trip");
    free(j); free(j2);
}

// A HALO product that fails inside a step (here INT8 level 2 refusing a NaN weight) stops the step before the update:
// trainer_step fails naming the layer, and the parameters and the step count stay as they were.
// The tiny model with INT8 level 2 on every block linear; returns the parameters of the tensor named `name` (NULL and
// a failed check when missing).
static float *tiny_int8_l2(llama_model *m, uint64_t seed, const char *name) {
    llama_config c = tiny_config();
    llama_init(m, &c);
    llama_init_random(m, seed);
    model_halo_config hc = model_halo_config_default();
    hc.prec = HALO_PREC_INT8; hc.level = 2;
    CHECK(llama_set_halo(m, &hc) == HALO_OK, "%s", halo_error());
    for (int i = 0; i < m->n_table; i++)
        if (strstr(m->table[i].name, name)) return m->params + m->table[i].offset;
    CHECK(0, "%s not found", name);
    return NULL;
}

static void test_halo_failure_not_applied(void) {
    llama_config c = tiny_config();
    llama_model m;
    float *w = tiny_int8_l2(&m, 77, "layers.0.self_attn.q_proj");
    if (!w) { llama_free(&m); return; }
    w[5] = NAN;
    float *before = malloc(sizeof(float) * m.n_params);
    memcpy(before, m.params, sizeof(float) * m.n_params);
    train_options o = tiny_options();
    rand_src src = {.vocab = c.vocab_size};
    trainer t;
    CHECK(trainer_init(&t, &m, &o, (train_data_source){&src, rs_next, rs_get, rs_set}) == HALO_OK, "%s", halo_error());
    train_step_info s;
    int rc = trainer_step(&t, &s);
    CHECK(rc == HALO_ERR && strstr(halo_error(), "not applied") && strstr(halo_error(), "q_proj"),
          "failed HALO product stops the step: rc %d, %s", rc, halo_error());
    CHECK(t.step == 0 && !memcmp(before, m.params, sizeof(float) * m.n_params), "parameters and step unchanged");
    printf("HALO failure in a step: %s\n", halo_error());
    trainer_free(&t);
    free(before);
    llama_free(&m);
}

// The trainer's guards against a backend's non-finite state, on a stand-in backend wrapping the CPU one: a backend
// HALO error (as the GPU's flags report it) or a NaN / Inf gradient norm with a finite loss fail the step before the
// optimizer runs, naming the layer; the parameters and the step count stay as they were.
static int g_opt_calls;
static double g_norm_override;
static const char *g_be_error;
static double fake_clip(trainer *t, float max_norm) {
    double n = TRAIN_BACKEND_CPU.clip_grads(t, max_norm);
    return g_norm_override != 0 ? g_norm_override : n;
}
static void fake_opt(trainer *t, double lr) { g_opt_calls++; TRAIN_BACKEND_CPU.optimizer_step(t, lr); }
static const char *fake_error(trainer *t) { (void)t; return g_be_error; }
static void test_backend_guards(void) {
    llama_config c = tiny_config();
    llama_model m;
    llama_init(&m, &c);
    llama_init_random(&m, 78);
    float *before = malloc(sizeof(float) * m.n_params);
    memcpy(before, m.params, sizeof(float) * m.n_params);
    train_options o = tiny_options();
    rand_src src = {.vocab = c.vocab_size};
    trainer t;
    CHECK(trainer_init(&t, &m, &o, (train_data_source){&src, rs_next, rs_get, rs_set}) == HALO_OK, "%s", halo_error());
    t.be.clip_grads = fake_clip;
    t.be.optimizer_step = fake_opt;
    t.be.halo_error = fake_error;
    train_step_info s;
    const double bad[2] = {NAN, INFINITY};
    for (int i = 0; i < 2; i++) {
        g_norm_override = bad[i];
        int rc = trainer_step(&t, &s);
        CHECK(rc == HALO_ERR && strstr(halo_error(), "not applied") && strstr(halo_error(), "gradient norm"),
              "non-finite gradient norm %g stops the step: rc %d, %s", bad[i], rc, halo_error());
    }
    g_norm_override = 0;
    g_be_error = "model.layers.1.mlp.down_proj: a NaN or Inf in its weight W";
    int rc = trainer_step(&t, &s);
    CHECK(rc == HALO_ERR && strstr(halo_error(), "not applied") && strstr(halo_error(), "layers.1.mlp.down_proj"),
          "backend HALO error stops the step: rc %d, %s", rc, halo_error());
    printf("backend guard: %s\n", halo_error());
    CHECK(g_opt_calls == 0 && t.step == 0 && !memcmp(before, m.params, sizeof(float) * m.n_params),
          "no update after refused steps (optimizer calls %d, step %d)", g_opt_calls, t.step);
    g_be_error = NULL;   // a clean step still trains
    rc = trainer_step(&t, &s);
    CHECK(rc == HALO_OK && g_opt_calls == 1 && t.step == 1 && memcmp(before, m.params, sizeof(float) * m.n_params),
          "a clean step after them updates: rc %d, optimizer calls %d, step %d", rc, g_opt_calls, t.step);
    trainer_free(&t);
    free(before);
    llama_free(&m);
}

// A HALO product that refuses a NaN during an evaluation fails that evaluation, naming the layer, and the error does not
// carry over to the next training step (which trains).
static halo_batch g_eval_batch;
static int nan_eval(void *ctx, llama_model *m, int step, train_metrics *out) {
    float *w = ctx, keep = w[3];
    w[3] = NAN;   // one forward with a NaN q_proj weight: the INT8 quantizer refuses it and notes the error
    const float loss = llama_forward(m, &g_eval_batch, NULL);
    w[3] = keep;
    train_metrics_add(out, "loss", loss);
    (void)step;
    return HALO_OK;
}
static void test_eval_halo_failure(void) {
    llama_config c = tiny_config();
    llama_model m;
    float *w = tiny_int8_l2(&m, 79, "layers.1.self_attn.q_proj");
    if (!w) { llama_free(&m); return; }
    train_options o = tiny_options();
    rand_src src = {.vocab = c.vocab_size};
    halo_batch_alloc(&g_eval_batch, 2, 16);
    rs_next(&src, &g_eval_batch);
    trainer t;
    CHECK(trainer_init(&t, &m, &o, (train_data_source){&src, rs_next, rs_get, rs_set}) == HALO_OK, "%s", halo_error());
    trainer_set_eval(&t, nan_eval, w);
    train_step_info s;
    CHECK(trainer_step(&t, &s) == HALO_OK, "first step: %s", halo_error());
    int rc = trainer_evaluate(&t);
    CHECK(rc == HALO_ERR && strstr(halo_error(), "evaluation at step 1") && strstr(halo_error(), "q_proj"),
          "evaluation with a failed HALO product: rc %d, %s", rc, halo_error());
    printf("HALO failure in an evaluation: %s\n", halo_error());
    rc = trainer_step(&t, &s);
    CHECK(rc == HALO_OK && t.step == 2, "the next step trains: rc %d (%s), step %d", rc, rc ? halo_error() : "", t.step);
    trainer_free(&t);
    halo_batch_free(&g_eval_batch);
    llama_free(&m);
}

// A backend with its own forward (the GPU's, trainer_device_loss) serves the evaluation's losses on its weights, and a
// HALO flag its layers raise in that forward fails the evaluation, naming the layer; a backend without one leaves
// evaluations to the host model and its flags to the steps.
static int g_fwd_calls;
static float fake_forward_loss(trainer *t, const halo_batch *b) {
    (void)t;
    g_fwd_calls++;
    return 0.25f * b->B + 1.f;   // not a loss the host model gives: tells which forward ran
}
static int device_loss_eval(void *ctx, llama_model *m, int step, train_metrics *out) {
    trainer *t = ctx;
    const float loss = trainer_has_device_loss(t) ? trainer_device_loss(t, &g_eval_batch)
                                                  : llama_forward(m, &g_eval_batch, NULL);
    train_metrics_add(out, "loss", loss);
    (void)step;
    return HALO_OK;
}
static void test_device_loss(void) {
    llama_config c = tiny_config();
    llama_model m;
    llama_init(&m, &c);
    llama_init_random(&m, 80);
    train_options o = tiny_options();
    rand_src src = {.vocab = c.vocab_size};
    halo_batch_alloc(&g_eval_batch, 3, 16);
    rs_next(&src, &g_eval_batch);
    trainer t;
    CHECK(trainer_init(&t, &m, &o, (train_data_source){&src, rs_next, rs_get, rs_set}) == HALO_OK, "%s", halo_error());
    trainer_set_eval(&t, device_loss_eval, &t);
    t.be.halo_error = fake_error;
    g_be_error = "model.layers.0.self_attn.v_proj: a NaN or Inf in its input X";
    CHECK(!trainer_has_device_loss(&t) && trainer_evaluate(&t) == HALO_OK,
          "without a device forward the backend's step flags are not the evaluation's: %s", halo_error());
    t.be.forward_loss = fake_forward_loss;
    g_be_error = NULL;
    CHECK(trainer_has_device_loss(&t) && trainer_device_loss(&t, &g_eval_batch) == 0.25f * 3 + 1.f && g_fwd_calls == 1,
          "trainer_device_loss runs the backend's forward (calls %d)", g_fwd_calls);
    CHECK(trainer_evaluate(&t) == HALO_OK && g_fwd_calls == 2, "evaluation on the device forward: %s, calls %d",
          halo_error(), g_fwd_calls);
    g_be_error = "model.layers.0.self_attn.v_proj: a NaN or Inf in its input X";
    int rc = trainer_evaluate(&t);
    CHECK(rc == HALO_ERR && strstr(halo_error(), "evaluation at step 0") && strstr(halo_error(), "v_proj"),
          "a HALO flag raised by the device forward fails the evaluation: rc %d, %s", rc, halo_error());
    printf("HALO failure in a device evaluation: %s\n", halo_error());
    g_be_error = NULL;
    trainer_free(&t);
    halo_batch_free(&g_eval_batch);
    llama_free(&m);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/halo_test_ckpt_XXXXXX");
    if (!mkdtemp(g_dir)) { CHECK(0, "mkdtemp"); TEST_END(); }
    test_options_json();
    test_round_trip();
    test_resume_bit_exact();
    test_halo_failure_not_applied();
    test_backend_guards();
    test_eval_halo_failure();
    test_device_loss();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd)) {}
    TEST_END();
}
