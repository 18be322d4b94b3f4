#!/bin/bash
# CPU demo runs (12th session): fp32, INT8 L2, INT8 L2 with H_m blocks of 128 on a dim-512 model, 5-digit sums.
cd "$(dirname "$0")/../.." && mkdir -p "${OUTDIR:-runs/quality-hm-block}"
COMMON="--device cpu --steps 600 --batch 64 --digits 5 --dim 512 --layers 2 --heads 8 --hidden 2048 --eval-every 100000 --eval-n 100 --threads 2 --seed 1 --log-every 50"
for p in "fp32:--precision fp32" "int8-L2:--precision int8 --halo-level 2" "int8-L2-hm128:--precision int8 --halo-level 2 --halo-hadamard-block 128"; do
  name=${p%%:*}; flags=${p#*:}
  ${HALO_BIN:-build/halo} demo $COMMON $flags --metrics ${OUTDIR:-runs/quality-hm-block}/$name.jsonl > ${OUTDIR:-runs/quality-hm-block}/$name.log 2>&1
done
echo done > ${OUTDIR:-runs/quality-hm-block}/DONE
