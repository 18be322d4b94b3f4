#!/usr/bin/env python3
"""PyTorch + PEFT LoRA beside halo's LoRA benchmark (bench_cuda_train --lora R): a training step (forward, backward,
fused AdamW over the adapters) of a random-weight Llama in BF16 with SDPA attention and LoRA adapters of rank R on all
seven block linears (q, k, v, o, gate, up, down; alpha 8, dropout 0.05 as halo's defaults), the base frozen,
optionally torch.compile'd. The shapes are ../shared/bench/torch_llama_baseline.py's. PEFT keeps the adapters in
fp32 on a bf16 base; the step runs under torch.autocast(bf16), as the transformers Trainer does with bf16=True (so
the adapters' products run in bf16); --no-autocast runs them in fp32 instead. One JSON line per run.

  python3 dev/lora/torch_lora_baseline.py --model llama3.2-1b --batch 4 --seq 2048 --rank 16 [--dropout 0] [--compile] [--causal-sdpa]"""
import argparse, json, time, torch
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model

SHAPES = {
    "llama3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                        num_key_value_heads=8, tie_word_embeddings=True),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, tie_word_embeddings=False),
}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama3.2-1b", choices=SHAPES)
    ap.add_argument("--layers", type=int, default=0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=8)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-autocast", action="store_true")
    ap.add_argument("--causal-sdpa", action="store_true", help="SDPA with is_causal=True instead of transformers' "
                    "explicit mask (cuDNN attention; scripts/torch_sdpa_causal.py)")
    a = ap.parse_args()
    if a.causal_sdpa:
        import os, sys
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../scripts"))
        import torch_sdpa_causal; torch_sdpa_causal.install()
    shape = dict(SHAPES[a.model])
    if a.layers: shape["num_hidden_layers"] = a.layers
    cfg = LlamaConfig(vocab_size=128256, max_position_embeddings=max(4096, a.seq), rope_theta=500000.0,
                      attn_implementation="sdpa", **shape)
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16)
    base.config.use_cache = False
    lc = LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=a.dropout, bias="none",
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    m = get_peft_model(base, lc)
    params = [p for p in m.parameters() if p.requires_grad]
    adapter_dtype = str(params[0].dtype)
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    fwd = torch.compile(m) if a.compile else m
    x = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device="cuda")
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not a.no_autocast):
            loss = fwd(input_ids=x, labels=x).loss
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    for _ in range(3): step()
    torch.cuda.synchronize(); t = time.time()
    for _ in range(a.steps): step()
    torch.cuda.synchronize(); dt = (time.time() - t) / a.steps
    tok = a.batch * a.seq
    print(json.dumps({"model": a.model, "layers": shape["num_hidden_layers"], "batch": a.batch, "seq": a.seq,
                      "rank": a.rank, "dropout": a.dropout, "compile": a.compile, "causal_sdpa": a.causal_sdpa, "autocast": not a.no_autocast, "adapter_dtype": adapter_dtype,
                      "trainable": sum(p.numel() for p in params), "step_ms": round(dt * 1e3, 2),
                      "tokens_per_s": round(tok / dt), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                      "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}), flush=True)

if __name__ == "__main__":
    main()
