// SwiGLU on the GPU over fused [gate | up] rows: out = silu(gate) * up in fp32 arithmetic, bf16 storage.
#include "cuda/common.cuh"
#include "cuda/hadamard_warp.cuh"
#include "cuda/quant_codes.cuh"
#include "cuda/swiglu_math.cuh"

// silu(gate) * up of V consecutive columns, as stored (bf16 pairs); mx (may be NULL): their max
template <int V>
__device__ __forceinline__ void swiglu_fwd_vec(const bvec<V> &g2, const bvec<V> &u2, bvec<V> &o2, float *mx) {
#pragma unroll
    for (int k = 0; k < V / 2; k++) {
        const float2 g = pair_f2(g2.w[k]), u = pair_f2(u2.w[k]);
        o2.w[k] = pair_bf(g.x / (1.f + __expf(-g.x)) * u.x, g.y / (1.f + __expf(-g.y)) * u.y, mx);
    }
}

// grid: x over groups of V columns (V = 8 when F % 8 == 0, else 2; F even for every Llama MLP size), y strides over
// rows. amax (may be NULL): max |out| of the stored bf16 values, one atomic per block (a HALO level-0 down_proj's X
// scale; NaN skipped). rot_lb > 0 (V = 8, F % 256 == 0: a warp holds 256 consecutive columns of a row): the amax of
// the output rotated in Hadamard blocks of 2^rot_lb and scaled by rot_scale (a level 1-2 down_proj's X scale).
// nonfinite (with amax; may be NULL): |= 1 when an output is a NaN or Inf (the layer's X flag).
template <int V>
__global__ void k_swiglu_fwd(bf16 *out, const bf16 *gu, int N, int F, unsigned *amax, int rot_lb, float rot_scale,
                             int *nonfinite) {
    int j = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    float mx = 0.f;
    int bad = 0;
    for (int n = blockIdx.y; n < N && j < F; n += gridDim.y) {
        const bf16 *row = gu + (size_t)n * 2 * F;
        const bvec<V> g2 = ldv<V>(row + j), u2 = ldv<V>(row + F + j);
        bvec<V> o2;
        swiglu_fwd_vec<V>(g2, u2, o2, amax && !rot_lb ? &mx : NULL);
#pragma unroll
        for (int k = 0; k < V / 2; k++) {
            if (nonfinite) {
                __nv_bfloat162 h;
                memcpy(&h, &o2.w[k], 4);
                bad |= nonfinite_bf2(h);
            }
        }
        stv<V>(out + (size_t)n * F + j, o2);
        if (V == 8 && rot_lb) {   // uniform per warp (F % 256 == 0: j < F for all its lanes or none)
            float f[8];
            #pragma unroll
            for (int k = 0; k < 4; k++) {
                const float2 p = pair_f2(o2.w[k]);
                f[2 * k] = p.x; f[2 * k + 1] = p.y;
            }
            mx = fmaxf(mx, rot256_absmax8(f, threadIdx.x & 31, rot_lb, rot_scale));
        }
    }
    if (amax) {
        mx = block_max(mx);
        if (threadIdx.x == 0) atomicMax(amax, __float_as_uint(mx));
        block_flags(bad, nonfinite);
    }
}

// amax_g / amax_u (both or neither): max |dgate|, |dup| of the stored bf16 values, one atomic each per block (the
// gate and up HALO layers' E_Y scales, without their own absmax pass). NaN compares false there, so a NaN gradient
// leaves the scale finite: nf_g / nf_u (with the amaxes, both or neither; may be NULL) |= 1 when a dgate / dup value
// is a NaN or Inf (the layers' E_Y flags, which their skipped absmax pass would set).
template <int V>
__global__ void k_swiglu_bwd(bf16 *dgu, const bf16 *dout, const bf16 *gu, int N, int F, unsigned *amax_g,
                             unsigned *amax_u, int *nf_g, int *nf_u) {
    int j = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    float mg = 0.f, mu = 0.f;
    int bad = 0;   // bit 0: dgate, bit 1: dup
    for (int n = blockIdx.y; n < N && j < F; n += gridDim.y) {
        const bf16 *row = gu + (size_t)n * 2 * F;
        const bvec<V> g2 = ldv<V>(row + j), u2 = ldv<V>(row + F + j), d2 = ldv<V>(dout + (size_t)n * F + j);
        bvec<V> dg2, du2;
        swiglu_bwd_vec<V>(g2, u2, d2, dg2, du2, amax_g ? &mg : NULL, amax_g ? &mu : NULL);
        if (nf_g) bad |= nonfinite_vec<V>(dg2) | nonfinite_vec<V>(du2) << 1;
        if (dgu) {   // (NULL: the amaxes only)
            bf16 *drow = dgu + (size_t)n * 2 * F;
            stv<V>(drow + j, dg2);
            stv<V>(drow + F + j, du2);
        }
    }
    if (amax_g) {
        mg = block_max(mg);
        mu = block_max(mu);
        if (threadIdx.x == 0) { atomicMax(amax_g, __float_as_uint(mg)); atomicMax(amax_u, __float_as_uint(mu)); }
        block_flags(bad, nf_g, nf_u);
    }
}

// The backward by tiles of 64 tokens x 64 columns (F % 64 == 0), with k_swiglu_bwd<8>'s outputs and amaxes, that
// also takes a level-2 gate / up layer's max |H_b^T E_Y|: the token rotation in blocks of 2^tok_lb (3..6) of the
// stored bf16 dgate and dup, the stages h = 1, 2, 4, .. in order with one rounding each (tokrot_tile's values), the
// maximum scaled by tok_scale afterwards (as there), one atomic per warp. rnf_g / rnf_u (may be NULL) |= 1 on a NaN
// or Inf among those values. Phase 2 gives each column to two lanes 16 apart (tokens 0..31, 32..63; stage 32 by one
// shuffle); rows 32..63 sit in the tile with their columns XOR 16, so the two lanes' reads fall in different banks.
__global__ void __launch_bounds__(256) k_swiglu_bwd_tok(bf16 *dgu, const bf16 *dout, const bf16 *gu, int N, int F,
                                                        unsigned *amax_g, unsigned *amax_u, unsigned *ramax_g,
                                                        unsigned *ramax_u, int *rnf_g, int *rnf_u, int tok_lb,
                                                        float tok_scale) {
    __shared__ __align__(16) bf16 sm[2][64][64];
    const int t0 = blockIdx.y * 64, c0 = blockIdx.x * 64;
    float mg = 0.f, mu = 0.f;
    #pragma unroll
    for (int p = 0; p < 2; p++) {
        const int v = threadIdx.x + 256 * p, tt = v >> 3, cc = (v & 7) * 8, n = t0 + tt, j = c0 + cc;
        bvec<8> dg2, du2;
        if (n < N) {
            const bf16 *row = gu + (size_t)n * 2 * F;
            const bvec<8> g2 = ldv<8>(row + j), u2 = ldv<8>(row + F + j), d2 = ldv<8>(dout + (size_t)n * F + j);
            swiglu_bwd_vec<8>(g2, u2, d2, dg2, du2, &mg, &mu);   // k_swiglu_bwd's arithmetic, so the same bits
            bf16 *drow = dgu + (size_t)n * 2 * F;
            stv<8>(drow + j, dg2);
            stv<8>(drow + F + j, du2);
        } else {
            #pragma unroll
            for (int k = 0; k < 4; k++) dg2.w[k] = du2.w[k] = 0u;   // tokens past N: zeros, as the column kernels
        }
        const int cs = tt >= 32 ? cc ^ 16 : cc;
        stv<8>(&sm[0][tt][cs], dg2);
        stv<8>(&sm[1][tt][cs], du2);
    }
    mg = block_max(mg);   // (synchronizes: the tile is complete after it)
    mu = block_max(mu);
    if (threadIdx.x == 0) { atomicMax(amax_g, __float_as_uint(mg)); atomicMax(amax_u, __float_as_uint(mu)); }
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, ten = w >> 2, half = lane >> 4;
    const int col = (w & 3) * 16 + (lane & 15), cs = half ? col ^ 16 : col;
    float x[32];
    #pragma unroll
    for (int k = 0; k < 32; k++) x[k] = __bfloat162float(sm[ten][32 * half + k][cs]);
    #pragma unroll
    for (int st = 0; st < 5; st++)
        if (st < tok_lb)
            #pragma unroll
            for (int k = 0; k < 32; k++)
                if (!(k & (1 << st))) {
                    const float a = x[k], b = x[k + (1 << st)];
                    x[k] = a + b;
                    x[k + (1 << st)] = a - b;
                }
    if (tok_lb > 5)
        #pragma unroll
        for (int k = 0; k < 32; k++) {   // h = 32: the lower lane a + b, the upper a - b (a: the lower lane's value)
            const float o = __shfl_xor_sync(0xffffffffu, x[k], 16);
            x[k] = half ? o - x[k] : x[k] + o;
        }
    float mx = 0.f;
    int bad = 0;
    #pragma unroll
    for (int k = 0; k < 32; k++) {
        mx = fmaxf(mx, fabsf(x[k]));   // NaN skipped (the flag reports it)
        bad |= !isfinite(x[k]);
    }
    mx = warp_max(mx);
    int *nf = ten ? rnf_u : rnf_g;
    if (__any_sync(0xffffffffu, bad) && lane == 0 && nf) atomicOr(nf, 1);
    if (lane == 0) atomicMax(ten ? ramax_u : ramax_g, __float_as_uint(__fmul_rn(mx, tok_scale)));
}

// ---- delayed scaling (halo_cuda.h, halo_cuda_codes): the MLP's HALO operands written as 8-bit codes here ----
// Forward (FWD): down_proj's X = silu(gate) * up, into c0. Backward: gate's and up's E_Y (dgate, dup) into c0, c1.
// Each value is computed and rounded to bf16 exactly as k_swiglu_fwd / k_swiglu_bwd store it, then quantized with the
// scale of *c.amax as halo_cuda_quant_tile would quantize that bf16 tensor (the same codes), written row-major
// (c.q) and transposed (c.qt, zero codes for tokens N..rows_pad-1) through k_tile8's tiles: TR tokens x 64 columns,
// TR threads, 8 columns a chunk. max |value| of the bf16 values goes to c.amax_next (one atomic per block; NaN
// skipped), a NaN / Inf sets c.nonfinite. RB: chunks loaded together (every load of a group first). The backward's three inputs take RB 1 by default, which
// leaves 48 registers and 20 blocks an SM (RB 2: 64 and 16; HALO_SWIGLU_CODES_RB=2 to compare). TR: tokens a tile,
// the backward's 128 by default (128 threads; whole 128-byte lines of the transposed codes, half the blocks and
// atomics: 0.252 against 0.266 ms a 1B layer on an H100, dev/cuda/NOTES.md run 34; HALO_SWIGLU_CODES_TR=64 for 64,
// the only tiles that take HALO_SWIGLU_CODES_RB=2).
template <bool FWD, int RB, int TR = 64>
__global__ void __launch_bounds__(TR, (RB == 1 ? 20 : 16) * 64 / TR) k_swiglu_codes(const bf16 *__restrict__ dout,
                                                                        const bf16 *__restrict__ gu, int N, int F,
                                                                        halo_cuda_codes c0, halo_cuda_codes c1) {
    constexpr int NO = FWD ? 1 : 2;
    __shared__ __align__(16) uint2 tile[NO][TR][9];
    const int r0 = blockIdx.y * TR, col0 = blockIdx.x * 64, t = threadIdx.x, cc = t & 7, j = col0 + cc * 8;
    if (blockIdx.x == 0 && blockIdx.y == 0 && t == 0) {
        run_alpha(c0.aj);
        if (!FWD) run_alpha(c1.aj);
    }
    const float qm = qmax_of(c0.fmt);
    float rs[NO], mx[NO];
    rs[0] = rscale_of(*c0.amax, qm);
    if (!FWD) rs[NO - 1] = rscale_of(*c1.amax, qm);
    #pragma unroll
    for (int x = 0; x < NO; x++) mx[x] = 0.f;
    int bad = 0;
    #pragma unroll
    for (int h = 0; h < 8 / RB; h++) {
        bvec<8> g2[RB], u2[RB], d2[RB];
        #pragma unroll
        for (int k = 0; k < RB; k++) {
            const int n = r0 + (t >> 3) + TR / 8 * (RB * h + k);
            if (n < N) {
                const bf16 *row = gu + (size_t)n * 2 * F;
                g2[k] = ldv<8>(row + j);
                u2[k] = ldv<8>(row + F + j);
                if (!FWD) d2[k] = ldv<8>(dout + (size_t)n * F + j);
            }
        }
        #pragma unroll
        for (int k = 0; k < RB; k++) {
            const int i = (t >> 3) + TR / 8 * (RB * h + k), n = r0 + i;
            uint2 code[NO];
            #pragma unroll
            for (int x = 0; x < NO; x++) code[x] = make_uint2(0u, 0u);
            if (n < N) {
                bvec<8> o[NO];
                if (FWD) swiglu_fwd_vec<8>(g2[k], u2[k], o[0], &mx[0]);
                else swiglu_bwd_vec<8>(g2[k], u2[k], d2[k], o[0], o[NO - 1], &mx[0], &mx[NO - 1]);
                #pragma unroll
                for (int x = 0; x < NO; x++) {
                    bad |= nonfinite_vec<8>(o[x]) << x;
                    float f[8];
                    #pragma unroll
                    for (int w = 0; w < 4; w++) {
                        const float2 p = pair_f2(o[x].w[w]);
                        f[2 * w] = p.x; f[2 * w + 1] = p.y;
                    }
                    code[x] = quant8(f, rs[x], c0.fmt);
                }
            }
            if (c0.q && n < N) *(uint2 *)(c0.q + (long)n * c0.ldq + j) = code[0];
            if (!FWD && c1.q && n < N) *(uint2 *)(c1.q + (long)n * c1.ldq + j) = code[NO - 1];
            #pragma unroll
            for (int x = 0; x < NO; x++) tile8_put(tile[x], i, cc, code[x]);
        }
    }
    __syncthreads();
    if (c0.qt) tile8_store_t<TR>(tile[0], t, r0, col0, F, c0.rows_pad, c0.qt, c0.ldqt);
    if (!FWD && c1.qt) tile8_store_t<TR>(tile[NO - 1], t, r0, col0, F, c1.rows_pad, c1.qt, c1.ldqt);
    #pragma unroll
    for (int x = 0; x < NO; x++) {
        const float m = block_max(mx[x]);
        unsigned *next = (unsigned *)(x ? c1.amax_next : c0.amax_next);
        if (t == 0 && next) atomicMax(next, __float_as_uint(m));
    }
    block_flags(bad, c0.nonfinite, FWD ? NULL : c1.nonfinite);
}

static void swiglu_codes_check(const char *who, int N, int F, const halo_cuda_codes *c) {
    if (F % 64) {
        fprintf(stderr, "%s: F %d is not a multiple of 64\n", who, F);
        abort();
    }
    codes_layout_check(who, c, N, F, 8);
}

extern "C" void cuda_swiglu_forward_codes(const halo_bf16 *gu, int N, int F, const halo_cuda_codes *c,
                                          cudaStream_t s) {
    swiglu_codes_check("cuda_swiglu_forward_codes", N, F, c);
    const int rows = c->qt ? c->rows_pad : N;
    if (rows <= 0) return;
    k_swiglu_codes<true, 4><<<dim3(F / 64, cdiv(rows, 64)), 64, 0, s>>>(NULL, (const bf16 *)gu, N, F, *c, *c);
    CUDA_LAUNCH_CHECK();
}

static int g_codes_tr = -1;
extern "C" void cuda_swiglu_codes_tile(int tokens) { g_codes_tr = tokens == 128 ? 128 : 64; }

extern "C" void cuda_swiglu_backward_codes(const halo_bf16 *dout, const halo_bf16 *gu, int N, int F,
                                           const halo_cuda_codes *gate, const halo_cuda_codes *up, cudaStream_t s) {
    swiglu_codes_check("cuda_swiglu_backward_codes", N, F, gate);
    swiglu_codes_check("cuda_swiglu_backward_codes", N, F, up);
    if (gate->fmt != up->fmt || !gate->qt != !up->qt || (gate->qt && gate->rows_pad != up->rows_pad)) {
        fprintf(stderr, "cuda_swiglu_backward_codes: gate's and up's codes differ in format or layout\n");
        abort();
    }
    const int rows = gate->qt ? gate->rows_pad : N;
    if (rows <= 0) return;
    static int rb = -1;
    if (rb < 0) {
        const char *e = getenv("HALO_SWIGLU_CODES_RB");
        rb = e && e[0] == '2' ? 2 : 1;
    }
    if (g_codes_tr < 0) {
        const char *e = getenv("HALO_SWIGLU_CODES_TR");
        g_codes_tr = e && !strcmp(e, "64") ? 64 : 128;
    }
    const int tr = g_codes_tr;
    const dim3 grid(F / 64, cdiv(rows, tr));
    if (tr == 128)
        k_swiglu_codes<false, 1, 128><<<grid, 128, 0, s>>>((const bf16 *)dout, (const bf16 *)gu, N, F, *gate, *up);
    else if (rb == 2)
        k_swiglu_codes<false, 2><<<grid, 64, 0, s>>>((const bf16 *)dout, (const bf16 *)gu, N, F, *gate, *up);
    else k_swiglu_codes<false, 1><<<grid, 64, 0, s>>>((const bf16 *)dout, (const bf16 *)gu, N, F, *gate, *up);
    CUDA_LAUNCH_CHECK();
}

// One launch of each kernel, 8 columns a thread when F % 8 == 0, else 2. rows: row blocks at most (the amax forms take
// fewer, 1024: one atomic per block and address; with 8 columns a thread 256 left the 1B backward at 3.39 ms a step
// against 3.10 with 2 columns a thread).
static void swiglu_launch(bool fwd, halo_bf16 *dst, const halo_bf16 *dout, const halo_bf16 *gu, int N, int F, int rows,
                          float *amax_a, float *amax_b, int rot_lb, float rot_scale, int *nf_a, int *nf_b,
                          cudaStream_t s) {
    if (N == 0) return;
    if (F % 2) { fprintf(stderr, "cuda_swiglu: odd intermediate size %d unsupported\n", F); abort(); }
    if (rot_lb && (rot_lb < 3 || rot_lb > 8 || F % 256 || !amax_a)) {
        fprintf(stderr, "cuda_swiglu_forward_amax: rotated amax needs blocks of 8..256 and F %% 256 == 0 (F %d, "
                        "block %d)\n", F, 1 << rot_lb);
        abort();
    }
    const dim3 grid(cdiv(F / (F % 8 ? 2 : 8), 256), N < rows ? N : rows);
    bf16 *d = (bf16 *)dst;
    const bf16 *g = (const bf16 *)gu, *o = (const bf16 *)dout;
    unsigned *a = (unsigned *)amax_a, *b = (unsigned *)amax_b;
    if (!a || (!fwd && !nf_b)) nf_a = nf_b = NULL;
    if (fwd && F % 8) k_swiglu_fwd<2><<<grid, 256, 0, s>>>(d, g, N, F, a, 0, 1.f, nf_a);
    else if (fwd) k_swiglu_fwd<8><<<grid, 256, 0, s>>>(d, g, N, F, a, rot_lb, rot_scale, nf_a);
    else if (F % 8) k_swiglu_bwd<2><<<grid, 256, 0, s>>>(d, o, g, N, F, a, b, nf_a, nf_b);
    else k_swiglu_bwd<8><<<grid, 256, 0, s>>>(d, o, g, N, F, a, b, nf_a, nf_b);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_swiglu_forward(halo_bf16 *out, const halo_bf16 *gu, int N, int F, cudaStream_t s) {
    swiglu_launch(true, out, NULL, gu, N, F, 8192, NULL, NULL, 0, 1.f, NULL, NULL, s);
}
extern "C" void cuda_swiglu_forward_amax(halo_bf16 *out, const halo_bf16 *gu, int N, int F, float *amax, int rot_lb,
                                         float rot_scale, int *nonfinite, cudaStream_t s) {
    swiglu_launch(true, out, NULL, gu, N, F, 1024, amax, NULL, rot_lb, rot_scale, nonfinite, NULL, s);
}
extern "C" void cuda_swiglu_backward(halo_bf16 *dgu, const halo_bf16 *dout, const halo_bf16 *gu, int N, int F,
                                     cudaStream_t s) {
    swiglu_launch(false, dgu, dout, gu, N, F, 8192, NULL, NULL, 0, 1.f, NULL, NULL, s);
}
extern "C" void cuda_swiglu_backward_amax(halo_bf16 *dgu, const halo_bf16 *dout, const halo_bf16 *gu, int N, int F,
                                          float *amax_gate, float *amax_up, int *nf_gate, int *nf_up, cudaStream_t s) {
    swiglu_launch(false, dgu, dout, gu, N, F, 1024, amax_gate, amax_up, 0, 1.f, nf_gate, nf_up, s);
}
extern "C" void cuda_swiglu_backward_amax_tok(halo_bf16 *dgu, const halo_bf16 *dout, const halo_bf16 *gu, int N, int F,
                                              float *amax_gate, float *amax_up, float *tok_amax_gate,
                                              float *tok_amax_up, int *nonfinite_gate, int *nonfinite_up, int tok_lb,
                                              float tok_scale, cudaStream_t s) {
    if (N == 0) return;
    if (F % 64 || tok_lb < 3 || tok_lb > 6) {
        fprintf(stderr, "cuda_swiglu_backward_amax_tok: needs F %% 64 == 0 and token blocks of 8..64 (F %d, block %d)\n",
                F, 1 << tok_lb);
        abort();
    }
    k_swiglu_bwd_tok<<<dim3(F / 64, cdiv(N, 64)), 256, 0, s>>>(
        (bf16 *)dgu, (const bf16 *)dout, (const bf16 *)gu, N, F, (unsigned *)amax_gate, (unsigned *)amax_up,
        (unsigned *)tok_amax_gate, (unsigned *)tok_amax_up, nonfinite_gate, nonfinite_up, tok_lb, tok_scale);
    CUDA_LAUNCH_CHECK();
}
