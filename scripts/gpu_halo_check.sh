#!/usr/bin/env bash
# The HALO GPU kernels in one device call: build (scripts/device_build.sh when .carry-deps was carried, else the
# prebuilt build-dev/ of scripts/device_sync.sh, else a plain make), test_cuda_halo (every kernel vs src/halo),
# compute-sanitizer racecheck + memcheck on it, then bench_cuda_halo at Llama-3-8B layer shapes; tables last.
# Logs go to $OUT (the device tool's output folder) when set.
#   here:   bash scripts/device_pack.sh      then the device tool with carry [".carry-deps", ".carry-shared"] and
#   there:  bash scripts/gpu_halo_check.sh [all|test|bench|breakdown]   (breakdown: per-launch times of each layer)
set -u
what=${1:-all}
cd "$(dirname "$0")/.."
source scripts/gpu_lib.sh   # first: unpacks the binaries device_sync.sh shipped packed
LOG=${OUT:-/tmp/halo-gpu-halo}; mkdir -p "$LOG"
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.draw,temperature.gpu,memory.used --format=csv | tee "$LOG/gpu.txt"
if [ -d .carry-deps ]; then
  source scripts/device_build.sh > "$LOG/build.log" 2>&1 || { tail -30 "$LOG/build.log"; exit 1; }
  set +e +o pipefail
  B=build
elif [ -x build-dev/tests/test_cuda_halo ]; then
  export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
  B=build-dev
else
  make -j16 build/tests/test_cuda_halo build/bench/bench_cuda_halo > "$LOG/build.log" 2>&1 || { tail -30 "$LOG/build.log"; exit 1; }
  B=build
fi
source scripts/gpu_lib.sh
run() { gpu_step "$@"; }
if [ "$what" = all ] || [ "$what" = test ]; then
  run "test_cuda_halo (GPU kernels vs src/halo)" test.log 120 $B/tests/test_cuda_halo
  run "compute-sanitizer racecheck test_cuda_halo" racecheck.log 200 compute-sanitizer --tool racecheck --error-exitcode 9 $B/tests/test_cuda_halo
  run "compute-sanitizer memcheck test_cuda_halo" memcheck.log 200 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/test_cuda_halo
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
  run "bench_cuda_halo 8192 tokens" bench.log 240 $B/bench/bench_cuda_halo --tokens 8192 --reps 20
fi
if [ "$what" = all ] || [ "$what" = breakdown ]; then
  run "bench_cuda_halo --breakdown 8192 tokens" breakdown.log 240 $B/bench/bench_cuda_halo --tokens 8192 --reps 10 --breakdown
fi
echo; echo "==== failures / sanitizer summaries"
grep -h -E "FAIL|ERROR SUMMARY|RACECHECK SUMMARY|passed|error" "$LOG"/test.log "$LOG"/racecheck.log "$LOG"/memcheck.log 2>/dev/null | head -30
echo; echo "==== test_cuda_halo"; grep -h -E '^\|' "$LOG/test.log" 2>/dev/null | grep -v '| ok |' | head -60
echo "(rows that passed: $(grep -c '| ok |' "$LOG/test.log" 2>/dev/null))"
echo; echo "==== bench_cuda_halo"; grep -v '^|' "$LOG/bench.log" 2>/dev/null | tail -40
echo; echo "==== breakdown (full tables in breakdown.log)"; grep -h '^breakdown .*sum' "$LOG/breakdown.log" 2>/dev/null
echo; echo "==== summary"; printf '%s\n' "${summary[@]}"
echo; grep -h -E '^\|' "$LOG/bench.log" 2>/dev/null
