"""LayerPrune (Elkerdawy et al., ACCV 2020; papers.md section 2): rank whole units (residual
blocks, shape-keeping VGG conv units) by the mean of a filter criterion and remove the least
important ones, replacing each by identity: a physically shallower network. Then fine-tune.

The shared pieces (criteria incl. imprint, score collection, unit removal, channel pruning for
the paired twin, graph checks, the fine-tune recipe) are the pruning kit, ``methods.pruning``;
this package adds the method and ``latency`` (the latency-budget form). Removable units are
declared by each model family in ``harness.models`` (``removable_units``).
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Mapping

import numpy as np
from torch import nn

from harness.errors import UserError
from harness.macs import count_cost
from harness.models import Unit, removable_units
from methods.base import Compressed, Deployable, Knob, Method, MethodContext
from methods.layer_prune import latency as lat
from methods.pruning import criteria as crit
from methods.pruning.channels import prune_to_macs
from methods.pruning.graph import DenseGraph, fewer_convs_check, narrower_convs_check
from methods.pruning.recipe import finetune
from methods.pruning.scores import batches_knob, collect_scores, criterion_knob
from methods.pruning.units import removed_copy
VGG_RULE = ("VGG: only conv-BN-ReLU units with C_in == C_out, stride 1, no pooling inside are "
            "removable (OUR ASSUMPTION; the paper released no VGG removal code)")
PAIR_VARIANT = "filter@matched-macs"


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
    report_columns = ("criterion", "layer_prune_units_removed", "layer_prune_units_total", "finetune_steps",
                      "pair_macs_target",
                      "filter_prune_ratio", "graph_conv_nodes", "graph_dense_conv_nodes", "graph_fewer_convs",
                      "graph_narrower_convs", "latency_budget", "latency_budget_target",
                      "latency_achieved_frac", "latency_within_tolerance")
    knobs = (
        Knob("layers", str, ("1", "2", "4", "half"), default="1", quick_sweep=("half",),
             help="units removed: a count or 'half' (= ceil(removable/2)). Removable units are "
                  "declared per model: ResNet blocks keeping width and resolution, MobileNetV2 "
                  "blocks with identity skip; " + VGG_RULE),
        Knob("latency", float, (), low=0.05, high=1.0,
             help="alternative to layers: target p50 as a fraction of the dense p50 on "
                  "latency_target; units are removed by importance until it is met"),
        Knob("latency_target", str, (), default="ort-cpu", help="target measured by latency=F"),
        criterion_knob(),
        Knob("pair", str, ("none",), choices=("none", "filter"), default="none",
             help="filter: also a filter-pruned model (same criterion, Torch-Pruning) at the "
                  f"layer-pruned model's MACs, variant {PAIR_VARIANT}, same fine-tune"),
        batches_knob(),
    )
    exclusive = (("layers", "latency"),)

    def validate(self, values: Mapping[str, Any]) -> None:
        if "layers" in values:
            _check_layers(str(values["layers"]))
        if "latency_target" in values and "latency" not in values:
            raise UserError("knob latency_target needs latency=F")
        if values.get("pair") == "filter" and values.get("criterion") == crit.IMPRINT:
            raise UserError("pair=filter needs a filter criterion; imprint scores units, not filters")

    def apply(self, ctx: MethodContext, knobs: Mapping[str, Any]) -> Compressed:
        model = ctx.model.eval()
        shape = tuple(ctx.data.input_shape)
        units = removable_units(model)
        if not units:
            raise UserError(f"{ctx.model_name} has no removable units")
        criterion = knobs["criterion"]
        t0 = time.perf_counter()
        scores = collect_scores(ctx, model, knobs.get("collect_batches"), criterion)
        importance = crit.unit_importance(scores, units, criterion)
        order = np.argsort(importance, kind="stable")
        extra: dict[str, Any] = {"criterion": criterion, "layer_prune_units_total": len(units)}
        if "latency" in knobs:
            chosen, latency_extra = _latency_choice(ctx, model, units, order, knobs)
            extra.update(latency_extra)
        else:
            chosen = [int(i) for i in order[:parse_layers(str(knobs["layers"]), len(units))]]
        removed = [units[i] for i in chosen]
        pruned = removed_copy(model, removed)
        extra.update({"layer_prune_units_removed": len(removed),
                      "layer_prune_removed": " ".join(u.name for u in removed)})
        ctx.log(f"    layer-prune[{criterion}]: removing {len(removed)}/{len(units)} units: "
                f"{extra['layer_prune_removed']}")
        train_s = time.perf_counter() - t0
        if not ctx.structure_only:
            extra.update(finetune(pruned, ctx, "layer-prune finetune"))
            train_s += extra["finetune_s"]
        dense_graph = DenseGraph(model, shape)
        deps = [Deployable(pruned, check_graph=fewer_convs_check(dense_graph, shape), extra=extra)]
        if knobs["pair"] == "filter":
            dep, pair_s = _paired_filter(ctx, model, scores, criterion, count_cost(pruned, shape).macs,
                                         dense_graph)
            deps.append(dep)
            train_s += pair_s
        return Compressed(deps, train_s=train_s)


def _latency_choice(ctx: MethodContext, model: nn.Module, units: list[Unit], order: np.ndarray,
                    knobs: Mapping[str, Any]) -> tuple[list[int], dict[str, Any]]:
    target = knobs["latency_target"]
    shape = tuple(ctx.data.input_shape)
    if ctx.measure_latency is None:
        # No target to measure (structure-only / inspect): MACs stand in for latency, and the
        # row says so in layer_prune_latency_source.
        measure, source = lat.macs_measure(shape), "macs-proxy"
    else:
        probe = ctx.measure_latency
        measure, source = (lambda m: probe(m, target)), f"measured:{target}"
    p = lat.plan(model, units, order, float(knobs["latency"]), shape, measure, source, ctx.log)
    unit = "frac" if source != "macs-proxy" else "macs"  # the probe's unit: a fraction of dense p50
    extra = {"layer_prune_latency_source": source, "layer_prune_latency_probes": p.probes,
             "latency_budget": float(knobs["latency"]), "latency_budget_target": target,
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
    t0 = time.perf_counter()
    shape = tuple(ctx.data.input_shape)
    twin, ratio = prune_to_macs(copy.deepcopy(model), crit.filter_scores(scores, criterion), macs, shape)
    extra: dict[str, Any] = {"criterion": criterion, "filter_prune_ratio": ratio, "pair_macs_target": macs}
    if not ctx.structure_only:
        extra.update(finetune(twin, ctx, "filter-prune finetune"))
    dep = Deployable(twin.eval(), variant=PAIR_VARIANT, check_graph=narrower_convs_check(dense_graph, shape),
                     extra=extra)
    return dep, time.perf_counter() - t0
