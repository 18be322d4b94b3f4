// Internal pieces of the tokenizer module shared by its .c files: UTF-8 helpers, the string->id and pair->merge
// hash maps, the tokenizer struct with its normalizer / pre-tokenizer / decoder step lists, and the BPE engine.
// Nothing here is part of the public API (src/tokenizer/tokenizer.h).
#ifndef HALO_TOK_INTERNAL_H
#define HALO_TOK_INTERNAL_H
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "tokenizer/tokenizer.h"

// ---- UTF-8 ----
// Length of the character at s[0..n): 1..4 for a valid sequence (*cp set), or 1 with *cp = TOK_BAD_CP for a byte
// that does not start a valid sequence (encoding treats such a byte as a character of its own).
#define TOK_BAD_CP 0xFFFFFFFFu
int tok_utf8_next(const unsigned char *s, size_t n, uint32_t *cp);
int tok_utf8_put(uint32_t cp, char *out);                       // writes 1..4 bytes, returns the count
bool tok_is_whitespace(uint32_t cp);                            // Unicode White_Space (Rust char::is_whitespace)
// Appends s[0..n) to a growing buffer replacing ill-formed sequences with U+FFFD the way Rust's
// String::from_utf8_lossy does (one U+FFFD per maximal ill-formed subpart).
typedef struct { char *p; size_t len, cap; } tok_buf;
void tok_buf_put(tok_buf *b, const void *s, size_t n);
void tok_buf_lossy(tok_buf *b, const unsigned char *s, size_t n);

// ---- hash maps ----
uint64_t tok_hash(const void *s, size_t n);
// string -> id map over strings owned elsewhere (strs[id], lens[id], which must not move); open addressing,
// power-of-two slots. A slot keeps the string pointer and length so a probe touches one cache line before memcmp.
typedef struct { const char *s; uint32_t len; int32_t id; } tok_strslot;
typedef struct { tok_strslot *slot; size_t mask; size_t count; } tok_strmap;
void tok_strmap_init(tok_strmap *m, size_t expected);
void tok_strmap_free(tok_strmap *m);
// Inserts id for strs[id]; if the string is already present the old id is replaced (last one wins, like a HashMap
// built from a list). Returns the previous id or -1.
int32_t tok_strmap_put(tok_strmap *m, char *const *strs, const uint32_t *lens, int32_t id);
int32_t tok_strmap_get(const tok_strmap *m, char *const *strs, const uint32_t *lens, const char *s, size_t n);

// (left id, right id) -> (rank, merged id)
typedef struct { uint64_t key; int32_t rank, new_id; } tok_merge_slot;
typedef struct { tok_merge_slot *slot; size_t mask, count; } tok_mergemap;
void tok_mergemap_init(tok_mergemap *m, size_t expected);
void tok_mergemap_free(tok_mergemap *m);
void tok_mergemap_put(tok_mergemap *m, int32_t a, int32_t b, int32_t rank, int32_t new_id);   // overwrites
static inline const tok_merge_slot *tok_mergemap_get(const tok_mergemap *m, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t h = key * 0x9E3779B97F4A7C15ULL;
    size_t i = (size_t)(h >> 32) & m->mask;
    for (;;) {
        const tok_merge_slot *s = &m->slot[i];
        if (s->key == key) return s;
        if (s->key == UINT64_MAX) return NULL;
        i = (i + 1) & m->mask;
    }
}

// ---- pipeline components (the subset of HF tokenizers these Llama files use) ----
typedef enum { NORM_PREPEND, NORM_REPLACE, NORM_NFC } tok_norm_kind;
typedef struct {
    tok_norm_kind kind;
    char *a; size_t alen;       // Prepend: the prefix; Replace: the literal pattern
    char *b; size_t blen;       // Replace: the replacement
    pcre2_code *re;             // Replace with a Regex pattern (else NULL)
} tok_norm;

typedef enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS } tok_split_behavior;
typedef enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE } tok_pre_kind;
typedef enum { PREPEND_NEVER, PREPEND_ALWAYS, PREPEND_FIRST } tok_prepend;
typedef struct {
    tok_pre_kind kind;
    pcre2_code *re;             // Split: the regex (a String pattern is escaped into one); ByteLevel: GPT-2 regex or NULL
    tok_split_behavior behavior;
    bool invert;
    bool add_prefix_space;      // ByteLevel
    char rep[8]; uint32_t rep_len;  // Metaspace: the space replacement (one character, UTF-8)
    tok_prepend prepend;        // Metaspace: where a replacement goes in front (first: only at the text's start)
    bool split;                 // Metaspace: cut before each replacement
} tok_pre;

typedef enum { DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_BYTELEVEL, DEC_METASPACE } tok_dec_kind;
typedef struct {
    tok_dec_kind kind;
    char *a; size_t alen;           // Replace: pattern; Strip: content char (UTF-8); Metaspace: the replacement
    bool drop_first;                // Metaspace: the first token's replacements are dropped (prepend scheme not never)
    char *b; size_t blen;           // Replace: content
    int start, stop;                // Strip
} tok_dec;

typedef struct {
    char *content; uint32_t len;
    int32_t id;
    bool special, single_word, lstrip, rstrip, normalized;
} tok_added;

// One item of a TemplateProcessing "single" template: a run of special-token ids, or the sequence itself.
typedef struct { bool is_seq; int32_t *ids; size_t n; } tok_tmpl_item;

struct halo_tokenizer {
    char *path;
    char *chat_template;        // chat_template.jinja, else tokenizer_config.json's chat_template ("default"), or NULL
    // model vocabulary: pieces[id] (NULL where an id is unused); n_pieces = max id + 1
    char **pieces; uint32_t *piece_len; int32_t n_pieces;
    tok_strmap vocab;
    tok_mergemap merges;
    int32_t char_id[0x800];     // id of the one-character piece for code points < 0x800, -1 when absent
    int32_t byte_id[256];       // id of "<0xAB>" pieces for byte fallback, -1 when absent
    int32_t unk_id;             // -1 when the model has no unk_token
    bool byte_fallback, fuse_unk, ignore_merges;
    // added tokens (indexed by first byte for matching in raw text)
    tok_added *added; size_t n_added;
    int32_t *added_by_id;       // id -> index into added, or -1; size n_total
    // added-token indices grouped by first byte, longest first: by_byte[first[b] .. first[b+1])
    uint32_t added_first[257]; uint32_t *added_by_byte;
    int32_t n_total;            // max id over model and added tokens + 1
    bool any_normalized_added, any_single_word;
    pcre2_code *word_re;        // \w, for single_word tokens
    // pipeline
    tok_norm *norm; size_t n_norm;
    tok_pre *pre; size_t n_pre;
    tok_dec *dec; size_t n_dec; bool has_decoder;
    tok_tmpl_item *tmpl; size_t n_tmpl;  // empty: the post-processor adds nothing
    int32_t bos_id, eos_id;
    // With no pre-tokenizer, a SentencePiece-style text is one BPE word. When no merge can produce the whitespace
    // marker (e.g. "▁") after another character, cutting the text before each such marker gives the same tokens,
    // and much shorter words. ws_cut_len = 0 when that does not hold.
    char ws_cut[8]; uint32_t ws_cut_len;
    uint64_t gen;               // unique per loaded tokenizer: keys the per-thread word cache
};

// BPE over one pre-token (UTF-8 string, possibly with invalid bytes): appends ids to *out (growing *cap).
typedef struct { int32_t *p; size_t n, cap; } tok_ivec;
void tok_ivec_push(tok_ivec *v, int32_t x);
typedef struct tok_bpe_scratch tok_bpe_scratch;
tok_bpe_scratch *tok_bpe_scratch_new(void);
void tok_bpe_scratch_free(tok_bpe_scratch *s);
void tok_bpe_word(const halo_tokenizer *t, const char *s, size_t n, tok_ivec *out, tok_bpe_scratch *sc);

// Fills the derived tables (char_id, byte_id) once vocab is loaded.
void tok_build_char_tables(halo_tokenizer *t);
// Loads a SentencePiece tokenizer.model (BPE type) into t, mirroring HF's conversion (spm.c).
int tok_load_spm(halo_tokenizer *t, const char *path);
// Registers an added token (copying content); used by both loaders.
void tok_add_added(halo_tokenizer *t, const char *content, size_t len, int32_t id, bool special, bool single_word,
                   bool lstrip, bool rstrip, bool normalized);
// Finishes loading: added-token index, n_total, bos/eos fallbacks. Returns HALO_OK/HALO_ERR.
int tok_finish(halo_tokenizer *t);
#endif
