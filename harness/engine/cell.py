"""One measurement cell, run in its own process: compile on a target, measure accuracy and
parity from the target's own outputs, time it with the harness's timing engine.

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
    """Everything the child process needs; written as JSON by the parent."""

    target: str
    artifact: dict[str, Any]
    scenario: str
    batch: int
    threads: int
    rules: dict[str, Any]
    pool_path: str
    eval_x_path: str | None = None
    eval_y_path: str | None = None
    ref_logits_path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    graph_facts: bool = False  # also report what the backend's optimised graph holds
    target_entry: str | None = None  # "module:Class": the child imports it even if registered at run time

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


def _accuracy(session: Any, spec: CellSpec) -> dict[str, Any]:
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
    if spec.ref_logits_path:
        ref = np.load(spec.ref_logits_path)
        row["parity_max_abs"] = float(np.abs(logits.astype(np.float64) - ref).max())
        row["parity_top1_agree"] = float((logits.argmax(1) == ref.argmax(1)).mean() * 100)
    return row


def run_cell(spec: CellSpec) -> dict[str, Any]:
    """Compile, first inference, accuracy and parity, then the timed loop; returns row fields."""
    from harness.timing import TimingRules, measure, per_input_spread, summarize
    from harness.registry import import_string
    from targets import Artifact, get_target

    target = import_string(spec.target_entry)() if spec.target_entry else get_target(spec.target)
    a = spec.artifact
    artifact = Artifact(name=a["name"], input_shape=tuple(a["input_shape"]),
                        onnx_path=Path(a["onnx_path"]) if a.get("onnx_path") else None,
                        torch_path=Path(a["torch_path"]) if a.get("torch_path") else None)
    t0 = time.perf_counter()
    session = target.compile(artifact, batch=spec.batch, scenario=spec.scenario,
                             threads=spec.threads, options=target.parse_options(spec.options))
    compile_s = time.perf_counter() - t0
    queries = _queries(np.load(spec.pool_path), spec.batch)
    t0 = time.perf_counter()
    session.run(queries[0])
    session.sync()
    first_run_ms = (time.perf_counter() - t0) * 1e3
    row: dict[str, Any] = {"compile_s": compile_s, "first_run_ms": first_run_ms}
    t0 = time.perf_counter()
    row.update(_accuracy(session, spec))
    accuracy_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    samples = measure(session.timer(), queries, TimingRules(**spec.rules))
    timing_s = time.perf_counter() - t0
    stats = summarize(samples.latencies_s, batch=spec.batch, wall_s=samples.wall_s,
                      note="stopped by the cap before the minimums" if samples.capped else "")
    row.update(stats.as_row())
    row["timing_note"] = row.pop("note")
    if spec.batch == 1:
        row.update(per_input_spread(samples))
    row["pool_inputs"] = len(queries)
    row.update(session.machine())  # the machine that ran the queries: a board names itself
    t0 = time.perf_counter()
    if spec.graph_facts:
        row["graph_facts"] = session.graph_facts()
    row["phases"] = {"compile": compile_s, "accuracy": accuracy_s, "timing": timing_s,
                     "graph facts": time.perf_counter() - t0}
    row["session"] = session.info
    row["runtime_versions"] = target.versions()
    session.close()
    return row


def main(argv: list[str]) -> int:
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    spec = CellSpec(**json.loads(spec_path.read_text()))
    try:
        row = {"status": "ok", **run_cell(spec)}
    except Exception as exc:  # becomes an error row; the parent keeps going
        row = {"status": "error", "error": f"{type(exc).__name__}: {first_line(exc, 400)}",
               "traceback": traceback.format_exc()[-4000:]}
    result_path.write_text(json.dumps(row, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
