"""Export a PyTorch model to one self-contained ONNX file, and summarise ONNX graphs.

Exporter choice: the dynamo exporter (``torch.onnx.export(dynamo=True)``, torch.export based) is
torch's default and the only one still maintained; the TorchScript exporter is deprecated. On this
machine dynamo exported CIFAR resnet20/56 and torchvision resnet18, mobilenet_v2 and vgg16_bn with a
dynamic batch axis, and ORT matched PyTorch at batch 1 and 3 on all of them (max abs diff <= 4e-6).
It is slower: about 1.2-2.7 s per CIFAR ResNet, 1.4-2.3 s for resnet18, 5 s for mobilenet_v2 and
7 s for vgg16_bn at 224 px, against 0.1-0.3 s for the legacy exporter (6 s for vgg16_bn), on the
shared, noisy 2-vCPU machine. That is small next to training or a latency sweep. Its floor is opset 18 (it silently
falls back to 18 when asked for less, backends.md pitfall 8), so lower opsets need
``exporter="legacy"``, which honours 13..20.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DYNAMO_MIN_OPSET = 18
# Example batch for tracing: 2, not 1, because torch.export specialises a size-1 dim to a constant.
_EXAMPLE_BATCH = 2
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the exporter colours its messages for a terminal


class ExportError(RuntimeError):
    """The model could not be exported to ONNX (message carries the exporter's own error)."""


def export_onnx(model: nn.Module, path: Path, input_shape: tuple[int, ...], *, opset: int = 18,
                exporter: str = "dynamo") -> Path:
    """Export an eval-mode copy of ``model`` to ``path``: input "input" (N, *input_shape) with a
    dynamic batch axis N, output "logits", weights inside the file. Returns ``path``.

    The caller's model is never modified (a deep copy is exported, on CPU, in eval mode).
    """
    path = Path(path)
    if exporter not in ("dynamo", "legacy"):
        raise ValueError(f"exporter must be 'dynamo' or 'legacy', got {exporter!r}")
    if exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise ValueError(f"the dynamo exporter cannot emit opset {opset} (minimum "
                         f"{DYNAMO_MIN_OPSET}); use exporter='legacy' for opsets 13..17")
    path.parent.mkdir(parents=True, exist_ok=True)
    work = copy.deepcopy(model).cpu().eval()
    example = torch.randn(_EXAMPLE_BATCH, *input_shape)
    _run_quietly(_export_call(exporter), work, example, path, opset)
    _check_exported(path, opset)
    return path


def _export_call(exporter: str):
    return _export_dynamo if exporter == "dynamo" else _export_legacy


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1)
    # external_data=False: otherwise even a 1 MB model is split into .onnx + .onnx.data.
    torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False,
                      opset_version=opset, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_shapes=({0: batch},))


def _export_legacy(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes)


def _run_quietly(fn, model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """Call an exporter with its progress prints and warnings captured; re-raise as ExportError."""
    captured = io.StringIO()
    try:
        # The exporters print progress lines and warn (deprecation, torch.export notes) per call.
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured), \
                contextlib.redirect_stderr(captured), torch.no_grad():
            warnings.simplefilter("ignore")
            fn(model, example, path, opset)
    except Exception as exc:  # noqa: BLE001 - any exporter failure becomes one clear error
        tail = captured.getvalue()[-2000:].strip()
        detail = f"\nexporter output (tail):\n{tail}" if tail else ""
        message = _ANSI.sub("", f"{type(exc).__name__}: {exc}{detail}")
        raise ExportError(f"ONNX export of {type(model).__name__} to {path} failed: {message}") from exc


def _check_exported(path: Path, opset: int) -> None:
    """Fail loudly if the file is not the single-file, named, dynamic-batch graph we promise."""
    import onnx

    stray = path.with_name(path.name + ".data")
    if stray.exists():
        raise ExportError(f"{path}: exporter wrote external data {stray.name}; expected one file")
    proto = onnx.load(str(path), load_external_data=False)
    if _default_opset(proto) != opset:  # the dynamo exporter falls back silently when it cannot
        raise ExportError(f"{path}: asked for opset {opset}, got {_default_opset(proto)}")
    graph = proto.graph
    inputs, outputs = [i.name for i in graph.input], [o.name for o in graph.output]
    if inputs != [INPUT_NAME] or outputs[:1] != [OUTPUT_NAME]:
        raise ExportError(f"{path}: expected input 'input' and output 'logits', got "
                          f"inputs {inputs}, outputs {outputs}")
    dim0 = graph.input[0].type.tensor_type.shape.dim[0]
    if not dim0.dim_param:
        raise ExportError(f"{path}: batch axis is static ({dim0.dim_value}); expected dynamic")


def onnx_summary(path: Path) -> dict[str, Any]:
    """Graph-survival facts: {"conv_nodes", "nodes", "opset", "conv_shapes"}.

    conv_shapes lists each Conv's weight shape (a list of ints) in graph order, found through
    Identity/Constant nodes; None where the weight is computed at run time (e.g. a Gather).
    """
    import onnx

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    return {"conv_nodes": len(convs), "nodes": len(graph.node), "opset": _default_opset(graph_model),
            "conv_shapes": [_weight_shape(n.input[1], inits, producers) for n in convs]}


def onnx_facts(path: Path) -> dict[str, Any]:
    """``Session.graph_facts()`` of an ONNX graph: {"ops": {op_type: count}, "conv_weights":
    [[O, I, kh, kw] or None, ...]} (fused ops such as ORT's ``com.microsoft.nchwc`` Conv or
    QLinearConv are counted under their own names, with the domain when it is not ai.onnx)."""
    import onnx

    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    ops: dict[str, int] = {}
    weights = []
    for n in graph.node:
        name = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        ops[name] = ops.get(name, 0) + 1
        if n.op_type in ("Conv", "QLinearConv", "FusedConv"):
            weights.append(_weight_shape(n.input[3 if n.op_type == "QLinearConv" else 1], inits, producers))
    return {"ops": ops, "conv_weights": weights}


def _default_opset(model: Any) -> int:
    """The version of the default (ai.onnx) domain."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ValueError("model has no default-domain opset import")


def _weight_shape(name: str, inits: dict, producers: dict) -> list[int] | None:
    """Shape of the constant tensor called ``name``, following Identity chains."""
    tensor = constant_tensor(name, inits, producers)
    return list(tensor.dims) if tensor is not None else None


def constant_tensor(name: str, inits: dict, producers: dict) -> Any | None:
    """The TensorProto of the constant called ``name`` (an initializer or a Constant node's value,
    through Identity chains), or None when it is computed at run time. ``inits`` maps names to
    initializers, ``producers`` output names to nodes."""
    for _ in range(len(producers) + 1):  # bounded walk: a malformed cycle cannot hang us
        if name in inits:
            return inits[name]
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "Identity":
            name = node.input[0]
        elif node.op_type == "Constant":
            return next((attr.t for attr in node.attribute if attr.name == "value"), None)
        else:
            return None
    return None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
