// --device cpu|cuda for the model-running verbs (see common.h): the flag, the check that a GPU is there, and the
// GPU model calls of `eval --task loss` and `debug-step` (training goes through trainer_use_cuda instead), and the GPU
// KV-cache decoder of `generate` and the generation tasks of `eval`.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "cli/common.h"
#include "model/linear.h"
#include "train/trainer.h"
#include "util/error.h"
#include "util/fileio.h"
#ifdef HALO_CUDA
#include "cuda/cuda_backend.h"
#endif

int cli_device_parse(const char *value, int *cuda) {
    if (!strcmp(value, "cpu")) *cuda = 0;
    else if (!strcmp(value, "cuda")) *cuda = 1;
    else return halo_fail("--device: '%s' is not cpu or cuda", value);
    return HALO_OK;
}

int cli_device_auto(const halo_common_opts *co, const char *model_dir, const char *verb) {
    const char *env = getenv("HALO_DEVICE");   // cpu | cuda: the default without --device (the test suite sets cpu)
    if (env && !strcmp(env, "cpu")) return 0;
    if (env && !strcmp(env, "cuda")) return 1;
#ifdef HALO_CUDA
    if (cuda_device_count() <= 0) return 0;
    char gpu_why[256];
    const char *why = NULL;
    int can_insist = 1;   // whether --device cuda would run it (not for an unusable GPU or a variant it lacks)
    if (!cuda_device_usable(gpu_why, sizeof gpu_why)) why = gpu_why, can_insist = 0;   // a GPU this build cannot run on
    else if (co && llama_cuda_halo_check(&co->hc, 0) != HALO_OK) why = halo_error();
    else if (model_dir) {   // (a config.json that does not load is the model loader's to report)
        char *p = halo_path_join(model_dir, "config.json");
        llama_config c;
        if (halo_file_exists(p) && llama_config_load(p, &c) == HALO_OK && !llama_cuda_variant_ok(&c)) {
            why = LLAMA_CUDA_NO_VARIANT;
            can_insist = 0;
        }
        free(p);
        halo_clear_error();
    }
    if (!why) return 1;
    fprintf(stderr, "halo %s: a GPU is present, but %s: running on the CPU%s\n", verb, why,
            can_insist ? " (--device cuda to insist)" : "");
    return 0;
#else
    (void)co; (void)verb;
    return 0;
#endif
}

int cli_gpu_mem_parse(train_cuda_mem *mem, int *given, int argc, char **argv, int *i) {
    const char *v;
    if (cli_is_flag(argv[*i], "--bf16-moments")) mem->bf16_moments = 1;
    else if (cli_is_flag(argv[*i], "--bf16-grads")) mem->bf16_grads = 1;
    else if ((v = cli_flag_value(argc, argv, i, "--recompute"))) {
        static const char *const names[] = {"none", "norms", "mlp", "all"};
        static const int rc[] = {0, 0, 2, 1}, rn[] = {0, 1, 1, 0};
        int k = 0;
        while (k < 4 && strcmp(v, names[k])) k++;
        if (k == 4) { halo_fail("--recompute: '%s' is not none, norms, mlp or all", v); return -1; }
        mem->recompute = rc[k];
        mem->recompute_norms = rn[k];
    } else return 0;
    *given = 1;
    return 1;
}

int cli_gpu_mem_check(int given, int use_cuda) {
    if (given && !use_cuda)
        return halo_fail("--bf16-moments, --bf16-grads and --recompute are GPU memory options: they need --device cuda");
    return HALO_OK;
}

void cli_gpu_mem_usage(void) {
    printf("GPU memory (with --device cuda; Llama-3.2-1B, batch 4 x 2048 saves):\n"
           "  --bf16-moments         AdamW moments in bf16 (4.6 GiB)\n"
           "  --bf16-grads           weight-matrix gradients in bf16 (1.8 GiB; embedding and norms stay fp32;\n"
           "                         not with HALO int8/fp8)\n"
           "  --recompute none|norms|mlp|all   recompute in backward instead of storing (none): norms = the rmsnorm\n"
           "                         outputs (1 GiB, identical results), mlp = norms and the MLP's gate/up product\n"
           "                         (+3.75 GiB, one more product per layer), all = whole layers (most memory saved,\n"
           "                         about a third more time)\n");
}

#ifdef HALO_CUDA
int cli_cuda_check(void) {
    char why[256];
    if (!cuda_device_usable(why, sizeof why)) return halo_fail("--device cuda: %s; use --device cpu", why);
    return HALO_OK;
}

int cli_cuda_ranks_check(int ranks, int want) {
    char why[256] = "";
    const int n = cuda_device_count_forked(why, sizeof why);
    if (n < 1) {
        halo_fail("--ranks %d --device cuda: no usable GPU%s%s", ranks, *why ? ": " : "", why);
        return -1;
    }
    const int kind = train_gpu_comm_pick(want, ranks, n);
    if (kind < 0) halo_fail_ctx("--ranks %d --device cuda: ", ranks);
    return kind;
}

int cli_cuda_rank_device(int rank) {
    const int n = cuda_device_count();
    return cuda_select_device(n > 0 ? rank % n : rank) != HALO_OK ? halo_fail_ctx("--device cuda, rank %d: ", rank)
                                                                   : HALO_OK;
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
int cli_cuda_ranks_check(int ranks, int want) {
    (void)want;
    halo_fail("--ranks %d --device cuda: this build has no CUDA backend (nvcc was not found when it was built); "
              "--ranks runs on the CPU", ranks);
    return -1;
}
int cli_cuda_rank_device(int rank) { (void)rank; return no_cuda(); }
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
