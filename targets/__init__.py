"""Backend adapters, registered by CLI key as ``"module:Class"`` strings.

Importing this package imports no runtime: a target's module is imported only when the target is
used, and availability is probed with ``importlib.util.find_spec``. Targets from other packages
register through the ``harness.targets`` entry-point group.
"""
from __future__ import annotations

from harness.registry import Registry
from targets.base import SCENARIOS, Artifact, Availability, Session, Target

TARGETS: Registry[Target] = Registry("target", entry_point_group="harness.targets")
TARGETS.register("torch-eager", "targets.torch_eager:TorchEager")
TARGETS.register("ort-cpu", "targets.ort_cpu:OrtCpu")
TARGETS.register("ov-cpu", "targets.ov_cpu:OvCpu")
TARGETS.register("trt", "targets.trt:TensorRT")
TARGETS.register("tvm-cpu", "targets.tvm_cpu:TvmCpu")
TARGETS.register("tvm-arm", "targets.tvm_arm:TvmArm")


def get_target(key: str) -> Target:
    """The target registered as ``key`` (UserError with a did-you-mean when unknown)."""
    return TARGETS.get(key)


__all__ = ["TARGETS", "SCENARIOS", "Artifact", "Availability", "Session", "Target", "get_target"]
