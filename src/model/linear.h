// The one place every block linear of the model goes through: plain fp32 BLAS products, or the HALO layer
// (src/halo) when the model has HALO layers configured. The model code calls only these two functions.
#ifndef HALO_MODEL_LINEAR_H
#define HALO_MODEL_LINEAR_H
#include "model/llama.h"

// Y[b, out] = X[b, in] W[out, in]^T for block linear `kind` of layer `layer`.
void model_linear_forward(llama_model *m, int layer, llama_linear_kind kind, float *Y, const float *X, const float *W,
                          int b, int in, int out);
// dX[b, in] = dY W (or += when accumulate_dx); dW[out, in] += dY^T X (dW NULL: frozen weight).
void model_linear_backward(llama_model *m, int layer, llama_linear_kind kind, float *dX, float *dW, const float *dY,
                           const float *X, const float *W, int b, int in, int out, int accumulate_dx);
void llama_linears_free(llama_model *m);
#endif
