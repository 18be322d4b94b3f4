# Sourced by the device scripts (device_build.sh, gpu_comm_check.sh): nccl_lib_dir prints the folder of this
# machine's libnccl.so.2 (the loader's cache, the CUDA toolkit's lib64 or lib, or PyTorch's wheel nvidia-nccl-cu13),
# nothing when there is none. The GPU machine's image has the wheel; whether its toolkit has NCCL too is unchecked.
nccl_lib_dir() {
  local f
  for f in "$(ldconfig -p 2>/dev/null | awk '$1 == "libnccl.so.2" {print $NF; exit}')" \
      /usr/local/cuda/lib64/libnccl.so.2 /usr/local/cuda/lib/libnccl.so.2 \
      "$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0] + "/lib/libnccl.so.2")' 2>/dev/null)"; do
    if [ -n "$f" ] && [ -f "$f" ]; then dirname "$f"; return 0; fi
  done
}
