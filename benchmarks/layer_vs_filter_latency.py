"""Latency of layer-pruned vs filter-pruned ResNets on ONNX Runtime, interleaved in ONE process.

    python benchmarks/layer_vs_filter_latency.py [--model resnet56] [--remove UNITS]
        [--ratios 0.3,0.5,0.7,0.9,0.95] [--threads 2] [--rounds 15]

LayerPrune's question at matched *latency* needs the filter-pruned network whose latency equals
the layer-pruned one's. Filter pruning of a CIFAR ResNet narrows only the block-internal width
(block outputs are tied by the residual), so its latency has a floor; this prints both curves,
side by side: dense, the network with ``--remove`` units removed (default: the 13 blocks the
Fashion-MNIST study's gate-Taylor criterion removed from resnet56), and filter pruning at each
ratio (Torch-Pruning, the harness's channel surgery). Only architectures are timed: weights are
seeded and untrained, which does not change what dense fp32 kernels cost. Timing: ORT_ENABLE_ALL,
sequential execution, ``--threads`` intra-op threads, batch 1; each round times every network
for ``--queries`` queries in turn (order rotated per round), and the median over rounds of each
round's median is reported with the ratio to dense. Run it alone (it times).
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.export import export_onnx
from harness.macs import count_cost
from harness.models import build_model, removable_units
from methods.pruning import criteria as crit
from methods.pruning.channels import prune_ratio
from methods.pruning.units import removed_copy
from targets.ort_cpu import _session_options

STUDY_REMOVED = ("layer3.7 layer3.6 layer3.8 layer3.3 layer3.4 layer3.5 layer3.2 layer2.8 layer2.6 layer3.1 "
                 "layer2.5 layer2.7 layer2.2")


def _session(path: Path, threads: int):
    """The session ort-cpu builds (its own options: ORT_ENABLE_ALL, sequential, intra-op threads)."""
    import onnxruntime as ort

    so = _session_options(ort, "ORT_ENABLE_ALL", threads)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--remove", default=STUDY_REMOVED, help="space-separated unit names to remove")
    ap.add_argument("--ratios", default="0.3,0.5,0.7,0.9,0.95")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--queries", type=int, default=200)
    a = ap.parse_args()
    shape = (3, 32, 32)
    torch.manual_seed(0)
    dense = build_model(a.model).eval()
    units = {u.name: u for u in removable_units(dense)}
    missing = [n for n in a.remove.split() if n not in units]
    if missing:
        raise SystemExit(f"error: {a.model} has no removable units {missing}")
    nets = {"dense": dense, f"layer-pruned ({len(a.remove.split())} units)": removed_copy(dense, [units[n] for n in a.remove.split()])}
    scores = crit.structural_scores(dense, 0)["weight-norm"]
    for r in (float(v) for v in a.ratios.split(",")):
        nets[f"filter-pruned ratio {r:g}"] = prune_ratio(copy.deepcopy(dense), scores, r, shape)
    x = np.random.default_rng(0).standard_normal((1, *shape), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        sessions, macs = {}, {}
        for name, net in nets.items():
            path = export_onnx(net, Path(tmp) / f"{len(sessions)}.onnx", shape)
            sessions[name], macs[name] = _session(path, a.threads), count_cost(net, shape).macs
            for _ in range(20):  # warm-up
                sessions[name].run(None, {"input": x})
        per_round: dict[str, list[float]] = {n: [] for n in sessions}
        names = list(sessions)
        for r in range(a.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                s, ts = sessions[name], []
                for _ in range(a.queries):
                    t0 = time.perf_counter()
                    s.run(None, {"input": x})
                    ts.append(time.perf_counter() - t0)
                per_round[name].append(float(np.median(ts)) * 1e3)
    ref = float(np.median(per_round["dense"]))
    print(f"{a.model}, ORT CPU, batch 1, {a.threads} threads, median of {a.rounds} interleaved rounds x {a.queries} queries")
    print(f"{'network':<34} {'MACs':>12} {'MACs share':>10} {'p50 ms':>8} {'vs dense':>9} {'round spread':>13}")
    for name, vals in per_round.items():
        p50 = float(np.median(vals))
        spread = (max(vals) - min(vals)) / p50
        print(f"{name:<34} {macs[name]:>12,} {macs[name] / macs['dense']:>10.3f} {p50:>8.3f} {ref / p50:>8.2f}x {spread:>12.0%}")


if __name__ == "__main__":
    main()
