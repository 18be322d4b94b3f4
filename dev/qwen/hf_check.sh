#!/usr/bin/env bash
# One step of scripts/gpu_session_check.sh (the GPU machine has torch and transformers; this machine has neither):
# halo's Qwen2, Qwen3, SmolLM3 and Phi-3 against transformers' on random tiny models: logits, loss, gradients, and
# (with SHARED_DIR) halo's export of each read back by transformers.
# usage: dev/qwen/hf_check.sh HALO_BIN WORK_DIR [SHARED_DIR]   (with SHARED_DIR: halo's exports read back too)
set -eu
mkdir -p "$2"
python3 "$(dirname "$0")/hf_check.py" "$1" "$2" "${3:-}"
