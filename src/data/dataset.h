// Training and evaluation data: loads plain text, JSONL (text / chat messages / prompt-answer pairs) and CSV files,
// renders chat formats (Llama 3, Llama 2, a plain template), tokenizes, splits off a validation set, and fills
// halo_batch rows (padded or packed) from a resumable, seeded iterator. Task metrics live in data/metrics.h.
#ifndef HALO_DATASET_H
#define HALO_DATASET_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "model/batch.h"
#include "tokenizer/tokenizer.h"

typedef enum { DATASET_FMT_AUTO, DATASET_FMT_TEXT, DATASET_FMT_JSONL, DATASET_FMT_CSV } dataset_format;
// AUTO picks LLAMA3 when the tokenizer has <|start_header_id|> and <|eot_id|>, else TEMPLATE when the tokenizer
// has a chat template, else PLAIN.
// TEMPLATE: the model's own chat template (tokenizer_config.json / chat_template.jinja) as transformers renders it.
typedef enum { DATASET_CHAT_AUTO, DATASET_CHAT_LLAMA3, DATASET_CHAT_LLAMA2, DATASET_CHAT_PLAIN, DATASET_CHAT_TEMPLATE } dataset_chat;
typedef enum { DATASET_TRAIN = 0, DATASET_VAL = 1 } dataset_split;

typedef struct {
    const char *path;             // training file: .txt, .jsonl/.json (one object a line, or one array of objects) or .csv
    const char *val_path;         // optional validation file (same kind); when NULL a seeded split of `path` is made
    const char *preset;           // "viggo" (CSV mr/ref), "gsm8k" (JSONL question/answer), "sql" (JSONL messages)
    dataset_format format;        // AUTO: by extension
    // JSONL: `text_field` (default "text") makes a text dataset; `messages_field` (default "messages"; else ShareGPT's
    // "conversations" of {from: human|gpt|system, value}) a chat one;
    // otherwise prompt/answer fields: the given names, or the first present pair of prompt/completion, prompt/answer,
    // prompt/response, question/answer, instruction/output (a non-empty "input" joins the instruction after a blank
    // line, as Alpaca's), input/output. The kind is decided by the first record; later records must match it.
    const char *text_field, *messages_field, *prompt_field, *answer_field;
    // CSV (and JSONL, when set): prompt and answer built from "{column}" placeholders ("{{" and "}}" are braces).
    const char *prompt_template, *answer_template;
    const char *system_prompt;    // optional system message added to prompt/answer examples (not to `messages`)
    dataset_chat chat;
    const char *plain_template;   // DATASET_CHAT_PLAIN: user turn around "{prompt}"; default "{prompt}\n### Answer:\n"
    const char *doc_separator;    // .txt: a line equal to this ends a document (NULL: the whole file is one)
    int seq_len;                  // T: positions per row; longer examples are cut (counted in the stats)
    bool pack;                    // several examples per row (seg/pos restart) instead of one example per row
    bool loss_on_all;             // loss on prompt tokens too (default: answer + end-of-turn token only)
    bool loss_last_turn;          // a conversation's last assistant turn alone in the loss (default: every one of its
                                  // assistant turns, each with its end of turn, where the chat format allows)
    bool skip_bad_lines;          // skip malformed lines (counted) instead of failing the load
    bool shuffle;                 // shuffle the training split each epoch (default true); validation keeps file order
    double val_fraction;          // share of examples split off for validation when val_path is NULL (default 0.05)
    long val_count;               // > 0: that many instead of val_fraction; both 0: no validation split
    uint64_t seed;                // split and shuffle seed
    bool progress;                // a progress line on stderr while a file takes more than 2 s to load
} dataset_config;

typedef struct {
    int64_t n_lines, n_bad_lines;        // lines read (all files); malformed lines skipped (skip_bad_lines)
    int64_t n_examples[2];               // per split (text: seq_len+1-token windows)
    int64_t n_truncated, n_tokens_dropped; // examples cut to seq_len, and the tokens cut off
    int64_t n_no_loss;                   // examples left without loss tokens after the cut (never batched)
    int64_t n_tokens, n_loss_tokens;     // over both splits, after the cut
    int64_t max_tokens;                  // longest example before the cut
    int64_t n_history_untrained;         // conversations whose earlier assistant turns could not join the loss
} dataset_stats;

// Position of an iterator over one split: save these three integers in a checkpoint to resume exactly.
typedef struct {
    uint64_t seed;
    int64_t epoch, index;   // `index` examples of epoch `epoch` (in that epoch's shuffled order) have been used
} dataset_iter;

typedef struct dataset dataset;

// Fills defaults: format AUTO, chat AUTO, seq_len 512, pack false, shuffle true, val_fraction 0.05, seed 1234.
void dataset_config_default(dataset_config *cfg);
// Loads and tokenizes. Errors name the file and line ("data.jsonl:17: no 'messages' field"). A preset fills
// unset fields (templates, field names) and implies its metric (dataset_metric_name).
int dataset_load(const dataset_config *cfg, const halo_tokenizer *tok, dataset **out);
void dataset_free(dataset *ds);

// Fails, naming the file and line, when an example holds a token id outside [0, vocab_size) (a tokenizer that does
// not match the model would otherwise index past the embedding table).
int dataset_check_vocab(const dataset *ds, int vocab_size);
const dataset_stats *dataset_get_stats(const dataset *ds);
// One line: "N train + M val examples (K lines skipped), X truncated (Y tokens dropped), ...".
void dataset_summary(const dataset *ds, char *buf, size_t n);
int64_t dataset_size(const dataset *ds, dataset_split split);
const char *dataset_metric_name(const dataset *ds);   // the preset's metric ("viggo", ...) or "exact"
dataset_chat dataset_chat_used(const dataset *ds);    // AUTO resolved

// Fills every row of b (B x T, T must equal seq_len) from the split, advancing `it`. Training split: each epoch in
// a permutation seeded by (it->seed, epoch) when shuffle is on. wrap = true continues into the next epoch
// (it->epoch++); wrap = false stops at the epoch's end and leaves the remaining rows as padding (targets -1).
// *n_examples (may be NULL): examples placed; 0 with wrap = false means the epoch is done. wrap = true on a split
// with nothing to batch is an error.
int dataset_next_batch(dataset *ds, dataset_split split, dataset_iter *it, bool wrap, halo_batch *b, int *n_examples);
// Batches of B rows one pass over the split takes in epoch `epoch` (packing makes it depend on the order).
int64_t dataset_batches_per_epoch(dataset *ds, dataset_split split, uint64_t seed, int64_t epoch, int B);

// Evaluation pairs (not for text datasets): the rendered prompt (chat format applied, BOS written out), its token
// ids (what generation should start from) and the trimmed reference answer. Valid while ds lives.
typedef struct {
    const char *prompt_text;
    const int32_t *prompt_ids;
    int n_prompt_ids;
    const char *answer;
    const char *file;
    int64_t line;            // source line of the example (first line of a multi-line CSV record)
} dataset_pair;
int dataset_get_pair(const dataset *ds, dataset_split split, int64_t i, dataset_pair *out);
// Example i of a split in file order, as training sees it: its ids [*n] (after the cut to seq_len + 1 tokens) and
// the first position the loss covers (the targets are ids[*loss_start .. *n); 1 for text windows), or with a
// conversation's earlier assistant turns in the loss *in_loss [n] (1: ids[j] is a target; else NULL). Valid while ds
// lives; in_loss, file and line may be NULL.
int dataset_get_example(const dataset *ds, dataset_split split, int64_t i, const int32_t **ids, int *n, int *loss_start,
                        const uint8_t **in_loss, const char **file, int64_t *line);

// Tokenization seam: dataset_load wraps a halo_tokenizer in this; tests may supply their own.
typedef struct {
    void *ctx;
    // Encodes text without the post-processor; special tokens written in the text are matched. *ids malloc'ed.
    int (*encode)(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n_ids);
    int32_t (*token_id)(void *ctx, const char *token);   // -1 when absent
    const char *(*piece)(void *ctx, int32_t id);         // vocabulary string of an id, or NULL
    int32_t bos_id, eos_id;                              // -1 when none
    const char *chat_template;                           // the model's Jinja chat template, or NULL
} dataset_encoder;
int dataset_load_with(const dataset_config *cfg, const dataset_encoder *enc, dataset **out);

// The ViGGO instruction of the HALO paper (the preset's prompt starts with it).
extern const char DATASET_VIGGO_INSTRUCTION[];
#endif
