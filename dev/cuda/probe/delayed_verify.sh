#!/usr/bin/env bash
# After the delayed-scaling change: every CUDA test binary (the spec's paths share the refactored kernels), memcheck
# over the HALO kernel tests (the new producers among them), and Llama-3-8B-shape steps (4 layers) BF16, INT8 L0 spec
# and delayed. Results go to $OUT/summary.txt as they finish.
# On the device, after scripts/device_sync.sh:  cd .dev-cuda && bash dev/cuda/probe/delayed_verify.sh
cd "$(dirname "$0")/../../.."   # .dev-cuda
source dev/cuda/probe/ab_lib.sh
ab_begin
for t in ops model lora decode verbs halo halo_train; do ab_test $t 240; done
timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 build-dev/tests/test_cuda_halo > $OUT/t/memcheck_halo.log 2>&1
echo "memcheck test_cuda_halo rc=$? $(grep -E 'ERROR SUMMARY' $OUT/t/memcheck_halo.log | tail -1) $(grep -E 'passed' $OUT/t/memcheck_halo.log | tail -1)" >> $S
b() {   # name delayed [options]
  local n=$1 d=$2; shift 2
  HALO_DELAYED_SCALING=$d timeout 120 build-dev/bench/bench_cuda_train --batch 4 --seq 2048 --steps 5 --no-breakdown "$@" > $OUT/t/$n.log 2>&1
  echo "$n rc=$? $(grep -o '"step_ms": [0-9.]*' $OUT/t/$n.log) $(grep -o '"tokens_per_s": [0-9.]*' $OUT/t/$n.log)" >> $S
}
E="--model llama3-8b --layers 4"
b e8_bf16 0 $E; b e8_i0_d0 0 $E --precision int8 --halo-level 0; b e8_i0_d1 1 $E --precision int8 --halo-level 0
b e8_f0_d1 1 $E --precision fp8 --halo-level 0
b m1_i0_d1 1 --model llama3.2-1b --precision int8 --halo-level 0; b m1_bf16 0 --model llama3.2-1b
ab_end
