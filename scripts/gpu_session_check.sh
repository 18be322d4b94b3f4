#!/usr/bin/env bash
# Every GPU check of a short device session in one call, most important first, each step under its own time limit
# and logged straight into $OUT (so a call cut short by the device budget still returns what ran):
#   1. test_cuda_model (BF16 GPU model vs goldens and the CPU model)   2. test_cuda_halo (HALO kernels vs src/halo)
#   3. scripts/gpu_halo_train_check.sh (HALO in the GPU model: training vs the CPU HALO model, 1B benchmark per
#      precision)   4. scripts/gpu_verbs_check.sh (--device cuda in the verbs, GPU checkpoints)
#   5. bench_cuda_halo (per-layer HALO at Llama-3-8B shapes)   6. the PyTorch baseline (compiled) on this GPU
# Prepared here by `bash scripts/device_sync.sh`; on the device (carry [".dev-cuda"]):
#   cd .dev-cuda && bash scripts/gpu_session_check.sh
set -u
cd "$(dirname "$0")/.."
LOG=${OUT:-/tmp/halo-gpu-session}; mkdir -p "$LOG"
export HALO_SHARED=$PWD/shared PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
B=build-dev
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv | tee "$LOG/gpu.txt"
source scripts/gpu_lib.sh
step() {   # as gpu_step, printing its summary line (also into summary.txt) and the log's pass/fail lines at once
  gpu_step "$@"
  echo "${summary[-1]}" | tee -a "$LOG/summary.txt"
  grep -h -E "passed, .* failed|FAIL" "$LOG/$2" | head -5
}
step "test_cuda_model (BF16 model, goldens)" model.log 60 $B/tests/test_cuda_model
step "test_cuda_halo (HALO kernels vs CPU)" halo_kernels.log 40 $B/tests/test_cuda_halo
step "gpu_halo_train_check.sh (HALO in the model)" halo_train.log 150 env OUT="$LOG/halo_train" bash scripts/gpu_halo_train_check.sh
step "gpu_verbs_check.sh (--device cuda verbs)" verbs.log 75 env OUT="$LOG/verbs" bash scripts/gpu_verbs_check.sh
step "bench_cuda_halo 8192 tokens (8B layers)" bench_halo.log 45 $B/bench/bench_cuda_halo --tokens 8192 --reps 5
step "torch compiled llama3.2-1b 4x2048" torch_1b.log 150 python3 shared/bench/torch_llama_baseline.py --model llama3.2-1b --batch 4 --seq 2048 --compile
echo; echo "==== summary"; printf '%s\n' "${summary[@]}"
echo; echo "==== HALO in the GPU model"; tail -30 "$LOG/halo_train.log"
echo; echo "==== verbs"; grep -E "PASS|FAIL" "$LOG/verbs.log" | tail -15
echo; echo "==== bench_cuda_halo"; grep -E '^\|' "$LOG/bench_halo.log" | head -12
echo; echo "==== torch"; tail -2 "$LOG/torch_1b.log"
