"""halo's Qwen2 (q, k, v biases), Qwen3 (q/k norms), SmolLM3 (layers without RoPE) and Phi-3 (fused qkv_proj,
gate_up_proj) against transformers: one forward/backward of a random tiny model of each.

usage: python3 dev/qwen/hf_check.py HALO_BIN WORK_DIR [SHARED_DIR]
Builds a random Qwen2ForCausalLM and Qwen3ForCausalLM (transformers' init; biases drawn at sd 0.3 and q/k norm
weights at 1 + 0.3 N(0, 1), so that they matter), saves each as a Hugging Face directory, runs `HALO_BIN debug-step
--device cpu` on a random batch and compares logits, loss and every parameter's gradient with torch's (fp32).
With SHARED_DIR (../shared: stories260K's tokenizer, 512 ids), each model also goes through `halo finetune --steps 1
--lr 0 --out` (halo's export of the unchanged weights) and transformers loads that export: its logits must equal the
original model's to 1e-6 (config.json and tensor names as transformers reads them).
Exit status 0 when, for every model, logits and gradients agree to 1e-4 and the loss to 1e-5.
"""
import os
import shutil
import json
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM
try:
    from transformers import SmolLM3Config, SmolLM3ForCausalLM
except ImportError:   # transformers before 4.53
    SmolLM3Config = SmolLM3ForCausalLM = None

halo, work = sys.argv[1:3]
shared = sys.argv[3] if len(sys.argv) > 3 else None
rel = lambda a, b: ((a - b).norm() / b.norm()).item()


def check(name, cfg_cls, model_cls, **extra):
    torch.manual_seed(0)
    cfg = cfg_cls(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, rope_theta=1e6, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, use_sliding_window=False, bos_token_id=1, eos_token_id=2, **extra)
    model = model_cls(cfg).float()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith(".bias"):
                p.normal_(0, 0.3)
            if pname.endswith("q_norm.weight") or pname.endswith("k_norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
    model.save_pretrained(f"{work}/{name}", safe_serialization=True)
    ids = torch.randint(0, cfg.vocab_size, (2, 16), dtype=torch.int32)
    save_file({"input_ids": ids}, f"{work}/{name}_batch.safetensors")
    subprocess.run([halo, "debug-step", "--model", f"{work}/{name}", "--batch", f"{work}/{name}_batch.safetensors",
                    "--out", f"{work}/{name}_out.safetensors", "--device", "cpu"], check=True)
    got = load_file(f"{work}/{name}_out.safetensors")
    return cfg, model, ids, got


ok = True
cases = [("qwen2", Qwen2Config, Qwen2ForCausalLM, {}), ("qwen3", Qwen3Config, Qwen3ForCausalLM, {"head_dim": 24}),
         ("phi3", Phi3Config, Phi3ForCausalLM, {"pad_token_id": 0, "sliding_window": None})]
if SmolLM3Config is not None:
    # (SmolLM3Config's default pad_token_id, 128004, lies outside this vocabulary)
    cases.append(("smollm3", SmolLM3Config, SmolLM3ForCausalLM, {"no_rope_layers": [1, 0], "pad_token_id": None}))
else:
    print("smollm3: this transformers has no SmolLM3ForCausalLM; skipped")
for name, cfg_cls, model_cls, extra in cases:
    cfg, model, ids, got = check(name, cfg_cls, model_cls, **extra)

    out = model(input_ids=ids.long(), labels=ids.long())   # transformers shifts the labels: positions 0..T-2 score
    out.loss.backward()
    e_logits = rel(got["logits"], out.logits.detach())
    e_loss = abs(got["loss"].item() - out.loss.item()) / out.loss.item()
    worst, worst_name, n, new = 0.0, "", 0, 0.0
    for pname, p in model.named_parameters():
        key = "grad." + pname
        if key not in got:
            print(f"{name}: missing gradient {key}")
            ok = False
            continue
        e = rel(got[key], p.grad)
        n += 1
        if pname.endswith(".bias") or "_norm.weight" in pname and "self_attn" in pname:
            new = max(new, e)
        if e > worst:
            worst, worst_name = e, pname
    print(f"{name} tiny, transformers vs halo debug-step (CPU, fp32): logits rel {e_logits:.3g}, loss rel "
          f"{e_loss:.3g}, {n} gradients, worst rel {worst:.3g} ({worst_name}), biases / q,k norms worst rel {new:.3g}")
    ok = ok and e_logits < 1e-4 and e_loss < 1e-5 and worst < 1e-4
    if shared:   # halo's export of the same weights, read back by transformers
        from transformers import AutoModelForCausalLM
        for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
            if os.path.exists(f"{shared}/models/stories260K/{f}"):
                shutil.copy(f"{shared}/models/stories260K/{f}", f"{work}/{name}/{f}")
        subprocess.run([halo, "finetune", "--model", f"{work}/{name}", "--data",
                        f"{shared}/data/text/tinystories_sample.txt", "--seq-len", "32", "--batch", "2", "--steps", "1",
                        "--lr", "0", "--warmup", "0", "--val-count", "2", "--device", "cpu", "--out",
                        f"{work}/{name}_export"], check=True, stdout=subprocess.DEVNULL)
        back = AutoModelForCausalLM.from_pretrained(f"{work}/{name}_export", torch_dtype=torch.float32).eval()
        with torch.no_grad():
            e_export = rel(back(ids.long()).logits, model(ids.long()).logits)
        print(f"{name}: halo's export ({type(back).__name__}) read by transformers: logits rel {e_export:.3g}")
        ok = ok and e_export < 1e-6
sys.exit(0 if ok else 1)
