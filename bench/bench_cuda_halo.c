// Per-layer benchmark of the HALO GPU linear at Llama-3-8B shapes (default 8192 tokens): forward + both backward
// products for cuBLASLt BF16 and for HALO FP8 / INT8 at levels 0, 1, 2, median of CUDA-event-timed runs after warm-up
// (--back-to-back: of batches of runs queued without a wait), rotating among 3 input sets so L2 does not flatter. The
// 8-bit products alone are timed too, so the share of rotation / quantization / transposes is total - products.
// Prints a table last.
// --breakdown instead times every launch inside one layer's forward + backward (halo_cuda_prof_*: CUDA events around
// each kernel) for FP8 and INT8 at levels 0, 1, 2 and prints ms, the launch's byte floor and GB/s per kernel.
//   build/bench/bench_cuda_halo [--tokens 8192] [--reps 20] [--shape q|k|gate|down|all] [--breakdown] [--back-to-back]
//                               [--generic-rows] [--l2-transposes] [--rot-twice] [--bwd-transposes] [--token-block N]
//                               [--hm-block N]
//   (--generic-rows: rotated rows through the generic one-row-per-block kernel k_rows, for an A/B with k_rot;
//    --l2-transposes: level 2 rotates E_Y and the E_X product over tokens by transpose, rotated rows, transpose
//    back instead of the column kernels, halo_cuda_l2_colrot(0); --rot-twice: rotated quantizations rotate in both
//    passes instead of once into scratch, halo_cuda_rot_once(0); --bwd-transposes: levels 1-2 save row-major codes
//    and transpose them in backward, halo_cuda_fwd_tcodes(0); all for an A/B; --token-block N: level 2's token
//    Hadamard block-diagonal in blocks of N tokens, halo_cuda_linear_token_block, the --halo-token-block option;
//    --hm-block N: H_m block-diagonal in blocks of N in_features, halo_cuda_linear_hm_block, --halo-hadamard-block)
// --as-in-step: each layer as the training step runs it (src/cuda/llama_cuda.cu): the weight gradient written, not
// added (G = dW: the step's first micro-batch; BF16 through cuda_linear_backward_dw_set, HALO with HALO_CUDA_G_SET),
// and HALO's amaxes of X (level 0) and E_Y handed in as the producers (RMSNorm, SwiGLU, the RoPE backward, ...)
// compute them (HALO_CUDA_X_AMAX, HALO_CUDA_EY_AMAX): copied into the layer's slots before each run (two 4-byte copies
// in the timing) instead of the layer's own absmax passes. The producers' extra work is not in these numbers.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef HALO_CUDA
#include <cuda_runtime_api.h>
#include "bench.h"
#include "cuda/halo_cuda.h"
#include "halo/halo_linear.h"
#include "util/error.h"

enum { NSETS = 3 };
static int g_token_block;   // --token-block
static int g_hm_block;      // --hm-block


static int g_sync_each = 1;  // 0 with --back-to-back
static int g_as_step;        // --as-in-step

// ms of one run of body(r) (r = run index, for rotating inputs), after 3 warm-up runs: by default the median of reps
// runs, each between two events and a synchronization (the host's launch latency of the first kernels counts); with
// --back-to-back the median over 3 batches of reps runs queued without a wait (as a training step queues its layers;
// the GPU also stays hotter: on the H200 the two methods differed by up to 10% either way, dev/cuda/HALO_NOTES.md
// Run 17).
#define TIME_MS(reps, out, body) do { cudaEvent_t _a, _b; cudaEventCreate(&_a); cudaEventCreate(&_b); \
    double _t[256]; int r; for (r = 0; r < 3; r++) { body; } cudaDeviceSynchronize(); \
    const int _nb = g_sync_each ? (reps) : 3, _per = g_sync_each ? 1 : (reps); \
    for (int _i = 0; _i < _nb; _i++) { cudaEventRecord(_a, 0); \
        for (int _j = 0; _j < _per; _j++) { r = _i * _per + _j; body; } \
        cudaEventRecord(_b, 0); cudaEventSynchronize(_b); float _ms; cudaEventElapsedTime(&_ms, _a, _b); \
        _t[_i] = _ms / _per; } \
    qsort(_t, _nb, sizeof(double), cmp_d); out = _t[_nb / 2]; cudaEventDestroy(_a); cudaEventDestroy(_b); \
    cudaError_t _e = cudaGetLastError(); if (_e != cudaSuccess) { fprintf(stderr, "CUDA: %s\n", cudaGetErrorString(_e)); exit(1); } \
    } while (0)

static void *dev_alloc(size_t bytes) {
    void *d;
    if (cudaMalloc(&d, bytes) != cudaSuccess) { fprintf(stderr, "out of device memory (%zu bytes)\n", bytes); exit(1); }
    return d;
}
// *amax (may be NULL): max |v| of the bf16 values written
static void *dev_rand_bf16(size_t n, float sd, unsigned long long seed, float *amax) {   // never time on zeros
    halo_bf16 *h = malloc(2 * n);
    float a = 0;
    unsigned long long s = seed;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        float f = sd * (float)(((int)(s >> 40) % 2001 - 1000) * 1e-3);
        if ((i * 2654435761u) % 4099 == 0) f *= 50;   // a few outliers, as real activations have
        cuda_f32_to_bf16_host(&h[i], &f, 1);
        float back;
        cuda_bf16_to_f32_host(&back, &h[i], 1);
        if (fabsf(back) > a) a = fabsf(back);
    }
    if (amax) *amax = a;
    void *d = dev_alloc(2 * n);
    cudaMemcpy(d, h, 2 * n, cudaMemcpyHostToDevice);
    free(h);
    return d;
}

// Codes for the products-only timing, like a quantized tensor's (uniform values at a quarter of the format's range:
// the rms of a rotated tensor's codes): constant codes draw less power (gate's INT8 products 1.68 ms on them, 2.09-2.13
// on these, H200).
static void fill_codes(uint8_t *d, size_t n, int fp8, unsigned long long seed) {
    uint8_t *h = malloc(n);
    unsigned long long s = seed;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        const float u = (float)(((int)(s >> 40) % 2001 - 1000) * 1e-3);
        h[i] = fp8 ? halo_fp8_encode(u * 112.f, HALO_Q_E4M3, 1) : (uint8_t)(int8_t)lrintf(u * 64.f);
    }
    cudaMemcpy(d, h, n, cudaMemcpyHostToDevice);
    free(h);
}

enum { BD_MAX = 128 };

// Per-launch medians over reps profiled runs of one layer's forward + backward (inputs rotating as in the table).
static void breakdown(const char *shape, int prec, int lvl, int b, int m, int n, void **X, void **W, void **EY,
                      void *Y, void *EX, float *G, int reps) {
    halo_cuda_linear L;
    if (halo_cuda_linear_init(&L, prec, lvl, shape)) { fprintf(stderr, "%s\n", halo_error()); exit(1); }
    halo_cuda_linear_token_block(&L, g_token_block);
    halo_cuda_linear_hm_block(&L, g_hm_block);
    static float t[256][BD_MAX];
    halo_cuda_prof_rec rec[BD_MAX];
    int nrec = 0, fail = 0;
    for (int r = -3; r < reps; r++) {   // 3 warm-up runs (plans, workspace growth)
        const int k = (r + 3) % NSETS;
        halo_cuda_prof_enable(r >= 0);
        fail |= halo_cuda_linear_forward(&L, X[k], W[k], Y, 0, b, m, n, 0);
        fail |= halo_cuda_linear_backward(&L, EY[k], EX, 0, G, b, m, n, 0);
        halo_cuda_prof_enable(0);
        if (r < 0) { halo_cuda_prof_collect(rec, 0); continue; }
        nrec = halo_cuda_prof_collect(rec, BD_MAX);
        for (int i = 0; i < nrec; i++) t[r][i] = rec[i].ms;
    }
    if (fail) { fprintf(stderr, "halo L%d: %s\n", lvl, halo_error()); exit(1); }
    const char *pn = prec == HALO_PREC_FP8 ? "fp8" : "int8";
    printf("\nbreakdown %s n=%d m=%d b=%d %s L%d (median of %d; GB = the launch's bytes read + written)\n", shape, n,
           m, b, pn, lvl, reps);
    printf("| # | launch | ms | GB | GB/s |\n|---|---|---|---|---|\n");
    double tot = 0, prod = 0, bytes_other = 0;
    for (int i = 0; i < nrec; i++) {
        double v[256];
        for (int r = 0; r < reps; r++) v[r] = t[r][i];
        qsort(v, reps, sizeof(double), cmp_d);
        const double ms = v[reps / 2];
        tot += ms;
        if (strstr(rec[i].name, "gemm")) prod += ms;
        else bytes_other += rec[i].bytes;
        printf("| %2d | %-30s | %7.4f | %7.4f | %6.0f |\n", i, rec[i].name, ms, rec[i].bytes * 1e-9,
               ms > 0 ? rec[i].bytes / (ms * 1e-3) * 1e-9 : 0);
    }
    printf("breakdown %s %s L%d: sum %.3f ms = gemms %.3f ms + other %.3f ms (other moves %.3f GB: %.0f GB/s overall)\n",
           shape, pn, lvl, tot, prod, tot - prod, bytes_other * 1e-9,
           tot > prod ? bytes_other / ((tot - prod) * 1e-3) * 1e-9 : 0);
    halo_cuda_linear_free(&L);
}

// One forward + backward of the layer on input set k: plain (G += dW, the layer's own absmax passes), or as in the
// training step (as_step: G = dW; the producers' amaxes of X[k] and EY[k] copied into the layer's slots in stream
// order, as the producer kernels write them). Returns non-zero on failure (halo_error()).
static int run_layer(halo_cuda_linear *L, int as_step, void **X, void **W, void **EY, const float *amax_d, int k,
                     void *Y, void *EX, float *G, int b, int m, int n) {
    int fail = 0;
    if (as_step) cudaMemcpyAsync(halo_cuda_linear_x_amax(L), amax_d + k, 4, cudaMemcpyDeviceToDevice, 0);
    fail |= halo_cuda_linear_forward_flags(L, X[k], W[k], Y, 0, n, NULL, as_step ? HALO_CUDA_X_AMAX : 0, b, m, n, 0);
    if (as_step) cudaMemcpyAsync(halo_cuda_linear_ey_amax(L), amax_d + NSETS + k, 4, cudaMemcpyDeviceToDevice, 0);
    fail |= halo_cuda_linear_backward_flags(L, EY[k], n, EX, 0, G, as_step ? HALO_CUDA_EY_AMAX | HALO_CUDA_G_SET : 0,
                                            b, m, n, 0);
    return fail;
}

// --as-in-step's flags change where the amaxes come from, not the arithmetic: Y, E_X and G of input set 0 must equal
// the plain calls' bit for bit (G: set vs added into zeros). Returns 1 (with a message) when they do not.
static int same_as_plain(halo_cuda_linear *L, void **X, void **W, void **EY, const float *amax_d, void *Y, void *EX,
                         float *G, int b, int m, int n) {
    const size_t ny = 2 * (size_t)b * n, nx = 2 * (size_t)b * m, ng = 4 * (size_t)n * m;
    unsigned char *ref = malloc(ny + nx + ng), *got = malloc(ny + nx + ng);
    int fail = 0;
    for (int pass = 0; pass < 2; pass++) {
        unsigned char *h = pass ? got : ref;
        cudaMemset(G, 0, ng);
        fail |= run_layer(L, pass, X, W, EY, amax_d, 0, Y, EX, G, b, m, n);
        cudaMemcpy(h, Y, ny, cudaMemcpyDeviceToHost);
        cudaMemcpy(h + ny, EX, nx, cudaMemcpyDeviceToHost);
        cudaMemcpy(h + ny + nx, G, ng, cudaMemcpyDeviceToHost);
    }
    const int same = !fail && !memcmp(ref, got, ny + nx + ng);
    if (!same) fprintf(stderr, "--as-in-step: Y, E_X, G differ from the plain calls' (%s)\n", fail ? halo_error() : "bits");
    free(ref); free(got);
    return !same;
}
#endif

int main(int argc, char **argv) {
#ifndef HALO_CUDA
    (void)argc; (void)argv;
    printf("bench_cuda_halo: built without CUDA\n");
    return 0;
#else
    int tokens = 8192, reps = 20;
    const char *only = "all";
    int bd = 0, colrot = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokens") && i + 1 < argc) tokens = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--breakdown")) bd = 1;
        else if (!strcmp(argv[i], "--back-to-back")) g_sync_each = 0;
        else if (!strcmp(argv[i], "--as-in-step")) g_as_step = 1;
        else if (!strcmp(argv[i], "--generic-rows")) halo_cuda_rows_fast(0);   // A/B: the old rotated-row kernel only
        else if (!strcmp(argv[i], "--l2-transposes")) colrot = 0;               // A/B: level 2 without column kernels
        else if (!strcmp(argv[i], "--rot-twice")) halo_cuda_rot_once(0);       // A/B: rotate in absmax and quant passes
        else if (!strcmp(argv[i], "--bwd-transposes")) halo_cuda_fwd_tcodes(0);  // A/B: levels 1-2 transpose codes in backward
        else if (!strcmp(argv[i], "--token-block") && i + 1 < argc) g_token_block = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--hm-block") && i + 1 < argc) g_hm_block = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rows-threads") && i + 1 < argc) halo_cuda_rows_threads(atoi(argv[++i]));   // A/B
        else {
            printf("usage: bench_cuda_halo [--tokens N] [--reps R] [--shape q|k|gate|down|all] [--breakdown] [--back-to-back] [--as-in-step] [--generic-rows] [--l2-transposes] [--rot-twice] [--bwd-transposes] [--rows-threads N] [--token-block N] [--hm-block N]\n");
            return 0;
        }
    }
    if (reps > 256) reps = 256;
    halo_cuda_l2_colrot(colrot);   // explicit either way, so HALO_CUDA_L2_COLROT in the environment does not decide
    printf("level 2 token rotations of E_Y and E_X: %s\n",
           colrot ? "column kernels" : "transpose, rows, transpose (--l2-transposes)");
    if (g_token_block) printf("level 2 token Hadamard: block-diagonal, blocks of %d tokens (--token-block)\n", g_token_block);
    if (g_hm_block) printf("H_m: block-diagonal, blocks of %d in_features (--hm-block)\n", g_hm_block);
    if (g_as_step)
        printf("as in the training step (--as-in-step): G = dW (BF16 and HALO), X's and E_Y's amaxes from their "
               "producers\n");
    if (cuda_device_count() == 0) { printf("bench_cuda_halo: no CUDA device\n"); return 0; }
    struct { const char *name; int n, m; } shapes[] = {
        {"q", 4096, 4096}, {"k", 1024, 4096}, {"gate", 14336, 4096}, {"down", 4096, 14336}};
    char table[64][200];
    int nt = 0;
    const int b = tokens;
    const long b16 = (b + 15) / 16 * 16;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        if (strcmp(only, "all") && strcmp(only, shapes[si].name)) continue;
        const int n = shapes[si].n, m = shapes[si].m;
        const double flops = 6.0 * b * m * n;
        void *X[NSETS], *W[NSETS], *EY[NSETS];
        float amax_h[2 * NSETS];   // max |X[k]|, then max |EY[k]| (--as-in-step: the producers' amaxes)
        for (int k = 0; k < NSETS; k++) {
            X[k] = dev_rand_bf16((size_t)b * m, 1.0f, 11 + k, &amax_h[k]);
            W[k] = dev_rand_bf16((size_t)n * m, 0.02f, 21 + k, NULL);
            EY[k] = dev_rand_bf16((size_t)b * n, 1e-3f, 31 + k, &amax_h[NSETS + k]);
        }
        float *amax_d = dev_alloc(sizeof amax_h);
        cudaMemcpy(amax_d, amax_h, sizeof amax_h, cudaMemcpyHostToDevice);
        void *Y = dev_alloc(2 * (size_t)b * n), *EX = dev_alloc(2 * (size_t)b * m);
        float *G = dev_alloc(4 * (size_t)n * m);
        cudaMemset(G, 0, 4 * (size_t)n * m);
        if (bd) {
            for (int prec = HALO_PREC_FP8; prec >= HALO_PREC_INT8; prec--)
                for (int lvl = 0; lvl < 3; lvl++) breakdown(shapes[si].name, prec, lvl, b, m, n, X, W, EY, Y, EX, G, reps);
            for (int k = 0; k < NSETS; k++) { cudaFree(X[k]); cudaFree(W[k]); cudaFree(EY[k]); }
            cudaFree(Y); cudaFree(EX); cudaFree(G);
            continue;
        }
        double t_bf16;
        TIME_MS(reps, t_bf16, {
            int k = r % NSETS;
            cuda_linear_forward(Y, 0, X[k], W[k], NULL, b, m, n, 0);
            cuda_linear_backward_dx(EX, EY[k], W[k], b, m, n, 0);
            if (g_as_step) cuda_linear_backward_dw_set(G, EY[k], X[k], b, m, n, 0);
            else cuda_linear_backward_dw(G, EY[k], X[k], b, m, n, 0);
        });
        printf("%-5s n=%-5d m=%-5d b=%d  bf16 fwd+bwd %.3f ms (%.0f TFLOP/s)\n", shapes[si].name, n, m, b, t_bf16,
               flops / t_bf16 * 1e-9);
        nt += snprintf(table[nt], 200, "| %-5s %5dx%-5d | bf16   | - | %8.3f | %6.0f | 1.00 | - | - |", shapes[si].name, n, m,
                       t_bf16, flops / t_bf16 * 1e-9) > 0;
        // codes for the product-only timing
        uint8_t *qa = dev_alloc((size_t)b * (m > n ? m : n) + 256), *qb = dev_alloc((size_t)n * m + 256);
        uint8_t *qc = dev_alloc((size_t)n * b16 + 256), *qd = dev_alloc((size_t)m * b16 + 256);
        float *alpha = dev_alloc(16);
        const float one[4] = {1e-3f, 1e-3f, 1e-3f, 1e-3f};
        cudaMemcpy(alpha, one, sizeof one, cudaMemcpyHostToDevice);
        void *T = dev_alloc(4 * (size_t)b * (m > n ? m : n) + 4 * (size_t)n * m);
        for (int prec = HALO_PREC_FP8; prec >= HALO_PREC_INT8; prec--) {
            const int fp8 = prec == HALO_PREC_FP8;
            fill_codes(qa, (size_t)b * (m > n ? m : n), fp8, 41); fill_codes(qb, (size_t)n * m, fp8, 42);
            fill_codes(qc, (size_t)n * b16, fp8, 43); fill_codes(qd, (size_t)m * b16, fp8, 44);
            double t_prod;
            TIME_MS(reps, t_prod, {
                (void)r;
                if (fp8) {
                    halo_cuda_gemm_fp8(Y, 0, n, qa, m, qb, m, b, n, m, alpha, 0, 0);
                    halo_cuda_gemm_fp8(EX, 0, m, qa, n, qb, n, b, m, n, alpha, 0, 0);
                    halo_cuda_gemm_fp8(G, 1, m, qc, b16, qd, b16, n, m, (int)b16, alpha, 1, 0);
                } else {
                    halo_cuda_gemm_s8(T, n, (const int8_t *)qa, m, (const int8_t *)qb, m, b, n, m, 0);
                    halo_cuda_gemm_s8(T, m, (const int8_t *)qa, n, (const int8_t *)qb, n, b, m, n, 0);
                    halo_cuda_gemm_s8(T, m, (const int8_t *)qc, b16, (const int8_t *)qd, b16, n, m, (int)b16, 0);
                }
            });
            printf("      %s products only: %.3f ms (%.0f TOP/s), %.2fx bf16\n", fp8 ? "fp8" : "int8", t_prod,
                   flops / t_prod * 1e-9, t_bf16 / t_prod);
            for (int lvl = 0; lvl < 3; lvl++) {
                halo_cuda_linear L;
                if (halo_cuda_linear_init(&L, prec, lvl, shapes[si].name)) { fprintf(stderr, "%s\n", halo_error()); return 1; }
                halo_cuda_linear_token_block(&L, g_token_block);
                halo_cuda_linear_hm_block(&L, g_hm_block);
                int fail = 0;
                double t;
                if (g_as_step) fail |= same_as_plain(&L, X, W, EY, amax_d, Y, EX, G, b, m, n);
                TIME_MS(reps, t, { fail |= run_layer(&L, g_as_step, X, W, EY, amax_d, r % NSETS, Y, EX, G, b, m, n); });
                if (fail) { fprintf(stderr, "halo %s L%d: %s\n", fp8 ? "fp8" : "int8", lvl, halo_error()); return 1; }
                double share = t > t_prod ? (t - t_prod) / t : 0;
                printf("      halo %-4s L%d fwd+bwd %.3f ms, %.2fx bf16, rotation/quantization share %.0f%%\n",
                       fp8 ? "fp8" : "int8", lvl, t, t_bf16 / t, 100 * share);
                nt += snprintf(table[nt], 200, "| %-5s %5dx%-5d | %-6s | %d | %8.3f | %6.0f | %.2f | %8.3f | %3.0f%% |",
                               shapes[si].name, n, m, fp8 ? "fp8" : "int8", lvl, t, flops / t * 1e-9, t_bf16 / t, t_prod,
                               100 * share) > 0;
                halo_cuda_linear_free(&L);
            }
        }
        for (int k = 0; k < NSETS; k++) { cudaFree(X[k]); cudaFree(W[k]); cudaFree(EY[k]); }
        cudaFree(Y); cudaFree(EX); cudaFree(G); cudaFree(qa); cudaFree(qb); cudaFree(qc); cudaFree(qd);
        cudaFree(alpha); cudaFree(T); cudaFree(amax_d);
    }
    if (bd) { halo_cuda_gemm_shutdown(); return 0; }
    printf("\nHALO per-layer fwd + both bwd products, %d tokens, %s %d%s (targets: fp8 L0 >= 1.40x, int8 L2 >= 1.30x)\n",
           tokens, g_sync_each ? "median of" : "median of 3 batches of back-to-back runs (--back-to-back),",
           reps, g_as_step ? ", as in the training step" : "");
    printf("| layer n x m | path | L | ms | TFLOP/s | x bf16 | 8-bit products ms | rot/quant share |\n");
    printf("|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < nt; i++) printf("%s\n", table[i]);
    halo_cuda_gemm_shutdown();
    cuda_matmul_shutdown();
    return 0;
#endif
}
