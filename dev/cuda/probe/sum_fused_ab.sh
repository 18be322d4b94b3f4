#!/usr/bin/env bash
# The group's input-gradient sum rounded by the last INT8 product (HALO_CUDA_SUM_FUSED=1, halo_cuda_linear_backward_sum;
# the default since the forty-third session, NOTES run 27) against the rounding pass (HALO_CUDA_SUM_FUSED=0), same
# binary, alternating, BF16 beside them;
# test_cuda_halo first. Results are appended to $OUT/summary.txt as they finish (the call may be cut short).
# On the device, after scripts/device_sync.sh:
#   cd .dev-cuda && bash dev/cuda/probe/sum_fused_ab.sh        (SHORT=1: INT8 L0 pairs only, ~4 min;
#   ROUNDS=n with SHORT=1: n pairs instead of 3)
cd "$(dirname "$0")/../../.."   # .dev-cuda (after scripts/device_sync.sh)
source dev/cuda/probe/ab_lib.sh
ab_begin
export HALO_CUDA_DNORM_F32=0   # (since run 32 the sums are rounded only without the norm's fp32 read)
ab_test halo 120
B="build-dev/bench/bench_cuda_train --model llama3.2-1b --batch 4 --seq 2048 --steps 5 --no-breakdown"
L1="--precision int8 --halo-level 1 --halo-hadamard-block 256"
run() { local n=$1; shift; "$@" > $OUT/t/$n.log 2>&1; echo "$n $(grep -o '"step_ms": [0-9.]*' $OUT/t/$n.log)" >> $S; }
if [ -n "${SHORT:-}" ]; then   # a short device call: the INT8 L0 pair alternating, BF16 once
  for r in $(seq 1 ${ROUNDS:-3}); do
    run i0sum_$r env HALO_CUDA_SUM_FUSED=1 $B --precision int8 --halo-level 0
    run i0_$r env HALO_CUDA_SUM_FUSED=0 $B --precision int8 --halo-level 0
    [ $r = 1 ] && run bf16_$r $B
  done
else for r in 1 2; do
  run bf16_$r $B
  run i0_$r env HALO_CUDA_SUM_FUSED=0 $B --precision int8 --halo-level 0
  run i0sum_$r env HALO_CUDA_SUM_FUSED=1 $B --precision int8 --halo-level 0
  [ $r = 1 ] && run i1_$r env HALO_CUDA_SUM_FUSED=0 $B $L1
  [ $r = 1 ] && run i1sum_$r env HALO_CUDA_SUM_FUSED=1 $B $L1
done; fi
ab_end
