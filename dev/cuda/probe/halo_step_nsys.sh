#!/usr/bin/env bash
# Kernel time of halo's training step, without the event marks of bench_cuda_train's breakdown (which may count launch
# gaps, dev/cuda/NOTES.md run 22): Nsight Systems over the 5 timed steps of `bench_cuda_train --no-breakdown` (each
# kernel's GPU time), summed into products (cuBLASLt's nvjet / cutlass kernels and halo's own INT8 kernel), attention,
# AdamW and the rest, per step. Set beside dev/cuda/probe/torch_step_profile.py's kernel sums of PyTorch's step.
# On the device, after `bash scripts/device_sync.sh` (carry .dev-cuda):
#   cd .dev-cuda && bash dev/cuda/probe/halo_step_nsys.sh OUT_DIR [bench_cuda_train options, default 1B BF16]
set -u
cd "$(dirname "$0")/../../.."
OUT=${1:-/tmp/halo_nsys}; shift || true
mkdir -p "$OUT"
if [ ! -d build-dev ] && [ -f build-dev.tar.xz ]; then tar xJf build-dev.tar.xz; fi
export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
if [ -z "$NSYS" ]; then echo "no nsys on this machine"; exit 1; fi
ARGS=("$@"); [ ${#ARGS[@]} -eq 0 ] && ARGS=(--model llama3.2-1b)
STEPS=5
# bench_cuda_train brackets its timed steps with cudaProfilerStart / Stop: only those are captured
timeout 300 "$NSYS" profile -o "$OUT/step" --force-overwrite true -t cuda --sample none --cpuctxsw none \
  --capture-range cudaProfilerApi --capture-range-end stop \
  build-dev/bench/bench_cuda_train --batch 4 --seq 2048 --steps $STEPS --no-breakdown "${ARGS[@]}" > "$OUT/bench.log" 2>&1
echo "nsys profile rc=$?"; grep -h '^{' "$OUT/bench.log"
timeout 200 "$NSYS" stats --report cuda_gpu_kern_sum --format csv --output "$OUT/kern" "$OUT/step.nsys-rep" > /dev/null 2>&1
CSV=$(ls "$OUT"/kern*.csv 2>/dev/null | head -1)
[ -n "$CSV" ] || { echo "no kernel summary"; exit 1; }
python3 - "$CSV" $STEPS <<'PY'
import csv, sys, re
rows = list(csv.DictReader(open(sys.argv[1])))
nsteps = int(sys.argv[2])
cats = {"products (cuBLASLt incl. lm_head, own INT8)": r"nvjet|cutlass|gemm|xmma",
        "attention": r"attn|flash|k_kv_acc|k_q_acc", "AdamW + grad norm": r"adamw|sumsq", "cross-entropy": r"xent"}
sums = {k: 0.0 for k in cats}; other = 0.0; top = []
for r in rows:
    ns = float(r["Total Time (ns)"]); name = r["Name"]
    top.append((ns, int(r["Instances"]), name))
    for k, pat in cats.items():
        if re.search(pat, name, re.I): sums[k] += ns; break
    else: other += ns
tot = sum(sums.values()) + other
print("| kind | ms of kernel time, %d steps | ms a step |" % nsteps)
print("|---|---|---|")
for k, v in list(sums.items()) + [("other", other), ("all", tot)]:
    print("| %s | %.2f | %.2f |" % (k, v / 1e6, v / 1e6 / nsteps))
print("\ntop kernels:")
for ns, n, name in sorted(top, reverse=True)[:25]:
    print("%9.2f ms %6d x  %s" % (ns / 1e6, n, name[:110]))
PY
