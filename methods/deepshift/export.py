"""ONNX export that keeps power-of-two weights, and the graph-survival check on the file.

The harness exporter (dynamo or legacy) folds BatchNorm into the preceding Conv, which multiplies
s * 2^p by gamma/sigma per channel. ``ShiftExporter`` first writes every BN after a shift conv out
as an explicit per-channel ``x * scale + shift`` (``ChannelAffine``); the exporters keep a Mul/Add
on buffers as separate nodes (checked on both exporters: 0 non-power-of-two weights). Runtimes
may still fuse at load time (ORT's ConvMulFusion does); the file is the contract.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from harness.export import constant_tensor, export_onnx
from methods.deepshift.convert import write_out_batchnorm

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class ShiftExporter:
    """Deployable.export_onnx for a finalised shift network (a class, so it pickles and has a name)."""

    input_shape: tuple[int, ...]

    def __call__(self, model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> Path:
        return export_onnx(write_out_batchnorm(model, tuple(input_shape)), path, input_shape)


def constant_of(name: str, graph: Any) -> np.ndarray | None:
    """The constant tensor called ``name`` (initializer or Constant node, through Identity)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    tensor = constant_tensor(name, inits, producers)
    return numpy_helper.to_array(tensor) if tensor is not None else None


def weight_nodes(graph: Any) -> list[tuple[Any, np.ndarray]]:
    """(node, constant weight) for every Conv/Gemm/MatMul with a constant weight, in graph order
    (the exporters emit nodes in call order, which is how they are matched to layers)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}  # built once, not per node
    producers = {out: n for n in graph.node for out in n.output}
    out = []
    for node in graph.node:
        if node.op_type in WEIGHT_OPS and len(node.input) > 1:
            tensor = constant_tensor(node.input[1], inits, producers)
            if tensor is not None:
                out.append((node, numpy_helper.to_array(tensor)))
    return out


def pow2_violations(values: np.ndarray, p_min: int, p_max: int = 0) -> int:
    """How many values are neither 0 nor +-2^p with integer p in [p_min, p_max]."""
    a = np.abs(values.astype(np.float64)).ravel()
    nz = a[a != 0]
    mant, exp = np.frexp(nz)  # nz = mant * 2^exp, mant in [0.5, 1): a power of two iff mant == 0.5
    p = exp - 1
    return int(((mant != 0.5) | (p < p_min) | (p > p_max)).sum() + (~np.isfinite(a)).sum())


@dataclass
class Pow2Check:
    """Deployable.check_graph: every weight of every converted layer in the ONNX file must be 0 or
    +-2^p, p in [p_min, 0]. ``layers`` are (call index among all Conv/Linear, weight shape) of the
    converted layers; the i-th weight node of the graph is the i-th Conv/Linear called."""

    layers: list[tuple[int, tuple[int, ...]]]
    p_min: int
    n_weight_layers: int

    def __call__(self, path: Path) -> dict[str, Any]:
        import onnx

        nodes = weight_nodes(onnx.load(str(path)).graph)
        cols: dict[str, Any] = {"pow2_layers": len(self.layers), "pow2_p_min": self.p_min}
        if len(nodes) != self.n_weight_layers:
            return {**cols, "pow2_ok": False, "pow2_bad_weights": None,
                    "pow2_note": f"{len(nodes)} weight nodes in the graph, {self.n_weight_layers} layers in the model"}
        bad, checked, mismatched = 0, 0, 0
        for index, shape in self.layers:
            w = nodes[index][1]
            if sorted(w.shape) != sorted(shape) or w.size != int(np.prod(shape)):
                mismatched += 1
                continue
            bad += pow2_violations(w, self.p_min)
            checked += w.size
        ok = bad == 0 and mismatched == 0
        return {**cols, "pow2_ok": ok, "pow2_bad_weights": bad, "pow2_checked_weights": checked,
                "pow2_note": "" if not mismatched else f"{mismatched} layers not matched by shape"}
