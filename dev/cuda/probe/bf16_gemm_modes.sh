#!/usr/bin/env bash
# halo's BF16 block-linear products against PyTorch's (prep README item 0b): the products of one layer alone
# (bench_cuda_gemm: cuBLASLt's first candidate, cublasGemmEx, the best of 8; torch_gemm_shapes.py: PyTorch's mm),
# then the BF16 training step with each HALO_BF16_GEMM mode (lt, ex, tune; src/cuda/matmul.cu), alternating.
# On the device, after `bash scripts/device_sync.sh` (carry .dev-cuda):  cd .dev-cuda && bash dev/cuda/probe/bf16_gemm_modes.sh OUT_DIR
set -u
cd "$(dirname "$0")/../../.."
OUT=${1:-/tmp/bf16_modes}; mkdir -p "$OUT"
if [ ! -d build-dev ] && [ -f build-dev.tar.xz ]; then tar xJf build-dev.tar.xz; fi
export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader > "$OUT/gpu.txt"
shapes() {
  timeout 200 build-dev/bench/bench_cuda_gemm --model $1 --reps 15 --cands 8 --rounds 3 > "$OUT/halo_gemm_$1.md" 2>&1
  timeout 200 python3 dev/cuda/probe/torch_gemm_shapes.py --model $1 --reps 15 --rounds 3 > "$OUT/torch_gemm_$1.md" 2>&1
}
shapes llama3.2-1b
for mode in ex tune; do
  HALO_BF16_GEMM=$mode timeout 120 build-dev/tests/test_cuda_ops > "$OUT/ops_$mode.log" 2>&1; echo "test_cuda_ops $mode rc=$?: $(grep -E 'passed, .* failed' "$OUT/ops_$mode.log" | tail -1)" >> "$OUT/steps.txt"
done
run() { local tag=$1 mode=$2; shift 2
  HALO_BF16_GEMM=$mode timeout 120 build-dev/bench/bench_cuda_train --batch 4 --seq 2048 --steps 5 --no-breakdown "$@" > "$OUT/train_$tag.log" 2>&1
  echo "$tag $(grep -h '^{' "$OUT/train_$tag.log" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(d["step_ms"], d["tokens_per_s"], d["loss"])')" >> "$OUT/steps.txt"; }
for r in 1 2; do for mode in lt ex tune; do run 1b_${mode}_$r $mode --model llama3.2-1b; done; done
for mode in lt ex tune; do run 8b4_${mode} $mode --model llama3-8b --layers 4; done
[ "${WITH_8B_SHAPES:-0}" = 1 ] && shapes llama3-8b
cat "$OUT/gpu.txt" "$OUT/steps.txt"
