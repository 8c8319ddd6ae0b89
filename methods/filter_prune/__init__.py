"""Filter pruning with LayerPrune's criteria (papers.md 2.2 step 5), the paper's counterpart:
same filter criteria as ``layer-prune`` (collected in one shot by ``methods.layer_prune.criteria``),
channels removed physically and dependency-aware by Torch-Pruning (``tp.pruner.MetaPruner``),
then the same fine-tune recipe (``methods.layer_prune.recipe``).

Differences from the paper's engine, on purpose: one-shot removal of a uniform fraction per
layer (``ratio``) or of the fraction that meets a MACs target (``macs``), instead of the engine's
iterative 100-neurons-per-10-iterations schedule; that keeps the comparison with layer-prune at
matched MACs one-shot on both sides.

CIFAR ResNets: their option-A shortcut (avg-pool + zero-pad, ``F.pad``) is not traced by
Torch-Pruning's dependency graph (pruning a block output breaks the residual add), so only the
block-internal width (each block's conv1 output) is pruned there: exactly the points where the
paper's engine places its block gates. Other models: every conv, with TP's residual coupling;
the classifier is never pruned.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Mapping

import torch
import torch_pruning as tp
from torch import nn

from harness.errors import UserError
from harness.macs import count_cost
from harness.models.cifar_resnet import BasicBlock, CifarResNet
from methods.base import Compressed, Deployable, Knob, Method, MethodContext
from methods.layer_prune import DEFAULT_CRITERION, _batches_knob, _criterion_knob, collect_scores
from methods.layer_prune import criteria as crit
from methods.layer_prune.graph import narrower_convs_check
from methods.layer_prune.recipe import finetune

MAX_RATIO = 0.95  # TP keeps at least one channel per layer; beyond this layers degenerate


class CriterionImportance(tp.importance.Importance):
    """Torch-Pruning importance from precomputed per-filter scores (conv path -> tensor).

    A group's score per channel = mean over the group's convs whose OUTPUT channels are pruned
    and that have scores (coupled layers of a residual add contribute each), mapped to the
    root's channel order through ``root_idxs``. Groups with no scored conv get the squared
    L2 weight norm of their root (never happens for the conv-BN models here)."""

    def __init__(self, model: nn.Module, scores: Mapping[str, torch.Tensor]):
        self.by_module = {model.get_submodule(k): v.detach().float() for k, v in scores.items()}

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor:
        n = len(group[0].idxs)
        total, count = torch.zeros(n), 0
        for item in group:
            dep, idxs = item.dep, item.idxs
            score = self.by_module.get(dep.layer)
            if score is None or dep.pruning_fn != tp.pruner.function.prune_conv_out_channels:
                continue
            if any(r is None for r in item.root_idxs):
                continue
            total.scatter_add_(0, torch.tensor(item.root_idxs), score[torch.tensor(idxs)])
            count += 1
        if count == 0:
            return tp.importance.MagnitudeImportance(p=2)(group)
        return total / count


def _ignored(model: nn.Module) -> list[nn.Module]:
    """Layers whose output channels stay: every Linear (the classifier) and, for CIFAR ResNets,
    every conv but the blocks' conv1 (see the module docstring)."""
    out = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if isinstance(model, CifarResNet):
        keep = {b.conv1 for b in model.modules() if isinstance(b, BasicBlock)}
        out += [m for m in model.modules() if isinstance(m, nn.Conv2d) and m not in keep]
    return out


def prune_ratio(model: nn.Module, scores: Mapping[str, torch.Tensor], ratio: float,
                input_shape: tuple[int, ...]) -> nn.Module:
    """``model`` with ``ratio`` of the channels of every prunable layer removed, in place."""
    if ratio <= 0:
        return model.eval()
    model.eval()
    example = torch.zeros(1, *input_shape)
    pruner = tp.pruner.MetaPruner(model, example, importance=CriterionImportance(model, scores),
                                  pruning_ratio=ratio, ignored_layers=_ignored(model))
    pruner.step()
    return model


def prune_to_macs(model: nn.Module, scores: Mapping[str, torch.Tensor], target_macs: float,
                  input_shape: tuple[int, ...], iters: int = 14) -> tuple[nn.Module, float]:
    """``model`` pruned (in place) at the ratio whose MACs are closest to ``target_macs``, found
    by bisection (MACs fall monotonically with the ratio); returns (model, ratio)."""
    cache: dict[float, int] = {}

    def macs_at(r: float) -> int:
        if r not in cache:
            cache[r] = count_cost(prune_ratio(copy.deepcopy(model), scores, r, input_shape), input_shape).macs
        return cache[r]

    lo, hi = 0.0, MAX_RATIO
    if macs_at(hi) > target_macs:
        raise UserError(f"filter pruning cannot reach {target_macs:.3g} MACs "
                        f"(ratio {MAX_RATIO} gives {macs_at(hi):.3g})")
    best = min((lo, hi), key=lambda r: abs(macs_at(r) - target_macs))
    for _ in range(iters):
        mid = (lo + hi) / 2
        m = macs_at(mid)
        if abs(m - target_macs) < abs(macs_at(best) - target_macs):
            best = mid
        lo, hi = (mid, hi) if m > target_macs else (lo, mid)
    return prune_ratio(model, scores, best, input_shape), best


class FilterPrune(Method):
    name = "filter-prune"
    summary = ("filter pruning with LayerPrune's criteria via Torch-Pruning (physically narrower "
               "layers, depth kept), fine-tuned like layer-prune; CIFAR ResNets: block-internal "
               "width only")
    produces = "smaller"
    report_columns = ("criterion", "filter_prune_ratio", "graph_conv_nodes", "graph_narrower_convs", "graph_filter_ok")
    knobs = (
        Knob("ratio", float, (0.25, 0.5), low=0.0, high=MAX_RATIO,
             help="fraction of channels removed in every prunable layer"),
        Knob("macs", float, (), low=0.05, high=1.0,
             help="alternative to ratio: target fraction of the dense MACs (ratio found by search)"),
        _criterion_knob(),
        _batches_knob(),
    )
    exclusive = (("ratio", "macs"),)

    def apply(self, ctx: MethodContext, knobs: Mapping[str, Any]) -> Compressed:
        model = ctx.model.eval()
        shape = tuple(ctx.data.input_shape)
        criterion = knobs.get("criterion", DEFAULT_CRITERION)
        t0 = time.perf_counter()
        scores = crit.filter_scores(collect_scores(ctx, model, knobs.get("collect_batches")), criterion)
        dense_macs = count_cost(model, shape).macs
        pruned = copy.deepcopy(model)
        if "macs" in knobs:
            pruned, ratio = prune_to_macs(pruned, scores, knobs["macs"] * dense_macs, shape)
        else:
            ratio = float(knobs.get("ratio", 0.5))
            pruned = prune_ratio(pruned, scores, ratio, shape)
        ctx.log(f"    filter-prune[{criterion}]: ratio {ratio:.3f}, MACs "
                f"{count_cost(pruned, shape).macs / dense_macs:.3f} of dense")
        train_s = time.perf_counter() - t0
        extra: dict[str, Any] = {"criterion": criterion, "filter_prune_ratio": ratio}
        if not ctx.structure_only:
            extra["finetune_s"] = finetune(pruned, ctx.data, ctx.preset, seed=ctx.seed,
                                           desc="filter-prune finetune", log=ctx.log)
            train_s += extra["finetune_s"]
        return Compressed([Deployable(pruned.eval(), check_graph=narrower_convs_check(model, shape),
                                      extra=extra)], train_s=train_s)
