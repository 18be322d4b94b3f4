// Seeded mutation fuzz of the readers of user files other than the model's own: datasets (text, JSONL text / chat /
// pairs / templates, CSV with templates and presets), training checkpoints (trainer_resume), PEFT LoRA adapter
// directories (llama_lora_load) and halo_config.json (model_halo_config_from_json). Every call must either succeed
// (and then the result is used: batches checked for their invariants, a training step, a forward pass) or fail with
// a message naming the file; mutants known to be bad must be refused; a refused resume or adapter load leaves the
// caller's model, optimizer and trainer as they were. ASan/UBSan (SAN=1) catch the rest. Deterministic (fixed seed).
// Inputs: the first lines of the shared data sets when present (skipped with a reason otherwise), and small built-in
// files that are always there.
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <omp.h>
#include <sys/stat.h>
#include "data/data_internal.h"
#include "data/dataset.h"
#include "io/safetensors.h"
#include "model/linear.h"
#include "model/llama.h"
#include "model/lora.h"
#include "test.h"
#include "test_seq_source.h"
#include "train/checkpoint.h"
#include "train/trainer.h"
#include "util/error.h"
#include "util/fileio.h"

static char g_dir[256];
static unsigned long long g_rng = 0xF0220DA7AULL;
static unsigned rnd(unsigned n) { return n ? (unsigned)(t_rng_next(&g_rng) % n) : 0; }

// ---------------------------------------------------------------- tally

typedef struct { char kind[32]; int mutants, accepted, refused, bad; } tally;
static tally g_tally[40];
static int g_n_tally;
static tally *tally_of(const char *kind) {
    for (int i = 0; i < g_n_tally; i++) if (!strcmp(g_tally[i].kind, kind)) return &g_tally[i];
    if (g_n_tally == (int)(sizeof g_tally / sizeof *g_tally)) { fprintf(stderr, "too many kinds\n"); exit(1); }
    tally *t = &g_tally[g_n_tally++];
    snprintf(t->kind, sizeof t->kind, "%s", kind);
    return t;
}
// A violated expectation: counted per kind (one CHECK per kind at the end) and the first few printed.
static int g_printed;
static void fuzz_bad(const char *kind, const char *fmt, const char *a, const char *b) {
    tally_of(kind)->bad++;
    if (g_printed++ < 25) { fprintf(stderr, "[%s] ", kind); fprintf(stderr, fmt, a, b ? b : ""); fputc('\n', stderr); }
}
// A refusal must carry a message that names `file`.
static void note_refusal(const char *kind, const char *file, const char *input) {
    tally_of(kind)->refused++;
    const char *e = halo_error();
    if (!e || !*e || !strstr(e, file)) fuzz_bad(kind, "refusal does not name the file: '%s' (input: %.200s)", e ? e : "", input);
}

// ---------------------------------------------------------------- byte buffers and mutations

typedef struct { char *p; size_t n, cap; } buf;
static void buf_set(buf *b, const char *p, size_t n) {
    if (n + 1 > b->cap) { b->cap = n + 1; b->p = realloc(b->p, b->cap); }
    memcpy(b->p, p, n); b->n = n; b->p[n] = 0;
}
static void buf_splice(buf *b, size_t at, size_t del, const char *ins, size_t n_ins) {
    if (at > b->n) at = b->n;
    if (del > b->n - at) del = b->n - at;
    size_t n = b->n - del + n_ins;
    if (n + 1 > b->cap) { b->cap = 2 * n + 1; b->p = realloc(b->p, b->cap); }
    memmove(b->p + at + n_ins, b->p + at + del, b->n - at - del);
    memcpy(b->p + at, ins, n_ins);
    b->n = n; b->p[n] = 0;
}
static void write_bytes(const char *path, const char *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (n) fwrite(p, 1, n, f);
    fclose(f);
}
static char *read_all(const char *path, size_t *n) {
    char *t = NULL;
    if (halo_read_file(path, &t, n)) return NULL;
    return t;
}

static const unsigned char SPECIAL_BYTES[] = {0, '\r', '\n', '"', ',', '{', '}', '[', ']', ':', '\\', 0xFF, 0xC3, 0x80,
                                              0xE2, 0xF0, ' ', '\t', '0', '-'};
// `ops` random byte-level edits: bit flips, random or special bytes (NUL, CR, quotes, invalid UTF-8), deleted and
// duplicated spans, a cut, a long run. `lo`.. restricts most edits to a region (a safetensors header).
static void mutate_bytes(buf *b, int ops, size_t lo, size_t hi) {
    for (int k = 0; k < ops; k++) {
        if (hi > b->n) hi = b->n;
        size_t span = hi > lo ? hi - lo : b->n;
        size_t base = hi > lo ? lo : 0;
        size_t at = b->n ? base + rnd((unsigned)(span ? span : 1)) : 0;
        if (at > b->n) at = b->n;
        char c;
        switch (rnd(9)) {
        case 0: if (at < b->n) b->p[at] ^= (char)(1u << rnd(8)); break;
        case 1: if (at < b->n) b->p[at] = (char)rnd(256); break;
        case 2: if (at < b->n) b->p[at] = (char)SPECIAL_BYTES[rnd(sizeof SPECIAL_BYTES)]; break;
        case 3: buf_splice(b, at, 1 + rnd(rnd(2) ? 8 : 200), "", 0); break;
        case 4: {   // duplicate a span
            size_t len = 1 + rnd(64);
            if (at + len > b->n) len = b->n - at;
            char *tmp = malloc(len + 1);
            memcpy(tmp, b->p + at, len);
            buf_splice(b, at + len, 0, tmp, len);
            free(tmp);
            break;
        }
        case 5: if (rnd(3) == 0) { b->n = at; b->p[at] = 0; } break;   // truncation (mid-line, mid-quote, mid-JSON)
        case 6: c = (char)SPECIAL_BYTES[rnd(sizeof SPECIAL_BYTES)]; buf_splice(b, at, 0, &c, 1); break;
        case 7: if (rnd(4) == 0) {   // a long run of one byte
            size_t len = 1000 + rnd(20000);
            char *tmp = malloc(len);
            memset(tmp, rnd(2) ? 'a' : '9', len);
            buf_splice(b, at, 0, tmp, len);
            free(tmp);
        } break;
        default: if (at < b->n && b->p[at] >= '0' && b->p[at] <= '9') b->p[at] = (char)('0' + rnd(10)); break;
        }
    }
}

// Lines of a text: [start, end) offsets of line i (without the newline).
static int n_lines_of(const buf *b) {
    int n = 0;
    for (size_t i = 0; i < b->n; i++) n += b->p[i] == '\n';
    return n + (b->n && b->p[b->n - 1] != '\n');
}
static void line_span(const buf *b, int line, size_t *s, size_t *e) {
    size_t i = 0;
    for (int l = 0; l < line && i < b->n; i++) if (b->p[i] == '\n') l++;
    *s = i;
    while (i < b->n && b->p[i] != '\n') i++;
    *e = i;
}

// ---------------------------------------------------------------- JSON-aware edits

static cJSON *wrong_value(void) {
    switch (rnd(9)) {
    case 0: return cJSON_CreateNumber(rnd(2) ? -1 : 1e300);
    case 1: return cJSON_CreateArray();
    case 2: { cJSON *a = cJSON_CreateArray(); cJSON_AddItemToArray(a, cJSON_CreateString("x")); return a; }
    case 3: return cJSON_CreateObject();
    case 4: return cJSON_CreateNull();
    case 5: return cJSON_CreateBool(1);
    case 6: return cJSON_CreateString("");
    case 7: {   // a huge string
        size_t n = 20000 + rnd(60000);
        char *s = malloc(n + 1);
        for (size_t i = 0; i < n; i++) s[i] = "ab c\n{}\"\\"[rnd(9)];
        s[n] = 0;
        cJSON *v = cJSON_CreateString(s);
        free(s);
        return v;
    }
    default: return cJSON_CreateString("\xC3(\xFF\xFE invalid utf-8 \x80");
    }
}
static cJSON *random_child(cJSON *o) {
    int n = cJSON_GetArraySize(o);
    return n ? cJSON_GetArrayItem(o, (int)rnd((unsigned)n)) : NULL;
}
// One structural edit of a parsed JSONL record (chat messages, pairs or text).
static void json_edit(cJSON *o) {
    cJSON *msgs = cJSON_GetObjectItemCaseSensitive(o, "messages");
    int op = rnd(10);
    if (cJSON_IsArray(msgs) && op < 6) {
        cJSON *m = random_child(msgs);
        switch (op) {
        case 0: cJSON_ReplaceItemInObjectCaseSensitive(o, "messages", cJSON_CreateArray()); return;   // empty
        case 1: if (m) cJSON_ReplaceItemInObjectCaseSensitive(m, "role", cJSON_CreateString(rnd(2) ? "tool" : "")); return;
        case 2: if (m) cJSON_DeleteItemFromObjectCaseSensitive(m, rnd(2) ? "role" : "content"); return;
        case 3: if (m) cJSON_ReplaceItemInObjectCaseSensitive(m, rnd(2) ? "role" : "content", wrong_value()); return;
        case 4: cJSON_AddItemToArray(msgs, rnd(2) ? cJSON_CreateNumber(3) : cJSON_CreateString("user")); return;
        default:   // many messages, or the last one not the assistant's
            if (rnd(2)) {
                int k = 4000 + (int)rnd(200);
                for (int i = 0; i < k; i++) {
                    cJSON *x = cJSON_CreateObject();
                    cJSON_AddStringToObject(x, "role", i % 2 ? "assistant" : "user");
                    cJSON_AddStringToObject(x, "content", "x");
                    cJSON_AddItemToArray(msgs, x);
                }
            } else if (m) cJSON_ReplaceItemInObjectCaseSensitive(m, "role", cJSON_CreateString("user"));
            return;
        }
    }
    cJSON *f = random_child(o);
    if (!f || !f->string) return;
    char key[64];
    snprintf(key, sizeof key, "%s", f->string);
    if (op < 8) cJSON_ReplaceItemInObjectCaseSensitive(o, key, wrong_value());
    else if (op == 8) cJSON_DeleteItemFromObjectCaseSensitive(o, key);
    else cJSON_AddItemToObject(o, "extra", wrong_value());
}

// Replaces line `line` of b by the JSON-edited record (lines that do not parse get a byte edit instead).
static void json_edit_line(buf *b) {
    int nl = n_lines_of(b);
    if (!nl) return;
    int line = (int)rnd((unsigned)nl);
    size_t s, e;
    line_span(b, line, &s, &e);
    cJSON *o = cJSON_ParseWithLength(b->p + s, e - s);
    if (!cJSON_IsObject(o)) { cJSON_Delete(o); mutate_bytes(b, 1, s, e); return; }
    json_edit(o);
    char *t = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (rnd(6) == 0) t[strlen(t) / 2] = 0;   // cut mid-JSON
    buf_splice(b, s, e - s, t, strlen(t));
    free(t);
}

// ---------------------------------------------------------------- CSV-aware edits

static void csv_edit(buf *b) {
    int nl = n_lines_of(b);
    if (!nl) return;
    int line = (int)rnd((unsigned)nl);
    size_t s, e;
    line_span(b, line, &s, &e);
    switch (rnd(9)) {
    case 0: buf_splice(b, s + rnd((unsigned)(e - s + 1)), 0, "\"", 1); break;             // a lone quote
    case 1: buf_splice(b, e, 0, ",extra", 6); break;                                      // an extra field
    case 2: { size_t c = e; while (c > s && b->p[c - 1] != ',') c--;                      // a missing field
              if (c > s) buf_splice(b, c - 1, e - c + 1, "", 0); } break;
    case 3: line_span(b, 0, &s, &e); buf_splice(b, s, e - s, "", 0); break;               // empty header
    case 4: case 5: {   // duplicate column names, or columns the template does not name
        const char *h = (const char *[]){"mr,mr", "ref,mr,ref", "a,b", ","}[rnd(4)];
        line_span(b, 0, &s, &e);
        buf_splice(b, s, e - s, h, strlen(h));
    } break;
    case 6: buf_splice(b, b->n, 0, "\n\"never closed, ", 16); break;                       // a quote open at the end
    case 7: buf_splice(b, s + rnd((unsigned)(e - s + 1)), 0, "\r", 1); break;
    default: buf_splice(b, s + rnd((unsigned)(e - s + 1)), 0, "\"\"x\"", 4); break;
    }
}

// ---------------------------------------------------------------- dataset harness

#include "test_mock_encoder.h"
#define VOCAB MOCK_VOCAB

// Batch invariants: ids in the vocabulary, targets -1 or the next input of the same segment, positions restarting
// at every segment, segments non-decreasing along a row.
static const char *batch_problem(const halo_batch *b) {
    for (int r = 0; r < b->B; r++)
        for (int t = 0; t < b->T; t++) {
            size_t o = (size_t)r * b->T + t;
            if (b->input_ids[o] < 0 || b->input_ids[o] >= VOCAB) return "input id out of range";
            if (b->targets[o] < -1 || b->targets[o] >= VOCAB) return "target out of range";
            if (t == 0) { if (b->pos[o] != 0) return "row does not start at position 0"; continue; }
            if (b->seg[o] < b->seg[o - 1]) return "segment ids decrease";
            if (b->seg[o] != b->seg[o - 1] ? b->pos[o] != 0 : b->pos[o] != b->pos[o - 1] + 1)
                return "positions do not restart per segment";
            if (b->targets[o - 1] >= 0 && b->seg[o] == b->seg[o - 1] && b->targets[o - 1] != b->input_ids[o])
                return "target is not the next input";
        }
    return NULL;
}

// Loads, and when accepted checks the vocabulary, a few batches of both splits and the pairs.
static void ds_run(const char *kind, const char *path, const dataset_config *cfg, const dataset_encoder *enc,
                   const char *input, const char *must_refuse) {
    tally *ty = tally_of(kind);
    ty->mutants++;
    dataset *ds = NULL;
    halo_clear_error();
    if (dataset_load_with(cfg, enc, &ds) != HALO_OK) {
        note_refusal(kind, path, input);
        if (must_refuse && !strstr(halo_error(), must_refuse))
            fuzz_bad(kind, "refused without naming '%s': %s", must_refuse, halo_error());
        return;
    }
    ty->accepted++;
    if (must_refuse) fuzz_bad(kind, "accepted, should be refused naming '%s' (input: %.300s)", must_refuse, input);
    if (dataset_check_vocab(ds, VOCAB)) fuzz_bad(kind, "ids outside the vocabulary: %s%s", halo_error(), NULL);
    char sum[1024];
    dataset_summary(ds, sum, sizeof sum);
    halo_batch b;
    halo_batch_alloc(&b, 1 + (int)rnd(3), cfg->seq_len);
    for (int split = 0; split < 2; split++) {
        dataset_iter it = {cfg->seed, 0, 0};
        bool wrap = split == DATASET_TRAIN && rnd(2);
        for (int k = 0; k < 3; k++) {
            int n_ex = 0;
            if (dataset_next_batch(ds, (dataset_split)split, &it, wrap, &b, &n_ex)) {
                if (!wrap) fuzz_bad(kind, "next_batch failed: %s%s", halo_error(), NULL);
                break;
            }
            const char *p = batch_problem(&b);
            if (p) { fuzz_bad(kind, "batch: %s%s", p, NULL); break; }
            if (!n_ex && !wrap) break;
        }
        dataset_batches_per_epoch(ds, (dataset_split)split, cfg->seed, 0, b.B);
        dataset_pair pr;
        for (int64_t i = 0; i < dataset_size(ds, (dataset_split)split) && i < 3; i++)
            if (!dataset_get_pair(ds, (dataset_split)split, i, &pr) && (!pr.prompt_text || !pr.answer || !pr.file))
                fuzz_bad(kind, "pair without text%s%s", "", NULL);
    }
    halo_batch_free(&b);
    dataset_free(ds);
}

// The first `max_lines` lines (at most max_bytes) of a shared file, or NULL with a printed skip.
static char *shared_head(const char *rel, int max_lines, size_t max_bytes) {
    const char *p = test_shared_path(rel);
    if (!p || access(p, R_OK)) { SKIP("shared data %s absent (HALO_SHARED)", rel); return NULL; }
    FILE *f = fopen(p, "rb");
    char *out = calloc(max_bytes + 1, 1);
    size_t n = 0;
    int lines = 0, c;
    while (n < max_bytes && (c = fgetc(f)) != EOF) { out[n++] = (char)c; if (c == '\n' && ++lines == max_lines) break; }
    fclose(f);
    return out;
}

typedef struct {
    const char *kind, *file, *preset, *prompt_template, *answer_template;
    int edits;   // 0 bytes only, 1 JSON-aware, 2 CSV-aware
    bool text;
} ds_input;

static void fuzz_dataset(const ds_input *in, const char *seed_text, int n_mut) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_dir, in->file);
    buf b = {0};
    for (int i = 0; i < n_mut; i++) {
        buf_set(&b, seed_text, strlen(seed_text));
        int ops = 1 + (int)rnd(3);
        for (int k = 0; k < ops; k++) {
            int w = (int)rnd(3);
            if (w == 0 || in->edits == 0) mutate_bytes(&b, 1, 0, 0);
            else if (in->edits == 1) json_edit_line(&b);
            else csv_edit(&b);
        }
        write_bytes(path, b.p, b.n);
        dataset_config c;
        dataset_config_default(&c);
        c.path = path;
        c.preset = in->preset;
        c.prompt_template = in->prompt_template;
        c.answer_template = in->answer_template;
        c.skip_bad_lines = rnd(2);
        c.pack = rnd(2);
        c.seq_len = (int[]){8, 33, 128}[rnd(3)];
        c.val_count = rnd(3) == 0 ? 1 + rnd(3) : 0;
        c.val_fraction = rnd(2) ? 0.2 : 0;
        c.seed = rnd(1000);
        c.doc_separator = in->text && rnd(2) ? "" : NULL;
        c.loss_on_all = rnd(4) == 0;
        const dataset_encoder *enc = &enc3;
        switch (rnd(4)) {
        case 0: c.chat = DATASET_CHAT_LLAMA2; enc = &enc2; break;
        case 1: c.chat = DATASET_CHAT_PLAIN; enc = rnd(2) ? &enc2 : &enc3; break;
        case 2: c.chat = DATASET_CHAT_AUTO; enc = &enc2; break;
        default: c.chat = DATASET_CHAT_AUTO; break;
        }
        ds_run(in->kind, path, &c, enc, b.p, NULL);
    }
    free(b.p);
}

// Built-in inputs (always present) and the shared files' first lines.
static const char CHAT_JSONL[] =
    "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi \\\"there\\\"\"},"
    "{\"role\":\"assistant\",\"content\":\"Hello.\"}]}\n"
    "{\"messages\":[{\"role\":\"user\",\"content\":\"2+2?\"},{\"role\":\"assistant\",\"content\":\"4\"},"
    "{\"role\":\"user\",\"content\":\"and 3+3?\"},{\"role\":\"assistant\",\"content\":\"6\"}]}\n"
    "{\"messages\":[{\"role\":\"user\",\"content\":\"caf\\u00e9 \\u2603\"},{\"role\":\"assistant\",\"content\":\"ok\"}]}\n";
static const char PAIRS_JSONL[] =
    "{\"question\":\"What is 3 times 4?\",\"answer\":\"3*4 = 12\\n#### 12\"}\n"
    "{\"question\":\"Half of 10?\",\"answer\":\"10/2 = 5\\n#### 5\"}\n"
    "{\"question\":\"1+1?\",\"answer\":\"#### 2\"}\n";
static const char TEXT_JSONL[] = "{\"text\":\"Once upon a time there was a cat.\"}\n{\"text\":\"The end.\"}\n"
                                 "{\"text\":\"A third little story, a bit longer than the others.\"}\n";
static const char VIGGO_CSV[] =
    "mr,ref\n"
    "\"inform(name[Tomb Raider], rating[good])\",\"Tomb Raider is a good game, \"\"they say\"\".\"\n"
    "\"request(genres[puzzle])\",What puzzle games do you like?\n"
    "\"confirm(name[Portal 2], platforms[PC])\",\"Portal 2 runs on\nPC, right?\"\n";
static const char PLAIN_TEXT[] = "Once upon a time, there was a little dog.\nIt liked to run.\n\nThe end.\n"
                                 "Another story starts here.\n";

static void test_datasets(int n_mut) {
    ds_input in[] = {
        {"jsonl chat", "m.jsonl", NULL, NULL, NULL, 1, false},
        {"jsonl pairs", "p.jsonl", NULL, NULL, NULL, 1, false},
        {"jsonl text", "t.jsonl", NULL, NULL, NULL, 1, true},
        {"jsonl template", "q.jsonl", NULL, "Q: {question}", "{answer}", 1, false},
        {"csv viggo", "v.csv", "viggo", NULL, NULL, 2, false},
        {"csv pairs", "c.csv", NULL, NULL, NULL, 2, false},
        {"text", "s.txt", NULL, NULL, NULL, 0, true},
    };
    const char *seeds[] = {CHAT_JSONL, PAIRS_JSONL, TEXT_JSONL, PAIRS_JSONL, VIGGO_CSV,
                           "prompt,completion\n\"a, b\",c\nd,\"e\"\"f\"\ng,h\n", PLAIN_TEXT};
    for (size_t i = 0; i < sizeof in / sizeof *in; i++) fuzz_dataset(&in[i], seeds[i], n_mut);
    // the shared files' first lines, with their presets
    char *h;
    if ((h = shared_head("data/sql/all.jsonl", 6, 8192))) {
        fuzz_dataset(&(ds_input){"sql (shared)", "sql.jsonl", "sql", NULL, NULL, 1, false}, h, n_mut / 2); free(h);
    }
    if ((h = shared_head("data/gsm8k/train.jsonl", 5, 8192))) {
        fuzz_dataset(&(ds_input){"gsm8k (shared)", "g.jsonl", "gsm8k", NULL, NULL, 1, false}, h, n_mut / 2); free(h);
    }
    if ((h = shared_head("data/viggo/train.csv", 8, 8192))) {
        fuzz_dataset(&(ds_input){"viggo (shared)", "vg.csv", "viggo", NULL, NULL, 2, false}, h, n_mut / 2); free(h);
    }
    if ((h = shared_head("data/text/tinystories_sample.txt", 40, 4096))) {
        fuzz_dataset(&(ds_input){"text (shared)", "ts.txt", NULL, NULL, NULL, 0, true}, h, n_mut / 2); free(h);
    }
}

// Mutants that must be refused (skip_bad_lines off), with a word the message must hold.
static void test_dataset_targeted(void) {
    struct { const char *file, *content, *preset, *want; bool skip; } cases[] = {
        {"r1.jsonl", "{\"messages\":[]}\n", NULL, "assistant", false},
        {"r2.jsonl", "{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"},{\"role\":\"assistant\",\"content\":\"y\"}]}\n", NULL, "robot", false},
        {"r3.jsonl", "{\"messages\":[{\"role\":\"user\",\"content\":5},{\"role\":\"assistant\",\"content\":\"y\"}]}\n", NULL, "content", false},
        {"r4.jsonl", "{\"messages\":{\"role\":\"user\"}}\n", NULL, "messages", false},
        {"r5.jsonl", "{\"question\":7,\"answer\":\"x\"}\n", "gsm8k", "question", false},
        {"r6.jsonl", "{\"question\":\"q\",\"answer\":null}\n", NULL, "answer", false},
        {"r7.jsonl", "{\"question\":\"q\",\"answer\":\"a\"}\n{\"question\":\"q\",\"ans", NULL, ":2", false},
        {"r8.jsonl", "{\"question\":\"q\",\"answer\":\"a\"}\n[1,2]\n", NULL, "not a JSON object", false},
        {"r9.jsonl", "{\"text\":\"a\"} {\"text\":\"b\"}\n", NULL, "after the JSON", false},
        {"r10.csv", "mr,ref\n\"a,b\n", "viggo", "never closed", false},
        {"r11.csv", "mr,ref\na,b,c\n", "viggo", "fields", false},
        {"r12.csv", "mr,ref\na\n", "viggo", "fields", false},
        {"r13.csv", "a,b\nx,y\n", "viggo", "ref", false},
        {"r14.csv", "", "viggo", "empty", false},
        {"r15.csv", "mr,ref\na\"b,c\n", "viggo", "quote", false},
        {"r16.csv", "mr,ref\n\"a\"b,c\n", "viggo", "closing quote", false},
        {"r17.csv", "mr,ref,ref\na,b,c\n", "viggo", "ref", false},       // which 'ref' the template means is unknown
        {"r18.csv", "mr,ref\na,b,c\nd,e,f\n", "viggo", "no examples", true},   // every line bad, skipped
        {"r19.jsonl", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}\n", "sql", "assistant", false},
        {"r20.jsonl", "\n\n", NULL, "no examples", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", g_dir, cases[i].file);
        write_bytes(path, cases[i].content, strlen(cases[i].content));
        dataset_config c;
        dataset_config_default(&c);
        c.path = path;
        c.preset = cases[i].preset;
        c.skip_bad_lines = cases[i].skip;
        c.seq_len = 64;
        ds_run("dataset targeted", path, &c, &enc3, cases[i].content, cases[i].want);
    }
    // a messages array over the limit
    data_str s = {0};
    data_str_puts(&s, "{\"messages\":[");
    for (int i = 0; i < 5000; i++) data_str_puts(&s, i ? ",{\"role\":\"user\",\"content\":\"x\"}" : "{\"role\":\"user\",\"content\":\"x\"}");
    data_str_puts(&s, ",{\"role\":\"assistant\",\"content\":\"y\"}]}\n");
    char path[512];
    snprintf(path, sizeof path, "%s/r_many.jsonl", g_dir);
    write_bytes(path, s.p, s.n);
    dataset_config c;
    dataset_config_default(&c);
    c.path = path;
    ds_run("dataset targeted", path, &c, &enc3, "(5001 messages)", "4096");
    data_str_free(&s);
}

// ---------------------------------------------------------------- checkpoints

static llama_config tiny_config(void) {
    llama_config c = {0};
    c.vocab_size = 64; c.dim = 32; c.hidden_dim = 64; c.n_layers = 2; c.n_heads = 4; c.n_kv_heads = 2;
    c.head_dim = 8; c.max_pos = 64; c.norm_eps = 1e-5f; c.rope_theta = 10000; c.tie_embeddings = 0;
    c.bos_id = 1; c.eos_id = 2;
    return c;
}
static train_options tiny_options(void) {
    train_options o = train_options_default();
    o.steps = 6; o.batch_size = 2; o.seq_len = 16; o.grad_accum = 1; o.lr = 3e-3; o.min_lr = 3e-4;
    o.seed = 99; o.log_every = 0;
    return o;
}

// The victim: a trainer whose state is snapshot before each resume and compared after a refused one.
typedef struct {
    llama_model m;
    trainer t;
    rand_src src;
    float *p0, *m0, *v0;
    size_t n;
    int step0;
    uint64_t rng0;
    int64_t t0;
    rand_src src0;
} victim;

static void victim_init(victim *v, int lora) {
    llama_config c = tiny_config();
    llama_init(&v->m, &c);
    llama_init_random(&v->m, 41);
    if (lora) {
        lora_config lc = {.rank = 4, .alpha = 8, .dropout = 0.1, .kinds = (1u << LIN_Q) | (1u << LIN_DOWN)};
        llama_lora_enable(&v->m, &lc, 3);
    }
    train_options o = tiny_options();
    v->src = (rand_src){.vocab = c.vocab_size};
    CHECK(trainer_init(&v->t, &v->m, &o, (train_data_source){&v->src, rs_next, rs_get, rs_set}) == HALO_OK, "trainer_init: %s", halo_error());
    llama_trainable tp = llama_trainable_params(&v->m);
    v->n = tp.n;
    v->p0 = malloc(sizeof(float) * tp.n); v->m0 = malloc(sizeof(float) * tp.n); v->v0 = malloc(sizeof(float) * tp.n);
}
static void victim_snapshot(victim *v) {
    llama_trainable tp = llama_trainable_params(&v->m);
    memcpy(v->p0, tp.params, sizeof(float) * v->n);
    memcpy(v->m0, v->t.opt.m, sizeof(float) * v->n);
    memcpy(v->v0, v->t.opt.v, sizeof(float) * v->n);
    v->step0 = v->t.step; v->rng0 = v->t.rng; v->t0 = v->t.opt.t; v->src0 = v->src;
}
static int victim_unchanged(victim *v) {
    llama_trainable tp = llama_trainable_params(&v->m);
    return !memcmp(v->p0, tp.params, sizeof(float) * v->n) && !memcmp(v->m0, v->t.opt.m, sizeof(float) * v->n) &&
           !memcmp(v->v0, v->t.opt.v, sizeof(float) * v->n) && v->t.step == v->step0 && v->t.rng == v->rng0 &&
           v->t.opt.t == v->t0 && v->src.rng == v->src0.rng && v->src.pos == v->src0.pos;
}
static void victim_restore(victim *v) {
    llama_trainable tp = llama_trainable_params(&v->m);
    memcpy(tp.params, v->p0, sizeof(float) * v->n);
    memcpy(v->t.opt.m, v->m0, sizeof(float) * v->n);
    memcpy(v->t.opt.v, v->v0, sizeof(float) * v->n);
    v->t.step = v->step0; v->t.rng = v->rng0; v->t.opt.t = v->t0; v->src = v->src0;
}
static void victim_free(victim *v) {
    trainer_free(&v->t);
    llama_free(&v->m);
    free(v->p0); free(v->m0); free(v->v0);
}

// Resumes the victim from `path`: refused (state unchanged, message naming the file) or accepted (then one step).
static void ckpt_run(victim *v, const char *kind, const char *path, const char *input, const char *must_refuse) {
    tally *ty = tally_of(kind);
    ty->mutants++;
    victim_snapshot(v);
    halo_clear_error();
    // the resume's "different training options" warning, once per such mutant, is not wanted in the log
    fflush(stderr);
    int err = dup(2), null = open("/dev/null", O_WRONLY);
    dup2(null, 2);
    int rc = trainer_resume(&v->t, path);
    fflush(stderr);
    dup2(err, 2);
    close(err); close(null);
    if (rc != HALO_OK) {
        note_refusal(kind, path, input);
        if (must_refuse && !strstr(halo_error(), must_refuse))
            fuzz_bad(kind, "refused without naming '%s': %s", must_refuse, halo_error());
        if (!victim_unchanged(v)) fuzz_bad(kind, "a refused resume changed the model/optimizer/trainer: %s%s", halo_error(), NULL);
        return;
    }
    ty->accepted++;
    if (must_refuse) fuzz_bad(kind, "accepted, should be refused naming '%s' (%s)", must_refuse, input);
    if (v->t.step < 0 || v->t.step > v->t.o.steps) fuzz_bad(kind, "resumed at a step outside the run%s%s", "", NULL);
    train_step_info si;
    if (v->t.step < v->t.o.steps && trainer_step(&v->t, &si) != HALO_OK && !strstr(halo_error(), "step"))
        fuzz_bad(kind, "step after resume: %s%s", halo_error(), NULL);
    victim_restore(v);
}

// The checkpoint rebuilt with edits: tensors renamed / dropped / reshaped / retyped / poisoned, metadata replaced.
typedef struct {
    const char *drop, *meta_key, *meta_val;   // meta_val NULL with meta_key: the key removed
    const char *reshape, *retype, *poison;    // tensor names (substring match on the first hit)
    float poison_val;
    const char *extra;                         // an extra tensor
} ckpt_edit;

// A safetensors writer without the library writer's fsync (hundreds of mutants a run): F32 or BF16 (truncated).
typedef struct { char name[200]; int bf16, ndim; int64_t shape[8]; const float *d; size_t numel; } fast_t;
static void fast_write(const char *path, const fast_t *t, int n, cJSON *meta) {
    cJSON *h = cJSON_CreateObject();
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "dtype", t[i].bf16 ? "BF16" : "F32");
        cJSON *sh = cJSON_AddArrayToObject(o, "shape");
        for (int k = 0; k < t[i].ndim; k++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t[i].shape[k]));
        size_t nb = t[i].numel * (t[i].bf16 ? 2 : 4);
        cJSON *of = cJSON_AddArrayToObject(o, "data_offsets");
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + nb)));
        off += nb;
        cJSON_AddItemToObject(h, t[i].name, o);
    }
    cJSON_AddItemToObject(h, "__metadata__", meta);
    char *js = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    size_t hl = strlen(js), pad = (8 - hl % 8) % 8;
    FILE *f = fopen(path, "wb");
    uint64_t L = hl + pad;
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(L >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(js, 1, hl, f);
    for (size_t i = 0; i < pad; i++) fputc(' ', f);
    for (int i = 0; i < n; i++)
        for (size_t k = 0; k < t[i].numel; k++) {
            if (t[i].bf16) { uint32_t u; memcpy(&u, &t[i].d[k], 4); uint16_t b16 = (uint16_t)(u >> 16); fwrite(&b16, 2, 1, f); }
            else fwrite(&t[i].d[k], 4, 1, f);
        }
    fclose(f);
    free(js);
}

static int rebuild(const char *src, const char *dst, const ckpt_edit *e) {
    st_file f;
    if (st_open(src, &f)) return HALO_ERR;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)f.map[i] << (8 * i);
    cJSON *root = cJSON_ParseWithLength((const char *)f.map + 8, (size_t)hlen);
    cJSON *md = cJSON_GetObjectItemCaseSensitive(root, "__metadata__");
    fast_t *ft = calloc((size_t)f.n_tensors + 1, sizeof *ft);
    int nt = 0;
    float **copies = calloc((size_t)f.n_tensors + 1, sizeof *copies);
    int done_reshape = 0, done_retype = 0, done_poison = 0;
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor *t = &f.tensors[i];
        if (e->drop && (e->drop[0] == '=' ? !strcmp(t->name, e->drop + 1) : strstr(t->name, e->drop) != NULL)) continue;
        float *d = malloc(sizeof(float) * (t->numel ? t->numel : 1));
        memcpy(d, f.data + t->offset, sizeof(float) * t->numel);
        copies[i] = d;
        fast_t *x = &ft[nt++];
        snprintf(x->name, sizeof x->name, "%s", t->name);
        x->ndim = t->ndim;
        memcpy(x->shape, t->shape, sizeof x->shape);
        x->d = d;
        x->numel = t->numel;
        if (e->reshape && !done_reshape && strstr(t->name, e->reshape) && x->ndim == 2) {
            int64_t y = x->shape[0]; x->shape[0] = x->shape[1]; x->shape[1] = y;   // transposed: same size, wrong shape
            if (x->shape[0] == x->shape[1]) { x->ndim = 1; x->shape[0] *= x->shape[1]; }
            done_reshape = 1;
        }
        if (e->retype && !done_retype && strstr(t->name, e->retype)) { x->bf16 = 1; done_retype = 1; }
        if (e->poison && !done_poison && strstr(t->name, e->poison)) { d[t->numel / 2] = e->poison_val; done_poison = 1; }
    }
    static float z[4];
    if (e->extra) { fast_t *x = &ft[nt++]; snprintf(x->name, sizeof x->name, "%s", e->extra); x->ndim = 1; x->shape[0] = 4; x->d = z; x->numel = 4; }
    cJSON *meta = cJSON_CreateObject(), *it;
    cJSON_ArrayForEach(it, md) {
        if (e->meta_key && !strcmp(it->string, e->meta_key)) continue;
        if (cJSON_IsString(it)) cJSON_AddStringToObject(meta, it->string, it->valuestring);
    }
    if (e->meta_key && e->meta_val) cJSON_AddStringToObject(meta, e->meta_key, e->meta_val);
    fast_write(dst, ft, nt, meta);
    for (int i = 0; i < f.n_tensors; i++) free(copies[i]);
    free(copies);
    free(ft);
    cJSON_Delete(root);
    st_close(&f);
    return HALO_OK;
}

// The metadata value of key in the checkpoint (malloc'ed), for JSON-aware edits of 'data', 'train', 'config', 'lora'.
static char *meta_value(const char *path, const char *key) {
    st_file f;
    if (st_open(path, &f)) return NULL;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)f.map[i] << (8 * i);
    cJSON *root = cJSON_ParseWithLength((const char *)f.map + 8, (size_t)hlen);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "__metadata__"), key);
    char *s = cJSON_IsString(v) ? strdup(v->valuestring) : NULL;
    cJSON_Delete(root);
    st_close(&f);
    return s;
}

static const char *const META_KEYS[] = {"format", "config", "step", "optim_t", "has_optimizer", "rng", "elapsed_s",
                                        "data", "train", "app", "lora"};
static const char *const META_VALS[] = {"", "-1", "0", "1", "3", "99999999999999999999", "1e3", "abc", "nan", "-0",
                                        "18446744073709551616", "{}", "[]", "null", "{\"epoch\":-1}", " 2", "2 ",
                                        "\xFF\xFE", "{\"r\":0}", "1.5"};

// Real checkpoints of a tiny model (whole model, and LoRA) after two steps, mutated byte-wise, in the metadata
// (scalar values, JSON-aware edits of the JSON values) and in the tensors.
static void test_checkpoints(int n_mut) {
    for (int lora = 0; lora < 2; lora++) {
        const char *kind = lora ? "checkpoint lora" : "checkpoint";
        victim v;
        victim_init(&v, lora);
        train_step_info si;
        for (int i = 0; i < 2; i++) CHECK(trainer_step(&v.t, &si) == HALO_OK, "step: %s", halo_error());
        char good[512], bad[512];
        snprintf(good, sizeof good, "%s/good%d.safetensors", g_dir, lora);
        snprintf(bad, sizeof bad, "%s/ckpt%d.safetensors", g_dir, lora);
        CHECK(trainer_save(&v.t, good) == HALO_OK, "save: %s", halo_error());
        victim_free(&v);
        victim_init(&v, lora);
        ckpt_run(&v, kind, good, "(the real checkpoint)", NULL);
        CHECK(tally_of(kind)->accepted == 1, "%s: the unmutated checkpoint resumes", kind);
        size_t n;
        char *orig = read_all(good, &n);
        uint64_t hlen = 0;
        for (int i = 0; i < 8; i++) hlen |= (uint64_t)(unsigned char)orig[i] << (8 * i);
        buf b = {0};
        const char *tnames[] = {"embed_tokens", "layers.1.mlp.down_proj", "optim.m.", "optim.v.", "norm.weight", "lora_B"};
        for (int i = 0; i < n_mut; i++) {
            int how = (int)rnd(4);
            char desc[256];
            if (how == 0) {   // bytes, mostly in the header
                buf_set(&b, orig, n);
                if (rnd(4)) mutate_bytes(&b, 1 + (int)rnd(3), 8, 8 + hlen);
                else mutate_bytes(&b, 1 + (int)rnd(2), 0, 0);
                write_bytes(bad, b.p, b.n);
                snprintf(desc, sizeof desc, "byte mutant %d", i);
            } else if (how == 1) {   // a metadata value replaced or removed
                ckpt_edit e = {.meta_key = META_KEYS[rnd(sizeof META_KEYS / sizeof *META_KEYS)]};
                e.meta_val = rnd(8) ? META_VALS[rnd(sizeof META_VALS / sizeof *META_VALS)] : NULL;
                rebuild(good, bad, &e);
                snprintf(desc, sizeof desc, "metadata %s = %s", e.meta_key, e.meta_val ? e.meta_val : "(removed)");
            } else if (how == 2) {   // a JSON-aware edit of a JSON metadata value
                const char *keys[] = {"data", "train", "config", "lora", "app"};
                const char *key = keys[rnd(lora ? 5 : 3)];
                char *val = meta_value(good, key);
                cJSON *o = val ? cJSON_Parse(val) : NULL;
                free(val);
                if (o) {
                    json_edit(o);
                    cJSON *f = random_child(o);
                    if (f && f->string && rnd(2)) cJSON_ReplaceItemInObjectCaseSensitive(o, f->string,
                        cJSON_CreateNumber((double[]){-1, 0, 1e300, 0.5, 2147483648.0, -2147483649.0}[rnd(6)]));
                }
                char *t = o ? cJSON_PrintUnformatted(o) : strdup("{");
                cJSON_Delete(o);
                ckpt_edit e = {.meta_key = key, .meta_val = t};
                rebuild(good, bad, &e);
                snprintf(desc, sizeof desc, "metadata %s = %.200s", key, t);
                free(t);
            } else {   // tensors
                ckpt_edit e = {0};
                const char *tn = tnames[rnd(lora ? 6 : 5)];
                switch (rnd(6)) {
                case 0: e.drop = tn; break;
                case 1: e.reshape = tn; break;
                case 2: e.retype = tn; break;
                case 3: e.poison = tn; e.poison_val = rnd(2) ? NAN : INFINITY; break;
                case 4: e.poison = "optim.v."; e.poison_val = -1.0f; break;
                default: e.extra = rnd(2) ? "optim.m.unknown" : "model.layers.9.x.weight"; break;
                }
                rebuild(good, bad, &e);
                snprintf(desc, sizeof desc, "tensor edit drop=%s reshape=%s retype=%s poison=%s(%g) extra=%s", e.drop ? e.drop : "-",
                         e.reshape ? e.reshape : "-", e.retype ? e.retype : "-", e.poison ? e.poison : "-",
                         (double)e.poison_val, e.extra ? e.extra : "-");
            }
            ckpt_run(&v, kind, bad, desc, NULL);
        }
        // targeted: each must be refused naming the file and the key or tensor, the victim untouched
        struct { ckpt_edit e; const char *want; } cases[] = {
            {{.meta_key = "step", .meta_val = "-1"}, "'step'"},
            {{.meta_key = "step", .meta_val = "99999999999999999999"}, "'step'"},
            {{.meta_key = "step", .meta_val = "1000"}, "step 1000"},            // past the run's steps
            {{.meta_key = "step", .meta_val = NULL}, "'step'"},
            {{.meta_key = "optim_t", .meta_val = "-3"}, "'optim_t'"},
            {{.meta_key = "rng", .meta_val = "18446744073709551616"}, "'rng'"},
            {{.meta_key = "rng", .meta_val = "-5"}, "'rng'"},
            {{.meta_key = "elapsed_s", .meta_val = "abc"}, "'elapsed_s'"},
            {{.meta_key = "elapsed_s", .meta_val = "nan"}, "'elapsed_s'"},
            {{.meta_key = "elapsed_s", .meta_val = "-5"}, "'elapsed_s'"},
            {{.meta_key = "data", .meta_val = "[1,2]"}, "'data'"},
            {{.meta_key = "data", .meta_val = "{\"epoch\":-1,\"position\":0,\"rng\":\"5\"}"}, "'data'"},
            {{.meta_key = "data", .meta_val = "{\"epoch\":0,\"position\":1e300,\"rng\":\"5\"}"}, "'data'"},
            {{.meta_key = "data", .meta_val = "{\"epoch\":0,\"position\":1.5,\"rng\":\"5\"}"}, "'data'"},
            {{.meta_key = "data", .meta_val = "{\"epoch\":0,\"position\":-7,\"rng\":\"5\"}"}, "'data'"},
            {{.meta_key = "format", .meta_val = "halo-checkpoint-0"}, "format"},
            {{.meta_key = "config", .meta_val = "{\"hidden_size\": 48}"}, "config"},
            {{.meta_key = "lora", .meta_val = "{\"r\":-2,\"lora_alpha\":8,\"target_modules\":[\"q_proj\"]}"}, "lora"},
            {{.drop = "optim.v."}, "optim.v."},
            {{.drop = "=model.norm.weight"}, "model.norm.weight"},
            {{.reshape = "optim.m."}, "optim.m."},
            {{.retype = "optim.v."}, "optim.v."},
            {{.poison = "optim.v.", .poison_val = -1.0f}, "optim.v."},
            {{.poison = "optim.m.", .poison_val = NAN}, "optim.m."},
            {{.poison = "layers.1.mlp.down_proj.", .poison_val = INFINITY}, "down_proj"},
        };
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            if (lora && cases[i].e.drop && cases[i].e.drop[0] == '=') continue;   // no such tensor in a LoRA file
            char path[512];
            snprintf(path, sizeof path, "%s/target%d_%zu.safetensors", g_dir, lora, i);
            ckpt_edit e = cases[i].e;
            if (lora && e.poison && !strncmp(e.poison, "layers", 6)) e.poison = "lora_A";
            const char *want = lora && !strcmp(cases[i].want, "down_proj") ? "lora_A" : cases[i].want;
            rebuild(good, path, &e);
            ckpt_run(&v, lora ? "ckpt lora targeted" : "ckpt targeted", path, want, want);
        }
        free(orig);
        free(b.p);
        victim_free(&v);
    }
    // train_options_from_json (the demo resumes with the checkpoint's options): wrong shapes refused, never UB
    train_options o = tiny_options();
    char *good = train_options_to_json(&o);
    int refused = 0, n = 0, bad = 0;
    const char *keys[] = {"steps", "batch_size", "lr", "decay", "seed", "clip", "warmup"};
    for (int i = 0; i < 200; i++) {
        cJSON *j = cJSON_Parse(good);
        const char *k = keys[rnd(7)];
        cJSON_ReplaceItemInObjectCaseSensitive(j, k, rnd(3) ? cJSON_CreateNumber((double[]){1e300, -1e300, 3e9, -3e9, NAN, 2.5}[rnd(6)])
                                                            : wrong_value());
        char *s = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        train_options x = train_options_default();
        n++;
        int rc = train_options_from_json(s, &x);
        if (rc) refused++;
        else if (!isfinite(x.lr) || !isfinite(x.clip) || !isfinite(x.adamw.beta1)) {
            if (bad++ < 3) fprintf(stderr, "[train options] accepted garbage: %.200s\n", s);
        }
        free(s);
    }
    tally *ty = tally_of("train options json");
    ty->mutants = n; ty->refused = refused; ty->accepted = n - refused; ty->bad += bad;
    free(good);
}

// ---------------------------------------------------------------- LoRA adapters

static void write_text(const char *dir, const char *name, const char *text) {
    char *p = halo_path_join(dir, name);
    write_bytes(p, text, strlen(text));
    free(p);
}

// Loads an adapter onto a model that already has adapters: refused (the old adapters kept, the message naming
// the folder's file) or accepted (then a finite forward pass).
static void lora_run(llama_model *m, const float *old, size_t n_old, const char *kind, const char *dir,
                     const char *input, const char *must_refuse) {
    tally *ty = tally_of(kind);
    ty->mutants++;
    halo_clear_error();
    if (llama_lora_load(m, dir) != HALO_OK) {
        note_refusal(kind, dir, input);
        if (must_refuse && !strstr(halo_error(), must_refuse))
            fuzz_bad(kind, "refused without naming '%s': %s", must_refuse, halo_error());
        llama_trainable tp = llama_trainable_params(m);
        if (!llama_get_lora(m) || tp.n != n_old || memcmp(tp.params, old, sizeof(float) * n_old))
            fuzz_bad(kind, "a refused load lost the model's adapters: %s%s", halo_error(), NULL);
        return;
    }
    ty->accepted++;
    if (must_refuse) fuzz_bad(kind, "accepted, should be refused naming '%s' (%s)", must_refuse, input);
    halo_batch b;
    halo_batch_alloc(&b, 1, 8);
    for (int i = 0; i < 8; i++) b.input_ids[i] = (i * 7 + 3) % m->cfg.vocab_size;
    halo_batch_shift_targets(&b);
    float loss = llama_forward(m, &b, NULL);
    llama_trainable np = llama_trainable_params(m);
    float big = 0;
    for (size_t i = 0; i < np.n; i++) big = fmaxf(big, fabsf(np.params[i]));
    if (!isfinite(loss) && big < 1e6f)   // finite but huge values (a flipped exponent bit) may overflow: allowed
        fuzz_bad(kind, "accepted adapter gives loss %s (%s)", isnan(loss) ? "nan" : "inf", input);
    halo_batch_free(&b);
    // put the reference adapters back for the next mutant
    lora_config lc = {.rank = 2, .alpha = 4, .dropout = 0, .kinds = 1u << LIN_V};
    llama_lora_enable(m, &lc, 1);
    llama_trainable tp = llama_trainable_params(m);
    memcpy(tp.params, old, sizeof(float) * n_old);
}

static void test_adapters(int n_mut) {
    char dir[512], bad[512];
    snprintf(dir, sizeof dir, "%s/adapter", g_dir);
    snprintf(bad, sizeof bad, "%s/adapter_bad", g_dir);
    mkdir(bad, 0777);
    llama_config c = tiny_config();
    llama_model m;
    llama_init(&m, &c);
    llama_init_random(&m, 8);
    lora_config lc = {.rank = 4, .alpha = 16, .dropout = 0.05, .kinds = (1u << LIN_Q) | (1u << LIN_K) | (1u << LIN_UP)};
    llama_lora_enable(&m, &lc, 5);
    llama_trainable tp = llama_trainable_params(&m);
    unsigned long long s = 4;
    for (size_t i = 0; i < tp.n; i++) tp.params[i] = (float)(0.1 * t_rand_normal(&s));
    CHECK(llama_lora_save(&m, dir, "/models/base", 0) == HALO_OK, "save adapter: %s", halo_error());
    // the victim: other adapters already on the model
    lora_config lv = {.rank = 2, .alpha = 4, .dropout = 0, .kinds = 1u << LIN_V};
    llama_lora_enable(&m, &lv, 1);
    tp = llama_trainable_params(&m);
    size_t n_old = tp.n;
    float *old = malloc(sizeof(float) * n_old);
    memcpy(old, tp.params, sizeof(float) * n_old);
    char *cfg_path = halo_path_join(dir, "adapter_config.json"), *st_path = halo_path_join(dir, "adapter_model.safetensors");
    char *bad_st = halo_path_join(bad, "adapter_model.safetensors"), *bad_cfg = halo_path_join(bad, "adapter_config.json");
    size_t n_cfg, n_st;
    char *cfg = read_all(cfg_path, &n_cfg), *stb = read_all(st_path, &n_st);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)(unsigned char)stb[i] << (8 * i);
    buf b = {0};
    const char *keys[] = {"r", "lora_alpha", "lora_dropout", "target_modules", "base_model_name_or_path", "peft_type",
                          "bias", "use_dora", "modules_to_save", "rank_pattern"};
    for (int i = 0; i < n_mut; i++) {
        char desc[512];
        int how = (int)rnd(4);
        write_bytes(bad_cfg, cfg, n_cfg);
        write_bytes(bad_st, stb, n_st);
        if (how == 0) {   // config bytes
            buf_set(&b, cfg, n_cfg);
            mutate_bytes(&b, 1 + (int)rnd(3), 0, 0);
            write_bytes(bad_cfg, b.p, b.n);
            snprintf(desc, sizeof desc, "config bytes: %.300s", b.p);
        } else if (how == 1) {   // a config value
            cJSON *o = cJSON_Parse(cfg);
            const char *k = keys[rnd(sizeof keys / sizeof *keys)];
            cJSON *val;
            switch (rnd(5)) {
            case 0: val = cJSON_CreateNumber((double[]){0, -4, 1e9, 2147483648.0, 1e300, 4.5, 8, 2}[rnd(8)]); break;
            case 1: { val = cJSON_CreateArray(); int k2 = (int)rnd(3);
                      for (int j = 0; j < k2; j++) cJSON_AddItemToArray(val, cJSON_CreateString((const char *[]){"q_proj", "fc1", "", "lm_head"}[rnd(4)])); } break;
            default: val = wrong_value(); break;
            }
            if (rnd(6) == 0) cJSON_DeleteItemFromObjectCaseSensitive(o, k), cJSON_Delete(val);
            else cJSON_ReplaceItemInObjectCaseSensitive(o, k, val);
            char *t = cJSON_Print(o);
            cJSON_Delete(o);
            write_bytes(bad_cfg, t, strlen(t));
            snprintf(desc, sizeof desc, "config %s: %.300s", k, t);
            free(t);
        } else if (how == 2) {   // tensor file bytes, mostly the header
            buf_set(&b, stb, n_st);
            if (rnd(4)) mutate_bytes(&b, 1 + (int)rnd(3), 8, 8 + hlen);
            else mutate_bytes(&b, 1, 0, 0);
            write_bytes(bad_st, b.p, b.n);
            snprintf(desc, sizeof desc, "tensor bytes %d", i);
        } else {   // tensor edits
            ckpt_edit e = {0};
            const char *tn = (const char *[]){"lora_A", "lora_B", "k_proj.lora_B", "layers.1.mlp.up_proj.lora_A"}[rnd(4)];
            switch (rnd(5)) {
            case 0: e.drop = tn; break;
            case 1: e.reshape = tn; break;
            case 2: e.retype = tn; break;
            case 3: e.poison = tn; e.poison_val = rnd(2) ? NAN : -INFINITY; break;
            default: e.extra = "base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"; break;
            }
            rebuild(st_path, bad_st, &e);
            snprintf(desc, sizeof desc, "tensor edit %s", tn);
        }
        lora_run(&m, old, n_old, "adapter", bad, desc, NULL);
    }
    // targeted
    struct { const char *config; const char *want; int tensors; } cases[] = {
        {"{\"r\": -4, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\", \"k_proj\", \"up_proj\"]}", "rank", 0},
        {"{\"r\": 1e300, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\", \"k_proj\", \"up_proj\"]}", "'r'", 0},
        {"{\"r\": 2147483647, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\", \"k_proj\", \"up_proj\"]}", "rank", 0},
        {"{\"r\": 4, \"lora_alpha\": \"16\", \"target_modules\": [\"q_proj\", \"k_proj\", \"up_proj\"]}", "lora_alpha", 0},
        {"{\"r\": 4, \"lora_alpha\": 1e300, \"target_modules\": [\"q_proj\", \"k_proj\", \"up_proj\"]}", "alpha", 0},
        {"{\"r\": 4, \"lora_alpha\": 16, \"lora_dropout\": \"0.1\", \"target_modules\": [\"q_proj\", \"k_proj\", \"up_proj\"]}", "lora_dropout", 0},
        {"{\"r\": 4, \"lora_alpha\": 16, \"target_modules\": []}", "no linear", 0},
        {"{\"r\": 4, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\", 7]}", "target_modules", 0},
        {"{\"r\": 4, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\", \"k_proj\", \"up_proj\"], \"peft_type\": \"IA3\"}", "peft_type", 0},
        {"{\"r\": 4, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\", \"k_proj\", \"up_proj\"]}", "lora_B", 1},   // missing lora_B
        {"{\"r\": 4, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\", \"k_proj\", \"up_proj\"]}", "lora_A", 2},   // wrong shape
        {"{\"r\": 4, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\", \"k_proj\", \"up_proj\"]}", "lora_A", 3},   // NaN
        {"[]", "adapter_config.json", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        write_text(bad, "adapter_config.json", cases[i].config);
        ckpt_edit e = {0};
        if (cases[i].tensors == 1) e.drop = "layers.1.self_attn.k_proj.lora_B";
        if (cases[i].tensors == 2) e.reshape = "layers.0.self_attn.q_proj.lora_A";
        if (cases[i].tensors == 3) { e.poison = "layers.1.mlp.up_proj.lora_A"; e.poison_val = NAN; }
        rebuild(st_path, bad_st, &e);
        lora_run(&m, old, n_old, "adapter targeted", bad, cases[i].config, cases[i].want);
    }
    free(old); free(cfg); free(stb); free(b.p);
    free(cfg_path); free(st_path); free(bad_st); free(bad_cfg);
    llama_free(&m);
}

// ---------------------------------------------------------------- halo_config.json

static void halo_run(const char *kind, const char *path, const char *json, const char *must_refuse) {
    tally *ty = tally_of(kind);
    ty->mutants++;
    model_halo_config hc;
    halo_clear_error();
    if (model_halo_config_from_json(json, path, &hc) != HALO_OK) {
        note_refusal(kind, path, json);
        if (must_refuse && !strstr(halo_error(), must_refuse))
            fuzz_bad(kind, "refused without naming '%s': %s", must_refuse, halo_error());
        return;
    }
    ty->accepted++;
    if (must_refuse) fuzz_bad(kind, "accepted, should be refused naming '%s' (%.300s)", must_refuse, json);
    if (hc.level < 0 || hc.level > 2 || hc.skip_first < 0 || hc.skip_last < 0 || hc.had_block < 0 || hc.had_block_b < 0)
        fuzz_bad(kind, "accepted out-of-range settings: %.300s%s", json, NULL);
    // applied to a tiny model (refusals there are llama_set_halo's, about the model), then one forward
    llama_config c = tiny_config();
    llama_model m;
    llama_init(&m, &c);
    llama_init_random(&m, 2);
    if (llama_set_halo(&m, &hc) == HALO_OK) {
        halo_batch b;
        halo_batch_alloc(&b, 1, 8);
        for (int i = 0; i < 8; i++) b.input_ids[i] = i;
        halo_batch_shift_targets(&b);
        float loss = llama_forward(&m, &b, NULL);
        if (!isfinite(loss)) fuzz_bad(kind, "loss not finite with %.300s%s", json, NULL);
        halo_batch_free(&b);
    }
    llama_free(&m);
}

static void test_halo_config(int n_mut) {
    char path[512];
    snprintf(path, sizeof path, "%s/model/halo_config.json", g_dir);
    model_halo_config hc = model_halo_config_default();
    hc.prec = HALO_PREC_INT8; hc.level = 2; hc.kinds = (1u << LIN_Q) | (1u << LIN_UP); hc.skip_first = 1;
    char *good = model_halo_config_to_json(&hc);
    const char *keys[] = {"precision", "level", "linears", "skip_first_blocks", "skip_last_blocks", "scale", "grad_e5m2",
                          "stochastic_rounding", "hadamard_block", "hadamard_block_tokens"};
    buf b = {0};
    halo_run("halo_config", path, good, NULL);
    for (int i = 0; i < n_mut; i++) {
        if (rnd(3) == 0) {
            buf_set(&b, good, strlen(good));
            mutate_bytes(&b, 1 + (int)rnd(3), 0, 0);
            halo_run("halo_config", path, b.p, NULL);
            continue;
        }
        cJSON *o = cJSON_Parse(good);
        const char *k = keys[rnd(10)];
        cJSON *val = rnd(2) ? cJSON_CreateNumber((double[]){-1, 0, 1, 2, 3, 1.5, 1e300, 2147483648.0, 64, 16}[rnd(10)]) : wrong_value();
        cJSON_ReplaceItemInObjectCaseSensitive(o, k, val);
        char *t = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        halo_run("halo_config", path, t, NULL);
        free(t);
    }
    struct { const char *json, *want; } cases[] = {
        {"{\"precision\": 8}", "precision"},
        {"{\"precision\": \"int4\"}", "precision"},
        {"{\"precision\": \"int8\", \"level\": \"2\"}", "level"},
        {"{\"precision\": \"int8\", \"level\": 1.5}", "level"},
        {"{\"precision\": \"int8\", \"level\": 7}", "level"},
        {"{\"precision\": \"int8\", \"linears\": \"q,k\"}", "linears"},
        {"{\"precision\": \"int8\", \"linears\": [\"q\", \"lm_head\"]}", "linears"},
        {"{\"precision\": \"int8\", \"skip_first_blocks\": -1}", "skip_first_blocks"},
        {"{\"precision\": \"int8\", \"skip_last_blocks\": 2147483648}", "skip_last_blocks"},
        {"{\"precision\": \"int8\", \"scale\": 1}", "scale"},
        {"{\"precision\": \"int8\", \"grad_e5m2\": \"yes\"}", "grad_e5m2"},
        {"{\"precision\": \"int8\", \"level\": 1, \"hadamard_block\": -32}", "hadamard_block"},
        {"{\"precision\": \"int8\", \"level\": 2, \"hadamard_block_tokens\": -8}", "hadamard_block_tokens"},
        {"[1]", "not a JSON object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) halo_run("halo_config targeted", path, cases[i].json, cases[i].want);
    free(good); free(b.p);
}

// ---------------------------------------------------------------- main

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/halo_test_fuzz_data_%d", (int)getpid());
    mkdir(g_dir, 0777);
    omp_set_num_threads(1);   // tiny models: thread start-up would cost more than the products
    double t0 = t_now();
    const char *scale = getenv("HALO_FUZZ_SCALE");   // more mutants for a longer local run
    int k = scale ? atoi(scale) : 1;
    if (k < 1) k = 1;
    test_datasets(220 * k);
    test_dataset_targeted();
    double t1 = t_now();
    test_checkpoints(260 * k);
    double t2 = t_now();
    test_adapters(260 * k);
    test_halo_config(300 * k);
    double t3 = t_now();
    printf("%-22s %8s %9s %8s %6s\n", "kind", "mutants", "accepted", "refused", "wrong");
    for (int i = 0; i < g_n_tally; i++) {
        const tally *t = &g_tally[i];
        printf("%-22s %8d %9d %8d %6d\n", t->kind, t->mutants, t->accepted, t->refused, t->bad);
        CHECK(t->bad == 0, "%s: %d mutants handled wrongly (first ones printed above)", t->kind, t->bad);
        CHECK(t->accepted + t->refused == t->mutants, "%s: every mutant accepted or refused", t->kind);
    }
    printf("datasets %.1f s, checkpoints %.1f s, adapters + halo_config %.1f s\n", t1 - t0, t2 - t1, t3 - t2);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", g_dir);
    TEST_END();
}
