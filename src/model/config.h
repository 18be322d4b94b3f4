// Llama model configuration, read from a Hugging Face config.json (LlamaForCausalLM; MistralForCausalLM: the same
// layers and tensor names, with an optional attention window; Qwen2ForCausalLM: the same with biases on q, k and v;
// Qwen3ForCausalLM: RMSNorm over each head of q and k before RoPE; SmolLM3ForCausalLM: some layers without RoPE;
// Phi3ForCausalLM: the Llama layers with q, k, v and gate, up stored as two fused tensors) and written back on export.
#ifndef HALO_CONFIG_H
#define HALO_CONFIG_H
#include <stdint.h>

// (the values rope_tables in src/ops takes as `scaling`)
typedef enum { ROPE_SCALING_NONE = 0, ROPE_SCALING_LLAMA3 = 1, ROPE_SCALING_LINEAR = 2 } rope_scaling_type;
// The architecture config.json names (what export writes back): the Llama layers, with each variant's additions.
typedef enum { ARCH_LLAMA = 0, ARCH_MISTRAL, ARCH_QWEN2, ARCH_QWEN3, ARCH_SMOLLM3, ARCH_PHI3, ARCH_COUNT } llama_arch;
extern const char *const LLAMA_ARCH_CLASS[ARCH_COUNT];   // "LlamaForCausalLM", ...
extern const char *const LLAMA_ARCH_TYPE[ARCH_COUNT];    // model_type: "llama", ...
enum { LLAMA_MAX_NOPE_LAYERS = 128 };

// llama_config.bias_kinds masks (bit 1 << llama_linear_kind): Qwen2's q, k, v; Llama's attention_bias (q, k, v,
// o) and mlp_bias (gate, up, down)
enum { BIAS_QKV = 0x7, BIAS_ATTENTION = 0xF, BIAS_MLP = 0x70 };

typedef struct {
    int vocab_size;
    int dim;            // hidden_size
    int hidden_dim;     // intermediate_size (MLP)
    int n_layers;       // num_hidden_layers
    int n_heads;        // num_attention_heads
    int n_kv_heads;     // num_key_value_heads
    int head_dim;       // head_dim, default dim / n_heads
    int max_pos;        // max_position_embeddings
    float norm_eps;     // rms_norm_eps
    float rope_theta;
    rope_scaling_type rope_scaling;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_pos;
    int tie_embeddings; // tie_word_embeddings
    int bos_id, eos_id; // -1 when absent
    int has_pad_id, pad_id;   // pad_token_id (has_pad_id 0, pad_id 0: absent or null). As transformers'
                              // nn.Embedding(padding_idx), the lookup gives its row no gradient (the tied lm_head
                              // still does): llama_embed_skip_id
    llama_arch arch;    // from architectures[0] (or model_type); what export writes back
    int qk_norm;        // RMSNorm (weight [head_dim], rms_norm_eps) over each head of q and of k, before RoPE (Qwen3)
    uint64_t nope[2];   // bit l: layer l applies no RoPE (SmolLM3's no_rope_layers); layers < LLAMA_MAX_NOPE_LAYERS
    unsigned bias_kinds;   // bit (1 << llama_linear_kind) per block linear with a bias: Qwen2's q, k, v; Llama's
                           // attention_bias (q, k, v, o) and mlp_bias (gate, up, down)
    int sliding_window; // Mistral's (and Phi-3's) attention window in positions; 0 when none (null). Sequences longer
                        // than it are refused (llama_config_check_len): attention inside the window equals full
                        // causal attention
} llama_config;

// The token id whose embedding row the lookup's backward skips: pad_token_id, -1 without one.
static inline int llama_embed_skip_id(const llama_config *c) { return c->has_pad_id ? c->pad_id : -1; }

// Parses config.json; unsupported architectures, rope scalings, activations are refused naming the key.
int llama_config_load(const char *path, llama_config *c);
// Writes config.json for `torch_dtype` ("float32" or "bfloat16"), atomically.
int llama_config_save(const llama_config *c, const char *path, const char *torch_dtype);
// The same as text, the one serialization of a config (checkpoints store it too): malloc'ed config.json contents
// (torch_dtype NULL: left out; pretty: indented as a file), and its parser (`where` names the source in messages).
char *llama_config_to_json(const llama_config *c, const char *torch_dtype, int pretty);
int llama_config_from_json(const char *json, const char *where, llama_config *c);
// Checks internal consistency (positive sizes, heads divide, ...). Returns HALO_ERR naming the offending field.
int llama_config_validate(const llama_config *c, const char *where);
// Whether layer l applies RoPE (all do but SmolLM3's no_rope_layers).
static inline int llama_layer_rope(const llama_config *c, int l) {
    return l >= LLAMA_MAX_NOPE_LAYERS || !(c->nope[l / 64] >> (l % 64) & 1);
}
// HALO_ERR when `len` positions (`what`: "--seq-len", "prompt + new tokens") exceed the model's sliding window.
int llama_config_check_len(const llama_config *c, long len, const char *what);
#endif
