#!/usr/bin/env bash
# FP8 level 0 against level 1 on stories260K + ViGGO: the quantization telemetry after 20 steps (CPU, one thread),
# to see how the Hadamard rotation changes FP8's error per product (issue: HALO on the CPU). From the repository root:
#   bash dev/quality_cpu_fp8_rotation/run.sh     (writes fp8L0.log, fp8L1.log here)
set -euo pipefail
cd "$(dirname "$0")/../.."
S="${HALO_SHARED:-../shared}"
for L in 0 1; do
  build/halo finetune --model "$S/models/stories260K" --data "$S/data/viggo/train.csv" --val "$S/data/viggo/valid.csv" \
    --preset viggo --prompt-template $'### Target sentence:\n{ref}\n' --seq-len 384 --batch 8 --steps 20 --lr 1e-3 \
    --seed 1 --threads 1 --device cpu --precision fp8 --halo-level $L --halo-telemetry 20 --eval-every 0 \
    --out "$(mktemp -d)" > "dev/quality_cpu_fp8_rotation/fp8L$L.log" 2>&1
done
