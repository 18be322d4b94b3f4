#!/usr/bin/env bash
# Checks patch 10's rows_mix on this machine's CPU (no GPU): applies the patch in a scratch worktree, extracts rows_mix
# from the patched src/cuda/halo_kernels.cu, compiles it as host code with check_rows_mix.cpp against
# build/cpu/libhalo.a (make BUILD=build/cpu CUDA=0 first) and compares with the CPU's halo_hadamard_rows bit for bit.
# What it cannot check: the kernel around it (launch, shared memory; the device's test_cuda_halo does).
set -euo pipefail
cd "$(dirname "$0")/../../.."
T=$(mktemp -d)
trap 'git worktree remove --force "$T/wt" >/dev/null 2>&1 || true; rm -rf "$T"' EXIT
git worktree add -q "$T/wt" HEAD
(cd "$T/wt" && git apply "$OLDPWD/dev/cuda/prep/10_rows_mix8.patch")
python3 - "$T" <<'PY'
import sys
t = sys.argv[1]
s = open(t + '/wt/src/cuda/halo_kernels.cu').read()
a = s.index("// k_rows's order-K mix for one column")
b = s.index('template <int TIN, int MODE> __global__ void k_rows(rows_args a) {')
open(t + '/rows_mix.h', 'w').write(s[a:b])
PY
g++ -std=c++17 -O2 -I"$T" -Isrc dev/cuda/prep/check_rows_mix.cpp build/cpu/libhalo.a -lm -fopenmp -lopenblas -lpcre2-8 \
    -lcjson -o "$T/check"
"$T/check"
