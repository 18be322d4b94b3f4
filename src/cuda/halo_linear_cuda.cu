// The HALO linear layer on the GPU: levels 0, 1, 2 in INT8 or FP8 E4M3 with per-tensor scales, the same products,
// rotations and quantizations as halo_linear_forward / halo_linear_backward (src/halo/halo_linear.c), everything
// stream-ordered on the device (absmax by atomics, scales read by the kernels and by cuBLASLt from device memory).
// Scratch (ws[]): 0 product before rotation / int32 product (fp32 or int32 [rows][cols]), 1 Q(E_Y) [rows][n],
// 2 Q(E_Y)^T [n][b16], 3 transposed saved operand (Q(W H)^T [m][n] or Q(X H)^T [m][b16]), 4 level 2: E_Y^T bf16
// [n][bp] then its codes, 5 level 2: the E_X product transposed, fp32 [m][bp].
#include <string.h>
#include "cuda/common.cuh"
#include "cuda/halo_cuda.h"
extern "C" {
#include "halo/hadamard.h"
#include "halo/halo_linear.h"
#include "util/error.h"
}

#define HB_MAX_K 172   // as HALO_HB_MAX_K in halo_linear.c
enum { AX = 0, AW = 1, AE = 2, AER = 3, ALY = 4, ALEX = 5, ALG = 6, NONFIN = 8 };

static long pad16(long x) { return (x + 15) / 16 * 16; }

static void *grow(void **p, size_t *cap, size_t bytes) {
    if (bytes > *cap) {
        if (*p) CUDA_CHECK(cudaFree(*p));   // cudaFree waits for the device, so pending users of the old buffer are done
        CUDA_CHECK(cudaMalloc(p, bytes + 256));
        *cap = bytes;
    }
    return *p;
}
static void *ws(halo_cuda_linear *L, int i, size_t bytes) { return grow(&L->ws[i], &L->ws_cap[i], bytes); }

extern "C" int halo_cuda_linear_init(halo_cuda_linear *L, int prec, int level, const char *name) {
    memset(L, 0, sizeof *L);
    snprintf(L->name, sizeof L->name, "%s", name ? name : "linear");
    if (prec != HALO_PREC_INT8 && prec != HALO_PREC_FP8)
        return halo_fail("%s: the GPU HALO layer takes int8 or fp8 (got %s)", L->name, halo_precision_name((halo_precision)prec));
    if (level < 0 || level > 2) return halo_fail("%s: level %d is not 0, 1 or 2", L->name, level);
    L->prec = prec;
    L->level = level;
    CUDA_CHECK(cudaMalloc((void **)&L->dev, 16 * sizeof(float)));
    CUDA_CHECK(cudaMemset(L->dev, 0, 16 * sizeof(float)));
    return HALO_OK;
}

extern "C" void halo_cuda_linear_free(halo_cuda_linear *L) {
    halo_cuda_had_free(&L->hm);
    halo_cuda_had_free(&L->hb);
    if (L->qx) cudaFree(L->qx);
    if (L->qw) cudaFree(L->qw);
    if (L->dev) cudaFree(L->dev);
    for (int i = 0; i < 6; i++) if (L->ws[i]) cudaFree(L->ws[i]);
    memset(L, 0, sizeof *L);
}

static int fmt_of(const halo_cuda_linear *L) { return L->prec == HALO_PREC_INT8 ? HALO_CUDA_INT8 : HALO_CUDA_E4M3; }

static int plan_hm(halo_cuda_linear *L, int m) {
    if (L->hm_d == m) return HALO_OK;
    halo_cuda_had_free(&L->hm);
    char note[200];
    if (halo_cuda_had_plan_fallback(&L->hm, m, note, sizeof note)) return halo_fail_ctx("%s: in_features %d: ", L->name, m);
    if (note[0] && !L->note[0]) {
        snprintf(L->note, sizeof L->note, "%s", note);
        fprintf(stderr, "halo_cuda_linear %s: %s\n", L->name, note);
    }
    L->hm_d = m;
    return HALO_OK;
}

static int plan_hb(halo_cuda_linear *L, int b) {
    if (L->hb_b == b) return HALO_OK;
    halo_cuda_had_free(&L->hb);
    int pad = halo_hadamard_pad_size(b, HB_MAX_K);
    if (halo_cuda_had_plan(&L->hb, pad, 0)) return halo_fail_ctx("%s: token Hadamard: ", L->name);
    L->hb_b = b;
    L->hb_pad = pad;
    return HALO_OK;
}

static int check(const halo_cuda_linear *L, int b, int m, int n) {
    if (b < 1 || m < 1 || n < 1) return halo_fail("%s: bad shapes b=%d m=%d n=%d", L->name, b, m, n);
    if (m % 16 || n % 16)
        return halo_fail("%s: the GPU HALO layer needs in/out features that are multiples of 16 (m=%d n=%d)", L->name, m, n);
    return HALO_OK;
}

// Quantizes rows x d of `in` (rotated by h when not NULL) into q [rows][d] with the amax slot `slot` (zeroed here).
static void quantize_rows(halo_cuda_linear *L, const halo_cuda_had *h, const void *in, int in_type, long ld, int rows,
                          int d, int slot, uint8_t *q, cudaStream_t s) {
    float *amax = L->dev + slot;
    CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(float), s));
    halo_cuda_absmax_rows(h, 0, in, in_type, ld, rows, d, amax, NULL, (int *)(L->dev + NONFIN), s);
    halo_cuda_quant_rows(h, 0, in, in_type, ld, rows, d, amax, NULL, fmt_of(L), q, d, s);
}

// D [M][N] (fp32 T or the layer's output) = A B^T with alpha slot; INT8 goes through an int32 buffer. post:
// 0 = write the dequantized product to out (out_f32, ldo, accumulate); 1 = rotate rows by H_m^T into out.
static int product(halo_cuda_linear *L, const uint8_t *A, long lda, const uint8_t *B, long ldb, int M, int N, int K,
                   int alpha_slot, int post, void *out, int out_f32, long ldo, int accumulate, cudaStream_t s) {
    const float *alpha = L->dev + alpha_slot;
    if (L->prec == HALO_PREC_FP8) {
        if (!post) return halo_cuda_gemm_fp8(out, out_f32, ldo, A, lda, B, ldb, M, N, K, alpha, accumulate, s);
        float *T = (float *)ws(L, 0, sizeof(float) * (size_t)M * N);
        if (halo_cuda_gemm_fp8(T, 1, N, A, lda, B, ldb, M, N, K, alpha, 0, s)) return HALO_ERR;
        halo_cuda_had_rows(&L->hm, 1, T, HALO_CUDA_F32, N, NULL, out, out_f32, ldo, accumulate, M, s);
        return HALO_OK;
    }
    int32_t *C = (int32_t *)ws(L, 0, sizeof(int32_t) * (size_t)M * N);
    if (halo_cuda_gemm_s8(C, N, (const int8_t *)A, lda, (const int8_t *)B, ldb, M, N, K, s)) return HALO_ERR;
    if (!post) halo_cuda_dequant_i32(out, out_f32, ldo, C, N, M, N, alpha, NULL, NULL, accumulate, s);
    else halo_cuda_had_rows(&L->hm, 1, C, HALO_CUDA_I32, N, alpha, out, out_f32, ldo, accumulate, M, s);
    return HALO_OK;
}

extern "C" int halo_cuda_linear_forward(halo_cuda_linear *L, const halo_bf16 *X, const halo_bf16 *W, void *Y,
                                        int y_f32, int b, int m, int n, cudaStream_t s) {
    if (check(L, b, m, n)) return HALO_ERR;
    L->have_fwd = 0;
    L->b = b; L->m = m; L->n = n;
    const halo_cuda_had *h = NULL;
    if (L->level >= 1) {
        if (plan_hm(L, m)) return HALO_ERR;
        h = &L->hm;
    }
    uint8_t *qx = (uint8_t *)grow((void **)&L->qx, &L->cap_qx, (size_t)b * m);
    uint8_t *qw = (uint8_t *)grow((void **)&L->qw, &L->cap_qw, (size_t)n * m);
    quantize_rows(L, h, X, HALO_CUDA_BF16, m, b, m, AX, qx, s);   // Q(X H_m)
    quantize_rows(L, h, W, HALO_CUDA_BF16, m, n, m, AW, qw, s);   // Q(W H_m)
    halo_cuda_alpha(L->dev + ALY, L->dev + AX, L->dev + AW, fmt_of(L), s);
    if (product(L, qx, m, qw, m, b, n, m, ALY, 0, Y, y_f32, n, 0, s)) return halo_fail_ctx("%s: forward: ", L->name);
    L->have_fwd = 1;
    return HALO_OK;
}

extern "C" int halo_cuda_linear_backward(halo_cuda_linear *L, const halo_bf16 *EY, void *EX, int ex_f32, float *G,
                                         int b, int m, int n, cudaStream_t s) {
    if (check(L, b, m, n)) return HALO_ERR;
    if (!L->have_fwd) return halo_fail("%s: backward without a preceding forward", L->name);
    if (b != L->b || m != L->m || n != L->n)
        return halo_fail("%s: backward shapes b=%d m=%d n=%d differ from forward's b=%d m=%d n=%d", L->name, b, m, n,
                         L->b, L->m, L->n);
    const int lvl = L->level, fmt = fmt_of(L);
    const long b16 = pad16(b);
    float *amax_e = L->dev + AE;

    // Q(E_Y) (levels 0/1: for E_X and, transposed, for G; level 2: only transposed, for G), one read of E_Y.
    uint8_t *qe = NULL, *qet = NULL;
    if ((EX && lvl < 2) || G) {
        CUDA_CHECK(cudaMemsetAsync(amax_e, 0, sizeof(float), s));
        halo_cuda_absmax_rows(NULL, 0, EY, HALO_CUDA_BF16, n, b, n, amax_e, NULL, (int *)(L->dev + NONFIN), s);
        if (EX && lvl < 2) qe = (uint8_t *)ws(L, 1, (size_t)b * n);
        if (G) qet = (uint8_t *)ws(L, 2, (size_t)n * b16);
        halo_cuda_quant_tile(EY, HALO_CUDA_BF16, n, b, n, amax_e, fmt, qe, n, qet, b16, (int)b16, s);
    }

    if (EX) {
        // Q(W H_m)^T [m][n]: the E_X product's second operand, K-major.
        uint8_t *qwt = (uint8_t *)ws(L, 3, (size_t)m * n);
        halo_cuda_transpose(L->qw, HALO_CUDA_U8, m, n, m, qwt, HALO_CUDA_U8, n, n, s);
        if (lvl < 2) {
            halo_cuda_alpha(L->dev + ALEX, amax_e, L->dev + AW, fmt, s);
            if (product(L, qe, n, qwt, n, b, m, n, ALEX, lvl == 1, EX, ex_f32, m, 0, s))
                return halo_fail_ctx("%s: input gradient: ", L->name);
        } else {
            if (plan_hb(L, b)) return HALO_ERR;
            const int bp = L->hb_pad;
            // H_b^T [E_Y; 0] along tokens = rows of the zero-padded E_Y^T [n][bp] rotated by H_b (row form x H).
            halo_bf16 *eyt = (halo_bf16 *)ws(L, 4, (size_t)n * bp * 2 + (size_t)n * bp);
            uint8_t *codes_t = (uint8_t *)eyt + (size_t)n * bp * 2;
            halo_cuda_transpose(EY, HALO_CUDA_BF16, n, b, n, eyt, HALO_CUDA_BF16, bp, bp, s);
            quantize_rows(L, &L->hb, eyt, HALO_CUDA_BF16, bp, n, bp, AER, codes_t, s);
            qe = (uint8_t *)ws(L, 1, (size_t)bp * n);
            halo_cuda_transpose(codes_t, HALO_CUDA_U8, bp, n, bp, qe, HALO_CUDA_U8, n, n, s);
            halo_cuda_alpha(L->dev + ALEX, L->dev + AER, L->dev + AW, fmt, s);
            // R [bp][m] = [Q(H_b^T E_Y) Q(W H_m)] H_m^T (fp32), Rt = R^T [m][bp] rotated by H_b in place, first b kept.
            float *R = (float *)ws(L, 5, sizeof(float) * (size_t)bp * m * 2);
            float *Rt = R + (size_t)bp * m;
            if (product(L, qe, n, qwt, n, bp, m, n, ALEX, 1, R, 1, m, 0, s))
                return halo_fail_ctx("%s: input gradient: ", L->name);
            halo_cuda_transpose(R, HALO_CUDA_F32, m, bp, m, Rt, HALO_CUDA_F32, bp, bp, s);   // [m][bp]
            halo_cuda_had_rows(&L->hb, 1, Rt, HALO_CUDA_F32, bp, NULL, Rt, 1, bp, 0, m, s);  // H_b [..] (row form)
            halo_cuda_transpose(Rt, HALO_CUDA_F32, bp, m, b, EX, ex_f32 ? HALO_CUDA_F32 : HALO_CUDA_BF16, m, m, s);
        }
    }

    if (G) {
        // Q(X H_m)^T [m][b16] (zero codes past b), then [n][m] = Q(E_Y)^T Q(X H_m) (H_m^T at levels 1, 2) into G.
        uint8_t *qxt = (uint8_t *)ws(L, 3, (size_t)m * b16);
        halo_cuda_transpose(L->qx, HALO_CUDA_U8, m, b, m, qxt, HALO_CUDA_U8, b16, (int)b16, s);
        halo_cuda_alpha(L->dev + ALG, amax_e, L->dev + AX, fmt, s);
        if (product(L, qet, b16, qxt, b16, n, m, (int)b16, ALG, lvl >= 1, G, 1, m, 1, s))
            return halo_fail_ctx("%s: weight gradient: ", L->name);
    }
    return HALO_OK;
}
