"""The ``int8`` deployment variant: the finalised shift network as an int8 QDQ ONNX graph that
ONNX Runtime and OpenVINO run in int8 end to end, with exact power-of-two int8 weights.

Why: on float kernels a shift network is just a float network (no runtime here has a shift
kernel), so it cannot be faster than the dense model. Its weights s * 2^p are, however, exact
int8 values under a per-output-channel scale: with p_max(c) the largest shift of channel c,
q = s * 2^(p - p_max(c) + 6) is in {0, +-1, ..., +-64}, as long as the channel's shifts span at
most 7 levels (p >= p_max(c) - 6). Smaller shifts cannot be represented exactly; they are
rounded (to 0 or 1) and counted in ``int8_inexact_weights``. |q| <= 64 also keeps AVX2's u8 x s8
pair sums (pmaddubsw) below int16 saturation (2 x 255 x 64 < 32767).

Graph (issue 14 item 2; the first version kept BN as a float affine and the residual adds in
float, so ORT ran every block as QLinearConv -> DQ -> float Mul/Add -> Q and was 0.64x of fp32):
1. BN folded into its shift conv (``torch.nn.utils.fusion.fuse_conv_bn_eval``): the weight
   becomes s * 2^p * a(c), a = gamma / sigma; multiplying by a power of two is exact in float32,
   so the channel's largest magnitude is 2^p_max(c) * |a(c)| exactly and the per-channel scale
   max|w(c)| / 64 = 2^(p_max(c) - 6) * |a(c)| maps the folded weights back onto the same exact
   int8 shifts q (the sign of a negative a goes into q). The scale now carries BN's factor, so
   it is no longer a power of two; the integer weights are (``Int8Check``).
2. ONNX Runtime's own static quantiser (``targets.ort_cpu.quantize_qdq``, QDQ format:
   the layout its QDQ transformer fuses, and what OpenVINO's low-precision transformations read)
   with those weight scales forced per channel (``TensorQuantOverrides``) and without its int32
   bias weight-scale adjustment, uint8 asymmetric activations, MinMax calibration. It quantises
   the convolutions, residual Adds, pools and pads, and drops each ReLU into its following
   QuantizeLinear (zero point 0), so ORT runs QLinearConv -> QLinearAdd chains in uint8. Written
   by hand before: a hand-placed QDQ layout is exactly what ORT's quantiser already gets right.
3. Left in float: layers DeepShift did not convert (their weights are not powers of two) and the
   classifier (Gemm), which ORT runs after a DequantizeLinear.

Calibration: the first 512 training images (fewer for big inputs: at most 64 MB of them), without
augmentation, in the data set's fixed order, run through the BN-folded float graph.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.data import make_loader
from harness.export import export_onnx
from methods.base import Deployable, MethodContext
from methods.deepshift.convert import _set, call_order, leaf_call_order
from methods.deepshift.export import pow2_violations, weight_nodes

Q_TOP = 6  # largest int8 shift: 2^6 = 64; 2^7 = 128 does not fit int8
CALIBRATION_IMAGES = 512
CALIBRATION_BYTES = 64 << 20
META_KEY = "deepshift_int8_weights"  # model metadata: the int8 weight initializers of the shift convs


def int8_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(int8 q, per-channel scale, inexact count) for a weight ``w`` (output channel first) whose
    channels are power-of-two values times one positive factor each (1 for the raw shift weights,
    |gamma / sigma| after BN folding): scale(c) = max|w(c)| / 64, q = round(w / scale), and
    q * scale == w exactly where the channel's shifts span at most 7 levels."""
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    scale = np.abs(flat).max(axis=1) / 2.0 ** Q_TOP
    scale = np.where(scale > 0, scale, 1.0)  # an all-zero channel: any scale is exact
    q = np.round(flat / scale[:, None])  # exact for p >= p_max - 6; half-to-even below
    inexact = int((q * scale[:, None] != flat).sum())
    return q.astype(np.int8).reshape(w.shape), scale.astype(np.float32), inexact


@torch.no_grad()
def fold_batchnorm(model: nn.Module, input_shape: tuple[int, ...], convs: list[str]) -> nn.Module:
    """A copy of ``model`` (eval) with every BatchNorm2d called right after one of ``convs`` folded
    into that conv (torch's ``fuse_conv_bn_eval``) and replaced by Identity."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    work = __import__("copy").deepcopy(model).eval()
    order = leaf_call_order(work, input_shape)
    wanted = set(convs)
    for prev, name in zip(order, order[1:]):
        if prev in wanted and isinstance(work.get_submodule(name), nn.BatchNorm2d):
            _set(work, prev, fuse_conv_bn_eval(work.get_submodule(prev), work.get_submodule(name)))
            _set(work, name, nn.Identity())
    return work


def calibration_images(ctx: MethodContext, input_shape: tuple[int, ...]) -> np.ndarray:
    """The first calibration images of the training split (test split if there is none). A
    structure-only run (``harness inspect``, a latency probe before training) calibrates on the
    data it was given too, so its int8 file has the deployed graph's layout and can be timed;
    only a context without data has none (and its export fails with that reason)."""
    if ctx.data is None:
        return np.zeros((0, *input_shape), np.float32)
    per_image = 4 * int(np.prod(input_shape))
    n = max(1, min(CALIBRATION_IMAGES, CALIBRATION_BYTES // per_image))
    data = ctx.data.train if ctx.data.train is not None else ctx.data.test
    loader = make_loader(data, batch_size=128, shuffle=False, seed=ctx.seed, augment=False)
    chunks, seen = [], 0
    for x, _ in loader:
        chunks.append(x.numpy().astype(np.float32))
        seen += len(x)
        if seen >= n:
            break
    return np.concatenate(chunks)[:n]


@dataclass
class Int8Exporter:
    """Deployable.export_onnx: BN folded into the shift convs, float export, then ORT's QDQ
    quantiser with the shift convs' weight scales forced to max|w(c)| / 64."""

    input_shape: tuple[int, ...]
    converted: list[str]  # names of the converted convs
    images: np.ndarray = field(repr=False)

    def __call__(self, model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> Path:
        import onnx

        # ORT's quantiser runs ONNX Runtime to calibrate: it lives with the ORT target
        from targets.ort_cpu import quantize_qdq

        if not len(self.images):
            raise RuntimeError("no calibration images: the method ran without data, so the int8 file cannot be calibrated")
        folded = fold_batchnorm(model, tuple(input_shape), self.converted)
        order = call_order(folded, tuple(input_shape), (nn.Conv2d, nn.Linear))
        shift_index = {order.index(n) for n in self.converted}
        path = Path(path)
        with tempfile.TemporaryDirectory() as tmp:
            float_path = export_onnx(folded, Path(tmp) / "float.onnx", input_shape)
            graph = onnx.load(str(float_path)).graph
            nodes = weight_nodes(graph)
            if len(nodes) != len(order):
                raise RuntimeError(f"{len(nodes)} weight nodes in the exported graph, {len(order)} layers in the model")
            inits = {t.name for t in graph.initializer}
            scales, shift_convs, exclude = {}, [], []
            for i, (node, w) in enumerate(nodes):
                if i not in shift_index or node.op_type != "Conv":
                    exclude.append(node.name)  # float: not a power-of-two weight, or the classifier
                    continue
                if node.input[1] not in inits or not node.name:
                    raise RuntimeError(f"conv {node.name!r}: weight {node.input[1]!r} is not a named initializer")
                scales[node.input[1]] = int8_weights(w)[1]
                shift_convs.append(node.name)
            quantize_qdq(float_path, path, self.images, graph.input[0].name, weight_scales=scales, exclude=exclude)
        proto = onnx.load(str(path))
        producers = {out: n for n in proto.graph.node for out in n.output}
        names = []
        for node in proto.graph.node:
            if node.op_type == "Conv" and node.name in shift_convs:
                dq = producers.get(node.input[1])
                if dq is None or dq.op_type != "DequantizeLinear":
                    raise RuntimeError(f"conv {node.name!r} was not quantised")
                names.append(dq.input[0])
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(names)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
        return path


# ----------------------------------------------------------------------------- the check
@dataclass
class Int8Check:
    """Deployable.check_graph for the int8 file: every shift conv's int8 weight (named in the
    file's metadata) holds only 0 and +-2^k, k in [0, 6]. What each backend runs in int8 comes
    from its own optimised graph in the cell (``int8_facts``); agreement with the float shift
    network is the row's parity (the reference logits are the float network's)."""

    n_layers: int
    inexact: int
    total: int

    def __call__(self, path: Path) -> dict[str, Any]:
        import onnx
        from onnx import numpy_helper

        proto = onnx.load(str(path))
        meta = {p.key: p.value for p in proto.metadata_props}
        names = json.loads(meta.get(META_KEY, "[]"))
        inits = {t.name: t for t in proto.graph.initializer}
        bad, found = 0, 0
        for name in names:
            if name not in inits:
                continue
            q = numpy_helper.to_array(inits[name])
            found += q.dtype == np.int8
            bad += pow2_violations(q.astype(np.float64), 0, Q_TOP)
        return {"int8_layers": found, "int8_weights_pow2_ok": bad == 0 and found == self.n_layers,
                "int8_inexact_weights": self.inexact,
                "int8_exact_share": 1 - self.inexact / self.total if self.total else None}


def int8_facts(target_key: str, facts: dict[str, Any]) -> dict[str, Any]:
    """Deployable.check_facts: what the backend's optimised graph runs in int8. ORT: QLinearConv
    and QLinearAdd nodes after its QDQ fusion, and the QuantizeLinear/DequantizeLinear nodes left
    (each one a float <-> uint8 conversion at run time); OpenVINO: convolutions at i8/u8."""
    ops = facts.get("ops", {})
    if target_key == "ort-cpu":
        # ai.onnx ops, or com.microsoft ones (ORT's NHWC forms on x86)
        def count(*names: str) -> int:
            return sum(n for op, n in ops.items() if op.split(".")[-1] in names)
        return {"int8_ort_qlinearconv": count("QLinearConv"), "int8_ort_qlinearadd": count("QLinearAdd"),
                "int8_ort_qdq_left": count("QuantizeLinear", "DequantizeLinear")}
    if target_key == "ov-cpu":
        return {"int8_ov_int8_convs": facts.get("int8_convs", 0)}
    return {}


# ----------------------------------------------------------------------------- the deployable
def int8_deployable(ctx: MethodContext, model: nn.Module, shape: tuple[int, ...], converted: list[str],
                    mode: str, bits: int) -> Deployable | None:
    """The int8 variant of the finalised shift network (None when no conv was converted)."""
    convs = [n for n in converted if isinstance(model.get_submodule(n), nn.Conv2d)]
    if not convs:
        return None
    weights = [int8_weights(model.get_submodule(n).weight.detach().numpy()) for n in convs]
    total = sum(q.size for q, _, _ in weights)
    inexact = sum(bad for _, _, bad in weights)
    check = Int8Check(len(convs), inexact, total)
    conv_fp32 = sum(model.get_submodule(n).weight.numel() * 4 for n in convs)
    from harness.macs import size_bytes

    images = calibration_images(ctx, shape)
    return Deployable(model, variant="int8", export_onnx=Int8Exporter(shape, convs, images),
                      size_bytes=size_bytes(model) - conv_fp32 + total, check_graph=check,
                      check_facts=int8_facts, requires=frozenset({"int8_qdq"}),
                      requires_why="the int8 variant is an ONNX QDQ graph (int8 weights, quantised activations)",
                      extra={"int8_calibration": f"minmax, first {len(images)} train images, no augmentation",
                             "int8_bn_folded": True})
