"""How steady is this machine? One ONNX Runtime session timed in back-to-back blocks for minutes.

    python benchmarks/machine_drift.py [--model resnet20] [--minutes 3] [--block-s 2] [--threads 2]

A sweep's cell times its networks in alternating blocks (standard preset: 5 blocks of 2 s each,
per network) and marks a row suspect when the block medians of the row or of its dense reference
spread more than 10% ((max - min) / median; ``harness.engine.noise``). With k networks in a cell,
a network's 5 blocks are k x 2 s apart. This times ONE network, nothing else, in consecutive
blocks and prints the drift the rule would see for a network whose blocks are ``stride`` blocks
apart (stride 1: a cell of one network; 13: a cell of 12 networks and the dense reference), over
every such window in the run: if the machine alone drifts past 10%, a long cell's rows are marked
whatever the harness does, and the time-of-day (or neighbour) noise is the machine's, not ours.
Run it alone (it times).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.export import export_onnx
from harness.models import build_model
from targets.ort_cpu import _session_options


def drifts(medians: list[float], stride: int, blocks: int = 5) -> list[float]:
    """(max - min) / median of every window of ``blocks`` block medians ``stride`` apart."""
    out = []
    for start in range(len(medians) - stride * (blocks - 1)):
        w = medians[start::stride][:blocks]
        out.append((max(w) - min(w)) / statistics.median(w))
    return out


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--block-s", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.manual_seed(0)
    net = build_model(a.model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_onnx(net, path, (3, 32, 32))
        sess = ort.InferenceSession(str(path), _session_options(ort, "ORT_ENABLE_ALL", a.threads),
                                    providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    pool = [np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32) for i in range(16)]
    for x in pool * 20:  # warm-up
        sess.run(None, {name: x})
    medians, t_end, i = [], time.perf_counter() + 60 * a.minutes, 0
    while time.perf_counter() < t_end:
        lat, t0 = [], time.perf_counter()
        while time.perf_counter() - t0 < a.block_s:
            s = time.perf_counter()
            sess.run(None, {name: pool[i % len(pool)]})
            lat.append(time.perf_counter() - s)
            i += 1
        medians.append(statistics.median(lat) * 1e3)
    print(f"{a.model} on ort-cpu, {a.threads} threads, batch 1: {len(medians)} blocks of {a.block_s:g} s")
    print("block p50 (ms): " + " ".join(f"{m:.3f}" for m in medians))
    print(f"overall: min {min(medians):.3f}, median {statistics.median(medians):.3f}, max {max(medians):.3f} ms")
    for stride in (1, 3, 13):
        d = drifts(medians, stride)
        if d:
            print(f"5 blocks {stride} apart ({stride * a.block_s:g} s): drift median {100 * statistics.median(d):.0f}%, "
                  f"max {100 * max(d):.0f}%, windows over 10%: {sum(x > 0.10 for x in d)} of {len(d)}")


if __name__ == "__main__":
    main()
