// Decode speed of the GPU KV-cache decoder (src/cuda/decode.cu) on a random-weight Llama at real shapes: for each
// batch size, the prefill of B random prompts, then greedy generation of N new tokens per sequence (cuda_generate:
// argmax on the device, token ids back to the host each step). Prints a table (prefill ms, decode ms per step, decode tokens/s, effective weight
// bandwidth of a step) and one JSON line per batch size.
//   build/bench/bench_cuda_decode                      (Llama-3.2-1B shapes, batches 1 and 8, 128 + 128 tokens)
//   build/bench/bench_cuda_decode --model llama3-8b --layers 8 --batches 1,8,32 --prompt 512 --new 128
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef HALO_CUDA
#include <cuda_runtime_api.h>
#include "bench.h"
#include "cuda/cuda_backend.h"
#include "util/error.h"

#endif

int main(int argc, char **argv) {
#ifndef HALO_CUDA
    (void)argc; (void)argv;
    printf("bench_cuda_decode: built without CUDA\n");
    return 0;
#else
    const char *model = "llama3.2-1b", *batches = "1,8";
    int layers = 0, P = 128, NEW = 128, reps = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--layers") && i + 1 < argc) layers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batches") && i + 1 < argc) batches = argv[++i];
        else if (!strcmp(argv[i], "--prompt") && i + 1 < argc) P = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--new") && i + 1 < argc) NEW = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else {
            printf("usage: bench_cuda_decode [--model llama3.2-1b|llama3-8b] [--layers N] [--batches 1,8] "
                   "[--prompt TOKENS] [--new TOKENS] [--reps N]\n");
            return strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    if (P < 1 || NEW < 2 || reps < 1 || reps > 64) { fprintf(stderr, "bad --prompt/--new/--reps\n"); return 2; }
    int bs[16], nbs = 0, bmax = 1;
    for (const char *s = batches; *s && nbs < 16;) {
        bs[nbs] = atoi(s);
        if (bs[nbs] < 1) { fprintf(stderr, "--batches: '%s'\n", batches); return 2; }
        if (bs[nbs] > bmax) bmax = bs[nbs];
        nbs++;
        while (*s && *s != ',') s++;
        if (*s == ',') s++;
    }
    if (cuda_device_count() <= 0) { printf("bench_cuda_decode: no CUDA GPU present, skipped\n"); return 0; }
    llama_config c;
    if (bench_llama3_config(&c, model, layers, 131072)) return 2;
    c.rope_scaling = ROPE_SCALING_LLAMA3; c.rope_factor = 32; c.rope_low_freq_factor = 1; c.rope_high_freq_factor = 4;
    c.rope_original_max_pos = 8192;
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("device: %s, %d SMs, %.1f GiB\n", prop.name, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);
    // the GPU model holds the weights (its training buffers are sized for one token); the decoder borrows them
    llama_cuda_opts o;
    memset(&o, 0, sizeof o);
    o.max_B = 1; o.max_T = 1;
    llama_cuda *g;
    if (llama_cuda_init_random(&g, &c, 1, &o) != HALO_OK) { fprintf(stderr, "%s\n", halo_error()); return 1; }
    size_t np = llama_cuda_param_count(g);
    // bytes a decode step reads: every weight once (a tied head reads the embedding as lm_head; an untied model's
    // embedding table is only gathered)
    double step_bytes = 2.0 * (double)(np - (c.tie_embeddings ? 0 : (size_t)c.vocab_size * c.dim));
    cuda_decoder *d;
    int rows = bmax * P < 2048 ? bmax * P : 2048;
    if (rows < bmax) rows = bmax;
    if (cuda_decoder_init(&d, g, bmax, P + NEW, rows) != HALO_OK) { fprintf(stderr, "%s\n", halo_error()); return 1; }
    printf("model %s (%d layers, %.3fB parameters), prompts of %d tokens, %d new tokens, greedy, %d reps (median)\n",
           model, c.n_layers, np / 1e9, P, NEW, reps);
    printf("| batch | prefill ms | decode ms/step | decode tokens/s | end-to-end tokens/s | weight GB/s per step |\n");
    printf("|---|---|---|---|---|---|\n");
    int32_t **prompts = malloc(sizeof(int32_t *) * bmax), **outs = malloc(sizeof(int32_t *) * bmax);
    int *plen = malloc(sizeof(int) * bmax), *nout = malloc(sizeof(int) * bmax);
    int32_t *seq = malloc(sizeof(int32_t) * rows * 4), *tok = seq + rows, *pos = tok + rows, *orow = pos + rows;
    int32_t *nxt = malloc(sizeof(int32_t) * (size_t)rows);
    unsigned long long s = 99;
    for (int b = 0; b < bmax; b++) {
        prompts[b] = malloc(sizeof(int32_t) * P);
        outs[b] = malloc(sizeof(int32_t) * NEW);
        plen[b] = P;
        for (int i = 0; i < P; i++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            prompts[b][i] = (int32_t)((s >> 33) % (unsigned long long)c.vocab_size);
        }
    }
    gen_options go = gen_options_default();
    go.max_new_tokens = NEW; go.ignore_eos = 1;
    for (int k = 0; k < nbs; k++) {
        int B = bs[k];
        double tp[64], tt[64];
        for (int r = -1; r < reps; r++) {   // r = -1: warm-up (cuBLASLt plans)
            // prefill alone: B prompts packed in calls of `rows` rows
            double t0 = now_s();
            for (int i0 = 0; i0 < B * P; i0 += rows) {
                int n = B * P - i0 < rows ? B * P - i0 : rows, no = 0;
                for (int i = 0; i < n; i++) {
                    int b = (i0 + i) / P, t = (i0 + i) % P;
                    seq[i] = b; tok[i] = prompts[b][t]; pos[i] = t;
                    if (t == P - 1) orow[no++] = i;
                }
                if (cuda_decoder_forward_greedy(d, n, seq, tok, pos, no, orow, nxt) != HALO_OK) {
                    fprintf(stderr, "%s\n", halo_error()); return 1;
                }
            }
            double t1 = now_s();
            if (cuda_generate(d, B, (const int32_t *const *)prompts, plen, &go, outs, nout) != HALO_OK) {
                fprintf(stderr, "%s\n", halo_error()); return 1;
            }
            double t2 = now_s();
            if (r >= 0) { tp[r] = (t1 - t0) * 1e3; tt[r] = (t2 - t1) * 1e3; }
        }
        double pre = median(tp, reps), tot = median(tt, reps);
        // cuda_generate = prefill + (NEW - 1) decode steps (the first new token comes from the prefill's logits)
        double step = (tot - pre) / (NEW - 1);
        double dec_tps = B * 1e3 / step, e2e = (double)B * NEW * 1e3 / tot, gbs = step_bytes / (step * 1e-3) / 1e9;
        printf("| %d | %.2f | %.3f | %.0f | %.0f | %.0f |\n", B, pre, step, dec_tps, e2e, gbs);
        printf("{\"bench\": \"cuda_decode\", \"model\": \"%s\", \"layers\": %d, \"batch\": %d, \"prompt\": %d, \"new\": %d, "
               "\"prefill_ms\": %.3f, \"decode_ms_per_step\": %.4f, \"decode_tokens_per_s\": %.1f, "
               "\"end_to_end_tokens_per_s\": %.1f, \"weight_gb_per_s\": %.1f}\n",
               model, c.n_layers, B, P, NEW, pre, step, dec_tps, e2e, gbs);
    }
    for (int b = 0; b < bmax; b++) { free(prompts[b]); free(outs[b]); }
    free(prompts); free(outs); free(plen); free(nout); free(seq); free(nxt);
    cuda_decoder_free(d);
    llama_cuda_free(g);
    return 0;
#endif
}
