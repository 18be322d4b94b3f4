// Rotary position embedding on the GPU, in place on bf16 q/k heads inside the fused qkv rows, HF half-split pairs
// (i, i + hd/2), angles from the CPU's rope_tables (llama3 scaling included there). Backward is the inverse rotation.
#include "cuda/common.cuh"
#include "cuda/quant_codes.cuh"

// One pair (a, b) rotated by (c, s) and rounded to bf16. Written out (one rounded product, then a fused multiply-add)
// so that every kernel here gets the same bits: left to the compiler, the contraction may differ between kernels.
__device__ __forceinline__ void rot_pair(float a, float b, float c, float s, bf16 *ra, bf16 *rb) {
    *ra = __float2bfloat16(fmaf(a, c, __fmul_rn(-b, s)));
    *rb = __float2bfloat16(fmaf(b, c, __fmul_rn(a, s)));
}

// P pairs (j.., j + half..) of a head at once: P = 4 (8-byte bf16 and 16-byte angle accesses) when half % 4 == 0,
// else 1. The pair arithmetic is rot_pair's either way.
template <int P> struct rope_vec { bf16 v[P]; };
template <> struct alignas(8) rope_vec<4> { bf16 v[4]; };
template <int P> struct rope_ang { float v[P]; };
template <> struct alignas(16) rope_ang<4> { float v[4]; };

// Pairs j..j+P-1 of the head at v, read into a (first half) and b (second half): rope_load. rope_rotate turns them by
// the angle row (cos_r, sin_r) with sin's sign `sign` and stores them back, a and b then holding the stored values.
template <int P>
__device__ __forceinline__ void rope_load(const bf16 *v, int j, int half, rope_vec<P> &a, rope_vec<P> &b) {
    a = *(const rope_vec<P> *)(v + j);
    b = *(const rope_vec<P> *)(v + j + half);
}
template <int P>
__device__ __forceinline__ void rope_rotate(bf16 *v, int j, int half, const float *cos_r, const float *sin_r, float sign,
                                            rope_vec<P> &a, rope_vec<P> &b) {
    const rope_ang<P> c = *(const rope_ang<P> *)(cos_r + j), sn = *(const rope_ang<P> *)(sin_r + j);
#pragma unroll
    for (int k = 0; k < P; k++)
        rot_pair(__bfloat162float(a.v[k]), __bfloat162float(b.v[k]), c.v[k], sign * sn.v[k], &a.v[k], &b.v[k]);
    *(rope_vec<P> *)(v + j) = a;
    *(rope_vec<P> *)(v + j + half) = b;
}

// grid: x over (head, group of P pairs) of one token, y strides over tokens
template <int P>
__global__ void k_rope(bf16 *x, int ld, const int32_t *pos, const float *cos_t, const float *sin_t, int N, int H,
                       int hd, float sign) {
    int half = hd / 2, i = blockIdx.x * blockDim.x + threadIdx.x, groups = half / P;
    if (i >= H * groups) return;
    int h = i / groups, j = (i - h * groups) * P;
    for (int n = blockIdx.y; n < N; n += gridDim.y) {
        bf16 *v = x + (size_t)n * ld + (size_t)h * hd;
        rope_vec<P> a, b;
        rope_load<P>(v, j, half, a, b);
        rope_rotate<P>(v, j, half, cos_t + (size_t)pos[n] * half, sin_t + (size_t)pos[n] * half, sign, a, b);
    }
}

static void launch(halo_bf16 *x, int ld, const int32_t *pos, const float *c, const float *sn, int N, int H, int hd,
                   float sign, cudaStream_t s) {
    if (N == 0 || H == 0) return;
    const dim3 grid(cdiv(H * (hd / 2), 256), N < 8192 ? N : 8192), grid4(cdiv(H * (hd / 8), 256), grid.y);
    if ((hd / 2) % 4) k_rope<1><<<grid, 256, 0, s>>>((bf16 *)x, ld, pos, c, sn, N, H, hd, sign);
    else k_rope<4><<<grid4, 256, 0, s>>>((bf16 *)x, ld, pos, c, sn, N, H, hd, sign);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_rope_forward(halo_bf16 *x, int ld, const int32_t *pos, const float *cos_t, const float *sin_t,
                                  int N, int H, int hd, cudaStream_t s) {
    launch(x, ld, pos, cos_t, sin_t, N, H, hd, 1.f, s);
}
extern "C" void cuda_rope_backward(halo_bf16 *dx, int ld, const int32_t *pos, const float *cos_t, const float *sin_t,
                                   int N, int H, int hd, cudaStream_t s) {
    launch(dx, ld, pos, cos_t, sin_t, N, H, hd, -1.f, s);
}

// Backward over whole fused qkv rows [N][(Hq + 2 Hkv) hd] with the HALO layers' E_Y scales on the side: rotates the q
// and k heads as k_rope (sign -1) and also reads the v heads; amax[0..2] get max |dq|, |dk|, |dv| of the stored bf16
// values (one atomic each per block; NaN skipped as in the other producers' amax, the layers then skip their pass).
// nf (may be NULL): nf[0..2] |= 1 when one of dq, dk, dv is a NaN or Inf (the layers' E_Y flags, which the skipped
// pass would set).
template <int P>
__global__ void k_rope_bwd_amax(bf16 *x, int ld, const int32_t *pos, const float *cos_t, const float *sin_t, int N,
                                int Hq, int Hkv, int hd, unsigned *amax_q, unsigned *amax_k, unsigned *amax_v,
                                int *nf_q, int *nf_k, int *nf_v) {
    const int half = hd / 2, i = blockIdx.x * blockDim.x + threadIdx.x, H = Hq + 2 * Hkv, groups = half / P;
    float m[3] = {0.f, 0.f, 0.f};
    int bad = 0;   // bit slot: a NaN / Inf in that tensor
    if (i < H * groups) {
        const int h = i / groups, j = (i - h * groups) * P, slot = h < Hq ? 0 : h < Hq + Hkv ? 1 : 2;
        for (int n = blockIdx.y; n < N; n += gridDim.y) {
            bf16 *v = x + (size_t)n * ld + (size_t)h * hd;
            rope_vec<P> a, b;
            rope_load<P>(v, j, half, a, b);
            if (slot < 2)
                rope_rotate<P>(v, j, half, cos_t + (size_t)pos[n] * half, sin_t + (size_t)pos[n] * half, -1.f, a, b);
#pragma unroll
            for (int k = 0; k < P; k++) {
                const float fa = __bfloat162float(a.v[k]), fb = __bfloat162float(b.v[k]);
                m[slot] = fmaxf(m[slot], fmaxf(fabsf(fa), fabsf(fb)));
                if (!isfinite(fa) || !isfinite(fb)) bad |= 1 << slot;
            }
        }
    }
    const float mq = block_max(m[0]), mk = block_max(m[1]), mv = block_max(m[2]);
    if (threadIdx.x == 0) {
        atomicMax(amax_q, __float_as_uint(mq));
        atomicMax(amax_k, __float_as_uint(mk));
        atomicMax(amax_v, __float_as_uint(mv));
    }
    block_flags(bad, nf_q, nf_k, nf_v);
}

extern "C" void cuda_rope_backward_amax(halo_bf16 *dqkv, const int32_t *pos, const float *cos_t, const float *sin_t,
                                        int N, int Hq, int Hkv, int hd, float *amax_q, float *amax_k, float *amax_v,
                                        int *nf_q, int *nf_k, int *nf_v, cudaStream_t s) {
    if (N == 0) return;
    if (!nf_q || !nf_k || !nf_v) nf_q = nf_k = nf_v = NULL;   // all three or none
    const int H = Hq + 2 * Hkv;
    // 512 row strides: each block walks N / 512 rows, so its three block reductions and atomics are amortized
    const int P = (hd / 2) % 4 ? 1 : 4;
    const dim3 grid(cdiv(H * (hd / 2) / P, 256), N < 512 ? N : 512);
    if (P == 1)
        k_rope_bwd_amax<1><<<grid, 256, 0, s>>>((bf16 *)dqkv, H * hd, pos, cos_t, sin_t, N, Hq, Hkv, hd,
                                                (unsigned *)amax_q, (unsigned *)amax_k, (unsigned *)amax_v, nf_q, nf_k, nf_v);
    else
        k_rope_bwd_amax<4><<<grid, 256, 0, s>>>((bf16 *)dqkv, H * hd, pos, cos_t, sin_t, N, Hq, Hkv, hd,
                                                (unsigned *)amax_q, (unsigned *)amax_k, (unsigned *)amax_v, nf_q, nf_k, nf_v);
    CUDA_LAUNCH_CHECK();
}

// Delayed scaling (halo_cuda.h, halo_cuda_codes): the backward writing the q, k and v layers' E_Y codes instead of
// rotating dqkv in place. Tiles of 64 tokens x 64 columns of the fused rows [N][(Hq + 2 Hkv) hd] (64 threads, k_tile8's
// layout), each inside one of q, k, v (c[0..2], whose columns start at col[0..2]). A q or k value is k_rope's backward
// rotation of its pair (rot_pair, so the same bf16 bits), reading the partner half of the head too (8 values at
// j + half or j - half: the same block reads them, mostly from L1); v is copied. Codes with the scale of *c.amax,
// row-major and transposed (zero codes for tokens N..rows_pad-1), max |value| into c.amax_next, NaN / Inf flagged.
struct rope_codes3 { halo_cuda_codes c[3]; int col[3]; };
__global__ void __launch_bounds__(64) k_rope_bwd_codes(const bf16 *__restrict__ x, int ld, const int32_t *pos,
                                                       const float *cos_t, const float *sin_t, int N, int Hrope,
                                                       int hd, rope_codes3 a) {
    __shared__ __align__(16) uint2 tile[64][9];
    const int c0 = blockIdx.x * 64, r0 = blockIdx.y * 64, t = threadIdx.x, cc = t & 7, j = c0 + cc * 8;
    const int which = c0 >= a.col[2] ? 2 : c0 >= a.col[1] ? 1 : 0, half = hd / 2;
    const halo_cuda_codes &c = a.c[which];
    if (blockIdx.x == 0 && blockIdx.y == 0 && t == 0)
        for (int u = 0; u < 3; u++) run_alpha(a.c[u].aj);
    const float rs = rscale_of(*c.amax, qmax_of(c.fmt));
    const int h = j / hd, p = j - h * hd, lo = p < half, pj = lo ? p : p - half;   // pair index of the chunk
    const bool rot = h < Hrope;
    const int partner = lo ? j + half : j - half;
    float mx = 0.f;
    int bad = 0;
    #pragma unroll 2
    for (int k = 0; k < 8; k++) {
        const int i = (t >> 3) + 8 * k, n = r0 + i;
        uint2 code = make_uint2(0u, 0u);
        if (n < N) {
            const bf16 *row = x + (size_t)n * ld;
            const uint4 own = *(const uint4 *)(row + j);
            float f[8];
            const bf16 *ov = (const bf16 *)&own;
            if (rot) {
                const uint4 oth = *(const uint4 *)(row + partner);
                const bf16 *pv = (const bf16 *)&oth;
                const float *cr = cos_t + (size_t)pos[n] * half + pj, *sr = sin_t + (size_t)pos[n] * half + pj;
                #pragma unroll
                for (int e = 0; e < 8; e++) {
                    bf16 ra, rb;   // (a, b) = (first half, second half) of the pair
                    const float av = __bfloat162float(lo ? ov[e] : pv[e]), bv = __bfloat162float(lo ? pv[e] : ov[e]);
                    rot_pair(av, bv, cr[e], -1.f * sr[e], &ra, &rb);
                    f[e] = __bfloat162float(lo ? ra : rb);
                }
            } else {
                #pragma unroll
                for (int e = 0; e < 8; e++) f[e] = __bfloat162float(ov[e]);
            }
            #pragma unroll
            for (int e = 0; e < 8; e++) {
                mx = fmaxf(mx, fabsf(f[e]));   // NaN skipped (the flag reports it)
                bad |= !isfinite(f[e]);
            }
            code = quant8(f, rs, c.fmt);
            if (c.q) *(uint2 *)(c.q + (long)n * c.ldq + (j - a.col[which])) = code;
        }
        tile8_put(tile, i, cc, code);
    }
    __syncthreads();
    if (c.qt) tile8_store_t(tile, t, r0, c0 - a.col[which], 0x7fffffff, c.rows_pad, c.qt, c.ldqt);   // (whole tiles)
    mx = block_max(mx);
    if (t == 0 && c.amax_next) atomicMax((unsigned *)c.amax_next, __float_as_uint(mx));
    block_flags(bad, c.nonfinite);
}

extern "C" int cuda_rope_codes_ok(int Hq, int Hkv, int hd) {
    return hd % 16 == 0 && (Hq * hd) % 64 == 0 && (Hkv * hd) % 64 == 0 && Hkv > 0;
}

extern "C" void cuda_rope_backward_codes(const halo_bf16 *dqkv, const int32_t *pos, const float *cos_t,
                                         const float *sin_t, int N, int Hq, int Hkv, int hd, const halo_cuda_codes *q,
                                         const halo_cuda_codes *k, const halo_cuda_codes *v, cudaStream_t s) {
    const halo_cuda_codes *cs[3] = {q, k, v};
    if (!cuda_rope_codes_ok(Hq, Hkv, hd) || !!q->qt != !!k->qt || !!q->qt != !!v->qt ||
        (q->qt && (k->rows_pad != q->rows_pad || v->rows_pad != q->rows_pad))) {
        fprintf(stderr, "cuda_rope_backward_codes: unsupported shapes or layouts (Hq %d, Hkv %d, hd %d)\n", Hq, Hkv, hd);
        abort();
    }
    for (int u = 0; u < 3; u++) codes_layout_check("cuda_rope_backward_codes", cs[u], N, (u ? Hkv : Hq) * hd, 8);
    const int rows = q->qt ? q->rows_pad : N;
    if (rows <= 0) return;
    rope_codes3 a;
    for (int u = 0; u < 3; u++) a.c[u] = *cs[u];
    a.col[0] = 0; a.col[1] = Hq * hd; a.col[2] = (Hq + Hkv) * hd;
    const int ld = (Hq + 2 * Hkv) * hd;
    k_rope_bwd_codes<<<dim3(ld / 64, cdiv(rows, 64)), 64, 0, s>>>((const bf16 *)dqkv, ld, pos, cos_t, sin_t, N, Hq + Hkv,
                                                                  hd, a);
    CUDA_LAUNCH_CHECK();
}
