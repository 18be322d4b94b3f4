"""Final validation losses of the delayed-scaling runs and their gaps to fp32.
usage: python3 table.py [RUNS]   (RUNS/<mode>/viggo-<precision>-s1.jsonl; default: the copies beside this file,
<mode>-viggo-<precision>-s1.jsonl). Modes: cur (current scaling), dly1 / dly16 (HALO_DEV_AMAX_HISTORY=1 / 16)."""
import json, os, sys

here = os.path.dirname(os.path.abspath(__file__))
runs = sys.argv[1] if len(sys.argv) > 1 else None


def final(mode, prec):
    f = f"{runs}/{mode}/viggo-{prec}-s1.jsonl" if runs else f"{here}/{mode}-viggo-{prec}-s1.jsonl"
    if not os.path.exists(f):
        return None, None
    ev = [json.loads(l) for l in open(f) if '"eval"' in l]
    return (ev[-1]["val_loss"], ev[-1]["step"]) if ev else (None, None)


fp32, _ = final("cur", "fp32")
print(f"fp32 (seed 1): {fp32:.4f}\n")
print("| precision | current scaling | delayed, history 1 | delayed, history 16 |")
print("|---|---|---|---|")
for prec in ["int8-L0", "int8-L2", "fp8-L0"]:
    row = [prec]
    for mode in ["cur", "dly1", "dly16"]:
        v, step = final(mode, prec)
        if v is None:
            row.append("not run")
            continue
        row.append(f"{v:.4f} ({100 * (v - fp32) / fp32:+.2f}%)" + ("" if step == 638 else f" (at step {step})"))
    print("| " + " | ".join(row) + " |")
