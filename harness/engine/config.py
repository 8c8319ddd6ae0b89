"""Sweep configuration: a dataclass validated in full before the first cell starts."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from harness.errors import UserError
from harness.provenance import cpu_count
from harness.registry import unknown_message
from harness.timing import PRESETS, TimingRules
from harness.train import BASELINE_RECIPES, TrainRecipe
from targets.base import SCENARIOS

# Cell time-outs per preset: a generous multiple of the timing cap plus compile and evaluation.
CELL_TIMEOUT_S = {"quick": 300.0, "standard": 600.0, "publication": 3600.0}


@dataclass
class SweepConfig:
    """Everything a sweep needs. ``methods``/``targets`` None mean: all registered methods, and
    every available CPU target. ``budgets`` maps method -> knob -> raw values (strings or values)."""

    models: list[str] = field(default_factory=lambda: ["resnet20"])
    methods: list[str] | None = None
    budgets: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    targets: list[str] | None = None
    data: str = "digits"
    preset: str = "standard"
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    out: Path = Path("results/default")
    threads: int = field(default_factory=cpu_count)
    offline_batch: int = 64
    pool_size: int = 256  # real test inputs rotated through the timed loop (Offline draws batches from it)
    eval_limit: int | None = None
    seed: int = 0
    checkpoint: Path | None = None
    cell_timeout_s: float | None = None
    timing: TimingRules | None = None  # overrides the preset's timing rules (tests, experts)
    recipe: TrainRecipe | None = None  # overrides the preset's baseline recipe
    target_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: bool = True
    train_limit: int | None = None  # a fixed class-stratified subset of the training split
    executor: str = "local"  # local | inline | ray[:ADDRESS] (see harness.engine.executors)
    artifacts: Path | None = None  # shared artifact location (default OUT/artifacts; baselines: the cache)
    append: bool = False  # allow rows of other data sets or models in the same out directory
    noise: dict[str, Any] = field(default_factory=dict)  # NoiseRules fields (harness.engine.noise) overriding defaults
    cell_items: int = 12  # networks of one model timed in one cell, interleaved with its dense reference
    # scenarios whose cells also time the probes the targets' latency models lack (issue 15; every
    # row gets p50_predicted_ms where its target's model exists): [] = none, rows predict from
    # what is cached
    predict_scenarios: list[str] = field(default_factory=lambda: ["SingleStream"])
    command: str = ""  # the command line that ran the sweep (the CLI fills it in); every row records it

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.artifacts = Path(self.artifacts) if self.artifacts else None
        self.checkpoint = Path(self.checkpoint) if self.checkpoint else None
        if self.preset not in PRESETS:
            raise UserError(unknown_message("preset", self.preset, list(PRESETS)))
        for s in [*self.scenarios, *self.predict_scenarios]:
            if s not in SCENARIOS:
                raise UserError(unknown_message("scenario", s, list(SCENARIOS)))
        if not self.models:
            raise UserError("no models given")
        if self.threads < 1 or self.offline_batch < 1 or self.pool_size < 1 or self.cell_items < 1:
            raise UserError("threads, offline_batch, pool_size and cell_items must be >= 1")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise UserError("eval_limit must be >= 1")
        if self.train_limit is not None and self.train_limit < 1:
            raise UserError("train_limit must be >= 1")
        from harness.engine.executors import EXECUTORS
        from harness.engine.noise import NoiseRules

        try:
            NoiseRules(**self.noise)
        except TypeError as exc:
            raise UserError(f"noise: {exc}") from None

        EXECUTORS.entry(self.executor.partition(":")[0])  # unknown executor: did-you-mean, now

    @property
    def artifact_dir(self) -> Path:
        """Where exported networks, reference logits and input arrays go (by content hash)."""
        return self.artifacts or self.out / "artifacts"

    @property
    def timing_rules(self) -> TimingRules:
        return self.timing or PRESETS[self.preset]

    @property
    def noise_rules(self) -> dict[str, Any]:
        """NoiseRules fields for this sweep: the preset's (``PRESET_NOISE``), then ``noise``."""
        from harness.engine.noise import preset_noise

        return preset_noise(self.preset, self.noise)

    @property
    def baseline_recipe(self) -> TrainRecipe:
        return self.recipe or BASELINE_RECIPES[self.preset]

    @property
    def timeout_s(self) -> float:
        return self.cell_timeout_s or CELL_TIMEOUT_S[self.preset]


def parse_budget_args(args: list[str], methods: list[str] | None) -> dict[str, dict[str, list[str]]]:
    """``METHOD:KNOB=V1,V2`` (repeatable), or ``KNOB=V1,V2`` alone when one method is named."""
    named = [m for m in (methods or []) if m != "none"]
    out: dict[str, dict[str, list[str]]] = {}
    for arg in args:
        head, eq, values = arg.partition("=")
        if not eq or not values:
            raise UserError(f"budget {arg!r} is not METHOD:KNOB=V1,V2")
        method, colon, knob = head.rpartition(":")
        if not colon:
            if len(named) != 1:
                raise UserError(f"budget {arg!r} needs a METHOD: prefix unless exactly one method is named")
            method = named[0]
        out.setdefault(method, {}).setdefault(knob, []).extend(v.strip() for v in values.split(",") if v.strip())
    return out


def _coerce(name: str, value: Any) -> Any:
    if name == "timing" and isinstance(value, Mapping):
        return TimingRules(**value)
    if name == "recipe" and isinstance(value, Mapping):
        return TrainRecipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
    return value


def load_toml(path: Path) -> dict[str, Any]:
    """Read a sweep config file: top-level keys are SweepConfig fields, e.g. ``models = [..]``,
    ``[budgets.deepshift] weight_bits = [5, 4]``, ``[target_options.ov-cpu] precision = "bf16"``."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"malformed config {path}: {exc}") from None
    known = {f.name for f in fields(SweepConfig)}
    for key in raw:
        if key not in known:
            raise UserError(f"malformed config {path}: " + unknown_message("key", key, sorted(known)))
    try:
        return {k: _coerce(k, v) for k, v in raw.items()}
    except TypeError as exc:
        raise UserError(f"malformed config {path}: {exc}") from None
