// AdamW, gradient clipping and the learning-rate schedule on the CPU. Every loop is element-wise or reduces in a
// fixed order, so results do not depend on the OpenMP thread count.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "train/adamw.h"
#include "util/error.h"

#define ADAMW_CHUNK 32768

adamw_config adamw_config_default(void) {
    return (adamw_config){.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1, .decay_all = 0};
}

static void chunks_push(adamw_state *s, int *cap, size_t off, size_t n, int decay, size_t moff) {
    for (size_t i = 0; i < n; i += ADAMW_CHUNK) {
        if (s->n_chunks == *cap) { *cap = *cap ? 2 * *cap : 64; s->chunks = xrealloc(s->chunks, (size_t)*cap * sizeof *s->chunks); }
        size_t k = n - i < ADAMW_CHUNK ? n - i : ADAMW_CHUNK;
        s->chunks[s->n_chunks++] = (adamw_chunk){off + i, k, decay, moff + i};
    }
}

void adamw_init_owned(adamw_state *s, const adamw_config *cfg, size_t n, const llama_param *table, int n_table,
                      const size_t *off, const size_t *len, int n_ranges) {
    memset(s, 0, sizeof *s);
    s->cfg = *cfg;
    s->n = n;
    for (int r = 0; r < n_ranges; r++) s->n_owned += len[r];
    s->m = xcalloc(s->n_owned ? s->n_owned : 1, sizeof(float));
    s->v = xcalloc(s->n_owned ? s->n_owned : 1, sizeof(float));
    // Per-element decay flag from the table, then runs of equal flags become chunks (table order need not be
    // buffer order, and a tied lm_head has no range of its own).
    unsigned char *decay = xmalloc(n ? n : 1);
    memset(decay, 1, n);
    for (int i = 0; i < n_table && table; i++)
        if (table[i].no_decay && !cfg->decay_all) memset(decay + table[i].offset, 0, table[i].numel);
    int cap = 0;
    size_t moff = 0;
    for (int r = 0; r < n_ranges; r++) {
        const size_t end = off[r] + len[r];
        for (size_t i = off[r]; i < end;) {
            size_t j = i;
            while (j < end && decay[j] == decay[i]) j++;
            chunks_push(s, &cap, i, j - i, decay[i], moff);
            moff += j - i;
            i = j;
        }
    }
    free(decay);
}

void adamw_init(adamw_state *s, const adamw_config *cfg, size_t n, const llama_param *table, int n_table) {
    const size_t zero = 0;
    adamw_init_owned(s, cfg, n, table, n_table, &zero, &n, 1);
}

void adamw_free(adamw_state *s) {
    free(s->m); free(s->v); free(s->chunks);
    memset(s, 0, sizeof *s);
}

void adamw_step(adamw_state *s, float *params, const float *grads, double lr) {
    s->t += 1;
    const double b1 = s->cfg.beta1, b2 = s->cfg.beta2, eps = s->cfg.eps;
    // Scalars in double as torch computes them in Python floats.
    const double step_size = lr / (1.0 - pow(b1, (double)s->t));
    const double bc2_sqrt = sqrt(1.0 - pow(b2, (double)s->t));
    const double decay_mul = 1.0 - lr * s->cfg.weight_decay;
    float *m = s->m, *v = s->v;
    #pragma omp parallel for schedule(dynamic, 1)
    for (int c = 0; c < s->n_chunks; c++) {
        const adamw_chunk ch = s->chunks[c];
        const double dm = ch.decay ? decay_mul : 1.0;
        float *cm = m + ch.moff, *cv = v + ch.moff;   // the chunk's moments
        for (size_t i = ch.off, k = 0; i < ch.off + ch.n; i++, k++) {
            double g = grads[i];
            double mi = b1 * cm[k] + (1.0 - b1) * g;
            double vi = b2 * cv[k] + (1.0 - b2) * g * g;
            cm[k] = (float)mi;
            cv[k] = (float)vi;
            double p = params[i] * dm;
            params[i] = (float)(p - step_size * mi / (sqrt(vi) / bc2_sqrt + eps));
        }
    }
}

double grad_global_norm(const float *g, size_t n) {
    size_t nc = (n + ADAMW_CHUNK - 1) / ADAMW_CHUNK;
    double *part = xcalloc(nc ? nc : 1, sizeof(double));
    #pragma omp parallel for schedule(static)
    for (long c = 0; c < (long)nc; c++) {
        size_t lo = (size_t)c * ADAMW_CHUNK, hi = lo + ADAMW_CHUNK < n ? lo + ADAMW_CHUNK : n;
        double acc = 0;
        for (size_t i = lo; i < hi; i++) acc += (double)g[i] * g[i];
        part[c] = acc;
    }
    double total = 0;
    for (size_t c = 0; c < nc; c++) total += part[c];
    free(part);
    return sqrt(total);
}

double grad_clip_global_norm(float *g, size_t n, float max_norm) {
    double norm = grad_global_norm(g, n);
    if (max_norm > 0 && isfinite(norm)) {
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1.0) {
            float cf = (float)coef;
            #pragma omp parallel for schedule(static)
            for (long i = 0; i < (long)n; i++) g[i] *= cf;
        }
    }
    return norm;
}

double lr_schedule_at(const lr_schedule *s, int step) {
    if (step < s->warmup) return s->lr * (step + 1) / s->warmup;
    if (s->decay == LR_CONSTANT) return s->lr;
    int span = s->total - 1 - s->warmup;
    double p = span > 0 ? (double)(step - s->warmup) / span : 1.0;
    if (p > 1) p = 1;
    double f = s->decay == LR_COSINE ? 0.5 * (1.0 + cos(M_PI * p)) : 1.0 - p;
    return s->min_lr + (s->lr - s->min_lr) * f;
}

const char *lr_decay_name(lr_decay_kind k) {
    return k == LR_COSINE ? "cosine" : k == LR_LINEAR ? "linear" : "constant";
}

int lr_decay_parse(const char *s, lr_decay_kind *out) {
    if (!strcmp(s, "constant")) *out = LR_CONSTANT;
    else if (!strcmp(s, "cosine")) *out = LR_COSINE;
    else if (!strcmp(s, "linear")) *out = LR_LINEAR;
    else return halo_fail("unknown learning-rate schedule '%s' (constant, cosine or linear)", s);
    return HALO_OK;
}
