#!/usr/bin/env bash
# ViGGO quality at the HALO paper's budget (issue: HALO on the CPU): stories260K fine-tuned for one epoch of ViGGO's
# 5103 training examples (638 steps of 8 x 384 tokens, lr 1e-3 with 20 warm-up steps and linear decay to 0), every
# precision on the same seed and data order, validation loss over all 714 valid examples every 160 steps and at the
# end. All runs in parallel, one thread each; then the final losses and the gaps to the first precision listed (fp32
# by default) of the same seed.
# usage: [EPOCHS=n] [EXPORT=1] [EXTRA='flags'] bench/quality_viggo_epoch.sh [OUT_DIR] [SEEDS] [PRECISIONS]
#   defaults: runs/quality-epoch, "1", "fp32 int8-L2 fp8-L0 fp8-L1", one epoch (HALO_SHARED points at ../shared);
#   precisions: fp32, bf16, int8-L0/L1/L2, fp8-L0/L1/L2, each with an optional -dly suffix (--halo-delayed-scaling);
#   on the GPU machine: EXTRA='--device cuda' with bf16 first;
#   EXPORT=1 also writes each run's final model to OUT_DIR/model-<precision>-s<seed> (to evaluate it another way);
#   EXTRA is appended to every finetune command (later flags win: EXTRA='--lora --lr 1e-2' fine-tunes LoRA adapters);
#   HALO_BIN: the halo binary (default build/halo; the GPU machine's copy is build-dev/halo)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/quality-epoch}"; SEEDS="${2:-1}"; PRECS="${3:-fp32 int8-L2 fp8-L0 fp8-L1}"; EPOCHS="${EPOCHS:-1}"; EXPORT="${EXPORT:-0}"; EXTRA="${EXTRA:-}"
S="${HALO_SHARED:-../shared}"
mkdir -p "$OUT"
flags_of() {
  local p=${1%-dly} d=
  [ "$p" != "$1" ] && d=" --halo-delayed-scaling"
  case "$p" in
    fp32|bf16) echo "--precision $p$d" ;;
    int8-L[012]|fp8-L[012]) echo "--precision ${p%-L*} --halo-level ${p#*-L}$d" ;;
    *) echo "unknown precision $1" >&2; exit 2 ;;
  esac
}
for p in $PRECS; do flags_of "$p" > /dev/null || exit 2; done
pids=()
for seed in $SEEDS; do
  for p in $PRECS; do
    out_flag=(); [ "$EXPORT" = 1 ] && out_flag=(--out "$OUT/model-$p-s$seed")
    "${HALO_BIN:-build/halo}" finetune --model "$S/models/stories260K" --data "$S/data/viggo/train.csv" --val "$S/data/viggo/valid.csv" \
      --preset viggo --prompt-template $'### Target sentence:\n{ref}\n' --seq-len 384 --batch 8 --epochs "$EPOCHS" --lr 1e-3 \
      --warmup 20 --eval-every 160 --seed "$seed" --threads 1 $(flags_of "$p") $EXTRA "${out_flag[@]}" --metrics "$OUT/viggo-$p-s$seed.jsonl" \
      > "$OUT/viggo-$p-s$seed.log" 2>&1 & pids+=($!)
  done
done
fail=0
for pid in "${pids[@]}"; do wait "$pid" || fail=1; done
python3 - "$OUT" "$SEEDS" "$PRECS" <<'PY'
import json, sys, os
out, seeds, precs = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
print(f"| seed | precision | val loss at the end | gap to {precs[0]} |")
print("|---|---|---|---|")
for s in seeds:
    ref = None
    for p in precs:
        path = f"{out}/viggo-{p}-s{s}.jsonl"
        ev = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
        ev = [r for r in ev if r.get("type") == "eval"]
        if not ev: print(f"| {s} | {p} | missing | |"); continue
        v = ev[-1]["val_loss"]
        if p == precs[0]: ref = v
        print(f"| {s} | {p} | {v:.4f} | {'' if p == precs[0] or ref is None else f'{100 * (v - ref) / ref:+.2f}%'} |")
PY
exit $fail
