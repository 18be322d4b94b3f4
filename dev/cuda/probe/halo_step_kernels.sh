#!/usr/bin/env bash
# Kernel time of halo's training step by kind, without the event marks of bench_cuda_train's breakdown (which count
# launch gaps): dev/cuda/probe/kernel_time.c (CUPTI, LD_PRELOAD) over the 5 timed steps of `bench_cuda_train
# --no-breakdown`, which brackets them with cudaProfilerStart / Stop. The device has no Nsight Systems.
# On the device, after `bash scripts/device_sync.sh` (carry .dev-cuda):
#   cd .dev-cuda && bash dev/cuda/probe/halo_step_kernels.sh OUT_DIR NAME [bench_cuda_train options, default 1B BF16]
set -u
cd "$(dirname "$0")/../../.."
OUT=${1:-/tmp/halo_kt}; NAME=${2:-bf16}; shift 2 || shift $#
mkdir -p "$OUT"
if [ ! -d build-dev ] && [ -f build-dev.tar.xz ]; then tar xJf build-dev.tar.xz; fi
TL=$(dirname "$(find / -name 'libcupti.so.13*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:$TL:${LD_LIBRARY_PATH:-}
KT=$OUT/kt.so
[ -f "$KT" ] || cc -O2 -std=gnu11 -shared -fPIC -I/usr/local/cuda/include -o "$KT" dev/cuda/probe/kernel_time.c \
  -L/usr/local/cuda/lib64 -L"$TL" -lcupti || { echo "kernel_time.c did not build"; exit 1; }
ARGS=("$@"); [ ${#ARGS[@]} -eq 0 ] && ARGS=(--model llama3.2-1b)
KT_STEPS=5 LD_PRELOAD=$KT timeout 200 build-dev/bench/bench_cuda_train --batch 4 --seq 2048 --steps 5 --no-breakdown \
  "${ARGS[@]}" > "$OUT/$NAME.log" 2>&1
echo "$NAME rc=$? $(grep -o '"step_ms": [0-9.]*' "$OUT/$NAME.log")"
sed -n '/^kernel_time:/,$p' "$OUT/$NAME.log"
