// The BPE engine and its supporting pieces: UTF-8 helpers, hash maps for vocab (string -> id) and merges
// ((left, right) -> (rank, merged id)), and the merge loop, which follows HF tokenizers' Word::merge_all exactly:
// a min-heap on (rank, position), stale entries skipped, so the lowest-ranked pair merges first, leftmost on ties.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tokenizer/tok_internal.h"
#include "util/error.h"

// ---------------------------------------------------------------- UTF-8
int tok_utf8_next(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    int len; uint32_t v; unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; v = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else { *cp = TOK_BAD_CP; return 1; }
    if ((size_t)len > n) { *cp = TOK_BAD_CP; return 1; }
    for (int i = 1; i < len; i++) {
        unsigned d = s[i];
        if (d < lo || d > hi) { *cp = TOK_BAD_CP; return 1; }
        lo = 0x80; hi = 0xBF;
        v = (v << 6) | (d & 0x3F);
    }
    *cp = v;
    return len;
}

int tok_utf8_put(uint32_t cp, char *o) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

bool tok_is_whitespace(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

void tok_buf_put(tok_buf *b, const void *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2 + 64;
        b->p = xrealloc(b->p, b->cap);
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

void tok_buf_lossy(tok_buf *b, const unsigned char *s, size_t n) {
    static const char fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};
    size_t i = 0;
    while (i < n) {
        size_t run = i;   // copy maximal valid runs in one go
        uint32_t cp;
        while (run < n) {
            int k = tok_utf8_next(s + run, n - run, &cp);
            if (cp == TOK_BAD_CP) break;
            run += (size_t)k;
        }
        if (run > i) tok_buf_put(b, s + i, run - i);
        i = run;
        if (i >= n) break;
        // s[i] starts an ill-formed subsequence: consume its maximal prefix that could start a valid sequence
        unsigned c = s[i]; size_t len = 1; unsigned lo = 0x80, hi = 0xBF; size_t need = 0;
        if (c >= 0xC2 && c <= 0xDF) need = 2;
        else if (c >= 0xE0 && c <= 0xEF) { need = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
        else if (c >= 0xF0 && c <= 0xF4) { need = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
        while (len < need && i + len < n && s[i + len] >= lo && s[i + len] <= hi) { len++; lo = 0x80; hi = 0xBF; }
        tok_buf_put(b, fffd, 3);
        i += len;
    }
    if (!b->p) tok_buf_put(b, "", 0);
}

// ---------------------------------------------------------------- hashing
uint64_t tok_hash(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0x243F6A8885A308D3ULL ^ (n * 0x9E3779B97F4A7C15ULL);
    while (n >= 8) {
        uint64_t w; memcpy(&w, s, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ULL; h ^= h >> 29;
        s += 8; n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0x94D049BB133111EBULL; h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ULL; h ^= h >> 32;
    return h;
}

static size_t pow2_at_least(size_t n) { size_t c = 16; while (c < n) c <<= 1; return c; }

void tok_strmap_init(tok_strmap *m, size_t expected) {
    size_t cap = pow2_at_least(expected * 2 + 1);
    m->slot = xmalloc(cap * sizeof *m->slot);
    for (size_t i = 0; i < cap; i++) m->slot[i] = (tok_strslot){NULL, 0, -1};
    m->mask = cap - 1;
    m->count = 0;
}
void tok_strmap_free(tok_strmap *m) { free(m->slot); memset(m, 0, sizeof *m); }

static void strmap_insert(tok_strmap *m, tok_strslot x) {
    size_t i = (size_t)tok_hash(x.s, x.len) & m->mask;
    while (m->slot[i].id >= 0) i = (i + 1) & m->mask;
    m->slot[i] = x;
    m->count++;
}

int32_t tok_strmap_put(tok_strmap *m, char *const *strs, const uint32_t *lens, int32_t id) {
    if ((m->count + 1) * 2 > m->mask + 1) {
        tok_strmap n;
        tok_strmap_init(&n, m->mask + 1);
        for (size_t i = 0; i <= m->mask; i++) if (m->slot[i].id >= 0) strmap_insert(&n, m->slot[i]);
        tok_strmap_free(m);
        *m = n;
    }
    const char *s = strs[id]; uint32_t len = lens[id];
    size_t i = (size_t)tok_hash(s, len) & m->mask;
    while (m->slot[i].id >= 0) {
        tok_strslot *o = &m->slot[i];
        if (o->len == len && !memcmp(o->s, s, len)) {
            int32_t old = o->id;
            *o = (tok_strslot){s, len, id};
            return old;
        }
        i = (i + 1) & m->mask;
    }
    m->slot[i] = (tok_strslot){s, len, id};
    m->count++;
    return -1;
}

int32_t tok_strmap_get(const tok_strmap *m, char *const *strs, const uint32_t *lens, const char *s, size_t n) {
    (void)strs; (void)lens;
    size_t i = (size_t)tok_hash(s, n) & m->mask;
    for (;;) {
        const tok_strslot *o = &m->slot[i];
        if (o->id < 0) return -1;
        if (o->len == n && !memcmp(o->s, s, n)) return o->id;
        i = (i + 1) & m->mask;
    }
}

void tok_mergemap_init(tok_mergemap *m, size_t expected) {
    size_t cap = pow2_at_least(expected * 4 / 3 + 1);   // load factor kept at or below 3/4
    m->slot = xmalloc(cap * sizeof *m->slot);
    for (size_t i = 0; i < cap; i++) m->slot[i].key = UINT64_MAX;
    m->mask = cap - 1;
    m->count = 0;
}
void tok_mergemap_free(tok_mergemap *m) { free(m->slot); memset(m, 0, sizeof *m); }

static void merge_insert(tok_mergemap *m, uint64_t key, int32_t rank, int32_t new_id) {
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 32) & m->mask;
    while (m->slot[i].key != UINT64_MAX && m->slot[i].key != key) i = (i + 1) & m->mask;
    if (m->slot[i].key == UINT64_MAX) m->count++;
    m->slot[i].key = key; m->slot[i].rank = rank; m->slot[i].new_id = new_id;
}

void tok_mergemap_put(tok_mergemap *m, int32_t a, int32_t b, int32_t rank, int32_t new_id) {
    if ((m->count + 1) * 4 > (m->mask + 1) * 3) {
        tok_mergemap n;
        tok_mergemap_init(&n, m->mask + 1);
        for (size_t i = 0; i <= m->mask; i++)
            if (m->slot[i].key != UINT64_MAX) merge_insert(&n, m->slot[i].key, m->slot[i].rank, m->slot[i].new_id);
        tok_mergemap_free(m);
        *m = n;
    }
    merge_insert(m, ((uint64_t)(uint32_t)a << 32) | (uint32_t)b, rank, new_id);
}

// ---------------------------------------------------------------- BPE
void tok_ivec_push(tok_ivec *v, int32_t x) {
    if (v->n == v->cap) { v->cap = v->cap ? v->cap * 2 : 64; v->p = xrealloc(v->p, v->cap * sizeof *v->p); }
    v->p[v->n++] = x;
}

typedef struct { int32_t id, prev, next; bool alive; } bpe_sym;
typedef struct { int32_t rank, pos, new_id; } bpe_merge;
struct tok_bpe_scratch {
    bpe_sym *sym; size_t sym_cap;
    bpe_merge *heap; size_t heap_n, heap_cap;
};

tok_bpe_scratch *tok_bpe_scratch_new(void) { return xcalloc(1, sizeof(tok_bpe_scratch)); }
void tok_bpe_scratch_free(tok_bpe_scratch *s) { if (s) { free(s->sym); free(s->heap); free(s); } }

static inline bool merge_less(const bpe_merge *a, const bpe_merge *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}
static void heap_push(tok_bpe_scratch *sc, bpe_merge m) {
    if (sc->heap_n == sc->heap_cap) {
        sc->heap_cap = sc->heap_cap ? sc->heap_cap * 2 : 64;
        sc->heap = xrealloc(sc->heap, sc->heap_cap * sizeof *sc->heap);
    }
    size_t i = sc->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!merge_less(&m, &sc->heap[p])) break;
        sc->heap[i] = sc->heap[p];
        i = p;
    }
    sc->heap[i] = m;
}
static bpe_merge heap_pop(tok_bpe_scratch *sc) {
    bpe_merge top = sc->heap[0], last = sc->heap[--sc->heap_n];
    size_t i = 0, n = sc->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && merge_less(&sc->heap[c + 1], &sc->heap[c])) c++;
        if (!merge_less(&sc->heap[c], &last)) break;
        sc->heap[i] = sc->heap[c];
        i = c;
    }
    if (n) sc->heap[i] = last;
    return top;
}

static inline void sym_add(tok_bpe_scratch *sc, size_t *n, int32_t id) {
    if (*n == sc->sym_cap) {
        sc->sym_cap = sc->sym_cap ? sc->sym_cap * 2 : 256;
        sc->sym = xrealloc(sc->sym, sc->sym_cap * sizeof *sc->sym);
    }
    sc->sym[*n] = (bpe_sym){id, (int32_t)*n - 1, (int32_t)*n + 1, true};
    (*n)++;
}

// Per-thread direct-mapped cache of short words -> ids. Word frequencies are Zipfian, so most words hit here and
// skip the (cache-missing) vocab and merge table lookups. Entries are tagged with the tokenizer's generation.
#define WC_SLOTS 8192
#define WC_LEN 22
#define WC_IDS 6
typedef struct { uint64_t gen, hash; uint8_t len, nids; char w[WC_LEN]; int32_t ids[WC_IDS]; } wc_entry;
static _Thread_local wc_entry *tl_wc;

static void bpe_word_uncached(const halo_tokenizer *t, const char *s, size_t n, tok_ivec *out, tok_bpe_scratch *sc);

void tok_bpe_word(const halo_tokenizer *t, const char *s, size_t n, tok_ivec *out, tok_bpe_scratch *sc) {
    if (n == 0) return;
    if (n > WC_LEN) { bpe_word_uncached(t, s, n, out, sc); return; }
    if (!tl_wc) tl_wc = xcalloc(WC_SLOTS, sizeof *tl_wc);
    uint64_t h = tok_hash(s, n);
    wc_entry *e = &tl_wc[h & (WC_SLOTS - 1)];
    if (e->gen == t->gen && e->hash == h && e->len == n && !memcmp(e->w, s, n)) {
        for (int i = 0; i < e->nids; i++) tok_ivec_push(out, e->ids[i]);
        return;
    }
    size_t before = out->n;
    bpe_word_uncached(t, s, n, out, sc);
    size_t k = out->n - before;
    if (k <= WC_IDS) {
        e->gen = t->gen; e->hash = h; e->len = (uint8_t)n; e->nids = (uint8_t)k;
        memcpy(e->w, s, n);
        memcpy(e->ids, out->p + before, k * sizeof(int32_t));
    }
}

static void bpe_word_uncached(const halo_tokenizer *t, const char *s, size_t n, tok_ivec *out, tok_bpe_scratch *sc) {
    if (t->ignore_merges) {   // a pre-token that is itself a vocabulary entry is emitted whole
        int32_t id = tok_strmap_get(&t->vocab, t->pieces, t->piece_len, s, n);
        if (id >= 0) { tok_ivec_push(out, id); return; }
    }
    // Initial symbols: one per character (HF BPE::merge_word), with byte fallback and (fused) unk.
    const unsigned char *u = (const unsigned char *)s;
    size_t ns = 0;
    int32_t pend_unk = -1;   // an unk waiting to be emitted (fuse_unk accumulates into it)
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = tok_utf8_next(u + i, n - i, &cp);
        int32_t id = cp < 0x800 ? t->char_id[cp] : tok_strmap_get(&t->vocab, t->pieces, t->piece_len, s + i, (size_t)k);
        if (id >= 0) {
            if (pend_unk >= 0) { sym_add(sc, &ns, pend_unk); pend_unk = -1; }
            sym_add(sc, &ns, id);
        } else {
            bool fell_back = false;
            if (t->byte_fallback) {
                fell_back = true;
                for (int j = 0; j < k; j++) if (t->byte_id[u[i + j]] < 0) fell_back = false;
                if (fell_back) for (int j = 0; j < k; j++) sym_add(sc, &ns, t->byte_id[u[i + j]]);
            }
            if (!fell_back && t->unk_id >= 0) {
                if (pend_unk >= 0 && !t->fuse_unk) sym_add(sc, &ns, pend_unk);
                pend_unk = t->unk_id;
            }
        }
        i += (size_t)k;
    }
    if (pend_unk >= 0) sym_add(sc, &ns, pend_unk);
    if (ns == 0) return;
    sc->sym[ns - 1].next = -1;

    sc->heap_n = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
        const tok_merge_slot *m = tok_mergemap_get(&t->merges, sc->sym[i].id, sc->sym[i + 1].id);
        if (m) heap_push(sc, (bpe_merge){m->rank, (int32_t)i, m->new_id});
    }
    bpe_sym *sym = sc->sym;
    while (sc->heap_n) {
        bpe_merge top = heap_pop(sc);
        bpe_sym *cur = &sym[top.pos];
        if (!cur->alive || cur->next < 0) continue;
        int32_t nx = cur->next;
        const tok_merge_slot *m = tok_mergemap_get(&t->merges, cur->id, sym[nx].id);
        if (!m || m->new_id != top.new_id) continue;   // stale entry: the pair changed since it was queued
        cur->id = top.new_id;
        sym[nx].alive = false;
        cur->next = sym[nx].next;
        if (cur->next >= 0) sym[cur->next].prev = top.pos;
        if (cur->prev >= 0) {
            m = tok_mergemap_get(&t->merges, sym[cur->prev].id, cur->id);
            if (m) heap_push(sc, (bpe_merge){m->rank, cur->prev, m->new_id});
        }
        if (cur->next >= 0) {
            m = tok_mergemap_get(&t->merges, cur->id, sym[cur->next].id);
            if (m) heap_push(sc, (bpe_merge){m->rank, top.pos, m->new_id});
        }
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next) tok_ivec_push(out, sym[i].id);
}

void tok_build_char_tables(halo_tokenizer *t) {
    for (uint32_t cp = 0; cp < 0x800; cp++) {
        char b[4];
        int k = tok_utf8_put(cp, b);
        t->char_id[cp] = (cp >= 0xD800 && cp < 0xE000) ? -1 : tok_strmap_get(&t->vocab, t->pieces, t->piece_len, b, (size_t)k);
    }
    for (int i = 0; i < 256; i++) {
        char b[8];
        snprintf(b, sizeof b, "<0x%02X>", i);
        t->byte_id[i] = tok_strmap_get(&t->vocab, t->pieces, t->piece_len, b, 6);
    }
}
