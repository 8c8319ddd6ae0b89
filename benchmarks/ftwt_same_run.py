"""Dense vs real-skipping vs masked-dense latency at batch 1, interleaved in ONE process.

    python benchmarks/ftwt_same_run.py SWEEP_OUT_DIR MODEL [--threads 2]

Reads the artifacts a sweep wrote (``none`` default, ``ftwt`` default, skip-all and masked; the first of
each if several budgets were swept, or ``--tag`` to pick one) and the pool of real test inputs, then
times each model per input in interleaved rounds: torch eager (inference_mode) and ONNX Runtime
(ORT_ENABLE_ALL). It prints the median over inputs and the dense/model ratio. This is for a shared
machine, where rows measured minutes apart are not comparable.
"""
from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import numpy as np
import torch


def _time(fn, xs, reps: int = 3) -> float:
    per_input = []
    for x in xs:
        fn(x)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(x)
            ts.append(time.perf_counter() - t0)
        per_input.append(min(ts))
    return float(np.median(per_input) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", default=None,
                    help="the ftwt row's budget text as in results.csv, e.g. '0.8,decoupled,max,0.5' "
                         "(default: the first ftwt budget of MODEL)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--inputs", type=int, default=64)
    args = ap.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    import pandas as pd

    rows = pd.read_csv(Path(args.out) / "results.csv")
    rows = rows[(rows.model == args.model) & (rows.target == "torch-eager") & rows.artifact.notna()]
    budget = args.budget or str(rows[rows.method == "ftwt"].budget.iloc[0])

    def pick(method: str, variant: str) -> str:
        sel = rows[(rows.method == method) & (rows.variant == variant)]
        if method == "ftwt":
            sel = sel[sel.budget.astype(str) == budget]
        return str(Path(args.out) / str(sel.artifact.iloc[0]))[:-3]  # drop ".pt"

    print(f"{args.model}, ftwt budget {budget}")
    files = {"dense": pick("none", "default"), "skip": pick("ftwt", "default"),
             "masked": pick("ftwt", "masked")}
    if ((rows.method == "ftwt") & (rows.variant == "skip-all")).any():
        files["skip-all"] = pick("ftwt", "skip-all")  # the engine with every filter selected
    pool = sorted(glob.glob(str(Path(args.out) / "artifacts" / "data" / f"{args.model}-*" / "pool.npy")) +
                  glob.glob(str(Path(args.out) / "work" / f"{args.model}-*" / "pool.npy")))[0]  # before: work/
    xs = [np.ascontiguousarray(x[None]) for x in np.load(pool)[: args.inputs]]
    runners = {}
    for name, stem in files.items():
        model = torch.load(stem + ".pt", weights_only=False).eval()

        def eager(x, m=model):
            with torch.inference_mode():
                return m(torch.from_numpy(x)).numpy()
        runners[f"torch-eager {name}"] = eager
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
        sess = ort.InferenceSession(stem + ".onnx", so, providers=["CPUExecutionProvider"])
        runners[f"ort-cpu {name}"] = lambda x, s=sess: s.run(None, {"input": x})[0]
    results: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.rounds):
        for k, fn in runners.items():
            results[k].append(_time(fn, xs))
    med = {k: float(np.median(v)) for k, v in results.items()}
    for target in ("torch-eager", "ort-cpu"):
        d = med[f"{target} dense"]
        for name in files:
            m = med[f"{target} {name}"]
            print(f"{target:<12} {name:<8} p50 {m:8.3f} ms   dense/this {d / m:5.2f}x")


if __name__ == "__main__":
    main()
