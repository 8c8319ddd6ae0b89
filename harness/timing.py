"""The one timing engine every target is measured with (measurement.md).

Targets compile and run; this module owns warm-up, the stop rule, synchronisation and the
statistics, as MLPerf LoadGen owns timing rather than the system under test.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from harness.errors import UserError

PERCENTILE_RULE = "nearest rank: sorted[floor(n*p)]"
# LoadGen's early-stopping minimums: below these a tail percentile is not a number.
SAMPLE_FLOORS = {"p90": 64, "p99": 662}


@dataclass(frozen=True)
class TimingRules:
    """Warm-up by time and count; stop when both minimums are met; a cap so no cell stalls a sweep."""

    warmup_min_s: float
    warmup_min_n: int
    min_s: float
    min_n: int
    max_s: float
    max_n: int = 10_000_000

    def __post_init__(self) -> None:
        if min(self.warmup_min_s, self.min_s) < 0 or min(self.warmup_min_n, self.min_n) < 0:
            raise UserError("timing rules must be non-negative")
        if self.max_s < self.min_s or self.max_n < self.min_n:
            raise UserError("timing cap (max_s/max_n) must not be below the minimums")


# quick: >=1 s and >=50; standard: >=10 s and >=100 (LoadGen's library default);
# publication: >=600 s (MLPerf's submission rule) and 1024 queries (MLPerf SingleStream minimum).
# Warm-up: >=10 runs and >=200 ms (optimum-benchmark's count, trtexec's time).
PRESETS: dict[str, TimingRules] = {
    "quick": TimingRules(0.2, 10, 1.0, 50, 20.0),
    "standard": TimingRules(0.2, 10, 10.0, 100, 60.0),
    "publication": TimingRules(2.0, 10, 600.0, 1024, 1200.0),
}


def nearest_rank(sorted_values: Sequence[float], p: float) -> float:
    """Percentile ``p`` (0..1) by nearest rank, sorted[floor(n*p)], as LoadGen does."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("no samples")
    return float(sorted_values[min(n - 1, math.floor(n * p))])


@dataclass
class LatencyStats:
    """Statistics of one timed loop, in milliseconds; a tail percentile is None below its floor."""

    n: int
    p50_ms: float
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput: float  # samples per second over the timed loop's wall time
    wall_s: float
    note: str = ""

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def summarize(latencies_s: Sequence[float], *, batch: int, wall_s: float, note: str = "") -> LatencyStats:
    """Statistics of per-query latencies (seconds) for queries of ``batch`` samples."""
    values = sorted(v * 1e3 for v in latencies_s)
    n = len(values)
    arr = np.asarray(values)
    notes = [note] if note else []
    tails = {}
    for name, p in (("p90", 0.90), ("p99", 0.99)):
        if n >= SAMPLE_FLOORS[name]:
            tails[name] = nearest_rank(values, p)
        else:
            tails[name] = None
            notes.append(f"{name}: insufficient samples ({n} < {SAMPLE_FLOORS[name]})")
    return LatencyStats(
        n=n, p50_ms=nearest_rank(values, 0.5), p90_ms=tails["p90"], p99_ms=tails["p99"],
        mean_ms=float(arr.mean()), std_ms=float(arr.std(ddof=1)) if n > 1 else 0.0,
        min_ms=values[0], max_ms=values[-1],
        throughput=batch * n / wall_s if wall_s > 0 else float("nan"), wall_s=wall_s,
        note="; ".join(notes),
    )


@dataclass
class Samples:
    """Raw result of a timed loop: per-query latency and which pool entry each query used."""

    latencies_s: list[float]
    pool_index: list[int]
    wall_s: float
    capped: bool
    block_index: list[int] = field(default_factory=list)  # interleaved loops: the sequence number of each sample's block

    def block_medians_ms(self) -> list[float]:
        """The p50 of each block (interleaved loops), in ms, in the order the blocks ran."""
        return [v * 1e3 for _, v in sorted(_blocks_by_seq(self).items())]


def _run_until(fn: Callable[[int], float], min_s: float, min_n: int, max_s: float, max_n: int,
               clock: Callable[[], float]) -> Samples:
    lat: list[float] = []
    idx: list[int] = []
    start = clock()
    i = 0
    while True:
        elapsed = clock() - start
        if (elapsed >= min_s and i >= min_n) or elapsed >= max_s or i >= max_n:
            break
        lat.append(fn(i))
        idx.append(i)
        i += 1
    capped = i < min_n or (clock() - start) < min_s
    return Samples(lat, idx, clock() - start, capped)


class Timer(Protocol):
    """Times ONE query: runs it on input ``x`` and returns its latency in seconds.

    The engine owns warm-up, the stop rule and the statistics and calls a session's timer once
    per query; the timer owns only what one query's latency means on its device (the host clock
    after a synchronize, CUDA events, a remote board's own clock)."""

    def __call__(self, x: Any) -> float: ...


class HostTimer:
    """The host clock around one ``run(x)`` and ``sync()`` (CPU targets; ``sync`` makes an
    asynchronous device finish before the clock is read)."""

    def __init__(self, run: Callable[[Any], Any], sync: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.run, self.sync, self.clock = run, sync or (lambda: None), clock

    def __call__(self, x: Any) -> float:
        t0 = self.clock()
        self.run(x)
        self.sync()
        return self.clock() - t0


class CudaEventTimer:
    """Device time of one ``run(x)`` from CUDA events recorded around it on ``stream`` (the
    current stream when None); waits for the end event, not the whole device."""

    def __init__(self, run: Callable[[Any], Any], stream: Any | None = None):
        import torch  # only GPU sessions build this timer

        self.run, self._stream = run, stream
        self._begin = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def __call__(self, x: Any) -> float:
        self._begin.record(self._stream)
        self.run(x)
        self._end.record(self._stream)
        self._end.synchronize()
        return self._begin.elapsed_time(self._end) / 1000.0


def measure(timer: Callable[[Any], float], pool: Sequence[Any], rules: TimingRules, *,
            clock: Callable[[], float] = time.perf_counter) -> Samples:
    """Warm up, then time queries on pool entries rotated in order until the stop rule holds.

    ``timer(x)`` runs one query and returns its latency (a ``Timer``; a session's ``timer()``).
    Each query is timed alone (SingleStream semantics: the next query starts only when the
    previous one finished); ``clock`` only decides when the minimums and the cap are reached.
    No sleeps between iterations: idle clocks ramp down (ORT #17711).
    """
    if not pool:
        raise ValueError("empty input pool")
    k = len(pool)

    def one(i: int) -> float:
        return timer(pool[i % k])

    _run_until(one, rules.warmup_min_s, rules.warmup_min_n, max(rules.max_s, rules.warmup_min_s),
               rules.max_n, clock)
    samples = _run_until(one, rules.min_s, rules.min_n, rules.max_s, rules.max_n, clock)
    samples.pool_index = [i % k for i in samples.pool_index]
    return samples


# A block's median is paired with the reference's (``paired_ratios``): below 5 queries a block's
# median is its slowest query or close to it (the first query after a switch of session runs on
# cold caches; measured with 2-query blocks: a dense network against itself read 0.14x).
MIN_BLOCK_N = 5


def round_order(sessions: int, reference_every: int | None) -> list[int]:
    """The sessions' blocks in one round: 0, 1, ..., n-1; or, with a reference (session 0) every
    ``reference_every`` networks, 0, 1..m, 0, m+1..2m, 0, ... so that no network's block is more
    than ``reference_every`` blocks away from a reference block."""
    if reference_every is None or sessions <= 1:
        return list(range(sessions))
    order: list[int] = []
    for start in range(1, sessions, reference_every):
        order += [0, *range(start, min(sessions, start + reference_every))]
    return order


def measure_interleaved(timers: Sequence[Callable[[Any], float]], pool: Sequence[Any], rules: TimingRules, *,
                        blocks: int = 5, reference_every: int | None = None,
                        clock: Callable[[], float] = time.perf_counter) -> list[Samples]:
    """Time several sessions in alternating blocks (A B C A B C ...) so that each sees the same
    machine: a ratio of their p50s compares measurements taken side by side, not minutes apart.

    Every session is warmed up first (the rules' warm-up, each). Then rounds: in each round every
    session runs one block of at least ``min_s / blocks`` seconds and ``min_n / blocks`` queries
    (and ``MIN_BLOCK_N``) (``round_order``: with ``reference_every`` set, session 0 is a reference that also runs a
    block after every ``reference_every`` others, and one closing block after the last round, so
    every other block has a reference block on each side; see ``paired_ratios``).
    Rounds go on until every session has met both minimums (so at least ``blocks`` rounds), or
    until a session reaches the cap; a session's ``capped`` says whether it met its minimums.
    Each sample carries the sequence number of its block in the whole run (``block_index``).
    """
    if not pool:
        raise ValueError("empty input pool")
    k = len(pool)
    for timer in timers:
        _run_until(lambda i, t=timer: t(pool[i % k]), rules.warmup_min_s, rules.warmup_min_n,
                   max(rules.max_s, rules.warmup_min_s), rules.max_n, clock)
    block_s, block_n = rules.min_s / blocks, max(MIN_BLOCK_N, math.ceil(rules.min_n / blocks))
    out = [Samples([], [], 0.0, False) for _ in timers]
    cursor = [0] * len(timers)  # each session rotates through the pool on its own
    seq = 0  # the block's number in the whole run

    def run_block(j: int) -> None:
        nonlocal seq
        samples, t0, n = out[j], clock(), 0
        while (clock() - t0 < block_s or n < block_n) and samples.wall_s + (clock() - t0) < rules.max_s:
            i = cursor[j]
            samples.latencies_s.append(timers[j](pool[i % k]))
            samples.pool_index.append(i % k)
            samples.block_index.append(seq)
            cursor[j] += 1
            n += 1
        samples.wall_s += clock() - t0
        seq += 1

    order = round_order(len(timers), reference_every)
    rounds = 0
    while True:
        done = all(s.wall_s >= rules.min_s and len(s.latencies_s) >= rules.min_n for s in out)
        cap = any(s.wall_s >= rules.max_s or len(s.latencies_s) >= rules.max_n for s in out)
        if (done and rounds >= blocks) or cap:
            break
        for j in order:
            run_block(j)
        rounds += 1
    if reference_every is not None and len(timers) > 1 and out[0].wall_s < rules.max_s:
        run_block(0)  # the closing reference block: the last round's networks have one after them
    for s in out:
        s.capped = len(s.latencies_s) < rules.min_n or s.wall_s < rules.min_s
    return out


def _blocks_by_seq(samples: Samples) -> dict[int, float]:
    blocks: dict[int, list[float]] = {}
    for b, v in zip(samples.block_index, samples.latencies_s):
        blocks.setdefault(b, []).append(v)
    return {b: nearest_rank(sorted(v), 0.5) for b, v in blocks.items()}


def paired_ratios(reference: Samples, samples: Samples) -> list[float]:
    """reference p50 / p50, one per block of ``samples``: each block against the geometric mean
    of the nearest reference block before it and the nearest after it (the one before alone
    when none follows), from one ``measure_interleaved`` run.

    Why pairs: on a shared machine the speed of the whole machine moves by itself (measured on
    the project's 2 vCPUs: block medians of ONE session flip between two levels 1.45x apart,
    every few seconds to a minute; ``benchmarks/machine_drift.py``). A ratio of two p50s pooled
    over a cell mixes those levels in different proportions for the two networks; a ratio of
    blocks a few seconds apart sees one level, and their median ignores the pairs a flip split
    (``benchmarks/paired_ratio.py`` measures both estimators on identical networks).
    """
    ref = _blocks_by_seq(reference)
    if not ref:
        return []
    ref_seqs = sorted(ref)
    out = []
    for seq, p50 in sorted(_blocks_by_seq(samples).items()):
        before = [r for r in ref_seqs if r < seq]
        after = [r for r in ref_seqs if r > seq]
        if not before and not after:
            continue
        if before and after:
            level = math.sqrt(ref[before[-1]] * ref[after[0]])
        else:
            level = ref[before[-1]] if before else ref[after[0]]
        if p50 > 0:
            out.append(level / p50)
    return out


def ratio_summary(ratios: Sequence[float]) -> dict[str, float | int | None]:
    """The median of paired ratios and its relative standard error, estimated from their
    interquartile range (nearest rank): 1.2533 x (IQR / 1.349) / sqrt(n) / median, the normal
    approximation of a median's standard error with sigma from the IQR, so that one pair split by
    a change of machine speed does not inflate it."""
    if not ratios:
        return {"ratio": None, "ratio_se": None, "ratio_pairs": 0}
    values = sorted(ratios)
    mid = float(np.median(values))
    iqr = nearest_rank(values, 0.75) - nearest_rank(values, 0.25)
    se = 1.2533 * (iqr / 1.349) / math.sqrt(len(values)) / mid if mid > 0 else None
    return {"ratio": mid, "ratio_se": se, "ratio_pairs": len(values)}


def per_input_spread(samples: Samples) -> dict[str, float | None]:
    """Spread of latency across inputs: min and max over pool entries of each entry's median.

    Only meaningful when each query is one sample (SingleStream); for dynamic networks the cost
    depends on the input, so this shows how far apart the cheapest and dearest inputs are.
    """
    by_input: dict[int, list[float]] = {}
    for i, v in zip(samples.pool_index, samples.latencies_s):
        by_input.setdefault(i, []).append(v)
    medians = sorted(nearest_rank(sorted(v), 0.5) * 1e3 for v in by_input.values())
    if len(medians) < 2:
        return {"input_p50_min_ms": None, "input_p50_max_ms": None}
    return {"input_p50_min_ms": medians[0], "input_p50_max_ms": medians[-1]}
