// Training-step benchmark of the GPU model on a random-weight Llama at real shapes: tokens/s, share of the measured
// BF16 matrix peak (6 N tokens + causal attention FLOPs), device memory, and a breakdown (forward, AdamW, the
// layer products, attention) that says where the time goes. Prints one JSON line last.
//   build/bench/bench_cuda_train --model llama3.2-1b --batch 4 --seq 2048
//   build/bench/bench_cuda_train --model llama3-8b --layers 4 --batch 4 --seq 2048
//   build/bench/bench_cuda_train --bf16-moments --bf16-grads --recompute-norms   (the smallest-memory full-speed setup)
//   build/bench/bench_cuda_train --precision int8 --halo-level 2 --steps 5 --profile-only   (HALO on every block linear)
//   ... --halo-breakdown: one step's HALO launches (absmax, quantizers, transposes, products) summed by kind
//   ... --no-ex-defer: levels 1-2 rotate each linear's input gradient instead of q/k/v's (gate/up's) sum once (A/B)
//   ... --lora R: LoRA adapters of rank R (alpha 8, dropout 0.05, all seven linears) on a frozen base (host model with
//       uniform random weights of the same spread, uploaded; the FLOP count drops the base's weight gradients);
//       --lora-dropout P sets the dropout (PEFT's default is 0)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef HALO_CUDA
#include <cuda_runtime_api.h>
#include <cuda_profiler_api.h>
#include "bench.h"
#include "cuda/cuda_backend.h"
#include "cuda/halo_cuda.h"
#include "model/llama.h"
#include "model/lora.h"
#include "util/error.h"


// Median milliseconds of `reps` runs of body, timed with device events (the device is synchronized before the end
// event because the model works on its own stream).
#define TIME_MS(reps, out, body) do { cudaEvent_t _a, _b; cudaEventCreate(&_a); cudaEventCreate(&_b); \
    double _t[64]; body; cudaDeviceSynchronize(); \
    for (int _r = 0; _r < (reps); _r++) { cudaEventRecord(_a, 0); body; cudaDeviceSynchronize(); cudaEventRecord(_b, 0); \
        cudaEventSynchronize(_b); \
        float _ms; cudaEventElapsedTime(&_ms, _a, _b); _t[_r] = _ms; } \
    out = median(_t, reps); cudaEventDestroy(_a); cudaEventDestroy(_b); } while (0)

static void *dev_rand(size_t n_bf16) {   // random bf16 data: never time on zeros
    halo_bf16 *h = malloc(2 * n_bf16);
    unsigned long long s = 1234567;
    for (size_t i = 0; i < n_bf16; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        float f = ((int)(s >> 40) % 2001 - 1000) * 1e-3f;
        cuda_f32_to_bf16_host(&h[i], &f, 1);
    }
    void *d;
    if (cudaMalloc(&d, 2 * n_bf16) != cudaSuccess) { fprintf(stderr, "out of memory\n"); exit(1); }
    cudaMemcpy(d, h, 2 * n_bf16, cudaMemcpyHostToDevice);
    free(h);
    return d;
}

// One training step with every HALO launch timed (halo_cuda_prof_*), summed by launch name, largest first.
static void halo_breakdown(llama_cuda *g, const halo_batch *b, const llama_cuda_adamw *h, int step) {
    enum { CAP = 16384, KINDS = 64 };
    static halo_cuda_prof_rec rec[CAP];
    struct { const char *name; double ms, bytes; int n; } k[KINDS];
    int nk = 0;
    halo_cuda_prof_enable(1);
    llama_cuda_train_step(g, b, h, step);
    halo_cuda_prof_enable(0);
    const int n = halo_cuda_prof_collect(rec, CAP);
    double tot = 0, gemm = 0;
    for (int i = 0; i < n; i++) {
        int j = 0;
        while (j < nk && strcmp(k[j].name, rec[i].name)) j++;
        if (j == nk) {
            if (nk == KINDS) continue;
            k[nk].name = rec[i].name; k[nk].ms = k[nk].bytes = 0; k[nk].n = 0; nk++;
        }
        k[j].ms += rec[i].ms; k[j].bytes += rec[i].bytes; k[j].n++;
        tot += rec[i].ms;
        if (strstr(rec[i].name, "gemm")) gemm += rec[i].ms;
    }
    for (int i = 0; i < nk; i++)   // largest first (insertion sort: a few dozen kinds)
        for (int j = i; j > 0 && k[j].ms > k[j - 1].ms; j--) { __typeof__(k[0]) t = k[j]; k[j] = k[j - 1]; k[j - 1] = t; }
    printf("HALO launches in one step (%d launches, %.1f ms = products %.1f + other %.1f; GB = bytes read + written)\n",
           n, tot, gemm, tot - gemm);
    printf("| launch | count | ms | GB | GB/s |\n|---|---|---|---|---|\n");
    for (int i = 0; i < nk; i++)
        printf("| %-30s | %5d | %7.2f | %7.2f | %6.0f |\n", k[i].name, k[i].n, k[i].ms, k[i].bytes * 1e-9,
               k[i].ms > 0 ? k[i].bytes / (k[i].ms * 1e-3) * 1e-9 : 0);
}
#endif

int main(int argc, char **argv) {
#ifndef HALO_CUDA
    (void)argc; (void)argv;
    printf("bench_cuda_train: built without CUDA\n");
    return 0;
#else
    const char *model = "llama3.2-1b";
    int layers = 0, B = 4, T = 2048, steps = 10, warmup = 3, recompute = 0, bf16m = 0, ce_chunk = 0, breakdown = 1;
    int bf16g = 0, rnorms = 0;
    int halo_level = -1, profile_only = 0, halo_bd = 0, token_block = 0, hm_block = 0, lora_rank = 0, delayed = 0;
    double lora_dropout = -1;
    const char *precision = "bf16";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--layers") && i + 1 < argc) layers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) B = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seq") && i + 1 < argc) T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ce-chunk") && i + 1 < argc) ce_chunk = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--recompute")) recompute = 1;
        else if (!strcmp(argv[i], "--recompute-mlp")) recompute = 2;
        else if (!strcmp(argv[i], "--bf16-moments")) bf16m = 1;
        else if (!strcmp(argv[i], "--bf16-grads")) bf16g = 1;
        else if (!strcmp(argv[i], "--recompute-norms")) rnorms = 1;
        else if (!strcmp(argv[i], "--no-breakdown")) breakdown = 0;
        else if (!strcmp(argv[i], "--profile-only")) profile_only = 1;
        else if (!strcmp(argv[i], "--halo-breakdown")) halo_bd = 1;
        else if (!strcmp(argv[i], "--precision") && i + 1 < argc) precision = argv[++i];
        else if (!strcmp(argv[i], "--halo-level") && i + 1 < argc) halo_level = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--halo-token-block") && i + 1 < argc) token_block = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--halo-hadamard-block") && i + 1 < argc) hm_block = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--halo-delayed-scaling")) delayed = 1;
        else if (!strcmp(argv[i], "--lora") && i + 1 < argc) lora_rank = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--lora-dropout") && i + 1 < argc) lora_dropout = atof(argv[++i]);
        else if (!strcmp(argv[i], "--no-ex-defer")) halo_cuda_ex_defer(0);   // A/B: each linear rotates its own E_X
        else if (!strcmp(argv[i], "--help")) {
            printf("usage: bench_cuda_train [--model llama3.2-1b|llama3-8b|llama2-7b|qwen2.5-0.5b|qwen3-0.6b] [--layers N] [--batch B] [--seq T] "
                   "[--steps N] [--recompute | --recompute-mlp] [--recompute-norms] [--bf16-moments] [--bf16-grads] [--ce-chunk TOKENS] [--no-breakdown | --profile-only] "
                   "[--precision bf16|int8|fp8] [--halo-level 0|1|2 (int8: 2, fp8: 0)] [--halo-token-block N] [--halo-hadamard-block N] [--halo-delayed-scaling] [--halo-breakdown] [--no-ex-defer] [--lora R] [--lora-dropout P]\n");
            return 0;
        } else { fprintf(stderr, "unknown argument %s\n", argv[i]); return 2; }
    }
    if (steps > 64) steps = 64;
    model_halo_config hc = model_halo_config_default();   // every block linear, per-tensor scales
    if (!strcmp(precision, "int8")) hc.prec = HALO_PREC_INT8;
    else if (!strcmp(precision, "fp8")) hc.prec = HALO_PREC_FP8;
    else if (strcmp(precision, "bf16")) { fprintf(stderr, "--precision: '%s' is not bf16, int8 or fp8\n", precision); return 2; }
    hc.level = halo_level >= 0 ? halo_level : hc.prec == HALO_PREC_INT8 ? 2 : 0;
    if (hc.prec == HALO_PREC_FP32) hc.level = 0;
    if (hc.level > 2) { fprintf(stderr, "--halo-level: %d is not 0, 1 or 2\n", hc.level); return 2; }
    hc.had_block_b = token_block;
    hc.had_block = hm_block;
    hc.delayed = delayed && hc.prec != HALO_PREC_FP32;
    if (cuda_device_count() <= 0) { printf("bench_cuda_train: no CUDA GPU present, skipped\n"); return 0; }
    llama_config c;
    if (bench_llama3_config(&c, model, layers, T > 4096 ? T : 4096)) return 2;
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("device: %s, %d SMs, %.1f GiB\n", prop.name, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);

    // the matrix ceiling: one large bf16 product through the same cuBLASLt path
    double peak_ms;
    {
        int S = 8192;
        void *X = dev_rand((size_t)S * S), *W = dev_rand((size_t)S * S), *Y;
        cudaMalloc(&Y, (size_t)S * S * 2);
        TIME_MS(10, peak_ms, cuda_linear_forward(Y, 0, X, W, NULL, S, S, S, 0));
        cudaFree(X); cudaFree(W); cudaFree(Y);
    }
    double peak = 2.0 * 8192.0 * 8192.0 * 8192.0 / (peak_ms * 1e-3);
    printf("measured bf16 matrix peak (8192^3 cuBLASLt): %.1f TFLOP/s\n", peak / 1e12);

    llama_cuda_opts o;
    memset(&o, 0, sizeof o);
    o.max_B = B; o.max_T = T; o.recompute = recompute; o.bf16_moments = bf16m; o.bf16_grads = bf16g; o.recompute_norms = rnorms; o.ce_chunk = ce_chunk; o.verbose = 1;
    o.halo = hc;
    llama_cuda *g;
    double t0 = now_s();
    llama_model host;   // LoRA: the adapters come from a host model
    memset(&host, 0, sizeof host);
    if (lora_rank > 0) {
        if (llama_init(&host, &c) != HALO_OK) { fprintf(stderr, "%s\n", halo_error()); return 1; }
        // uniform in +-0.0346 (standard deviation 0.02, as init_random's normal), one xorshift stream per tensor
        for (int t = 0; t < host.n_table; t++) {
            const llama_param *p = &host.table[t];
            float *d = host.params + p->offset;
            if (p->ndim == 1) { for (size_t j = 0; j < p->numel; j++) d[j] = 1.f; continue; }
            #pragma omp parallel for schedule(static)
            for (size_t j0 = 0; j0 < p->numel; j0 += 65536) {
                unsigned long long x = 0x9E3779B97F4A7C15ULL * (j0 + 1) + (unsigned long long)t;
                for (size_t j = j0; j < j0 + 65536 && j < p->numel; j++) {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                    d[j] = (float)(((x >> 11) * (1.0 / 9007199254740992.0) * 2 - 1) * 0.0346);
                }
            }
        }
        lora_config lc = lora_config_default();
        lc.rank = lora_rank;
        if (lora_dropout >= 0) lc.dropout = lora_dropout;
        if (llama_lora_enable(&host, &lc, 1) != HALO_OK || llama_cuda_init(&g, &host, &o) != HALO_OK) {
            fprintf(stderr, "%s\n", halo_error());
            return 1;
        }
    } else if (llama_cuda_init_random(&g, &c, 1, &o) != HALO_OK) { fprintf(stderr, "%s\n", halo_error()); return 1; }
    printf("init %.1f s\n", now_s() - t0);
    halo_batch b;
    halo_batch_alloc(&b, B, T);
    unsigned long long s = 42;
    for (int i = 0; i < B * T; i++) { s = s * 6364136223846793005ULL + 1; b.input_ids[i] = (int)((s >> 33) % c.vocab_size); }
    halo_batch_shift_targets(&b);
    llama_cuda_adamw h = {1e-5f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 0};
    double ts[64];
    float loss = 0;
    for (int i = 0; i < warmup + steps; i++) {
        if (i == warmup) cudaProfilerStart();   // the timed steps only, for a profiler started with a capture range
        double a = now_s();
        if (lora_rank > 0) llama_cuda_lora_train(g, 1, 1000 + i);   // dropout masks of a training step
        loss = llama_cuda_train_step(g, &b, &h, i + 1);
        if (i >= warmup) ts[i - warmup] = now_s() - a;
        if (i < warmup) printf("warmup step %d: loss %.4f, %.1f ms\n", i + 1, loss, (now_s() - a) * 1e3);
    }
    cudaProfilerStop();   // (each step has synchronized: it returned its loss)
    double step_s = median(ts, steps);
    size_t free_b, total_b;
    cudaMemGetInfo(&free_b, &total_b);
    double tok = (double)B * T, n = (double)llama_cuda_param_count(g);
    double attn = 6.0 * B * (double)T * T * c.n_heads * c.head_dim * c.n_layers;   // causal fwd + bwd
    double flops = (lora_rank > 0 ? 4.0 : 6.0) * n * tok + attn;   // LoRA: no base weight gradients
    printf("step %.1f ms (median of %d), loss %.4f\n", step_s * 1e3, steps, loss);
    printf("tokens/s %.0f | %.1f%% of measured bf16 peak (%.2f TFLOP/step, %.0f TFLOP/s achieved) | model bytes %.2f GiB"
           " | device used %.2f GiB\n", tok / step_s, 100.0 * flops / step_s / peak, flops / 1e12,
           flops / step_s / 1e12, llama_cuda_bytes(g) / 1073741824.0, (total_b - free_b) / 1073741824.0);

    if (halo_bd && hc.prec != HALO_PREC_FP32) halo_breakdown(g, &b, &h, warmup + steps + 1);
    if (breakdown || profile_only) {
        // device time by operation inside real steps (events around every launch; a little slower than untimed)
        llama_cuda_profile(g, 1);
        for (int i = 0; i < 2; i++) llama_cuda_train_step(g, &b, &h, warmup + steps + 1 + i);
        llama_cuda_profile_print(g);
        llama_cuda_profile(g, 0);
    }
    if (breakdown && !profile_only) {
        // where the time goes: forward alone, AdamW alone, and the model's products and attention in isolation
        double fwd_ms, adam_ms;
        TIME_MS(3, fwd_ms, llama_cuda_forward(g, &b, NULL));
        TIME_MS(3, adam_ms, llama_cuda_adamw_step(g, &h, 100));
        int N = B * T, D = c.dim, F = c.hidden_dim, QKV = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim, Q = c.n_heads * c.head_dim;
        size_t big = (size_t)N * (2 * F > QKV ? 2 * F : QKV);
        void *X = dev_rand(big), *Wt = dev_rand((size_t)2 * F * D), *Y = dev_rand(big);
        float *Wg;
        cudaMalloc((void **)&Wg, (size_t)2 * F * D * 4);
        cudaMemset(Wg, 0, (size_t)2 * F * D * 4);
        int shp[4][2] = {{D, QKV}, {Q, D}, {D, 2 * F}, {F, D}};   // (in, out) of qkv, o, gate|up, down
        double mm_ms = 0;
        for (int k = 0; k < 4; k++) {
            double f, dx, dw;
            TIME_MS(3, f, cuda_linear_forward(Y, 0, X, Wt, NULL, N, shp[k][0], shp[k][1], 0));
            TIME_MS(3, dx, cuda_linear_backward_dx(Y, X, Wt, N, shp[k][0], shp[k][1], 0));
            TIME_MS(3, dw, cuda_linear_backward_dw(Wg, X, Y, N, shp[k][0], shp[k][1], 0));
            double fl = 2.0 * N * shp[k][0] * shp[k][1];
            printf("  product %-6s [%d x %d] x %d: fwd %.3f dX %.3f dW %.3f ms (%.0f / %.0f / %.0f TFLOP/s)\n",
                   k == 0 ? "qkv" : k == 1 ? "o" : k == 2 ? "gateup" : "down", N, shp[k][0], shp[k][1], f, dx, dw,
                   fl / f / 1e9, fl / dx / 1e9, fl / dw / 1e9);
            mm_ms += f + dx + dw;
        }
        cudaFree(X); cudaFree(Wt); cudaFree(Y); cudaFree(Wg);
        // lm_head products for all tokens
        double lm_ms;
        {
            void *Xh = dev_rand((size_t)1024 * D), *Wh = dev_rand((size_t)c.vocab_size * D);
            float *L;
            cudaMalloc((void **)&L, (size_t)1024 * c.vocab_size * 4);
            double f;
            TIME_MS(3, f, cuda_linear_forward(L, 1, Xh, Wh, NULL, 1024, D, c.vocab_size, 0));
            lm_ms = 3 * f * N / 1024.0;   // fwd + dX + dW, about equal
            cudaFree(Xh); cudaFree(Wh); cudaFree(L);
        }
        double af, ab;
        {
            void *qkv = dev_rand((size_t)N * QKV), *out, *dout = dev_rand((size_t)N * Q), *dqkv, *scr;
            float *lse;
            cudaMalloc(&out, (size_t)N * Q * 2); cudaMalloc(&dqkv, (size_t)N * QKV * 2);
            cudaMalloc((void **)&lse, (size_t)N * c.n_heads * 4);
            cudaMalloc(&scr, cuda_attention_scratch_bytes(B, T, c.n_heads, c.n_kv_heads, c.head_dim));
            double fa = 2.0 * B * (double)T * T * c.n_heads * c.head_dim;
            for (int v = 0; v < CUDA_ATTN_FWD_VARIANTS; v++) {   // kernel variants side by side, then the defaults
                double t;
                cuda_attention_set_fwd_variant(v);
                TIME_MS(5, t, cuda_attention_forward(out, lse, qkv, NULL, B, T, c.n_heads, c.n_kv_heads, c.head_dim, 0));
                printf("  attention fwd variant %d: %.3f ms (%.0f TFLOP/s)\n", v, t, fa / t / 1e9);
            }
            cuda_attention_set_fwd_variant(-1);
            TIME_MS(5, af, cuda_attention_forward(out, lse, qkv, NULL, B, T, c.n_heads, c.n_kv_heads, c.head_dim, 0));
            for (int v = 0; v < CUDA_ATTN_BWD_VARIANTS; v++) {
                double t;
                cuda_attention_set_bwd_variant(v);
                TIME_MS(5, t, cuda_attention_backward(dqkv, scr, dout, out, lse, qkv, NULL, B, T, c.n_heads,
                                                      c.n_kv_heads, c.head_dim, 0));
                printf("  attention bwd variant %d: %.3f ms (%.0f TFLOP/s)\n", v, t, 2 * fa / t / 1e9);
            }
            cuda_attention_set_bwd_variant(-1);
            TIME_MS(5, ab, cuda_attention_backward(dqkv, scr, dout, out, lse, qkv, NULL, B, T, c.n_heads, c.n_kv_heads,
                                                   c.head_dim, 0));
            printf("  attention B%d T%d hd%d: fwd %.3f ms (%.0f TFLOP/s), bwd %.3f ms (%.0f TFLOP/s)\n", B, T,
                   c.head_dim, af, fa / af / 1e9, ab, 2 * fa / ab / 1e9);
            cudaFree(qkv); cudaFree(out); cudaFree(dout); cudaFree(dqkv); cudaFree(scr); cudaFree(lse);
        }
        double L = c.n_layers;
        printf("breakdown per step (ms): step %.1f = forward %.1f + backward %.1f + adamw %.1f\n", step_s * 1e3, fwd_ms,
               step_s * 1e3 - fwd_ms - adam_ms, adam_ms);
        printf("  layer products %.1f, lm_head products %.1f, attention %.1f, rest (norms, rope, swiglu, CE, "
               "copies, gaps) %.1f\n", mm_ms * L, lm_ms, (af + ab) * L,
               step_s * 1e3 - mm_ms * L - lm_ms - (af + ab) * L - adam_ms);
    }
    printf("{\"bench\": \"halo_cuda\", \"model\": \"%s\", \"layers\": %d, \"batch\": %d, \"seq\": %d, \"recompute\": %d, "
           "\"precision\": \"%s\", \"halo_level\": %d, \"token_block\": %d, \"hm_block\": %d, \"bf16_moments\": %d, \"bf16_grads\": %d, \"recompute_norms\": %d, \"ex_defer\": %d, \"gemm_tune\": %d, \"int8_own\": %d, \"int8_few_tiles_lt\": %d, \"int8_group\": %d, \"int8_stack\": %d, \"int8_y_stack\": %d, \"g_sumsq\": %d, \"pdl\": %d, \"ex_swiglu_amax\": %d, \"tok_fused\": %d, \"sum_fused\": %d, \"dnorm_f32\": %d, \"ey_codes_spec\": %d, \"delayed_scaling\": %d, \"lora\": %d, \"lora_dropout\": %g, \"params\": %.0f, \"step_ms\": %.2f, \"tokens_per_s\": %.0f, \"mfu_measured_peak\": %.4f, "
           "\"peak_tflops\": %.1f, \"model_gib\": %.2f, \"device_used_gib\": %.2f, \"loss\": %.4f}\n",
           model, c.n_layers, B, T, recompute, precision, hc.prec == HALO_PREC_FP32 ? -1 : hc.level, token_block, hm_block, bf16m, bf16g, rnorms, halo_cuda_ex_deferring(), halo_cuda_gemm_tuning(), halo_cuda_gemm_s8_owning(), halo_cuda_gemm_s8_few_tiles_lt_on(), halo_cuda_gemm_s8_dq_grouping(), halo_cuda_linear_g_stacking(), halo_cuda_linear_y_stacking(), llama_cuda_g_sumsq(), cuda_pdl(), llama_cuda_ex_swiglu_amax(), halo_cuda_tok_fusing(), halo_cuda_sum_fusing(), llama_cuda_dnorm_f32(), halo_cuda_ey_codes_spec_on(), hc.delayed, lora_rank, lora_rank > 0 ? (lora_dropout >= 0 ? lora_dropout : lora_config_default().dropout) : 0.0, n, step_s * 1e3, tok / step_s, flops / step_s / peak, peak / 1e12,
           llama_cuda_bytes(g) / 1073741824.0, (total_b - free_b) / 1073741824.0, loss);
    llama_cuda_free(g);
    if (lora_rank > 0) llama_free(&host);
    halo_batch_free(&b);
    cuda_matmul_shutdown();
    halo_cuda_gemm_shutdown();
    return 0;
#endif
}
