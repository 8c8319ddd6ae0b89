"""Does a latency budget hold on the published row? The same latency-budget sweep, repeated.

    python benchmarks/latency_budget_repeat.py [--out DIR] [--repeats 5] [--budget 0.6]
                                               [--model resnet20] [--preset quick]

Runs ``python -m harness sweep --methods layer-prune --budgets layer-prune:latency=F
--targets ort-cpu --scenarios SingleStream`` ``--repeats`` times, each into its own out
directory (the baseline comes from the shared cache after the first), and prints per sweep what
the planner's probes measured (``latency_achieved_frac``: the chosen network's p50 as a fraction
of dense, before its fine-tune) and what the published row says (``latency_miss``: the row's p50
against F x the dense p50 of its own cell, from the same paired ratio as its speed-up), then how
many rows are within 10% (issue 14's goal: 4 of 5). Run it alone (it times).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("latency-budget-repeat"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget", type=float, default=0.6)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--tolerance", type=float, default=0.10)
    a = ap.parse_args()
    if a.out.exists():
        sys.exit(f"error: {a.out} exists; give a new --out (every sweep must come from this run)")
    lines, within = [], 0
    for r in range(a.repeats):
        out = a.out / f"run{r + 1}"
        cmd = [sys.executable, "-m", "harness", "sweep", "--models", a.model, "--methods", "layer-prune",
               "--budgets", f"layer-prune:latency={a.budget}", "--targets", "ort-cpu",
               "--scenarios", "SingleStream", "--preset", a.preset, "--out", str(out), "--no-progress"]
        print("+", " ".join(cmd), flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True)
        df = pd.read_csv(out / "results.csv")
        row = df[(df["method"] == "layer-prune") & (df["status"] == "ok")].iloc[0]
        miss = row["latency_miss"]
        ok = pd.notna(miss) and abs(miss) <= a.tolerance
        within += bool(ok)
        lines.append(f"run {r + 1}: {time.time() - t0:.0f} s; probe {row['latency_achieved_frac']:.3f} of dense "
                     f"({row['layer_prune_latency_probes']:.0f} probes); row p50 {row['p50_ms']:.3f} ms, "
                     f"target {row['latency_target_ms']:.3f} ms, speedup {row['speedup']:.3f}, "
                     f"miss {100 * miss:+.1f}% (ratio_ok {row['ratio_ok']}, se {100 * row['ratio_se']:.1f}%)"
                     f"{'' if ok else '  OUTSIDE'}")
        print(lines[-1], flush=True)
    print(f"\n{a.model}, layer-prune:latency={a.budget} on ort-cpu, preset {a.preset}: "
          f"{within} of {a.repeats} rows within {100 * a.tolerance:.0f}% of the requested latency (goal: 4 of 5)")
    print("\n".join(lines))
    return 0 if within >= 0.8 * a.repeats else 1


if __name__ == "__main__":
    sys.exit(main())
