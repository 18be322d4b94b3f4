#!/usr/bin/env bash
# --device cuda in the verbs, on the GPU machine, from the folder scripts/device_sync.sh filled (prebuilt
# build-dev/halo and build-dev/tests/test_cuda_verbs, shared data):
#   1. test_cuda_verbs: GPU checkpoint round trip and resume, cross-device resumes, bf16 moments, debug-step vs goldens
#   2. halo finetune --device cuda on stories260K + ViGGO (valid.csv, README's short prompt): 20 steps, checkpoints
#      every 10, then --resume from step 10 on the GPU (losses of steps 11..20 within 1e-2 relative of the
#      uninterrupted run: GPU steps are not bit-reproducible) and on the CPU (same checkpoint format; step 11 within
#      2e-2: fp32 vs BF16 forward)
#   3. halo debug-step --device cuda vs the golden's ten AdamW losses (3e-2)
#   4. halo eval --device cuda --task loss vs --device cpu on the fine-tuned model (1e-2)
#   5. halo demo --device cuda, 200 steps (runs; accuracy printed)
# Every line of the summary says PASS or FAIL; the exit status is the number of failures. Logs go to $OUT when set.
#   bash scripts/gpu_verbs_check.sh          (HALO_VERBS_DEVICE=cpu: the same commands on the CPU, to check the script)
set -u
DEV=${HALO_VERBS_DEVICE:-cuda}
cd "$(dirname "$0")/.."
source scripts/gpu_lib.sh   # first: unpacks the binaries device_sync.sh shipped packed
export HALO_SHARED=$PWD/shared BUILD=build-dev
export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
LOG=${OUT:-/tmp/halo-gpu-verbs}; mkdir -p "$LOG"
W=$(mktemp -d /tmp/halo-gpu-verbs.XXXXXX)
H=build-dev/halo
M=shared/models/stories260K
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv,noheader 2>&1 | head -2
source scripts/gpu_lib.sh; GPU_STEP_WIDTH=58 GPU_STEP_VERDICT=1; fails=0
run() {   # as gpu_step; a failure is counted and its log's tail shown
  gpu_step "$@" && return 0
  local rc=$?; fails=$((fails + 1)); tail -15 "$LOG/$2"; return $rc
}
verdict() {   # name, python check that exits 0 on success (prints its numbers)
  local name=$1; shift
  local msg; msg=$(python3 -c "$@" 2>&1); local rc=$?
  summary+=("$(printf '%-58s %s  %s' "$name" "$([ $rc = 0 ] && echo PASS || echo FAIL)" "$msg")")
  [ $rc = 0 ] || fails=$((fails + 1))
}

# 1. the GPU test
run "test_cuda_verbs (checkpoints, resume, debug-step)" verbs.log 120 build-dev/tests/test_cuda_verbs
[ "$DEV" = cuda ] && verdict "test_cuda_verbs ran on the GPU (nothing skipped)" "
import re, sys
m = re.search(r'(\d+) passed, (\d+) failed, (\d+) skipped', open('$LOG/verbs.log').read())
print(m.group(0) if m else 'no result line'); sys.exit(0 if m and m.group(3) == '0' and int(m.group(1)) > 0 else 1)"

# 2. finetune with checkpoints and resume
P=$'### Target sentence:\n{ref}\n'   # README's prompt for stories260K (the preset's instruction exceeds 512 positions)
DATA=(--data shared/data/viggo/valid.csv --preset viggo --prompt-template "$P" --seq-len 256 --val-count 16)
FT=("$H" finetune --model "$M" "${DATA[@]}" --batch 8 --steps 20 --lr 1e-3 --warmup 2 --eval-batches 4)
run "finetune --device cuda, 20 steps, checkpoints every 10" ft.log 90 \
  "${FT[@]}" --device $DEV --ckpt-dir $W/ck --ckpt-every 10 --metrics $W/full.jsonl --out $W/model
run "finetune --device cuda --resume step 10" ft_resume.log 90 \
  "${FT[@]}" --device $DEV --ckpt-dir $W/ck2 --resume $W/ck/step_00000010.safetensors --metrics $W/resumed.jsonl
run "finetune --device cpu --resume the GPU's step 10" ft_cpu_resume.log 120 \
  "${FT[@]}" --device cpu --ckpt-dir $W/ck3 --resume $W/ck/step_00000010.safetensors --metrics $W/cpu_resumed.jsonl
LOSSES='
import json, sys
def losses(p):
    d = {}
    for l in open(p):
        j = json.loads(l)
        if j.get("type") == "train": d[j["step"]] = j["loss"]
    return d
'
verdict "GPU resume: steps 11..20 vs uninterrupted (<= 1e-2)" "$LOSSES
a, b = losses('$W/full.jsonl'), losses('$W/resumed.jsonl')
e = max(abs(b[s] - a[s]) / abs(a[s]) for s in range(11, 21))
print('max rel %.3g; step 20 %.6f vs %.6f' % (e, b[20], a[20])); sys.exit(0 if e <= 1e-2 else 1)"
verdict "CPU resume of the GPU checkpoint: step 11 (<= 2e-2)" "$LOSSES
a, c = losses('$W/full.jsonl'), losses('$W/cpu_resumed.jsonl')
e = abs(c[11] - a[11]) / abs(a[11]); e20 = abs(c[20] - a[20]) / abs(a[20])
print('step 11 rel %.3g (%.6f vs %.6f), step 20 rel %.3g' % (e, c[11], a[11], e20)); sys.exit(0 if e <= 2e-2 else 1)"

# 3. debug-step vs the goldens' AdamW losses
run "debug-step --device cuda stories260K" ds.log 60 $H debug-step --device $DEV --model $M \
  --batch shared/goldens/stories260K_train.safetensors --out $W/ds.safetensors --adamw-steps 10
verdict "debug-step --device cuda: 10 AdamW losses vs golden (<= 3e-2)" "
import json, sys
got = [json.loads(l)['loss'] for l in open('$LOG/ds.log') if l.startswith('{')]
want = json.load(open('shared/goldens/stories260K_train.json'))['losses_adamw']
e = max(abs(g - w) / w for g, w in zip(got, want)) if len(got) == 10 else float('inf')
print('%d losses, max rel %.3g; last %.5f vs %.5f' % (len(got), e, got[-1] if got else 0, want[-1])); sys.exit(0 if e <= 3e-2 else 1)"

# 4. eval --task loss on the GPU and the CPU
EV=("$H" eval --model "$W/model" "${DATA[@]}" --task loss)
run "eval --device cuda --task loss" eval_gpu.log 60 "${EV[@]}" --device $DEV
run "eval --device cpu --task loss" eval_cpu.log 60 "${EV[@]}" --device cpu
verdict "eval loss GPU vs CPU (<= 1e-2)" "
import re, sys
g, c = [float(re.search(r'^loss ([0-9.]+)', open('$LOG/' + f).read(), re.M).group(1)) for f in ('eval_gpu.log', 'eval_cpu.log')]
e = abs(g - c) / c; print('GPU %.6f CPU %.6f rel %.3g' % (g, c, e)); sys.exit(0 if e <= 1e-2 else 1)"

# 5. the demo trains on the GPU, evaluates on the CPU
run "demo --device cuda --steps 200" demo.log 90 $H demo --device $DEV --steps 200 --eval-every 100 --log-every 50 \
  --ckpt-dir $W/demo_ck
grep -h "final accuracy" "$LOG/demo.log"

echo; echo "==== summary"; printf '%s\n' "${summary[@]}"
echo; echo "==== test_cuda_verbs"; grep -E "^  |: |FAIL|passed" "$LOG/verbs.log" | grep -v "^halo cuda\|GiB" | head -40
rm -rf "$W"
exit $fails
