// The Llama model on the CPU in fp32: parameters (one contiguous buffer, HF names), forward, backward, and a
// KV-cached decoder for generation. The readable reference every other backend is checked against.
#ifndef HALO_LLAMA_H
#define HALO_LLAMA_H
#include <stddef.h>
#include <stdint.h>
#include "model/batch.h"
#include "model/config.h"

// The seven block linears, in HF order. Each one's weight is [out, in] (HF layout).
typedef enum { LIN_Q = 0, LIN_K, LIN_V, LIN_O, LIN_GATE, LIN_UP, LIN_DOWN, LIN_COUNT } llama_linear_kind;
extern const char *const LLAMA_LINEAR_NAMES[LIN_COUNT];   // "self_attn.q_proj", ..., "mlp.down_proj"

typedef struct {
    float *attn_norm;   // [dim]
    float *wq;          // [n_heads * head_dim, dim]
    float *wk;          // [n_kv_heads * head_dim, dim]
    float *wv;          // [n_kv_heads * head_dim, dim]
    float *wo;          // [dim, n_heads * head_dim]
    float *ffn_norm;    // [dim]
    float *w_gate;      // [hidden_dim, dim]
    float *w_up;        // [hidden_dim, dim]
    float *w_down;      // [dim, hidden_dim]
    float *bias[LIN_COUNT];   // [out] per block linear with a bias (config bias_kinds: Qwen2's q, k, v), else NULL
    float *q_norm, *k_norm;   // [head_dim] RMSNorm weights over each head of q and k (config qk_norm: Qwen3), else NULL
} llama_layer_weights;

typedef struct {
    float *embed;       // [vocab, dim]
    float *final_norm;  // [dim]
    float *lm_head;     // [vocab, dim]; == embed when tied
    llama_layer_weights *layers;   // [n_layers]
} llama_weights;

// One named parameter tensor (a view into the contiguous buffer).
typedef struct {
    char name[96];      // HF name, e.g. "model.layers.0.self_attn.q_proj.weight"
    size_t offset;      // in floats, into params / grads
    size_t numel;
    int ndim;
    int64_t shape[2];
    int no_decay;       // norms and embeddings: excluded from weight decay by default
} llama_param;

struct llama_acts;      // activation buffers, internal to llama.c
struct model_halo;      // HALO state of the block linears (model/linear.c), NULL = plain fp32 products
struct llama_lora;      // LoRA adapters on the block linears (model/lora.c), NULL = none

typedef struct {
    llama_config cfg;
    size_t n_params;
    float *params;              // [n_params] all parameters, contiguous
    float *grads;               // [n_params] same layout; allocated by llama_alloc_grads
    llama_weights w, g;         // views into params and grads
    llama_param *table;         // [n_table] named tensors in HF order
    int n_table;
    struct llama_acts *acts;    // sized for the largest batch seen
    struct model_halo *halo;    // NULL: every block linear is a plain fp32 product
    struct llama_lora *lora;    // NULL: no adapters; else the base weights are frozen (no weight gradients)
} llama_model;

// The parameter count of a model of config c (without allocating it).
size_t llama_param_count(const llama_config *c);
// Allocates parameters for `cfg` (zeroed) and builds the tensor table.
int llama_init(llama_model *m, const llama_config *cfg);
// Fills parameters like HF's init: normal(0, 0.02) for matrices, ones for norms; seeded.
void llama_init_random(llama_model *m, uint64_t seed);
// Loads DIR/config.json and DIR/model.safetensors (or the shards listed in model.safetensors.index.json).
int llama_load(llama_model *m, const char *dir);
// Writes a Hugging Face directory: config.json + model.safetensors ("float32" or "bfloat16"); copies tokenizer
// files from `tokenizer_src_dir` when given and present.
int llama_save_hf(const llama_model *m, const char *dir, const char *torch_dtype, const char *tokenizer_src_dir);
void llama_free(llama_model *m);

void llama_alloc_grads(llama_model *m);
void llama_zero_grads(llama_model *m);
const llama_param *llama_find_param(const llama_model *m, const char *name);
// Block linear `kind` of layer `layer` in a weights view: the parameters (m->w) or the gradients (m->g).
float *llama_linear_weight(const llama_weights *v, int layer, llama_linear_kind kind);

// Forward pass and loss. Returns the mean next-token cross-entropy over positions with target >= 0 (0 when none).
// logits_out [B, T, vocab] is filled when not NULL. Keeps the activations for llama_backward.
float llama_forward(llama_model *m, const halo_batch *b, float *logits_out);
// Backward of the last llama_forward: grads += grad_scale * d(mean loss)/d(params).
void llama_backward(llama_model *m, const halo_batch *b, float grad_scale);

// KV-cached decoding for generation: one token at a time at position `pos` of a single sequence.
typedef struct {
    int max_len;
    float *k;           // [n_layers, max_len, n_kv_heads * head_dim]
    float *v;           // [n_layers, max_len, n_kv_heads * head_dim]
    float *scratch;     // per-step work buffers
} llama_kv_cache;
void llama_kv_init(llama_kv_cache *c, const llama_config *cfg, int max_len);
void llama_kv_free(llama_kv_cache *c);
// Runs token `token` at position `pos` (0 <= pos < max_len), writing logits [vocab].
void llama_decode_step(llama_model *m, llama_kv_cache *c, int32_t token, int pos, float *logits);
#endif
