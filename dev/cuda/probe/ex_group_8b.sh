#!/usr/bin/env bash
# Llama-3-8B layer shapes (4 layers, batch 4 x 2048): BF16, FP8 L0, INT8 L2 with both blocks, and INT8 L0 with the
# grouped q/k/v input gradients off / on (HALO_INT8_GROUP) in two alternating pairs; step times into the summary.
# With the argument "kt": instead, CUPTI kernel times of the 8B-shape INT8 L0 step, off / on in three pairs.
# Here:   make the dev build, then bash scripts/device_sync.sh
# Device: cd .dev-cuda && bash dev/cuda/probe/ex_group_8b.sh
cd "$(dirname "$0")/../../.."   # .dev-cuda
source dev/cuda/probe/ab_lib.sh
ab_begin
b8() {   # NAME [bench_cuda_train options]
  local n=$1; shift
  timeout 150 build-dev/bench/bench_cuda_train --model llama3-8b --layers 4 --batch 4 --seq 2048 --steps 5 \
    --no-breakdown "$@" > $OUT/t/$n.log 2>&1
  echo "$n rc=$? $(grep -o '"step_ms": [0-9.]*, "tokens_per_s": [0-9]*' $OUT/t/$n.log)" >> $S
}
if [ "${1:-}" = kt ]; then
  C="s8_gemm=k_gemm_s8 lt_int8=(s8|i8|imma|Int8|int8)"
  for r in 1 2 3; do
    HALO_INT8_GROUP=0 ab_kt b8_group0_$r "$C" --model llama3-8b --layers 4 --precision int8 --halo-level 0
    HALO_INT8_GROUP=1 ab_kt b8_group1_$r "$C" --model llama3-8b --layers 4 --precision int8 --halo-level 0
  done
  ab_end
  exit 0
fi
b8 bf16
for r in 1 2; do
  HALO_INT8_GROUP=0 b8 int8l0_group0_$r --precision int8 --halo-level 0
  HALO_INT8_GROUP=1 b8 int8l0_group1_$r --precision int8 --halo-level 0
done
b8 fp8l0 --precision fp8 --halo-level 0
b8 int8l2_both_blocks --precision int8 --halo-level 2 --halo-hadamard-block 256 --halo-token-block 64
b8 bf16_again
ab_end
