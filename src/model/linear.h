// The one place every block linear of the model goes through: plain fp32 BLAS products, or the HALO layer
// (src/halo) when HALO is configured on the model. The model code calls only model_linear_forward/_backward.
#ifndef HALO_MODEL_LINEAR_H
#define HALO_MODEL_LINEAR_H
#include <stdio.h>
#include "halo/halo_linear.h"
#include "model/llama.h"

// Which block linears run through HALO, at what precision and level. Stored in checkpoints and in an exported
// model's halo_config.json so a run can be resumed and evaluated the same way.
typedef struct {
    halo_precision prec;        // FP32 = HALO off
    int level;                  // 0, 1, 2
    unsigned kinds;             // bit (1 << llama_linear_kind) per covered linear; default all seven
    int skip_first, skip_last;  // keep this many first / last blocks in fp32
    halo_granularity gran;      // scale granularity (default per tensor)
    int grad_e5m2;              // FP8: E5M2 for the gradient E_Y
    int stochastic;             // stochastic rounding of gradients
    int had_block;              // 0 = full Hadamard over in_features, else block-diagonal block size
    int had_block_b;            // level 2: 0 = full Hadamard over the batch's tokens, else block-diagonal over
                                // blocks of this many tokens (cheaper; a token's outliers spread over its block only)
    int identity_quant;         // tests only: quantizers replaced by the identity (rotations still applied)
    int delayed;                // delayed scaling (halo_linear_config.delayed; int8 / fp8, per-tensor scales)
} model_halo_config;

model_halo_config model_halo_config_default(void);   // FP32 (off), level 0, all seven linears
// Applies the configuration (replacing any earlier one). HALO_ERR for an invalid level or precision.
int llama_set_halo(llama_model *m, const model_halo_config *hc);
const model_halo_config *llama_get_halo(const llama_model *m);   // NULL when off
// on = 1: every block linear runs as the plain fp32 product while the HALO layers keep their state (an evaluation of
// the same weights without quantization, as an exported model runs elsewhere); on = 0: back to HALO.
void llama_halo_bypass(llama_model *m, int on);
// 1 when block `layer` (of n_layers) runs linear `kind` through HALO under hc (kinds, skip-first/-last); the CPU
// model and the GPU model (src/cuda/llama_cuda.cu) both select by it. Name: "model.layers.<l>.<HF linear name>".
int model_halo_selects(const model_halo_config *hc, int layer, int kind, int n_layers);
void model_halo_layer_name(char *buf, size_t cap, int layer, int kind);
int model_linear_in_features(const llama_config *c, int kind);   // dim, n_heads * head_dim (o) or hidden_dim (down)
int model_linear_out_features(const llama_config *c, int kind);  // n_heads * head_dim (q), n_kv_heads * head_dim (k, v),
                                                                 // hidden_dim (gate, up) or dim (o, down)
// Levels 1-2 with a block-diagonal H_m: HALO_ERR naming the first selected layer whose in_features the block does not
// divide (or is no supported Hadamard size); checked by llama_set_halo and by the GPU model's setup, before any step.
int model_halo_check_blocks(const llama_config *c, const model_halo_config *hc);
// JSON round trip of the configuration; parse errors name `where` and the key.
char *model_halo_config_to_json(const model_halo_config *hc);
int model_halo_config_from_json(const char *json, const char *where, model_halo_config *hc);
// "q,k,v" or "all" -> bit set of covered linears; HALO_ERR naming an unknown one (--halo-linears, --lora-linears).
int model_halo_parse_linears(const char *list, unsigned *kinds);
// Bit set of linears -> "q,k,v,o,gate,up,down" (the names model_halo_parse_linears reads) into buf.
void model_linear_kinds_text(unsigned kinds, char *buf, size_t n);
// "int8 level 2 (q,k,v,o,gate,up,down; blocks 1..4 of 5)" style description into buf.
void model_halo_describe(const model_halo_config *hc, int n_layers, char *buf, size_t n);
// Quantization telemetry: switch measuring on/off for every HALO layer; print a table; write one JSON line per
// layer tagged with `step` to f.
void llama_halo_telemetry(llama_model *m, int on);
void llama_halo_print_telemetry(const llama_model *m, FILE *f);
void llama_halo_write_telemetry(const llama_model *m, FILE *f, int step);
// First error a HALO product reported (NaN/Inf input) since the last call, or NULL; clears it.
const char *llama_halo_take_error(llama_model *m);
// The HALO layer of block linear `kind` of layer `layer`, or NULL when HALO does not cover it (bypass aside).
struct halo_linear *llama_halo_layer(llama_model *m, int layer, int kind);

// Y[b, out] = X[b, in] W[out, in]^T for block linear `kind` of layer `layer` (+ its LoRA adapter's output).
void model_linear_forward(llama_model *m, int layer, llama_linear_kind kind, float *Y, const float *X, const float *W,
                          int b, int in, int out);
// dX[b, in] = dY W (or += when accumulate_dx); dW[out, in] += dY^T X (dW NULL: frozen weight; always frozen when the
// model has LoRA adapters, whose gradients accumulate instead).
void model_linear_backward(llama_model *m, int layer, llama_linear_kind kind, float *dX, float *dW, const float *dY,
                           const float *X, const float *W, int b, int in, int out, int accumulate_dx);
void llama_linears_free(llama_model *m);
#endif
