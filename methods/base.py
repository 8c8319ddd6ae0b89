"""The method (compression technique) interface.

A method declares its knobs (name, range, default sweep values) and what it produces:
``dense`` (unchanged), ``smaller`` (physically smaller network), ``masked`` (same shapes, zeros)
or ``dynamic`` (cost decided per input). ``apply`` turns a trained baseline into one or more
deployables; the harness exports, deploys and measures them. Nothing here imports a runtime.
"""
from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from harness.errors import UserError
from harness.knobs import Knob

PRODUCES = ("dense", "smaller", "masked", "dynamic")


@dataclass
class Deployable:
    """One network to export and measure, with what the harness cannot infer from the module.

    export_onnx: a method-specific exporter (e.g. one that must not fold BN into power-of-two
        weights); None uses the harness's default exporter.
    macs: per-sample MACs when the static counter is wrong for this network (dynamic networks
        report their mean over the test set); None means count the module.
    size_bytes: storage size when it is not fp32 parameters (e.g. packed low-bit weights).
    check_graph: graph-survival check run on the exported ONNX file; returns extra columns.
    requires: target capabilities this network needs (``targets.base.CAPABILITIES``, e.g.
        ``runtime_weight_shapes``); on a target without one the row is ``skipped`` with the reason,
        written before export.
    requires_why: why it needs them (said in the skipped row).
    check_facts: ``(target_key, graph_facts) -> columns``: graph-survival facts read from what the
        backend's optimised graph holds (``Session.graph_facts()``, collected in the cell).
    extra: method-specific columns for the row.
    """

    model: nn.Module
    variant: str = "default"
    export_onnx: Callable[[nn.Module, Path, tuple[int, ...]], Path] | None = None
    macs: float | None = None
    size_bytes: int | None = None
    check_graph: Callable[[Path], dict[str, Any]] | None = None
    requires: frozenset[str] = frozenset()
    requires_why: str = ""
    check_facts: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Compressed:
    """What ``Method.apply`` returns: the deployables and the cost of producing them."""

    deployables: list[Deployable]
    train_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Method(ABC):
    """A compression technique. Subclasses set the class attributes and implement ``apply``."""

    name: str = ""
    summary: str = ""
    produces: str = "smaller"
    knobs: tuple[Knob, ...] = ()
    # Groups of knobs that are alternative forms of one budget: giving values for one knob of a
    # group drops the other knobs of that group from the sweep (``--budgets ftwt:macs=0.5`` sweeps
    # macs only, not macs x r).
    exclusive: tuple[tuple[str, ...], ...] = ()
    # Method-specific row columns (from Deployable.extra / Compressed.extra) that results.md shows
    # in the method's details table; the CSV always has every column.
    report_columns: tuple[str, ...] = ()

    def knob(self, name: str) -> Knob:
        for k in self.knobs:
            if k.name == name:
                return k
        known = ", ".join(k.name for k in self.knobs) or "none"
        raise UserError(f"method {self.name} has no knob {name!r} (knobs: {known})")

    def settings(self, knobs: Mapping[str, Any]) -> dict[str, Any]:
        """The typed settings ``apply`` receives: the given knob values (already parsed) over
        every knob's ``default`` (knobs without a default are absent unless given)."""
        return {**{k.name: k.default for k in self.knobs if k.default is not None}, **knobs}

    def validate(self, values: Mapping[str, Any]) -> None:
        """Check a combination of knob values (cross-knob rules); raise UserError when invalid."""

    def budgets(self, overrides: Mapping[str, Sequence[Any]] | None = None) -> list[dict[str, Any]]:
        """The cartesian product of knob values: the overrides, else each knob's default sweep.

        A knob with an empty default sweep is left out unless given; within an ``exclusive`` group,
        the knobs the user did not give are left out as soon as one of them is given.
        """
        overrides = dict(overrides or {})
        for name in overrides:
            self.knob(name)
        dropped: set[str] = set()
        for group in self.exclusive:
            given = [n for n in group if n in overrides]
            if len(given) > 1:
                raise UserError(f"method {self.name}: knobs {' and '.join(given)} are alternatives; give one")
            if given:
                dropped.update(n for n in group if n not in given)
        axes = [(k.name, tuple(overrides.get(k.name, k.default_sweep))) for k in self.knobs
                if k.name not in dropped and (k.name in overrides or k.default_sweep)]
        combos = [dict(zip([a for a, _ in axes], vals)) for vals in itertools.product(*[v for _, v in axes])]
        for combo in combos:
            self.validate(combo)
        return combos or [{}]

    @abstractmethod
    def apply(self, ctx: "MethodContext", knobs: Mapping[str, Any]) -> Compressed:
        """Compress ``ctx.model`` (a private copy of the trained baseline) under ``knobs``."""


@dataclass
class MethodContext:
    """Everything a method may use: the trained baseline copy, data, recipe and helpers.

    structure_only: True for ``harness inspect``: produce the compressed architecture without
        any training (costs and sizes only).
    measure_latency: callable(model, target_key) -> p50 ms on that target, for methods with a
        latency budget; None when unavailable.
    """

    model_name: str
    model: nn.Module
    data: Any  # harness.data.DataBundle
    recipe: Any  # harness.train.TrainRecipe, already scaled by the preset
    seed: int
    workdir: Path
    preset: str = "standard"
    structure_only: bool = False
    measure_latency: Callable[[nn.Module, str], float] | None = None
    log: Callable[[str], None] = print
