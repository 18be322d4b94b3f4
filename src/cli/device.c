// --device cpu|cuda for the model-running verbs (see common.h): the flag, the check that a GPU is there, and the
// GPU model calls of `eval --task loss` and `debug-step` (training goes through trainer_use_cuda instead), and the GPU
// KV-cache decoder of `generate` and the generation tasks of `eval`.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/common.h"
#include "model/linear.h"
#include "util/error.h"
#ifdef HALO_CUDA
#include "cuda/cuda_backend.h"
#endif

int cli_device_parse(const char *value, int *cuda) {
    if (!strcmp(value, "cpu")) *cuda = 0;
    else if (!strcmp(value, "cuda")) *cuda = 1;
    else return halo_fail("--device: '%s' is not cpu or cuda", value);
    return HALO_OK;
}

#ifdef HALO_CUDA
int cli_cuda_check(void) {
    if (cuda_device_count() <= 0)
        return halo_fail("--device cuda: no CUDA device found (no NVIDIA driver, or no GPU visible to this process); "
                         "use --device cpu");
    return HALO_OK;
}

struct cli_gpu {
    llama_cuda *g;
};

int cli_gpu_open(cli_gpu **out, const llama_model *m, int max_B, int max_T) {
    *out = NULL;
    if (cli_cuda_check() != HALO_OK) return HALO_ERR;
    llama_cuda_opts o;
    memset(&o, 0, sizeof o);
    o.max_B = max_B;
    o.max_T = max_T;
    // the model's HALO settings run through the GPU HALO layers (llama_cuda_init refuses what the GPU lacks)
    const model_halo_config *hc = llama_get_halo(m);
    o.halo = hc ? *hc : model_halo_config_default();
    cli_gpu *c = xcalloc(1, sizeof *c);
    if (llama_cuda_init(&c->g, m, &o) != HALO_OK) { free(c); return halo_fail_ctx("--device cuda: "); }
    *out = c;
    return HALO_OK;
}

float cli_gpu_forward(void *gpu, const halo_batch *b) { return llama_cuda_forward(((cli_gpu *)gpu)->g, b, NULL); }

float cli_gpu_logits(cli_gpu *c, const halo_batch *b, float *logits) { return llama_cuda_forward(c->g, b, logits); }

int cli_gpu_grads(cli_gpu *c, const halo_batch *b, llama_model *m) {
    llama_cuda_zero_grads(c->g);
    llama_cuda_forward_backward(c->g, b, 1.0f);
    llama_cuda_last_loss(c->g);
    return llama_cuda_copy_grads(c->g, m);
}

float cli_gpu_adamw_step(cli_gpu *c, const halo_batch *b, const adamw_config *ac, double lr, int step) {
    llama_cuda_adamw h = {.lr = (float)lr, .beta1 = (float)ac->beta1, .beta2 = (float)ac->beta2, .eps = (float)ac->eps,
                          .weight_decay = (float)ac->weight_decay, .grad_clip = 0.f, .decay_all = ac->decay_all};
    return llama_cuda_train_step(c->g, b, &h, step);
}

void cli_gpu_close(cli_gpu *c) {
    if (!c) return;
    llama_cuda_free(c->g);
    free(c);
}

struct cli_gpu_gen {
    cuda_decoder *d;
};

int cli_gpu_gen_open(cli_gpu_gen **out, const llama_model *m, int max_seqs, int max_len, const char *verb) {
    *out = NULL;
    if (cli_cuda_check() != HALO_OK) return HALO_ERR;
    if (llama_get_halo(m))
        fprintf(stderr, "halo %s: note: generation on the GPU uses BF16 products (the model's HALO settings apply "
                "to the CPU forward only)\n", verb);
    cli_gpu_gen *c = xcalloc(1, sizeof *c);
    if (cuda_decoder_init_host(&c->d, m, max_seqs, max_len, max_seqs > 512 ? max_seqs : 512) != HALO_OK) {
        free(c);
        return halo_fail_ctx("--device cuda: ");
    }
    *out = c;
    return HALO_OK;
}

int cli_gpu_gen_run(cli_gpu_gen *c, int n, const int32_t *const *prompts, const int *n_prompt, const gen_options *o,
                    int32_t *const *out, int *n_out) {
    return cuda_generate(c->d, n, prompts, n_prompt, o, out, n_out);
}

void cli_gpu_gen_close(cli_gpu_gen *c) {
    if (!c) return;
    cuda_decoder_free(c->d);
    free(c);
}
#else
static int no_cuda(void) {
    return halo_fail("--device cuda: this build has no CUDA backend (nvcc was not found when it was built); "
                     "use --device cpu");
}
int cli_cuda_check(void) { return no_cuda(); }
struct cli_gpu { int unused; };
int cli_gpu_open(cli_gpu **out, const llama_model *m, int max_B, int max_T) {
    (void)m; (void)max_B; (void)max_T;
    *out = NULL;
    return no_cuda();
}
float cli_gpu_forward(void *gpu, const halo_batch *b) { (void)gpu; (void)b; abort(); }
float cli_gpu_logits(cli_gpu *c, const halo_batch *b, float *logits) { (void)c; (void)b; (void)logits; abort(); }
int cli_gpu_grads(cli_gpu *c, const halo_batch *b, llama_model *m) { (void)c; (void)b; (void)m; return no_cuda(); }
float cli_gpu_adamw_step(cli_gpu *c, const halo_batch *b, const adamw_config *ac, double lr, int step) {
    (void)c; (void)b; (void)ac; (void)lr; (void)step;
    abort();
}
void cli_gpu_close(cli_gpu *c) { (void)c; }
struct cli_gpu_gen { int unused; };
int cli_gpu_gen_open(cli_gpu_gen **out, const llama_model *m, int max_seqs, int max_len, const char *verb) {
    (void)m; (void)max_seqs; (void)max_len; (void)verb;
    *out = NULL;
    return no_cuda();
}
int cli_gpu_gen_run(cli_gpu_gen *c, int n, const int32_t *const *prompts, const int *n_prompt, const gen_options *o,
                    int32_t *const *out, int *n_out) {
    (void)c; (void)n; (void)prompts; (void)n_prompt; (void)o; (void)out; (void)n_out;
    return no_cuda();
}
void cli_gpu_gen_close(cli_gpu_gen *c) { (void)c; }
#endif
