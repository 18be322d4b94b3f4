// Dispatch of the model's block linears (see linear.h).
#include <stdlib.h>
#include "model/linear.h"
#include "ops/ops.h"

void model_linear_forward(llama_model *m, int layer, llama_linear_kind kind, float *Y, const float *X, const float *W,
                          int b, int in, int out) {
    linear_forward(Y, X, W, b, in, out);
}

void model_linear_backward(llama_model *m, int layer, llama_linear_kind kind, float *dX, float *dW, const float *dY,
                           const float *X, const float *W, int b, int in, int out, int accumulate_dx) {
    linear_backward(dX, dW, dY, X, W, b, in, out, accumulate_dx);
}

void llama_linears_free(llama_model *m) {
    free(m->lin);
    m->lin = NULL;
}
