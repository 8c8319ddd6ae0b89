"""Placeholder: the Ray executor is being written (issue 12)."""
from __future__ import annotations

from harness.engine.executors.local import LocalExecutor
from harness.errors import UserError


class RayExecutor(LocalExecutor):
    name = "ray"

    def __init__(self, address: str | None = None):
        raise UserError("executor ray is not implemented yet")
