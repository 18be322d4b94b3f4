// Internals shared by the dataset sources (not part of the public API): a growable string, a line reader that
// counts lines, an RFC 4180 CSV record reader, "{column}" templates and chat-format rendering.
#ifndef HALO_DATA_INTERNAL_H
#define HALO_DATA_INTERNAL_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "data/dataset.h"
#include "data/jinja.h"

typedef struct { char *p; size_t n, cap; } data_str;   // p is NUL-terminated whenever n > 0 or after any append
void data_str_append(data_str *s, const char *text, size_t len);
void data_str_puts(data_str *s, const char *text);
void data_str_clear(data_str *s);
void data_str_free(data_str *s);
// Leading and trailing ASCII whitespace removed (Python str.strip / Jinja trim on ASCII text); malloc'ed.
char *data_strip_dup(const char *s);
void data_strip_span(const char **s, size_t *len);

// Line reader: returns lines without their "\n" (and a "\r" before it); `line` is the 1-based number of the line
// last returned. A UTF-8 byte order mark at the start of the file is dropped.
typedef struct { FILE *f; const char *path; char *buf; size_t cap; int64_t line; } data_lines;
int data_lines_open(data_lines *lr, const char *path);
// Returns 1 with *text/*len set, 0 at end of file, -1 on a read error (halo_fail set).
int data_lines_next(data_lines *lr, char **text, size_t *len);
void data_lines_close(data_lines *lr);

// CSV records. Fields of the last record are valid until the next call.
typedef struct {
    data_lines lr;
    data_str *fields;        // [n_fields]
    int n_fields, cap_fields;
    int64_t record_line;     // line on which the last record started
} csv_reader;
int csv_open(csv_reader *r, const char *path);
// 1: a record; 0: end of file; -1: malformed record, halo_fail says "file:line: what" (reading may continue with
// the next record when `fatal` is false); fatal: an error after which reading cannot continue.
int csv_next(csv_reader *r, bool *fatal);
void csv_close(csv_reader *r);

// Renders TEMPLATE, replacing "{name}" by lookup(ctx, name) ("{{" / "}}" are literal braces). On a name the
// lookup does not know, returns HALO_ERR with "template names 'x', which is not a <what>".
typedef const char *(*data_lookup_fn)(void *ctx, const char *name, size_t name_len);
int data_template_render(const char *tmpl, data_lookup_fn lookup, void *ctx, const char *what, data_str *out);

// One chat message; role is "system", "user", "assistant" or "tool" (the last only through a chat template). raw: the
// message object as the file has it (its tool_calls and other keys reach a chat template), or NULL.
struct cJSON;
typedef struct { const char *role; const char *content; const struct cJSON *raw; } data_msg;
// Renders the prompt for msgs[0..n-2] (the last message must be the assistant's answer, which is not rendered),
// ending with the assistant's generation prompt; the BOS piece (bos_text, may be "") is written first.
int data_chat_render_prompt(dataset_chat fmt, const char *plain_tmpl, const char *bos_text, const char *eos_text,
                            const data_msg *msgs, int n, data_str *out);
// msgs[0..n) as the same format renders them as history (an assistant message last: its end of turn included, no
// generation prompt after it); a prefix of the prompt rendering of any longer conversation that starts with them.
int data_chat_render_history(dataset_chat fmt, const char *plain_tmpl, const char *bos_text, const char *eos_text,
                             const data_msg *msgs, int n, data_str *out);
// HALO_ERR unless msgs is a conversation to learn from: known roles, a user message, the last one the assistant's.
int data_chat_check(const data_msg *msgs, int n);
// The model's chat template over msgs[0..n) with bos_token, eos_token, add_generation_prompt and the record's tools
// (a JSON array, or NULL), as transformers' apply_chat_template renders it.
int data_chat_render_template(const jinja_template *t, const char *bos_text, const char *eos_text, const data_msg *msgs,
                              int n, bool add_generation_prompt, const struct cJSON *tools, data_str *out);
// Whether the chat template `tmpl` renders prompts as DATASET_CHAT_LLAMA3 does (Llama 3.0's template), on a user turn
// alone and after a system message: 1 the same, 0 otherwise, -1 when it fails to parse or render those probes.
int data_chat_template_is_llama3(const char *tmpl, const char *bos_text, const char *eos_text);
#endif
