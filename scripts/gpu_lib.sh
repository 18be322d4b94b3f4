# Sourced by the device scripts (gpu_check.sh, gpu_halo_check.sh, gpu_halo_train_check.sh, gpu_verbs_check.sh,
# gpu_session_check.sh): one step runner for all of them.
#   gpu_step NAME LOG LIMIT COMMAND...  runs COMMAND under `timeout LIMIT` with its output in $LOG/LOG, appends
#   "NAME [PASS|FAIL] rc=N  T ms" to the array `summary` and returns COMMAND's status.
# Settings: GPU_STEP_WIDTH (name column, default 46), GPU_STEP_VERDICT=1 (add PASS/FAIL).
# Before each step, the machine's state goes to $LOG/steps_env.txt: load average, the busiest processes, the GPU's
# clock, temperature, power and memory in use (PyTorch's 1B step took 190 ms inside gpu_session_check.sh and 144 ms
# on other machines: SDPA's attention kernel, found in dev/cuda/NOTES.md run 21).
summary=()
gpu_state() {
  { echo "== $(date '+%H:%M:%S') $1: load $(cut -d' ' -f1-3 /proc/loadavg)"
    ps -eo pid,pcpu,etimes,comm --sort=-pcpu 2>/dev/null | sed -n 2,5p
    nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw,memory.used,clocks_throttle_reasons.active \
      --format=csv,noheader 2>/dev/null; } >> "$LOG/steps_env.txt"
}
gpu_step() {
  local name=$1 log=$2 lim=$3; shift 3
  gpu_state "$name"
  local t0; t0=$(date +%s%N)
  timeout "$lim" "$@" > "$LOG/$log" 2>&1; local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 )) verdict=""
  [ "${GPU_STEP_VERDICT:-0}" = 1 ] && verdict="$([ $rc = 0 ] && echo PASS || echo FAIL) "
  summary+=("$(printf "%-${GPU_STEP_WIDTH:-46}s %src=%-3s %7d ms" "$name" "$verdict" "$rc" "$ms")")
  return $rc
}
# device_sync.sh ships the binaries as build-dev.tar.xz (the device tool carries at most 64 MiB; each binary holds
# ~9 MB of CUDA fat binary): unpack once in the staged folder.
if [ ! -d build-dev ] && [ -f build-dev.tar.xz ]; then tar xJf build-dev.tar.xz; fi
# halo and the test binaries that can train on several GPUs (test_cuda_verbs, _lora, _halo_train, _comm, _dist) need
# libnccl.so.2 to load at all when the build found NCCL: this machine's folder of it (nccl_path.sh: the loader's cache,
# the toolkit, PyTorch's nvidia-nccl wheel) goes at the end of the library path, once
if [ -z "${HALO_NCCL_ON_PATH:-}" ]; then
  source scripts/nccl_path.sh
  _nccl_dir=$(nccl_lib_dir)
  if [ -n "$_nccl_dir" ]; then export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$_nccl_dir; fi
  export HALO_NCCL_ON_PATH=1
fi
