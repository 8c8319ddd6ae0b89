"""Do the sweep's ratios survive a busy machine? The same sweep, quiet and beside busy processes.

    python benchmarks/busy_vs_quiet.py [--out DIR] [--busy 1] [--tolerance 0.3] [-- SWEEP ARGS]

1. Runs ``python -m harness sweep SWEEP ARGS`` (default ``--preset quick``: the quick default
   sweep) into ``DIR/quiet`` on the machine as it is (run this alone: it times).
2. Copies that store and its artifacts to ``DIR/busy``, deletes the rows (the budgets and their
   exported networks stay, so the very same networks are measured again and nothing retrains),
   starts ``--busy`` processes that spin a CPU each, and runs the sweep again there: only the
   measure jobs run, beside the spinners.
3. Compares every compressed network's ``speedup`` (against the dense reference timed
   interleaved in its cell; dense rows, always 1.0, are left out) between the two runs. A busy row is ``within`` (its ratio is within ``--tolerance``
   of the quiet one), ``re-measured`` (within, after more than one timing try), ``marked``
   (its speed-up withheld: ``ratio_ok=False``, or ``timing_ok=False`` where it had no interleaved
   reference) or a **violation** (a clean ratio outside the
   tolerance: the harness published noise). Quiet rows that are themselves marked have nothing
   to compare with and are counted apart. Exits 1 if there is any violation.

Issue 16's "done means": a quick default sweep beside a deliberately busy process publishes no
torch-eager or ORT ratio more than 30% away from the same sweep on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from harness.engine.report import derive, ratio_trusted
from harness.engine.store import Store

SPIN = "import time\nwhile True:\n    sum(range(10_000))\n"


def sweep(args: list[str], out: Path) -> float:
    cmd = [sys.executable, "-m", "harness", "sweep", *args, "--out", str(out)]
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t0


def load(out: Path) -> pd.DataFrame:
    store = Store(out / "results.sqlite")
    try:
        return derive(store.rows()).set_index("key")
    finally:
        store.close()


def classify(quiet: pd.DataFrame, busy: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """One line per compressed network measured in both runs, with its verdict."""
    keys = quiet.index.intersection(busy.index)
    q, b = quiet.loc[keys], busy.loc[keys]
    compressed = (q["method"] != "none") & (q["status"] == "ok") & (b["status"] == "ok")
    q, b = q[compressed], b[compressed]
    out = pd.DataFrame({"model": q["model"], "method": q["method"], "budget": q["budget"], "variant": q["variant"],
                        "target": q["target"], "scenario": q["scenario"],
                        "quiet_speedup": q["speedup"], "busy_speedup": b["speedup"],
                        "busy_tries": b["timing_tries"], "busy_other_cpu": b["other_cpu_share"],
                        "busy_suspect": b["timing_suspect"].fillna("")})
    out["rel_diff"] = (out["busy_speedup"] / out["quiet_speedup"] - 1).abs()
    verdict = pd.Series("within", index=out.index)
    verdict[pd.to_numeric(out["busy_tries"], errors="coerce") > 1] = "re-measured"
    verdict[out["rel_diff"] > tolerance] = "VIOLATION"
    verdict[out["busy_speedup"].isna() | out["quiet_speedup"].isna()] = "no ratio"
    verdict[~ratio_trusted(b)] = "marked"
    verdict[~ratio_trusted(q)] = "quiet row marked"
    out["verdict"] = verdict
    return out.sort_values(["target", "scenario", "method", "budget", "variant"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("busy-vs-quiet"))
    ap.add_argument("--busy", type=int, default=1, help="spinning processes beside the second run")
    ap.add_argument("--tolerance", type=float, default=0.3)
    ap.add_argument("sweep_args", nargs="*", help="after --: the sweep's arguments (default --preset quick)")
    a = ap.parse_args()
    args = a.sweep_args or ["--preset", "quick"]
    quiet_dir, busy_dir = a.out / "quiet", a.out / "busy"
    if a.out.exists():
        sys.exit(f"error: {a.out} exists; give a new --out (the two stores must come from this run)")
    quiet_s = sweep(args, quiet_dir)

    shutil.copytree(quiet_dir, busy_dir)
    db = sqlite3.connect(busy_dir / "results.sqlite")
    db.execute("DELETE FROM rows")  # the budgets and variants stay: the same networks, re-measured
    db.commit()
    db.close()
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(a.busy)]
    try:
        time.sleep(2.0)  # let the load show in /proc before the first cell
        busy_s = sweep(args, busy_dir)
    finally:
        for p in spinners:
            p.kill()
            p.wait()

    quiet, busy = load(quiet_dir), load(busy_dir)
    table = classify(quiet, busy, a.tolerance)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 500)
    print(table.drop(columns=["busy_suspect"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    dense = quiet[(quiet["method"] == "none") & (quiet["status"] == "ok")]
    for key, row in dense.iterrows():
        if key in busy.index:
            print(f"dense {row['model']} {row['target']} {row['scenario']}: p50 {row['p50_ms']:.3f} ms quiet, "
                  f"{busy.loc[key, 'p50_ms']:.3f} ms busy (timing_ok {busy.loc[key, 'timing_ok']})")
    counts = table["verdict"].value_counts().to_dict()
    print(f"\n{len(table)} compressed networks on {', '.join(sorted(set(table['target'])))}; "
          f"{a.busy} spinning process(es) beside the busy run on {os.cpu_count()} CPUs; tolerance {a.tolerance:.0%}")
    print("verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"wall: quiet run {quiet_s / 60:.1f} min (compress + measure), busy run {busy_s / 60:.1f} min (measure only)")
    bad = counts.get("VIOLATION", 0)
    print("PASS: no clean ratio more than the tolerance away" if not bad else f"FAIL: {bad} clean ratios published "
          "more than the tolerance away from the quiet run")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
