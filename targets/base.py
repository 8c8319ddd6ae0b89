"""The target interface (contract v2): availability, versions, typed options, capabilities,
compile, and a Session that runs one inference, names its machine, gives a timer for one query
and reports what its optimised graph holds.

A target never times itself (measurement.md: the harness owns warm-up, stop rule, sync and
statistics, as MLPerf LoadGen does); it hands the engine a ``Timer`` that times ONE query, which
is the host clock for CPU targets, CUDA events on a GPU, and the board's own clock on a remote
board. Nothing in this module imports a runtime.
"""
from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from harness.knobs import Knob, parse_settings
from harness.timing import HostTimer, Timer

SCENARIOS = ("SingleStream", "Offline")

# What a deployable may require of a target. A deployable that requires a capability its target
# lacks is a ``skipped`` row whose reason names it, written before anything is exported.
CAPABILITIES = {
    "runtime_weight_shapes": "convolutions whose weights (and so channel counts) are computed at run time",
    "int8_qdq": "ONNX QuantizeLinear/DequantizeLinear graphs run with int8 kernels",
}


class NotMeasured(Exception):
    """Raised by ``Target.compile`` when the target, as it found the machine, will not measure
    this cell (e.g. a batch an emulated board cannot run within the cell's time-out). The row is
    ``skipped`` with the message as its reason (finished: a re-run does not retry it) and names
    ``machine`` (the ``Session.machine()`` facts it learnt) when given."""

    def __init__(self, reason: str, machine: Mapping[str, Any] | None = None):
        super().__init__(reason)
        self.machine = dict(machine or {})


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class Artifact:
    """What a target deploys, written by the harness before any target sees it.

    onnx_path: ONNX graph, input "input" (N,C,H,W float32) with a dynamic batch axis, output "logits".
    torch_path: the PyTorch module pickled whole by the harness (our own file, loaded with
        weights_only=False because it holds code objects, never a user's file).
    input_shape: one sample's shape, e.g. (3, 32, 32).
    """

    name: str
    input_shape: tuple[int, ...]
    onnx_path: Path | None = None
    torch_path: Path | None = None


@dataclass
class Session(ABC):
    """A compiled model ready to run batches of exactly ``batch`` samples."""

    batch: int
    info: dict[str, Any] = field(default_factory=dict)

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one inference on ``x`` (batch, *input_shape) float32; return logits as numpy."""

    def sync(self) -> None:
        """Block until the work queued by ``run`` is done (GPU targets); CPU runs are synchronous."""

    def timer(self) -> Timer:
        """What times one query: by default the host clock around ``run`` + ``sync``. GPU
        sessions return CUDA events, remote boards the board's own clock."""
        return HostTimer(self.run, self.sync)

    def machine(self) -> dict[str, Any]:
        """Facts of the machine that runs the queries (node, cpu, cpu_count, arch, gpu, board,
        emulated): the host by default; a remote board names itself."""
        from harness.provenance import host_machine

        return host_machine()

    def graph_facts(self) -> dict[str, Any]:
        """What the backend's optimised graph really holds: {"ops": {op: count}, "conv_weights":
        [[O, I, kh, kw], ...], ...}; {} when the backend cannot tell."""
        return {}

    def close(self) -> None:
        """Release runtime resources."""


class Target(ABC):
    """A backend adapter. Subclasses set the class attributes and implement ``compile``."""

    key: str = ""
    summary: str = ""
    device: str = "cpu"
    needs: str = "onnx"  # which Artifact file it compiles: "onnx" or "torch"
    modules: tuple[str, ...] = ()  # import names probed with find_spec, never imported here
    packages: tuple[str, ...] = ()  # distribution names whose versions go into provenance
    options: tuple[Knob, ...] = ()  # typed build options (``--target-option KEY.NAME=VALUE``)
    capabilities: frozenset[str] = frozenset()  # keys of CAPABILITIES this target has
    # Cluster resources a measure job of this target needs beyond a whole node (Ray custom
    # resources, e.g. {"GPU": 1} or {"tvm-board:rk3588": 1}): the job runs where they are.
    resources: Mapping[str, float] = {}
    install_hint: str = ""  # how to make an unavailable target available (an extra, a package)
    # Why a sweep without --targets leaves this target out even where it is available ("" = it is
    # in the default sweep). Naming it in --targets always includes it.
    opt_in: str = ""

    def availability(self, options: Mapping[str, Any] | None = None) -> Availability:
        """Whether this target can run here (with its parsed ``options``), with the reason when
        not. Must not import a runtime; checked once, before the first cell."""
        for mod in self.modules:
            if importlib.util.find_spec(mod) is None:
                return Availability(False, f"python module '{mod}' is not installed")
        return Availability(True)

    def versions(self) -> dict[str, str]:
        """Versions of the runtime packages, read from metadata (no import)."""
        out = {}
        for pkg in self.packages:
            try:
                out[pkg] = version(pkg)
            except PackageNotFoundError:
                out[pkg] = "not installed"
        return out

    def parse_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Typed build options with defaults filled in; UserError names the first bad one.
        Runs once before the first cell; ``compile`` receives the result."""
        return parse_settings(self.key, self.options, raw)

    def lacks(self, required: frozenset[str] | set[str]) -> list[str]:
        """The capabilities in ``required`` that this target does not have."""
        return sorted(set(required) - set(self.capabilities))

    @abstractmethod
    def compile(self, artifact: Artifact, *, batch: int, scenario: str, threads: int,
                options: Mapping[str, Any] | None = None) -> Session:
        """Build a Session for ``batch``-sized inputs from parsed ``options``. Record build flags
        in ``Session.info`` (precision, hints, providers, what the timing scope includes); may
        import the runtime."""
