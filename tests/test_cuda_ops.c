// Each CUDA operation against the fp32 CPU operation of src/ops on random inputs (forward and backward), with
// relative L2 error bounds for BF16 storage. The CPU runs on the same bf16-rounded inputs. Skips without a GPU.
// Prints one "| op | ... |" table row per check for scripts/gpu_check.sh.
#include "test.h"
#ifdef HALO_CUDA
#include <cuda_runtime_api.h>
#include "cuda/cuda_backend.h"
#include "cuda/halo_cuda.h"
#include "halo/hadamard.h"
#include "model/lora.h"
#include "ops/ops.h"
#include "train/adamw.h"

static unsigned long long rng = 12345;

static void table_row(const char *op, const char *what, double err, double bound) {
    int ok = err <= bound && !isnan(err);
    printf("| %-22s | %-26s | %9.2e | %7.0e | %s |\n", op, what, err, bound, ok ? "ok" : "FAIL");
    CHECK(ok, "%s %s: rel err %.3g > %.3g", op, what, err, bound);
}

// Number of the n bf16 values at device pointers a, b whose bits differ.
static size_t dev_bf16_ndiff(const halo_bf16 *a, const halo_bf16 *b, size_t n) {
    halo_bf16 *h1 = malloc(2 * n), *h2 = malloc(2 * n);
    cudaMemcpy(h1, a, 2 * n, cudaMemcpyDeviceToHost);
    cudaMemcpy(h2, b, 2 * n, cudaMemcpyDeviceToHost);
    size_t nd = 0;
    for (size_t i = 0; i < n; i++) nd += h1[i] != h2[i];
    free(h1); free(h2);
    return nd;
}

static float *rand_vec(size_t n, double sd) {
    float *v = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) v[i] = (float)(sd * t_rand_normal(&rng));
    return v;
}
// Rounds v in place to bf16 values and returns a device copy in bf16.
static halo_bf16 *to_dev_bf16(float *v, size_t n) {
    halo_bf16 *h = malloc(2 * n), *d;
    cuda_f32_to_bf16_host(h, v, n);
    cuda_bf16_to_f32_host(v, h, n);
    cudaMalloc((void **)&d, 2 * n);
    cudaMemcpy(d, h, 2 * n, cudaMemcpyHostToDevice);
    free(h);
    return d;
}
static void *to_dev(const void *v, size_t bytes) {
    void *d;
    cudaMalloc(&d, bytes);
    cudaMemcpy(d, v, bytes, cudaMemcpyHostToDevice);
    return d;
}
static float *from_dev_bf16(const halo_bf16 *d, size_t n) {
    halo_bf16 *h = malloc(2 * n);
    float *f = malloc(4 * n);
    cudaMemcpy(h, d, 2 * n, cudaMemcpyDeviceToHost);
    cuda_bf16_to_f32_host(f, h, n);
    free(h);
    return f;
}
static float *from_dev(const float *d, size_t n) {
    float *f = malloc(4 * n);
    cudaMemcpy(f, d, 4 * n, cudaMemcpyDeviceToHost);
    return f;
}
// Device buffer filled with NaN bytes, so unwritten outputs fail the comparison.
static void *dev_poison(size_t bytes) {
    void *d;
    cudaMalloc(&d, bytes);
    cudaMemset(d, 0xff, bytes);
    return d;
}

static void test_linear(int b, int m, int n) {
    float *X = rand_vec((size_t)b * m, 1), *W = rand_vec((size_t)n * m, 0.1), *R = rand_vec((size_t)b * n, 1);
    float *dY = rand_vec((size_t)b * n, 1);
    halo_bf16 *dX_ = to_dev_bf16(X, (size_t)b * m), *dW_ = to_dev_bf16(W, (size_t)n * m), *ddY = to_dev_bf16(dY, (size_t)b * n);
    float *dR = to_dev(R, sizeof(float) * b * n);
    halo_bf16 *Y16 = dev_poison(2 * (size_t)b * n);
    float *Y32 = dev_poison(4 * (size_t)b * n);
    cuda_linear_forward(Y16, 0, dX_, dW_, NULL, b, m, n, 0);
    cuda_linear_forward(Y32, 1, dX_, dW_, dR, b, m, n, 0);
    float *ref = malloc(sizeof(float) * b * n);
    linear_forward(ref, X, W, b, m, n);
    float *got = from_dev_bf16(Y16, (size_t)b * n);
    char what[64];
    snprintf(what, sizeof what, "fwd bf16 %dx%dx%d", b, m, n);
    table_row("linear (cuBLASLt)", what, rel_l2_f(got, ref, (size_t)b * n), 1e-2);
    free(got);
    for (size_t i = 0; i < (size_t)b * n; i++) ref[i] += R[i];
    got = from_dev(Y32, (size_t)b * n);
    table_row("linear (cuBLASLt)", "fwd fp32 + residual", rel_l2_f(got, ref, (size_t)b * n), 1e-3);
    free(got);
    float *rdX = malloc(sizeof(float) * b * m), *rdW = calloc((size_t)n * m, sizeof(float));
    float *g0 = rand_vec((size_t)n * m, 1);   // dW accumulates onto an existing gradient
    memcpy(rdW, g0, sizeof(float) * n * m);
    linear_backward(rdX, rdW, dY, X, W, b, m, n, 0);
    halo_bf16 *gdX = dev_poison(2 * (size_t)b * m);
    float *gdW = to_dev(g0, sizeof(float) * n * m);
    cuda_linear_backward_dx(gdX, ddY, dW_, b, m, n, 0);
    cuda_linear_backward_dw(gdW, ddY, dX_, b, m, n, 0);
    got = from_dev_bf16(gdX, (size_t)b * m);
    table_row("linear (cuBLASLt)", "bwd dX", rel_l2_f(got, rdX, (size_t)b * m), 1e-2);
    free(got);
    got = from_dev(gdW, (size_t)n * m);
    table_row("linear (cuBLASLt)", "bwd dW (+=)", rel_l2_f(got, rdW, (size_t)n * m), 1e-3);
    free(got);
    free(X); free(W); free(R); free(dY); free(ref); free(rdX); free(rdW); free(g0);
    cudaFree(dX_); cudaFree(dW_); cudaFree(ddY); cudaFree(dR); cudaFree(Y16); cudaFree(Y32); cudaFree(gdX); cudaFree(gdW);
}

static void test_embedding(void) {
    int N = 300, D = 96, V = 50;
    int32_t ids[300];
    for (int i = 0; i < N; i++) ids[i] = (int)(t_rng_next(&rng) % V);
    float *tab = rand_vec((size_t)V * D, 1), *dout = rand_vec((size_t)N * D, 1), *g0 = rand_vec((size_t)V * D, 1);
    halo_bf16 *dtab = to_dev_bf16(tab, (size_t)V * D);
    int32_t *dids = to_dev(ids, sizeof ids);
    float *out = dev_poison(4 * (size_t)N * D), *ddout = to_dev(dout, 4 * (size_t)N * D), *dg = to_dev(g0, 4 * (size_t)V * D);
    cuda_embedding_forward(out, dids, dtab, N, D, 0);
    const int pad = ids[7];   // a pad id present in the batch: its row gets nothing
    cuda_embedding_backward(dg, dids, ddout, N, D, pad, 0);
    float *ref = malloc(4 * (size_t)N * D);
    embedding_forward(ref, ids, tab, N, D);
    float *got = from_dev(out, (size_t)N * D);
    table_row("embedding", "fwd", rel_l2_f(got, ref, (size_t)N * D), 1e-6);
    free(got);
    embedding_backward(g0, ids, dout, N, D, pad);
    got = from_dev(dg, (size_t)V * D);
    table_row("embedding", "bwd (scatter-add, a pad id skipped)", rel_l2_f(got, g0, (size_t)V * D), 1e-5);
    free(got); free(ref); free(tab); free(dout); free(g0);
    cudaFree(dtab); cudaFree(dids); cudaFree(out); cudaFree(ddout); cudaFree(dg);
}

// max |rows x d bf16 values on the device, rotated by the CPU's h| (a HALO level 1-2 layer's X amax)
static float rotated_amax(const halo_bf16 *dev, int rows, int d, const halo_hadamard *h) {
    float *v = from_dev_bf16(dev, (size_t)rows * d), mx = 0.f;
    halo_hadamard_rows(h, v, rows, d, 0);
    for (size_t i = 0; i < (size_t)rows * d; i++) mx = fmaxf(mx, fabsf(v[i]));
    free(v);
    return mx;
}

// The producers' rotated amax (a HALO level 1-2 layer's X scale) for blocks of 8, 32 and 256: run(ctx, lb, scale)
// writes rows x d bf16 values into out and their amax into dam; the values must be ref_out's bits, the amax the CPU's.
static void check_rotated_amax(const char *op, const halo_bf16 *ref_out, halo_bf16 *out, float *dam, int rows, int d,
                               void (*run)(void *ctx, int lb, float scale), void *ctx) {
    for (int lb = 3; lb <= 8; lb += lb == 3 ? 2 : 3) {
        cudaMemset(out, 0xff, 2 * (size_t)rows * d);
        cudaMemset(dam, 0, 4);
        halo_hadamard h;
        if (halo_hadamard_plan(&h, d, 1 << lb)) abort();
        run(ctx, lb, h.scale);
        float am = -1.f;
        cudaMemcpy(&am, dam, 4, cudaMemcpyDeviceToHost);
        const float ref_am = rotated_amax(ref_out, rows, d, &h);
        char what[64];
        snprintf(what, sizeof what, "fwd _amax rotated, blocks of %d: differing bits", 1 << lb);
        table_row(op, what, (double)dev_bf16_ndiff(ref_out, out, (size_t)rows * d), 0);
        snprintf(what, sizeof what, "fwd _amax rotated, blocks of %d: amax vs CPU", 1 << lb);
        table_row(op, what, fabs((double)am - ref_am) / ref_am, 0);
    }
}
typedef struct { halo_bf16 *out; float *rstd, *x; halo_bf16 *w; int N, D; float *dam; } rms_ctx;
static void run_rmsnorm_rot(void *p, int lb, float scale) {
    rms_ctx *c = p;
    cuda_rmsnorm_forward_amax(c->out, c->rstd, c->x, c->w, c->N, c->D, 1e-5f, c->dam, lb, scale, NULL, 0);
}
typedef struct { halo_bf16 *out, *gu; int N, F; float *dam; } swiglu_ctx;
static void run_swiglu_rot(void *p, int lb, float scale) {
    swiglu_ctx *c = p;
    cuda_swiglu_forward_amax(c->out, c->gu, c->N, c->F, c->dam, lb, scale, NULL, 0);
}

// The X producers' non-finite flag (the skipped absmax pass's): 0 on the finite input `in`, 1 once one value of a
// copy of it is NaN (as float at word `at`, or as bf16), unrotated and, when rotatable, in blocks of 8.
static void check_x_flag(const char *op, const void *in, size_t bytes, size_t at, int f32, int rotatable,
                         void (*run)(void *, const void *in, int lb, int *flag), void *ctx) {
    int *dnf = to_dev(&(int){0}, 4), nf = -1;
    run(ctx, in, 0, dnf);
    cudaMemcpy(&nf, dnf, 4, cudaMemcpyDeviceToHost);
    table_row(op, "fwd _amax: X flag, finite input", nf != 0, 0);
    void *bad = NULL;
    cudaMalloc(&bad, bytes);
    cudaMemcpy(bad, in, bytes, cudaMemcpyDeviceToDevice);
    const float nan = NAN;
    halo_bf16 nb;
    cuda_f32_to_bf16_host(&nb, &nan, 1);
    if (f32) cudaMemcpy((float *)bad + at, &nan, 4, cudaMemcpyHostToDevice);
    else cudaMemcpy((halo_bf16 *)bad + at, &nb, 2, cudaMemcpyHostToDevice);
    for (int lb = 0; lb <= (rotatable ? 3 : 0); lb += 3) {
        cudaMemset(dnf, 0, 4);
        run(ctx, bad, lb, dnf);
        cudaMemcpy(&nf, dnf, 4, cudaMemcpyDeviceToHost);
        table_row(op, lb ? "fwd _amax rotated: X flag, one NaN" : "fwd _amax: X flag, one NaN", nf != 1, 0);
    }
    cudaFree(bad); cudaFree(dnf);
}
static void run_rmsnorm_flag(void *p, const void *in, int lb, int *flag) {
    rms_ctx *c = p;
    cuda_rmsnorm_forward_amax(c->out, c->rstd, in, c->w, c->N, c->D, 1e-5f, c->dam, lb, 1.f, flag, 0);
}
static void run_swiglu_flag(void *p, const void *in, int lb, int *flag) {
    swiglu_ctx *c = p;
    cuda_swiglu_forward_amax(c->out, in, c->N, c->F, c->dam, lb, 1.f, flag, 0);
}

// The E_Y producers' non-finite flags (each HALO layer's, which its skipped absmax pass would set): the n host values
// in bf16 on the device, value v at element `at` (at < 0: none).
static halo_bf16 *dev_bf16_with(float *host, size_t n, long at, float v) {   // host rounded as to_dev_bf16
    halo_bf16 *d = to_dev_bf16(host, n), b;
    cuda_f32_to_bf16_host(&b, &v, 1);
    if (at >= 0) cudaMemcpy(d + at, &b, 2, cudaMemcpyHostToDevice);
    return d;
}
// Row "what": the k device flags dnf read back against want (0 / 1 each); the flags are cleared afterwards.
static void flags_row(const char *op, const char *what, int *dnf, const int *want, int k) {
    int got[4] = {-1, -1, -1, -1}, bad = 0;
    cudaMemcpy(got, dnf, 4 * (size_t)k, cudaMemcpyDeviceToHost);
    for (int i = 0; i < k; i++) bad += got[i] != want[i];
    table_row(op, what, bad, 0);
    cudaMemset(dnf, 0, 4 * (size_t)k);
}

// The backward reading an fp32 dout (a HALO group's unrounded sum of input gradients): with dy's bf16 values, the
// bits of the bf16-dout run (dx, dx16 ref16 and dw ref_dw, the latter to 1e-6: atomics); with fp32 values off the
// bf16 grid, dx and dw against the CPU backward at test_rmsnorm's 1e-4 (a bf16 dout would be ~2e-3 off).
static void rmsnorm_bwd_f32_dout(int N, int D, const float *dy, const float *dres, const float *dw0, const float *dx_,
                                 const halo_bf16 *dw16, const float *rstd, const float *ref_dx, const halo_bf16 *ref16,
                                 const float *ref_dw, const float *x, const float *w, const float *rr) {
    const size_t ND = (size_t)N * D;
    float *dy32 = to_dev(dy, 4 * ND), *dxa = to_dev(dres, 4 * ND), *dwa = to_dev(dw0, 4 * (size_t)D);
    float *dam = to_dev(&(float){0.f}, 4);
    halo_bf16 *c16 = dev_poison(2 * ND);
    cuda_rmsnorm_backward_amax(dxa, c16, dwa, NULL, dy32, dx_, dw16, rstd, dxa, N, D, dam, NULL, 0);
    float *a = from_dev(dxa, ND), *b = from_dev(ref_dx, ND), *wa = from_dev(dwa, D), *wb = from_dev(ref_dw, D);
    size_t nd = 0;
    for (size_t i = 0; i < ND; i++) nd += memcmp(&a[i], &b[i], 4) != 0;
    table_row("rmsnorm", "bwd fp32 dout (bf16 values): differing dx, dx16 bits",
              (double)(nd + dev_bf16_ndiff(c16, ref16, ND)), 0);
    table_row("rmsnorm", "bwd fp32 dout (bf16 values): dw vs bf16 dout", rel_l2_f(wa, wb, D), 1e-6);
    free(a); free(wa); free(wb);
    // values off the bf16 grid, against the CPU backward (w is bf16-exact: to_dev_bf16 rounded it)
    float *dy2 = rand_vec(ND, 1), *rdx = malloc(4 * ND), *rdw = malloc(4 * (size_t)D);
    memcpy(rdx, dres, 4 * ND);
    memcpy(rdw, dw0, 4 * (size_t)D);
    rmsnorm_backward(rdx, rdw, dy2, x, w, rr, N, D);
    cudaMemcpy(dy32, dy2, 4 * ND, cudaMemcpyHostToDevice);
    cudaMemcpy(dxa, dres, 4 * ND, cudaMemcpyHostToDevice);
    cudaMemcpy(dwa, dw0, 4 * (size_t)D, cudaMemcpyHostToDevice);
    cuda_rmsnorm_backward_amax(dxa, c16, dwa, NULL, dy32, dx_, dw16, rstd, dxa, N, D, dam, NULL, 0);
    a = from_dev(dxa, ND);
    wa = from_dev(dwa, D);
    char what[64];
    snprintf(what, sizeof what, "bwd fp32 dout N=%d D=%d: dx vs CPU", N, D);
    table_row("rmsnorm", what, rel_l2_f(a, rdx, ND), 1e-4);
    table_row("rmsnorm", "bwd fp32 dout: dw vs CPU", rel_l2_f(wa, rdw, D), 1e-4);
    free(a); free(b); free(wa); free(dy2); free(rdx); free(rdw);
    cudaFree(dy32); cudaFree(dxa); cudaFree(dwa); cudaFree(dam); cudaFree(c16);
}

// alias: dres is dx's buffer (the model's in-place residual gradient); else dx is a separate buffer, dres NULL and
// no bf16 copy. dw starts at a nonzero value (the kernel accumulates into it).
static void test_rmsnorm(int N, int D, int alias) {
    float *x = rand_vec((size_t)N * D, 2), *w = rand_vec(D, 0.3), *dy = rand_vec((size_t)N * D, 1);
    float *dres = rand_vec((size_t)N * D, 1), *dw0 = rand_vec(D, 1);
    for (int d = 0; d < D; d++) w[d] += 1;
    halo_bf16 *dw16 = to_dev_bf16(w, D), *ddy = to_dev_bf16(dy, (size_t)N * D);
    float *dx_ = to_dev(x, 4 * (size_t)N * D), *rstd = dev_poison(4 * (size_t)N);
    halo_bf16 *out = dev_poison(2 * (size_t)N * D), *dx16 = alias ? dev_poison(2 * (size_t)N * D) : NULL;
    float *ddx = alias ? to_dev(dres, 4 * (size_t)N * D) : dev_poison(4 * (size_t)N * D), *ddw = to_dev(dw0, 4 * (size_t)D);
    cuda_rmsnorm_forward(out, rstd, dx_, dw16, N, D, 1e-5f, 0);
    cuda_rmsnorm_backward(ddx, dx16, ddw, ddy, dx_, dw16, rstd, alias ? ddx : NULL, N, D, 0);
    float *ref = malloc(4 * (size_t)N * D), *rr = malloc(4 * (size_t)N), *rdx = calloc((size_t)N * D, 4), *rdw = malloc(4 * (size_t)D);
    memcpy(rdw, dw0, 4 * (size_t)D);
    rmsnorm_forward(ref, rr, x, w, N, D, 1e-5f);
    float *got = from_dev_bf16(out, (size_t)N * D);
    char what[64];
    snprintf(what, sizeof what, "fwd N=%d D=%d", N, D);
    table_row("rmsnorm", what, rel_l2_f(got, ref, (size_t)N * D), 1e-2);
    free(got);
    got = from_dev(rstd, N);
    table_row("rmsnorm", "fwd rstd", rel_l2_f(got, rr, N), 1e-5);
    free(got);
    // recomputation from the stored rstd: the forward's bits exactly
    halo_bf16 *out2 = dev_poison(2 * (size_t)N * D);
    cuda_rmsnorm_recompute(out2, rstd, dx_, dw16, N, D, 0);
    table_row("rmsnorm", "recompute: differing bits", (double)dev_bf16_ndiff(out, out2, (size_t)N * D), 0);
    cudaFree(out2);
    {   // the _amax variant (a HALO level-0 layer's X scale): the same bits, and max |out| exactly
        got = from_dev_bf16(out, (size_t)N * D);
        float mx = 0.f;
        for (size_t i = 0; i < (size_t)N * D; i++) mx = fmaxf(mx, fabsf(got[i]));
        free(got);
        halo_bf16 *out3 = dev_poison(2 * (size_t)N * D);
        float *rstd3 = dev_poison(4 * (size_t)N), *dam = to_dev(&(float){0.f}, 4), am = -1.f;
        cuda_rmsnorm_forward_amax(out3, rstd3, dx_, dw16, N, D, 1e-5f, dam, 0, 1.f, NULL, 0);
        cudaMemcpy(&am, dam, 4, cudaMemcpyDeviceToHost);
        table_row("rmsnorm", "fwd _amax: differing bits", (double)dev_bf16_ndiff(out, out3, (size_t)N * D), 0);
        table_row("rmsnorm", "fwd _amax: amax vs max |out|", fabs((double)am - mx) / mx, 0);
        if (D % 256 == 0) {
            rms_ctx ctx = {out3, rstd3, dx_, dw16, N, D, dam};
            check_rotated_amax("rmsnorm", out, out3, dam, N, D, run_rmsnorm_rot, &ctx);
        }
        rms_ctx fc = {out3, rstd3, dx_, dw16, N, D, dam};
        check_x_flag("rmsnorm", dx_, 4 * (size_t)N * D, (size_t)(N / 2) * D + 3, 1, D % 256 == 0, run_rmsnorm_flag, &fc);
        cudaFree(out3); cudaFree(rstd3); cudaFree(dam);
    }
    if (alias) memcpy(rdx, dres, 4 * (size_t)N * D);
    rmsnorm_backward(rdx, rdw, dy, x, w, rr, N, D);
    got = from_dev(ddx, (size_t)N * D);
    table_row("rmsnorm", alias ? "bwd dx (+= residual, alias)" : "bwd dx (no residual)", rel_l2_f(got, rdx, (size_t)N * D),
              1e-4);
    free(got);
    if (alias) {
        got = from_dev_bf16(dx16, (size_t)N * D);
        table_row("rmsnorm", "bwd dx bf16 copy", rel_l2_f(got, rdx, (size_t)N * D), 1e-2);
        // the _amax variant: the same bf16 bits, and max |dx16| (a HALO layer's E_Y scale) exactly
        float mx = 0.f;
        for (size_t i = 0; i < (size_t)N * D; i++) mx = fmaxf(mx, fabsf(got[i]));
        free(got);
        float *ddx2 = to_dev(dres, 4 * (size_t)N * D), *ddw2 = to_dev(dw0, 4 * (size_t)D), *dam = to_dev(&(float){0.f}, 4);
        halo_bf16 *dx16b = dev_poison(2 * (size_t)N * D);
        cuda_rmsnorm_backward_amax(ddx2, dx16b, ddw2, ddy, NULL, dx_, dw16, rstd, ddx2, N, D, dam, NULL, 0);
        table_row("rmsnorm", "bwd _amax: differing dx16 bits", (double)dev_bf16_ndiff(dx16, dx16b, (size_t)N * D), 0);
        float am = -1.f;
        cudaMemcpy(&am, dam, 4, cudaMemcpyDeviceToHost);
        table_row("rmsnorm", "bwd _amax: amax vs max |dx16|", fabs((double)am - mx) / mx, 0);
        // E_Y flag: clear on finite inputs; set by one NaN in dout, or one Inf in the residual
        int *dnf = to_dev(&(int){0}, 4);
        const size_t ND = (size_t)N * D;
        const long at = (long)(N / 2) * D + D / 3;
        const struct { const char *what; int in_res; float v; int want; } fc[] = {
            {"bwd _amax: E_Y flag, finite", 0, 0.f, 0}, {"bwd _amax: E_Y flag, NaN dout", 0, NAN, 1},
            {"bwd _amax: E_Y flag, Inf res", 1, INFINITY, 1}};
        for (int k = 0; k < 3; k++) {
            halo_bf16 *dyk = dev_bf16_with(dy, ND, k && !fc[k].in_res ? at : -1, fc[k].v);
            float *rk = to_dev(dres, 4 * ND);
            if (fc[k].in_res) cudaMemcpy(rk + at, &fc[k].v, 4, cudaMemcpyHostToDevice);
            cuda_rmsnorm_backward_amax(rk, dx16b, ddw2, dyk, NULL, dx_, dw16, rstd, rk, N, D, dam, dnf, 0);
            flags_row("rmsnorm", fc[k].what, dnf, &fc[k].want, 1);
            cudaFree(dyk); cudaFree(rk);
        }
        cudaFree(dnf);
        cudaFree(ddx2); cudaFree(ddw2); cudaFree(dam); cudaFree(dx16b);
        rmsnorm_bwd_f32_dout(N, D, dy, dres, dw0, dx_, dw16, rstd, ddx, dx16, ddw, x, w, rr);
    }
    got = from_dev(ddw, D);
    table_row("rmsnorm", "bwd dw (+= start value)", rel_l2_f(got, rdw, D), 1e-4);
    free(got);
    free(x); free(w); free(dy); free(dres); free(dw0); free(ref); free(rr); free(rdx); free(rdw);
    cudaFree(dw16); cudaFree(ddy); cudaFree(dx_); cudaFree(rstd); cudaFree(out); if (dx16) cudaFree(dx16);
    cudaFree(ddx); cudaFree(ddw);
}

// hd 64 runs the kernels' 4-pairs-a-thread form, hd 12 (half 6) the pair-a-thread one
static void test_rope(int hd) {
    int N = 70, H = 5, Hx = 2, ld = (H + Hx) * hd, maxpos = 200;
    float *cs = malloc(4 * (size_t)maxpos * hd / 2), *sn = malloc(4 * (size_t)maxpos * hd / 2);
    rope_tables(cs, sn, maxpos, hd, 500000.f, 1, 32.f, 1.f, 4.f, 8192);   // llama3 scaling
    int32_t pos[70];
    for (int i = 0; i < N; i++) pos[i] = (int)(t_rng_next(&rng) % maxpos);
    float *x = rand_vec((size_t)N * ld, 1);
    halo_bf16 *dx = to_dev_bf16(x, (size_t)N * ld), *dg = NULL;
    float *g = rand_vec((size_t)N * ld, 1);
    dg = to_dev_bf16(g, (size_t)N * ld);
    float *dcs = to_dev(cs, 4 * (size_t)maxpos * hd / 2), *dsn = to_dev(sn, 4 * (size_t)maxpos * hd / 2);
    int32_t *dpos = to_dev(pos, sizeof pos);
    cuda_rope_forward(dx, ld, dpos, dcs, dsn, N, H, hd, 0);
    cuda_rope_backward(dg, ld, dpos, dcs, dsn, N, H, hd, 0);
    // CPU on the first H heads of each row, packed [N, H, hd]
    float *xp = malloc(4 * (size_t)N * H * hd), *gp = malloc(4 * (size_t)N * H * hd);
    for (int n = 0; n < N; n++) {
        memcpy(xp + (size_t)n * H * hd, x + (size_t)n * ld, 4 * (size_t)H * hd);
        memcpy(gp + (size_t)n * H * hd, g + (size_t)n * ld, 4 * (size_t)H * hd);
    }
    rope_forward(xp, pos, cs, sn, N, H, hd);
    rope_backward(gp, pos, cs, sn, N, H, hd);
    float *got = from_dev_bf16(dx, (size_t)N * ld), *gotg = from_dev_bf16(dg, (size_t)N * ld);
    double num = 0, den = 0, numg = 0, deng = 0;
    int untouched = 1;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < ld; c++) {
            size_t i = (size_t)n * ld + c;
            if (c >= H * hd) { untouched &= got[i] == x[i] && gotg[i] == g[i]; continue; }
            double r = xp[(size_t)n * H * hd + c], rg = gp[(size_t)n * H * hd + c];
            num += (got[i] - r) * (got[i] - r); den += r * r;
            numg += (gotg[i] - rg) * (gotg[i] - rg); deng += rg * rg;
        }
    char what[48];
    snprintf(what, sizeof what, "fwd hd %d", hd);
    table_row("rope (llama3 scaling)", what, sqrt(num / den), 1e-2);
    snprintf(what, sizeof what, "bwd hd %d", hd);
    table_row("rope (llama3 scaling)", what, sqrt(numg / deng), 1e-2);
    CHECK(untouched, "rope touched columns past the first H heads");
    free(cs); free(sn); free(x); free(g); free(xp); free(gp); free(got); free(gotg);
    cudaFree(dx); cudaFree(dg); cudaFree(dcs); cudaFree(dsn); cudaFree(dpos);
}

// cuda_rope_backward_amax (HALO's q, k, v E_Y scales): the same bits as cuda_rope_backward on the q and k heads, v
// untouched, and max |dq|, |dk|, |dv| of the stored values exactly; N > 512 walks rows in strides.
static void test_rope_amax(int N, int hd) {
    const int Hq = 3, Hkv = 2, ld = (Hq + 2 * Hkv) * hd, maxpos = 300;
    float *cs = malloc(4 * (size_t)maxpos * hd / 2), *sn = malloc(4 * (size_t)maxpos * hd / 2);
    rope_tables(cs, sn, maxpos, hd, 500000.f, 1, 32.f, 1.f, 4.f, 8192);
    int32_t *pos = malloc(4 * (size_t)N);
    for (int i = 0; i < N; i++) pos[i] = (int)(t_rng_next(&rng) % maxpos);
    float *g = rand_vec((size_t)N * ld, 1);
    halo_bf16 *d1 = to_dev_bf16(g, (size_t)N * ld), *d2 = to_dev_bf16(g, (size_t)N * ld);
    float *dcs = to_dev(cs, 4 * (size_t)maxpos * hd / 2), *dsn = to_dev(sn, 4 * (size_t)maxpos * hd / 2);
    int32_t *dpos = to_dev(pos, 4 * (size_t)N);
    const float zero3[3] = {0.f, 0.f, 0.f};
    float *dam = to_dev(zero3, 12), am[3];
    cuda_rope_backward(d1, ld, dpos, dcs, dsn, N, Hq + Hkv, hd, 0);
    cuda_rope_backward_amax(d2, dpos, dcs, dsn, N, Hq, Hkv, hd, dam, dam + 1, dam + 2, NULL, NULL, NULL, 0);
    cudaMemcpy(am, dam, 12, cudaMemcpyDeviceToHost);
    float *got = from_dev_bf16(d1, (size_t)N * ld), mx[3] = {0.f, 0.f, 0.f};
    for (int n = 0; n < N; n++)
        for (int c = 0; c < ld; c++) {
            const int slot = c < Hq * hd ? 0 : c < (Hq + Hkv) * hd ? 1 : 2;
            mx[slot] = fmaxf(mx[slot], fabsf(got[(size_t)n * ld + c]));
        }
    char what[64];
    snprintf(what, sizeof what, "bwd _amax N=%d hd %d: differing bits", N, hd);
    table_row("rope (llama3 scaling)", what, (double)dev_bf16_ndiff(d1, d2, (size_t)N * ld), 0);
    double e = 0;
    for (int k = 0; k < 3; k++) e = fmax(e, fabs((double)am[k] - mx[k]) / mx[k]);
    snprintf(what, sizeof what, "bwd _amax N=%d hd %d: q, k, v amax", N, hd);
    table_row("rope (llama3 scaling)", what, e, 0);
    {   // the q, k, v E_Y flags: clear on finite input; one NaN or Inf in one head sets only that tensor's
        int *dnf = to_dev((int[3]){0, 0, 0}, 12);
        const long row = (long)(N / 2) * ld;
        const struct { const char *what; long at; float v; int want[3]; } fc[] = {
            {"bwd _amax: q,k,v flags, finite", -1, 0.f, {0, 0, 0}},
            {"bwd _amax: flags, NaN in q", row + hd + 1, NAN, {1, 0, 0}},
            {"bwd _amax: flags, Inf in k", row + (long)Hq * hd + hd / 2, INFINITY, {0, 1, 0}},
            {"bwd _amax: flags, NaN in v", row + (long)(Hq + Hkv) * hd + 3, NAN, {0, 0, 1}}};
        for (int k = 0; k < 4; k++) {
            halo_bf16 *dg = dev_bf16_with(g, (size_t)N * ld, fc[k].at, fc[k].v);
            cuda_rope_backward_amax(dg, dpos, dcs, dsn, N, Hq, Hkv, hd, dam, dam + 1, dam + 2, dnf, dnf + 1, dnf + 2, 0);
            flags_row("rope (llama3 scaling)", fc[k].what, dnf, fc[k].want, 3);
            cudaFree(dg);
        }
        cudaFree(dnf);
    }
    free(cs); free(sn); free(pos); free(g); free(got);
    cudaFree(d1); cudaFree(d2); cudaFree(dcs); cudaFree(dsn); cudaFree(dpos); cudaFree(dam);
}

static void test_swiglu(int F) {
    int N = 33;
    float *gu = rand_vec((size_t)N * 2 * F, 2), *dout = rand_vec((size_t)N * F, 1);
    halo_bf16 *dgu = to_dev_bf16(gu, (size_t)N * 2 * F), *ddo = to_dev_bf16(dout, (size_t)N * F);
    halo_bf16 *out = dev_poison(2 * (size_t)N * F), *dres = dev_poison(4 * (size_t)N * F);
    cuda_swiglu_forward(out, dgu, N, F, 0);
    cuda_swiglu_backward(dres, ddo, dgu, N, F, 0);
    float *gate = malloc(4 * (size_t)N * F), *up = malloc(4 * (size_t)N * F), *ref = malloc(4 * (size_t)N * F);
    for (int n = 0; n < N; n++) {
        memcpy(gate + (size_t)n * F, gu + (size_t)n * 2 * F, 4 * (size_t)F);
        memcpy(up + (size_t)n * F, gu + (size_t)n * 2 * F + F, 4 * (size_t)F);
    }
    swiglu_forward(ref, gate, up, N, F);
    float *got = from_dev_bf16(out, (size_t)N * F);
    char what[48];
    snprintf(what, sizeof what, "fwd F %d", F);
    table_row("swiglu", what, rel_l2_f(got, ref, (size_t)N * F), 1e-2);
    {   // the _amax variant (a HALO level-0 down_proj's X scale): the same bits, and max |out| exactly
        float mx = 0.f;
        for (size_t i = 0; i < (size_t)N * F; i++) mx = fmaxf(mx, fabsf(got[i]));
        halo_bf16 *out2 = dev_poison(2 * (size_t)N * F);
        float *dam = to_dev(&(float){0.f}, 4), am = -1.f;
        cuda_swiglu_forward_amax(out2, dgu, N, F, dam, 0, 1.f, NULL, 0);
        cudaMemcpy(&am, dam, 4, cudaMemcpyDeviceToHost);
        table_row("swiglu", "fwd _amax: differing bits", (double)dev_bf16_ndiff(out, out2, (size_t)N * F), 0);
        table_row("swiglu", "fwd _amax: amax vs max |out|", fabs((double)am - mx) / mx, 0);
        if (F % 256 == 0) {
            swiglu_ctx ctx = {out2, dgu, N, F, dam};
            check_rotated_amax("swiglu", out, out2, dam, N, F, run_swiglu_rot, &ctx);
        }
        swiglu_ctx fc = {out2, dgu, N, F, dam};
        check_x_flag("swiglu", dgu, 2 * (size_t)N * 2 * F, (size_t)(N / 2) * 2 * F + F + 1, 0, F % 256 == 0,
                     run_swiglu_flag, &fc);
        cudaFree(out2); cudaFree(dam);
    }
    free(got);
    float *dg = malloc(4 * (size_t)N * F), *du = malloc(4 * (size_t)N * F), *cat = malloc(8 * (size_t)N * F);
    swiglu_backward(dg, du, dout, gate, up, N, F);
    for (int n = 0; n < N; n++) {
        memcpy(cat + (size_t)n * 2 * F, dg + (size_t)n * F, 4 * (size_t)F);
        memcpy(cat + (size_t)n * 2 * F + F, du + (size_t)n * F, 4 * (size_t)F);
    }
    got = from_dev_bf16(dres, (size_t)N * 2 * F);
    snprintf(what, sizeof what, "bwd [dgate | dup] F %d", F);
    table_row("swiglu", what, rel_l2_f(got, cat, (size_t)N * 2 * F), 1e-2);
    // the _amax variant: the same bits, and max |dgate|, max |dup| of the stored values exactly
    {
        float mg = 0.f, mu = 0.f;
        for (int n = 0; n < N; n++)
            for (int j = 0; j < F; j++) {
                mg = fmaxf(mg, fabsf(got[(size_t)n * 2 * F + j]));
                mu = fmaxf(mu, fabsf(got[(size_t)n * 2 * F + F + j]));
            }
        const float zero2[2] = {0.f, 0.f};
        float *dam = to_dev(zero2, 8), am[2];
        halo_bf16 *dres2 = dev_poison(4 * (size_t)N * F);
        cuda_swiglu_backward_amax(dres2, ddo, dgu, N, F, dam, dam + 1, NULL, NULL, 0);
        cudaMemcpy(am, dam, 8, cudaMemcpyDeviceToHost);
        table_row("swiglu", "bwd _amax: differing bits", (double)dev_bf16_ndiff(dres, dres2, (size_t)N * 2 * F), 0);
        table_row("swiglu", "bwd _amax: gate, up amax", fmax(fabs((double)am[0] - mg) / mg, fabs((double)am[1] - mu) / mu), 0);
        // the gate and up E_Y flags: clear on finite input; a NaN in up reaches dgate only, one in dout both
        int *dnf = to_dev((int[2]){0, 0}, 8);
        const long at = (long)(N / 2) * F + F / 2;
        const struct { const char *what; int in_gu; long at; int want[2]; } fc[] = {
            {"bwd _amax: E_Y flags, finite", 0, -1, {0, 0}},
            {"bwd _amax: flags, NaN in up", 1, (long)(N / 2) * 2 * F + F + F / 2, {1, 0}},
            {"bwd _amax: flags, NaN in dout", 0, at, {1, 1}}};
        for (int k = 0; k < 3; k++) {
            halo_bf16 *gk = dev_bf16_with(gu, (size_t)N * 2 * F, fc[k].in_gu ? fc[k].at : -1, NAN);
            halo_bf16 *ok = dev_bf16_with(dout, (size_t)N * F, fc[k].in_gu ? -1 : fc[k].at, NAN);
            cuda_swiglu_backward_amax(dres2, ok, gk, N, F, dam, dam + 1, dnf, dnf + 1, 0);
            flags_row("swiglu", fc[k].what, dnf, fc[k].want, 2);
            cudaFree(gk); cudaFree(ok);
        }
        cudaFree(dnf);
        cudaFree(dam); cudaFree(dres2);
    }
    free(got); free(gu); free(dout); free(gate); free(up); free(ref); free(dg); free(du); free(cat);
    cudaFree(dgu); cudaFree(ddo); cudaFree(out); cudaFree(dres);
}

// qkv[N, (Hq + 2 Hkv) hd] <-> CPU q/k/v [B, T, H, hd]
static void test_attention(int B, int T, int Hq, int Hkv, int hd, int with_seg) {
    int N = B * T, ld = (Hq + 2 * Hkv) * hd;
    float *qkv = rand_vec((size_t)N * ld, 1), *dout = rand_vec((size_t)N * Hq * hd, 1);
    halo_bf16 *dqkv_in = to_dev_bf16(qkv, (size_t)N * ld), *ddout = to_dev_bf16(dout, (size_t)N * Hq * hd);
    int32_t *seg = NULL, *dseg = NULL;
    if (with_seg) {   // packed rows: segments of random lengths
        seg = malloc(4 * (size_t)N);
        for (int b = 0; b < B; b++) {
            int s = 0;
            for (int t = 0; t < T; t++) { if (t > 0 && t_rng_next(&rng) % 23 == 0) s++; seg[b * T + t] = s; }
        }
        dseg = to_dev(seg, 4 * (size_t)N);
    }
    size_t nq = (size_t)N * Hq * hd, nk = (size_t)N * Hkv * hd;
    float *q = malloc(4 * nq), *k = malloc(4 * nk), *v = malloc(4 * nk);
    for (int n = 0; n < N; n++) {
        memcpy(q + (size_t)n * Hq * hd, qkv + (size_t)n * ld, 4 * (size_t)Hq * hd);
        memcpy(k + (size_t)n * Hkv * hd, qkv + (size_t)n * ld + Hq * hd, 4 * (size_t)Hkv * hd);
        memcpy(v + (size_t)n * Hkv * hd, qkv + (size_t)n * ld + (Hq + Hkv) * hd, 4 * (size_t)Hkv * hd);
    }
    float *ref = malloc(4 * nq), *probs = malloc(4 * (size_t)B * Hq * T * T);
    attention_forward(ref, probs, q, k, v, seg, B, T, Hq, Hkv, hd);
    float *rdq = malloc(4 * nq), *rdk = malloc(4 * nk), *rdv = malloc(4 * nk);
    // the CPU backward uses the fp32 output's probabilities; the GPU's dO·O term uses its bf16 output, a small extra
    // rounding inside the bound
    attention_backward(rdq, rdk, rdv, dout, probs, q, k, v, B, T, Hq, Hkv, hd);
    char op[64], what[64];
    snprintf(op, sizeof op, "attention %s", cuda_attention_uses_flash(hd) ? "(flash)" : "(simple)");
    snprintf(what, sizeof what, "fwd B%d T%d H%d/%d hd%d%s", B, T, Hq, Hkv, hd, with_seg ? " seg" : "");
    float *gq = malloc(4 * nq), *gk = malloc(4 * nk), *gv = malloc(4 * nk), *got = NULL;
    // every kernel variant (flash head sizes); the default one (-1) last, with its own table rows
    int nvar = cuda_attention_uses_flash(hd) ? CUDA_ATTN_BWD_VARIANTS : 0;
    double worst_f = 0, worst_b = 0;
    size_t amax_bad = 0;   // cuda_attention_forward_amax: the same output bits, amax = max |out|, no NaN flag
    cuda_attention_amax_on(1);
    for (int var = 0; var <= nvar; var++) {
        int dflt = var == nvar;
        cuda_attention_set_fwd_variant(dflt ? -1 : var % CUDA_ATTN_FWD_VARIANTS);
        cuda_attention_set_bwd_variant(dflt ? -1 : var);
        halo_bf16 *out = dev_poison(2 * (size_t)N * Hq * hd), *dqkv = dev_poison(2 * (size_t)N * ld);
        float *lse = dev_poison(4 * (size_t)N * Hq);
        void *scratch = dev_poison(cuda_attention_scratch_bytes(B, T, Hq, Hkv, hd));
        cuda_attention_forward(out, lse, dqkv_in, dseg, B, T, Hq, Hkv, hd, 0);
        cuda_attention_backward(dqkv, scratch, ddout, out, lse, dqkv_in, dseg, B, T, Hq, Hkv, hd, 0);
        cudaError_t e = cudaDeviceSynchronize();
        CHECK(e == cudaSuccess, "attention kernels: %s", cudaGetErrorString(e));
        got = from_dev_bf16(out, nq);
        double ef = rel_l2_f(got, ref, nq);
        if (cuda_attention_forward_amax_ok(hd)) {
            halo_bf16 *out2 = dev_poison(2 * (size_t)N * Hq * hd);
            float *lse2 = dev_poison(4 * (size_t)N * Hq), *dam = to_dev((float[1]){0}, 4);
            int *dnf = to_dev((int[1]){0}, 4);
            cuda_attention_forward_amax(out2, lse2, dqkv_in, dseg, B, T, Hq, Hkv, hd, dam, dnf, 0);
            float *got2 = from_dev_bf16(out2, nq), am, mx = 0.f;
            int nf;
            cudaMemcpy(&am, dam, 4, cudaMemcpyDeviceToHost);
            cudaMemcpy(&nf, dnf, 4, cudaMemcpyDeviceToHost);
            for (size_t i = 0; i < nq; i++) {
                amax_bad += memcmp(&got[i], &got2[i], 4) != 0;
                mx = fmaxf(mx, fabsf(got[i]));
            }
            amax_bad += (am != mx) + (nf != 0);
            free(got2);
            cudaFree(out2); cudaFree(lse2); cudaFree(dam); cudaFree(dnf);
        }
        free(got);
        got = from_dev_bf16(dqkv, (size_t)N * ld);
        for (int n = 0; n < N; n++) {
            memcpy(gq + (size_t)n * Hq * hd, got + (size_t)n * ld, 4 * (size_t)Hq * hd);
            memcpy(gk + (size_t)n * Hkv * hd, got + (size_t)n * ld + Hq * hd, 4 * (size_t)Hkv * hd);
            memcpy(gv + (size_t)n * Hkv * hd, got + (size_t)n * ld + (Hq + Hkv) * hd, 4 * (size_t)Hkv * hd);
        }
        free(got);
        double eq = rel_l2_f(gq, rdq, nq), ek = rel_l2_f(gk, rdk, nk), ev = rel_l2_f(gv, rdv, nk);
        if (dflt) {
            table_row(op, what, ef, 1e-2);
            table_row(op, "bwd dq", eq, 2e-2);
            table_row(op, "bwd dk", ek, 2e-2);
            table_row(op, "bwd dv", ev, 2e-2);
        } else {
            double eb = fmax(eq, fmax(ek, ev));
            printf("  %s %s: fwd variant %d rel L2 %.2e, bwd variant %d worst of dq/dk/dv %.2e\n", op, what,
                   var % CUDA_ATTN_FWD_VARIANTS, ef, var, eb);
            if (!(ef <= worst_f)) worst_f = ef;
            if (!(eb <= worst_b)) worst_b = eb;
        }
        cudaFree(out); cudaFree(dqkv); cudaFree(lse); cudaFree(scratch);
    }
    cuda_attention_amax_on(0);   // (the default)
    if (nvar) {
        table_row(op, "fwd with amax: output bits, amax, flag", (double)amax_bad, 0);
        table_row(op, "fwd, every kernel variant", worst_f, 1e-2);
        table_row(op, "bwd, every kernel variant", worst_b, 2e-2);
    }
    cuda_attention_set_fwd_variant(-1);
    cuda_attention_set_bwd_variant(-1);
    free(gq); free(gk); free(gv); free(rdq); free(rdk); free(rdv); free(ref); free(probs);
    free(q); free(k); free(v); free(qkv); free(dout); free(seg);
    cudaFree(dqkv_in); cudaFree(ddout); cudaFree(dseg);
}

static void test_cross_entropy(int N, int V, int in_place) {
    float *x = rand_vec((size_t)N * V, 3);
    int32_t *t = malloc(4 * (size_t)N);
    for (int i = 0; i < N; i++) t[i] = i % 4 == 3 ? -1 : (int)(t_rng_next(&rng) % V);
    halo_bf16 *dx = to_dev_bf16(x, (size_t)N * V);   // x now holds the bf16-rounded logits
    int32_t *dt = to_dev(t, 4 * (size_t)N);
    halo_bf16 *dl = in_place ? dx : dev_poison(2 * (size_t)N * V);
    double *dsum, sum = 0;
    cudaMalloc((void **)&dsum, 8);
    cudaMemset(dsum, 0, 8);
    cuda_cross_entropy(dl, dsum, dx, dt, N, V, 0.25f, 0);
    cudaMemcpy(&sum, dsum, 8, cudaMemcpyDeviceToHost);
    float *ref = malloc(4 * (size_t)N * V);
    double rsum = cross_entropy_forward_backward(ref, x, t, N, V, 0.25f);
    char what[64];
    snprintf(what, sizeof what, "loss sum N=%d V=%d%s", N, V, in_place ? " in place" : "");
    table_row("cross-entropy", what, fabs(sum - rsum) / fabs(rsum), 1e-5);
    float *got = from_dev_bf16(dl, (size_t)N * V);
    table_row("cross-entropy", "dlogits (bf16)", rel_l2_f(got, ref, (size_t)N * V), 1e-2);
    free(got); free(ref); free(x); free(t);
    if (!in_place) cudaFree(dl);
    cudaFree(dx); cudaFree(dt); cudaFree(dsum);
}

// g_bf16: bf16 gradients (the CPU gets the same rounded values). shift: every device array starts one element
// past an aligned address, which takes the element-by-element path instead of the 4-wide one.
static void test_adamw(int mom_bf16, int g_bf16, int shift) {
    size_t n = 10007, msz = mom_bf16 ? 2 : 4;
    float *p = rand_vec(n, 0.5), *pc = malloc(4 * n);
    memcpy(pc, p, 4 * n);
    float *dp0, *dp;
    char *dg0, *m0, *v0;
    halo_bf16 *w0;
    cudaMalloc((void **)&dp0, 4 * (n + 1)); cudaMalloc((void **)&dg0, 4 * (n + 1));
    cudaMalloc((void **)&m0, 4 * (n + 1)); cudaMalloc((void **)&v0, 4 * (n + 1)); cudaMalloc((void **)&w0, 2 * (n + 1));
    dp = dp0 + shift;
    void *dg = dg0 + shift * (g_bf16 ? 2 : 4), *m = m0 + shift * msz, *v = v0 + shift * msz;
    halo_bf16 *w16 = w0 + shift;
    cudaMemcpy(dp, p, 4 * n, cudaMemcpyHostToDevice);
    cudaMemset(m0, 0, 4 * (n + 1)); cudaMemset(v0, 0, 4 * (n + 1));
    double *ss;
    cudaMalloc((void **)&ss, 8);
    adamw_config cfg = adamw_config_default();
    cfg.weight_decay = 0.1f; cfg.decay_all = 1;
    adamw_state st;
    adamw_init(&st, &cfg, n, NULL, 0);
    float clip = 1.0f;
    double ss_err = 0;
    for (int step = 1; step <= 5; step++) {
        float *g = rand_vec(n, step == 3 ? 0.001 : 0.05);   // steps above and below the clip threshold
        if (g_bf16) {
            halo_bf16 *gd = to_dev_bf16(g, n);   // rounds g too
            cudaMemcpy(dg, gd, 2 * n, cudaMemcpyDeviceToDevice);
            cudaFree(gd);
        } else cudaMemcpy(dg, g, 4 * n, cudaMemcpyHostToDevice);
        cudaMemset(ss, 0, 8);
        if (g_bf16) cuda_sumsq_bf16(ss, dg, n, 0);
        else cuda_sumsq(ss, dg, n, 0);
        cuda_adamw(dp, w16, dg, g_bf16, m, v, mom_bf16, n, 1e-2f, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, step,
                   ss, clip, 0);
        double got_ss, ref_ss = 0;
        cudaMemcpy(&got_ss, ss, 8, cudaMemcpyDeviceToHost);
        for (size_t i = 0; i < n; i++) ref_ss += (double)g[i] * g[i];
        if (fabs(got_ss - ref_ss) / ref_ss > ss_err) ss_err = fabs(got_ss - ref_ss) / ref_ss;
        grad_clip_global_norm(g, n, clip);
        adamw_step(&st, pc, g, 1e-2f);
        free(g);
    }
    float *got = from_dev(dp, n), *got16 = from_dev_bf16(w16, n);
    // compare the parameter change, the part AdamW computes
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d_ref = pc[i] - p[i], d = got[i] - p[i];
        num += (d - d_ref) * (d - d_ref); den += d_ref * d_ref;
    }
    char what[64];
    snprintf(what, sizeof what, "5 steps, %s mom., %s grads%s", mom_bf16 ? "bf16" : "fp32", g_bf16 ? "bf16" : "fp32",
             shift ? ", unaligned" : "");
    table_row("adamw + clip", what, sqrt(num / den), mom_bf16 ? 2e-2 : 1e-4);
    table_row("adamw + clip", "bf16 working copy", rel_l2_f(got16, got, n), 1e-2);
    table_row("adamw + clip", g_bf16 ? "sum of squares, bf16 grads" : "sum of squares", ss_err, 1e-5);
    adamw_free(&st);
    free(p); free(pc); free(got); free(got16);
    cudaFree(dp0); cudaFree(dg0); cudaFree(m0); cudaFree(v0); cudaFree(w0); cudaFree(ss);
}

// Array k (0 p, 1 w16, 2 m, 3 v) of the two AdamW states [0] and [1] copied to the host (bytes each; freed by the caller).
static void adamw_state_to_host(int k, float *dp[2], halo_bf16 *dw[2], void *dm[2], void *dv[2], size_t bytes,
                                unsigned char **ha, unsigned char **hb) {
    unsigned char **h[2] = {ha, hb};
    for (int u = 0; u < 2; u++) {
        const void *src = k == 0 ? (void *)dp[u] : k == 1 ? (void *)dw[u] : k == 2 ? dm[u] : dv[u];
        *h[u] = malloc(bytes);
        cudaMemcpy(*h[u], src, bytes, cudaMemcpyDeviceToHost);
    }
}

// cuda_adamw_segments: every segment's p, w16, m, v bit for bit those of cuda_adamw over it (weight decay per
// segment, the gap between segments untouched, a segment whose length is not a multiple of 8, blocks that run several
// chunks), and each HALO slot's
// amax of the stored bf16 values exactly: plain, and rotated in blocks of 256 and 32 along rows (against the CPU's
// Hadamard); the slots are zeroed by the call; a NaN gradient flags its segment only.
static void test_adamw_segments(int mom_bf16) {
    enum { NS = 4 };
    // 1189 chunks of 8192: more than an H100's 1056 blocks, so some blocks run two and cross a segment's end
    const struct { size_t off, n; int decay, amax, lb, d; } S[NS] = {
        {0, 16000 * 256, 1, 1, 0, 256},             // plain amax
        {4096000, 3000 * 1024, 1, 1, 8, 1024},      // rotated in blocks of 256
        {7168008, 1003, 0, 0, 0, 1},                // after a gap of 8, no decay, no amax, an element-wise tail
        {7169016, 5000 * 512, 1, 1, 5, 512}};       // rotated in blocks of 32, the last chunk partial
    const size_t n = 7169016 + 5000 * 512, gap = 7168000, msz = mom_bf16 ? 2 : 4;
    float *p = rand_vec(n, 0.5), *g = NULL;
    float *dp[2], *dg;
    halo_bf16 *dw[2];
    void *dm[2], *dv[2];
    for (int k = 0; k < 2; k++) {   // 0: segments, 1: cuda_adamw segment by segment
        dp[k] = to_dev(p, 4 * n);
        dw[k] = dev_poison(2 * n);
        cudaMalloc(&dm[k], msz * n); cudaMemset(dm[k], 0, msz * n);
        cudaMalloc(&dv[k], msz * n); cudaMemset(dv[k], 0, msz * n);
    }
    cudaMalloc((void **)&dg, 4 * n);
    float *dam = to_dev((float[NS]){0, 0, 0, 0}, 4 * NS);
    int *dnf = to_dev((int[NS]){0, 0, 0, 0}, 4 * NS);
    cuda_adamw_seg t[NS];
    halo_hadamard h[NS];
    for (int i = 0; i < NS; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].off = S[i].off; t[i].n = S[i].n; t[i].decay = S[i].decay; t[i].rot_lb = S[i].lb; t[i].rot_scale = 1.f;
        t[i].amax = S[i].amax ? dam + i : NULL; t[i].nf = dnf + i;
        if (S[i].lb) {
            if (halo_hadamard_plan(&h[i], S[i].d, 1 << S[i].lb)) abort();
            t[i].rot_scale = h[i].scale;
        }
    }
    unsigned c = 0;
    for (int i = 0; i < NS; i++) { t[i].first_chunk = c; c += (unsigned)((S[i].n + 8191) / 8192); }
    const int chunks = cuda_adamw_seg_check(t, NS);
    table_row("adamw segments", "table check: chunks", chunks == (int)c ? 0 : 1, 0);
    cuda_adamw_seg *dt = to_dev(t, sizeof t);
    double *ss;
    cudaMalloc((void **)&ss, 8);
    for (int step = 1; step <= 4; step++) {
        free(g);
        g = rand_vec(n, step == 2 ? 0.001 : 0.05);
        if (step == 4) g[S[1].off + 777] = NAN;   // the last step: a NaN gradient in segment 1
        cudaMemcpy(dg, g, 4 * n, cudaMemcpyHostToDevice);
        cudaMemset(ss, 0, 8);
        if (step < 4) cuda_sumsq(ss, dg, n, 0);
        cudaMemcpy(dam, (float[NS]){1e30f, 1e30f, 1e30f, 1e30f}, 4 * NS, cudaMemcpyHostToDevice);   // zeroed by the call
        cuda_adamw_segments(dp[0], dw[0], dg, dm[0], dv[0], mom_bf16, dt, NS, chunks, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f,
                            step, step < 4 ? ss : NULL, 1.f, 0);
        for (int i = 0; i < NS; i++)
            cuda_adamw(dp[1] + S[i].off, dw[1] + S[i].off, dg + S[i].off, 0, (char *)dm[1] + msz * S[i].off,
                       (char *)dv[1] + msz * S[i].off, mom_bf16, S[i].n, 1e-2f, 0.9f, 0.95f, 1e-8f,
                       S[i].decay ? 0.1f : 0.f, step, step < 4 ? ss : NULL, 1.f, 0);
        if (step == 4) break;
        float am[NS];
        cudaMemcpy(am, dam, 4 * NS, cudaMemcpyDeviceToHost);
        double e = 0;
        for (int i = 0; i < NS; i++) {
            if (!S[i].amax) continue;
            float ref = 0.f;
            if (S[i].lb) ref = rotated_amax(dw[0] + S[i].off, (int)(S[i].n / S[i].d), S[i].d, &h[i]);
            else {
                float *w = from_dev_bf16(dw[0] + S[i].off, S[i].n);
                for (size_t j = 0; j < S[i].n; j++) ref = fmaxf(ref, fabsf(w[j]));
                free(w);
            }
            e = fmax(e, fabs((double)am[i] - ref) / ref);
        }
        char what[64];
        snprintf(what, sizeof what, "step %d %s mom.: amax (plain, 256, 32)", step, mom_bf16 ? "bf16" : "fp32");
        table_row("adamw segments", what, e, 0);
    }
    // the state after 3 steps and the NaN step: the same bits as cuda_adamw's (NaN included), the gap untouched
    size_t diff = 0;
    const char *an[4] = {"p", "w16", "m", "v"};
    const size_t es[4] = {4, 2, msz, msz};
    for (int k = 0; k < 4; k++) {
        unsigned char *ha, *hb;
        adamw_state_to_host(k, dp, dw, dm, dv, es[k] * n, &ha, &hb);
        size_t dk = 0;
        for (int i = 0; i < NS; i++)
            for (size_t j = S[i].off; j < S[i].off + S[i].n; j++)
                if (memcmp(ha + es[k] * j, hb + es[k] * j, es[k]) && dk++ < 3)
                    printf("   adamw segments: %s[%zu] (segment %d + %zu) differs\n", an[k], j, i, j - S[i].off);
        if (k == 0)
            for (size_t j = gap; j < gap + 8; j++) dk += memcmp(ha + 4 * j, &p[j], 4) != 0;
        diff += dk;
        free(ha); free(hb);
    }
    char what[64];
    snprintf(what, sizeof what, "p, w16, m, v vs cuda_adamw (%s mom.)", mom_bf16 ? "bf16" : "fp32");
    table_row("adamw segments", what, (double)diff, 0);
    int nf[NS];
    cudaMemcpy(nf, dnf, 4 * NS, cudaMemcpyDeviceToHost);
    table_row("adamw segments", "NaN gradient: flags 0,1,0,0", (nf[0] != 0) + (nf[1] != 1) + (nf[2] != 0) + (nf[3] != 0), 0);
    free(p); free(g);
    for (int k = 0; k < 2; k++) { cudaFree(dp[k]); cudaFree(dw[k]); cudaFree(dm[k]); cudaFree(dv[k]); }
    cudaFree(dg); cudaFree(dam); cudaFree(dnf); cudaFree(dt); cudaFree(ss);
}

// cuda_adamw_segments writing W's codes (delayed scaling): segments with codes (96 x 512, 64 x 256, and 40 x 768 over
// 4 chunks, the last partial) around one without, over 3 steps: the codes' amax is the amax slot's value before the
// call (set to 0.7x, 1x and 1.3x of the weights' so that some values saturate), the slot then holds the updated bf16
// weights' amax, q holds halo_cuda_quant_tile's row-major codes of those weights with the codes' amax bit for bit,
// and p, w16, m, v are cuda_adamw's bits.
static void test_adamw_segments_codes(int fmt, int mom_bf16) {
    enum { NS = 4 };
    const struct { size_t off; int rows, cols, codes; } S[NS] = {
        {0, 96, 512, 1}, {49152, 7, 200, 0}, {50560, 64, 256, 1}, {66944, 40, 768, 1}};
    const size_t n = 66944 + 40 * 768, msz = mom_bf16 ? 2 : 4;
    float *p = rand_vec(n, 0.5);
    float *dp[2], *dg;
    halo_bf16 *dw[2];
    void *dm[2], *dv[2];
    for (int k = 0; k < 2; k++) {
        dp[k] = to_dev(p, 4 * n);
        dw[k] = dev_poison(2 * n);
        cudaMalloc(&dm[k], msz * n); cudaMemset(dm[k], 0, msz * n);
        cudaMalloc(&dv[k], msz * n); cudaMemset(dv[k], 0, msz * n);
    }
    cudaMalloc((void **)&dg, 4 * n);
    float *dam = to_dev((float[2 * NS]){0}, 4 * 2 * NS);   // [0, NS): amax slots, [NS, 2 NS): the codes' amax
    int *dnf = to_dev((int[NS]){0}, 4 * NS);
    uint8_t *dq[NS], *rq[NS];
    cuda_adamw_seg t[NS];
    unsigned c = 0;
    for (int i = 0; i < NS; i++) {
        const size_t ne = (size_t)S[i].rows * S[i].cols;
        memset(&t[i], 0, sizeof t[i]);
        t[i].off = S[i].off; t[i].n = ne; t[i].decay = 1; t[i].rot_scale = 1.f; t[i].first_chunk = c;
        c += (unsigned)((ne + 8191) / 8192);
        dq[i] = rq[i] = NULL;
        if (!S[i].codes) continue;
        dq[i] = dev_poison(ne);
        rq[i] = dev_poison(ne);
        t[i].amax = dam + i; t[i].nf = dnf + i; t[i].q = dq[i]; t[i].fmt = fmt; t[i].code_amax = dam + NS + i;
    }
    const int chunks = cuda_adamw_seg_check(t, NS);
    char what[96];
    snprintf(what, sizeof what, "codes %s, %s mom.: table check", fmt == HALO_CUDA_INT8 ? "int8" : "e4m3",
             mom_bf16 ? "bf16" : "fp32");
    table_row("adamw segments", what, chunks == (int)c ? 0 : 1, 0);
    cuda_adamw_seg *dt = to_dev(t, sizeof t);
    double worst_amax = 0;
    size_t bad_codes = 0, bad_state = 0;
    const float factor[3] = {0.7f, 1.f, 1.3f};
    for (int step = 1; step <= 3; step++) {
        float *g = rand_vec(n, 0.05);
        cudaMemcpy(dg, g, 4 * n, cudaMemcpyHostToDevice);
        free(g);
        float prev[NS];   // the slots before the call: a factor of the current bf16 weights' amax
        for (int i = 0; i < NS; i++) {
            prev[i] = 0.f;
            if (!S[i].codes) continue;
            float *w = step == 1 ? NULL : from_dev_bf16(dw[0] + S[i].off, t[i].n);
            for (size_t j = 0; j < t[i].n; j++)
                prev[i] = fmaxf(prev[i], fabsf(w ? w[j] : p[S[i].off + j]));
            free(w);
            prev[i] *= factor[(step + i) % 3];
        }
        cudaMemcpy(dam, prev, 4 * NS, cudaMemcpyHostToDevice);
        cuda_adamw_segments(dp[0], dw[0], dg, dm[0], dv[0], mom_bf16, dt, NS, chunks, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f,
                            step, NULL, 0.f, 0);
        for (int i = 0; i < NS; i++)
            cuda_adamw(dp[1] + S[i].off, dw[1] + S[i].off, dg + S[i].off, 0, (char *)dm[1] + msz * S[i].off,
                       (char *)dv[1] + msz * S[i].off, mom_bf16, t[i].n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, step, NULL,
                       0.f, 0);
        float am[2 * NS];
        cudaMemcpy(am, dam, 4 * 2 * NS, cudaMemcpyDeviceToHost);
        for (int i = 0; i < NS; i++) {
            if (!S[i].codes) continue;
            const size_t ne = t[i].n;
            float *w = from_dev_bf16(dw[0] + S[i].off, ne), ref = 0.f;
            for (size_t j = 0; j < ne; j++) ref = fmaxf(ref, fabsf(w[j]));
            free(w);
            worst_amax = fmax(worst_amax, fabs((double)am[i] - ref) / ref);
            bad_codes += am[NS + i] != prev[i];
            halo_cuda_quant_tile(dw[0] + S[i].off, HALO_CUDA_BF16, S[i].cols, S[i].rows, S[i].cols, dam + NS + i, fmt,
                                 rq[i], S[i].cols, NULL, 0, S[i].rows, 0);
            uint8_t *a = malloc(ne), *b = malloc(ne);
            cudaMemcpy(a, dq[i], ne, cudaMemcpyDeviceToHost); cudaMemcpy(b, rq[i], ne, cudaMemcpyDeviceToHost);
            for (size_t j = 0; j < ne; j++) bad_codes += a[j] != b[j];
            free(a); free(b);
        }
    }
    const size_t es[4] = {4, 2, msz, msz};
    for (int k = 0; k < 4; k++) {
        unsigned char *ha, *hb;
        adamw_state_to_host(k, dp, dw, dm, dv, es[k] * n, &ha, &hb);
        for (int i = 0; i < NS; i++) bad_state += memcmp(ha + es[k] * S[i].off, hb + es[k] * S[i].off, es[k] * t[i].n) != 0;
        free(ha); free(hb);
    }
    snprintf(what, sizeof what, "codes %s, %s mom.: amax", fmt == HALO_CUDA_INT8 ? "int8" : "e4m3", mom_bf16 ? "bf16" : "fp32");
    table_row("adamw segments", what, worst_amax, 0);
    snprintf(what, sizeof what, "codes %s, %s mom.: codes, scale", fmt == HALO_CUDA_INT8 ? "int8" : "e4m3", mom_bf16 ? "bf16" : "fp32");
    table_row("adamw segments", what, (double)bad_codes, 0);
    snprintf(what, sizeof what, "codes %s, %s mom.: p, w16, m, v", fmt == HALO_CUDA_INT8 ? "int8" : "e4m3", mom_bf16 ? "bf16" : "fp32");
    table_row("adamw segments", what, (double)bad_state, 0);
    free(p);
    for (int i = 0; i < NS; i++) { cudaFree(dq[i]); cudaFree(rq[i]); }
    for (int k = 0; k < 2; k++) { cudaFree(dp[k]); cudaFree(dw[k]); cudaFree(dm[k]); cudaFree(dv[k]); }
    cudaFree(dg); cudaFree(dam); cudaFree(dnf); cudaFree(dt);
}

// lora.c's dropout mask, as there: kept when the 16-bit draw, bits 16 (i % 4) .. of the splitmix64 hash of (key,
// adapter, i / 4), is >= ceil(p 2^16) (test.h's generator advanced once from key + golden (lin 2^32 + i / 4) gives that
// hash).
static int lora_keeps_ref(unsigned long long key, int lin, size_t i, double p) {
    unsigned long long st = key + 0x9E3779B97F4A7C15ULL * ((unsigned long long)lin * 0x100000000ULL + i / 4);
    return ((t_rng_next(&st) >> (16 * (i % 4))) & 0xFFFF) >= ceil(p * 65536.0);
}
static double rel_l2_d(const double *ref, const float *got, size_t n) {
    double e = 0, r = 0;
    for (size_t i = 0; i < n; i++) { e += (got[i] - ref[i]) * (got[i] - ref[i]); r += ref[i] * ref[i]; }
    return sqrt(e / (r > 0 ? r : 1e-300));
}

// lora.cu's grouped kernels for G adapters of rank r on X [N, in] under dropout p (0: none) against float64 sums
// over the bf16 inputs with lora.c's mask: U_j = alpha mask_j(X) A_j^T, the keep bits bit for bit, gA_j += keep
// dU_j^T mask_j(X), dX += keep sum_j mask_j(dU_j A_j) (bf16, and fp32 to 1e-5: nothing rounded).
static void test_lora_group(int N, int in, int r, int G, double p) {
    char what[64];
    snprintf(what, sizeof what, "N %d in %d r %d G %d p %g", N, in, r, G, p);
    if (!cuda_lora_group_ok(r, in, G)) { CHECK(0, "lora group %s not supported", what); return; }
    const unsigned long long key = 0x5EED1234ULL + (unsigned long long)N;
    const uint32_t thr = lora_dropout_threshold(p);
    const float alpha = 2.f, keep = (float)(1.0 / (1.0 - p));
    const size_t nx = (size_t)N * in, na = (size_t)r * in, nu = (size_t)N * r;
    float *x = rand_vec(nx, 1.0), *dx0 = rand_vec(nx, 0.05);
    halo_bf16 *dX = to_dev_bf16(x, nx), *ddx = to_dev_bf16(dx0, nx);
    cuda_lora_group gr = {.n = G};
    float *a[3], *du[3], *ga0[3];
    int lin[3];
    for (int j = 0; j < G; j++) {
        a[j] = rand_vec(na, 0.1);
        du[j] = rand_vec(nu, 1.0);
        ga0[j] = rand_vec(na, 1.0);
        lin[j] = 7 * (N % 5) + 3 * j + 1;
        gr.a[j] = to_dev_bf16(a[j], na);
        gr.du[j] = to_dev_bf16(du[j], nu);
        gr.u[j] = dev_poison(2 * nu);
        gr.ga[j] = to_dev(ga0[j], 4 * na);
        gr.bits[j] = p > 0 ? dev_poison(nx / 8) : NULL;
        gr.lin[j] = lin[j];
    }
    void *ws = dev_poison(4 * cuda_lora_da_ws_floats(N, in, r, G));
    cuda_lora_u(&gr, dX, N, in, r, alpha, key, thr, 0);
    cuda_lora_da(&gr, dX, N, in, r, keep, ws, 0);
    cuda_lora_dx(&gr, ddx, N, in, r, keep, 0);
    float *ddx32 = to_dev(dx0, 4 * nx);   // (dx0 holds bf16 values now)
    cuda_lora_dx_f32(&gr, ddx32, N, in, r, keep, 0);
    cudaDeviceSynchronize();
    unsigned char *mask = malloc(nx);
    double *ru = malloc(8 * nu), *ra = malloc(8 * na), *rdx = calloc(nx, 8);
    size_t bad_bits = 0;
    double eu = 0, ea = 0;
    for (int j = 0; j < G; j++) {
        for (size_t i = 0; i < nx; i++) mask[i] = p > 0 ? lora_keeps_ref(key, lin[j], i, p) : 1;
        if (p > 0) {
            unsigned char *bits = malloc(nx / 8);
            cudaMemcpy(bits, gr.bits[j], nx / 8, cudaMemcpyDeviceToHost);
            for (size_t i = 0; i < nx; i++) bad_bits += ((bits[i / 8] >> (i % 8)) & 1) != mask[i];
            free(bits);
        }
        for (int t = 0; t < N; t++)
            for (int n = 0; n < r; n++) {
                double s = 0;
                for (int c = 0; c < in; c++)
                    if (mask[(size_t)t * in + c]) s += (double)x[(size_t)t * in + c] * a[j][(size_t)n * in + c];
                ru[(size_t)t * r + n] = alpha * s;
            }
        for (int n = 0; n < r; n++)
            for (int c = 0; c < in; c++) {
                double s = 0;
                for (int t = 0; t < N; t++)
                    if (mask[(size_t)t * in + c]) s += (double)du[j][(size_t)t * r + n] * x[(size_t)t * in + c];
                ra[(size_t)n * in + c] = keep * s;
            }
        for (int t = 0; t < N; t++)
            for (int c = 0; c < in; c++) {
                if (!mask[(size_t)t * in + c]) continue;
                double s = 0;
                for (int n = 0; n < r; n++) s += (double)du[j][(size_t)t * r + n] * a[j][(size_t)n * in + c];
                rdx[(size_t)t * in + c] += keep * s;
            }
        float *u = from_dev_bf16(gr.u[j], nu), *ga = from_dev(gr.ga[j], na);
        for (size_t i = 0; i < na; i++) ga[i] -= ga0[j][i];   // the increment
        const double e1 = rel_l2_d(ru, u, nu), e2 = rel_l2_d(ra, ga, na);
        eu = e1 > eu ? e1 : eu;
        ea = e2 > ea ? e2 : ea;
        free(u); free(ga);
    }
    float *dxo = from_dev_bf16(ddx, nx), *dxo32 = from_dev(ddx32, nx);
    for (size_t i = 0; i < nx; i++) dxo[i] -= dx0[i], dxo32[i] -= dx0[i];
    table_row("lora group U", what, eu, 5e-3);
    table_row("lora group dA", what, ea, 1e-5);
    table_row("lora group dX", what, rel_l2_d(rdx, dxo, nx), 1e-2);
    table_row("lora group dX into fp32", what, rel_l2_d(rdx, dxo32, nx), 1e-5);
    if (p > 0) table_row("lora group keep bits", "mismatches", (double)bad_bits, 0);
    for (int j = 0; j < G; j++) {
        cudaFree((void *)gr.a[j]); cudaFree((void *)gr.du[j]); cudaFree(gr.u[j]); cudaFree(gr.ga[j]); cudaFree(gr.bits[j]);
        free(a[j]); free(du[j]); free(ga0[j]);
    }
    cudaFree(ws); cudaFree(dX); cudaFree(ddx); cudaFree(ddx32);
    free(x); free(dx0); free(mask); free(ru); free(ra); free(rdx); free(dxo); free(dxo32);
}

// cuda_lora_b: for G adapters whose output columns lie side by side in dY [N, ld] (with gap columns between them when
// gap), gB_j += dY_j^T U_j and dU_j = scale dY_j B_j against float64 sums over the bf16 inputs.
static void test_lora_b(int N, int r, int G, const int *outs, int gap) {
    char what[80];
    snprintf(what, sizeof what, "N %d r %d outs %d,%d,%d%s", N, r, outs[0], G > 1 ? outs[1] : 0, G > 2 ? outs[2] : 0,
             gap ? " gaps" : "");
    int col[3], ld = 0;
    for (int j = 0; j < G; j++) { col[j] = ld + (gap ? 8 : 0); ld = col[j] + outs[j]; }
    ld += gap ? 16 : 0;
    const size_t ny = (size_t)N * ld, nu = (size_t)N * r;
    const float scale = 0.5f;
    float *y = rand_vec(ny, 1.0);
    halo_bf16 *dy = to_dev_bf16(y, ny);
    cuda_lora_bgroup gr = {.n = G};
    float *u[3], *b[3], *gb0[3];
    for (int j = 0; j < G; j++) {
        const size_t nb = (size_t)outs[j] * r;
        u[j] = rand_vec(nu, 1.0);
        b[j] = rand_vec(nb, 0.1);
        gb0[j] = rand_vec(nb, 1.0);
        gr.dy[j] = dy + col[j];
        gr.out[j] = outs[j];
        gr.u[j] = to_dev_bf16(u[j], nu);
        gr.b[j] = to_dev_bf16(b[j], nb);
        gr.gb[j] = to_dev(gb0[j], 4 * nb);
        gr.du[j] = dev_poison(2 * nu);
    }
    if (!cuda_lora_b_ok(&gr, r, ld)) { CHECK(0, "cuda_lora_b_ok %s", what); return; }
    void *ws = dev_poison(4 * cuda_lora_b_ws_floats(N, outs, G, r));
    cuda_lora_b(&gr, N, ld, r, scale, ws, 0);
    cudaDeviceSynchronize();
    double edu = 0, egb = 0;
    for (int j = 0; j < G; j++) {
        const size_t nb = (size_t)outs[j] * r;
        double *rdu = malloc(8 * nu), *rgb = malloc(8 * nb);
        for (int t = 0; t < N; t++)
            for (int k = 0; k < r; k++) {
                double sum = 0;
                for (int c = 0; c < outs[j]; c++) sum += (double)y[(size_t)t * ld + col[j] + c] * b[j][(size_t)c * r + k];
                rdu[(size_t)t * r + k] = scale * sum;
            }
        for (int c = 0; c < outs[j]; c++)
            for (int k = 0; k < r; k++) {
                double sum = 0;
                for (int t = 0; t < N; t++) sum += (double)y[(size_t)t * ld + col[j] + c] * u[j][(size_t)t * r + k];
                rgb[(size_t)c * r + k] = sum;
            }
        float *du = from_dev_bf16(gr.du[j], nu), *gb = from_dev(gr.gb[j], nb);
        for (size_t i = 0; i < nb; i++) gb[i] -= gb0[j][i];   // the increment
        const double e1 = rel_l2_d(rdu, du, nu), e2 = rel_l2_d(rgb, gb, nb);
        edu = e1 > edu ? e1 : edu;
        egb = e2 > egb ? e2 : egb;
        free(rdu); free(rgb); free(du); free(gb);
        cudaFree((void *)gr.u[j]); cudaFree((void *)gr.b[j]); cudaFree(gr.gb[j]); cudaFree(gr.du[j]);
        free(u[j]); free(b[j]); free(gb0[j]);
    }
    table_row("lora B side dU", what, edu, 1e-2);
    table_row("lora B side dB", what, egb, 1e-5);
    cudaFree(ws); cudaFree(dy);
    free(y);
}

// cuda_lora_y: Y [N, out] (row stride ld, bf16 or fp32) += U B^T against float64, the columns outside untouched.
static void test_lora_y(int N, int out, int ld, int r, int f32) {
    char what[64];
    snprintf(what, sizeof what, "N %d out %d ld %d r %d %s", N, out, ld, r, f32 ? "fp32" : "bf16");
    const size_t ny = (size_t)N * ld;
    float *u = rand_vec((size_t)N * r, 1.0), *b = rand_vec((size_t)out * r, 0.1), *y0 = rand_vec(ny, 0.05);
    halo_bf16 *du = to_dev_bf16(u, (size_t)N * r), *db = to_dev_bf16(b, (size_t)out * r);
    void *dy = f32 ? to_dev(y0, 4 * ny) : (void *)to_dev_bf16(y0, ny);   // y0 rounded to bf16 in place for bf16
    const int col0 = ld > out ? 8 : 0;   // the adapter's columns start inside the row
    char *yj = (char *)dy + (size_t)col0 * (f32 ? 4 : 2);
    CHECK(cuda_lora_y_ok(r, out, ld, f32, yj), "cuda_lora_y_ok %s", what);
    cuda_lora_y(yj, f32, ld, du, db, N, out, r, 0);
    float *y = f32 ? from_dev(dy, ny) : from_dev_bf16(dy, ny);
    double *ref = malloc(8 * (size_t)N * out);
    float *inc = malloc(4 * (size_t)N * out);
    size_t outside = 0;
    for (int t = 0; t < N; t++)
        for (int c = 0; c < ld; c++) {
            const size_t i = (size_t)t * ld + c;
            if (c < col0 || c >= col0 + out) { outside += y[i] != y0[i]; continue; }
            double s = 0;
            for (int k = 0; k < r; k++) s += (double)u[(size_t)t * r + k] * b[(size_t)(c - col0) * r + k];
            ref[(size_t)t * out + c - col0] = s;
            inc[(size_t)t * out + c - col0] = y[i] - y0[i];
        }
    table_row("lora Y += U B^T", what, rel_l2_d(ref, inc, (size_t)N * out), f32 ? 1e-6 : 1e-2);
    table_row("lora Y += U B^T", "other columns changed", (double)outside, 0);
    free(u); free(b); free(y0); free(y); free(ref); free(inc);
    cudaFree(du); cudaFree(db); cudaFree(dy);
}
#endif

int main(void) {
#ifndef HALO_CUDA
    SKIP("built without CUDA (no nvcc, or SAN=1): CUDA op tests skipped");
    TEST_END();
#else
    char gpu_why[256];
    if (!cuda_device_usable(gpu_why, sizeof gpu_why)) { SKIP("%s: CUDA op tests skipped", gpu_why); TEST_END(); }
    printf("| %-22s | %-26s | %9s | %7s | %s |\n", "op (CUDA vs CPU fp32)", "check", "rel err", "bound", "ok");
    test_linear(64, 96, 80);
    test_linear(300, 256, 520);
    test_embedding();
    test_rmsnorm(50, 64, 1);
    test_rmsnorm(33, 2048, 1);
    test_rmsnorm(37, 130, 1);      // D % 4 != 0: the scalar path
    test_rmsnorm(29, 77, 0);       // odd N and D, separate dx, no residual, no bf16 copy
    test_rmsnorm(3001, 1024, 1);   // many blocks, each with its own dw partial sums
    test_rmsnorm(2048, 4096, 0);   // dw in 16 KiB of shared memory
    test_rope(64);
    test_rope(12);
    test_rope_amax(70, 64);
    test_rope_amax(1300, 64);
    test_rope_amax(70, 12);
    test_swiglu(200);   // 8 columns a thread
    test_swiglu(172);   // 2 columns a thread (F % 8 != 0: stories260K)
    test_swiglu(1024);  // F % 256 == 0: also the rotated amax
    test_attention(2, 37, 4, 2, 16, 0);      // simple kernels (tiny models' head_dim)
    test_attention(2, 50, 8, 4, 8, 1);
    test_attention(2, 100, 4, 2, 64, 0);     // flash kernels, T not a multiple of the tile
    test_attention(1, 300, 8, 2, 64, 1);
    test_attention(2, 80, 4, 1, 128, 0);
    test_attention(1, 257, 4, 2, 128, 1);
    test_cross_entropy(13, 1000, 0);   // 8 logits a thread at a time
    test_cross_entropy(5, 1002, 0);    // 2
    test_cross_entropy(7, 999, 1);     // 1
    test_cross_entropy(6, 128256, 1);
    test_adamw(0, 0, 0);
    test_adamw(1, 0, 0);
    test_adamw(0, 1, 0);
    test_adamw(1, 1, 0);
    test_adamw(0, 0, 1);
    test_adamw(1, 1, 1);
    test_adamw_segments(0);
    test_adamw_segments(1);
    test_adamw_segments_codes(HALO_CUDA_INT8, 0);
    test_adamw_segments_codes(HALO_CUDA_E4M3, 1);
    test_lora_group(200, 96, 16, 3, 0.1);   // token and column tails, an idle warp
    test_lora_group(130, 320, 8, 2, 0.3);   // rank 8: zero-padded k (dX) and m (dA)
    test_lora_group(300, 256, 32, 3, 0.05);
    test_lora_group(64, 64, 32, 1, 0.0);    // no dropout
    test_lora_group(1000, 2048, 16, 2, 0.0);
    test_lora_group(777, 1024, 16, 1, 0.05);
    {
        const int qkv[3] = {2048, 512, 512}, tails[3] = {256, 64, 72}, two[2] = {520, 264}, one[1] = {2048};
        test_lora_b(3000, 16, 3, qkv, 0);    // q, k, v's proportions; 12 column blocks
        test_lora_b(200, 16, 3, tails, 1);   // token tails, column tails inside a block, gap columns
        test_lora_b(1000, 8, 2, two, 1);     // rank 8; blocks cut by the output's end
        test_lora_b(4100, 32, 1, one, 0);    // rank 32; many token splits
    }
    test_lora_y(200, 96, 112, 16, 0);   // bf16 Y inside wider rows, token and column tails
    test_lora_y(130, 320, 320, 8, 1);   // fp32 Y (o, down: the residual stream)
    test_lora_y(300, 512, 3072, 32, 0);
    cudaError_t e = cudaDeviceSynchronize();
    CHECK(e == cudaSuccess, "device: %s", cudaGetErrorString(e));
    TEST_END();
#endif
}
