"""Which speed-up estimator survives a machine that changes speed by itself? An A/A test.

    python benchmarks/paired_ratio.py [--model resnet20] [--items 6] [--cells 6] [--preset standard]
                                      [--reference-every 3] [--threads 2]

A sweep's cell times the dense reference and up to 12 compressed networks in alternating blocks
and publishes each network's speed-up. Here every "compressed" network is the dense network
itself (a second ONNX Runtime session of the same file), so the true speed-up of every one is
1.00, and any departure is the estimator's error. Cells alternate between two block orders:

- ``old``: R A B C D E F per round (the reference once per round, as before this benchmark);
- ``new``: R A B C R D E F ... R (``harness.timing.round_order``: a reference block every
  ``--reference-every`` networks, and one closing reference block).

For every network it computes both estimators from the very same samples:

- ``pooled``: reference p50 / network p50 over the whole cell (what the cell published before);
- ``paired``: the median over the network's blocks of (reference blocks around it) / block
  (``harness.timing.paired_ratios``).

and both rules that decide whether the ratio is published: the old one (the reference's or the
network's own block medians drifted more than ``max_drift``: marked) and the new one (the paired
median's standard error above ``NoiseRules.max_ratio_se``). It prints, per order and estimator,
the error |ratio - 1| (median and worst), how many ratios are within 5% and 10%, how many the
rule marks, and how many it lets through outside 10% ("false clean": published noise).
Run it alone: it times, and the machine must not be doing anything else of ours.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.engine.noise import NoiseRules, preset_noise
from harness.export import export_onnx
from harness.models import build_model
from harness.timing import PRESETS, HostTimer, measure_interleaved, paired_ratios, ratio_summary, summarize
from targets.ort_cpu import _session_options


def _drift(medians: list[float]) -> float:
    return (max(medians) - min(medians)) / statistics.median(medians)


def cell_results(samples: list, max_drift: float, max_se: float) -> list[dict]:
    """Both estimators and both rules for every network of one cell (samples[0]: the reference)."""
    ref = samples[0]
    ref_p50 = summarize(ref.latencies_s, batch=1, wall_s=ref.wall_s).p50_ms
    ref_drift = _drift(ref.block_medians_ms())
    out = []
    for s in samples[1:]:
        p50 = summarize(s.latencies_s, batch=1, wall_s=s.wall_s).p50_ms
        paired = ratio_summary(paired_ratios(ref, s))
        out.append({"pooled": ref_p50 / p50, "paired": paired["ratio"],
                    "old_marked": ref_drift > max_drift or _drift(s.block_medians_ms()) > max_drift,
                    "new_marked": paired["ratio_se"] is None or paired["ratio_se"] > max_se,
                    "se": paired["ratio_se"]})
    return out


def _list(values) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def report(rows: list[dict], estimator: str, rule: str) -> str:
    err = [abs(r[estimator] - 1) for r in rows]
    marked = [r[rule] for r in rows]
    false_clean = sum(e > 0.10 and not m for e, m in zip(err, marked))
    return (f"error median {100 * statistics.median(err):4.1f}%, worst {100 * max(err):5.1f}%; "
            f"within 5%: {sum(e <= 0.05 for e in err):2d}/{len(err)}, within 10%: {sum(e <= 0.10 for e in err):2d}/{len(err)}; "
            f"{rule.split('_')[0]} rule marks {sum(marked):2d}, false clean (>10% off, published) {false_clean}")


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--items", type=int, default=6, help="networks per cell besides the reference")
    ap.add_argument("--cells", type=int, default=6, help="cells in all, alternating old and new order")
    ap.add_argument("--preset", default="standard", choices=sorted(PRESETS))
    ap.add_argument("--reference-every", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", type=Path, help="write every cell's raw samples here (.npz) to study estimators")
    a = ap.parse_args()
    rules = PRESETS[a.preset]
    noise = NoiseRules(**preset_noise(a.preset))
    torch.manual_seed(0)
    net = build_model(a.model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_onnx(net, path, (3, 32, 32))
        sessions = [ort.InferenceSession(str(path), _session_options(ort, "ORT_ENABLE_ALL", a.threads),
                                         providers=["CPUExecutionProvider"]) for _ in range(a.items + 1)]
    name = sessions[0].get_inputs()[0].name
    pool = [np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32) for i in range(16)]
    timers = [HostTimer(lambda x, s=s: s.run(None, {name: x})) for s in sessions]
    results: dict[str, list[dict]] = {"old": [], "new": []}
    raw: dict[str, np.ndarray] = {}
    t_start = time.perf_counter()
    for c in range(a.cells):
        order = "old" if c % 2 == 0 else "new"
        samples = measure_interleaved(timers, pool, rules,
                                      reference_every=None if order == "old" else a.reference_every)
        rows = cell_results(samples, noise.max_drift, noise.max_ratio_se)
        for j, smp in enumerate(samples):
            raw[f"c{c}_{order}_s{j}_lat"] = np.asarray(smp.latencies_s)
            raw[f"c{c}_{order}_s{j}_block"] = np.asarray(smp.block_index)
        if a.save:
            np.savez(a.save, **raw)
        results[order] += rows
        print(f"cell {c + 1}/{a.cells} ({order} order, {time.perf_counter() - t_start:.0f} s): "
              f"reference blocks {_list(samples[0].block_medians_ms())} ms; "
              f"pooled {_list(r['pooled'] for r in rows)}; paired {_list(r['paired'] for r in rows)}",
              flush=True)
    print(f"\n{a.model} on ort-cpu, {a.threads} threads, batch 1, preset {a.preset}; every true ratio is 1.00; "
          f"{a.items} networks + reference per cell; drift limit {100 * noise.max_drift:.0f}%, "
          f"speed-up standard-error limit {100 * noise.max_ratio_se:.0f}%")
    for order in ("old", "new"):
        if not results[order]:
            continue
        print(f"{order} order, pooled p50 ratio: {report(results[order], 'pooled', 'old_marked')}")
        print(f"{order} order, paired ratios:   {report(results[order], 'paired', 'new_marked')}")


if __name__ == "__main__":
    main()
