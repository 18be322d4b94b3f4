#!/usr/bin/env bash
# HALO in the GPU model (issue 6) in one device call. Here: `bash scripts/device_sync.sh` (builds tests and benches
# into .dev-cuda); then the device tool with carry [".dev-cuda"] and
#   cd .dev-cuda && bash scripts/gpu_halo_train_check.sh
# Runs test_cuda_halo_train (GPU HALO layer variants vs the CPU layer, a random model's loss and gradients vs the CPU
# HALO model, stories260K trained on GPU and CPU with the same batches) and bench_cuda_train on Llama-3.2-1B,
# batch 4 x 2048, 5 timed steps each in bf16, fp8 L0, fp8 L1 and int8 L2; prints a table last. ~100 s in all.
# Logs go to $OUT when set (written as each step runs, so a call cut short keeps them), else /tmp/halo-gpu-halo-train.
set -u
cd "$(dirname "$0")/.."
source scripts/gpu_lib.sh   # first: unpacks the binaries device_sync.sh shipped packed
LOG=${OUT:-/tmp/halo-gpu-halo-train}; mkdir -p "$LOG"
export HALO_SHARED=$PWD/shared
export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
B=build-dev
[ -x "$B/tests/test_cuda_halo_train" ] || B=build   # a tree built on the device (make tests benches)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.used --format=csv,noheader | tee "$LOG/gpu.txt"
source scripts/gpu_lib.sh
run() { gpu_step "$@"; }
# the CPU side of the stories260K comparison is the slow part: it stops after 30 s (the test then compares the
# steps both sides finished)
run "test_cuda_halo_train" test.log 90 $B/tests/test_cuda_halo_train --cpu-budget 30
for cfg in "bf16 -" "fp8 0" "fp8 1" "int8 2"; do
  set -- $cfg
  lvl=(); [ "$2" != - ] && lvl=(--halo-level "$2")
  run "bench_cuda_train 1b 4x2048 $1 L$2" "bench_$1_$2.log" 40 \
    $B/bench/bench_cuda_train --model llama3.2-1b --batch 4 --seq 2048 --steps 5 --profile-only --precision "$1" ${lvl[@]+"${lvl[@]}"}
done

echo; echo "==== test_cuda_halo_train: failures"
grep -h -E "FAIL|SKIP|passed|CUDA error|halo cuda:" "$LOG/test.log" | head -30
echo; echo "==== test_cuda_halo_train: checks and curves"
grep -h -E '^\||yardstick|worst tensor|refused|note:|stories260K,|^\(' "$LOG/test.log"
echo; echo "==== benchmark profiles (device time per step by operation)"
for f in "$LOG"/bench_*.log; do
  echo "--- $(basename "$f" .log)"
  # the memory breakdown's category lines end in GiB (the filter used to keep only its header)
  grep -h -E "block linears|warmup step|^step |tokens/s|  [a-zA-Z].* ms  |  [a-zA-Z].* GiB|CUDA error|halo cuda:|rror" "$f" | head -45
done
echo; echo "==== Llama-3.2-1B training step, batch 4 x 2048 (median of 5 steps)"
python3 - "$LOG" <<'PY'
import json, sys
out = sys.argv[1]
rows = []
for name in ["bench_bf16_-", "bench_fp8_0", "bench_fp8_1", "bench_int8_2"]:
    try:
        lines = [l for l in open(f"{out}/{name}.log") if l.startswith("{")]
        rows.append(json.loads(lines[-1]) if lines else None)
    except (OSError, ValueError):
        rows.append(None)
base = rows[0]["step_ms"] if rows[0] else None
print("| precision | level | step ms | tokens/s | vs bf16 | % of bf16 peak | device GiB | loss at step 8 |")
print("|---|---|---|---|---|---|---|---|")
for name, r in zip(["bf16", "fp8", "fp8", "int8"], rows):
    if not r:
        print(f"| {name} | - | no result (see the log) | | | | | |")
        continue
    sp = f"{base / r['step_ms']:.2f}x" if base else "-"
    lvl = r.get("halo_level", -1)
    print(f"| {r['precision']} | {lvl if lvl >= 0 else '-'} | {r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | {sp} | "
          f"{100 * r['mfu_measured_peak']:.1f} | {r['device_used_gib']:.1f} | {r['loss']:.4f} |")
PY
echo; echo "==== summary"; printf '%s\n' "${summary[@]}"
exit 0
