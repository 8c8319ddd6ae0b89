"""Compression methods as plugins, registered by name as ``"module:Class"`` strings.

Methods from other packages register through the ``harness.methods`` entry-point group.
"""
from __future__ import annotations

from harness.registry import Registry
from methods.base import Compressed, Deployable, Knob, Method, MethodContext

METHODS: Registry[Method] = Registry("method", entry_point_group="harness.methods")
METHODS.register("none", "methods.none:NoCompression")
METHODS.register("deepshift", "methods.deepshift:DeepShift")
METHODS.register("decompose", "methods.decompose:Decompose")
METHODS.register("layer-prune", "methods.layer_prune:LayerPrune")
METHODS.register("filter-prune", "methods.filter_prune:FilterPrune")
METHODS.register("ftwt", "methods.ftwt:FTWT")


def get_method(name: str) -> Method:
    """The method registered as ``name`` (UserError with a did-you-mean when unknown)."""
    return METHODS.get(name)


__all__ = ["METHODS", "Compressed", "Deployable", "Knob", "Method", "MethodContext", "get_method"]
