#!/usr/bin/env bash
# The GPU KV-cache decoder (src/cuda/decode.cu) in one device call. Here: `bash scripts/device_sync.sh` (builds tests,
# benches and the halo binary into .dev-cuda); then the device tool with carry [".dev-cuda"] and
#   cd .dev-cuda && bash scripts/gpu_decode_check.sh
# Runs test_cuda_decode (greedy tokens vs the CPU and the golden, logits vs the CPU model and vs the GPU full forward,
# generate/eval verbs with --device cuda vs cpu), compute-sanitizer memcheck and racecheck on its --sanitize part,
# and bench_cuda_decode (Llama-3.2-1B shapes, batch 1 and 8, 128 prompt + 128 new tokens). ~2 min.
# Logs go to $OUT when set, else /tmp/halo-gpu-decode.
set -u
cd "$(dirname "$0")/.."
source scripts/gpu_lib.sh   # first: unpacks the binaries device_sync.sh shipped packed
LOG=${OUT:-/tmp/halo-gpu-decode}; mkdir -p "$LOG"
export HALO_SHARED=$PWD/shared BUILD=build-dev
export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
B=build-dev
[ -x "$B/tests/test_cuda_decode" ] || { B=build; export BUILD=build; }   # a tree built on the device
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv,noheader | tee "$LOG/gpu.txt"
source scripts/gpu_lib.sh
GPU_STEP_VERDICT=1
gpu_step "test_cuda_decode" test.log 180 $B/tests/test_cuda_decode
gpu_step "compute-sanitizer memcheck (--sanitize)" memcheck.log 150 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 $B/tests/test_cuda_decode --sanitize
gpu_step "compute-sanitizer racecheck (--sanitize)" racecheck.log 150 compute-sanitizer --tool racecheck --error-exitcode 9 $B/tests/test_cuda_decode --sanitize
gpu_step "bench_cuda_decode llama3.2-1b, batch 1 and 8" bench.log 180 $B/bench/bench_cuda_decode --batches 1,8 --prompt 128 --new 128
echo; echo "==== test_cuda_decode"
grep -h -E "FAIL|SKIP|passed|greedy|logits|sampled|halo generate|halo eval|first difference|CUDA error" "$LOG/test.log" | head -60
echo; echo "==== compute-sanitizer"
grep -h -E "ERROR SUMMARY|passed" "$LOG/memcheck.log" "$LOG/racecheck.log"
echo; echo "==== bench_cuda_decode"
grep -v '^{' "$LOG/bench.log" | tail -12
echo; echo "==== summary"; printf '%s\n' "${summary[@]}"
exit 0
