#!/usr/bin/env bash
# On the device, after stage_8_9_10.sh (carry [".dev-cuda"]): `bash .dev-cuda/measure_8_9_10.sh`. Logs in $OUT.
# Order: test_cuda_halo (bit-for-bit rotations at 896 / 4864 with the patches), INT8 L2 steps unpatched vs patched
# at Qwen2.5-0.5B and Llama-2-7B shapes, the A/B switches of patches 8 and 9, BF16 for the ratio, test_cuda_halo_train.
cd "$(dirname "$0")"
export HALO_SHARED=$PWD/shared LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64
LOG=${OUT:-/tmp/measure_8_9_10}; mkdir -p "$LOG"
source scripts/gpu_lib.sh   # unpacks build-dev; gpu_step NAME LOG LIMIT COMMAND... logs into $LOG
[ -x base/bench_cuda_train_base ] || { xz -dk base/bench_cuda_train_base.xz && chmod +x base/bench_cuda_train_base; }
nvidia-smi --query-gpu=name --format=csv,noheader
N=build-dev/bench/bench_cuda_train B=base/bench_cuda_train_base
Q="--batch 4 --seq 2048 --steps 5 --halo-breakdown --precision int8 --halo-level 2"
t() { local f=$1; shift; gpu_step "$f" "$f.log" 60 "$@"; echo "${summary[-1]} $(grep -oE '"step_ms": [0-9.]+' "$LOG/$f.log")"; }
t halo build-dev/tests/test_cuda_halo
grep -E "passed,|FAIL" "$LOG/halo.log" | head; grep -E " (896|4864)\b" "$LOG/halo.log" | head -12
t qi2_base $B --model qwen2.5-0.5b $Q
t qi2_new $N --model qwen2.5-0.5b $Q
t l7i2_base $B --model llama2-7b --layers 4 $Q
t l7i2_new $N --model llama2-7b --layers 4 $Q
HALO_CUDA_ROT_K76=0 t qi2_k0 $N --model qwen2.5-0.5b $Q
HALO_CUDA_ROT_ONCE_ROWS=0 t qi2_r0 $N --model qwen2.5-0.5b $Q
t qbf16 $N --model qwen2.5-0.5b --batch 4 --seq 2048 --steps 5
t l7bf16 $N --model llama2-7b --layers 4 --batch 4 --seq 2048 --steps 5
t halo_train build-dev/tests/test_cuda_halo_train
grep -E "passed,|FAIL" "$LOG/halo_train.log" | head
