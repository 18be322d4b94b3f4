// INT8 products with the dequantization in the epilogue (own wgmma kernel, int8_gemm.cu) against what HALO ran before
// it: cuBLASLt's int32 product (timed algorithm choice, halo_gemm.cu) followed by halo_cuda_dequant_i32. Shapes of
// HALO's products at Llama-3.2-1B and Llama-3-8B with 8192 tokens, in each product's output form (bf16 Y, fp32 with
// the residual, fp32 accumulation). Median of reps timed calls each; the outputs are compared bit for bit. Then the
// groups of products summed into one input gradient, one by one against one grouped launch, and the weight gradients
// stacked by rows and the forward products by columns, one by one against one stacked launch. Last, what the
// epilogue's memory traffic costs: the own kernel as it runs against the same call with D cut to 2 x 2 (every tile
// still converts its accumulators; only the loads and stores of D and the residual go), over K at 8192 x 8192.
//   build/bench/bench_cuda_int8 [--reps 20]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef HALO_CUDA
#include <cuda_runtime_api.h>
#include "bench.h"
#include "cuda/halo_cuda.h"

typedef struct { const char *name; int M, N, K, form; } shape;   // form: 0 bf16, 1 fp32, 2 fp32 +=, 3 fp32 res +
static const shape SHAPES[] = {
    {"8B Y gate/up", 8192, 14336, 4096, 0}, {"8B Y down (+res)", 8192, 4096, 14336, 3},
    {"8B Y q/o", 8192, 4096, 4096, 0},      {"8B E_X gate (+=)", 8192, 4096, 14336, 2},
    {"8B E_X down", 8192, 14336, 4096, 1},  {"1B Y gate/up", 8192, 8192, 2048, 0},
    {"1B Y q/o", 8192, 2048, 2048, 0},      {"1B Y k/v", 8192, 512, 2048, 0},
    {"1B Y down (+res)", 8192, 2048, 8192, 3}, {"1B E_X gate (+=)", 8192, 2048, 8192, 2},
    {"1B E_X down", 8192, 8192, 2048, 1},   {"1B E_X k/v (+=)", 8192, 2048, 512, 2},
    {"1B G gate", 8192, 2048, 8192, 1},     {"1B G q/o", 2048, 2048, 8192, 1},
    {"1B G k/v", 512, 2048, 8192, 1},       {"1B E_X k/v", 8192, 2048, 512, 1},
    {"1B E_X q", 8192, 2048, 2048, 1},      {"1B E_X q (+=)", 8192, 2048, 2048, 2},
};
static const char *FORM[4] = {"bf16", "fp32", "fp32 +=", "fp32 res +"};

#define CK(x) do { cudaError_t _e = (x); if (_e != cudaSuccess) { \
    fprintf(stderr, "CUDA %s: %s\n", #x, cudaGetErrorString(_e)); exit(1); } } while (0)

typedef struct { const shape *s; int8_t *A, *B; int32_t *C; void *D; float *R, *alpha; int own; } call;

static int run(const call *c) {
    const shape *s = c->s;
    const int f32 = s->form > 0, acc = s->form == 2;
    const float *res = s->form == 3 ? c->R : NULL;
    if (c->own)
        return halo_cuda_gemm_s8_dq(c->D, f32, s->N, res, acc, c->A, s->K, c->B, s->K, s->M, s->N, s->K, s->M, s->N,
                                    c->alpha, NULL, 0);
    if (halo_cuda_gemm_s8(c->C, s->N, c->A, s->K, c->B, s->K, s->M, s->N, s->K, 0)) return -1;
    if (res) halo_cuda_dequant_i32_res(c->D, s->N, c->C, s->N, s->M, s->N, c->alpha, res, 0);
    else halo_cuda_dequant_i32(c->D, f32, s->N, c->C, s->N, s->M, s->N, c->alpha, NULL, NULL, acc, 0);
    return 0;
}

static int run_ctx(const void *c) { return run((const call *)c); }
// the own kernel with D cut to its first 2 x 2 (Mo = No = 2): the epilogue's global traffic gone, its arithmetic kept
static int run_cut(const void *v) {
    const call *c = v;
    const shape *s = c->s;
    return halo_cuda_gemm_s8_dq(c->D, s->form > 0, s->N, s->form == 3 ? c->R : NULL, s->form == 2, c->A, s->K, c->B,
                                s->K, s->M, s->N, s->K, 2, 2, c->alpha, NULL, 0);
}
// the int32 product alone, without the dequantize
static int run_i32(const void *v) {
    const call *c = v;
    const shape *s = c->s;
    return halo_cuda_gemm_s8(c->C, s->N, c->A, s->K, c->B, s->K, s->M, s->N, s->K, 0);
}

static void fill(void *d, size_t n, unsigned long long seed) {
    int8_t *h = malloc(n);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        h[i] = (int8_t)((int)((seed >> 33) % 255) - 127);
    }
    CK(cudaMemcpy(d, h, n, cudaMemcpyHostToDevice));
    free(h);
}

// Whether two device buffers hold the same n bytes (after the stream's work)
static int same_bytes(const void *a, const void *b, size_t n) {
    CK(cudaDeviceSynchronize());
    unsigned char *h1 = malloc(n), *h2 = malloc(n);
    CK(cudaMemcpy(h1, a, n, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(h2, b, n, cudaMemcpyDeviceToHost));
    const int same = !memcmp(h1, h2, n);
    free(h1); free(h2);
    return same;
}
// Times `one` on a and `joint` on b (median ms of reps into *t1, *t2), runs each once more and returns whether both
// succeeded with the same n bytes in their outputs da and db
static int time_and_compare(int (*one)(const void *), const void *a, const void *da, int (*joint)(const void *),
                            const void *b, const void *db, size_t n, int reps, double *t1, double *t2) {
    *t1 = bench_gpu_ms(one, a, 3, reps);
    *t2 = bench_gpu_ms(joint, b, 3, reps);
    const int rc = one(a) | joint(b);
    return !rc && same_bytes(da, db, n);
}

// Groups of products summed into one fp32 input gradient (q, k, v; gate, up): one by one (the first =, the rest +=,
// as the layers ran them before) against one grouped launch (halo_cuda_gemm_s8_dq_group)
typedef struct { const char *name; int M, N, n, K[4]; } group;
static const group GROUPS[] = {
    {"1B E_X q+k+v", 8192, 2048, 3, {2048, 512, 512}}, {"1B E_X gate+up", 8192, 2048, 2, {8192, 8192}},
    {"8B E_X q+k+v", 8192, 4096, 3, {4096, 1024, 1024}}, {"8B E_X gate+up", 8192, 4096, 2, {14336, 14336}}};
typedef struct { const group *g; halo_cuda_s8_seg seg[4]; float *D; } group_call;
static int run_one_by_one(const void *v) {
    const group_call *c = v;
    int rc = 0;
    for (int i = 0; i < c->g->n; i++)
        rc |= halo_cuda_gemm_s8_dq(c->D, 1, c->g->N, NULL, i > 0, c->seg[i].A, c->seg[i].lda, c->seg[i].B, c->seg[i].ldb,
                                   c->g->M, c->g->N, c->seg[i].K, c->g->M, c->g->N, c->seg[i].alpha, NULL, 0);
    return rc;
}
static int run_grouped(const void *v) {
    const group_call *c = v;
    return halo_cuda_gemm_s8_dq_group(c->D, c->g->N, 0, c->seg, c->g->n, c->g->M, c->g->N, c->g->M, c->g->N, NULL, 0);
}

// the group table; returns the number of groups whose outputs differ
static int bench_groups(int reps, float *const alphas[4]) {
    printf("\n| group | M x N | K | one by one ms | grouped ms | TOP/s grouped | one by one / grouped | identical |\n"
           "|---|---|---|---|---|---|---|---|\n");
    int fails = 0;
    for (size_t k = 0; k < sizeof GROUPS / sizeof GROUPS[0]; k++) {
        const group *g = &GROUPS[k];
        group_call c = {g, {{0}}, NULL}, c2;
        const size_t ob = 4 * (size_t)g->M * g->N;
        char ks[64] = "";
        double ops = 0;
        for (int i = 0; i < g->n; i++) {
            int8_t *A, *B;
            CK(cudaMalloc((void **)&A, (size_t)g->M * g->K[i])); CK(cudaMalloc((void **)&B, (size_t)g->N * g->K[i]));
            fill(A, (size_t)g->M * g->K[i], 200 + 10 * k + i); fill(B, (size_t)g->N * g->K[i], 300 + 10 * k + i);
            c.seg[i] = (halo_cuda_s8_seg){A, B, g->K[i], g->K[i], g->K[i], alphas[i]};
            snprintf(ks + strlen(ks), sizeof ks - strlen(ks), "%s%d", i ? "+" : "", g->K[i]);
            ops += 2.0 * g->M * g->N * g->K[i];
        }
        CK(cudaMalloc((void **)&c.D, ob));
        c2 = c;
        CK(cudaMalloc((void **)&c2.D, ob));
        if (!halo_cuda_gemm_s8_dq_group_ok(c.D, g->N, c.seg, g->n, g->M, g->N, g->M, g->N)) {
            printf("| %s | %dx%d | %s | grouped kernel refuses the shapes |\n", g->name, g->M, g->N, ks);
        } else {
            double t1, tg;
            const int same = time_and_compare(run_one_by_one, &c2, c2.D, run_grouped, &c, c.D, ob, reps, &t1, &tg);
            fails += !same;
            printf("| %s | %dx%d | %s | %.3f | %.3f | %.0f | %.2fx | %s |\n", g->name, g->M, g->N, ks, t1, tg,
                   ops / (tg * 1e-3) / 1e12, t1 / tg, same ? "yes" : "NO");
        }
        for (int i = 0; i < g->n; i++) { cudaFree((void *)c.seg[i].A); cudaFree((void *)c.seg[i].B); }
        cudaFree(c.D); cudaFree(c2.D);
    }
    return fails;
}

// Weight gradients stacked by rows (q, k, v: one [n_q + n_k + n_v][m] fp32 buffer) and forward products by columns
// (cols: one bf16 Y [tokens][n_q + n_k + n_v], one X): one by one as the layers ran them (the own kernel, or
// cuBLASLt's int32 + the dequantize pass where halo_cuda_gemm_s8_dq_suits says no) against one stacked launch
// (halo_cuda_gemm_s8_dq_stack, _stack_cols). By columns, N is the tokens and rows the widths.
typedef struct { const char *name; int N, K, n, rows[4], cols; } stack;
static const stack STACKS[] = {{"1B G q+k+v", 2048, 8192, 3, {2048, 512, 512}, 0},
                               {"8B G q+k+v", 4096, 8192, 3, {4096, 1024, 1024}, 0},
                               {"1B Y q+k+v", 8192, 2048, 3, {2048, 512, 512}, 1},
                               {"1B Y gate+up", 8192, 2048, 2, {8192, 8192}, 1},
                               {"8B Y q+k+v", 8192, 4096, 3, {4096, 1024, 1024}, 1},
                               {"8B Y gate+up", 8192, 4096, 2, {14336, 14336}, 1}};
typedef struct { const stack *st; halo_cuda_s8_seg seg[4]; float *D; int32_t *C; int M; } stack_call;
static int run_cols_one_by_one(const stack_call *c) {
    const stack *st = c->st;
    int rc = 0;
    for (int i = 0, c0 = 0; i < st->n; c0 += st->rows[i], i++) {
        const halo_cuda_s8_seg *g = &c->seg[i];
        halo_bf16 *D = (halo_bf16 *)c->D + c0;
        if (halo_cuda_gemm_s8_dq_suits(st->N, st->rows[i], g->K))
            rc |= halo_cuda_gemm_s8_dq(D, 0, c->M, NULL, 0, g->A, g->lda, g->B, g->ldb, st->N, st->rows[i], g->K, st->N,
                                       st->rows[i], g->alpha, NULL, 0);
        else {
            rc |= halo_cuda_gemm_s8(c->C, st->rows[i], g->A, g->lda, g->B, g->ldb, st->N, st->rows[i], g->K, 0);
            halo_cuda_dequant_i32(D, 0, c->M, c->C, st->rows[i], st->N, st->rows[i], g->alpha, NULL, NULL, 0, 0);
        }
    }
    return rc;
}
static int run_stack_one_by_one(const void *v) {
    const stack_call *c = v;
    const stack *st = c->st;
    if (st->cols) return run_cols_one_by_one(c);
    int rc = 0;
    for (int i = 0, r0 = 0; i < st->n; r0 += st->rows[i], i++) {
        const halo_cuda_s8_seg *g = &c->seg[i];
        float *D = c->D + (size_t)r0 * st->N;
        if (halo_cuda_gemm_s8_dq_suits(st->rows[i], st->N, g->K))
            rc |= halo_cuda_gemm_s8_dq(D, 1, st->N, NULL, 0, g->A, g->lda, g->B, g->ldb, st->rows[i], st->N, g->K,
                                       st->rows[i], st->N, g->alpha, NULL, 0);
        else {
            rc |= halo_cuda_gemm_s8(c->C, st->N, g->A, g->lda, g->B, g->ldb, st->rows[i], st->N, g->K, 0);
            halo_cuda_dequant_i32(D, 1, st->N, c->C, st->N, st->rows[i], st->N, g->alpha, NULL, NULL, 0, 0);
        }
    }
    return rc;
}
static int run_stacked(const void *v) {
    const stack_call *c = v;
    const stack *st = c->st;
    if (st->cols) return halo_cuda_gemm_s8_dq_stack_cols(c->D, 0, c->M, c->seg, st->rows, st->n, st->N, st->N, c->M, 0);
    return halo_cuda_gemm_s8_dq_stack(c->D, st->N, 0, c->seg, st->rows, st->n, st->N, st->N, NULL, 0);
}
// the stack table; returns the number of stacks whose outputs differ
static int bench_stacks(int reps, float *const alphas[4]) {
    printf("\n| stack | M x N x K | one by one ms | stacked ms | TOP/s stacked | one by one / stacked | identical |\n"
           "|---|---|---|---|---|---|---|\n");
    int fails = 0;
    for (size_t k = 0; k < sizeof STACKS / sizeof STACKS[0]; k++) {
        const stack *st = &STACKS[k];
        stack_call c = {st, {{0}}, NULL, NULL, 0}, c2;
        int M = 0;
        int8_t *X = NULL;   // by columns: the one X all products read
        if (st->cols) {
            CK(cudaMalloc((void **)&X, (size_t)st->N * st->K));
            fill(X, (size_t)st->N * st->K, 390 + 10 * k);
        }
        for (int i = 0; i < st->n; i++) {
            int8_t *A, *B;
            CK(cudaMalloc((void **)&A, (size_t)st->rows[i] * st->K));
            fill(A, (size_t)st->rows[i] * st->K, 400 + 10 * k + i);
            if (st->cols) B = X;
            else {
                CK(cudaMalloc((void **)&B, (size_t)st->N * st->K));
                fill(B, (size_t)st->N * st->K, 500 + 10 * k + i);
            }
            c.seg[i] = st->cols ? (halo_cuda_s8_seg){B, A, st->K, st->K, st->K, alphas[i]}
                                : (halo_cuda_s8_seg){A, B, st->K, st->K, st->K, alphas[i]};
            M += st->rows[i];
        }
        c.M = M;
        const size_t ob = (st->cols ? 2 : 4) * (size_t)M * st->N;
        CK(cudaMalloc((void **)&c.D, ob));
        CK(cudaMalloc((void **)&c.C, 4 * (size_t)M * st->N));
        c2 = c;
        CK(cudaMalloc((void **)&c2.D, ob));
        const int ok = st->cols ? halo_cuda_gemm_s8_dq_stack_cols_ok(c.D, 0, M, c.seg, st->rows, st->n, st->N, st->N, M)
                                : halo_cuda_gemm_s8_dq_stack_ok(c.D, st->N, c.seg, st->rows, st->n, st->N, st->N);
        const int rm = st->cols ? st->N : M, rn = st->cols ? M : st->N;   // as printed: M x N of D
        if (!ok) {
            printf("| %s | %dx%dx%d | stacked kernel refuses the shapes |\n", st->name, rm, rn, st->K);
        } else {
            double t1, ts;
            const int same = time_and_compare(run_stack_one_by_one, &c2, c2.D, run_stacked, &c, c.D, ob, reps, &t1, &ts);
            fails += !same;
            printf("| %s | %dx%dx%d | %.3f | %.3f | %.0f | %.2fx | %s |\n", st->name, rm, rn, st->K, t1, ts,
                   2.0 * M * st->N * st->K / (ts * 1e-3) / 1e12, t1 / ts, same ? "yes" : "NO");
        }
        for (int i = 0; i < st->n; i++) {
            cudaFree((void *)(st->cols ? c.seg[i].B : c.seg[i].A));
            if (!st->cols) cudaFree((void *)c.seg[i].B);
        }
        cudaFree(X); cudaFree(c.D); cudaFree(c2.D); cudaFree(c.C);
    }
    return fails;
}

// The epilogue table: own kernel full against stores cut, and the share of the call the cut saves
static const shape EPI[] = {
    {"8192^2 K 1024", 8192, 8192, 1024, 0}, {"1B Y gate/up", 8192, 8192, 2048, 0},
    {"8192^2 K 4096", 8192, 8192, 4096, 0}, {"8192^2 K 8192", 8192, 8192, 8192, 0},
    {"1B Y q/o", 8192, 2048, 2048, 0},      {"1B E_X down", 8192, 8192, 2048, 1},
    {"1B Y down (+res)", 8192, 2048, 8192, 3}, {"1B G gate", 8192, 2048, 8192, 1},
};
static void bench_epilogue(int reps, float *alpha) {
    printf("\n| product | M x N x K | out | own ms | stores cut ms | TOP/s | TOP/s cut | share of the call |\n"
           "|---|---|---|---|---|---|---|---|\n");
    for (size_t k = 0; k < sizeof EPI / sizeof EPI[0]; k++) {
        const shape *s = &EPI[k];
        const size_t mn = (size_t)s->M * s->N;
        call c = {s, NULL, NULL, NULL, NULL, NULL, alpha, 1};
        CK(cudaMalloc((void **)&c.A, (size_t)s->M * s->K)); CK(cudaMalloc((void **)&c.B, (size_t)s->N * s->K));
        CK(cudaMalloc(&c.D, mn * (s->form ? 4 : 2))); CK(cudaMalloc((void **)&c.R, 4 * mn));
        fill(c.A, (size_t)s->M * s->K, 11 + k); fill(c.B, (size_t)s->N * s->K, 200 + k);
        CK(cudaMemset(c.R, 0, 4 * mn)); CK(cudaMemset(c.D, 0, mn * (s->form ? 4 : 2)));
        const double t = bench_gpu_ms(run_ctx, &c, 3, reps), tc = bench_gpu_ms(run_cut, &c, 3, reps);
        const double op = 2.0 * mn * s->K / 1e12;
        printf("| %s | %dx%dx%d | %s | %.3f | %.3f | %.0f | %.0f | %.1f%% |\n", s->name, s->M, s->N, s->K,
               FORM[s->form], t, tc, op / (t * 1e-3), op / (tc * 1e-3), 100.0 * (t - tc) / t);
        cudaFree(c.A); cudaFree(c.B); cudaFree(c.D); cudaFree(c.R);
    }
}

int main(int argc, char **argv) {
    int reps = 20;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else { fprintf(stderr, "usage: %s [--reps N]\n", argv[0]); return 2; }
    }
    if (reps < 1 || reps > 256) { fprintf(stderr, "--reps: 1..256\n"); return 2; }
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) { printf("no CUDA device\n"); return 0; }
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs; median of %d; int32 = cuBLASLt INT8 (timed choice) alone, +dq = with "
           "halo_cuda_dequant_i32, own = int8_gemm.cu\n\n", prop.name, prop.multiProcessorCount, reps);
    printf("| product | M x N x K | out | int32 ms | int32+dq ms | own ms | own TOP/s | int32+dq / own | identical |\n"
           "|---|---|---|---|---|---|---|---|---|\n");
    const float al = 1.0f / 8192;
    float *dal;
    CK(cudaMalloc((void **)&dal, 4));
    CK(cudaMemcpy(dal, &al, 4, cudaMemcpyHostToDevice));
    int fails = 0;
    for (size_t k = 0; k < sizeof SHAPES / sizeof SHAPES[0]; k++) {
        const shape *s = &SHAPES[k];
        const size_t mn = (size_t)s->M * s->N, ob = mn * (s->form ? 4 : 2);
        call c = {s, NULL, NULL, NULL, NULL, NULL, dal, 0};
        void *D2;
        CK(cudaMalloc((void **)&c.A, (size_t)s->M * s->K)); CK(cudaMalloc((void **)&c.B, (size_t)s->N * s->K));
        CK(cudaMalloc((void **)&c.C, 4 * mn)); CK(cudaMalloc(&c.D, ob)); CK(cudaMalloc(&D2, ob));
        CK(cudaMalloc((void **)&c.R, 4 * mn));
        fill(c.A, (size_t)s->M * s->K, 1 + k); fill(c.B, (size_t)s->N * s->K, 100 + k);
        fill(c.R, 4 * mn, 7);   // any bits: a residual of arbitrary floats (NaNs compare as bits)
        if (!halo_cuda_gemm_s8_dq_ok(c.D, s->form > 0, s->N, c.R, c.A, s->K, c.B, s->K, s->M, s->N, s->K, s->M, s->N)) {
            printf("| %s | %dx%dx%d | %s | own kernel refuses the shape |\n", s->name, s->M, s->N, s->K, FORM[s->form]);
            continue;
        }
        call c0 = c;
        c0.D = D2;
        const double t32 = bench_gpu_ms(run_ctx, &c0, 3, reps);
        // same starting contents for the accumulating form, then one call each for the comparison
        CK(cudaMemset(c.D, 0, ob)); CK(cudaMemset(D2, 0, ob));
        call cr = c, co = c;
        cr.D = D2; co.own = 1;
        const int rc = run(&cr) | run(&co), same = !rc && same_bytes(D2, c.D, ob);
        fails += !same;
        const double tp = bench_gpu_ms(run_i32, &c, 0, reps), to = bench_gpu_ms(run_ctx, &co, 3, reps);
        printf("| %s | %dx%dx%d | %s | %.3f | %.3f | %.3f | %.0f | %.2fx | %s |\n", s->name, s->M, s->N, s->K,
               FORM[s->form], tp, t32, to, 2.0 * mn * s->K / (to * 1e-3) / 1e12, t32 / to, same ? "yes" : "NO");
        cudaFree(c.A); cudaFree(c.B); cudaFree(c.C); cudaFree(c.D); cudaFree(D2); cudaFree(c.R);
    }
    float *als[4];
    for (int i = 0; i < 4; i++) {
        const float a = (1.0f + 0.25f * i) / 8192;
        CK(cudaMalloc((void **)&als[i], 4));
        CK(cudaMemcpy(als[i], &a, 4, cudaMemcpyHostToDevice));
    }
    const int gfails = bench_groups(reps, als) + bench_stacks(reps, als);
    for (int i = 0; i < 4; i++) cudaFree(als[i]);
    bench_epilogue(reps, dal);
    cudaFree(dal);
    halo_cuda_gemm_shutdown();
    if (fails) printf("\nFAIL: %d shapes differ from int32+dequant\n", fails);
    if (gfails) printf("\nFAIL: %d groups or stacks differ from their products one by one\n", gfails);
    fails += gfails;
    return fails ? 1 : 0;
}
#else
int main(void) { printf("built without CUDA\n"); return 0; }
#endif
