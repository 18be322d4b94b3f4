#!/usr/bin/env bash
# The group's input-gradient sum rounded by the last INT8 product (HALO_CUDA_SUM_FUSED=1, halo_cuda_linear_backward_sum;
# the default since the forty-third session, NOTES run 27) against the rounding pass (HALO_CUDA_SUM_FUSED=0), same
# binary, alternating, BF16 beside them;
# test_cuda_halo first. Results are appended to $OUT/summary.txt as they finish (the call may be cut short).
# On the device, after scripts/device_sync.sh:
#   cd .dev-cuda && bash dev/cuda/probe/sum_fused_ab.sh        (SHORT=1: INT8 L0 pairs only, ~4 min;
#   ROUNDS=n with SHORT=1: n pairs instead of 3)
cd "$(dirname "$0")/../../.."   # .dev-cuda (after scripts/device_sync.sh)
tar xJf build-dev.tar.xz
export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,uuid --format=csv,noheader > $S
mkdir -p $OUT/t
export HALO_SHARED=$PWD/shared
timeout 120 build-dev/tests/test_cuda_halo > $OUT/t/halo.log 2>&1; echo "halo rc=$? $(tail -n1 $OUT/t/halo.log)" >> $S
grep -h "FAIL" $OUT/t/halo.log | head -5 >> $S
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
cat $S
cd $OUT && tar cJf logs.tar.xz t && rm -rf t
