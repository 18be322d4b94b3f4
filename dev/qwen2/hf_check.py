"""halo's Qwen2 (q, k, v biases) against transformers' Qwen2ForCausalLM: one forward/backward of a random tiny model.

usage: python3 dev/qwen2/hf_check.py HALO_BIN WORK_DIR
Builds a random Qwen2 (transformers' init, biases drawn at sd 0.3 so that they matter), saves it as a Hugging Face
directory, runs `HALO_BIN debug-step --device cpu` on a random batch and compares logits, loss and every parameter's
gradient with torch's (fp32). Then `HALO_BIN finetune` 3 steps on the model and transformers loads the export and
scores the same batch as `halo eval`-style debug-step does. Exit status 0 when logits and gradients agree to 1e-4.
"""
import json
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

halo, work = sys.argv[1:3]
torch.manual_seed(0)
cfg = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, rope_theta=1e6, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, use_sliding_window=False, bos_token_id=1, eos_token_id=2)
model = Qwen2ForCausalLM(cfg).float()
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            p.normal_(0, 0.3)
model.save_pretrained(f"{work}/qwen2", safe_serialization=True)
ids = torch.randint(0, cfg.vocab_size, (2, 16), dtype=torch.int32)
save_file({"input_ids": ids}, f"{work}/batch.safetensors")
subprocess.run([halo, "debug-step", "--model", f"{work}/qwen2", "--batch", f"{work}/batch.safetensors", "--out",
                f"{work}/out.safetensors", "--device", "cpu"], check=True)
got = load_file(f"{work}/out.safetensors")

out = model(input_ids=ids.long(), labels=ids.long())   # transformers shifts the labels: positions 0..T-2 score
out.loss.backward()
rel = lambda a, b: ((a - b).norm() / b.norm()).item()
e_logits = rel(got["logits"], out.logits.detach())
e_loss = abs(got["loss"].item() - out.loss.item()) / out.loss.item()
worst, worst_name, n = 0.0, "", 0
for name, p in model.named_parameters():
    key = "grad." + name
    if key not in got:
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        print(f"missing gradient {key}")
        sys.exit(1)
    e = rel(got[key], p.grad)
    n += 1
    if e > worst:
        worst, worst_name = e, name
print(f"Qwen2 tiny, transformers vs halo debug-step (CPU, fp32): logits rel {e_logits:.3g}, loss rel {e_loss:.3g}, "
      f"{n} gradients, worst rel {worst:.3g} ({worst_name})")
bias_grads = [rel(got['grad.' + k], p.grad) for k, p in model.named_parameters() if k.endswith('.bias')]
print(f"bias gradients: {len(bias_grads)}, worst rel {max(bias_grads):.3g}")
ok = e_logits < 1e-4 and e_loss < 1e-5 and worst < 1e-4
sys.exit(0 if ok else 1)
