// The addition task of `halo demo` (see task_addition.h): example encoding, the seeded training stream as a
// trainer data source, and greedy exact-match evaluation on held-out pairs.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "train/generate.h"
#include "train/rng.h"
#include "train/task_addition.h"
#include "util/error.h"

static uint64_t pow10u(int d) { uint64_t p = 1; while (d-- > 0) p *= 10; return p; }

int add_seq_len(int digits) { return 3 * digits + 5; }
int add_prompt_len(int digits) { return 2 * digits + 3; }

int add_is_heldout(uint64_t a, uint64_t b) {
    halo_rng r = {a * 0x9E3779B97F4A7C15ULL ^ (b + 0x1234567ULL)};
    return halo_rng_next(&r) % 10 == 0;   // one pair in ten is never trained on
}

void add_encode(int D, uint64_t a, uint64_t b, int32_t *tok) {
    int k = 0;
    tok[k++] = ADD_BOS;
    for (int i = 0; i < D; i++) tok[k++] = '0' + (int)(a / pow10u(i) % 10);
    tok[k++] = '+';
    for (int i = 0; i < D; i++) tok[k++] = '0' + (int)(b / pow10u(i) % 10);
    tok[k++] = '=';
    uint64_t s = a + b;
    for (int i = 0; i <= D; i++) { tok[k++] = '0' + (int)(s % 10); s /= 10; }
    tok[k++] = ADD_EOS;
}

void add_task_init(add_task *t, int digits, int n_eval) {
    memset(t, 0, sizeof *t);
    t->digits = digits;
    t->n_eval = n_eval;
    t->eval_a = xmalloc((size_t)(n_eval ? n_eval : 1) * sizeof(uint64_t));
    t->eval_b = xmalloc((size_t)(n_eval ? n_eval : 1) * sizeof(uint64_t));
    halo_rng r;
    halo_rng_seed(&r, 0xE7A1 + (uint64_t)digits);
    uint64_t lim = pow10u(digits);
    for (int i = 0; i < n_eval;) {
        uint64_t a = halo_rng_below(&r, lim), b = halo_rng_below(&r, lim);
        if (add_is_heldout(a, b)) { t->eval_a[i] = a; t->eval_b[i] = b; i++; }
    }
}

void add_task_free(add_task *t) { free(t->eval_a); free(t->eval_b); memset(t, 0, sizeof *t); }

int add_next_batch(add_task *t, halo_batch *b) {
    const int D = t->digits, L = add_seq_len(D), T = L - 1, P = add_prompt_len(D);
    if (b->T != T) return halo_fail("addition task with %d digits needs seq_len %d, got %d", D, T, b->T);
    halo_rng r = {t->rng};
    uint64_t lim = pow10u(D);
    int32_t tok[3 * ADD_MAX_DIGITS + 5];
    for (int row = 0; row < b->B; row++) {
        uint64_t a, c;
        do { a = halo_rng_below(&r, lim); c = halo_rng_below(&r, lim); } while (add_is_heldout(a, c));
        add_encode(D, a, c, tok);
        for (int i = 0; i < T; i++) {
            size_t k = (size_t)row * T + i;
            b->input_ids[k] = tok[i];
            // Position i predicts tok[i+1]; only the answer digits and EOS (tokens P.. L-1) carry loss.
            b->targets[k] = i + 1 >= P ? tok[i + 1] : -1;
            if (b->pos) b->pos[k] = i;
            if (b->seg) b->seg[k] = 0;
        }
    }
    t->rng = r.s;
    t->position++;
    return HALO_OK;
}

static int src_next(void *ctx, halo_batch *b) { return add_next_batch(ctx, b); }
static void src_get(void *ctx, train_data_state *st) {
    add_task *t = ctx;
    st->epoch = 0; st->position = t->position; st->rng = t->rng;
}
static int src_set(void *ctx, const train_data_state *st) {
    add_task *t = ctx;
    t->position = st->position; t->rng = st->rng;
    return HALO_OK;
}
train_data_source add_task_source(add_task *t) {
    return (train_data_source){.ctx = t, .next = src_next, .get_state = src_get, .set_state = src_set};
}

// "042+917=959" style rendering of a generated answer (digits back in reading order; '?' for a non-digit).
static void render(int D, const int32_t *ans, int n, char *buf) {
    int k = 0;
    for (int i = (n < D + 1 ? n : D + 1) - 1; i >= 0; i--) buf[k++] = ans[i] >= '0' && ans[i] <= '9' ? (char)ans[i] : '?';
    buf[k] = 0;
}

static int evaluate(add_task *t, llama_model *m, double *accuracy, int show) {
    const int D = t->digits, P = add_prompt_len(D);
    int32_t tok[3 * ADD_MAX_DIGITS + 5], out[ADD_MAX_DIGITS + 2];
    gen_options go = gen_options_default();
    go.max_new_tokens = D + 2;
    go.eos_id = ADD_EOS;
    int correct = 0;
    for (int i = 0; i < t->n_eval; i++) {
        add_encode(D, t->eval_a[i], t->eval_b[i], tok);
        int n;
        if (gen_generate(m, tok, P, &go, out, &n)) return HALO_ERR;
        int ok = n == D + 2 && !memcmp(out, tok + P, (size_t)(D + 2) * sizeof(int32_t));
        correct += ok;
        if (i < show) {
            char want[16], got[16];
            render(D, tok + P, D + 1, want);
            render(D, out, n, got);
            printf("  %0*llu + %0*llu = %s   model: %s  %s\n", D, (unsigned long long)t->eval_a[i], D,
                   (unsigned long long)t->eval_b[i], want, got, ok ? "ok" : "wrong");
        }
    }
    *accuracy = t->n_eval ? (double)correct / t->n_eval : 0;
    return HALO_OK;
}

int add_evaluate(add_task *t, llama_model *m, double *accuracy) { return evaluate(t, m, accuracy, t->show); }

int add_eval_callback(void *ctx, llama_model *m, int step, train_metrics *out) {
    add_task *t = ctx;
    int show = !t->show_at_step || step == t->show_at_step ? t->show : 0;
    if (show) printf("held-out examples after step %d (numbers in reading order):\n", step);
    if (evaluate(t, m, &t->last_accuracy, show)) return HALO_ERR;
    train_metrics_add(out, "accuracy", t->last_accuracy);
    return HALO_OK;
}
