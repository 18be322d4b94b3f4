#!/usr/bin/env bash
# Run ON a machine with 2+ GPUs: the NCCL communicator test (tests/test_cuda_comm.c: one process per GPU), then GPU
# data parallel training (tests/test_cuda_dist.c: 2 GPUs x 1 micro-batch vs 1 GPU x 2, BF16 / HALO INT8 / bf16
# gradients / LoRA; 2 GPUs with sharded AdamW moments vs whole ones and a sharded checkpoint's round trip), with the
# GPUs, their links, the NCCL library found and NCCL's warnings in the log ($OUT/comm.log, or /tmp/comm.log). Exits
# non-zero when either test fails.
# Works in the folder device_sync.sh staged (.dev-cuda: build-dev/) and in a checkout built by device_build.sh
# (build/). NVLink multicast stays off (NCCL_NVLS_ENABLE=0: the GPU machine's rule).
set -u
cd "$(dirname "$0")/.."
source scripts/gpu_lib.sh   # unpacks build-dev.tar.xz when device_sync.sh shipped one
source scripts/nccl_path.sh
NCCL_DIR=$(nccl_lib_dir)
export NCCL_NVLS_ENABLE=0 NCCL_DEBUG=${NCCL_DEBUG:-WARN} HALO_NCCL_TIMEOUT_S=${HALO_NCCL_TIMEOUT_S:-120}
export LD_LIBRARY_PATH=$PWD/deps/lib:$PWD/.carry-deps/lib:/usr/local/cuda/lib64${NCCL_DIR:+:$NCCL_DIR}:${LD_LIBRARY_PATH:-}
BIN=build-dev/tests; [ -x "$BIN/test_cuda_comm" ] || BIN=build/tests
LOGF=${OUT:-/tmp}/comm.log
rc=0
{
  nvidia-smi -L; nvidia-smi topo -m
  echo "libnccl.so.2 folder: ${NCCL_DIR:-not found}"
  ldd "$BIN/test_cuda_comm" | grep -E "nccl|cudart|not found"
  timeout 150 "$BIN/test_cuda_comm"; r=$?; echo "test_cuda_comm exit $r"; [ $r = 0 ] || rc=1
  timeout 420 "$BIN/test_cuda_dist"; r=$?; echo "test_cuda_dist exit $r"; [ $r = 0 ] || rc=1
  exit $rc
} 2>&1 | tee "$LOGF"
exit "${PIPESTATUS[0]}"
