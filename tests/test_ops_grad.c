// Every CPU operation against a float64 reference: the forward's output, and the fp32 analytic backward against
// central finite differences of the float64 reference forward. Random shapes (odd sizes, GQA ratios 1/2/4, a
// head_dim that is not a power of two), seeded.
#include "ops/ops.h"
#include "test.h"

static unsigned long long seed = 1234;
static void randn(float *x, size_t n, double sd) { for (size_t i = 0; i < n; i++) x[i] = (float)(sd * t_rand_normal(&seed)); }
static double *to_d(const float *x, size_t n) { double *d = malloc(sizeof(double) * n); for (size_t i = 0; i < n; i++) d[i] = x[i]; return d; }
static int rnd(int lo, int hi) { return lo + (int)(t_rng_next(&seed) % (unsigned)(hi - lo + 1)); }

// A float64 forward: computes out (n_out) from the current inputs.
typedef void (*fwd64)(void *ctx, double *out);

// Checks analytic grad `g` (fp32) of L = sum(out * R) wrt input array `x` (double copy used by the forward) by
// central differences on up to `samples` random elements.
static void fd_check(const char *what, fwd64 f, void *ctx, double *x, size_t n, const float *g, const double *R,
                     size_t n_out, int samples) {
    double *o1 = malloc(sizeof(double) * n_out), *o2 = malloc(sizeof(double) * n_out);
    double num = 0, den = 0;
    for (int s = 0; s < samples; s++) {
        size_t i = n <= (size_t)samples ? (size_t)s % n : t_rng_next(&seed) % n;
        double h = 1e-6 * fmax(1.0, fabs(x[i])), keep = x[i];
        x[i] = keep + h; f(ctx, o1);
        x[i] = keep - h; f(ctx, o2);
        x[i] = keep;
        double d = 0;
        for (size_t j = 0; j < n_out; j++) d += (o1[j] - o2[j]) * R[j];
        d /= 2 * h;
        num += (d - g[i]) * (d - g[i]);
        den += d * d;
    }
    double e = sqrt(num) / (sqrt(den) + 1e-30);
    CHECK(e < 2e-4, "%s: analytic vs finite-difference rel err %.3g", what, e);
    free(o1); free(o2);
}

static void compare_fwd(const char *what, const float *got, const double *ref, size_t n, double tol) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) { num += (got[i] - ref[i]) * (got[i] - ref[i]); den += ref[i] * ref[i]; }
    double e = sqrt(num) / (sqrt(den) + 1e-30);
    CHECK(e < tol && !isnan(e), "%s forward vs float64: rel err %.3g", what, e);
}

// ---- RMSNorm ----
typedef struct { double *x, *w; int N, D; double eps; } rms_ctx;
static void rms_fwd(void *c_, double *out) {
    rms_ctx *c = c_;
    for (int n = 0; n < c->N; n++) {
        double ss = 0;
        for (int d = 0; d < c->D; d++) ss += c->x[n * c->D + d] * c->x[n * c->D + d];
        double r = 1 / sqrt(ss / c->D + c->eps);
        for (int d = 0; d < c->D; d++) out[n * c->D + d] = c->x[n * c->D + d] * r * c->w[d];
    }
}
static void test_rmsnorm(void) {
    int N = rnd(1, 9), D = rnd(3, 70);
    size_t n = (size_t)N * D;
    float *x = malloc(4 * n), *w = malloc(4 * D), *out = malloc(4 * n), rstd[16], *R = malloc(4 * n);
    float *dx = calloc(n, 4), *dw = calloc(D, 4);
    randn(x, n, 1.5); randn(w, D, 1); randn(R, n, 1);
    rmsnorm_forward(out, rstd, x, w, N, D, 1e-5f);
    rms_ctx c = {to_d(x, n), to_d(w, D), N, D, 1e-5};
    double *ref = malloc(8 * n), *Rd = to_d(R, n);
    rms_fwd(&c, ref);
    compare_fwd("rmsnorm", out, ref, n, 1e-6);
    rmsnorm_backward(dx, dw, R, x, w, rstd, N, D);
    fd_check("rmsnorm dx", rms_fwd, &c, c.x, n, dx, Rd, n, 40);
    fd_check("rmsnorm dw", rms_fwd, &c, c.w, D, dw, Rd, n, 40);
    free(x); free(w); free(out); free(R); free(dx); free(dw); free(c.x); free(c.w); free(ref); free(Rd);
}

// ---- RoPE ----
typedef struct { double *x; const int32_t *pos; int N, H, hd; double theta; } rope_ctx;
static void rope_fwd(void *c_, double *out) {
    rope_ctx *c = c_;
    int half = c->hd / 2;
    for (int n = 0; n < c->N; n++)
        for (int h = 0; h < c->H; h++)
            for (int i = 0; i < half; i++) {
                double inv = 1 / pow(c->theta, 2.0 * i / c->hd), a = c->pos[n] * inv;
                const double *v = c->x + ((size_t)n * c->H + h) * c->hd;
                double *o = out + ((size_t)n * c->H + h) * c->hd;
                o[i] = v[i] * cos(a) - v[i + half] * sin(a);
                o[i + half] = v[i + half] * cos(a) + v[i] * sin(a);
            }
}
static void test_rope(void) {
    int N = rnd(1, 12), H = rnd(1, 4), hd = 2 * rnd(1, 7), maxp = 40;
    size_t n = (size_t)N * H * hd;
    int32_t pos[12];
    for (int i = 0; i < N; i++) pos[i] = rnd(0, maxp - 1);
    float *cs = malloc(4 * maxp * hd), *sn = malloc(4 * maxp * hd), *x = malloc(4 * n), *R = malloc(4 * n);
    rope_tables(cs, sn, maxp, hd, 10000.0f, 0, 0, 0, 0, 0);
    randn(x, n, 1); randn(R, n, 1);
    rope_ctx c = {to_d(x, n), pos, N, H, hd, 10000.0};
    double *ref = malloc(8 * n), *Rd = to_d(R, n);
    rope_fwd(&c, ref);
    rope_forward(x, pos, cs, sn, N, H, hd);
    compare_fwd("rope", x, ref, n, 1e-6);
    rope_backward(R, pos, cs, sn, N, H, hd);   // R becomes dx
    double *Rorig = Rd;
    fd_check("rope dx", rope_fwd, &c, c.x, n, R, Rorig, n, 40);
    free(cs); free(sn); free(x); free(R); free(c.x); free(ref); free(Rd);
}

// ---- attention ----
typedef struct { double *q, *k, *v; const int32_t *seg; int B, T, Hq, Hkv, hd; } att_ctx;
static void att_fwd(void *c_, double *out) {
    att_ctx *c = c_;
    int grp = c->Hq / c->Hkv;
    double *p = malloc(sizeof(double) * c->T);
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->Hq; h++)
            for (int t = 0; t < c->T; t++) {
                const double *q = c->q + (((size_t)b * c->T + t) * c->Hq + h) * c->hd;
                double mx = -INFINITY, sum = 0;
                for (int s = 0; s <= t; s++) {
                    if (c->seg && c->seg[b * c->T + s] != c->seg[b * c->T + t]) { p[s] = -INFINITY; continue; }
                    const double *k = c->k + (((size_t)b * c->T + s) * c->Hkv + h / grp) * c->hd;
                    double d = 0;
                    for (int i = 0; i < c->hd; i++) d += q[i] * k[i];
                    p[s] = d / sqrt(c->hd);
                    mx = fmax(mx, p[s]);
                }
                for (int s = 0; s <= t; s++) { p[s] = exp(p[s] - mx); sum += p[s]; }
                double *o = out + (((size_t)b * c->T + t) * c->Hq + h) * c->hd;
                for (int i = 0; i < c->hd; i++) {
                    double acc = 0;
                    for (int s = 0; s <= t; s++) acc += p[s] / sum * c->v[(((size_t)b * c->T + s) * c->Hkv + h / grp) * c->hd + i];
                    o[i] = acc;
                }
            }
    free(p);
}
static void test_attention(int ratio, int with_seg) {
    int B = rnd(1, 3), T = rnd(2, 13), Hkv = rnd(1, 2), Hq = Hkv * ratio, hd = 2 * rnd(1, 5) + (rnd(0, 1) ? 0 : 4);
    if (ratio == 4) hd = 6;   // a head_dim that is not a power of two
    size_t nq = (size_t)B * T * Hq * hd, nk = (size_t)B * T * Hkv * hd;
    float *q = malloc(4 * nq), *k = malloc(4 * nk), *v = malloc(4 * nk), *out = malloc(4 * nq), *R = malloc(4 * nq);
    float *probs = malloc(4 * (size_t)B * Hq * T * T), *dq = malloc(4 * nq), *dk = malloc(4 * nk), *dv = malloc(4 * nk);
    int32_t *seg = malloc(4 * (size_t)B * T);
    for (int b = 0; b < B; b++) { int s = 0; for (int t = 0; t < T; t++) { if (t && rnd(0, 3) == 0) s++; seg[b * T + t] = s; } }
    randn(q, nq, 1); randn(k, nk, 1); randn(v, nk, 1); randn(R, nq, 1);
    att_ctx c = {to_d(q, nq), to_d(k, nk), to_d(v, nk), with_seg ? seg : NULL, B, T, Hq, Hkv, hd};
    double *ref = malloc(8 * nq), *Rd = to_d(R, nq);
    att_fwd(&c, ref);
    attention_forward(out, probs, q, k, v, c.seg, B, T, Hq, Hkv, hd);
    char what[64];
    snprintf(what, sizeof what, "attention GQA %d seg %d hd %d", ratio, with_seg, hd);
    compare_fwd(what, out, ref, nq, 1e-5);
    attention_backward(dq, dk, dv, R, probs, q, k, v, B, T, Hq, Hkv, hd);
    fd_check(what, att_fwd, &c, c.q, nq, dq, Rd, nq, 30);
    fd_check(what, att_fwd, &c, c.k, nk, dk, Rd, nq, 30);
    fd_check(what, att_fwd, &c, c.v, nk, dv, Rd, nq, 30);
    free(q); free(k); free(v); free(out); free(R); free(probs); free(dq); free(dk); free(dv); free(seg);
    free(c.q); free(c.k); free(c.v); free(ref); free(Rd);
}

// ---- SwiGLU ----
typedef struct { double *g, *u; size_t n; } sw_ctx;
static void sw_fwd(void *c_, double *out) {
    sw_ctx *c = c_;
    for (size_t i = 0; i < c->n; i++) out[i] = c->g[i] / (1 + exp(-c->g[i])) * c->u[i];
}
static void test_swiglu(void) {
    int N = rnd(1, 7), F = rnd(1, 50);
    size_t n = (size_t)N * F;
    float *g = malloc(4 * n), *u = malloc(4 * n), *o = malloc(4 * n), *R = malloc(4 * n), *dg = malloc(4 * n), *du = malloc(4 * n);
    randn(g, n, 2); randn(u, n, 1); randn(R, n, 1);
    sw_ctx c = {to_d(g, n), to_d(u, n), n};
    double *ref = malloc(8 * n), *Rd = to_d(R, n);
    sw_fwd(&c, ref);
    swiglu_forward(o, g, u, N, F);
    compare_fwd("swiglu", o, ref, n, 1e-6);
    swiglu_backward(dg, du, R, g, u, N, F);
    fd_check("swiglu dgate", sw_fwd, &c, c.g, n, dg, Rd, n, 40);
    fd_check("swiglu dup", sw_fwd, &c, c.u, n, du, Rd, n, 40);
    free(g); free(u); free(o); free(R); free(dg); free(du); free(c.g); free(c.u); free(ref); free(Rd);
}

// ---- cross-entropy (output is the scalar sum of losses) ----
typedef struct { double *x; const int32_t *t; int N, V; } ce_ctx;
static void ce_fwd(void *c_, double *out) {
    ce_ctx *c = c_;
    double tot = 0;
    for (int n = 0; n < c->N; n++) {
        if (c->t[n] < 0) continue;
        double mx = -INFINITY, s = 0;
        for (int j = 0; j < c->V; j++) mx = fmax(mx, c->x[n * c->V + j]);
        for (int j = 0; j < c->V; j++) s += exp(c->x[n * c->V + j] - mx);
        tot += mx + log(s) - c->x[n * c->V + c->t[n]];
    }
    out[0] = tot;
}
static void test_cross_entropy(void) {
    int N = rnd(2, 9), V = rnd(2, 40);
    size_t n = (size_t)N * V;
    int32_t t[9];
    for (int i = 0; i < N; i++) t[i] = rnd(0, 4) == 0 ? -1 : rnd(0, V - 1);
    float *x = malloc(4 * n), *dx = malloc(4 * n);
    randn(x, n, 3);
    ce_ctx c = {to_d(x, n), t, N, V};
    double ref, one = 1;
    ce_fwd(&c, &ref);
    double got = cross_entropy_forward_backward(dx, x, t, N, V, 1.0f);
    CHECK_REL(got, ref, 1e-6, "cross-entropy loss");
    CHECK_REL(cross_entropy_forward(x, t, N, V), ref, 1e-6, "cross-entropy forward-only loss");
    fd_check("cross-entropy dlogits", ce_fwd, &c, c.x, n, dx, &one, 1, 40);
    free(x); free(dx); free(c.x);
}

// ---- linear ----
typedef struct { double *X, *W; int b, m, n; } lin_ctx;
static void lin_fwd(void *c_, double *out) {
    lin_ctx *c = c_;
    for (int i = 0; i < c->b; i++)
        for (int j = 0; j < c->n; j++) {
            double a = 0;
            for (int k = 0; k < c->m; k++) a += c->X[i * c->m + k] * c->W[j * c->m + k];
            out[i * c->n + j] = a;
        }
}
static void test_linear(void) {
    int b = rnd(1, 17), m = rnd(1, 33), n = rnd(1, 29);
    float *X = malloc(4 * b * m), *W = malloc(4 * n * m), *Y = malloc(4 * b * n), *R = malloc(4 * b * n);
    float *dX = malloc(4 * b * m), *dW = calloc((size_t)n * m, 4);
    randn(X, b * m, 1); randn(W, n * m, 1); randn(R, b * n, 1);
    lin_ctx c = {to_d(X, b * m), to_d(W, n * m), b, m, n};
    double *ref = malloc(8 * b * n), *Rd = to_d(R, b * n);
    lin_fwd(&c, ref);
    linear_forward(Y, X, W, b, m, n);
    compare_fwd("linear", Y, ref, b * n, 1e-6);
    linear_backward(dX, dW, R, X, W, b, m, n, 0);
    fd_check("linear dX", lin_fwd, &c, c.X, b * m, dX, Rd, b * n, 30);
    fd_check("linear dW", lin_fwd, &c, c.W, n * m, dW, Rd, b * n, 30);
    free(X); free(W); free(Y); free(R); free(dX); free(dW); free(c.X); free(c.W); free(ref); free(Rd);
}

// ---- embedding: backward is a scatter-add; compare with a float64 scatter ----
static void test_embedding(void) {
    int V = rnd(2, 20), D = rnd(1, 40), N = rnd(1, 30);
    int32_t ids[30];
    for (int i = 0; i < N; i++) ids[i] = rnd(0, V - 1);
    float *tab = malloc(4 * V * D), *out = malloc(4 * N * D), *g = malloc(4 * N * D), *dt = calloc((size_t)V * D, 4);
    randn(tab, V * D, 1); randn(g, N * D, 1);
    embedding_forward(out, ids, tab, N, D);
    int ok = 1;
    for (int i = 0; i < N * D; i++) ok &= out[i] == tab[ids[i / D] * D + i % D];
    CHECK(ok, "embedding forward gathers rows");
    const int skip = rnd(0, 1) ? ids[rnd(0, N - 1)] : -1;   // a pad id present in the batch, or none
    embedding_backward(dt, ids, g, N, D, skip);
    double *ref = calloc((size_t)V * D, 8);
    for (int i = 0; i < N * D; i++)
        if (ids[i / D] != skip) ref[ids[i / D] * D + i % D] += g[i];
    compare_fwd(skip >= 0 ? "embedding backward, pad id skipped" : "embedding backward", dt, ref, (size_t)V * D, 1e-6);
    free(tab); free(out); free(g); free(dt); free(ref);
}

int main(void) {
    for (int rep = 0; rep < 3; rep++) {
        test_rmsnorm();
        test_rope();
        for (int ratio = 1; ratio <= 4; ratio *= 2) { test_attention(ratio, 0); test_attention(ratio, 1); }
        test_swiglu();
        test_cross_entropy();
        test_linear();
        test_embedding();
    }
    TEST_END();
}
