#!/usr/bin/env bash
# Device call for the checks that wait on a GPU between feature merges: the recalibrated HALO training and verbs tests,
# the HALO kernel tests and per-launch breakdown, compute-sanitizer memcheck over a BF16 and HALO training step, and the GPU quality runs (gpu_quality_check.sh).
#   cd .dev-cuda && bash scripts/gpu_checks_a.sh       (after scripts/device_sync.sh here; carry [".dev-cuda"])
set -u
cd "$(dirname "$0")/.."
LOG=${OUT:-/tmp/halo-gpu-a}; mkdir -p "$LOG"
export HALO_SHARED=$PWD/shared PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
B=build-dev
source scripts/gpu_lib.sh
step() { gpu_step "$@"; echo "${summary[-1]}"; grep -h -E "passed, .* failed|FAIL" "$LOG/$2" | head -8; }
env OUT="$LOG" bash scripts/gpu_quality_check.sh > "$LOG/quality.log" 2>&1 &
qpid=$!
step "test_cuda_ops (ops incl. new attention variants)" ops.log 90 $B/tests/test_cuda_ops
grep -E "variant|attention" "$LOG/ops.log" | head -40
step "bench_cuda_attention (every variant, B4 T2048)" bench_attn.log 120 $B/bench/bench_cuda_attention
grep -E "^\|" "$LOG/bench_attn.log" | head -40
step "test_cuda_halo (HALO kernels vs CPU, new vec kernels)" halo_kernels.log 60 $B/tests/test_cuda_halo
step "bench_cuda_halo --breakdown (8B shapes, 8192 tok)" bench_halo.log 90 $B/bench/bench_cuda_halo --tokens 8192 --reps 5 --breakdown
grep -E "^breakdown|^\| (q|k|gate|down) " "$LOG/bench_halo.log" | head -60
step "test_cuda_halo_train (recalibrated bounds)" halo_train.log 120 $B/tests/test_cuda_halo_train
step "test_cuda_verbs (recalibrated resume bound)" verbs.log 120 $B/tests/test_cuda_verbs
step "memcheck: train step, BF16 + HALO int8/fp8" memcheck.log 200 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 $B/tests/test_cuda_model --sanitize-step
tail -5 "$LOG/memcheck.log"
wait $qpid; echo "quality rc=$?"
cat "$LOG/quality.log" | tail -8
echo; echo "==== summary"; printf '%s\n' "${summary[@]}"
