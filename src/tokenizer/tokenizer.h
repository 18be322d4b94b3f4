// Hugging Face tokenizer.json tokenizers: byte-level BPE (Llama 3) and SentencePiece-style BPE with byte fallback
// (Llama 2, stories260K), with added/special tokens, the post-processor template and decoding.
#ifndef HALO_TOKENIZER_H
#define HALO_TOKENIZER_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct halo_tokenizer halo_tokenizer;

// Loads FILE (a tokenizer.json) or DIR (containing tokenizer.json; a DIR holding only tokenizer.model is handled or
// refused with a message saying what to provide). Returns HALO_OK / HALO_ERR (message in halo_error()).
int tokenizer_load(const char *file_or_dir, halo_tokenizer **out);
void tokenizer_free(halo_tokenizer *tok);

// Encodes UTF-8 (or arbitrary) bytes. add_special: apply the post-processor template (e.g. BOS). Added/special
// tokens written in the text are matched before BPE. *ids is malloc'ed; caller frees.
int tokenizer_encode(const halo_tokenizer *tok, const char *text, size_t len, bool add_special,
                     int32_t **ids, size_t *n_ids);
// Decodes ids to a malloc'ed NUL-terminated string, as HF's decode does (skip_special drops special tokens).
char *tokenizer_decode(const halo_tokenizer *tok, const int32_t *ids, size_t n_ids, bool skip_special);

int32_t tokenizer_token_id(const halo_tokenizer *tok, const char *token);   // -1 when absent
const char *tokenizer_piece(const halo_tokenizer *tok, int32_t id);        // the vocabulary string, or NULL
size_t tokenizer_vocab_size(const halo_tokenizer *tok);                   // including added tokens
int32_t tokenizer_bos_id(const halo_tokenizer *tok);                      // -1 when none
int32_t tokenizer_eos_id(const halo_tokenizer *tok);                      // -1 when none
// The model's chat template (Jinja): chat_template.jinja beside the tokenizer, else tokenizer_config.json's
// `chat_template` (the "default" one of a named list); NULL when there is none.
const char *tokenizer_chat_template(const halo_tokenizer *tok);
#endif
