"""Physical channel removal from precomputed per-filter scores, with Torch-Pruning
(``tp.pruner.MetaPruner``, dependency-aware): a uniform fraction of every prunable layer
(``prune_ratio``) or the fraction that meets a MACs target (``prune_to_macs``). Which layers keep
their output channels is declared per model family (``harness.models.pruning_ignored_layers``;
CIFAR ResNets: only the blocks' internal width, see ``harness.models.cifar_resnet``)."""
from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
import torch_pruning as tp
from torch import nn

from harness.errors import UserError
from harness.macs import count_cost
from harness.models import pruning_ignored_layers

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


def prune_ratio(model: nn.Module, scores: Mapping[str, torch.Tensor], ratio: float,
                input_shape: tuple[int, ...]) -> nn.Module:
    """``model`` with ``ratio`` of the channels of every prunable layer removed, in place."""
    if ratio <= 0:
        return model.eval()
    model.eval()
    example = torch.zeros(1, *input_shape)
    pruner = tp.pruner.MetaPruner(model, example, importance=CriterionImportance(model, scores),
                                  pruning_ratio=ratio, ignored_layers=pruning_ignored_layers(model))
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

    # MACs fall with the ratio only up to a point: where a ratio would leave a layer no channel,
    # Torch-Pruning leaves that layer whole (resnet56: 0.92 gives 8.9 M MACs, 0.94 gives 46.1 M,
    # its 16-channel stage back at full width). So bisect below the ratio with the fewest MACs
    # on a coarse grid, not below MAX_RATIO.
    grid = [MAX_RATIO * i / 20 for i in range(1, 21)]
    lo, hi = 0.0, min(grid, key=macs_at)
    if macs_at(hi) > target_macs:
        raise UserError(f"filter pruning cannot reach {target_macs:.3g} MACs "
                        f"(the fewest it reaches is {macs_at(hi):.3g}, at ratio {hi:.3g})")
    best = min((lo, hi), key=lambda r: abs(macs_at(r) - target_macs))
    for _ in range(iters):
        mid = (lo + hi) / 2
        m = macs_at(mid)
        if abs(m - target_macs) < abs(macs_at(best) - target_macs):
            best = mid
        lo, hi = (mid, hi) if m > target_macs else (lo, mid)
    return prune_ratio(model, scores, best, input_shape), best


def prunable_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv whose width filter pruning chooses (not in the family's
    ``pruning_ignored_layers``, not grouped), by module path."""
    ignored = set(map(id, pruning_ignored_layers(model)))
    return {name: m.out_channels for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and id(m) not in ignored and m.groups == 1}


def prune_widths(model: nn.Module, scores: Mapping[str, torch.Tensor], widths: Mapping[str, int],
                 input_shape: tuple[int, ...]) -> nn.Module:
    """``model`` with each conv in ``widths`` (module path -> output channels to keep) pruned to
    that width, in place, by the same criterion scores (Torch-Pruning, per-layer ratios)."""
    model.eval()
    current = prunable_widths(model)
    ratios = {}
    for name, keep in widths.items():
        total = current[name]
        if not 1 <= keep <= total:
            raise UserError(f"cannot keep {keep} of {total} channels of {name}")
        if keep < total:
            # TP keeps int(total * (1 - ratio)) channels: aim half a channel above ``keep``
            ratios[model.get_submodule(name)] = 1.0 - (keep + 0.5) / total
    if not ratios:
        return model
    example = torch.zeros(1, *input_shape)
    pruner = tp.pruner.MetaPruner(model, example, importance=CriterionImportance(model, scores), pruning_ratio=0.0,
                                  pruning_ratio_dict=ratios, ignored_layers=pruning_ignored_layers(model))
    pruner.step()
    got = prunable_widths(model)
    wrong = {n: (w, got[n]) for n, w in widths.items() if got.get(n) != w}
    if wrong:
        raise RuntimeError(f"Torch-Pruning kept other widths than asked (asked, got): {wrong}")
    return model


def aligned(width: int, step: int, up: bool, limit: int) -> int:
    """``width`` rounded up (or down) to a multiple of ``step``, within [min(step, limit), limit]."""
    w = -(-width // step) * step if up else (width // step) * step
    return max(min(step, limit), min(limit, w))
