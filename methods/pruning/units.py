"""Removing units: replace each of a unit's modules by ``nn.Identity`` (a physically shallower
network; no mask), and the per-unit cost signature used to measure latency savings."""
from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from harness.models import Unit


def remove_units(model: nn.Module, units: Iterable[Unit]) -> nn.Module:
    """``model`` with every module of ``units`` replaced by ``nn.Identity``, in place; returned."""
    for unit in units:
        for path in unit.modules:
            parent_path, _, child = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, child, nn.Identity())
    return model


def removed_copy(model: nn.Module, units: Iterable[Unit]) -> nn.Module:
    """A deep copy of ``model`` with ``units`` removed (``model`` untouched)."""
    return remove_units(copy.deepcopy(model), units).eval()


@torch.no_grad()
def signatures(model: nn.Module, units: list[Unit], input_shape: tuple[int, ...]) -> list[tuple]:
    """Per unit, what its cost depends on: the input shape it sees and its parameter shapes.
    Units with equal signatures cost the same on a target, so one measurement serves them all."""
    seen: dict[str, tuple] = {}
    hooks = [model.get_submodule(u.modules[0]).register_forward_hook(
        lambda m, inp, out, name=u.name: seen.__setitem__(name, tuple(inp[0].shape[1:])))
        for u in units]
    try:
        model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    out = []
    for u in units:
        params = tuple(tuple(p.shape) for path in u.modules for p in model.get_submodule(path).parameters())
        out.append((seen.get(u.name), params))
    return out
