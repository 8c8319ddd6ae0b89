"""Graph-survival checks on the exported ONNX file (run by the sweep after export): a
layer-pruned graph has fewer Conv nodes than the dense one; a filter-pruned graph has as many,
some narrower. The dense graph is exported next to the checked file and deleted afterwards."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from torch import nn

from harness.export import export_onnx, onnx_summary


class DenseGraph:
    """The dense model's ONNX summary, exported once (next to the first checked file, then
    deleted) and shared by every check built on it (a layer-pruned model and its twin)."""

    def __init__(self, dense: nn.Module, input_shape: tuple[int, ...]):
        self.dense, self.input_shape = dense, input_shape
        self._summary: dict[str, Any] | None = None

    def summary(self, near: Path) -> dict[str, Any]:
        if self._summary is None:
            ref = near.with_name(near.stem + "-dense-ref.onnx")
            try:
                export_onnx(self.dense, ref, self.input_shape)
                self._summary = onnx_summary(ref)
            finally:
                ref.unlink(missing_ok=True)
        return self._summary


def _dense(dense: nn.Module | DenseGraph, input_shape: tuple[int, ...]) -> DenseGraph:
    return dense if isinstance(dense, DenseGraph) else DenseGraph(dense, input_shape)


def fewer_convs_check(dense: nn.Module | DenseGraph, input_shape: tuple[int, ...]) -> Callable[[Path], dict]:
    """Columns graph_conv_nodes, graph_dense_conv_nodes, graph_fewer_convs."""
    ref = _dense(dense, input_shape)

    def check(path: Path) -> dict[str, Any]:
        n = onnx_summary(path)["conv_nodes"]
        n_dense = ref.summary(path)["conv_nodes"]
        return {"graph_conv_nodes": n, "graph_dense_conv_nodes": n_dense, "graph_fewer_convs": n < n_dense}
    return check


def narrower_convs_check(dense: nn.Module | DenseGraph,
                         input_shape: tuple[int, ...]) -> Callable[[Path], dict]:
    """Columns graph_conv_nodes, graph_dense_conv_nodes, graph_narrower_convs (convs whose
    weight has fewer elements than the dense one at the same position), graph_filter_ok."""
    ref = _dense(dense, input_shape)

    def check(path: Path) -> dict[str, Any]:
        got = onnx_summary(path)["conv_shapes"]
        want = ref.summary(path)["conv_shapes"]
        narrower = sum(1 for a, b in zip(got, want) if a and b and math.prod(a) < math.prod(b))
        return {"graph_conv_nodes": len(got), "graph_dense_conv_nodes": len(want),
                "graph_narrower_convs": narrower,
                "graph_filter_ok": len(got) == len(want) and narrower > 0}
    return check
