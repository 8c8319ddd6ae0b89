"""One measurement cell, run in its own process: compile on a target, measure accuracy and
parity from the target's own outputs, time it with the harness's timing engine.

A cell measures the deployables of compressed networks on one target and scenario, timed
interleaved with the model's dense reference in the same process; each speed-up is the median of
per-block ratios against the reference blocks around each block (measurement.md: "report the
ratio per pair"), so a change of the machine's own speed cancels; a suspect latency or speed-up
(other processes busy, a long tail, drift, pairs that disagree, the cap) is re-timed after the
machine settles, and marked if it stays suspect.

Usage (by the sweep, not by hand): ``python -m harness.engine.cell SPEC.json RESULT.json``.
Running each cell in a fresh process means a crash in a native runtime (a compiler segfault, an
out-of-memory kill) becomes an error row instead of a dead sweep, and no runtime's thread pool or
allocator state leaks into the next cell's numbers.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import first_line


@dataclass
class CellSpec:
    """Everything the child process needs; written as JSON by the parent.

    items: the networks to measure, each {"key", "artifact": {...}, "ref_logits_path": path or None,
        "graph_facts": bool}; all are timed in one interleaved loop.
    reference: the dense network's artifact, timed interleaved with the items so that every
        item's speed-up compares two measurements taken side by side (None: no reference).
    noise: NoiseRules fields (harness.engine.noise): when a timing is suspect and how often to re-time.
    """

    target: str
    scenario: str
    batch: int
    threads: int
    rules: dict[str, Any]
    pool_path: str
    items: list[dict[str, Any]]
    reference: dict[str, Any] | None = None
    eval_x_path: str | None = None
    eval_y_path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    target_entry: str | None = None  # "module:Class": the child imports it even if registered at run time
    noise: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))


def _queries(pool: np.ndarray, batch: int) -> list[np.ndarray]:
    """Inputs rotated through the timed loop: each pool sample as a query (batch 1), or distinct
    batches drawn in order from the pool (Offline), so the loop never reuses one tensor."""
    if batch == 1:
        return [np.ascontiguousarray(pool[i:i + 1]) for i in range(len(pool))]
    count = max(2, len(pool) // batch)
    idx = np.arange(count * batch) % len(pool)
    return [np.ascontiguousarray(pool[idx[i * batch:(i + 1) * batch]]) for i in range(count)]


def _run_all(session: Any, x: np.ndarray) -> np.ndarray:
    """Logits for every row of ``x`` in batches of the session's fixed size (last one padded)."""
    b = session.batch
    outs = []
    for i in range(0, len(x), b):
        chunk = x[i:i + b]
        n = len(chunk)
        if n < b:
            chunk = np.concatenate([chunk, np.zeros((b - n, *x.shape[1:]), x.dtype)])
        outs.append(np.array(session.run(np.ascontiguousarray(chunk)))[:n])
    return np.concatenate(outs)


def _accuracy(session: Any, spec: CellSpec, ref_logits_path: str | None) -> dict[str, Any]:
    if spec.eval_x_path is None:
        return {}
    x = np.load(spec.eval_x_path)
    logits = _run_all(session, x)
    row: dict[str, Any] = {"eval_n": len(x)}
    y = np.load(spec.eval_y_path) if spec.eval_y_path else None
    if y is not None and len(y) and (y >= 0).all():
        pred = logits.argmax(1)
        row["top1"] = float((pred == y).mean() * 100)
        if logits.shape[1] > 5:
            top5 = np.argsort(-logits, axis=1)[:, :5]
            row["top5"] = float((top5 == y[:, None]).any(1).mean() * 100)
    if ref_logits_path:
        ref = np.load(ref_logits_path)
        row["parity_max_abs"] = float(np.abs(logits.astype(np.float64) - ref).max())
        row["parity_top1_agree"] = float((logits.argmax(1) == ref.argmax(1)).mean() * 100)
    return row


def _artifact(a: dict[str, Any]) -> Any:
    from targets import Artifact

    return Artifact(name=a["name"], input_shape=tuple(a["input_shape"]),
                    onnx_path=Path(a["onnx_path"]) if a.get("onnx_path") else None,
                    torch_path=Path(a["torch_path"]) if a.get("torch_path") else None)


def _open(target: Any, spec: CellSpec, artifact: dict[str, Any], first: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """Compile ``artifact`` and run its first inference (cold start, apart from steady state)."""
    t0 = time.perf_counter()
    session = target.compile(_artifact(artifact), batch=spec.batch, scenario=spec.scenario,
                             threads=spec.threads, options=target.parse_options(spec.options))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    session.run(first)
    session.sync()
    return session, {"compile_s": compile_s, "first_run_ms": (time.perf_counter() - t0) * 1e3}


def _tail_ratio(samples: Any) -> float | None:
    values = sorted(samples.latencies_s)
    if len(values) < 10:
        return None
    from harness.timing import nearest_rank

    return nearest_rank(values, 0.9) / nearest_rank(values, 0.5)


def _drift(block_medians: list[float]) -> float | None:
    if len(block_medians) < 2:
        return None
    mid = float(np.median(block_medians))
    return (max(block_medians) - min(block_medians)) / mid if mid > 0 else None


# The dense reference runs a block before every REFERENCE_EVERY networks in a round (R A B C R D
# E F ... R), so that each network's block is paired with reference blocks a few seconds away:
# costs the reference 1/REFERENCE_EVERY more blocks than once per round (benchmarks/paired_ratio.py).
REFERENCE_EVERY = 3


def _time_all(sessions: list[Any], queries: list[np.ndarray], spec: CellSpec, has_ref: bool) -> list[dict[str, Any]]:
    """Time every session interleaved; re-time (after the machine settles) while any latency or
    speed-up is suspect, up to ``noise.tries`` times; each session's fields from the best try.

    Two verdicts per row: ``timing_ok`` for its own latency (cap, other processes, tail, drift of
    its block medians) and ``ratio_ok`` for its speed-up, the median of its paired ratios against
    the reference blocks around each of its blocks (cap, other processes, its standard error)."""
    from harness.engine.noise import MachineLoad, NoiseRules, ratio_reasons, suspect_reasons, wait_for_quiet
    from harness.timing import (TimingRules, measure_interleaved, paired_ratios, per_input_spread,
                                ratio_summary, summarize)

    rules, noise = TimingRules(**spec.rules), NoiseRules(**spec.noise)
    best: list[dict[str, Any]] | None = None
    waited = 0.0

    def suspects(fields: list[dict[str, Any]]) -> int:
        return sum((not r["timing_ok"]) + (r["ratio_ok"] is False) for r in fields)

    for attempt in range(1, max(1, noise.tries) + 1):
        load = MachineLoad().start()
        all_samples = measure_interleaved([s.timer() for s in sessions], queries, rules,
                                          reference_every=REFERENCE_EVERY if has_ref else None)
        machine = load.stop()
        ref = all_samples[0] if has_ref else None
        ref_p50 = summarize(ref.latencies_s, batch=spec.batch, wall_s=ref.wall_s).p50_ms if ref else None
        ref_drift = _drift(ref.block_medians_ms()) if ref else None
        fields = []
        for samples in all_samples[1 if has_ref else 0:]:
            stats = summarize(samples.latencies_s, batch=spec.batch, wall_s=samples.wall_s,
                              note="stopped by the cap before the minimums" if samples.capped else "")
            row = stats.as_row()
            row["timing_note"] = row.pop("note")
            if spec.batch == 1:
                row.update(per_input_spread(samples))
            tail, drift = _tail_ratio(samples), _drift(samples.block_medians_ms())
            reasons = suspect_reasons(noise, capped=samples.capped, tail_ratio=tail, drift=drift,
                                      other_cpu=machine["other_cpu_share"])
            row.update({"tail_ratio": tail, "block_drift": drift, "cv": stats.std_ms / stats.mean_ms if stats.mean_ms else None,
                        "ref_p50_ms": ref_p50, "ref_drift": ref_drift,
                        "timing_ok": not reasons, "timing_suspect": "; ".join(reasons),
                        "speedup_interleaved": None, "ratio_se": None, "ratio_pairs": None,
                        "ratio_ok": None, "ratio_suspect": "",
                        "timing_tries": attempt, "settle_wait_s": waited, **machine})
            if ref is not None:
                paired = ratio_summary(paired_ratios(ref, samples))
                why = ratio_reasons(noise, capped=samples.capped or ref.capped, other_cpu=machine["other_cpu_share"],
                                    se=paired["ratio_se"], pairs=paired["ratio_pairs"])
                row.update({"speedup_interleaved": paired["ratio"], "ratio_se": paired["ratio_se"],
                            "ratio_pairs": paired["ratio_pairs"], "ratio_ok": not why, "ratio_suspect": "; ".join(why)})
            fields.append(row)
        if best is None or suspects(fields) <= suspects(best):
            best = fields
        if not suspects(best) or attempt == noise.tries:
            break
        waited += wait_for_quiet(noise)
    return best or []


def run_cell(spec: CellSpec) -> dict[str, Any]:
    """Compile every item (and the reference), first inference, accuracy and parity per item,
    then one interleaved timed loop. Returns {"items": [fields per item, in order]}; an item that
    fails to compile or evaluate is an error item, and the others go on."""
    from harness.registry import import_string
    from targets import get_target
    from targets.base import NotMeasured

    target = import_string(spec.target_entry)() if spec.target_entry else get_target(spec.target)
    queries = _queries(np.load(spec.pool_path), spec.batch)
    results: list[dict[str, Any]] = []
    sessions, live = [], []
    t_compile = t_acc = 0.0
    ref_error = ""
    if spec.reference is not None:
        try:
            ref_session, _ = _open(target, spec, spec.reference, queries[0])
            sessions.append(ref_session)
        except Exception as exc:  # no interleaved reference: the items are still measured
            ref_error = f"dense reference failed here: {type(exc).__name__}: {first_line(exc, 200)}"
    has_ref = spec.reference is not None and not ref_error
    for item in spec.items:
        try:
            t0 = time.perf_counter()
            session, row = _open(target, spec, item["artifact"], queries[0])
            t_compile += time.perf_counter() - t0
            t0 = time.perf_counter()
            row.update(_accuracy(session, spec, item.get("ref_logits_path")))
            t_acc += time.perf_counter() - t0
        except NotMeasured as exc:  # the target declined this cell (e.g. an emulated board's batch)
            results.append({"status": "skipped", "error": str(exc), **exc.machine})
            continue
        except Exception as exc:  # this item is an error row; the others are still measured
            results.append({"status": "error", "error": f"{type(exc).__name__}: {first_line(exc, 400)}"})
            continue
        results.append({"status": "ok", **row})
        sessions.append(session)
        live.append(len(results) - 1)
    t0 = time.perf_counter()
    timed = _time_all(sessions, queries, spec, has_ref) if live else []
    t_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    machine = sessions[-1].machine() if sessions else {}
    for index, fields, session in zip(live, timed, sessions[len(sessions) - len(live):]):
        row = results[index]
        row.update(fields)
        row["pool_inputs"] = len(queries)
        row.update(machine)  # the machine that ran the queries: a board names itself
        if spec.items[index].get("graph_facts"):
            row["graph_facts"] = session.graph_facts()
        row["session"] = session.info
        row["runtime_versions"] = target.versions()
    for session in sessions:
        session.close()
    share = 1 / max(1, len(spec.items))
    phases = {"compile": t_compile * share, "accuracy": t_acc * share, "timing": t_time * share,
              "graph facts": (time.perf_counter() - t0) * share}
    for row in results:
        row["phases"] = phases
        if ref_error:
            row["ref_error"] = ref_error
    return {"items": results}


def main(argv: list[str]) -> int:
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    spec = CellSpec(**json.loads(spec_path.read_text()))
    try:
        row = {"status": "ok", **run_cell(spec)}
    except Exception as exc:  # becomes an error row for every item; the parent keeps going
        row = {"status": "error", "error": f"{type(exc).__name__}: {first_line(exc, 400)}",
               "traceback": traceback.format_exc()[-4000:]}
    result_path.write_text(json.dumps(row, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
