#!/usr/bin/env bash
# Run ON a GPU machine: the NCCL communicator test (tests/test_cuda_comm.c: one process per GPU; skips without NCCL or
# with one GPU), then GPU data parallel training (tests/test_cuda_dist.c: 2 ranks x 1 micro-batch vs 1 GPU x 2, BF16 /
# HALO INT8 / bf16 gradients / LoRA; 2 ranks with sharded AdamW moments vs whole ones and a sharded checkpoint's round
# trip; through the host-staged transport, the ranks sharing a GPU when there is one, and through NCCL with 2 GPUs
# and NCCL in the build), then the CLI (PLAN.md's commands: `halo finetune --ranks 2 --device cuda` on stories260K,
# plain, with sharded moments and checkpoints, and resumed from the step-10 checkpoint; and one process with
# --grad-accum 2, the same global batch), with the GPUs, their links, the NCCL library found and NCCL's warnings in the
# log ($OUT/comm.log, or /tmp/comm.log; the CLI runs' whole logs in $OUT/finetune_{one,plain,sharded,resumed}.log).
# Exits non-zero when any step fails.
# Works in the folder `bash scripts/device_sync.sh` staged (.dev-cuda: build-dev/; without WITH_NCCL=1 the binaries
# have no NCCL: test_cuda_comm skips and the rest runs through host memory, on one GPU too) and in a checkout built
# by device_build.sh (build/). NVLink multicast stays off (NCCL_NVLS_ENABLE=0: the GPU machine's rule).
# Time: one device call has 600 s; the steps' limits (GPU_COMM_BUDGET_S, default 560 s from the start, unpacking
# included) leave room for the call's own start and fetch. Each limit is `timeout -k`: a test's launcher passes a
# SIGTERM on to the ranks of the run in progress and goes on with its next run, so only the SIGKILL that follows ends
# it (its ranks die with it, PR_SET_PDEATHSIG). HALO_NCCL_TIMEOUT_S (60 here) bounds a barrier waiting for a lost
# peer, HALO_RANK_GRACE_S (15 here) how long ranks stuck after a peer's failure live: a failure costs seconds, not
# the rest of the call.
set -u
cd "$(dirname "$0")/.."
source scripts/gpu_lib.sh   # unpacks build-dev.tar.xz when device_sync.sh shipped one
source scripts/nccl_path.sh
NCCL_DIR=$(nccl_lib_dir)
export NCCL_NVLS_ENABLE=0 NCCL_DEBUG=${NCCL_DEBUG:-WARN} HALO_NCCL_TIMEOUT_S=${HALO_NCCL_TIMEOUT_S:-60}
export HALO_RANK_GRACE_S=${HALO_RANK_GRACE_S:-15}
export LD_LIBRARY_PATH=$PWD/deps/lib:$PWD/.carry-deps/lib:/usr/local/cuda/lib64${NCCL_DIR:+:$NCCL_DIR}:${LD_LIBRARY_PATH:-}
BIN=build-dev/tests; [ -x "$BIN/test_cuda_comm" ] || BIN=build/tests
H=build-dev/halo; [ -x "$H" ] || H=build/halo
S=shared; [ -d "$S/models/stories260K" ] || S=.carry-shared
LOGF=${OUT:-/tmp}/comm.log
END=${GPU_COMM_BUDGET_S:-560}
# limit for a step: at most $1 s, and no later than END s after the start (at least 5)
lim() { local l=$(( END - SECONDS )); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 5 ] && l=5; echo "$l"; }
LB=(); command -v stdbuf >/dev/null && LB=(stdbuf -oL -eL)   # lines reach the log before a kill
rc=0
{
  nvidia-smi -L; nvidia-smi topo -m
  echo "libnccl.so.2 folder: ${NCCL_DIR:-not found}"
  ldd "$BIN/test_cuda_comm" | grep -E "nccl|cudart|not found"
  t=$(lim 90); timeout -k 10 "$t" ${LB[@]+"${LB[@]}"} "$BIN/test_cuda_comm"; r=$?
  echo "test_cuda_comm exit $r (limit $t s, at $SECONDS s)"; [ $r = 0 ] || rc=1
  t=$(lim 330); timeout -k 10 "$t" ${LB[@]+"${LB[@]}"} "$BIN/test_cuda_dist"; r=$?
  echo "test_cuda_dist exit $r (limit $t s, at $SECONDS s)"; [ $r = 0 ] || rc=1
  # the CLI with 2 ranks (PLAN.md): plain, sharded moments with checkpoints at 10 and 20, resumed from 10 (its step 20
  # loss should match the uninterrupted sharded run's up to the GPU's run-to-run noise); one process with --grad-accum
  # 2 first (the same global batch: its losses should match the plain run's up to that noise)
  if [ -x "$H" ] && [ -f "$S/data/text/tinystories_sample.txt" ]; then
    CK=$(mktemp -d /tmp/halo_comm_ck.XXXXXX)
    FT=(finetune --model "$S/models/stories260K" --data "$S/data/text/tinystories_sample.txt" --seq-len 48 --batch 2
        --steps 20 --device cuda --precision int8)
    for run in one plain sharded resumed; do
      case $run in
        one) extra=(--grad-accum 2) ;;
        plain) extra=(--ranks 2) ;;
        sharded) extra=(--ranks 2 --shard-optimizer --ckpt-dir "$CK/a" --ckpt-every 10) ;;
        resumed) extra=(--ranks 2 --shard-optimizer --ckpt-dir "$CK/b" --resume "$CK/a/step_00000010.safetensors") ;;
      esac
      echo "== halo ${FT[*]} ${extra[*]-}"
      t=$(lim 45); timeout -k 10 "$t" ${LB[@]+"${LB[@]}"} "$H" "${FT[@]}" ${extra[@]+"${extra[@]}"} > "$CK/$run.log" 2>&1; r=$?
      grep -v -E "^step +[0-9]+/" "$CK/$run.log" | tail -n 40; grep -E "^step +(1|10|20)/" "$CK/$run.log"
      echo "halo finetune ($run) exit $r (limit $t s, at $SECONDS s)"; [ $r = 0 ] || rc=1
    done
    for run in one plain sharded resumed; do cp "$CK/$run.log" "${OUT:-/tmp}/finetune_$run.log" 2>/dev/null; done
    rm -rf "$CK"
  else
    echo "halo finetune with 2 ranks skipped: no $H or no $S/data/text/tinystories_sample.txt (DEVICE_SYNC_LEAN?)"; rc=1
  fi
  exit $rc
} 2>&1 | tee "$LOGF"
exit "${PIPESTATUS[0]}"
