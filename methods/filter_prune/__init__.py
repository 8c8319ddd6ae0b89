"""Filter pruning with LayerPrune's criteria (papers.md 2.2 step 5), the paper's counterpart:
same filter criteria as ``layer-prune`` (collected in one shot, ``methods.pruning.criteria``),
channels removed physically and dependency-aware by Torch-Pruning (``methods.pruning.channels``),
then the same fine-tune recipe (``methods.pruning.recipe``).

Differences from the paper's engine, on purpose: one-shot removal of a uniform fraction per
layer (``ratio``) or of the fraction that meets a MACs target (``macs``), instead of the engine's
iterative 100-neurons-per-10-iterations schedule; that keeps the comparison with layer-prune at
matched MACs one-shot on both sides. Which layers keep their channels is declared per model
family (CIFAR ResNets: only the block-internal width, where the paper's engine places its
gates; other models: every conv, with Torch-Pruning's residual coupling; never the classifier).

Latency instead of a ratio (issue 15): ``latency=F`` solves the ratio for F x the dense p50 on
``latency_target`` with that target's latency model (``MethodContext.predict_latency``,
``harness.latency_budget.solve_knob``) before the fine-tune; the row verifies it by measurement
(``latency_target_ms``, ``latency_miss``). ``align=8|16|auto`` rounds the chosen widths to a
multiple of 4, 8 or 16 (``auto``: up or down, where the model predicts the network faster; with a
latency budget the ratio is solved over the aligned networks, so the budget is the deployed
network's), because
blocked layouts (ORT's NCHWc, OpenVINO's kernels) run a width that is no multiple of their block
much slower than the next multiple (``benchmarks/width_staircase.py``).
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable, Mapping

from torch import nn

from harness.errors import UserError
from harness.latency_budget import solve_knob
from harness.macs import count_cost
from methods.base import Compressed, Deployable, Knob, Method, MethodContext
from methods.pruning import criteria as crit
from methods.pruning.channels import (MAX_RATIO, CriterionImportance, aligned, prunable_widths, prune_ratio,
                                      prune_to_macs, prune_widths)
from methods.pruning.graph import narrower_convs_check
from methods.pruning.recipe import finetune
from methods.pruning.scores import batches_knob, collect_scores, criterion_knob

__all__ = ["FilterPrune", "CriterionImportance", "prune_ratio", "prune_to_macs"]
# align=auto tries these: on this machine ORT runs a conv whose channel count is a multiple of 4 in its
# blocked NCHWc layout and any other count 1.2-1.8x slower; OpenVINO's kernels step at 16
# (benchmarks/width_staircase.py)
ALIGN_STEPS = (4, 8, 16)
ALIGN_TIE = 0.02  # candidates predicted within 2% of the fastest count as equally fast: the widest wins


class FilterPrune(Method):
    name = "filter-prune"
    summary = ("filter pruning with LayerPrune's criteria via Torch-Pruning (physically narrower "
               "layers, depth kept), fine-tuned like layer-prune; CIFAR ResNets: block-internal "
               "width only; latency budgets and hardware-aligned widths from the target's latency model")
    produces = "smaller"
    report_columns = ("criterion", "filter_prune_ratio", "filter_prune_align", "finetune_steps", "graph_conv_nodes",
                      "graph_narrower_convs", "graph_filter_ok", "latency_budget", "latency_budget_target",
                      "latency_predicted_frac")
    knobs = (
        Knob("ratio", float, (0.25, 0.5), low=0.0, high=MAX_RATIO, default=0.5, quick_sweep=(0.5,),
             help="fraction of channels removed in every prunable layer"),
        Knob("macs", float, (), low=0.05, high=1.0,
             help="alternative to ratio: target fraction of the dense MACs (ratio found by search)"),
        Knob("latency", float, (), low=0.05, high=1.0,
             help="alternative to ratio: target p50 as a fraction of the dense p50 on latency_target, "
                  "solved with the target's latency model before the fine-tune, verified on the row"),
        Knob("latency_target", str, (), default="ort-cpu",
             help="target whose latency model latency=F and align=auto use"),
        Knob("align", str, (), choices=("none", "auto", "4", "8", "16"), default="none",
             help="widths rounded to a multiple: 4, 8 or 16 (nearest), or auto: rounded up or down to 4, 8 "
                  "or 16 where latency_target's model predicts the network faster (the widest such)"),
        criterion_knob(crit.FILTER_CHOICES),
        batches_knob(),
    )
    exclusive = (("ratio", "macs", "latency"),)

    def validate(self, values: Mapping[str, Any]) -> None:
        if "latency_target" in values and "latency" not in values and values.get("align") != "auto":
            raise UserError("knob latency_target needs latency=F or align=auto")

    def apply(self, ctx: MethodContext, knobs: Mapping[str, Any]) -> Compressed:
        model = ctx.model.eval()
        shape = tuple(ctx.data.input_shape)
        criterion = knobs["criterion"]
        target = knobs["latency_target"]
        t0 = time.perf_counter()
        scores = crit.filter_scores(collect_scores(ctx, model, knobs.get("collect_batches")), criterion)
        dense_macs = count_cost(model, shape).macs
        extra: dict[str, Any] = {"criterion": criterion}

        def align(net: nn.Module, log: bool = True) -> tuple[nn.Module, dict[str, Any]]:
            if knobs["align"] == "none":
                return net, {}
            return _align(ctx, model, net, scores, knobs["align"], target, shape, log=log)

        def build(r: float, log: bool = True) -> tuple[nn.Module, dict[str, Any]]:
            return align(prune_ratio(copy.deepcopy(model), scores, r, shape), log)

        if "latency" in knobs:
            # the budget is the deployed network's: with an alignment, every candidate ratio is
            # predicted as the aligned network it would deploy (aligning after the solve could land
            # far from the budget: vgg16_bn's widths rounded down to 16 ran at 0.27 of dense where
            # the unaligned solution was 0.52)
            predict = _predictor(ctx, target)
            sol = solve_knob(lambda ratios: predict([build(r, log=False)[0] for r in ratios]),
                             float(knobs["latency"]), 0.0, MAX_RATIO, log=ctx.log)
            ratio = sol.value
            pruned, align_extra = build(ratio)
            extra.update(sol.columns(target))
        elif "macs" in knobs:
            pruned, ratio = prune_to_macs(copy.deepcopy(model), scores, knobs["macs"] * dense_macs, shape)
            pruned, align_extra = align(pruned)
        else:
            ratio = float(knobs["ratio"])
            pruned, align_extra = build(ratio)
        extra.update(align_extra)
        ctx.log(f"    filter-prune[{criterion}]: ratio {ratio:.3f}, MACs "
                f"{count_cost(pruned, shape).macs / dense_macs:.3f} of dense")
        train_s = time.perf_counter() - t0
        extra["filter_prune_ratio"] = ratio
        if not ctx.structure_only:
            extra.update(finetune(pruned, ctx, "filter-prune finetune"))
            train_s += extra["finetune_s"]
        return Compressed([Deployable(pruned.eval(), check_graph=narrower_convs_check(model, shape),
                                      extra=extra)], train_s=train_s)


def _predictor(ctx: MethodContext, target: str) -> Callable[[list[nn.Module]], list[float]]:
    if ctx.predict_latency is None:
        raise UserError("filter-prune: latency=F and align=auto need the target's latency model, which this "
                        "run does not have")
    return lambda nets: list(ctx.predict_latency(nets, target))


def _align(ctx: MethodContext, dense: nn.Module, pruned: nn.Module, scores: Any, align: str, target: str,
           shape: tuple[int, ...], log: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Widths rounded to a hardware-friendly multiple. ``8``/``16``: each width to the nearest
    multiple. ``auto``: every candidate (each width rounded up, or down, to 8 or to 16) is
    predicted on ``target``; the widest of those predicted within ``ALIGN_TIE`` of the fastest is
    kept if it is predicted faster than the unaligned network, else the unaligned one."""
    full, widths = prunable_widths(dense), prunable_widths(pruned)
    if align != "auto":
        step = int(align)
        near = {n: aligned(w, step, (w % step) * 2 >= step, full[n]) for n, w in widths.items()}
        return prune_widths(copy.deepcopy(dense), scores, near, shape), {"filter_prune_align": f"nearest {step}"}
    names = ["none"]
    cands = [pruned]
    for step in ALIGN_STEPS:
        for up in (True, False):
            w = {n: aligned(v, step, up, full[n]) for n, v in widths.items()}
            if w != widths:
                names.append(f"{'up' if up else 'down'} {step}")
                cands.append(prune_widths(copy.deepcopy(dense), scores, w, shape))
    fracs = _predictor(ctx, target)(cands)
    fastest = min(fracs)
    tied = [i for i, f in enumerate(fracs) if f <= fastest * (1 + ALIGN_TIE)]
    best = max(tied, key=lambda i: count_cost(cands[i], shape).macs)
    if fracs[best] >= fracs[0]:
        best = 0
    if log:
        ctx.log("    filter-prune align=auto on " + target + ": " +
                ", ".join(f"{n} {f:.3f}" for n, f in zip(names, fracs)) + f" of dense predicted; chose {names[best]}")
    return cands[best], {"filter_prune_align": names[best], "filter_prune_align_predicted":
                         "; ".join(f"{n}={f:.4f}" for n, f in zip(names, fracs))}
