"""Removable units: the parts of a network that layer pruning may replace by identity.

Declared per model family (next to each model's definition), never guessed from shapes at run
time: ``removable_units(model)`` in each model module returns the list for its own classes and
None for any other model; ``harness.models.removable_units`` asks each family in turn. Beside it,
each family module declares ``pruning_ignored(model)``: the layers whose output channels filter
pruning (Torch-Pruning's ``ignored_layers``) must keep (``harness.models.pruning_ignored_layers``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Unit:
    """One removable unit.

    name: a readable id (the dotted path of the unit's first module).
    modules: dotted paths of the submodules that removal replaces by ``nn.Identity``; after
        that the network is physically shallower and every tensor shape is unchanged.
    filters: (conv, bn) dotted-path pairs inside the unit whose output filters score it
        (LayerPrune: unit importance = mean over these filters of a filter criterion).
    """

    name: str
    modules: tuple[str, ...]
    filters: tuple[tuple[str, str], ...]
