// Hadamard matrices by construction (Sylvester, Paley I and II over GF(p^k), Williamson, doubling), a process-wide
// cache of the verified base matrices, and the fast transforms H_K (x) H_P applied along rows or columns.
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "halo/hadamard.h"
#include "util/error.h"

// ---------------------------------------------------------------------------------------------------------------
// Finite fields GF(p^k), p odd, elements as integers 0..q-1 whose base-p digits are polynomial coefficients.

typedef struct {
    int p, k, q;
    int f[12];        // monic irreducible modulus, coefficients f[0..k] (f[k] = 1)
    signed char *chi; // [q] quadratic character: 0, +1 (nonzero square), -1
} gf_field;

static int is_prime(int n) {
    if (n < 2) return 0;
    for (int d = 2; d * d <= n; d++) if (n % d == 0) return 0;
    return 1;
}

// q = p^k with p an odd prime: returns 1 and sets p, k.
static int odd_prime_power(int q, int *p, int *k) {
    if (q < 3 || q % 2 == 0) return 0;
    int r = 3;
    while (q % r) r += 2;
    int e = 0, t = q;
    while (t % r == 0) { t /= r; e++; }
    if (t != 1 || !is_prime(r)) return 0;
    *p = r; *k = e;
    return 1;
}

// Remainder of a (degree < na) modulo the monic g (degree dg) over GF(p), in place; returns 1 if zero.
static int poly_rem_is_zero(int *a, int na, const int *g, int dg, int p) {
    for (int i = na - 1; i >= dg; i--) {
        int c = a[i] % p;
        if (!c) continue;
        for (int j = 0; j <= dg; j++) a[i - dg + j] = ((a[i - dg + j] - c * g[j]) % p + p) % p;
    }
    for (int i = 0; i < dg && i < na; i++) if (a[i] % p) return 0;
    return 1;
}

// f (degree k, monic) is irreducible iff no monic polynomial of degree 1..k/2 divides it.
static int poly_irreducible(const int *f, int k, int p) {
    for (int dg = 1; dg <= k / 2; dg++) {
        int count = 1;
        for (int i = 0; i < dg; i++) count *= p;
        for (int c = 0; c < count; c++) {
            int g[12], a[12], t = c;
            for (int i = 0; i < dg; i++) { g[i] = t % p; t /= p; }
            g[dg] = 1;
            memcpy(a, f, sizeof(int) * (size_t)(k + 1));
            if (poly_rem_is_zero(a, k + 1, g, dg, p)) return 0;
        }
    }
    return 1;
}

static int gf_sub(const gf_field *F, int a, int b) {
    if (F->k == 1) return ((a - b) % F->p + F->p) % F->p;
    int r = 0, mul = 1;
    for (int i = 0; i < F->k; i++) {
        int da = a % F->p, db = b % F->p;
        a /= F->p; b /= F->p;
        r += ((da - db + F->p) % F->p) * mul;
        mul *= F->p;
    }
    return r;
}

static int gf_square(const gf_field *F, int a) {
    int p = F->p, k = F->k;
    if (k == 1) return (int)((long)a * a % p);
    int d[12], prod[24] = {0};
    for (int i = 0; i < k; i++) { d[i] = a % p; a /= p; }
    for (int i = 0; i < k; i++) for (int j = 0; j < k; j++) prod[i + j] = (prod[i + j] + d[i] * d[j]) % p;
    poly_rem_is_zero(prod, 2 * k - 1, F->f, k, p);
    int r = 0, mul = 1;
    for (int i = 0; i < k; i++) { r += prod[i] * mul; mul *= p; }
    return r;
}

static int gf_init(gf_field *F, int q) {
    memset(F, 0, sizeof *F);
    if (!odd_prime_power(q, &F->p, &F->k) || F->k > 10) return -1;
    F->q = q;
    if (F->k > 1) { // first monic irreducible polynomial in counting order
        int found = 0, count = q;
        for (int c = 0; c < count && !found; c++) {
            int t = c;
            for (int i = 0; i < F->k; i++) { F->f[i] = t % F->p; t /= F->p; }
            F->f[F->k] = 1;
            if (F->f[0] != 0 && poly_irreducible(F->f, F->k, F->p)) found = 1;
        }
        if (!found) return -1;
    }
    F->chi = xcalloc((size_t)q, 1);
    for (int x = 0; x < q; x++) F->chi[x] = -1;
    F->chi[0] = 0;
    for (int x = 1; x < q; x++) F->chi[gf_square(F, x)] = 1;
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Constructions. H is [K][K] of +-1.

// Paley I, q = 3 mod 4: H = I + S with S = [[0, 1^T], [-1, Q]], Q[i][j] = chi(x_i - x_j) (skew for q = 3 mod 4).
static int build_paley1(int K, int8_t *H) {
    gf_field F;
    if (gf_init(&F, K - 1) || F.q % 4 != 3) { free(F.chi); return -1; }
    int q = F.q;
    H[0] = 1;
    for (int j = 1; j < K; j++) { H[j] = 1; H[(size_t)j * K] = -1; }
    for (int i = 0; i < q; i++)
        for (int j = 0; j < q; j++)
            H[(size_t)(i + 1) * K + j + 1] = (int8_t)(i == j ? 1 : F.chi[gf_sub(&F, i, j)]);
    free(F.chi);
    return 0;
}

// Paley II, q = 1 mod 4: C = [[0, 1^T], [1, Q]] (symmetric conference matrix of order q+1); H = C (x) [[1,1],[1,-1]]
// + I (x) [[1,-1],[-1,-1]], order 2(q+1).
static int build_paley2(int K, int8_t *H) {
    gf_field F;
    if (K % 2 || gf_init(&F, K / 2 - 1) || F.q % 4 != 1) { free(F.chi); return -1; }
    int n = F.q + 1;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            int c = (i == j) ? 0 : (i == 0 || j == 0) ? 1 : F.chi[gf_sub(&F, i - 1, j - 1)];
            int8_t b[2][2];
            if (c == 0) { b[0][0] = 1; b[0][1] = -1; b[1][0] = -1; b[1][1] = -1; }
            else { b[0][0] = (int8_t)c; b[0][1] = (int8_t)c; b[1][0] = (int8_t)c; b[1][1] = (int8_t)-c; }
            for (int a = 0; a < 2; a++)
                for (int e = 0; e < 2; e++) H[(size_t)(2 * i + a) * K + 2 * j + e] = b[a][e];
        }
    }
    free(F.chi);
    return 0;
}

// Williamson matrices: four symmetric circulant +-1 matrices A, B, C, D of order w with A^2+B^2+C^2+D^2 = 4w I,
// given by their first rows. Published data: w = 43 from M. Hall, Combinatorial Theory (2nd ed., 1986) table of
// Baumert-Hall solutions; w = 39 from the Williamson quadruples listed for w = 39 by Djokovic (1993) / Long (2013).
// Assembled as [[A,B,C,D],[-B,A,-D,C],[-C,D,A,-B],[-D,-C,B,A]] and verified like every other construction.
static const struct { int w; const char *row[4]; } k_williamson[] = {
    {39, {"+++--+-+-----+--++----++--+-----+-+--++", "+++--++-+---+-+--+----+--+-+---+-++--++",
          "++++---+--++----+-+--+-+----++--+---+++", "+---++-+-+-----+++-++-+++-----+-+-++---"}},
    {43, {"++---++++-+--+--++--------++--+--+-++++---+", "+++-+-++--+-+-++++-+----+-++++-+-+--++-+-++",
          "++-++++++----+-+--++-++-++--+-+----++++++-+", "+---++--++++-+-+++-++--++-+++-+-++++--++---"}},
};

static int build_williamson(int K, int8_t *H) {
    if (K % 4) return -1;
    int w = K / 4;
    for (size_t t = 0; t < sizeof k_williamson / sizeof k_williamson[0]; t++) {
        if (k_williamson[t].w != w) continue;
        static const int blk[4][4] = {{0, 1, 2, 3}, {1, 0, 3, 2}, {2, 3, 0, 1}, {3, 2, 1, 0}};
        static const int sgn[4][4] = {{1, 1, 1, 1}, {-1, 1, -1, 1}, {-1, 1, 1, -1}, {-1, -1, 1, 1}};
        for (int bi = 0; bi < 4; bi++)
            for (int bj = 0; bj < 4; bj++) {
                const char *r = k_williamson[t].row[blk[bi][bj]];
                for (int i = 0; i < w; i++)
                    for (int j = 0; j < w; j++) {
                        int v = r[((j - i) % w + w) % w] == '+' ? 1 : -1;
                        H[(size_t)(bi * w + i) * K + bj * w + j] = (int8_t)(v * sgn[bi][bj]);
                    }
            }
        return 0;
    }
    return -1;
}

static int can_paley1(int K) { int p, k; return K >= 4 && odd_prime_power(K - 1, &p, &k) && (K - 1) % 4 == 3 && k <= 10; }
static int can_paley2(int K) {
    int p, k;
    return K % 2 == 0 && K >= 6 && odd_prime_power(K / 2 - 1, &p, &k) && (K / 2 - 1) % 4 == 1 && k <= 10;
}
static int can_williamson(int K) {
    for (size_t t = 0; t < sizeof k_williamson / sizeof k_williamson[0]; t++) if (K == 4 * k_williamson[t].w) return 1;
    return 0;
}

static const char *construction_of(int K) {
    if (K < 1 || K > HALO_HADAMARD_MAX_K) return NULL;
    if ((K & (K - 1)) == 0) return "sylvester";
    if (K % 4) return NULL;
    if (can_paley1(K)) return "paley1";
    if (can_paley2(K)) return "paley2";
    if (can_williamson(K)) return "williamson";
    if (construction_of(K / 2)) return "doubling";
    return NULL;
}

static int build_any(int K, int8_t *H) {
    const char *c = construction_of(K);
    if (!c) return -1;
    if (!strcmp(c, "sylvester")) {
        for (int i = 0; i < K; i++)
            for (int j = 0; j < K; j++) H[(size_t)i * K + j] = (int8_t)(__builtin_popcount((unsigned)(i & j)) & 1 ? -1 : 1);
        return 0;
    }
    if (!strcmp(c, "paley1")) return build_paley1(K, H);
    if (!strcmp(c, "paley2")) return build_paley2(K, H);
    if (!strcmp(c, "williamson")) return build_williamson(K, H);
    int h = K / 2; // doubling: [[G, G], [G, -G]]
    int8_t *G = xmalloc((size_t)h * h);
    if (build_any(h, G)) { free(G); return -1; }
    for (int i = 0; i < h; i++)
        for (int j = 0; j < h; j++) {
            int8_t g = G[(size_t)i * h + j];
            H[(size_t)i * K + j] = g; H[(size_t)i * K + j + h] = g;
            H[(size_t)(i + h) * K + j] = g; H[(size_t)(i + h) * K + j + h] = (int8_t)-g;
        }
    free(G);
    return 0;
}

// H H^T == K I, exactly, in integers.
static int verify_orthogonal(const int8_t *H, int K) {
    for (int i = 0; i < K; i++) {
        const int8_t *a = H + (size_t)i * K;
        for (int j = i; j < K; j++) {
            const int8_t *b = H + (size_t)j * K;
            int s = 0;
            for (int t = 0; t < K; t++) s += a[t] * b[t];
            if (s != (i == j ? K : 0)) return 0;
        }
    }
    return 1;
}

// ---------------------------------------------------------------------------------------------------------------
// Process-wide cache of verified base matrices.

static pthread_mutex_t g_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static int8_t *g_cache[HALO_HADAMARD_MAX_K + 1];
static float *g_cache_f[HALO_HADAMARD_MAX_K + 1], *g_cache_ft[HALO_HADAMARD_MAX_K + 1];

const char *halo_hadamard_construction(int K) { return construction_of(K); }

static const int8_t *base_get(int K, const float **Hf, const float **Hft) {
    if (K < 1 || K > HALO_HADAMARD_MAX_K || !construction_of(K)) {
        halo_fail("hadamard: no construction of a Hadamard matrix of order %d is known here", K);
        return NULL;
    }
    pthread_mutex_lock(&g_cache_lock);
    if (!g_cache[K]) {
        int8_t *H = xmalloc((size_t)K * K);
        if (build_any(K, H) || !verify_orthogonal(H, K)) {
            pthread_mutex_unlock(&g_cache_lock);
            free(H);
            halo_fail("hadamard: construction '%s' of order %d failed its orthogonality check", construction_of(K), K);
            return NULL;
        }
        float *F = xmalloc(sizeof(float) * (size_t)K * K);
        float *Ft = xmalloc(sizeof(float) * (size_t)K * K);
        for (size_t i = 0; i < (size_t)K * K; i++) F[i] = H[i];
        for (int i = 0; i < K; i++)
            for (int j = 0; j < K; j++) Ft[(size_t)j * K + i] = H[(size_t)i * K + j];
        g_cache_f[K] = F;
        g_cache_ft[K] = Ft;
        g_cache[K] = H;
    }
    const int8_t *H = g_cache[K];
    if (Hf) *Hf = g_cache_f[K];
    if (Hft) *Hft = g_cache_ft[K];
    pthread_mutex_unlock(&g_cache_lock);
    return H;
}

const int8_t *halo_hadamard_base(int K) { return base_get(K, NULL, NULL); }

int halo_hadamard_supported(int d, int *K, int *P) {
    if (d < 1) return 0;
    int o = d, t = 0;
    while (o % 2 == 0) { o /= 2; t++; }
    if (o == 1) { if (K) *K = 1; if (P) *P = d; return 1; }
    for (int j = 2; j <= t; j++) {
        long k = (long)o << j;
        if (k > HALO_HADAMARD_MAX_K) break;
        if (construction_of((int)k)) { if (K) *K = (int)k; if (P) *P = d / (int)k; return 1; }
    }
    return 0;
}

int halo_hadamard_pad_size(int n, int max_K) {
    for (int d = n < 1 ? 1 : n;; d++) {
        int K;
        if (halo_hadamard_supported(d, &K, NULL) && K <= max_K) return d;
    }
}

int halo_hadamard_plan(halo_hadamard *h, int d, int block) {
    memset(h, 0, sizeof *h);
    if (block <= 0) block = d;
    if (d < 1 || d % block)
        return halo_fail("hadamard: block size %d does not divide the dimension %d", block, d);
    int K, P;
    if (!halo_hadamard_supported(block, &K, &P))
        return halo_fail("hadamard: size %d%s is not K*2^p for a constructible order K (supported K include 12, 20, "
                         "28, 36, 40, 44, 52, 60, 108, 140, 148, 156, 172); use a block-diagonal size",
                         block, block == d ? "" : " (block)");
    h->d = d; h->block = block; h->K = K; h->P = P;
    h->scale = (float)(1.0 / sqrt((double)block));
    if (K > 1) {
        h->HK = base_get(K, &h->HKf, &h->HKtf);
        if (!h->HK) return HALO_ERR;
    }
    return HALO_OK;
}

void halo_hadamard_plan_fallback(halo_hadamard *h, int d, char *note, size_t note_cap) {
    if (note && note_cap) note[0] = 0;
    if (halo_hadamard_supported(d, NULL, NULL) && halo_hadamard_plan(h, d, 0) == HALO_OK) return;
    int best = 1;
    for (int bs = 2; bs <= d && bs <= 65536; bs++)
        if (d % bs == 0 && halo_hadamard_supported(bs, NULL, NULL)) best = bs;
    if (halo_hadamard_plan(h, d, best) != HALO_OK) { // cannot happen for best == 1, kept for safety
        halo_hadamard_plan(h, d, 1);
        best = 1;
    }
    if (note && note_cap)
        snprintf(note, note_cap, "hadamard: size %d unsupported; using block-diagonal blocks of %d%s", d, best,
                 best == 1 ? " (no rotation)" : "");
}

// ---------------------------------------------------------------------------------------------------------------
// Transforms.

// In-place unnormalized Walsh-Hadamard (natural order) of x[0..P). The first three stages (h = 1, 2, 4) run on
// groups of 8 held in locals; the later stages are contiguous and vectorize.
static void fwht_vec(float *x, int P) {
    int h = 1;
    if (P >= 8) {
        for (int i = 0; i < P; i += 8) {
            float *v = x + i;
            float a0 = v[0] + v[1], a1 = v[0] - v[1], a2 = v[2] + v[3], a3 = v[2] - v[3];
            float a4 = v[4] + v[5], a5 = v[4] - v[5], a6 = v[6] + v[7], a7 = v[6] - v[7];
            float b0 = a0 + a2, b1 = a1 + a3, b2 = a0 - a2, b3 = a1 - a3;
            float b4 = a4 + a6, b5 = a5 + a7, b6 = a4 - a6, b7 = a5 - a7;
            v[0] = b0 + b4; v[1] = b1 + b5; v[2] = b2 + b6; v[3] = b3 + b7;
            v[4] = b0 - b4; v[5] = b1 - b5; v[6] = b2 - b6; v[7] = b3 - b7;
        }
        h = 8;
    }
    for (; h < P; h *= 2)
        for (int i = 0; i < P; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b; x[j + h] = a - b;
            }
}

// y[K][len] = scale * Hop[K][K] x[K][len]. Four output rows share each load of x (register blocking); K is a
// Hadamard order, so a multiple of 4 (the scalar tails are kept for safety).
static void dense_apply(const float *Hop, int K, const float *x, float *y, size_t len, float scale) {
    size_t j0 = 0;
    for (; j0 + 16 <= len; j0 += 16) {
        int i = 0;
        for (; i + 4 <= K; i += 4) {
            float a0[16] = {0}, a1[16] = {0}, a2[16] = {0}, a3[16] = {0};
            const float *h0 = Hop + (size_t)i * K, *h1 = h0 + K, *h2 = h1 + K, *h3 = h2 + K;
            for (int c = 0; c < K; c++) {
                const float *xc = x + (size_t)c * len + j0;
                const float w0 = h0[c], w1 = h1[c], w2 = h2[c], w3 = h3[c];
                for (int j = 0; j < 16; j++) {
                    float v = xc[j];
                    a0[j] += w0 * v; a1[j] += w1 * v; a2[j] += w2 * v; a3[j] += w3 * v;
                }
            }
            float *y0 = y + (size_t)i * len + j0;
            for (int j = 0; j < 16; j++) {
                y0[j] = a0[j] * scale; y0[len + j] = a1[j] * scale;
                y0[2 * len + j] = a2[j] * scale; y0[3 * len + j] = a3[j] * scale;
            }
        }
        for (; i < K; i++) {
            float a[16] = {0};
            for (int c = 0; c < K; c++) {
                const float w = Hop[(size_t)i * K + c], *xc = x + (size_t)c * len + j0;
                for (int j = 0; j < 16; j++) a[j] += w * xc[j];
            }
            for (int j = 0; j < 16; j++) y[(size_t)i * len + j0 + j] = a[j] * scale;
        }
    }
    for (size_t j = j0; j < len; j++)
        for (int i = 0; i < K; i++) {
            float a = 0;
            const float *h = Hop + (size_t)i * K;
            for (int c = 0; c < K; c++) a += h[c] * x[(size_t)c * len + j];
            y[(size_t)i * len + j] = a * scale;
        }
}

// x (one block, length K*P) <- s * (op(HK) (x) H_P) x, op = HK (ht = 0) or HK^T (ht = 1); tmp has K*P floats.
static void block_vec(const halo_hadamard *h, float *x, float *tmp, int ht) {
    const int K = h->K, P = h->P;
    for (int c = 0; c < K; c++) fwht_vec(x + (size_t)c * P, P);
    if (K == 1) {
        for (int j = 0; j < P; j++) x[j] *= h->scale;
        return;
    }
    dense_apply(ht ? h->HKtf : h->HKf, K, x, tmp, (size_t)P, h->scale);
    memcpy(x, tmp, sizeof(float) * (size_t)K * P);
}

void halo_hadamard_rows(const halo_hadamard *h, float *A, long rows, long ld, int transpose) {
    // x H = (H^T x^T)^T, so the forward along rows applies op = HK^T to each block.
    const int ht = transpose ? 0 : 1;
    const int nb = h->d / h->block;
    #pragma omp parallel if ((double)rows * h->d * (h->K + 8) > 2e6)
    {
        float *tmp = xmalloc(sizeof(float) * (size_t)h->block);
        #pragma omp for schedule(static)
        for (long r = 0; r < rows; r++)
            for (int k = 0; k < nb; k++) block_vec(h, A + r * ld + (long)k * h->block, tmp, ht);
        free(tmp);
    }
}

// Panel version: T is [block][w] (w vectors side by side); T <- s * (op(HK) (x) H_P) T.
static void block_panel(const halo_hadamard *h, float *T, float *tmp, int w, int ht) {
    const int K = h->K, P = h->P;
    for (int c = 0; c < K; c++) {
        float *base = T + (size_t)c * P * w;
        for (int hh = 1; hh < P; hh *= 2)
            for (int i = 0; i < P; i += 2 * hh)
                for (int j = i; j < i + hh; j++) {
                    float *a = base + (size_t)j * w, *b = base + (size_t)(j + hh) * w;
                    for (int q = 0; q < w; q++) { float u = a[q], v = b[q]; a[q] = u + v; b[q] = u - v; }
                }
    }
    const size_t n = (size_t)K * P * w;
    if (K == 1) {
        for (size_t j = 0; j < n; j++) T[j] *= h->scale;
        return;
    }
    dense_apply(ht ? h->HKtf : h->HKf, K, T, tmp, (size_t)P * w, h->scale);
    memcpy(T, tmp, sizeof(float) * n);
}

void halo_hadamard_cols(const halo_hadamard *h, float *A, long cols, long ld, int transpose) {
    const int TW = 32;
    const long ntiles = (cols + TW - 1) / TW;
    const int nb = h->d / h->block;
    const int ht = transpose ? 1 : 0;
    #pragma omp parallel if ((double)cols * h->d * (h->K + 8) > 2e6)
    {
        float *T = xmalloc(sizeof(float) * (size_t)h->block * TW);
        float *tmp = xmalloc(sizeof(float) * (size_t)h->block * TW);
        #pragma omp for schedule(static)
        for (long t = 0; t < ntiles; t++) {
            long c0 = t * TW;
            int w = (int)(cols - c0 < TW ? cols - c0 : TW);
            for (int k = 0; k < nb; k++) {
                float *Ab = A + (long)k * h->block * ld + c0;
                for (int i = 0; i < h->block; i++) memcpy(T + (size_t)i * w, Ab + (long)i * ld, sizeof(float) * (size_t)w);
                block_panel(h, T, tmp, w, ht);
                for (int i = 0; i < h->block; i++) memcpy(Ab + (long)i * ld, T + (size_t)i * w, sizeof(float) * (size_t)w);
            }
        }
        free(T);
        free(tmp);
    }
}

void halo_hadamard_dense(const halo_hadamard *h, double *M) {
    const int d = h->d, B = h->block, P = h->P;
    const double s = 1.0 / sqrt((double)B);
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            double v = 0;
            if (i / B == j / B) {
                int bi = i % B, bj = j % B;
                int i1 = bi / P, i2 = bi % P, j1 = bj / P, j2 = bj % P;
                double hk = h->K > 1 ? h->HK[(size_t)i1 * h->K + j1] : 1.0;
                v = hk * ((__builtin_popcount((unsigned)(i2 & j2)) & 1) ? -1.0 : 1.0) * s;
            }
            M[(size_t)i * d + j] = v;
        }
}
