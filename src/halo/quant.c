// INT8 / OCP FP8 quantizers with scale grids and rounding modes, and the scaled 8-bit product A B^T.
// The int8 kernel packs B into 16-lane x 4-byte panels for AVX-512 VNNI (vpdpbusd, u8 x s8 with the +128 shift
// corrected by column sums); with AVX2 only, both operands widen to int16 and vpmaddwd multiplies pairs (exact, no
// saturation); a portable C kernel is used otherwise (the kernel is chosen at compile time).
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && !defined(HALO_GENERIC_GEMM)
#include <immintrin.h>
#define HALO_VNNI 1
#define HALO_AVX2_GEMM 0
#elif defined(__AVX2__) && !defined(HALO_GENERIC_GEMM)
#include <immintrin.h>
#define HALO_VNNI 0
#define HALO_AVX2_GEMM 1
#else
#define HALO_VNNI 0
#define HALO_AVX2_GEMM 0
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

halo_qgrid halo_qgrid_of(const halo_qspec *qs, int R, int C) {
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
    halo_qgrid g;
    g.gr = gr < 1 ? 1 : gr; g.gc = gc < 1 ? 1 : gc;
    g.srows = (R + g.gr - 1) / g.gr; g.scols = (C + g.gc - 1) / g.gc;
    if (g.srows < 1) g.srows = 1;
    if (g.scols < 1) g.scols = 1;
    return g;
}

// The scale of a group with absolute maximum mx. Zero group: any scale works (codes are 0); 1 keeps dequantization
// exact. A positive absmax so small that absmax/qmax underflows gets the smallest normal scale so x/s stays finite.
static float scale_of(float mx, halo_qformat fmt) {
    float s = mx / halo_qformat_max(fmt);
    if (fmt == HALO_Q_IDENTITY || mx == 0) s = 1.0f;
    else if (s < 1.17549435e-38f) s = 1.17549435e-38f;
    return s;
}

// Pass 1 over rows [row0, row0 + rows) of a matrix on grid g (M points at row row0, leading dimension ldm):
// amax[a][j] = max(amax[a][j], |M| over the group's part in the range); the caller zeroes amax. Returns the local
// index i * C + k of the first non-finite value (nothing of amax is then meaningful), or -1.
static long absmax_rows(const float *M, long ldm, int row0, int rows, int C, const halo_qgrid *g, float *amax) {
    const int scols = g->scols, gc = g->gc;
    float *rowmax = xmalloc(sizeof(float) * (size_t)(rows > 0 ? rows : 1) * scols);
    long bad = -1;
    #pragma omp parallel for schedule(static) if ((long)rows * C > (1L << 16))
    for (int i = 0; i < rows; i++) {
        const float *row = M + (size_t)i * ldm;
        for (int j = 0; j < scols; j++) {
            int k0 = j * gc, k1 = k0 + gc < C ? k0 + gc : C;
            float mx = 0;
            int finite = 1;
            for (int k = k0; k < k1; k++) {
                float a = fabsf(row[k]);
                finite &= (a <= 3.4028235e38f); // false for NaN and Inf
                mx = a > mx ? a : mx;
            }
            rowmax[(size_t)i * scols + j] = mx;
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
    if (bad < 0)
        for (int i = 0; i < rows; i++) {
            float *arow = amax + (size_t)((row0 + i) / g->gr) * scols;
            for (int j = 0; j < scols; j++) arow[j] = fmaxf(arow[j], rowmax[(size_t)i * scols + j]);
        }
    free(rowmax);
    return bad;
}

// Pass 2: encodes rows [row0, row0 + rows) of out (M points at row row0) with out's scales. The stochastic stream
// is keyed on the element's index in the source [sr][sc] (transposed when trans), as halo_quantize documents.
static void encode_rows(halo_qmat *out, const float *M, long ldm, int row0, int rows, int trans, int sc,
                        const halo_qspec *qs) {
    const int C = out->cols, gr = out->gr, gc = out->gc, scols = out->scols;
    const int sto = qs->rnd == HALO_ROUND_STOCHASTIC;
    const fp8_fmt *F = fp8_of(qs->fmt);
    #pragma omp parallel for schedule(static) if ((long)rows * C > (1L << 15))
    for (int li = 0; li < rows; li++) {
        const int i = row0 + li;
        const float *row = M + (size_t)li * ldm;
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
}

static int fail_nonfinite(const char *what, float v, int si, int sk, int sr, int sc) {
    return halo_fail("%s: non-finite value %g at [%d,%d] of a %dx%d tensor (refusing to quantize)",
                     what ? what : "quantize", v, si, sk, sr, sc);
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
    const halo_qgrid g = halo_qgrid_of(qs, R, C);
    qmat_shape(out, qs->fmt, R, C, g.gr, g.gc);
    float *amax = xcalloc((size_t)g.srows * g.scols, sizeof(float));
    long bad = absmax_rows(M, ldm, 0, R, C, &g, amax);
    if (bad >= 0) {
        int i = (int)(bad / C), k = (int)(bad % C);
        float v = M[(size_t)i * ldm + k];
        free(amax); free(tbuf);
        return fail_nonfinite(what, v, trans ? k : i, trans ? i : k, sr, sc);
    }
    if (qs->gran == HALO_GRAN_TENSOR && (size_t)g.srows * g.scols == 1) {   // delayed scaling (halo_qspec)
        if (qs->amax_seen) *qs->amax_seen = amax[0];
        if (qs->amax_scale > 0) amax[0] = qs->amax_scale;
    }
    for (size_t a = 0; a < (size_t)g.srows * g.scols; a++) out->s[a] = scale_of(amax[a], qs->fmt);
    free(amax);
    encode_rows(out, M, ldm, 0, R, trans, sc, qs);
    free(tbuf);
    return HALO_OK;
}

static int check_row_range(int lo, int hi, int R, int C, const char *what) {
    if (R < 0 || C < 0 || lo < 0 || hi < lo || hi > R)
        return halo_fail("%s: row range [%d,%d) is not within a %dx%d matrix", what ? what : "quantize", lo, hi, R, C);
    return HALO_OK;
}

int halo_absmax_rows(float *amax, const float *src, long ld, int lo, int hi, int R, int C, const halo_qspec *qs,
                     const char *what) {
    if (check_row_range(lo, hi, R, C, what)) return HALO_ERR;
    const halo_qgrid g = halo_qgrid_of(qs, R, C);
    memset(amax, 0, sizeof(float) * (size_t)g.srows * g.scols);
    long bad = absmax_rows(src, ld, lo, hi - lo, C, &g, amax);
    if (bad < 0) return HALO_OK;
    int i = (int)(bad / C), k = (int)(bad % C);
    return fail_nonfinite(what, src[(size_t)i * ld + k], lo + i, k, R, C);
}

int halo_quantize_rows(halo_qmat *out, const float *src, long ld, int lo, int hi, int R, int C, const halo_qspec *qs,
                       const float *amax, const char *what) {
    if (check_row_range(lo, hi, R, C, what)) return HALO_ERR;
    const halo_qgrid g = halo_qgrid_of(qs, R, C);
    const size_t ng = (size_t)g.srows * g.scols;
    for (size_t a = 0; a < ng; a++)
        if (!(amax[a] >= 0 && amax[a] <= 3.4028235e38f))
            return halo_fail("%s: supplied absmax %g of scale group [%d,%d] is not finite and >= 0",
                             what ? what : "quantize", amax[a], (int)(a / g.scols), (int)(a % g.scols));
    // The rows' own absmax: refuses NaN/Inf, and an amax below it (one not reduced over every rank's rows).
    float *own = xcalloc(ng, sizeof(float));
    long bad = absmax_rows(src, ld, lo, hi - lo, C, &g, own);
    if (bad >= 0) {
        int i = (int)(bad / C), k = (int)(bad % C);
        free(own);
        return fail_nonfinite(what, src[(size_t)i * ld + k], lo + i, k, R, C);
    }
    for (size_t a = 0; a < ng; a++)
        if (own[a] > amax[a]) {
            float mine = own[a];
            free(own);
            return halo_fail("%s: supplied absmax %g of scale group [%d,%d] is below rows [%d,%d)'s own %g (not "
                             "reduced over every rank?)", what ? what : "quantize", amax[a], (int)(a / g.scols),
                             (int)(a % g.scols), lo, hi, mine);
        }
    free(own);
    qmat_shape(out, qs->fmt, R, C, g.gr, g.gc);
    for (size_t a = 0; a < ng; a++) out->s[a] = scale_of(amax[a], qs->fmt);
    encode_rows(out, src, ld, lo, hi - lo, 0, C, qs);
    return HALO_OK;
}

void halo_qmat_copy(halo_qmat *dst, const halo_qmat *src) {
    qmat_shape(dst, src->fmt, src->rows, src->cols, src->gr, src->gc);
    memcpy(dst->s, src->s, sizeof(float) * (size_t)src->srows * src->scols);
    const size_t n = (size_t)src->rows * src->cols;
    if (src->fmt == HALO_Q_IDENTITY) { if (n) memcpy(dst->f, src->f, sizeof(float) * n); }
    else if (n) memcpy(dst->q, src->q, n);
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
#elif HALO_AVX2_GEMM
    // A as int16 rows [Mp][Kp] (K padded to even), B as panels of 16 columns: for each k pair, 16 x (b[k], b[k+1]) as
    // int16 (two ymm); vpmaddwd of a broadcast (a[k], a[k+1]) with a panel gives 8 columns' two-term sums in int32.
    enum { AR = 4, BR = 16 };
    const int Kp = (K + 1) & ~1, KP = Kp / 2;
    const int Mp = (M + AR - 1) / AR * AR, NB = (N + BR - 1) / BR;
    int16_t *Aw = tls_buf(0, sizeof(int16_t) * (size_t)Mp * Kp);
    int16_t *Bw = tls_buf(1, sizeof(int16_t) * (size_t)NB * KP * 2 * BR);
    const int par = (double)M * N * K > 4e6;
    #pragma omp parallel for schedule(static) if (par)
    for (int i = 0; i < Mp; i++) {
        int16_t *d = Aw + (size_t)i * Kp;
        if (i < M) {
            const int8_t *a = A + (size_t)i * K;
            for (int k = 0; k < K; k++) d[k] = a[k];
            if (Kp > K) d[K] = 0;
        } else memset(d, 0, sizeof(int16_t) * (size_t)Kp);
    }
    #pragma omp parallel for schedule(static) if (par)
    for (int jb = 0; jb < NB; jb++)
        for (int l = 0; l < BR; l++) {
            const int j = jb * BR + l;
            const int8_t *b = j < N ? B + (size_t)j * K : NULL;
            int16_t *d = Bw + (size_t)jb * KP * 2 * BR + (size_t)l * 2;
            for (int kp = 0; kp < KP; kp++, d += 2 * BR) {
                d[0] = b ? b[2 * kp] : 0;
                d[1] = b && 2 * kp + 1 < K ? b[2 * kp + 1] : 0;
            }
        }
    const int MB = Mp / AR;
    #pragma omp parallel for collapse(2) schedule(static) if (par)
    for (int jb = 0; jb < NB; jb++)
        for (int ib = 0; ib < MB; ib++) {
            const int i0 = ib * AR, j0 = jb * BR;
            __m256 cf[AR][2];
            for (int r = 0; r < AR; r++) { cf[r][0] = _mm256_setzero_ps(); cf[r][1] = _mm256_setzero_ps(); }
            for (int ch = 0; ch < nch; ch++) {
                const int k0 = ch * kc, k1 = k0 + kc < K ? k0 + kc : K;   // k0 even: kc is a multiple of 4
                const int p0 = k0 / 2, p1 = (k1 + 1) / 2;
                __m256i acc[AR][2];
                for (int r = 0; r < AR; r++) { acc[r][0] = _mm256_setzero_si256(); acc[r][1] = _mm256_setzero_si256(); }
                const int16_t *bp = Bw + ((size_t)jb * KP + p0) * 2 * BR;
                const int16_t *ap = Aw + (size_t)i0 * Kp + (size_t)p0 * 2;
                for (int kp = p0; kp < p1; kp++, bp += 2 * BR, ap += 2) {
                    const __m256i b0 = _mm256_loadu_si256((const __m256i *)bp);
                    const __m256i b1 = _mm256_loadu_si256((const __m256i *)(bp + 16));
                    for (int r = 0; r < AR; r++) {
                        int32_t a2;
                        memcpy(&a2, ap + (size_t)r * Kp, 4);
                        const __m256i av = _mm256_set1_epi32(a2);
                        acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(av, b0));
                        acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(av, b1));
                    }
                }
                if (C32) {
                    for (int r = 0; r < AR && i0 + r < M; r++) {
                        int32_t out[BR];
                        _mm256_storeu_si256((__m256i *)out, acc[r][0]);
                        _mm256_storeu_si256((__m256i *)(out + 8), acc[r][1]);
                        for (int l = 0; l < BR && j0 + l < N; l++) C32[(size_t)(i0 + r) * N + j0 + l] = out[l];
                    }
                    continue;
                }
                float sbv[BR];
                for (int l = 0; l < BR; l++) sbv[l] = j0 + l < N ? scale_at(sc->B, j0 + l, k0) : 0.0f;
                const __m256 sb0 = _mm256_loadu_ps(sbv), sb1 = _mm256_loadu_ps(sbv + 8);
                for (int r = 0; r < AR; r++) {
                    const float sa = i0 + r < M ? scale_at(sc->A, i0 + r, k0) : 0.0f;
                    const __m256 s0 = _mm256_mul_ps(_mm256_set1_ps(sa), sb0), s1 = _mm256_mul_ps(_mm256_set1_ps(sa), sb1);
                    cf[r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][0]), s0, cf[r][0]);
                    cf[r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][1]), s1, cf[r][1]);
                }
            }
            if (C32) continue;
            for (int r = 0; r < AR && i0 + r < M; r++) {
                float out[BR];
                _mm256_storeu_ps(out, cf[r][0]);
                _mm256_storeu_ps(out + 8, cf[r][1]);
                float *c = Cf + (size_t)(i0 + r) * ldc + j0;
                const int nl = N - j0 < BR ? N - j0 : BR;
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

const char *halo_gemm_s8_kernel(void) { return HALO_VNNI ? "avx512-vnni" : HALO_AVX2_GEMM ? "avx2" : "generic"; }

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
