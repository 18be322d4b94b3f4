#!/usr/bin/env python3
"""Table of halo training benchmarks against the PyTorch baseline: reads the JSON lines that bench_cuda_train and
shared/bench/torch_llama_baseline.py (or dev/qwen/torch_qwen_baseline.py) print (any files given) and prints step time,
tokens/s, memory, the speed ratio to halo's plain BF16 row of the same model and shape (the first one given) and to
the PyTorch run, and to PyTorch with SDPA given is_causal=True where dev/cuda/probe/torch_step_profile.py --causal-sdpa
ran (README "Where it stands": transformers' explicit mask sends the compiled step to slower attention kernels).
usage: scripts/bench_ratio.py LOG..."""
import json, sys

rows, torch, torch_causal = [], {}, {}
for path in sys.argv[1:]:
    for line in open(path, errors="replace"):
        if not line.startswith("{"):
            continue
        try:
            j = json.loads(line)
        except ValueError:
            continue
        key = (j.get("model"), j.get("layers"), j.get("batch"), j.get("seq"))
        if j.get("bench") == "halo_cuda":
            rows.append((key, j))
        elif j.get("compile") and "rank" not in j:   # compiled PyTorch; PEFT rows (rank) are not this table's
            (torch_causal if j.get("causal_sdpa") else torch)[key] = j
def plain_bf16(j):   # halo's default BF16 step: the reference of the "x halo BF16" column
    return (j["precision"] == "bf16" and not j.get("lora") and not j.get("bf16_moments") and not j.get("bf16_grads")
            and not j.get("recompute_norms") and not j.get("recompute"))
base = {}
for key, j in rows:
    if plain_bf16(j): base.setdefault(key, j)
print("| model | layers | config | step ms | tokens/s | memory GiB (own / device) | x halo BF16 | PyTorch compiled step ms, GiB | speed vs PyTorch | PyTorch compiled, causal SDPA, ms | speed vs it |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for key, j in rows:
    cfg = [j["precision"] + ("" if j["precision"] == "bf16" else f" L{j['halo_level']}")]
    if j.get("token_block"): cfg.append(f"token block {j['token_block']}")
    if j.get("hm_block"): cfg.append(f"H_m block {j['hm_block']}")
    if j.get("ex_defer") == 0 and j["precision"] != "bf16": cfg.append("no ex-defer")
    if j.get("int8_own") == 0 and j["precision"] == "int8": cfg.append("int32 products")
    if j.get("int8_few_tiles_lt") == 0 and j["precision"] == "int8": cfg.append("own kernel on few tiles")
    if j.get("int8_group") == 0 and j["precision"] == "int8" and j.get("halo_level", 0) < 2: cfg.append("E_X products one by one")
    if j.get("int8_stack") == 1 and j["precision"] == "int8" and j.get("halo_level", 0) < 2: cfg.append("q/k/v G stacked")
    if j.get("int8_y_stack") == 1 and j["precision"] == "int8": cfg.append("q/k/v Y stacked")
    if j.get("g_sumsq") == 1 and j["precision"] == "int8": cfg.append("grad norm from the G products")
    if j.get("pdl") == 1: cfg.append("PDL")
    if j.get("ex_swiglu_amax") == 1 and j["precision"] == "int8": cfg.append("gate/up E_Y amax in down's E_X")
    if j.get("tok_fused") == 0 and j["precision"] == "int8" and j.get("halo_level") == 2 and j.get("token_block"):
        cfg.append("token rotation as a column pass")
    if j.get("gemm_tune") == 0 and j["precision"] != "bf16": cfg.append("first-choice products")
    if j.get("delayed_scaling"): cfg.append("delayed scaling")
    if j.get("dnorm_f32") == 0 and j["precision"] != "bf16": cfg.append("group sums rounded to bf16")
    if j.get("ey_codes_spec") == 0 and j["precision"] != "bf16": cfg.append("gate/up E_Y in bf16")
    if j.get("bf16_moments"): cfg.append("bf16 moments")
    if j.get("lora"): cfg.append(f"LoRA r{j['lora']} (base frozen)")
    if j.get("bf16_grads"): cfg.append("bf16 grads")
    if j.get("recompute_norms"): cfg.append("norm recompute")
    if j.get("recompute"): cfg.append("recompute " + ("all" if j["recompute"] == 1 else "mlp"))
    t = torch.get(key)
    ref = f"{t['step_ms']:.2f}, {t['peak_gib']:.2f}" if t else "not run"
    ratio = f"{t['step_ms'] / j['step_ms']:.3f}x" if t else "-"
    tc = torch_causal.get(key)
    refc = f"{tc['step_ms']:.2f}" if tc else "not run"
    ratioc = f"{tc['step_ms'] / j['step_ms']:.3f}x" if tc else "-"
    b = base.get(key)
    xb = f"{b['step_ms'] / j['step_ms']:.3f}x" if b else "-"
    print(f"| {key[0]} | {key[1]} | {', '.join(cfg)} | {j['step_ms']:.2f} | {j['tokens_per_s']:,} | "
          f"{j['model_gib']:.2f} / {j['device_used_gib']:.2f} | {xb} | {ref} | {ratio} | {refc} | {ratioc} |")
