#!/usr/bin/env bash
# The groups' input-gradient products (q, k, v; gate, up) in one launch of the own INT8 kernel each
# (halo_cuda_gemm_s8_dq_group, HALO_INT8_GROUP): bench_cuda_int8 (its group table: one by one vs grouped, at 1B and
# 8B shapes), test_cuda_halo, test_cuda_halo_train, then CUPTI times of 1B steps alternating off / on: INT8 L0 (two
# rounds), INT8 L1 H_m blocks of 256. With the argument "steps": only the steps, INT8 L0 in three rounds.
# Here:   make the dev build, then bash scripts/device_sync.sh
# Device: cd .dev-cuda && bash dev/cuda/probe/ex_group_ab.sh
cd "$(dirname "$0")/../../.."   # .dev-cuda
source dev/cuda/probe/ab_lib.sh
ab_begin
R="1 2"
if [ "${1:-}" = steps ]; then R="1 2 3"; else
  timeout 120 build-dev/bench/bench_cuda_int8 --reps 20 > $OUT/int8.md 2>&1; cat $OUT/int8.md >> $S
  ab_test halo_train 300
  ab_test halo 240
fi
C="s8_gemm=k_gemm_s8 lt_int8=(s8|i8|imma|Int8|int8)"
for r in $R; do
  HALO_INT8_GROUP=0 ab_kt int8_group0_$r "$C" --precision int8 --halo-level 0
  HALO_INT8_GROUP=1 ab_kt int8_group1_$r "$C" --precision int8 --halo-level 0
done
H="--precision int8 --halo-level 1 --halo-hadamard-block 256"
HALO_INT8_GROUP=0 ab_kt int8l1_group0 "$C" $H; HALO_INT8_GROUP=1 ab_kt int8l1_group1 "$C" $H
ab_end
