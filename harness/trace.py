"""One forward pass with hooks: which modules run, in which order, on which input shapes.

Methods use it to find layers in call order (DeepShift's ``depth``, BN-after-conv pairs) and
each layer's input shape (decomposition's cost check), on any registered architecture.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def trace_calls(model: nn.Module, input_shape: tuple[int, ...],
                select: Callable[[nn.Module], bool]) -> list[tuple[str, tuple[int, ...]]]:
    """(module name, input shape without batch) for every call of a selected module during one
    eval-mode forward pass of a zero input, in call order, repeats kept. The model's train/eval
    mode is restored afterwards."""
    calls: list[tuple[str, tuple[int, ...]]] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple, _out: torch.Tensor) -> None:
        calls.append((names[module], tuple(inputs[0].shape[1:])))

    handles = [m.register_forward_hook(hook) for m in model.modules() if select(m)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros((1, *input_shape), dtype=p.dtype, device=p.device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return calls
