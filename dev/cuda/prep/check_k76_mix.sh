#!/usr/bin/env bash
# Checks patch 8's order-76 mix on this machine's CPU (no GPU): applies the patch in a scratch worktree, extracts the
# sign tables and hk_mix from the patched src/cuda/halo_kernels.cu, compiles them as host code with
# check_k76_mix.cpp against build/cpu/libhalo.a (make BUILD=build/cpu CUDA=0 first) and compares with the CPU's
# halo_hadamard_rows bit for bit. What it cannot check: the kernel's launch, shuffles and shared memory (the device's
# test_cuda_halo does).
set -euo pipefail
cd "$(dirname "$0")/../../.."
T=$(mktemp -d)
trap 'git worktree remove --force "$T/wt" >/dev/null 2>&1 || true; rm -rf "$T"' EXIT
git worktree add -q "$T/wt" HEAD
(cd "$T/wt" && git apply "$OLDPWD/dev/cuda/prep/8_rot_k76.patch")
python3 - "$T" <<'PY'
import sys
t = sys.argv[1]
s = open(t + '/wt/src/cuda/halo_kernels.cu').read()
a = s.index('__host__ __device__ constexpr unsigned hk_neg_mask'); b = s.index('// sg: had_upload')
c = s.index('// Outputs i in [I0, min(I1, K))'); d = s.index('// Occupancy: 4 blocks')
open(t + '/hk_extract.h', 'w').write(s[a:b] + '\n' + s[c:d])
PY
g++ -std=c++17 -O2 -I"$T" -Isrc dev/cuda/prep/check_k76_mix.cpp build/cpu/libhalo.a -lm -fopenmp -lopenblas -lpcre2-8 \
    -lcjson -o "$T/check"
"$T/check"
