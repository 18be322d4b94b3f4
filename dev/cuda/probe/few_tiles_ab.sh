#!/usr/bin/env bash
# INT8 products over few tiles and a long K (1B's G of k and v: 32 tiles of K 8192 on 132 SMs) through cuBLASLt's
# int32 product + the dequantize pass instead of the own kernel (HALO_INT8_FEW_TILES_LT, halo_cuda_gemm_s8_dq_suits):
# bench_cuda_int8 (own vs int32 + dequantize per shape, "1B G k/v" among them), test_cuda_halo, test_cuda_halo_train,
# then CUPTI times of 1B steps alternating off / on: INT8 L0 (two rounds), INT8 L1 H_m blocks of 256; and the
# forty-ninth session's spec-scale gate/up E_Y codes off / on (HALO_CUDA_EY_CODES_SPEC) for INT8 and FP8 L0.
# Here:   make the dev build, then bash scripts/device_sync.sh
# Device: cd .dev-cuda && bash dev/cuda/probe/few_tiles_ab.sh
cd "$(dirname "$0")/../../.."   # .dev-cuda
source dev/cuda/probe/ab_lib.sh
ab_begin
timeout 120 build-dev/bench/bench_cuda_int8 --reps 20 > $OUT/int8.md 2>&1; cat $OUT/int8.md >> $S
ab_test halo 240
ab_test halo_train 300
C="s8_gemm=k_gemm_s8 dequant=dequant lt_int8=(s8|i8|imma|Int8|int8)"
for r in 1 2; do
  HALO_INT8_FEW_TILES_LT=0 ab_kt int8_few0_$r "$C" --precision int8 --halo-level 0
  HALO_INT8_FEW_TILES_LT=1 ab_kt int8_few1_$r "$C" --precision int8 --halo-level 0
done
H="--precision int8 --halo-level 1 --halo-hadamard-block 256"
HALO_INT8_FEW_TILES_LT=0 ab_kt int8l1_few0 "$C" $H; HALO_INT8_FEW_TILES_LT=1 ab_kt int8l1_few1 "$C" $H
E="swiglu=k_swiglu_(bwd|codes) tile8=k_tile8"
for p in int8 fp8; do
  HALO_CUDA_EY_CODES_SPEC=0 ab_kt ${p}_spec0 "$E" --precision $p --halo-level 0
  HALO_CUDA_EY_CODES_SPEC=1 ab_kt ${p}_spec1 "$E" --precision $p --halo-level 0
done
ab_end
