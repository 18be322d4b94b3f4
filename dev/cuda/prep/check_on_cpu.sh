#!/usr/bin/env bash
# Checks the arithmetic of a GPU prep patch on this machine's CPU (no GPU): applies the patch in a scratch worktree,
# takes bfly8 and the patch's mix from the patched src/cuda/halo_kernels.cu into extract.h, compiles them as host
# code (check_host.h) with the patch's check against build/cpu/libhalo.a (make BUILD=build/cpu CUDA=0 first), and
# compares with the CPU's halo_hadamard_rows bit for bit. It cannot check the kernels around the code (launch,
# shuffles, shared memory): the device's test_cuda_halo does.
#   bash dev/cuda/prep/check_on_cpu.sh 8    # 8_rot_k76.patch: the order-76 sign table and hk_mix
#   bash dev/cuda/prep/check_on_cpu.sh 10   # 10_rows_mix8.patch: rows_mix at eight widths
set -euo pipefail
cd "$(dirname "$0")/../../.."
case "${1:-}" in
  8) PATCH=8_rot_k76.patch CHECK=check_k76_mix.cpp
     SPANS="__host__ __device__ constexpr unsigned hk_neg_mask|// sg: had_upload;// Outputs i in [I0, min(I1, K))|// Occupancy: 4 blocks" ;;
  10) PATCH=10_rows_mix8.patch CHECK=check_rows_mix.cpp
      SPANS="// k_rows's order-K mix for one column|template <int TIN, int MODE> __global__ void k_rows(rows_args a) {" ;;
  *) echo "usage: check_on_cpu.sh 8|10" >&2; exit 2 ;;
esac
T=$(mktemp -d)
trap 'git worktree remove --force "$T/wt" >/dev/null 2>&1 || true; rm -rf "$T"' EXIT
git worktree add -q "$T/wt" HEAD
(cd "$T/wt" && git apply "$OLDPWD/dev/cuda/prep/$PATCH")
python3 - "$T" "$SPANS" <<'PY'
import sys
t, spans = sys.argv[1], sys.argv[2]
s = open(t + '/wt/src/cuda/halo_kernels.cu').read()
out = []
for span in ['// Butterfly stages h = 1, 2, 4 on 8 consecutive values|// Butterfly stage h = 8 << st'] + spans.split(';'):
    a, b = span.split('|')
    out.append(s[s.index(a):s.index(b, s.index(a))])
open(t + '/extract.h', 'w').write('\n'.join(out))
PY
g++ -std=c++17 -O2 -I"$T" -Idev/cuda/prep -Isrc "dev/cuda/prep/$CHECK" build/cpu/libhalo.a -lm -fopenmp -lopenblas \
    -lpcre2-8 -lcjson -o "$T/check"
"$T/check"
