"""Where PyTorch's compiled 1B step spends its time: the baseline's step (shared/bench/torch_llama_baseline.py,
imported) timed, then profiled over 3 steps: GPU busy time (sum of kernel times) against wall time, the top kernels,
and which SDPA backends ran. usage: python3 torch_step_profile.py SHARED_BENCH_DIR [--batch 4] [--compile] [--sdpa cudnn|flash|efficient] [--causal-sdpa]"""
import argparse, json, sys, time, torch
ap = argparse.ArgumentParser()
ap.add_argument("bench_dir"); ap.add_argument("--batch", type=int, default=4); ap.add_argument("--compile", action="store_true")
ap.add_argument("--sdpa", default="default", choices=["default", "cudnn", "flash", "efficient"],
                help="restrict SDPA to one backend (torch.nn.attention.sdpa_kernel); torch 2.11 ignored it under --compile "
                     "(the memory-efficient kernels still ran, NOTES run 21)")
ap.add_argument("--top", type=int, default=25)
ap.add_argument("--causal-sdpa", action="store_true",
                help="replace the explicit causal mask transformers passes to SDPA by is_causal=True (no padding here)")
a = ap.parse_args()
if a.causal_sdpa:
    import os; sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../scripts"))
    import torch_sdpa_causal; torch_sdpa_causal.install()
if a.sdpa != "default":
    from torch.nn.attention import sdpa_kernel, SDPBackend
    sdpa_kernel({"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION}[a.sdpa]).__enter__()
sys.path.insert(0, a.bench_dir)
from torch_llama_baseline import SHAPES
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(vocab_size=128256, max_position_embeddings=4096, rope_theta=500000.0, attn_implementation="sdpa",
                  **SHAPES["llama3.2-1b"])
torch.manual_seed(0)
m = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16); m.config.use_cache = False
opt = torch.optim.AdamW(m.parameters(), lr=1e-5, fused=True)
fwd = torch.compile(m) if a.compile else m
x = torch.randint(0, cfg.vocab_size, (a.batch, 2048), device="cuda")
def step():
    fwd(input_ids=x, labels=x).loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
for _ in range(3): step()
torch.cuda.synchronize(); t = time.time()
for _ in range(8): step()
torch.cuda.synchronize(); wall = (time.time() - t) / 8 * 1e3
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    torch.cuda.synchronize(); t = time.time()
    for _ in range(3): step()
    torch.cuda.synchronize(); pwall = (time.time() - t) / 3 * 1e3
ev = [e for e in prof.key_averages() if e.device_time_total > 0 and e.device_type.name == "CUDA"]
gpu = sum(e.device_time_total for e in ev) / 3 / 1e3
print(json.dumps({"model": "llama3.2-1b", "layers": cfg.num_hidden_layers, "batch": a.batch, "seq": 2048,
                  "compile": a.compile, "sdpa": a.sdpa, "causal_sdpa": a.causal_sdpa, "step_ms": round(wall, 2),
                  "tokens_per_s": round(a.batch * 2048 / wall * 1e3), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                  "profiled_step_ms": round(pwall, 2), "gpu_kernel_ms_per_step": round(gpu, 2)}))
for e in sorted(ev, key=lambda e: -e.device_time_total)[:a.top]:
    print("%9.2f ms/step %6d calls  %s" % (e.device_time_total / 3 / 1e3, e.count // 3, e.key[:110]))
