// Loads a SentencePiece tokenizer.model (protobuf ModelProto) of BPE type into the same structures a tokenizer.json
// fills, mirroring what HF's LlamaConverter builds: Prepend("▁") + Replace(" ", "▁") normalizer, BPE with byte
// fallback whose pair priority is the score of the merged piece (SentencePiece's rule), <s> template, and the
// Replace/ByteFallback/Fuse/Strip decoder. Models needing other normalization are refused with a clear message.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tokenizer/tok_internal.h"
#include "util/error.h"

typedef struct { const uint8_t *p, *end; } pb;

static bool pb_varint(pb *b, uint64_t *v) {
    uint64_t r = 0;
    for (int s = 0; s < 64 && b->p < b->end; s += 7) {
        uint8_t c = *b->p++;
        r |= (uint64_t)(c & 0x7F) << s;
        if (c < 0x80) { *v = r; return true; }
    }
    return false;
}

// Reads the next field: number, wire type, and either the varint / fixed value or the length-delimited bytes.
static bool pb_field(pb *b, uint32_t *field, int *wt, uint64_t *v, pb *sub) {
    uint64_t key;
    if (!pb_varint(b, &key)) return false;
    *field = (uint32_t)(key >> 3); *wt = (int)(key & 7);
    switch (*wt) {
    case 0: return pb_varint(b, v);
    case 1: if (b->end - b->p < 8) return false; memcpy(v, b->p, 8); b->p += 8; return true;
    case 5: { if (b->end - b->p < 4) return false; uint32_t x; memcpy(&x, b->p, 4); *v = x; b->p += 4; return true; }
    case 2: {
        uint64_t n;
        if (!pb_varint(b, &n) || n > (uint64_t)(b->end - b->p)) return false;
        sub->p = b->p; sub->end = b->p + n; b->p += n;
        return true;
    }
    default: return false;
    }
}

enum { SP_NORMAL = 1, SP_UNKNOWN = 2, SP_CONTROL = 3, SP_USER = 4, SP_UNUSED = 5, SP_BYTE = 6 };
typedef struct { const char *s; uint32_t len; float score; int type; } sp_piece;

static int rank_cmp(const void *a, const void *b, void *ctx) {
    const sp_piece *p = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (p[x].score != p[y].score) return p[x].score > p[y].score ? -1 : 1;
    return (x > y) - (x < y);
}

int tok_load_spm(halo_tokenizer *t, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return halo_fail("%s: cannot open", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    if (n <= 0) { fclose(f); return halo_fail("%s: empty or unreadable", path); }
    uint8_t *data = xmalloc((size_t)n);
    size_t got = fread(data, 1, (size_t)n, f);
    fclose(f);
    if (got != (size_t)n) { free(data); return halo_fail("%s: short read", path); }

    int rc = HALO_ERR;
    sp_piece *pc = NULL; size_t np = 0, cap = 0;
    int model_type = 1, byte_fallback = 0, add_dummy_prefix = 1, remove_ws = 1, escape_ws = 1;
    int64_t unk_id = 0, bos_id = 1, eos_id = 2;
    char norm_name[64] = "nmt_nfkc";
    int32_t *order = NULL;
    pb b = {data, data + n}, sub, s2;
    uint32_t fld; int wt; uint64_t v;
    while (b.p < b.end) {
        if (!pb_field(&b, &fld, &wt, &v, &sub)) { halo_fail("%s: not a SentencePiece model (bad protobuf)", path); goto done; }
        if (fld == 1 && wt == 2) {
            sp_piece p = {"", 0, 0.f, SP_NORMAL};
            while (sub.p < sub.end) {
                if (!pb_field(&sub, &fld, &wt, &v, &s2)) { halo_fail("%s: piece %zu: bad protobuf", path, np); goto done; }
                if (fld == 1 && wt == 2) { p.s = (const char *)s2.p; p.len = (uint32_t)(s2.end - s2.p); }
                else if (fld == 2 && wt == 5) { uint32_t x = (uint32_t)v; memcpy(&p.score, &x, 4); }
                else if (fld == 3 && wt == 0) p.type = (int)v;
            }
            if (np == cap) { cap = cap ? cap * 2 : 1024; pc = xrealloc(pc, cap * sizeof *pc); }
            pc[np++] = p;
        } else if (fld == 2 && wt == 2) {   // TrainerSpec
            while (sub.p < sub.end) {
                if (!pb_field(&sub, &fld, &wt, &v, &s2)) { halo_fail("%s: trainer_spec: bad protobuf", path); goto done; }
                if (wt != 0) continue;
                if (fld == 3) model_type = (int)v;
                else if (fld == 35) byte_fallback = (int)v;
                else if (fld == 40) unk_id = (int32_t)v;
                else if (fld == 41) bos_id = (int32_t)v;
                else if (fld == 42) eos_id = (int32_t)v;
            }
        } else if (fld == 3 && wt == 2) {   // NormalizerSpec
            while (sub.p < sub.end) {
                if (!pb_field(&sub, &fld, &wt, &v, &s2)) { halo_fail("%s: normalizer_spec: bad protobuf", path); goto done; }
                if (fld == 1 && wt == 2) snprintf(norm_name, sizeof norm_name, "%.*s", (int)(s2.end - s2.p), (const char *)s2.p);
                else if (fld == 3 && wt == 0) add_dummy_prefix = (int)v;
                else if (fld == 4 && wt == 0) remove_ws = (int)v;
                else if (fld == 5 && wt == 0) escape_ws = (int)v;
            }
        }
    }
    if (np == 0) { halo_fail("%s: no pieces: not a SentencePiece model", path); goto done; }
    if (model_type != 2) {
        halo_fail("%s: SentencePiece model_type %d is not BPE; provide a tokenizer.json (HF tokenizers format) instead", path, model_type);
        goto done;
    }
    if (strcmp(norm_name, "identity") || remove_ws) {
        halo_fail("%s: SentencePiece normalizer \"%s\"%s is not supported; provide a tokenizer.json instead", path,
                  norm_name, remove_ws ? " with remove_extra_whitespaces" : "");
        goto done;
    }

    t->n_pieces = (int32_t)np;
    t->pieces = xcalloc(np, sizeof *t->pieces);
    t->piece_len = xcalloc(np, sizeof *t->piece_len);
    tok_strmap_init(&t->vocab, np);
    for (size_t i = 0; i < np; i++) {
        t->pieces[i] = xmalloc(pc[i].len + 1);
        memcpy(t->pieces[i], pc[i].s, pc[i].len);
        t->pieces[i][pc[i].len] = 0;
        t->piece_len[i] = pc[i].len;
        tok_strmap_put(&t->vocab, t->pieces, t->piece_len, (int32_t)i);
    }
    t->byte_fallback = byte_fallback;
    t->fuse_unk = true;
    t->unk_id = unk_id >= 0 && (size_t)unk_id < np ? (int32_t)unk_id : -1;

    // Pair priority: pieces ranked by score (higher first); every split of a piece into two vocabulary pieces gets
    // that piece's rank, so equal-priority pairs merge leftmost first as SentencePiece does.
    order = xmalloc(np * sizeof *order);
    size_t nn = 0;
    for (size_t i = 0; i < np; i++) if (pc[i].type == SP_NORMAL || pc[i].type == SP_USER) order[nn++] = (int32_t)i;
    qsort_r(order, nn, sizeof *order, rank_cmp, pc);
    tok_mergemap_init(&t->merges, nn * 4);
    for (size_t r = 0; r < nn; r++) {
        int32_t id = order[r];
        const char *s = t->pieces[id]; uint32_t len = t->piece_len[id];
        for (uint32_t k = 1; k < len; k++) {
            if (((unsigned char)s[k] & 0xC0) == 0x80) continue;   // split only at character boundaries
            int32_t a = tok_strmap_get(&t->vocab, t->pieces, t->piece_len, s, k);
            int32_t c = tok_strmap_get(&t->vocab, t->pieces, t->piece_len, s + k, len - k);
            if (a >= 0 && c >= 0 && !tok_mergemap_get(&t->merges, a, c)) tok_mergemap_put(&t->merges, a, c, (int32_t)r, id);
        }
    }
    tok_build_char_tables(t);
    // Control and unknown pieces are special added tokens, user-defined ones plain added tokens (HF's converter).
    for (size_t i = 0; i < np; i++)
        if (pc[i].type == SP_CONTROL || pc[i].type == SP_UNKNOWN || pc[i].type == SP_USER)
            if (pc[i].len) tok_add_added(t, pc[i].s, pc[i].len, (int32_t)i, pc[i].type != SP_USER, false, false, false, false);

    static const char ws[] = "\xE2\x96\x81";   // U+2581, SentencePiece's visible space
    size_t ncap = 2;
    t->norm = xcalloc(ncap, sizeof *t->norm);
    if (add_dummy_prefix) t->norm[t->n_norm++] = (tok_norm){NORM_PREPEND, xstrdup(ws), 3, NULL, 0, NULL};
    if (escape_ws) t->norm[t->n_norm++] = (tok_norm){NORM_REPLACE, xstrdup(" "), 1, xstrdup(ws), 3, NULL};
    t->has_decoder = true;
    t->dec = xcalloc(4, sizeof *t->dec);
    if (escape_ws) t->dec[t->n_dec++] = (tok_dec){.kind = DEC_REPLACE, .a = xstrdup(ws), .alen = 3, .b = xstrdup(" "), .blen = 1};
    t->dec[t->n_dec++] = (tok_dec){.kind = DEC_BYTEFALLBACK};
    t->dec[t->n_dec++] = (tok_dec){.kind = DEC_FUSE};
    if (add_dummy_prefix) t->dec[t->n_dec++] = (tok_dec){.kind = DEC_STRIP, .a = xstrdup(" "), .alen = 1, .start = 1, .stop = 0};
    if (bos_id >= 0 && (size_t)bos_id < np) {
        t->tmpl = xcalloc(2, sizeof *t->tmpl);
        t->tmpl[0].ids = xmalloc(sizeof(int32_t));
        t->tmpl[0].ids[0] = (int32_t)bos_id; t->tmpl[0].n = 1;
        t->tmpl[1].is_seq = true;
        t->n_tmpl = 2;
    }
    rc = tok_finish(t);
    if (rc == HALO_OK) {
        t->bos_id = bos_id >= 0 && (size_t)bos_id < np ? (int32_t)bos_id : -1;
        t->eos_id = eos_id >= 0 && (size_t)eos_id < np ? (int32_t)eos_id : -1;
    }
done:
    free(order);
    free(pc);
    free(data);
    return rc;
}
