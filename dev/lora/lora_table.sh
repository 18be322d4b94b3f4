#!/usr/bin/env bash
# The README "LoRA" tables in one device call: halo's GPU LoRA steps (Llama-3.2-1B, batch 4 x 2048, r16 on all seven
# linears, alpha 8, dropout 0.05 unless said; and Llama-3-8B shapes x 4 layers) with PyTorch + PEFT compiled beside
# them, then compute-sanitizer memcheck over the LoRA kernels' op tests. Run from the device copy's root (after
# scripts/device_sync.sh: cd .dev-cuda && bash dev/lora/lora_table.sh $OUT); one log per row in OUT, steps in
# OUT/table.txt.
set -uo pipefail
OUT=${1:?usage: lora_table.sh OUT_DIR}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} PYTHONUNBUFFERED=1 PATH=/usr/local/cuda/bin:$PATH
if [ ! -d build-dev ] && [ -f build-dev.tar.xz ]; then tar xJf build-dev.tar.xz; fi   # as gpu_lib.sh
B=build-dev/bench/bench_cuda_train
A1="--batch 4 --seq 2048 --steps 5 --model llama3.2-1b"
A8="--batch 4 --seq 2048 --steps 5 --model llama3-8b --layers 4"
row() { local name=$1; shift; timeout 120 "$@" > "$OUT/$name.log" 2>&1; echo "$name: $(grep -h '^step' "$OUT/$name.log" | head -1)" | tee -a "$OUT/table.txt"; }
row b1_full_bf16 $B $A1 --no-breakdown
row b1_lora $B $A1 --lora 16
row b1_lora_d0 $B $A1 --lora 16 --lora-dropout 0 --no-breakdown
row b1_lora_i0 $B $A1 --lora 16 --precision int8 --halo-level 0
row b1_lora_f0 $B $A1 --lora 16 --precision fp8 --halo-level 0 --no-breakdown
row b1_lora_i2 $B $A1 --lora 16 --precision int8 --halo-level 2 --halo-hadamard-block 256 --halo-token-block 64 --no-breakdown
row b1_lora_i0_ep0 env HALO_LORA_EPILOGUE=0 $B $A1 --lora 16 --precision int8 --halo-level 0 --no-breakdown
row b1_lora_bf0 env HALO_LORA_B_FUSED=0 $B $A1 --lora 16 --no-breakdown
row b1_lora_pp env HALO_LORA_FUSED=0 $B $A1 --lora 16 --no-breakdown
row b8_full_bf16 $B $A8 --no-breakdown
row b8_lora $B $A8 --lora 16 --no-breakdown
row b8_lora_i0 $B $A8 --lora 16 --precision int8 --halo-level 0 --no-breakdown
timeout 60 build-dev/bench/bench_cuda_lora --reps 20 > "$OUT/bench_lora.log" 2>&1
for m in "llama3.2-1b" "llama3-8b --layers 4"; do
  n=peft_$(echo "$m" | cut -d' ' -f1)
  timeout 200 python3 dev/lora/torch_lora_baseline.py --model $m --batch 4 --seq 2048 --rank 16 --compile > "$OUT/$n.log" 2>&1
  echo "$n: $(grep -h step_ms "$OUT/$n.log" | tail -1)" | tee -a "$OUT/table.txt"
done
timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 build-dev/tests/test_cuda_ops > "$OUT/ops_memcheck.log" 2>&1
echo "memcheck test_cuda_ops: rc=$? $(grep -h 'passed, \|ERROR SUMMARY' "$OUT/ops_memcheck.log" | tr '\n' ' ')" | tee -a "$OUT/table.txt"
