"""CIFAR MobileNetV2: the kuangliu/pytorch-cifar network that FTWT's constants were measured on.

FTWT hard-codes 91,154,944 MACs / 2,296,922 params for ``cifar10_mobilenetv2`` (``cifar.py``,
``nw_profile``). Those numbers are reproduced exactly by the kuangliu CIFAR variant built here, not
by the ``models/cifar/mobilenetv2.py`` file in the FTWT repo (that file downsamples only twice and
has no projection shortcuts: 297.5 M MACs / 2.238 M params). CIFAR changes from the ImageNet
network: the stem conv has stride 1 and the second stage (24 channels) has stride 1, so a 32x32
input reaches the last conv at 4x4. Activations are ReLU6 as in FTWT's file (kuangliu uses ReLU;
the counts do not depend on it).

Structure (model-level names follow FTWT; compression methods walk them)::

    model.conv0, model.bn0, model.relu0   stem: 3x3 conv 3->32 (stride 1), BN, ReLU6
    model.bottlenecks                     nn.Sequential of 17 ``InvertedResidual`` blocks
    model.conv1, model.bn1, model.relu1   1x1 conv 320->1280, BN, ReLU6
    model.avgpool                         global average pool
    model.fc                              nn.Linear(1280, num_classes)

Each ``InvertedResidual`` has ``conv1, bn1, relu1`` (1x1 expand), ``conv2, bn2, relu2`` (3x3
depthwise, carries the stride), ``conv3, bn3`` (1x1 project, linear: no activation) and
``shortcut``: ``nn.Identity`` (stride 1, in == out), a 1x1 conv + BN projection (stride 1,
in != out, as in kuangliu) or ``None`` (stride 2: no residual). ``block.use_skip`` is True only
for the identity case: those blocks can be removed whole (layer pruning) without changing any
tensor shape.
"""
from __future__ import annotations

import torch
from torch import nn

from harness.models.init import ftwt_init
from harness.models.units import Unit

# (expansion t, out_channels, blocks, stride of the first block): kuangliu's CIFAR configuration.
CIFAR_MBV2_CFG: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),   # stride 2 in the ImageNet network; 1 for CIFAR
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear project, plus ``shortcut(x)`` when stride is 1."""

    def __init__(self, in_channels: int, out_channels: int, expansion: int = 6, stride: int = 1):
        super().__init__()
        hidden = expansion * in_channels
        self.stride = stride
        self.use_skip = stride == 1 and in_channels == out_channels
        self.conv1 = nn.Conv2d(in_channels, hidden, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.relu1 = nn.ReLU6(inplace=True)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel_size=3, stride=stride, padding=1,
                               groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.relu2 = nn.ReLU6(inplace=True)
        self.conv3 = nn.Conv2d(hidden, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module | None
        if stride != 1:
            self.shortcut = None
        elif self.use_skip:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out if self.shortcut is None else out + self.shortcut(x)


def make_bottlenecks(cfg: list[tuple[int, int, int, int]], in_channels: int = 32) -> nn.Sequential:
    """The sequence of ``InvertedResidual`` blocks described by ``cfg``."""
    blocks = []
    for t, out, n, stride in cfg:
        for s in [stride] + [1] * (n - 1):
            blocks.append(InvertedResidual(in_channels, out, t, s))
            in_channels = out
    return nn.Sequential(*blocks)


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs; see the module docstring for attribute names."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 32, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(32)
        self.relu0 = nn.ReLU6(inplace=True)
        self.bottlenecks = make_bottlenecks(CIFAR_MBV2_CFG, 32)
        self.conv1 = nn.Conv2d(320, 1280, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(1280)
        self.relu1 = nn.ReLU6(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1280, num_classes)
        ftwt_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu0(self.bn0(self.conv0(x)))
        x = self.bottlenecks(x)
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def mobilenet_v2(num_classes: int = 10) -> CifarMobileNetV2:
    """CIFAR MobileNetV2 (width 1.0) matching FTWT's 91.15 M MACs / 2.297 M params."""
    return CifarMobileNetV2(num_classes)


def removable_units(model: nn.Module) -> list[Unit] | None:
    """Inverted-residual blocks with an identity skip (``use_skip``: stride 1, in == out), in
    forward order; None when ``model`` is not a ``CifarMobileNetV2``. Scored by the block's
    internal (hidden-width) filters: the expand and depthwise convs."""
    if not isinstance(model, CifarMobileNetV2):
        return None
    return [Unit(f"bottlenecks.{i}", (f"bottlenecks.{i}",),
                 ((f"bottlenecks.{i}.conv1", f"bottlenecks.{i}.bn1"),
                  (f"bottlenecks.{i}.conv2", f"bottlenecks.{i}.bn2")))
            for i, block in enumerate(model.bottlenecks)
            if isinstance(block, InvertedResidual) and block.use_skip]


def pruning_ignored(model: nn.Module) -> list[nn.Module] | None:
    """Layers whose output channels filter pruning keeps: the classifier (Torch-Pruning couples
    the residual adds itself); None when not a ``CifarMobileNetV2``."""
    if not isinstance(model, CifarMobileNetV2):
        return None
    return [m for m in model.modules() if isinstance(m, nn.Linear)]
