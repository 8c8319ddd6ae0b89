"""Noise on purpose: a busy process beside a cell must get the timing re-measured or marked,
never published as a clean number; and the rules that mark a timing suspect."""
from __future__ import annotations

import itertools
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest

from harness.engine.cell import CellSpec, run_cell
from harness.engine.noise import MachineLoad, NoiseRules, ratio_reasons, suspect_reasons
from harness.export import export_onnx
from harness.timing import (HostTimer, TimingRules, measure_interleaved, paired_ratios, ratio_summary,
                            round_order, summarize)


def test_suspect_reasons_name_their_thresholds():
    rules = NoiseRules()
    assert suspect_reasons(rules, capped=False, tail_ratio=1.1, drift=0.02, other_cpu=0.01) == []
    reasons = suspect_reasons(rules, capped=True, tail_ratio=2.0, drift=0.5, other_cpu=0.5)
    assert len(reasons) == 4 and any("(> 10%)" in r for r in reasons) and any("> 1.5" in r for r in reasons)
    assert ratio_reasons(rules, capped=False, other_cpu=0.01, se=0.05, pairs=5) == []
    assert ratio_reasons(rules, capped=False, other_cpu=0.0, se=0.3, pairs=5) == ["speed-up standard error 30% (> 10%)"]
    assert len(ratio_reasons(rules, capped=True, other_cpu=0.5, se=None, pairs=2)) == 3


def _machine_that_flips(slow_until: int, factor: float = 1.45):
    """Timers whose latency is ``base`` x the machine's speed: slow for the first
    ``slow_until`` queries of the run (all sessions together), then fast."""
    count = [0]

    def timer(base: float):
        def run(x):
            count[0] += 1
            return base * (factor if count[0] <= slow_until else 1.0)
        return run
    return timer


def test_round_order_puts_a_reference_block_every_few_networks():
    assert round_order(4, None) == [0, 1, 2, 3]
    assert round_order(7, 3) == [0, 1, 2, 3, 0, 4, 5, 6]
    assert round_order(6, 2) == [0, 1, 2, 0, 3, 4, 0, 5]
    assert round_order(1, 3) == [0]


def test_paired_ratios_cancel_a_change_of_machine_speed_that_pooled_p50s_do_not():
    # reference 1 ms, two networks 0.5 ms (true speed-up 2.0); blocks of 10 queries, 3 sessions;
    # the machine is 1.45x slower for the first 70 queries: 3 of the reference's 5 blocks, 2 of
    # each network's, so the pooled p50s compare a slow reference with fast networks
    rules = TimingRules(warmup_min_s=0.0, warmup_min_n=0, min_s=0.0, min_n=50, max_s=1e9)
    timer = _machine_that_flips(70)
    ref, a, b = measure_interleaved([timer(1e-3), timer(0.5e-3), timer(0.5e-3)], [0], rules)
    pooled = summarize(ref.latencies_s, batch=1, wall_s=1).p50_ms / summarize(a.latencies_s, batch=1, wall_s=1).p50_ms
    assert pooled == pytest.approx(2.9)  # what the cell published before pairing: 45% off
    for samples in (a, b):
        paired = ratio_summary(paired_ratios(ref, samples))
        assert paired["ratio"] == pytest.approx(2.0) and paired["ratio_pairs"] == 5 and paired["ratio_se"] < 0.01


def test_reference_blocks_bracket_every_network_block():
    order = []
    timers = [lambda x, n=n: order.append(n) or 0.001 for n in ("ref", "a", "b", "c")]
    rules = TimingRules(warmup_min_s=0.0, warmup_min_n=0, min_s=0.0, min_n=5, max_s=10)
    out = measure_interleaved(timers, [0], rules, blocks=5, reference_every=2)
    runs = [name for name, _ in itertools.groupby(order)]  # one entry per block
    assert runs[:6] == ["ref", "a", "b", "ref", "c", "ref"] and runs[-1] == "ref"  # the closing block
    assert len(out[0].block_medians_ms()) == 5 * 2 + 1 and all(len(s.block_medians_ms()) == 5 for s in out[1:])
    ref_seqs = set(out[0].block_index)
    for s in out[1:]:  # every block of a network has a reference block before and after it
        assert all(min(ref_seqs) < b < max(ref_seqs) for b in s.block_index)


def test_interleaved_blocks_alternate_and_meet_both_minimums():
    order = []
    timers = [lambda x, n=n: order.append(n) or 0.001 for n in ("ref", "a", "b")]
    rules = TimingRules(warmup_min_s=0.0, warmup_min_n=1, min_s=0.0, min_n=30, max_s=10)
    out = measure_interleaved(timers, [0, 1], rules, blocks=5)
    assert [len(s.latencies_s) for s in out] == [30, 30, 30] and not any(s.capped for s in out)
    timed = order[3:]  # after one warm-up query each
    assert timed[:18] == ["ref"] * 6 + ["a"] * 6 + ["b"] * 6  # blocks of ceil(30 / 5) = 6, in turn
    short = measure_interleaved(timers, [0, 1], TimingRules(0.0, 1, 0.0, 10, 10), blocks=5)
    assert [len(s.latencies_s) for s in short] == [25, 25, 25]  # 5 blocks of MIN_BLOCK_N = 5
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
    assert row["ratio_ok"] is False and "other processes took" in row["ratio_suspect"]  # its speed-up too
    assert row["ref_p50_ms"] > 0 and row["speedup_interleaved"] > 0 and row["ratio_pairs"] >= 5


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
