"""LayerPrune (Elkerdawy et al., ACCV 2020; papers.md section 2): rank whole units (residual
blocks, shape-keeping VGG conv units) by the mean of a filter criterion and remove the least
important ones, replacing each by identity: a physically shallower network. Then fine-tune.

Pieces: ``criteria`` (one-shot collection of the filter criteria, unit importance, ensemble),
``surgery`` (removal), ``latency`` (the latency-budget form), ``recipe`` (the fine-tune recipe
per preset, shared with filter-prune). Removable units are declared by each model family in
``harness.models`` (``removable_units``).
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from harness.errors import UserError
from harness.macs import count_cost
from harness.models import Unit, removable_units
from methods.base import Compressed, Deployable, Knob, Method, MethodContext
from methods.layer_prune import criteria as crit
from methods.layer_prune import latency as lat
from methods.layer_prune.graph import DenseGraph, fewer_convs_check, narrower_convs_check
from methods.layer_prune.recipe import finetune
from methods.layer_prune.surgery import removed_copy

# Default criterion. The ACCV table (per-criterion accuracies) is not retrievable (papers.md
# 2.3), so the table cannot pick it; gate Taylor is the default of the Taylor-pruning engine
# the paper builds on (method 22) and the criterion the paper inserts gates for.
DEFAULT_CRITERION = "gate-taylor"
VGG_RULE = ("VGG: only conv-BN-ReLU units with C_in == C_out, stride 1, no pooling inside are "
            "removable (OUR ASSUMPTION; the paper released no VGG removal code)")
PAIR_VARIANT = "filter@matched-macs"


def _criterion_knob() -> Knob:
    return Knob("criterion", str, (DEFAULT_CRITERION,), choices=crit.CHOICES,
                help="filter criterion scoring units/filters; ensemble = summed ranks of "
                     + ", ".join(crit.ENSEMBLE_OF))


def _batches_knob() -> Knob:
    return Knob("collect_batches", int, (), low=1, high=100000,
                help="training batches for the one-shot criterion collection (default: one epoch)")


def parse_layers(text: str, n_units: int) -> int:
    """``layers`` knob text -> number of units: a positive integer, or ``half`` = ceil(n/2)."""
    if text == "half":
        return max(1, math.ceil(n_units / 2))
    n = int(text)
    if n > n_units:
        raise UserError(f"layers={n} but the model has only {n_units} removable units")
    return n


def _check_layers(text: str) -> None:
    if text != "half" and not (text.isdigit() and int(text) >= 1):
        raise UserError(f"knob layers: {text!r} is not a positive integer or 'half'")


class LayerPrune(Method):
    name = "layer-prune"
    summary = ("LayerPrune (ACCV'20): remove the least important residual blocks / conv units "
               "(mean filter criterion per unit) -> shallower net, fine-tuned; " + VGG_RULE)
    produces = "smaller"
    report_columns = ("criterion", "layer_prune_units_removed", "layer_prune_units_total", "pair_macs_target",
                      "filter_prune_ratio", "graph_conv_nodes", "graph_dense_conv_nodes", "graph_fewer_convs",
                      "graph_narrower_convs", "latency_requested_ms", "latency_achieved_ms",
                      "latency_within_tolerance")
    knobs = (
        Knob("layers", str, ("1", "2", "4", "half"),
             help="units removed: a count or 'half' (= ceil(removable/2)). Removable units are "
                  "declared per model: ResNet blocks keeping width and resolution, MobileNetV2 "
                  "blocks with identity skip; " + VGG_RULE),
        Knob("latency", float, (), low=0.05, high=1.0,
             help="alternative to layers: target p50 as a fraction of the dense p50 on "
                  "latency_target; units are removed by importance until it is met"),
        Knob("latency_target", str, (), help="target measured by latency=F (default ort-cpu)"),
        _criterion_knob(),
        Knob("pair", str, ("none",), choices=("none", "filter"),
             help="filter: also a filter-pruned model (same criterion, Torch-Pruning) at the "
                  f"layer-pruned model's MACs, variant {PAIR_VARIANT}, same fine-tune"),
        _batches_knob(),
    )
    exclusive = (("layers", "latency"),)

    def validate(self, values: Mapping[str, Any]) -> None:
        if "layers" in values:
            _check_layers(str(values["layers"]))
        if "latency_target" in values and "latency" not in values:
            raise UserError("knob latency_target needs latency=F")

    def apply(self, ctx: MethodContext, knobs: Mapping[str, Any]) -> Compressed:
        model = ctx.model.eval()
        shape = tuple(ctx.data.input_shape)
        units = removable_units(model)
        if not units:
            raise UserError(f"{ctx.model_name} has no removable units")
        criterion = knobs.get("criterion", DEFAULT_CRITERION)
        t0 = time.perf_counter()
        scores = collect_scores(ctx, model, knobs.get("collect_batches"))
        importance = crit.unit_importance(scores, units, criterion)
        order = np.argsort(importance, kind="stable")
        extra: dict[str, Any] = {"criterion": criterion, "layer_prune_units_total": len(units)}
        if "latency" in knobs:
            chosen, latency_extra = _latency_choice(ctx, model, units, order, knobs)
            extra.update(latency_extra)
        else:
            chosen = [int(i) for i in order[:parse_layers(str(knobs.get("layers", "1")), len(units))]]
        removed = [units[i] for i in chosen]
        pruned = removed_copy(model, removed)
        extra.update({"layer_prune_units_removed": len(removed),
                      "layer_prune_removed": " ".join(u.name for u in removed)})
        ctx.log(f"    layer-prune[{criterion}]: removing {len(removed)}/{len(units)} units: "
                f"{extra['layer_prune_removed']}")
        train_s = time.perf_counter() - t0
        if not ctx.structure_only:
            extra["finetune_s"] = finetune(pruned, ctx.data, ctx.preset, seed=ctx.seed,
                                           desc="layer-prune finetune", log=ctx.log)
            train_s += extra["finetune_s"]
        dense_graph = DenseGraph(model, shape)
        deps = [Deployable(pruned, check_graph=fewer_convs_check(dense_graph, shape), extra=extra)]
        if knobs.get("pair", "none") == "filter":
            dep, pair_s = _paired_filter(ctx, model, scores, criterion, count_cost(pruned, shape).macs,
                                         dense_graph)
            deps.append(dep)
            train_s += pair_s
        return Compressed(deps, train_s=train_s)


def collect_scores(ctx: MethodContext, model: nn.Module, batches: int | None) -> crit.Scores:
    """The criteria: collected by training (one epoch by default), cached in ``ctx.workdir`` so
    that every budget of a sweep (and filter-prune) shares one collection; structure-only runs
    use data-free stand-ins (see ``criteria.structural_scores``)."""
    if ctx.structure_only:
        return crit.structural_scores(model, ctx.seed)
    settings = crit.CollectSettings(batches=batches)
    path = Path(ctx.workdir) / "layer-prune-criteria" / f"{_scores_key(model, ctx, settings)}.pt"
    if path.exists():
        ctx.log(f"    criteria reused from {path.name}")
        return torch.load(path, weights_only=True)
    scores = crit.collect(model, ctx.data, settings, seed=ctx.seed, log=ctx.log)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(scores, tmp)
    tmp.replace(path)
    return scores


def _scores_key(model: nn.Module, ctx: MethodContext, settings: crit.CollectSettings) -> str:
    """Hash of everything the collected criteria depend on: weights, data, settings, seed."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(repr((ctx.data.content_hash, ctx.data.spec, settings, ctx.seed, crit.CRITERIA)).encode())
    return digest.hexdigest()[:20]


def _latency_choice(ctx: MethodContext, model: nn.Module, units: list[Unit], order: np.ndarray,
                    knobs: Mapping[str, Any]) -> tuple[list[int], dict[str, Any]]:
    target = knobs.get("latency_target", "ort-cpu")
    shape = tuple(ctx.data.input_shape)
    if ctx.measure_latency is None:
        # No target to measure (structure-only / inspect): MACs stand in for latency, and the
        # row says so in layer_prune_latency_source.
        measure, source = lat.macs_measure(shape), "macs-proxy"
    else:
        probe = ctx.measure_latency
        measure, source = (lambda m: probe(m, target)), f"measured:{target}"
    p = lat.plan(model, units, order, float(knobs["latency"]), shape, measure, source, ctx.log)
    unit = "ms" if source != "macs-proxy" else "macs"
    extra = {"layer_prune_latency_source": source, "layer_prune_latency_probes": p.probes,
             f"latency_dense_{unit}": p.dense, f"latency_requested_{unit}": p.requested,
             f"latency_predicted_{unit}": p.predicted, f"latency_achieved_{unit}": p.achieved,
             "latency_achieved_error": p.achieved / p.requested - 1.0,
             "latency_within_tolerance": abs(p.achieved / p.requested - 1.0) <= lat.TOLERANCE}
    if p.notes:
        extra["layer_prune_note"] = "; ".join(p.notes)
    return p.chosen, extra


def _paired_filter(ctx: MethodContext, model: nn.Module, scores: crit.Scores, criterion: str,
                   macs: int, dense_graph: DenseGraph) -> tuple[Deployable, float]:
    """The filter-pruned twin: same criterion scores, Torch-Pruning to ``macs``, same recipe."""
    from methods.filter_prune import prune_to_macs  # filter_prune imports this package

    t0 = time.perf_counter()
    shape = tuple(ctx.data.input_shape)
    twin, ratio = prune_to_macs(copy.deepcopy(model), crit.filter_scores(scores, criterion), macs, shape)
    extra: dict[str, Any] = {"criterion": criterion, "filter_prune_ratio": ratio, "pair_macs_target": macs}
    if not ctx.structure_only:
        extra["finetune_s"] = finetune(twin, ctx.data, ctx.preset, seed=ctx.seed,
                                       desc="filter-prune finetune", log=ctx.log)
    dep = Deployable(twin.eval(), variant=PAIR_VARIANT, check_graph=narrower_convs_check(dense_graph, shape),
                     extra=extra)
    return dep, time.perf_counter() - t0
