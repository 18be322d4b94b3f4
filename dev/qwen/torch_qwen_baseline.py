#!/usr/bin/env python3
"""PyTorch baseline at the Qwen variants' shapes, beside bench_cuda_train --model qwen2.5-0.5b|qwen3-0.6b: the
method of ../shared/bench/torch_llama_baseline.py (a random-weight model in BF16, SDPA attention, forward + backward +
fused AdamW, optionally torch.compile'd, median-free mean of N steps after 3 warm-up steps) with transformers'
Qwen2ForCausalLM (q/k/v biases) and Qwen3ForCausalLM (q/k head norms). One JSON line, keys as the Llama script's, so
scripts/bench_ratio.py pairs it with halo's row of the same model, layers, batch and sequence length.

  python3 dev/qwen/torch_qwen_baseline.py --model qwen3-0.6b --batch 4 --seq 2048 --compile"""
import argparse, json, time, torch
import transformers

SHAPES = {   # the published configs' shapes (Qwen/Qwen2.5-0.5B, Qwen/Qwen3-0.6B)
    "qwen2.5-0.5b": ("Qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2)),
    "qwen3-0.6b": ("Qwen3", dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                 num_attention_heads=16, num_key_value_heads=8, head_dim=128)),
}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen3-0.6b", choices=SHAPES)
    ap.add_argument("--layers", type=int, default=0, help="override the number of layers")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    arch, shape = SHAPES[a.model]
    shape = dict(shape)
    if a.layers: shape["num_hidden_layers"] = a.layers
    cfg = getattr(transformers, arch + "Config")(vocab_size=151936, max_position_embeddings=max(4096, a.seq),
                                                 rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                                 attn_implementation="sdpa", **shape)
    torch.manual_seed(0)
    m = getattr(transformers, arch + "ForCausalLM")(cfg).to("cuda", torch.bfloat16)
    m.config.use_cache = False
    opt = torch.optim.AdamW(m.parameters(), lr=1e-5, fused=True)
    fwd = torch.compile(m) if a.compile else m
    x = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device="cuda")
    def step():
        fwd(input_ids=x, labels=x).loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    for _ in range(3): step()
    torch.cuda.synchronize(); t = time.time()
    for _ in range(a.steps): step()
    torch.cuda.synchronize(); dt = (time.time() - t) / a.steps
    n = sum(p.numel() for p in m.parameters()); tok = a.batch * a.seq
    print(json.dumps({"model": a.model, "layers": shape["num_hidden_layers"], "batch": a.batch, "seq": a.seq,
                      "compile": a.compile, "params": n, "step_ms": round(dt * 1e3, 2), "tokens_per_s": round(tok / dt),
                      "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                      "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}), flush=True)

if __name__ == "__main__":
    main()
