#!/usr/bin/env bash
# One device call for the work that waits on a GPU between merges, timings first (nothing else on the GPU), then
# correctness runs beside the GPU quality runs:
#   op tests (attention variants, rmsnorm, AdamW) -> attention bench -> model tests (bf16 grads, norm recompute) ->
#   1B training bench (default, low-memory) -> HALO kernel tests + per-launch breakdown -> decode test + bench ->
#   [gpu_quality_check.sh in the background] HALO training and verbs tests -> memcheck over BF16 + HALO steps
#   cd .dev-cuda && bash scripts/gpu_checks_a.sh       (after scripts/device_sync.sh here; carry [".dev-cuda"])
set -u
cd "$(dirname "$0")/.."
LOG=${OUT:-/tmp/halo-gpu-a}; mkdir -p "$LOG"
export HALO_SHARED=$PWD/shared PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
B=build-dev
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv | tee "$LOG/gpu.txt"
source scripts/gpu_lib.sh
step() { gpu_step "$@"; echo "${summary[-1]}"; grep -h -E "passed, .* failed|FAIL" "$LOG/$2" | head -8; }
step "test_cuda_ops (attention variants, rmsnorm, adamw)" ops.log 90 $B/tests/test_cuda_ops
grep -E "variant" "$LOG/ops.log" | head -30
step "bench_cuda_attention (every variant, B4 T2048)" bench_attn.log 100 $B/bench/bench_cuda_attention
grep -E "^\|" "$LOG/bench_attn.log" | head -30
step "test_cuda_model (goldens, bf16 grads, norm recompute)" model.log 90 $B/tests/test_cuda_model
step "bench 1B default" b1.log 60 $B/bench/bench_cuda_train --model llama3.2-1b --batch 4 --seq 2048 --steps 5
grep -E "step|tokens/s|ms  |GiB" "$LOG/b1.log" | head -40
step "bench 1B bf16 moments+grads, norm recompute" b1lm.log 60 $B/bench/bench_cuda_train --model llama3.2-1b --batch 4 --seq 2048 --steps 5 --bf16-moments --bf16-grads --recompute-norms --no-breakdown
grep -E "step|tokens/s|GiB" "$LOG/b1lm.log" | head -20
step "test_cuda_halo (HALO kernels vs CPU)" halo_kernels.log 60 $B/tests/test_cuda_halo
step "bench_cuda_halo --breakdown (8B shapes)" bench_halo.log 100 $B/bench/bench_cuda_halo --tokens 8192 --reps 5 --breakdown
grep -E "^breakdown|^\| (q|k|gate|down) " "$LOG/bench_halo.log" | head -50
step "test_cuda_decode (GPU decoder vs CPU, goldens)" decode.log 90 $B/tests/test_cuda_decode
grep -E "identical|bound|first difference" "$LOG/decode.log" | head -12
step "bench_cuda_decode 1B batch 1,8" bench_decode.log 60 $B/bench/bench_cuda_decode --batches 1,8 --prompt 128 --new 128
grep -E "^\|" "$LOG/bench_decode.log" | head
env OUT="$LOG" bash scripts/gpu_quality_check.sh > "$LOG/quality.log" 2>&1 &
qpid=$!
step "test_cuda_halo_train (recalibrated bounds)" halo_train.log 120 $B/tests/test_cuda_halo_train
step "test_cuda_verbs (recalibrated resume bound)" verbs.log 120 $B/tests/test_cuda_verbs
step "memcheck: train step, BF16 + HALO int8/fp8" memcheck.log 150 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 $B/tests/test_cuda_model --sanitize-step
tail -3 "$LOG/memcheck.log"
wait $qpid; echo "quality rc=$?"; tail -8 "$LOG/quality.log"
echo; echo "==== summary"; printf '%s\n' "${summary[@]}"
