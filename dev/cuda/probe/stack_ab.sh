#!/usr/bin/env bash
# q's, k's and v's products stacked in one launch of the own INT8 kernel: weight gradients by rows
# (halo_cuda_gemm_s8_dq_stack, HALO_INT8_STACK) and forward products by columns (halo_cuda_gemm_s8_dq_stack_cols,
# HALO_INT8_Y_STACK; both off by default, 1 turns them on). bench_cuda_int8 (its stack table), test_cuda_halo_train,
# test_cuda_halo, then CUPTI times of 1B steps: INT8 L0 in two rounds of three (both off / G only / both on), INT8 L1
# H_m blocks of 256 off / on.
# With the argument "short": both tests, then three INT8 L0 rounds of off / both on, and the L1 pair.
# With "rounds": three INT8 L0 rounds of off / G only / both on, nothing else.
# Here:   make the dev build, then bash scripts/device_sync.sh
# Device: cd .dev-cuda && bash dev/cuda/probe/stack_ab.sh
cd "$(dirname "$0")/../../.."   # .dev-cuda
source dev/cuda/probe/ab_lib.sh
ab_begin
R="1 2"
if [ "${1:-}" = rounds ]; then R="1 2 3"
elif [ "${1:-}" = short ]; then R="1 2 3"; ab_test halo_train 300; ab_test halo 240; else
  timeout 120 build-dev/bench/bench_cuda_int8 --reps 20 > $OUT/int8.md 2>&1
  grep -E -A10 '^\| (group|stack) \|' $OUT/int8.md >> $S; tail -2 $OUT/int8.md >> $S
  ab_test halo_train 300
  ab_test halo 240
fi
C="s8_gemm=k_gemm_s8 lt_int8=(s8|i8|imma|Int8|int8) dequant=dequant"
for r in $R; do
  ab_kt int8_off_$r "$C" --precision int8 --halo-level 0
  [ "${1:-}" = short ] || HALO_INT8_STACK=1 ab_kt int8_g_$r "$C" --precision int8 --halo-level 0
  HALO_INT8_STACK=1 HALO_INT8_Y_STACK=1 ab_kt int8_gy_$r "$C" --precision int8 --halo-level 0
done
H="--precision int8 --halo-level 1 --halo-hadamard-block 256"
[ "${1:-}" = rounds ] || { ab_kt int8l1_off "$C" $H; HALO_INT8_STACK=1 HALO_INT8_Y_STACK=1 ab_kt int8l1_gy "$C" $H; }
ab_end
