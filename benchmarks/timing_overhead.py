"""How much does the harness's timing engine add to a measured latency?

Times the same ONNX Runtime session two ways, interleaved A B A B ... in one process so machine
noise hits both alike: (A) ``harness.timing.measure`` through the ``ort-cpu`` target's Session,
(B) a bare ``perf_counter`` loop around ``InferenceSession.run`` on the same inputs. Prints the
median latency of each round and the ratio A/B per round; a ratio near 1.00 means the engine's
own overhead is negligible against the runtime call.

    python benchmarks/timing_overhead.py [--model resnet20] [--rounds 7] [--queries 300]
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
from harness.models import build_model, model_spec
from harness.timing import TimingRules, measure, nearest_rank
from targets import Artifact, get_target


def bare_loop(sess, pool: list[np.ndarray], n: int) -> list[float]:
    lat = []
    for i in range(n):
        x = pool[i % len(pool)]
        t0 = time.perf_counter()
        sess.run(None, {"input": x})
        lat.append(time.perf_counter() - t0)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    spec = model_spec(args.model)
    shape = (3, spec.input_size, spec.input_size)
    torch.manual_seed(0)
    model = build_model(args.model).eval()
    rng = np.random.default_rng(0)
    pool = [rng.standard_normal((1, *shape), dtype=np.float32) for _ in range(64)]
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "m.onnx", shape)
        session = get_target("ort-cpu").compile(Artifact(args.model, shape, onnx_path=path), batch=1,
                                                 scenario="SingleStream", threads=args.threads)
        bare_sess = session.session  # the very InferenceSession the target built: same runtime call
        rules = TimingRules(warmup_min_s=0.0, warmup_min_n=0, min_s=0.0, min_n=args.queries,
                            max_s=600.0, max_n=args.queries)
        bare_loop(bare_sess, pool, 50)  # warm both paths once before the first pair
        measure(session.run, pool, TimingRules(0.2, 10, 0.0, 0, 1.0))
        print(f"{args.model}, ort-cpu, {args.threads} thread(s), {args.queries} queries per round")
        print("round  harness_p50_ms  bare_p50_ms  ratio")
        ratios = []
        for r in range(args.rounds):
            a = sorted(measure(session.run, pool, rules).latencies_s)
            b = sorted(bare_loop(bare_sess, pool, args.queries))
            pa, pb = nearest_rank(a, 0.5) * 1e3, nearest_rank(b, 0.5) * 1e3
            ratios.append(pa / pb)
            print(f"{r:5d}  {pa:14.4f}  {pb:11.4f}  {pa / pb:5.3f}")
        print(f"median ratio harness/bare: {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
