#!/usr/bin/env bash
# The FP8 level 0 step-0 validation loss (seed 2, one thread, bench/quality_viggo_epoch.sh's command) of the binary
# built at a commit, in a throwaway worktree: bash step0_check.sh COMMIT [OPT]
set -euo pipefail
C=$1; O=${2:--O3 -march=x86-64-v3}; S=${HALO_SHARED:-$(cd "$(dirname "$0")/../../.." && pwd)/shared}
W=$(mktemp -d); git -C "$(dirname "$0")" worktree add -q --detach "$W" "$C"
trap 'git -C "$(dirname "$0")" worktree remove --force "$W"' EXIT
make -C "$W" -j2 BUILD=build/cpu CUDA=0 OPT="$O" build/cpu/halo >/dev/null
"$W/build/cpu/halo" finetune --model $S/models/stories260K --data $S/data/viggo/train.csv --val $S/data/viggo/valid.csv \
  --preset viggo --prompt-template $'### Target sentence:\n{ref}\n' --seq-len 384 --batch 8 --epochs 1 --lr 1e-3 \
  --warmup 20 --eval-every 160 --seed 2 --threads 1 --precision fp8 --halo-level 0 2>&1 | grep -m1 "eval step 0" || true
