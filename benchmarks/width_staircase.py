"""The latency-vs-channel-count staircase per target (issue 15 item 5).

    flock /tmp/cpu.lock python benchmarks/width_staircase.py [--targets ort-cpu,ov-cpu] [--threads 2]
                                                            [--stages 1,2,3] [--cache DIR]

For each stage of a CIFAR ResNet (16 channels at 32x32, 32 at 16x16, 64 at 8x8), a BasicBlock
whose internal width (conv1's output, conv2's input: what filter-prune chooses) is every value
from 1 to the stage's width, timed as a latency-model probe (``harness.engine.latency_model``:
the block behind a 1x1-conv adapter, the adapter alone subtracted, every probe of a cell
interleaved with the calibration network; cells of 24 probes). Prints each width's latency and,
per step 4 / 8 / 16, how much faster a width that is no multiple of the step gets when rounded UP
to the next multiple (median and share of such widths where rounding up is faster), which is
what ``filter-prune:align=auto`` exploits. The measurements go into the target's latency table
(``--cache``, default a fresh folder). Run it alone (it times).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.engine import latency_model as lm  # noqa: E402
from harness.models.cifar_resnet import BasicBlock  # noqa: E402

STAGES = {1: (16, 32), 2: (32, 16), 3: (64, 8)}
IMAGE = (3, 32, 32)


def block(channels: int, width: int) -> nn.Module:
    b = BasicBlock(channels, channels)
    b.conv1 = nn.Conv2d(channels, width, 3, padding=1, bias=False)
    b.bn1 = nn.BatchNorm2d(width)
    b.conv2 = nn.Conv2d(width, channels, 3, padding=1, bias=False)
    return b.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="ort-cpu,ov-cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stages", default="1,2,3")
    ap.add_argument("--cache", type=Path)
    a = ap.parse_args()
    cache = a.cache or Path(tempfile.mkdtemp(prefix="width-staircase-"))
    stages = [int(s) for s in a.stages.split(",")]
    print(f"cache {cache}", flush=True)
    for target in a.targets.split(","):
        tm = lm.TargetModel(target, {}, a.threads, 1, "SingleStream", IMAGE, cache / "work", folder=cache)
        files, keys = [], {}
        for s in stages:
            c, hw = STAGES[s]
            shape = (c, hw, hw)
            ad = lm.adapter_key(shape)
            files.append(lm.export_probe(ad, f"adapter {shape}", lm.Probe(shape, None), IMAGE, cache / "probes"))
            for w in range(1, c + 1):
                key = lm.content_key(["staircase", s, w])
                keys[(s, w)] = (key, ad)
                files.append(lm.export_probe(key, f"stage {s} width {w}", lm.Probe(shape, block(c, w)), IMAGE,
                                             cache / "probes", onnx=tm.onnx))
        measured, calib, errors = lm.measure_probes(target, tm.options, a.threads, 1, "SingleStream", files, IMAGE,
                                                    cache / "work", log=print)
        lm.update_table(tm.key, lambda t: lm.merge_measured(t, measured, calib), cache)
        table = tm.table()
        for e in errors[:5]:
            print("  error:", e)
        print(f"\n{target}: block latency (ms, adapter subtracted) by internal width; calibration network "
              f"p50 {table.level_ms:.4f} ms")
        for s in stages:
            c, hw = STAGES[s]
            ms = {}
            for w in range(1, c + 1):
                key, ad = keys[(s, w)]
                u, d = table.unit_ms(key), table.unit_ms(ad)
                if u is not None and d is not None:
                    ms[w] = u - d
            print(f"  stage {s} ({c} channels at {hw}x{hw}):")
            row = [f"{w}:{ms[w] * 1e3:.0f}" for w in sorted(ms)]
            for i in range(0, len(row), 16):
                print("    " + "  ".join(row[i:i + 16]) + ("  (us)" if i == 0 else ""))
            for step in (4, 8, 16):
                gains = [ms[w] / ms[-(-w // step) * step] for w in ms if w % step and -(-w // step) * step in ms]
                if gains:
                    print(f"    rounding up to a multiple of {step:>2}: {100 * np.mean([g > 1 for g in gains]):3.0f}% of "
                          f"{len(gains)} widths get faster, median {np.median(gains):.2f}x, max {max(gains):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
