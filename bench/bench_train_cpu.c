// CPU training throughput: full steps (forward, backward, AdamW) on stories260K (if ../shared is present) and on a
// random-weight ~26M-parameter Llama, each fine-tuned whole and with LoRA adapters (r 16 on the seven block linears,
// base frozen), the random Llama also in HALO INT8 level 2; prints a table of tokens/s. Usage: build/bench/bench_train_cpu [steps]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <omp.h>
#include "model/llama.h"
#include "model/linear.h"
#include "model/lora.h"
#include "train/adamw.h"
#include "util/error.h"

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

static void bench(const char *name, llama_model *m, int B, int T, int steps) {
    halo_batch b;
    halo_batch_alloc(&b, B, T);
    unsigned long long s = 42;
    for (int i = 0; i < B * T; i++) { s = s * 6364136223846793005ULL + 1442695040888963407ULL; b.input_ids[i] = (int32_t)((s >> 33) % (unsigned)m->cfg.vocab_size); }
    halo_batch_shift_targets(&b);
    adamw_config ac = adamw_config_default();
    adamw_state opt;
    if (!m->lora) llama_alloc_grads(m);
    llama_trainable p = llama_trainable_params(m);   // the adapters with LoRA, else everything
    adamw_init(&opt, &ac, p.n, p.table, p.n_table);
    double t0 = 0, loss = 0;
    for (int i = 0; i <= steps; i++) {
        if (i == 1) t0 = now();   // step 0 is warm-up (allocation)
        llama_zero_grads(m);
        loss = llama_forward(m, &b, NULL);
        llama_backward(m, &b, 1.0f);
        adamw_step(&opt, p.params, p.grads, 1e-4f);
    }
    double dt = (now() - t0) / steps;
    printf("| %-32s | %8.2fM | %8.2fM | %3d x %-4d | %9.1f | %10.0f | %6.3f |\n", name, m->n_params / 1e6, p.n / 1e6, B, T,
           dt * 1e3, B * T / dt, loss);
    adamw_free(&opt);
    halo_batch_free(&b);
}

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 5;
    printf("CPU training step (forward + backward + AdamW), fp32 unless marked, %d threads, int8 kernel %s, mean of %d "
           "steps after 1 warm-up\n\n", omp_get_max_threads(), halo_gemm_s8_kernel(), steps);
    printf("| %-32s | %9s | %9s | %-10s | %9s | %10s | %6s |\n", "model", "params", "trained", "B x T", "ms/step",
           "tokens/s", "loss");
    printf("|----------------------------------|-----------|-----------|------------|-----------|------------|--------|\n");
    const lora_config lc = {.rank = 16, .alpha = 8, .dropout = 0.05, .kinds = (1u << LIN_COUNT) - 1};
    const char *sh = getenv("HALO_SHARED");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/stories260K", sh && *sh ? sh : "../shared");
    llama_model m;
    if (llama_load(&m, dir) == HALO_OK) {
        bench("stories260K", &m, 8, 256, steps);
        llama_lora_enable(&m, &lc, 1);
        bench("stories260K, LoRA r 16", &m, 8, 256, steps);
        llama_free(&m);
    }
    else printf("| stories260K skipped: %s |\n", halo_error());
    llama_config c = {.vocab_size = 32000, .dim = 384, .hidden_dim = 1152, .n_layers = 8, .n_heads = 6,
                      .n_kv_heads = 2, .head_dim = 64, .max_pos = 1024, .norm_eps = 1e-5f, .rope_theta = 10000.0f,
                      .tie_embeddings = 1, .bos_id = 1, .eos_id = 2};
    if (llama_init(&m, &c) != HALO_OK) { fprintf(stderr, "%s\n", halo_error()); return 1; }
    llama_init_random(&m, 1);
    bench("random Llama ~26M", &m, 4, 256, steps);
    model_halo_config hc = model_halo_config_default();   // the block linears in HALO INT8 level 2
    hc.prec = HALO_PREC_INT8; hc.level = 2;
    if (llama_set_halo(&m, &hc) != HALO_OK) { fprintf(stderr, "%s\n", halo_error()); return 1; }
    bench("random Llama ~26M, HALO INT8 L2", &m, 4, 256, steps);
    hc.prec = HALO_PREC_FP32;
    llama_set_halo(&m, &hc);
    llama_lora_enable(&m, &lc, 1);
    bench("random Llama ~26M, LoRA r 16", &m, 4, 256, steps);
    llama_free(&m);
    return 0;
}
