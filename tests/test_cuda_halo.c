// The HALO GPU kernels (src/cuda/halo_*.cu) against the CPU implementation of src/halo on seeded random inputs:
// Hadamard rows (bit mismatches counted, 1e-5 relative), absmax and 8-bit codes (identical except rounding ties,
// which are classified), 8-bit cuBLASLt products vs halo_qgemm on the same codes, the GPU HALO linear at each level
// and precision vs halo_linear, and the outlier error table (level 2 E_X INT8 error well under level 0's).
// Skips without a GPU. Prints "| ... |" table rows for scripts/gpu_halo_check.sh.
#include "test.h"
#ifdef HALO_CUDA
#include <stdint.h>
#include <cuda_runtime_api.h>
#include "cuda/cuda_backend.h"
#include "cuda/halo_cuda.h"
#include "test_cuda.h"
#include "halo/hadamard.h"
#include "halo/halo_linear.h"
#include "halo/quant.h"
#include "util/error.h"

static unsigned long long rng = 4242;

static void row(const char *what, const char *detail, double err, double bound, long mism, long ties) {
    int ok = err <= bound && !isnan(err) && mism == ties;
    printf("| %-28s | %-30s | %9.2e | %7.0e | %6ld | %6ld | %s |\n", what, detail, err, bound, mism, ties,
           ok ? "ok" : "FAIL");
    CHECK(ok, "%s %s: err %.3g (bound %.3g), %ld code mismatches of which %ld ties", what, detail, err, bound, mism,
          ties);
}

// Rounds v to bf16 in place; returns a device bf16 copy.
static halo_bf16 *dev_bf16(float *v, size_t n) {
    t_round_bf16(v, n);
    return t_dev_bf16(v, n);
}
static void *dev_poison(size_t bytes) {
    void *d = NULL;
    cudaMalloc(&d, bytes + 256);
    cudaMemset(d, 0xff, bytes);
    return d;
}
// An output's starting contents: a device copy of R (ob bytes) for the accumulating forms, poison for =
static void *dev_start(int acc, const float *R, size_t ob) { return acc ? t_dev_copy(R, ob) : dev_poison(ob); }
// Values of a and b that differ in any bit
static long words_differ(const float *a, const float *b, size_t n) {
    long bits = 0;
    for (size_t i = 0; i < n; i++) bits += memcmp(&a[i], &b[i], 4) != 0;
    return bits;
}
// One rotation for both passes (halo_cuda_rot_amax) of R x d bf16 rows: values of the stored rows and of their absmax
// that differ in any bit from the CPU's rotated rows xr and their absmax mx
static long rot_amax_differ(const halo_cuda_had *hg, const void *dx, int R, int d, const float *xr, float mx) {
    const size_t n = (size_t)R * d;
    float *dr = dev_poison(4 * n), *dam = dev_poison(4), am;
    cudaMemset(dam, 0, 4);
    halo_cuda_rot_amax(hg, dx, d, R, dr, d, dam, NULL, 0);
    float *g = t_host_of(dr, 4 * n);
    cudaMemcpy(&am, dam, 4, cudaMemcpyDeviceToHost);
    const long bits = words_differ(&am, &mx, 1) + words_differ(g, xr, n);
    free(g); cudaFree(dr); cudaFree(dam);
    return bits;
}
static float dec(uint8_t c, int fmt) { return fmt == HALO_CUDA_INT8 ? (float)(int8_t)c : halo_fp8_decode(c, HALO_Q_E4M3); }

// Codes differing from the CPU's: a tie is adjacent codes with x/s within 1e-5 (relative) of their midpoint, so
// a last-bit difference of the rotated value may pick either neighbour.
static void code_diff(const uint8_t *gpu, const uint8_t *cpu, const float *x, const float *scale_per, long n,
                      long per, int fmt, long *mism, long *ties) {
    *mism = *ties = 0;
    for (long i = 0; i < n; i++) {
        if (gpu[i] == cpu[i]) continue;
        (*mism)++;
        float a = dec(gpu[i], fmt), b = dec(cpu[i], fmt), t = x[i] / scale_per[per ? i / per : 0];
        double mid = 0.5 * ((double)a + b), step = fabs((double)a - b);
        int adjacent = fmt == HALO_CUDA_INT8 ? step == 1.0 : abs((int)(gpu[i] & 0x7f) - (int)(cpu[i] & 0x7f)) == 1;
        if (adjacent && fabs(t - mid) <= 1e-5 * fmax(fabs(mid), 1e-30)) (*ties)++;
    }
}

// The CPU's per-tensor codes of x [rows][cols] in the GPU format fmt (halo_qmat_free after).
static void cpu_codes(halo_qmat *qm, const float *x, int rows, int cols, int fmt) {
    halo_qspec qs;
    memset(&qs, 0, sizeof qs);
    qs.fmt = fmt == HALO_CUDA_INT8 ? HALO_Q_INT8 : HALO_Q_E4M3;
    qs.gran = HALO_GRAN_TENSOR;
    memset(qm, 0, sizeof *qm);
    halo_quantize(qm, x, rows, cols, cols, 0, &qs, "test");
}

// ---- Hadamard rows -------------------------------------------------------------------------------------------
static void test_hadamard(void) {
    // K = 12/44/172/28 with P >= 32: sign-mask mix (generic kernel). Fast kernel (k_rot: blk % 256 == 0, P <= 8192,
    // K in 1/12/20/28/76): 256, 2048 .. 8192 (K = 1, Q = 1 .. 32), 3072 (12 * 256), 5120 (20 * 256), 14336 and 28672
    // (28 * 512, 28 * 1024), 4864 (76 * 64), 96, 768 and 896 (12 * 8, 12 * 64, 28 * 32: P < 256), the last four with
    // four thread groups a column; 5632 (K = 44) takes the generic kernel either way; every size from 2048 also through
    // the generic kernel (fast = 0).
    const int dims[] = {12, 40, 96, 256, 768, 896, 2048, 3072, 4096, 4864, 5120, 5632, 8192, 11008, 14336, 28672, 32768};
    for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++) {
        const int d = dims[t], rows = d >= 16384 ? 3 : d == 2048 ? 7 : d == 4096 ? 5 : 8;   // k_rot: 4 (2) rows per block, one partial
        for (int tr = 0; tr < 2; tr++) {
            for (int in_bf = 0; in_bf < 4; in_bf++) {
                const int fast = in_bf < 2;   // in_bf 2, 3: the same through the generic kernel
                if (!fast && d < 2048) continue;
                halo_cuda_rows_fast(fast);
                if (in_bf & 1 && tr) continue;
                halo_hadamard hp;
                halo_cuda_had hg;
                if (halo_hadamard_plan(&hp, d, 0) || halo_cuda_had_plan(&hg, d, 0)) {
                    CHECK(0, "plan %d: %s", d, halo_error());
                    continue;
                }
                size_t n = (size_t)rows * d;
                float *x = t_rand_vec(&rng, n, 1.0);
                const int bfin = in_bf & 1;
                void *din = bfin ? (void *)dev_bf16(x, n) : t_dev_copy(x, 4 * n);
                float *dout = dev_poison(4 * n);
                halo_cuda_had_rows(&hg, tr, din, bfin ? HALO_CUDA_BF16 : HALO_CUDA_F32, d, NULL, dout, 1, d, 0, rows, 0);
                float *g = t_host_of(dout, 4 * n);
                halo_hadamard_rows(&hp, x, rows, d, tr);
                const long bits = words_differ(g, x, n);
                char det[64];
                snprintf(det, sizeof det, "d=%d K=%d %s%s%s", d, hp.K, tr ? "H^T" : "H", bfin ? " bf16 in" : "",
                         fast ? "" : " generic");
                double e = rel_l2_f(g, x, n);
                printf("  (hadamard %s: %ld of %zu values differ in any bit)\n", det, bits, n);
                row("hadamard rows vs CPU", det, e, 1e-5, 0, 0);
                CHECK(bits == 0, "hadamard %s: %ld values differ from the CPU's in some bit (same stage order expected)", det, bits);
                // bf16 output of the same rotation: bf16 tolerance
                if (!bfin && !tr) {
                    halo_bf16 *db = dev_poison(2 * n);
                    halo_cuda_had_rows(&hg, 0, din, HALO_CUDA_F32, d, NULL, db, 0, d, 0, rows, 0);
                    halo_bf16 *hb = t_host_of(db, 2 * n);
                    float *gb = malloc(4 * n);
                    cuda_bf16_to_f32_host(gb, hb, n);
                    row("hadamard rows, bf16 out", det, rel_l2_f(gb, x, n), 5e-3, 0, 0);
                    free(hb); free(gb); cudaFree(db);
                }
                free(x); free(g); cudaFree(din); cudaFree(dout);
                halo_cuda_had_free(&hg);
            }
        }
    }
    halo_cuda_rows_fast(1);
    // int32 products dequantized by a device scale, rotated by H^T and accumulated into fp32 (the INT8 H_m^T
    // post-pass): out = out0 + rows((float)C * alpha) H^T, bit for bit, fast and generic kernels.
    const int idims[] = {4096, 14336, 5632, 4864};
    for (int t = 0; t < 4; t++)
        for (int fast = 0; fast < 2; fast++) {
            const int d = idims[t], rows = 4;
            const size_t n = (size_t)rows * d;
            halo_hadamard hp;
            halo_cuda_had hg;
            if (halo_hadamard_plan(&hp, d, 0) || halo_cuda_had_plan(&hg, d, 0)) { CHECK(0, "plan %d", d); continue; }
            int32_t *c = malloc(4 * n);
            float *x = malloc(4 * n), *o0 = t_rand_vec(&rng, n, 1.0);
            const float alpha = 3.0517578e-5f * 1.37f;
            for (size_t i = 0; i < n; i++) {
                c[i] = (int32_t)(t_rng_next(&rng) % 2000001) - 1000000;
                x[i] = (float)c[i] * alpha;
            }
            halo_hadamard_rows(&hp, x, rows, d, 1);
            for (size_t i = 0; i < n; i++) x[i] = o0[i] + x[i];
            void *dc = t_dev_copy(c, 4 * n), *dout = t_dev_copy(o0, 4 * n), *dal = t_dev_copy(&alpha, 4);
            halo_cuda_rows_fast(fast);
            halo_cuda_had_rows(&hg, 1, dc, HALO_CUDA_I32, d, (const float *)dal, dout, 1, d, 1, rows, 0);
            halo_cuda_rows_fast(1);
            float *g = t_host_of(dout, 4 * n);
            const long bits = words_differ(g, x, n);
            char det[64];
            snprintf(det, sizeof det, "d=%d K=%d int32*alpha H^T +=%s", d, hp.K, fast ? "" : " generic");
            row("hadamard rows vs CPU", det, rel_l2_f(g, x, n), 1e-5, bits, 0);   // any differing bit fails
            free(c); free(x); free(o0); free(g); cudaFree(dc); cudaFree(dout); cudaFree(dal);
            halo_cuda_had_free(&hg);
        }
    // Zero-padded token rotation: b = 94 tokens -> 96 = 12 * 8, as halo_linear's H_b.
    int pad = halo_hadamard_pad_size(94, 172);
    CHECK(pad == 96, "pad size of 94: %d", pad);
}

// ---- absmax and quantizers -----------------------------------------------------------------------------------
static void test_quant(void) {
    const int shapes[][2] = {{64, 4096}, {16, 14336}, {24, 96}, {8, 8192}, {8, 5632}, {8, 4864}};
    for (int si = 0; si < 6; si++) {
        const int R = shapes[si][0], d = shapes[si][1];
        size_t n = (size_t)R * d;
        float *x = t_rand_vec(&rng, n, 1.0);
        for (int r = 0; r < R; r++) x[(size_t)r * d + (r * 37 + 11) % d] *= 60; // outliers
        halo_bf16 *dx = dev_bf16(x, n);
        for (int rot = 0; rot < 2; rot++) {
            halo_hadamard hp;
            halo_cuda_had hg;
            memset(&hg, 0, sizeof hg);
            float *xr = malloc(4 * n);
            memcpy(xr, x, 4 * n);
            if (rot) {
                if (halo_hadamard_plan(&hp, d, 0) || halo_cuda_had_plan(&hg, d, 0)) { CHECK(0, "plan %d", d); continue; }
                halo_hadamard_rows(&hp, xr, R, d, 0);
            }
            // absmax, per tensor and per row
            float *dam = dev_poison(4 * (R + 2));
            cudaMemset(dam, 0, 4 * (R + 2));
            halo_cuda_absmax_rows(rot ? &hg : NULL, 0, dx, HALO_CUDA_BF16, d, R, d, dam, dam + 1, NULL, 0);
            float *am = t_host_of(dam, 4 * (R + 1));
            float mx = 0;
            long rowbad = 0;
            for (int r = 0; r < R; r++) {
                float m = 0;
                for (int k = 0; k < d; k++) m = fmaxf(m, fabsf(xr[(size_t)r * d + k]));
                rowbad += m != am[1 + r];
                mx = fmaxf(mx, m);
            }
            char det[80];
            snprintf(det, sizeof det, "%dx%d %s", R, d, rot ? "rotated" : "plain");
            row("absmax (tensor, per row)", det, fabs(am[0] - mx) / mx + (double)rowbad, 0, 0, 0);
            // one rotation for both passes (rot_amax: k_rot, k_rot_small or, at 96 = 12 * 8 and 5632 = 44 * 128, the
            // generic row kernel): the rotated rows and their absmax, bit for bit
            if (rot && halo_cuda_rot_amax_ok(&hg, dx, d, R))   // any differing bit fails
                row("rot_amax vs CPU (rows, absmax)", det, 0, 0, rot_amax_differ(&hg, dx, R, d, xr, mx), 0);
            for (int fmt = 0; fmt < 2; fmt++) {
                halo_qspec qs;
                memset(&qs, 0, sizeof qs);
                qs.fmt = fmt == HALO_CUDA_INT8 ? HALO_Q_INT8 : HALO_Q_E4M3;
                halo_qmat qm;
                memset(&qm, 0, sizeof qm);
                for (int per_row = 0; per_row < 2; per_row++) {
                    qs.gran = per_row ? HALO_GRAN_ROW : HALO_GRAN_TENSOR;
                    halo_quantize(&qm, xr, R, d, d, 0, &qs, "test");
                    uint8_t *dq = dev_poison(n);
                    halo_cuda_quant_rows(rot ? &hg : NULL, 0, dx, HALO_CUDA_BF16, d, R, d, dam, per_row ? dam + 1 : NULL,
                                         fmt, dq, d, 0);
                    uint8_t *q = t_host_of(dq, n);
                    long mism, ties;
                    code_diff(q, qm.q, xr, qm.s, (long)n, per_row ? d : 0, fmt, &mism, &ties);
                    char det2[96];
                    snprintf(det2, sizeof det2, "%s %s %s", det, fmt ? "e4m3" : "int8", per_row ? "row" : "tensor");
                    row("8-bit codes vs CPU", det2, 0, 0, mism, ties);
                    free(q); cudaFree(dq);
                }
                // unrotated tile quantizer: both layouts at once (transposed, zero-padded to 16)
                if (!rot) {
                    qs.gran = HALO_GRAN_TENSOR;
                    halo_quantize(&qm, x, R, d, d, 0, &qs, "test");
                    halo_qmat qt;
                    memset(&qt, 0, sizeof qt);
                    halo_quantize(&qt, x, R, d, d, 1, &qs, "test");
                    const int Rp = (R + 15) / 16 * 16 + 16;
                    uint8_t *dq = dev_poison(n), *dqt = dev_poison((size_t)d * Rp);
                    halo_cuda_quant_tile(dx, HALO_CUDA_BF16, d, R, d, dam, fmt, dq, d, dqt, Rp, Rp, 0);
                    uint8_t *q = t_host_of(dq, n), *qtt = t_host_of(dqt, (size_t)d * Rp);
                    long mism, ties, padbad = 0;
                    code_diff(q, qm.q, x, qm.s, (long)n, 0, fmt, &mism, &ties);
                    uint8_t *qtc = malloc(n);
                    float *xt = malloc(4 * n);
                    for (int k = 0; k < d; k++) {
                        for (int r = 0; r < R; r++) {
                            qtc[(size_t)k * R + r] = qtt[(size_t)k * Rp + r];
                            xt[(size_t)k * R + r] = x[(size_t)r * d + k];
                        }
                        for (int r = R; r < Rp; r++) padbad += qtt[(size_t)k * Rp + r] != 0;
                    }
                    long m2, t2;
                    code_diff(qtc, qt.q, xt, qt.s, (long)n, 0, fmt, &m2, &t2);
                    char det2[96];
                    snprintf(det2, sizeof det2, "%dx%d %s both layouts", R, d, fmt ? "e4m3" : "int8");
                    row("tile quantizer vs CPU", det2, (double)padbad, 0, mism + m2, ties + t2);
                    free(q); free(qtt); free(qtc); free(xt); cudaFree(dq); cudaFree(dqt);
                    halo_qmat_free(&qt);
                }
                halo_qmat_free(&qm);
            }
            free(am); cudaFree(dam); free(xr);
            halo_cuda_had_free(&hg);
        }
        free(x); cudaFree(dx);
    }
}

// ---- small diagonal blocks (k_rot_small: 8 or 32 values a lane) ---------------------------------------------------
// Block-diagonal H with blocks of 8..256 on rows of 768 (8 values a lane), 1024 and 4096 (32 values a lane for blocks
// >= 32, and again with that form switched off): the rotation (bf16 in, fp32 out), absmax, rotation + absmax
// (rot_amax) and the per-tensor quantizer against the CPU, bit for bit (codes: rounding ties only); the quantizer
// into both layouts (halo_cuda_rot_quant_both, 6 and 40 rows: one and two row tiles) equal to the row codes.
static void test_rot_small(void) {
    const int dims[] = {768, 1024, 4096}, blocks[] = {8, 16, 32, 64, 128, 256};
    for (int di = 0; di < 3; di++)
        for (int bi = 0; bi < 6; bi++)
            for (int form = 2; form >= 0; form--) {   // tiles, 32 values a lane, 8 a lane
                const int d = dims[di], B = blocks[bi], R = di == 1 ? 40 : 6;
                if (form == 2 && B < 16) continue;                       // no tiles: form 1's kernels
                if (form == 0 && (d % 1024 || B < 32)) continue;         // the same kernel as form 1
                halo_cuda_rows_small_form(form);
                halo_hadamard hp;
                halo_cuda_had hg;
                if (halo_hadamard_plan(&hp, d, B) || halo_cuda_had_plan(&hg, d, B)) { CHECK(0, "plan %d/%d", d, B); continue; }
                const size_t n = (size_t)R * d;
                float *x = t_rand_vec(&rng, n, 1.0);
                for (int r = 0; r < R; r++) x[(size_t)r * d + (r * 53 + 7) % d] *= 80;   // outliers
                halo_bf16 *dx = dev_bf16(x, n);
                float *xr = malloc(4 * n);
                memcpy(xr, x, 4 * n);
                halo_hadamard_rows(&hp, xr, R, d, 0);
                float mx = 0;
                for (size_t i = 0; i < n; i++) mx = fmaxf(mx, fabsf(xr[i]));
                char det[64];
                snprintf(det, sizeof det, "%dx%d blocks of %d%s", R, d, B, form == 2 ? " (tiles)" : form ? "" : " (8 a lane)");
                float *dout = dev_poison(4 * n);
                halo_cuda_had_rows(&hg, 0, dx, HALO_CUDA_BF16, d, NULL, dout, 1, d, 0, R, 0);
                float *g = t_host_of(dout, 4 * n);
                const long bits = words_differ(g, xr, n);
                row("small blocks: rows vs CPU", det, rel_l2_f(g, xr, n), 1e-6, bits, 0);   // any differing bit fails
                float *dam = dev_poison(8);
                cudaMemset(dam, 0, 8);
                halo_cuda_absmax_rows(&hg, 0, dx, HALO_CUDA_BF16, d, R, d, dam, NULL, (int *)(dam + 1), 0);
                float am[2];
                cudaMemcpy(am, dam, 8, cudaMemcpyDeviceToHost);
                row("small blocks: absmax vs CPU", det, memcmp(&am[0], &mx, 4) || ((int *)am)[1] ? 1.0 : 0.0, 0, 0, 0);
                if (halo_cuda_rot_amax_ok(&hg, dx, d, R))   // rotation stored and its absmax in one pass
                    row("small blocks: rot_amax vs CPU", det, 0, 0, rot_amax_differ(&hg, dx, R, d, xr, mx), 0);
                for (int fmt = 0; fmt < 2; fmt++) {
                    halo_qmat qm;
                    cpu_codes(&qm, xr, R, d, fmt);
                    uint8_t *dq = dev_poison(n);
                    halo_cuda_quant_rows(&hg, 0, dx, HALO_CUDA_BF16, d, R, d, dam, NULL, fmt, dq, d, 0);
                    uint8_t *q = t_host_of(dq, n);
                    long mism, ties;
                    code_diff(q, qm.q, xr, qm.s, (long)n, 0, fmt, &mism, &ties);
                    char det2[80];
                    snprintf(det2, sizeof det2, "%s %s", det, fmt ? "e4m3" : "int8");
                    row("small blocks: codes vs CPU", det2, 0, 0, mism, ties);
                    // both layouts in one pass (the forward's X and W): q as above, qt [d][Rp] with zero codes past R
                    const int Rp = (R + 15) / 16 * 16;
                    uint8_t *dq2 = dev_poison(n), *dqt = dev_poison((size_t)d * Rp);
                    if (halo_cuda_rot_quant_both_ok(&hg, dx, d, R, d, dq2, d, dqt, Rp, Rp)) {
                        halo_cuda_rot_quant_both(&hg, dx, d, R, d, dam, fmt, dq2, d, dqt, Rp, Rp, NULL, 0);
                        uint8_t *q2 = t_host_of(dq2, n), *qt = t_host_of(dqt, (size_t)d * Rp);
                        long diff = 0, pad = 0;
                        for (size_t i = 0; i < n; i++) diff += q2[i] != q[i];
                        for (int k = 0; k < d; k++)
                            for (int r = 0; r < Rp; r++)
                                if (r < R) diff += qt[(size_t)k * Rp + r] != q[(size_t)r * d + k];
                                else pad += qt[(size_t)k * Rp + r] != 0;
                        row("small blocks: both layouts", det2, (double)pad, 0, diff, 0);   // vs the row codes
                        free(q2); free(qt);
                    } else {   // blocks of 8, and forms 0-1 (no tiles): row codes + a transpose in the layer
                        CHECK(B < 16 || form < 2, "%s: rot_quant_both expected to take rows of %d", det2, d);
                    }
                    cudaFree(dq2); cudaFree(dqt);
                    free(q); cudaFree(dq);
                    halo_qmat_free(&qm);
                }
                free(x); free(xr); free(g); cudaFree(dx); cudaFree(dout); cudaFree(dam);
                halo_cuda_had_free(&hg);
            }
    halo_cuda_rows_small_form(2);
}

// k_rot_tile with a NaN or an Inf in the input (blocks of 256: the compile-time form; 64: the run-time one): the absmax
// skips NaN as the CPU's maximum of the rotated rows does, the non-finite flag is set, and the codes (row-major and
// both layouts; the CPU refuses to quantize non-finite values) equal those of the 32-values-a-lane kernel (NaN -> 0).
static void test_rot_tile_nonfinite(void) {
    const int d = 1024, R = 40, blocks[2] = {256, 64};
    for (int bi = 0; bi < 2; bi++)
        for (int nf = 1; nf <= 2; nf++) {
            const int B = blocks[bi];
            halo_hadamard hp;
            halo_cuda_had hg;
            if (halo_hadamard_plan(&hp, d, B) || halo_cuda_had_plan(&hg, d, B)) { CHECK(0, "plan %d/%d", d, B); continue; }
            const size_t n = (size_t)R * d;
            float *x = t_rand_vec(&rng, n, 1.0);
            x[(size_t)7 * d + 300] = nf == 1 ? NAN : INFINITY;
            halo_bf16 *dx = dev_bf16(x, n);
            float *xr = malloc(4 * n);
            memcpy(xr, x, 4 * n);
            halo_hadamard_rows(&hp, xr, R, d, 0);
            float mx = 0;
            for (size_t i = 0; i < n; i++) mx = fmaxf(mx, fabsf(xr[i]));   // NaN skipped
            char det[64];
            snprintf(det, sizeof det, "%dx%d blocks of %d, %s", R, d, B, nf == 1 ? "a NaN" : "an Inf");
            float *dam = dev_poison(8);
            uint8_t *q[2][2];
            for (int form = 2; form >= 1; form--) {
                halo_cuda_rows_small_form(form);
                cudaMemset(dam, 0, 8);
                halo_cuda_absmax_rows(&hg, 0, dx, HALO_CUDA_BF16, d, R, d, dam, NULL, (int *)(dam + 1), 0);
                float am[2];
                cudaMemcpy(am, dam, 8, cudaMemcpyDeviceToHost);
                char det2[96];
                snprintf(det2, sizeof det2, "%s%s", det, form == 2 ? " (tiles)" : "");
                row("non-finite: absmax, flag", det2, memcmp(&am[0], &mx, 4) || ((int *)am)[1] != 1 ? 1.0 : 0.0, 0, 0, 0);
                for (int fmt = 0; fmt < 2; fmt++) {
                    uint8_t *dq = dev_poison(n);
                    halo_cuda_quant_rows(&hg, 0, dx, HALO_CUDA_BF16, d, R, d, dam, NULL, fmt, dq, d, 0);
                    q[form - 1][fmt] = t_host_of(dq, n);
                    cudaFree(dq);
                }
            }
            for (int fmt = 0; fmt < 2; fmt++) {
                long diff = 0, nz = 0;
                for (size_t i = 0; i < n; i++) { diff += q[0][fmt][i] != q[1][fmt][i]; nz += q[1][fmt][i] != 0; }
                char det2[96];
                snprintf(det2, sizeof det2, "%s %s (%ld non-zero)", det, fmt ? "e4m3" : "int8", nz);
                row("non-finite: tile codes", det2, 0, 0, diff, 0);
                // both layouts from the tile kernel equal its row codes
                const int Rp = 48;
                uint8_t *dq2 = dev_poison(n), *dqt = dev_poison((size_t)d * Rp);
                halo_cuda_rows_small_form(2);
                long bad = 0;
                if (halo_cuda_rot_quant_both_ok(&hg, dx, d, R, d, dq2, d, dqt, Rp, Rp)) {
                    halo_cuda_rot_quant_both(&hg, dx, d, R, d, dam, fmt, dq2, d, dqt, Rp, Rp, NULL, 0);
                    uint8_t *q2 = t_host_of(dq2, n), *qt = t_host_of(dqt, (size_t)d * Rp);
                    for (int k = 0; k < d; k++)
                        for (int r = 0; r < R; r++)
                            bad += (q2[(size_t)r * d + k] != q[1][fmt][(size_t)r * d + k]) +
                                   (qt[(size_t)k * Rp + r] != q[1][fmt][(size_t)r * d + k]);
                    free(q2); free(qt);
                } else {
                    bad = -1;
                }
                row("non-finite: both layouts", det2, 0, 0, bad, 0);
                cudaFree(dq2); cudaFree(dqt);
                free(q[0][fmt]); free(q[1][fmt]);
            }
            free(x); free(xr); cudaFree(dx); cudaFree(dam);
            halo_cuda_had_free(&hg);
        }
    halo_cuda_rows_small_form(2);
}

// ---- the 8-element (16-byte) paths and their fallbacks: padded rows, odd widths, misaligned pointers ---------
static void test_vec_paths(void) {
    // {rows, cols, row stride, element offset of the device pointer}: vector path (contiguous and strided), then
    // fallbacks (odd width; pointer off the 16-byte boundary)
    const int cases[][4] = {{50, 4096, 4096, 0}, {37, 200, 208, 0}, {13, 77, 77, 0}, {24, 96, 104, 1}};
    for (int ci = 0; ci < 4; ci++) {
        const int R = cases[ci][0], d = cases[ci][1], ld = cases[ci][2], off = cases[ci][3];
        const size_t nb = (size_t)R * ld + off;
        float *buf = t_rand_vec(&rng, nb, 1.0);
        float *x = buf + off;
        for (int r = 0; r < R; r++) x[(size_t)r * ld + (r * 13 + 5) % d] *= 40;
        halo_bf16 *dbuf = dev_bf16(buf, nb), *dx = dbuf + off;
        float mx = 0;
        for (int r = 0; r < R; r++) for (int k = 0; k < d; k++) mx = fmaxf(mx, fabsf(x[(size_t)r * ld + k]));
        float *dam = dev_poison(16);
        cudaMemset(dam, 0, 16);
        int *dbad = (int *)(dam + 2);
        halo_cuda_absmax_rows(NULL, 0, dx, HALO_CUDA_BF16, ld, R, d, dam, NULL, dbad, 0);
        float am[3];
        cudaMemcpy(am, dam, sizeof am, cudaMemcpyDeviceToHost);
        char det[80];
        snprintf(det, sizeof det, "%dx%d ld %d off %d", R, d, ld, off);
        row("absmax per tensor (vec)", det, fabs(am[0] - mx) / mx + (double)(((int *)am)[2] != 0), 0, 0, 0);
        const int ldq = (d + 7) / 8 * 8 + 8, Rp = (R + 15) / 16 * 16;
        for (int fmt = 0; fmt < 2; fmt++) {
            halo_qspec qs;
            memset(&qs, 0, sizeof qs);
            qs.fmt = fmt == HALO_CUDA_INT8 ? HALO_Q_INT8 : HALO_Q_E4M3;
            qs.gran = HALO_GRAN_TENSOR;
            halo_qmat qm, qt;
            memset(&qm, 0, sizeof qm); memset(&qt, 0, sizeof qt);
            halo_quantize(&qm, x, R, d, ld, 0, &qs, "test");
            halo_quantize(&qt, x, R, d, ld, 1, &qs, "test");
            float *xc = malloc(4 * (size_t)R * d), *xt = malloc(4 * (size_t)R * d);
            for (int r = 0; r < R; r++)
                for (int k = 0; k < d; k++) xc[(size_t)r * d + k] = xt[(size_t)k * R + r] = x[(size_t)r * ld + k];
            uint8_t *dq = dev_poison((size_t)R * ldq), *dq2 = dev_poison((size_t)R * ldq), *dqt = dev_poison((size_t)d * Rp);
            halo_cuda_quant_rows(NULL, 0, dx, HALO_CUDA_BF16, ld, R, d, dam, NULL, fmt, dq, ldq, 0);
            halo_cuda_quant_tile(dx, HALO_CUDA_BF16, ld, R, d, dam, fmt, dq2, ldq, dqt, Rp, Rp, 0);
            uint8_t *q = t_host_of(dq, (size_t)R * ldq), *q2 = t_host_of(dq2, (size_t)R * ldq);
            uint8_t *qtt = t_host_of(dqt, (size_t)d * Rp);
            uint8_t *g1 = malloc((size_t)R * d), *g2 = malloc((size_t)R * d), *g3 = malloc((size_t)R * d);
            long padbad = 0;
            for (int r = 0; r < R; r++)
                for (int k = 0; k < d; k++) { g1[(size_t)r * d + k] = q[(size_t)r * ldq + k]; g2[(size_t)r * d + k] = q2[(size_t)r * ldq + k]; }
            for (int k = 0; k < d; k++) {
                for (int r = 0; r < R; r++) g3[(size_t)k * R + r] = qtt[(size_t)k * Rp + r];
                for (int r = R; r < Rp; r++) padbad += qtt[(size_t)k * Rp + r] != 0;
            }
            long m1, t1, m2, t2, m3, t3;
            code_diff(g1, qm.q, xc, qm.s, (long)R * d, 0, fmt, &m1, &t1);
            code_diff(g2, qm.q, xc, qm.s, (long)R * d, 0, fmt, &m2, &t2);
            code_diff(g3, qt.q, xt, qt.s, (long)R * d, 0, fmt, &m3, &t3);
            char det2[112];
            snprintf(det2, sizeof det2, "%s %s", det, fmt ? "e4m3" : "int8");
            row("quant_rows plain (vec)", det2, 0, 0, m1, t1);
            row("tile quantizer (vec)", det2, (double)padbad, 0, m2 + m3, t2 + t3);
            free(q); free(q2); free(qtt); free(g1); free(g2); free(g3); free(xc); free(xt);
            cudaFree(dq); cudaFree(dq2); cudaFree(dqt);
            halo_qmat_free(&qm); halo_qmat_free(&qt);
        }
        // the non-finite flag on the vector path
        if (ci < 2) {
            float inf = INFINITY;
            halo_bf16 hb;
            cuda_f32_to_bf16_host(&hb, &inf, 1);
            cudaMemcpy(dx + (size_t)(R / 2) * ld + d / 3, &hb, 2, cudaMemcpyHostToDevice);
            cudaMemset(dam, 0, 16);
            halo_cuda_absmax_rows(NULL, 0, dx, HALO_CUDA_BF16, ld, R, d, dam, NULL, dbad, 0);
            cudaMemcpy(am, dam, sizeof am, cudaMemcpyDeviceToHost);
            CHECK(((int *)am)[2] == 1 && isinf(am[0]), "%s: an Inf input must set the non-finite flag", det);
        }
        free(buf); cudaFree(dbuf); cudaFree(dam);
    }
    // 8-bit transposes: out [C][Rpad] = in^T with zero columns R..Rpad-1 (tile path, then the fallback)
    const int tc[][4] = {{94, 448, 448, 96}, {160, 448, 456, 160}, {50, 64, 72, 56}, {13, 77, 77, 16}};
    for (int ci = 0; ci < 4; ci++) {
        const int R = tc[ci][0], C = tc[ci][1], ld = tc[ci][2], Rpad = tc[ci][3];
        uint8_t *h = malloc((size_t)R * ld);
        for (size_t i = 0; i < (size_t)R * ld; i++) h[i] = (uint8_t)(t_rng_next(&rng) >> 24);
        uint8_t *din = t_dev_copy(h, (size_t)R * ld), *dout = dev_poison((size_t)C * Rpad);
        halo_cuda_transpose(din, HALO_CUDA_U8, ld, R, C, dout, HALO_CUDA_U8, Rpad, Rpad, 0);
        uint8_t *o = t_host_of(dout, (size_t)C * Rpad);
        long bad = 0;
        for (int c = 0; c < C; c++)
            for (int r = 0; r < Rpad; r++) bad += o[(size_t)c * Rpad + r] != (r < R ? h[(size_t)r * ld + c] : 0);
        char det[80];
        snprintf(det, sizeof det, "%dx%d ld %d -> pad %d", R, C, ld, Rpad);
        row("u8 transpose (tile8)", det, (double)bad, 0, 0, 0);
        free(h); free(o); cudaFree(din); cudaFree(dout);
    }
    // int32 dequantization, bf16 and accumulated fp32 outputs: exact against the same float operations on the host
    const int dc[][3] = {{37, 200, 208}, {9, 77, 77}};
    for (int ci = 0; ci < 2; ci++) {
        const int M = dc[ci][0], N = dc[ci][1], ld = dc[ci][2];
        int32_t *h = malloc(4 * (size_t)M * ld);
        float *acc0 = malloc(4 * (size_t)M * ld);
        for (size_t i = 0; i < (size_t)M * ld; i++) {
            h[i] = (int32_t)(t_rng_next(&rng) >> 40) - (1 << 23);
            acc0[i] = (float)t_rand_normal(&rng);
        }
        const float al = 3.1e-5f;
        int32_t *dC = t_dev_copy(h, 4 * (size_t)M * ld);
        float *dal = t_dev_copy(&al, 4), *df = t_dev_copy(acc0, 4 * (size_t)M * ld);
        halo_bf16 *db = dev_poison(2 * (size_t)M * ld);
        halo_cuda_dequant_i32(df, 1, ld, dC, ld, M, N, dal, NULL, NULL, 1, 0);
        halo_cuda_dequant_i32(db, 0, ld, dC, ld, M, N, dal, NULL, NULL, 0, 0);
        float *f = t_host_of(df, 4 * (size_t)M * ld);
        halo_bf16 *b = t_host_of(db, 2 * (size_t)M * ld);
        long bad = 0;
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                const size_t k = (size_t)i * ld + j;
                const float v = (float)h[k] * al;
                halo_bf16 vb;
                cuda_f32_to_bf16_host(&vb, &v, 1);
                bad += f[k] != acc0[k] + v;
                bad += memcmp(&b[k], &vb, 2) != 0;
            }
        char det[80];
        snprintf(det, sizeof det, "%dx%d ld %d", M, N, ld);
        row("int32 dequant (vec)", det, (double)bad, 0, 0, 0);
        free(h); free(acc0); free(f); free(b); cudaFree(dC); cudaFree(dal); cudaFree(df); cudaFree(db);
    }
}

// ---- 8-bit products --------------------------------------------------------------------------------------------
static void test_gemm(void) {
    const int M = 96, N = 160, K = 448;
    float *a = t_rand_vec(&rng, (size_t)M * K, 1.0), *b = t_rand_vec(&rng, (size_t)N * K, 0.05);
    for (int fmt = 0; fmt < 2; fmt++) {
        halo_qspec qs;
        memset(&qs, 0, sizeof qs);
        qs.fmt = fmt ? HALO_Q_E4M3 : HALO_Q_INT8;
        halo_qmat qa, qb;
        memset(&qa, 0, sizeof qa); memset(&qb, 0, sizeof qb);
        halo_quantize(&qa, a, M, K, K, 0, &qs, "A");
        halo_quantize(&qb, b, N, K, K, 0, &qs, "B");
        float *ref = malloc(sizeof(float) * M * N);
        halo_qgemm(&qa, &qb, ref, N, 0);
        float am[2] = {0, 0};
        for (size_t i = 0; i < (size_t)M * K; i++) am[0] = fmaxf(am[0], fabsf(a[i]));
        for (size_t i = 0; i < (size_t)N * K; i++) am[1] = fmaxf(am[1], fabsf(b[i]));
        float *dam = t_dev_copy(am, sizeof am), *dal = dev_poison(4);
        uint8_t *dA = t_dev_copy(qa.q, (size_t)M * K), *dB = t_dev_copy(qb.q, (size_t)N * K);
        halo_cuda_alpha(dal, dam, dam + 1, fmt, 0);
        float *alpha = t_host_of(dal, 4);
        CHECK(*alpha == qa.s[0] * qb.s[0], "alpha %.9g vs CPU sa*sb %.9g", *alpha, qa.s[0] * qb.s[0]);
        float *dC = dev_poison(sizeof(float) * M * N);
        int rc;
        if (fmt) {
            rc = halo_cuda_gemm_fp8(dC, 1, N, dA, K, dB, K, M, N, K, dal, 0, 0);
            CHECK(rc == HALO_OK, "fp8 gemm: %s", halo_error());
        } else {
            int32_t *dI = dev_poison(sizeof(int32_t) * M * N);
            rc = halo_cuda_gemm_s8(dI, N, (const int8_t *)dA, K, (const int8_t *)dB, K, M, N, K, 0);
            CHECK(rc == HALO_OK, "int8 gemm: %s", halo_error());
            int32_t *gi = t_host_of(dI, sizeof(int32_t) * M * N), *ci = malloc(sizeof(int32_t) * M * N);
            halo_gemm_s8s8s32((const int8_t *)qa.q, (const int8_t *)qb.q, ci, M, N, K);
            long bad = 0;
            for (long i = 0; i < (long)M * N; i++) bad += gi[i] != ci[i];
            row("int8 product int32 vs CPU", "96x160x448 exact", (double)bad, 0, 0, 0);
            halo_cuda_dequant_i32(dC, 1, N, dI, N, M, N, dal, NULL, NULL, 0, 0);
            free(gi); free(ci); cudaFree(dI);
        }
        float *g = t_host_of(dC, sizeof(float) * M * N);
        row(fmt ? "fp8 product vs halo_qgemm" : "int8 product vs halo_qgemm", "96x160x448, fp32 out",
            rel_l2_f(g, ref, (size_t)M * N), fmt ? 1e-3 : 1e-6, 0, 0);
        if (fmt) { // bf16 output and accumulation into fp32
            halo_bf16 *dCb = dev_poison(2 * M * N);
            halo_cuda_gemm_fp8(dCb, 0, N, dA, K, dB, K, M, N, K, dal, 0, 0);
            halo_bf16 *hb = t_host_of(dCb, 2 * M * N);
            float *gb = malloc(sizeof(float) * M * N);
            cuda_bf16_to_f32_host(gb, hb, (size_t)M * N);
            row("fp8 product vs halo_qgemm", "bf16 out", rel_l2_f(gb, ref, (size_t)M * N), 1e-2, 0, 0);
            halo_cuda_gemm_fp8(dC, 1, N, dA, K, dB, K, M, N, K, dal, 1, 0);
            float *g2 = t_host_of(dC, sizeof(float) * M * N);
            for (long i = 0; i < (long)M * N; i++) ref[i] *= 2;
            row("fp8 product vs halo_qgemm", "accumulate (2x)", rel_l2_f(g2, ref, (size_t)M * N), 1e-3, 0, 0);
            free(hb); free(gb); free(g2); cudaFree(dCb);
        }
        free(g); free(alpha); free(ref); cudaFree(dC); cudaFree(dam); cudaFree(dal); cudaFree(dA); cudaFree(dB);
        halo_qmat_free(&qa); halo_qmat_free(&qb);
    }
    free(a); free(b);
}

// ---- timed algorithm choice (halo_cuda_gemm_tune) -----------------------------------------------------------------
// The same products with cuBLASLt's first algorithm and with the fastest of 8 timed on the call's operands (a fresh
// plan cache each): INT8 identical; FP8 within fp32 reordering (1e-5); and an accumulating product's target holds
// D0 + P exactly once (the timing runs write scratch, never the target).
static void test_gemm_tune(void) {
    const int M = 1024, N = 2048, K = 512;   // the 1B model's k/v input gradient: small K, accumulated
    uint8_t *hA = malloc((size_t)M * K), *hB = malloc((size_t)N * K);
    for (size_t i = 0; i < (size_t)M * K; i++) hA[i] = (uint8_t)(t_rng_next(&rng) % 255 + 1) & 0xf7;   // bit 3 clear: no E4M3 NaN
    for (size_t i = 0; i < (size_t)N * K; i++) hB[i] = (uint8_t)(t_rng_next(&rng) % 255 + 1) & 0xf7;
    float *D0 = t_rand_vec(&rng, (size_t)M * N, 1.0), al = 1.0f / 4096;
    uint8_t *dA = t_dev_copy(hA, (size_t)M * K), *dB = t_dev_copy(hB, (size_t)N * K);
    float *dal = t_dev_copy(&al, 4);
    float *out[2][3];   // [tuned][fp8 accumulate, fp8 residual, int8]
    for (int tune = 0; tune < 2; tune++) {
        halo_cuda_gemm_shutdown();   // fresh plans
        halo_cuda_gemm_tune(tune);
        float *dD = t_dev_copy(D0, 4 * (size_t)M * N), *dR = dev_poison(4 * (size_t)M * N);
        int32_t *dI = dev_poison(4 * (size_t)M * N);
        int rc = halo_cuda_gemm_fp8(dD, 1, N, dA, K, dB, K, M, N, K, dal, 1, 0);
        if (!rc) rc = halo_cuda_gemm_fp8_res(dR, N, dD, dA, K, dB, K, M, N, K, dal, 0);   // D0 + 2P
        if (!rc) rc = halo_cuda_gemm_s8(dI, N, (const int8_t *)dA, K, (const int8_t *)dB, K, M, N, K, 0);
        CHECK(rc == HALO_OK, "tuned products: %s", halo_error());
        out[tune][0] = t_host_of(dD, 4 * (size_t)M * N);
        out[tune][1] = t_host_of(dR, 4 * (size_t)M * N);
        int32_t *gi = t_host_of(dI, 4 * (size_t)M * N);
        out[tune][2] = malloc(4 * (size_t)M * N);
        for (size_t i = 0; i < (size_t)M * N; i++) out[tune][2][i] = (float)gi[i];
        free(gi); cudaFree(dD); cudaFree(dR); cudaFree(dI);
    }
    halo_cuda_gemm_tune(0);   // the rest of this file compares paths bit for bit: one algorithm per shape
    const size_t n = (size_t)M * N;
    double e_acc = 0, e_once = 0;
    for (size_t i = 0; i < n; i++) {   // P from the first choice's D0 + P; the tuned target must hold D0 + P, not D0 + kP
        const double P = (double)out[0][0][i] - D0[i];
        e_acc = fmax(e_acc, fabs((double)out[1][0][i] - out[0][0][i]));
        e_once = fmax(e_once, fabs((double)out[1][1][i] - (D0[i] + 2 * P)));
    }
    double s = 0;
    for (size_t i = 0; i < n; i++) s = fmax(s, fabs((double)out[0][0][i]));
    row("timed algorithm choice", "fp8 1024x2048x512 accumulate vs first choice", e_acc / s, 1e-5, 0, 0);
    row("timed algorithm choice", "fp8 residual form: D0 + 2P, once", e_once / s, 1e-5, 0, 0);
    long bad = 0;
    for (size_t i = 0; i < n; i++) bad += out[1][2][i] != out[0][2][i];
    row("timed algorithm choice", "int8 1024x2048x512 identical", (double)bad, 0, 0, 0);
    for (int t = 0; t < 2; t++)
        for (int j = 0; j < 3; j++) free(out[t][j]);
    free(hA); free(hB); free(D0); cudaFree(dA); cudaFree(dB); cudaFree(dal);
}

// ---- INT8 with the dequantization in the epilogue (int8_gemm.cu) ------------------------------------------------
// The own wgmma kernel against cuBLASLt's int32 product + halo_cuda_dequant_i32 (which test_gemm checks against the
// CPU): equal bit for bit in every output form, with partial tiles (M, N, K not multiples of 128 / 256 / 128), an
// output narrower than the product (No < N, one with a last 8-column chunk cut short), more tiles than SMs (the
// persistent loop), and leading dimensions with and without 16-byte bf16 rows; the columns past No keep their poison.
// Seeded random INT8 codes in -127..127: a host copy (*host, freed by the caller) and a device copy (returned).
static int8_t *rand_codes_dev(size_t n, int8_t **host) {
    int8_t *h = malloc(n);
    for (size_t i = 0; i < n; i++) h[i] = (int8_t)((int)(t_rng_next(&rng) % 255) - 127);
    *host = h;
    return t_dev_copy(h, n);
}

// Whether the own INT8 kernel takes a plain shape here; else says so (as `what`: skipped) and returns 0. A compute
// capability 9 device must take it.
static int own_int8_kernel(const char *what) {
    static _Alignas(16) int8_t probe[16];   // only its alignment is looked at
    if (halo_cuda_gemm_s8_dq_ok(probe, 1, 512, NULL, probe, 256, probe, 256, 384, 512, 256, 384, 512)) return 1;
    int dev = 0, major = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    CHECK(major != 9, "the own INT8 kernel refused a plain shape on a compute capability 9 device");
    printf("%s: not on this device (compute capability %d), skipped\n", what, major);
    return 0;
}

// One product of a multi-product test: random codes A [a_rows][K] and B [b_rows][K] (A drawn first; host copies in
// *hA, *hB) and its scale on the device (*dal)
static halo_cuda_s8_seg seg_rand(int a_rows, int b_rows, int K, float alpha, int8_t **hA, int8_t **hB, float **dal) {
    *dal = t_dev_copy(&alpha, 4);
    const int8_t *A = rand_codes_dev((size_t)a_rows * K, hA), *B = rand_codes_dev((size_t)b_rows * K, hB);
    return (halo_cuda_s8_seg){A, B, K, K, K, *dal};
}
// Frees what seg_rand made for nseg products
static void segs_free(const halo_cuda_s8_seg *seg, int8_t **hA, int8_t **hB, float **dal, int nseg) {
    for (int i = 0; i < nseg; i++) {
        free(hA[i]); free(hB[i]); cudaFree((void *)seg[i].A); cudaFree((void *)seg[i].B); cudaFree(dal[i]);
    }
}

// Rows of the first No columns of two device outputs [Mo][ldd] (fp32 or bf16) that differ, into the table as `check`
// / `detail` (bound 0); the columns past No must match too (both poisoned or both holding the same addend).
static void rows_identical(const char *check, const char *detail, const void *want, const void *own, int f32, long Mo,
                           long ldd, long No) {
    const size_t es = f32 ? 4 : 2, ob = es * (size_t)Mo * ldd;
    uint8_t *hw = t_host_of(want, ob), *ho = t_host_of(own, ob);
    long bad = 0, pad_bad = 0;
    for (long r = 0; r < Mo; r++) {
        bad += memcmp(hw + r * ldd * es, ho + r * ldd * es, No * es) != 0;
        pad_bad += memcmp(hw + (r * ldd + No) * es, ho + (r * ldd + No) * es, (ldd - No) * es) != 0;
    }
    row(check, detail, (double)bad, 0, 0, 0);   // error: rows that differ
    CHECK(pad_bad == 0, "%s: %ld rows written past column %ld", detail, pad_bad, No);
    free(hw); free(ho);
}

static void test_gemm_s8_dq(void) {
    static const int shapes[][5] = {   // M, N, K, Mo, No
        {384, 512, 256, 384, 512}, {300, 400, 208, 300, 392}, {4096, 2048, 512, 4096, 2048}, {130, 272, 4096, 129, 270}};
    if (!own_int8_kernel("own INT8 kernel")) return;
    const float al = 1.37f / 4096;
    float *dal = t_dev_copy(&al, 4);
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        const int M = shapes[c][0], N = shapes[c][1], K = shapes[c][2], Mo = shapes[c][3], No = shapes[c][4];
        const long ldd = No + (c % 2 ? 6 : c ? 10 : 8);   // bf16: 16-byte row stores where ldd % 8 == 0 (c = 0, 2, 3)
        int8_t *hA, *hB, *dA = rand_codes_dev((size_t)M * K, &hA), *dB = rand_codes_dev((size_t)N * K, &hB);
        int32_t *dI = dev_poison(4 * (size_t)M * N);
        int rc = halo_cuda_gemm_s8(dI, N, dA, K, dB, K, M, N, K, 0);
        CHECK(rc == HALO_OK, "int8 gemm: %s", halo_error());
        float *R = t_rand_vec(&rng, (size_t)Mo * ldd, 100.0);
        const size_t ob = 4 * (size_t)Mo * ldd;
        float *dR = t_dev_copy(R, ob);
        static const char *form[5] = {"bf16", "fp32", "fp32 +=", "fp32 res +", "bf16 res +"};
        for (int f = 0; f < 5; f++) {
            const int f32 = f > 0 && f < 4, acc = f == 2;
            const float *res = f >= 3 ? dR : NULL;
            void *ref = f == 2 ? t_dev_copy(R, ob) : dev_poison(ob), *own = f == 2 ? t_dev_copy(R, ob) : dev_poison(ob);
            if (f == 3) halo_cuda_dequant_i32_res(ref, ldd, dI, N, Mo, No, dal, res, 0);
            else if (f == 4) {   // the fp32 sum, rounded to bf16 on the host (the columns past No keep the poison)
                float *t = dev_poison(ob);
                halo_cuda_dequant_i32_res(t, ldd, dI, N, Mo, No, dal, res, 0);
                float *ht = t_host_of(t, ob);
                halo_bf16 *hb = t_host_of(ref, 2 * (size_t)Mo * ldd);
                for (long r = 0; r < Mo; r++) cuda_f32_to_bf16_host(hb + r * ldd, ht + r * ldd, (size_t)No);
                cudaMemcpy(ref, hb, 2 * (size_t)Mo * ldd, cudaMemcpyHostToDevice);
                free(ht); free(hb); cudaFree(t);
            } else halo_cuda_dequant_i32(ref, f32, ldd, dI, N, Mo, No, dal, NULL, NULL, acc, 0);
            rc = halo_cuda_gemm_s8_dq(own, f32, ldd, res, acc, dA, K, dB, K, M, N, K, Mo, No, dal, NULL, 0);
            CHECK(rc == HALO_OK, "own int8 gemm: %s", halo_error());
            char detail[64];
            snprintf(detail, sizeof detail, "%dx%dx%d -> %dx%d %s", M, N, K, Mo, No, form[f]);
            rows_identical("own int8 gemm vs int32+dequant", detail, ref, own, f32, Mo, ldd, No);
            cudaFree(ref); cudaFree(own);
        }
        free(hA); free(hB); free(R); cudaFree(dA); cudaFree(dB); cudaFree(dI); cudaFree(dR);
    }
    cudaFree(dal);
}

// The own kernel with a LoRA adapter's U B^T added in the epilogue (halo_cuda_gemm_s8_dq_lora) against the plain
// kernel's fp32 values + U B^T in float64: fp32 forms (=, +=, res +) within 1e-6 relative of the reference and the
// added term (own - plain) within 1e-5 of U B^T, the bf16 form within its rounding; U B^T about as large as the product
// (so a missing term fails), ranks 8, 16 and 32, partial tiles and Mo < M; the columns past No keep their poison.
static void test_gemm_s8_dq_lora(void) {
    static const int shapes[][6] = {   // M, N, K, Mo, No, rank
        {384, 512, 256, 384, 512, 16}, {300, 400, 208, 290, 392, 8}, {2048, 1024, 512, 2048, 1024, 32}};
    if (!own_int8_kernel("own INT8 kernel + LoRA")) return;
    const unsigned long long saved = rng;   // its own draws: the tests after it keep their inputs
    rng = 0x10BA5EEDULL;
    const float al = 1.37f / 4096;
    float *dal = t_dev_copy(&al, 4);
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        const int M = shapes[c][0], N = shapes[c][1], K = shapes[c][2], Mo = shapes[c][3], No = shapes[c][4],
                  r = shapes[c][5];
        const long ldd = No + 8;
        int8_t *hA, *hB, *dA = rand_codes_dev((size_t)M * K, &hA), *dB = rand_codes_dev((size_t)N * K, &hB);
        const size_t ob = 4 * (size_t)Mo * ldd;
        float *P = dev_poison(ob);   // the plain product, fp32
        CHECK(halo_cuda_gemm_s8_dq(P, 1, ldd, NULL, 0, dA, K, dB, K, M, N, K, Mo, No, dal, NULL, 0) == HALO_OK,
              "own int8 gemm: %s", halo_error());
        float *hp = t_host_of(P, ob);
        double pr = 0;
        for (int i = 0; i < Mo; i++)
            for (int j = 0; j < No; j++) pr += (double)hp[(size_t)i * ldd + j] * hp[(size_t)i * ldd + j];
        const double prms = sqrt(pr / ((double)Mo * No));
        float *U = t_rand_vec(&rng, (size_t)Mo * r, prms / sqrt((double)r)), *Bl = t_rand_vec(&rng, (size_t)No * r, 1.0);
        t_round_bf16(U, (size_t)Mo * r);
        t_round_bf16(Bl, (size_t)No * r);
        halo_bf16 *dU = t_dev_bf16(U, (size_t)Mo * r), *dBl = t_dev_bf16(Bl, (size_t)No * r);
        double *ub = malloc(8 * (size_t)Mo * No);
        for (int i = 0; i < Mo; i++)
            for (int j = 0; j < No; j++) {
                double sum = 0;
                for (int k = 0; k < r; k++) sum += (double)U[(size_t)i * r + k] * Bl[(size_t)j * r + k];
                ub[(size_t)i * No + j] = sum;
            }
        float *R = t_rand_vec(&rng, (size_t)Mo * ldd, prms);
        float *dR = t_dev_copy(R, ob);
        static const char *form[4] = {"bf16", "fp32", "fp32 +=", "fp32 res +"};
        for (int f = 0; f < 4; f++) {
            const int f32 = f > 0, acc = f == 2;
            const float *res = f == 3 ? dR : NULL;
            void *own = f == 2 ? t_dev_copy(R, ob) : dev_poison(ob);
            const int rc = halo_cuda_gemm_s8_dq_lora(own, f32, ldd, res, acc, dA, K, dB, K, M, N, K, Mo, No, dal, dU,
                                                     dBl, r, 0);
            CHECK(rc == HALO_OK, "own int8 gemm + LoRA: %s", halo_error());
            float *ho = f32 ? t_host_of(own, ob) : NULL;
            halo_bf16 *hb = f32 ? NULL : t_host_of(own, 2 * (size_t)Mo * ldd);
            float *hv = f32 ? NULL : malloc(4 * (size_t)Mo * ldd);
            if (!f32) cuda_bf16_to_f32_host(hv, hb, (size_t)Mo * ldd);
            const float *got = f32 ? ho : hv;
            double e = 0, n2 = 0, et = 0, t2 = 0;
            long pad_bad = 0;
            for (int i = 0; i < Mo; i++) {
                for (int j = 0; j < No; j++) {
                    const size_t at = (size_t)i * ldd + j;
                    const double base = (f >= 2 ? R[at] : 0) + (double)hp[at], want = base + ub[(size_t)i * No + j];
                    e += (got[at] - want) * (got[at] - want);
                    n2 += want * want;
                    const double term = got[at] - base;
                    et += (term - ub[(size_t)i * No + j]) * (term - ub[(size_t)i * No + j]);
                    t2 += ub[(size_t)i * No + j] * ub[(size_t)i * No + j];
                }
                // past No: the poison (0xFF bytes) or, for +=, R untouched
                for (long j = No; j < ldd; j++) {
                    const size_t at = (size_t)i * ldd + j;
                    if (f == 2) pad_bad += got[at] != R[at];
                    else if (f32) pad_bad += ((const uint32_t *)ho)[at] != 0xFFFFFFFFu;
                    else pad_bad += ((const uint16_t *)hb)[at] != 0xFFFFu;
                }
            }
            char detail[64];
            snprintf(detail, sizeof detail, "%dx%dx%d -> %dx%d r %d %s", M, N, K, Mo, No, r, form[f]);
            row("own int8 gemm + LoRA U B^T", detail, sqrt(e / n2), f32 ? 1e-6 : 3e-3, 0, 0);
            if (f32) row("  the added term vs U B^T", detail, sqrt(et / t2), 1e-5, 0, 0);
            CHECK(pad_bad == 0, "%s: %ld values written past column %d", detail, pad_bad, No);
            free(ho); free(hb); free(hv);
            cudaFree(own);
        }
        free(hA); free(hB); free(hp); free(U); free(Bl); free(ub); free(R);
        cudaFree(dA); cudaFree(dB); cudaFree(P); cudaFree(dU); cudaFree(dBl); cudaFree(dR);
    }
    cudaFree(dal);
    rng = saved;
}

// The own kernel with the rows of its output rotated by a block-diagonal H_B in the epilogue (HALO's H_m^T after the
// G and E_X products, blocks of a power of two <= 256) against (a) cuBLASLt's int32 product + halo_cuda_had_rows (bit
// for bit, bf16 and fp32 forms) and (b) the CPU: float(c) * alpha, then halo_hadamard_rows (fp32 forms, bit for bit;
// += adds the rotated value to the old one as the CPU layer's accumulation does).
static void test_gemm_s8_dq_rot(void) {
    static const int cases[][6] = {   // M, N, K, Mo, No, block
        {384, 512, 256, 384, 512, 256}, {300, 1024, 208, 300, 1024, 64}, {130, 400, 512, 129, 392, 8},
        {256, 768, 128, 256, 768, 2}, {512, 4096, 1024, 512, 4096, 128}};
    if (!own_int8_kernel("own INT8 kernel with rotation")) return;
    const float al = 0.73f / 8192;
    float *dal = t_dev_copy(&al, 4);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int M = cases[c][0], N = cases[c][1], K = cases[c][2], Mo = cases[c][3], No = cases[c][4], B = cases[c][5];
        const long ldd = No + 8;
        halo_cuda_had h;
        halo_hadamard hc;
        CHECK(halo_cuda_had_plan(&h, No, B) == HALO_OK && halo_hadamard_plan(&hc, No, B) == HALO_OK, "plan %d/%d: %s",
              No, B, halo_error());
        CHECK(halo_cuda_gemm_s8_dq_rot_ok(&h, No), "block %d over %d refused", B, No);
        int8_t *hA, *hB, *dA = rand_codes_dev((size_t)M * K, &hA), *dB = rand_codes_dev((size_t)N * K, &hB);
        int32_t *dI = dev_poison(4 * (size_t)M * N);
        CHECK(halo_cuda_gemm_s8(dI, N, dA, K, dB, K, M, N, K, 0) == HALO_OK, "int8 gemm: %s", halo_error());
        int32_t *hI = t_host_of(dI, 4 * (size_t)M * N);
        float *R = t_rand_vec(&rng, (size_t)Mo * ldd, 10.0);
        const size_t ob = 4 * (size_t)Mo * ldd;
        // the CPU's values: dequantize, rotate the rows (transpose 1: x H^T), then = or +=
        float *cpu = malloc(ob);
        for (long r = 0; r < Mo; r++)
            for (long j = 0; j < ldd; j++) cpu[r * ldd + j] = j < No ? (float)hI[r * N + j] * al : 0.f;
        halo_hadamard_rows(&hc, cpu, Mo, ldd, 1);
        static const char *form[3] = {"bf16", "fp32", "fp32 +="};
        for (int f = 0; f < 3; f++) {
            const int f32 = f > 0, acc = f == 2;
            void *ref = dev_start(acc, R, ob), *own = dev_start(acc, R, ob);
            halo_cuda_had_rows(&h, 1, dI, HALO_CUDA_I32, N, dal, ref, f32, ldd, acc, Mo, 0);
            int rc = halo_cuda_gemm_s8_dq(own, f32, ldd, NULL, acc, dA, K, dB, K, M, N, K, Mo, No, dal, &h, 0);
            CHECK(rc == HALO_OK, "own int8 gemm with rotation: %s", halo_error());
            uint8_t *hr = t_host_of(ref, ob), *ho = t_host_of(own, ob);
            const size_t es = f32 ? 4 : 2;
            long bad = 0, bad_cpu = 0, pad_bad = 0;
            for (long r = 0; r < Mo; r++) {
                bad += memcmp(hr + r * ldd * es, ho + r * ldd * es, No * es) != 0;
                pad_bad += memcmp(hr + (r * ldd + No) * es, ho + (r * ldd + No) * es, (ldd - No) * es) != 0;
                if (f32)
                    for (long j = 0; j < No; j++) {
                        const float want = acc ? R[r * ldd + j] + cpu[r * ldd + j] : cpu[r * ldd + j];
                        float got;
                        memcpy(&got, ho + (r * ldd + j) * 4, 4);
                        if (memcmp(&got, &want, 4)) { bad_cpu++; break; }
                    }
            }
            char detail[80];
            snprintf(detail, sizeof detail, "%dx%dx%d -> %dx%d H_%d %s", M, N, K, Mo, No, B, form[f]);
            row("own int8 gemm + H_B vs int32+had_rows", detail, (double)bad, 0, 0, 0);   // error: rows that differ
            if (f32) row("own int8 gemm + H_B vs CPU rotation", detail, (double)bad_cpu, 0, 0, 0);
            CHECK(pad_bad == 0, "%s: %ld rows written past column %d", detail, pad_bad, No);
            free(hr); free(ho); cudaFree(ref); cudaFree(own);
        }
        free(hA); free(hB); free(hI); free(R); free(cpu); cudaFree(dA); cudaFree(dB); cudaFree(dI);
        halo_cuda_had_free(&h);
    }
    cudaFree(dal);
}

// A group of products in one launch (halo_cuda_gemm_s8_dq_group: q, k and v's input gradients into one sum) against
// the same products run one after the other (the first = or +=, the rest +=), bit for bit: 2 to 4 segments with their
// own K (not multiples of 128 too) and scales, partial tiles, Mo < M, more tiles than SMs, with and without the rows'
// H_B; the columns past No keep their poison (or addend). Also: 5 segments and the switch off are refused.
static void test_gemm_s8_dq_group(void) {
    static const int cases[][8] = {   // M, N, Mo, No, block (0: none), K of up to 4 segments (0: none)
        {300, 400, 300, 392, 0, 256, 208, 96},  {384, 512, 384, 512, 64, 512, 128, 0},
        {4096, 2048, 4096, 2048, 0, 2048, 512, 512}, {256, 256, 250, 256, 256, 128, 64, 32}};
    if (!own_int8_kernel("own INT8 kernel, grouped products")) return;
    const unsigned long long saved = rng;   // its own draws: the tests after it keep their inputs
    rng = 0x6A0C0FFEULL;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int M = cases[c][0], N = cases[c][1], Mo = cases[c][2], No = cases[c][3], B = cases[c][4];
        int nseg = 0, Ks[4];
        for (int i = 5; i < 8; i++) if (cases[c][i]) Ks[nseg++] = cases[c][i];
        if (c == 3) Ks[nseg++] = 160;   // four segments
        const long ldd = No + 8;
        halo_cuda_had h;
        if (B) CHECK(halo_cuda_had_plan(&h, No, B) == HALO_OK, "plan %d/%d: %s", No, B, halo_error());
        halo_cuda_s8_seg seg[4];
        int8_t *hA[4], *hB[4];
        float *dal[4];
        for (int i = 0; i < nseg; i++)
            seg[i] = seg_rand(M, N, Ks[i], (0.5f + 0.37f * i) / 4096, &hA[i], &hB[i], &dal[i]);
        CHECK(halo_cuda_gemm_s8_dq_group_ok(NULL, ldd, seg, nseg, M, N, Mo, No), "group of %d refused (case %zu)", nseg, c);
        float *R = t_rand_vec(&rng, (size_t)Mo * ldd, 10.0);
        const size_t ob = 4 * (size_t)Mo * ldd;
        for (int acc = 0; acc < 2; acc++) {
            float *ref = dev_start(acc, R, ob), *own = dev_start(acc, R, ob);
            for (int i = 0; i < nseg; i++)
                CHECK(halo_cuda_gemm_s8_dq(ref, 1, ldd, NULL, acc || i > 0, seg[i].A, Ks[i], seg[i].B, Ks[i], M, N, Ks[i],
                                           Mo, No, dal[i], B ? &h : NULL, 0) == HALO_OK, "own int8 gemm: %s", halo_error());
            CHECK(halo_cuda_gemm_s8_dq_group(own, ldd, acc, seg, nseg, M, N, Mo, No, B ? &h : NULL, 0) == HALO_OK,
                  "grouped int8 gemm: %s", halo_error());
            char detail[80];
            snprintf(detail, sizeof detail, "%dx%d -> %dx%d, %d K%s%s", M, N, Mo, No, nseg, B ? ", H_B" : "",
                     acc ? ", +=" : "");
            rows_identical("int8 group vs one by one", detail, ref, own, 1, Mo, ldd, No);
            cudaFree(ref); cudaFree(own);
        }
        segs_free(seg, hA, hB, dal, nseg);
        free(R);
        if (B) halo_cuda_had_free(&h);
    }
    halo_cuda_s8_seg five[5];
    static _Alignas(16) int8_t probe[16];   // only its alignment is looked at
    for (int i = 0; i < 5; i++) five[i] = (halo_cuda_s8_seg){probe, probe, 256, 256, 256, NULL};
    const int was = halo_cuda_gemm_s8_dq_grouping();
    CHECK(!halo_cuda_gemm_s8_dq_group_ok(NULL, 512, five, 5, 384, 512, 384, 512) &&
          halo_cuda_gemm_s8_dq_group_ok(NULL, 512, five, 4, 384, 512, 384, 512), "group: 5 segments taken or 4 refused");
    halo_cuda_gemm_s8_dq_group_on(0);
    CHECK(!halo_cuda_gemm_s8_dq_group_ok(NULL, 512, five, 2, 384, 512, 384, 512), "group taken with the switch off");
    halo_cuda_gemm_s8_dq_group_on(was);
    rng = saved;
}

// Products stacked by rows in one launch (halo_cuda_gemm_s8_dq_stack: q's, k's and v's weight gradients into one
// buffer) against the same products one by one into their rows, bit for bit: 2 to 4 products, own K and scales, the
// last one's rows not a multiple of 128, partial column tiles, with and without the rows' H_B, = and +=; the columns
// past No keep their poison (or addend). Also: rows of a product before the last that are not a multiple of 128 are
// refused.
static void test_gemm_s8_dq_stack(void) {
    static const int cases[][8] = {   // N, No, block (0: none), rows of up to 4 products (0: none), K
        {400, 392, 0, 256, 128, 300, 0, 208}, {512, 512, 64, 2048, 512, 512, 0, 256}, {256, 256, 256, 128, 128, 256, 130, 128}};
    if (!own_int8_kernel("own INT8 kernel, stacked products")) return;
    const unsigned long long saved = rng;   // its own draws: the tests after it keep their inputs
    rng = 0x57ACC0DEULL;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int N = cases[c][0], No = cases[c][1], B = cases[c][2];
        int nseg = 0, rows[4], Mo = 0;
        for (int i = 3; i < 7; i++) if (cases[c][i]) { rows[nseg++] = cases[c][i]; Mo += cases[c][i]; }
        const long ldd = No + 8;
        halo_cuda_had h;
        if (B) CHECK(halo_cuda_had_plan(&h, No, B) == HALO_OK, "plan %d/%d: %s", No, B, halo_error());
        halo_cuda_s8_seg seg[4];
        int8_t *hA[4], *hB[4];
        float *dal[4];
        for (int i = 0; i < nseg; i++)
            seg[i] = seg_rand(rows[i], N, cases[c][7] + 16 * i, (0.6f + 0.29f * i) / 4096, &hA[i], &hB[i], &dal[i]);
        CHECK(halo_cuda_gemm_s8_dq_stack_ok(NULL, ldd, seg, rows, nseg, N, No), "stack of %d refused (case %zu)", nseg, c);
        float *R = t_rand_vec(&rng, (size_t)Mo * ldd, 10.0);
        const size_t ob = 4 * (size_t)Mo * ldd;
        for (int acc = 0; acc < 2; acc++) {
            float *ref = dev_start(acc, R, ob), *own = dev_start(acc, R, ob);
            for (int i = 0, r0 = 0; i < nseg; r0 += rows[i], i++)
                CHECK(halo_cuda_gemm_s8_dq(ref + (size_t)r0 * ldd, 1, ldd, NULL, acc, seg[i].A, seg[i].K, seg[i].B,
                                           seg[i].K, rows[i], N, seg[i].K, rows[i], No, dal[i], B ? &h : NULL, 0) == HALO_OK,
                      "own int8 gemm: %s", halo_error());
            CHECK(halo_cuda_gemm_s8_dq_stack(own, ldd, acc, seg, rows, nseg, N, No, B ? &h : NULL, 0) == HALO_OK,
                  "stacked int8 gemm: %s", halo_error());
            char detail[80];
            snprintf(detail, sizeof detail, "%d products, %d rows x %d%s%s", nseg, Mo, No, B ? ", H_B" : "",
                     acc ? ", +=" : "");
            rows_identical("int8 stack vs one by one", detail, ref, own, 1, Mo, ldd, No);
            cudaFree(ref); cudaFree(own);
        }
        segs_free(seg, hA, hB, dal, nseg);
        free(R);
        if (B) halo_cuda_had_free(&h);
    }
    static _Alignas(16) int8_t probe[16];   // only its alignment is looked at
    const halo_cuda_s8_seg two[2] = {{probe, probe, 256, 256, 256, NULL}, {probe, probe, 256, 256, 256, NULL}};
    const int odd[2] = {200, 128}, even[2] = {256, 200};
    CHECK(!halo_cuda_gemm_s8_dq_stack_ok(NULL, 512, two, odd, 2, 512, 512) &&
          halo_cuda_gemm_s8_dq_stack_ok(NULL, 512, two, even, 2, 512, 512),
          "stack: a first product of 200 rows taken, or a last one refused");
    rng = saved;
}

// The fp32 product that also sums the squares of what it writes (halo_cuda_gemm_s8_dq_sumsq: a weight gradient's share
// of the gradient norm): D bit for bit halo_cuda_gemm_s8_dq's, = and += (onto random values), with H_B, partial tiles
// (Mo, No short of M, N); the sum against float64 over D's Mo x No values as written (1e-5: float sums a thread),
// added to what *sumsq held.
static void test_gemm_s8_dq_sumsq(void) {
    static const int cases[][6] = {   // M, N, K, Mo, No, block (0: none)
        {384, 512, 256, 384, 512, 0}, {300, 400, 208, 290, 392, 0}, {256, 512, 320, 256, 512, 64}};
    if (!own_int8_kernel("own INT8 kernel, sum of squares")) return;
    const unsigned long long saved = rng;   // its own draws: the tests after it keep their inputs
    rng = 0x55E0F5ULL;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int M = cases[c][0], N = cases[c][1], K = cases[c][2], Mo = cases[c][3], No = cases[c][4], B = cases[c][5];
        const long ldd = No + 8;
        halo_cuda_had h;
        if (B) CHECK(halo_cuda_had_plan(&h, No, B) == HALO_OK, "plan %d/%d: %s", No, B, halo_error());
        int8_t *hA, *hB;
        float *dal;
        const halo_cuda_s8_seg sg = seg_rand(M, N, K, 0.83f / 4096, &hA, &hB, &dal);
        float *R = t_rand_vec(&rng, (size_t)Mo * ldd, 3.0);
        const size_t ob = 4 * (size_t)Mo * ldd;
        for (int acc = 0; acc < 2; acc++) {
            float *ref = dev_start(acc, R, ob), *own = dev_start(acc, R, ob);
            const double start = 0.25 + acc;
            double *dss = t_dev_copy(&start, sizeof start);
            CHECK(halo_cuda_gemm_s8_dq(ref, 1, ldd, NULL, acc, sg.A, K, sg.B, K, M, N, K, Mo, No, dal, B ? &h : NULL,
                                       0) == HALO_OK, "own int8 gemm: %s", halo_error());
            CHECK(halo_cuda_gemm_s8_dq_sumsq(own, ldd, acc, sg.A, K, sg.B, K, M, N, K, Mo, No, dal, B ? &h : NULL, dss,
                                             0) == HALO_OK, "own int8 gemm with sumsq: %s", halo_error());
            char detail[80];
            snprintf(detail, sizeof detail, "%dx%d of %dx%dx%d%s%s", Mo, No, M, N, K, B ? ", H_B" : "", acc ? ", +=" : "");
            rows_identical("int8 sumsq: D vs plain", detail, ref, own, 1, Mo, ldd, No);
            float *hd = t_host_of(own, ob);
            double want = 0, got = 0;
            for (long r = 0; r < Mo; r++)
                for (long j = 0; j < No; j++) want += (double)hd[r * ldd + j] * hd[r * ldd + j];
            CHECK(cudaMemcpy(&got, dss, sizeof got, cudaMemcpyDeviceToHost) == cudaSuccess, "copy the sum back");
            row("int8 sumsq: vs float64", detail, fabs(got - start - want) / want, 1e-5, 0, 0);
            free(hd);
            cudaFree(ref); cudaFree(own); cudaFree(dss);
        }
        segs_free(&sg, &hA, &hB, &dal, 1);
        free(R);
        if (B) halo_cuda_had_free(&h);
    }
    rng = saved;
}

// down_proj's input-gradient product taking gate's and up's E_Y amax (halo_cuda_gemm_s8_dq_swiglu) against the plain
// bf16 product followed by the SwiGLU backward's amax-only pass (cuda_swiglu_backward_amax): D bit for bit, both amaxes
// bit for bit, the same NaN / Inf flags; M not a multiple of 128, H_B on D's rows, and a NaN gate value (both flags).
// Also: an F that is not D's width is refused.
static void test_gemm_s8_dq_swiglu(void) {
    static const int cases[][5] = {   // M, F (= N = No), K, block (0: none), a NaN in gate
        {384, 512, 256, 0, 0}, {300, 768, 192, 0, 0}, {256, 512, 320, 64, 0}, {256, 1024, 128, 0, 1}};
    if (!own_int8_kernel("own INT8 kernel, SwiGLU amax")) return;
    const unsigned long long saved = rng;   // its own draws: the tests after it keep their inputs
    rng = 0x5161AULL;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int M = cases[c][0], F = cases[c][1], K = cases[c][2], B = cases[c][3];
        halo_cuda_had h;
        if (B) CHECK(halo_cuda_had_plan(&h, F, B) == HALO_OK, "plan %d/%d: %s", F, B, halo_error());
        int8_t *hA, *hB;
        float *dal;
        const halo_cuda_s8_seg sg = seg_rand(M, F, K, 0.83f / 4096, &hA, &hB, &dal);
        float *gu = t_rand_vec(&rng, (size_t)M * 2 * F, 2.0);
        if (cases[c][4]) gu[(size_t)(M / 2) * 2 * F + F / 3] = NAN;
        void *dgu = t_dev_bf16(gu, (size_t)M * 2 * F);
        const size_t ob = 2 * (size_t)M * F;
        halo_bf16 *ref = dev_poison(ob), *own = dev_poison(ob);
        const float zero[4] = {0, 0, 0, 0};
        const int izero[4] = {0, 0, 0, 0};
        float *am = t_dev_copy(zero, sizeof zero);   // ref gate, ref up, own gate, own up
        int *nf = t_dev_copy(izero, sizeof izero);
        CHECK(halo_cuda_gemm_s8_dq(ref, 0, F, NULL, 0, sg.A, K, sg.B, K, M, F, K, M, F, dal, B ? &h : NULL, 0) ==
                  HALO_OK, "own int8 gemm: %s", halo_error());
        cuda_swiglu_backward_amax(NULL, ref, dgu, M, F, am, am + 1, nf, nf + 1, 0);
        const halo_cuda_swiglu_amax sw = {dgu, 2L * F, F, am + 2, am + 3, nf + 2, nf + 3};
        CHECK(halo_cuda_gemm_s8_dq_swiglu(own, F, sg.A, K, sg.B, K, M, F, K, M, F, dal, B ? &h : NULL, &sw, 0) ==
                  HALO_OK, "own int8 gemm with the SwiGLU amax: %s", halo_error());
        char detail[80];
        snprintf(detail, sizeof detail, "%dx%d, K %d%s%s", M, F, K, B ? ", H_B" : "", cases[c][4] ? ", NaN gate" : "");
        rows_identical("int8 SwiGLU amax: D vs plain", detail, ref, own, 0, M, F, F);
        float ha[4];
        int hn[4];
        CHECK(cudaMemcpy(ha, am, sizeof ha, cudaMemcpyDeviceToHost) == cudaSuccess &&
                  cudaMemcpy(hn, nf, sizeof hn, cudaMemcpyDeviceToHost) == cudaSuccess, "copy the amaxes back");
        printf("   %s: amax gate %.9g / %.9g, up %.9g / %.9g, flags %d %d / %d %d\n", detail, ha[0], ha[2], ha[1], ha[3],
               hn[0], hn[1], hn[2], hn[3]);
        row("int8 SwiGLU amax: bits vs pass", detail,
            (double)(memcmp(&ha[0], &ha[2], 4) != 0) + (memcmp(&ha[1], &ha[3], 4) != 0), 0, 0, 0);
        row("int8 SwiGLU amax: flags vs pass", detail,
            (double)(hn[0] != hn[2]) + (hn[1] != hn[3]) + (hn[2] != cases[c][4]) + (hn[3] != cases[c][4]), 0, 0, 0);
        cudaFree(ref); cudaFree(own); cudaFree(am); cudaFree(nf); cudaFree(dgu);
        free(gu);
        segs_free(&sg, &hA, &hB, &dal, 1);
        if (B) halo_cuda_had_free(&h);
    }
    static _Alignas(16) halo_bf16 probe[16];   // only its alignment is looked at
    float dummy;
    const halo_cuda_swiglu_amax bad = {probe, 1024, 256, &dummy, &dummy, NULL, NULL};
    CHECK(!halo_cuda_gemm_s8_dq_swiglu_ok(probe, 512, 512, &bad), "SwiGLU amax: F 256 taken for a 512-wide D");
    rng = saved;
}

// Products stacked by columns in one launch (halo_cuda_gemm_s8_dq_stack_cols: the forward products of q, k and v, or
// gate and up, side by side in one Y) against the same products one by one into their columns, bit for bit: 2 to 4
// products with their own B, K and scale, the last one's B padded past No, M not a multiple of 128, bf16 and fp32
// outputs; the columns past No and rows past Mo keep their poison. Also: a width before the last that is not a
// multiple of 256 is refused.
static void test_gemm_s8_dq_stack_cols(void) {
    static const int cases[][8] = {   // M, Mo, No, widths of up to 4 products (0: none; the last one's B rows), K
        {384, 384, 1024, 512, 256, 256, 0, 256}, {300, 290, 1032, 256, 512, 272, 0, 128},
        {256, 256, 1296, 512, 256, 256, 272, 192}};
    if (!own_int8_kernel("own INT8 kernel, products stacked by columns")) return;
    const unsigned long long saved = rng;   // its own draws: the tests after it keep their inputs
    rng = 0xC0175EEDULL;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int M = cases[c][0], Mo = cases[c][1], No = cases[c][2];
        int nseg = 0, cols[4];
        for (int i = 3; i < 7; i++) if (cases[c][i]) cols[nseg++] = cases[c][i];
        const long ldd = No + 24;
        halo_cuda_s8_seg seg[4];
        int8_t *hA[4], *hB[4];
        float *dal[4];
        for (int i = 0; i < nseg; i++)
            seg[i] = seg_rand(M, cols[i], cases[c][7] + 32 * i, (0.7f + 0.23f * i) / 4096, &hA[i], &hB[i], &dal[i]);
        for (int f32 = 0; f32 < 2; f32++) {
            const size_t ob = (f32 ? 4 : 2) * (size_t)M * ldd;
            void *ref = dev_poison(ob), *own = dev_poison(ob);
            CHECK(halo_cuda_gemm_s8_dq_stack_cols_ok(own, f32, ldd, seg, cols, nseg, M, Mo, No),
                  "column stack of %d refused (case %zu)", nseg, c);
            for (int i = 0, c0 = 0; i < nseg; c0 += cols[i], i++) {
                const int last = i + 1 == nseg, nos = last ? No - c0 : cols[i];
                CHECK(halo_cuda_gemm_s8_dq((char *)ref + (size_t)c0 * (f32 ? 4 : 2), f32, ldd, NULL, 0, seg[i].A,
                                           seg[i].K, seg[i].B, seg[i].K, M, cols[i], seg[i].K, Mo, nos, dal[i], NULL,
                                           0) == HALO_OK,
                      "own int8 gemm: %s", halo_error());
            }
            CHECK(halo_cuda_gemm_s8_dq_stack_cols(own, f32, ldd, seg, cols, nseg, M, Mo, No, 0) == HALO_OK,
                  "column-stacked int8 gemm: %s", halo_error());
            char detail[80];
            snprintf(detail, sizeof detail, "%d products, %d x %d, %s", nseg, Mo, No, f32 ? "fp32" : "bf16");
            rows_identical("int8 column stack vs one by one", detail, ref, own, f32, M, ldd, No);
            cudaFree(ref); cudaFree(own);
        }
        segs_free(seg, hA, hB, dal, nseg);
    }
    static _Alignas(16) int8_t probe[16];   // only its alignment is looked at
    const halo_cuda_s8_seg two[2] = {{probe, probe, 256, 256, 256, NULL}, {probe, probe, 256, 256, 256, NULL}};
    const int odd[2] = {384, 256}, even[2] = {512, 384};
    CHECK(!halo_cuda_gemm_s8_dq_stack_cols_ok(probe, 0, 1024, two, odd, 2, 256, 256, 640) &&
          halo_cuda_gemm_s8_dq_stack_cols_ok(probe, 0, 1024, two, even, 2, 256, 256, 890),
          "column stack: a first product 384 wide taken, or a last one refused");
    rng = saved;
}

// The own kernel with the token rotation in its epilogue too (level 2's H_b of E_X, blocks of 2 .. 64 tokens, after
// the rows' H_m^T or alone) against the same kernel's fp32 product + halo_cuda_colrot_f32, bit for bit, in the bf16,
// fp32 and fp32 += forms; M a multiple of the block, the first Mo rows written (the rest of a padded block rotated
// along, never stored), columns past No untouched; one case with more tiles than SMs (each CTA reuses its exchange
// area).
static void test_gemm_s8_dq_tok(void) {
    static const int cases[][7] = {   // M, N, K, Mo, No, rows block (0: none), token block
        {384, 512, 256, 384, 512, 256, 64}, {320, 1024, 208, 300, 1024, 64, 64}, {256, 768, 128, 250, 768, 0, 32},
        {384, 512, 512, 384, 512, 8, 8}, {192, 512, 1024, 190, 512, 256, 2}, {512, 4096, 1024, 512, 4096, 256, 16},
        {4096, 2048, 256, 4000, 2048, 256, 64}};   // the last: 256 tiles, more than the SMs (the persistent loop)
    if (!own_int8_kernel("own INT8 kernel with token rotation")) return;
    const float al = 0.91f / 8192;
    float *dal = t_dev_copy(&al, 4);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int M = cases[c][0], N = cases[c][1], K = cases[c][2], Mo = cases[c][3], No = cases[c][4];
        const int RB = cases[c][5], TB = cases[c][6];
        const long ldd = No + 8;
        halo_cuda_had hr, ht;
        CHECK((!RB || halo_cuda_had_plan(&hr, No, RB) == HALO_OK) && halo_cuda_had_plan(&ht, M, TB) == HALO_OK,
              "plans %d/%d, %d/%d: %s", No, RB, M, TB, halo_error());
        CHECK(halo_cuda_gemm_s8_dq_tok_ok(&ht), "token block %d refused", TB);
        int8_t *hA, *hB, *dA = rand_codes_dev((size_t)M * K, &hA), *dB = rand_codes_dev((size_t)N * K, &hB);
        const halo_cuda_had *rot = RB ? &hr : NULL;
        // the reference's product: all M rows in fp32 (rows rotated when RB), then the column kernel
        float *P = dev_poison(4 * (size_t)M * No);
        CHECK(halo_cuda_gemm_s8_dq(P, 1, No, NULL, 0, dA, K, dB, K, M, N, K, M, No, dal, rot, 0) == HALO_OK,
              "own int8 gemm: %s", halo_error());
        float *R = t_rand_vec(&rng, (size_t)Mo * ldd, 10.0), *hP = t_host_of(P, 4 * (size_t)M * No);
        const size_t ob = 4 * (size_t)Mo * ldd;
        static const char *form[3] = {"bf16", "fp32", "fp32 +="};
        for (int f = 0; f < 3; f++) {
            const int f32 = f > 0, acc = f == 2;
            void *want = dev_start(acc, R, ob), *own = dev_start(acc, R, ob);
            float *Pc = t_dev_copy(hP, 4 * (size_t)M * No);   // the column kernel may rotate in place
            halo_cuda_colrot_f32(&ht, Pc, No, No, want, f32, ldd, Mo, acc, 0);
            int rc = halo_cuda_gemm_s8_dq_tok(own, f32, ldd, NULL, acc, dA, K, dB, K, M, N, K, Mo, No, dal, rot, &ht, 0);
            CHECK(rc == HALO_OK, "own int8 gemm with token rotation: %s", halo_error());
            char detail[96];
            snprintf(detail, sizeof detail, "%dx%dx%d -> %dx%d H_%d rows, H_%d tokens %s", M, N, K, Mo, No, RB, TB,
                     form[f]);
            rows_identical("own int8 gemm + H_b vs colrot", detail, want, own, f32, Mo, ldd, No);
            cudaFree(want); cudaFree(own); cudaFree(Pc);
        }
        free(hA); free(hB); free(R); free(hP); cudaFree(dA); cudaFree(dB); cudaFree(P);
        if (RB) halo_cuda_had_free(&hr);
        halo_cuda_had_free(&ht);
    }
    cudaFree(dal);
}

// ---- the linear layer --------------------------------------------------------------------------------------------
typedef struct { double y, ex, g; } errs3;
static int g_token_block;   // run_linear: level 2's token Hadamard block of both layers (0 = full)
static int g_hm_block;      // run_linear: H_m's block of both layers (0 = full)

// Runs the GPU layer and the CPU layer on the same bf16-valued inputs; returns GPU-vs-CPU errors, and (when ref
// pointers are given) both layers' errors vs float64 products.
static errs3 run_linear(int prec, int lvl, int b, int m, int n, float *X, float *W, float *EY, const double *Yr,
                        const double *EXr, const double *Gr, errs3 *gpu_vs_ref, errs3 *cpu_vs_ref) {
    errs3 e = {NAN, NAN, NAN};
    halo_bf16 *dX = dev_bf16(X, (size_t)b * m), *dW = dev_bf16(W, (size_t)n * m), *dE = dev_bf16(EY, (size_t)b * n);
    float *dY = dev_poison(4 * (size_t)b * n), *dEX = dev_poison(4 * (size_t)b * m), *dG = dev_poison(4 * (size_t)n * m);
    cudaMemset(dG, 0, 4 * (size_t)n * m);
    halo_cuda_linear L;
    int rc0 = halo_cuda_linear_init(&L, prec, lvl, "test");
    halo_cuda_linear_token_block(&L, g_token_block);
    halo_cuda_linear_hm_block(&L, g_hm_block);
    if (rc0 || halo_cuda_linear_forward(&L, dX, dW, dY, 1, b, m, n, 0) ||
        halo_cuda_linear_backward(&L, dE, dEX, 1, dG, b, m, n, 0)) {
        CHECK(0, "gpu linear: %s", halo_error());
        return e;
    }
    float *Y = t_host_of(dY, 4 * (size_t)b * n), *EX = t_host_of(dEX, 4 * (size_t)b * m), *G = t_host_of(dG, 4 * (size_t)n * m);
    int nonfin = 0;
    cudaMemcpy(&nonfin, (int *)(L.dev + 8), 4, cudaMemcpyDeviceToHost);
    CHECK(nonfin == 0, "non-finite flag set on finite inputs");
    halo_linear_config cfg = halo_linear_config_make((halo_precision)prec, lvl);
    cfg.had_block_b = g_token_block;
    cfg.had_block = g_hm_block;
    halo_linear C;
    halo_linear_init(&C, &cfg, "test");
    float *Yc = malloc(4 * (size_t)b * n), *EXc = malloc(4 * (size_t)b * m), *Gc = calloc((size_t)n * m, 4);
    if (halo_linear_forward(&C, X, W, Yc, b, m, n) || halo_linear_backward(&C, EY, W, EXc, Gc, b, m, n))
        CHECK(0, "cpu linear: %s", halo_error());
    e.y = rel_l2_f(Y, Yc, (size_t)b * n);
    e.ex = rel_l2_f(EX, EXc, (size_t)b * m);
    e.g = rel_l2_f(G, Gc, (size_t)n * m);
    if (Yr) {
        double *r[3] = {(double *)Yr, (double *)EXr, (double *)Gr};
        float *gv[3] = {Y, EX, G}, *cv[3] = {Yc, EXc, Gc};
        size_t sz[3] = {(size_t)b * n, (size_t)b * m, (size_t)n * m};
        double out[2][3];
        for (int p = 0; p < 3; p++)
            for (int w = 0; w < 2; w++) {
                double num = 0, den = 0;
                const float *v = w ? cv[p] : gv[p];
                for (size_t i = 0; i < sz[p]; i++) { double d = v[i] - r[p][i]; num += d * d; den += r[p][i] * r[p][i]; }
                out[w][p] = sqrt(num / den);
            }
        gpu_vs_ref->y = out[0][0]; gpu_vs_ref->ex = out[0][1]; gpu_vs_ref->g = out[0][2];
        cpu_vs_ref->y = out[1][0]; cpu_vs_ref->ex = out[1][1]; cpu_vs_ref->g = out[1][2];
    }
    halo_linear_free(&C);
    halo_cuda_linear_free(&L);
    free(Y); free(EX); free(G); free(Yc); free(EXc); free(Gc);
    cudaFree(dX); cudaFree(dW); cudaFree(dE); cudaFree(dY); cudaFree(dEX); cudaFree(dG);
    return e;
}

static void test_linear(void) {
    const int b = 94, m = 448, n = 160;   // 94 tokens: H_b zero-pads to 96 = 12 * 8; m = 448 = 28 * 16
    float *X = t_rand_vec(&rng, (size_t)b * m, 1.0), *W = t_rand_vec(&rng, (size_t)n * m, 0.05), *EY = t_rand_vec(&rng, (size_t)b * n, 1e-3);
    for (int prec = HALO_PREC_INT8; prec <= HALO_PREC_FP8; prec++)
        for (int lvl = 0; lvl < 3; lvl++) {
            errs3 e = run_linear(prec, lvl, b, m, n, X, W, EY, NULL, NULL, NULL, NULL, NULL);
            // INT8: same codes, same int32 sums, same rotation order -> equal up to rounding ties; FP8: cuBLASLt's
            // fp32 accumulation order differs from the CPU's sgemm on dequantized operands.
            const double tol = 1e-3;
            char det[64];
            const char *pn = prec == HALO_PREC_INT8 ? "int8" : "fp8";
            snprintf(det, sizeof det, "%s L%d Y", pn, lvl); row("GPU linear vs CPU halo_linear", det, e.y, tol, 0, 0);
            snprintf(det, sizeof det, "%s L%d E_X", pn, lvl); row("GPU linear vs CPU halo_linear", det, e.ex, tol, 0, 0);
            snprintf(det, sizeof det, "%s L%d G", pn, lvl); row("GPU linear vs CPU halo_linear", det, e.g, tol, 0, 0);
        }
    free(X); free(W); free(EY);
    // the fast rotated-row kernel inside the layer: H_m with K = 12 (m = 3072 = 12 * 256), H_b over 256 tokens
    {
        const int b3 = 256, m3 = 3072, n3 = 512;
        X = t_rand_vec(&rng, (size_t)b3 * m3, 1.0); W = t_rand_vec(&rng, (size_t)n3 * m3, 0.05);
        EY = t_rand_vec(&rng, (size_t)b3 * n3, 1e-3);
        for (int prec = HALO_PREC_INT8; prec <= HALO_PREC_FP8; prec++)
            for (int lvl = 1; lvl < 3; lvl++) {
                errs3 e = run_linear(prec, lvl, b3, m3, n3, X, W, EY, NULL, NULL, NULL, NULL, NULL);
                char det[64];
                snprintf(det, sizeof det, "%s L%d 256x3072x512 Y/E_X/G", prec == HALO_PREC_INT8 ? "int8" : "fp8", lvl);
                row("GPU linear vs CPU halo_linear", det, fmax(e.y, fmax(e.ex, e.g)), 1e-3, 0, 0);
            }
        free(X); free(W); free(EY);
    }
    // m, n, b not multiples of 8: the layer pads to 16 and the kernels take their scalar paths
    const int b2 = 50, m2 = 100, n2 = 36;
    X = t_rand_vec(&rng, (size_t)b2 * m2, 1.0); W = t_rand_vec(&rng, (size_t)n2 * m2, 0.05);
    EY = t_rand_vec(&rng, (size_t)b2 * n2, 1e-3);
    for (int prec = HALO_PREC_INT8; prec <= HALO_PREC_FP8; prec++) {
        errs3 e = run_linear(prec, 0, b2, m2, n2, X, W, EY, NULL, NULL, NULL, NULL, NULL);
        char det[64];
        snprintf(det, sizeof det, "%s L0 50x100x36 Y/E_X/G", prec == HALO_PREC_INT8 ? "int8" : "fp8");
        row("GPU linear vs CPU halo_linear", det, fmax(e.y, fmax(e.ex, e.g)), 1e-3, 0, 0);
    }
    free(X); free(W); free(EY);
}

// A long product over few tiles (G of a 256 x 512 layer over 4096 tokens: 4 tiles of K 4096) goes to cuBLASLt's int32
// product + the dequantize (or H_m^T) pass instead of the own kernel (halo_cuda_gemm_s8_dq_suits): the same G bits
// either way, INT8 levels 0 and 1 (H_m in blocks of 256: the own kernel's epilogue rotation against had_rows).
static void test_few_tiles(void) {
    const int b = 4096, m = 512, n = 256;
    if (!own_int8_kernel("few tiles to cuBLASLt")) return;
    const unsigned long long saved = rng;   // its own draws: the tests after it keep their inputs
    rng = 0xF3A7111EULL;
    float *X = t_rand_vec(&rng, (size_t)b * m, 1.0), *W = t_rand_vec(&rng, (size_t)n * m, 0.05);
    float *EY = t_rand_vec(&rng, (size_t)b * n, 1e-3);
    const int setting = halo_cuda_gemm_s8_few_tiles_lt_on();
    halo_cuda_gemm_s8_few_tiles_lt(1);
    CHECK(!halo_cuda_gemm_s8_dq_suits(n, m, b) && halo_cuda_gemm_s8_dq_suits(b, n, m),
          "few tiles: G (%d x %d x %d) should go to cuBLASLt, Y (%d x %d x %d) stay", n, m, b, b, n, m);
    for (int lvl = 0; lvl < 2; lvl++) {
        g_hm_block = lvl ? 256 : 0;
        errs3 e[2];
        for (int on = 0; on < 2; on++) {
            halo_cuda_gemm_s8_few_tiles_lt(on);
            e[on] = run_linear(HALO_PREC_INT8, lvl, b, m, n, X, W, EY, NULL, NULL, NULL, NULL, NULL);
        }
        char det[64];
        snprintf(det, sizeof det, "int8 L%d G, cuBLASLt vs own", lvl);
        row("few tiles: GPU vs CPU", det, e[1].g, 1e-6, 0, 0);
        CHECK(e[0].g == e[1].g && e[0].y == e[1].y && e[0].ex == e[1].ex,
              "few tiles int8 L%d: errors differ between the paths (G %.17g vs %.17g)", lvl, e[0].g, e[1].g);
    }
    g_hm_block = 0;
    halo_cuda_gemm_s8_few_tiles_lt(setting);
    free(X); free(W); free(EY);
    rng = saved;
}

// Level 2 with a block-diagonal token Hadamard (--halo-token-block): blocks of 4 .. 256 tokens over 300 tokens
// (zero-padded to a multiple of the block; 256 takes the two-pass column kernels, the others one pass), GPU vs the CPU
// layer with the same had_block_b: INT8 E_X to 1e-6 (the same codes and rotation order: equal bits expected), FP8 to
// 1e-3 (cuBLASLt's accumulation order).
static void test_token_block(void) {
    const int b = 300, m = 448, n = 160;
    float *X = t_rand_vec(&rng, (size_t)b * m, 1.0), *W = t_rand_vec(&rng, (size_t)n * m, 0.05);
    float *EY = t_rand_vec(&rng, (size_t)b * n, 1e-3);
    for (int r = 0; r < 3; r++) for (int j = 0; j < n; j++) EY[(long)((r * 97 + 11) % b) * n + j] *= 50;
    const int blocks[4] = {4, 64, 128, 256};
    for (int i = 0; i < 4; i++)
        for (int prec = HALO_PREC_INT8; prec <= HALO_PREC_FP8; prec++) {
            g_token_block = blocks[i];
            errs3 e = run_linear(prec, 2, b, m, n, X, W, EY, NULL, NULL, NULL, NULL, NULL);
            char det[64];
            snprintf(det, sizeof det, "%s L2 block %d Y/E_X/G", prec == HALO_PREC_INT8 ? "int8" : "fp8", blocks[i]);
            row("token-block GPU vs CPU", det, fmax(e.y, fmax(e.ex, e.g)), prec == HALO_PREC_INT8 ? 1e-6 : 1e-3, 0, 0);
        }
    g_token_block = 0;
    free(X); free(W); free(EY);
}

// Block-diagonal H_m (--halo-hadamard-block): GPU layer vs the CPU layer with the same had_block. INT8 with blocks
// of <= 256 rotates inside the own kernel's epilogue (on Hopper; elsewhere through had_rows): same values either way.
// Shapes large enough for the own kernel (rows >= 128, columns >= 256).
// X's producer takes the rotated X's amax (levels 1-2, H_m in blocks of 8..256, m % 256 == 0): which layers say
// yes, and a forward whose X amax came from RMSNorm (HALO_CUDA_X_AMAX) gives the bits of one that took its own.
static void test_x_rot_amax(void) {
    const struct { int lvl, m, block, yes; } cs[] = {{2, 2048, 256, 1}, {1, 1024, 128, 1}, {2, 512, 8, 1},
                                                    {0, 2048, 256, 0}, {2, 2048, 0, 0},   {2, 896, 128, 0},
                                                    {1, 3072, 0, 0}};
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        halo_cuda_linear L;
        halo_cuda_linear_init(&L, HALO_PREC_INT8, cs[i].lvl, "x amax");
        halo_cuda_linear_hm_block(&L, cs[i].block);
        int lb = -1;
        float sc = 0.f;
        const int yes = halo_cuda_linear_x_rot_amax(&L, cs[i].m, &lb, &sc);
        halo_hadamard h;
        const int ok = yes == cs[i].yes && (!yes || (halo_hadamard_plan(&h, cs[i].m, cs[i].block) == HALO_OK &&
                                                     (1 << lb) == cs[i].block && sc == h.scale));
        char det[64];
        snprintf(det, sizeof det, "L%d m %d block %d: %s", cs[i].lvl, cs[i].m, cs[i].block, yes ? "yes" : "no");
        row("X amax by its producer: when", det, ok ? 0 : 1, 0, 0, 0);
        halo_cuda_linear_free(&L);
    }
    const int b = 300, m = 1024, n = 384;
    float *x = t_rand_vec(&rng, (size_t)b * m, 1.0), *w = t_rand_vec(&rng, m, 0.2), *W = t_rand_vec(&rng, (size_t)n * m, 0.05);
    for (int t = 0; t < b; t++) for (int c = 0; c < 3; c++) x[(long)t * m + (c * 331 + 17) % m] *= 40;
    for (int d = 0; d < m; d++) w[d] += 1;
    float *dx = t_dev_copy(x, 4 * (size_t)b * m), *rstd = dev_poison(4 * (size_t)b);
    halo_bf16 *dw = dev_bf16(w, m), *dW = dev_bf16(W, (size_t)n * m), *dXn = dev_poison(2 * (size_t)b * m);
    float *dY[2] = {dev_poison(4 * (size_t)b * n), dev_poison(4 * (size_t)b * n)};
    for (int prec = HALO_PREC_INT8; prec <= HALO_PREC_FP8; prec++)
        for (int lvl = 1; lvl <= 2; lvl++) {
            halo_cuda_linear L[2];
            int lb = 0, rc = 0;
            float sc = 1.f, am[2];
            for (int k = 0; k < 2; k++) {   // 0: the layer's own absmax pass; 1: RMSNorm's
                halo_cuda_linear_init(&L[k], prec, lvl, k ? "x amax by rmsnorm" : "x amax own");
                halo_cuda_linear_hm_block(&L[k], 128);
                if (k) {
                    rc |= !halo_cuda_linear_x_rot_amax(&L[k], m, &lb, &sc);
                    cudaMemset(halo_cuda_linear_x_amax(&L[k]), 0, 4);
                    cuda_rmsnorm_forward_amax(dXn, rstd, dx, dw, b, m, 1e-5f, halo_cuda_linear_x_amax(&L[k]), lb, sc, NULL,
                                              0);
                } else cuda_rmsnorm_forward(dXn, rstd, dx, dw, b, m, 1e-5f, 0);
                rc |= halo_cuda_linear_forward_flags(&L[k], dXn, dW, dY[k], 1, n, NULL, k ? HALO_CUDA_X_AMAX : 0, b, m, n, 0);
                cudaMemcpy(&am[k], halo_cuda_linear_x_amax(&L[k]), 4, cudaMemcpyDeviceToHost);
            }
            float *y0 = t_host_of(dY[0], 4 * (size_t)b * n), *y1 = t_host_of(dY[1], 4 * (size_t)b * n);
            char det[64];
            snprintf(det, sizeof det, "%s L%d H_m block 128: Y, amax", prec == HALO_PREC_INT8 ? "int8" : "fp8", lvl);
            row("X amax by RMSNorm vs own: bits", det,
                rc ? 1 : (double)(words_differ(y0, y1, (size_t)b * n) + words_differ(&am[0], &am[1], 1)), 0, 0, 0);
            free(y0); free(y1);
            halo_cuda_linear_free(&L[0]); halo_cuda_linear_free(&L[1]);
        }
    free(x); free(w); free(W);
    cudaFree(dx); cudaFree(rstd); cudaFree(dw); cudaFree(dW); cudaFree(dXn); cudaFree(dY[0]); cudaFree(dY[1]);
}

// SwiGLU's backward taking a level-2 gate / up layer's token-rotated E_Y amax (cuda_swiglu_backward_amax_tok): the
// same dgate / dup bits and plain amaxes as cuda_swiglu_backward_amax, and max |H_b^T E_Y| equal to the column kernels'
// absmax pass over the result, bit for bit, per token block size (token counts that are not a multiple of 64, widths
// of 2-5 tiles); a NaN sets both flags. Its own generator, so the later tests' inputs stay as they were.
static void test_swiglu_tok_amax(void) {
    unsigned long long r2 = 6464;
    const int cs[][3] = {{200, 256, 64}, {128, 320, 8}, {64, 192, 32}, {1000, 128, 64}, {77, 128, 16}};
    for (int ci = 0; ci < 6; ci++) {
        const int nan = ci == 5, N = cs[nan ? 0 : ci][0], F = cs[nan ? 0 : ci][1], blk = cs[nan ? 0 : ci][2];
        const int bp = (N + blk - 1) / blk * blk;
        halo_cuda_had hg;
        if (halo_cuda_had_plan(&hg, bp, blk)) { CHECK(0, "plan %d block %d", bp, blk); continue; }
        int lb = 0;
        while ((1 << lb) < blk) lb++;
        float *gu = t_rand_vec(&r2, (size_t)N * 2 * F, 2.0), *d = t_rand_vec(&r2, (size_t)N * F, 1e-2);
        for (int t = 0; t < N; t += 37) for (int j = 0; j < F; j++) d[(size_t)t * F + j] *= 50;   // outlier tokens
        if (nan) d[(size_t)(N / 2) * F + 5] = NAN;
        halo_bf16 *dgu_in = dev_bf16(gu, (size_t)N * 2 * F), *dd = dev_bf16(d, (size_t)N * F);
        halo_bf16 *o[2] = {dev_poison(2 * (size_t)N * 2 * F), dev_poison(2 * (size_t)N * 2 * F)};
        float *am = dev_poison(8 * 4);   // [0..1] plain amax ref, [2..3] plain amax, [4..5] rotated ref, [6..7] rotated
        int *nf = dev_poison(4 * 4);     // [0..1] the reference pass's flags, [2..3] the producer's
        cudaMemset(am, 0, 8 * 4);
        cudaMemset(nf, 0, 4 * 4);
        cuda_swiglu_backward_amax(o[0], dd, dgu_in, N, F, am, am + 1, NULL, NULL, 0);
        for (int u = 0; u < 2; u++)
            halo_cuda_colrot_absmax(&hg, o[0] + (size_t)u * F, 2 * F, N, F, NULL, am + 4 + u, nf + u, NULL, NULL, 0);
        cuda_swiglu_backward_amax_tok(o[1], dd, dgu_in, N, F, am + 2, am + 3, am + 6, am + 7, nf + 2, nf + 3, lb,
                                      hg.scale, 0);
        float a[8];
        int f[4];
        cudaMemcpy(a, am, sizeof a, cudaMemcpyDeviceToHost);
        cudaMemcpy(f, nf, sizeof f, cudaMemcpyDeviceToHost);
        float *h0 = t_host_of(o[0], 2 * (size_t)N * 2 * F), *h1 = t_host_of(o[1], 2 * (size_t)N * 2 * F);
        const long dbits = memcmp(h0, h1, 2 * (size_t)N * 2 * F) != 0;
        char det[80];
        snprintf(det, sizeof det, "N %d F %d token block %d%s", N, F, blk, nan ? " NaN" : "");
        row("SwiGLU bwd token-rotated amax: outputs, plain amax", det,
            (double)(dbits + words_differ(a, a + 2, 2)), 0, 0, 0);
        if (nan) row("SwiGLU bwd token-rotated amax: NaN flags", det, (f[0] && f[1] && f[2] && f[3]) ? 0 : 1, 0, 0, 0);
        else
            row("SwiGLU bwd token-rotated amax vs column pass", det,
                (double)words_differ(a + 4, a + 6, 2) + (a[4] <= 0.f) + f[2] + f[3], 0, 0, 0);
        free(gu); free(d); free(h0); free(h1);
        cudaFree(dgu_in); cudaFree(dd); cudaFree(o[0]); cudaFree(o[1]); cudaFree(am); cudaFree(nf);
        halo_cuda_had_free(&hg);
    }
}

// Delayed scaling's producers (cuda_swiglu_forward_codes, cuda_swiglu_backward_codes): with a given amax (0.6x the
// tensor's own, so that some values saturate, and 1.0x) the codes in both layouts equal halo_cuda_quant_tile's of the
// bf16 tensor the plain SwiGLU kernels store, byte for byte (zero codes for tokens N..rows_pad-1 of the transposed
// layout); the recorded amax equals max |value| of that bf16 tensor bit for bit; the scale products equal
// scale(a) * scale(b) computed here in float; a NaN in dout sets both flags. INT8 and E4M3.
static void test_swiglu_codes(void) {
    unsigned long long r2 = 8181;
    const int cs[][2] = {{200, 256}, {64, 192}, {77, 128}, {1000, 128}};
    for (int ci = 0; ci < 5; ci++) {
        const int nan = ci == 4, N = cs[nan ? 0 : ci][0], F = cs[nan ? 0 : ci][1], n16 = (N + 15) / 16 * 16;
        float *gu = t_rand_vec(&r2, (size_t)N * 2 * F, 2.0), *d = t_rand_vec(&r2, (size_t)N * F, 1e-2);
        for (int t = 0; t < N; t += 37) for (int j = 0; j < F; j++) d[(size_t)t * F + j] *= 50;   // outlier tokens
        if (nan) d[(size_t)(N / 2) * F + 5] = NAN;
        halo_bf16 *dgu_in = dev_bf16(gu, (size_t)N * 2 * F), *dd = dev_bf16(d, (size_t)N * F);
        halo_bf16 *bwd = dev_poison(2 * (size_t)N * 2 * F), *fwd = dev_poison(2 * (size_t)N * F);
        cuda_swiglu_backward(bwd, dd, dgu_in, N, F, 0);
        cuda_swiglu_forward(fwd, dgu_in, N, F, 0);
        float *hb = malloc(4 * (size_t)N * 2 * F), *hf = malloc(4 * (size_t)N * F);
        halo_bf16 *tmp = t_host_of(bwd, 2 * (size_t)N * 2 * F);
        cuda_bf16_to_f32_host(hb, tmp, (size_t)N * 2 * F);
        free(tmp);
        tmp = t_host_of(fwd, 2 * (size_t)N * F);
        cuda_bf16_to_f32_host(hf, tmp, (size_t)N * F);
        free(tmp);
        float own[3] = {0, 0, 0};   // max |dgate|, |dup|, |silu(gate) up| of the stored values (NaN skipped)
        for (int t = 0; t < N; t++)
            for (int j = 0; j < 2 * F; j++) {
                const float v = fabsf(hb[(size_t)t * 2 * F + j]);
                if (v > own[j >= F]) own[j >= F] = v;
                if (j < F && fabsf(hf[(size_t)t * F + j]) > own[2]) own[2] = fabsf(hf[(size_t)t * F + j]);
            }
        {   // the amax-only backward (no dgu): the stored values' max |dgate|, |dup| bit for bit, and the NaN flags
            float *ao = dev_poison(8), ah[2];
            int *fo = dev_poison(8), fh[2];
            cudaMemset(ao, 0, 8);
            cudaMemset(fo, 0, 8);
            cuda_swiglu_backward_amax(NULL, dd, dgu_in, N, F, ao, ao + 1, fo, fo + 1, 0);
            cudaMemcpy(ah, ao, 8, cudaMemcpyDeviceToHost);
            cudaMemcpy(fh, fo, 8, cudaMemcpyDeviceToHost);
            char det[64];
            snprintf(det, sizeof det, "N %d F %d%s", N, F, nan ? " NaN" : "");
            row("SwiGLU bwd amax only: amaxes, flags", det,
                (double)words_differ(ah, own, 2) + (nan ? !(fh[0] && fh[1]) : fh[0] + fh[1]), 0, 0, 0);
            cudaFree(ao);
            cudaFree(fo);
        }
        for (int fmt = 0; fmt < 2; fmt++)
            for (int fi = 0; fi < 2; fi++) {
                const float fac = fi ? 1.0f : 0.6f, qmax = fmt == HALO_CUDA_INT8 ? 127.f : 448.f;
                // am: [0..2] the given amax of dgate, dup, X; [3..5] recorded; [6] an operand's amax; [8..10] alphas
                float hin[16] = {fac * own[0], fac * own[1], fac * own[2], 7, 7, 7, 3.5f};
                float *am = t_dev_copy(hin, sizeof hin);
                int *nf = dev_poison(3 * 4);
                cudaMemset(nf, 0, 3 * 4);
                cudaMemset(am + 3, 0, 3 * 4);
                const size_t qb = (size_t)N * 2 * F, tb = (size_t)2 * F * n16;
                uint8_t *ref = dev_poison(qb + tb), *got = dev_poison(qb + tb);
                for (int u = 0; u < 2; u++)
                    halo_cuda_quant_tile(bwd + (size_t)u * F, HALO_CUDA_BF16, 2 * F, N, F, am + u, fmt, ref + u * F,
                                         2 * F, ref + qb + (size_t)u * F * n16, n16, n16, 0);
                halo_cuda_codes c[2];
                memset(c, 0, sizeof c);
                for (int u = 0; u < 2; u++) {
                    c[u] = (halo_cuda_codes){got + u * F, 2 * F, got + qb + (size_t)u * F * n16, n16, n16, fmt, am + u,
                                             am + 3 + u, nf + u, {{NULL, NULL}, {NULL, NULL}, {NULL, NULL}, fmt}};
                    c[u].aj.out[0] = am + 8 + u; c[u].aj.a[0] = am + u; c[u].aj.b[0] = am + 6;
                }
                // 64-token tiles (HALO_SWIGLU_CODES_TR=64), then 128 (the default), each into fresh poison
                cuda_swiglu_codes_tile(64);
                cuda_swiglu_backward_codes(dd, dgu_in, N, F, &c[0], &c[1], 0);
                uint8_t *hg64 = t_host_of(got, qb + tb);
                cudaMemset(got, 0xA5, qb + tb);
                cuda_swiglu_codes_tile(128);
                cuda_swiglu_backward_codes(dd, dgu_in, N, F, &c[0], &c[1], 0);
                uint8_t *hr = t_host_of(ref, qb + tb), *hg = t_host_of(got, qb + tb);
                // forward: down_proj's X codes
                const size_t fq = (size_t)N * F, ft = (size_t)F * n16;
                uint8_t *fref = dev_poison(fq + ft), *fgot = dev_poison(fq + ft);
                halo_cuda_quant_tile(fwd, HALO_CUDA_BF16, F, N, F, am + 2, fmt, fref, F, fref + fq, n16, n16, 0);
                halo_cuda_codes cx = {fgot, F, fgot + fq, n16, n16, fmt, am + 2, am + 5, nf + 2,
                                      {{NULL, NULL}, {NULL, NULL}, {NULL, NULL}, fmt}};
                cuda_swiglu_forward_codes(dgu_in, N, F, &cx, 0);
                uint8_t *fr = t_host_of(fref, fq + ft), *fg = t_host_of(fgot, fq + ft);
                float a[16];
                int f[3];
                cudaMemcpy(a, am, sizeof a, cudaMemcpyDeviceToHost);
                cudaMemcpy(f, nf, sizeof f, cudaMemcpyDeviceToHost);
                long bad = 0, bad64 = 0;
                for (size_t i = 0; i < qb + tb; i++) { bad += hr[i] != hg[i]; bad64 += hr[i] != hg64[i]; }
                long fbad = 0;
                for (size_t i = 0; i < fq + ft; i++) fbad += fr[i] != fg[i];
                long pad = 0, pad64 = 0;   // the transposed layouts' token padding: zero codes
                for (int r = 0; r < 2 * F; r++)
                    for (int t = N; t < n16; t++) {
                        pad += hg[qb + (size_t)r * n16 + t] != 0;
                        pad64 += hg64[qb + (size_t)r * n16 + t] != 0;
                    }
                float want_al[2];
                for (int u = 0; u < 2; u++) want_al[u] = (hin[u] / qmax) * (hin[6] / qmax);
                char det[96];
                snprintf(det, sizeof det, "N %d F %d %s amax x%.1f%s", N, F, fmt ? "e4m3" : "int8", fac,
                         nan ? " NaN" : "");
                if (nan) {
                    row("SwiGLU codes: NaN flags (dgate, dup)", det, (f[0] && f[1] && !f[2]) ? 0 : 1, 0, 0, 0);
                } else {
                    row("SwiGLU bwd codes vs quant_tile", det, (double)(bad + pad), 0, 0, 0);
                    row("SwiGLU bwd codes, 64-token tiles, vs quant_tile", det, (double)(bad64 + pad64), 0, 0, 0);
                    row("SwiGLU fwd codes vs quant_tile", det, (double)fbad, 0, 0, 0);
                    row("SwiGLU codes: recorded amax", det, (double)words_differ(a + 3, own, 3) + f[0] + f[1] + f[2],
                        0, 0, 0);
                    row("SwiGLU codes: scale products", det, (double)words_differ(a + 8, want_al, 2), 0, 0, 0);
                }
                free(hr); free(hg); free(hg64); free(fr); free(fg);
                cudaFree(am); cudaFree(nf); cudaFree(ref); cudaFree(got); cudaFree(fref); cudaFree(fgot);
            }
        free(gu); free(d); free(hb); free(hf);
        cudaFree(dgu_in); cudaFree(dd); cudaFree(bwd); cudaFree(fwd);
    }
}

// Delayed scaling's RMSNorm producer (cuda_rmsnorm_forward_codes): codes in both layouts equal halo_cuda_quant_tile's
// of cuda_rmsnorm_forward's bf16 output with a given amax (0.6x and 1.0x its own), byte for byte, zero codes for
// tokens N..rows_pad-1; rstd and the recorded amax bit for bit; a NaN in x sets the flag. D = 2048 takes the opt-in
// shared memory (65 KiB); row counts not a multiple of the kernel's 32.
static void test_rmsnorm_codes(void) {
    unsigned long long r2 = 9191;
    const int cs[][2] = {{100, 256}, {77, 192}, {64, 2048}, {33, 4096}};
    for (int ci = 0; ci < 5; ci++) {
        const int nan = ci == 4, N = cs[nan ? 0 : ci][0], D = cs[nan ? 0 : ci][1], n16 = (N + 15) / 16 * 16;
        float *x = t_rand_vec(&r2, (size_t)N * D, 1.0), *w = t_rand_vec(&r2, D, 0.5);
        for (int j = 0; j < D; j += 61) for (int t = 0; t < N; t++) x[(size_t)t * D + j] *= 30;   // outlier channels
        if (nan) x[(size_t)(N / 3) * D + 7] = NAN;
        float *dx = t_dev_copy(x, 4 * (size_t)N * D);
        halo_bf16 *dw = dev_bf16(w, D), *out = dev_poison(2 * (size_t)N * D);
        float *rref = dev_poison(4 * (size_t)N), *rgot = dev_poison(4 * (size_t)N);
        cuda_rmsnorm_forward(out, rref, dx, dw, N, D, 1e-5f, 0);
        float *ho = malloc(4 * (size_t)N * D);
        halo_bf16 *tmp = t_host_of(out, 2 * (size_t)N * D);
        cuda_bf16_to_f32_host(ho, tmp, (size_t)N * D);
        free(tmp);
        float own = 0;
        for (size_t i = 0; i < (size_t)N * D; i++) if (fabsf(ho[i]) > own) own = fabsf(ho[i]);
        for (int fmt = 0; fmt < 2; fmt++)
            for (int fi = 0; fi < 2; fi++) {
                const float fac = fi ? 1.0f : 0.6f, hin[2] = {fac * own, 7};
                float *am = t_dev_copy(hin, sizeof hin);
                int *nf = dev_poison(4);
                cudaMemset(nf, 0, 4);
                cudaMemset(am + 1, 0, 4);
                const size_t qb = (size_t)N * D, tb = (size_t)D * n16;
                uint8_t *ref = dev_poison(qb + tb), *got = dev_poison(qb + tb);
                halo_cuda_quant_tile(out, HALO_CUDA_BF16, D, N, D, am, fmt, ref, D, ref + qb, n16, n16, 0);
                halo_cuda_codes c = {got, D, got + qb, n16, n16, fmt, am, am + 1, nf,
                                     {{NULL, NULL}, {NULL, NULL}, {NULL, NULL}, fmt}};
                cuda_rmsnorm_forward_codes(rgot, dx, dw, N, D, 1e-5f, &c, 0);
                uint8_t *hr = t_host_of(ref, qb + tb), *hg = t_host_of(got, qb + tb);
                float *r1 = t_host_of(rref, 4 * (size_t)N), *r2h = t_host_of(rgot, 4 * (size_t)N), a[2];
                int f;
                cudaMemcpy(a, am, sizeof a, cudaMemcpyDeviceToHost);
                cudaMemcpy(&f, nf, 4, cudaMemcpyDeviceToHost);
                long bad = 0;
                for (size_t i = 0; i < qb + tb; i++) bad += hr[i] != hg[i];
                char det[96];
                snprintf(det, sizeof det, "N %d D %d %s amax x%.1f%s", N, D, fmt ? "e4m3" : "int8", fac, nan ? " NaN" : "");
                if (nan) row("RMSNorm codes: NaN flag", det, f ? 0 : 1, 0, 0, 0);
                else {
                    row("RMSNorm codes vs quant_tile", det, (double)bad, 0, 0, 0);
                    row("RMSNorm codes: rstd, recorded amax", det,
                        (double)(words_differ(r1, r2h, N) + words_differ(a + 1, &own, 1) + f), 0, 0, 0);
                }
                free(hr); free(hg); free(r1); free(r2h);
                cudaFree(am); cudaFree(nf); cudaFree(ref); cudaFree(got);
            }
        free(x); free(w); free(ho);
        cudaFree(dx); cudaFree(dw); cudaFree(out); cudaFree(rref); cudaFree(rgot);
    }
}

// Delayed scaling's RoPE producer (cuda_rope_backward_codes): the q, k and v codes in both layouts equal
// halo_cuda_quant_tile's of what cuda_rope_backward_amax leaves in dqkv, with given amaxes (0.6x and 1.0x each one's
// own), byte for byte; the recorded amaxes equal that kernel's; dqkv is left as it was; a NaN sets only its tensor's
// flag. Head sizes 64, 128 and 32 (the pair's partner in the same and in the next 64 columns).
static void test_rope_codes(void) {
    unsigned long long r2 = 7373;
    const int cs[][4] = {{100, 4, 2, 64}, {77, 2, 1, 128}, {64, 8, 8, 32}};
    for (int ci = 0; ci < 4; ci++) {
        const int nan = ci == 3, *cv = cs[nan ? 0 : ci], N = cv[0], Hq = cv[1], Hkv = cv[2], hd = cv[3];
        const int QKV = (Hq + 2 * Hkv) * hd, half = hd / 2, npos = 50, n16 = (N + 15) / 16 * 16;
        const int col[3] = {0, Hq * hd, (Hq + Hkv) * hd}, w[3] = {Hq * hd, Hkv * hd, Hkv * hd};
        float *x = t_rand_vec(&r2, (size_t)N * QKV, 1.0);
        if (nan) x[(size_t)(N / 2) * QKV + col[1] + 3] = NAN;   // in k
        float *ct = malloc(4 * (size_t)npos * half), *st = malloc(4 * (size_t)npos * half);
        for (int p = 0; p < npos; p++)
            for (int i = 0; i < half; i++) {
                const double ang = p * pow(10000.0, -2.0 * i / hd);
                ct[p * half + i] = (float)cos(ang); st[p * half + i] = (float)sin(ang);
            }
        int32_t *pos = malloc(4 * (size_t)N);
        for (int t = 0; t < N; t++) pos[t] = (int32_t)(t_rng_next(&r2) % npos);
        halo_bf16 *dx = dev_bf16(x, (size_t)N * QKV), *dref = dev_poison(2 * (size_t)N * QKV);
        float *dct = t_dev_copy(ct, 4 * (size_t)npos * half), *dst = t_dev_copy(st, 4 * (size_t)npos * half);
        int32_t *dpos = t_dev_copy(pos, 4 * (size_t)N);
        float *am = dev_poison(16 * 4);   // [0..2] the reference's amax, [3..5] given, [6..8] recorded
        int *nf = dev_poison(6 * 4);      // [0..2] the reference's flags, [3..5] the producer's
        cudaMemset(am, 0, 16 * 4);
        cudaMemset(nf, 0, 6 * 4);
        cudaMemcpy(dref, dx, 2 * (size_t)N * QKV, cudaMemcpyDeviceToDevice);
        cuda_rope_backward_amax(dref, dpos, dct, dst, N, Hq, Hkv, hd, am, am + 1, am + 2, nf, nf + 1, nf + 2, 0);
        float own[3];
        cudaMemcpy(own, am, sizeof own, cudaMemcpyDeviceToHost);
        halo_bf16 *before = t_host_of(dx, 2 * (size_t)N * QKV);
        for (int fmt = 0; fmt < 2; fmt++)
            for (int fi = 0; fi < 2; fi++) {
                const float fac = fi ? 1.0f : 0.6f, given[3] = {fac * own[0], fac * own[1], fac * own[2]};
                cudaMemcpy(am + 3, given, sizeof given, cudaMemcpyHostToDevice);
                cudaMemset(am + 6, 0, 3 * 4);
                cudaMemset(nf + 3, 0, 3 * 4);
                const size_t qb = (size_t)N * QKV, tb = (size_t)QKV * n16;
                uint8_t *ref = dev_poison(qb + tb), *got = dev_poison(qb + tb);
                halo_cuda_codes c[3];
                for (int u = 0; u < 3; u++) {
                    halo_cuda_quant_tile(dref + col[u], HALO_CUDA_BF16, QKV, N, w[u], am + 3 + u, fmt, ref + col[u],
                                         QKV, ref + qb + (size_t)col[u] * n16, n16, n16, 0);
                    c[u] = (halo_cuda_codes){got + col[u], QKV, got + qb + (size_t)col[u] * n16, n16, n16, fmt,
                                             am + 3 + u, am + 6 + u, nf + 3 + u,
                                             {{NULL, NULL}, {NULL, NULL}, {NULL, NULL}, fmt}};
                }
                cuda_rope_backward_codes(dx, dpos, dct, dst, N, Hq, Hkv, hd, &c[0], &c[1], &c[2], 0);
                uint8_t *hr = t_host_of(ref, qb + tb), *hg = t_host_of(got, qb + tb);
                halo_bf16 *after = t_host_of(dx, 2 * (size_t)N * QKV);
                float a[16];
                int f[6];
                cudaMemcpy(a, am, sizeof a, cudaMemcpyDeviceToHost);
                cudaMemcpy(f, nf, sizeof f, cudaMemcpyDeviceToHost);
                long bad = 0;
                for (size_t i = 0; i < qb + tb; i++) bad += hr[i] != hg[i];
                bad += memcmp(before, after, 2 * (size_t)N * QKV) != 0;
                char det[96];
                snprintf(det, sizeof det, "N %d Hq %d Hkv %d hd %d %s x%.1f%s", N, Hq, Hkv, hd, fmt ? "e4m3" : "int8",
                         fac, nan ? " NaN" : "");
                if (nan) row("RoPE codes: NaN flag (k only)", det, (!f[3] && f[4] && !f[5] && f[1]) ? 0 : 1, 0, 0, 0);
                else {
                    row("RoPE bwd codes vs quant_tile", det, (double)bad, 0, 0, 0);
                    row("RoPE codes: recorded amax", det, (double)(words_differ(a + 6, own, 3) + f[3] + f[4] + f[5]),
                        0, 0, 0);
                }
                free(hr); free(hg); free(after);
                cudaFree(ref); cudaFree(got);
            }
        free(x); free(ct); free(st); free(pos); free(before);
        cudaFree(dx); cudaFree(dref); cudaFree(dct); cudaFree(dst); cudaFree(dpos); cudaFree(am); cudaFree(nf);
    }
}

// Delayed scaling's RMSNorm backward producer (cuda_rmsnorm_backward_codes): the codes of dx's bf16 copy in both
// layouts equal halo_cuda_quant_tile's of cuda_rmsnorm_backward_amax's copy with a given amax (0.6x, 1.0x its own),
// byte for byte (zero codes for tokens N..rows_pad-1); dx (+ the residual) bit for bit; the weight gradient within
// 1e-5 relative (per-block partial sums over other row ranges); the recorded amax equals that kernel's; the scale
// product equals scale(a) * scale(b) computed here; a NaN in dout sets the flag. The same codes from an fp32 dout. D 2048, 1024 and 256 (the register-held kernel's sizes; 256 runs k_rmsnorm_bwd in the reference).
static double max_rel(const float *a, const float *b, size_t n);
static void test_rmsnorm_bwd_codes(void) {
    unsigned long long r2 = 5151;
    const int cs[][2] = {{300, 2048}, {64, 1024}, {1000, 256}};
    for (int ci = 0; ci < 4; ci++) {
        const int nan = ci == 3, N = cs[nan ? 0 : ci][0], D = cs[nan ? 0 : ci][1], n16 = (N + 15) / 16 * 16;
        float *x = t_rand_vec(&r2, (size_t)N * D, 1.0), *w = t_rand_vec(&r2, D, 0.5);
        float *g = t_rand_vec(&r2, (size_t)N * D, 1e-2), *res = t_rand_vec(&r2, (size_t)N * D, 1e-2);
        for (int t = 0; t < N; t += 29) for (int j = 0; j < D; j++) g[(size_t)t * D + j] *= 40;   // outlier tokens
        if (nan) g[(size_t)(N / 2) * D + 9] = NAN;
        float *rstd = malloc(4 * (size_t)N);
        for (int t = 0; t < N; t++) {
            double ss = 0;
            for (int j = 0; j < D; j++) ss += (double)x[(size_t)t * D + j] * x[(size_t)t * D + j];
            rstd[t] = (float)(1.0 / sqrt(ss / D + 1e-5));
        }
        float *dx = t_dev_copy(x, 4 * (size_t)N * D), *dres = t_dev_copy(res, 4 * (size_t)N * D);
        float *dr = t_dev_copy(rstd, 4 * (size_t)N);
        halo_bf16 *dw16 = dev_bf16(w, D), *dg = dev_bf16(g, (size_t)N * D), *c16 = dev_poison(2 * (size_t)N * D);
        float *g32 = t_dev_copy(g, 4 * (size_t)N * D);   // g rounded to bf16 values by dev_bf16
        float *oref = dev_poison(4 * (size_t)N * D), *ogot = dev_poison(4 * (size_t)N * D);
        float *wref = dev_poison(4 * (size_t)D), *wgot = dev_poison(4 * (size_t)D);
        float *am = dev_poison(8 * 4);   // [0] the reference's amax, [1] given, [2] recorded, [3] a scale product,
        int *nf = dev_poison(2 * 4);     // [4] another operand's amax
        cudaMemset(am, 0, 32);
        cudaMemset(nf, 0, 8);
        cudaMemset(wref, 0, 4 * (size_t)D);
        cuda_rmsnorm_backward_amax(oref, c16, wref, dg, NULL, dx, dw16, dr, dres, N, D, am, nf, 0);
        float own;
        cudaMemcpy(&own, am, 4, cudaMemcpyDeviceToHost);
        float *hoR = t_host_of(oref, 4 * (size_t)N * D), *hwR = t_host_of(wref, 4 * (size_t)D);
        for (int fmt = 0; fmt < 2; fmt++)
            for (int fi = 0; fi < 2; fi++) {
                const float fac = fi ? 1.0f : 0.6f, given = fac * own;
                const float opnd = 2.5f, qmax = fmt == HALO_CUDA_INT8 ? 127.f : 448.f;
                const float want_al = (given / qmax) * (opnd / qmax);
                cudaMemcpy(am + 1, &given, 4, cudaMemcpyHostToDevice);
                cudaMemcpy(am + 4, &opnd, 4, cudaMemcpyHostToDevice);
                cudaMemset(am + 2, 0, 8);
                cudaMemset(nf + 1, 0, 4);
                cudaMemset(wgot, 0, 4 * (size_t)D);
                const size_t qb = (size_t)N * D, tb = (size_t)D * n16;
                uint8_t *ref = dev_poison(qb + tb), *got = dev_poison(qb + tb);
                halo_cuda_quant_tile(c16, HALO_CUDA_BF16, D, N, D, am + 1, fmt, ref, D, ref + qb, n16, n16, 0);
                halo_cuda_codes c = {got, D, got + qb, n16, n16, fmt, am + 1, am + 2, nf + 1,
                                     {{am + 3, NULL}, {am + 1, NULL}, {am + 4, NULL}, fmt}};
                cuda_rmsnorm_backward_codes(ogot, wgot, dg, NULL, dx, dw16, dr, dres, N, D, &c, 0);
                uint8_t *hr = t_host_of(ref, qb + tb), *hg = t_host_of(got, qb + tb);
                // the same from an fp32 dout holding the bf16 values (a HALO group's unrounded sum): the same bytes
                cudaMemset(am + 2, 0, 4);
                cudaMemset(wgot, 0, 4 * (size_t)D);   // (the rows below read this run's dx, dw, amax)
                cuda_rmsnorm_backward_codes(ogot, wgot, NULL, g32, dx, dw16, dr, dres, N, D, &c, 0);
                uint8_t *hg32 = t_host_of(got, qb + tb);
                long bad32 = 0;
                for (size_t i = 0; i < qb + tb; i++) bad32 += hg32[i] != hg[i];
                free(hg32);
                float *hoG = t_host_of(ogot, 4 * (size_t)N * D), *hwG = t_host_of(wgot, 4 * (size_t)D), a[8];
                int f[2];
                cudaMemcpy(a, am, sizeof a, cudaMemcpyDeviceToHost);
                cudaMemcpy(f, nf, sizeof f, cudaMemcpyDeviceToHost);
                long bad = 0;
                for (size_t i = 0; i < qb + tb; i++) bad += hr[i] != hg[i];
                char det[96];
                snprintf(det, sizeof det, "N %d D %d %s amax x%.1f%s", N, D, fmt ? "e4m3" : "int8", fac, nan ? " NaN" : "");
                if (nan) row("RMSNorm bwd codes: NaN flag", det, (f[0] && f[1]) ? 0 : 1, 0, 0, 0);
                else {
                    row("RMSNorm bwd codes vs quant_tile", det, (double)bad, 0, 0, 0);
                    row("RMSNorm bwd codes: fp32 dout, differing codes", det, (double)bad32, 0, 0, 0);
                    row("RMSNorm bwd codes: dx bits, amax", det,
                        (double)(words_differ(hoR, hoG, (size_t)N * D) + words_differ(a + 2, &own, 1) + f[1]), 0, 0,
                        0);
                    row("RMSNorm bwd codes: scale product", det, (double)words_differ(a + 3, &want_al, 1), 0, 0, 0);
                    row("RMSNorm bwd codes: dw", det, max_rel(hwG, hwR, D), 1e-5, 0, 0);
                }
                free(hr); free(hg); free(hoG); free(hwG);
                cudaFree(ref); cudaFree(got);
            }
        free(x); free(w); free(g); free(res); free(rstd); free(hoR); free(hwR);
        cudaFree(dx); cudaFree(dres); cudaFree(dr); cudaFree(dw16); cudaFree(dg); cudaFree(c16); cudaFree(g32);
        cudaFree(oref); cudaFree(ogot); cudaFree(wref); cudaFree(wgot); cudaFree(am); cudaFree(nf);
    }
}

// The level-2 backward fed max |H_b^T E_Y| by E_Y's producer (HALO_CUDA_EYR_AMAX; here the column kernels' absmax
// pass into the slot halo_cuda_linear_ey_rot_amax names): E_X and G equal the bits of the layer that took its own pass,
// for a layer with its own X codes and one borrowing them (as up borrows gate's); which layers say yes.
static void test_ey_rot_amax(void) {
    unsigned long long r2 = 6565;
    const int b = 192, m = 512, n = 256;
    float *X = t_rand_vec(&r2, (size_t)b * m, 1.0), *W = t_rand_vec(&r2, (size_t)n * m, 0.05);
    float *EY = t_rand_vec(&r2, (size_t)b * n, 1e-3);
    for (int t = 0; t < b; t += 29) for (int j = 0; j < n; j++) EY[(size_t)t * n + j] *= 40;
    halo_bf16 *dX = dev_bf16(X, (size_t)b * m), *dW = dev_bf16(W, (size_t)n * m), *dE = dev_bf16(EY, (size_t)b * n);
    const int tbs[3] = {64, 32, 8};
    for (int ti = 0; ti < 3; ti++)
        for (int prec = HALO_PREC_INT8; prec <= HALO_PREC_FP8; prec++) {
            halo_cuda_linear L[3];   // 0: own pass; 1: fed; 2: fed, borrowing 1's X codes
            float *ex[3], *g[3];
            int rc = 0, yes = 1;
            for (int k = 0; k < 3; k++) {
                halo_cuda_linear_init(&L[k], prec, 2, "ey rot amax");
                halo_cuda_linear_token_block(&L[k], tbs[ti]);
                halo_cuda_linear_hm_block(&L[k], 128);
                if (k == 2) halo_cuda_linear_share_x(&L[2], &L[1]);
                ex[k] = dev_poison(4 * (size_t)b * m);
                g[k] = dev_poison(4 * (size_t)n * m);
            }
            for (int k = 0; k < 3; k++) {
                float *y = dev_poison(4 * (size_t)b * n);
                rc |= halo_cuda_linear_forward_flags(&L[k], dX, dW, y, 1, n, NULL, 0, b, m, n, 0);
                cudaFree(y);
            }
            for (int k = 0; k < 3; k++) {
                int flags = HALO_CUDA_G_SET;
                if (k) {
                    int lb = 0, *nf = NULL;
                    float sc = 0.f, *ra = NULL;
                    yes &= halo_cuda_linear_ey_rot_amax(&L[k], b, &lb, &sc, &ra, &nf) && (1 << lb) == tbs[ti];
                    float *ae = halo_cuda_linear_ey_amax(&L[k]);
                    cudaMemset(ae, 0, 4);
                    cudaMemset(ra, 0, 4);
                    halo_cuda_absmax_rows(NULL, 0, dE, HALO_CUDA_BF16, n, b, n, ae, NULL, NULL, 0);
                    halo_cuda_had hg;   // the layer's H_b plan: blocks of tbs[ti] over b tokens
                    rc |= halo_cuda_had_plan(&hg, (b + tbs[ti] - 1) / tbs[ti] * tbs[ti], tbs[ti]);
                    halo_cuda_colrot_absmax(&hg, dE, n, b, n, NULL, ra, nf, NULL, NULL, 0);
                    halo_cuda_had_free(&hg);
                    flags |= HALO_CUDA_EY_AMAX | HALO_CUDA_EYR_AMAX;
                }
                rc |= halo_cuda_linear_backward_flags(&L[k], dE, n, ex[k], 1, g[k], flags, b, m, n, 0);
            }
            long diff = 0;
            float *e0 = t_host_of(ex[0], 4 * (size_t)b * m), *g0 = t_host_of(g[0], 4 * (size_t)n * m);
            for (int k = 1; k < 3; k++) {
                float *e = t_host_of(ex[k], 4 * (size_t)b * m), *gg = t_host_of(g[k], 4 * (size_t)n * m);
                diff += words_differ(e0, e, (size_t)b * m) + words_differ(g0, gg, (size_t)n * m);
                free(e); free(gg);
            }
            char det[80];
            snprintf(det, sizeof det, "%s token block %d (own X codes, borrowed)", prec == HALO_PREC_INT8 ? "int8" : "fp8",
                     tbs[ti]);
            row("E_Y rotated amax fed vs own: E_X, G bits", det, rc || !yes ? 1 : (double)diff, 0, 0, 0);
            free(e0); free(g0);
            for (int k = 0; k < 3; k++) { halo_cuda_linear_free(&L[k]); cudaFree(ex[k]); cudaFree(g[k]); }
        }
    // which layers say yes: level 2 only, token blocks of 8..64
    const struct { int lvl, tb, yes; } cs[] = {{2, 64, 1}, {2, 8, 1}, {2, 128, 0}, {2, 4, 0}, {2, 0, 0}, {1, 64, 0}};
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        halo_cuda_linear L;
        halo_cuda_linear_init(&L, HALO_PREC_INT8, cs[i].lvl, "ey rot amax when");
        halo_cuda_linear_token_block(&L, cs[i].tb);
        int lb, *nf;
        float sc, *ra;
        const int yes = halo_cuda_linear_ey_rot_amax(&L, 4096, &lb, &sc, &ra, &nf);
        char det[64];
        snprintf(det, sizeof det, "L%d token block %d, 4096 tokens: %s", cs[i].lvl, cs[i].tb, yes ? "yes" : "no");
        row("E_Y rotated amax by its producer: when", det, yes == cs[i].yes ? 0 : 1, 0, 0, 0);
        halo_cuda_linear_free(&L);
    }
    free(X); free(W); free(EY);
    cudaFree(dX); cudaFree(dW); cudaFree(dE);
}

static void test_hm_block(void) {
    const int b = 300, m = 1024, n = 384;
    float *X = t_rand_vec(&rng, (size_t)b * m, 1.0), *W = t_rand_vec(&rng, (size_t)n * m, 0.05);
    float *EY = t_rand_vec(&rng, (size_t)b * n, 1e-3);
    for (int t = 0; t < b; t++) for (int c = 0; c < 3; c++) X[(long)t * m + (c * 331 + 17) % m] *= 40;
    const int blocks[3] = {256, 64, 512};
    for (int i = 0; i < 3; i++)
        for (int prec = HALO_PREC_INT8; prec <= HALO_PREC_FP8; prec++)
            for (int lvl = 1; lvl <= 2; lvl++) {
                g_hm_block = blocks[i];
                errs3 e = run_linear(prec, lvl, b, m, n, X, W, EY, NULL, NULL, NULL, NULL, NULL);
                char det[64];
                snprintf(det, sizeof det, "%s L%d H_m block %d Y/E_X/G", prec == HALO_PREC_INT8 ? "int8" : "fp8", lvl,
                         blocks[i]);
                row("H_m block GPU vs CPU", det, fmax(e.y, fmax(e.ex, e.g)), prec == HALO_PREC_INT8 ? 1e-6 : 1e-3, 0, 0);
            }
    // both block options at level 2 (INT8: E_X's H_m^T and H_b in the own kernel's epilogue)
    const int tblocks[2] = {64, 32};
    for (int i = 0; i < 2; i++)
        for (int prec = HALO_PREC_INT8; prec <= HALO_PREC_FP8; prec++) {
            g_hm_block = 256;
            g_token_block = tblocks[i];
            errs3 e = run_linear(prec, 2, b, m, n, X, W, EY, NULL, NULL, NULL, NULL, NULL);
            char det[64];
            snprintf(det, sizeof det, "%s L2 H_m block 256 token block %d Y/E_X/G",
                     prec == HALO_PREC_INT8 ? "int8" : "fp8", tblocks[i]);
            row("H_m block GPU vs CPU", det, fmax(e.y, fmax(e.ex, e.g)), prec == HALO_PREC_INT8 ? 1e-6 : 1e-3, 0, 0);
        }
    g_hm_block = 0;
    g_token_block = 0;
    free(X); free(W); free(EY);
}

// ---- two layers reading one X (q and k of a block): shared X codes, summed input gradient, overwritten G ----------
// Reference: two independent layers A, B (own codes, G accumulated into zeros, E_X each on its own). Shared: B reuses
// A's codes (halo_cuda_linear_share_x, one workspace, one transpose of the codes), E_X of B added into A's
// (HALO_CUDA_EX_ADD), G written over garbage (HALO_CUDA_G_SET). Then B forwarded on a different X, which it must
// quantize itself. Y and G agree bit for bit with the reference (INT8 exactly; FP8 may differ by the product's
// epilogue: beta = 0 vs 1, bound 1e-6), the summed E_X within fp32 rounding of the host sum (1e-6).
static float *run_pair_dev(halo_cuda_linear *L, const halo_bf16 *dX, const halo_bf16 *dW, const halo_bf16 *dE, int b,
                           int m, int n, float *dEX, int flags, float **G) {
    float *dY = dev_poison(4 * (size_t)b * n), *dG = dev_poison(4 * (size_t)n * m);
    if (!(flags & HALO_CUDA_G_SET)) cudaMemset(dG, 0, 4 * (size_t)n * m);   // else garbage (0xff: NaN) stays unless
    int rc = halo_cuda_linear_forward(L, dX, dW, dY, 1, b, m, n, 0);          // overwritten
    if (!rc) rc = halo_cuda_linear_backward_flags(L, dE, n, dEX, 1, dG, flags, b, m, n, 0);
    CHECK(rc == 0, "shared-X layer %s: %s", L->name, halo_error());
    float *Y = t_host_of(dY, 4 * (size_t)b * n);
    *G = t_host_of(dG, 4 * (size_t)n * m);
    cudaFree(dY); cudaFree(dG);
    return Y;
}

static double max_rel(const float *a, const float *b, size_t n) {   // max |a - b| / max |b|; NaN anywhere -> NaN
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) || isnan(b[i])) return NAN;
        d = fmax(d, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return s > 0 ? d / s : d;
}

// hm_block: H_m's block for every layer here (256: INT8 rotates inside the own kernel's products, so level 1 has
// nothing to defer and level 2 defers only H_b).
static void test_shared_x(int hm_block) {
    const int b = 256, m = 512, n1 = 384, n2 = 128;
    float *X = t_rand_vec(&rng, (size_t)b * m, 1.0), *X2 = t_rand_vec(&rng, (size_t)b * m, 2.0);
    float *W1 = t_rand_vec(&rng, (size_t)n1 * m, 0.05), *W2 = t_rand_vec(&rng, (size_t)n2 * m, 0.05);
    float *E1 = t_rand_vec(&rng, (size_t)b * n1, 1e-3), *E2 = t_rand_vec(&rng, (size_t)b * n2, 1e-3);
    halo_bf16 *dX = dev_bf16(X, (size_t)b * m), *dX2 = dev_bf16(X2, (size_t)b * m);
    halo_bf16 *dW1 = dev_bf16(W1, (size_t)n1 * m), *dW2 = dev_bf16(W2, (size_t)n2 * m);
    halo_bf16 *dE1 = dev_bf16(E1, (size_t)b * n1), *dE2 = dev_bf16(E2, (size_t)b * n2);
    const size_t nx = (size_t)b * m;
    for (int prec = HALO_PREC_INT8; prec <= HALO_PREC_FP8; prec++)
        for (int lvl = 0; lvl < 3; lvl++) {
            const double tol = prec == HALO_PREC_INT8 ? 0.0 : 1e-6;
            halo_cuda_linear A, B, A2, B2;
            halo_cuda_ws w;
            memset(&w, 0, sizeof w);
            halo_cuda_linear_init(&A, prec, lvl, "A"); halo_cuda_linear_init(&B, prec, lvl, "B");
            halo_cuda_linear_init(&A2, prec, lvl, "A shared"); halo_cuda_linear_init(&B2, prec, lvl, "B shared");
            halo_cuda_linear_hm_block(&A, hm_block); halo_cuda_linear_hm_block(&B, hm_block);
            halo_cuda_linear_hm_block(&A2, hm_block); halo_cuda_linear_hm_block(&B2, hm_block);
            halo_cuda_linear_share_workspace(&A2, &w); halo_cuda_linear_share_workspace(&B2, &w);
            halo_cuda_linear_share_x(&B2, &A2);
            float *dEXa = dev_poison(4 * nx), *dEXb = dev_poison(4 * nx), *dEXs = dev_poison(4 * nx);
            float *Ga, *Gb, *Gas, *Gbs, *Gb3;
            float *Ya = run_pair_dev(&A, dX, dW1, dE1, b, m, n1, dEXa, 0, &Ga);
            float *Yb = run_pair_dev(&B, dX, dW2, dE2, b, m, n2, dEXb, 0, &Gb);
            // shared: forwards A2, B2 first (as the model), then both backwards
            float *dYa = dev_poison(4 * (size_t)b * n1), *dYb = dev_poison(4 * (size_t)b * n2);
            float *dGa = dev_poison(4 * (size_t)n1 * m), *dGb = dev_poison(4 * (size_t)n2 * m);
            int rc = halo_cuda_linear_forward(&A2, dX, dW1, dYa, 1, b, m, n1, 0);
            if (!rc) rc = halo_cuda_linear_forward(&B2, dX, dW2, dYb, 1, b, m, n2, 0);
            if (!rc) rc = halo_cuda_linear_backward_flags(&A2, dE1, n1, dEXs, 1, dGa, HALO_CUDA_G_SET, b, m, n1, 0);
            if (!rc) rc = halo_cuda_linear_backward_flags(&B2, dE2, n2, dEXs, 1, dGb, HALO_CUDA_G_SET | HALO_CUDA_EX_ADD, b,
                                                          m, n2, 0);
            CHECK(rc == 0, "shared-X pair: %s", halo_error());
            CHECK(B2.qx_use == A2.qx_use && B2.qx == NULL, "B did not borrow A's codes");
            float *Yas = t_host_of(dYa, 4 * (size_t)b * n1), *Ybs = t_host_of(dYb, 4 * (size_t)b * n2);
            Gas = t_host_of(dGa, 4 * (size_t)n1 * m); Gbs = t_host_of(dGb, 4 * (size_t)n2 * m);
            float *EXa = t_host_of(dEXa, 4 * nx), *EXb = t_host_of(dEXb, 4 * nx), *EXs = t_host_of(dEXs, 4 * nx);
            for (size_t i = 0; i < nx; i++) EXa[i] += EXb[i];   // the reference sum
            char det[64];
            const char *pn = prec == HALO_PREC_INT8 ? (hm_block ? "int8 H_m/256" : "int8") : (hm_block ? "fp8 H_m/256" : "fp8");
            snprintf(det, sizeof det, "%s L%d Y of A, B", pn, lvl);
            row("shared X codes vs own", det, fmax(max_rel(Yas, Ya, (size_t)b * n1), max_rel(Ybs, Yb, (size_t)b * n2)), 0, 0, 0);
            snprintf(det, sizeof det, "%s L%d G set, A and B", pn, lvl);
            row("shared X codes vs own", det, fmax(max_rel(Gas, Ga, (size_t)n1 * m), max_rel(Gbs, Gb, (size_t)n2 * m)), tol, 0, 0);
            snprintf(det, sizeof det, "%s L%d E_X added", pn, lvl);
            row("shared X codes vs own", det, max_rel(EXs, EXa, nx), 1e-6, 0, 0);
            // levels 1-2: the same pair with the sum taken before the inverse rotations (HALO_CUDA_EX_DEFER), rotated
            // once by halo_cuda_linear_ex_finish into fp32 and bf16: the reference sum within fp32 (bf16) rounding
            const int rows = halo_cuda_linear_ex_defer_rows(&A2, b);
            const int fused = prec == HALO_PREC_INT8 && hm_block && halo_cuda_gemm_s8_owning();   // H_m^T in products
            CHECK((rows > 0) == (lvl == 2 || (lvl == 1 && !fused)) && (lvl != 1 || rows == 0 || rows == b),
                  "%s L%d H_m block %d: deferred rows %d", pn, lvl, hm_block, rows);
            if (rows > 0) {
                float *dR = dev_poison(4 * (size_t)rows * m), *dEXf = dev_poison(4 * nx);
                halo_bf16 *dEXh = (halo_bf16 *)dev_poison(2 * nx);
                for (int out_f32 = 1; out_f32 >= 0; out_f32--) {
                    rc = halo_cuda_linear_forward(&A2, dX, dW1, dYa, 1, b, m, n1, 0);
                    if (!rc) rc = halo_cuda_linear_forward(&B2, dX, dW2, dYb, 1, b, m, n2, 0);
                    if (!rc) rc = halo_cuda_linear_backward_flags(&A2, dE1, n1, dR, 1, dGa,
                                                                  HALO_CUDA_G_SET | HALO_CUDA_EX_DEFER, b, m, n1, 0);
                    if (!rc) rc = halo_cuda_linear_backward_flags(&B2, dE2, n2, dR, 1, dGb,
                                                                  HALO_CUDA_G_SET | HALO_CUDA_EX_ADD | HALO_CUDA_EX_DEFER,
                                                                  b, m, n2, 0);
                    if (!rc) rc = halo_cuda_linear_ex_finish(&A2, dR, out_f32 ? (void *)dEXf : (void *)dEXh, out_f32, b,
                                                             m, 0);
                    CHECK(rc == 0, "deferred pair: %s", halo_error());
                    float *EXd = out_f32 ? t_host_of(dEXf, 4 * nx) : malloc(4 * nx);
                    if (!out_f32) {
                        halo_bf16 *hb = t_host_of(dEXh, 2 * nx);
                        cuda_bf16_to_f32_host(EXd, hb, nx);
                        free(hb);
                    }
                    snprintf(det, sizeof det, "%s L%d E_X summed, rotated once, %s", pn, lvl, out_f32 ? "fp32" : "bf16");
                    row("shared X codes vs own", det, max_rel(EXd, EXa, nx), out_f32 ? 1e-5 : 4e-3, 0, 0);
                    free(EXd);
                }
                CHECK(halo_cuda_linear_ex_finish(&A2, dR, dEXf, 1, b, m + 1, 0) != 0, "ex_finish took a wrong width");
                cudaFree(dR); cudaFree(dEXf); cudaFree(dEXh);
            } else CHECK(halo_cuda_linear_backward_flags(&A2, dE1, n1, dEXs, 1, dGa, HALO_CUDA_EX_DEFER, b, m, n1, 0) != 0,
                         "L%d (H_m block %d) took a deferred input gradient with nothing to defer", lvl, hm_block);
            // the last linear of the group adds the sum and rounds to bf16 once (halo_cuda_linear_backward_sum), with
            // the epilogue form off and on: the bf16 of the EX_ADD sum above bit for bit, G as set above; on, INT8
            // levels 0-1 (level 1: H_m in the product) add in the own kernel's epilogue, the rest by a rounding pass
            const int sum_setting = halo_cuda_sum_fusing();
            for (int on = 0; on < 2; on++) {
                halo_cuda_sum_fused(on);
                float *dS = dev_poison(4 * nx);
                halo_bf16 *dEXh = (halo_bf16 *)dev_poison(2 * nx);
                rc = halo_cuda_linear_forward(&A2, dX, dW1, dYa, 1, b, m, n1, 0);
                if (!rc) rc = halo_cuda_linear_forward(&B2, dX, dW2, dYb, 1, b, m, n2, 0);
                if (!rc) rc = halo_cuda_linear_backward_flags(&A2, dE1, n1, dS, 1, dGa, HALO_CUDA_G_SET, b, m, n1, 0);
                halo_cuda_prof_enable(1);
                if (!rc) rc = halo_cuda_linear_backward_sum(&B2, dE2, n2, dEXh, dS, dGb, HALO_CUDA_G_SET, b, m, n2, 0);
                halo_cuda_prof_enable(0);
                CHECK(rc == 0, "summed pair: %s", halo_error());
                halo_cuda_prof_rec rec[256];
                const int nrec = halo_cuda_prof_collect(rec, 256);
                int pass = 0;
                for (int i = 0; i < nrec; i++) pass |= !strcmp(rec[i].name, "bwd round E_X sum");
                const int fused = on && prec == HALO_PREC_INT8 && halo_cuda_gemm_s8_owning() &&
                                  (lvl == 0 || (lvl == 1 && hm_block));
                CHECK(pass == !fused, "%s L%d (epilogue form %s): the sum rounded %s", pn, lvl, on ? "on" : "off",
                      pass ? "by a pass" : "in the product");
                halo_bf16 *got = t_host_of(dEXh, 2 * nx), *want = malloc(2 * nx);
                cuda_f32_to_bf16_host(want, EXs, nx);
                long differ = 0;
                for (size_t i = 0; i < nx; i++) differ += got[i] != want[i];
                float *Gbr = t_host_of(dGb, 4 * (size_t)n2 * m);
                snprintf(det, sizeof det, "%s L%d%s E_X sum -> bf16", pn, lvl, fused ? " epilogue" : "");
                row("summed by the last linear", det, (double)differ, 0, 0, 0);
                snprintf(det, sizeof det, "%s L%d%s G of B", pn, lvl, fused ? " epilogue" : "");
                row("summed by the last linear", det, max_rel(Gbr, Gbs, (size_t)n2 * m), 0, 0, 0);
                CHECK(halo_cuda_linear_backward_sum(&B2, dE2, n2, dEXh, dS, dGb, HALO_CUDA_EX_ADD, b, m, n2, 0) != 0,
                      "backward_sum took HALO_CUDA_EX_ADD");
                free(got); free(want); free(Gbr);
                cudaFree(dS); cudaFree(dEXh);
            }
            halo_cuda_sum_fused(sum_setting);
            // HALO_CUDA_NO_G (LoRA's frozen base): X's codes only row-major in the scratch, none saved; B still
            // borrows A's. Y as with saved codes (the row quantizer's codes; 1e-2 allows rotation-order ties at
            // levels 1-2), E_X bit for bit (it reads no X codes); a weight gradient after it is refused
            {
                float *dEXn = dev_poison(4 * nx);
                rc = halo_cuda_linear_forward_flags(&A2, dX, dW1, dYa, 1, n1, NULL, HALO_CUDA_NO_G, b, m, n1, 0);
                if (!rc) rc = halo_cuda_linear_forward_flags(&B2, dX, dW2, dYb, 1, n2, NULL, HALO_CUDA_NO_G, b, m, n2, 0);
                CHECK(rc == 0 && A2.qx_use == NULL && B2.qx_use == NULL, "NO_G forwards: %s", halo_error());
                const int refused = halo_cuda_linear_backward_flags(&A2, dE1, n1, dEXn, 1, dGa, 0, b, m, n1, 0) != 0;
                CHECK(refused && strstr(halo_error(), "NO_G"), "G after a NO_G forward refused: %s", halo_error());
                if (!rc) rc = halo_cuda_linear_backward_flags(&A2, dE1, n1, dEXn, 1, NULL, 0, b, m, n1, 0);
                if (!rc) rc = halo_cuda_linear_backward_flags(&B2, dE2, n2, dEXn, 1, NULL, HALO_CUDA_EX_ADD, b, m, n2, 0);
                CHECK(rc == 0, "NO_G backwards: %s", halo_error());
                float *Yan = t_host_of(dYa, 4 * (size_t)b * n1), *Ybn = t_host_of(dYb, 4 * (size_t)b * n2);
                float *EXn = t_host_of(dEXn, 4 * nx);
                snprintf(det, sizeof det, "%s L%d Y of A, B", pn, lvl);
                row("NO_G (no X codes saved)", det, fmax(max_rel(Yan, Ya, (size_t)b * n1), max_rel(Ybn, Yb, (size_t)b * n2)),
                    1e-2, 0, 0);
                snprintf(det, sizeof det, "%s L%d E_X added", pn, lvl);
                row("NO_G (no X codes saved)", det, max_rel(EXn, EXs, nx), 0, 0, 0);
                free(Yan); free(Ybn); free(EXn);
                cudaFree(dEXn);
            }
            // B2 on another X: its own codes (compared with a fresh layer on X2)
            float *Yb2 = run_pair_dev(&B2, dX2, dW2, dE2, b, m, n2, dEXb, 0, &Gb3);
            CHECK(B2.qx_use != A2.qx_use, "B borrowed A's codes for a different X");
            halo_cuda_linear C;
            halo_cuda_linear_init(&C, prec, lvl, "C");
            halo_cuda_linear_hm_block(&C, hm_block);
            float *Gc, *Yc = run_pair_dev(&C, dX2, dW2, dE2, b, m, n2, dEXa, 0, &Gc);
            snprintf(det, sizeof det, "%s L%d other X: Y, G", pn, lvl);
            row("shared X codes vs own", det, fmax(max_rel(Yb2, Yc, (size_t)b * n2), max_rel(Gb3, Gc, (size_t)n2 * m)), 0, 0, 0);
            halo_cuda_linear_free(&A); halo_cuda_linear_free(&B); halo_cuda_linear_free(&A2); halo_cuda_linear_free(&B2);
            halo_cuda_linear_free(&C);
            halo_cuda_ws_free(&w);
            free(Ya); free(Yb); free(Ga); free(Gb); free(Yas); free(Ybs); free(Gas); free(Gbs); free(Gb3); free(Yb2);
            free(Yc); free(Gc); free(EXa); free(EXb); free(EXs);
            cudaFree(dEXa); cudaFree(dEXb); cudaFree(dEXs); cudaFree(dYa); cudaFree(dYb); cudaFree(dGa); cudaFree(dGb);
        }
    cudaFree(dX); cudaFree(dX2); cudaFree(dW1); cudaFree(dW2); cudaFree(dE1); cudaFree(dE2);
    free(X); free(X2); free(W1); free(W2); free(E1); free(E2);
}

// ---- level 2's token rotations by the column kernels (halo_cuda_l2_colrot) -----------------------------------------
// The kernels alone vs the CPU (halo_hadamard_cols on the zero-padded [bp][n] copy, halo_quantize per tensor): amax
// and every code bit-identical, zero codes in the padding columns. The E_X kernel (halo_cuda_colrot_f32) vs
// halo_hadamard_cols(.., 0) and vs the row path on the GPU (transpose, had_rows, transpose): every fp32 / bf16 value
// bit-identical (also when adding into fp32), nothing written past rows_out or cols. Then the level-2 layer with the switch on and off: E_X
// (fp32 and bf16) and G bit-identical, the E_X column kernel launched exactly where H_b allows (b = 94 pads with
// K = 12: the switch falls back to the row path).
// EX: ex_f32 ? fp32 : bf16 [b][m] (malloc'ed bytes); *excol: bit 0 when the layer launched the E_X column kernel, bit 1
// when the first E_Y column kernel also wrote G's unrotated codes (no separate quantization of E_Y).
static void gpu_layer(int prec, int b, int m, int n, long ldey, const float *X, const float *W, const float *EY,
                      int ex_f32, void **EX, float **G, int *excol) {
    halo_bf16 *dX = t_dev_bf16(X, (size_t)b * m), *dW = t_dev_bf16(W, (size_t)n * m);
    float *EYp = calloc((size_t)b * ldey, 4);
    for (int t = 0; t < b; t++) memcpy(EYp + (size_t)t * ldey, EY + (size_t)t * n, 4 * (size_t)n);
    halo_bf16 *dE = t_dev_bf16(EYp, (size_t)b * ldey);
    float *dY = dev_poison(4 * (size_t)b * n), *dEX = dev_poison(4 * (size_t)b * m), *dG = dev_poison(4 * (size_t)n * m);
    cudaMemset(dG, 0, 4 * (size_t)n * m);
    halo_cuda_linear L;
    *EX = NULL;
    *G = NULL;
    *excol = -1;
    halo_cuda_prof_enable(1);
    if (halo_cuda_linear_init(&L, prec, 2, "colrot") || halo_cuda_linear_forward(&L, dX, dW, dY, 1, b, m, n, 0) ||
        halo_cuda_linear_backward_ex(&L, dE, ldey, dEX, ex_f32, dG, b, m, n, 0)) {
        CHECK(0, "gpu linear: %s", halo_error());
    } else {
        int nonfin = 0;
        cudaMemcpy(&nonfin, (int *)(L.dev + 8), 4, cudaMemcpyDeviceToHost);
        CHECK(nonfin == 0, "colrot layer: non-finite flag set on finite inputs");
        *EX = t_host_of(dEX, (ex_f32 ? 4 : 2) * (size_t)b * m);
        *G = t_host_of(dG, 4 * (size_t)n * m);
    }
    halo_cuda_prof_enable(0);
    halo_cuda_prof_rec rec[512];
    const int nrec = halo_cuda_prof_collect(rec, 512);
    if (*EX) {
        *excol = 0;
        for (int i = 0; i < nrec; i++) {
            *excol |= !strcmp(rec[i].name, "bwd H_b cols E_X");
            if (strstr(rec[i].name, "Q(E_Y)^T")) *excol |= 2;   // G's codes rode along the token rotation
        }
    }
    halo_cuda_linear_free(&L);
    free(EYp);
    cudaFree(dX); cudaFree(dW); cudaFree(dE); cudaFree(dY); cudaFree(dEX); cudaFree(dG);
}

// halo_cuda_colrot_f32 on R [bp][ld_in] fp32 -> out [b][ldo] (rows b.. and columns cols.. of out must stay poison)
// vs halo_hadamard_cols(.., 0) on the CPU and vs transpose -> had_rows(H_b^T) -> transpose on the GPU (the layer's row
// path): differing values are counted, none allowed.
static void test_colrot_f32(void) {
    // b, cols, ld_in, ldo: bp = 8192 (second pass: 64 tokens a tile), 1024 (b = 1000 padded), 2048, 4096, 32768
    // (256 a tile), 32, 8, 4, 2 (one pass)
    const int cases[][4] = {{8192, 37, 40, 41}, {1000, 101, 101, 104}, {2043, 30, 33, 30}, {4000, 64, 72, 64},
                            {32768, 7, 7, 9}, {30, 19, 21, 19}, {5, 24, 24, 24}, {3, 5, 5, 7}, {2, 16, 17, 16}};
    for (int ci = 0; ci < 9; ci++) {
        const int b = cases[ci][0], cols = cases[ci][1], ldi = cases[ci][2], ldo = cases[ci][3];
        const int bp = halo_hadamard_pad_size(b, 172);
        halo_hadamard hp;
        halo_cuda_had hg;
        if (halo_hadamard_plan(&hp, bp, 0) || halo_cuda_had_plan(&hg, bp, 0)) { CHECK(0, "plan %d", bp); continue; }
        CHECK(halo_cuda_colrot_ok(&hg), "colrot_f32: b=%d pads to %d (K=%d): column kernel expected", b, bp, hp.K);
        float *r = t_rand_vec(&rng, (size_t)bp * ldi, 1.0);
        for (int t = 0; t < bp; t += 61) r[(size_t)t * ldi + (t * 7) % cols] *= 300;   // outliers
        float *dr = t_dev_copy(r, 4 * (size_t)bp * ldi);
        float *A = malloc(4 * (size_t)bp * cols);
        for (int t = 0; t < bp; t++) memcpy(A + (size_t)t * cols, r + (size_t)t * ldi, 4 * (size_t)cols);
        halo_hadamard_cols(&hp, A, cols, cols, 0);   // H_b R, as halo_linear_backward's level 2
        halo_bf16 *Ab = malloc(2 * (size_t)bp * cols);
        cuda_f32_to_bf16_host(Ab, A, (size_t)bp * cols);
        float *drt = dev_poison(4 * (size_t)cols * bp);
        for (int f32 = 1; f32 >= 0; f32--) {
            const size_t es = f32 ? 4 : 2, obytes = es * (size_t)(b + 1) * ldo;
            void *dout = dev_poison(obytes), *dold = dev_poison(obytes);
            float *drc = t_dev_copy(r, 4 * (size_t)bp * ldi);   // the kernel overwrites its input
            halo_cuda_colrot_f32(&hg, drc, ldi, cols, dout, f32, ldo, b, 0, 0);
            cudaFree(drc);
            // the layer's row path on the same R
            halo_cuda_transpose(dr, HALO_CUDA_F32, ldi, bp, cols, drt, HALO_CUDA_F32, bp, bp, 0);
            halo_cuda_had_rows(&hg, 1, drt, HALO_CUDA_F32, bp, NULL, drt, 1, bp, 0, cols, 0);
            halo_cuda_transpose(drt, HALO_CUDA_F32, bp, cols, b, dold, f32 ? HALO_CUDA_F32 : HALO_CUDA_BF16, ldo, cols,
                                0);
            uint8_t *o = t_host_of(dout, obytes), *old = t_host_of(dold, obytes);
            long mism = 0, mism_old = 0, stray = 0;
            for (int t = 0; t <= b; t++)
                for (int c = 0; c < ldo; c++) {
                    const uint8_t *v = o + es * ((size_t)t * ldo + c);
                    if (t == b || c >= cols) {   // never written
                        for (size_t k = 0; k < es; k++) stray += v[k] != 0xff;
                        continue;
                    }
                    const size_t i = (size_t)t * cols + c;
                    const void *ref = f32 ? (const void *)&A[i] : (const void *)&Ab[i];
                    mism += memcmp(v, ref, es) != 0;
                    mism_old += memcmp(v, old + es * ((size_t)t * ldo + c), es) != 0;
                }
            char det[96];
            snprintf(det, sizeof det, "b=%d bp=%d cols=%d ld=%d/%d %s", b, bp, cols, ldi, ldo, f32 ? "f32" : "bf16");
            row("colrot E_X vs CPU", det, (double)stray, 0, mism, 0);
            row("colrot E_X vs GPU row path", det, (double)stray, 0, mism_old, 0);
            free(o); free(old); cudaFree(dout); cudaFree(dold);
        }
        {   // accumulate: out (fp32, random) += H_b R, as the CPU's fp32 add
            const size_t obytes = 4 * (size_t)(b + 1) * ldo;
            float *base = t_rand_vec(&rng, (size_t)(b + 1) * ldo, 1.0);
            float *dout = t_dev_copy(base, obytes), *drc = t_dev_copy(r, 4 * (size_t)bp * ldi);
            halo_cuda_colrot_f32(&hg, drc, ldi, cols, dout, 1, ldo, b, 1, 0);
            float *o = t_host_of(dout, obytes);
            long mism = 0, stray = 0;
            for (int t = 0; t <= b; t++)
                for (int c = 0; c < ldo; c++) {
                    const size_t i = (size_t)t * ldo + c;
                    if (t == b || c >= cols) { stray += memcmp(&o[i], &base[i], 4) != 0; continue; }
                    const float want = base[i] + A[(size_t)t * cols + c];
                    mism += memcmp(&o[i], &want, 4) != 0;
                }
            char det[96];
            snprintf(det, sizeof det, "b=%d bp=%d cols=%d ld=%d/%d f32 +=", b, bp, cols, ldi, ldo);
            row("colrot E_X += vs CPU", det, (double)stray, 0, mism, 0);
            free(base); free(o); cudaFree(dout); cudaFree(drc);
        }
        free(r); free(A); free(Ab); cudaFree(dr); cudaFree(drt);
        halo_cuda_had_free(&hg);
    }
}

static void test_colrot(void) {
    // b, n, ld, ldq - np: bp = 2..32768 (one pass up to 128 tokens, two from 256: the second pass's tiles of 2 to 256
    // tokens); partial and padding-only column tiles (n not a multiple of 32), odd ld and ldq; bp > b
    const int cases[][4] = {{8192, 37, 40, 0}, {2043, 200, 200, 0}, {5, 24, 24, 0}, {2, 16, 16, 0}, {4000, 64, 72, 0},
                            {8192, 45, 45, 3}, {8000, 1100, 1104, 0}, {16384, 21, 24, 0}, {16384, 600, 605, 0},
                            {32768, 7, 9, 1}, {32768, 300, 300, 0}, {1000, 100, 104, 0},
                            {512, 70, 71, 0}, {256, 40, 40, 5}, {128, 300, 304, 0}, {64, 33, 40, 0}, {32, 150, 152, 1},
                            {16, 600, 600, 0}, {4, 530, 531, 2}, {3, 9, 9, 0}};
    const int ncases = (int)(sizeof cases / sizeof cases[0]);
    // then one Inf (its column all +-Inf) or one NaN (its column all NaN, the max taken over the others): the flag
    // set and the max as the CPU's fmaxf (NaN ignored)
    const int nf_cases[][2] = {{8192, 1}, {8192, 2}, {64, 2}, {8, 1}, {8, 2}};
    for (int ci = 0; ci < ncases + 5; ci++) {
        const int nfk = ci < ncases ? 0 : nf_cases[ci - ncases][1];
        const int b = ci < ncases ? cases[ci][0] : nf_cases[ci - ncases][0], n = ci < ncases ? cases[ci][1] : 24;
        const int ld = ci < ncases ? cases[ci][2] : 24, np = (n + 15) / 16 * 16;
        const int ldq = np + (ci < ncases ? cases[ci][3] : 0);
        const int bp = halo_hadamard_pad_size(b, 172);
        halo_hadamard hp;
        halo_cuda_had hg;
        if (halo_hadamard_plan(&hp, bp, 0) || halo_cuda_had_plan(&hg, bp, 0)) { CHECK(0, "plan %d", bp); continue; }
        CHECK(halo_cuda_colrot_ok(&hg), "colrot: b=%d pads to %d (K=%d): column kernel expected", b, bp, hp.K);
        float *x = t_rand_vec(&rng, (size_t)b * ld, 1.0);
        for (int t = 0; t < b; t += 97) x[(size_t)t * ld + (t * 13) % n] *= 50;   // outlier tokens
        if (nfk) x[(size_t)(b / 3) * ld + n / 2] = nfk == 1 ? INFINITY : NAN;
        halo_bf16 *dx = dev_bf16(x, (size_t)b * ld);
        float *A = calloc((size_t)bp * n, 4);
        for (int t = 0; t < b; t++) memcpy(A + (size_t)t * n, x + (size_t)t * ld, 4 * (size_t)n);
        halo_hadamard_cols(&hp, A, n, n, 0);
        float mx = 0;
        for (size_t i = 0; i < (size_t)bp * n; i++) mx = fmaxf(mx, fabsf(A[i]));
        float *dam = dev_poison(8);
        cudaMemset(dam, 0, 8);
        const size_t scb = halo_cuda_colrot_scratch(&hg, n);
        CHECK(scb == (bp > 128 ? 4 * (size_t)bp * n : 0), "colrot scratch %zu bytes for bp=%d n=%d", scb, bp, n);
        float *dsc = scb ? dev_poison(scb) : NULL;
        halo_cuda_colrot_first(&hg, dx, ld, b, n, dsc, NULL, 0);
        halo_cuda_colrot_absmax(&hg, dx, ld, b, n, dsc, dam, (int *)(dam + 1), NULL, NULL, 0);
        float am[2];
        cudaMemcpy(am, dam, 8, cudaMemcpyDeviceToHost);
        char det[80];
        snprintf(det, sizeof det, "b=%d bp=%d n=%d ld=%d%s", b, bp, n, ld, nfk == 1 ? " Inf" : nfk == 2 ? " NaN" : "");
        row("colrot absmax vs CPU", det, !memcmp(&am[0], &mx, 4) && ((int *)am)[1] == !!nfk ? 0.0 : 1.0, 0, 0, 0);
        for (int fmt = 0; fmt < 2 && !nfk; fmt++) {
            halo_qmat qm;
            cpu_codes(&qm, A, bp, n, fmt);
            uint8_t *dq = dev_poison((size_t)bp * ldq);
            // the scale product formed on the side: (amax / qmax)^2 here, the CPU scale squared
            float *dal = dev_poison(4);
            halo_cuda_alpha_job aj;
            memset(&aj, 0, sizeof aj);
            aj.fmt = fmt; aj.out[0] = dal; aj.a[0] = dam; aj.b[0] = dam;
            halo_cuda_colrot_quant(&hg, dx, ld, b, n, dsc, dam, fmt, dq, ldq, np, NULL, &aj, 0);
            float al;
            cudaMemcpy(&al, dal, 4, cudaMemcpyDeviceToHost);
            cudaFree(dal);
            const float want_al = qm.s[0] * qm.s[0];
            CHECK(al == want_al, "colrot quant's alpha %.9g vs CPU scale^2 %.9g (b=%d n=%d)", al, want_al, b, n);
            uint8_t *q = t_host_of(dq, (size_t)bp * ldq);
            uint8_t *qc = malloc((size_t)bp * n);
            long padbad = 0, mism, ties;
            for (int t = 0; t < bp; t++) {
                memcpy(qc + (size_t)t * n, q + (size_t)t * ldq, n);
                for (int c = n; c < ldq; c++) padbad += q[(size_t)t * ldq + c] != (c < np ? 0 : 0xff);
            }
            code_diff(qc, qm.q, A, qm.s, (long)bp * n, 0, fmt, &mism, &ties);
            char det2[96];
            snprintf(det2, sizeof det2, "%s ldq=%d %s", det, ldq, fmt ? "e4m3" : "int8");
            row("colrot codes vs CPU", det2, (double)padbad, 0, mism, 0);   // any differing code fails
            free(q); free(qc); cudaFree(dq);
            halo_qmat_free(&qm);
        }
        free(x); free(A); cudaFree(dx); cudaFree(dam); cudaFree(dsc);
        halo_cuda_had_free(&hg);
    }
    test_colrot_f32();
    // the layer with the switch off and on: b, m, n, ldey (bp = 256, 2048, 8192, 512, 1024, 8192 with 192 rows of
    // padding; 94 -> 96 = 12 * 8 falls back); E_X in fp32 and in bf16
    const int lcases[][4] = {{256, 512, 320, 320}, {2043, 256, 200, 232}, {8192, 256, 72, 72}, {94, 448, 160, 160},
                             {500, 100, 40, 40}, {1000, 128, 64, 64}, {8000, 64, 48, 48}, {120, 256, 96, 100}};
    for (int ci = 0; ci < 8; ci++) {
        const int b = lcases[ci][0], m = lcases[ci][1], n = lcases[ci][2], ldey = lcases[ci][3];
        halo_hadamard hp;
        const int bp = halo_hadamard_pad_size(b, 172);
        const int want_col = !halo_hadamard_plan(&hp, bp, 0) && hp.K == 1;   // H_b allows the column kernels
        float *X = t_rand_vec(&rng, (size_t)b * m, 1.0), *W = t_rand_vec(&rng, (size_t)n * m, 0.05);
        float *EY = t_rand_vec(&rng, (size_t)b * n, 1e-3);
        t_round_bf16(X, (size_t)b * m); t_round_bf16(W, (size_t)n * m); t_round_bf16(EY, (size_t)b * n);
        for (int prec = HALO_PREC_INT8; prec <= HALO_PREC_FP8; prec++)
            for (int ex_f32 = 1; ex_f32 >= 0; ex_f32--) {
                void *EX[2];
                float *G[2];
                int excol[2];
                for (int on = 0; on < 2; on++) {
                    halo_cuda_l2_colrot(on);
                    gpu_layer(prec, b, m, n, ldey, X, W, EY, ex_f32, &EX[on], &G[on], &excol[on]);
                }
                halo_cuda_l2_colrot(0);
                const size_t es = ex_f32 ? 4 : 2;
                long bits = 0;
                if (EX[0] && EX[1] && G[0] && G[1]) {
                    for (size_t i = 0; i < (size_t)b * m; i++)
                        bits += memcmp((char *)EX[0] + i * es, (char *)EX[1] + i * es, es) != 0;
                    bits += words_differ(G[0], G[1], (size_t)n * m);
                } else {
                    bits = -1;
                }
                char det[96];
                snprintf(det, sizeof det, "%s L2 %dx%dx%d ldey=%d E_X(%s)/G", prec == HALO_PREC_INT8 ? "int8" : "fp8",
                         b, m, n, ldey, ex_f32 ? "f32" : "bf16");
                row("layer colrot on vs off", det, bits == 0 ? 0.0 : 1.0, 0, bits < 0 ? 1 : bits, 0);
                CHECK(excol[0] == 0 && excol[1] == 3 * want_col,
                      "%s: column kernels (bit 0 E_X, bit 1 fused G codes) off %d on %d, expected 0 %d", det, excol[0],
                      excol[1], 3 * want_col);
                for (int on = 0; on < 2; on++) { free(EX[on]); free(G[on]); }
            }
        free(X); free(W); free(EY);
    }
}

// Outlier channels in X, outlier tokens in E_Y (as bench_halo_error): errors vs float64 on the GPU match the CPU's,
// and level 2 cuts the INT8 E_X error well below level 0's.
static void test_outliers(void) {
    const int b = 256, m = 1024, n = 512;
    float *X = t_rand_vec(&rng, (size_t)b * m, 1.0), *W = t_rand_vec(&rng, (size_t)n * m, 0.03), *EY = t_rand_vec(&rng, (size_t)b * n, 1e-3);
    for (int t = 0; t < b; t++) for (int c = 0; c < 6; c++) X[(long)t * m + (c * 997 + 5) % m] *= 100;
    for (int r = 0; r < 4; r++) for (int j = 0; j < n; j++) EY[(long)((r * 131 + 7) % b) * n + j] *= 100;
    // bf16-round once so the float64 references see the values both layers see
    halo_bf16 *tmp = malloc(2 * (size_t)n * m);
    cuda_f32_to_bf16_host(tmp, X, (size_t)b * m); cuda_bf16_to_f32_host(X, tmp, (size_t)b * m);
    cuda_f32_to_bf16_host(tmp, W, (size_t)n * m); cuda_bf16_to_f32_host(W, tmp, (size_t)n * m);
    cuda_f32_to_bf16_host(tmp, EY, (size_t)b * n); cuda_bf16_to_f32_host(EY, tmp, (size_t)b * n);
    free(tmp);
    double *Yr = calloc((size_t)b * n, 8), *EXr = calloc((size_t)b * m, 8), *Gr = calloc((size_t)n * m, 8);
    #pragma omp parallel for
    for (int i = 0; i < b; i++) {
        for (int j = 0; j < n; j++) {
            double s = 0, e = EY[(long)i * n + j];
            for (int k = 0; k < m; k++) s += (double)X[(long)i * m + k] * W[(long)j * m + k];
            Yr[(long)i * n + j] = s;
            for (int k = 0; k < m; k++) EXr[(long)i * m + k] += e * W[(long)j * m + k];
        }
    }
    #pragma omp parallel for
    for (int j = 0; j < n; j++)
        for (int t = 0; t < b; t++) {
            double e = EY[(long)t * n + j];
            for (int k = 0; k < m; k++) Gr[(long)j * m + k] += e * X[(long)t * m + k];
        }
    printf("| outlier table (rel err vs float64, %%) | GPU Y | GPU E_X | GPU G | CPU Y | CPU E_X | CPU G |\n");
    double ex[2][3];
    for (int prec = HALO_PREC_INT8; prec <= HALO_PREC_FP8; prec++)
        for (int lvl = 0; lvl < 3; lvl++) {
            errs3 g, c;
            run_linear(prec, lvl, b, m, n, X, W, EY, Yr, EXr, Gr, &g, &c);
            printf("| %s level %d | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f |\n", prec == HALO_PREC_INT8 ? "int8" : "fp8",
                   lvl, 100 * g.y, 100 * g.ex, 100 * g.g, 100 * c.y, 100 * c.ex, 100 * c.g);
            ex[prec - HALO_PREC_INT8][lvl] = g.ex;
            CHECK(fabs(g.y - c.y) <= 0.02 * c.y + 1e-6 && fabs(g.ex - c.ex) <= 0.02 * c.ex + 1e-6 &&
                  fabs(g.g - c.g) <= 0.02 * c.g + 1e-6, "%s level %d: GPU errors differ from the CPU's",
                  prec == HALO_PREC_INT8 ? "int8" : "fp8", lvl);
        }
    CHECK(ex[0][2] < 0.5 * ex[0][0], "int8 E_X error: level 2 %.4f not well under level 0 %.4f", ex[0][2], ex[0][0]);
    free(X); free(W); free(EY); free(Yr); free(EXr); free(Gr);
}

// ---- quantization telemetry (halo_cuda_linear_telemetry) -----------------------------------------------------------
// Against the CPU layer's telemetry on the same bf16 values with outlier channels in X and outlier tokens in E_Y:
// relative errors of Y, E_X, G (sampled rows, vs the fp32 product) within 1e-3 relative of the CPU's and the outlier
// ratios before / after rotation within 1e-4 (the same codes and rotations; only fp32 summation orders differ).
// With telemetry on the layer's outputs are bit-identical to telemetry off. The forms that add into their output
// (residual Y, summed E_X, and an accumulated G) measure the same errors as the plain form (snapshots taken before),
// G written over garbage (G_SET) too; bf16 outputs add at most bf16 rounding (in quadrature, < 0.3%).
typedef struct { float *Y, *EX, *G; halo_linear_stats st; } tele_run;
static tele_run tele_gpu(int prec, int lvl, int tele, int form, int b, int m, int n, const halo_bf16 *dX,
                         const halo_bf16 *dW, const halo_bf16 *dE, const float *R, const float *E0) {
    // form 0: fp32 Y, EX, G += into zeros; 1: Y = R + XW^T in place, EX += into E0, G_SET over garbage, then a
    // second backward accumulating G into the first's; 2: bf16 Y and EX
    tele_run r;
    memset(&r, 0, sizeof r);
    const int f32 = form != 2;
    const size_t ny = (size_t)b * n, nex = (size_t)b * m, ng = (size_t)n * m;
    void *dY = dev_poison(4 * ny), *dEX = dev_poison(4 * nex), *dG = dev_poison(4 * ng);
    if (form != 1) cudaMemset(dG, 0, 4 * ng);
    if (form == 1) { cudaMemcpy(dY, R, 4 * ny, cudaMemcpyHostToDevice); cudaMemcpy(dEX, E0, 4 * nex, cudaMemcpyHostToDevice); }
    halo_cuda_linear L;
    int rc = halo_cuda_linear_init(&L, prec, lvl, "tele");
    halo_cuda_linear_telemetry(&L, tele);
    if (!rc) rc = halo_cuda_linear_forward_ex(&L, dX, dW, dY, f32, n, form == 1 ? (const float *)dY : NULL, b, m, n, 0);
    if (!rc) rc = halo_cuda_linear_backward_flags(&L, dE, n, dEX, f32, (float *)dG,
                                                  form == 1 ? HALO_CUDA_EX_ADD | HALO_CUDA_G_SET : 0, b, m, n, 0);
    if (!rc) halo_cuda_linear_telemetry_read(&L, &r.st);
    halo_linear_stats first = r.st;
    if (!rc && form == 1) {   // G accumulated into the first backward's G: its snapshot must be subtracted
        rc = halo_cuda_linear_backward_flags(&L, dE, n, NULL, 1, (float *)dG, 0, b, m, n, 0);
        if (!rc) halo_cuda_linear_telemetry_read(&L, &r.st);
        CHECK(fabs(r.st.rel_err[2] - first.rel_err[2]) <= 1e-3 * first.rel_err[2],
              "telemetry: accumulated G error %.6g vs set G %.6g", r.st.rel_err[2], first.rel_err[2]);
        r.st.rel_err[2] = first.rel_err[2];
    }
    CHECK(rc == 0, "telemetry layer: %s", halo_error());
    const int es = f32 ? 4 : 2;
    r.Y = t_host_of(dY, es * ny); r.EX = t_host_of(dEX, es * nex); r.G = t_host_of(dG, 4 * ng);
    halo_cuda_linear_free(&L);
    cudaFree(dY); cudaFree(dEX); cudaFree(dG);
    return r;
}

static void test_telemetry(void) {
    const int b = 94, m = 448, n = 160;   // 94 tokens: level 2 pads to 96 (the rotated E_Y ratio counts 96 rows)
    float *X = t_rand_vec(&rng, (size_t)b * m, 1.0), *W = t_rand_vec(&rng, (size_t)n * m, 0.05);
    float *EY = t_rand_vec(&rng, (size_t)b * n, 1e-3);
    for (int t = 0; t < b; t++) for (int c = 0; c < 4; c++) X[(long)t * m + (c * 97 + 3) % m] *= 50;
    for (int r = 0; r < 3; r++) for (int j = 0; j < n; j++) EY[(long)((r * 31 + 5) % b) * n + j] *= 50;
    float *R = t_rand_vec(&rng, (size_t)b * n, 1.0), *E0 = t_rand_vec(&rng, (size_t)b * m, 1e-3);
    halo_bf16 *dX = dev_bf16(X, (size_t)b * m), *dW = dev_bf16(W, (size_t)n * m), *dE = dev_bf16(EY, (size_t)b * n);
    printf("| telemetry (%%: GPU / CPU) | errY | errEX | errG | X max/rms | W max/rms | EY max/rms |\n");
    for (int prec = HALO_PREC_INT8; prec <= HALO_PREC_FP8; prec++)
        for (int lvl = 0; lvl < 3; lvl++) {
            const char *pn = prec == HALO_PREC_INT8 ? "int8" : "fp8";
            halo_linear_config cfg = halo_linear_config_make((halo_precision)prec, lvl);
            cfg.telemetry = 1;
            halo_linear C;
            halo_linear_init(&C, &cfg, "tele");
            float *Yc = malloc(4 * (size_t)b * n), *EXc = malloc(4 * (size_t)b * m), *Gc = calloc((size_t)n * m, 4);
            if (halo_linear_forward(&C, X, W, Yc, b, m, n) || halo_linear_backward(&C, EY, W, EXc, Gc, b, m, n))
                CHECK(0, "cpu telemetry layer: %s", halo_error());
            tele_run on = tele_gpu(prec, lvl, 1, 0, b, m, n, dX, dW, dE, R, E0);
            tele_run off = tele_gpu(prec, lvl, 0, 0, b, m, n, dX, dW, dE, R, E0);
            tele_run res = tele_gpu(prec, lvl, 1, 1, b, m, n, dX, dW, dE, R, E0);
            tele_run h16 = tele_gpu(prec, lvl, 1, 2, b, m, n, dX, dW, dE, R, E0);
            const halo_linear_stats *g = &on.st, *c = &C.stats;
            printf("| %s L%d | %.3f / %.3f | %.3f / %.3f | %.3f / %.3f | %.1f->%.1f / %.1f->%.1f | %.1f->%.1f / %.1f->%.1f | "
                   "%.1f->%.1f / %.1f->%.1f |\n", pn, lvl, 100 * g->rel_err[0], 100 * c->rel_err[0], 100 * g->rel_err[1],
                   100 * c->rel_err[1], 100 * g->rel_err[2], 100 * c->rel_err[2], g->outlier[0][0], g->outlier_rot[0][0],
                   c->outlier[0][0], c->outlier_rot[0][0], g->outlier[0][1], g->outlier_rot[0][1], c->outlier[0][1],
                   c->outlier_rot[0][1], g->outlier[1][0], g->outlier_rot[1][0], c->outlier[1][0], c->outlier_rot[1][0]);
            char det[64];
            double e_err = 0, e_out = 0, e_form = 0, e_h16 = 0;
            for (int p = 0; p < 3; p++) {
                CHECK(g->calls[p] == 1, "%s L%d: product %d measured %ld times", pn, lvl, p, g->calls[p]);
                e_err = fmax(e_err, fabs(g->rel_err[p] - c->rel_err[p]) / c->rel_err[p]);
                e_form = fmax(e_form, fabs(res.st.rel_err[p] - g->rel_err[p]) / g->rel_err[p]);
                for (int o = 0; o < 2; o++) {
                    e_out = fmax(e_out, fabs(g->outlier[p][o] - c->outlier[p][o]) / c->outlier[p][o]);
                    e_out = fmax(e_out, fabs(g->outlier_rot[p][o] - c->outlier_rot[p][o]) / c->outlier_rot[p][o]);
                }
            }
            for (int p = 0; p < 2; p++) {   // bf16 Y and E_X: the fp32 output's error plus bf16 rounding at most
                const double lo = 0.95 * g->rel_err[p], hi = sqrt(g->rel_err[p] * g->rel_err[p] + 9e-6) + 1e-5;
                const double v = h16.st.rel_err[p];
                e_h16 = fmax(e_h16, v < lo ? (lo - v) / lo : v > hi ? (v - hi) / hi : 0);
            }
            snprintf(det, sizeof det, "%s L%d rel errors", pn, lvl); row("telemetry GPU vs CPU", det, e_err, 1e-3, 0, 0);
            snprintf(det, sizeof det, "%s L%d outlier ratios", pn, lvl); row("telemetry GPU vs CPU", det, e_out, 1e-4, 0, 0);
            snprintf(det, sizeof det, "%s L%d residual/+=/set", pn, lvl); row("telemetry forms vs plain", det, e_form, 1e-3, 0, 0);
            snprintf(det, sizeof det, "%s L%d bf16 outputs", pn, lvl); row("telemetry forms vs plain", det, e_h16, 0, 0, 0);
            const int same = !memcmp(on.Y, off.Y, 4 * (size_t)b * n) && !memcmp(on.EX, off.EX, 4 * (size_t)b * m) &&
                             !memcmp(on.G, off.G, 4 * (size_t)n * m);
            snprintf(det, sizeof det, "%s L%d Y/E_X/G bits", pn, lvl); row("telemetry on vs off", det, same ? 0 : 1, 0, 0, 0);
            free(on.Y); free(on.EX); free(on.G); free(off.Y); free(off.EX); free(off.G);
            free(res.Y); free(res.EX); free(res.G); free(h16.Y); free(h16.EX); free(h16.G);
            free(Yc); free(EXc); free(Gc);
            halo_linear_free(&C);
        }
    free(X); free(W); free(EY); free(R); free(E0);
    cudaFree(dX); cudaFree(dW); cudaFree(dE);
}
#endif

int main(void) {
#ifndef HALO_CUDA
    SKIP("built without CUDA");
    TEST_END();
#else
    char gpu_why[256];
    if (!cuda_device_usable(gpu_why, sizeof gpu_why)) {
        SKIP("%s: the HALO GPU kernels are checked on the device machine (scripts/gpu_halo_check.sh)", gpu_why);
        TEST_END();
    }
    printf("| check | case | error | bound | mism. | ties | |\n|---|---|---|---|---|---|---|\n");
    halo_cuda_gemm_tune(0);   // bit-for-bit comparisons between paths below; test_gemm_tune checks the timed choice
    test_hadamard();
    test_quant();
    test_rot_small();
    test_rot_tile_nonfinite();
    test_vec_paths();
    test_gemm();
    test_gemm_tune();
    test_gemm_s8_dq();
    test_gemm_s8_dq_lora();
    test_gemm_s8_dq_rot();
    test_gemm_s8_dq_group();
    test_gemm_s8_dq_stack();
    test_gemm_s8_dq_stack_cols();
    test_gemm_s8_dq_sumsq();
    test_gemm_s8_dq_swiglu();
    test_gemm_s8_dq_tok();
    test_linear();
    test_few_tiles();
    test_token_block();
    test_hm_block();
    test_x_rot_amax();
    test_swiglu_tok_amax();
    test_swiglu_codes();
    test_rmsnorm_codes();
    test_rope_codes();
    test_rmsnorm_bwd_codes();
    test_ey_rot_amax();
    test_shared_x(0);
    test_shared_x(256);
    test_colrot();
    test_outliers();
    test_telemetry();
    halo_cuda_gemm_shutdown();
    TEST_END();
#endif
}
