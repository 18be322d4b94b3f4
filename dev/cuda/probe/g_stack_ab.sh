#!/usr/bin/env bash
# The groups' weight gradients (q, k, v; gate, up) stacked by rows in one launch of the own INT8 kernel
# (halo_cuda_gemm_s8_dq_stack, HALO_INT8_STACK): bench_cuda_int8 (its stack table), test_cuda_halo_train,
# test_cuda_halo, then CUPTI times of 1B steps alternating off / on: INT8 L0 (three rounds), INT8 L1 H_m blocks of 256.
# Here:   make the dev build, then bash scripts/device_sync.sh
# Device: cd .dev-cuda && bash dev/cuda/probe/g_stack_ab.sh
cd "$(dirname "$0")/../../.."   # .dev-cuda
source dev/cuda/probe/ab_lib.sh
ab_begin
timeout 120 build-dev/bench/bench_cuda_int8 --reps 20 > $OUT/int8.md 2>&1; grep -E -A8 '^\| (group|stack) \|' $OUT/int8.md >> $S
tail -2 $OUT/int8.md >> $S
ab_test halo_train 300
ab_test halo 240
C="s8_gemm=k_gemm_s8 lt_int8=(s8|i8|imma|Int8|int8) dequant=dequant"
for r in 1 2 3; do
  HALO_INT8_STACK=0 ab_kt int8_stack0_$r "$C" --precision int8 --halo-level 0
  HALO_INT8_STACK=1 ab_kt int8_stack1_$r "$C" --precision int8 --halo-level 0
done
H="--precision int8 --halo-level 1 --halo-hadamard-block 256"
HALO_INT8_STACK=0 ab_kt int8l1_stack0 "$C" $H; HALO_INT8_STACK=1 ab_kt int8l1_stack1 "$C" $H
ab_end
