#!/usr/bin/env bash
# ViGGO quality across data-order seeds: fp32, INT8 level 2, FP8 levels 0 and 1 at 150 steps, seeds 1-3, one after another
# (logs and metrics in runs/seeds/). Run from the repository root.
mkdir -p runs/seeds
M=../shared/models/stories260K; S=../shared
for seed in 1 2 3; do for cfg in "fp32:--precision fp32" "int8-L2:--precision int8 --halo-level 2" "fp8-L0:--precision fp8 --halo-level 0" "fp8-L1:--precision fp8 --halo-level 1"; do
  name=${cfg%%:*}; flags=${cfg#*:}
  build/halo finetune --model $M --data $S/data/viggo/train.csv --val $S/data/viggo/valid.csv --preset viggo --prompt-template $'### Target sentence:\n{ref}\n' --seq-len 384 --batch 8 --steps 150 --lr 1e-3 --warmup 10 --eval-every 150 --eval-batches 25 --seed $seed --threads 2 $flags --metrics runs/seeds/$name-s$seed.jsonl > runs/seeds/$name-s$seed.log 2>&1
done; done
