"""Final validation losses of the delayed-scaling runs and their gaps to the same seed's fp32.
usage: python3 table.py [RUNS]   (RUNS/<mode>/viggo-<precision>-s<seed>.jsonl; default: the copies beside this file,
<mode>-viggo-<precision>-s<seed>.jsonl). Modes: cur (current scaling), dly1 / dly16 (HALO_DEV_AMAX_HISTORY=1 / 16, the
experiment's patch: every operand, W included), opt (the --halo-delayed-scaling option as first built: X at level 0,
E_Y at levels 0-1), opt2 (the option with W at level 0 too, forty-sixth session).
Prints one table per seed that has an fp32 run, then the mean gap over the seeds each cell has."""
import json, os, sys

here = os.path.dirname(os.path.abspath(__file__))
runs = sys.argv[1] if len(sys.argv) > 1 else None
MODES = ["cur", "dly1", "dly16", "opt", "opt2"]
PRECS = ["int8-L0", "int8-L2", "fp8-L0"]


def final(mode, prec, seed):
    f = f"{runs}/{mode}/viggo-{prec}-s{seed}.jsonl" if runs else f"{here}/{mode}-viggo-{prec}-s{seed}.jsonl"
    if not os.path.exists(f):
        return None, None
    ev = [json.loads(l) for l in open(f) if '"eval"' in l]
    return (ev[-1]["val_loss"], ev[-1]["step"]) if ev else (None, None)


seeds = [s for s in range(1, 10) if final("cur", "fp32", s)[0] is not None]
gaps = {}  # (prec, mode) -> [gap in %]
for seed in seeds:
    fp32, _ = final("cur", "fp32", seed)
    print(f"seed {seed}, fp32 {fp32:.4f}\n")
    print("| precision | current scaling | delayed, history 1 | delayed, history 16 | the option, first | the option, W too |")
    print("|---|---|---|---|---|---|")
    for prec in PRECS:
        row = [prec]
        for mode in MODES:
            v, step = final(mode, prec, seed)
            if v is None:
                row.append("not run")
                continue
            gap = 100 * (v - fp32) / fp32
            if step == 638:
                gaps.setdefault((prec, mode), []).append(gap)
            row.append(f"{v:.4f} ({gap:+.2f}%)" + ("" if step == 638 else f" (at step {step})"))
        print("| " + " | ".join(row) + " |")
    print()
print("mean gap to fp32 over the seeds run (seeds)\n")
print("| precision | current scaling | delayed, history 1 | delayed, history 16 | the option, first | the option, W too |")
print("|---|---|---|---|---|---|")
for prec in PRECS:
    row = [prec]
    for mode in MODES:
        g = gaps.get((prec, mode))
        row.append(f"{sum(g) / len(g):+.2f}% ({len(g)})" if g else "not run")
    print("| " + " | ".join(row) + " |")
