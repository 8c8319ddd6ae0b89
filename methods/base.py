"""The method (compression technique) interface.

A method declares its knobs (name, range, default sweep values) and what it produces:
``dense`` (unchanged), ``smaller`` (physically smaller network), ``masked`` (same shapes, zeros)
or ``dynamic`` (cost decided per input). ``apply`` turns a trained baseline into one or more
deployables; the harness exports, deploys and measures them. Nothing here imports a runtime.
"""
from __future__ import annotations

import functools
import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from harness.errors import UserError
from harness.knobs import Knob
from methods.recipes import preset_recipe

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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # ``apply`` always receives typed settings, whoever calls it (the sweep, ``inspect``, a
        # test): every knob with a default is filled in, so no method writes
        # ``knobs.get(name, default)``. ``settings`` is idempotent, so a caller that already
        # filled them in (the engine) loses nothing.
        super().__init_subclass__(**kwargs)
        apply = cls.__dict__.get("apply")
        if apply is not None and not getattr(apply, "__abstractmethod__", False):
            @functools.wraps(apply)
            def with_settings(self: "Method", ctx: "MethodContext", knobs: Mapping[str, Any]) -> Compressed:
                return apply(self, ctx, self.settings(knobs))
            cls.apply = with_settings  # type: ignore[method-assign]

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

    def budgets(self, overrides: Mapping[str, Sequence[Any]] | None = None,
                preset: str = "standard") -> list[dict[str, Any]]:
        """The cartesian product of knob values: the overrides, else each knob's default sweep
        for ``preset`` (``Knob.sweep``: the quick preset takes the smaller ``quick_sweep``).

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
        axes = [(k.name, tuple(overrides.get(k.name, k.sweep(preset)))) for k in self.knobs
                if k.name not in dropped and (k.name in overrides or k.sweep(preset))]
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

    recipe: the baseline's recipe, already scaled by the preset (a method's own fine-tune comes
        from ``finetune_recipe``).
    structure_only: True for ``harness inspect``: produce the compressed architecture without
        any training (costs and sizes only).
    measure_latency: callable(model, target_key) -> the model's p50 on that target as a fraction
        of the dense baseline's (batch 1), both timed interleaved in one cell: the median of
        paired block ratios (``harness.timing.paired_ratios``), which a change of the machine's
        own speed during or between probes does not move. For methods with a latency budget;
        None when unavailable.
    predict_latency: callable(model, target_key) -> the model's p50 on that target as a fraction
        of the dense baseline's, PREDICTED by the target's latency model (harness.engine.
        latency_model: measured unit latencies plus a correction fitted on whole networks; it
        may time probes of units it has not seen). For latency budgets solved before training
        (``harness.latency_budget``); None when unavailable.
    family: the model family (``harness.models.FAMILIES``); derived from the model registry
        when not given (None for a model the registry does not know, e.g. a test's own net).
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
    predict_latency: Callable[[nn.Module, str], float] | None = None
    log: Callable[[str], None] = print
    family: str | None = None

    def __post_init__(self) -> None:
        if self.family is None:
            from harness.models import MODELS

            if self.model_name in MODELS:
                self.family = MODELS.get(self.model_name).family

    def finetune_recipe(self, shape: Any, *, paper_steps: int, kind: str = "finetune",
                        small_data: Mapping[str, Any] | None = None) -> Any:
        """``shape`` (a TrainRecipe whose length is ignored) sized for this preset: see
        ``methods.recipes.preset_recipe``, the one place the presets' step counts live."""
        return preset_recipe(shape, self.preset, paper_steps=paper_steps, kind=kind, small_data=small_data)

    def cached(self, name: str, key_parts: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``, stored under ``workdir/name/<hash of key_parts>.pt`` and loaded from
        there when present, so every budget of a sweep (and a resumed sweep) computes it once.

        ``key_parts`` must hold everything the value depends on; modules and tensors in it are
        hashed by content (weights), everything else by ``repr``. The value must be loadable with
        ``weights_only=True`` (tensors, numbers, strings and containers of them)."""
        import torch

        path = Path(self.workdir) / name / f"{content_digest(key_parts)}.pt"
        if path.exists():
            self.log(f"    {name} reused from {path.name}")
            return torch.load(path, weights_only=True)
        value = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(value, tmp)
        tmp.replace(path)  # atomic: a killed run never leaves half a value behind
        return value


def content_digest(parts: Any) -> str:
    """A 20-hex-digit hash of ``parts``: modules by their state dict, tensors by their bytes,
    mappings and sequences element-wise, anything else by ``repr``."""
    import hashlib

    digest = hashlib.sha256()
    _feed(digest, parts)
    return digest.hexdigest()[:20]


def _feed(digest: Any, obj: Any) -> None:
    import torch

    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    elif isinstance(obj, Mapping):
        digest.update(b"{")
        for k, v in obj.items():
            digest.update(repr(k).encode())
            _feed(digest, v)
        digest.update(b"}")
    elif isinstance(obj, (list, tuple)):
        digest.update(b"[")
        for v in obj:
            _feed(digest, v)
        digest.update(b"]")
    else:
        digest.update(repr(obj).encode())
