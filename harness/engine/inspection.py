"""``harness inspect`` (MACs, params, size of a dense or compressed model) and ``harness ls``."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from harness.data import load_data
from harness.errors import UserError
from harness.macs import CONVENTION, count_cost, size_bytes
from harness.models import MODELS, build_model, model_spec
from harness.train import BASELINE_RECIPES
from methods import METHODS, MethodContext, get_method
from targets import TARGETS, get_target


def _classes(family: str) -> int:
    return 10 if family.endswith("cifar") else 1000


def inspect_model(model_name: str, method_name: str | None = None, budget: list[str] | None = None,
                  seed: int = 0) -> dict[str, Any]:
    """Costs of ``model_name`` at its native input size and class count (10 for CIFAR-shape,
    1000 for ImageNet-shape), dense or after ``method_name`` at ``budget`` (structure only: the
    method produces its architecture without training; weights are the seeded initialisation)."""
    spec = model_spec(model_name)
    classes = _classes(spec.family)
    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=classes)
    shape = (3, spec.input_size, spec.input_size)
    info: dict[str, Any] = {"model": model_name, "method": method_name or "none",
                            "input_shape": list(shape), "num_classes": classes}
    dense = count_cost(model, shape)
    deployable_macs, deployable_size = None, None
    method = get_method(method_name or "none")
    given = {}
    for item in budget or []:
        name, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"--budget {item!r} is not KNOB=VALUE")
        given[name] = [method.knob(name).parse(value)]
    knobs = dict(method.budgets(given)[0])  # the first default value of every knob not given
    info["knobs"] = knobs
    if method.name != "none":
        dep = structure_only(model_name, model, method.name, knobs, classes, seed)[0]
        model, deployable_macs, deployable_size = dep.model, dep.macs, dep.size_bytes
    cost = count_cost(model, shape)
    macs = deployable_macs if deployable_macs is not None else cost.macs
    info.update({"macs": macs, "params": cost.params,
                 "size_bytes": deployable_size if deployable_size is not None else size_bytes(model),
                 "size_fp32_bytes": size_bytes(model), "dense_macs": dense.macs, "dense_params": dense.params,
                 "macs_ratio": dense.macs / macs if macs else None, "convention": CONVENTION})
    return info


def structure_only(model_name: str, model: torch.nn.Module, method_name: str, knobs: dict[str, Any], classes: int,
                   seed: int = 0, predict_latency: Any = None, log: Any = None) -> list[Any]:
    """The deployables ``method_name`` makes of ``model`` at ``knobs`` without training (their
    architectures, the method's structure-only path): what ``inspect`` and ``predict`` look at."""
    spec = model_spec(model_name)
    data = load_data(f"synthetic:64:{classes}", input_size=spec.input_size, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = MethodContext(model_name=model_name, model=model, data=data,
                            recipe=BASELINE_RECIPES["quick"], seed=seed, workdir=Path(tmp),
                            preset="quick", structure_only=True, log=log or (lambda _m: None),
                            predict_latency=predict_latency)
        return get_method(method_name).apply(ctx, knobs).deployables


def listing(what: str | None = None) -> str:
    """Registered methods, targets and models, with availability and its reason."""
    parts = []
    if what in (None, "methods"):
        lines = ["methods:"]
        for name in METHODS.names():
            m = get_method(name)
            knobs = "; ".join(k.describe() for k in m.knobs) or "no knobs"
            lines.append(f"  {name:<14} produces={m.produces:<8} {m.summary} [{knobs}]")
        parts.append("\n".join(lines))
    if what in (None, "targets"):
        lines = ["targets:"]
        for key in TARGETS.names():
            t = get_target(key)
            a = t.availability()
            state = "available" if a.ok else f"unavailable: {a.reason}"
            lines.append(f"  {key:<14} device={t.device:<5} {state}  ({t.summary})")
            caps = ", ".join(sorted(t.capabilities)) or "none"
            lines.append(f"      capabilities: {caps}")
            if t.opt_in:
                lines.append(f"      not in the default sweep (opt-in): {t.opt_in}")
            for knob in t.options:
                lines.append(f"      option {knob.describe()}: {knob.help}")
        parts.append("\n".join(lines))
    if what in (None, "models"):
        lines = ["models:"]
        for name in MODELS.names():
            s = model_spec(name)
            lines.append(f"  {name:<24} {s.family:<22} input {s.input_size}x{s.input_size}  {s.summary}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
