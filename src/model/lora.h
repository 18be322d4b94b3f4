// LoRA adapters on the block linears (../shared/docs/halo-method.md, section 6). The base weights stay frozen: their
// products run as before (fp32 or through HALO), forward and input gradient only, no weight gradient. Each chosen
// linear adds (alpha / r) * dropout(X) A^T B^T, with A [r, in] and B [out, r] trained in fp32. Adapters are written
// in PEFT's layout (adapter_config.json + adapter_model.safetensors, tensors
// "base_model.model.model.layers.<l>.<linear>.lora_A.weight"), which transformers loads with peft installed.
#ifndef HALO_LORA_H
#define HALO_LORA_H
#include <stdint.h>
#include "model/llama.h"

typedef struct {
    int rank;           // r > 0
    double alpha;       // the adapter's output is scaled by alpha / r
    double dropout;     // on the adapter's input while training, 0 <= p < 1
    unsigned kinds;     // bit (1 << llama_linear_kind) per adapted linear
} lora_config;

lora_config lora_config_default(void);   // the HALO paper's: r 16, alpha 8, dropout 0.05, all seven linears
// Adds adapters to m (replacing any): A uniform in +-1/sqrt(in) (PEFT's default initialization), B zero, so the
// model computes what it did before. HALO_ERR for a bad rank, alpha, dropout or empty linear set.
int llama_lora_enable(llama_model *m, const lora_config *c, uint64_t seed);
const lora_config *llama_get_lora(const llama_model *m);   // NULL when the model has no adapters
void llama_lora_free(llama_model *m);
// Training mode: dropout on, its masks drawn from `key` (forward and backward of one micro-batch use the same key).
// Off (the default): no dropout, as in evaluation and generation.
void llama_lora_train(llama_model *m, int on, uint64_t key);
// The dropout mask: element i of linear lin (layer * LIN_COUNT + kind) is kept when bits 16 (i % 4) .. 16 (i % 4) + 15
// of splitmix64(key + golden (lin 2^32 + i / 4 + 1)) are >= this threshold, ceil(p 2^16) (one hash serves four
// elements; the GPU kernels draw the same masks).
uint32_t lora_dropout_threshold(double p);
int lora_dropout_keeps(uint64_t key, int lin, size_t i, uint32_t thr);   // 1: element i of linear lin is kept

// What training updates: the adapters' parameters when m has them, else the whole model's (grads: NULL until
// llama_alloc_grads).
typedef struct {
    float *params, *grads;
    size_t n;
    const llama_param *table;
    int n_table;
} llama_trainable;
llama_trainable llama_trainable_params(llama_model *m);
void llama_lora_zero_grads(llama_model *m);   // called by llama_zero_grads

// Hooks of model/linear.c: Y += the adapter's output; dX += its input gradient and the adapter's gradients +=.
// Nothing when (layer, kind) has no adapter.
void lora_linear_forward(llama_model *m, int layer, int kind, float *Y, const float *X, int b, int in, int out);
void lora_linear_backward(llama_model *m, int layer, int kind, float *dX, const float *dY, const float *X, int b,
                          int in, int out);

// W += (alpha / r) B A for every adapter, then the adapters are removed (a plain model to export).
void llama_lora_merge(llama_model *m);

// The configuration as JSON for checkpoints, and back; errors name `where` and the key.
char *lora_config_to_json(const lora_config *c);
int lora_config_from_json(const char *json, const char *where, lora_config *c);
// "r 16, alpha 8, dropout 0.05 on q,k,v,o,gate,up,down"
void lora_describe(const lora_config *c, char *buf, size_t n);

// Writes a PEFT adapter directory: adapter_config.json (base_model_name_or_path = base_model, may be NULL) and
// adapter_model.safetensors (F32, or BF16 when bf16).
int llama_lora_save(const llama_model *m, const char *dir, const char *base_model, int bf16);
// Reads a PEFT LoRA adapter directory onto m (whose base weights are loaded): its config (r, lora_alpha,
// lora_dropout, target_modules) and every A and B tensor, shapes checked. Errors name the file and key or tensor.
int llama_lora_load(llama_model *m, const char *dir);
#endif
