"""Is DeepShift's int8 variant faster than fp32 where it runs? fp32 and int8, side by side.

    python benchmarks/deepshift_int8.py [--models resnet20,resnet56] [--targets ort-cpu,ov-cpu]
                                        [--preset quick] [--threads 2] [--cells 3]

For each model: a shift network (DeepShift-PS, 5 bits, converted from a seeded random init and
finalised: the speed of a graph does not depend on how well it was trained), its BN given
non-trivial statistics so that folding changes the weights. Three ONNX files of it:

- ``fp32``: the dense network's usual export (BN folded by the exporter): what a user runs today;
- ``float shift``: the ``default`` deployable (BN written out, so the weights stay powers of two);
- ``int8``: the ``int8`` deployable (``methods/deepshift/int8.py``), calibrated on 512 images.

Each target compiles the three exactly as a sweep's cell does (``Target.compile``) and times them
interleaved in one cell (``harness.timing.measure_interleaved``, fp32 as the reference, a
reference block before every network and at the end), at batch 1 (SingleStream) and at the
sweep's Offline batch (64), ``--cells`` times; it prints each cell's paired ratio fp32 p50 / p50 and
their median, and what the target's optimised int8 graph holds (ORT: QLinearConv / QLinearAdd /
Q-DQ nodes left; OpenVINO: convolutions at int8). Accuracy is not measured here (the network is
untrained): the sweep's rows give top-1 of the trained int8 variant against the float one.

Issue 14's goal: int8 >= 1.3x over fp32 on ORT at batch 1 and Offline, >= 1.5x on OpenVINO.
Run it alone: it times.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness.data import load_data
from harness.engine.config import SweepConfig
from harness.export import export_onnx
from harness.models import build_model
from harness.timing import PRESETS, measure_interleaved, paired_ratios, ratio_summary
from harness.train import BASELINE_RECIPES
from methods.base import MethodContext
from methods.deepshift.convert import convert_to_shift, finalize
from methods.deepshift.export import ShiftExporter
from methods.deepshift.int8 import int8_deployable, int8_facts
from targets import Artifact, get_target

SHAPE = (3, 32, 32)


def shift_network(name: str, tmp: Path) -> tuple[nn.Module, nn.Module, object]:
    """(dense fp32 network, finalised shift network, its int8 deployable)."""
    torch.manual_seed(0)
    dense = build_model(name).eval()
    with torch.no_grad():
        for m in dense.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    shift = build_model(name).eval()
    shift.load_state_dict(dense.state_dict())
    converted = convert_to_shift(shift, SHAPE, mode="ps", weight_bits=5)
    finalize(shift)
    shift.eval()
    data = load_data("synthetic:512", input_size=32)
    ctx = MethodContext(model_name=name, model=shift, data=data, recipe=BASELINE_RECIPES["quick"], seed=0,
                        workdir=tmp, preset="quick", structure_only=False, log=lambda m: None)
    return dense, shift, int8_deployable(ctx, shift, SHAPE, converted, "ps", 5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet20,resnet56")
    ap.add_argument("--targets", default="ort-cpu,ov-cpu")
    ap.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cells", type=int, default=3)
    ap.add_argument("--offline-batch", type=int, default=SweepConfig.offline_batch)
    a = ap.parse_args()
    rules = PRESETS[a.preset]
    offline_batch = a.offline_batch
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in a.models.split(","):
            dense, shift, dep = shift_network(name, tmp)
            paths = {"fp32": export_onnx(dense, tmp / f"{name}-fp32.onnx", SHAPE),
                     "float shift": ShiftExporter(SHAPE)(shift, tmp / f"{name}-shift.onnx", SHAPE),
                     "int8": dep.export_onnx(shift, tmp / f"{name}-int8.onnx", SHAPE)}
            print(f"{name}: {dep.check_graph(paths['int8'])}", flush=True)
            for key in a.targets.split(","):
                target = get_target(key)
                for scenario, batch in (("SingleStream", 1), ("Offline", offline_batch)):
                    sessions = {v: target.compile(Artifact(f"{name}-{v}", SHAPE, onnx_path=p), batch=batch,
                                                  scenario=scenario, threads=a.threads)
                                for v, p in paths.items()}
                    print(f"  {key} {scenario} batch {batch}: int8 graph {int8_facts(key, sessions['int8'].graph_facts())}",
                          flush=True)
                    pool = [np.random.default_rng(i).standard_normal((batch, *SHAPE)).astype(np.float32)
                            for i in range(8)]
                    order = list(sessions)
                    ratios: dict[str, list[float]] = {v: [] for v in order[1:]}
                    for c in range(a.cells):
                        samples = measure_interleaved([sessions[v].timer() for v in order], pool, rules,
                                                      reference_every=1)
                        for v, s in zip(order[1:], samples[1:]):
                            ratios[v].append(ratio_summary(paired_ratios(samples[0], s))["ratio"])
                        print(f"    cell {c + 1}: fp32 p50 {statistics.median(samples[0].latencies_s) * 1e3:.3f} ms; "
                              + "; ".join(f"{v} {ratios[v][-1]:.2f}x" for v in order[1:]), flush=True)
                    for v in order[1:]:
                        summary.append((name, key, scenario, batch, v, statistics.median(ratios[v]), ratios[v]))
                    for s in sessions.values():
                        s.close()
    print(f"\nspeed-up over fp32 (median of {a.cells} cells' paired medians), {a.threads} threads, preset {a.preset}:")
    for name, key, scenario, batch, v, med, all_ in summary:
        print(f"  {name:9s} {key:8s} {scenario:12s} b{batch:<3d} {v:12s} {med:.2f}x  ({' '.join(f'{r:.2f}' for r in all_)})")


if __name__ == "__main__":
    main()
