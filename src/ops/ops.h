// CPU fp32 operations of the Llama model, each with its forward and backward. Shapes are row-major; N = B*T tokens.
// Backward functions ACCUMULATE (+=) into parameter gradients and OVERWRITE input gradients unless stated.
#ifndef HALO_OPS_H
#define HALO_OPS_H
#include <stdint.h>

// out[N, D] = table[ids[n], :]
void embedding_forward(float *out, const int32_t *ids, const float *table, int N, int D);
// dtable[V, D] += scatter of dout[N, D] by ids
// dtable[ids[n]] += dout[n] for every n whose id is not skip_id (-1: none; the config's pad_token_id)
void embedding_backward(float *dtable, const int32_t *ids, const float *dout, int N, int D, int skip_id);

// out[N, D] = x / rms(x) * w; rstd[N] saved for backward
void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int N, int D, float eps);
// dx[N, D] += ..., dw[D] += ... (dw NULL: frozen weight)
void rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w, const float *rstd,
                      int N, int D);

// RoPE tables for positions 0..max_pos-1: cos/sin[max_pos, head_dim/2]. scaling: 0 none, 1 llama3 (factor, the
// frequency factors, original_max_pos), 2 linear (every frequency divided by factor), as rope_scaling_type.
void rope_tables(float *cos_t, float *sin_t, int max_pos, int head_dim, float theta, int scaling,
                 float factor, float low_freq_factor, float high_freq_factor, int original_max_pos);
// In-place rotation of x[N, H, head_dim] (HF half-split convention: pairs (i, i + head_dim/2)) at positions pos[N].
void rope_forward(float *x, const int32_t *pos, const float *cos_t, const float *sin_t, int N, int H, int head_dim);
// In-place backward: rotates the gradient by the inverse angle.
void rope_backward(float *dx, const int32_t *pos, const float *cos_t, const float *sin_t, int N, int H, int head_dim);

// Causal grouped-query attention for B sequences of T tokens.
// q[B, T, Hq, hd], k/v[B, T, Hkv, hd] -> out[B, T, Hq, hd]; probs[B, Hq, T, T] saved (softmax rows, zero above the
// diagonal and across segments). seg[B, T] (or NULL): a query attends only to keys with the same segment id.
void attention_forward(float *out, float *probs, const float *q, const float *k, const float *v, const int32_t *seg,
                       int B, int T, int Hq, int Hkv, int hd);
// dq, dk, dv overwritten.
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *probs, const float *q,
                        const float *k, const float *v, int B, int T, int Hq, int Hkv, int hd);

// out[N, F] = silu(gate) * up
void swiglu_forward(float *out, const float *gate, const float *up, int N, int F);
// dgate, dup overwritten
void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, int N, int F);

// Cross-entropy over logits[N, V] with targets[N] (-1 = ignored). Returns the SUM of losses over counted positions;
// writes dlogits[N, V] = scale * (softmax - onehot) for counted rows, 0 for ignored rows (dlogits may alias logits).
double cross_entropy_forward_backward(float *dlogits, const float *logits, const int32_t *targets, int N, int V,
                                      float scale);
double cross_entropy_forward(const float *logits, const int32_t *targets, int N, int V);

// Linear products through BLAS: Y[b, n] = X[b, m] W[n, m]^T; dX[b, m] (=, or += when accumulate) dY W;
// dW[n, m] += dY^T X.
void linear_forward(float *Y, const float *X, const float *W, int b, int m, int n);
void linear_backward(float *dX, float *dW, const float *dY, const float *X, const float *W, int b, int m, int n,
                     int accumulate_dx);
#endif
