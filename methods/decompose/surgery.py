"""Which layers to decompose, with which ranks, and the swap itself (and the fold back).

Scoring apart from surgery: ``ranks.RankPolicy`` picks ranks from a layer's unfoldings; this
module decides what is eligible, applies the skip rule (a layer whose factor chain does not cost
fewer MACs than the layer itself is left alone, counted with the harness's own MAC counter), and
swaps modules in place.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.errors import UserError
from harness.macs import count_macs
from harness.trace import trace_calls
from methods.decompose import factors
from methods.decompose.ranks import RankPolicy

LAYER_POLICIES = ("all", "conv2", "all+linear")
DECOMPS = ("tucker", "cp")
FOLD_TOLERANCE = 1e-5  # relative: ||chain(x) - folded(x)|| / ||chain(x)||
# conv2 of a residual block: CIFAR BasicBlock ``layerX.Y.conv2`` and torchvision's BasicBlock /
# Bottleneck ``layerX.Y.conv2`` (the Bottleneck's middle 3x3): the paper-era ResNet rule.
_CONV2 = re.compile(r"(^|\.)layer\d+\.\d+\.conv2$")


@dataclass
class LayerPlan:
    """What happened to one eligible layer."""

    name: str
    kind: str  # "tucker" | "cp" | "svd"
    shape: tuple[int, ...]
    ranks: list[int] = field(default_factory=list)
    macs_before: int = 0
    macs_after: int = 0
    skipped: str = ""  # why the layer was left alone ("" = decomposed)


def layer_inputs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Per Conv2d/Linear module name, the shape of its input (batch excluded), in forward order."""
    calls = trace_calls(model, input_shape, lambda m: isinstance(m, (nn.Conv2d, nn.Linear)))
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in calls:
        shapes.setdefault(name, shape)
    return shapes


def eligible(model: nn.Module, input_shape: tuple[int, ...], layers: str,
             include_first: bool = False) -> tuple[list[tuple[str, nn.Module]], dict[str, tuple[int, ...]]]:
    """The (name, module) pairs the layer policy selects, and every layer's input shape."""
    if layers not in LAYER_POLICIES:
        raise UserError(f"layers={layers!r}: one of {', '.join(LAYER_POLICIES)}")
    shapes = layer_inputs(model, input_shape)
    modules = dict(model.named_modules())
    order = [n for n in shapes if isinstance(modules[n], nn.Conv2d)]
    first = order[0] if order else None
    chosen = []
    for name in shapes:  # forward order
        m = modules[name]
        if isinstance(m, factors.CHAINS) or any(name.startswith(c + ".") for c in _chain_names(model)):
            continue  # already a factor of a chain
        if isinstance(m, nn.Linear):
            if layers == "all+linear":
                chosen.append((name, m))
            continue
        if name == first and not include_first:
            continue
        if layers == "conv2" and not _CONV2.search(name):
            continue
        chosen.append((name, m))
    if layers == "conv2" and not chosen:
        raise UserError("layers=conv2 found no residual-block conv2 (layerX.Y.conv2) in this model; "
                        "use layers=all")
    return chosen, shapes


def _chain_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, factors.CHAINS)]


def unfold(w: np.ndarray, mode: int) -> np.ndarray:
    """Mode-``mode`` unfolding of a kernel: rows = that mode's channels."""
    return np.moveaxis(w, mode, 0).reshape(w.shape[mode], -1)


def plan_layer(name: str, module: nn.Module, policy: RankPolicy, decomp: str) -> tuple[LayerPlan, nn.Module | None]:
    """The plan and the (still unfilled) chain for one layer, or None with the reason in the plan."""
    w = module.weight.detach().double().cpu().numpy()
    if isinstance(module, nn.Linear):
        plan = LayerPlan(name, "svd", tuple(w.shape), [policy.rank(w)])
        return plan, (factors.SVDLinear(module, plan.ranks[0]) if plan.ranks[0] > 0 else None)
    if module.groups != 1:
        return LayerPlan(name, decomp, tuple(w.shape), skipped="grouped/depthwise conv"), None
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        return LayerPlan(name, decomp, tuple(w.shape), skipped="padding mode not supported"), None
    if tuple(module.kernel_size) == (1, 1):
        if any(p != 0 for p in factors._pair(module.padding)):
            return LayerPlan(name, "svd", tuple(w.shape), skipped="padded 1x1 conv"), None
        plan = LayerPlan(name, "svd", tuple(w.shape), [policy.rank(w.reshape(w.shape[0], -1))])
        return plan, (factors.SVDConv(module, plan.ranks[0]) if plan.ranks[0] > 0 else None)
    r_out, r_in = policy.rank(unfold(w, 0)), policy.rank(unfold(w, 1))
    if decomp == "tucker":
        plan = LayerPlan(name, "tucker", tuple(w.shape), [r_out, r_in])
        return plan, (factors.TuckerConv(module, r_out, r_in) if min(r_out, r_in) > 0 else None)
    # CP: one rank for the whole kernel; the larger of the two channel-mode ranks (paper-era ResNet
    # path: VBMF-based), so that neither channel space is cut below what its policy keeps.
    rank = max(r_out, r_in) if min(r_out, r_in) > 0 else 0
    plan = LayerPlan(name, "cp", tuple(w.shape), [rank])
    return plan, (factors.CPConv(module, rank) if rank > 0 else None)


def _fill(chain: nn.Module, module: nn.Module, seed: int) -> None:
    if isinstance(chain, factors.TuckerConv):
        factors.fill_tucker(chain, module, seed)
    elif isinstance(chain, factors.CPConv):
        factors.fill_cp(chain, module, seed)
    else:
        factors.fill_svd(chain, module)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def decompose_model(model: nn.Module, input_shape: tuple[int, ...], policy: RankPolicy, *,
                    decomp: str = "tucker", layers: str = "all", include_first: bool = False,
                    seed: int = 0) -> list[LayerPlan]:
    """Replace every selected layer of ``model`` (in place) by its factor chain; return the plans.

    Skip rule: a layer with a rank of 0, or whose chain costs at least as many MACs as the layer
    (at its input shape in this model), is left alone and its plan says why.
    """
    if decomp not in DECOMPS:
        raise UserError(f"decomp={decomp!r}: one of {', '.join(DECOMPS)}")
    chosen, shapes = eligible(model, input_shape, layers, include_first)
    plans = []
    for name, module in chosen:
        plan, chain = plan_layer(name, module, policy, decomp)
        plan.macs_before = count_macs(module, shapes[name])
        if chain is None:
            plan.skipped = plan.skipped or "rank 0"
        else:
            plan.macs_after = count_macs(chain, shapes[name])
            if plan.macs_after >= plan.macs_before:
                plan.skipped = f"no MAC saving ({plan.macs_after} >= {plan.macs_before})"
        if not plan.skipped:
            chain.to(module.weight.device)
            _fill(chain, module, seed)
            chain.train(module.training)
            _replace(model, name, chain)
        plans.append(plan)
    return plans


def reconstruct_model(model: nn.Module, input_shape: tuple[int, ...],
                      tolerance: float = FOLD_TOLERANCE) -> dict[str, float]:
    """Fold every factor chain of ``model`` back into one layer (in place); return each layer's
    relative output error on a random input at its real shape. Raises if one exceeds ``tolerance``."""
    shapes = layer_inputs(model, input_shape)
    errors = {}
    gen = torch.Generator().manual_seed(0)
    for name in _chain_names(model):
        chain = model.get_submodule(name)
        folded = chain.fold().to(next(chain.parameters()).device)
        first = chain.first
        x = torch.randn((4, *shapes[f"{name}.first"]), generator=gen).to(first.weight.device)
        with torch.no_grad():
            ref, got = chain(x), folded(x)
        err = float((ref - got).norm() / ref.norm().clamp_min(1e-30))
        if not err <= tolerance:
            raise RuntimeError(f"fold of {name} is not exact: relative error {err:.2e} > {tolerance:.0e}")
        folded.train(chain.training)
        _replace(model, name, folded)
        errors[name] = err
    return errors


def ranks_json(plans: list[LayerPlan]) -> str:
    """Compact JSON {layer: ranks} of the decomposed layers (Tucker: [R_out, R_in])."""
    return json.dumps({p.name: p.ranks for p in plans if not p.skipped}, separators=(",", ":"))


def summary(plans: list[LayerPlan]) -> dict[str, Any]:
    done = [p for p in plans if not p.skipped]
    reasons: dict[str, int] = {}
    for p in plans:
        if p.skipped:
            key = p.skipped.split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
    return {"decompose_layers": len(done), "decompose_layers_skipped": len(plans) - len(done),
            "decompose_skip_reasons": json.dumps(reasons, separators=(",", ":")),
            "decompose_ranks": ranks_json(plans)}
