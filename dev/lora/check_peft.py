"""A halo LoRA adapter under transformers (+ peft when installed) computes what halo's merged model computes.

usage: python3 dev/lora/check_peft.py BASE_DIR ADAPTER_DIR MERGED_DIR
BASE_DIR: the base HF model; ADAPTER_DIR: `halo finetune --lora --out` (PEFT layout); MERGED_DIR: the same run's
`--merge` output. With peft: PeftModel.from_pretrained(base, ADAPTER_DIR). Without it: the adapter tensors read by
name ("base_model.model.<module>.lora_A.weight" [r, in], lora_B [out, r]) and merged as W + lora_alpha / r * B A.
Exit status 0 when the logits agree to 1e-4 relative (fp32).
"""
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

base, adapter, merged = sys.argv[1:4]
ids = torch.tensor([[1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315]])
model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32).eval()
try:
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, adapter).eval()
    how = "peft " + __import__("peft").__version__
except ImportError:
    cfg = json.load(open(f"{adapter}/adapter_config.json"))
    tensors = load_file(f"{adapter}/adapter_model.safetensors")
    scale = cfg["lora_alpha"] / cfg["r"]
    used = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            key = f"base_model.model.{name}.lora_A.weight"
            if key in tensors:
                a, b = tensors[key], tensors[key.replace("lora_A", "lora_B")]
                module.weight += scale * (b @ a)
                used += 2
    assert used == len(tensors), f"{len(tensors) - used} adapter tensors matched no module"
    how = f"manual merge of {used} tensors (peft not installed)"
with torch.no_grad():
    got = model(ids).logits
    want = AutoModelForCausalLM.from_pretrained(merged, torch_dtype=torch.float32).eval()(ids).logits
    plain = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32).eval()(ids).logits
err = ((got - want).norm() / want.norm()).item()
moved = ((plain - want).norm() / want.norm()).item()
print(f"{how}: base + adapter vs halo --merge logits rel err {err:.3g} (the adapter moves them by {moved:.3g})")
sys.exit(0 if err < 1e-4 and moved > 1e-3 else 1)
