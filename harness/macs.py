"""One MAC / parameter / size counter for every model, dense or compressed.

Convention (printed with every table, see ``CONVENTION``): multiply-accumulates of ``nn.Conv2d``
and ``nn.Linear`` modules only, per sample (batch 1), bias additions not counted; BatchNorm,
activations, pooling and residual additions count zero. This is what FTWT's ``thop`` setup counts
(its "FLOPs" are MACs), so the dense denominators reproduce the FTWT constants.

Counting is done with forward hooks, so a layer is seen only if it is an ``nn.Conv2d`` /
``nn.Linear`` *module* that the forward pass calls. Work done through bare functional calls
(``F.conv2d``, ``F.linear``, ``torch.matmul`` on tensors that are not such modules) is not counted;
compression methods that replace layers must therefore use modules (subclasses of ``nn.Conv2d`` /
``nn.Linear`` are counted). A module called twice is counted twice.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

CONVENTION = (
    "MACs = multiply-accumulates of Conv2d and Linear modules per image (batch 1, bias, BN, "
    "activations, pooling and residual adds counted as zero); params = all parameters."
)


@dataclass(frozen=True)
class Cost:
    """Per-sample multiply-accumulates and total parameter count."""

    macs: int
    params: int


def _conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    # Each output element needs (in_channels / groups) * kh * kw multiply-accumulates.
    kh, kw = module.kernel_size
    return output.numel() * (module.in_channels // module.groups) * kh * kw


def _linear_macs(module: nn.Linear, output: torch.Tensor) -> int:
    # output.numel() = rows * out_features; each output element costs in_features MACs.
    return output.numel() * module.in_features


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one forward pass on a zero input of ``(1, *input_shape)``; see ``CONVENTION``.

    ``input_shape`` excludes the batch dimension, e.g. ``(3, 32, 32)``. The model is run in eval
    mode under ``torch.no_grad``; its training flag is restored afterwards and nothing else changes.
    """
    total = 0

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += _conv_macs(module, output)
        else:
            total += _linear_macs(module, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    device, dtype = _device_dtype(model)
    try:
        model.eval()  # BN must not update running stats from the probe input
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_cost(model: nn.Module, input_shape: tuple[int, ...]) -> Cost:
    """MACs (per sample) and parameters of ``model``; ``input_shape`` excludes the batch dim."""
    return Cost(macs=count_macs(model, input_shape), params=count_params(model))


def size_bytes(model: nn.Module) -> int:
    """Bytes of all parameters plus floating-point buffers, at their stored dtypes.

    Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are bookkeeping, not weights, and
    are excluded.
    """
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers()
                  if b.is_floating_point())
    return params + buffers


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    # The probe input follows the first floating-point parameter so half/cuda models work too.
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32
