"""Noise on purpose: a busy process beside a cell must get the timing re-measured or marked,
never published as a clean number; and the rules that mark a timing suspect."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest

from harness.engine.cell import CellSpec, run_cell
from harness.engine.noise import MachineLoad, NoiseRules, suspect_reasons
from harness.export import export_onnx
from harness.timing import HostTimer, TimingRules, measure_interleaved


def test_suspect_reasons_name_their_thresholds():
    rules = NoiseRules()
    assert suspect_reasons(rules, capped=False, tail_ratio=1.1, drift=0.02, other_cpu=0.01) == []
    reasons = suspect_reasons(rules, capped=True, tail_ratio=2.0, drift=0.5, other_cpu=0.5, ref_drift=0.3)
    assert len(reasons) == 5 and any("(> 10%)" in r for r in reasons) and any("> 1.5" in r for r in reasons)


def test_interleaved_blocks_alternate_and_meet_both_minimums():
    order = []
    timers = [lambda x, n=n: order.append(n) or 0.001 for n in ("ref", "a", "b")]
    rules = TimingRules(warmup_min_s=0.0, warmup_min_n=1, min_s=0.0, min_n=10, max_s=10)
    out = measure_interleaved(timers, [0, 1], rules, blocks=5)
    assert [len(s.latencies_s) for s in out] == [10, 10, 10] and not any(s.capped for s in out)
    timed = order[3:]  # after one warm-up query each
    assert timed[:6] == ["ref", "ref", "a", "a", "b", "b"]  # blocks of ceil(10 / 5) = 2, in turn
    assert out[0].block_medians_ms() == [1.0] * 5


def _spin(seconds: float) -> subprocess.Popen:
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def test_machine_load_sees_another_busy_process():
    busy = [_spin(3.0) for _ in range(2)]
    try:
        probe = MachineLoad().start()
        import time
        time.sleep(1.0)
        facts = probe.stop()
    finally:
        for p in busy:
            p.kill()
    assert facts["other_cpu_share"] > 0.3  # two spinning processes on this machine's cores


@pytest.mark.slow
def test_a_cell_beside_a_busy_process_is_retimed_or_marked(tmp_path):
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    net(torch.zeros(1, 3, 8, 8))
    path = export_onnx(net.eval(), tmp_path / "n.onnx", (3, 8, 8))
    np.save(tmp_path / "pool.npy", np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32))
    art = {"name": "n", "input_shape": [3, 8, 8], "onnx_path": str(path), "torch_path": None}
    rules = TimingRules(warmup_min_s=0.05, warmup_min_n=5, min_s=0.5, min_n=50, max_s=10)
    spec = CellSpec(target="ort-cpu", scenario="SingleStream", batch=1, threads=2, rules=asdict(rules),
                    pool_path=str(tmp_path / "pool.npy"), items=[{"key": "cand", "artifact": art}], reference=art,
                    noise={"tries": 2, "settle_s": 0.5})
    busy = [_spin(60.0) for _ in range(2)]  # outlives every try and every settle wait
    try:
        row = run_cell(spec)["items"][0]
    finally:
        for p in busy:
            p.kill()
    assert row["status"] == "ok" and row["other_cpu_share"] > NoiseRules().max_other_cpu
    assert row["timing_tries"] == 2  # re-timed after waiting for the machine to settle ...
    assert row["timing_ok"] is False and "other processes took" in row["timing_suspect"]  # ... then marked
    assert row["ref_p50_ms"] > 0 and row["speedup_interleaved"] > 0


def test_busy_vs_quiet_verdicts():
    """benchmarks/busy_vs_quiet.py: a clean busy ratio far from the quiet one is a violation;
    a marked, re-measured or close one is not; a marked quiet row has nothing to compare with."""
    import importlib.util
    from pathlib import Path

    import pandas as pd

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "busy_vs_quiet.py"
    spec = importlib.util.spec_from_file_location("busy_vs_quiet", path)
    bq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bq)

    def frame(speedups, ok, tries):
        keys = ["dense", "close", "far", "marked", "retried", "quiet-bad"]
        return pd.DataFrame({"model": "m", "method": ["none"] + ["x"] * 5, "budget": keys, "variant": "default",
                             "target": "ort-cpu", "scenario": "SingleStream", "status": "ok",
                             "speedup": speedups, "timing_ok": ok, "timing_tries": tries,
                             "other_cpu_share": 0.0, "timing_suspect": ""}, index=keys)

    quiet = frame([1.0, 2.0, 2.0, 2.0, 2.0, 2.0], [True] * 5 + [False], [1] * 6)
    busy = frame([1.0, 2.4, 3.0, np.nan, 2.1, 2.0], [True, True, True, False, True, True], [1, 1, 1, 3, 2, 1])
    verdicts = bq.classify(quiet, busy, 0.3)["verdict"].to_dict()
    assert verdicts == {"close": "within", "far": "VIOLATION", "marked": "marked", "retried": "re-measured",
                        "quiet-bad": "quiet row marked"}
