"""The target interface: availability, versions, compile, run one inference, synchronize.

A target never times itself (measurement.md: the harness owns warm-up, stop rule, sync and
statistics, as MLPerf LoadGen does). Nothing in this module imports a runtime.
"""
from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from harness.errors import UserError

SCENARIOS = ("SingleStream", "Offline")


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

    def device_timer(self) -> Any | None:
        """Optional device-side timer (CUDA events); None means the host clock after ``sync``."""
        return None

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
    option_names: tuple[str, ...] = ()  # build options ``compile`` accepts (``--target-option``)

    def availability(self) -> Availability:
        """Whether this target can run here, with the reason when not. Must not import a runtime."""
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

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Validate build options before any cell runs; UserError names the first bad one.
        Subclasses extend this to check values (without importing their runtime)."""
        for name in options:
            if name not in self.option_names:
                known = ", ".join(self.option_names) or "none"
                raise UserError(f"{self.key}: unknown option {name!r} (options: {known})")

    @abstractmethod
    def compile(self, artifact: Artifact, *, batch: int, scenario: str, threads: int,
                options: Mapping[str, Any] | None = None) -> Session:
        """Build a Session for ``batch``-sized inputs. Record build flags in ``Session.info``
        (precision, hints, providers, what the timing scope includes); may import the runtime."""
