// `halo info`: what a model directory holds and where halo runs it, without loading the weights: the architecture
// and shapes from config.json, the parameter count, the weight files, the tokenizer, a halo_config.json, whether the
// GPU model runs it, and the training state's size per device (parameters and optimizer, not activations).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "cli/cli.h"
#include "cli/common.h"
#include "io/safetensors.h"
#include "model/linear.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/fileio.h"
#ifdef HALO_CUDA
#include "cuda/cuda_backend.h"
#endif

static void usage(void) {
    printf("usage: halo info --model DIR\n"
           "  prints the architecture and shapes (config.json), the parameter count, the weight files, the tokenizer,\n"
           "  the recorded HALO precision (halo_config.json), whether the GPU model runs it, and the training state's\n"
           "  size (weights, gradients, AdamW moments; activations come on top)\n");
}

// "1.23 GiB" or "45.6 MiB" into buf
static const char *size_text(char *buf, size_t cap, double bytes) {
    if (bytes >= 1073741824.0) snprintf(buf, cap, "%.2f GiB", bytes / 1073741824.0);
    else snprintf(buf, cap, "%.1f MiB", bytes / 1048576.0);
    return buf;
}

int cmd_info(int argc, char **argv) {
    const char *dir = NULL, *s;
    for (int i = 1; i < argc; i++) {
        if (cli_is_flag(argv[i], "--help") || cli_is_flag(argv[i], "-h")) { usage(); return 0; }
        else if ((s = cli_flag_value(argc, argv, &i, "--model"))) dir = s;
        else { fprintf(stderr, "halo info: unknown option '%s' (see --help)\n", argv[i]); return 2; }
    }
    if (!dir) { usage(); return 2; }
    char *cfg_path = halo_path_join(dir, "config.json");
    llama_config c;
    if (llama_config_load(cfg_path, &c) != HALO_OK) {
        fprintf(stderr, "halo info: %s\n", halo_error());
        free(cfg_path);
        return 1;
    }
    free(cfg_path);
    const size_t n = llama_param_count(&c);
    printf("model        %s\n", dir);
    printf("architecture %s (model_type %s)\n", LLAMA_ARCH_CLASS[c.arch], LLAMA_ARCH_TYPE[c.arch]);
    printf("shapes       %d layers, hidden %d, intermediate %d, %d heads / %d KV heads of %d, vocabulary %d, "
           "%d positions\n", c.n_layers, c.dim, c.hidden_dim, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size,
           c.max_pos);
    printf("parameters   %zu (%.3f B)%s\n", n, n / 1e9, c.tie_embeddings ? ", embeddings tied to the output" : "");
    printf("rope         theta %g, %s\n", c.rope_theta,
           c.rope_scaling == ROPE_SCALING_LLAMA3 ? "llama3 scaling" : c.rope_scaling == ROPE_SCALING_LINEAR ?
           "linear scaling" : "no scaling");
    if (c.bias_kinds) {
        char kinds[64];
        model_linear_kinds_text(c.bias_kinds, kinds, sizeof kinds);
        printf("biases       on %s\n", kinds);
    }
    if (c.qk_norm) printf("q/k norms    RMSNorm over each head of q and k\n");
    if (c.nope[0] || c.nope[1]) {
        printf("no RoPE      layers");
        for (int l = 0; l < c.n_layers; l++) if (!llama_layer_rope(&c, l)) printf(" %d", l);
        printf("\n");
    }
    if (c.sliding_window > 0) printf("window       %d positions (longer sequences are refused)\n", c.sliding_window);
    // the weight files and what a stored parameter takes
    char *single = halo_path_join(dir, "model.safetensors"), *index = halo_path_join(dir, "model.safetensors.index.json");
    struct stat sb;
    if (stat(single, &sb) == 0) {
        st_file f;
        const char *dtype = "?";
        if (st_open(single, &f) == HALO_OK) {
            if (f.n_tensors > 0) dtype = st_dtype_name(f.tensors[0].dtype);
            st_close(&f);
        } else halo_clear_error();
        char sz[32];
        printf("weights      model.safetensors, %s (%s)\n", size_text(sz, sizeof sz, (double)sb.st_size), dtype);
    } else if (halo_file_exists(index)) printf("weights      sharded (model.safetensors.index.json)\n");
    else printf("weights      none found (model.safetensors or model.safetensors.index.json)\n");
    free(single); free(index);
    halo_tokenizer *tok = NULL;
    if (tokenizer_load(dir, &tok) == HALO_OK) {
        const int32_t bos = tokenizer_bos_id(tok), eos = tokenizer_eos_id(tok);
        printf("tokenizer    %zu tokens, bos %s, eos %s, %s\n", tokenizer_vocab_size(tok),
               bos >= 0 && tokenizer_piece(tok, bos) ? tokenizer_piece(tok, bos) : "none",
               eos >= 0 && tokenizer_piece(tok, eos) ? tokenizer_piece(tok, eos) : "none",
               tokenizer_chat_template(tok) ? "a chat template" : "no chat template");
        tokenizer_free(tok);
    } else {
        printf("tokenizer    none usable (%s)\n", halo_error());
        halo_clear_error();
    }
    model_halo_config hc;
    int has_hc;
    if (halo_config_read(dir, &hc, &has_hc) == HALO_OK && has_hc) {
        char d[256];
        model_halo_describe(&hc, c.n_layers, d, sizeof d);
        printf("precision    %s (halo_config.json)\n", d);
    }
    halo_clear_error();
#ifdef HALO_CUDA
    printf("GPU          %s\n", llama_cuda_variant_ok(&c) ? "the GPU model runs this architecture" : LLAMA_CUDA_NO_BIAS);
#else
    printf("GPU          this build has no CUDA backend\n");
#endif
    // the training state (src/train on the CPU: fp32 weights, gradients, two moments; the GPU model: bf16 weights, fp32
    // master, gradients and moments by default; LoRA: the frozen base alone, adapters aside)
    char a[32], b[32], d[32], e[32];
    printf("state        full fine-tuning: CPU %s (16 bytes a parameter), GPU %s (18); LoRA's frozen base: CPU %s, "
           "GPU %s; activations on top\n", size_text(a, sizeof a, 16.0 * n), size_text(b, sizeof b, 18.0 * n),
           size_text(d, sizeof d, 4.0 * n), size_text(e, sizeof e, 2.0 * n));
    return 0;
}
