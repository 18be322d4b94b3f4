// INT8 x INT8 products with the dequantization in the epilogue, on Hopper's tensor cores (wgmma fed by TMA):
// D[Mo][No] (bf16 or fp32) = *alpha * A[M][K] B[N][K]^T (fp32: or D +=, or res +), int32 accumulation, both operands
// K-major, as halo_cuda_gemm_s8 takes them. cuBLASLt's INT8 products write int32 only (dev/cuda/probe/
// int8_out_types.cu), which costs HALO a second pass of 8 bytes per output element; here the int32 tile never leaves
// the registers, and the values are the int32 path's bit for bit (float(acc) * alpha rounded once, as
// halo_cuda_dequant_i32).
//
// Persistent CTAs of three warpgroups. Warpgroup 0 produces: one thread loads 128 x 128 tiles of A and 256 x 128 of B
// by TMA (128-byte swizzle; codes past M, N or K read as zeros) into a ring of STAGES stages, each guarded by a "full"
// mbarrier (TMA's byte count) and an "empty" one (the consumer warps' release). Warpgroups 1 and 2 consume: each
// multiplies 64 rows of A by the 256 rows of B, four wgmma m64n256k32 per stage (128 int32 accumulators per thread)
// with one stage's products in flight, then writes its 64 x 256 tile from the registers (optionally rotated along its
// rows, HALO's H_m^T, and along its columns, level 2's token H_b, first). While they write, the producer already loads
// the next tile. H200: 1.4-1.55k TOP/s at K >= 4096 (build/bench/bench_cuda_int8). A group (up to 4 products summed
// into one fp32 D, each with its own K and scale: halo_cuda_gemm_s8_dq_group) runs each tile's products one after the
// other, each epilogue adding into what the one before wrote.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "cuda/common.cuh"
#include "cuda/halo_cuda.h"
#include "cuda/swiglu_math.cuh"
#include "cuda/tma.cuh"
extern "C" {
#include "util/error.h"
}

namespace {
constexpr int BM = 128, BN = 256, BK = 128, STAGES = 4, THREADS = 384;
constexpr int A_BYTES = BM * BK, B_BYTES = BN * BK, STAGE_BYTES = A_BYTES + B_BYTES;
// XCH_BYTES: each consumer warpgroup's exchange area for the token rotation's cross-warp stages (16 values a thread)
constexpr int XCH_BYTES = 2 * 4 * 16 * 32 * 4;
constexpr int SMEM_BYTES = STAGES * STAGE_BYTES + 1024 /* alignment */ + 2 * STAGES * 8 /* barriers */ + XCH_BYTES;

// A group (halo_cuda_gemm_s8_dq_group): up to MAX_SEG products A_s B_s^T into one D, each over its own K and alpha,
// worked tile by tile: segment s's epilogue adds into what segment s - 1's wrote moments before (in L2)
constexpr int MAX_SEG = 4;
struct dq_maps {
    CUtensorMap a[MAX_SEG], b[MAX_SEG];
};
struct dq_args {
    void *D;
    const float *res;
    long ldd;
    int M, N, Mo, No;
    int nseg;                      // segments (1: a plain product)
    int stack;                     // 1 / 2: the segments are stacked by rows / columns of D (start), not summed over K
    int start[MAX_SEG + 1];        // stack: segment s writes D's rows (columns) start[s] .. start[s + 1] - 1
    int k[MAX_SEG];                // each segment's K
    const float *alpha[MAX_SEG];   // and its scale product (device)
    int d_f32, mode;   // mode: 0 D =, 1 D += (fp32), 2 D = res + (fp32 res; a bf16 D gets the sum rounded once)
    int vec;           // bf16: D and ldd allow 16-byte stores
    int rot_stages;    // > 0: rows rotated by H_B, B = 2^rot_stages <= 256, before the store (0: none)
    float rot_scale;   // 1 / sqrt(B), the plan's float
    int tok_stages;    // > 0: then the columns (over tokens, the rows of D) rotated by H_T, T = 2^tok_stages <= 64
    float tok_scale;   // 1 / sqrt(T), the plan's float
    const __nv_bfloat16 *lu, *lb;   // lr > 0: + U B^T (a LoRA adapter: U [Mo][lr], B [No][lr] bf16) before the store
    int lr;
    double *sumsq;   // fp32 D of one product: += the sum of squares of the values written (NULL: none)
    // sw_gu (bf16 D written 16 bytes at a time): D is down's input gradient; max |dgate|, |dup| of the SwiGLU backward
    // from it and gate / up (sw_gu [Mo][sw_ld], gate's columns then up's at sw_F) into sw_amax_g / _u (float bits),
    // NaN / Inf flags into sw_nf_g / _u (may be NULL)
    const __nv_bfloat16 *sw_gu;
    long sw_ld;
    int sw_F;
    unsigned *sw_amax_g, *sw_amax_u;
    int *sw_nf_g, *sw_nf_u;
};

// The device helpers and the kernel's body exist for sm_90a only: nvcc's -arch=sm_90a also emits compute_90 PTX,
// which has no wgmma.
#if !defined(__CUDA_ARCH__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define HALO_WGMMA 1
__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(uint64_t *b, int count) { mbar_init_s(smem_addr(b), count); }
__device__ __forceinline__ void mbar_expect_tx(uint64_t *b, uint32_t bytes) { mbar_expect_tx_s(smem_addr(b), bytes); }
__device__ __forceinline__ void mbar_arrive(uint64_t *b) { mbar_arrive_s(smem_addr(b)); }
__device__ __forceinline__ void mbar_wait(uint64_t *b, uint32_t parity) { mbar_wait_s(smem_addr(b), parity); }
__device__ __forceinline__ void tma_load(void *dst, const CUtensorMap *map, uint64_t *bar, int k, int row) {
    tma_load_2d(smem_addr(dst), map, smem_addr(bar), k, row);
}
// wgmma shared-memory descriptor of a K-major tile in TMA's 128-byte swizzle: rows of 128 bytes, 8-row atoms 1024
// bytes apart (stride byte offset), start address >> 4 in bits 0-13, swizzle mode 1 (128 B) in bits 62-63. Stepping
// K by 32 codes inside the atom adds 32 bytes to the start address (+2 in the descriptor).
__device__ __forceinline__ uint64_t smem_desc(const void *p) {
    return (uint64_t)((smem_addr(p) & 0x3FFFF) >> 4) | (uint64_t)1 << 16 | (uint64_t)(1024 >> 4) << 32 |
           (uint64_t)1 << 62;
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// keeps the compiler from moving accumulator reads/writes across the asynchronous products
__device__ __forceinline__ void fence_acc(int *d) {
#pragma unroll
    for (int i = 0; i < 128; i++) asm volatile("" : "+r"(d[i])::"memory");
}

// The segments a tile works (stack: the one holding its rows or columns) and the rows of A and B it starts at
__device__ __forceinline__ void tile_segments(const dq_args &p, int m0, int n0, int *lo, int *hi, int *arow,
                                              int *brow) {
    *lo = 0;
    *hi = p.nseg;
    *arow = m0;
    *brow = n0;
    if (p.stack) {
        const int x = p.stack == 1 ? m0 : n0;
        int sg = 0;
        while (sg + 1 < p.nseg && x >= p.start[sg + 1]) sg++;
        *lo = sg;
        *hi = sg + 1;
        if (p.stack == 1) *arow = m0 - p.start[sg];
        else *brow = n0 - p.start[sg];
    }
}
// d (128 int32 per thread: the m64n256 fragment) = (scale_d ? d : 0) + A (64 x 32, descriptor da) B (256 x 32,
// descriptor db)^T. Operands %0..%127: the accumulators (generated list).
__device__ __forceinline__ void wgmma_m64n256k32_s8(int *d, uint64_t da, uint64_t db, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k32.s32.s8.s8 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, %128, %129, p;\n}\n"
        :
          "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
          "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
          "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
          "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]),
          "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]),
          "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]),
          "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]),
          "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63]),
          "+r"(d[64]), "+r"(d[65]), "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71]),
          "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]), "+r"(d[78]), "+r"(d[79]),
          "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]), "+r"(d[84]), "+r"(d[85]), "+r"(d[86]), "+r"(d[87]),
          "+r"(d[88]), "+r"(d[89]), "+r"(d[90]), "+r"(d[91]), "+r"(d[92]), "+r"(d[93]), "+r"(d[94]), "+r"(d[95]),
          "+r"(d[96]), "+r"(d[97]), "+r"(d[98]), "+r"(d[99]), "+r"(d[100]), "+r"(d[101]), "+r"(d[102]), "+r"(d[103]),
          "+r"(d[104]), "+r"(d[105]), "+r"(d[106]), "+r"(d[107]), "+r"(d[108]), "+r"(d[109]), "+r"(d[110]), "+r"(d[111]),
          "+r"(d[112]), "+r"(d[113]), "+r"(d[114]), "+r"(d[115]), "+r"(d[116]), "+r"(d[117]), "+r"(d[118]), "+r"(d[119]),
          "+r"(d[120]), "+r"(d[121]), "+r"(d[122]), "+r"(d[123]), "+r"(d[124]), "+r"(d[125]), "+r"(d[126]), "+r"(d[127])
        : "l"(da), "l"(db), "r"(scale_d));
}
// The dequantized tile's rows rotated by block-diagonal H_B (B = 2^stages <= 256, Sylvester order; blocks start at
// multiples of B, which a tile of 256 columns never splits), x H_B = sum of butterflies, then * scale: the stages in
// the CPU's order h = 1, 2, 4, .. with one fp32 add or subtract each, so the values equal halo_cuda_had_rows' bit for
// bit. Column bits of fragment element 4i + 2h + e: bit 0 = e (in the thread), bits 1-2 = the lane in the quad
// (shuffles), bits 3-7 = i (in the thread).
__device__ __forceinline__ void rotate_rows(int *v, int lane, int stages, float scale) {
#pragma unroll
    for (int k = 0; k < 64; k++) {   // h = 1
        const float a = __int_as_float(v[2 * k]), b = __int_as_float(v[2 * k + 1]);
        v[2 * k] = __float_as_int(a + b);
        v[2 * k + 1] = __float_as_int(a - b);
    }
#pragma unroll
    for (int st = 1; st < 3; st++) {   // h = 2, 4: across the quad
        if (st < stages) {
            const int m = 1 << (st - 1), up = lane & m;
#pragma unroll
            for (int k = 0; k < 128; k++) {
                const float own = __int_as_float(v[k]), oth = __shfl_xor_sync(0xffffffffu, own, m);
                v[k] = __float_as_int(up ? oth - own : own + oth);   // upper half: x[j] - x[j + h]
            }
        }
    }
#pragma unroll
    for (int st = 3; st < 8; st++) {   // h = 8 .. 128: across the thread's chunks
        if (st < stages) {
            const int d = 1 << (st - 3);
#pragma unroll
            for (int i = 0; i < 32; i++) {
                if (i & d) continue;
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    const float a = __int_as_float(v[4 * i + u]), b = __int_as_float(v[4 * (i + d) + u]);
                    v[4 * i + u] = __float_as_int(a + b);
                    v[4 * (i + d) + u] = __float_as_int(a - b);
                }
            }
        }
    }
#pragma unroll
    for (int k = 0; k < 128; k++) v[k] = __float_as_int(__fmul_rn(__int_as_float(v[k]), scale));
}
// The tile's columns rotated by block-diagonal H_T over its rows (HALO level 2's token rotation H_b of E_X; T =
// 2^stages <= 64, blocks start at multiples of T, which a warpgroup's 64 rows never split), then * scale: the
// stages in the order h = 1, 2, .., 32 with one fp32 add or subtract each, as halo_cuda_colrot_f32 does them, so the
// values equal its bit for bit. Row bits of fragment element 4i + 2h + e: bits 0-2 = lane / 4 (shuffles), bit 3 = h
// (in the thread), bits 4-5 = the warp (through xch, this warpgroup's shared exchange area, 16 values a round;
// named barrier `bar` of the warpgroup's 128 threads).
__device__ __forceinline__ void wg_bar(int bar) { asm volatile("bar.sync %0, 128;" ::"r"(bar) : "memory"); }

__device__ __forceinline__ void rotate_tokens(int *v, int lane, int warp, int stages, float scale, float4 *xch,
                                              int bar) {
#pragma unroll
    for (int st = 0; st < 3; st++) {   // h = 1, 2, 4: across lanes 4, 8, 16 apart
        if (st < stages) {
            const int m = 4 << st, up = lane & m;
#pragma unroll
            for (int k = 0; k < 128; k++) {
                const float own = __int_as_float(v[k]), oth = __shfl_xor_sync(0xffffffffu, own, m);
                v[k] = __float_as_int(up ? oth - own : own + oth);   // upper half: x[j] - x[j + h]
            }
        }
    }
    if (stages > 3) {   // h = 8: fragment elements 4i + e and 4i + 2 + e of the thread
#pragma unroll
        for (int i = 0; i < 32; i++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const float a = __int_as_float(v[4 * i + e]), b = __int_as_float(v[4 * i + 2 + e]);
                v[4 * i + e] = __float_as_int(a + b);
                v[4 * i + 2 + e] = __float_as_int(a - b);
            }
    }
    if (stages > 4) {   // h = 16 (warp ^ 1), then h = 32 (warp ^ 2): each thread reads the four warps' values
#pragma unroll
        for (int c = 0; c < 8; c++) {
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int k = 16 * c + 4 * j;
                xch[(warp * 4 + j) * 32 + lane] = make_float4(__int_as_float(v[k]), __int_as_float(v[k + 1]),
                                                              __int_as_float(v[k + 2]), __int_as_float(v[k + 3]));
            }
            wg_bar(bar);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                float a[4][4];   // [warp][value]
#pragma unroll
                for (int w = 0; w < 4; w++) {
                    const float4 f = xch[(w * 4 + j) * 32 + lane];
                    a[w][0] = f.x; a[w][1] = f.y; a[w][2] = f.z; a[w][3] = f.w;
                }
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    const float b0 = a[0][u] + a[1][u], b1 = a[0][u] - a[1][u];   // h = 16
                    const float b2 = a[2][u] + a[3][u], b3 = a[2][u] - a[3][u];
                    float r;
                    if (stages == 5) r = warp == 0 ? b0 : warp == 1 ? b1 : warp == 2 ? b2 : b3;
                    else r = warp == 0 ? b0 + b2 : warp == 1 ? b1 + b3 : warp == 2 ? b0 - b2 : b1 - b3;   // h = 32
                    v[16 * c + 4 * j + u] = __float_as_int(r);
                }
            }
            wg_bar(bar);   // before the next round's stores
        }
    }
#pragma unroll
    for (int k = 0; k < 128; k++) v[k] = __float_as_int(__fmul_rn(__int_as_float(v[k]), scale));
}
// Tile t of the persistent loop: groups of GROUP_M row blocks walked column block by column block, so the CTAs at
// work share A and B tiles in L2.
__device__ __forceinline__ void tile_of(int t, int nm, int nn, int *m0, int *n0) {
    constexpr int GROUP_M = 8;
    const int per_group = GROUP_M * nn, first = t / per_group * GROUP_M;
    const int gs = nm - first < GROUP_M ? nm - first : GROUP_M, r = t % per_group;
    *m0 = (first + r % gs) * BM;
    *n0 = r / gs * BN;
}
#endif

#ifdef HALO_WGMMA
// + U B^T into a consumer warp's 16 x 256 fp32 tile (rows row0..): the wgmma accumulator of columns 8i..8i+7 is
// mma.sync's C fragment of n-tile i, so each n-tile takes m16n8k16 products of U's rows (A fragments from global
// memory, zero past Mo and past r) and the tile's 256 rows of B, staged in shared memory by stage_lora_b ([256][r],
// zero past No)
__device__ __forceinline__ void lora_epilogue(int *acc, const dq_args &p, const __nv_bfloat16 *sb, int row0, int lane) {
    const int g = lane >> 2, t = lane & 3, r = p.lr;
    for (int k0 = 0; k0 < r; k0 += 16) {
        uint32_t a[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int row = row0 + g + (e & 1) * 8, k = k0 + 2 * t + (e >> 1) * 8;
            a[e] = row < p.Mo && k < r ? *(const uint32_t *)(p.lu + (long)row * r + k) : 0u;
        }
        const int k = k0 + 2 * t;
#pragma unroll
        for (int i = 0; i < 32; i++) {
            const __nv_bfloat16 *brow = sb + (8 * i + g) * r;
            const uint32_t b0 = k < r ? *(const uint32_t *)(brow + k) : 0u, b1 = k + 8 < r ? *(const uint32_t *)(brow + k + 8) : 0u;
            float c[4];
#pragma unroll
            for (int e = 0; e < 4; e++) c[e] = __int_as_float(acc[4 * i + e]);
            mma16816(c, a, b0, b1);
#pragma unroll
            for (int e = 0; e < 4; e++) acc[4 * i + e] = __float_as_int(c[e]);
        }
    }
}
// B's rows n0 .. n0 + 255 into sb by the 256 consumer threads (ct), between two barriers of theirs (id 3): the other
// warpgroup has finished the previous tile's reads before they are overwritten
__device__ __forceinline__ void stage_lora_b(const dq_args &p, __nv_bfloat16 *sb, int n0, int ct) {
    asm volatile("bar.sync 3, 256;" ::: "memory");
    const int per = p.lr / 8;   // 16-byte pieces a row
    for (int idx = ct; idx < BN * per; idx += 256) {
        const int row = idx / per, q = idx % per;
        *(uint4 *)(sb + row * p.lr + q * 8) =
            n0 + row < p.No ? __ldg((const uint4 *)(p.lb + (long)(n0 + row) * p.lr + q * 8)) : make_uint4(0, 0, 0, 0);
    }
    asm volatile("bar.sync 3, 256;" ::: "memory");
}
#endif

__global__ void __launch_bounds__(THREADS, 1)
k_gemm_s8_dq(const __grid_constant__ dq_maps maps, const __grid_constant__ dq_args p) {
#ifdef HALO_WGMMA
    extern __shared__ uint8_t smem_raw[];
    uint8_t *smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);   // 128-byte swizzle: 1024-aligned
    uint64_t *full = (uint64_t *)(smem + STAGES * STAGE_BYTES), *empty = full + STAGES;
    const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], 8);   // lane 0 of each consumer warp
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
    __syncthreads();
    pdl_wait();   // (launch_pdl) the kernel before has finished: its outputs are this one's operands
    const int nm = (p.M + BM - 1) / BM, nn = (p.N + BN - 1) / BN, tiles = nm * nn;
    if (wg == 0) {   // producer: hands registers to the consumers (40 + 2 x 232 per thread of a warpgroup <= 512)
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        if (tid == 0) {
            int it = 0;
            for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
                int m0, n0;
                tile_of(t, nm, nn, &m0, &n0);
                int lo, hi, arow, brow;
                tile_segments(p, m0, n0, &lo, &hi, &arow, &brow);
                for (int sg = lo; sg < hi; sg++) {
                    const int nk = (p.k[sg] + BK - 1) / BK;
                    for (int kb = 0; kb < nk; kb++, it++) {
                        const int s = it % STAGES;
                        mbar_wait(&empty[s], ((it / STAGES) & 1) ^ 1);   // a fresh barrier passes parity 1 at once
                        uint8_t *st = smem + s * STAGE_BYTES;
                        mbar_expect_tx(&full[s], STAGE_BYTES);
                        tma_load(st, &maps.a[sg], &full[s], kb * BK, arow);
                        tma_load(st + A_BYTES, &maps.b[sg], &full[s], kb * BK, brow);
                    }
                }
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
    const int cw = wg - 1, warp = tid / 32, lane = tid % 32;
    int acc[128];
    int it = 0;
    float ss = 0.f;   // p.sumsq: this thread's share of the squares
    float sw_mg = 0.f, sw_mu = 0.f;   // p.sw_gu: this thread's max |dgate|, |dup|, and bad: their NaN / Inf bits
    int sw_bad = 0;
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
        int m0, n0;
        tile_of(t, nm, nn, &m0, &n0);
        int lo, hi, arow, brow;
        tile_segments(p, m0, n0, &lo, &hi, &arow, &brow);
        for (int sg = lo; sg < hi; sg++) {   // (not indented: a plain product is one segment)
        const int nk = (p.k[sg] + BK - 1) / BK, mode = sg > lo ? 1 : p.mode;   // later segments add
        for (int kb = 0; kb < nk; kb++, it++) {
            const int s = it % STAGES;
            mbar_wait(&full[s], (it / STAGES) & 1);
            const uint8_t *st = smem + s * STAGE_BYTES;
            const uint64_t da = smem_desc(st + cw * 64 * BK), db = smem_desc(st + A_BYTES);
            wgmma_fence();
#pragma unroll
            for (int k = 0; k < BK / 32; k++) wgmma_m64n256k32_s8(acc, da + 2 * k, db + 2 * k, kb > 0 || k > 0);
            wgmma_commit();
            wgmma_wait<1>();   // one stage's products stay in flight; the previous stage's are done: release it
            if (kb > 0 && lane == 0) mbar_arrive(&empty[(it + STAGES - 1) % STAGES]);
        }
        wgmma_wait<0>();
        fence_acc(acc);
        if (lane == 0) mbar_arrive(&empty[(it + STAGES - 1) % STAGES]);
        // epilogue: fragment element 4i + 2h + e sits at row warp * 16 + lane / 4 + 8h, column 8i + 2 (lane % 4) + e.
        // __fmul_rn: the CPU's float(c32) * alpha rounded once, never contracted with an addition into an fma. The
        // fp32 values replace the int32 sums in place (as bits), then the optional row rotation.
        const float al = *p.alpha[sg];
#pragma unroll
        for (int i = 0; i < 128; i++) acc[i] = __float_as_int(__fmul_rn((float)acc[i], al));
        if (p.rot_stages) rotate_rows(acc, lane, p.rot_stages, p.rot_scale);
        if (p.tok_stages)
            rotate_tokens(acc, lane, warp, p.tok_stages, p.tok_scale,
                          (float4 *)(smem + STAGES * STAGE_BYTES + 2 * STAGES * 8) + cw * (XCH_BYTES / 32), 1 + cw);
        if (p.lr) {   // (no token rotation with an adapter: its exchange area holds B's rows)
            __nv_bfloat16 *sb = (__nv_bfloat16 *)(smem + STAGES * STAGE_BYTES + 2 * STAGES * 8);
            stage_lora_b(p, sb, n0, threadIdx.x - 128);
            lora_epilogue(acc, p, sb, m0 + cw * 64 + warp * 16, lane);
        }
        const int q = lane % 4, r0 = m0 + cw * 64 + warp * 16 + lane / 4, c0 = n0 + 2 * q;
        if (!p.d_f32 && mode == 2) {   // bf16 D = res + : the fp32 sum in place (as the fp32 form), rounded below
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int r = r0 + 8 * h;
                const float *src = p.res + (long)r * p.ldd + c0;
#pragma unroll
                for (int i = 0; i < 32; i++)
                    if (r < p.Mo && c0 + 8 * i < p.No) {
                        const float2 a = *(const float2 *)(src + 8 * i);
                        acc[4 * i + 2 * h] = __float_as_int(a.x + __int_as_float(acc[4 * i + 2 * h]));
                        acc[4 * i + 2 * h + 1] = __float_as_int(a.y + __int_as_float(acc[4 * i + 2 * h + 1]));
                    }
            }
        }
        if (!p.d_f32) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int r = r0 + 8 * h;
                __nv_bfloat16 *drow = (__nv_bfloat16 *)p.D + (long)r * p.ldd;
#pragma unroll
                for (int j = 0; j < 8; j++) {   // chunks 4j .. 4j + 3 of 8 columns
                    uint32_t v[4];
#pragma unroll
                    for (int u = 0; u < 4; u++) {
                        const int i = 4 * j + u;
                        const __nv_bfloat162 b = __floats2bfloat162_rn(__int_as_float(acc[4 * i + 2 * h]),
                                                                       __int_as_float(acc[4 * i + 2 * h + 1]));
                        v[u] = *(const uint32_t *)&b;
                    }
                    if (p.vec) {   // 4 x 4 transpose in the quad: lane q gets chunk 4j + q whole, one 16-byte store
                        // two exchanges: the off-diagonal 2 x 2 blocks with lane q ^ 2, then inside the blocks with
                        // lane q ^ 1; afterwards v[k] is lane k's pair of chunk 4j + q (columns c + 2k, c + 2k + 1)
                        const int b1 = q & 2, b0 = q & 1;
                        {
                            const uint32_t r0 = __shfl_xor_sync(0xffffffffu, b1 ? v[0] : v[2], 2);
                            const uint32_t r1 = __shfl_xor_sync(0xffffffffu, b1 ? v[1] : v[3], 2);
                            if (b1) { v[0] = r0; v[1] = r1; } else { v[2] = r0; v[3] = r1; }
                        }
                        {
                            const uint32_t r0 = __shfl_xor_sync(0xffffffffu, b0 ? v[0] : v[1], 1);
                            const uint32_t r1 = __shfl_xor_sync(0xffffffffu, b0 ? v[2] : v[3], 1);
                            if (b0) { v[0] = r0; v[2] = r1; } else { v[1] = r0; v[3] = r1; }
                        }
                        const int c = n0 + 8 * (4 * j + q);
                        if (r >= p.Mo || c >= p.No) continue;
                        if (p.sw_gu) {   // (sw_F % 8 == 0, No == sw_F: whole chunks)
                            const __nv_bfloat16 *gr = p.sw_gu + (long)r * p.sw_ld + c;
                            const bvec<8> d2 = {{v[0], v[1], v[2], v[3]}}, g2 = ldv<8>(gr), u2 = ldv<8>(gr + p.sw_F);
                            bvec<8> dg2, du2;
                            swiglu_bwd_vec<8>(g2, u2, d2, dg2, du2, &sw_mg, &sw_mu);
                            sw_bad |= nonfinite_vec<8>(dg2) | nonfinite_vec<8>(du2) << 1;
                        }
                        if (c + 8 <= p.No) {
                            *(uint4 *)(drow + c) = make_uint4(v[0], v[1], v[2], v[3]);
                        } else {
#pragma unroll
                            for (int k = 0; k < 4; k++)
                                if (c + 2 * k < p.No) *(uint32_t *)(drow + c + 2 * k) = v[k];
                        }
                    } else {
#pragma unroll
                        for (int u = 0; u < 4; u++) {
                            const int c = c0 + 8 * (4 * j + u);
                            if (r < p.Mo && c < p.No) *(uint32_t *)(drow + c) = v[u];
                        }
                    }
                }
            }
        } else if (m0 + BM <= p.Mo && n0 + BN <= p.No) {
            // the whole tile inside D (every tile but the last row / column of tiles): the thread's two row pointers
            // once, compile-time column offsets, no bounds checks
            float *d[2];
            const float *src[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                d[h] = (float *)p.D + (long)(r0 + 8 * h) * p.ldd + c0;
                src[h] = mode == 2 ? p.res + (long)(r0 + 8 * h) * p.ldd + c0 : d[h];
            }
#pragma unroll
            for (int ib = 0; ib < 8; ib++) {   // 4 chunks at a time: their addends loaded before any store
                float2 add[4][2];
                if (mode) {
#pragma unroll
                    for (int u = 0; u < 4; u++)
#pragma unroll
                        for (int h = 0; h < 2; h++) add[u][h] = *(const float2 *)(src[h] + 8 * (4 * ib + u));
                }
#pragma unroll
                for (int u = 0; u < 4; u++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const int i = 4 * ib + u;
                        float2 o = make_float2(__int_as_float(acc[4 * i + 2 * h]),
                                               __int_as_float(acc[4 * i + 2 * h + 1]));
                        if (mode) {
                            o.x = add[u][h].x + o.x;
                            o.y = add[u][h].y + o.y;
                        }
                        if (p.sumsq) ss = fmaf(o.y, o.y, fmaf(o.x, o.x, ss));
                        *(float2 *)(d[h] + 8 * i) = o;
                    }
            }
        } else {
#pragma unroll
            for (int ib = 0; ib < 8; ib++) {   // 4 chunks at a time: their addends loaded before any store
                float2 add[4][2];
#pragma unroll
                for (int u = 0; u < 4; u++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const int r = r0 + 8 * h, c = c0 + 8 * (4 * ib + u);
                        const float *src = mode == 2 ? p.res : (const float *)p.D;
                        add[u][h] = mode && r < p.Mo && c < p.No ? *(const float2 *)(src + (long)r * p.ldd + c)
                                                                   : make_float2(0.f, 0.f);
                    }
#pragma unroll
                for (int u = 0; u < 4; u++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const int i = 4 * ib + u, r = r0 + 8 * h, c = c0 + 8 * i;
                        if (r >= p.Mo || c >= p.No) continue;
                        float2 o = make_float2(__int_as_float(acc[4 * i + 2 * h]),
                                               __int_as_float(acc[4 * i + 2 * h + 1]));
                        if (mode) {
                            o.x = add[u][h].x + o.x;
                            o.y = add[u][h].y + o.y;
                        }
                        if (p.sumsq) ss = fmaf(o.y, o.y, fmaf(o.x, o.x, ss));
                        *(float2 *)((float *)p.D + (long)r * p.ldd + c) = o;
                    }
            }
        }
        }   // segments
    }
    if (p.sumsq) {   // one double add a warp
#pragma unroll
        for (int o = 16; o > 0; o /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, o);
        if (lane == 0) atomicAdd(p.sumsq, (double)ss);
    }
    if (p.sw_gu) {   // one atomic each a warp
        sw_mg = warp_max(sw_mg);
        sw_mu = warp_max(sw_mu);
        const unsigned bg = __ballot_sync(0xffffffffu, sw_bad & 1), bu = __ballot_sync(0xffffffffu, sw_bad & 2);
        if (lane == 0) {
            atomicMax(p.sw_amax_g, __float_as_uint(sw_mg));
            atomicMax(p.sw_amax_u, __float_as_uint(sw_mu));
            if (bg && p.sw_nf_g) atomicOr(p.sw_nf_g, 1);
            if (bu && p.sw_nf_u) atomicOr(p.sw_nf_u, 1);
        }
    }
#endif
}

PFN_cuTensorMapEncodeTiled_v12000 g_encode;
int g_sms, g_ready;   // g_ready: 1 usable, -1 not (no driver entry point, or not compute capability 9.0)
int g_on = -1;        // halo_cuda_gemm_s8_own / HALO_INT8_OWN_GEMM
int g_few_lt = -1;    // halo_cuda_gemm_s8_few_tiles_lt / HALO_INT8_FEW_TILES_LT

int init(void) {
    if (g_ready) return g_ready > 0;
    g_ready = -1;
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return cudaGetLastError(), 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    cudaDeviceGetAttribute(&g_sms, cudaDevAttrMultiProcessorCount, dev);
    if (major != 9 || minor != 0) return 0;   // wgmma as compiled here (sm_90a) runs on 9.0 only
    if (!(g_encode = tma_encoder())) return 0;
    if (cudaFuncSetAttribute(k_gemm_s8_dq, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_BYTES) != cudaSuccess)
        return cudaGetLastError(), 0;
    g_ready = 1;
    return 1;
}

int encode(CUtensorMap *map, const void *ptr, int rows, int K, long ld, int box_rows) {
    const cuuint64_t dims[2] = {(cuuint64_t)K, (cuuint64_t)rows}, strides[1] = {(cuuint64_t)ld};
    const cuuint32_t box[2] = {BK, (cuuint32_t)box_rows}, es[2] = {1, 1};
    return g_encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, (void *)ptr, dims, strides, box, es,
                    CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}
}   // namespace

extern "C" void halo_cuda_gemm_s8_own(int on) { g_on = on ? 1 : 0; }
extern "C" int halo_cuda_gemm_s8_owning(void) { return env_switch(&g_on, "HALO_INT8_OWN_GEMM") && init(); }

extern "C" void halo_cuda_gemm_s8_few_tiles_lt(int on) { g_few_lt = on ? 1 : 0; }
extern "C" int halo_cuda_gemm_s8_few_tiles_lt_on(void) { return env_switch(&g_few_lt, "HALO_INT8_FEW_TILES_LT"); }
// A persistent CTA works one tile's whole K: fewer tiles than half the SMs over a long K (1B's G of k and v: 32 tiles
// of K 8192) leave most SMs idle; cuBLASLt runs those in 64 x 128 tiles (NOTES run 35: 0.043 ms with the dequantize
// pass against 0.049).
extern "C" int halo_cuda_gemm_s8_dq_suits(int M, int N, int K) {
    if (!halo_cuda_gemm_s8_few_tiles_lt_on() || !init()) return 1;
    const long tiles = (long)cdiv(M, BM) * cdiv(N, BN);
    return !(2 * tiles < g_sms && K >= 4096);
}

extern "C" int halo_cuda_gemm_s8_dq_small(int M, int N) {
    return init() && (long)cdiv(M, BM) * cdiv(N, BN) < 2L * g_sms;
}

extern "C" int halo_cuda_gemm_s8_dq_ok(const void *D, int d_f32, long ldd, const float *res, const int8_t *A, long lda,
                                       const int8_t *B, long ldb, int M, int N, int K, int Mo, int No) {
    if (!env_switch(&g_on, "HALO_INT8_OWN_GEMM") || !init()) return 0;
    const uintptr_t out_align = d_f32 ? 8 : 4;
    return M >= BM && N >= BN && K >= 16 && Mo <= M && No <= N && No % 2 == 0 && ldd % 2 == 0 && ldd >= No &&
           lda % 16 == 0 && ldb % 16 == 0 && lda >= K && ldb >= K && ((uintptr_t)A & 15) == 0 &&
           ((uintptr_t)B & 15) == 0 && ((uintptr_t)D & (out_align - 1)) == 0 && (!res || ((uintptr_t)res & 7) == 0);
}

extern "C" int halo_cuda_gemm_s8_dq_rot_ok(const halo_cuda_had *h, int No) {
    return h && h->K == 1 && h->P == h->block && h->block >= 2 && h->block <= 256 && h->d == No && No % h->block == 0;
}

extern "C" int halo_cuda_gemm_s8_dq_tok_ok(const halo_cuda_had *t) {
    return t && t->K == 1 && t->P == t->block && t->block >= 2 && t->block <= 64;
}

extern "C" int halo_cuda_gemm_s8_dq(void *D, int d_f32, long ldd, const float *res, int accumulate, const int8_t *A,
                                    long lda, const int8_t *B, long ldb, int M, int N, int K, int Mo, int No,
                                    const float *alpha, const halo_cuda_had *rot, cudaStream_t s) {
    return halo_cuda_gemm_s8_dq_tok(D, d_f32, ldd, res, accumulate, A, lda, B, ldb, M, N, K, Mo, No, alpha, rot, NULL,
                                    s);
}

static int launch_dq(void *D, int d_f32, long ldd, const float *res, int accumulate, const halo_cuda_s8_seg *seg,
                     int nseg, int stack, const int *sizes, int M, int N, int Mo, int No, const halo_cuda_had *rot,
                     const halo_cuda_had *tok, const halo_bf16 *lu, const halo_bf16 *lb, int lr, double *sumsq,
                     cudaStream_t s, const halo_cuda_swiglu_amax *sw = NULL);
static int launch_one(void *D, int d_f32, long ldd, const float *res, int accumulate, const int8_t *A, long lda,
                      const int8_t *B, long ldb, int M, int N, int K, int Mo, int No, const float *alpha,
                      const halo_cuda_had *rot, const halo_cuda_had *tok, const halo_bf16 *lu, const halo_bf16 *lb,
                      int lr, cudaStream_t s) {
    const halo_cuda_s8_seg one = {A, B, lda, ldb, K, alpha};
    return launch_dq(D, d_f32, ldd, res, accumulate, &one, 1, 0, NULL, M, N, Mo, No, rot, tok, lu, lb, lr, NULL, s);
}
extern "C" int halo_cuda_gemm_s8_dq_tok(void *D, int d_f32, long ldd, const float *res, int accumulate,
                                        const int8_t *A, long lda, const int8_t *B, long ldb, int M, int N, int K,
                                        int Mo, int No, const float *alpha, const halo_cuda_had *rot,
                                        const halo_cuda_had *tok, cudaStream_t s) {
    return launch_one(D, d_f32, ldd, res, accumulate, A, lda, B, ldb, M, N, K, Mo, No, alpha, rot, tok, NULL, NULL, 0,
                      s);
}
extern "C" int halo_cuda_gemm_s8_dq_sumsq(float *D, long ldd, int accumulate, const int8_t *A, long lda,
                                          const int8_t *B, long ldb, int M, int N, int K, int Mo, int No,
                                          const float *alpha, const halo_cuda_had *rot, double *sumsq, cudaStream_t s) {
    const halo_cuda_s8_seg one = {A, B, lda, ldb, K, alpha};
    return launch_dq(D, 1, ldd, NULL, accumulate, &one, 1, 0, NULL, M, N, Mo, No, rot, NULL, NULL, NULL, 0, sumsq, s);
}
extern "C" int halo_cuda_gemm_s8_dq_swiglu_ok(const halo_bf16 *D, long ldd, int No,
                                              const halo_cuda_swiglu_amax *sw) {
    return sw && sw->gu && sw->amax_g && sw->amax_u && sw->F == No && No % 8 == 0 && ldd % 8 == 0 &&
           ((uintptr_t)D & 15) == 0 && ((uintptr_t)sw->gu & 15) == 0 && sw->ldgu % 8 == 0 && sw->ldgu >= 2L * No;
}
extern "C" int halo_cuda_gemm_s8_dq_swiglu(halo_bf16 *D, long ldd, const int8_t *A, long lda, const int8_t *B,
                                           long ldb, int M, int N, int K, int Mo, int No, const float *alpha,
                                           const halo_cuda_had *rot, const halo_cuda_swiglu_amax *sw, cudaStream_t s) {
    if (!halo_cuda_gemm_s8_dq_swiglu_ok(D, ldd, No, sw))
        return halo_fail("halo_cuda_gemm_s8_dq_swiglu: the SwiGLU amax needs F == No (%d), a multiple of 8, and "
                         "16-byte aligned rows of D and gate/up", No);
    const halo_cuda_s8_seg one = {A, B, lda, ldb, K, alpha};
    return launch_dq(D, 0, ldd, NULL, 0, &one, 1, 0, NULL, M, N, Mo, No, rot, NULL, NULL, NULL, 0, NULL, s, sw);
}
static_assert(XCH_BYTES >= BN * 32 * 2, "the exchange area holds a tile's B rows of rank 32");
extern "C" int halo_cuda_gemm_s8_dq_lora_ok(const halo_bf16 *U, const halo_bf16 *Bl, int r) {
    return (r == 8 || r == 16 || r == 32) && ((uintptr_t)U & 3) == 0 && ((uintptr_t)Bl & 15) == 0;
}
extern "C" int halo_cuda_gemm_s8_dq_lora(void *D, int d_f32, long ldd, const float *res, int accumulate,
                                         const int8_t *A, long lda, const int8_t *B, long ldb, int M, int N, int K,
                                         int Mo, int No, const float *alpha, const halo_bf16 *U, const halo_bf16 *Bl,
                                         int r, cudaStream_t s) {
    if (!halo_cuda_gemm_s8_dq_lora_ok(U, Bl, r))
        return halo_fail("halo_cuda_gemm_s8_dq_lora: rank %d or unaligned U / B (the epilogue takes ranks 8, 16, 32)", r);
    return launch_one(D, d_f32, ldd, res, accumulate, A, lda, B, ldb, M, N, K, Mo, No, alpha, NULL, NULL, U, Bl, r, s);
}

// g_group: halo_cuda_gemm_s8_dq_grouping / HALO_INT8_GROUP (-1: not read yet)
static int g_group = -1;
extern "C" void halo_cuda_gemm_s8_dq_group_on(int on) { g_group = on ? 1 : 0; }
extern "C" int halo_cuda_gemm_s8_dq_grouping(void) { return env_switch(&g_group, "HALO_INT8_GROUP"); }
extern "C" int halo_cuda_gemm_s8_dq_group_ok(const float *D, long ldd, const halo_cuda_s8_seg *seg, int nseg, int M,
                                             int N, int Mo, int No) {
    if (nseg < 1 || nseg > MAX_SEG || !halo_cuda_gemm_s8_dq_grouping()) return 0;
    long k = 0;
    for (int i = 0; i < nseg; i++) {
        if (!halo_cuda_gemm_s8_dq_ok(D, 1, ldd, NULL, seg[i].A, seg[i].lda, seg[i].B, seg[i].ldb, M, N, seg[i].K, Mo,
                                     No))
            return 0;
        k += seg[i].K;
    }
    return halo_cuda_gemm_s8_dq_suits(M, N, (int)(k < 1 << 30 ? k : 1 << 30));
}
extern "C" int halo_cuda_gemm_s8_dq_group(float *D, long ldd, int accumulate, const halo_cuda_s8_seg *seg, int nseg,
                                          int M, int N, int Mo, int No, const halo_cuda_had *rot, cudaStream_t s) {
    if (nseg < 1 || nseg > MAX_SEG)
        return halo_fail("halo_cuda_gemm_s8_dq_group: %d products (the kernel takes 1 to %d)", nseg, MAX_SEG);
    return launch_dq(D, 1, ldd, NULL, accumulate, seg, nseg, 0, NULL, M, N, Mo, No, rot, NULL, NULL, NULL, 0, NULL, s);
}

// Stacked by rows (the weight gradients of q, k and v into one D): rows[s] each, all but the last a multiple of BM.
// *m: their sum; returns the first product (from 1) that breaks the rule, else 0
static int stack_rows_bad(const int *rows, int nseg, long *m) {
    *m = 0;
    for (int i = 0; i < nseg; i++) {
        if (i + 1 < nseg && rows[i] % BM) return i + 1;
        *m += rows[i];
    }
    return 0;
}
extern "C" int halo_cuda_gemm_s8_dq_stack_ok(const float *D, long ldd, const halo_cuda_s8_seg *seg, const int *rows,
                                             int nseg, int N, int No) {
    long m, k = 0;
    if (nseg < 1 || nseg > MAX_SEG || stack_rows_bad(rows, nseg, &m) || m >= 1 << 30) return 0;
    for (int i = 0; i < nseg; i++) {
        if (!halo_cuda_gemm_s8_dq_ok(D, 1, ldd, NULL, seg[i].A, seg[i].lda, seg[i].B, seg[i].ldb, rows[i], N, seg[i].K,
                                     rows[i], No))
            return 0;
        k = k > seg[i].K ? k : seg[i].K;
    }
    return halo_cuda_gemm_s8_dq_suits((int)m, N, (int)k);
}
extern "C" int halo_cuda_gemm_s8_dq_stack(float *D, long ldd, int accumulate, const halo_cuda_s8_seg *seg,
                                          const int *rows, int nseg, int N, int No, const halo_cuda_had *rot,
                                          cudaStream_t s) {
    long m;
    if (nseg < 1 || nseg > MAX_SEG)
        return halo_fail("halo_cuda_gemm_s8_dq_stack: %d products (the kernel takes 1 to %d)", nseg, MAX_SEG);
    const int bad = stack_rows_bad(rows, nseg, &m);
    if (bad)
        return halo_fail("halo_cuda_gemm_s8_dq_stack: product %d has %d rows, not a multiple of %d", bad, rows[bad - 1],
                         BM);
    return launch_dq(D, 1, ldd, NULL, accumulate, seg, nseg, 1, rows, (int)m, N, (int)m, No, rot, NULL, NULL, NULL, 0,
                     NULL, s);
}

// Stacked by columns (the forward products of q, k and v, or gate and up, into one Y of [M][No]): seg s's B has
// cols[s] rows, all but the last a multiple of BN; D's columns: No of their sum (the last product's padding cut)
static int stack_cols_shape(const int *cols, int nseg, int No, long *n) {
    *n = 0;
    for (int i = 0; i < nseg; i++) {
        if (cols[i] < 1 || (i + 1 < nseg && cols[i] % BN)) return 0;
        *n += cols[i];
    }
    return *n < 1 << 30 && No <= *n && No > *n - cols[nseg - 1];
}
extern "C" int halo_cuda_gemm_s8_dq_stack_cols_ok(const void *D, int d_f32, long ldd, const halo_cuda_s8_seg *seg,
                                                  const int *cols, int nseg, int M, int Mo, int No) {
    long n, c = 0, k = 0;
    if (nseg < 1 || nseg > MAX_SEG || !stack_cols_shape(cols, nseg, No, &n)) return 0;
    for (int i = 0; i < nseg; i++) {
        const int nos = i + 1 < nseg ? cols[i] : No - (int)c;
        if (!halo_cuda_gemm_s8_dq_ok((const char *)D + c * (d_f32 ? 4 : 2), d_f32, ldd, NULL, seg[i].A, seg[i].lda,
                                     seg[i].B, seg[i].ldb, M, cols[i], seg[i].K, Mo, nos))
            return 0;
        c += cols[i];
        k = k > seg[i].K ? k : seg[i].K;
    }
    return halo_cuda_gemm_s8_dq_suits(M, (int)n, (int)k);
}
extern "C" int halo_cuda_gemm_s8_dq_stack_cols(void *D, int d_f32, long ldd, const halo_cuda_s8_seg *seg,
                                               const int *cols, int nseg, int M, int Mo, int No, cudaStream_t s) {
    long n;
    if (nseg < 1 || nseg > MAX_SEG)
        return halo_fail("halo_cuda_gemm_s8_dq_stack_cols: %d products (the kernel takes 1 to %d)", nseg, MAX_SEG);
    if (!stack_cols_shape(cols, nseg, No, &n))
        return halo_fail("halo_cuda_gemm_s8_dq_stack_cols: product widths not stackable (each but the last a multiple "
                         "of %d; %d output columns)", BN, No);
    return launch_dq(D, d_f32, ldd, NULL, 0, seg, nseg, 2, cols, M, (int)n, Mo, No, NULL, NULL, NULL, NULL, 0, NULL, s);
}

// stack 0: the segments summed over K; 1: stacked by rows of D, sizes[s] each (M = Mo = their sum); 2: by columns,
// sizes[s] rows of B each (N = their sum, No of those written)
static int launch_dq(void *D, int d_f32, long ldd, const float *res, int accumulate, const halo_cuda_s8_seg *seg,
                     int nseg, int stack, const int *sizes, int M, int N, int Mo, int No, const halo_cuda_had *rot,
                     const halo_cuda_had *tok, const halo_bf16 *lu, const halo_bf16 *lb, int lr, double *sumsq,
                     cudaStream_t s, const halo_cuda_swiglu_amax *sw) {
    if (Mo <= 0 || No <= 0) return HALO_OK;
    if (rot && !halo_cuda_gemm_s8_dq_rot_ok(rot, No))
        return halo_fail("halo_cuda_gemm_s8_dq: the rotation (d=%d, block %d, K=%d) is not a power-of-two block of at "
                         "most 256 over the %d output columns", rot->d, rot->block, rot->K, No);
    if (tok && !halo_cuda_gemm_s8_dq_tok_ok(tok))
        return halo_fail("halo_cuda_gemm_s8_dq: the token rotation (d=%d, block %d, K=%d) is not a power-of-two block "
                         "of at most 64", tok->d, tok->block, tok->K);
    if (accumulate && !d_f32) return halo_fail("halo_cuda_gemm_s8_dq: accumulation needs an fp32 output");
    dq_maps maps;
    dq_args p;
    memset(&maps, 0, sizeof maps);
    memset(&p, 0, sizeof p);
    for (int i = 0; i < nseg; i++) {
        const halo_cuda_s8_seg *g = &seg[i];
        const int Ms = stack == 1 ? sizes[i] : M, Ns = stack == 2 ? sizes[i] : N;
        const int Mos = stack == 1 ? sizes[i] : Mo, Nos = stack != 2 ? No : i + 1 < nseg ? Ns : No - p.start[i];
        const void *Ds = (const char *)D + (stack == 2 ? p.start[i] * (d_f32 ? 4 : 2) : 0);
        if (!halo_cuda_gemm_s8_dq_ok(Ds, d_f32, ldd, res, g->A, g->lda, g->B, g->ldb, Ms, Ns, g->K, Mos, Nos))
            return halo_fail("halo_cuda_gemm_s8_dq: shape or layout not supported (product %d of %d: M=%d N=%d K=%d "
                             "lda=%ld ldb=%ld ldd=%ld)", i + 1, nseg, Ms, Ns, g->K, g->lda, g->ldb, ldd);
        if (!encode(&maps.a[i], g->A, Ms, g->K, g->lda, BM) || !encode(&maps.b[i], g->B, Ns, g->K, g->ldb, BN))
            return halo_fail("halo_cuda_gemm_s8_dq: cuTensorMapEncodeTiled refused M=%d N=%d K=%d lda=%ld ldb=%ld", Ms,
                             Ns, g->K, g->lda, g->ldb);
        p.k[i] = g->K;
        p.alpha[i] = g->alpha;
        p.start[i + 1] = p.start[i] + (stack == 2 ? Ns : Ms);
    }
    p.stack = stack;
    p.nseg = nseg;
    p.D = D; p.res = res; p.ldd = ldd;
    p.M = M; p.N = N; p.Mo = Mo; p.No = No;
    p.d_f32 = d_f32; p.mode = res ? 2 : accumulate ? 1 : 0;
    p.vec = !d_f32 && ldd % 8 == 0 && ((uintptr_t)D & 15) == 0;
    p.rot_stages = 0;
    p.rot_scale = 1.f;
    if (rot) {
        while ((1 << p.rot_stages) < rot->block) p.rot_stages++;
        p.rot_scale = rot->scale;
    }
    p.tok_stages = 0;
    p.tok_scale = 1.f;
    if (tok) {
        while ((1 << p.tok_stages) < tok->block) p.tok_stages++;
        p.tok_scale = tok->scale;
    }
    p.lu = (const __nv_bfloat16 *)lu;
    p.lb = (const __nv_bfloat16 *)lb;
    p.lr = lr;
    p.sumsq = sumsq;
    if (sw) {
        p.sw_gu = (const __nv_bfloat16 *)sw->gu;
        p.sw_ld = sw->ldgu;
        p.sw_F = sw->F;
        p.sw_amax_g = (unsigned *)sw->amax_g;
        p.sw_amax_u = (unsigned *)sw->amax_u;
        p.sw_nf_g = sw->nf_g;
        p.sw_nf_u = sw->nf_u;
    }
    const int tiles = ((M + BM - 1) / BM) * ((N + BN - 1) / BN);
    launch_pdl(k_gemm_s8_dq, dim3(tiles < g_sms ? tiles : g_sms), dim3(THREADS), SMEM_BYTES, s, maps, p);
    return HALO_OK;
}
