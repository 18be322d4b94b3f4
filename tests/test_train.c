// Training building blocks against float64 references: AdamW (torch.optim.AdamW's formula, weight decay and the
// no_decay table), the learning-rate schedule, global-norm clipping (including thread-count independence),
// token sampling, the demo's addition task encoding, and gradient accumulation weighted by loss tokens.
#include <omp.h>
#include "model/llama.h"
#include "test.h"
#include "train/adamw.h"
#include "train/generate.h"
#include "train/task_addition.h"
#include "train/trainer.h"
#include "util/error.h"

// torch.optim.AdamW (single-tensor path) in float64, one step at a time.
typedef struct { double *p, *m, *v; long t; } ref_adamw;
static void ref_step(ref_adamw *r, const float *g, size_t n, const unsigned char *decay, double lr, double b1,
                     double b2, double eps, double wd) {
    r->t++;
    double bc1 = 1 - pow(b1, r->t), bc2 = 1 - pow(b2, r->t);
    for (size_t i = 0; i < n; i++) {
        if (decay[i]) r->p[i] *= 1 - lr * wd;
        r->m[i] = r->m[i] + (1 - b1) * (g[i] - r->m[i]);   // exp_avg.lerp_(grad, 1 - beta1)
        r->v[i] = b2 * r->v[i] + (1 - b2) * (double)g[i] * g[i];
        double denom = sqrt(r->v[i]) / sqrt(bc2) + eps;
        r->p[i] -= lr / bc1 * r->m[i] / denom;
    }
}

static void test_adamw_vs_reference(int decay_all, float wd) {
    // Three tensors: a "matrix" (decayed), a "norm" (no_decay), another matrix; sizes cross the chunk size.
    enum { N0 = 40000, N1 = 300, N2 = 50000, N = N0 + N1 + N2 };
    llama_param table[3] = {
        {.name = "a.weight", .offset = 0, .numel = N0, .ndim = 2, .shape = {200, 200}, .no_decay = 0},
        {.name = "norm.weight", .offset = N0, .numel = N1, .ndim = 1, .shape = {N1}, .no_decay = 1},
        {.name = "b.weight", .offset = N0 + N1, .numel = N2, .ndim = 2, .shape = {250, 200}, .no_decay = 0},
    };
    unsigned long long s = 42 + decay_all;
    float *p = malloc(N * sizeof(float)), *g = malloc(N * sizeof(float));
    unsigned char *decay = malloc(N);
    ref_adamw r = {calloc(N, sizeof(double)), calloc(N, sizeof(double)), calloc(N, sizeof(double)), 0};
    for (size_t i = 0; i < N; i++) {
        p[i] = (float)t_rand_normal(&s);
        r.p[i] = p[i];
        decay[i] = decay_all || !(i >= N0 && i < N0 + N1);
    }
    adamw_config cfg = {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = wd, .decay_all = decay_all};
    adamw_state st;
    adamw_init(&st, &cfg, N, table, 3);
    double worst_p = 0, worst_upd = 0, worst_mv = 0;
    for (int step = 0; step < 4; step++) {
        // Gradients of very different scales, some exactly zero, so eps and bias correction both matter.
        for (size_t i = 0; i < N; i++) g[i] = (i % 97 == 0) ? 0.0f : (float)(t_rand_normal(&s) * pow(10, (int)(i % 7) - 4));
        double lr = 1e-2 * (step + 1);
        // The reference starts each step from the stored fp32 state, as torch's fp32 AdamW does.
        float *before = malloc(N * sizeof(float));
        memcpy(before, p, N * sizeof(float));
        for (size_t i = 0; i < N; i++) { r.p[i] = p[i]; r.m[i] = st.m[i]; r.v[i] = st.v[i]; }
        adamw_step(&st, p, g, lr);
        ref_step(&r, g, N, decay, lr, 0.9, 0.95, 1e-8, wd);
        for (size_t i = 0; i < N; i++) {
            double ep = fabs(p[i] - r.p[i]) / fmax(fabs(r.p[i]), 1e-3);
            // The update as seen through a float parameter: exact to 1e-6 relative plus one ulp of the result.
            double ru = r.p[i] - before[i], gu = (double)p[i] - before[i];
            double ulp = nextafterf(fabsf(p[i]), INFINITY) - fabsf(p[i]);
            double eu = fabs(gu - ru) / (1e-6 * fabs(ru) + ulp);
            double em = fmax(fabs(st.m[i] - r.m[i]) / (fabs(r.m[i]) + 1e-30), fabs(st.v[i] - r.v[i]) / (fabs(r.v[i]) + 1e-30));
            if (r.m[i] == 0 && st.m[i] == 0) em = 0;
            if (ep > worst_p) worst_p = ep;
            if (eu > worst_upd) worst_upd = eu;
            if (em > worst_mv) worst_mv = em;
        }
        free(before);
    }
    printf("adamw decay_all=%d wd=%g: worst param rel err %.3g, update err %.3g (units of 1e-6 rel + 1 ulp), "
           "moments rel err %.3g over 4 steps\n", decay_all, wd, worst_p, worst_upd, worst_mv);
    CHECK(worst_p < 1e-6, "AdamW params vs float64 torch formula: rel err %.3g", worst_p);
    CHECK(worst_upd <= 1, "AdamW updates vs float64 torch formula: err %.3g (1e-6 rel + 1 ulp units)", worst_upd);
    CHECK(worst_mv < 1e-6, "AdamW moments vs float64: rel err %.3g", worst_mv);
    CHECK(st.t == 4, "step counter %lld", (long long)st.t);
    adamw_free(&st);
    free(p); free(g); free(decay); free(r.p); free(r.m); free(r.v);
}

// With zero gradients Adam's update is 0, so a decayed tensor shrinks by exactly (1 - lr*wd) and a no_decay one
// stays bit-identical.
static void test_adamw_no_decay(void) {
    llama_param table[2] = {
        {.name = "w", .offset = 0, .numel = 100, .ndim = 1, .shape = {100}, .no_decay = 0},
        {.name = "norm", .offset = 100, .numel = 100, .ndim = 1, .shape = {100}, .no_decay = 1},
    };
    for (int decay_all = 0; decay_all <= 1; decay_all++) {
        float p[200], p0[200], g[200] = {0};
        for (int i = 0; i < 200; i++) p0[i] = p[i] = 1.0f + i * 0.01f;
        adamw_config cfg = adamw_config_default();
        cfg.weight_decay = 0.5;
        cfg.decay_all = decay_all;
        adamw_state st;
        adamw_init(&st, &cfg, 200, table, 2);
        adamw_step(&st, p, g, 0.1f);
        int dec_ok = 1, nodec_ok = 1;
        for (int i = 0; i < 100; i++) dec_ok &= fabs(p[i] - p0[i] * 0.95) <= 1e-6 * p0[i];
        for (int i = 100; i < 200; i++)
            nodec_ok &= decay_all ? fabs(p[i] - p0[i] * 0.95) <= 1e-6 * p0[i] : p[i] == p0[i];
        CHECK(dec_ok, "decayed tensor should shrink by 1 - lr*wd (decay_all=%d)", decay_all);
        CHECK(nodec_ok, "no_decay tensor with decay_all=%d: %s", decay_all, decay_all ? "should decay" : "should be untouched");
        adamw_free(&st);
    }
}

static void test_schedule(void) {
    lr_schedule s = {.lr = 1e-3, .min_lr = 1e-4, .warmup = 10, .total = 110, .decay = LR_COSINE};
    CHECK_REL(lr_schedule_at(&s, 0), 1e-4, 1e-6, "warmup step 0 = lr/warmup");
    CHECK_REL(lr_schedule_at(&s, 4), 5e-4, 1e-6, "warmup step 4");
    CHECK_REL(lr_schedule_at(&s, 9), 1e-3, 1e-6, "warmup last step reaches lr");
    CHECK_REL(lr_schedule_at(&s, 10), 1e-3, 1e-6, "decay starts at lr");
    // span = total - 1 - warmup = 99 steps of decay.
    CHECK_REL(lr_schedule_at(&s, 10 + 99 / 4), 1e-4 + 0.9e-3 * 0.5 * (1 + cos(M_PI * (99 / 4) / 99.0)), 1e-6, "cosine at ~1/4");
    CHECK_REL(lr_schedule_at(&s, 109), 1e-4, 1e-6, "cosine ends at min_lr");
    CHECK_REL(lr_schedule_at(&s, 500), 1e-4, 1e-6, "past the end stays at min_lr");
    s.decay = LR_LINEAR;
    CHECK_REL(lr_schedule_at(&s, 10 + 33), 1e-3 - 0.9e-3 * 33 / 99.0, 1e-6, "linear at step 43");
    CHECK_REL(lr_schedule_at(&s, 109), 1e-4, 1e-6, "linear ends at min_lr");
    s.decay = LR_CONSTANT;
    CHECK_REL(lr_schedule_at(&s, 77), 1e-3, 1e-6, "constant after warmup");
    s.warmup = 0;
    CHECK_REL(lr_schedule_at(&s, 0), 1e-3, 1e-6, "no warmup: step 0 at lr");
    lr_decay_kind k;
    CHECK(lr_decay_parse("cosine", &k) == HALO_OK && k == LR_COSINE, "parse cosine");
    CHECK(lr_decay_parse("bogus", &k) == HALO_ERR && strstr(halo_error(), "bogus"), "bad schedule name refused: %s", halo_error());
}

static void test_clip(void) {
    enum { N = 100003 };
    float *g = malloc(N * sizeof(float)), *h = malloc(N * sizeof(float));
    unsigned long long s = 7;
    double ref = 0;
    for (size_t i = 0; i < N; i++) { g[i] = (float)t_rand_normal(&s); ref += (double)g[i] * g[i]; }
    ref = sqrt(ref);
    memcpy(h, g, N * sizeof(float));
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    double n1 = grad_global_norm(g, N);
    omp_set_num_threads(2);
    double n2 = grad_global_norm(g, N);
    omp_set_num_threads(nt);
    CHECK_REL(n1, ref, 1e-12, "global norm vs float64");
    CHECK(n1 == n2, "global norm depends on the thread count: %.17g vs %.17g", n1, n2);
    double before = grad_clip_global_norm(g, N, 1e6f);
    CHECK(before == n1 && !memcmp(g, h, N * sizeof(float)), "norm below max: gradients untouched");
    before = grad_clip_global_norm(g, N, 10.0f);
    CHECK(before == n1, "clip returns the norm before clipping");
    CHECK_REL(grad_global_norm(g, N), 10.0 * n1 / (n1 + 1e-6), 1e-6, "norm after clipping = max_norm");
    double worst = 0;
    for (size_t i = 0; i < N; i++) worst = fmax(worst, fabs(g[i] - h[i] * 10.0 / (n1 + 1e-6)) / (fabs(h[i]) + 1e-30));
    CHECK(worst < 1e-6, "clipped gradients are the originals scaled (rel err %.3g)", worst);
    free(g); free(h);
}

static void test_sampling(void) {
    enum { V = 5 };
    const float logits0[V] = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f};
    float l[V];
    int32_t work[V];
    gen_options o = gen_options_default();
    halo_rng r;
    halo_rng_seed(&r, 1);
    memcpy(l, logits0, sizeof l);
    CHECK(gen_pick_token(l, V, &o, &r, work) == 1, "greedy picks the first maximum");
    o.temperature = 0.7f; o.top_k = 1;
    memcpy(l, logits0, sizeof l);
    CHECK(gen_pick_token(l, V, &o, &r, work) == 1, "top_k 1 equals greedy");
    // Temperature 0.5 sampling: frequencies follow softmax(logits / 0.5).
    o.temperature = 0.5f; o.top_k = 0; o.top_p = 1;
    double p[V], z = 0;
    for (int i = 0; i < V; i++) z += p[i] = exp(logits0[i] / 0.5);
    for (int i = 0; i < V; i++) p[i] /= z;
    enum { DRAWS = 200000 };
    int cnt[V] = {0};
    for (int k = 0; k < DRAWS; k++) { memcpy(l, logits0, sizeof l); cnt[gen_pick_token(l, V, &o, &r, work)]++; }
    double worst = 0;
    for (int i = 0; i < V; i++) {
        double sd = sqrt(p[i] * (1 - p[i]) / DRAWS) + 1e-12;
        worst = fmax(worst, fabs(cnt[i] / (double)DRAWS - p[i]) / sd);
    }
    CHECK(worst < 5, "temperature sampling frequencies off softmax by %.2f sigma", worst);
    // top_k 2 keeps the two 3.0 logits at 1/2 each; top_p 0.5 of {e^3,e^3,e^2,e^1,e^-1}/Z keeps tokens 1 and 3
    // (the first alone has 0.42 < 0.5).
    o.temperature = 1; o.top_k = 2;
    memset(cnt, 0, sizeof cnt);
    for (int k = 0; k < 20000; k++) { memcpy(l, logits0, sizeof l); cnt[gen_pick_token(l, V, &o, &r, work)]++; }
    CHECK(cnt[0] == 0 && cnt[2] == 0 && cnt[4] == 0 && abs(cnt[1] - 10000) < 500, "top_k 2: counts %d %d %d %d %d",
          cnt[0], cnt[1], cnt[2], cnt[3], cnt[4]);
    o.top_k = 0; o.top_p = 0.5f;
    memset(cnt, 0, sizeof cnt);
    for (int k = 0; k < 20000; k++) { memcpy(l, logits0, sizeof l); cnt[gen_pick_token(l, V, &o, &r, work)]++; }
    CHECK(cnt[0] == 0 && cnt[2] == 0 && cnt[4] == 0 && cnt[1] > 0 && cnt[3] > 0, "top_p 0.5: counts %d %d %d %d %d",
          cnt[0], cnt[1], cnt[2], cnt[3], cnt[4]);
    // Same seed, same draws.
    halo_rng r1, r2;
    halo_rng_seed(&r1, 99); halo_rng_seed(&r2, 99);
    o.top_p = 1;
    int same = 1;
    for (int k = 0; k < 100; k++) {
        float a[V], b[V];
        memcpy(a, logits0, sizeof a); memcpy(b, logits0, sizeof b);
        same &= gen_pick_token(a, V, &o, &r1, work) == gen_pick_token(b, V, &o, &r2, work);
    }
    CHECK(same, "sampling with the same seed repeats");
}

static void test_addition_task(void) {
    int32_t tok[14];
    add_encode(3, 42, 917, tok);
    const char *want = "240+719=9590";
    int ok = tok[0] == ADD_BOS && tok[13] == ADD_EOS;
    for (int i = 0; i < 12; i++) ok &= tok[1 + i] == want[i];
    CHECK(ok, "encoding of 42 + 917");
    add_task t;
    add_task_init(&t, 3, 50);
    int held = 1;
    for (int i = 0; i < 50; i++) held &= add_is_heldout(t.eval_a[i], t.eval_b[i]);
    CHECK(held, "evaluation pairs are all held out");
    halo_batch b;
    halo_batch_alloc(&b, 16, add_seq_len(3) - 1);
    train_data_source src = add_task_source(&t);
    train_data_state st = {.rng = 5};
    src.set_state(&t, &st);
    int leak = 0, masks = 1, sums = 1;
    for (int k = 0; k < 50; k++) {
        CHECK(src.next(&t, &b) == HALO_OK, "next batch");
        for (int r = 0; r < b.B; r++) {
            const int32_t *x = b.input_ids + r * b.T, *y = b.targets + r * b.T;
            long a = (x[3] - '0') * 100 + (x[2] - '0') * 10 + (x[1] - '0'), c = (x[7] - '0') * 100 + (x[6] - '0') * 10 + (x[5] - '0');
            leak += add_is_heldout(a, c);
            for (int i = 0; i < b.T; i++) masks &= (i < 8) ? y[i] == -1 : y[i] >= 0;   // '=' sits at 8
            long s = 0;
            for (int i = 3; i >= 0; i--) s = s * 10 + (y[8 + i] - '0');
            sums &= s == a + c && y[b.T - 1] == ADD_EOS;
        }
    }
    CHECK(leak == 0, "%d held-out pairs leaked into training batches", leak);
    CHECK(masks, "loss only on the answer digits and EOS");
    CHECK(sums, "targets spell the reversed sum");
    train_data_state s1;
    src.get_state(&t, &s1);
    CHECK(s1.position == 50 && s1.rng != 5, "data state advances (position %lld)", (long long)s1.position);
    halo_batch_free(&b);
    add_task_free(&t);
}

// Four fixed rows with 30, 3, 12 and 1 loss tokens (the rest -1): a source that hands out `rows_per` of them a call.
typedef struct { int rows_per, next; } fixed_rows;
static int fixed_next(void *ctx, halo_batch *b) {
    fixed_rows *f = ctx;
    static const int keep[4] = {30, 3, 12, 1};
    for (int r = 0; r < b->B; r++, f->next++) {
        const int row = f->next % 4;
        unsigned long long s = 1000 + row;
        for (int i = 0; i < b->T; i++) {
            const size_t k = (size_t)r * b->T + i;
            b->input_ids[k] = (int32_t)(t_rand_uniform(&s) * 60) + 3;
            b->targets[k] = i >= b->T - keep[row] ? (int32_t)(t_rand_uniform(&s) * 60) + 3 : -1;
            b->pos[k] = i;
            b->seg[k] = 0;
        }
    }
    return HALO_OK;
}

// One step over the four rows as one batch of 4 and as 2 or 4 accumulated micro-batches: the same loss and the same
// gradients (lr 0 keeps the weights, so the gradients stay to compare). The unweighted mean of the micro-batches'
// mean losses differs by far more than the tolerance on these rows, so the check can tell.
static void test_grad_accum_weighting(void) {
    llama_config c = {0};
    c.vocab_size = 64; c.dim = 32; c.hidden_dim = 64; c.n_layers = 2; c.n_heads = 4; c.n_kv_heads = 2;
    c.head_dim = 8; c.max_pos = 64; c.norm_eps = 1e-5f; c.rope_theta = 10000; c.bos_id = 1; c.eos_id = 2;
    float loss[3], *grads[3];
    double naive = 0;
    size_t n = 0;
    static const int accum[3] = {1, 2, 4};
    for (int k = 0; k < 3; k++) {
        llama_model m;
        llama_init(&m, &c);
        llama_init_random(&m, 9);
        train_options o = train_options_default();
        o.steps = 1; o.batch_size = 4 / accum[k]; o.grad_accum = accum[k]; o.seq_len = 32; o.lr = 0; o.min_lr = 0;
        o.warmup = 0; o.clip = 0; o.log_every = 0;
        fixed_rows src = {0};
        trainer t;
        train_step_info si = {0};
        CHECK(trainer_init(&t, &m, &o, (train_data_source){&src, fixed_next, NULL, NULL}) == HALO_OK &&
              trainer_step(&t, &si) == HALO_OK, "accumulation %d: %s", accum[k], halo_error());
        loss[k] = si.loss;
        n = m.n_params;
        grads[k] = malloc(4 * n);
        memcpy(grads[k], m.grads, 4 * n);
        if (k == 2) {   // the mean of the four rows' own mean losses, what unweighted accumulation reports
            halo_batch b;
            halo_batch_alloc(&b, 1, 32);
            fixed_rows one = {0};
            for (int r = 0; r < 4; r++) { fixed_next(&one, &b); naive += llama_forward(&m, &b, NULL) / 4; }
            halo_batch_free(&b);
        }
        trainer_free(&t);
        llama_free(&m);
    }
    for (int k = 1; k < 3; k++) {
        double d = 0, r = 0;
        for (size_t i = 0; i < n; i++) { d += pow(grads[k][i] - grads[0][i], 2); r += pow(grads[0][i], 2); }
        CHECK(sqrt(d / r) <= 1e-5 && fabs(loss[k] - loss[0]) <= 1e-5 * loss[0],
              "accumulation %d vs one batch: gradient rel err %.3g, loss %.7f vs %.7f", accum[k], sqrt(d / r), loss[k],
              loss[0]);
        printf("grad accumulation %d x %d rows vs 1 x 4: gradient rel err %.2g, loss %.7f vs %.7f\n", accum[k],
               4 / accum[k], sqrt(d / r), loss[k], loss[0]);
    }
    CHECK(fabs(naive - loss[0]) > 1e-3 * loss[0], "unweighted mean of means %.6f vs token mean %.6f: the rows do not "
          "tell the two apart", naive, loss[0]);
    for (int k = 0; k < 3; k++) free(grads[k]);
}

int main(void) {
    test_adamw_vs_reference(0, 0.0f);
    test_adamw_vs_reference(0, 0.1f);
    test_adamw_vs_reference(1, 0.1f);
    test_adamw_no_decay();
    test_schedule();
    test_clip();
    test_sampling();
    test_addition_task();
    test_grad_accum_weighting();
    TEST_END();
}
