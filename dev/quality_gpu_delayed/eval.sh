#!/usr/bin/env bash
# The GPU runs of the delayed-scaling option (dev/cuda/probe/w_codes_ab.sh: stories260K, one epoch of ViGGO,
# --device cuda), each final model scored again on the CPU on all 714 ViGGO valid examples: with the fp32 forward
# (what training did) and with its own precision's spec forward (current scaling), the same data flags as the
# training's evaluation. Models: DIR/model-<precision>-s<seed> (models.tar.xz unpacked there; the tokenizer files come
# from ../shared's stories260K). Two evaluations at a time, one thread each; a model scored before is not scored again.
# usage: dev/quality_gpu_delayed/eval.sh DIR > table.md
set -uo pipefail
cd "$(dirname "$0")/../.."
DIR="$1"; S="${HALO_SHARED:-../shared}"
flags_of() {   # the spec forward of a run name (bf16 / int8-L0 / fp8-L0-dly ...)
  local p=${1%-dly}
  case "$p" in
    bf16) echo "--precision bf16" ;;
    int8-L[012]|fp8-L[012]) echo "--precision ${p%-L*} --halo-level ${p#*-L}" ;;
  esac
}
score() {   # model dir, flags, log
  build/cpu/halo eval --model "$1" --data "$S/data/viggo/valid.csv" --all --task loss --preset viggo \
    --prompt-template $'### Target sentence:\n{ref}\n' --seq-len 384 --batch 8 --threads 1 $2 > "$3" 2>&1
}
n=0
for d in "$DIR"/model-*; do
  [ -d "$d" ] || continue
  for f in "$S"/models/stories260K/tokenizer*; do [ -e "$d/$(basename "$f")" ] || cp "$f" "$d/"; done
  name=$(basename "$d" | sed 's/^model-//; s/-s[0-9]*$//')
  for k in fp32 own; do
    grep -q '^loss ' "$d.eval-$k.log" 2>/dev/null && continue
    if [ $k = fp32 ]; then fl="--precision fp32"; else fl=$(flags_of "$name"); fi
    score "$d" "$fl" "$d.eval-$k.log" &
    n=$((n + 1)); [ $((n % 2)) = 0 ] && wait
  done
done
wait
echo "| trained as | seed | eval fp32 forward | eval its spec forward |"
echo "|---|---|---|---|"
for d in "$DIR"/model-*; do
  [ -d "$d" ] || continue
  b=$(basename "$d" | sed 's/^model-//')
  v() { grep -o '^loss [0-9.]*' "$d.eval-$1.log" 2>/dev/null | cut -d' ' -f2; }
  echo "| ${b%-s*} | ${b##*-s} | $(v fp32) | $(v own) |"
done
