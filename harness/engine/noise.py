"""Is this timing trustworthy? What the machine was doing during a cell, and the rules that mark
a timing as suspect.

Read from ``/proc`` (Linux): the load average, and the CPU time that *other* processes took while
the cell was timing (the machine's busy time minus this process's own). On a shared 2-core
machine a second busy process halves what a 2-thread runtime gets, and the row would publish
that as the network's latency; so a cell that saw other work is re-timed after the machine
settles, and marked ``timing_ok=False`` with the reason if it never does.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class NoiseRules:
    """Thresholds for a suspect timing (all stated on every row that trips one).

    max_other_cpu: CPU time other processes took during timing, as a share of the machine's
        capacity (cores x wall time); 0.10 = a tenth of the machine.
    max_tail_ratio: p90 / p50 of the samples (a bimodal or preempted loop has a long tail).
    max_drift: how far the row's own block medians moved during the cell: (max - min) / median
        of the per-block p50s (the absolute latency is a mixture of machine states beyond it).
    max_ratio_se: the relative standard error of the row's speed-up (the median of its paired
        ratios against the dense reference, ``harness.timing.ratio_summary``); beyond it the
        speed-up is not published.
    tries: timings of a suspect cell before it is marked (1 = never re-time).
    settle_s: how long to wait, at most, for the machine to go quiet before a re-time.
    """

    max_other_cpu: float = 0.10
    max_tail_ratio: float = 1.5
    max_drift: float = 0.10
    max_ratio_se: float = 0.10
    tries: int = 3
    settle_s: float = 10.0


# Per-preset departures from the NoiseRules defaults. quick times each cell once: a re-time costs
# a whole timed loop again (measured: 43 of 58 quick cells took 3 tries, 65% of the sweep's wall
# time was timing, and 40 of them stayed suspect anyway). quick's blocks are 0.2 s (1 s in 5
# blocks): on the project's shared 2-vCPU machine, with nothing else running, the block medians of
# one ORT session spread 4-25% (median of runs ~10%), so quick accepts up to 30% drift, the
# precision its numbers are stated with; standard (2 s blocks) keeps 10%. Rows past it are marked.
PRESET_NOISE: dict[str, dict[str, Any]] = {"quick": {"tries": 1, "max_drift": 0.30, "max_ratio_se": 0.30}}


def preset_noise(preset: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The NoiseRules fields a sweep under ``preset`` uses: the preset's, then the user's."""
    return {**PRESET_NOISE.get(preset, {}), **(overrides or {})}


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU jiffies of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def _own_jiffies() -> int:
    """CPU jiffies this process (all its threads) and its waited-for children used."""
    t = os.times()
    return int(round((t.user + t.system + t.children_user + t.children_system) * _TICKS))


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


class MachineLoad:
    """Samples the machine around a timed region: ``start()``, then ``stop()`` -> facts."""

    def start(self) -> "MachineLoad":
        self._t0, self._busy0, self._own0 = time.perf_counter(), _busy_jiffies(), _own_jiffies()
        self._load0 = load_average()
        return self

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._t0
        busy1, own1 = _busy_jiffies(), _own_jiffies()
        out: dict[str, Any] = {"load_avg_1m": load_average(), "load_avg_1m_start": self._load0}
        if self._busy0 is None or busy1 is None or wall <= 0:
            out["other_cpu_share"] = None
            return out
        busy = busy1[0] - self._busy0[0]
        capacity = busy1[1] - self._busy0[1]  # all cores' jiffies over the region
        other = max(0, busy - (own1 - self._own0))
        out["other_cpu_share"] = other / capacity if capacity > 0 else None
        return out


def wait_for_quiet(rules: NoiseRules, window_s: float = 1.0) -> float:
    """Wait (at most ``rules.settle_s``) until other processes take less than
    ``rules.max_other_cpu`` of the machine over a ``window_s`` window; returns the seconds waited.
    The wait is between timed loops, never inside one (no sleeps between timed queries)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < rules.settle_s:
        probe = MachineLoad().start()
        time.sleep(window_s)
        share = probe.stop()["other_cpu_share"]
        if share is None or share < rules.max_other_cpu:
            break
    return time.perf_counter() - t0


def suspect_reasons(rules: NoiseRules, *, capped: bool, tail_ratio: float | None, drift: float | None,
                    other_cpu: float | None) -> list[str]:
    """Why a row's own latency is suspect (empty: it is not), each reason with its threshold."""
    reasons = []
    if capped:
        reasons.append("stopped by the cap before the minimums")
    if other_cpu is not None and other_cpu > rules.max_other_cpu:
        reasons.append(f"other processes took {100 * other_cpu:.0f}% of the CPUs (> {100 * rules.max_other_cpu:.0f}%)")
    if tail_ratio is not None and tail_ratio > rules.max_tail_ratio:
        reasons.append(f"p90/p50 {tail_ratio:.2f} > {rules.max_tail_ratio}")
    if drift is not None and drift > rules.max_drift:
        reasons.append(f"block medians drifted {100 * drift:.0f}% (> {100 * rules.max_drift:.0f}%)")
    return reasons


def ratio_reasons(rules: NoiseRules, *, capped: bool, other_cpu: float | None, se: float | None,
                  pairs: int) -> list[str]:
    """Why a row's speed-up against its interleaved dense reference is suspect (empty: it is not).

    Drift of the machine's speed does not count here: it moves the reference and the network
    together, and the paired ratios cancel it (``harness.timing.paired_ratios``); what counts is
    whether the pairs agree (the median's standard error), the cap (either side), and other
    processes (they take the CPUs unevenly, block by block)."""
    reasons = []
    if capped:
        reasons.append("the row or its reference stopped by the cap before the minimums")
    if other_cpu is not None and other_cpu > rules.max_other_cpu:
        reasons.append(f"other processes took {100 * other_cpu:.0f}% of the CPUs (> {100 * rules.max_other_cpu:.0f}%)")
    if pairs < 3:
        reasons.append(f"{pairs} block pairs with the reference (< 3)")
    elif se is not None and se > rules.max_ratio_se:
        reasons.append(f"speed-up standard error {100 * se:.0f}% (> {100 * rules.max_ratio_se:.0f}%)")
    return reasons


def rules_dict(rules: NoiseRules) -> dict[str, Any]:
    return asdict(rules)
