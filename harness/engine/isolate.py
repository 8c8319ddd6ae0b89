"""Run a measurement cell in a child process with a time-out (parent side of harness.cell)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.engine.cell import CellSpec
from harness.provenance import PROJECT_ROOT


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    # Thread pools that read the environment at start-up (OpenMP, OpenBLAS, TVM) get the same
    # count the runtime is given explicitly, so no pool oversubscribes the cores.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TVM_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _failure(proc: subprocess.CompletedProcess) -> str:
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return f"cell process killed by {name}"
    lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
    return f"cell process exited with status {proc.returncode}: " + (lines[-1][:400] if lines else "no output")


def run_isolated(spec: CellSpec, workdir: Path, timeout_s: float) -> dict[str, Any]:
    """The cell's result ({"status", "items": [...]}) from running ``spec`` in a fresh process; a
    crash or a time-out is a result too (status error/timeout, no items)."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = workdir / "spec.json", workdir / "result.json"
    result_path.unlink(missing_ok=True)
    spec.save(spec_path)
    cmd = [sys.executable, "-m", "harness.engine.cell", str(spec_path), str(result_path)]
    try:
        proc = subprocess.run(cmd, env=_child_env(spec.threads), capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"cell did not finish within {timeout_s:.0f} s (killed)"}
    if proc.returncode == 0 and result_path.exists():
        return json.loads(result_path.read_text())
    return {"status": "error", "error": _failure(proc)}
