#!/usr/bin/env bash
# Training quality of HALO vs fp32 on the CPU (issue: HALO on the CPU): fine-tunes stories260K on ViGGO and on
# TinyStories text with fp32, INT8 level 2, FP8 level 0 and FP8 level 1 (same seed, data order and step budget),
# all configurations in parallel, then prints the final validation losses and the gap to fp32.
# usage: bench/quality_cpu.sh [OUT_DIR] [THREADS_PER_RUN]   (HALO_SHARED points at ../shared; STEPS_* override)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/quality}"; TH="${2:-2}"
S="${HALO_SHARED:-../shared}"
M="$S/models/stories260K"
STEPS_VIGGO="${STEPS_VIGGO:-150}"; STEPS_TEXT="${STEPS_TEXT:-150}"
mkdir -p "$OUT"
PRECS=("fp32:--precision fp32" "int8-L2:--precision int8 --halo-level 2" "fp8-L0:--precision fp8 --halo-level 0" "fp8-L1:--precision fp8 --halo-level 1")
pids=()
for p in "${PRECS[@]}"; do
  name=${p%%:*}; flags=${p#*:}
  build/halo finetune --model "$M" --data "$S/data/viggo/train.csv" --val "$S/data/viggo/valid.csv" --preset viggo \
    --prompt-template $'### Target sentence:\n{ref}\n' --seq-len 384 --batch 8 --steps "$STEPS_VIGGO" --lr 1e-3 \
    --warmup 10 --eval-every 50 --eval-batches 25 --seed 1 --threads "$TH" $flags --metrics "$OUT/viggo-$name.jsonl" \
    --out "$OUT/viggo-$name-model" > "$OUT/viggo-$name.log" 2>&1 & pids+=($!)
  build/halo finetune --model "$M" --data "$S/data/text/tinystories_sample.txt" --seq-len 256 --batch 8 \
    --steps "$STEPS_TEXT" --lr 5e-4 --warmup 10 --eval-every 50 --seed 1 --threads "$TH" $flags \
    --metrics "$OUT/text-$name.jsonl" > "$OUT/text-$name.log" 2>&1 & pids+=($!)
done
fail=0
for pid in "${pids[@]}"; do wait "$pid" || fail=1; done
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
print("| data | precision | val loss before | val loss after | gap to fp32 | tokens/s (last step) |")
print("|---|---|---|---|---|---|")
for data in ("viggo", "text"):
    ref = None
    for name in ("fp32", "int8-L2", "fp8-L0", "fp8-L1"):
        path = f"{out}/{data}-{name}.jsonl"
        if not os.path.exists(path): print(f"| {data} | {name} | missing | | | |"); continue
        rows = [json.loads(l) for l in open(path)]
        ev = [r for r in rows if r.get("type") == "eval"]
        tr = [r for r in rows if r.get("type") == "train"]
        if not ev: print(f"| {data} | {name} | no eval | | | |"); continue
        before, after = ev[0]["val_loss"], ev[-1]["val_loss"]
        if name == "fp32": ref = after
        gap = f"{100*(after-ref)/ref:+.2f}%" if ref else ""
        print(f"| {data} | {name} | {before:.4f} | {after:.4f} | {gap} | {tr[-1]['tokens_per_s']:.0f} |")
PY
exit $fail
