"""Compress CNNs, deploy them to real inference backends, measure accuracy and latency honestly.

Layout: ``harness.engine`` runs sweeps (config, plan, executors, the sweep loop, the measurement
cell, store, report, bench, inspect, CLI); the rest of ``harness`` is the kit that plugins use.
Methods (``methods/``) and targets (``targets/``) import only the kit, never the engine.

The plugin-author API, importable from here (lazily: importing ``harness`` imports no torch and
no inference runtime):

- errors: ``UserError`` (bad input: one line, exit 2), ``first_line``
- settings: ``Knob`` (a method's knob or a target's option), ``Registry``
- models: ``build_model``, ``model_spec``, ``removable_units``
- data: ``DataBundle``, ``load_data``, ``eval_arrays``, ``make_loader``
- training: ``TrainRecipe``, ``fit``, ``predict``, ``top1``
- costs and graphs: ``count_cost``, ``size_bytes``, ``export_onnx``, ``onnx_facts``, ``trace_calls``
- timing: ``Timer``, ``HostTimer``, ``CudaEventTimer`` (a target's session returns one)

The sweep API: ``harness.engine.SweepConfig`` + ``harness.engine.run_sweep``.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "UserError": "harness.errors", "first_line": "harness.errors",
    "Knob": "harness.knobs", "Registry": "harness.registry",
    "build_model": "harness.models", "model_spec": "harness.models", "removable_units": "harness.models",
    "DataBundle": "harness.data", "load_data": "harness.data", "eval_arrays": "harness.data",
    "make_loader": "harness.data",
    "TrainRecipe": "harness.train", "fit": "harness.train", "predict": "harness.train", "top1": "harness.train",
    "count_cost": "harness.macs", "size_bytes": "harness.macs", "export_onnx": "harness.export",
    "onnx_facts": "harness.export", "trace_calls": "harness.trace",
    "Timer": "harness.timing", "HostTimer": "harness.timing", "CudaEventTimer": "harness.timing",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
