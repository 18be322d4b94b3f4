#!/usr/bin/env bash
# Where the FP8 forward's loss penalty comes from: one model (an fp32-trained ViGGO run exported by
# `EXPORT=1 bench/quality_viggo_epoch.sh`) scored on all 714 ViGGO valid examples with FP8 E4M3 (level 0, PREC/LEVEL to
# change) on one linear kind at a time (every block), then on one block at a time (all seven linears), the rest fp32.
# usage: dev/quality_cpu_fp8_rotation/eval_split/per_part.sh MODEL_DIR LOG_DIR > table.md
set -uo pipefail
cd "$(dirname "$0")/../../.."
M="$1"; L="$2"; S="${HALO_SHARED:-../shared}"; PREC="${PREC:-fp8}"; LEVEL="${LEVEL:-0}"
mkdir -p "$L"
score() {   # name, extra flags
  build/halo eval --model "$M" --data "$S/data/viggo/valid.csv" --all --task loss --preset viggo \
    --prompt-template $'### Target sentence:\n{ref}\n' --seq-len 384 --batch 8 --threads 1 \
    --precision "$PREC" --halo-level "$LEVEL" $2 > "$L/$1.log" 2>&1
}
n=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['num_hidden_layers'])" "$M/config.json")
parts=(); flags=()
for k in q k v o gate up down; do parts+=("linear $k"); flags+=("--halo-linears $k"); done
for ((b = 0; b < n; b++)); do parts+=("block $b"); flags+=("--halo-skip-first $b --halo-skip-last $((n - 1 - b))"); done
for ((i = 0; i < ${#parts[@]}; i++)); do
  score "part$i" "${flags[i]}" &
  [ $((i % 2)) = 1 ] && wait
done
wait
echo "| $PREC level $LEVEL on | val loss |"
echo "|---|---|"
for ((i = 0; i < ${#parts[@]}; i++)); do
  echo "| ${parts[i]} | $(grep -o 'loss [0-9.]*' "$L/part$i.log" | tail -1 | cut -d' ' -f2) |"
done
