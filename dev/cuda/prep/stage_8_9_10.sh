#!/usr/bin/env bash
# Stages the one device call that measures patches 8, 9 and 10 against the unpatched kernels, in one go:
# builds bench_cuda_train from the current tree (the baseline), applies the three patches, runs device_sync.sh
# (patched binaries into .dev-cuda), adds the baseline binary as .dev-cuda/base/bench_cuda_train_base.xz, copies
# the on-device script beside it, and takes the patches back out of the working tree. Then call the device tool with
# carry [".dev-cuda"] and the command `bash .dev-cuda/measure_8_9_10.sh` (~3 minutes after the start; most
# important results first, so a run cut short still says whether the patched rotations are bit-exact).
set -euo pipefail
cd "$(dirname "$0")/../../.."
P=dev/cuda/prep
git diff --quiet -- src scripts tests || { echo "stage_8_9_10.sh: src/, scripts/ or tests/ has uncommitted changes" >&2; exit 1; }
make -j2 BUILD=build/dev-gpu NCCL=0 OPT="-O3 -march=x86-64-v3" build/dev-gpu/bench/bench_cuda_train >/dev/null
base=$(mktemp -d); cp build/dev-gpu/bench/bench_cuda_train "$base/bench_cuda_train_base"
git apply $P/8_rot_k76.patch $P/9_rot_once_rows.patch $P/10_rows_mix8.patch
trap 'git apply -R $P/10_rows_mix8.patch $P/9_rot_once_rows.patch $P/8_rot_k76.patch' EXIT
bash scripts/device_sync.sh
mkdir -p .dev-cuda/base && xz -T2 -6 -c "$base/bench_cuda_train_base" > .dev-cuda/base/bench_cuda_train_base.xz
cp $P/measure_8_9_10.sh .dev-cuda/
rm -rf "$base"; du -sh .dev-cuda
