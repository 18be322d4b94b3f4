#!/usr/bin/env bash
# Prepares a device run of the CUDA checks: builds the library, tests and benchmarks HERE for the device's CPU
# (x86-64-v3, build/dev-gpu/ or build/dev-nccl/), and copies them with the scripts, the libraries the device lacks (cJSON; PCRE2 for
# safety), headers for an on-device rebuild, and the shared data the tests read into DEST (default
# /work/main/.dev-cuda, ignored by main's .gitignore). Then call the device tool with carry [".dev-cuda"] and
#   cd .dev-cuda && bash scripts/gpu_check.sh [all|test|bench]
# or, for --device cuda in the verbs (halo binary, test_cuda_verbs, ViGGO and text samples are staged too),
#   cd .dev-cuda && bash scripts/gpu_verbs_check.sh
# WITH_NCCL=1 (for gpu_comm_check.sh, several GPUs) builds with NCCL into build/dev-nccl: those binaries need the
# device's libnccl.so.2 (218 MB, too large to carry) to load at all. By default NCCL is left out (build/dev-gpu), so
# the one-GPU checks run whether or not the device has NCCL.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-/work/main/.dev-cuda}
SHARED=${HALO_SHARED:-../shared}
if [ "${WITH_NCCL:-0}" = 1 ]; then B=build/dev-nccl; NCCL_SET=1; else B=build/dev-gpu; NCCL_SET=0; fi
make -j2 BUILD=$B NCCL=$NCCL_SET OPT="-O3 -march=x86-64-v3" tests benches >/dev/null
rm -rf "$DEST"; mkdir -p "$DEST"/{deps/lib,deps/include,shared/goldens,shared/models,shared/bench,shared/data/viggo,shared/data/text}
cp -r src include tests bench scripts Makefile "$DEST"/ 2>/dev/null || true
mkdir -p "$DEST/dev/cuda" && cp -r dev/lora dev/qwen "$DEST/dev/" && cp -r dev/cuda/probe "$DEST/dev/cuda/"   # the PEFT and transformers-parity checks, the PyTorch step profile (session-check steps)
mkdir -p "$DEST/build-dev"
mkdir -p "$DEST/build-dev/tests" "$DEST/build-dev/bench"
cp $B/tests/test_cuda_* "$DEST/build-dev/tests/"; cp $B/bench/bench_cuda_* "$DEST/build-dev/bench/"
cp $B/halo "$DEST/build-dev/"   # the CLI (gpu_verbs_check.sh, test_cuda_verbs's debug-step run)
cp -P /usr/lib/x86_64-linux-gnu/libcjson.so* "$DEST/deps/lib/"
cp -L /usr/lib/x86_64-linux-gnu/libpcre2-8.so.0 "$DEST/deps/lib/"   # the device has OpenBLAS's runtime
# link names for an on-device rebuild (-lpcre2-8, -lopenblas); the OpenBLAS one points at the device's runtime
ln -sf libpcre2-8.so.0 "$DEST/deps/lib/libpcre2-8.so"
ln -sf /usr/lib/x86_64-linux-gnu/libopenblas.so.0 "$DEST/deps/lib/libopenblas.so"
cp -r /usr/include/cjson "$DEST/deps/include/"
cp /usr/include/pcre2.h "$DEST/deps/include/" 2>/dev/null || true
cp /usr/include/x86_64-linux-gnu/openblas-openmp/*.h "$DEST/deps/include/" 2>/dev/null || true
cp -r "$SHARED"/models/stories260K "$DEST/shared/models/"
cp "$SHARED"/bench/torch_llama_baseline.py "$DEST/shared/bench/"
# DEVICE_SYNC_LEAN=1: no goldens and datasets (5.4 MB; test_cuda_halo and the benchmarks need none) when the device
# tool's 64 MiB carry limit is near (working tree + this folder)
if [ "${DEVICE_SYNC_LEAN:-0}" != 1 ]; then
  cp -r "$SHARED"/goldens/* "$DEST/shared/goldens/"
  cp "$SHARED"/data/viggo/valid.csv "$SHARED"/data/viggo/train.csv "$DEST/shared/data/viggo/"
  cp "$SHARED"/data/text/tinystories_sample.txt "$DEST/shared/data/text/"
fi
du -sh "$DEST"
# the binaries (~16 MB each, mostly the same CUDA fat binary) ship packed (gpu_lib.sh unpacks): a dictionary larger
# than all of them lets xz store that fat binary once (151 MB -> 8 MB; the default 8 MiB dictionary gave 47 MB)
(cd "$DEST" && tar cf - build-dev | xz -T1 --lzma2=preset=6,dict=192MiB > build-dev.tar.xz && rm -rf build-dev)
du -sh "$DEST"
