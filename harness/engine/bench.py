"""Time an existing ONNX model on several targets with the harness's one timing engine: the
trtexec / benchmark_app use case, with one methodology across backends."""
from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from harness.engine.cell import CellSpec
from harness.errors import UserError, first_line
from harness.engine.isolate import run_isolated
from harness.provenance import cpu_count
from harness.registry import unknown_message
from harness.timing import PRESETS
from targets import get_target

BENCH_COLUMNS = ["target", "status", "batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms",
                 "max_ms", "n", "throughput", "compile_s", "first_run_ms", "precision", "error"]


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--input-shape {text!r} is not a comma list of integers like 1,3,32,32") from None
    if len(shape) < 2 or min(shape) < 1:
        raise UserError(f"--input-shape {text!r} needs a batch and at least one positive dimension")
    return shape


def _check_onnx(path: Path) -> None:
    import onnx

    if not path.is_file():
        raise UserError(f"ONNX file not found: {path}")
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise UserError(f"not a valid ONNX model: {path}: {first_line(exc, 200)}") from None


def bench_onnx(path: Path, target_keys: list[str], *, preset: str = "quick", input_shape: str = "1,3,32,32",
               threads: int | None = None, timeout_s: float = 900.0) -> list[dict[str, Any]]:
    """One row of latency columns per target, timed on a pool of seeded random inputs."""
    if preset not in PRESETS:
        raise UserError(unknown_message("preset", preset, list(PRESETS)))
    shape = parse_shape(input_shape)
    targets = [get_target(k) for k in target_keys]
    if not targets:
        raise UserError("no targets given")
    for t in targets:
        if not t.availability().ok:
            raise UserError(f"target {t.key} is not available here: {t.availability().reason}")
        if t.needs != "onnx":
            raise UserError(f"target {t.key} runs PyTorch modules, not ONNX files")
    path = Path(path).resolve()
    _check_onnx(path)
    threads = threads or cpu_count()
    rows = []
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        pool_path = Path(tmp) / "pool.npy"
        rng = np.random.default_rng(0)
        np.save(pool_path, rng.standard_normal((max(64, shape[0]), *shape[1:]), dtype=np.float32))
        for t in targets:
            spec = CellSpec(target=t.key, scenario="SingleStream" if shape[0] == 1 else "Offline", batch=shape[0],
                            threads=threads, rules=asdict(PRESETS[preset]), pool_path=str(pool_path),
                            items=[{"key": t.key, "artifact": {"name": path.stem, "input_shape": list(shape[1:]),
                                                               "onnx_path": str(path), "torch_path": None}}])
            cell = run_isolated(spec, Path(tmp) / t.key, timeout_s)
            result = cell["items"][0] if cell.get("status") == "ok" else cell
            result.pop("traceback", None)
            result.pop("phases", None)
            session = result.pop("session", {}) or {}
            rows.append({"target": t.key, "batch": shape[0], "threads": threads, "preset": preset,
                         "precision": session.get("precision", ""), "session": session, **result})
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def text_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """``columns`` of ``rows`` as an aligned text table (the CLI's bench and predict output)."""
    table = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) if table else len(c) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns)] + [line(r) for r in table])


def format_table(rows: list[dict[str, Any]]) -> str:
    """The latency columns as an aligned text table."""
    return text_table(rows, list(BENCH_COLUMNS))
