"""The README's five-seed ViGGO table (one epoch, bench/quality_viggo_epoch.sh's command) from the runs beside this file
(viggo-<precision>-s<seed>.jsonl): final validation loss, gap to the same seed's fp32, and the means.
usage: python3 table.py [DIR]"""
import json, os, sys

d = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
PRECS = [("fp32", "fp32"), ("int8-L2", "INT8 level 2"), ("fp8-L0", "FP8 level 0"), ("fp8-L1", "FP8 level 1")]
SEEDS = [1, 2, 3, 4, 5]


def final(prec, seed):
    f = f"{d}/viggo-{prec}-s{seed}.jsonl"
    if not os.path.exists(f):
        return None
    ev = [json.loads(l) for l in open(f) if '"eval"' in l]
    return ev[-1]["val_loss"] if ev and ev[-1]["step"] == 638 else None


fp32 = {s: final("fp32", s) for s in SEEDS}
print("| precision | " + " | ".join(f"seed {s}" for s in SEEDS) + " | mean, gap to fp32's mean |")
print("|---|" + "---|" * len(SEEDS) + "---|")
for prec, name in PRECS:
    cells, vals = [], []
    for s in SEEDS:
        v = final(prec, s)
        if v is None:
            cells.append("not run")
            continue
        vals.append(v)
        gap = "" if prec == "fp32" or fp32[s] is None else f" ({100 * (v - fp32[s]) / fp32[s]:+.2f}%)"
        cells.append(f"{v:.4f}{gap}")
    full = len(vals) == len(SEEDS) and all(fp32.values())
    if not full:
        mean = "incomplete"
    elif prec == "fp32":
        mean = f"{sum(vals) / len(vals):.4f}"
    else:
        m, mf = sum(vals) / len(vals), sum(fp32.values()) / len(SEEDS)
        mean = f"{m:.4f}, {100 * (m - mf) / mf:+.2f}%"
    print(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
