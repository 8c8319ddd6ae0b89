"""FTWT's weight initialisation, shared by the CIFAR models."""
from __future__ import annotations

import math

from torch import nn


def ftwt_init(model: nn.Module, linear_std: float | None = None) -> None:
    """Conv ~ N(0, sqrt(2 / (k*k*out))) (Kaiming, fan-out), conv bias 0, BN gamma 1 / beta 0;
    Linear ~ N(0, linear_std) with bias 0 when ``linear_std`` is given, else PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
