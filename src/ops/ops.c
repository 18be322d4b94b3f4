// CPU fp32 forward and backward of every Llama operation. Parallel loops split work so that each output element is
// reduced by one thread in a fixed order: results do not depend on the thread count's scheduling (bit-exact resume).
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cblas.h>
#include "ops/ops.h"

void embedding_forward(float *out, const int32_t *ids, const float *table, int N, int D) {
#pragma omp parallel for schedule(static) if (N >= 64)
    for (int n = 0; n < N; n++) memcpy(out + (size_t)n * D, table + (size_t)ids[n] * D, sizeof(float) * (size_t)D);
}

void embedding_backward(float *dtable, const int32_t *ids, const float *dout, int N, int D, int skip_id) {
    // Columns are independent: each thread owns a slice of D and walks tokens in order (deterministic).
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int d0 = 0; d0 < D; d0 += 16) {
            int d1 = d0 + 16 < D ? d0 + 16 : D;
            for (int n = 0; n < N; n++) {
                if (ids[n] == skip_id) continue;
                float *dst = dtable + (size_t)ids[n] * D;
                const float *src = dout + (size_t)n * D;
                for (int d = d0; d < d1; d++) dst[d] += src[d];
            }
        }
    }
}

void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int N, int D, float eps) {
#pragma omp parallel for schedule(static) if ((long)N * D >= 16384)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * D;
        double ss = 0;
        for (int d = 0; d < D; d++) ss += (double)xr[d] * xr[d];
        float r = (float)(1.0 / sqrt(ss / D + eps));
        rstd[n] = r;
        float *o = out + (size_t)n * D;
        for (int d = 0; d < D; d++) o[d] = xr[d] * r * w[d];
    }
}

void rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w, const float *rstd,
                      int N, int D) {
    // y = x * r * w, r = (mean(x^2) + eps)^-1/2; dx = r * (dy*w) - x * r^3 / D * sum(dy*w*x)
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * D, *g = dout + (size_t)n * D;
        double dot = 0;
        for (int d = 0; d < D; d++) dot += (double)g[d] * w[d] * xr[d];
        float r = rstd[n];
        float c = (float)(dot * r * r * r / D);
        float *o = dx + (size_t)n * D;
        for (int d = 0; d < D; d++) o[d] += g[d] * w[d] * r - xr[d] * c;
    }
    if (!dw) return;   // frozen weight
#pragma omp parallel for schedule(static)
    for (int d = 0; d < D; d++) {
        double acc = 0;
        for (int n = 0; n < N; n++) acc += (double)dout[(size_t)n * D + d] * x[(size_t)n * D + d] * rstd[n];
        dw[d] += (float)acc;
    }
}

void rope_tables(float *cos_t, float *sin_t, int max_pos, int head_dim, float theta, int scaling,
                 float factor, float low_freq_factor, float high_freq_factor, int original_max_pos) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        double inv = 1.0 / pow((double)theta, (2.0 * i) / head_dim);
        if (scaling == 2) inv /= factor;   // linear: positions interpolated by factor
        if (scaling == 1) {   // llama3
            double low_wl = original_max_pos / (double)low_freq_factor;
            double high_wl = original_max_pos / (double)high_freq_factor;
            double wl = 2 * M_PI / inv;
            if (wl > low_wl) inv = inv / factor;
            else if (wl >= high_wl) {
                double s = (original_max_pos / wl - low_freq_factor) / (high_freq_factor - low_freq_factor);
                inv = (1 - s) * inv / factor + s * inv;
            }
        }
        for (int p = 0; p < max_pos; p++) {
            double a = p * inv;
            cos_t[(size_t)p * half + i] = (float)cos(a);
            sin_t[(size_t)p * half + i] = (float)sin(a);
        }
    }
}

static void rope_apply(float *x, const int32_t *pos, const float *cos_t, const float *sin_t, int N, int H,
                       int head_dim, float sign) {
    int half = head_dim / 2;
#pragma omp parallel for schedule(static) if ((long)N * H * head_dim >= 16384)
    for (int n = 0; n < N; n++) {
        const float *c = cos_t + (size_t)pos[n] * half, *s = sin_t + (size_t)pos[n] * half;
        for (int h = 0; h < H; h++) {
            float *v = x + ((size_t)n * H + h) * head_dim;
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half], sn = sign * s[i];
                v[i] = a * c[i] - b * sn;
                v[i + half] = b * c[i] + a * sn;
            }
        }
    }
}

void rope_forward(float *x, const int32_t *pos, const float *cos_t, const float *sin_t, int N, int H, int head_dim) {
    rope_apply(x, pos, cos_t, sin_t, N, H, head_dim, 1.0f);
}

void rope_backward(float *dx, const int32_t *pos, const float *cos_t, const float *sin_t, int N, int H, int head_dim) {
    rope_apply(dx, pos, cos_t, sin_t, N, H, head_dim, -1.0f);   // the transpose of a rotation is its inverse
}

void attention_forward(float *out, float *probs, const float *q, const float *k, const float *v, const int32_t *seg,
                       int B, int T, int Hq, int Hkv, int hd) {
    int grp = Hq / Hkv;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq; h++) {
            int kh = h / grp;
            for (int t = 0; t < T; t++) {
                const float *qr = q + (((size_t)b * T + t) * Hq + h) * hd;
                float *p = probs + (((size_t)b * Hq + h) * T + t) * T;
                int st = seg ? seg[(size_t)b * T + t] : 0;
                float mx = -INFINITY;
                for (int s = 0; s <= t; s++) {
                    if (seg && seg[(size_t)b * T + s] != st) { p[s] = -INFINITY; continue; }
                    const float *kr = k + (((size_t)b * T + s) * Hkv + kh) * hd;
                    float dot = 0;
                    for (int d = 0; d < hd; d++) dot += qr[d] * kr[d];
                    p[s] = dot * scale;
                    if (p[s] > mx) mx = p[s];
                }
                double sum = 0;
                for (int s = 0; s <= t; s++) {
                    float e = p[s] == -INFINITY ? 0.0f : expf(p[s] - mx);
                    p[s] = e;
                    sum += e;
                }
                float inv = (float)(1.0 / sum);
                for (int s = 0; s <= t; s++) p[s] *= inv;
                for (int s = t + 1; s < T; s++) p[s] = 0;
                float *o = out + (((size_t)b * T + t) * Hq + h) * hd;
                for (int d = 0; d < hd; d++) o[d] = 0;
                for (int s = 0; s <= t; s++) {
                    if (p[s] == 0) continue;
                    const float *vr = v + (((size_t)b * T + s) * Hkv + kh) * hd;
                    for (int d = 0; d < hd; d++) o[d] += p[s] * vr[d];
                }
            }
        }
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *probs, const float *q,
                        const float *k, const float *v, int B, int T, int Hq, int Hkv, int hd) {
    int grp = Hq / Hkv;
    float scale = 1.0f / sqrtf((float)hd);
    // One task per (batch, KV head): it owns dk/dv of that head, so accumulation order is fixed.
#pragma omp parallel
    {
        float *dp = malloc(sizeof(float) * (size_t)T);
#pragma omp for collapse(2) schedule(dynamic)
        for (int b = 0; b < B; b++)
            for (int kh = 0; kh < Hkv; kh++) {
                for (int t = 0; t < T; t++) {
                    memset(dk + (((size_t)b * T + t) * Hkv + kh) * hd, 0, sizeof(float) * (size_t)hd);
                    memset(dv + (((size_t)b * T + t) * Hkv + kh) * hd, 0, sizeof(float) * (size_t)hd);
                }
                for (int h = kh * grp; h < (kh + 1) * grp; h++)
                    for (int t = 0; t < T; t++) {
                        const float *p = probs + (((size_t)b * Hq + h) * T + t) * T;
                        const float *go = dout + (((size_t)b * T + t) * Hq + h) * hd;
                        const float *qr = q + (((size_t)b * T + t) * Hq + h) * hd;
                        float *dqr = dq + (((size_t)b * T + t) * Hq + h) * hd;
                        double sum = 0;
                        for (int s = 0; s <= t; s++) {
                            const float *vr = v + (((size_t)b * T + s) * Hkv + kh) * hd;
                            float dot = 0;
                            for (int d = 0; d < hd; d++) dot += go[d] * vr[d];
                            dp[s] = dot;
                            sum += (double)p[s] * dot;
                            float *dvr = dv + (((size_t)b * T + s) * Hkv + kh) * hd;
                            if (p[s] != 0)
                                for (int d = 0; d < hd; d++) dvr[d] += p[s] * go[d];
                        }
                        for (int d = 0; d < hd; d++) dqr[d] = 0;
                        for (int s = 0; s <= t; s++) {
                            if (p[s] == 0) continue;
                            float ds = p[s] * (dp[s] - (float)sum) * scale;
                            const float *kr = k + (((size_t)b * T + s) * Hkv + kh) * hd;
                            float *dkr = dk + (((size_t)b * T + s) * Hkv + kh) * hd;
                            for (int d = 0; d < hd; d++) { dqr[d] += ds * kr[d]; dkr[d] += ds * qr[d]; }
                        }
                    }
            }
        free(dp);
    }
}

void swiglu_forward(float *out, const float *gate, const float *up, int N, int F) {
    size_t n = (size_t)N * F;
#pragma omp parallel for schedule(static) if (n >= 16384)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, int N, int F) {
    size_t n = (size_t)N * F;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], sg = 1.0f / (1.0f + expf(-g)), go = dout[i];
        dup[i] = go * g * sg;
        dgate[i] = go * up[i] * sg * (1.0f + g * (1.0f - sg));
    }
}

// Log-sum-exp of one row, in double for accuracy.
static double row_lse(const float *x, int V) {
    float mx = -INFINITY;
    for (int j = 0; j < V; j++) mx = x[j] > mx ? x[j] : mx;
    double s = 0;
    for (int j = 0; j < V; j++) s += exp((double)x[j] - mx);
    return mx + log(s);
}

double cross_entropy_forward(const float *logits, const int32_t *targets, int N, int V) {
    double *row_loss = malloc(sizeof(double) * (size_t)(N ? N : 1));
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        row_loss[n] = targets[n] >= 0 ? row_lse(logits + (size_t)n * V, V) - logits[(size_t)n * V + targets[n]] : 0;
    double total = 0;   // summed in row order: deterministic
    for (int n = 0; n < N; n++) total += row_loss[n];
    free(row_loss);
    return total;
}

double cross_entropy_forward_backward(float *dlogits, const float *logits, const int32_t *targets, int N, int V,
                                      float scale) {
    double *row_loss = malloc(sizeof(double) * (size_t)(N ? N : 1));
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        float *g = dlogits + (size_t)n * V;
        if (targets[n] < 0) { row_loss[n] = 0; memset(g, 0, sizeof(float) * (size_t)V); continue; }
        double lse = row_lse(x, V);
        row_loss[n] = lse - x[targets[n]];
        for (int j = 0; j < V; j++) g[j] = (float)(exp((double)x[j] - lse)) * scale;
        g[targets[n]] -= scale;
    }
    double total = 0;   // summed in row order: deterministic
    for (int n = 0; n < N; n++) total += row_loss[n];
    free(row_loss);
    return total;
}

void linear_forward(float *Y, const float *X, const float *W, int b, int m, int n) {
    if (b == 1) { cblas_sgemv(CblasRowMajor, CblasNoTrans, n, m, 1.0f, W, m, X, 1, 0.0f, Y, 1); return; }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b, n, m, 1.0f, X, m, W, m, 0.0f, Y, n);
}

void linear_backward(float *dX, float *dW, const float *dY, const float *X, const float *W, int b, int m, int n,
                     int accumulate_dx) {
    if (dX) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b, m, n, 1.0f, dY, n, W, m,
                        accumulate_dx ? 1.0f : 0.0f, dX, m);
    if (dW) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, m, b, 1.0f, dY, n, X, m, 1.0f, dW, m);
}
