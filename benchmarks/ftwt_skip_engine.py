"""FTWT real-skipping engine at batch 1 on torch eager: dense vs the previous engine vs the
current one, across kept fractions, interleaved in ONE process (for a shared, noisy machine).

    python benchmarks/ftwt_skip_engine.py [--out results/digits-ftwt]
        [--models resnet56,vgg16_bn] [--keeps 0.4,0.5,0.6,0.7,1.0] [--threads 2]
        [--inputs 32] [--rounds 5] [--old-rev 0d1b176]

Reads a sweep's artifacts (``none`` = the dense conv+BN+ReLU model, ``ftwt`` masked = the trained
FTWTNet) and its pool of real test inputs. For each target mean kept fraction (mean over layers
and samples of the predicted masks) it shifts every predictor bias by one delta (found by
bisection), measures the per-sample MACs reduction of that net (``measure_macs``, test pool),
builds the skipping net with the current ``methods.ftwt.skip`` and with the engine of git
revision ``--old-rev`` (loaded with ``git show``; left out if git cannot), checks both against
masked-dense (max |skip - masked| / max(1, max |masked|) over the timed inputs), and times dense / old / new per input, interleaved, ``--rounds`` times. It prints
p50 over all timings and dense p50 / skip p50. Keep 1.0 (bias +100: every filter selected) shows
the engine's cost at dense compute. A bias shift is an emulation: real predictors drop filters
unevenly across layers, and the top-1 column says how much accuracy the shift costs.
"""
from __future__ import annotations

import argparse
import copy
import glob
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from methods.ftwt import skip as new_skip  # noqa: E402
from methods.ftwt.cost import measure_macs  # noqa: E402


def _old_engine(rev: str):
    try:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:methods/ftwt/skip.py"],
                             check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "ftwt_skip_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("ftwt_skip_old", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _shifted(net, delta: float):
    net = copy.deepcopy(net)
    for u in net.units:
        u.predictor.bias.data += delta
    return net


@torch.no_grad()
def _kept(net, x) -> float:
    net.eval().set(record=True, collect=False, gating=True)
    try:
        net(x)
        return float(torch.stack([u.last["mask"].mean() for u in net.units]).mean())
    finally:
        net.set(record=False)
        for u in net.units:
            u.last = {}


def _delta_for(net, x, keep: float) -> float:
    if keep >= 1.0:
        return 100.0
    lo, hi = -5.0, 5.0
    for _ in range(16):
        mid = (lo + hi) / 2
        if _kept(_shifted(net, mid), x) > keep:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def _load(out: Path, model: str):
    import pandas as pd

    rows = pd.read_csv(out / "results.csv")
    rows = rows[(rows.model == model) & (rows.target == "torch-eager") & rows.artifact.notna()]

    def pick(method, variant):
        return torch.load(out / rows[(rows.method == method) & (rows.variant == variant)].artifact.iloc[0],
                          weights_only=False, map_location="cpu").eval()

    pool = np.load(sorted(glob.glob(str(out / "work" / f"{model}-*" / "pool.npy")))[0])
    return pick("none", "default"), pick("ftwt", "masked"), torch.from_numpy(pool)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "results" / "digits-ftwt"))
    ap.add_argument("--models", default="resnet56,vgg16_bn")
    ap.add_argument("--keeps", default="0.4,0.5,0.6,0.7,1.0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--inputs", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--old-rev", default="0d1b176", help="git revision of the previous engine")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    old = _old_engine(args.old_rev)
    nnpack = new_skip._NNPACK
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, inference_mode; "
          f"p50 ms over {args.inputs} inputs x {args.rounds} rounds, interleaved; ratio = dense p50 / p50")
    for model in args.models.split(","):
        dense, masked, pool = _load(Path(args.out), model)
        calib, xs = pool[:128], [pool[i:i + 1] for i in range(args.inputs)]
        for keep in (float(k) for k in args.keeps.split(",")):
            net = _shifted(masked, _delta_for(masked, calib, keep))
            red = 1.0 - float(measure_macs(net, pool).mean()) / net.spec.dense_macs()
            # "new-thnn": the current engine with NNPACK off (THNN for the large maps), to tell the
            # kernel's share of the gain from the op trimming, and to check NNPACK's own thread
            # pool at --threads 2 (it runs beside the OpenMP pool)
            engines = {"new": new_skip.build_skip(net), "new-thnn": new_skip.build_skip(net)}
            if old is not None:
                engines["old"] = old.build_skip(net)
            with torch.inference_mode():
                ref = net(pool[:args.inputs])
                top1 = float((ref.argmax(1) == dense(pool[:args.inputs]).argmax(1)).float().mean())
                scale = float(ref.abs().max())
                err = {}
                for k, m in engines.items():
                    new_skip._NNPACK = nnpack and k != "new-thnn"
                    err[k] = float((torch.cat([m(x) for x in xs]) - ref).abs().max()) / max(scale, 1.0)
                times = {k: [] for k in ["dense", *engines]}
                for _ in range(args.rounds):
                    for x in xs:
                        for k, m in [("dense", dense), *engines.items()]:
                            new_skip._NNPACK = nnpack and k != "new-thnn"
                            m(x)  # the same input once before timing it (allocator, caches)
                            t0 = time.perf_counter()
                            m(x)
                            times[k].append(time.perf_counter() - t0)
            new_skip._NNPACK = nnpack
            p50 = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
            cols = " | ".join(f"{k} {p50[k]:.2f} ms x{p50['dense'] / p50[k]:.2f} (rel err {err[k]:.0e})"
                              for k in engines)
            print(f"{model:9s} kept {keep:.2f} MACs reduction {red:6.1%} agree-with-dense {top1:4.0%} | "
                  f"dense {p50['dense']:.2f} ms | {cols}", flush=True)


if __name__ == "__main__":
    main()
