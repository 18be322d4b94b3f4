# Sourced by the device scripts (device_build.sh, gpu_comm_check.sh, gpu_lib.sh): nccl_lib_dir prints the folder of
# this machine's libnccl.so.2 (the loader's cache, the CUDA toolkit's lib64 or lib, PyTorch's wheel nvidia-nccl-cu13
# as python3 finds it, or that wheel in the usual site-packages folders of another python), nothing when there is none.
# The GPU machine's image has the wheel; whether its toolkit has NCCL too is unchecked.
nccl_lib_dir() {
  local f
  for f in "$(ldconfig -p 2>/dev/null | awk '$1 == "libnccl.so.2" {print $NF; exit}')" \
      /usr/local/cuda/lib64/libnccl.so.2 /usr/local/cuda/lib/libnccl.so.2 \
      "$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0] + "/lib/libnccl.so.2")' 2>/dev/null)" \
      /usr/local/lib/python3*/dist-packages/nvidia/nccl/lib/libnccl.so.2 \
      /usr/local/lib/python3*/site-packages/nvidia/nccl/lib/libnccl.so.2 \
      /usr/lib/python3/dist-packages/nvidia/nccl/lib/libnccl.so.2 \
      /opt/conda/lib/python3*/site-packages/nvidia/nccl/lib/libnccl.so.2; do
    if [ -n "$f" ] && [ -f "$f" ]; then dirname "$f"; return 0; fi
  done
}
