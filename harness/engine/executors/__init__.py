"""Executors: what runs a sweep's jobs, behind one small interface (``base.Executor``).

``local`` (default): jobs in the driver, each measure cell in its own process with a time-out.
``inline``: everything in the driver process, no child processes (debugging, fast tests).
``ray[:ADDRESS]``: jobs as Ray tasks on a cluster (``ray:auto``, ``ray:HOST:PORT``; without an
address a local Ray instance on 127.0.0.1). Other packages add executors through the
``harness.executors`` entry-point group.
"""
from __future__ import annotations

from harness.engine.executors.base import Done, Executor, Task
from harness.registry import Registry

EXECUTORS: Registry[type] = Registry("executor", entry_point_group="harness.executors")
EXECUTORS.register("local", "harness.engine.executors.local:LocalExecutor")
EXECUTORS.register("inline", "harness.engine.executors.local:InlineExecutor")
EXECUTORS.register("ray", "harness.engine.executors.ray:RayExecutor")


def make_executor(spec: str) -> Executor:
    """The executor named by ``spec`` (``NAME`` or ``NAME:ADDRESS``), not yet started."""
    name, _, address = spec.partition(":")
    return EXECUTORS.load(name)(address or None)


__all__ = ["EXECUTORS", "Done", "Executor", "Task", "make_executor"]
