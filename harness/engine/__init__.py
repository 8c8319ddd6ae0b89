"""The sweep engine: config, plan, executors, the sweep loop, the measurement cell, the store,
report, bench, inspect and the CLI. Plugins (methods, targets) never import it; it is the only
part of the harness that imports ``methods`` and ``targets``.

Python API: ``SweepConfig`` + ``run_sweep`` run a sweep; ``plan_sweep`` validates and plans one,
``dry_run`` summarises the plan; ``harness.engine.report.publish`` rebuilds tables;
``harness.engine.bench.bench_onnx`` times an ONNX file; ``harness.engine.inspection.inspect_model``
counts MACs, params and size. Names are imported lazily: a measurement cell process
(``python -m harness.engine.cell``) imports only its target's runtime, not torch or the methods.
"""
from __future__ import annotations

import importlib
from typing import Any

_API = {"SweepConfig": "harness.engine.config", "plan_sweep": "harness.engine.plan",
        "dry_run": "harness.engine.sweep", "run_sweep": "harness.engine.sweep"}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'harness.engine' has no attribute {name!r}")
