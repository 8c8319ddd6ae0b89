"""The timing engine against hand-computed values (no real clock: a fake one advances per call)."""
import math

import pytest

from harness.errors import UserError
from harness.timing import (PRESETS, HostTimer, Samples, TimingRules, measure, nearest_rank, per_input_spread,
                            summarize)


def test_nearest_rank_is_sorted_floor_n_p():
    values = list(range(1, 11))  # 1..10
    assert nearest_rank(values, 0.5) == 6  # sorted[floor(10*0.5)] = sorted[5]
    assert nearest_rank(values, 0.9) == 10  # sorted[9]
    assert nearest_rank(values, 0.99) == 10  # sorted[floor(9.9)] = sorted[9]
    assert nearest_rank([7.0], 0.5) == 7.0
    # not numpy's interpolation: for 1..4 numpy's median is 2.5, nearest rank gives sorted[2] = 3
    assert nearest_rank([1, 2, 3, 4], 0.5) == 3


def test_summarize_hand_computed():
    lat = [0.001 * v for v in range(1, 101)]  # 1..100 ms
    s = summarize(lat, batch=1, wall_s=sum(lat))
    assert s.n == 100
    assert s.p50_ms == pytest.approx(51.0)  # sorted[50]
    assert s.p90_ms == pytest.approx(91.0)  # sorted[90]
    assert s.p99_ms is None and "p99: insufficient samples (100 < 662)" in s.note
    assert s.mean_ms == pytest.approx(50.5)
    assert s.std_ms == pytest.approx(math.sqrt(sum((v - 50.5) ** 2 for v in range(1, 101)) / 99))
    assert (s.min_ms, s.max_ms) == (pytest.approx(1.0), pytest.approx(100.0))
    assert s.throughput == pytest.approx(100 / 5.05)


def test_sample_floors():
    s63 = summarize([0.001] * 63, batch=1, wall_s=0.063)
    assert s63.p90_ms is None and s63.p99_ms is None
    s64 = summarize([0.001] * 64, batch=1, wall_s=0.064)
    assert s64.p90_ms == pytest.approx(1.0) and s64.p99_ms is None
    s662 = summarize([0.001] * 662, batch=1, wall_s=0.662)
    assert s662.p99_ms == pytest.approx(1.0) and s662.note == ""


def test_offline_throughput_counts_samples_not_queries():
    s = summarize([0.01] * 10, batch=64, wall_s=0.1)
    assert s.throughput == pytest.approx(6400.0)


class FakeClock:
    """Each run advances time by a fixed step; reading the clock is free."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _timed(step_s, rules, pool=(0, 1, 2)):
    clock = FakeClock()
    calls = []

    def run(x):
        calls.append(x)
        clock.t += step_s

    samples = measure(HostTimer(run, clock=clock), list(pool), rules, clock=clock)
    return samples, calls


def test_stop_rule_needs_both_minimums():
    # 1 ms per run: 0.05 s takes 50 runs, more than min_n=10 -> time decides
    rules = TimingRules(warmup_min_s=0.02, warmup_min_n=10, min_s=0.05, min_n=10, max_s=10)
    samples, calls = _timed(0.001, rules)
    assert len(samples.latencies_s) == 50
    assert len(calls) == 20 + 50  # warm-up: max(10 runs, 20 ms) = 20 runs
    assert all(v == pytest.approx(0.001) for v in samples.latencies_s)
    # 10 ms per run: 0.05 s takes 5 runs, fewer than min_n=10 -> count decides
    samples, _ = _timed(0.010, rules)
    assert len(samples.latencies_s) == 10
    assert not samples.capped


def test_cap_stops_a_slow_cell_and_says_so():
    rules = TimingRules(warmup_min_s=0.0, warmup_min_n=1, min_s=1.0, min_n=1000, max_s=2.0)
    samples, _ = _timed(0.5, rules)
    assert len(samples.latencies_s) == 4  # 2 s cap / 0.5 s per run
    assert samples.capped


def test_pool_is_rotated_in_order():
    rules = TimingRules(warmup_min_s=0.0, warmup_min_n=0, min_s=0.0, min_n=7, max_s=10)
    samples, calls = _timed(0.001, rules, pool=("a", "b", "c"))
    assert calls == ["a", "b", "c", "a", "b", "c", "a"]
    assert samples.pool_index == [0, 1, 2, 0, 1, 2, 0]


def test_sync_runs_before_the_clock_is_read():
    clock = FakeClock()
    events = []

    def run(x):
        events.append("run")

    def sync():
        clock.t += 0.003  # the device finishes only at sync: the time must be counted
        events.append("sync")

    rules = TimingRules(0.0, 0, 0.0, 3, 10)
    samples = measure(HostTimer(run, sync, clock=clock), [0], rules, clock=clock)
    assert events[:2] == ["run", "sync"]
    assert samples.latencies_s == [pytest.approx(0.003)] * 3


def test_a_session_timer_replaces_the_host_clock():
    # a device or board timer reports its own latency per query; the engine records exactly that
    seen = []

    def board_timer(x):
        seen.append(x)
        return 0.25

    samples = measure(board_timer, ["a", "b"], TimingRules(0.0, 0, 0.0, 2, 10), clock=FakeClock())
    assert samples.latencies_s == [0.25, 0.25]
    assert seen == ["a", "b"]


def test_per_input_spread():
    s = Samples(latencies_s=[0.001, 0.003, 0.001, 0.003, 0.002], pool_index=[0, 1, 0, 1, 2], wall_s=1,
                capped=False)
    spread = per_input_spread(s)
    assert spread == {"input_p50_min_ms": pytest.approx(1.0), "input_p50_max_ms": pytest.approx(3.0)}


def test_presets_follow_measurement_md():
    assert (PRESETS["quick"].min_s, PRESETS["quick"].min_n) == (1.0, 50)
    assert (PRESETS["standard"].min_s, PRESETS["standard"].min_n) == (10.0, 100)
    assert PRESETS["publication"].min_s == 600.0
    for rules in PRESETS.values():
        assert rules.warmup_min_n >= 10 and rules.warmup_min_s >= 0.2


def test_rules_validated():
    with pytest.raises(UserError):
        TimingRules(0.0, 0, 5.0, 10, max_s=1.0)
