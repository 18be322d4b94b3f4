#!/usr/bin/env bash
# Run ON a machine with 2+ GPUs: the NCCL communicator test (tests/test_cuda_comm.c: one process per GPU), with the
# GPUs, their links, the NCCL library found and NCCL's warnings in the log ($OUT/comm.log, or /tmp/comm.log).
# Works in the folder device_sync.sh staged (.dev-cuda: build-dev/) and in a checkout built by device_build.sh
# (build/). NVLink multicast stays off (NCCL_NVLS_ENABLE=0: the GPU machine's rule).
set -u
cd "$(dirname "$0")/.."
source scripts/gpu_lib.sh   # unpacks build-dev.tar.xz when device_sync.sh shipped one
source scripts/nccl_path.sh
NCCL_DIR=$(nccl_lib_dir)
export NCCL_NVLS_ENABLE=0 NCCL_DEBUG=${NCCL_DEBUG:-WARN} HALO_NCCL_TIMEOUT_S=${HALO_NCCL_TIMEOUT_S:-120}
export LD_LIBRARY_PATH=$PWD/deps/lib:$PWD/.carry-deps/lib:/usr/local/cuda/lib64${NCCL_DIR:+:$NCCL_DIR}:${LD_LIBRARY_PATH:-}
T=build-dev/tests/test_cuda_comm; [ -x "$T" ] || T=build/tests/test_cuda_comm
LOGF=${OUT:-/tmp}/comm.log
{
  nvidia-smi -L; nvidia-smi topo -m
  echo "libnccl.so.2 folder: ${NCCL_DIR:-not found}"
  ldd "$T" | grep -E "nccl|cudart|not found"
  timeout 400 "$T"; echo "test_cuda_comm exit $?"
} 2>&1 | tee "$LOGF"
