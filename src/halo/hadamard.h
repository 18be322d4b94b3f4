// Orthonormal Hadamard rotations for HALO: H_d = H_K (x) H_P / sqrt(d) with P a power of two (Walsh-Hadamard in
// natural Sylvester order, fast butterfly) and H_K a constructed order-K Hadamard matrix (Paley I/II, Williamson,
// Sylvester doubling), optionally block-diagonal. Applied along rows (contiguous dim) or along columns.
#ifndef HALO_HADAMARD_H
#define HALO_HADAMARD_H
#include <stddef.h>
#include <stdint.h>

// Largest dense base order we construct (the dense part costs K multiply-adds per element).
#define HALO_HADAMARD_MAX_K 1024

typedef struct halo_hadamard {
    int d;             // length of the rotated dimension
    int block;         // size of each diagonal block (== d for the full transform)
    int K;             // order of the dense base matrix (1 = pure Walsh-Hadamard)
    int P;             // power-of-two factor: block = K * P
    const int8_t *HK;  // [K][K] entries +-1, owned by a process-wide cache (never freed); NULL when K == 1
    const float *HKf;  // [K][K] the same as float
    const float *HKtf; // [K][K] its transpose as float
    float scale;       // 1/sqrt(block)
} halo_hadamard;

// The +-1 Hadamard matrix of order K ([K][K], row-major), built on first use and verified (H H^T = K I);
// NULL with halo_error() set when no construction is known here. Thread-safe.
const int8_t *halo_hadamard_base(int K);
// Which construction gives order K ("sylvester", "paley1", "paley2", "williamson", "doubling"), or NULL.
const char *halo_hadamard_construction(int K);

// 1 if a Hadamard transform of size d is available (d = K * 2^p); sets *K and *P to the decomposition used
// (smallest constructible K).
int halo_hadamard_supported(int d, int *K, int *P);
// Smallest size >= n that is supported with a base order K <= max_K (for zero-padding the token dimension).
int halo_hadamard_pad_size(int n, int max_K);

// Plans a transform of dimension d. block == 0 or block == d: the full H_d; else block-diagonal with blocks of
// `block` (must divide d and be supported). HALO_ERR (message names d and block) when not possible.
int halo_hadamard_plan(halo_hadamard *h, int d, int block);
// Like halo_hadamard_plan with block = 0, but for an unsupported d falls back to the largest supported block size
// dividing d (possibly 1 = no rotation) and writes what it chose to note (may be NULL). Never fails.
void halo_hadamard_plan_fallback(halo_hadamard *h, int d, char *note, size_t note_cap);

// Along rows: A is [rows][ld] row-major, the first h->d entries of each row are rotated:
// A[r,:] <- A[r,:] H (transpose = 0, the forward "X H") or A[r,:] H^T (transpose = 1, the inverse).
// OpenMP-parallel over rows.
void halo_hadamard_rows(const halo_hadamard *h, float *A, long rows, long ld, int transpose);
// Along columns: A is [h->d][ld], the first `cols` columns are rotated: A <- H A (transpose = 0) or
// A <- H^T A (transpose = 1). OpenMP-parallel over column tiles.
void halo_hadamard_cols(const halo_hadamard *h, float *A, long cols, long ld, int transpose);
// The dense d x d matrix H (row-major, double) built from the definition, for tests.
void halo_hadamard_dense(const halo_hadamard *h, double *M);

#endif
