// Dataset loading (text, JSONL, CSV sources and presets), tokenization into examples with a loss region, the
// seeded validation split, truncation accounting, and filling halo_batch rows in padded or packed layout.
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include "data/data_internal.h"
#include "data/dataset.h"
#include "util/error.h"
#include "util/fileio.h"

const char DATASET_VIGGO_INSTRUCTION[] =
    "Given a target sentence construct the underlying meaning representation of the input sentence as a single "
    "function with attributes and attribute values. This function should describe the target string accurately and "
    "the function must be one of the following ['inform', 'request', 'give_opinion', 'confirm', 'verify_attribute', "
    "'suggest', 'request_explanation', 'recommend', 'request_attribute']. The attributes must be one of the "
    "following: ['name', 'exp_release_date', 'release_year', 'developer', 'esrb', 'rating', 'genres', "
    "'player_perspective', 'has_multiplayer', 'platforms', 'available_on_steam', 'has_linux_release', "
    "'has_mac_release', 'specifier']";

// One tokenized example. The model sees positions 0..n-2 (input ids[j], target ids[j+1]); ids[j] is a target
// (in the loss) when j >= loss_start, or with a loss mask when in_loss[j]. Text windows have no prompt/answer.
typedef struct {
    int32_t *ids;        // [n_full] prompt + answer + end-of-turn (chat), or a seq_len+1 window (text)
    uint8_t *in_loss;    // [n_full] or NULL: a conversation whose earlier assistant turns are in the loss too
    int32_t n_full, n;   // n: after the cut to seq_len+1 tokens
    int32_t n_prompt, loss_start;   // loss_start: with in_loss, the first position in the loss
    char *prompt, *answer;
    int file;            // 0: cfg.path, 1: cfg.val_path
    int64_t line;
    int split;
    bool batchable;      // has at least one loss token after the cut
} ds_example;

struct dataset {
    dataset_config cfg;      // string fields are not kept (only what batching needs)
    char *files[2];
    char *metric;
    dataset_chat chat;
    bool is_text;
    int32_t pad_id;
    ds_example *ex;          // [n_ex]
    int64_t n_ex, cap_ex;
    int64_t *all[2], n_all[2];   // example indices per split (file order)
    int64_t *bat[2], n_bat[2];   // the batchable ones
    dataset_stats st;
    char first_bad[512];
    int64_t *perm;           // cached order of bat[perm_split] for (perm_seed, perm_epoch)
    int perm_split;
    uint64_t perm_seed;
    int64_t perm_epoch;
    bool perm_valid;
};

void dataset_config_default(dataset_config *c) {
    memset(c, 0, sizeof *c);
    c->seq_len = 512;
    c->shuffle = true;
    c->val_fraction = 0.05;
    c->seed = 1234;
}

// ---------------------------------------------------------------- loading

enum { KIND_NONE, KIND_TEXT, KIND_CHAT };
enum { J_UNDECIDED, J_TEXT, J_MESSAGES, J_PAIRS, J_TEMPLATE };
#define BAD 1   // a malformed record: skippable; message in halo_error()

typedef struct {
    dataset *ds;
    dataset_config cfg;      // resolved (preset applied)
    const dataset_encoder *enc;
    int file;
    const char *path;
    int kind;                // KIND_* of the whole dataset
    int32_t eot_id;
    const char *bos_text, *eos_text;
    int32_t *stream;         // text: the file's token stream
    size_t n_stream, cap_stream;
    data_str prompt, a, b, full;
    data_str hp, hh;         // a conversation's earlier turns rendered as a prompt / as history (history_spans)
    double t0, t_last;       // progress: when this file's load began, when a line was last printed
    long long file_bytes;
    unsigned tick;
    bool printed;
    jinja_template *tmpl;    // DATASET_CHAT_TEMPLATE: the model's chat template
    const cJSON *tools;      // the current record's "tools" (function schemas for the chat template), or NULL
} loader;

static void load_progress(loader *ld, FILE *f, long long pos);

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// Fisher-Yates with a splitmix stream; the same (state, n) always gives the same order.
static void shuffle_idx(int64_t *v, int64_t n, uint64_t state) {
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(splitmix(&state) % (uint64_t)(i + 1));
        int64_t t = v[i]; v[i] = v[j]; v[j] = t;
    }
}

static ds_example *new_example(dataset *ds) {
    if (ds->n_ex == ds->cap_ex) {
        ds->cap_ex = ds->cap_ex ? 2 * ds->cap_ex : 256;
        ds->ex = xrealloc(ds->ex, (size_t)ds->cap_ex * sizeof *ds->ex);
    }
    ds_example *e = &ds->ex[ds->n_ex++];
    memset(e, 0, sizeof *e);
    return e;
}

static int set_kind(loader *ld, int kind, int64_t line) {
    if (ld->kind == KIND_NONE) { ld->kind = kind; return HALO_OK; }
    if (ld->kind != kind)
        return halo_fail("%s:%lld: this file holds %s but the other file holds %s", ld->path, (long long)line,
                         kind == KIND_TEXT ? "plain text" : "prompt/answer examples",
                         kind == KIND_TEXT ? "prompt/answer examples" : "plain text");
    return HALO_OK;
}

// A malformed record: with skip_bad_lines count it (and keep the first message for the summary), else fail with
// the message, prefixed by file:line unless it already has it.
static int bad_record(loader *ld, int64_t line, bool prefixed) {
    if (!prefixed) halo_fail_ctx("%s:%lld: ", ld->path, (long long)line);
    if (!ld->cfg.skip_bad_lines) return HALO_ERR;
    if (!ld->ds->st.n_bad_lines) snprintf(ld->ds->first_bad, sizeof ld->ds->first_bad, "%s", halo_error());
    ld->ds->st.n_bad_lines++;
    return HALO_OK;
}

static int encode_into(loader *ld, const char *text, size_t len, int32_t **v, size_t *n, size_t *cap) {
    int32_t *ids = NULL;
    size_t k = 0;
    if (len && ld->enc->encode(ld->enc->ctx, text, len, &ids, &k)) return halo_fail_ctx("%s: tokenizing: ", ld->path);
    if (*n + k + 1 > *cap) {
        while (*n + k + 1 > *cap) *cap = *cap ? 2 * *cap : 1024;
        *v = xrealloc(*v, *cap * sizeof **v);
    }
    if (k) memcpy(*v + *n, ids, k * sizeof *ids);
    *n += k;
    free(ids);
    return HALO_OK;
}

static void push_id(int32_t **v, size_t *n, size_t *cap, int32_t id) {
    if (*n + 1 > *cap) { *cap = *cap ? 2 * *cap : 1024; *v = xrealloc(*v, *cap * sizeof **v); }
    (*v)[(*n)++] = id;
}

// A text document joins the file's token stream as [BOS] + its tokens.
static int add_text_doc(loader *ld, const char *text, size_t len, int64_t line) {
    if (set_kind(ld, KIND_TEXT, line)) return HALO_ERR;
    if (!len) return HALO_OK;
    if (ld->enc->bos_id >= 0) push_id(&ld->stream, &ld->n_stream, &ld->cap_stream, ld->enc->bos_id);
    return encode_into(ld, text, len, &ld->stream, &ld->n_stream, &ld->cap_stream);
}

// Cuts the file's stream into windows of seq_len+1 tokens that overlap by one (the last input's target).
static void flush_text_stream(loader *ld, int64_t line) {
    size_t T = (size_t)ld->cfg.seq_len;
    for (size_t s = 0; s + 1 < ld->n_stream; s += T) {
        size_t n = ld->n_stream - s < T + 1 ? ld->n_stream - s : T + 1;
        ds_example *e = new_example(ld->ds);
        e->ids = xmalloc(n * sizeof *e->ids);
        memcpy(e->ids, ld->stream + s, n * sizeof *e->ids);
        e->n_full = e->n = (int32_t)n;
        e->loss_start = 1;
        e->file = ld->file;
        e->line = line;
    }
    free(ld->stream);
    ld->stream = NULL;
    ld->n_stream = ld->cap_stream = 0;
}

// Adds a prompt/answer example: ids [k] (taken), the loss from n_prompt on (everything with loss_on_all), the
// rendered prompt (ld->prompt) and the reference answer (taken) for evaluation.
// in_loss (taken; NULL: from n_prompt on) marks the positions in the loss, the answer's among them.
static int push_conv_example(loader *ld, int32_t *ids, size_t k, size_t n_prompt, char *answer, int64_t line,
                             uint8_t *in_loss) {
    if (k > INT32_MAX / 2) {
        free(ids); free(answer); free(in_loss);
        return halo_fail("%s:%lld: example too long", ld->path, (long long)line);
    }
    ds_example *e = new_example(ld->ds);
    e->ids = ids;
    e->in_loss = in_loss;
    e->n_full = e->n = (int32_t)k;
    e->n_prompt = (int32_t)n_prompt;
    e->loss_start = ld->cfg.loss_on_all ? 1 : (n_prompt > 1 ? (int32_t)n_prompt : 1);
    if (in_loss) {
        int32_t j = 1;
        while (j < (int32_t)k && !in_loss[j]) j++;
        e->loss_start = j;
    }
    e->prompt = xstrdup(ld->prompt.p);
    e->answer = answer;
    e->file = ld->file;
    e->line = line;
    return HALO_OK;
}

// The earlier assistant turns of a conversation (m[a] for a < n - 1) as byte ranges [spans[2i], spans[2i+1]) of the
// prompt text ld->prompt (m[0..n-1) rendered with the generation prompt): from the end of m[0..a) rendered as a prompt
// to the end of m[0..a] rendered as history, so each range is the turn's content and its end of turn. Returns the
// number of ranges, 0 when there are none or only the last turn trains (--loss-last-turn, --loss-on-all), -1 when a
// rendering is not a prefix of the next (a template that renders a turn differently as history, e.g. without its
// reasoning; then only the last turn trains, counted in the stats).
static int history_spans(loader *ld, const data_msg *m, int n, size_t *spans) {
    if (ld->cfg.loss_on_all || ld->cfg.loss_last_turn) return 0;
    int k = 0;
    size_t at = 0;
    for (int a = 0; a < n - 1; a++) {
        if (strcmp(m[a].role, "assistant")) continue;
        int rc;
        if (ld->ds->chat == DATASET_CHAT_TEMPLATE)
            rc = data_chat_render_template(ld->tmpl, ld->bos_text, ld->eos_text, m, a, true, ld->tools, &ld->hp) ||
                 data_chat_render_template(ld->tmpl, ld->bos_text, ld->eos_text, m, a + 1, false, ld->tools, &ld->hh);
        else
            rc = data_chat_render_prompt(ld->ds->chat, ld->cfg.plain_template, ld->bos_text, ld->eos_text, m, a + 1,
                                         &ld->hp) ||
                 data_chat_render_history(ld->ds->chat, ld->cfg.plain_template, ld->bos_text, ld->eos_text, m, a + 1,
                                          &ld->hh);
        halo_clear_error();
        if (rc || ld->hp.n < at || ld->hh.n < ld->hp.n || ld->hh.n > ld->prompt.n ||
            memcmp(ld->hh.p, ld->hp.p, ld->hp.n) || memcmp(ld->prompt.p, ld->hh.p, ld->hh.n))
            return -1;
        if (ld->hh.n > ld->hp.n) { spans[2 * k] = ld->hp.n; spans[2 * k + 1] = ld->hh.n; k++; }
        at = ld->hh.n;
    }
    return k;
}

// The loss mask of a conversation whose ids[base..n_prompt) encode ld->prompt.p[from..) as one text (the tokens
// training and inference see) and whose ids[n_prompt..k) are the answer: the answer and, per history_spans, the
// earlier assistant turns. A span's tokens lie between the lengths of its two ends' prefixes encoded alone, when those
// are prefixes of the whole encoding. *in_loss stays NULL (the loss from n_prompt on) without such turns, and when a
// rendering or the tokenizer moves a turn's boundary (a SentencePiece-style "▁" before a word that continues it): then
// the last turn trains alone, counted in the stats.
static int history_loss(loader *ld, const data_msg *m, int n, size_t from, const int32_t *ids, size_t base,
                        size_t n_prompt, size_t k, uint8_t **in_loss) {
    *in_loss = NULL;
    size_t *spans = xmalloc(sizeof(size_t) * 2 * (size_t)n), at[2];
    const int n_spans = history_spans(ld, m, n, spans);
    int32_t *pre = NULL;
    size_t np, pcap = 0;
    int moved = n_spans < 0, rc = HALO_OK;
    uint8_t *mask = n_spans > 0 ? xcalloc(k, 1) : NULL;
    for (int i = 0; i < n_spans && !moved && !rc; i++) {
        for (int end = 0; end < 2 && !moved; end++) {   // token counts of the span's two ends
            np = 0;
            const size_t upto = spans[2 * i + end];
            if (upto < from) { moved = 1; break; }
            if ((rc = encode_into(ld, ld->prompt.p + from, upto - from, &pre, &np, &pcap))) break;
            if (base + np > n_prompt || memcmp(pre, ids + base, np * sizeof *pre)) moved = 1;
            at[end] = base + np;
        }
        if (!moved && !rc) memset(mask + at[0], 1, at[1] - at[0]);
    }
    free(pre); free(spans);
    if (moved) ld->ds->st.n_history_untrained++;
    if (moved || rc) { free(mask); return rc; }
    if (mask) memset(mask + n_prompt, 1, k - n_prompt);
    *in_loss = mask;
    return HALO_OK;
}

// With the model's chat template, as TRL does for prompt/completion data: the prompt is the conversation without its
// last message, rendered with the generation prompt; the answer is what the whole conversation's rendering adds to it
// (the template's end-of-turn included), tokenized apart.
static int add_conv_template(loader *ld, const data_msg *m, int n, int64_t line) {
    if (data_chat_check(m, n) ||
        data_chat_render_template(ld->tmpl, ld->bos_text, ld->eos_text, m, n - 1, true, ld->tools, &ld->prompt) ||
        data_chat_render_template(ld->tmpl, ld->bos_text, ld->eos_text, m, n, false, ld->tools, &ld->full))
        return BAD;
    if (ld->full.n < ld->prompt.n || memcmp(ld->full.p, ld->prompt.p, ld->prompt.n))
        return halo_fail("the chat template's rendering of the conversation does not start with its rendering of the "
                         "prompt (the conversation without the answer, with the generation prompt): the answer "
                         "cannot be told apart; use --chat llama3, llama2 or plain"), BAD;
    if (ld->full.n == ld->prompt.n) return halo_fail("the chat template renders nothing for the answer"), BAD;
    int32_t *ids = NULL;
    uint8_t *in_loss = NULL;
    size_t k = 0, cap = 0;
    if (encode_into(ld, ld->prompt.p, ld->prompt.n, &ids, &k, &cap)) { free(ids); return HALO_ERR; }
    const size_t n_prompt = k;
    if (encode_into(ld, ld->full.p + ld->prompt.n, ld->full.n - ld->prompt.n, &ids, &k, &cap) ||
        history_loss(ld, m, n, 0, ids, 0, n_prompt, k, &in_loss)) {
        free(ids); return HALO_ERR;
    }
    return push_conv_example(ld, ids, k, n_prompt, data_strip_dup(m[n - 1].content), line, in_loss);
}

// A conversation (the last message is the answer) becomes one example: [BOS] prompt answer end-of-turn.
static int add_conv(loader *ld, const data_msg *m, int n, int64_t line) {
    if (set_kind(ld, KIND_CHAT, line)) return HALO_ERR;
    if (ld->ds->chat == DATASET_CHAT_TEMPLATE) return add_conv_template(ld, m, n, line);
    if (ld->tools) return halo_fail("'tools' needs the model's chat template (--chat template)"), BAD;
    if (data_chat_render_prompt(ld->ds->chat, ld->cfg.plain_template, ld->bos_text, ld->eos_text, m, n, &ld->prompt))
        return BAD;
    char *answer = data_strip_dup(m[n - 1].content);
    int32_t *ids = NULL;
    uint8_t *in_loss = NULL;
    size_t k = 0, cap = 0;
    const size_t skip = strlen(ld->bos_text);   // the prompt's BOS text is the BOS id
    if (ld->enc->bos_id >= 0) push_id(&ids, &k, &cap, ld->enc->bos_id);
    const size_t base = k;
    int rc = encode_into(ld, ld->prompt.p + skip, ld->prompt.n - skip, &ids, &k, &cap);
    const size_t n_prompt = k;
    if (!rc) rc = encode_into(ld, answer, strlen(answer), &ids, &k, &cap);
    if (!rc && ld->eot_id >= 0) push_id(&ids, &k, &cap, ld->eot_id);
    if (rc || history_loss(ld, m, n, skip, ids, base, n_prompt, k, &in_loss)) {
        free(ids); free(answer); return HALO_ERR;
    }
    return push_conv_example(ld, ids, k, n_prompt, answer, line, in_loss);
}

// prompt/answer texts, with the optional system message, as a conversation.
static int add_pair(loader *ld, const char *prompt, const char *answer, int64_t line) {
    data_msg m[3];
    int n = 0;
    if (ld->cfg.system_prompt) m[n++] = (data_msg){"system", ld->cfg.system_prompt, NULL};
    m[n++] = (data_msg){"user", prompt, NULL};
    m[n++] = (data_msg){"assistant", answer, NULL};
    return add_conv(ld, m, n, line);
}

static int load_text(loader *ld) {
    data_lines lr;
    if (data_lines_open(&lr, ld->path)) return HALO_ERR;
    data_str doc = {0};
    char *s;
    size_t len;
    int k, rc = HALO_OK;
    int64_t doc_line = 1;
    while ((k = data_lines_next(&lr, &s, &len)) > 0) {
        load_progress(ld, lr.f, 0);
        if (ld->cfg.doc_separator && !strcmp(s, ld->cfg.doc_separator)) {
            if ((rc = add_text_doc(ld, doc.p, doc.n, doc_line))) break;
            data_str_clear(&doc);
            doc_line = lr.line + 1;
            continue;
        }
        data_str_append(&doc, s, len);
        data_str_append(&doc, "\n", 1);
    }
    if (k < 0) rc = HALO_ERR;
    if (!rc) rc = add_text_doc(ld, doc.p, doc.n, doc_line);
    ld->ds->st.n_lines += lr.line;
    if (!rc) flush_text_stream(ld, lr.line);
    data_lines_close(&lr);
    data_str_free(&doc);
    return rc;
}

static const char *json_string(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const char *json_lookup(void *ctx, const char *name, size_t len) {
    char key[256];
    if (len >= sizeof key) return NULL;
    memcpy(key, name, len);
    key[len] = 0;
    return json_string((const cJSON *)ctx, key);
}

static const char *const DEFAULT_PAIRS[][2] = {{"prompt", "completion"}, {"prompt", "answer"}, {"prompt", "response"},
                                              {"question", "answer"}, {"instruction", "output"}, {"input", "output"}};

// Decides what the records of a JSONL file are from its first record.
static int jsonl_decide(loader *ld, const cJSON *o, int *mode) {
    dataset_config *c = &ld->cfg;
    if (c->prompt_template || c->answer_template) { *mode = J_TEMPLATE; return HALO_OK; }
    if (c->prompt_field || c->answer_field) {
        if (!c->prompt_field || !c->answer_field) return halo_fail("give both the prompt and the answer field names");
        *mode = J_PAIRS;
        return HALO_OK;
    }
    if (cJSON_GetObjectItemCaseSensitive(o, c->messages_field)) { *mode = J_MESSAGES; return HALO_OK; }
    if (!strcmp(c->messages_field, "messages") && cJSON_GetObjectItemCaseSensitive(o, "conversations")) {
        c->messages_field = "conversations";   // ShareGPT's layout
        *mode = J_MESSAGES;
        return HALO_OK;
    }
    if (cJSON_GetObjectItemCaseSensitive(o, c->text_field)) { *mode = J_TEXT; return HALO_OK; }
    for (size_t i = 0; i < sizeof DEFAULT_PAIRS / sizeof DEFAULT_PAIRS[0]; i++)
        if (cJSON_GetObjectItemCaseSensitive(o, DEFAULT_PAIRS[i][0]) &&
            cJSON_GetObjectItemCaseSensitive(o, DEFAULT_PAIRS[i][1])) {
            c->prompt_field = DEFAULT_PAIRS[i][0];
            c->answer_field = DEFAULT_PAIRS[i][1];
            *mode = J_PAIRS;
            return HALO_OK;
        }
    char tried[256] = "";   // the pairs of DEFAULT_PAIRS, "prompt/completion, prompt/answer, ..."
    for (size_t i = 0; i < sizeof DEFAULT_PAIRS / sizeof DEFAULT_PAIRS[0]; i++)
        snprintf(tried + strlen(tried), sizeof tried - strlen(tried), "%s%s/%s", i ? ", " : "", DEFAULT_PAIRS[i][0],
                 DEFAULT_PAIRS[i][1]);
    return halo_fail("no '%s', '%s' or prompt/answer fields (tried %s; or give --prompt-field and --answer-field)",
                     c->text_field, c->messages_field, tried);
}

// ShareGPT's speakers ("from") as chat roles; other names are returned as they are (and refused as unknown roles).
static const char *sharegpt_role(const char *from) {
    if (!from) return NULL;
    if (!strcmp(from, "human") || !strcmp(from, "user")) return "user";
    if (!strcmp(from, "gpt") || !strcmp(from, "assistant") || !strcmp(from, "chatgpt") || !strcmp(from, "model"))
        return "assistant";
    return from;
}

static int jsonl_record(loader *ld, const cJSON *o, int mode, int64_t line) {
    dataset_config *c = &ld->cfg;
    switch (mode) {
    case J_TEXT: {
        const char *t = json_string(o, c->text_field);
        if (!t) return halo_fail("'%s' is missing or not a string", c->text_field), BAD;
        return add_text_doc(ld, t, strlen(t), line);
    }
    case J_PAIRS: {
        const char *p = json_string(o, c->prompt_field), *a = json_string(o, c->answer_field);
        if (!p) return halo_fail("'%s' is missing or not a string", c->prompt_field), BAD;
        if (!a) return halo_fail("'%s' is missing or not a string", c->answer_field), BAD;
        const char *in = json_string(o, "input");
        if (in && !strcmp(c->prompt_field, "instruction") && !strcmp(c->answer_field, "output")) {
            const char *t = in;   // Alpaca records: a non-empty "input" is the instruction's context
            size_t tl = strlen(in);
            data_strip_span(&t, &tl);
            if (tl) {
                data_str_clear(&ld->a);
                data_str_puts(&ld->a, p);
                data_str_puts(&ld->a, "\n\n");
                data_str_puts(&ld->a, in);
                p = ld->a.p;
            }
        }
        return add_pair(ld, p, a, line);
    }
    case J_TEMPLATE: {
        if (data_template_render(c->prompt_template ? c->prompt_template : "", json_lookup, (void *)o,
                                 "string field of this record", &ld->a) ||
            data_template_render(c->answer_template ? c->answer_template : "", json_lookup, (void *)o,
                                 "string field of this record", &ld->b)) return BAD;
        return add_pair(ld, ld->a.p, ld->b.p, line);
    }
    case J_MESSAGES: {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(o, c->messages_field);
        if (!cJSON_IsArray(arr)) return halo_fail("'%s' is missing or not a list", c->messages_field), BAD;
        int n = cJSON_GetArraySize(arr);
        if (n > 4096) return halo_fail("'%s' has %d messages (at most 4096)", c->messages_field, n), BAD;
        data_msg *m = xcalloc((size_t)n + 1, sizeof *m);
        int i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, arr) {
            m[i].raw = it;
            m[i].role = json_string(it, "role");
            m[i].content = json_string(it, "content");
            if (!m[i].role) m[i].role = sharegpt_role(json_string(it, "from"));   // ShareGPT: from / value
            if (!m[i].content) m[i].content = json_string(it, "value");
            const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
            if (!m[i].content && (!content || cJSON_IsNull(content)) &&
                cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(it, "tool_calls")))
                m[i].content = "";   // an assistant turn that only calls tools
            if (!m[i].role || !m[i].content) {
                free(m);
                return halo_fail("message %d of '%s' needs string 'role' and 'content' (or ShareGPT's 'from' and "
                                 "'value'; 'content' may be null beside 'tool_calls')", i + 1, c->messages_field), BAD;
            }
            i++;
        }
        const cJSON *tools = cJSON_GetObjectItemCaseSensitive(o, "tools");
        if (tools && !cJSON_IsNull(tools) && !cJSON_IsArray(tools)) {
            free(m);
            return halo_fail("'tools' must be a list of function schemas"), BAD;
        }
        ld->tools = cJSON_IsArray(tools) ? tools : NULL;
        int rc = add_conv(ld, m, n, line);
        ld->tools = NULL;
        free(m);
        return rc;
    }
    }
    return HALO_ERR;
}

// One record's JSON text (a JSONL line, or an element of a JSON array file): HALO_OK, HALO_ERR, or BAD with the
// message set. `col0`: where the column count starts (the line), or NULL when columns mean nothing.
static int json_text_record(loader *ld, const char *t, size_t tl, const char *col0, int *mode, int64_t line) {
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(t, tl, &end, 0);
    int r;
    if (!o) {
        const char *at = cJSON_GetErrorPtr();
        if (col0 && at && at >= t && at <= t + tl) r = (halo_fail("invalid JSON (at column %ld)", (long)(at - col0) + 1), BAD);
        else r = (halo_fail("invalid JSON"), BAD);
    } else if (end && end < t + tl) {
        r = col0 ? (halo_fail("text after the JSON object (at column %ld)", (long)(end - col0) + 1), BAD)
                 : (halo_fail("text after the JSON object"), BAD);
    } else if (!cJSON_IsObject(o)) {
        r = (halo_fail(col0 ? "not a JSON object (each line must be one {...})" : "not a JSON object {...}"), BAD);
    } else if (*mode == J_UNDECIDED && jsonl_decide(ld, o, mode)) {
        r = BAD;
    } else {
        r = jsonl_record(ld, o, *mode, line);
    }
    cJSON_Delete(o);
    return r;
}

// A .json file holding one array of records ([{...}, {...}], as Alpaca's and many hub datasets' files): each
// element is cut out by bracket depth (strings skipped) and parsed alone, so an error names the line it starts on.
static int load_json_array(loader *ld, int *mode, int64_t *n_lines) {
    char *buf;
    size_t n;
    if (halo_read_file(ld->path, &buf, &n)) return HALO_ERR;
    size_t i = 0;
    int64_t line = 1;
    if (n >= 3 && !memcmp(buf, "\xEF\xBB\xBF", 3)) i = 3;
    while (i < n && buf[i] != '[') line += buf[i++] == '\n';
    i++;   // past '['
    int rc = HALO_OK, closed = 0;
    while (!rc) {
        while (i < n && strchr(" \t\r\n", buf[i])) line += buf[i++] == '\n';
        if (i < n && buf[i] == ']') { closed = 1; i++; break; }
        if (i >= n) break;
        load_progress(ld, NULL, (long long)i);
        const size_t start = i;
        const int64_t start_line = line;
        int depth = 0, in_str = 0;
        for (; i < n; i++) {
            const char ch = buf[i];
            if (ch == '\n') line++;
            if (in_str) {
                if (ch == '\\') { if (i + 1 < n && buf[i + 1] == '\n') line++; i++; }
                else if (ch == '"') in_str = 0;
            } else if (ch == '"') in_str = 1;
            else if (ch == '{' || ch == '[') depth++;
            else if ((ch == '}' || ch == ']') && depth > 0) depth--;
            else if (depth == 0 && (ch == ',' || ch == ']')) break;
        }
        if (i >= n) {   // the element or the array never ended: nothing after it can be read
            if (depth || in_str)
                rc = halo_fail("%s:%lld: the record starting here is not closed before the end of the file", ld->path,
                               (long long)start_line);
            break;
        }
        const char *t = buf + start;
        size_t tl = i - start;
        data_strip_span(&t, &tl);
        int r = tl ? json_text_record(ld, t, tl, NULL, mode, start_line) : (halo_fail("an empty record"), BAD);
        if (r == BAD) r = bad_record(ld, start_line, false);
        if (r) rc = HALO_ERR;
        if (buf[i] == ',') i++;
    }
    if (!rc && !closed) rc = halo_fail("%s:%lld: the JSON array is not closed with ']'", ld->path, (long long)line);
    while (!rc && i < n && strchr(" \t\r\n", buf[i])) line += buf[i++] == '\n';
    if (!rc && i < n) rc = halo_fail("%s:%lld: text after the JSON array", ld->path, (long long)line);
    // lines as data_lines counts them (a last line's newline does not start another)
    *n_lines = line - (n > 0 && buf[n - 1] == '\n');
    ld->ds->st.n_lines += *n_lines;
    free(buf);
    return rc;
}

static int load_jsonl(loader *ld) {
    data_lines lr;
    if (data_lines_open(&lr, ld->path)) return HALO_ERR;
    int mode = J_UNDECIDED, k, rc = HALO_OK, records = 0;
    char *s;
    size_t len;
    while ((k = data_lines_next(&lr, &s, &len)) > 0) {
        load_progress(ld, lr.f, 0);
        const char *t = s;
        size_t tl = len;
        data_strip_span(&t, &tl);
        if (!tl) continue;
        if (!records++ && t[0] == '[') {
            data_lines_close(&lr);   // a whole-file JSON array, not one object a line
            int64_t lines = 0;   // this file's (st.n_lines sums all files): the windows' line is its last
            rc = load_json_array(ld, &mode, &lines);
            if (!rc && mode == J_TEXT) flush_text_stream(ld, lines);
            return rc;
        }
        int r = json_text_record(ld, t, tl, s, &mode, lr.line);
        if (r == BAD) r = bad_record(ld, lr.line, false);
        if (r) { rc = HALO_ERR; break; }
    }
    if (k < 0) rc = HALO_ERR;
    ld->ds->st.n_lines += lr.line;
    if (!rc && mode == J_TEXT) flush_text_stream(ld, lr.line);
    data_lines_close(&lr);
    return rc;
}

typedef struct { const csv_reader *r; char **cols; int n_cols; bool header_only; const char *dup; } csv_ctx;

static const char *csv_lookup(void *ctx, const char *name, size_t len) {
    csv_ctx *c = ctx;
    for (int i = 0; i < c->n_cols; i++)
        if (strlen(c->cols[i]) == len && !memcmp(c->cols[i], name, len)) {
            if (c->header_only)   // a name the header has twice: which column is meant is unknown
                for (int j = i + 1; j < c->n_cols && !c->dup; j++) if (!strcmp(c->cols[j], c->cols[i])) c->dup = c->cols[i];
            return c->header_only ? "" : c->r->fields[i].p;
        }
    return NULL;
}

static int load_csv(loader *ld) {
    csv_reader r;
    if (csv_open(&r, ld->path)) return HALO_ERR;
    bool fatal;
    int k = csv_next(&r, &fatal), rc = HALO_OK;
    if (k <= 0) {
        csv_close(&r);
        return k == 0 ? halo_fail("%s: empty file (a header row is needed)", ld->path) : HALO_ERR;
    }
    csv_ctx cc = {&r, xcalloc((size_t)r.n_fields, sizeof(char *)), r.n_fields, true, NULL};
    data_str colnames = {0};
    for (int i = 0; i < r.n_fields; i++) {
        cc.cols[i] = xstrdup(r.fields[i].p);
        data_str_puts(&colnames, i ? ", " : "");
        data_str_puts(&colnames, cc.cols[i]);
    }
    dataset_config *c = &ld->cfg;
    const char *pt = c->prompt_template, *at = c->answer_template;
    char *own_pt = NULL, *own_at = NULL;
    if (!pt && !at) {   // no templates: a prompt/answer column pair
        if (c->prompt_field && c->answer_field) {
            pt = own_pt = xmalloc(strlen(c->prompt_field) + 3);
            at = own_at = xmalloc(strlen(c->answer_field) + 3);
            sprintf(own_pt, "{%s}", c->prompt_field);
            sprintf(own_at, "{%s}", c->answer_field);
        } else {
            for (size_t i = 0; i < sizeof DEFAULT_PAIRS / sizeof DEFAULT_PAIRS[0] && !pt; i++)
                if (csv_lookup(&cc, DEFAULT_PAIRS[i][0], strlen(DEFAULT_PAIRS[i][0])) &&
                    csv_lookup(&cc, DEFAULT_PAIRS[i][1], strlen(DEFAULT_PAIRS[i][1]))) {
                    pt = own_pt = xmalloc(strlen(DEFAULT_PAIRS[i][0]) + 3);
                    at = own_at = xmalloc(strlen(DEFAULT_PAIRS[i][1]) + 3);
                    sprintf(own_pt, "{%s}", DEFAULT_PAIRS[i][0]);
                    sprintf(own_at, "{%s}", DEFAULT_PAIRS[i][1]);
                }
            if (!pt) rc = halo_fail("%s:%lld: no prompt/answer templates given and no prompt/completion, "
                                    "question/answer or input/output columns (columns: %s)", ld->path,
                                    (long long)r.record_line, colnames.p);
        }
    }
    if (!pt) pt = "";
    if (!at) at = "";
    if (!rc && (data_template_render(pt, csv_lookup, &cc, "column", &ld->a) ||
                data_template_render(at, csv_lookup, &cc, "column", &ld->b)))
        rc = halo_fail_ctx("%s:%lld: columns are %s; ", ld->path, (long long)r.record_line, colnames.p);
    if (!rc && cc.dup)
        rc = halo_fail("%s:%lld: the header has column '%s' more than once (columns: %s)", ld->path,
                       (long long)r.record_line, cc.dup, colnames.p);
    cc.header_only = false;
    while (!rc && (k = csv_next(&r, &fatal)) != 0) {
        load_progress(ld, r.lr.f, 0);
        int res;
        if (k < 0) {
            if (fatal) { rc = HALO_ERR; break; }
            res = bad_record(ld, r.record_line, true);
        } else if (r.n_fields != cc.n_cols) {
            halo_fail("%d fields, the header has %d", r.n_fields, cc.n_cols);
            res = bad_record(ld, r.record_line, false);
        } else {
            data_template_render(pt, csv_lookup, &cc, "column", &ld->a);
            data_template_render(at, csv_lookup, &cc, "column", &ld->b);
            res = add_pair(ld, ld->a.p, ld->b.p, r.record_line);
            if (res == BAD) res = bad_record(ld, r.record_line, false);
        }
        if (res) rc = HALO_ERR;
    }
    ld->ds->st.n_lines += r.lr.line;
    for (int i = 0; i < cc.n_cols; i++) free(cc.cols[i]);
    free(cc.cols);
    free(own_pt);
    free(own_at);
    data_str_free(&colnames);
    csv_close(&r);
    return rc;
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcasecmp(s + a - b, suf);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// cfg.progress: "reading FILE: X of Y MB, N examples" on stderr, at most once a second after the first two. The
// position is f's (read only when a line is printed: ftello costs a system call) or, without f, pos.
static void load_progress(loader *ld, FILE *f, long long pos) {
    if (!ld->cfg.progress || (++ld->tick & 1023)) return;
    const double t = now_s();
    if (t - ld->t0 < 2 || t - ld->t_last < 1) return;
    const long long done = f ? (long long)ftello(f) : pos;
    fprintf(stderr, "\rhalo: reading %s: %.0f of %.0f MB, %lld examples ", ld->path, done / 1e6, ld->file_bytes / 1e6,
            (long long)ld->ds->n_ex);
    fflush(stderr);
    ld->t_last = t;
    ld->printed = true;
}

static int load_file_as(loader *ld);
static int load_file(loader *ld) {
    struct stat st;
    ld->file_bytes = stat(ld->path, &st) == 0 ? (long long)st.st_size : 0;
    ld->t0 = ld->t_last = now_s();
    ld->printed = false;
    const int rc = load_file_as(ld);
    if (ld->printed) fprintf(stderr, "\n");
    return rc;
}

static int load_file_as(loader *ld) {
    dataset_format f = ld->cfg.format;
    if (f == DATASET_FMT_AUTO) {
        if (ends_with(ld->path, ".txt") || ends_with(ld->path, ".text")) f = DATASET_FMT_TEXT;
        else if (ends_with(ld->path, ".jsonl") || ends_with(ld->path, ".json") || ends_with(ld->path, ".ndjson"))
            f = DATASET_FMT_JSONL;
        else if (ends_with(ld->path, ".csv")) f = DATASET_FMT_CSV;
        else return halo_fail("%s: cannot tell the format from the extension (use .txt, .jsonl or .csv, or set "
                              "the format)", ld->path);
    }
    if (f == DATASET_FMT_TEXT) return load_text(ld);
    if (f == DATASET_FMT_JSONL) return load_jsonl(ld);
    return load_csv(ld);
}

// Presets fill only what the caller left unset.
static int apply_preset(dataset_config *c, const char **metric) {
    *metric = "exact";
    if (!c->preset) return HALO_OK;
    static char viggo_prompt[sizeof DATASET_VIGGO_INSTRUCTION + 64];
    if (!strcmp(c->preset, "viggo")) {
        snprintf(viggo_prompt, sizeof viggo_prompt, "%s\n\n### Target sentence:\n{ref}", DATASET_VIGGO_INSTRUCTION);
        if (!c->prompt_template) c->prompt_template = viggo_prompt;
        if (!c->answer_template) c->answer_template = "{mr}";
        *metric = "viggo";
    } else if (!strcmp(c->preset, "gsm8k")) {
        if (!c->prompt_field && !c->answer_field) { c->prompt_field = "question"; c->answer_field = "answer"; }
        *metric = "gsm8k";
    } else if (!strcmp(c->preset, "sql")) {
        *metric = "sql";
    } else {
        return halo_fail("unknown dataset preset '%s' (known: viggo, gsm8k, sql)", c->preset);
    }
    return HALO_OK;
}

static dataset_chat resolve_chat(dataset_chat want, const dataset_encoder *enc) {
    if (want != DATASET_CHAT_AUTO) return want;
    if (enc->token_id(enc->ctx, "<|start_header_id|>") >= 0 && enc->token_id(enc->ctx, "<|eot_id|>") >= 0)
        return DATASET_CHAT_LLAMA3;
    return enc->chat_template ? DATASET_CHAT_TEMPLATE : DATASET_CHAT_PLAIN;
}

// Validation split, cut to seq_len and the statistics.
static void finish(dataset *ds, bool have_val_file) {
    int64_t n0 = 0;
    for (int64_t i = 0; i < ds->n_ex; i++) n0 += ds->ex[i].file == 0;
    if (have_val_file) {
        for (int64_t i = 0; i < ds->n_ex; i++) ds->ex[i].split = ds->ex[i].file;
    } else {
        int64_t k = 0;
        if (ds->cfg.val_count > 0) k = ds->cfg.val_count;
        else if (ds->cfg.val_fraction > 0) {
            k = (int64_t)llround(ds->cfg.val_fraction * (double)n0);
            if (k == 0) k = 1;
        }
        if (k > n0 - 1) k = n0 > 0 ? n0 - 1 : 0;
        int64_t *idx = xmalloc((size_t)(n0 ? n0 : 1) * sizeof *idx);
        for (int64_t i = 0; i < n0; i++) idx[i] = i;
        shuffle_idx(idx, n0, ds->cfg.seed ^ 0x5D1B5EEDULL);
        for (int64_t i = 0; i < k; i++) ds->ex[idx[i]].split = DATASET_VAL;
        free(idx);
    }
    int64_t T = ds->cfg.seq_len;
    for (int s = 0; s < 2; s++) {
        ds->all[s] = xmalloc((size_t)(ds->n_ex ? ds->n_ex : 1) * sizeof(int64_t));
        ds->bat[s] = xmalloc((size_t)(ds->n_ex ? ds->n_ex : 1) * sizeof(int64_t));
    }
    for (int64_t i = 0; i < ds->n_ex; i++) {
        ds_example *e = &ds->ex[i];
        if (e->n_full > ds->st.max_tokens) ds->st.max_tokens = e->n_full;
        if (e->n_full > T + 1) {
            e->n = (int32_t)(T + 1);
            ds->st.n_truncated++;
            ds->st.n_tokens_dropped += e->n_full - e->n;
        }
        int64_t in_loss = e->n > e->loss_start ? e->n - e->loss_start : 0;
        if (e->in_loss) {
            in_loss = 0;
            for (int32_t j = 1; j < e->n; j++) in_loss += e->in_loss[j];
        }
        e->batchable = e->n >= 2 && in_loss > 0;
        ds->st.n_tokens += e->n;
        if (e->batchable) ds->st.n_loss_tokens += in_loss;
        else ds->st.n_no_loss++;
        ds->all[e->split][ds->n_all[e->split]++] = i;
        if (e->batchable) ds->bat[e->split][ds->n_bat[e->split]++] = i;
    }
    ds->st.n_examples[0] = ds->n_all[0];
    ds->st.n_examples[1] = ds->n_all[1];
}

int dataset_load_with(const dataset_config *cfg_in, const dataset_encoder *enc, dataset **out) {
    *out = NULL;
    loader ld = {0};
    ld.cfg = *cfg_in;
    const char *metric;
    if (apply_preset(&ld.cfg, &metric)) return HALO_ERR;
    dataset_config *c = &ld.cfg;
    if (!c->path) return halo_fail("no dataset file given");
    if (c->seq_len < 2) return halo_fail("seq_len must be at least 2 (got %d)", c->seq_len);
    if (c->val_fraction < 0 || c->val_fraction >= 1 || c->val_count < 0)
        return halo_fail("val_fraction must be in [0, 1) and val_count >= 0");
    if (!c->text_field) c->text_field = "text";
    if (!c->messages_field) c->messages_field = "messages";
    if (!c->plain_template) c->plain_template = "{prompt}\n### Answer:\n";

    dataset *ds = xcalloc(1, sizeof *ds);
    ds->cfg = *c;
    ds->cfg.path = ds->cfg.val_path = ds->cfg.preset = ds->cfg.text_field = ds->cfg.messages_field = NULL;
    ds->cfg.prompt_field = ds->cfg.answer_field = ds->cfg.prompt_template = ds->cfg.answer_template = NULL;
    ds->cfg.system_prompt = ds->cfg.plain_template = ds->cfg.doc_separator = NULL;
    ds->metric = xstrdup(metric);
    ds->chat = resolve_chat(c->chat, enc);
    ds->pad_id = enc->eos_id >= 0 ? enc->eos_id : 0;
    ld.ds = ds;
    ld.enc = enc;
    const char *bos = enc->bos_id >= 0 && enc->piece ? enc->piece(enc->ctx, enc->bos_id) : NULL;
    const char *eos = enc->eos_id >= 0 && enc->piece ? enc->piece(enc->ctx, enc->eos_id) : NULL;
    ld.bos_text = bos ? bos : "";
    ld.eos_text = eos ? eos : "";
    if (c->chat == DATASET_CHAT_AUTO && ds->chat == DATASET_CHAT_LLAMA3 && enc->chat_template &&
        data_chat_template_is_llama3(enc->chat_template, ld.bos_text, ld.eos_text) == 0)
        ds->chat = DATASET_CHAT_TEMPLATE;   // e.g. Llama 3.1+, whose template adds a dated system block (a template
                                            // that cannot run here keeps the built-in format)
    if (ds->chat == DATASET_CHAT_TEMPLATE) {   // its end-of-turn comes from the template's text
        ld.eot_id = -1;
        if (!enc->chat_template)
            { dataset_free(ds); return halo_fail("--chat template: the tokenizer has no chat template (tokenizer_config.json's chat_template or chat_template.jinja)"); }
        if (jinja_parse(enc->chat_template, "the tokenizer's chat_template", &ld.tmpl)) {
            char why[2048];
            snprintf(why, sizeof why, "%s", halo_error());
            dataset_free(ds);
            return halo_fail("%s (--chat plain, llama2 or llama3 use a built-in format instead)", why);
        }
    } else if (ds->chat == DATASET_CHAT_LLAMA3) {
        ld.eot_id = enc->token_id(enc->ctx, "<|eot_id|>");
        if (ld.eot_id < 0 || enc->token_id(enc->ctx, "<|start_header_id|>") < 0)
            { dataset_free(ds); return halo_fail("the Llama 3 chat format needs a tokenizer with <|eot_id|> and <|start_header_id|>"); }
    } else {
        ld.eot_id = enc->eos_id;
    }
    int rc = HALO_OK;
    for (int f = 0; f < 2 && !rc; f++) {
        const char *p = f == 0 ? c->path : c->val_path;
        if (!p) continue;
        ds->files[f] = xstrdup(p);
        ld.file = f;
        ld.path = ds->files[f];
        rc = load_file(&ld);
    }
    data_str_free(&ld.prompt);
    data_str_free(&ld.a);
    data_str_free(&ld.b);
    data_str_free(&ld.full);
    data_str_free(&ld.hp);
    data_str_free(&ld.hh);
    jinja_free(ld.tmpl);
    free(ld.stream);
    if (!rc && ds->n_ex == 0) rc = halo_fail("%s: no examples", c->path);
    if (rc) { dataset_free(ds); return HALO_ERR; }
    ds->is_text = ld.kind == KIND_TEXT;
    finish(ds, c->val_path != NULL);
    *out = ds;
    return HALO_OK;
}

void dataset_free(dataset *ds) {
    if (!ds) return;
    for (int64_t i = 0; i < ds->n_ex; i++) {
        free(ds->ex[i].ids); free(ds->ex[i].in_loss); free(ds->ex[i].prompt); free(ds->ex[i].answer);
    }
    free(ds->ex);
    for (int s = 0; s < 2; s++) { free(ds->all[s]); free(ds->bat[s]); free(ds->files[s]); }
    free(ds->metric);
    free(ds->perm);
    free(ds);
}

int dataset_check_vocab(const dataset *ds, int vocab_size) {
    for (int64_t i = 0; i < ds->n_ex; i++) {
        const ds_example *e = &ds->ex[i];
        for (int32_t j = 0; j < e->n; j++)
            if (e->ids[j] < 0 || e->ids[j] >= vocab_size) {
                char where[64] = "";   // a text window's line is its document's last: name the window instead
                if (ds->is_text) snprintf(where, sizeof where, " (text window %lld)", (long long)i);
                else snprintf(where, sizeof where, ":%lld", (long long)e->line);
                return halo_fail("%s%s: token id %d is outside the model's vocabulary of %d (config.json "
                                 "vocab_size): the tokenizer does not belong to this model",
                                 ds->files[e->file], where, e->ids[j], vocab_size);
            }
    }
    return HALO_OK;
}

const dataset_stats *dataset_get_stats(const dataset *ds) { return &ds->st; }
int64_t dataset_size(const dataset *ds, dataset_split s) { return ds->n_all[s]; }
const char *dataset_metric_name(const dataset *ds) { return ds->metric; }
dataset_chat dataset_chat_used(const dataset *ds) { return ds->chat; }

void dataset_summary(const dataset *ds, char *buf, size_t n) {
    static const char *const CHAT[] = {"auto", "llama3", "llama2", "plain", "template"};
    const dataset_stats *s = &ds->st;
    int k = snprintf(buf, n, "%" PRId64 " train + %" PRId64 " val %s (%s); %" PRId64 " tokens, %" PRId64
                     " in the loss; %" PRId64 " truncated to %d positions (%" PRId64 " tokens dropped, longest %"
                     PRId64 ")", s->n_examples[0], s->n_examples[1], ds->is_text ? "windows" : "examples",
                     ds->is_text ? "text" : CHAT[ds->chat], s->n_tokens, s->n_loss_tokens, s->n_truncated,
                     ds->cfg.seq_len, s->n_tokens_dropped, s->max_tokens);
    if (k > 0 && (size_t)k < n && s->n_no_loss)
        k += snprintf(buf + k, n - (size_t)k, "; %" PRId64 " left without answer tokens (not trained on)", s->n_no_loss);
    if (k > 0 && (size_t)k < n && s->n_history_untrained)
        k += snprintf(buf + k, n - (size_t)k, "; %" PRId64 " conversations train their last assistant turn only (the "
                      "chat template renders earlier turns differently as history)", s->n_history_untrained);
    if (k > 0 && (size_t)k < n && s->n_bad_lines)
        snprintf(buf + k, n - (size_t)k, "; %" PRId64 " bad lines skipped (first: %s)", s->n_bad_lines, ds->first_bad);
}

int dataset_get_pair(const dataset *ds, dataset_split split, int64_t i, dataset_pair *out) {
    if (ds->is_text) return halo_fail("a plain-text dataset has no prompt/answer pairs");
    if (i < 0 || i >= ds->n_all[split]) return halo_fail("pair %lld out of range (%lld)", (long long)i, (long long)ds->n_all[split]);
    const ds_example *e = &ds->ex[ds->all[split][i]];
    out->prompt_text = e->prompt;
    out->prompt_ids = e->ids;
    out->n_prompt_ids = e->n_prompt;
    out->answer = e->answer;
    out->file = ds->files[e->file];
    out->line = e->line;
    return HALO_OK;
}

int dataset_get_example(const dataset *ds, dataset_split split, int64_t i, const int32_t **ids, int *n, int *loss_start,
                        const uint8_t **in_loss, const char **file, int64_t *line) {
    if (i < 0 || i >= ds->n_all[split])
        return halo_fail("example %lld out of range (%lld)", (long long)i, (long long)ds->n_all[split]);
    const ds_example *e = &ds->ex[ds->all[split][i]];
    *ids = e->ids;
    *n = e->n;
    *loss_start = e->loss_start < e->n ? e->loss_start : e->n;
    if (in_loss) *in_loss = e->in_loss;
    if (file) *file = ds->files[e->file];
    if (line) *line = e->line;
    return HALO_OK;
}

// ---------------------------------------------------------------- batching

// Order of the split's batchable examples in an epoch (cached for the last one asked).
static const int64_t *epoch_order(dataset *ds, int split, uint64_t seed, int64_t epoch) {
    bool shuffled = split == DATASET_TRAIN && ds->cfg.shuffle;
    if (ds->perm_valid && ds->perm_split == split && (!shuffled || (ds->perm_seed == seed && ds->perm_epoch == epoch)))
        return ds->perm;
    free(ds->perm);
    int64_t n = ds->n_bat[split];
    ds->perm = xmalloc((size_t)(n ? n : 1) * sizeof *ds->perm);
    memcpy(ds->perm, ds->bat[split], (size_t)n * sizeof *ds->perm);
    if (shuffled) shuffle_idx(ds->perm, n, seed * 0x9E3779B97F4A7C15ULL ^ ((uint64_t)epoch + 1) * 0xD1B54A32D192ED03ULL);
    ds->perm_valid = true;
    ds->perm_split = split;
    ds->perm_seed = seed;
    ds->perm_epoch = epoch;
    return ds->perm;
}

// Places examples into B rows of T positions; b == NULL only advances (for counting). Returns examples placed.
static int fill_rows(dataset *ds, int split, dataset_iter *it, bool wrap, halo_batch *b, int B, int T) {
    int64_t n = ds->n_bat[split];
    bool pack = ds->cfg.pack;
    int row = 0, used = 0, seg = 0, placed = 0;
    if (b) {
        for (size_t i = 0; i < (size_t)B * T; i++) b->input_ids[i] = ds->pad_id, b->targets[i] = -1;
    }
    int *row_used = b ? xcalloc((size_t)B, sizeof(int)) : NULL, *row_seg = b ? xcalloc((size_t)B, sizeof(int)) : NULL;
    while (row < B && n > 0) {
        if (it->index >= n) {
            if (!wrap) break;
            it->epoch++;
            it->index = 0;
        }
        const int64_t *order = epoch_order(ds, split, it->seed, it->epoch);
        const ds_example *e = &ds->ex[order[it->index]];
        int L = e->n - 1;   // positions this example takes
        if (used > 0 && (!pack || used + L > T)) {
            row++;
            used = seg = 0;
            if (row == B) break;
        }
        if (b) {
            size_t o = (size_t)row * T + used;
            for (int j = 0; j < L; j++) {
                b->input_ids[o + j] = e->ids[j];
                const bool loss = e->in_loss ? e->in_loss[j + 1] : j + 1 >= e->loss_start;
                b->targets[o + j] = loss ? e->ids[j + 1] : -1;
                if (b->pos) b->pos[o + j] = j;
                if (b->seg) b->seg[o + j] = seg;
            }
            row_used[row] = used + L;
            row_seg[row] = seg + 1;
        }
        used += L;
        seg++;
        it->index++;
        placed++;
    }
    if (b) {   // padding: its own segment, positions from 0, no loss
        for (int r = 0; r < B; r++)
            for (int t = row_used[r]; t < T; t++) {
                size_t o = (size_t)r * T + t;
                if (b->pos) b->pos[o] = t - row_used[r];
                if (b->seg) b->seg[o] = row_seg[r];
            }
    }
    free(row_used);
    free(row_seg);
    return placed;
}

int dataset_next_batch(dataset *ds, dataset_split split, dataset_iter *it, bool wrap, halo_batch *b, int *n_examples) {
    if (b->T != ds->cfg.seq_len)
        return halo_fail("batch has %d positions per row but the dataset was cut to seq_len %d", b->T, ds->cfg.seq_len);
    if (b->B < 1) return halo_fail("batch needs at least one row");
    if (it->index < 0 || it->epoch < 0) return halo_fail("bad data position (epoch %lld, index %lld)",
                                                         (long long)it->epoch, (long long)it->index);
    if (wrap && ds->n_bat[split] == 0)
        return halo_fail("the %s split has no examples to train on", split == DATASET_TRAIN ? "training" : "validation");
    int k = fill_rows(ds, split, it, wrap, b, b->B, b->T);
    if (n_examples) *n_examples = k;
    return HALO_OK;
}

int64_t dataset_batches_per_epoch(dataset *ds, dataset_split split, uint64_t seed, int64_t epoch, int B) {
    dataset_iter it = {seed, epoch, 0};
    int64_t nb = 0;
    while (fill_rows(ds, split, &it, false, NULL, B, ds->cfg.seq_len) > 0) nb++;
    return nb;
}
