// Sharded optimizer state for data-parallel training (see trainer_dist.h).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "dist/comm.h"
#include "model/linear.h"
#include "model/lora.h"
#include "train/trainer_dist.h"
#include "util/error.h"

struct train_shard {
    int n;                       // trainable tensors
    size_t *off, *rows, *row_len;
    size_t *lo, *hi;             // this rank's rows of tensor i
    size_t *moff;                // where this rank's rows of tensor i start in t->opt's moments
    unsigned char *stage;        // gathers (fp32 rows or code rows) of tensors whose rows the ranks do not divide evenly
    size_t stage_cap;            // bytes
    // weights gathered in 8 bits
    halo_linear **lin;           // [n] the HALO layer whose weight tensor i is (NULL: gathered in fp32)
    halo_qmat *codes;            // [n] its gathered weight operand
    float *amax;                 // scale-grid scratch
    size_t amax_cap;
    int poison;                  // NaN into the fp32 rows of other ranks after each step (tests)
    int stale;                   // the fp32 rows of HALO weights owned by other ranks are out of date
};

static void shard_free(train_shard *s) {
    if (!s) return;
    for (int i = 0; s->codes && i < s->n; i++) halo_qmat_free(&s->codes[i]);
    free(s->lin); free(s->codes); free(s->amax);
    free(s->off); free(s->rows); free(s->row_len); free(s->lo); free(s->hi); free(s->moff); free(s->stage);
    free(s);
}

// Tensor i: where this rank's rows start in the parameter buffer, how many elements they are, and the elements of
// one rank's share (the last ranks' shares may be shorter or empty).
static size_t own_off(const train_shard *s, int i) { return s->off[i] + s->lo[i] * s->row_len[i]; }
static size_t own_len(const train_shard *s, int i) { return (s->hi[i] - s->lo[i]) * s->row_len[i]; }
static size_t share_len(const train_shard *s, int i, int world) { return halo_shard_chunk(s->rows[i], world) * s->row_len[i]; }

// The HALO layers quantize their fp32 weights again (after a resume loaded them, and when the trainer is done).
void dist_drop_codes(trainer *t) {
    train_shard *s = t->shard;
    if (s) s->stale = 0;   // callers: the fp32 weights were just loaded whole, or are no longer trained
    for (int i = 0; s && i < s->n; i++)
        if (s->lin[i]) halo_linear_set_weight_codes(s->lin[i], NULL);
}

void dist_shard_free(trainer *t) {
    dist_drop_codes(t);
    shard_free(t->shard);
    t->shard = NULL;
}

int dist_shard_gathers_8bit(const trainer *t) {
    for (int i = 0; t->shard && i < t->shard->n; i++)
        if (t->shard->lin[i]) return 1;
    return 0;
}

// The HALO layer whose weight a trainable tensor is ("model.layers.L.<linear>.weight"), or NULL.
static halo_linear *halo_layer_of_tensor(llama_model *m, const char *name) {
    if (m->lora) return NULL;   // the trainable tensors are the adapters
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int k = 0; k < LIN_COUNT; k++) {
            char want[192];
            model_halo_layer_name(want, sizeof want, l, k);
            size_t n = strlen(want);
            if (!strncmp(name, want, n) && !strcmp(name + n, ".weight")) return llama_halo_layer(m, l, k);
        }
    return NULL;
}

int dist_shard_init(trainer *t, const train_dist_options *d) {
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
        roff[i] = own_off(s, i);
        rlen[i] = own_len(s, i);
        s->moff[i] = moff;
        moff += rlen[i];
        const size_t piece = share_len(s, i, W);   // staged gathers: W + 1 shares (fp32; code rows need less)
        if (piece * (size_t)W != (size_t)q->numel && sizeof(float) * piece * (size_t)(W + 1) > s->stage_cap)
            s->stage_cap = sizeof(float) * piece * (size_t)(W + 1);
    }
    s->stage = xmalloc(s->stage_cap ? s->stage_cap : 1);
    s->lin = xcalloc((size_t)s->n, sizeof *s->lin);
    s->codes = xcalloc((size_t)s->n, sizeof *s->codes);
    s->poison = d->poison_unowned;
    int n8 = 0;
    for (int i = 0; d->gather_8bit && i < s->n; i++) {
        halo_linear *L = halo_layer_of_tensor(t->model, p.table[i].name);
        if (!L || (L->cfg.prec != HALO_PREC_INT8 && L->cfg.prec != HALO_PREC_FP8)) continue;
        if (!(L->cfg.gran == HALO_GRAN_TENSOR || L->cfg.gran == HALO_GRAN_BLOCK128)) {
            shard_free(s); free(roff); free(rlen);
            return halo_fail("weights gathered in 8 bits (--gather-8bit): %s has per-row or 1xB scales, whose "
                             "input-gradient product needs the fp32 weight; use per-tensor or 128x128 scales "
                             "(--halo-scale tensor or block128)", L->name);
        }
        s->lin[i] = L;
        n8++;
        const size_t grid = halo_linear_weight_grid_len(L, (int)s->rows[i], (int)s->row_len[i]);
        if (grid > s->amax_cap) s->amax_cap = grid;
    }
    if (d->gather_8bit && !n8) {
        shard_free(s); free(roff); free(rlen);
        return halo_fail("weights gathered in 8 bits (--gather-8bit): the model has no trainable INT8/FP8 HALO weight "
                         "(set --precision int8 or fp8; LoRA trains only its adapters)");
    }
    s->amax = xmalloc(sizeof(float) * (s->amax_cap ? s->amax_cap : 1));
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

// dst[numel] (a tensor's whole rows, elements of es bytes) <- every rank's rows; mine: this rank's `have` elements
// (may lie inside dst), piece: the elements of a rank's share. When the pieces tile the tensor exactly, in place (rank
// r's rows are dst's r-th piece); else through stage (W + 1 pieces: the gathered ones, then this rank's zero-padded).
static int gather_rows(halo_comm *c, void *dst, const void *mine, size_t es, size_t piece, size_t have, size_t numel,
                       void *stage) {
    const size_t W = (size_t)c->world, R = (size_t)c->rank;
    if (piece * W == numel) {
        unsigned char *at = (unsigned char *)dst + R * piece * es;
        if (at != mine) memcpy(at, mine, es * have);
        return c->allgather(c, at, dst, es * piece);
    }
    unsigned char *send = (unsigned char *)stage + W * piece * es;
    memcpy(send, mine, es * have);
    memset(send + es * have, 0, es * (piece - have));
    if (c->allgather(c, send, stage, es * piece)) return HALO_ERR;
    memcpy(dst, stage, es * numel);
    return HALO_OK;
}

// dst (tensor i's whole rows) <- every rank's rows; mine: this rank's rows (may lie inside dst)
static int gather_tensor(trainer *t, int i, float *dst, const float *mine) {
    train_shard *s = t->shard;
    return gather_rows(t->comm, dst, mine, sizeof(float), share_len(s, i, t->comm->world), own_len(s, i),
                       s->rows[i] * s->row_len[i], s->stage);
}

// A HALO weight's operand from the ranks' rows: the scale grid reduced over the ranks, each rank's rows rotated and
// quantized, the code rows gathered (1 byte a weight), handed to the layer.
static int gather_codes(trainer *t, int i, const float *w) {
    train_shard *s = t->shard;
    halo_linear *L = s->lin[i];
    const int n = (int)s->rows[i], m = (int)s->row_len[i], lo = (int)s->lo[i], hi = (int)s->hi[i];
    const size_t grid = halo_linear_weight_grid_len(L, n, m);
    const float *mine = w + (size_t)lo * m;
    halo_qmat *q = &s->codes[i];
    if (halo_linear_weight_amax(L, mine, lo, hi, n, m, s->amax) ||
        t->comm->allreduce(t->comm, s->amax, grid, HALO_F32, HALO_MAX) ||
        halo_linear_weight_codes(L, mine, lo, hi, n, m, s->amax, q))
        return HALO_ERR;
    if (gather_rows(t->comm, q->q, q->q + (size_t)lo * m, 1, share_len(s, i, t->comm->world), own_len(s, i),
                    (size_t)n * m, s->stage))
        return HALO_ERR;
    return halo_linear_set_weight_codes(L, q);
}

int dist_optimizer_step(trainer *t, double lr) {
    llama_trainable p = llama_trainable_params(t->model);
    adamw_step(&t->opt, p.params, p.grads, lr);
    train_shard *s = t->shard;
    for (int i = 0; i < s->n; i++) {
        float *w = p.params + s->off[i];
        if (s->lin[i]) {
            if (gather_codes(t, i, w)) return halo_fail_ctx("gathering %s in 8 bits after the optimizer step: ", p.table[i].name);
            s->stale = 1;
            if (s->poison)   // no product may read another rank's fp32 rows now
                for (size_t k = 0; k < s->rows[i] * s->row_len[i]; k++)
                    if (k < s->lo[i] * s->row_len[i] || k >= s->hi[i] * s->row_len[i]) w[k] = NAN;
        } else if (gather_tensor(t, i, w, p.params + own_off(s, i)))
            return halo_fail_ctx("gathering %s after the optimizer step: ", p.table[i].name);
    }
    return HALO_OK;
}

int dist_sync_weights(trainer *t) {
    train_shard *s = t->shard;
    if (!s || !s->stale) return HALO_OK;
    llama_trainable p = llama_trainable_params(t->model);
    for (int i = 0; i < s->n; i++) {
        if (!s->lin[i]) continue;
        if (gather_tensor(t, i, p.params + s->off[i], p.params + own_off(s, i)))
            return halo_fail_ctx("gathering the fp32 rows of %s: ", p.table[i].name);
    }
    s->stale = 0;
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
        memcpy(t->opt.m + s->moff[i], full->m + own_off(s, i), sizeof(float) * own_len(s, i));
        memcpy(t->opt.v + s->moff[i], full->v + own_off(s, i), sizeof(float) * own_len(s, i));
    }
    t->opt.t = full->t;
}
