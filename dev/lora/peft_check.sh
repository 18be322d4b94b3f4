#!/usr/bin/env bash
# One step of scripts/gpu_session_check.sh (the GPU machine has torch and transformers; this machine has neither):
# a short LoRA fine-tune of stories260K on the CPU with halo, its adapter and its --merge output, then
# dev/lora/check_peft.py loads the adapter on the base model in transformers (with peft when installed) and compares
# the logits with the merged model's. usage: dev/lora/peft_check.sh HALO_BIN SHARED_DIR WORK_DIR
set -eu
H=$1 S=$2 W=$3
mkdir -p "$W"
common=(finetune --model "$S/models/stories260K" --data "$S/data/text/tinystories_sample.txt" --seq-len 64 --batch 4
        --steps 20 --lr 1e-2 --warmup 2 --val-count 4 --lora-rank 8 --lora-alpha 16 --device cpu)
"$H" "${common[@]}" --out "$W/adapter" > "$W/adapter.log" 2>&1
"$H" "${common[@]}" --merge --out "$W/merged" > "$W/merged.log" 2>&1
python3 "$(dirname "$0")/check_peft.py" "$S/models/stories260K" "$W/adapter" "$W/merged"
