#!/usr/bin/env bash
# Which cuBLASLt kernels halo's BF16 layer products run, and for how long, to set beside PyTorch's (the thirty-seventh
# session's profile: its block-linear products run at 735-770 TFLOP/s over the 1B step against halo's ~690, README
# "Where it stands", dev/cuda/prep/README.md item 0b).
# Nsight Compute with --clock-control none (the clocks are left as they are), one duration metric, the first 40
# product kernels of one 1B BF16 step. On the device, after `bash scripts/device_sync.sh` (carry .dev-cuda):
#   cd .dev-cuda && bash dev/cuda/probe/bf16_kernels_ncu.sh OUT_DIR
# then, beside it: python3 dev/cuda/probe/torch_step_profile.py shared/bench --compile --causal-sdpa --top 20
set -u
cd "$(dirname "$0")/../../.."
OUT=${1:-/tmp/bf16_ncu}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/deps/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
timeout 300 "$NCU" --clock-control none --metrics gpu__time_duration.sum -k 'regex:nvjet|gemm|sm90_xmma|cutlass' \
  --launch-count 40 --csv build-dev/bench/bench_cuda_train --model llama3.2-1b --batch 4 --seq 2048 --steps 1 \
  --no-breakdown > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
echo "ncu rc=$?"
python3 - "$OUT/ncu.csv" <<'PY'
import csv, sys, collections
h, agg = None, collections.OrderedDict()
for r in csv.reader(open(sys.argv[1])):
    if "Kernel Name" in r: h = r; continue
    if not h or len(r) != len(h): continue
    d = dict(zip(h, r))
    unit = {"nsecond": 1, "usecond": 1e3, "msecond": 1e6}.get(d.get("Metric Unit", "nsecond"), 1)
    ns = float(d["Metric Value"].replace(",", "")) * unit
    agg.setdefault((d["Kernel Name"][:100], d.get("Grid Size", ""), d.get("Block Size", "")), []).append(ns)
for (name, grid, block), v in agg.items():
    print("%3d x %9.1f us  grid %-14s block %-10s %s" % (len(v), sum(v) / len(v) / 1e3, grid, block, name))
PY
