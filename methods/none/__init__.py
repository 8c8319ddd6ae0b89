"""The dense baseline: the trained model, unchanged. Always part of a sweep."""
from __future__ import annotations

from typing import Any, Mapping

from methods.base import Compressed, Deployable, Method, MethodContext


class NoCompression(Method):
    name = "none"
    summary = "dense baseline (the trained model, unchanged); the denominator of every ratio"
    produces = "dense"
    knobs = ()

    def apply(self, ctx: MethodContext, knobs: Mapping[str, Any]) -> Compressed:
        return Compressed([Deployable(ctx.model)])
