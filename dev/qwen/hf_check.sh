#!/usr/bin/env bash
# One step of scripts/gpu_session_check.sh (the GPU machine has torch and transformers; this machine has neither):
# halo's Qwen2 (q, k, v biases) and Qwen3 (q/k norms) against transformers' on random tiny models: logits, loss, gradients.
# usage: dev/qwen/hf_check.sh HALO_BIN WORK_DIR
set -eu
mkdir -p "$2"
python3 "$(dirname "$0")/hf_check.py" "$1" "$2"
