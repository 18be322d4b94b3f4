// LoRA adapter kernels of the GPU model (llama_cuda.cu): lora.c's dropout mask, the product + mask path's mask kernels,
// and the grouped kernels that serve every adapter reading one input X [N, in] (q, k, v; gate, up; o; down) in one
// pass over X (or over dX), with the dropout mask inside:
//   cuda_lora_u:  U_j = alpha mask_j(X) A_j^T            (the only place the mask is hashed; it keeps it as bits)
//   cuda_lora_da: gA_j += keep dU_j^T mask_j(X)          (per-split partial sums, then a fixed-order sum: deterministic)
//   cuda_lora_dx: dX += keep sum_j mask_j(dU_j A_j)      (one bf16 rounding of the sum into dX; _f32: an fp32 dX)
//   cuda_lora_y:  Y_j += U_j B_j^T                        (each adapter into its own columns; the dX kernel's code)
// The thin products run on mma.sync (m16n8k16 bf16, fp32 accumulators). Since only the pairing of A's and B's
// k-indices matters, each thread's fragments take 4 or 8 consecutive columns of X (16-byte loads), and the output
// columns of dX are permuted the same way so that each thread holds 8 consecutive columns of a row.
#include <type_traits>
#include "cuda/common.cuh"

// lora.c's dropout mask (dropout_keeps): element i of adapter lin is kept when bits 16 (i % 4) .. of the splitmix64
// hash of (key, lin, i / 4) are >= thr (lora_dropout_threshold: ceil(p 2^16)); one hash serves four elements.
#define LORA_GOLDEN 0x9E3779B97F4A7C15ULL
__device__ __forceinline__ uint64_t lora_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
__device__ __forceinline__ uint64_t lora_hash(uint64_t key, int lin, size_t quad) {
    return lora_mix(key + LORA_GOLDEN * ((uint64_t)lin * 0x100000000ULL + quad + 1));
}
// The keep bits (bit b: element 4 quad + b) of the four draws of hash z
__device__ __forceinline__ uint32_t lora_keep4(uint64_t z, uint32_t thr) {
    const uint32_t lo = (uint32_t)z, hi = (uint32_t)(z >> 32);
    return (uint32_t)((lo & 0xFFFFu) >= thr) | (uint32_t)((lo >> 16) >= thr) << 1 | (uint32_t)((hi & 0xFFFFu) >= thr) << 2 |
           (uint32_t)((hi >> 16) >= thr) << 3;
}
__device__ __forceinline__ bool lora_keeps(uint64_t key, int lin, size_t i, uint32_t thr) {
    return (lora_keep4(lora_hash(key, lin, i / 4), thr) >> (i & 3)) & 1u;
}
// Keep bits of elements i .. i + 7 (i a multiple of 8; bit b: element i + b)
__device__ __forceinline__ uint32_t lora_keep_byte(uint64_t key, int lin, size_t i, uint32_t thr) {
    const uint64_t z = key + LORA_GOLDEN * ((uint64_t)lin * 0x100000000ULL + i / 4 + 1);
    return lora_keep4(lora_mix(z), thr) | lora_keep4(lora_mix(z + LORA_GOLDEN), thr) << 4;
}

// ---- the product + mask path ----
// out[i] = x[i] where kept, else 0 (the 1 / (1 - p) scale goes into the products' alpha)
__global__ void k_lora_mask(bf16 *out, const bf16 *x, size_t n, uint64_t key, int lin, uint32_t thr) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = lora_keeps(key, lin, i, thr) ? x[i] : __float2bfloat16(0.f);
}
// dx[i] += keep t[i] where kept
__global__ void k_lora_mask_add(bf16 *dx, const bf16 *t, size_t n, uint64_t key, int lin, uint32_t thr, float keep) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        if (lora_keeps(key, lin, i, thr)) dx[i] = __float2bfloat16(__bfloat162float(dx[i]) + keep * __bfloat162float(t[i]));
}
static int grid_for(size_t n) {
    size_t b = (n + 255) / 256;
    return (int)(b > 8192 ? 8192 : b < 1 ? 1 : b);
}
extern "C" void cuda_lora_mask(halo_bf16 *out, const halo_bf16 *x, size_t n, uint64_t key, int lin, uint32_t thr,
                               cudaStream_t s) {
    k_lora_mask<<<grid_for(n), 256, 0, s>>>((bf16 *)out, (const bf16 *)x, n, key, lin, thr);
    CUDA_LAUNCH_CHECK();
}
extern "C" void cuda_lora_mask_add(halo_bf16 *dx, const halo_bf16 *t, size_t n, uint64_t key, int lin, uint32_t thr,
                                   float keep, cudaStream_t s) {
    k_lora_mask_add<<<grid_for(n), 256, 0, s>>>((bf16 *)dx, (const bf16 *)t, n, key, lin, thr, keep);
    CUDA_LAUNCH_CHECK();
}

// ---- the grouped kernels ----
// (The products: mma16816 of common.cuh, whose comment gives the fragment layouts.)
// The bf16 pair (elements 2p, 2p + 1 of 8) of v kept by bits 2p, 2p + 1 of m (dropped: +0)
__device__ __forceinline__ uint32_t keep_pair(uint32_t v, uint32_t m, int p) {
    return v & (((m >> (2 * p)) & 1u ? 0x0000FFFFu : 0u) | ((m >> (2 * p + 1)) & 1u ? 0xFFFF0000u : 0u));
}
__device__ __forceinline__ uint4 keep8(uint4 v, uint32_t m) {
    return make_uint4(keep_pair(v.x, m, 0), keep_pair(v.y, m, 1), keep_pair(v.z, m, 2), keep_pair(v.w, m, 3));
}
__device__ __forceinline__ uint4 ldg16(const bf16 *p) { return __ldg((const uint4 *)p); }

// U_j [N, R] = alpha mask_j(X) A_j^T. A block: 32 tokens (two m-tiles); its 4 warps take the 32-column chunks of X
// round robin and their sums meet in shared memory (fixed order). Thread (g, t) loads columns 8t..8t+7 of a chunk
// for rows g and g + 8: k-step s pairs columns 8t + 4s + {0,1} (a0/b0) and 8t + 4s + {2,3} (a2/b1). With DROP the
// thread hashes the mask of exactly the elements it loads and writes them as one byte a row (bits_j [N, in / 8]).
enum { LORA_U_TOKENS = 32 };
template <int R, int G, bool DROP>
__global__ void __launch_bounds__(128) k_lora_u(cuda_lora_group gr, const bf16 *__restrict__ X, int N, int in,
                                                float alpha, uint64_t key, uint32_t thr) {
    constexpr int NT = R / 8;
    __shared__ float red[4][LORA_U_TOKENS][G * R];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int tok0 = blockIdx.x * LORA_U_TOKENS;
    float acc[2][G][NT][4] = {};
    int row[2][2];
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int h = 0; h < 2; h++) row[m][h] = tok0 + m * 16 + h * 8 + g;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    for (int ch = warp; ch < in / 32; ch += 4) {
        const int c = ch * 32 + t * 8;
        uint4 xv[2][2];
#pragma unroll
        for (int m = 0; m < 2; m++)
#pragma unroll
            for (int h = 0; h < 2; h++) xv[m][h] = row[m][h] < N ? ldg16(X + (size_t)row[m][h] * in + c) : zero;
#pragma unroll
        for (int j = 0; j < G; j++) {
            uint4 w[NT];
#pragma unroll
            for (int n = 0; n < NT; n++) w[n] = ldg16((const bf16 *)gr.a[j] + (size_t)(n * 8 + g) * in + c);
            uint4 xm[2][2];
#pragma unroll
            for (int m = 0; m < 2; m++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    xm[m][h] = xv[m][h];
                    if (DROP && row[m][h] < N) {
                        const size_t i = (size_t)row[m][h] * in + c;
                        const uint32_t keep = lora_keep_byte(key, gr.lin[j], i, thr);
                        gr.bits[j][i / 8] = (uint8_t)keep;
                        xm[m][h] = keep8(xv[m][h], keep);
                    }
                }
#pragma unroll
            for (int m = 0; m < 2; m++)
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    const uint32_t a0[4] = {xm[m][0].x, xm[m][1].x, xm[m][0].y, xm[m][1].y};
                    const uint32_t a1[4] = {xm[m][0].z, xm[m][1].z, xm[m][0].w, xm[m][1].w};
                    mma16816(acc[m][j][n], a0, w[n].x, w[n].y);
                    mma16816(acc[m][j][n], a1, w[n].z, w[n].w);
                }
        }
    }
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int j = 0; j < G; j++)
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) red[warp][m * 16 + g + (e >> 1) * 8][j * R + n * 8 + 2 * t + (e & 1)] = acc[m][j][n][e];
    __syncthreads();
    for (int idx = threadIdx.x; idx < LORA_U_TOKENS * G * R; idx += blockDim.x) {
        const int r = idx / (G * R), col = idx % (G * R), tok = tok0 + r;
        if (tok >= N) continue;
        const float s = ((red[0][r][col] + red[1][r][col]) + red[2][r][col]) + red[3][r][col];
        ((bf16 *)gr.u[col / R])[(size_t)tok * R + col % R] = __float2bfloat16(alpha * s);
    }
}

// Row-wise rank-R products added into a wide output, for dX and Y: out [N, ncols] (row stride ld; bf16, or fp32
// with F32) += scale sum_j mask_j(L_j R_j), L_j = gr.du[j] [N, R] (bf16), R_j [R, ncols] staged from gr.a[j]: for dX
// A_j itself ([R, in] row-major), for Y (BT) B_j^T from B_j [ncols, R] row-major, one adapter and no mask. A block:
// 256 tokens (a warp every fourth m-tile) x 128 columns (4 groups of 32); R_j's columns are staged transposed in shared memory
// (k padded to 16 with zeros). Output columns are permuted so that thread (g, t) holds columns 8t..8t+7 of a group:
// n-tile n's logical column 2t + e is column 8t + 2n + e, so the B fragment of logical column g is column
// 8 (g / 2) + 2n + g % 2. k-step s pairs L columns 16s + 4t + {0,1} (a0/b0) and 16s + 4t + {2,3} (a2/b1).
enum { LORA_DX_TOKENS = 256, LORA_DX_COLS = 128 };
template <int R, int G, bool DROP, bool BT, bool F32>
__device__ __forceinline__ void lora_up(const cuda_lora_group &gr, void *__restrict__ out, long ld, int N, int ncols,
                                        float scale) {
    constexpr int KS = (R + 15) / 16, RP = KS * 16 + 8;   // k-steps; the staged row's length (16 bytes of padding)
    __shared__ __align__(16) bf16 sat[G][LORA_DX_COLS][RP];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int c0 = blockIdx.x * LORA_DX_COLS, tok0 = blockIdx.y * LORA_DX_TOKENS;
    for (int idx = threadIdx.x; idx < G * KS * 16 * LORA_DX_COLS; idx += blockDim.x) {
        // BT: B_j's rows c0.. are contiguous, read in order; A_j: row k's columns c0..
        const int j = idx / (LORA_DX_COLS * KS * 16), rest = idx % (LORA_DX_COLS * KS * 16);
        const int col = BT ? rest / (KS * 16) : rest % LORA_DX_COLS, k = BT ? rest % (KS * 16) : rest / LORA_DX_COLS;
        const bf16 *src = (const bf16 *)gr.a[j];
        sat[j][col][k] = k < R && c0 + col < ncols ? src[BT ? (size_t)(c0 + col) * R + k : (size_t)k * ncols + c0 + col]
                                                   : __float2bfloat16(0.f);
    }
    __syncthreads();
#pragma unroll 1
    for (int mt = 0; mt < LORA_DX_TOKENS / 64; mt++) {   // the block's m-tiles, a warp every fourth
        const int r0 = tok0 + (mt * 4 + warp) * 16 + g, r1 = r0 + 8;
        if (tok0 + (mt * 4 + warp) * 16 >= N) break;
        // A fragments: L_j rows r0, r1
        uint32_t af[G][KS][4];
#pragma unroll
        for (int j = 0; j < G; j++)
#pragma unroll
            for (int s = 0; s < KS; s++) {
                const int k = s * 16 + 4 * t;
                uint2 u0 = make_uint2(0, 0), u1 = make_uint2(0, 0);
                if (k < R) {
                    const bf16 *du = (const bf16 *)gr.du[j];
                    if (r0 < N) u0 = *(const uint2 *)(du + (size_t)r0 * R + k);
                    if (r1 < N) u1 = *(const uint2 *)(du + (size_t)r1 * R + k);
                }
                af[j][s][0] = u0.x; af[j][s][1] = u1.x; af[j][s][2] = u0.y; af[j][s][3] = u1.y;
            }
        // the block's rows of out first (8 16-byte loads a thread in flight: bf16; 16: fp32), then the products
        using V = typename std::conditional<F32, float4, uint4>::type;
        constexpr int VN = F32 ? 2 : 1;   // vectors per 8 values
        V ov[LORA_DX_COLS / 32][2][VN];
#pragma unroll
        for (int q = 0; q < LORA_DX_COLS / 32; q++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int r = h ? r1 : r0, c = c0 + q * 32 + 8 * t;
#pragma unroll
                for (int v = 0; v < VN; v++)
                    if (r < N && c < ncols) ov[q][h][v] = ((const V *)((F32 ? 4 : 2) * ((size_t)r * ld + c) + (const char *)out))[v];
            }
#pragma unroll
        for (int q = 0; q < LORA_DX_COLS / 32; q++) {
            const int c = c0 + q * 32 + 8 * t;
            if (c0 + q * 32 >= ncols) break;
            float acc[DROP ? G : 1][4][4] = {};
#pragma unroll
            for (int j = 0; j < G; j++)
#pragma unroll
                for (int n = 0; n < 4; n++) {
                    const int col = q * 32 + 8 * (g >> 1) + 2 * n + (g & 1);
#pragma unroll
                    for (int s = 0; s < KS; s++) {
                        const uint2 b = *(const uint2 *)&sat[j][col][s * 16 + 4 * t];
                        mma16816(acc[DROP ? j : 0][n], af[j][s], b.x, b.y);
                    }
                }
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int r = h ? r1 : r0;
                if (r >= N) continue;
                float sum[8] = {};
#pragma unroll
                for (int j = 0; j < (DROP ? G : 1); j++) {
                    const uint32_t m = DROP ? gr.bits[j][((size_t)r * ncols + c) / 8] : 0xFFu;
#pragma unroll
                    for (int n = 0; n < 4; n++)
#pragma unroll
                        for (int e = 0; e < 2; e++)
                            if ((m >> (2 * n + e)) & 1u) sum[2 * n + e] += acc[j][n][2 * h + e];
                }
                V *p = (V *)((F32 ? 4 : 2) * ((size_t)r * ld + c) + (char *)out);
                if constexpr (F32) {
                    float4 v0 = ov[q][h][0], v1 = ov[q][h][VN - 1];
                    v0.x += scale * sum[0]; v0.y += scale * sum[1]; v0.z += scale * sum[2]; v0.w += scale * sum[3];
                    v1.x += scale * sum[4]; v1.y += scale * sum[5]; v1.z += scale * sum[6]; v1.w += scale * sum[7];
                    p[0] = v0; p[VN - 1] = v1;
                } else {
                    uint4 v = ov[q][h][0];
                    bf16 *e8 = (bf16 *)&v;
#pragma unroll
                    for (int e = 0; e < 8; e++) e8[e] = __float2bfloat16(__bfloat162float(e8[e]) + scale * sum[e]);
                    p[0] = v;
                }
            }
        }
    }
}
template <int R, int G, bool DROP>
__global__ void __launch_bounds__(128) k_lora_dx(cuda_lora_group gr, void *__restrict__ out, long ld, int N, int ncols,
                                                 float scale) {
    lora_up<R, G, DROP, false, false>(gr, out, ld, N, ncols, scale);
}
template <int R, int G, bool DROP>   // the same into an fp32 dX (a HALO group's unrounded sum)
__global__ void __launch_bounds__(128) k_lora_dx_f32(cuda_lora_group gr, void *__restrict__ out, long ld, int N,
                                                     int ncols, float scale) {
    lora_up<R, G, DROP, false, true>(gr, out, ld, N, ncols, scale);
}
template <int R, bool F32>
__global__ void __launch_bounds__(128) k_lora_y(cuda_lora_group gr, void *__restrict__ out, long ld, int N, int ncols) {
    lora_up<R, 1, false, true, F32>(gr, out, ld, N, ncols, 1.f);
}

// Partial A gradients: ws[split][j][R][in] = sum over the split's tokens of dU_j^T mask_j(X). A block: 128 columns
// (a warp 32) x the split's tokens, 64 at a time; dU_j's 64 rows are staged in shared memory ([token][rank], rows
// padded) and read as A fragments by ldmatrix.trans (m = rank, k = token); R = 8 reads zero columns 8..15. Thread
// (g, t) loads columns 4g..4g+3 of the warp's 32 for tokens 2t, 2t+1, 2t+8, 2t+9 of a k-step: n-tile n's logical
// column g is column 4g + n, its logical columns 2t + e of C are columns 4 (2t + e) + n.
enum { LORA_DA_CHUNK = 64, LORA_DA_COLS = 128 };
template <int R, int G, bool DROP>
__global__ void __launch_bounds__(128) k_lora_da_part(cuda_lora_group gr, const bf16 *__restrict__ X, int N, int in,
                                                      int split_tokens, float *__restrict__ ws) {
    constexpr int MT = (R + 15) / 16, RW = MT * 16 + 8;
    __shared__ __align__(16) bf16 sdu[G][LORA_DA_CHUNK][RW];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int cw = blockIdx.x * LORA_DA_COLS + warp * 32, split = blockIdx.y;
    const int ts = split * split_tokens, te = min(N, ts + split_tokens);
    const bool cols_ok = cw < in;
    float acc[G][MT][4][4] = {};
    constexpr int Z = R < 16 ? 16 - R : 1;   // R < 16: the zero ranks R..15 that ldmatrix reads
    if (R < 16)
        for (int idx = threadIdx.x; idx < G * LORA_DA_CHUNK * Z; idx += blockDim.x)
            sdu[idx / (LORA_DA_CHUNK * Z)][(idx / Z) % LORA_DA_CHUNK][R + idx % Z] = __float2bfloat16(0.f);
    for (int t0 = ts; t0 < te; t0 += LORA_DA_CHUNK) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < G * LORA_DA_CHUNK * (R / 8); idx += blockDim.x) {
            const int q = idx % (R / 8), r = (idx / (R / 8)) % LORA_DA_CHUNK, j = idx / (LORA_DA_CHUNK * (R / 8));
            const int tok = t0 + r;
            *(uint4 *)&sdu[j][r][q * 8] = tok < te ? ldg16((const bf16 *)gr.du[j] + (size_t)tok * R + q * 8)
                                                   : make_uint4(0, 0, 0, 0);
        }
        // X: tokens 2t, 2t+1, 2t+8, 2t+9 of each of the chunk's 4 k-steps, columns cw + 4g .. + 3
        uint2 xv[4][4];
        uint32_t mb[G][4][4];
#pragma unroll
        for (int s = 0; s < 4; s++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int tok = t0 + s * 16 + 2 * t + (i & 1) + (i >> 1) * 8;
                const bool ok = cols_ok && tok < te;
                const size_t e0 = (size_t)tok * in + cw + 4 * g;
                xv[s][i] = ok ? *(const uint2 *)(X + e0) : make_uint2(0, 0);
#pragma unroll
                for (int j = 0; j < G; j++) mb[j][s][i] = DROP && ok ? (uint32_t)gr.bits[j][e0 / 8] >> (4 * (g & 1)) : 0xFu;
            }
        __syncthreads();
#pragma unroll
        for (int s = 0; s < 4; s++) {
#pragma unroll
            for (int j = 0; j < G; j++) {
                uint32_t b[4][2];   // [n][b0/b1]
                uint2 x[4];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    x[i] = xv[s][i];
                    if (DROP) {
                        const uint32_t m = mb[j][s][i];
                        x[i].x = keep_pair(x[i].x, m, 0);
                        x[i].y = keep_pair(x[i].y, m, 1);
                    }
                }
#pragma unroll
                for (int h = 0; h < 2; h++) {   // b0: tokens 2t, 2t+1 (x[0], x[1]); b1: 2t+8, 2t+9 (x[2], x[3])
                    b[0][h] = __byte_perm(x[2 * h].x, x[2 * h + 1].x, 0x5410);
                    b[1][h] = __byte_perm(x[2 * h].x, x[2 * h + 1].x, 0x7632);
                    b[2][h] = __byte_perm(x[2 * h].y, x[2 * h + 1].y, 0x5410);
                    b[3][h] = __byte_perm(x[2 * h].y, x[2 * h + 1].y, 0x7632);
                }
#pragma unroll
                for (int m = 0; m < MT; m++) {
                    uint32_t a[4];
                    const int mat = lane >> 3, rr = lane & 7;
                    ldsm_x4_t(a, &sdu[j][s * 16 + (mat >> 1) * 8 + rr][m * 16 + (mat & 1) * 8]);
#pragma unroll
                    for (int n = 0; n < 4; n++) mma16816(acc[j][m][n], a, b[n][0], b[n][1]);
                }
            }
        }
    }
    if (!cols_ok) return;
#pragma unroll
    for (int j = 0; j < G; j++)
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int rank = m * 16 + g + (e >> 1) * 8;
                if (rank >= R) continue;
                float *w = ws + (((size_t)split * G + j) * R + rank) * in + cw + 4 * (2 * t + (e & 1));
#pragma unroll
                for (int n = 0; n < 4; n++) w[n] = acc[j][m][n][e];
            }
}
// gA_j[r][c] += keep * the splits' partial sums in split order
__global__ void k_lora_da_sum(cuda_lora_group gr, const float *__restrict__ ws, int splits, size_t per, float keep) {
    const size_t all = (size_t)gr.n * per;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < all; i += (size_t)gridDim.x * blockDim.x) {
        float s = 0.f;
        for (int k = 0; k < splits; k++) s += ws[(size_t)k * all + i];
        gr.ga[i / per][i % per] += keep * s;
    }
}

// The B side of the adapters on one dY: gB_j [out_j, R] += dY_j^T U_j and dU_j [N, R] = scale dY_j B_j in one pass
// over dY. A block: 256 columns of one adapter x a split of the tokens, 64 at a time, double-buffered by cp.async
// ([token][column] rows padded by 16 bytes; U's rows alongside; B_j's 256 rows staged once). Per chunk, warp w:
//   gB: columns 32w..32w+31 (two m-tiles, A = dY^T by ldmatrix.trans) over the chunk's tokens, kept in registers
//       across the split and written as the split's partial sum (ws_gb[split][column][R]);
//   dU: tokens 16 (w % 4).. over columns 128 (w / 4).. (A = dY by ldmatrix, B = B_j by ldmatrix.trans); the two
//       column halves meet in shared memory and the block's partial sum goes to ws_du[column block][token][R].
// k_lora_b_sum adds the partials in a fixed order (deterministic).
enum { LORA_B_COLS = 256, LORA_B_CHUNK = 64, LORA_B_PITCH = LORA_B_COLS + 8 };
typedef struct {
    cuda_lora_bgroup gr;
    int cb0[4];          // adapter j's column blocks: cb0[j] .. cb0[j + 1] - 1
    long ld;             // dY's row stride
    int N, split_tokens, splits;
    float *ws_gb, *ws_du;   // [splits][cb0[n] * LORA_B_COLS][R], [cb0[n]][N][R]
} lora_b_args;
template <int R> struct lora_b_smem {
    bf16 y[2][LORA_B_CHUNK][LORA_B_PITCH];
    bf16 u[2][LORA_B_CHUNK][R + 8];
    bf16 b[LORA_B_COLS][R + 8];
    float red[4][16][R];
};
// B fragments (b0, b1) of n-tiles n0 / n0 + 8 (r[0..1] / r[2..3]) over k rows k0.. of a [k][n] tile with row pitch P;
// for R = 8 the second pair reads past the tile's 8 columns into its padding and is not used
template <int P>
__device__ __forceinline__ void lora_b_frag(uint32_t *r, const bf16 *tile, int k0, int n0, int lane) {
    ldsm_x4_t(r, tile + (size_t)(k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * P + n0 + (lane >> 4) * 8);
}
template <int R>
__global__ void __launch_bounds__(256) k_lora_b_part(lora_b_args p) {
    constexpr int NT = R / 8;
    extern __shared__ __align__(16) unsigned char lora_b_raw[];
    lora_b_smem<R> &sm = *(lora_b_smem<R> *)lora_b_raw;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int cb = blockIdx.x, split = blockIdx.y;
    int j = 0;
    while (j + 1 < p.gr.n && cb >= p.cb0[j + 1]) j++;
    const int c0 = (cb - p.cb0[j]) * LORA_B_COLS, out = p.gr.out[j];
    const bf16 *dy = (const bf16 *)p.gr.dy[j], *U = (const bf16 *)p.gr.u[j], *B = (const bf16 *)p.gr.b[j];
    const int ts = split * p.split_tokens, te = min(p.N, ts + p.split_tokens), N = p.N;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    for (int idx = threadIdx.x; idx < LORA_B_COLS * (R / 8); idx += blockDim.x) {
        const int row = idx / (R / 8), q = idx % (R / 8);
        *(uint4 *)&sm.b[row][q * 8] = c0 + row < out ? ldg16(B + (size_t)(c0 + row) * R + q * 8) : zero;
    }
    auto load = [&](int buf, int t0) {
        for (int idx = threadIdx.x; idx < LORA_B_CHUNK * (LORA_B_COLS / 8); idx += blockDim.x) {
            const int r = idx / (LORA_B_COLS / 8), c = (idx % (LORA_B_COLS / 8)) * 8, tok = t0 + r;
            bf16 *dst = &sm.y[buf][r][c];
            if (tok < te && c0 + c < out) cp_async16(dst, dy + (size_t)tok * p.ld + c0 + c);
            else *(uint4 *)dst = zero;
        }
        for (int idx = threadIdx.x; idx < LORA_B_CHUNK * (R / 8); idx += blockDim.x) {
            const int r = idx / (R / 8), q = (idx % (R / 8)) * 8, tok = t0 + r;
            bf16 *dst = &sm.u[buf][r][q];
            if (tok < te) cp_async16(dst, U + (size_t)tok * R + q);
            else *(uint4 *)dst = zero;
        }
        cp_async_commit();
    };
    float gb[2][NT][4] = {};
    const int chunks = te > ts ? (te - ts + LORA_B_CHUNK - 1) / LORA_B_CHUNK : 0;
    if (chunks) load(0, ts);
    for (int ch = 0; ch < chunks; ch++) {
        const int buf = ch & 1, t0 = ts + ch * LORA_B_CHUNK;
        if (ch + 1 < chunks) {
            load(buf ^ 1, t0 + LORA_B_CHUNK);
            cp_async_wait<1>();
        } else cp_async_wait<0>();
        __syncthreads();
        const bf16 *Y = &sm.y[buf][0][0], *Uc = &sm.u[buf][0][0];
        const int mat = lane >> 3, rr = lane & 7;
#pragma unroll
        for (int s = 0; s < LORA_B_CHUNK / 16; s++) {   // gB: k = the chunk's tokens
            uint32_t a[2][4], b[(NT + 1) / 2][4];
#pragma unroll
            for (int m = 0; m < 2; m++)
                ldsm_x4_t(a[m], Y + (size_t)(s * 16 + (mat >> 1) * 8 + rr) * LORA_B_PITCH + warp * 32 + m * 16 + (mat & 1) * 8);
#pragma unroll
            for (int h = 0; h < (NT + 1) / 2; h++) lora_b_frag<R + 8>(b[h], Uc, s * 16, h * 16, lane);
#pragma unroll
            for (int m = 0; m < 2; m++)
#pragma unroll
                for (int n = 0; n < NT; n++) mma16816(gb[m][n], a[m], b[n / 2][(n & 1) * 2], b[n / 2][(n & 1) * 2 + 1]);
        }
        float du[NT][4] = {};
        const int mt = warp & 3, kh = warp >> 2;
#pragma unroll
        for (int s = 0; s < LORA_B_COLS / 32; s++) {   // dU: k = the block's columns (this warp's half)
            const int k0 = kh * (LORA_B_COLS / 2) + s * 16;
            uint32_t a[4], b[(NT + 1) / 2][4];
            ldsm_x4(a, Y + (size_t)(mt * 16 + (lane & 15)) * LORA_B_PITCH + k0 + (lane >> 4) * 8);
#pragma unroll
            for (int h = 0; h < (NT + 1) / 2; h++) lora_b_frag<R + 8>(b[h], &sm.b[0][0], k0, h * 16, lane);
#pragma unroll
            for (int n = 0; n < NT; n++) mma16816(du[n], a, b[n / 2][(n & 1) * 2], b[n / 2][(n & 1) * 2 + 1]);
        }
        if (kh)
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) sm.red[mt][g + (e >> 1) * 8][n * 8 + 2 * t + (e & 1)] = du[n][e];
        __syncthreads();   // (also: every warp is done with this chunk's buffers before the next load into them)
        if (!kh)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int tok = t0 + mt * 16 + g + h * 8;
                if (tok >= te) continue;
                float *w = p.ws_du + ((size_t)cb * N + tok) * R;
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    const int c = n * 8 + 2 * t;
                    *(float2 *)(w + c) = make_float2(du[n][2 * h] + sm.red[mt][g + h * 8][c],
                                                     du[n][2 * h + 1] + sm.red[mt][g + h * 8][c + 1]);
                }
            }
    }
    // gB's partial sum of this split (zeros when the split has no tokens)
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int col = c0 + warp * 32 + m * 16 + g + h * 8;
            if (col >= out) continue;
            float *w = p.ws_gb + ((size_t)split * p.cb0[p.gr.n] * LORA_B_COLS + (size_t)cb * LORA_B_COLS + col - c0) * R;
#pragma unroll
            for (int n = 0; n < NT; n++) *(float2 *)(w + n * 8 + 2 * t) = make_float2(gb[m][n][2 * h], gb[m][n][2 * h + 1]);
        }
}
// dU_j = scale * the column blocks' partials in order; gB_j += the splits' partials in order
__global__ void k_lora_b_sum(lora_b_args p, int R, float scale) {
    const size_t ndu = (size_t)p.gr.n * p.N * R, ncols = (size_t)p.cb0[p.gr.n] * LORA_B_COLS;
    size_t ngb = 0;
    for (int j = 0; j < p.gr.n; j++) ngb += (size_t)p.gr.out[j] * R;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < ndu + ngb; i += (size_t)gridDim.x * blockDim.x) {
        if (i < ndu) {
            const int j = (int)(i / ((size_t)p.N * R));
            const size_t e = i % ((size_t)p.N * R);
            float s = 0.f;
            for (int cb = p.cb0[j]; cb < p.cb0[j + 1]; cb++) s += p.ws_du[(size_t)cb * p.N * R + e];
            ((bf16 *)p.gr.du[j])[e] = __float2bfloat16(scale * s);
        } else {
            size_t e = i - ndu;
            int j = 0;
            while (e >= (size_t)p.gr.out[j] * R) e -= (size_t)p.gr.out[j++] * R;
            const size_t at = (size_t)p.cb0[j] * LORA_B_COLS * R + e;   // column e / R of adapter j's first block
            float s = 0.f;
            for (int k = 0; k < p.splits; k++) s += p.ws_gb[(size_t)k * ncols * R + at];
            p.gr.gb[j][e] += s;
        }
    }
}

static int rank_ok(int r) { return r == 8 || r == 16 || r == 32; }   // the kernels' template ranks
// f(std::integral_constant<int, R>{}) for the rank r (one of rank_ok's): the launchers' rank dispatch
template <class F> static void by_rank(int r, F f) {
    if (r == 8) f(std::integral_constant<int, 8>{});
    else if (r == 16) f(std::integral_constant<int, 16>{});
    else f(std::integral_constant<int, 32>{});
}
extern "C" int cuda_lora_group_ok(int r, int in, int n) { return rank_ok(r) && in > 0 && in % 32 == 0 && n >= 1 && n <= 3; }

// Splits of the token range for the A gradient: about 4 blocks an SM over (columns x splits), whole 64-token chunks.
static int da_split_tokens(int N, int in) {
    const int col_blocks = cdiv(in, LORA_DA_COLS), chunks = cdiv(N, LORA_DA_CHUNK);
    int splits = cdiv(528, col_blocks);
    if (splits > chunks) splits = chunks;
    if (splits < 1) splits = 1;
    return cdiv(chunks, splits) * LORA_DA_CHUNK;
}
extern "C" size_t cuda_lora_da_ws_floats(int N, int in, int r, int n) {
    return (size_t)cdiv(N, da_split_tokens(N, in)) * n * r * in;
}

#define LORA_DISPATCH(KERNEL, GRID, BLOCK, ...)                                                                      \
    do {                                                                                                             \
        const bool drop_ = gr->bits[0] != NULL;                                                                      \
        if (gr->n == 1) LORA_DISPATCH_G(KERNEL, 1, GRID, BLOCK, __VA_ARGS__);                                        \
        else if (gr->n == 2) LORA_DISPATCH_G(KERNEL, 2, GRID, BLOCK, __VA_ARGS__);                                   \
        else LORA_DISPATCH_G(KERNEL, 3, GRID, BLOCK, __VA_ARGS__);                                                   \
    } while (0)
#define LORA_DISPATCH_G(KERNEL, G, GRID, BLOCK, ...)                                                                 \
    by_rank(r, [&](auto R_) { LORA_DISPATCH_D(KERNEL, decltype(R_)::value, G, GRID, BLOCK, __VA_ARGS__); })
#define LORA_DISPATCH_D(KERNEL, R, G, GRID, BLOCK, ...)                                                              \
    do {                                                                                                             \
        if (drop_) KERNEL<R, G, true><<<GRID, BLOCK, 0, s>>>(__VA_ARGS__);                                          \
        else KERNEL<R, G, false><<<GRID, BLOCK, 0, s>>>(__VA_ARGS__);                                               \
    } while (0)

extern "C" void cuda_lora_u(const cuda_lora_group *gr, const halo_bf16 *X, int N, int in, int r, float alpha,
                            uint64_t key, uint32_t thr, cudaStream_t s) {
    if (N <= 0) return;
    LORA_DISPATCH(k_lora_u, cdiv(N, LORA_U_TOKENS), 128, *gr, (const bf16 *)X, N, in, alpha, key, thr);
    CUDA_LAUNCH_CHECK();
}
static void lora_dx_launch(const cuda_lora_group *gr, void *dX, int f32, int N, int in, int r, float keep,
                           cudaStream_t s) {
    if (N <= 0) return;
    const dim3 grid(cdiv(in, LORA_DX_COLS), cdiv(N, LORA_DX_TOKENS));
    if (f32) LORA_DISPATCH(k_lora_dx_f32, grid, 128, *gr, dX, (long)in, N, in, keep);
    else LORA_DISPATCH(k_lora_dx, grid, 128, *gr, dX, (long)in, N, in, keep);
    CUDA_LAUNCH_CHECK();
}
extern "C" void cuda_lora_dx(const cuda_lora_group *gr, halo_bf16 *dX, int N, int in, int r, float keep,
                             cudaStream_t s) {
    lora_dx_launch(gr, dX, 0, N, in, r, keep, s);
}
extern "C" void cuda_lora_dx_f32(const cuda_lora_group *gr, float *dX, int N, int in, int r, float keep,
                                 cudaStream_t s) {
    lora_dx_launch(gr, dX, 1, N, in, r, keep, s);
}
extern "C" int cuda_lora_y_ok(int r, int out, long ldy, int y_f32, const void *Y) {
    return rank_ok(r) && out > 0 && out % 32 == 0 && ldy % 8 == 0 &&
           ((uintptr_t)Y & (y_f32 ? 31 : 15)) == 0;
}
extern "C" void cuda_lora_y(void *Y, int y_f32, long ldy, const halo_bf16 *U, const halo_bf16 *B, int N, int out, int r,
                            cudaStream_t s) {
    if (N <= 0) return;
    cuda_lora_group gr = {.n = 1};
    gr.du[0] = U;
    gr.a[0] = B;
    const dim3 grid(cdiv(out, LORA_DX_COLS), cdiv(N, LORA_DX_TOKENS));
    by_rank(r, [&](auto R_) {
        constexpr int R = decltype(R_)::value;
        if (y_f32) k_lora_y<R, true><<<grid, 128, 0, s>>>(gr, Y, ldy, N, out);
        else k_lora_y<R, false><<<grid, 128, 0, s>>>(gr, Y, ldy, N, out);
    });
    CUDA_LAUNCH_CHECK();
}
extern "C" void cuda_lora_da(const cuda_lora_group *gr, const halo_bf16 *X, int N, int in, int r, float keep,
                             float *ws, cudaStream_t s) {
    if (N <= 0) return;
    const int st = da_split_tokens(N, in), splits = cdiv(N, st);
    const dim3 grid(cdiv(in, LORA_DA_COLS), splits);
    LORA_DISPATCH(k_lora_da_part, grid, 128, *gr, (const bf16 *)X, N, in, st, ws);
    CUDA_LAUNCH_CHECK();
    const size_t per = (size_t)r * in;
    k_lora_da_sum<<<grid_for(gr->n * per), 256, 0, s>>>(*gr, ws, splits, per, keep);
    CUDA_LAUNCH_CHECK();
}

// The B side's geometry: column blocks of each adapter (cb0), token splits for about 2 blocks an SM (whole chunks)
static int lora_b_plan(const cuda_lora_bgroup *gr, int N, int cb0[4], int *split_tokens) {
    cb0[0] = 0;
    for (int j = 0; j < gr->n; j++) cb0[j + 1] = cb0[j] + cdiv(gr->out[j], LORA_B_COLS);
    const int chunks = cdiv(N, LORA_B_CHUNK);
    int splits = cdiv(264, cb0[gr->n]);
    if (splits > chunks) splits = chunks;
    if (splits < 1) splits = 1;
    *split_tokens = cdiv(chunks, splits) * LORA_B_CHUNK;
    return cdiv(N, *split_tokens);
}
extern "C" int cuda_lora_b_ok(const cuda_lora_bgroup *gr, int r, long ld) {
    if (!rank_ok(r) || gr->n < 1 || gr->n > 3 || ld % 8) return 0;
    for (int j = 0; j < gr->n; j++)
        if (gr->out[j] <= 0 || gr->out[j] % 8 || ((uintptr_t)gr->dy[j] & 15) || ((uintptr_t)gr->u[j] & 15) ||
            ((uintptr_t)gr->b[j] & 15) || ((uintptr_t)gr->gb[j] & 7))
            return 0;
    return 1;
}
extern "C" size_t cuda_lora_b_ws_floats(int N, const int *outs, int n, int r) {
    cuda_lora_bgroup gr = {.n = n};
    for (int j = 0; j < n; j++) gr.out[j] = outs[j];
    int cb0[4], st;
    const int splits = lora_b_plan(&gr, N, cb0, &st);
    return ((size_t)splits * LORA_B_COLS + N) * cb0[n] * r;
}
extern "C" void cuda_lora_b(const cuda_lora_bgroup *gr, int N, long ld, int r, float scale, float *ws, cudaStream_t s) {
    if (N <= 0) return;
    lora_b_args p = {.gr = *gr, .ld = ld, .N = N};
    p.splits = lora_b_plan(gr, N, p.cb0, &p.split_tokens);
    p.ws_gb = ws;
    p.ws_du = ws + (size_t)p.splits * p.cb0[gr->n] * LORA_B_COLS * r;
    const dim3 grid(p.cb0[gr->n], p.splits);
    by_rank(r, [&](auto R_) {
        constexpr int R = decltype(R_)::value;
        const int bytes = (int)sizeof(lora_b_smem<R>);   // set each call: the attribute is the current device's
        CUDA_CHECK(cudaFuncSetAttribute(k_lora_b_part<R>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
        k_lora_b_part<R><<<grid, 256, bytes, s>>>(p);
    });
    CUDA_LAUNCH_CHECK();
    size_t total = (size_t)gr->n * N * r;
    for (int j = 0; j < gr->n; j++) total += (size_t)gr->out[j] * r;
    k_lora_b_sum<<<grid_for(total), 256, 0, s>>>(p, r, scale);
    CUDA_LAUNCH_CHECK();
}
