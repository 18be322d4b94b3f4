// The HALO linear layer (docs/halo-method.md section 4): Y = X W^T and both gradients with every product in
// INT8 or FP8 at rotation level 0, 1 or 2, plus FP32 and BF16 passthrough modes, and per-layer quantization
// telemetry (relative error of each product on sampled rows, outlier ratios before/after rotation).
#ifndef HALO_HALO_LINEAR_H
#define HALO_HALO_LINEAR_H
#include <stdint.h>
#include <stdio.h>
#include "halo/hadamard.h"
#include "halo/quant.h"

typedef enum { HALO_PREC_FP32 = 0, HALO_PREC_BF16, HALO_PREC_INT8, HALO_PREC_FP8 } halo_precision;

// Zero-initialised = FP32, level 0, per-tensor scales, nearest rounding, full Hadamards, no telemetry.
typedef struct {
    halo_precision prec;
    int level;                   // 0, 1, 2 (ignored for FP32/BF16)
    halo_granularity gran;       // scale granularity of every quantized operand (default per tensor)
    int block;                   // block size for HALO_GRAN_BLOCK1x128 / BLOCK128 (0 = 128; multiple of 4)
    halo_rounding grad_rounding; // rounding of the gradient E_Y (stochastic option); X and W: nearest even
    int grad_e5m2;               // FP8: quantize E_Y as E5M2 instead of E4M3
    int had_block;               // 0 = full H_m over in_features; else block-diagonal with this block size
    int had_block_b;             // 0 = full H_b over tokens (level 2); else block-diagonal block. b that is not
                                 // K*2^p is zero-padded to the smallest supported size >= b with K <= 172 (94 ->
                                 // 96): H_b^T [E_Y; 0] is rotated, multiplied, rotated back with H_b and the first b
                                 // rows kept, which is exact without quantization (H_b H_b^T = I).
    uint64_t seed;               // stochastic rounding seed
    int telemetry;               // 1 = measure errors/outliers on every call (costs sampled fp32 products); may be
                                 // toggled per step through L->cfg.telemetry before the step's forward
    int telemetry_rows;          // rows sampled per product (0 = 64)
    int identity_quant;          // tests: the quantizer is replaced by the identity (rotations still applied)
    int delayed;                 // delayed scaling, an option beyond the spec (per-tensor scales only): X and W at
                                 // level 0 and E_Y at levels 0-1 are scaled by the absmax the same tensor had at this
                                 // layer's previous call (values beyond it saturate); a first call by its own. Rotated
                                 // X and W and level 2's H_b^T E_Y keep their own. The GPU layer's producers and
                                 // optimizer do the same (W: the amax before the update that wrote it).
} halo_linear_config;

enum { HALO_PROD_Y = 0, HALO_PROD_EX = 1, HALO_PROD_G = 2 };

// Telemetry of the last measured call of each product. rel_err = ||Q-product - fp32 product|| / ||fp32 product||
// over sampled rows (NAN = never measured). Operands per product: Y: (X, W); EX: (E_Y, W); G: (E_Y, X).
// outlier = max|x| / rms(x) of the operand as given, outlier_rot = after the rotation the level applies
// (X H_m, W H_m, H_b^T E_Y at level 2); equal to outlier where the level does not rotate that operand.
typedef struct {
    long calls[3];
    double rel_err[3];
    double outlier[3][2];
    double outlier_rot[3][2];
} halo_linear_stats;

// Transient scratch of forward/backward (fp32 rotated copies, the backward's 8-bit operands). Nothing in it lives
// from a forward to its backward, so layers that never run concurrently may share one (halo_linear_share_workspace)
// instead of each keeping buffers of its own size.
typedef struct halo_workspace {
    float *buf[4];          // [0] X H_m / dequantized X, [1] W H_m, [2] H_b^T E_Y, [3] product before rotation
    size_t cap[4];
    halo_qmat qa, qb;       // backward operands
} halo_workspace;
void halo_workspace_free(halo_workspace *w);

typedef struct halo_linear {
    halo_linear_config cfg;
    char name[160];
    int b, m, n;            // shapes of the last forward
    int have_fwd;           // forward done, backward state valid
    const float *X;         // FP32/BF16: the caller's X from forward (must stay alive until backward)
    halo_qmat qx;           // 8-bit Q(X H_m) [b][m] with scales (X for level 0)
    halo_qmat qw;           // 8-bit Q(W H_m) [n][m] with scales
    int qw_given;           // qw was set by halo_linear_set_weight_codes: forward uses it instead of quantizing W
    halo_hadamard hm;       // H_m plan (levels 1, 2)
    int hm_d;               // dimension hm was planned for (0 = none)
    halo_hadamard hb;       // H_b plan (level 2) over the padded token count
    int hb_b, hb_pad;       // token count hb was planned for, and its padded size
    halo_workspace own;     // scratch used when no shared workspace is set
    halo_workspace *shared; // shared scratch (not owned), or NULL
    float *xkeep;           // telemetry only: fp32 copy of X [b][m] for the G error
    size_t xkeep_cap;
    int xkeep_ok;           // xkeep holds this forward's X (telemetry was on during the forward)
    uint64_t step;          // stochastic rounding counter (advanced each backward)
    float dly_amax[3];      // delayed scaling: the absmax of X, E_Y, W at the last call that recorded one
    int dly_ok[3];          //   ... and whether there was such a call
    halo_linear_stats stats;
    char note[256];         // fallback decisions (printed once to stderr)
} halo_linear;

// Fills defaults for a precision and level (per tensor, nearest, E4M3, full Hadamards, seed 0x5eed).
halo_linear_config halo_linear_config_make(halo_precision prec, int level);
void halo_linear_init(halo_linear *L, const halo_linear_config *cfg, const char *name);
void halo_linear_free(halo_linear *L);
// Uses w (owned by the caller, must outlive the layer's use) for scratch instead of the layer's own; NULL reverts.
// Only for layers that are never run at the same time from different threads.
void halo_linear_share_workspace(halo_linear *L, halo_workspace *w);
// X [b][m] row-major activations, W [n][m] weight (out x in), Y [b][n] output (overwritten). W may be NULL when the
// layer was given its weight codes (halo_linear_set_weight_codes).
int halo_linear_forward(halo_linear *L, const float *X, const float *W, float *Y, int b, int m, int n);
// EY [b][n]; EX [b][m] overwritten (NULL = not needed); G [n][m] accumulated (G += dW; NULL = frozen weight).
// W is the same weight as in forward (NULL where halo_linear_set_weight_codes says). Must follow a forward of this
// layer object with the same shapes.
int halo_linear_backward(halo_linear *L, const float *EY, const float *W, float *EX, float *G, int b, int m, int n);

// ---- sharded weights gathered in 8 bits (docs/halo-method.md section 5) ----------------------------------------
// The layer uses W [n][m] only through its weight operand Q(W H_m) (levels 1, 2) or Q(W) (level 0), scaled over the
// whole W. A data-parallel rank holding rows [lo, hi) of W (Wrows: [hi - lo][m]) builds that operand with the
// others, bit-identical to the one forward quantizes itself:
//   1. halo_linear_weight_amax: the absmax grid of its rows (rotated as the level requires), grid_len floats;
//   2. allreduce MAX of the grid over the ranks (one float at per-tensor scales);
//   3. halo_linear_weight_codes with the reduced grid: out gets every scale and the codes of rows [lo, hi) at
//      out->q + lo * m (row-major [n][m] bytes);
//   4. allgather the code rows into out->q (1 byte a weight); 5. halo_linear_set_weight_codes(L, out).
// 8-bit layers only. Each of 1 and 3 rotates the rows (levels 1, 2) in the layer's scratch.
size_t halo_linear_weight_grid_len(const halo_linear *L, int n, int m);
int halo_linear_weight_amax(halo_linear *L, const float *Wrows, int lo, int hi, int n, int m, float *amax);
int halo_linear_weight_codes(halo_linear *L, const float *Wrows, int lo, int hi, int n, int m, const float *amax,
                             halo_qmat *out);
// Hands the layer the complete weight operand (copied into L->qw); every following forward (and so its backward)
// uses it instead of quantizing W, until the next call; NULL returns to quantizing W. Forward refuses codes whose
// shape, format or scale grid is not the one it would make. W may then be NULL in forward, and in backward when EX
// is NULL or the E_X product takes the saved codes transposed (per-tensor and 128x128 scales); per-row and 1xB
// scales re-quantize W H_m along out_features for E_X and need the fp32 W. Telemetry measures against the fp32 W:
// with cfg.telemetry on, a NULL W is refused.
int halo_linear_set_weight_codes(halo_linear *L, const halo_qmat *qw);

const char *halo_precision_name(halo_precision p);
// One layer's stats as a JSON object string (no newline); returns the length written (snprintf semantics).
int halo_linear_stats_json(const halo_linear *L, char *buf, size_t cap);
// A compact table, one line per layer (rel. errors in %, outlier ratios before -> after rotation).
void halo_linear_print_table(FILE *f, halo_linear *const *layers, int count);
// The same JSON object and table lines from a layer's name, precision, level and stats (the GPU layers report
// through these): the header line, then one row per layer.
int halo_stats_json(const char *name, halo_precision prec, int level, const halo_linear_stats *s, char *buf, size_t cap);
void halo_stats_print_header(FILE *f);
void halo_stats_print_row(FILE *f, const char *name, halo_precision prec, int level, const halo_linear_stats *s);

#endif
