#!/usr/bin/env bash
# Why PyTorch's compiled Llama-3.2-1B step took 190 ms inside scripts/gpu_session_check.sh and 144 ms run directly
# (dev/cuda/NOTES.md run 19; answered in run 21: SDPA's attention kernel under torch.compile, which
# dev/cuda/probe/torch_step_profile.py shows). Run from the device copy's root (cd .dev-cuda && bash scripts/torch_baseline_probe.sh
# OUT): the same step (a) plain, (b) inside the session check, (c) plain again with the session check's exported
# variables, then, while a form is slow, with one of those variables left out at a time. One line per run in
# OUT/probe.txt.
set -uo pipefail
OUT=${1:?usage: torch_baseline_probe.sh OUT_DIR}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
base=$PWD/deps/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
source scripts/nccl_path.sh
nd=$(nccl_lib_dir)
T="python3 shared/bench/torch_llama_baseline.py --model llama3.2-1b --batch 4 --seq 2048 --compile"
ms() { grep -ho '"step_ms": [0-9.]*' "$1" | tail -1 | cut -d' ' -f2; }
run() {   # NAME then env assignments; prints and returns the step time (integer ms) in $last
  local name=$1; shift
  env "$@" timeout 200 $T > "$OUT/$name.log" 2>&1
  last=$(ms "$OUT/$name.log"); echo "$name: ${last:-none} ms  ($*)" | tee -a "$OUT/probe.txt"
  last=${last%.*}; last=${last:-0}
}
slow() { [ "$last" -gt 165 ]; }
run plain LD_LIBRARY_PATH=$base
ONLY="${PROBE_ONLY:-^torch compiled llama3.2-1b 4x2048}" OUT=$OUT/session bash scripts/gpu_session_check.sh > "$OUT/session.txt" 2>&1
tar xzf "$OUT/session/logs.tar.gz" -C "$OUT/session" ./torch_1b.log ./steps_env.txt 2>/dev/null
last=$(ms "$OUT/session/torch_1b.log"); echo "session check: ${last:-none} ms" | tee -a "$OUT/probe.txt"
last=${last%.*}; last=${last:-0}
vars=(HALO_SHARED=$PWD/shared PYTHONUNBUFFERED=1 BUILD=build-dev HALO_NCCL_ON_PATH=1 LD_LIBRARY_PATH=$base${nd:+:$nd})
if slow; then
  run session_vars "${vars[@]}"
  if slow; then
    for i in "${!vars[@]}"; do
      rest=("${vars[@]:0:$i}" "${vars[@]:$((i+1))}")
      run "without_${vars[$i]%%=*}" "${rest[@]}"
      slow || break
    done
  fi
fi
nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw,clocks_throttle_reasons.active --format=csv >> "$OUT/probe.txt"
