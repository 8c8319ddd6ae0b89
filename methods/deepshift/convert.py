"""Network surgery: nn.Conv2d / nn.Linear -> shift layers, finalisation, BN written out for export.

``depth`` direction (a documented choice): the paper code's ``convert_to_shift`` walks modules in
*reverse*, so its ``shift_depth=N`` converts the last N convs (papers.md 4.2 "Conversion"). The
issue asks for a count from the input, so here ``depth=N`` converts the first N Conv2d/Linear
layers in the order the forward pass calls them (found with hooks on a probe input). ``None``
converts all of them (the paper's results use shift_depth=1000, i.e. all).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from harness.trace import trace_calls

from methods.deepshift.modules import (SHIFT_FROZEN, SHIFT_LAYERS, SHIFT_TRAINABLE, ChannelAffine,
                                       FrozenShiftConv2d, FrozenShiftLinear, ShiftConv2dPS,
                                       ShiftConv2dQ, ShiftLinearPS, ShiftLinearQ, p_min_for,
                                       quantize_act, round_pow2)


def call_order(model: nn.Module, input_shape: tuple[int, ...], kinds: tuple[type, ...]) -> list[str]:
    """Names of the modules of ``kinds`` in the order one forward pass calls them (each once)."""
    return list(dict.fromkeys(n for n, _ in trace_calls(model, input_shape, lambda m: isinstance(m, kinds))))


def leaf_call_order(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Names of all leaf modules in call order (repeats kept): which module follows which."""
    return [n for n, _ in trace_calls(model, input_shape, lambda m: not list(m.children()))]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def _conv_args(m: nn.Conv2d) -> dict:
    return dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=m.kernel_size,
                stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups,
                bias=m.bias is not None, padding_mode=m.padding_mode)


def _linear_args(m: nn.Linear) -> dict:
    return dict(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None)


def _shift_layer(m: nn.Module, mode: str, weight_bits: int, act_bits, scratch: bool) -> nn.Module:
    """The shift layer replacing ``m``. Pretrained: Q copies W, PS takes (round(log2|W|), sign W).
    Scratch PS: P ~ U(-10, -1) for convs, U(p_min, 0) for linears, S ~ U(-1, 1) (papers.md 4.2;
    explicit, unlike ``cifar10.py``, which always converts the fresh float init)."""
    conv = isinstance(m, nn.Conv2d)
    args = _conv_args(m) if conv else _linear_args(m)
    opts = dict(weight_bits=weight_bits, act_bits=act_bits)
    if mode == "q":
        new = (ShiftConv2dQ if conv else ShiftLinearQ)(**args, **opts)
        with torch.no_grad():
            new.weight.copy_(m.weight)
    else:
        new = (ShiftConv2dPS if conv else ShiftLinearPS)(**args, **opts, weight=m.weight)
        if scratch:
            lo = -10.0 if conv else float(new.p_min)
            hi = -1.0 if conv else 0.0
            with torch.no_grad():
                new.shift.uniform_(lo, hi).clamp_(new.p_min, 0)
                new.sign.uniform_(-1.0, 1.0)
    if m.bias is not None:
        with torch.no_grad():
            new.bias.copy_(m.bias)  # the bias is shared, not converted (papers.md 4.2)
    return new


def convert_to_shift(model: nn.Module, input_shape: tuple[int, ...], *, mode: str, weight_bits: int,
                     act_bits: tuple[int, int] | None = None, depth: int | None = None,
                     scratch: bool = False) -> list[str]:
    """Replace the first ``depth`` (all when None) Conv2d/Linear layers, counted from the input,
    by shift layers, in place. Returns the converted module names in call order."""
    order = call_order(model, input_shape, (nn.Conv2d, nn.Linear))
    chosen = order if depth is None else order[:depth]
    for name in chosen:
        _set(model, name, _shift_layer(model.get_submodule(name), mode, weight_bits, act_bits, scratch))
    return chosen


@torch.no_grad()
def frozen_weight(m: nn.Module) -> torch.Tensor:
    """The exact power-of-two weight a trainable shift layer computes (clamps applied)."""
    if isinstance(m, (ShiftConv2dQ, ShiftLinearQ)):
        w = m.weight.detach().clone()
        w = torch.sign(w) * w.abs().clamp(2.0 ** m.p_min, 1.0)
        return round_pow2(w)
    return m.shift_weight().detach().clone()


@torch.no_grad()
def finalize(model: nn.Module) -> nn.Module:
    """Bake the rounded weights into ``FrozenShift*`` layers, in place (the paper code's
    ``round_shift_weights``): weight = s * 2^p exactly, bias in fixed point when act_bits is on.
    Returns ``model``. Idempotent."""
    for name, m in list(model.named_modules()):
        if not isinstance(m, SHIFT_TRAINABLE):
            continue
        conv = isinstance(m, nn.Conv2d)
        args = _conv_args(m) if conv else _linear_args(m)
        new = (FrozenShiftConv2d if conv else FrozenShiftLinear)(**args, mode=m.mode, weight_bits=m.weight_bits,
                                                                 act_bits=m.act_bits)
        new.weight.copy_(frozen_weight(m))
        if m.bias is not None:
            new.bias.copy_(quantize_act(m.bias.detach(), m.act_bits))
        new.train(m.training)
        _set(model, name, new)
    return model


def shift_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SHIFT_LAYERS)}


def frozen_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SHIFT_FROZEN)}


def write_out_batchnorm(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """A copy of ``model`` (eval) in which every BatchNorm2d called right after a shift conv is a
    ``ChannelAffine``: both ONNX exporters fold BN into the preceding Conv (backends.md pitfall 8),
    which would turn s * 2^p back into arbitrary floats. Other BNs are left to the exporter."""
    work = copy.deepcopy(model).eval()
    order = leaf_call_order(work, input_shape)
    for prev, name in zip(order, order[1:]):
        m = work.get_submodule(name)
        if isinstance(m, nn.BatchNorm2d) and isinstance(work.get_submodule(prev), SHIFT_LAYERS) \
                and isinstance(work.get_submodule(prev), nn.Conv2d):
            _set(work, name, ChannelAffine.from_bn(m))
    return work


def p_range(mode: str, weight_bits: int) -> tuple[int, int]:
    return p_min_for(mode, weight_bits), 0
