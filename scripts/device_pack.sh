#!/usr/bin/env bash
# Run HERE (the development machine) before a device call: copies what the GPU machine lacks into ignored folders
# that the call carries: .carry-deps (cJSON, PCRE2, CBLAS and NCCL headers, libcjson) and .carry-shared (the parts of
# ../shared that device runs read). Then call the device with carry [".carry-deps", ".carry-shared"] and a command
# starting with `bash scripts/device_build.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${HALO_SHARED:-../shared}"
rm -rf .carry-deps && mkdir -p .carry-deps/include/cjson .carry-deps/lib
cp /usr/include/cjson/cJSON.h .carry-deps/include/cjson/
cp /usr/include/pcre2.h .carry-deps/include/
cp /usr/include/x86_64-linux-gnu/openblas-openmp/{cblas.h,openblas_config.h} .carry-deps/include/
cp -L /usr/lib/x86_64-linux-gnu/libcjson.so.1 .carry-deps/lib/
cp /usr/local/cuda/include/nccl.h .carry-deps/include/   # for a toolkit without NCCL (device_build.sh)
mkdir -p .carry-shared
for p in models/stories260K goldens tokenizers/llama3 tokenizers/llama2 data/text data/viggo bench docs; do
  mkdir -p ".carry-shared/$(dirname "$p")"
  rsync -a --delete "$SHARED/$p" ".carry-shared/$(dirname "$p")/" 2>/dev/null || cp -r "$SHARED/$p" ".carry-shared/$(dirname "$p")/"
done
du -sh .carry-deps .carry-shared
