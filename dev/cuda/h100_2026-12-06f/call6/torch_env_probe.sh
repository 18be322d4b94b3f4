#!/usr/bin/env bash
# Which CUDA libraries PyTorch loads, and its compiled Llama-3.2-1B step, in a plain environment and in the session
# check's (LD_LIBRARY_PATH with the NCCL directory that scripts/nccl_path.sh finds).
OUT=$1
probe='import torch
a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16); (a @ a).sum().item()
import torch.nn.functional as F
q = torch.randn(1, 8, 256, 64, device="cuda", dtype=torch.bfloat16); F.scaled_dot_product_attention(q, q, q).sum().item()
libs = sorted({l.split()[-1] for l in open("/proc/self/maps") if any(k in l for k in ("cublas", "cudnn", "nccl", "cudart", "nvrtc", "nvJitLink"))})
print("\n".join(libs))'
export PATH=/usr/local/cuda/bin:$PATH
base=$PWD/deps/lib:/usr/local/cuda/lib64
source scripts/nccl_path.sh
nd=$(nccl_lib_dir)
echo "nccl dir: $nd" > $OUT/env.txt
echo "== plain (LD_LIBRARY_PATH=$base)" >> $OUT/env.txt
LD_LIBRARY_PATH=$base python3 -c "$probe" >> $OUT/env.txt 2>&1
echo "== session env (LD_LIBRARY_PATH=$base:$nd)" >> $OUT/env.txt
LD_LIBRARY_PATH=$base:$nd python3 -c "$probe" >> $OUT/env.txt 2>&1
LD_LIBRARY_PATH=$base timeout 200 python3 shared/bench/torch_llama_baseline.py --model llama3.2-1b --batch 4 --seq 2048 --compile > $OUT/torch_plain.log 2>&1
LD_LIBRARY_PATH=$base:$nd timeout 200 python3 shared/bench/torch_llama_baseline.py --model llama3.2-1b --batch 4 --seq 2048 --compile > $OUT/torch_sessenv.log 2>&1
grep -h "tokens/s\|step_ms\|ms" $OUT/torch_plain.log | tail -2 >> $OUT/env.txt
grep -h "tokens/s\|step_ms\|ms" $OUT/torch_sessenv.log | tail -2 >> $OUT/env.txt
