// Loading a Hugging Face tokenizer.json (BPE model, Sequence/Prepend/Replace normalizers, Split/ByteLevel/Metaspace
// pre-tokenizers, TemplateProcessing/ByteLevel/Sequence post-processors, Replace/ByteFallback/Fuse/Strip/ByteLevel/
// Metaspace decoders) and running the encode/decode pipelines the way HF tokenizers' TokenizerImpl does.
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "tokenizer/tok_internal.h"
#include "tokenizer/nfc.h"
#include "util/error.h"

// ---------------------------------------------------------------- GPT-2 byte <-> unicode alphabet
// Bytes that are printable Latin-1 map to themselves; the other 68 map to U+0100.. in byte order.
static uint16_t g_byte_cp[256];
static int16_t g_cp_byte[0x200];   // inverse; -1 for code points outside the alphabet
static char g_byte_utf8[256][2];
static uint8_t g_byte_utf8_len[256];

static void byte_tables_init(void) {
    static int done;
    if (__atomic_load_n(&done, __ATOMIC_ACQUIRE)) return;
    int n = 0;
    for (int i = 0; i < 0x200; i++) g_cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        g_byte_cp[b] = (uint16_t)(keep ? b : 256 + n++);
        g_cp_byte[g_byte_cp[b]] = (int16_t)b;
        g_byte_utf8_len[b] = (uint8_t)tok_utf8_put(g_byte_cp[b], g_byte_utf8[b]);
    }
    __atomic_store_n(&done, 1, __ATOMIC_RELEASE);
}

// ---------------------------------------------------------------- regexes
// Oniguruma (HF's regex engine) takes \s as Unicode White_Space; PCRE2's UCP \s also matches U+180E. Rewrite \s and
// \S into explicit classes so the two agree.
#define WS_BODY "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
static char *regex_onig_compat(const char *p) {
    tok_buf b = {0};
    bool in_class = false;
    for (size_t i = 0; p[i]; i++) {
        char c = p[i];
        if (c == '\\' && p[i + 1]) {
            char d = p[i + 1];
            if (d == 's') tok_buf_put(&b, in_class ? WS_BODY : "[" WS_BODY "]", strlen(in_class ? WS_BODY : "[" WS_BODY "]"));
            else if (d == 'S' && !in_class) tok_buf_put(&b, "[^" WS_BODY "]", strlen("[^" WS_BODY "]"));
            else tok_buf_put(&b, p + i, 2);
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            tok_buf_put(&b, p + i, 1);
            if (p[i + 1] == '^') { tok_buf_put(&b, "^", 1); i++; }
            if (p[i + 1] == ']') { tok_buf_put(&b, "]", 1); i++; }   // a leading ] is literal
            continue;
        }
        if (in_class && c == ']') in_class = false;
        tok_buf_put(&b, p + i, 1);
    }
    if (!b.p) tok_buf_put(&b, "", 0);
    return b.p;
}

static int regex_compile(const char *pattern, size_t len, bool literal, const char *key, pcre2_code **out) {
    char *pat;
    if (literal) {   // quote every character so a String pattern matches itself
        tok_buf b = {0};
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)pattern[i];
            if (c < 0x80 && !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) {
                char e[8]; int k = snprintf(e, sizeof e, "\\x{%X}", c); tok_buf_put(&b, e, (size_t)k);
            } else tok_buf_put(&b, pattern + i, 1);
        }
        if (!b.p) tok_buf_put(&b, "", 0);
        pat = b.p;
    } else {
        char *raw = xmalloc(len + 1); memcpy(raw, pattern, len); raw[len] = 0;
        pat = regex_onig_compat(raw);
        free(raw);
    }
    int err; PCRE2_SIZE eoff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &eoff, NULL);
    free(pat);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return halo_fail("%s: regex does not compile at offset %zu: %s", key, (size_t)eoff, (char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);   // falls back to the interpreter when JIT is unavailable
    *out = re;
    return HALO_OK;
}

// ---------------------------------------------------------------- loading helpers
static int read_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return halo_fail("%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return halo_fail("%s: cannot seek", path); }
    long n = ftell(f);
    rewind(f);
    if (n < 0) { fclose(f); return halo_fail("%s: cannot size", path); }
    char *p = xmalloc((size_t)n + 1);
    size_t got = fread(p, 1, (size_t)n, f);
    fclose(f);
    if (got != (size_t)n) { free(p); return halo_fail("%s: short read", path); }
    p[n] = 0;
    *data = p; *len = (size_t)n;
    return HALO_OK;
}

static bool jbool(const cJSON *o, const char *k, bool def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return def;
}
static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}
static const char *jtype(const cJSON *o) { const char *t = jstr(o, "type"); return t ? t : "(missing)"; }

// Reads {"String": s} or {"Regex": r} into a compiled regex.
static int parse_pattern(const cJSON *o, const char *key, pcre2_code **re, char **lit, size_t *litlen) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const char *s = jstr(p, "String"), *r = jstr(p, "Regex");
    if (s) {
        if (lit) { *lit = xstrdup(s); *litlen = strlen(s); }
        return re ? regex_compile(s, strlen(s), true, key, re) : HALO_OK;
    }
    if (r) {
        if (!re) return halo_fail("%s.pattern: Regex patterns are not supported here (only String)", key);
        return regex_compile(r, strlen(r), false, key, re);
    }
    return halo_fail("%s.pattern: expected {\"String\": ...} or {\"Regex\": ...}", key);
}

static void *grow(void *p, size_t n, size_t *cap, size_t elem) {
    if (n < *cap) return p;
    *cap = *cap ? *cap * 2 : 4;
    return xrealloc(p, *cap * elem);
}

// A "Sequence" component: one(t, item, "key.list[i]", cap) for each item of o's array `list`, in order.
typedef int (*tok_part_fn)(halo_tokenizer *t, const cJSON *o, const char *key, size_t *cap);
static int parse_sequence(halo_tokenizer *t, const cJSON *o, const char *key, size_t *cap, const char *list,
                          tok_part_fn one) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(o, list), *c;
    int i = 0;
    char k[256];
    cJSON_ArrayForEach(c, arr) {
        snprintf(k, sizeof k, "%s.%s[%d]", key, list, i++);
        if (one(t, c, k, cap)) return HALO_ERR;
    }
    return HALO_OK;
}

static int parse_normalizer(halo_tokenizer *t, const cJSON *o, const char *key, size_t *cap) {
    if (!o || cJSON_IsNull(o)) return HALO_OK;
    const char *type = jtype(o);
    char k[256];
    if (!strcmp(type, "Sequence")) return parse_sequence(t, o, key, cap, "normalizers", parse_normalizer);
    t->norm = grow(t->norm, t->n_norm, cap, sizeof *t->norm);
    tok_norm *n = &t->norm[t->n_norm];
    memset(n, 0, sizeof *n);
    if (!strcmp(type, "Prepend")) {
        const char *p = jstr(o, "prepend");
        if (!p) return halo_fail("%s.prepend: missing", key);
        n->kind = NORM_PREPEND; n->a = xstrdup(p); n->alen = strlen(p);
    } else if (!strcmp(type, "Replace")) {
        const char *c = jstr(o, "content");
        if (!c) return halo_fail("%s.content: missing", key);
        n->kind = NORM_REPLACE; n->b = xstrdup(c); n->blen = strlen(c);
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
        snprintf(k, sizeof k, "%s.pattern", key);
        if (jstr(p, "Regex")) { if (parse_pattern(o, k, &n->re, NULL, NULL)) return HALO_ERR; }
        else if (parse_pattern(o, k, NULL, &n->a, &n->alen)) return HALO_ERR;
        if (!n->re && n->alen == 0) return halo_fail("%s.pattern: empty", key);
    } else if (!strcmp(type, "NFC")) {
        n->kind = NORM_NFC;
    } else {
        return halo_fail("%s.type: normalizer \"%s\" is not supported (supported: Sequence, Prepend, Replace, NFC)", key,
                         type);
    }
    t->n_norm++;
    return HALO_OK;
}

// Metaspace's replacement (one character) and prepend scheme; older files give add_prefix_space instead of the scheme.
static int parse_metaspace(const cJSON *o, const char *key, char *rep, uint32_t *rep_len, tok_prepend *prepend) {
    const char *r = jstr(o, "replacement");
    uint32_t cp;
    if (!r || !*r || strlen(r) >= 8 || tok_utf8_next((const unsigned char *)r, strlen(r), &cp) != (int)strlen(r) ||
        cp == TOK_BAD_CP)
        return halo_fail("%s.replacement: missing or not one character", key);
    memcpy(rep, r, strlen(r));
    *rep_len = (uint32_t)strlen(r);
    const char *ps = jstr(o, "prepend_scheme");
    if (!ps) *prepend = jbool(o, "add_prefix_space", true) ? PREPEND_ALWAYS : PREPEND_NEVER;
    else if (!strcmp(ps, "always")) *prepend = PREPEND_ALWAYS;
    else if (!strcmp(ps, "first")) *prepend = PREPEND_FIRST;
    else if (!strcmp(ps, "never")) *prepend = PREPEND_NEVER;
    else return halo_fail("%s.prepend_scheme: \"%s\" is not always, first or never", key, ps);
    return HALO_OK;
}

static int parse_pretok(halo_tokenizer *t, const cJSON *o, const char *key, size_t *cap) {
    if (!o || cJSON_IsNull(o)) return HALO_OK;
    const char *type = jtype(o);
    char k[256];
    if (!strcmp(type, "Sequence")) return parse_sequence(t, o, key, cap, "pretokenizers", parse_pretok);
    t->pre = grow(t->pre, t->n_pre, cap, sizeof *t->pre);
    tok_pre *p = &t->pre[t->n_pre];
    memset(p, 0, sizeof *p);
    if (!strcmp(type, "Split")) {
        p->kind = PRE_SPLIT;
        snprintf(k, sizeof k, "%s.pattern", key);
        if (parse_pattern(o, k, &p->re, NULL, NULL)) return HALO_ERR;
        const char *b = jstr(o, "behavior");
        if (!b) return halo_fail("%s.behavior: missing", key);
        if (!strcmp(b, "Removed")) p->behavior = SPLIT_REMOVED;
        else if (!strcmp(b, "Isolated")) p->behavior = SPLIT_ISOLATED;
        else if (!strcmp(b, "MergedWithPrevious")) p->behavior = SPLIT_MERGED_PREV;
        else if (!strcmp(b, "MergedWithNext")) p->behavior = SPLIT_MERGED_NEXT;
        else if (!strcmp(b, "Contiguous")) p->behavior = SPLIT_CONTIGUOUS;
        else return halo_fail("%s.behavior: \"%s\" is not a split behaviour", key, b);
        p->invert = jbool(o, "invert", false);
    } else if (!strcmp(type, "ByteLevel")) {
        p->kind = PRE_BYTELEVEL;
        p->add_prefix_space = jbool(o, "add_prefix_space", true);
        if (jbool(o, "use_regex", true)) {
            // GPT-2's pattern, which HF's ByteLevel uses when use_regex is true
            static const char *gpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
            snprintf(k, sizeof k, "%s (ByteLevel regex)", key);
            if (regex_compile(gpt2, strlen(gpt2), false, k, &p->re)) return HALO_ERR;
        }
    } else if (!strcmp(type, "Metaspace")) {
        p->kind = PRE_METASPACE;
        if (parse_metaspace(o, key, p->rep, &p->rep_len, &p->prepend)) return HALO_ERR;
        p->split = jbool(o, "split", true);
    } else {
        return halo_fail("%s.type: pre-tokenizer \"%s\" is not supported (supported: Sequence, Split, ByteLevel, "
                         "Metaspace)", key, type);
    }
    t->n_pre++;
    return HALO_OK;
}

static int parse_decoder(halo_tokenizer *t, const cJSON *o, const char *key, size_t *cap) {
    const char *type = jtype(o);
    char k[256];
    if (!strcmp(type, "Sequence")) return parse_sequence(t, o, key, cap, "decoders", parse_decoder);
    t->dec = grow(t->dec, t->n_dec, cap, sizeof *t->dec);
    tok_dec *d = &t->dec[t->n_dec];
    memset(d, 0, sizeof *d);
    if (!strcmp(type, "Replace")) {
        d->kind = DEC_REPLACE;
        snprintf(k, sizeof k, "%s.pattern", key);
        if (parse_pattern(o, k, NULL, &d->a, &d->alen)) return HALO_ERR;
        if (d->alen == 0) return halo_fail("%s.pattern: empty", key);
        const char *c = jstr(o, "content");
        if (!c) return halo_fail("%s.content: missing", key);
        d->b = xstrdup(c); d->blen = strlen(c);
    } else if (!strcmp(type, "ByteFallback")) d->kind = DEC_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse")) d->kind = DEC_FUSE;
    else if (!strcmp(type, "Strip")) {
        d->kind = DEC_STRIP;
        const char *c = jstr(o, "content");
        if (!c) return halo_fail("%s.content: missing", key);
        uint32_t cp;
        if (!*c || tok_utf8_next((const unsigned char *)c, strlen(c), &cp) != (int)strlen(c))
            return halo_fail("%s.content: must be one character", key);
        d->a = xstrdup(c); d->alen = strlen(c);
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "start"), *e = cJSON_GetObjectItemCaseSensitive(o, "stop");
        d->start = cJSON_IsNumber(s) ? s->valueint : 0;
        d->stop = cJSON_IsNumber(e) ? e->valueint : 0;
    } else if (!strcmp(type, "ByteLevel")) d->kind = DEC_BYTELEVEL;
    else if (!strcmp(type, "Metaspace")) {
        d->kind = DEC_METASPACE;
        char rep[8] = {0};
        uint32_t rl;
        tok_prepend pp;
        if (parse_metaspace(o, key, rep, &rl, &pp)) return HALO_ERR;
        d->a = xstrdup(rep); d->alen = rl;
        d->drop_first = pp != PREPEND_NEVER;
    } else
        return halo_fail("%s.type: decoder \"%s\" is not supported (supported: Sequence, Replace, ByteFallback, Fuse, "
                         "Strip, ByteLevel, Metaspace)", key, type);
    t->n_dec++;
    return HALO_OK;
}

// An id read from the file: an integer in [0, max_id]. max_id comes from the file's size (every id takes a few bytes
// of the file; at least 2^20 for small hand-made files), so a hostile id cannot make the loader allocate gigabytes
// of id-indexed tables.
static bool valid_id(const cJSON *v, size_t max_id) {
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= (double)max_id &&
           v->valuedouble == (double)(int32_t)v->valuedouble;
}

static void tmpl_free(tok_tmpl_item *it, size_t n) {
    for (size_t i = 0; i < n; i++) free(it[i].ids);
    free(it);
}

static int parse_postproc(halo_tokenizer *t, const cJSON *o, const char *key);
static int postproc_part(halo_tokenizer *t, const cJSON *o, const char *key, size_t *cap) {   // (no array to grow)
    (void)cap;
    return parse_postproc(t, o, key);
}
// Applies one TemplateProcessing ("single") on top of the current template: its Sequence A slot is replaced by
// what the earlier processors produce.
static int parse_postproc(halo_tokenizer *t, const cJSON *o, const char *key) {
    if (!o || cJSON_IsNull(o)) return HALO_OK;
    const char *type = jtype(o);
    if (!strcmp(type, "Sequence")) return parse_sequence(t, o, key, NULL, "processors", postproc_part);
    if (!strcmp(type, "ByteLevel")) return HALO_OK;   // only adjusts offsets; ids are unchanged
    if (strcmp(type, "TemplateProcessing"))
        return halo_fail("%s.type: post-processor \"%s\" is not supported (supported: TemplateProcessing, ByteLevel, "
                         "Sequence)", key, type);
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(o, "single");
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(o, "special_tokens");
    if (!cJSON_IsArray(single)) return halo_fail("%s.single: missing", key);
    tok_tmpl_item *out = NULL; size_t n = 0, cap = 0;
    const cJSON *it; int idx = 0;
    cJSON_ArrayForEach(it, single) {
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
        const cJSON *sq = cJSON_GetObjectItemCaseSensitive(it, "Sequence");
        if (sq) {   // splice in the current template (initially just the sequence)
            if (t->n_tmpl == 0) {
                out = grow(out, n, &cap, sizeof *out);
                out[n++] = (tok_tmpl_item){true, NULL, 0};
            } else
                for (size_t j = 0; j < t->n_tmpl; j++) {
                    out = grow(out, n, &cap, sizeof *out);
                    out[n] = t->tmpl[j];
                    if (t->tmpl[j].n) {
                        out[n].ids = xmalloc(t->tmpl[j].n * sizeof(int32_t));
                        memcpy(out[n].ids, t->tmpl[j].ids, t->tmpl[j].n * sizeof(int32_t));
                    }
                    n++;
                }
        } else if (sp) {
            const char *name = jstr(sp, "id");
            const cJSON *def = name ? cJSON_GetObjectItemCaseSensitive(specials, name) : NULL;
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids");
            if (!cJSON_IsArray(ids)) {
                tmpl_free(out, n);
                return halo_fail("%s.special_tokens: no ids for \"%s\" used in single[%d]", key, name ? name : "?", idx);
            }
            tok_tmpl_item item = {false, NULL, 0};
            item.n = (size_t)cJSON_GetArraySize(ids);
            item.ids = xmalloc((item.n ? item.n : 1) * sizeof(int32_t));
            size_t j = 0; const cJSON *x;
            cJSON_ArrayForEach(x, ids) {
                if (!valid_id(x, INT32_MAX)) {
                    free(item.ids); tmpl_free(out, n);
                    return halo_fail("%s.special_tokens: \"%s\" has an id that is not a non-negative integer", key, name);
                }
                item.ids[j++] = (int32_t)x->valuedouble;
            }
            out = grow(out, n, &cap, sizeof *out);
            out[n++] = item;
        } else {
            tmpl_free(out, n);
            return halo_fail("%s.single[%d]: expected SpecialToken or Sequence", key, idx);
        }
        idx++;
    }
    bool has_seq = false;
    for (size_t j = 0; j < n; j++) has_seq |= out[j].is_seq;
    if (!has_seq) { tmpl_free(out, n); return halo_fail("%s.single: has no Sequence item", key); }
    tmpl_free(t->tmpl, t->n_tmpl);
    t->tmpl = out; t->n_tmpl = n;
    return HALO_OK;
}

void tok_add_added(halo_tokenizer *t, const char *content, size_t len, int32_t id, bool special, bool single_word,
                   bool lstrip, bool rstrip, bool normalized) {
    t->added = xrealloc(t->added, (t->n_added + 1) * sizeof *t->added);
    tok_added *a = &t->added[t->n_added++];
    a->content = xmalloc(len + 1); memcpy(a->content, content, len); a->content[len] = 0;
    a->len = (uint32_t)len; a->id = id; a->special = special; a->single_word = single_word;
    a->lstrip = lstrip; a->rstrip = rstrip; a->normalized = normalized;
}

static int32_t find_token_id(const halo_tokenizer *t, const char *s) {
    for (size_t i = 0; i < t->n_added; i++) if (!strcmp(t->added[i].content, s)) return t->added[i].id;
    return tok_strmap_get(&t->vocab, t->pieces, t->piece_len, s, strlen(s));
}

// bos/eos from tokenizer_config.json next to the tokenizer file (a string or {"content": ...}).
static int32_t config_token(const halo_tokenizer *t, const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *s = cJSON_IsString(v) ? v->valuestring : jstr(v, "content");
    return s ? find_token_id(t, s) : -1;
}

static void find_ws_cut(halo_tokenizer *t) {
    t->ws_cut_len = 0;
    // the marker: a normalizer's one-character Replace with no pre-tokenizer, or an unsplit Metaspace's replacement
    const bool meta = t->n_pre == 1 && t->pre[0].kind == PRE_METASPACE && !t->pre[0].split;
    if ((t->n_pre && !meta) || t->ignore_merges) return;
    const char *mb = NULL;
    size_t ml = 0;
    if (meta) { mb = t->pre[0].rep; ml = t->pre[0].rep_len; }
    for (size_t i = 0; i < t->n_norm && !meta; i++) {
        uint32_t cp;
        const tok_norm *m = &t->norm[i];
        if (m->kind == NORM_REPLACE && !m->re && m->blen > 0 && m->blen < sizeof t->ws_cut &&
            tok_utf8_next((const unsigned char *)m->b, m->blen, &cp) == (int)m->blen && cp != TOK_BAD_CP)
            { mb = m->b; ml = m->blen; }
    }
    if (!mb || tok_strmap_get(&t->vocab, t->pieces, t->piece_len, mb, ml) < 0) return;
    for (size_t i = 0; i <= t->merges.mask; i++) {
        const tok_merge_slot *m = &t->merges.slot[i];
        if (m->key == UINT64_MAX) continue;
        const char *p = t->pieces[m->new_id]; size_t n = t->piece_len[m->new_id];
        for (size_t k = ml; k + ml <= n; k++)   // the marker after something other than the marker
            if (!memcmp(p + k, mb, ml) && memcmp(p + k - ml, mb, ml)) return;
    }
    memcpy(t->ws_cut, mb, ml);
    t->ws_cut_len = (uint32_t)ml;
}

int tok_finish(halo_tokenizer *t) {
    int32_t mx = t->n_pieces - 1;
    for (size_t i = 0; i < t->n_added; i++) {
        if (t->added[i].id < 0) return halo_fail("%s: added_tokens[%zu].id is negative", t->path, i);
        if (t->added[i].id > mx) mx = t->added[i].id;
        t->any_normalized_added |= t->added[i].normalized;
        t->any_single_word |= t->added[i].single_word;
    }
    t->n_total = mx + 1;
    for (size_t i = 0; i < t->n_tmpl; i++)   // the post-processor's ids must exist, or encode emits unknown ids
        for (size_t j = 0; j < t->tmpl[i].n; j++)
            if (t->tmpl[i].ids[j] >= t->n_total)
                return halo_fail("%s: post_processor: special token id %d is outside the vocabulary (%d ids)", t->path,
                                 t->tmpl[i].ids[j], t->n_total);
    t->added_by_id = xmalloc((size_t)t->n_total * sizeof(int32_t));
    for (int32_t i = 0; i < t->n_total; i++) t->added_by_id[i] = -1;
    for (size_t i = 0; i < t->n_added; i++) t->added_by_id[t->added[i].id] = (int32_t)i;
    // index by first byte (counting sort), each bucket ordered longest first
    memset(t->added_first, 0, sizeof t->added_first);
    for (size_t i = 0; i < t->n_added; i++) t->added_first[(unsigned char)t->added[i].content[0] + 1]++;
    for (int b = 0; b < 256; b++) t->added_first[b + 1] += t->added_first[b];
    t->added_by_byte = xmalloc((t->n_added ? t->n_added : 1) * sizeof(uint32_t));
    uint32_t fill[256];
    memcpy(fill, t->added_first, sizeof fill);
    for (size_t i = 0; i < t->n_added; i++) t->added_by_byte[fill[(unsigned char)t->added[i].content[0]]++] = (uint32_t)i;
    for (int b = 0; b < 256; b++)   // insertion sort by length, descending (buckets are small)
        for (uint32_t k = t->added_first[b] + 1; k < t->added_first[b + 1]; k++)
            for (uint32_t j = k; j > t->added_first[b] && t->added[t->added_by_byte[j]].len > t->added[t->added_by_byte[j - 1]].len; j--) {
                uint32_t x = t->added_by_byte[j]; t->added_by_byte[j] = t->added_by_byte[j - 1]; t->added_by_byte[j - 1] = x;
            }
    if (t->any_single_word) {
        int err; PCRE2_SIZE eo;
        t->word_re = pcre2_compile((PCRE2_SPTR) "\\w", 2, PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | PCRE2_ANCHORED,
                                   &err, &eo, NULL);
    }
    find_ws_cut(t);
    // BOS/EOS: the template's special tokens around the sequence, else tokenizer_config.json, else common names.
    t->bos_id = t->eos_id = -1;
    bool before = true;
    for (size_t i = 0; i < t->n_tmpl; i++) {
        if (t->tmpl[i].is_seq) { before = false; continue; }
        if (before && t->bos_id < 0 && t->tmpl[i].n) t->bos_id = t->tmpl[i].ids[0];
        if (!before && t->eos_id < 0 && t->tmpl[i].n) t->eos_id = t->tmpl[i].ids[0];
    }
    {   // tokenizer_config.json beside the file: BOS/EOS when the template has none, and the chat template
        char cfgpath[4096], jpath[4096];
        const char *slash = strrchr(t->path, '/');
        int dl = slash ? (int)(slash - t->path) : 1;
        snprintf(cfgpath, sizeof cfgpath, "%.*s/tokenizer_config.json", dl, slash ? t->path : ".");
        snprintf(jpath, sizeof jpath, "%.*s/chat_template.jinja", dl, slash ? t->path : ".");
        char *data; size_t len;
        struct stat st;
        if (stat(jpath, &st) == 0 && S_ISREG(st.st_mode) && read_file(jpath, &data, &len) == HALO_OK) {
            t->chat_template = xmalloc(len + 1);   // transformers 4.43+ writes the template to its own file
            memcpy(t->chat_template, data, len);
            t->chat_template[len] = 0;
            free(data);
        }
        if (stat(cfgpath, &st) == 0 && S_ISREG(st.st_mode) && read_file(cfgpath, &data, &len) == HALO_OK) {
            cJSON *cfg = cJSON_ParseWithLength(data, len);
            if (cfg) {
                if (t->bos_id < 0) t->bos_id = config_token(t, cfg, "bos_token");
                if (t->eos_id < 0) t->eos_id = config_token(t, cfg, "eos_token");
                const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"), *it;
                if (cJSON_IsArray(ct))   // named templates: [{"name": "default", "template": ...}, ...]
                    cJSON_ArrayForEach(it, ct) {
                        const char *nm = jstr(it, "name");
                        if (nm && !strcmp(nm, "default")) ct = cJSON_GetObjectItemCaseSensitive(it, "template");
                    }
                if (!t->chat_template && cJSON_IsString(ct)) t->chat_template = xstrdup(ct->valuestring);
                cJSON_Delete(cfg);
            }
            free(data);
        }
        halo_clear_error();
    }
    if (t->bos_id < 0) t->bos_id = find_token_id(t, "<s>");
    if (t->bos_id < 0) t->bos_id = find_token_id(t, "<|begin_of_text|>");
    if (t->eos_id < 0) t->eos_id = find_token_id(t, "</s>");
    if (t->eos_id < 0) t->eos_id = find_token_id(t, "<|end_of_text|>");
    return HALO_OK;
}

static int load_model(halo_tokenizer *t, const cJSON *model, size_t max_id) {
    const char *type = jstr(model, "type");
    if (!type || strcmp(type, "BPE"))
        return halo_fail("%s: model.type \"%s\" is not supported (only BPE)", t->path, type ? type : "(missing)");
    if (jstr(model, "continuing_subword_prefix") || jstr(model, "end_of_word_suffix"))
        return halo_fail("%s: model.continuing_subword_prefix / end_of_word_suffix are not supported", t->path);
    const cJSON *drop = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(drop) && drop->valuedouble > 0)
        return halo_fail("%s: model.dropout %g is not supported (encoding would be random)", t->path, drop->valuedouble);
    t->byte_fallback = jbool(model, "byte_fallback", false);
    t->fuse_unk = jbool(model, "fuse_unk", false);
    t->ignore_merges = jbool(model, "ignore_merges", false);

    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab)) return halo_fail("%s: model.vocab: missing or not an object", t->path);
    int32_t mx = -1; size_t count = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        if (!valid_id(e, max_id))
            return halo_fail("%s: model.vocab[\"%s\"]: id is not an integer in [0, %zu]", t->path, e->string, max_id);
        if ((int32_t)e->valuedouble > mx) mx = (int32_t)e->valuedouble;
        count++;
    }
    t->n_pieces = mx + 1;
    t->pieces = xcalloc((size_t)t->n_pieces, sizeof *t->pieces);
    t->piece_len = xcalloc((size_t)t->n_pieces, sizeof *t->piece_len);
    tok_strmap_init(&t->vocab, count);
    cJSON_ArrayForEach(e, vocab) {
        int32_t id = (int32_t)e->valuedouble;
        if (t->pieces[id])   // (replacing it would leave the vocab map pointing at the freed string)
            return halo_fail("%s: model.vocab: id %d is given to both \"%s\" and \"%s\"", t->path, id, t->pieces[id],
                             e->string);
        t->pieces[id] = xstrdup(e->string);
        t->piece_len[id] = (uint32_t)strlen(e->string);
        tok_strmap_put(&t->vocab, t->pieces, t->piece_len, id);
    }
    const char *unk = jstr(model, "unk_token");
    t->unk_id = -1;
    if (unk) {
        t->unk_id = tok_strmap_get(&t->vocab, t->pieces, t->piece_len, unk, strlen(unk));
        if (t->unk_id < 0) return halo_fail("%s: model.unk_token \"%s\" is not in model.vocab", t->path, unk);
    }

    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsArray(merges)) return halo_fail("%s: model.merges: missing or not an array", t->path);
    tok_mergemap_init(&t->merges, (size_t)cJSON_GetArraySize(merges));
    tok_buf cat = {0};
    int32_t rank = 0;
    cJSON_ArrayForEach(e, merges) {
        const char *a, *b; size_t al, bl;
        if (cJSON_IsString(e)) {   // "left right"
            a = e->valuestring;
            const char *sp = strchr(a, ' ');
            if (!sp || strchr(sp + 1, ' ')) { free(cat.p); return halo_fail("%s: model.merges[%d]: \"%s\" is not two tokens separated by one space", t->path, rank, a); }
            al = (size_t)(sp - a); b = sp + 1; bl = strlen(b);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) && cJSON_IsString(e->child->next)) {
            a = e->child->valuestring; al = strlen(a); b = e->child->next->valuestring; bl = strlen(b);
        } else { free(cat.p); return halo_fail("%s: model.merges[%d]: expected \"a b\" or [\"a\", \"b\"]", t->path, rank); }
        int32_t ia = tok_strmap_get(&t->vocab, t->pieces, t->piece_len, a, al);
        int32_t ib = tok_strmap_get(&t->vocab, t->pieces, t->piece_len, b, bl);
        cat.len = 0;
        tok_buf_put(&cat, a, al); tok_buf_put(&cat, b, bl);
        int32_t ic = tok_strmap_get(&t->vocab, t->pieces, t->piece_len, cat.p, cat.len);
        if (ia < 0 || ib < 0 || ic < 0) {
            int r = halo_fail("%s: model.merges[%d]: \"%.*s\" + \"%.*s\": %s is not in model.vocab", t->path, rank, (int)al, a,
                              (int)bl, b, ia < 0 ? "left part" : ib < 0 ? "right part" : "the merged token");
            free(cat.p);
            return r;
        }
        tok_mergemap_put(&t->merges, ia, ib, rank, ic);
        rank++;
    }
    free(cat.p);
    tok_build_char_tables(t);
    return HALO_OK;
}

static int load_json(halo_tokenizer *t, const char *path) {
    char *data; size_t len;
    if (read_file(path, &data, &len)) return HALO_ERR;
    cJSON *root = cJSON_ParseWithLength(data, len);
    if (!root) {
        const char *ep = cJSON_GetErrorPtr();
        size_t off = ep && ep >= data && ep <= data + len ? (size_t)(ep - data) : 0;
        size_t line = 1;
        for (size_t i = 0; i < off; i++) line += data[i] == '\n';
        free(data);
        return halo_fail("%s: invalid JSON near line %zu (byte %zu)", path, line, off);
    }
    free(data);
    int rc = HALO_ERR;
    size_t max_id = len > ((size_t)1 << 20) ? len : ((size_t)1 << 20);
    char key[600];
    size_t cap;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!model) { halo_fail("%s: no \"model\" key", path); goto done; }
    if (load_model(t, model, max_id)) goto done;
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), *a;
    int i = 0;
    cJSON_ArrayForEach(a, added) {
        const char *c = jstr(a, "content");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
        if (!c || !cJSON_IsNumber(id)) { halo_fail("%s: added_tokens[%d]: needs content and id", path, i); goto done; }
        if (!valid_id(id, max_id)) { halo_fail("%s: added_tokens[%d]: id is not an integer in [0, %zu]", path, i, max_id); goto done; }
        if (*c) tok_add_added(t, c, strlen(c), (int32_t)id->valuedouble, jbool(a, "special", false), jbool(a, "single_word", false),
                             jbool(a, "lstrip", false), jbool(a, "rstrip", false), jbool(a, "normalized", false));
        i++;
    }
    snprintf(key, sizeof key, "%s: normalizer", path); cap = 0;
    if (parse_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), key, &cap)) goto done;
    snprintf(key, sizeof key, "%s: pre_tokenizer", path); cap = 0;
    if (parse_pretok(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), key, &cap)) goto done;
    snprintf(key, sizeof key, "%s: post_processor", path);
    if (parse_postproc(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), key)) goto done;
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    if (dec && !cJSON_IsNull(dec)) {
        snprintf(key, sizeof key, "%s: decoder", path); cap = 0;
        t->has_decoder = true;
        if (parse_decoder(t, dec, key, &cap)) goto done;
    }
    const cJSON *trunc = cJSON_GetObjectItemCaseSensitive(root, "truncation");
    const cJSON *pad = cJSON_GetObjectItemCaseSensitive(root, "padding");
    if ((trunc && !cJSON_IsNull(trunc)) || (pad && !cJSON_IsNull(pad))) {
        halo_fail("%s: truncation / padding settings are not supported (set them to null)", path);
        goto done;
    }
    rc = tok_finish(t);
done:
    cJSON_Delete(root);
    return rc;
}

int tokenizer_load(const char *file_or_dir, halo_tokenizer **out) {
    byte_tables_init();
    *out = NULL;
    struct stat st;
    if (stat(file_or_dir, &st) != 0) return halo_fail("%s: %s", file_or_dir, strerror(errno));
    char path[4096];
    bool spm = false;
    if (S_ISDIR(st.st_mode)) {
        snprintf(path, sizeof path, "%s/tokenizer.json", file_or_dir);
        if (stat(path, &st) != 0) {
            snprintf(path, sizeof path, "%s/tokenizer.model", file_or_dir);
            if (stat(path, &st) != 0)
                return halo_fail("%s: holds neither tokenizer.json nor tokenizer.model", file_or_dir);
            spm = true;
        }
    } else {
        snprintf(path, sizeof path, "%s", file_or_dir);
        size_t n = strlen(path);
        spm = n >= 6 && !strcmp(path + n - 6, ".model");
    }
    halo_tokenizer *t = xcalloc(1, sizeof *t);
    t->path = xstrdup(path);
    t->unk_id = -1;
    static uint64_t gen_counter;
    t->gen = __atomic_add_fetch(&gen_counter, 1, __ATOMIC_RELAXED);
    int rc = spm ? tok_load_spm(t, path) : load_json(t, path);
    if (rc) { tokenizer_free(t); return HALO_ERR; }
    *out = t;
    return HALO_OK;
}

void tokenizer_free(halo_tokenizer *t) {
    if (!t) return;
    free(t->chat_template);
    for (int32_t i = 0; i < t->n_pieces; i++) free(t->pieces[i]);
    free(t->pieces); free(t->piece_len);
    tok_strmap_free(&t->vocab);
    tok_mergemap_free(&t->merges);
    for (size_t i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added); free(t->added_by_id); free(t->added_by_byte);
    if (t->word_re) pcre2_code_free(t->word_re);
    for (size_t i = 0; i < t->n_norm; i++) { free(t->norm[i].a); free(t->norm[i].b); if (t->norm[i].re) pcre2_code_free(t->norm[i].re); }
    free(t->norm);
    for (size_t i = 0; i < t->n_pre; i++) if (t->pre[i].re) pcre2_code_free(t->pre[i].re);
    free(t->pre);
    for (size_t i = 0; i < t->n_dec; i++) { free(t->dec[i].a); free(t->dec[i].b); }
    free(t->dec);
    tmpl_free(t->tmpl, t->n_tmpl);
    free(t->path);
    free(t);
}

// ---------------------------------------------------------------- encoding
typedef struct { uint32_t off, len; } span;
typedef struct { tok_buf buf; span *sp; size_t n, cap; } plist;   // pieces: byte ranges of buf

static void plist_add(plist *l, const char *s, size_t n) {
    l->sp = grow(l->sp, l->n, &l->cap, sizeof *l->sp);
    l->sp[l->n++] = (span){(uint32_t)l->buf.len, (uint32_t)n};
    tok_buf_put(&l->buf, s, n);
}

typedef struct {
    const halo_tokenizer *t;
    pcre2_match_data *md;
    tok_bpe_scratch *bpe;
    plist pl[2];
    tok_buf nb[2];
    tok_buf map;
    span *ms; size_t ms_n, ms_cap;   // regex matches of the current piece
    bool *mflag; size_t mflag_cap;
    int err;
    bool seg_first;                  // the text being pre-tokenized starts the input (Metaspace's "first" scheme)
} enc_ctx;

// Regex matches over s[0..n) as a cover of spans, each flagged match / gap (HF Pattern::find_matches).
static int regex_cover(enc_ctx *c, const pcre2_code *re, const char *s, size_t n) {
    c->ms_n = 0;
    size_t start = 0, prev = 0;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
    while (start < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, start, 0, c->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return halo_fail("tokenizer: regex matching failed: %s", (char *)msg);
        }
        size_t ms = ov[0], me = ov[1];
        if (me == ms) {   // empty match: nothing to split off; step over one character
            uint32_t cp;
            start = ms + (size_t)tok_utf8_next((const unsigned char *)s + ms, n - ms, &cp);
            continue;
        }
        if (c->ms_n + 2 > c->ms_cap) {
            c->ms_cap = (c->ms_n + 2) * 2;
            c->ms = xrealloc(c->ms, c->ms_cap * sizeof *c->ms);
            c->mflag = xrealloc(c->mflag, c->ms_cap * sizeof *c->mflag);
        }
        if (ms > prev) { c->ms[c->ms_n] = (span){(uint32_t)prev, (uint32_t)(ms - prev)}; c->mflag[c->ms_n++] = false; }
        c->ms[c->ms_n] = (span){(uint32_t)ms, (uint32_t)(me - ms)}; c->mflag[c->ms_n++] = true;
        prev = start = me;
    }
    if (prev < n) {
        if (c->ms_n + 1 > c->ms_cap) {
            c->ms_cap = (c->ms_n + 1) * 2;
            c->ms = xrealloc(c->ms, c->ms_cap * sizeof *c->ms);
            c->mflag = xrealloc(c->mflag, c->ms_cap * sizeof *c->mflag);
        }
        c->ms[c->ms_n] = (span){(uint32_t)prev, (uint32_t)(n - prev)}; c->mflag[c->ms_n++] = false;
    }
    return HALO_OK;
}

// Split pre-tokenizer on one piece: applies invert and the delimiter behaviour (HF SplitDelimiterBehavior) to the
// cover in c->ms and appends the non-empty results to out.
static void split_apply(enc_ctx *c, const tok_pre *p, const char *s, plist *out) {
    size_t n = c->ms_n;
    if (p->invert) for (size_t i = 0; i < n; i++) c->mflag[i] = !c->mflag[i];
    // Result spans are built in place over c->ms (the folds only ever shrink the list).
    size_t k = 0;
    switch (p->behavior) {
    case SPLIT_ISOLATED: k = n; break;
    case SPLIT_REMOVED:
        for (size_t i = 0; i < n; i++) if (!c->mflag[i]) c->ms[k++] = c->ms[i];
        break;
    case SPLIT_MERGED_PREV: {
        bool prevm = false;
        for (size_t i = 0; i < n; i++) {
            bool m = c->mflag[i];
            if (m && !prevm && k > 0) c->ms[k - 1].len = c->ms[i].off + c->ms[i].len - c->ms[k - 1].off;
            else c->ms[k++] = c->ms[i];
            prevm = m;
        }
        break;
    }
    case SPLIT_MERGED_NEXT: {   // the same fold run right to left
        bool prevm = false;
        size_t w = n;   // results fill c->ms[w..n) from the right
        for (size_t i = n; i-- > 0;) {
            bool m = c->mflag[i];
            span cur = c->ms[i];
            if (m && !prevm && w < n) { c->ms[w].len = c->ms[w].off + c->ms[w].len - cur.off; c->ms[w].off = cur.off; }
            else c->ms[--w] = cur;
            prevm = m;
        }
        for (size_t i = w; i < n; i++) c->ms[k++] = c->ms[i];
        break;
    }
    case SPLIT_CONTIGUOUS: {
        bool prevm = false;
        for (size_t i = 0; i < n; i++) {
            bool m = c->mflag[i];
            if (m == prevm && k > 0) c->ms[k - 1].len = c->ms[i].off + c->ms[i].len - c->ms[k - 1].off;
            else c->ms[k++] = c->ms[i];
            prevm = m;
        }
        break;
    }
    }
    for (size_t i = 0; i < k; i++) if (c->ms[i].len) plist_add(out, s + c->ms[i].off, c->ms[i].len);
}

static void bytelevel_map(enc_ctx *c, const char *s, size_t n, plist *out) {
    c->map.len = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        tok_buf_put(&c->map, g_byte_utf8[b], g_byte_utf8_len[b]);
    }
    plist_add(out, c->map.p ? c->map.p : "", c->map.len);
}

// BPE over one word, cut before each whitespace marker when find_ws_cut found that gives the same tokens.
static void bpe_word_cut(enc_ctx *c, const char *s, size_t n, tok_ivec *out) {
    const halo_tokenizer *t = c->t;
    size_t w = t->ws_cut_len, start = 0;
    for (size_t i = w; w && i + w <= n; i++)
        if (s[i] == t->ws_cut[0] && !memcmp(s + i, t->ws_cut, w) && memcmp(s + i - w, t->ws_cut, w)) {
            tok_bpe_word(t, s + start, i - start, out, c->bpe);
            start = i;
        }
    tok_bpe_word(t, s + start, n - start, out, c->bpe);
}

// Metaspace on one piece: spaces become the replacement, one goes in front by the prepend scheme (first: only on the
// piece that starts the input), then the piece is cut before each replacement (the cut kept with what follows).
static void metaspace_apply(enc_ctx *c, const tok_pre *p, const char *s, size_t n, bool at_start, plist *out) {
    tok_buf *b = &c->nb[0];
    b->len = 0;
    const bool starts = (n && s[0] == ' ') || (n >= p->rep_len && !memcmp(s, p->rep, p->rep_len));
    if (!starts && (p->prepend == PREPEND_ALWAYS || (p->prepend == PREPEND_FIRST && at_start)))
        tok_buf_put(b, p->rep, p->rep_len);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') tok_buf_put(b, p->rep, p->rep_len);
        else tok_buf_put(b, s + i, 1);
    }
    if (!b->len) return;
    if (!p->split) { plist_add(out, b->p, b->len); return; }
    size_t start = 0;   // MergedWithNext: a replacement opens a piece; consecutive ones stand alone
    for (size_t i = 1; i + p->rep_len <= b->len; i++)
        if (!memcmp(b->p + i, p->rep, p->rep_len)) {
            plist_add(out, b->p + start, i - start);
            start = i;
        }
    plist_add(out, b->p + start, b->len - start);
}

// Runs the pre-tokenizers and the model over one normalized piece of text, appending ids.
static int pretok_and_model(enc_ctx *c, const char *s, size_t n, tok_ivec *out) {
    const halo_tokenizer *t = c->t;
    if (n == 0) return HALO_OK;
    if (t->n_pre == 0 && t->ws_cut_len) { bpe_word_cut(c, s, n, out); return HALO_OK; }
    int cur = 0;
    plist *in = &c->pl[0];
    in->n = 0; in->buf.len = 0;
    plist_add(in, s, n);
    for (size_t k = 0; k < t->n_pre; k++) {
        const tok_pre *p = &t->pre[k];
        plist *src = &c->pl[cur], *dst = &c->pl[cur ^ 1];
        dst->n = 0; dst->buf.len = 0;
        for (size_t i = 0; i < src->n; i++) {
            const char *ps = src->buf.p + src->sp[i].off;
            size_t pn = src->sp[i].len;
            if (p->kind == PRE_SPLIT) {
                if (regex_cover(c, p->re, ps, pn)) return HALO_ERR;
                split_apply(c, p, ps, dst);
            } else if (p->kind == PRE_METASPACE) {
                metaspace_apply(c, p, ps, pn, c->seg_first && i == 0, dst);
            } else {   // ByteLevel
                const char *q = ps; size_t qn = pn;
                if (p->add_prefix_space && (pn == 0 || ps[0] != ' ')) {
                    c->nb[0].len = 0;
                    tok_buf_put(&c->nb[0], " ", 1); tok_buf_put(&c->nb[0], ps, pn);
                    q = c->nb[0].p; qn = c->nb[0].len;
                }
                if (p->re) {
                    if (regex_cover(c, p->re, q, qn)) return HALO_ERR;
                    for (size_t j = 0; j < c->ms_n; j++) bytelevel_map(c, q + c->ms[j].off, c->ms[j].len, dst);
                } else bytelevel_map(c, q, qn, dst);
            }
        }
        cur ^= 1;
    }
    plist *fin = &c->pl[cur];
    for (size_t i = 0; i < fin->n; i++) bpe_word_cut(c, fin->buf.p + fin->sp[i].off, fin->sp[i].len, out);
    return HALO_OK;
}

// Literal replace-all of pat by rep over s into out.
static void replace_all(tok_buf *out, const char *s, size_t n, const char *pat, size_t pn, const char *rep, size_t rn) {
    size_t i = 0;
    while (i < n) {
        const char *hit = pn <= n - i ? memmem(s + i, n - i, pat, pn) : NULL;
        if (!hit) break;
        size_t h = (size_t)(hit - s);
        tok_buf_put(out, s + i, h - i);
        tok_buf_put(out, rep, rn);
        i = h + pn;
    }
    tok_buf_put(out, s + i, n - i);
}

// Applies the normalizers; returns a pointer to the result (s itself when there are none).
static int normalize(enc_ctx *c, const halo_tokenizer *t, const char *s, size_t n, const char **res, size_t *rn) {
    int cur = 0;
    for (size_t k = 0; k < t->n_norm; k++) {
        const tok_norm *m = &t->norm[k];
        tok_buf *o = &c->nb[cur];
        o->len = 0;
        if (m->kind == NORM_PREPEND) {
            if (n) tok_buf_put(o, m->a, m->alen);
            tok_buf_put(o, s, n);
        } else if (m->kind == NORM_NFC) {
            if (!nfc_may_change(s, n)) continue;   // the text as it is (nothing at or above U+0300)
            char *r;
            size_t rl;
            if (nfc_normalize(s, n, &r, &rl)) { halo_fail("NFC normalizer: out of memory"); return HALO_ERR; }
            tok_buf_put(o, r, rl);
            free(r);
        } else if (m->re) {
            if (regex_cover(c, m->re, s, n)) return HALO_ERR;
            for (size_t i = 0; i < c->ms_n; i++) {
                if (c->mflag[i]) tok_buf_put(o, m->b, m->blen);
                else tok_buf_put(o, s + c->ms[i].off, c->ms[i].len);
            }
            if (!o->p) tok_buf_put(o, "", 0);
        } else replace_all(o, s, n, m->a, m->alen, m->b, m->blen);
        s = o->p; n = o->len;
        cur ^= 1;
    }
    *res = s; *rn = n;
    return HALO_OK;
}

// Leftmost-longest match of an added token (raw or normalized set) in s[from..n). Returns the index into t->added.
static long added_find(const halo_tokenizer *t, const char *s, size_t n, size_t from, bool normalized_set, size_t *at) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = from; i < n; i++) {
        uint32_t lo = t->added_first[u[i]], hi = t->added_first[u[i] + 1];
        for (uint32_t k = lo; k < hi; k++) {   // longest first, so the first hit is the leftmost-longest match
            const tok_added *a = &t->added[t->added_by_byte[k]];
            if (a->normalized != normalized_set || a->len > n - i) continue;
            if (!memcmp(a->content, s + i, a->len)) { *at = i; return (long)t->added_by_byte[k]; }
        }
    }
    return -1;
}

static bool is_word_char_at(const halo_tokenizer *t, pcre2_match_data *md, const char *s, size_t n, size_t at) {
    return pcre2_match(t->word_re, (PCRE2_SPTR)s, n, at, PCRE2_ANCHORED, md, NULL) > 0;
}
static size_t prev_char_start(const char *s, size_t at) {
    size_t i = at;
    while (i > 0) { i--; if (((unsigned char)s[i] & 0xC0) != 0x80) break; }
    return i;
}

// Splits s on added tokens (AddedVocabulary::find_matches); calls fn on the text between matches and pushes the
// ids of the matches.
typedef int (*seg_fn)(enc_ctx *c, const char *s, size_t n, tok_ivec *out);
static int split_added(enc_ctx *c, const char *s, size_t n, bool normalized_set, seg_fn fn, tok_ivec *out) {
    const halo_tokenizer *t = c->t;
    const bool first = c->seg_first;   // s starts the input: so does its first segment, if nothing precedes it
    size_t start_offset = 0, from = 0, at;
    long j;
    while (from < n && (j = added_find(t, s, n, from, normalized_set, &at)) >= 0) {
        const tok_added *a = &t->added[j];
        size_t start = at, stop = at + a->len;
        from = stop;
        if (a->single_word) {
            bool start_space = start == 0 || !is_word_char_at(t, c->md, s, n, prev_char_start(s, start));
            bool stop_space = stop == n || !is_word_char_at(t, c->md, s, n, stop);
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t p = prev_char_start(s, ns);
                uint32_t cp;
                tok_utf8_next((const unsigned char *)s + p, n - p, &cp);
                if (!tok_is_whitespace(cp)) break;
                ns = p;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip) {
            while (stop < n) {
                uint32_t cp;
                int k = tok_utf8_next((const unsigned char *)s + stop, n - stop, &cp);
                if (!tok_is_whitespace(cp)) break;
                stop += (size_t)k;
            }
        }
        c->seg_first = first && start_offset == 0;
        if (start_offset < start && fn(c, s + start_offset, start - start_offset, out)) return HALO_ERR;
        tok_ivec_push(out, a->id);
        start_offset = stop;
    }
    c->seg_first = first && start_offset == 0;
    if (start_offset < n && fn(c, s + start_offset, n - start_offset, out)) return HALO_ERR;
    return HALO_OK;
}

static int seg_normalized(enc_ctx *c, const char *s, size_t n, tok_ivec *out) {
    return pretok_and_model(c, s, n, out);
}
static int seg_raw(enc_ctx *c, const char *s, size_t n, tok_ivec *out) {
    const char *ns; size_t nn;
    if (normalize(c, c->t, s, n, &ns, &nn)) return HALO_ERR;
    if (!c->t->any_normalized_added) return pretok_and_model(c, ns, nn, out);
    // The normalized-token split needs its own copy: the normalize buffers are reused below.
    char *copy = xmalloc(nn + 1); memcpy(copy, ns, nn);
    int rc = split_added(c, copy, nn, true, seg_normalized, out);
    free(copy);
    return rc;
}

// Per-thread scratch reused across calls, so that encoding many short lines does not pay for allocations each time.
static _Thread_local enc_ctx *tl_ctx;

int tokenizer_encode(const halo_tokenizer *t, const char *text, size_t len, bool add_special, int32_t **ids,
                     size_t *n_ids) {
    if (!tl_ctx) {
        tl_ctx = xcalloc(1, sizeof *tl_ctx);
        tl_ctx->md = pcre2_match_data_create(8, NULL);
        tl_ctx->bpe = tok_bpe_scratch_new();
    }
    if (len > (size_t)INT32_MAX) {   // pieces are addressed with 32-bit offsets
        *ids = NULL; *n_ids = 0;
        return halo_fail("tokenizer_encode: text of %zu bytes is over the 2 GiB limit; encode it in parts", len);
    }
    enc_ctx *c = tl_ctx;
    c->t = t;
    c->seg_first = true;
    tok_ivec seq = {0};
    int rc = split_added(c, text, len, false, seg_raw, &seq);
    if (rc) { free(seq.p); *ids = NULL; *n_ids = 0; return HALO_ERR; }
    if (add_special && t->n_tmpl) {
        tok_ivec o = {0};
        for (size_t i = 0; i < t->n_tmpl; i++) {
            if (t->tmpl[i].is_seq) for (size_t j = 0; j < seq.n; j++) tok_ivec_push(&o, seq.p[j]);
            else for (size_t j = 0; j < t->tmpl[i].n; j++) tok_ivec_push(&o, t->tmpl[i].ids[j]);
        }
        free(seq.p);
        seq = o;
    }
    if (!seq.p) seq.p = xmalloc(sizeof(int32_t));
    *ids = seq.p; *n_ids = seq.n;
    return HALO_OK;
}

// ---------------------------------------------------------------- decoding
typedef struct { tok_buf *s; size_t n, cap; } tlist;
static void tlist_add(tlist *l, const char *s, size_t n) {
    l->s = grow(l->s, l->n, &l->cap, sizeof *l->s);
    l->s[l->n] = (tok_buf){0};
    tok_buf_put(&l->s[l->n], s, n);
    l->n++;
}
static void tlist_free(tlist *l) { for (size_t i = 0; i < l->n; i++) free(l->s[i].p); free(l->s); *l = (tlist){0}; }

static int byte_token(const tok_buf *b) {   // "<0xAB>" -> 0xAB, else -1
    if (b->len != 6 || memcmp(b->p, "<0x", 3) || b->p[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char ch = b->p[i];
        int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static bool valid_utf8(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += (size_t)tok_utf8_next(s + i, n - i, &cp);
        if (cp == TOK_BAD_CP) return false;
    }
    return true;
}

static void dec_step(const tok_dec *d, tlist *in, tlist *out) {
    switch (d->kind) {
    case DEC_REPLACE:
        for (size_t i = 0; i < in->n; i++) {
            tok_buf b = {0};
            replace_all(&b, in->s[i].p, in->s[i].len, d->a, d->alen, d->b, d->blen);
            out->s = grow(out->s, out->n, &out->cap, sizeof *out->s);
            out->s[out->n++] = b;
        }
        break;
    case DEC_BYTEFALLBACK: {
        // runs of <0xAB> tokens become their bytes when those are valid UTF-8, else one U+FFFD per byte token
        tok_buf run = {0};
        for (size_t i = 0; i <= in->n; i++) {
            int v = i < in->n ? byte_token(&in->s[i]) : -1;
            if (v >= 0) { unsigned char b = (unsigned char)v; tok_buf_put(&run, &b, 1); continue; }
            if (run.len) {
                if (valid_utf8((const unsigned char *)run.p, run.len)) tlist_add(out, run.p, run.len);
                else for (size_t k = 0; k < run.len; k++) tlist_add(out, "\xEF\xBF\xBD", 3);
                run.len = 0;
            }
            if (i < in->n) tlist_add(out, in->s[i].p ? in->s[i].p : "", in->s[i].len);
        }
        free(run.p);
        break;
    }
    case DEC_FUSE: {
        tok_buf b = {0};
        for (size_t i = 0; i < in->n; i++) tok_buf_put(&b, in->s[i].p, in->s[i].len);
        if (!b.p) tok_buf_put(&b, "", 0);
        out->s = grow(out->s, out->n, &out->cap, sizeof *out->s);
        out->s[out->n++] = b;
        break;
    }
    case DEC_STRIP:
        for (size_t i = 0; i < in->n; i++) {
            const char *s = in->s[i].p ? in->s[i].p : ""; size_t n = in->s[i].len, a = 0, e = n;
            for (int k = 0; k < d->start && a + d->alen <= e && !memcmp(s + a, d->a, d->alen); k++) a += d->alen;
            for (int k = 0; k < d->stop && e >= a + d->alen && !memcmp(s + e - d->alen, d->a, d->alen); k++) e -= d->alen;
            tlist_add(out, s + a, e - a);
        }
        break;
    case DEC_BYTELEVEL: {
        tok_buf raw = {0};
        for (size_t i = 0; i < in->n; i++) {
            const unsigned char *s = (const unsigned char *)in->s[i].p; size_t n = in->s[i].len, start = raw.len;
            bool ok = true;
            for (size_t k = 0; k < n;) {
                uint32_t cp;
                k += (size_t)tok_utf8_next(s + k, n - k, &cp);
                if (cp >= 0x200 || g_cp_byte[cp] < 0) { ok = false; break; }
                unsigned char b = (unsigned char)g_cp_byte[cp];
                tok_buf_put(&raw, &b, 1);
            }
            if (!ok) { raw.len = start; tok_buf_put(&raw, s, n); }   // a token outside the alphabet stays as is
        }
        tok_buf b = {0};
        tok_buf_lossy(&b, (const unsigned char *)raw.p, raw.len);
        free(raw.p);
        out->s = grow(out->s, out->n, &out->cap, sizeof *out->s);
        out->s[out->n++] = b;
        break;
    }
    case DEC_METASPACE:   // the replacement back to a space; in the first token dropped (it was prepended)
        for (size_t i = 0; i < in->n; i++) {
            tok_buf b = {0};
            replace_all(&b, in->s[i].p ? in->s[i].p : "", in->s[i].len, d->a, d->alen, " ", i == 0 && d->drop_first ? 0 : 1);
            if (!b.p) tok_buf_put(&b, "", 0);
            out->s = grow(out->s, out->n, &out->cap, sizeof *out->s);
            out->s[out->n++] = b;
        }
        break;
    default: break;
    }
}

char *tokenizer_decode(const halo_tokenizer *t, const int32_t *ids, size_t n_ids, bool skip_special) {
    tlist a = {0}, b = {0};
    for (size_t i = 0; i < n_ids; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_total) continue;   // unknown ids are dropped, as HF does
        int32_t ai = t->added_by_id[id];
        if (ai >= 0) {
            if (skip_special && t->added[ai].special) continue;
            tlist_add(&a, t->added[ai].content, t->added[ai].len);
        } else if (id < t->n_pieces && t->pieces[id]) tlist_add(&a, t->pieces[id], t->piece_len[id]);
    }
    tok_buf res = {0};
    if (!t->has_decoder) {
        for (size_t i = 0; i < a.n; i++) { if (i) tok_buf_put(&res, " ", 1); tok_buf_put(&res, a.s[i].p, a.s[i].len); }
    } else {
        for (size_t k = 0; k < t->n_dec; k++) {
            b.n = 0;
            dec_step(&t->dec[k], &a, &b);
            tlist tmp = a; a = b; b = tmp;
            for (size_t i = 0; i < b.n; i++) free(b.s[i].p);
            b.n = 0;
        }
        for (size_t i = 0; i < a.n; i++) tok_buf_put(&res, a.s[i].p, a.s[i].len);
    }
    tlist_free(&a); tlist_free(&b);
    if (!res.p) tok_buf_put(&res, "", 0);
    return res.p;
}

// ---------------------------------------------------------------- lookups
int32_t tokenizer_token_id(const halo_tokenizer *t, const char *token) { return find_token_id(t, token); }
const char *tokenizer_piece(const halo_tokenizer *t, int32_t id) {
    if (id < 0 || id >= t->n_total) return NULL;
    if (t->added_by_id[id] >= 0) return t->added[t->added_by_id[id]].content;
    return id < t->n_pieces ? t->pieces[id] : NULL;
}
size_t tokenizer_vocab_size(const halo_tokenizer *t) { return (size_t)t->n_total; }
int32_t tokenizer_bos_id(const halo_tokenizer *t) { return t->bos_id; }
int32_t tokenizer_eos_id(const halo_tokenizer *t) { return t->eos_id; }
const char *tokenizer_chat_template(const halo_tokenizer *t) { return t->chat_template; }
