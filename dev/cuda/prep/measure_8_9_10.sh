#!/usr/bin/env bash
# On the device, after stage_8_9_10.sh (carry [".dev-cuda"]): `bash .dev-cuda/measure_8_9_10.sh`. Logs in $OUT.
# Order: test_cuda_halo (bit-for-bit rotations at 896 / 4864 with the patches), INT8 L2 steps unpatched vs patched
# at Qwen2.5-0.5B and Llama-2-7B shapes, the A/B switches of patches 8 and 9, BF16 for the ratio, test_cuda_halo_train.
cd "$(dirname "$0")"
[ -d build-dev ] || tar xJf build-dev.tar.xz
[ -x base/bench_cuda_train_base ] || { xz -dk base/bench_cuda_train_base.xz && chmod +x base/bench_cuda_train_base; }
export HALO_SHARED=$PWD/shared LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64
OUT=${OUT:-/tmp/measure_8_9_10}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 60 build-dev/tests/test_cuda_halo > "$OUT/halo.log" 2>&1; echo "test_cuda_halo rc=$?"
grep -E "passed,|FAIL" "$OUT/halo.log" | head; grep -E " (896|4864)\b" "$OUT/halo.log" | head -12
N=build-dev/bench/bench_cuda_train B=base/bench_cuda_train_base
Q="--batch 4 --seq 2048 --steps 5 --halo-breakdown --precision int8 --halo-level 2"
t() { local f=$1; shift; timeout 60 "$@" > "$OUT/$f.log" 2>&1; echo "$f $(grep -oE '"step_ms": [0-9.]+' "$OUT/$f.log")"; }
t qi2_base $B --model qwen2.5-0.5b $Q
t qi2_new $N --model qwen2.5-0.5b $Q
t l7i2_base $B --model llama2-7b --layers 4 $Q
t l7i2_new $N --model llama2-7b --layers 4 $Q
HALO_CUDA_ROT_K76=0 t qi2_k0 $N --model qwen2.5-0.5b $Q
HALO_CUDA_ROT_ONCE_ROWS=0 t qi2_r0 $N --model qwen2.5-0.5b $Q
t qbf16 $N --model qwen2.5-0.5b --batch 4 --seq 2048 --steps 5
t l7bf16 $N --model llama2-7b --layers 4 --batch 4 --seq 2048 --steps 5
timeout 90 build-dev/tests/test_cuda_halo_train > "$OUT/halo_train.log" 2>&1; echo "test_cuda_halo_train rc=$?"
grep -E "passed,|FAIL" "$OUT/halo_train.log" | head
