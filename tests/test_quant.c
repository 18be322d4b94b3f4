// Tests for src/halo/quant: OCP FP8 E4M3/E5M2 encode/decode bit for bit (all 256 codes, exhaustive-search
// reference for random values and every midpoint, saturation, subnormals), INT8 rounding, stochastic rounding
// unbiasedness and reproducibility, scale grids, zero/NaN/Inf handling, and the scaled 8-bit GEMMs.
#include <stdint.h>
#include "halo/quant.h"
#include "test.h"
#include "util/error.h"

static unsigned long long g_seed = 777;

// Reference decode written from the OCP definition independently of the library.
static double ref_decode(int c, int e5) {
    int s = c >> 7, mb = e5 ? 2 : 3, bias = e5 ? 15 : 7;
    int E = (c >> mb) & (e5 ? 31 : 15), M = c & ((1 << mb) - 1);
    double v;
    if (e5 && E == 31) v = M ? NAN : INFINITY;
    else if (!e5 && E == 15 && M == 7) v = NAN;
    else if (E == 0) v = M * pow(2, 1 - bias - mb);
    else v = (1 + M / (double)(1 << mb)) * pow(2, E - bias);
    return s ? -v : v;
}

// Reference saturating RNE encode by exhaustive search over the finite positive codes.
static int ref_encode_sat(double x, int e5) {
    int sign = signbit(x) ? 0x80 : 0;
    double a = fabs(x);
    int maxc = e5 ? 0x7B : 0x7E;
    if (a >= ref_decode(maxc, e5)) return sign | maxc;
    int best = 0;
    double bd = INFINITY;
    for (int c = 0; c <= maxc; c++) {
        double d = fabs(ref_decode(c, e5) - a);
        if (d < bd || (d == bd && (c & 1) == 0)) { bd = d; best = c; }
    }
    return sign | best;
}

static void test_fp8_codes(halo_qformat fmt) {
    const int e5 = fmt == HALO_Q_E5M2;
    const char *nm = e5 ? "e5m2" : "e4m3";
    int bad_dec = 0, bad_rt = 0, nan_codes = 0;
    for (int c = 0; c < 256; c++) {
        float v = halo_fp8_decode((uint8_t)c, fmt);
        double r = ref_decode(c, e5);
        if (isnan(r) ? !isnan(v) : ((double)v != r || !!signbit(v) != !!signbit(r))) bad_dec++;
        uint8_t back = halo_fp8_encode(v, fmt, 0);
        // NaN codes map to the canonical NaN sign|0x7F; every other code (incl. -0, +-inf of E5M2) to itself.
        int want = isnan(r) ? ((c & 0x80) | 0x7F) : c;
        if (isnan(r)) nan_codes++;
        if (back != want) { bad_rt++; if (bad_rt < 4) fprintf(stderr, "%s code %02x -> %g -> %02x\n", nm, c, v, back); }
    }
    CHECK(bad_dec == 0, "%s: %d codes decode differently from the definition", nm, bad_dec);
    CHECK(bad_rt == 0, "%s: %d codes do not re-encode to themselves", nm, bad_rt);
    CHECK(nan_codes == (e5 ? 6 : 2), "%s: %d NaN codes", nm, nan_codes);
    CHECK(halo_fp8_decode(e5 ? 0x7B : 0x7E, fmt) == (e5 ? 57344.0f : 448.0f), "%s max finite", nm);

    // Every midpoint between consecutive finite values rounds to the even code (and just off it, to the nearer).
    int maxc = e5 ? 0x7B : 0x7E, bad_mid = 0, bad_near = 0;
    for (int c = 0; c < maxc; c++) {
        double lo = ref_decode(c, e5), hi = ref_decode(c + 1, e5), mid = (lo + hi) / 2;
        float fm = (float)mid;
        CHECK((double)fm == mid, "midpoint exact in float");
        int even = (c & 1) ? c + 1 : c;
        for (int s = 0; s < 2; s++) {
            int sg = s ? 0x80 : 0;
            float x = s ? -fm : fm;
            if (halo_fp8_encode(x, fmt, 1) != (sg | even)) bad_mid++;
            if (halo_fp8_encode(nextafterf(x, 0), fmt, 1) != (sg | c)) bad_near++;
            if (halo_fp8_encode(nextafterf(x, s ? -INFINITY : INFINITY), fmt, 1) != (sg | (c + 1))) bad_near++;
        }
    }
    CHECK(bad_mid == 0, "%s: %d midpoints not rounded to even", nm, bad_mid);
    CHECK(bad_near == 0, "%s: %d values next to midpoints rounded wrongly", nm, bad_near);

    // Random values over the whole range (incl. subnormals and beyond max) vs the exhaustive reference.
    int bad_rand = 0;
    for (int t = 0; t < 20000; t++) {
        double e = -22 + 42 * t_rand_uniform(&g_seed);
        float x = (float)(pow(2, e) * (t_rand_uniform(&g_seed) < 0.5 ? -1 : 1) * (1 + t_rand_uniform(&g_seed)));
        if (halo_fp8_encode(x, fmt, 1) != ref_encode_sat(x, e5)) bad_rand++;
    }
    CHECK(bad_rand == 0, "%s: %d of 20000 random values differ from the exhaustive reference", nm, bad_rand);

    // The tensor quantizer's (vectorized) encoder agrees with the scalar one bit for bit: a tensor whose absmax is
    // the format's max (scale exactly 1) holding random values, every midpoint and its neighbours.
    {
        int cap = 30000, cnt = 0;
        float *v = malloc(sizeof(float) * cap);
        float mx = halo_qformat_max(fmt);
        v[cnt++] = mx;
        for (int c = 0; c < maxc; c++) {
            float mid = (float)((ref_decode(c, e5) + ref_decode(c + 1, e5)) / 2);
            v[cnt++] = mid; v[cnt++] = -nextafterf(mid, 0); v[cnt++] = nextafterf(mid, INFINITY);
        }
        while (cnt < cap) {
            float x = (float)(pow(2, -22 + 31 * t_rand_uniform(&g_seed)) * (t_rand_uniform(&g_seed) < 0.5 ? -1 : 1));
            if (fabsf(x) <= mx) v[cnt++] = x;
        }
        halo_qmat q = {0};
        halo_qspec qs = {fmt, HALO_GRAN_TENSOR, 0, HALO_ROUND_NEAREST, 0, 0, 0, NULL};
        CHECK(halo_quantize(&q, v, 1, cnt, cnt, 0, &qs, "codes") == HALO_OK && q.s[0] == 1.0f, "scale 1");
        int bq = 0;
        for (int i = 0; i < cnt; i++) bq += q.q[i] != halo_fp8_encode(v[i], fmt, 1);
        CHECK(bq == 0, "%s: tensor quantizer differs from the scalar encoder on %d of %d values", nm, bq, cnt);
        halo_qmat_free(&q);
        free(v);
    }

    // Overflow: saturating -> max; non-saturating -> NaN (E4M3) / inf (E5M2); ties at the top round to even.
    float top = e5 ? 57344.0f : 448.0f, nextmid = e5 ? 61440.0f : 464.0f;
    CHECK(halo_fp8_encode(1e30f, fmt, 1) == maxc && halo_fp8_encode(-INFINITY, fmt, 1) == (0x80 | maxc), "%s saturates", nm);
    CHECK(halo_fp8_encode(top, fmt, 0) == maxc, "%s max exact", nm);
    if (e5) {
        CHECK(halo_fp8_encode(nextmid, fmt, 0) == 0x7C, "e5m2: 61440 ties to even = inf without saturation");
        CHECK(halo_fp8_encode(nextafterf(nextmid, 0), fmt, 0) == 0x7B, "e5m2: just below 61440 -> max");
        CHECK(halo_fp8_encode(INFINITY, fmt, 0) == 0x7C && halo_fp8_encode(-INFINITY, fmt, 0) == 0xFC, "e5m2 inf");
    } else {
        CHECK(halo_fp8_encode(nextmid, fmt, 0) == 0x7E, "e4m3: 464 ties to even = 448");
        CHECK(halo_fp8_encode(nextafterf(nextmid, 1e9f), fmt, 0) == 0x7F, "e4m3: above 464 overflows to NaN");
        CHECK(halo_fp8_encode(INFINITY, fmt, 0) == 0x7F, "e4m3: inf -> NaN without saturation");
    }
    CHECK(halo_fp8_encode(NAN, fmt, 1) == 0x7F && halo_fp8_encode(-NAN, fmt, 1) == 0xFF, "%s NaN canonical", nm);
    // Subnormals: smallest subnormal, half of it (tie -> 0), 1.5x (tie -> 2 = even).
    float sub = e5 ? ldexpf(1, -16) : ldexpf(1, -9);
    CHECK(halo_fp8_encode(sub, fmt, 1) == 1 && halo_fp8_encode(sub / 2, fmt, 1) == 0 &&
          halo_fp8_encode(1.5f * sub, fmt, 1) == 2 && halo_fp8_encode(2.5f * sub, fmt, 1) == 2,
          "%s subnormal rounding", nm);
}

static void test_int8_rounding(void) {
    // absmax 31.75 -> s = 0.25 exactly; ties at k + 1/2 steps round to even.
    float x[8] = {31.75f, 0.125f, 0.375f, 0.625f, -0.375f, -0.625f, 0.1f, -31.75f};
    halo_qmat q = {0};
    halo_qspec qs = {HALO_Q_INT8, HALO_GRAN_TENSOR, 0, HALO_ROUND_NEAREST, 0, 0, 0, NULL};
    CHECK(halo_quantize(&q, x, 1, 8, 8, 0, &qs, "t") == HALO_OK, "quantize");
    const int8_t *c = (const int8_t *)q.q;
    CHECK(q.s[0] == 0.25f, "scale absmax/127 = %g", q.s[0]);
    CHECK(c[0] == 127 && c[1] == 0 && c[2] == 2 && c[3] == 2 && c[4] == -2 && c[5] == -2 && c[6] == 0 && c[7] == -127,
          "int8 ties to even: %d %d %d %d %d %d %d %d", c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]);
    // Round trip within half a step on random data.
    int n = 5000;
    float *a = malloc(sizeof(float) * n), *d = malloc(sizeof(float) * n);
    for (int i = 0; i < n; i++) a[i] = (float)(3 * t_rand_normal(&g_seed));
    halo_quantize(&q, a, 50, 100, 100, 0, &qs, "t");
    halo_dequantize(&q, d);
    double worst = 0;
    for (int i = 0; i < n; i++) worst = fmax(worst, fabs(d[i] - a[i]) / q.s[0]);
    CHECK(worst <= 0.5 + 1e-5, "int8 round trip error %.6f steps (max 0.5)", worst);
    free(a); free(d);
    halo_qmat_free(&q);
}

static void test_stochastic(void) {
    // INT8: x = 0.3 steps; FP8 E4M3: 1.3 (between 1.25 and 1.375). Mean within 3 standard errors over many draws.
    const int n = 40000;
    float *a = malloc(sizeof(float) * n), *d = malloc(sizeof(float) * n);
    halo_qmat q = {0}, q2 = {0}, qt = {0}, qtt = {0};
    for (int f = 0; f < 3; f++) {
        halo_qformat fmt = f == 0 ? HALO_Q_INT8 : f == 1 ? HALO_Q_E4M3 : HALO_Q_E5M2;
        float top = halo_qformat_max(fmt), val = f == 0 ? 0.3f : f == 1 ? 1.3f : -1.3f;
        a[0] = top; // fixes the scale to exactly 1
        for (int i = 1; i < n; i++) a[i] = val;
        halo_qspec qs = {fmt, HALO_GRAN_TENSOR, 0, HALO_ROUND_STOCHASTIC, 42, 7, 0, NULL};
        halo_quantize(&q, a, 200, 200, 200, 0, &qs, "sr");
        CHECK(q.s[0] == 1.0f, "scale 1");
        halo_dequantize(&q, d);
        double mean = 0, var = 0;
        for (int i = 1; i < n; i++) mean += d[i];
        mean /= (n - 1);
        for (int i = 1; i < n; i++) var += (d[i] - mean) * (d[i] - mean);
        double se = sqrt(var / (n - 2) / (n - 1));
        CHECK(se > 0 && fabs(mean - val) < 3 * se, "%s stochastic rounding mean %.6f vs %.6f (3 se = %.2g)",
              halo_qformat_name(fmt), mean, val, 3 * se);
        // Reproducible for the same (seed, counter); a different counter draws differently.
        halo_quantize(&q2, a, 200, 200, 200, 0, &qs, "sr");
        CHECK(!memcmp(q.q, q2.q, (size_t)n), "same seed/counter reproduces the codes");
        qs.counter = 8;
        halo_quantize(&q2, a, 200, 200, 200, 0, &qs, "sr");
        CHECK(memcmp(q.q, q2.q, (size_t)n) != 0, "another counter gives other codes");
        // Quantizing the transposed view draws the same random number per source element.
        qs.counter = 7;
        halo_quantize(&qt, a, 200, 200, 200, 1, &qs, "sr");
        halo_qmat_transpose(&qt, &qtt);
        CHECK(!memcmp(qtt.q, q.q, (size_t)n), "transposed quantization keyed on the source index");
    }
    free(a); free(d);
    halo_qmat_free(&q); halo_qmat_free(&q2); halo_qmat_free(&qt); halo_qmat_free(&qtt);
}

static void test_grids(void) {
    const int R = 150, C = 300;
    float *a = malloc(sizeof(float) * R * C), *d = malloc(sizeof(float) * R * C);
    for (int i = 0; i < R; i++)
        for (int k = 0; k < C; k++) a[i * C + k] = (float)(t_rand_normal(&g_seed) * pow(10, (i % 5) - 2) * (1 + (k / 128)));
    const halo_granularity grans[4] = {HALO_GRAN_TENSOR, HALO_GRAN_ROW, HALO_GRAN_BLOCK1x128, HALO_GRAN_BLOCK128};
    const int gr_want[4] = {R, 1, 1, 128}, gc_want[4] = {C, C, 128, 128};
    for (int f = 0; f < 2; f++)
        for (int g = 0; g < 4; g++) {
            halo_qformat fmt = f ? HALO_Q_E4M3 : HALO_Q_INT8;
            halo_qspec qs = {fmt, grans[g], 128, HALO_ROUND_NEAREST, 0, 0, 0, NULL};
            halo_qmat q = {0};
            CHECK(halo_quantize(&q, a, R, C, C, 0, &qs, "grid") == HALO_OK, "quantize");
            CHECK(q.gr == gr_want[g] && q.gc == gc_want[g], "gran %d: group %dx%d", g, q.gr, q.gc);
            int bad = 0;
            double worst = 0;
            halo_dequantize(&q, d);
            for (int sa = 0; sa < q.srows; sa++)
                for (int sb = 0; sb < q.scols; sb++) {
                    float mx = 0;
                    for (int i = sa * q.gr; i < R && i < (sa + 1) * q.gr; i++)
                        for (int k = sb * q.gc; k < C && k < (sb + 1) * q.gc; k++) mx = fmaxf(mx, fabsf(a[i * C + k]));
                    float s = q.s[sa * q.scols + sb];
                    if (s != mx / halo_qformat_max(fmt)) bad++;
                    for (int i = sa * q.gr; i < R && i < (sa + 1) * q.gr; i++)
                        for (int k = sb * q.gc; k < C && k < (sb + 1) * q.gc; k++) {
                            double e = fabs(d[i * C + k] - a[i * C + k]);
                            // int8: half a step; e4m3: half an ulp = 2^-4 relative (or half the subnormal step)
                            double lim = f ? fmax(fabs(a[i * C + k]) / 16, s * ldexp(1, -10)) : 0.5 * s;
                            worst = fmax(worst, e / lim);
                        }
                }
            CHECK(bad == 0, "%s gran %d: %d scales differ from group absmax / max", halo_qformat_name(fmt), g, bad);
            CHECK(worst <= 1 + 1e-5, "%s gran %d: dequantization error %.4f x the bound", halo_qformat_name(fmt), g, worst);
            // Transposing codes and scale grid is exact.
            halo_qmat t = {0};
            halo_qmat_transpose(&q, &t);
            float *dt = malloc(sizeof(float) * R * C);
            halo_dequantize(&t, dt);
            int bt = 0;
            for (int i = 0; i < R; i++)
                for (int k = 0; k < C; k++) bt += dt[k * R + i] != d[i * C + k];
            CHECK(bt == 0, "transpose: %d values differ", bt);
            free(dt);
            halo_qmat_free(&t);
            halo_qmat_free(&q);
        }
    free(a); free(d);
}

static void test_zero_nan(void) {
    float z[64] = {0};
    for (int f = 0; f < 3; f++) {
        halo_qformat fmt = f == 0 ? HALO_Q_INT8 : f == 1 ? HALO_Q_E4M3 : HALO_Q_E5M2;
        halo_qspec qs = {fmt, HALO_GRAN_TENSOR, 0, HALO_ROUND_NEAREST, 0, 0, 0, NULL};
        halo_qmat q = {0};
        CHECK(halo_quantize(&q, z, 8, 8, 8, 0, &qs, "zero") == HALO_OK, "zero tensor quantizes");
        int nz = 0;
        for (int i = 0; i < 64; i++) nz += q.q[i] != 0;
        float d[64];
        halo_dequantize(&q, d);
        int nd = 0;
        for (int i = 0; i < 64; i++) nd += d[i] != 0 || isnan(d[i]);
        CHECK(q.s[0] == 1.0f && nz == 0 && nd == 0, "%s zero tensor: scale %g, %d nonzero codes", halo_qformat_name(fmt),
              q.s[0], nz);
        float bad[64] = {0};
        bad[19] = NAN;
        CHECK(halo_quantize(&q, bad, 8, 8, 8, 0, &qs, "layer.7.mlp.up_proj: forward X") == HALO_ERR, "NaN rejected");
        CHECK(strstr(halo_error(), "up_proj") && strstr(halo_error(), "non-finite") && strstr(halo_error(), "[2,3]"),
              "message names the tensor and position: %s", halo_error());
        bad[19] = 0;
        bad[62] = -INFINITY;
        CHECK(halo_quantize(&q, bad, 8, 8, 8, 1, &qs, "grad") == HALO_ERR && strstr(halo_error(), "[7,6]"),
              "Inf rejected (transposed view reports source coordinates): %s", halo_error());
        // Tiny but nonzero absmax: finite scale, no NaN.
        float tiny[4] = {1e-44f, 0, -1e-45f, 0};
        CHECK(halo_quantize(&q, tiny, 1, 4, 4, 0, &qs, "tiny") == HALO_OK && q.s[0] > 0 && isfinite(q.s[0]), "tiny absmax");
        halo_dequantize(&q, d);
        CHECK(isfinite(d[0]) && isfinite(d[2]), "tiny dequantizes finite");
        halo_qmat_free(&q);
    }
}

static void test_gemm(void) {
    // Raw int8 kernel, exact vs int64, odd shapes and extreme values.
    const int M = 37, N = 45, K = 1001;
    int8_t *A = malloc((size_t)M * K), *B = malloc((size_t)N * K);
    int32_t *C = malloc(sizeof(int32_t) * M * N);
    for (int i = 0; i < M * K; i++) A[i] = (int8_t)((int)(t_rng_next(&g_seed) % 255) - 127);
    for (int i = 0; i < N * K; i++) B[i] = (int8_t)((int)(t_rng_next(&g_seed) % 255) - 127);
    for (int k = 0; k < K; k++) { A[k] = -127; B[k] = -127; A[K + k] = 127; B[K + k] = -127; }
    halo_gemm_s8s8s32(A, B, C, M, N, K);
    int bad = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            long s = 0;
            for (int k = 0; k < K; k++) s += (long)A[i * K + k] * B[j * K + k];
            bad += s != C[i * N + j];
        }
    CHECK(bad == 0, "int8 gemm (%s): %d of %d entries differ from int64", halo_gemm_s8_kernel(), bad, M * N);
    printf("int8 gemm kernel %s: %dx%dx%d equal to int64 sums\n", halo_gemm_s8_kernel(), M, N, K);
    CHECK(C[0] == 127 * 127 * K && C[N + 0] == -127 * 127 * K, "extremes");
    free(A); free(B); free(C);

    // Scaled qgemm vs a double reference from the codes, every granularity, int8 and fp8 (and e5m2 x e4m3).
    const int Ma = 150, Nb = 140, Kd = 300;
    float *a = malloc(sizeof(float) * Ma * Kd), *b = malloc(sizeof(float) * Nb * Kd), *c = malloc(sizeof(float) * Ma * Nb);
    float *da = malloc(sizeof(float) * Ma * Kd), *db = malloc(sizeof(float) * Nb * Kd);
    for (int i = 0; i < Ma * Kd; i++) a[i] = (float)(t_rand_normal(&g_seed) * (1 + (i % 7)));
    for (int i = 0; i < Nb * Kd; i++) b[i] = (float)(t_rand_normal(&g_seed) * (1 + (i % 3)));
    const halo_granularity grans[4] = {HALO_GRAN_TENSOR, HALO_GRAN_ROW, HALO_GRAN_BLOCK1x128, HALO_GRAN_BLOCK128};
    for (int f = 0; f < 3; f++)
        for (int g = 0; g < 4; g++)
            for (int acc = 0; acc < 2; acc++) {
                halo_qformat fa = f == 0 ? HALO_Q_INT8 : f == 1 ? HALO_Q_E4M3 : HALO_Q_E5M2;
                halo_qformat fb = f == 0 ? HALO_Q_INT8 : HALO_Q_E4M3;
                halo_qspec qa = {fa, grans[g], 128, HALO_ROUND_NEAREST, 0, 0, 0, NULL}, qb = qa;
                qb.fmt = fb;
                halo_qmat QA = {0}, QB = {0};
                halo_quantize(&QA, a, Ma, Kd, Kd, 0, &qa, "a");
                halo_quantize(&QB, b, Nb, Kd, Kd, 0, &qb, "b");
                halo_dequantize(&QA, da);
                halo_dequantize(&QB, db);
                for (int i = 0; i < Ma * Nb; i++) c[i] = acc ? 1.0f : 12345.0f;
                CHECK(halo_qgemm(&QA, &QB, c, Nb, acc) == HALO_OK, "qgemm");
                double num = 0, den = 0;
                for (int i = 0; i < Ma; i++)
                    for (int j = 0; j < Nb; j++) {
                        double s = acc ? 1.0 : 0.0;
                        for (int k = 0; k < Kd; k++) s += (double)da[i * Kd + k] * db[j * Kd + k];
                        double e = c[i * Nb + j] - s;
                        num += e * e; den += s * s;
                    }
                CHECK(sqrt(num / den) < 1e-6, "qgemm %s x %s gran %d acc %d: rel err %.3g vs dequantized product",
                      halo_qformat_name(fa), halo_qformat_name(fb), g, acc, sqrt(num / den));
                halo_qmat_free(&QA); halo_qmat_free(&QB);
            }
    halo_qmat QA = {0}, QB = {0};
    halo_qspec qi = {HALO_Q_INT8, HALO_GRAN_TENSOR, 0, HALO_ROUND_NEAREST, 0, 0, 0, NULL}, qf = qi;
    qf.fmt = HALO_Q_E4M3;
    halo_quantize(&QA, a, Ma, Kd, Kd, 0, &qi, "a");
    halo_quantize(&QB, b, Nb, Kd, Kd, 0, &qf, "b");
    CHECK(halo_qgemm(&QA, &QB, c, Nb, 0) == HALO_ERR, "int8 x fp8 rejected");
    halo_quantize(&QB, b, Nb, 100, Kd, 0, &qi, "b");
    CHECK(halo_qgemm(&QA, &QB, c, Nb, 0) == HALO_ERR && strstr(halo_error(), "inner"), "inner mismatch rejected");
    halo_qmat_free(&QA); halo_qmat_free(&QB);
    free(a); free(b); free(c); free(da); free(db);
}

// Delayed scaling's form of the quantizer (halo_qspec.amax_scale, amax_seen): with a given absmax a (below and above
// the tensor's own) the scale is a / qmax and every code is the definition's: INT8 clamp(rint(x * (1 / s)), +-127),
// FP8 the saturating encoder of x * (1 / s); amax_seen receives the tensor's own absmax; a transposed quantization
// gives the transposed codes; amax_scale 0 scales by the tensor's own. Row scales ignore both.
static void test_amax_scale(void) {
    const int R = 7, C = 33;
    float x[7 * 33];
    for (int i = 0; i < R * C; i++) x[i] = (float)t_rand_normal(&g_seed);
    x[5] = 9.5f;   // the own absmax
    const halo_qformat fmts[2] = {HALO_Q_INT8, HALO_Q_E4M3};
    for (int f = 0; f < 2; f++)
        for (int a = 0; a < 3; a++) {
            const float given = a == 0 ? 3.25f : a == 1 ? 20.f : 0.f, qm = halo_qformat_max(fmts[f]);
            float seen = -1;
            halo_qmat q = {0}, qt = {0};
            halo_qspec qs = {fmts[f], HALO_GRAN_TENSOR, 0, HALO_ROUND_NEAREST, 0, 0, given, &seen};
            CHECK(halo_quantize(&q, x, R, C, C, 0, &qs, "x") == HALO_OK &&
                  halo_quantize(&qt, x, R, C, C, 1, &qs, "x") == HALO_OK, "%s", halo_error());
            const float s = (given > 0 ? given : 9.5f) / qm, r = 1.0f / s;
            int bad = 0;
            for (int i = 0; i < R; i++)
                for (int k = 0; k < C; k++) {
                    const float v = x[i * C + k] * r;
                    uint8_t want;
                    if (f == 0) {
                        const float c = rintf(v);
                        want = (uint8_t)(int8_t)(c > 127 ? 127 : c < -127 ? -127 : c);
                    } else want = halo_fp8_encode(v, fmts[f], 1);
                    bad += q.q[i * C + k] != want;
                    bad += qt.q[k * R + i] != want;
                }
            CHECK(bad == 0 && q.s[0] == s && seen == 9.5f, "%s amax_scale %g: %d codes differ, scale %g (want %g), seen %g",
                  f ? "e4m3" : "int8", given, bad, q.s[0], s, seen);
            halo_qmat_free(&q); halo_qmat_free(&qt);
        }
    // per-row scales: both fields ignored
    float seen = -1;
    halo_qmat q = {0}, q2 = {0};
    halo_qspec qr = {HALO_Q_INT8, HALO_GRAN_ROW, 0, HALO_ROUND_NEAREST, 0, 0, 1.0f, &seen}, qr0 = qr;
    qr0.amax_scale = 0; qr0.amax_seen = NULL;
    CHECK(halo_quantize(&q, x, R, C, C, 0, &qr, "x") == HALO_OK && halo_quantize(&q2, x, R, C, C, 0, &qr0, "x") == HALO_OK &&
          !memcmp(q.q, q2.q, (size_t)R * C) && !memcmp(q.s, q2.s, sizeof(float) * R) && seen == -1,
          "per-row scales ignore amax_scale");
    halo_qmat_free(&q); halo_qmat_free(&q2);
}

int main(void) {
    test_amax_scale();
    test_fp8_codes(HALO_Q_E4M3);
    test_fp8_codes(HALO_Q_E5M2);
    test_int8_rounding();
    test_stochastic();
    test_grids();
    test_zero_nan();
    test_gemm();
    CHECK(halo_round_bf16(1.00390625f) == 1.0f && halo_round_bf16(1.01171875f) == 1.015625f, "bf16 ties to even");
    TEST_END();
}
