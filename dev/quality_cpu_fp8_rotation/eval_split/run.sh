#!/usr/bin/env bash
# Splits a quantized run's validation-loss gap into what training did and what the quantized evaluation adds:
# each final model of `EXPORT=1 bench/quality_viggo_epoch.sh OUT SEEDS` is scored on all 714 ViGGO valid examples
# with the fp32 forward and with each HALO forward (int8 L2, fp8 L0, fp8 L1), the same data flags as the training's
# evaluation. One thread per evaluation, two at a time; a model already scored one way is not scored again.
# usage: dev/quality_cpu_fp8_rotation/eval_split/run.sh OUT_DIR "SEEDS" > table.md
set -uo pipefail
cd "$(dirname "$0")/../../.."
OUT="$1"; SEEDS="$2"; S="${HALO_SHARED:-../shared}"
evals=(fp32 "--precision fp32" int8-L2 "--precision int8 --halo-level 2" fp8-L0 "--precision fp8 --halo-level 0"
       fp8-L1 "--precision fp8 --halo-level 1")
score() {   # model dir, flags, log -> val loss (the last "loss" number eval prints)
  build/halo eval --model "$1" --data "$S/data/viggo/valid.csv" --all --task loss --preset viggo \
    --prompt-template $'### Target sentence:\n{ref}\n' --seq-len 384 --batch 8 --threads 1 $2 > "$3" 2>&1
}
jobs_run=0
for seed in $SEEDS; do
  for d in "$OUT"/model-*-s"$seed"; do
    [ -d "$d" ] || continue
    for ((k = 0; k < ${#evals[@]}; k += 2)); do
      grep -q '^loss ' "$d.eval-${evals[k]}.log" 2>/dev/null && continue   # scored by an earlier call
      score "$d" "${evals[k+1]}" "$d.eval-${evals[k]}.log" &
      jobs_run=$((jobs_run + 1)); [ $((jobs_run % 2)) = 0 ] && wait
    done
  done
done
wait
echo "| trained as (seed) | eval fp32 | eval int8 L2 | eval fp8 L0 | eval fp8 L1 |"
echo "|---|---|---|---|---|"
for seed in $SEEDS; do
  for d in "$OUT"/model-*-s"$seed"; do
    [ -d "$d" ] || continue
    row="| $(basename "$d" | sed 's/^model-//') |"
    for ((k = 0; k < ${#evals[@]}; k += 2)); do
      v=$(grep -o 'loss [0-9.]*' "$d.eval-${evals[k]}.log" | tail -1 | cut -d' ' -f2)
      row="$row ${v:-?} |"
    done
    echo "$row"
  done
done
