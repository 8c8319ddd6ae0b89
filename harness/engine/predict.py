"""``harness predict``: the predicted p50 of compressed networks on targets, before any training.

Each (model, method, budget) is built by the method's structure-only path (as ``harness
inspect`` does: the architecture the fine-tune would start from, no training), and each
deployable's p50 is predicted by the target's latency model (``harness.engine.latency_model``),
which measures what its cached table lacks first (probe cells, with progress lines). Dynamic
networks (FTWT) have no static shape to predict from: their row gives the method's own cost
estimate before training (MACs) and says so. Networks that need target capabilities the model does
not probe (int8 QDQ graphs, run-time weight shapes) are listed with that reason.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from harness.engine import latency_model as lm
from harness.engine.bench import text_table
from harness.engine.inspection import _classes, structure_only
from harness.errors import UserError
from harness.macs import count_cost
from harness.models import build_model, model_spec
from harness.provenance import cpu_count
from methods import get_method
from targets import get_target
from targets.base import SCENARIOS

PREDICT_COLUMNS = ["model", "method", "budget", "variant", "target", "scenario", "batch", "macs_ratio",
                   "p50_predicted_ms", "speedup_predicted", "p50_predicted_note"]


def _budgets(method_name: str, budgets: dict[str, dict[str, list[str]]], preset: str) -> list[dict[str, Any]]:
    method = get_method(method_name)
    raw = budgets.get(method_name, {})
    values = {k: [method.knob(k).parse(str(v)) for v in vs] for k, vs in raw.items()}
    return method.budgets(values, preset)


def predict(models: list[str], methods: list[str] | None = None, budgets: dict[str, dict[str, list[str]]] | None = None,
            targets: list[str] | None = None, scenarios: list[str] | None = None, *, threads: int | None = None,
            offline_batch: int = 64, preset: str = "quick", seed: int = 0, workdir: Path | None = None,
            cache: Path | None = None, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One row per (model, method, budget, deployable, target, scenario) with the predicted p50
    (``p50_predicted_ms``, at the latency table's level), the predicted speed-up over the dense
    network and a note (the correction's form, or why there is no prediction)."""
    methods = methods or ["none"]
    budgets = budgets or {}
    targets = targets or ["ort-cpu"]
    scenarios = scenarios or ["SingleStream"]
    threads = threads or cpu_count()
    for s in scenarios:
        if s not in SCENARIOS:
            raise UserError(f"unknown scenario {s!r} (choose from {', '.join(SCENARIOS)})")
    for name in budgets:
        if name not in methods:
            raise UserError(f"budgets given for method {name!r}, which is not in --methods")
    options: dict[str, dict[str, Any]] = {}
    for key in targets:
        target = get_target(key)
        options[key] = target.parse_options({})
        avail = target.availability(options[key])
        if not avail.ok:
            raise UserError(f"target {key} is not available here: {avail.reason}")
    workdir = workdir or lm.cache_folder() / "work"
    rows: list[dict[str, Any]] = []
    for model_name in models:
        spec = model_spec(model_name)
        classes = _classes(spec.family)
        shape = (3, spec.input_size, spec.input_size)
        torch.manual_seed(seed)
        dense = build_model(model_name, num_classes=classes).eval()
        dense_macs = count_cost(dense, shape).macs
        solver = lm.fraction_predictor(dense, shape, threads, options, workdir, log=log, folder=cache)
        nets: list[tuple[str, str, str, Any, str]] = [("none", "", "default", dense, "")]
        for method_name in dict.fromkeys(m for m in methods if m != "none"):
            method = get_method(method_name)
            for knobs in _budgets(method_name, budgets, preset):
                budget = ",".join(f"{k}={v}" for k, v in knobs.items())
                log(f"[{model_name}] {method_name}[{budget}]: building the compressed network (structure only)")
                torch.manual_seed(seed)
                start = build_model(model_name, num_classes=classes).eval()
                deps = structure_only(model_name, start, method_name, knobs, classes, seed,
                                      predict_latency=solver, log=log)
                for dep in deps:
                    why = ""
                    if method.produces == "dynamic":
                        est = dep.extra.get("ftwt_est_reduction")
                        why = ("dynamic network: its cost depends on the input; the method's estimate before "
                               "training: " + (f"{100 * (1 - est):.1f}% of the dense MACs" if est is not None
                                               else "none") + "; its latency is not modelled")
                    elif dep.requires:
                        why = f"needs {', '.join(sorted(dep.requires))}: not modelled by unit probes"
                    nets.append((method_name, budget, dep.variant, dep.model.eval(), why))
        for target in targets:
            for scenario in scenarios:
                batch = 1 if scenario == "SingleStream" else offline_batch
                tm = lm.TargetModel(target, options[target], threads, batch, scenario, shape, workdir, folder=cache)
                modelled = [n for _, _, _, n, why in nets if not why]
                table, errors = tm.ensure(modelled, [dense], log=log)
                for e in errors[:5]:
                    log(f"    probe error: {e}")
                for method_name, budget, variant, net, why in nets:
                    macs = count_cost(net, shape).macs
                    row = {"model": model_name, "method": method_name, "budget": budget, "variant": variant,
                           "target": target, "scenario": scenario, "batch": batch,
                           "macs_ratio": dense_macs / macs if macs else None,
                           "p50_predicted_ms": None, "speedup_predicted": None, "p50_predicted_note": why}
                    if not why:
                        p = tm.predict(net, dense, table)
                        row.update({"p50_predicted_ms": p.ms, "p50_predicted_note": p.note,
                                    "speedup_predicted": 1.0 / p.frac_of_dense if p.frac_of_dense else None})
                    rows.append(row)
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The predictions as an aligned text table (the note last, unpadded)."""
    return text_table(rows, list(PREDICT_COLUMNS))
