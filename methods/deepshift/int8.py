"""The ``int8`` deployment variant: the finalised shift network as an exact-int8 QDQ ONNX graph.

Why: on float kernels a shift network is just a float network (no runtime here has a shift
kernel), so it cannot be faster than the dense model. Weights s * 2^p are, however, exact int8
values under a per-output-channel power-of-two scale: with p_max(c) the largest shift of channel c,
q = s * 2^(p - p_max(c) + 6) is in {0, +-1, ..., +-64} and scale(c) = 2^(p_max(c) - 6), as long as
the channel's shifts span at most 7 levels (p >= p_max(c) - 6). Smaller shifts cannot be
represented exactly; they are rounded (to 0 or 1) and counted in ``int8_inexact_weights``.

Graph (built by hand with onnx.helper; ORT's ``quantize_static`` would choose weight scales
max|w|/127, which are not powers of two and make the int8 weights inexact): for each converted
Conv, the weight is an int8 initializer behind a per-channel DequantizeLinear (axis 0, zero point 0),
the input and the output each go through QuantizeLinear -> DequantizeLinear (uint8, asymmetric),
and a conv bias, if any, is int32 with scale s_in * s_w(c). This is the QDQ form that ORT fuses into
QLinearConv and that OpenVINO's low-precision transformations run as int8 convolutions. BN stays
the explicit float ``x * scale + shift`` of the float export, the Linear classifier stays float
(its power-of-two weights are checked by the float variant).

Activation calibration: min/max (ORT's default MinMax method) of every converted conv's input and
output, measured with the finalised float network on the first 512 training images, without
augmentation, in the data set's fixed order.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.data import make_loader
from methods.base import Deployable, MethodContext
from methods.deepshift.convert import call_order
from methods.deepshift.export import ShiftExporter, pow2_violations, weight_nodes

Q_TOP = 6  # largest int8 shift: 2^6 = 64; 2^7 = 128 does not fit int8
CALIBRATION_IMAGES = 512


@dataclass
class LayerQ:
    """One converted conv in int8: its call index, int8 weights, pow2 scales, activation ranges."""

    index: int
    q: np.ndarray  # int8, the weight's shape
    w_scale: np.ndarray  # float32 [C_out], powers of two
    inexact: int
    in_range: tuple[float, float] = (0.0, 0.0)
    out_range: tuple[float, float] = (0.0, 0.0)


def int8_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(int8 q, per-channel power-of-two scale, inexact count) for a power-of-two weight ``w``
    (output channel first); q * scale == w exactly where the channel's span fits 7 levels."""
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    mag = np.abs(flat)
    p = np.where(mag > 0, np.log2(np.where(mag > 0, mag, 1.0)), -np.inf)
    p_max = p.max(axis=1)
    p_max = np.where(np.isfinite(p_max), p_max, 0.0)
    scale = np.exp2(p_max - Q_TOP)
    q = np.round(flat / scale[:, None])  # exact for p >= p_max - 6; half-to-even below
    inexact = int((q * scale[:, None] != flat).sum())
    return q.astype(np.int8).reshape(w.shape), scale.astype(np.float32), inexact


def _act_qparams(lo: float, hi: float) -> tuple[np.float32, np.uint8]:
    """uint8 asymmetric scale and zero point covering [min(lo, 0), max(hi, 0)]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return np.float32(scale), np.uint8(zp)


@torch.no_grad()
def calibrate(model: nn.Module, names: list[str], ctx: MethodContext) -> dict[str, tuple]:
    """{name: ((in_min, in_max), (out_min, out_max))} over the calibration images."""
    stats: dict[str, list[float]] = {n: [math.inf, -math.inf, math.inf, -math.inf] for n in names}

    def hook(name: str):
        def fn(_m, inputs, output):
            s, x = stats[name], inputs[0]
            s[0], s[1] = min(s[0], float(x.min())), max(s[1], float(x.max()))
            s[2], s[3] = min(s[2], float(output.min())), max(s[3], float(output.max()))
        return fn

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    data = ctx.data.train if ctx.data.train is not None else ctx.data.test
    loader = make_loader(data, batch_size=128, shuffle=False, seed=ctx.seed, augment=False)
    seen = 0
    try:
        model.eval()
        for x, _ in loader:
            model(x)
            seen += len(x)
            if seen >= CALIBRATION_IMAGES:
                break
    finally:
        for h in handles:
            h.remove()
    return {n: ((s[0], s[1]), (s[2], s[3])) for n, s in stats.items()}


@dataclass
class Int8Exporter:
    """Deployable.export_onnx: float shift export, then the converted convs rewritten to QDQ."""

    input_shape: tuple[int, ...]
    layers: list[LayerQ]

    def __call__(self, model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> Path:
        import onnx

        with tempfile.TemporaryDirectory() as tmp:
            float_path = ShiftExporter(self.input_shape)(model, Path(tmp) / "float.onnx", input_shape)
            proto = onnx.load(str(float_path))
        _rewrite(proto.graph, self.layers)
        onnx.checker.check_model(proto)
        path = Path(path)
        onnx.save(proto, str(path))
        return path


def _rewrite(graph: Any, layers: list[LayerQ]) -> None:
    from onnx import helper, numpy_helper

    nodes = weight_nodes(graph)
    by_node = {id(nodes[layer.index][0]): layer for layer in layers if nodes[layer.index][0].op_type == "Conv"}
    new_nodes, inits = [], []

    def qdq(tensor: str, rng: tuple[float, float], tag: str) -> str:
        scale, zp = _act_qparams(*rng)
        inits.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{tag}_scale"),
                      numpy_helper.from_array(np.array(zp, np.uint8), f"{tag}_zp")])
        new_nodes.append(helper.make_node("QuantizeLinear", [tensor, f"{tag}_scale", f"{tag}_zp"], [f"{tag}_q"]))
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_scale", f"{tag}_zp"], [f"{tag}_dq"]))
        return f"{tag}_dq"

    for k, node in enumerate(graph.node):
        layer = by_node.get(id(node))
        if layer is None:
            new_nodes.append(node)
            continue
        tag = f"ds_int8_{k}"
        x_in = qdq(node.input[0], layer.in_range, f"{tag}_in")
        c = layer.q.shape[0]
        inits.extend([numpy_helper.from_array(layer.q, f"{tag}_w_q"),
                      numpy_helper.from_array(layer.w_scale, f"{tag}_w_scale"),
                      numpy_helper.from_array(np.zeros(c, np.int8), f"{tag}_w_zp")])
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_w_q", f"{tag}_w_scale", f"{tag}_w_zp"],
                                          [f"{tag}_w_dq"], axis=0))
        inputs = [x_in, f"{tag}_w_dq"]
        if len(node.input) > 2 and node.input[2]:
            inputs.append(_int32_bias(graph, node.input[2], layer, tag, inits, new_nodes))
        out = node.output[0]
        conv = helper.make_node("Conv", inputs, [f"{tag}_raw"], name=node.name or tag)
        conv.attribute.extend(node.attribute)
        new_nodes.append(conv)
        scale, zp = _act_qparams(*layer.out_range)
        inits.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{tag}_out_scale"),
                      numpy_helper.from_array(np.array(zp, np.uint8), f"{tag}_out_zp")])
        new_nodes.append(helper.make_node("QuantizeLinear", [f"{tag}_raw", f"{tag}_out_scale", f"{tag}_out_zp"],
                                          [f"{tag}_out_q"]))
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_out_q", f"{tag}_out_scale", f"{tag}_out_zp"],
                                          [out]))
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(inits)
    _drop_unused_initializers(graph)


def _int32_bias(graph: Any, name: str, layer: LayerQ, tag: str, inits: list, new_nodes: list) -> str:
    from onnx import helper, numpy_helper

    from methods.deepshift.export import constant_of

    bias = constant_of(name, graph).astype(np.float64)
    in_scale, _ = _act_qparams(*layer.in_range)
    scale = (float(in_scale) * layer.w_scale.astype(np.float64)).astype(np.float32)
    q = np.round(bias / scale).astype(np.int32)
    inits.extend([numpy_helper.from_array(q, f"{tag}_b_q"), numpy_helper.from_array(scale, f"{tag}_b_scale"),
                  numpy_helper.from_array(np.zeros(len(q), np.int32), f"{tag}_b_zp")])
    new_nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_b_q", f"{tag}_b_scale", f"{tag}_b_zp"],
                                      [f"{tag}_b_dq"], axis=0))
    return f"{tag}_b_dq"


def _drop_unused_initializers(graph: Any) -> None:
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


# ----------------------------------------------------------------------------- the check
@dataclass
class Int8Check:
    """Deployable.check_graph for the int8 file: the int8 weights are exact shifts under
    power-of-two scales. What each backend runs in int8 comes from its own optimised graph in
    the cell (``int8_facts``); agreement with the float shift network is the row's parity (the
    reference logits are the float network's)."""

    n_layers: int
    inexact: int
    total: int

    def __call__(self, path: Path) -> dict[str, Any]:
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(str(path)).graph
        bad, scales_ok, found = 0, True, 0
        inits = {t.name: t for t in graph.initializer}
        for name in inits:
            if name.endswith("_w_q"):
                found += 1
                bad += pow2_violations(numpy_helper.to_array(inits[name]).astype(np.float64), 0, Q_TOP)
                s = numpy_helper.to_array(inits[name[:-2] + "_scale"])
                scales_ok &= pow2_violations(s, -10_000, 10_000) == 0
        return {"int8_layers": found, "int8_weights_pow2_ok": bad == 0 and scales_ok and found == self.n_layers,
                "int8_inexact_weights": self.inexact,
                "int8_exact_share": 1 - self.inexact / self.total if self.total else None}


def int8_facts(target_key: str, facts: dict[str, Any]) -> dict[str, Any]:
    """Deployable.check_facts: how many convolutions the backend's optimised graph runs in int8
    (ORT: QLinearConv nodes after its QDQ fusion; OpenVINO: convolutions at i8/u8 precision)."""
    ops = facts.get("ops", {})
    if target_key == "ort-cpu":
        # ai.onnx QLinearConv, or com.microsoft.QLinearConv (ORT's NHWC form on x86)
        return {"int8_ort_qlinearconv": sum(n for op, n in ops.items() if op.split(".")[-1] == "QLinearConv")}
    if target_key == "ov-cpu":
        return {"int8_ov_int8_convs": facts.get("int8_convs", 0)}
    return {}


# ----------------------------------------------------------------------------- the deployable
def int8_deployable(ctx: MethodContext, model: nn.Module, shape: tuple[int, ...], converted: list[str],
                    mode: str, bits: int) -> Deployable | None:
    """The int8 variant of the finalised shift network (None when no conv was converted)."""
    order = call_order(model, shape, (nn.Conv2d, nn.Linear))
    convs = [n for n in converted if isinstance(model.get_submodule(n), nn.Conv2d)]
    if not convs:
        return None
    ranges = calibrate(model, convs, ctx)
    layers = []
    for name in convs:
        q, scale, inexact = int8_weights(model.get_submodule(name).weight.detach().numpy())
        layers.append(LayerQ(order.index(name), q, scale, inexact, *ranges[name]))
    total = sum(layer.q.size for layer in layers)
    inexact = sum(layer.inexact for layer in layers)
    check = Int8Check(len(layers), inexact, total)
    int8_bytes = sum(layer.q.size for layer in layers)
    conv_fp32 = sum(model.get_submodule(n).weight.numel() * 4 for n in convs)
    from harness.macs import size_bytes

    return Deployable(model, variant="int8", export_onnx=Int8Exporter(shape, layers),
                      size_bytes=size_bytes(model) - conv_fp32 + int8_bytes, check_graph=check,
                      check_facts=int8_facts, requires=frozenset({"int8_qdq"}),
                      requires_why="the int8 variant is an ONNX QDQ graph (int8 weights, quantised activations)",
                      extra={"int8_calibration": f"minmax, first {CALIBRATION_IMAGES} train images, no augmentation"})
