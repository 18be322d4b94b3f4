#!/usr/bin/env bash
# Run ON the GPU machine (Ubuntu, no -dev packages, no cJSON): links the carried headers and libcjson with the
# machine's own libpcre2-8, libopenblas and libnccl runtimes, builds halo, tests and benchmarks (CUDA included), and
# (TARGETS="..." builds only those make targets) exports HALO_SHARED and LD_LIBRARY_PATH for what follows when sourced: `source scripts/device_build.sh`.
set -eo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
D="$PWD/.carry-deps"
[ -d "$D" ] || { echo "device_build: .carry-deps missing (run scripts/device_pack.sh here and carry it)"; exit 1; }
find_lib() { ldconfig -p | awk -v n="$1" '$1 == n {print $NF; exit}'; }
ln -sf "$D/lib/libcjson.so.1" "$D/lib/libcjson.so"
for l in libpcre2-8.so.0:libpcre2-8.so libopenblas.so.0:libopenblas.so; do
  src=$(find_lib "${l%%:*}"); [ -n "$src" ] || { echo "device_build: ${l%%:*} not found"; exit 1; }
  ln -sf "$src" "$D/lib/${l##*:}"
done
# NCCL (src/cuda/comm_nccl.cu): the machine's libnccl.so.2 behind a link name for -lnccl; nccl.h from the toolkit
# or, when it has none, the copy device_pack.sh carried
source scripts/nccl_path.sh
NCCL_DIR=$(nccl_lib_dir)
if [ -n "$NCCL_DIR" ]; then ln -sf "$NCCL_DIR/libnccl.so.2" "$D/lib/libnccl.so"
else echo "device_build: libnccl.so.2 not found: building without the NCCL backend"; rm -f "$D/lib/libnccl.so"; fi
NVINC="$(dirname "$(command -v nvcc)")/../include"
[ -f "$NVINC/nccl.h" ] || NVEXTRA="-I$D/include"
export LD_LIBRARY_PATH="$D/lib${NCCL_DIR:+:$NCCL_DIR}:${LD_LIBRARY_PATH:-}"
export HALO_SHARED="$PWD/.carry-shared"
make -j16 OPT="-O3 -march=native" EXTRA_CFLAGS="-I$D/include" EXTRA_LDFLAGS="-L$D/lib" EXTRA_NVFLAGS="${NVEXTRA:-}" \
  ${TARGETS:-all tests benches} 2>&1 | grep -E "error|warning" || true
test -x build/halo && echo "device_build: built $(nvcc --version | tail -1)"
