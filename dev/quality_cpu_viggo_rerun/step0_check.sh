#!/usr/bin/env bash
# The FP8 level 0 step-0 validation loss (seed 2, one thread) of the binary built at a commit, in a throwaway
# worktree, through bench/quality_viggo_epoch.sh's own command cut to one step: bash step0_check.sh COMMIT [OPT]
set -euo pipefail
C=$1; O=${2:--O3 -march=x86-64-v3}; R=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d); git -C "$R" worktree add -q --detach "$W/src" "$C"
trap 'git -C "$R" worktree remove --force "$W/src"; rm -rf "$W"' EXIT
make -C "$W/src" -j2 BUILD=build/cpu CUDA=0 OPT="$O" build/cpu/halo >/dev/null
HALO_BIN="$W/src/build/cpu/halo" EXTRA='--steps 1' bash "$R/bench/quality_viggo_epoch.sh" "$W/out" 2 fp8-L0 >/dev/null
grep -m1 "eval step 0" "$W/out/viggo-fp8-L0-s2.log"
