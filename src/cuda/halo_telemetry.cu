// Quantization telemetry of the GPU HALO layer (the CPU's halo_linear telemetry, src/halo/halo_linear.c): while a
// layer's telemetry is on, each forward / backward also measures, on sampled rows, the relative error of each product
// it delivered against the fp32 product of its bf16 operands, and max|x| / rms(x) of X, W and E_Y (before rotation
// here; after rotation from the layer's own absmax slots, since a rotation keeps the sum of squares).
// Rows sampled as the CPU's: R = min(rows, 64), row s = s * rows / R (Y, E_X: tokens; G: output features).
// A product's delivered rows are read from its output after the layer ran, minus a snapshot of those rows taken
// before when the layer adds into the output (residual Y, summed E_X, accumulated G). The fp32 reference of G needs
// the forward's X at backward time (the caller keeps it; llama_cuda recomputes down's input on telemetry steps).
// Off: the layer pays one branch per call. On: a few small kernels per product and one synchronization per layer
// when the statistics are read (halo_cuda_linear_telemetry_read).
#include <math.h>
#include <string.h>
#include "cuda/common.cuh"
#include "cuda/halo_cuda.h"
extern "C" {
#include "halo/halo_linear.h"
#include "util/error.h"
}

enum { TR_MAX = 64 };   // sampled rows per product
// acc[]: 0..5 (num, den) of Y, E_X, G; 6, 7, 8: sum of squares of X, W, E_Y. amax bits[]: X, W, E_Y (unrotated).
struct halo_cuda_tele {
    double *acc;
    unsigned *amax;
    long calls[3];
    int have_out[3];            // the product's outlier slots were measured (X/W in forward, E_Y in backward)
    long cnt[3], cnt_er;        // elements of X, W, E_Y; of H_b^T E_Y (level 2: padded tokens)
};

// Transient buffers of one measured call (grow-only, shared by all layers: they run one at a time on a stream).
static struct {
    float *exact[3], *snap[3], *gath;
    size_t cap_exact[3], cap_snap[3], cap_gath;   // bytes
} g_tb;

static float *grow_f(float **p, size_t *cap, size_t n) {
    return (float *)dev_grow((void **)p, cap, n * sizeof(float));
}

static int samples(int rows) { return rows < TR_MAX ? rows : TR_MAX; }
__device__ __forceinline__ long sample_row(int s, int rows, int R) { return (long)s * rows / R; }

// ---- kernels ----
// *amax = max(*amax, max |in|) (float bits), *ss += sum in^2 over in[rows][ld], first cols entries of each row
__global__ void k_tele_moments(const bf16 *in, long ld, int rows, int cols, unsigned *amax, double *ss) {
    float mx = 0.f, s = 0.f;
    const long n = (long)rows * cols;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const float v = __bfloat162float(in[(i / cols) * ld + i % cols]);
        mx = fmaxf(mx, fabsf(v));
        s += v * v;
    }
    mx = block_max(mx);
    s = block_sum(s);
    if (threadIdx.x == 0) {
        atomicMax(amax, __float_as_uint(mx));
        atomicAdd(ss, (double)s);
    }
}

// out[s][c] = in[row_s][c] (bf16 or fp32 in), c < cols, s < R
__global__ void k_tele_gather_rows(const void *in, int f32, long ld, int rows, int R, int cols, float *out) {
    const long n = (long)R * cols;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const int s = (int)(i / cols), c = (int)(i % cols);
        const long at = sample_row(s, rows, R) * ld + c;
        out[i] = f32 ? ((const float *)in)[at] : __bfloat162float(((const bf16 *)in)[at]);
    }
}

// out[s][t] = in[t][col_s] for t < rows: sampled columns of in [rows][ld] (cols of them), as rows
__global__ void k_tele_gather_cols(const bf16 *in, long ld, int rows, int cols, int R, float *out) {
    const long n = (long)R * rows;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const int s = (int)(i / rows), t = (int)(i % rows);
        out[i] = __bfloat162float(in[(long)t * ld + sample_row(s, cols, R)]);
    }
}

// out[s][j] = sum_k A[s][k] B(j, k) in fp32, s < R <= 64, j < N; B bf16 with B(j, k) = B[j ld + k] (kmaj) or
// B[k ld + j]. Tiles of 64 j x 64 s, k in chunks of 32; a thread owns 4 x 4 outputs.
__global__ void __launch_bounds__(256) k_tele_rows_product(const float *A, int R, const bf16 *B, long ldb, int kmaj,
                                                           int N, int K, float *out) {
    __shared__ float As[64][33], Bs[64][33];
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4, j0 = blockIdx.x * 64;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += 32) {
        for (int i = tid; i < 64 * 32; i += 256) {
            const int s = i >> 5, kk = i & 31;
            As[s][kk] = s < R && k0 + kk < K ? A[(long)s * K + k0 + kk] : 0.f;
            int j, kb;
            if (kmaj) { j = i >> 5; kb = i & 31; }
            else { kb = i >> 6; j = i & 63; }
            const int jj = j0 + j, k = k0 + kb;
            Bs[j][kb] = jj < N && k < K ? __bfloat162float(B[kmaj ? (long)jj * ldb + k : (long)k * ldb + jj]) : 0.f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < 32; kk++) {
            float a[4], b[4];
#pragma unroll
            for (int c = 0; c < 4; c++) { a[c] = As[ty + 16 * c][kk]; b[c] = Bs[tx + 16 * c][kk]; }
#pragma unroll
            for (int c = 0; c < 4; c++)
#pragma unroll
                for (int d = 0; d < 4; d++) acc[c][d] = fmaf(a[c], b[d], acc[c][d]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int c = 0; c < 4; c++)
#pragma unroll
        for (int d = 0; d < 4; d++) {
            const int s = ty + 16 * c, j = j0 + tx + 16 * d;
            if (s < R && j < N) out[(long)s * N + j] = acc[c][d];
        }
}

// num += sum (got[row_s][c] - snap[s][c] - exact[s][c])^2, den += sum exact^2 (snap may be NULL)
__global__ void k_tele_err(const void *got, int f32, long ld, int rows, int R, int cols, const float *snap,
                           const float *exact, double *num, double *den) {
    double a = 0, e2 = 0;
    const long n = (long)R * cols;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const int s = (int)(i / cols), c = (int)(i % cols);
        const long at = sample_row(s, rows, R) * ld + c;
        double v = f32 ? ((const float *)got)[at] : __bfloat162float(((const bf16 *)got)[at]);
        if (snap) v -= snap[i];
        const double d = v - exact[i];
        a += d * d;
        e2 += (double)exact[i] * exact[i];
    }
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, o);
        e2 += __shfl_xor_sync(0xffffffffu, e2, o);
    }
    if ((threadIdx.x & 31) == 0) { atomicAdd(num, a); atomicAdd(den, e2); }
}

// ---- launch helpers ----
static int grid_for(long n) { long g = (n + 255) / 256; return (int)(g < 1 ? 1 : g > 2048 ? 2048 : g); }

static void moments(const halo_bf16 *in, long ld, int rows, int cols, unsigned *amax, double *ss, cudaStream_t s) {
    k_tele_moments<<<grid_for((long)rows * cols), 256, 0, s>>>((const bf16 *)in, ld, rows, cols, amax, ss);
    CUDA_LAUNCH_CHECK();
}
static void gather_rows(const void *in, int f32, long ld, int rows, int cols, float *out, cudaStream_t s) {
    const int R = samples(rows);
    k_tele_gather_rows<<<grid_for((long)R * cols), 256, 0, s>>>(in, f32, ld, rows, R, cols, out);
    CUDA_LAUNCH_CHECK();
}
static void rows_product(const float *A, int R, const halo_bf16 *B, long ldb, int kmaj, int N, int K, float *out,
                         cudaStream_t s) {
    k_tele_rows_product<<<cdiv(N, 64), 256, 0, s>>>(A, R, (const bf16 *)B, ldb, kmaj, N, K, out);
    CUDA_LAUNCH_CHECK();
}
static void err(halo_cuda_tele *t, int p, const void *got, int f32, long ld, int rows, int cols, const float *snap,
                const float *exact, cudaStream_t s) {
    const int R = samples(rows);
    CUDA_CHECK(cudaMemsetAsync(t->acc + 2 * p, 0, 2 * sizeof(double), s));
    k_tele_err<<<grid_for((long)R * cols), 256, 0, s>>>(got, f32, ld, rows, R, cols, snap, exact, t->acc + 2 * p,
                                                        t->acc + 2 * p + 1);
    CUDA_LAUNCH_CHECK();
}
static float *snapshot(int p, const float *src, long ld, int rows, int cols, cudaStream_t s) {
    float *d = grow_f(&g_tb.snap[p], &g_tb.cap_snap[p], (size_t)samples(rows) * cols);
    gather_rows(src, 1, ld, rows, cols, d, s);
    return d;
}

// ---- the layer's hooks (halo_linear_cuda.cu) ----
extern "C" void halo_cuda_linear_telemetry(halo_cuda_linear *L, int on) {
    if (on && !L->tele) {
        L->tele = (halo_cuda_tele *)calloc(1, sizeof(halo_cuda_tele));
        CUDA_CHECK(cudaMalloc((void **)&L->tele->acc, 16 * sizeof(double)));
        CUDA_CHECK(cudaMalloc((void **)&L->tele->amax, 4 * sizeof(unsigned)));
    }
    L->tele_on = on && L->tele;
}

extern "C" void halo_cuda_tele_free(halo_cuda_linear *L) {
    if (!L->tele) return;
    cudaFree(L->tele->acc);
    cudaFree(L->tele->amax);
    free(L->tele);
    L->tele = NULL;
    L->tele_on = 0;
}

extern "C" void halo_cuda_tele_fwd_begin(halo_cuda_linear *L, const float *R, long ldy, int b, int n, cudaStream_t s) {
    L->tele_snap = R ? snapshot(0, R, ldy, b, n, s) : NULL;
}

extern "C" void halo_cuda_tele_fwd_end(halo_cuda_linear *L, const halo_bf16 *X, const halo_bf16 *W, const void *Y,
                                       int y_f32, long ldy, int b, int m, int n, cudaStream_t s) {
    halo_cuda_tele *t = L->tele;
    CUDA_CHECK(cudaMemsetAsync(t->amax, 0, 2 * sizeof(unsigned), s));
    CUDA_CHECK(cudaMemsetAsync(t->acc + 6, 0, 2 * sizeof(double), s));
    moments(X, m, b, m, t->amax + 0, t->acc + 6, s);
    moments(W, m, n, m, t->amax + 1, t->acc + 7, s);
    t->cnt[0] = (long)b * m;
    t->cnt[1] = (long)n * m;
    const int R = samples(b);
    float *A = grow_f(&g_tb.gath, &g_tb.cap_gath, (size_t)R * m);
    float *ex = grow_f(&g_tb.exact[0], &g_tb.cap_exact[0], (size_t)R * n);
    gather_rows(X, 0, m, b, m, A, s);
    rows_product(A, R, W, m, 1, n, m, ex, s);   // X_s W^T
    err(t, 0, Y, y_f32, ldy, b, n, L->tele_snap, ex, s);
    t->calls[0]++;
    t->have_out[0] = 1;
}

extern "C" void halo_cuda_tele_bwd_begin(halo_cuda_linear *L, const halo_bf16 *EY, long ldey, const void *EX, int ex_add,
                                         const float *G, int g_acc, int b, int m, int n, cudaStream_t s) {
    halo_cuda_tele *t = L->tele;
    CUDA_CHECK(cudaMemsetAsync(t->amax + 2, 0, sizeof(unsigned), s));
    CUDA_CHECK(cudaMemsetAsync(t->acc + 8, 0, sizeof(double), s));
    moments(EY, ldey, b, n, t->amax + 2, t->acc + 8, s);
    t->cnt[2] = (long)b * n;
    t->have_out[1] = 1;
    L->tele_snap = L->tele_snap_g = NULL;
    if (EX) {   // E_Y_s W
        const int R = samples(b);
        float *A = grow_f(&g_tb.gath, &g_tb.cap_gath, (size_t)R * n);
        gather_rows(EY, 0, ldey, b, n, A, s);
        rows_product(A, R, (const halo_bf16 *)L->w_in, m, 0, m, n, grow_f(&g_tb.exact[1], &g_tb.cap_exact[1],
                                                                          (size_t)R * m), s);
        if (ex_add) L->tele_snap = snapshot(1, (const float *)EX, m, b, m, s);
    }
    if (G && L->x_in) {   // (E_Y^T X) rows: sampled columns of E_Y times X
        const int R = samples(n);
        float *A = grow_f(&g_tb.gath, &g_tb.cap_gath, (size_t)R * b);
        k_tele_gather_cols<<<grid_for((long)R * b), 256, 0, s>>>((const bf16 *)EY, ldey, b, n, R, A);
        CUDA_LAUNCH_CHECK();
        rows_product(A, R, (const halo_bf16 *)L->x_in, m, 0, m, b, grow_f(&g_tb.exact[2], &g_tb.cap_exact[2],
                                                                          (size_t)R * m), s);
        if (g_acc) L->tele_snap_g = snapshot(2, G, m, n, m, s);
    }
}

extern "C" void halo_cuda_tele_bwd_end(halo_cuda_linear *L, const void *EX, int ex_f32, const float *G, int b, int m,
                                       int n, cudaStream_t s) {
    halo_cuda_tele *t = L->tele;
    if (EX) {
        err(t, 1, EX, ex_f32, m, b, m, L->tele_snap, g_tb.exact[1], s);
        t->calls[1]++;
    }
    if (G && L->x_in) {
        err(t, 2, G, 1, m, n, m, L->tele_snap_g, g_tb.exact[2], s);
        t->calls[2]++;
    }
    t->cnt_er = L->level == 2 ? (long)L->hb_pad * n : (long)b * n;
}

static double ratio(float amax, double ss, long cnt) {
    return ss > 0 && cnt > 0 ? (double)amax / sqrt(ss / (double)cnt) : 0.0;
}

extern "C" int halo_cuda_linear_telemetry_read(halo_cuda_linear *L, halo_linear_stats *st) {
    for (int p = 0; p < 3; p++) {
        st->calls[p] = 0;
        st->rel_err[p] = NAN;
        st->outlier[p][0] = st->outlier[p][1] = st->outlier_rot[p][0] = st->outlier_rot[p][1] = NAN;
    }
    halo_cuda_tele *t = L->tele;
    if (!t) return HALO_OK;
    double acc[16];
    unsigned am[4];
    float dev[16], ax_rot = 0.f;
    CUDA_CHECK(cudaMemcpy(acc, t->acc, sizeof acc, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(am, t->amax, sizeof am, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(dev, L->dev, sizeof dev, cudaMemcpyDeviceToHost));
    if (L->ax_use) CUDA_CHECK(cudaMemcpy(&ax_rot, L->ax_use, sizeof ax_rot, cudaMemcpyDeviceToHost));
    float amax[3];
    for (int i = 0; i < 3; i++) memcpy(&amax[i], &am[i], sizeof(float));
    for (int p = 0; p < 3; p++) {
        st->calls[p] = t->calls[p];
        if (t->calls[p]) st->rel_err[p] = acc[2 * p + 1] > 0 ? sqrt(acc[2 * p] / acc[2 * p + 1]) : sqrt(acc[2 * p]);
    }
    const int lvl = L->level;
    const double ox = ratio(amax[0], acc[6], t->cnt[0]), ow = ratio(amax[1], acc[7], t->cnt[1]);
    const double ox_r = lvl ? ratio(ax_rot, acc[6], t->cnt[0]) : ox, ow_r = lvl ? ratio(dev[HALO_DEV_AW], acc[7], t->cnt[1]) : ow;
    if (t->have_out[0]) {
        st->outlier[0][0] = ox; st->outlier_rot[0][0] = ox_r;
        st->outlier[0][1] = ow; st->outlier_rot[0][1] = ow_r;
        st->outlier[1][1] = ow; st->outlier_rot[1][1] = ow_r;
        st->outlier[2][1] = ox; st->outlier_rot[2][1] = ox_r;
    }
    if (t->have_out[1]) {
        const double oe = ratio(amax[2], acc[8], t->cnt[2]);
        st->outlier[1][0] = oe;
        st->outlier_rot[1][0] = lvl == 2 && t->calls[1] ? ratio(dev[HALO_DEV_AER], acc[8], t->cnt_er) : oe;
        st->outlier[2][0] = st->outlier_rot[2][0] = oe;
    }
    return HALO_OK;
}
