// INT8 / OCP FP8 quantizers with scale grids and rounding modes, and the scaled 8-bit product A B^T.
// The int8 kernel packs B into 16-lane x 4-byte panels for AVX-512 VNNI (vpdpbusd, u8 x s8 with the +128 shift
// corrected by column sums); a portable C kernel is used when VNNI is not available at compile time.
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && !defined(HALO_GENERIC_GEMM)
#include <immintrin.h>
#define HALO_VNNI 1
#else
#define HALO_VNNI 0
#endif
#include "halo/quant.h"
#include "util/error.h"

// ---------------------------------------------------------------------------------------------------------------
// FP8

typedef struct { int mbits, bias; uint32_t maxcode; uint8_t overflow; float max; } fp8_fmt;
static const fp8_fmt k_e4m3 = {3, 7, 0x7E, 0x7F, 448.0f};      // overflow (non-saturating) -> NaN
static const fp8_fmt k_e5m2 = {2, 15, 0x7B, 0x7C, 57344.0f};   // overflow (non-saturating) -> inf

static inline const fp8_fmt *fp8_of(halo_qformat f) { return f == HALO_Q_E5M2 ? &k_e5m2 : &k_e4m3; }

static inline uint32_t f2u(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static inline float u2f(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

static inline uint8_t fp8_encode_rne(float x, const fp8_fmt *F, int sat) {
    uint32_t u = f2u(x);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80);
    u &= 0x7FFFFFFFu;
    if (u > 0x7F800000u) return sign | 0x7F;
    if (u == 0x7F800000u) return sign | (uint8_t)(sat ? F->maxcode : F->overflow);
    const int emin = 1 - F->bias;
    uint32_t code;
    if (u < (uint32_t)(127 + emin) << 23) {
        // Below the smallest normal: multiples of 2^(emin-mbits); scaling by a power of two is exact, rintf rounds
        // half to even. A result of 2^mbits is exactly the code of the smallest normal.
        code = (uint32_t)rintf(u2f(u) * ldexpf(1.0f, F->mbits - emin));
    } else {
        const uint32_t shift = 23u - (uint32_t)F->mbits;
        uint32_t r = u + ((1u << (shift - 1)) - 1u) + ((u >> shift) & 1u); // round the dropped bits half-to-even
        code = (r >> shift) - ((uint32_t)(127 - F->bias) << F->mbits);     // carries move into the exponent
    }
    if (code > F->maxcode) return sign | (uint8_t)(sat ? F->maxcode : F->overflow);
    return sign | (uint8_t)code;
}

// Saturating RNE encode of a finite value, branch-free so the quantizer's loop vectorizes; same results as
// fp8_encode_rne(x, F, 1) for finite x (checked by the tests against the exhaustive reference).
static inline uint8_t fp8_encode_fin(float x, int mbits, int bias, uint32_t maxcode, float submul, uint32_t thresh) {
    uint32_t u = f2u(x);
    const uint32_t sign = (u >> 24) & 0x80u;
    u &= 0x7FFFFFFFu;
    const uint32_t shift = 23u - (uint32_t)mbits;
    const uint32_t r = u + ((1u << (shift - 1)) - 1u) + ((u >> shift) & 1u);
    const uint32_t cn = (r >> shift) - ((uint32_t)(127 - bias) << mbits);
    const float t = fminf(u2f(u) * submul, 1024.0f);
    const uint32_t cs = (uint32_t)(int32_t)rintf(t);
    uint32_t code = u < thresh ? cs : cn;
    code = code > maxcode ? maxcode : code;
    return (uint8_t)(sign | code);
}

uint8_t halo_fp8_encode(float x, halo_qformat fmt, int saturate) { return fp8_encode_rne(x, fp8_of(fmt), saturate); }

static inline uint8_t fp8_encode_sr(float x, const fp8_fmt *F, double u01) {
    uint32_t ux = f2u(x);
    uint8_t sign = (uint8_t)((ux >> 24) & 0x80);
    float a = fabsf(x);
    if (isnan(a)) return sign | 0x7F;
    if (a >= F->max) return sign | (uint8_t)F->maxcode;
    if (a == 0) return sign;
    const int emin = 1 - F->bias;
    int e;
    frexpf(a, &e);
    e -= 1; // a in [2^e, 2^(e+1))
    if (e < emin) e = emin;
    double q = ldexp(1.0, e - F->mbits);
    double n = floor((double)a / q + u01);
    float v = (float)(n * q); // representable (or the next power of two), encodes exactly
    return fp8_encode_rne(sign ? -v : v, F, 1);
}

uint8_t halo_fp8_encode_sr(float x, halo_qformat fmt, double u) { return fp8_encode_sr(x, fp8_of(fmt), u); }

static float g_dec[2][256];
static pthread_once_t g_dec_once = PTHREAD_ONCE_INIT;

static float fp8_decode_def(uint8_t c, const fp8_fmt *F, int is_e5m2) {
    int s = c >> 7, ebits = 7 - F->mbits;
    int E = (c >> F->mbits) & ((1 << ebits) - 1), M = c & ((1 << F->mbits) - 1);
    float v;
    if (is_e5m2 && E == 31) v = M ? NAN : INFINITY;
    else if (!is_e5m2 && E == 15 && M == 7) v = NAN;
    else if (E == 0) v = ldexpf((float)M, 1 - F->bias - F->mbits);
    else v = ldexpf((float)((1 << F->mbits) | M), E - F->bias - F->mbits);
    return s ? -v : v;
}

static void dec_build(void) {
    for (int c = 0; c < 256; c++) {
        g_dec[0][c] = fp8_decode_def((uint8_t)c, &k_e4m3, 0);
        g_dec[1][c] = fp8_decode_def((uint8_t)c, &k_e5m2, 1);
    }
}
static void dec_init(void) { pthread_once(&g_dec_once, dec_build); }

float halo_fp8_decode(uint8_t code, halo_qformat fmt) {
    dec_init();
    return g_dec[fmt == HALO_Q_E5M2][code];
}

float halo_qformat_max(halo_qformat fmt) {
    switch (fmt) {
    case HALO_Q_INT8: return 127.0f;
    case HALO_Q_E4M3: return 448.0f;
    case HALO_Q_E5M2: return 57344.0f;
    default: return 1.0f;
    }
}

const char *halo_qformat_name(halo_qformat fmt) {
    switch (fmt) {
    case HALO_Q_INT8: return "int8";
    case HALO_Q_E4M3: return "e4m3";
    case HALO_Q_E5M2: return "e5m2";
    default: return "identity";
    }
}

float halo_round_bf16(float x) {
    uint32_t u = f2u(x);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return x;
    u += 0x7FFFu + ((u >> 16) & 1u);
    return u2f(u & 0xFFFF0000u);
}

// ---------------------------------------------------------------------------------------------------------------
// Random numbers: splitmix64 finalizer over a combination of (seed, counter, index).

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
uint64_t halo_rng_hash(uint64_t seed, uint64_t counter, uint64_t index) {
    return mix64(mix64(seed + 0x9E3779B97F4A7C15ULL) ^ mix64(counter * 0xD1B54A32D192ED03ULL + 0x632BE59BD9B4E019ULL)
                 ^ (index * 0x9E3779B97F4A7C15ULL + 0x2545F4914F6CDD1DULL));
}
double quant_rng_uniform(uint64_t seed, uint64_t counter, uint64_t index) {
    return (double)(halo_rng_hash(seed, counter, index) >> 11) * (1.0 / 9007199254740992.0);
}

// ---------------------------------------------------------------------------------------------------------------
// Quantization

static void *grow(void *p, size_t *cap, size_t need) {
    if (need <= *cap) return p;
    free(p);
    *cap = need;
    return xmalloc(need);
}

void halo_qmat_free(halo_qmat *m) {
    free(m->q); free(m->f); free(m->s);
    memset(m, 0, sizeof *m);
}

static void qmat_shape(halo_qmat *m, halo_qformat fmt, int R, int C, int gr, int gc) {
    m->fmt = fmt; m->rows = R; m->cols = C;
    m->gr = gr < 1 ? 1 : gr; m->gc = gc < 1 ? 1 : gc;
    m->srows = (R + m->gr - 1) / m->gr; m->scols = (C + m->gc - 1) / m->gc;
    if (m->srows < 1) m->srows = 1;
    if (m->scols < 1) m->scols = 1;
    m->s = grow(m->s, &m->cap_s, sizeof(float) * (size_t)m->srows * m->scols);
    if (fmt == HALO_Q_IDENTITY) m->f = grow(m->f, &m->cap_f, sizeof(float) * ((size_t)R * C + 1));
    else m->q = grow(m->q, &m->cap_q, (size_t)R * C + 1);
}

// dst [C][R] = src^T for src [R][ld] (blocked for cache).
static void transpose_f32(const float *src, int R, int C, long ld, float *dst) {
    const int T = 32;
    #pragma omp parallel for collapse(2) schedule(static) if ((long)R * C > (1L << 16))
    for (int i0 = 0; i0 < R; i0 += T)
        for (int j0 = 0; j0 < C; j0 += T) {
            int i1 = i0 + T < R ? i0 + T : R, j1 = j0 + T < C ? j0 + T : C;
            for (int j = j0; j < j1; j++)
                for (int i = i0; i < i1; i++) dst[(size_t)j * R + i] = src[(size_t)i * ld + j];
        }
}

int halo_quantize(halo_qmat *out, const float *src, int sr, int sc, long ld, int trans, const halo_qspec *qs,
                  const char *what) {
    const int R = trans ? sc : sr, C = trans ? sr : sc;
    float *tbuf = NULL;
    const float *M = src;
    long ldm = ld;
    if (trans && R > 0 && C > 0) {
        tbuf = xmalloc(sizeof(float) * (size_t)R * C);
        transpose_f32(src, sr, sc, ld, tbuf);
        M = tbuf; ldm = C;
    }
    const int blk = qs->block > 0 ? qs->block : 128;
    int gr, gc;
    switch (qs->gran) {
    case HALO_GRAN_ROW: gr = 1; gc = C; break;
    case HALO_GRAN_BLOCK1x128: gr = 1; gc = blk; break;
    case HALO_GRAN_BLOCK128: gr = blk; gc = blk; break;
    default: gr = R; gc = C; break;
    }
    if (gc > C) gc = C;
    if (gr > R) gr = R;
    qmat_shape(out, qs->fmt, R, C, gr, gc);
    const int scols = out->scols, srows = out->srows;

    // Pass 1: finiteness and per-(row, column group) absmax.
    float *rowmax = xmalloc(sizeof(float) * (size_t)(R > 0 ? R : 1) * scols);
    long bad = -1;
    #pragma omp parallel for schedule(static) if ((long)R * C > (1L << 16))
    for (int i = 0; i < R; i++) {
        const float *row = M + (size_t)i * ldm;
        for (int g = 0; g < scols; g++) {
            int k0 = g * gc, k1 = k0 + gc < C ? k0 + gc : C;
            float mx = 0;
            int finite = 1;
            for (int k = k0; k < k1; k++) {
                float a = fabsf(row[k]);
                finite &= (a <= 3.4028235e38f); // false for NaN and Inf
                mx = a > mx ? a : mx;
            }
            rowmax[(size_t)i * scols + g] = mx;
            if (!finite) {
                for (int k = k0; k < k1; k++)
                    if (!isfinite(row[k])) {
                        long idx = (long)i * C + k;
                        #pragma omp critical(halo_quant_bad)
                        if (bad < 0 || idx < bad) bad = idx;
                        break;
                    }
            }
        }
    }
    if (bad >= 0) {
        int i = (int)(bad / C), k = (int)(bad % C);
        int si = trans ? k : i, sk = trans ? i : k;
        float v = M[(size_t)i * ldm + k];
        free(rowmax); free(tbuf);
        return halo_fail("%s: non-finite value %g at [%d,%d] of a %dx%d tensor (refusing to quantize)",
                         what ? what : "quantize", v, si, sk, sr, sc);
    }
    const float qmax = halo_qformat_max(qs->fmt);
    for (int a = 0; a < srows; a++)
        for (int g = 0; g < scols; g++) {
            float mx = 0;
            int i1 = (a + 1) * gr < R ? (a + 1) * gr : R;
            for (int i = a * gr; i < i1; i++) mx = fmaxf(mx, rowmax[(size_t)i * scols + g]);
            float s = mx / qmax;
            // Zero group: any scale works (codes are 0); 1 keeps dequantization exact. A positive absmax so small
            // that absmax/qmax underflows gets the smallest normal scale so x/s stays finite.
            if (qs->fmt == HALO_Q_IDENTITY || mx == 0) s = 1.0f;
            else if (s < 1.17549435e-38f) s = 1.17549435e-38f;
            out->s[(size_t)a * scols + g] = s;
        }
    free(rowmax);

    // Pass 2: encode.
    const int sto = qs->rnd == HALO_ROUND_STOCHASTIC;
    const fp8_fmt *F = fp8_of(qs->fmt);
    #pragma omp parallel for schedule(static) if ((long)R * C > (1L << 15))
    for (int i = 0; i < R; i++) {
        const float *row = M + (size_t)i * ldm;
        const float *srow = out->s + (size_t)(i / gr) * scols;
        for (int g = 0; g < scols; g++) {
            int k0 = g * gc, k1 = k0 + gc < C ? k0 + gc : C;
            const float s = srow[g];
            // nearest rounding multiplies by the scale's reciprocal (one fp32 division per group, as the GPU
            // kernels: a division per element bounded their speed); codes differ from rint(x / s) only where x / s
            // lies within an ulp of a rounding boundary
            const float r = 1.0f / s;
            if (qs->fmt == HALO_Q_IDENTITY) {
                memcpy(out->f + (size_t)i * C + k0, row + k0, sizeof(float) * (size_t)(k1 - k0));
            } else if (qs->fmt == HALO_Q_INT8) {
                int8_t *dst = (int8_t *)out->q + (size_t)i * C;
                if (!sto) {
                    for (int k = k0; k < k1; k++) {
                        float v = rintf(row[k] * r);
                        v = v > 127.f ? 127.f : v < -127.f ? -127.f : v;
                        dst[k] = (int8_t)v;
                    }
                } else {
                    for (int k = k0; k < k1; k++) {
                        uint64_t idx = trans ? (uint64_t)k * (uint64_t)sc + (uint64_t)i : (uint64_t)i * (uint64_t)sc + (uint64_t)k;
                        double v = floor((double)row[k] / s + quant_rng_uniform(qs->seed, qs->counter, idx));
                        v = v > 127 ? 127 : v < -127 ? -127 : v;
                        dst[k] = (int8_t)v;
                    }
                }
            } else {
                uint8_t *dst = out->q + (size_t)i * C;
                if (!sto) {
                    const int mb = F->mbits, bi = F->bias;
                    const uint32_t mc = F->maxcode, th = (uint32_t)(127 + 1 - bi) << 23;
                    const float sm = ldexpf(1.0f, mb - (1 - bi));
                    for (int k = k0; k < k1; k++) dst[k] = fp8_encode_fin(row[k] * r, mb, bi, mc, sm, th);
                } else {
                    for (int k = k0; k < k1; k++) {
                        uint64_t idx = trans ? (uint64_t)k * (uint64_t)sc + (uint64_t)i : (uint64_t)i * (uint64_t)sc + (uint64_t)k;
                        dst[k] = fp8_encode_sr(row[k] / s, F, quant_rng_uniform(qs->seed, qs->counter, idx));
                    }
                }
            }
        }
    }
    free(tbuf);
    return HALO_OK;
}

void halo_dequantize(const halo_qmat *m, float *dst) {
    const int R = m->rows, C = m->cols;
    if (m->fmt == HALO_Q_IDENTITY) { memcpy(dst, m->f, sizeof(float) * (size_t)R * C); return; }
    dec_init();
    const float *tab = g_dec[m->fmt == HALO_Q_E5M2];
    #pragma omp parallel for schedule(static) if ((long)R * C > (1L << 16))
    for (int i = 0; i < R; i++) {
        const float *srow = m->s + (size_t)(i / m->gr) * m->scols;
        const uint8_t *q = m->q + (size_t)i * C;
        float *d = dst + (size_t)i * C;
        for (int g = 0; g < m->scols; g++) {
            const int k0 = g * m->gc, k1 = k0 + m->gc < C ? k0 + m->gc : C;
            const float s = srow[g];
            if (m->fmt == HALO_Q_INT8)
                for (int k = k0; k < k1; k++) d[k] = (float)(int8_t)q[k] * s;
            else
                for (int k = k0; k < k1; k++) d[k] = tab[q[k]] * s;
        }
    }
}

void halo_qmat_transpose(const halo_qmat *in, halo_qmat *out) {
    const int R = in->rows, C = in->cols;
    qmat_shape(out, in->fmt, C, R, in->gc, in->gr);
    for (int a = 0; a < in->srows; a++)
        for (int g = 0; g < in->scols; g++) out->s[(size_t)g * out->scols + a] = in->s[(size_t)a * in->scols + g];
    if (in->fmt == HALO_Q_IDENTITY) { transpose_f32(in->f, R, C, C, out->f); return; }
    const int T = 64;
    #pragma omp parallel for collapse(2) schedule(static) if ((long)R * C > (1L << 16))
    for (int i0 = 0; i0 < R; i0 += T)
        for (int j0 = 0; j0 < C; j0 += T) {
            int i1 = i0 + T < R ? i0 + T : R, j1 = j0 + T < C ? j0 + T : C;
            for (int j = j0; j < j1; j++)
                for (int i = i0; i < i1; i++) out->q[(size_t)j * R + i] = in->q[(size_t)i * C + j];
        }
}

// ---------------------------------------------------------------------------------------------------------------
// int8 GEMM: C = A B^T, A [M][K], B [N][K], in chunks of kc along K with a per-chunk epilogue:
//  - raw mode (C32 != NULL): one chunk, int32 written;
//  - scaled mode: Cf[i][j] (+)= sum_chunks int32_chunk(i,j) * sa(i,chunk) * sb(j,chunk).

#define GM_MR 8
#define GM_NR 32

typedef struct {
    const halo_qmat *A, *B; // scaled mode
    int kc;
} gemm_scales;

// Per-thread grow-only scratch for the GEMM operands (avoids page-faulting fresh buffers on every product). Slots:
// 0, 1: packed / decoded operands; 2: column-sum corrections. Kept until the thread exits.
static _Thread_local void *g_tls_buf[3];
static _Thread_local size_t g_tls_cap[3];
static void *tls_buf(int slot, size_t n) {
    if (n > g_tls_cap[slot]) {
        free(g_tls_buf[slot]);
        g_tls_cap[slot] = n + n / 4;
        g_tls_buf[slot] = xmalloc(g_tls_cap[slot]);
    }
    return g_tls_buf[slot];
}

static inline float scale_at(const halo_qmat *m, int r, int k) { return m->s[(size_t)(r / m->gr) * m->scols + k / m->gc]; }

static void gemm_s8_core(const int8_t *A, const int8_t *B, int M, int N, int K, int kc, int32_t *C32,
                         const gemm_scales *sc, float *Cf, long ldc, int accumulate) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                if (C32) C32[(size_t)i * N + j] = 0;
                else if (!accumulate) Cf[(size_t)i * ldc + j] = 0;
            }
        return;
    }
    const int nch = (K + kc - 1) / kc;
#if HALO_VNNI
    const int Kp = (K + 3) & ~3, KQ = Kp / 4;
    const int Mp = (M + GM_MR - 1) / GM_MR * GM_MR, NB = (N + GM_NR - 1) / GM_NR;
    uint8_t *Au = tls_buf(0, (size_t)Mp * Kp);
    int8_t *Bp = tls_buf(1, (size_t)NB * KQ * 128);
    int32_t *corr = tls_buf(2, sizeof(int32_t) * (size_t)NB * GM_NR * nch);
    const int par = (double)M * N * K > 4e6;
    #pragma omp parallel for schedule(static) if (par)
    for (int i = 0; i < Mp; i++) {
        uint8_t *d = Au + (size_t)i * Kp;
        if (i < M) {
            const int8_t *a = A + (size_t)i * K;
            for (int k = 0; k < K; k++) d[k] = (uint8_t)(a[k] + 128);
            for (int k = K; k < Kp; k++) d[k] = 128;
        } else memset(d, 128, (size_t)Kp);
    }
    #pragma omp parallel for schedule(static) if (par)
    for (int jb = 0; jb < NB; jb++) {
        for (int l = 0; l < GM_NR; l++) {
            int j = jb * GM_NR + l;
            const int8_t *b = j < N ? B + (size_t)j * K : NULL;
            for (int kq = 0; kq < KQ; kq++)
                for (int r = 0; r < 4; r++) {
                    int k = kq * 4 + r;
                    Bp[((size_t)jb * KQ + kq) * 128 + (size_t)l * 4 + r] = (b && k < K) ? b[k] : 0;
                }
            for (int ch = 0; ch < nch; ch++) {
                int s = 0;
                if (b) for (int k = ch * kc; k < K && k < (ch + 1) * kc; k++) s += b[k];
                corr[((size_t)jb * GM_NR + l) * nch + ch] = 128 * s;
            }
        }
    }
    const int MB = Mp / GM_MR;
    #pragma omp parallel for collapse(2) schedule(static) if (par)
    for (int jb = 0; jb < NB; jb++)
        for (int ib = 0; ib < MB; ib++) {
            const int i0 = ib * GM_MR, j0 = jb * GM_NR;
            __m512 cf[GM_MR][2];
            for (int r = 0; r < GM_MR; r++) { cf[r][0] = _mm512_setzero_ps(); cf[r][1] = _mm512_setzero_ps(); }
            for (int ch = 0; ch < nch; ch++) {
                const int k0 = ch * kc, k1 = k0 + kc < K ? k0 + kc : K;
                const int q0 = k0 / 4, q1 = (k1 + 3) / 4;
                __m512i acc[GM_MR][2];
                for (int r = 0; r < GM_MR; r++) { acc[r][0] = _mm512_setzero_si512(); acc[r][1] = _mm512_setzero_si512(); }
                const int8_t *bp = Bp + ((size_t)jb * KQ + q0) * 128;
                const uint8_t *ap = Au + (size_t)i0 * Kp + (size_t)q0 * 4;
                for (int kq = q0; kq < q1; kq++, bp += 128, ap += 4) {
                    __m512i b0 = _mm512_loadu_si512((const void *)bp), b1 = _mm512_loadu_si512((const void *)(bp + 64));
                    for (int r = 0; r < GM_MR; r++) {
                        int32_t a4;
                        memcpy(&a4, ap + (size_t)r * Kp, 4);
                        __m512i av = _mm512_set1_epi32(a4);
                        acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], av, b0);
                        acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], av, b1);
                    }
                }
                __m512i c0, c1;
                {
                    int32_t cv[GM_NR];
                    for (int l = 0; l < GM_NR; l++) cv[l] = corr[((size_t)jb * GM_NR + l) * nch + ch];
                    c0 = _mm512_loadu_si512((const void *)cv); c1 = _mm512_loadu_si512((const void *)(cv + 16));
                }
                if (C32) {
                    for (int r = 0; r < GM_MR && i0 + r < M; r++) {
                        int32_t out[GM_NR];
                        _mm512_storeu_si512((void *)out, _mm512_sub_epi32(acc[r][0], c0));
                        _mm512_storeu_si512((void *)(out + 16), _mm512_sub_epi32(acc[r][1], c1));
                        for (int l = 0; l < GM_NR && j0 + l < N; l++) C32[(size_t)(i0 + r) * N + j0 + l] = out[l];
                    }
                    continue;
                }
                float sbv[GM_NR];
                for (int l = 0; l < GM_NR; l++) sbv[l] = j0 + l < N ? scale_at(sc->B, j0 + l, k0) : 0.0f;
                __m512 sb0 = _mm512_loadu_ps(sbv), sb1 = _mm512_loadu_ps(sbv + 16);
                for (int r = 0; r < GM_MR; r++) {
                    float sa = i0 + r < M ? scale_at(sc->A, i0 + r, k0) : 0.0f;
                    __m512 s0 = _mm512_mul_ps(_mm512_set1_ps(sa), sb0), s1 = _mm512_mul_ps(_mm512_set1_ps(sa), sb1);
                    cf[r][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][0], c0)), s0, cf[r][0]);
                    cf[r][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][1], c1)), s1, cf[r][1]);
                }
            }
            if (C32) continue;
            for (int r = 0; r < GM_MR && i0 + r < M; r++) {
                float out[GM_NR];
                _mm512_storeu_ps(out, cf[r][0]);
                _mm512_storeu_ps(out + 16, cf[r][1]);
                float *c = Cf + (size_t)(i0 + r) * ldc + j0;
                int nl = N - j0 < GM_NR ? N - j0 : GM_NR;
                if (accumulate) for (int l = 0; l < nl; l++) c[l] += out[l];
                else for (int l = 0; l < nl; l++) c[l] = out[l];
            }
        }
#else
    // Portable kernel: blocks of rows/columns, int32 dot products per chunk (vectorizes as widening multiply-adds).
    const int MB = (M + GM_MR - 1) / GM_MR, NB = (N + GM_NR - 1) / GM_NR;
    #pragma omp parallel for collapse(2) schedule(static) if ((double)M * N * K > 4e6)
    for (int jb = 0; jb < NB; jb++)
        for (int ib = 0; ib < MB; ib++) {
            const int i0 = ib * GM_MR, j0 = jb * GM_NR;
            const int mr = M - i0 < GM_MR ? M - i0 : GM_MR, nr = N - j0 < GM_NR ? N - j0 : GM_NR;
            float cf[GM_MR][GM_NR] = {{0}};
            for (int ch = 0; ch < nch; ch++) {
                const int k0 = ch * kc, k1 = k0 + kc < K ? k0 + kc : K;
                for (int r = 0; r < mr; r++) {
                    const int8_t *a = A + (size_t)(i0 + r) * K;
                    for (int l = 0; l < nr; l++) {
                        const int8_t *b = B + (size_t)(j0 + l) * K;
                        int32_t s = 0;
                        for (int k = k0; k < k1; k++) s += (int16_t)a[k] * (int16_t)b[k];
                        if (C32) C32[(size_t)(i0 + r) * N + j0 + l] = s;
                        else cf[r][l] += (float)s * (scale_at(sc->A, i0 + r, k0) * scale_at(sc->B, j0 + l, k0));
                    }
                }
            }
            if (C32) continue;
            for (int r = 0; r < mr; r++) {
                float *c = Cf + (size_t)(i0 + r) * ldc + j0;
                if (accumulate) for (int l = 0; l < nr; l++) c[l] += cf[r][l];
                else for (int l = 0; l < nr; l++) c[l] = cf[r][l];
            }
        }
#endif
}

const char *halo_gemm_s8_kernel(void) { return HALO_VNNI ? "avx512-vnni" : "generic"; }

void halo_gemm_s8s8s32(const int8_t *A, const int8_t *B, int32_t *C, int M, int N, int K) {
    gemm_s8_core(A, B, M, N, K, K > 0 ? K : 1, C, NULL, NULL, 0, 0);
}

int halo_qgemm(const halo_qmat *A, const halo_qmat *B, float *C, long ldc, int accumulate) {
    if (A->cols != B->cols)
        return halo_fail("qgemm: inner dimensions differ (%dx%d times (%dx%d)^T)", A->rows, A->cols, B->rows, B->cols);
    const int M = A->rows, N = B->rows, K = A->cols;
    if ((A->fmt == HALO_Q_INT8) != (B->fmt == HALO_Q_INT8))
        return halo_fail("qgemm: an int8 operand cannot be multiplied with a %s one",
                         halo_qformat_name(A->fmt == HALO_Q_INT8 ? B->fmt : A->fmt));
    if (A->fmt == HALO_Q_INT8) {
        // Chunk = the finer scale group along K; groups are 1x/128x-style so the coarser one is a multiple of it
        // (or spans all of K). Chunks stay <= 32768 so the int32 sums (<= 255*127 per term) cannot overflow.
        int kc = A->gc < B->gc ? A->gc : B->gc;
        int kmax = A->gc > B->gc ? A->gc : B->gc;
        if (kmax < K && kmax % kc) return halo_fail("qgemm: scale groups %d and %d along K do not nest", A->gc, B->gc);
        if (kc > 32768) kc = 32768;
        if (kc < K && kc % 4) return halo_fail("qgemm: int8 scale block %d along K must be a multiple of 4", kc);
        gemm_scales sc = {A, B, kc};
        gemm_s8_core((const int8_t *)A->q, (const int8_t *)B->q, M, N, K, kc, NULL, &sc, C, ldc, accumulate);
        return HALO_OK;
    }
    if (M == 0 || N == 0) return HALO_OK;
    float *a = tls_buf(0, sizeof(float) * ((size_t)M * K + 1)), *b = tls_buf(1, sizeof(float) * ((size_t)N * K + 1));
    halo_dequantize(A, a);
    halo_dequantize(B, b);
    if (K > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b, K, accumulate ? 1.0f : 0.0f, C,
                    (int)ldc);
    else if (!accumulate)
        for (int i = 0; i < M; i++) memset(C + (size_t)i * ldc, 0, sizeof(float) * (size_t)N);
    return HALO_OK;
}
