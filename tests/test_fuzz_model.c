// Seeded mutation fuzzing of the model-directory readers: model.safetensors (st_open + every tensor through
// llama_load), config.json, model.safetensors.index.json (sharded), tokenizer.json and tokenizer.model. Each mutant
// goes into a fresh model directory; the reader must either accept it (and the result must work: a short forward
// pass, encode/decode with ids in range) or refuse it with a message naming the file. ASan/UBSan catch crashes;
// targeted mutants that must be refused are asserted one by one. Deterministic (splitmix64, fixed seeds).
#include <stdint.h>
#include <sys/stat.h>
#include <cjson/cJSON.h>
#include "io/safetensors.h"
#include "model/llama.h"
#include "test.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

typedef struct { unsigned char *p; size_t n; } buf;

static char g_dir[64];                  // the temporary model directory every mutant is written into
static unsigned long long g_rng;

static unsigned long long rnd(unsigned long long n) { return n ? t_rng_next(&g_rng) % n : 0; }

static buf slurp(const char *path) {
    buf b = {0};
    FILE *f = fopen(path, "rb");
    if (!f) return b;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    b.p = malloc((size_t)n + 1);
    b.n = fread(b.p, 1, (size_t)n, f);
    b.p[b.n] = 0;
    fclose(f);
    return b;
}

static const char *dpath(const char *name) {
    static char p[4][256];
    static int k;
    k = (k + 1) & 3;
    snprintf(p[k], sizeof p[k], "%s/%s", g_dir, name);
    return p[k];
}

static void put(const char *name, const void *p, size_t n) {
    FILE *f = fopen(dpath(name), "wb");
    if (n) fwrite(p, 1, n, f);
    fclose(f);
}

static void clear_dir(void) {
    static const char *names[] = {"config.json", "model.safetensors", "model.safetensors.index.json",
                                  "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                  "tokenizer.json", "tokenizer.model", "tokenizer_config.json"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) remove(dpath(names[i]));
}

// ---- generic byte mutations on b[lo, hi) (in place or into a new buffer) ----
static buf bdup(const void *p, size_t n) { buf r = {malloc(n + 1), n}; memcpy(r.p, p, n); r.p[n] = 0; return r; }

static buf splice(const buf *b, size_t at, size_t del, const void *ins, size_t ins_n) {
    buf r = {malloc(b->n - del + ins_n + 1), b->n - del + ins_n};
    memcpy(r.p, b->p, at);
    memcpy(r.p + at, ins, ins_n);
    memcpy(r.p + at + ins_n, b->p + at + del, b->n - at - del);
    r.p[r.n] = 0;
    return r;
}

// One of: bit flips, random bytes, delete a span, duplicate a span, truncate; within [lo, hi).
static buf byte_mutant(const buf *b, size_t lo, size_t hi, const char **what) {
    if (hi <= lo) hi = lo + 1;
    if (hi > b->n) hi = b->n;
    size_t span = hi - lo, at = lo + rnd(span), len = 1 + rnd(span / 8 + 1);
    if (at + len > b->n) len = b->n - at;
    switch (rnd(5)) {
    case 0: { buf r = bdup(b->p, b->n); for (int k = 0, nf = 1 + (int)rnd(4); k < nf; k++) r.p[lo + rnd(span)] ^= (unsigned char)(1u << rnd(8)); *what = "bit flips"; return r; }
    case 1: { buf r = bdup(b->p, b->n); for (size_t k = 0; k < len && k < 16; k++) r.p[at + k] = (unsigned char)rnd(256); *what = "random bytes"; return r; }
    case 2: *what = "deleted span"; return splice(b, at, len, "", 0);
    case 3: *what = "duplicated span"; return splice(b, at, 0, b->p + at, len);
    default: *what = "truncated"; return bdup(b->p, at);
    }
}

// ---- JSON-aware text mutations: replace a number or string token, delete or duplicate an object member ----
static const char *const WEIRD_NUM[] = {"1e300", "-1", "-7", "0", "2.5", "\"7\"", "18446744073709551616",
                                        "9007199254740993", "4294967296", "null", "[]", "{}", "true", "2147483647",
                                        "-2147483648", "1e-300", "-0", "1e15", "123456789012"};
static const char *const WEIRD_STR[] = {"\"\"", "\"\\ud800\"", "\"\xff\xfe\"", "\"F64\"", "\"I32\"", "\"BOOL\"",
                                        "\"F8_E4M3\"", "\"F16\"", "\"x y z\"", "\"<s>\"", "\"\\u0000a\"", "0", "null",
                                        "\"\xc3\x28\"", "\"a b\"", "\"BPE\"", "\"Sequence\""};

// Finds the token starting at or after `from`: kind 1 number, 2 string. Returns its start or SIZE_MAX.
static size_t json_token(const buf *b, size_t from, int want, size_t *end) {
    for (size_t i = from; i < b->n; i++) {
        unsigned char c = b->p[i];
        if (c == '"') {
            size_t j = i + 1;
            while (j < b->n && b->p[j] != '"') j += b->p[j] == '\\' ? 2 : 1;
            if (j >= b->n) return SIZE_MAX;
            if (want == 2) { *end = j + 1; return i; }
            i = j;
        } else if (want == 1 && (c == '-' || (c >= '0' && c <= '9'))) {
            size_t j = i;
            while (j < b->n && strchr("+-.eE0123456789", b->p[j])) j++;
            *end = j;
            return i;
        }
    }
    return SIZE_MAX;
}

// End of the JSON value starting at i (bracket matching, strings skipped).
static size_t value_end(const buf *b, size_t i) {
    while (i < b->n && strchr(" \t\r\n", b->p[i])) i++;
    int depth = 0;
    for (; i < b->n; i++) {
        unsigned char c = b->p[i];
        if (c == '"') { i++; while (i < b->n && b->p[i] != '"') i += b->p[i] == '\\' ? 2 : 1; if (!depth) return i + 1; }
        else if (c == '{' || c == '[') depth++;
        else if (c == '}' || c == ']') { if (--depth <= 0) return depth < 0 ? i : i + 1; }
        else if (!depth && (c == ',' )) return i;
    }
    return b->n;
}

static buf json_mutant(const buf *b, const char **what) {
    size_t s = rnd(b->n), e = 0, at;
    switch (rnd(4)) {
    case 0:
        if ((at = json_token(b, s, 1, &e)) == SIZE_MAX && (at = json_token(b, 0, 1, &e)) == SIZE_MAX) break;
        *what = "number replaced";
        { const char *w = WEIRD_NUM[rnd(sizeof WEIRD_NUM / sizeof *WEIRD_NUM)]; return splice(b, at, e - at, w, strlen(w)); }
    case 1:
        if ((at = json_token(b, s, 2, &e)) == SIZE_MAX && (at = json_token(b, 0, 2, &e)) == SIZE_MAX) break;
        *what = "string replaced";
        { const char *w = WEIRD_STR[rnd(sizeof WEIRD_STR / sizeof *WEIRD_STR)]; return splice(b, at, e - at, w, strlen(w)); }
    default:   // a member "key": value, deleted (with its comma) or duplicated
        for (size_t from = s, tries = 0; tries < 2; tries++, from = 0)
            while ((at = json_token(b, from, 2, &e)) != SIZE_MAX) {
                size_t k = e;
                while (k < b->n && strchr(" \t\r\n", b->p[k])) k++;
                if (k < b->n && b->p[k] == ':') {
                    size_t ve = value_end(b, k + 1);
                    if (ve < b->n && b->p[ve] == ',') ve++;
                    if (rnd(2)) { *what = "member deleted"; return splice(b, at, ve - at, "", 0); }
                    *what = "member duplicated";
                    buf m = bdup(b->p + at, ve - at);
                    if (!m.n || m.p[m.n - 1] != ',') { m.p = realloc(m.p, m.n + 2); m.p[m.n++] = ','; }
                    buf r = splice(b, at, 0, m.p, m.n);
                    free(m.p);
                    return r;
                }
                from = e;
            }
    }
    *what = "truncated";
    return bdup(b->p, rnd(b->n));
}

// ---- outcome bookkeeping ----
typedef struct { const char *kind; int mutants, accepted, refused, bad_msg; char first_bad[400]; } tally;
static tally g_tally[8];
static int g_ntally;

static tally *kind(const char *name) {
    for (int i = 0; i < g_ntally; i++) if (!strcmp(g_tally[i].kind, name)) return &g_tally[i];
    g_tally[g_ntally].kind = name;
    return &g_tally[g_ntally++];
}

// Records one reader call: a refusal must say which file (`file`, any of '|'-separated names).
static void outcome(tally *t, int rc, const char *file, const char *what) {
    t->mutants++;
    if (rc == HALO_OK) { t->accepted++; return; }
    t->refused++;
    const char *m = halo_error();
    int named = 0;
    char names[256];
    snprintf(names, sizeof names, "%s", file);
    for (char *sv, *tok = strtok_r(names, "|", &sv); tok; tok = strtok_r(NULL, "|", &sv)) named |= m && strstr(m, tok) != NULL;
    if (!m || !*m || !named) {
        if (!t->bad_msg++) snprintf(t->first_bad, sizeof t->first_bad, "%s: \"%s\"", what, m ? m : "(null)");
    }
}

// The loaded model must run: a 4-token forward pass with a finite-or-not loss but no crash or huge allocation.
static void try_forward(llama_model *m) {
    halo_batch b;
    halo_batch_alloc(&b, 1, 4);
    for (int i = 0; i < 4; i++) b.input_ids[i] = i % m->cfg.vocab_size;
    halo_batch_shift_targets(&b);
    llama_forward(m, &b, NULL);
    halo_batch_free(&b);
}

static int load_model_dir(tally *t, const char *files, const char *what, int forward) {
    llama_model m;
    int rc = llama_load(&m, g_dir);
    outcome(t, rc, files, what);
    if (rc == HALO_OK) { if (forward) try_forward(&m); llama_free(&m); }
    return rc;
}

// ---- model.safetensors ----
typedef struct { buf file; uint64_t hlen; buf header; size_t data_off; } st_parts;

static buf st_build(const st_parts *o, const char *hdr, size_t hn, uint64_t hlen) {
    size_t dn = o->file.n - o->data_off;
    buf r = {malloc(8 + hn + dn + 1), 8 + hn + dn};
    for (int i = 0; i < 8; i++) r.p[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(r.p + 8, hdr, hn);
    memcpy(r.p + 8 + hn, o->file.p + o->data_off, dn);
    return r;
}

static buf st_from_json(const st_parts *o, cJSON *root) {
    char *s = cJSON_PrintUnformatted(root);
    buf r = st_build(o, s, strlen(s), strlen(s));
    free(s);
    return r;
}

// A random tensor entry of the header (not __metadata__).
static cJSON *pick_tensor(cJSON *root) {
    int n = cJSON_GetArraySize(root);
    for (int tries = 0; tries < 8; tries++) {
        cJSON *e = cJSON_GetArrayItem(root, (int)rnd((unsigned long long)n));
        if (e && strcmp(e->string, "__metadata__")) return e;
    }
    return root->child;
}

static cJSON *num_array(int n, const double *v) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

// Structural edits of one tensor entry through cJSON (the header length stays consistent).
static buf st_struct_mutant(const st_parts *o, const char **what) {
    cJSON *root = cJSON_ParseWithLength((const char *)o->header.p, o->header.n);
    cJSON *e = pick_tensor(root), *other = pick_tensor(root);
    double ds = (double)(o->file.n - o->data_off);
    cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    double b0 = cJSON_GetArrayItem(of, 0)->valuedouble, b1 = cJSON_GetArrayItem(of, 1)->valuedouble;
    switch (rnd(10)) {
    case 0: { double v[2] = {b0, ds + 1 + (double)rnd(1000)}; cJSON_ReplaceItemInObject(e, "data_offsets", num_array(2, v)); *what = "data_offsets beyond the file"; break; }
    case 1: { double v[2] = {b1, b0}; cJSON_ReplaceItemInObject(e, "data_offsets", num_array(2, v)); *what = "data_offsets reversed"; break; }
    case 2: cJSON_ReplaceItemInObject(e, "data_offsets", cJSON_Duplicate(cJSON_GetObjectItem(other, "data_offsets"), 1));
            cJSON_ReplaceItemInObject(e, "shape", cJSON_Duplicate(cJSON_GetObjectItem(other, "shape"), 1));
            *what = "data_offsets overlap another tensor"; break;
    case 3: { double v[3] = {4294967296.0, 4294967296.0, 16}; cJSON_ReplaceItemInObject(e, "shape", num_array(3, v)); *what = "shape product overflows"; break; }
    case 4: { double v[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}; cJSON_ReplaceItemInObject(e, "shape", num_array(9, v)); *what = "9 dims"; break; }
    case 5: { static const char *dt[] = {"F16", "BF16", "F64", "I32", "I64", "BOOL", "U8", "F8_E5M2", "f32", "", "Q4"};
              cJSON_ReplaceItemInObject(e, "dtype", cJSON_CreateString(dt[rnd(11)])); *what = "dtype changed"; break; }
    case 6: { static const char *k[] = {"dtype", "shape", "data_offsets"}; cJSON_DeleteItemFromObject(e, k[rnd(3)]); *what = "key removed"; break; }
    case 7: cJSON_AddItemToObject(root, e->string, cJSON_Duplicate(e, 1)); *what = "tensor listed twice"; break;
    case 8: { cJSON *sh = cJSON_GetObjectItem(e, "shape"); int nd = cJSON_GetArraySize(sh);
              static const double w[] = {-1, 0, 1e300, 0.5, 1e16, 2, 3};
              if (nd) cJSON_ReplaceItemInArray(sh, (int)rnd((unsigned long long)nd), cJSON_CreateNumber(w[rnd(7)]));
              *what = "shape entry replaced"; break; }
    default: { static const double w[] = {-1, 0.5, 1e300, 1e19, 18446744073709551616.0};
               cJSON_ReplaceItemInArray(of, (int)rnd(2), cJSON_CreateNumber(w[rnd(5)])); *what = "data_offsets entry replaced"; break; }
    }
    buf r = st_from_json(o, root);
    cJSON_Delete(root);
    return r;
}

static buf st_mutant(const st_parts *o, const char **what) {
    size_t H = 8 + (size_t)o->hlen, N = o->file.n;
    switch (rnd(8)) {
    case 0: return byte_mutant(&o->file, 8, H, what);   // header bytes, length field unchanged
    case 1: {   // header bytes, length field fixed up
        buf h = byte_mutant(&o->header, 0, o->header.n, what);
        buf r = st_build(o, (const char *)h.p, h.n, h.n);
        free(h.p);
        return r;
    }
    case 2: {
        buf h = json_mutant(&o->header, what);
        buf r = st_build(o, (const char *)h.p, h.n, h.n);
        free(h.p);
        return r;
    }
    case 3: case 4: return st_struct_mutant(o, what);
    case 5: {   // truncated in the length field, the header or the data
        size_t cut = rnd(3) == 0 ? rnd(8) : rnd(2) ? 8 + rnd(H - 8) : H + rnd(N - H);
        *what = "truncated";
        return bdup(o->file.p, cut);
    }
    case 6: {   // the length field itself
        static const uint64_t big[] = {UINT64_MAX, (uint64_t)1 << 63, (uint64_t)1 << 32, 0};
        uint64_t v = rnd(2) ? big[rnd(4)] : rnd(2) ? (uint64_t)N - 8 + 1 + rnd(10) : o->hlen + rnd(9) - 4;
        *what = "header length field";
        return st_build(o, (const char *)o->header.p, o->header.n, v);
    }
    default: *what = "data bytes"; return byte_mutant(&o->file, H, N, what);
    }
}

// ---- the fuzz loops ----
static buf g_cfg, g_st, g_tokj, g_tokcfg, g_spm;
static st_parts g_parts;

static void fuzz_safetensors(int n) {
    tally *t = kind("model.safetensors");
    for (int i = 0; i < n; i++) {
        const char *what = "?";
        buf m = st_mutant(&g_parts, &what);
        put("model.safetensors", m.p, m.n);
        free(m.p);
        load_model_dir(t, "model.safetensors", what, 0);
    }
    put("model.safetensors", g_st.p, g_st.n);
}

static void st_expect_refused(const char *what, buf m, const char *must) {
    put("model.safetensors", m.p, m.n);
    free(m.p);
    llama_model mm;
    int rc = llama_load(&mm, g_dir);
    if (rc == HALO_OK) llama_free(&mm);
    CHECK(rc == HALO_ERR && strstr(halo_error(), "model.safetensors") && strstr(halo_error(), must),
          "%s: must be refused naming the file and '%s' (rc %d, \"%s\")", what, must, rc, rc ? halo_error() : "");
}

static void targeted_safetensors(void) {
    const st_parts *o = &g_parts;
    double ds = (double)(o->file.n - o->data_off);
    const char *E = "model.embed_tokens.weight", *Q = "model.layers.0.self_attn.q_proj.weight";
    struct { const char *what, *tensor, *must; int op; } cases[] = {
        {"data_offsets end beyond the data section", E, E, 0}, {"shape product != byte count", E, E, 1},
        {"shape product overflows 64 bits", E, E, 2}, {"two tensors share bytes", Q, "overlap", 3},
        {"tensor listed twice", E, E, 4}, {"negative shape", E, E, 5}, {"fractional data_offsets", E, E, 6},
        {"offset 1e300", E, E, 7},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        cJSON *root = cJSON_ParseWithLength((const char *)o->header.p, o->header.n);
        cJSON *e = cJSON_GetObjectItem(root, cases[c].tensor);
        cJSON *of = cJSON_GetObjectItem(e, "data_offsets");
        double b0 = cJSON_GetArrayItem(of, 0)->valuedouble, v[3];
        switch (cases[c].op) {
        case 0: v[0] = b0; v[1] = ds + 4; cJSON_ReplaceItemInObject(e, "data_offsets", num_array(2, v)); break;
        case 1: v[0] = 512; v[1] = 65; cJSON_ReplaceItemInObject(e, "shape", num_array(2, v)); break;
        case 2: v[0] = v[1] = 4294967296.0; v[2] = 16; cJSON_ReplaceItemInObject(e, "shape", num_array(3, v)); break;
        case 3: cJSON_ReplaceItemInObject(e, "data_offsets", cJSON_Duplicate(cJSON_GetObjectItem(cJSON_GetObjectItem(root,
                    "model.layers.0.self_attn.k_proj.weight"), "data_offsets"), 1));
                v[0] = 32; v[1] = 64; cJSON_ReplaceItemInObject(e, "shape", num_array(2, v)); break;
        case 4: cJSON_AddItemToObject(root, E, cJSON_Duplicate(e, 1)); break;
        case 5: v[0] = -512; v[1] = -64; cJSON_ReplaceItemInObject(e, "shape", num_array(2, v)); break;
        case 6: cJSON_ReplaceItemInArray(of, 1, cJSON_CreateNumber(131071.5)); break;
        case 7: cJSON_ReplaceItemInArray(of, 0, cJSON_CreateNumber(1e300)); break;
        }
        st_expect_refused(cases[c].what, st_from_json(o, root), cases[c].must);
        cJSON_Delete(root);
    }
    static const uint64_t lens[] = {UINT64_MAX, 0, (uint64_t)1 << 40};
    for (int k = 0; k < 3; k++) st_expect_refused("header length field huge or zero", st_build(o, (const char *)o->header.p, o->header.n, lens[k]), "header");
    st_expect_refused("header length beyond the file", st_build(o, (const char *)o->header.p, o->header.n, o->file.n - 7), "header");
    size_t cuts[] = {5, 8 + o->hlen / 2, o->data_off + 1000, o->file.n - 1};
    for (int k = 0; k < 4; k++) st_expect_refused("truncated file", bdup(o->file.p, cuts[k]), "model.safetensors");
    put("model.safetensors", g_st.p, g_st.n);
}

// ---- config.json ----
static const char *const CFG_KEYS[] = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                       "num_attention_heads", "num_key_value_heads", "head_dim",
                                       "max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings",
                                       "bos_token_id", "eos_token_id", "architectures", "model_type", "hidden_act",
                                       "rope_scaling"};

static cJSON *weird_value(void) {
    static const double nums[] = {0, -1, -64, 1e300, 2.5, 2e9, 2147483647, 4294967296.0, 1e-300, 3, 7, 9, 1e15,
                                  65536, 1048576, -2e9};
    switch (rnd(6)) {
    case 0: return cJSON_CreateString(rnd(2) ? "64" : "\xff\xfe");
    case 1: return cJSON_CreateNull();
    case 2: return rnd(2) ? cJSON_CreateArray() : cJSON_CreateObject();
    case 3: return cJSON_CreateBool(rnd(2));
    default: return cJSON_CreateNumber(nums[rnd(sizeof nums / sizeof *nums)]);
    }
}

static buf cfg_struct_mutant(const char **what) {
    cJSON *root = cJSON_Parse((const char *)g_cfg.p);
    const char *k = CFG_KEYS[rnd(sizeof CFG_KEYS / sizeof *CFG_KEYS)];
    switch (rnd(5)) {
    case 0: cJSON_DeleteItemFromObject(root, k); *what = "key removed"; break;
    case 1: {   // llama3 rope scaling with a weird field
        cJSON *rs = cJSON_CreateObject();
        cJSON_AddStringToObject(rs, "rope_type", "llama3");
        const char *f[] = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"};
        double v[] = {8, 1, 4, 8192};
        int w = (int)rnd(5);
        for (int i = 0; i < 4; i++) if (i != w) cJSON_AddNumberToObject(rs, f[i], v[i]);
        if (w < 4 && rnd(2)) cJSON_AddItemToObject(rs, f[w], weird_value());
        cJSON_ReplaceItemInObject(root, "rope_scaling", rs);
        if (!cJSON_GetObjectItem(root, "rope_scaling")) cJSON_AddItemToObject(root, "rope_scaling", rs);
        *what = "llama3 rope_scaling field";
        break;
    }
    default:
        if (cJSON_GetObjectItem(root, k)) cJSON_ReplaceItemInObject(root, k, weird_value());
        else cJSON_AddItemToObject(root, k, weird_value());
        *what = "value replaced";
    }
    char *s = cJSON_Print(root);
    buf r = {(unsigned char *)s, strlen(s)};
    cJSON_Delete(root);
    return r;
}

static void fuzz_config(int n) {
    tally *t = kind("config.json");
    for (int i = 0; i < n; i++) {
        const char *what = "?";
        int op = (int)rnd(4);
        buf m = op == 0 ? byte_mutant(&g_cfg, 0, g_cfg.n, &what) : op == 1 ? json_mutant(&g_cfg, &what) : cfg_struct_mutant(&what);
        put("config.json", m.p, m.n);
        free(m.p);
        // a config that disagrees with the weights is refused naming model.safetensors (the tensor and its shape)
        load_model_dir(t, "config.json|model.safetensors", what, 1);
    }
    put("config.json", g_cfg.p, g_cfg.n);
}

// Writes the base config.json with key set to json_value, and loads the model directory.
static int load_with_cfg(const char *key, const char *json_value, llama_model *m) {
    cJSON *root = cJSON_Parse((const char *)g_cfg.p);
    cJSON_ReplaceItemInObject(root, key, cJSON_Parse(json_value));
    char *s = cJSON_Print(root);
    put("config.json", s, strlen(s));
    free(s);
    cJSON_Delete(root);
    return llama_load(m, g_dir);
}

static void cfg_expect(const char *key, const char *json_value, int must_refuse) {
    llama_model m;
    int rc = load_with_cfg(key, json_value, &m);
    if (must_refuse)
        CHECK(rc == HALO_ERR && strstr(halo_error(), "config.json") && strstr(halo_error(), key),
              "config.json %s=%s: must be refused naming the file and key (rc %d, \"%s\")", key, json_value, rc,
              rc ? halo_error() : "");
    else
        CHECK(rc == HALO_OK, "config.json %s=%s: must load (%s)", key, json_value, halo_error());
    if (rc == HALO_OK) { try_forward(&m); llama_free(&m); }
}

static void targeted_config(void) {
    cfg_expect("hidden_size", "-64", 1);
    cfg_expect("num_attention_heads", "0", 1);
    cfg_expect("num_key_value_heads", "3", 1);         // 8 heads do not divide into 3 groups
    cfg_expect("head_dim", "7", 1);
    cfg_expect("vocab_size", "64.5", 1);
    cfg_expect("vocab_size", "\"512\"", 1);
    cfg_expect("rms_norm_eps", "1e300", 1);             // inf as a float
    cfg_expect("rope_theta", "-1", 1);
    cfg_expect("bos_token_id", "1e300", 1);
    // sizes that would need gigabytes are refused against the weights' size before anything is allocated
    cfg_expect("vocab_size", "2000000000", 1);
    cfg_expect("num_hidden_layers", "2000000000", 1);
    cfg_expect("intermediate_size", "1999999999", 1);
    cfg_expect("head_dim", "1073741824", 1);           // n_heads * head_dim overflows int
    cfg_expect("max_position_embeddings", "2000000000", 0);   // legal; the RoPE table follows the positions used
    // architectures: an unknown one is refused naming the key; SmolLM3 loads the same tensors (every 4th layer then
    // goes without RoPE); Qwen2 needs q, k, v biases the file lacks: refused naming the missing tensor
    cfg_expect("architectures", "[\"GemmaForCausalLM\"]", 1);
    cfg_expect("architectures", "[\"SmolLM3ForCausalLM\"]", 0);
    {
        llama_model m;
        int rc = load_with_cfg("architectures", "[\"Qwen2ForCausalLM\"]", &m);
        CHECK(rc == HALO_ERR && strstr(halo_error(), "q_proj.bias"), "Qwen2 over weights without biases: refused "
              "naming the missing tensor (rc %d, \"%s\")", rc, rc ? halo_error() : "");
        if (rc == HALO_OK) llama_free(&m);
    }
    put("config.json", g_cfg.p, g_cfg.n);
}

// ---- model.safetensors.index.json (two shards) ----
static buf g_index;

static void make_shards(void) {
    llama_model m;
    if (llama_load(&m, g_dir) != HALO_OK) { CHECK(0, "base model: %s", halo_error()); return; }
    st_writer *w[2] = {st_writer_new(), st_writer_new()};
    cJSON *root = cJSON_CreateObject(), *wm = cJSON_AddObjectToObject(root, "weight_map");
    cJSON_AddObjectToObject(root, "metadata");
    for (int i = 0; i < m.n_table; i++) {
        const llama_param *p = &m.table[i];
        st_writer_add(w[i % 2], p->name, ST_F32, ST_F32, m.params + p->offset, p->ndim, p->shape);
        cJSON_AddStringToObject(wm, p->name, i % 2 ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors");
    }
    st_writer_write(w[0], dpath("model-00001-of-00002.safetensors"));
    st_writer_write(w[1], dpath("model-00002-of-00002.safetensors"));
    st_writer_free(w[0]); st_writer_free(w[1]);
    char *s = cJSON_Print(root);
    g_index = (buf){(unsigned char *)s, strlen(s)};
    cJSON_Delete(root);
    llama_free(&m);
}

static void fuzz_index(int n) {
    tally *t = kind("index.json");
    make_shards();
    remove(dpath("model.safetensors"));
    for (int i = 0; i < n && g_index.p; i++) {
        const char *what = "?";
        buf m;
        if (rnd(3)) m = rnd(2) ? json_mutant(&g_index, &what) : byte_mutant(&g_index, 0, g_index.n, &what);
        else {   // one entry pointed elsewhere
            static const char *dst[] = {"model-00002-of-00002.safetensors", "../config.json", "missing.safetensors", "",
                                        "config.json", "/etc/passwd", "model-00001-of-00002.safetensors"};
            cJSON *root = cJSON_Parse((const char *)g_index.p), *wm = cJSON_GetObjectItem(root, "weight_map");
            cJSON *e = cJSON_GetArrayItem(wm, (int)rnd((unsigned long long)cJSON_GetArraySize(wm)));
            if (rnd(4)) cJSON_SetValuestring(e, dst[rnd(7)]);
            else cJSON_DeleteItemFromObject(wm, e->string);
            char *s = cJSON_Print(root);
            m = (buf){(unsigned char *)s, strlen(s)};
            cJSON_Delete(root);
            what = "weight_map entry changed";
        }
        put("model.safetensors.index.json", m.p, m.n);
        free(m.p);
        load_model_dir(t, "index.json|.safetensors", what, 0);
    }
    // a hostile config must be refused against the shards' total size before allocating
    put("model.safetensors.index.json", g_index.p, g_index.n);
    cfg_expect("vocab_size", "2000000000", 1);
    free(g_index.p);
    remove(dpath("model.safetensors.index.json"));
    remove(dpath("model-00001-of-00002.safetensors"));
    remove(dpath("model-00002-of-00002.safetensors"));
    put("model.safetensors", g_st.p, g_st.n);
}

// ---- tokenizers ----
// A loaded tokenizer must work: encode gives ids inside its vocabulary, decode of any id list does not crash.
static void exercise_tokenizer(const halo_tokenizer *tok, tally *t) {
    static const char text[] = "Hello world! <s> h\xc3\xa9llo  123\n\xff tail</s>";
    size_t V = tokenizer_vocab_size(tok);
    for (int sp = 0; sp < 2; sp++) {
        int32_t *ids = NULL; size_t n = 0;
        if (tokenizer_encode(tok, text, sizeof text - 1, sp, &ids, &n) != HALO_OK) continue;
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) bad += ids[i] < 0 || (size_t)ids[i] >= V;
        if (bad && !t->bad_msg++) snprintf(t->first_bad, sizeof t->first_bad, "encode gave %zu ids outside [0, %zu)", bad, V);
        free(tokenizer_decode(tok, ids, n, sp));
        free(ids);
    }
    int32_t probe[] = {0, 1, 2, 3, (int32_t)V - 1, (int32_t)V, -1, 259, 300};
    free(tokenizer_decode(tok, probe, sizeof probe / sizeof *probe, false));
    tokenizer_piece(tok, (int32_t)V - 1);
}

static int load_tok(tally *t, const char *file, const char *what) {
    halo_tokenizer *tok = NULL;
    int rc = tokenizer_load(g_dir, &tok);
    outcome(t, rc, file, what);
    if (rc == HALO_OK) { exercise_tokenizer(tok, t); tokenizer_free(tok); }
    return rc;
}

static buf tokj_struct_mutant(const char **what) {
    cJSON *root = cJSON_Parse((const char *)g_tokj.p), *model = cJSON_GetObjectItem(root, "model");
    cJSON *vocab = cJSON_GetObjectItem(model, "vocab"), *merges = cJSON_GetObjectItem(model, "merges");
    cJSON *added = cJSON_GetObjectItem(root, "added_tokens");
    int nv = cJSON_GetArraySize(vocab), nm = cJSON_GetArraySize(merges);
    static const double ids[] = {-1, 1e9, 2147483648.0, 1e300, 0.5, 99999, 511, 512, 4294967295.0, 1e8};
    switch (rnd(9)) {
    case 0: { static const char *k[] = {"model", "added_tokens", "normalizer", "decoder", "post_processor", "pre_tokenizer"};
              cJSON_DeleteItemFromObject(root, k[rnd(6)]); *what = "top-level key removed"; break; }
    case 1: { static const char *k[] = {"vocab", "merges", "type", "unk_token", "byte_fallback"};
              cJSON_DeleteItemFromObject(model, k[rnd(5)]); *what = "model key removed"; break; }
    case 2: cJSON_SetNumberValue(cJSON_GetArrayItem(vocab, (int)rnd((unsigned long long)nv)), ids[rnd(10)]); *what = "vocab id out of range"; break;
    case 3: cJSON_SetNumberValue(cJSON_GetArrayItem(vocab, (int)rnd((unsigned long long)nv)), (double)rnd((unsigned long long)nv)); *what = "vocab id duplicated"; break;
    case 4: { static const char *bad[] = {"\xff", "\xc3", "\xed\xa0\x80", "\xe2\x96", "", "a\xc0\xafz"};
              cJSON_AddNumberToObject(vocab, bad[rnd(6)], rnd(2) ? (double)nv : (double)rnd((unsigned long long)nv)); *what = "vocab key bad UTF-8"; break; }
    case 5: { static const char *mg[] = {"zz qq", "a", "a b c", " ", "\xff \xfe", "a  b", "\xe2\x96\x81 \xe2\x96\x81"};
              cJSON_ReplaceItemInArray(merges, (int)rnd((unsigned long long)nm), rnd(4) ? cJSON_CreateString(mg[rnd(7)]) : weird_value());
              *what = "merge replaced"; break; }
    case 6: { cJSON *a = cJSON_GetArrayItem(added, (int)rnd((unsigned long long)cJSON_GetArraySize(added)));
              if (rnd(2)) cJSON_ReplaceItemInObject(a, "id", cJSON_CreateNumber(ids[rnd(10)]));
              else cJSON_ReplaceItemInObject(a, "content", rnd(2) ? cJSON_CreateString("") : weird_value());
              *what = "added token changed"; break; }
    case 7: {   // TemplateProcessing with an out-of-range or odd special-token id
        cJSON *pp = cJSON_CreateObject();
        cJSON_AddStringToObject(pp, "type", "TemplateProcessing");
        cJSON *single = cJSON_AddArrayToObject(pp, "single"), *it = cJSON_CreateObject(), *sq = cJSON_CreateObject();
        cJSON *sp = cJSON_AddObjectToObject(it, "SpecialToken");
        cJSON_AddStringToObject(sp, "id", "<s>");
        cJSON_AddNumberToObject(sp, "type_id", 0);
        cJSON_AddItemToArray(single, it);
        cJSON_AddObjectToObject(sq, "Sequence");
        cJSON_AddItemToArray(single, sq);
        cJSON *st = cJSON_AddObjectToObject(pp, "special_tokens"), *s = cJSON_AddObjectToObject(st, "<s>");
        cJSON_AddStringToObject(s, "id", "<s>");
        cJSON *idl = cJSON_AddArrayToObject(s, "ids");
        cJSON_AddItemToArray(idl, rnd(3) ? cJSON_CreateNumber(ids[rnd(10)]) : weird_value());
        cJSON_ReplaceItemInObject(root, "post_processor", pp);
        *what = "template special id";
        break;
    }
    default: {   // a pipeline step with an odd type or pattern
        cJSON *norm = cJSON_GetObjectItem(root, "normalizer"), *list = cJSON_GetObjectItem(norm, "normalizers");
        cJSON *step = cJSON_GetArrayItem(list, (int)rnd((unsigned long long)cJSON_GetArraySize(list)));
        static const char *pat[] = {"(", "\\", "[", "a{99999999}", "", "\xff"};
        if (rnd(2)) cJSON_ReplaceItemInObject(step, "type", cJSON_CreateString(rnd(2) ? "NFKC" : "Bogus"));
        else { cJSON *p = cJSON_CreateObject(); cJSON_AddStringToObject(p, rnd(2) ? "Regex" : "String", pat[rnd(6)]);
               cJSON_ReplaceItemInObject(step, "pattern", p); }
        *what = "normalizer step changed";
    }
    }
    char *s = cJSON_Print(root);
    buf r = {(unsigned char *)s, strlen(s)};
    cJSON_Delete(root);
    return r;
}

static void fuzz_tokenizer_json(int n) {
    tally *t = kind("tokenizer.json");
    if (g_tokcfg.p) put("tokenizer_config.json", g_tokcfg.p, g_tokcfg.n);
    for (int i = 0; i < n; i++) {
        const char *what = "?";
        int op = (int)rnd(5);
        buf m = op == 0 ? byte_mutant(&g_tokj, 0, g_tokj.n, &what) : op == 1 ? json_mutant(&g_tokj, &what) : tokj_struct_mutant(&what);
        put("tokenizer.json", m.p, m.n);
        free(m.p);
        load_tok(t, "tokenizer.json", what);
    }
}

static void tokj_expect_refused(const char *what, const char *from, const char *to, const char *must) {
    const char *at = strstr((const char *)g_tokj.p, from);
    if (!at) { CHECK(0, "%s: pattern %s not in tokenizer.json", what, from); return; }
    buf m = splice(&g_tokj, (size_t)(at - (const char *)g_tokj.p), strlen(from), to, strlen(to));
    put("tokenizer.json", m.p, m.n);
    free(m.p);
    halo_tokenizer *tok = NULL;
    int rc = tokenizer_load(g_dir, &tok);
    CHECK(rc == HALO_ERR && strstr(halo_error(), "tokenizer.json") && strstr(halo_error(), must),
          "tokenizer.json %s: must be refused naming the file and '%s' (rc %d, \"%s\")", what, must, rc, rc ? halo_error() : "");
    if (rc == HALO_OK) tokenizer_free(tok);
}

static void targeted_tokenizer_json(void) {
    tokj_expect_refused("vocab id 1e9", "\"<unk>\": 0", "\"<unk>\": 1000000000", "<unk>");
    tokj_expect_refused("vocab id 2^31", "\"<unk>\": 0", "\"<unk>\": 2147483648", "<unk>");
    tokj_expect_refused("vocab id fractional", "\"<unk>\": 0", "\"<unk>\": 0.5", "<unk>");
    tokj_expect_refused("vocab id duplicated", "\"<s>\": 1", "\"<s>\": 0", "vocab");
    tokj_expect_refused("added token id huge", "\"id\": 2,", "\"id\": 2000000000,", "added_tokens[2]");
    tokj_expect_refused("added token id fractional", "\"id\": 2,", "\"id\": 2.5,", "added_tokens[2]");
    tokj_expect_refused("merge of unknown tokens", "\"merges\": [", "\"merges\": [\"qqq zzz\",", "merges[0]");
    tokj_expect_refused("no model", "\"model\": {", "\"modelx\": {", "model");
    tokj_expect_refused("no merges", "\"merges\": [", "\"mergesx\": [", "merges");
    tokj_expect_refused("template id outside the vocabulary", "\"ids\": [\n     1\n    ]", "\"ids\": [\n     99999\n    ]", "99999");
    put("tokenizer.json", g_tokj.p, g_tokj.n);
}

static void fuzz_spm(int n) {
    tally *t = kind("tokenizer.model");
    remove(dpath("tokenizer.json"));
    remove(dpath("tokenizer_config.json"));
    for (int i = 0; i < n; i++) {
        const char *what = "?";
        // most mutations near the start (model pieces) and the end (trainer/normalizer specs)
        size_t lo = rnd(2) ? 0 : g_spm.n - 2048, hi = lo + 2048;
        buf m = rnd(4) ? byte_mutant(&g_spm, lo, hi, &what) : byte_mutant(&g_spm, 0, g_spm.n, &what);
        put("tokenizer.model", m.p, m.n);
        free(m.p);
        load_tok(t, "tokenizer.model", what);
    }
    remove(dpath("tokenizer.model"));
}

int main(void) {
    const char *model = test_shared_path("models/stories260K");
    const char *spm = test_shared_path("tokenizers/llama2/tokenizer.model");
    if (!model || access(model, R_OK)) { SKIP("shared data (models/stories260K) not found; model fuzzing skipped"); TEST_END(); }
    char p[4096];
    snprintf(p, sizeof p, "%s/config.json", model); g_cfg = slurp(p);
    snprintf(p, sizeof p, "%s/model.safetensors", model); g_st = slurp(p);
    snprintf(p, sizeof p, "%s/tokenizer.json", model); g_tokj = slurp(p);
    snprintf(p, sizeof p, "%s/tokenizer_config.json", model); g_tokcfg = slurp(p);
    if (spm) g_spm = slurp(spm);
    if (!g_cfg.p || !g_st.p || !g_tokj.p) { SKIP("stories260K files missing; model fuzzing skipped"); TEST_END(); }
    g_parts.file = g_st;
    for (int i = 0; i < 8; i++) g_parts.hlen |= (uint64_t)g_st.p[i] << (8 * i);
    g_parts.header = bdup(g_st.p + 8, (size_t)g_parts.hlen);
    g_parts.data_off = 8 + (size_t)g_parts.hlen;
    strcpy(g_dir, "/tmp/halo_fuzz_model_XXXXXX");
    if (!mkdtemp(g_dir)) { CHECK(0, "mkdtemp"); TEST_END(); }
    put("config.json", g_cfg.p, g_cfg.n);
    put("model.safetensors", g_st.p, g_st.n);
    double t0 = t_now();
    { llama_model m; CHECK(llama_load(&m, g_dir) == HALO_OK, "unmutated model loads: %s", halo_error()); llama_free(&m); }

    g_rng = 0x5eed0001; fuzz_safetensors(1500);
    printf("safetensors %.1f s\n", t_now() - t0);
    targeted_safetensors();
    g_rng = 0x5eed0002; fuzz_config(500);
    targeted_config();
    printf("config %.1f s\n", t_now() - t0);
    g_rng = 0x5eed0003; fuzz_index(400);
    printf("index %.1f s\n", t_now() - t0);
    g_rng = 0x5eed0004; put("tokenizer.json", g_tokj.p, g_tokj.n); load_tok(kind("tokenizer.json"), "tokenizer.json", "unmutated");
    CHECK(kind("tokenizer.json")->accepted == 1, "unmutated tokenizer.json loads: %s", halo_error());
    fuzz_tokenizer_json(1500);
    targeted_tokenizer_json();
    printf("tokenizer.json %.1f s\n", t_now() - t0);
    if (g_spm.p) { g_rng = 0x5eed0005; fuzz_spm(200); }
    else SKIP("tokenizers/llama2/tokenizer.model not found; SentencePiece fuzzing skipped");

    printf("%-18s %8s %9s %8s\n", "input", "mutants", "accepted", "refused");
    for (int i = 0; i < g_ntally; i++) {
        tally *t = &g_tally[i];
        printf("%-18s %8d %9d %8d\n", t->kind, t->mutants, t->accepted, t->refused);
        CHECK(!t->bad_msg, "%s: %d mutants refused without naming the file or misbehaved once loaded; first: %s",
              t->kind, t->bad_msg, t->first_bad);
        CHECK(t->refused > 0, "%s: some mutants must be refused", t->kind);
    }
    printf("fuzzing took %.1f s\n", t_now() - t0);
    clear_dir();
    rmdir(g_dir);
    free(g_cfg.p); free(g_st.p); free(g_tokj.p); free(g_tokcfg.p); free(g_spm.p); free(g_parts.header.p);
    TEST_END();
}
