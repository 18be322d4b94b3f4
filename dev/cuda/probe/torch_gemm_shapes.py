"""PyTorch's BF16 products of one Llama layer at a model's shapes, timed alone, to set beside
build/bench/bench_cuda_gemm (halo's same products). HF's form (q, k, v, o, gate, up, down separate; what the
PyTorch step runs) and the fused form halo runs (q/k/v and gate/up as one product each). Forward X W^T, dX = dY W,
dW = dY^T X, all bf16 out, the median of CUDA-event-timed calls over two rotating input sets, and the kernel each ran.
usage: python3 torch_gemm_shapes.py [--model llama3.2-1b|llama3-8b] [--tokens 8192] [--reps 20] [--rounds 3] [--uniform]"""
import argparse, statistics, torch
ap = argparse.ArgumentParser()
ap.add_argument("--model", default="llama3.2-1b"); ap.add_argument("--tokens", type=int, default=8192)
ap.add_argument("--reps", type=int, default=20)
ap.add_argument("--rounds", type=int, default=3, help="median of this many timings of each product")
ap.add_argument("--uniform", action="store_true", help="bench_cuda_gemm's default data: uniform in [-1, 1), weights too")
a = ap.parse_args()
D, F, L = {"llama3.2-1b": (2048, 8192, 16), "llama3-8b": (4096, 14336, 32)}[a.model]
kvd, N = 8 * 128 if a.model == "llama3-8b" else 8 * 64, a.tokens
torch.manual_seed(0)
dev, bf = "cuda", torch.bfloat16

def timed(fn, reps):
    for i in range(3): fn(i)
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for i, (s, e) in enumerate(ev):
        s.record(); fn(i); e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in ev)

def kernel_of(fn):
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(0); torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages() if e.device_type.name == "CUDA" and "Memset" not in e.key]
    return names[0][:70] if names else "?"

def products(name, m, n):
    """(label, flops, fn) of a linear with in_features m, out_features n."""
    r = (lambda *s: torch.rand(*s, device=dev, dtype=bf) * 2 - 1) if a.uniform else \
        (lambda *s: torch.randn(*s, device=dev, dtype=bf))
    X = [r(N, m) for _ in range(2)]
    W = [r(n, m) * (1 if a.uniform else 0.02) for _ in range(2)]
    dY = [r(N, n) for _ in range(2)]
    f = 2.0 * N * m * n
    return [(name + " fwd", f, lambda i: X[i & 1] @ W[i & 1].t()),
            (name + " dX", f, lambda i: dY[i & 1] @ W[i & 1]),
            (name + " dW", f, lambda i: dY[i & 1].t() @ X[i & 1])]

forms = {"HF (separate)": [("q", D, D), ("k", D, kvd), ("v", D, kvd), ("o", D, D), ("gate", D, F), ("up", D, F),
                           ("down", F, D)],
         "fused (halo's)": [("qkv", D, D + 2 * kvd), ("o", D, D), ("gate/up", D, 2 * F), ("down", F, D)]}
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, {a.model} shapes, {N} tokens, median of {a.reps} "
      f"calls, median of {a.rounds} rounds, BLAS {torch.backends.cuda.preferred_blas_library()}\n")
for form, lins in forms.items():
    print(f"### {form}\n\n| product | ms | TFLOP/s | kernel |\n|---|---|---|---|")
    tot, kinds, flops = 0.0, {"fwd": 0.0, "dX": 0.0, "dW": 0.0}, 0.0
    for name, m, n in lins:
        for label, f, fn in products(name, m, n):
            ms = statistics.median(timed(fn, a.reps) for _ in range(a.rounds))
            print(f"| {label} | {ms:.3f} | {f / ms / 1e9:.0f} | {kernel_of(fn)} |")
            tot += ms; flops += f; kinds[label.split()[-1]] += ms
    print(f"\nover {L} layers: forward {L * kinds['fwd']:.2f} ms, dX {L * kinds['dX']:.2f}, dW {L * kinds['dW']:.2f}, "
          f"all {L * tot:.2f} ms ({flops / tot / 1e9:.0f} TFLOP/s)\n")
