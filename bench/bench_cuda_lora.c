// The LoRA adapters' products on the GPU (llama_cuda.cu's lora_forward / lora_backward_w / lora_backward_dx, through
// cuda_gemm_rm) at Llama-3.2-1B shapes with 8192 tokens and rank r, each timed alone, against the base products of
// the same linear: where a LoRA step's time goes. Per product: ms (median of reps), the bytes it must move at least
// and the rate that gives. Then variants of the slow ones, and the sum over one layer's seven linears x 16 layers
// beside the base weight-gradient products LoRA skips. Last, lora.cu's grouped kernels per input, which the model runs
// instead of the products U = X A^T, dA and dX (and the dropout mask passes) by default.
//   build/bench/bench_cuda_lora [--rank 16] [--tokens 8192] [--reps 20]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef HALO_CUDA
#include <cuda_runtime_api.h>
#include "bench.h"
#include "cuda/cuda_backend.h"
#include "model/lora.h"

#define CK(x) do { cudaError_t _e = (x); if (_e != cudaSuccess) { \
    fprintf(stderr, "CUDA %s: %s\n", #x, cudaGetErrorString(_e)); exit(1); } } while (0)

typedef struct { const char *name; int in, out, count; } lin;   // count: linears of this shape in a layer
static const lin LINS[] = {{"q/o", 2048, 2048, 2}, {"k/v", 2048, 512, 2}, {"gate/up", 2048, 8192, 2},
                           {"down", 8192, 2048, 1}};

typedef struct {
    int N, in, out, r;
    halo_bf16 *X, *Y, *dY, *dX, *W, *A, *B, *U, *dU, *T;
    float *gA, *gB, *gW, *gAt;
} bufs;

enum { P_U, P_Y, P_DB, P_DU, P_DA, P_DX, P_DA_T, P_Y_FIRST, P_BASE_Y, P_BASE_Y_ACC, P_BASE_DX, P_BASE_DW, P_Y_OWN,
       P_COUNT };
static const char *PNAME[P_COUNT] = {
    "fwd U = X A^T", "fwd Y += U B^T", "bwd dB += dY^T U", "bwd dU = s dY B", "bwd dA += dU^T X", "bwd dX += dU A",
    "variant: dA^T = X^T dU", "variant: Y = U B^T (write only)", "base Y = X W^T", "base Y = X W^T + Y (beta 1)",
    "base dX = dY W", "base dW += dY^T X (fp32)", "lora.cu: Y += U B^T (cuda_lora_y, the default)"};

// Bytes each product must read and write at least.
static double bytes_of(int p, const bufs *b) {
    const double N = b->N, in = b->in, out = b->out, r = b->r;
    switch (p) {
    case P_U: return N * in * 2 + N * r * 2;
    case P_Y: case P_Y_OWN: return N * out * 4 + N * r * 2;
    case P_DB: return N * out * 2 + N * r * 2 + out * r * 8;
    case P_DU: return N * out * 2 + N * r * 2;
    case P_DA: case P_DA_T: return N * r * 2 + N * in * 2 + r * in * 8;
    case P_DX: return N * in * 4 + N * r * 2;
    case P_Y_FIRST: return N * out * 2 + N * r * 2;
    case P_BASE_Y: return N * in * 2 + in * out * 2 + N * out * 2;
    case P_BASE_Y_ACC: return N * in * 2 + in * out * 2 + N * out * 4;
    case P_BASE_DX: return N * out * 2 + in * out * 2 + N * in * 2;
    default: return N * out * 2 + N * in * 2 + in * out * 8;
    }
}

static void run(int p, const bufs *b) {
    const int N = b->N, in = b->in, out = b->out, r = b->r;
    switch (p) {
    case P_U: cuda_gemm_rm(b->U, 0, r, b->X, in, 0, b->A, in, 1, N, r, in, 2.f, 0.f, 0); break;
    case P_Y: cuda_gemm_rm(b->Y, 0, out, b->U, r, 0, b->B, r, 1, N, out, r, 1.f, 1.f, 0); break;
    case P_DB: cuda_gemm_rm(b->gB, 1, r, b->dY, out, 1, b->U, r, 0, out, r, N, 1.f, 1.f, 0); break;
    case P_DU: cuda_gemm_rm(b->dU, 0, r, b->dY, out, 0, b->B, r, 0, N, r, out, 2.f, 0.f, 0); break;
    case P_DA: cuda_gemm_rm(b->gA, 1, in, b->dU, r, 1, b->X, in, 0, r, in, N, 1.f, 1.f, 0); break;
    case P_DX: cuda_gemm_rm(b->dX, 0, in, b->dU, r, 0, b->A, in, 0, N, in, r, 1.f, 1.f, 0); break;
    case P_DA_T: cuda_gemm_rm(b->gAt, 1, r, b->X, in, 1, b->dU, r, 0, in, r, N, 1.f, 1.f, 0); break;
    case P_Y_FIRST: cuda_gemm_rm(b->T, 0, out, b->U, r, 0, b->B, r, 1, N, out, r, 1.f, 0.f, 0); break;
    case P_BASE_Y: cuda_linear_forward(b->Y, 0, b->X, b->W, NULL, N, in, out, 0); break;
    case P_BASE_Y_ACC: cuda_gemm_rm(b->Y, 0, out, b->X, in, 0, b->W, in, 1, N, out, in, 1.f, 1.f, 0); break;
    case P_BASE_DX: cuda_linear_backward_dx(b->dX, b->dY, b->W, N, in, out, 0); break;
    case P_Y_OWN: cuda_lora_y(b->Y, 0, out, b->U, b->B, N, out, r, 0); break;
    default: cuda_linear_backward_dw(b->gW, b->dY, b->X, N, in, out, 0); break;
    }
}

typedef struct { int p; const bufs *b; } job;
static int run_job(const void *v) { const job *j = v; run(j->p, j->b); return 0; }

static void *dalloc(size_t bytes) {
    void *p = NULL;
    CK(cudaMalloc(&p, bytes));
    CK(cudaMemset(p, 0, bytes));   // zeros: the products' rates do not depend on the values
    return p;
}

// lora.cu's grouped kernels (what the GPU model runs by default): per input of a layer, with and without dropout,
// U of every adapter on it in one pass over X, their A gradients in one more, their input gradients in one pass over
// dX. Bytes: X (and dX twice), the keep bits (G per 8 inputs), U / dU.
typedef struct {
    int kind;
    cuda_lora_group gr;
    const halo_bf16 *X;
    halo_bf16 *dX;
    int N, in, r;
    float *ws;
    cuda_lora_bgroup bg;   // the B side: the adapters' columns of one dY [N, ld]
    long ld;
} gjob;
static int run_gjob(const void *v) {
    const gjob *j = v;
    if (j->kind == 3) cuda_lora_b(&j->bg, j->N, j->ld, j->r, 2.f, j->ws, 0);
    else if (j->kind == 4)   // what the grouped path ran before cuda_lora_b: two cuBLASLt products an adapter
        for (int a = 0; a < j->bg.n; a++) {
            cuda_gemm_rm(j->bg.gb[a], 1, j->r, j->bg.dy[a], j->ld, 1, j->bg.u[a], j->r, 0, j->bg.out[a], j->r, j->N,
                         1.f, 1.f, 0);
            cuda_gemm_rm(j->bg.du[a], 0, j->r, j->bg.dy[a], j->ld, 0, j->bg.b[a], j->r, 0, j->N, j->r, j->bg.out[a],
                         2.f, 0.f, 0);
        }
    else if (j->kind == 0) cuda_lora_u(&j->gr, j->X, j->N, j->in, j->r, 2.f, 99, lora_dropout_threshold(0.05), 0);
    else if (j->kind == 2) cuda_lora_dx(&j->gr, j->dX, j->N, j->in, j->r, 1.05f, 0);
    else cuda_lora_da(&j->gr, j->X, j->N, j->in, j->r, 1.05f, j->ws, 0);
    return 0;
}
static void grouped(int N, int r, int reps) {
    static const struct { const char *name; int in, G, out[3]; } GR[] = {
        {"q, k, v", 2048, 3, {2048, 512, 512}}, {"o", 2048, 1, {2048}}, {"gate, up", 2048, 2, {8192, 8192}},
        {"down", 8192, 1, {2048}}};
    static const char *KN[5] = {"U_j = s mask_j(X) A_j^T", "gA_j += dU_j^T mask_j(X)", "dX += sum_j mask_j(dU_j A_j)",
                                "gB_j += dY_j^T U_j, dU_j = s dY_j B_j (cuda_lora_b)",
                                "the same by two cuBLASLt products an adapter"};
    if (!cuda_lora_group_ok(r, 2048, 3)) { printf("\n(grouped kernels: rank %d not supported)\n", r); return; }
    printf("\nGrouped kernels (lora.cu), per input\n| input | adapters | kernel | dropout | ms | GB | GB/s |\n"
           "|---|---|---|---|---|---|---|\n");
    double layer[2] = {0, 0}, bside[2] = {0, 0};
    for (size_t k = 0; k < sizeof GR / sizeof *GR; k++) {
        const int in = GR[k].in, G = GR[k].G;
        const size_t nx = (size_t)N * in;
        gjob j = {.gr = {.n = G}, .N = N, .in = in, .r = r, .bg = {.n = G}};
        j.X = dalloc(nx * 2);
        j.dX = dalloc(nx * 2);
        const size_t wa = cuda_lora_da_ws_floats(N, in, r, G), wb = cuda_lora_b_ws_floats(N, GR[k].out, G, r);
        j.ws = dalloc(4 * (wa > wb ? wa : wb));
        j.ld = 0;
        for (int a = 0; a < G; a++) j.ld += GR[k].out[a];
        halo_bf16 *dY = dalloc((size_t)N * j.ld * 2);
        for (int a = 0, c = 0; a < G; c += GR[k].out[a++]) {
            j.bg.dy[a] = dY + c;
            j.bg.out[a] = GR[k].out[a];
            j.bg.b[a] = dalloc((size_t)GR[k].out[a] * r * 2);
            j.bg.u[a] = dalloc((size_t)N * r * 2);
            j.bg.gb[a] = dalloc((size_t)GR[k].out[a] * r * 4);
            j.bg.du[a] = dalloc((size_t)N * r * 2);
        }
        for (int a = 0; a < G; a++) {
            j.gr.a[a] = dalloc((size_t)r * in * 2);
            j.gr.u[a] = dalloc((size_t)N * r * 2);
            j.gr.du[a] = dalloc((size_t)N * r * 2);
            j.gr.ga[a] = dalloc((size_t)r * in * 4);
            j.gr.bits[a] = dalloc(nx / 8);
            j.gr.lin[a] = a;
        }
        uint8_t *bits[3] = {j.gr.bits[0], j.gr.bits[1], j.gr.bits[2]};
        for (int d = 1; d >= 0; d--) {
            for (int a = 0; a < G; a++) j.gr.bits[a] = d ? bits[a] : NULL;
            for (j.kind = 0; j.kind < 3; j.kind++) {
                const double ms = bench_gpu_ms(run_gjob, &j, 3, reps);
                const double gb = (nx * 2.0 * (j.kind == 2 ? 2 : 1) + (d ? G * nx / 8.0 : 0) + G * (double)N * r * 2) / 1e9;
                printf("| %s %d | %d | %s | %s | %.3f | %.3f | %.0f |\n", GR[k].name, in, G, KN[j.kind],
                       d ? "0.05" : "none", ms, gb, gb / (ms * 1e-3));
                layer[d] += ms;
            }
        }
        for (j.kind = 3; j.kind < 5; j.kind++) {   // no mask on this side
            const double ms = bench_gpu_ms(run_gjob, &j, 3, reps);
            const double gb = ((double)N * j.ld * 2 + G * (double)N * r * 4) / 1e9;   // dY once, U and dU
            printf("| %s %d | %d | %s | any | %.3f | %.3f | %.0f |\n", GR[k].name, (int)j.ld, G, KN[j.kind], ms, gb,
                   gb / (ms * 1e-3));
            bside[j.kind - 3] += ms;
        }
        CK(cudaDeviceSynchronize());
        cudaFree((void *)j.X); cudaFree(j.dX); cudaFree(j.ws); cudaFree(dY);
        for (int a = 0; a < G; a++) {
            cudaFree((void *)j.bg.b[a]); cudaFree((void *)j.bg.u[a]); cudaFree(j.bg.gb[a]); cudaFree(j.bg.du[a]);
        }
        for (int a = 0; a < G; a++) {
            cudaFree((void *)j.gr.a[a]); cudaFree(j.gr.u[a]); cudaFree((void *)j.gr.du[a]); cudaFree(j.gr.ga[a]);
            cudaFree(bits[a]);
        }
    }
    printf("\nper layer, the grouped kernels: %.3f ms with dropout, %.3f ms without (x 16 layers: %.1f / %.1f ms), the B "
           "side (cuda_lora_b) %.3f ms against %.3f ms by cuBLASLt (x 16: %.1f / %.1f ms); the products U B^T "
           "(cuda_lora_y, rows above) come on top\n", layer[1], layer[0], 16 * layer[1], 16 * layer[0], bside[0],
           bside[1], 16 * bside[0], 16 * bside[1]);
}

int main(int argc, char **argv) {
    int r = 16, N = 8192, reps = 20;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rank") && i + 1 < argc) r = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) N = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else { fprintf(stderr, "usage: %s [--rank R] [--tokens N] [--reps K]\n", argv[0]); return 2; }
    }
    if (r < 1 || N < 1 || reps < 1 || reps > 256) { fprintf(stderr, "bad arguments\n"); return 2; }
    char why[256];
    if (!cuda_device_usable(why, sizeof why)) { printf("SKIP: %s\n", why); return 0; }
    printf("LoRA products, rank %d, %d tokens, Llama-3.2-1B linears (median of %d; GB/s from the least bytes each "
           "product must move)\n", r, N, reps);
    printf("| linear | product | ms | GB | GB/s |\n|---|---|---|---|---|\n");
    double lora_layer = 0, dw_layer = 0, lora_best = 0;
    for (size_t k = 0; k < sizeof LINS / sizeof *LINS; k++) {
        const lin *L = &LINS[k];
        bufs b = {.N = N, .in = L->in, .out = L->out, .r = r};
        const size_t Nin = (size_t)N * L->in * 2, Nout = (size_t)N * L->out * 2, io = (size_t)L->in * L->out;
        b.X = dalloc(Nin); b.dX = dalloc(Nin); b.Y = dalloc(Nout); b.dY = dalloc(Nout); b.T = dalloc(Nout);
        b.W = dalloc(io * 2); b.gW = dalloc(io * 4);
        b.A = dalloc((size_t)r * L->in * 2); b.B = dalloc((size_t)L->out * r * 2);
        b.U = dalloc((size_t)N * r * 2); b.dU = dalloc((size_t)N * r * 2);
        b.gA = dalloc((size_t)r * L->in * 4); b.gB = dalloc((size_t)L->out * r * 4); b.gAt = dalloc((size_t)r * L->in * 4);
        double ms[P_COUNT];
        for (int p = 0; p < P_COUNT; p++) {
            const job j = {p, &b};
            ms[p] = bench_gpu_ms(run_job, &j, 3, reps);
            const double gb = bytes_of(p, &b) / 1e9;
            printf("| %s %dx%d | %s | %.3f | %.3f | %.0f |\n", L->name, L->out, L->in, PNAME[p], ms[p], gb,
                   gb / (ms[p] * 1e-3));
        }
        const double lora = ms[P_U] + ms[P_Y] + ms[P_DB] + ms[P_DU] + ms[P_DA] + ms[P_DX];
        const double best = ms[P_U] + (ms[P_Y_FIRST] + ms[P_BASE_Y_ACC] - ms[P_BASE_Y]) + ms[P_DB] + ms[P_DU] +
                            (ms[P_DA_T] < ms[P_DA] ? ms[P_DA_T] : ms[P_DA]) + ms[P_DX];
        lora_layer += L->count * lora;
        lora_best += L->count * best;
        dw_layer += L->count * ms[P_BASE_DW];
        CK(cudaDeviceSynchronize());
        void *all[] = {b.X, b.dX, b.Y, b.dY, b.T, b.W, b.gW, b.A, b.B, b.U, b.dU, b.gA, b.gB, b.gAt};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++) cudaFree(all[i]);
    }
    printf("\nper layer (q, k, v, o, gate, up, down): LoRA products %.3f ms (with the variants where faster, and Y "
           "written by the adapter first, then the base product adding into it: %.3f ms); the base dW products LoRA "
           "skips: %.3f ms\n", lora_layer, lora_best, dw_layer);
    printf("x 16 layers: LoRA %.1f ms (variants %.1f ms), skipped dW %.1f ms\n", 16 * lora_layer, 16 * lora_best,
           16 * dw_layer);
    grouped(N, r, reps);
    cuda_matmul_shutdown();
    return 0;
}
#else
int main(void) {
    printf("SKIP: built without CUDA\n");
    return 0;
}
#endif
