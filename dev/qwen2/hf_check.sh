#!/usr/bin/env bash
# One step of scripts/gpu_session_check.sh (the GPU machine has torch and transformers; this machine has neither):
# halo's Qwen2 model (q, k, v biases) against transformers' on a random tiny Qwen2, logits, loss and gradients.
# usage: dev/qwen2/hf_check.sh HALO_BIN WORK_DIR
set -eu
mkdir -p "$2"
python3 "$(dirname "$0")/hf_check.py" "$1" "$2"
