// Sharded optimizer state for data-parallel training (see trainer_dist.h).
#include <stdlib.h>
#include <string.h>
#include "dist/comm.h"
#include "model/lora.h"
#include "train/trainer_dist.h"
#include "util/error.h"

struct train_shard {
    int n;                       // trainable tensors
    size_t *off, *rows, *row_len;
    size_t *lo, *hi;             // this rank's rows of tensor i
    size_t *moff;                // where this rank's rows of tensor i start in t->opt's moments
    float *stage;                // gathers of tensors whose rows the ranks do not divide evenly
    size_t stage_cap;
};

static void shard_free(train_shard *s) {
    if (!s) return;
    free(s->off); free(s->rows); free(s->row_len); free(s->lo); free(s->hi); free(s->moff); free(s->stage);
    free(s);
}

void dist_shard_free(trainer *t) { shard_free(t->shard); t->shard = NULL; }

int dist_shard_init(trainer *t) {
    const int W = t->comm->world, R = t->comm->rank;
    llama_trainable p = llama_trainable_params(t->model);
    // the tensors must cover the parameter buffer once each (a tied lm_head has no entry of its own)
    size_t covered = 0;
    for (int i = 0; i < p.n_table; i++) covered += (size_t)p.table[i].numel;
    if (covered != p.n)
        return halo_fail("sharded optimizer: the %d tensors cover %zu of %zu parameters", p.n_table, covered, p.n);
    train_shard *s = xcalloc(1, sizeof *s);
    s->n = p.n_table;
    s->off = xcalloc((size_t)s->n, sizeof(size_t)); s->rows = xcalloc((size_t)s->n, sizeof(size_t));
    s->row_len = xcalloc((size_t)s->n, sizeof(size_t)); s->lo = xcalloc((size_t)s->n, sizeof(size_t));
    s->hi = xcalloc((size_t)s->n, sizeof(size_t)); s->moff = xcalloc((size_t)s->n, sizeof(size_t));
    size_t *roff = xcalloc((size_t)s->n, sizeof(size_t)), *rlen = xcalloc((size_t)s->n, sizeof(size_t));
    size_t moff = 0;
    for (int i = 0; i < s->n; i++) {
        const llama_param *q = &p.table[i];
        s->off[i] = (size_t)q->offset;
        s->rows[i] = q->ndim == 2 ? (size_t)q->shape[0] : (size_t)q->numel;
        s->row_len[i] = (size_t)q->numel / s->rows[i];
        halo_shard_range(s->rows[i], W, R, &s->lo[i], &s->hi[i]);
        roff[i] = s->off[i] + s->lo[i] * s->row_len[i];
        rlen[i] = (s->hi[i] - s->lo[i]) * s->row_len[i];
        s->moff[i] = moff;
        moff += rlen[i];
        size_t piece = halo_shard_chunk(s->rows[i], W) * s->row_len[i];
        if (piece * (size_t)W != (size_t)q->numel && piece * (size_t)(W + 1) > s->stage_cap) s->stage_cap = piece * (size_t)(W + 1);
    }
    s->stage = xmalloc(sizeof(float) * (s->stage_cap ? s->stage_cap : 1));
    adamw_state owned;
    adamw_init_owned(&owned, &t->opt.cfg, p.n, p.table, p.n_table, roff, rlen, s->n);
    owned.t = t->opt.t;
    free(roff); free(rlen);
    adamw_free(&t->opt);
    t->opt = owned;
    shard_free(t->shard);
    t->shard = s;
    return HALO_OK;
}

// dst (the tensor's whole rows) <- every rank's rows; mine: this rank's rows (may lie inside dst)
static int gather_tensor(trainer *t, int i, float *dst, const float *mine) {
    train_shard *s = t->shard;
    const int W = t->comm->world, R = t->comm->rank;
    const size_t piece = halo_shard_chunk(s->rows[i], W) * s->row_len[i];
    const size_t have = (s->hi[i] - s->lo[i]) * s->row_len[i], numel = s->rows[i] * s->row_len[i];
    if (piece * (size_t)W == numel) {   // in place: rank r's rows are exactly dst's r-th piece
        if (dst + (size_t)R * piece != mine) memcpy(dst + (size_t)R * piece, mine, sizeof(float) * have);
        return t->comm->allgather(t->comm, dst + (size_t)R * piece, dst, sizeof(float) * piece);
    }
    float *send = s->stage + (size_t)W * piece;
    memcpy(send, mine, sizeof(float) * have);
    memset(send + have, 0, sizeof(float) * (piece - have));
    if (t->comm->allgather(t->comm, send, s->stage, sizeof(float) * piece)) return HALO_ERR;
    memcpy(dst, s->stage, sizeof(float) * numel);
    return HALO_OK;
}

int dist_optimizer_step(trainer *t, double lr) {
    llama_trainable p = llama_trainable_params(t->model);
    adamw_step(&t->opt, p.params, p.grads, lr);
    train_shard *s = t->shard;
    for (int i = 0; i < s->n; i++) {
        float *w = p.params + s->off[i];
        if (gather_tensor(t, i, w, w + s->lo[i] * s->row_len[i]))
            return halo_fail_ctx("gathering %s after the optimizer step: ", p.table[i].name);
    }
    return HALO_OK;
}

int dist_gather_moments(trainer *t, adamw_state *full) {
    llama_trainable p = llama_trainable_params(t->model);
    adamw_init(full, &t->opt.cfg, p.n, p.table, p.n_table);
    full->t = t->opt.t;
    train_shard *s = t->shard;
    for (int i = 0; i < s->n; i++)
        if (gather_tensor(t, i, full->m + s->off[i], t->opt.m + s->moff[i]) ||
            gather_tensor(t, i, full->v + s->off[i], t->opt.v + s->moff[i])) {
            adamw_free(full);
            return halo_fail_ctx("gathering the optimizer moments of %s: ", p.table[i].name);
        }
    return HALO_OK;
}

void dist_take_moments(trainer *t, const adamw_state *full) {
    train_shard *s = t->shard;
    for (int i = 0; i < s->n; i++) {
        const size_t from = s->off[i] + s->lo[i] * s->row_len[i], k = (s->hi[i] - s->lo[i]) * s->row_len[i];
        memcpy(t->opt.m + s->moff[i], full->m + from, sizeof(float) * k);
        memcpy(t->opt.v + s->moff[i], full->v + from, sizeof(float) * k);
    }
    t->opt.t = full->t;
}
