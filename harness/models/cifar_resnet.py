"""CIFAR ResNet (He et al. 2016) with the option-A shortcut of the FTWT and LayerPrune code.

Structure (attribute names are an API: compression methods walk them)::

    model.conv1, model.bn1, model.relu        stem: 3x3 conv 3->16, BN, ReLU
    model.layer1, model.layer2, model.layer3  nn.Sequential of n BasicBlocks (16, 32, 64 channels;
                                              layer2/layer3 start with stride 2); depth = 6n + 2
    model.avgpool                             global average pool
    model.fc                                  nn.Linear(64, num_classes)

Each ``BasicBlock`` has ``conv1, bn1, relu1, conv2, bn2, shortcut, relu2``; ``shortcut`` is
``nn.Identity`` when shape is kept, else a parameter-free ``PadShortcut`` (2x2 average pool with
stride 2, then zero channels appended), as in selkerdawy/FTWT ``models/cifar/resnet.py``.
One difference from that file: FTWT builds the padded shortcut from ``x.data`` and so cuts the
gradient through it; here the shortcut is differentiable (the forward values are identical).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from harness.models.init import ftwt_init
from harness.models.units import Unit


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (BN follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """Option-A shortcut: ``stride``x``stride`` average pool, then zero-pad channels to ``out_planes``.

    Has no parameters; a named class (not a lambda) so that ``torch.save(model)`` can pickle it.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int = 2):
        super().__init__()
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, self.stride)
        extra = self.out_planes - x.shape[1]
        # F.pad pads dims from the last one backwards: (W, W, H, H, C_before, C_after).
        return F.pad(x, (0, 0, 0, 0, 0, extra)) if extra > 0 else x

    def extra_repr(self) -> str:
        return f"{self.in_planes}, {self.out_planes}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus ``shortcut(x)``, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            PadShortcut(in_planes, planes, stride) if stride != 1 or in_planes != planes
            else nn.Identity()
        )
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; see the module docstring for attribute names."""

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _make_stage(16, 16, n, stride=1)
        self.layer2 = _make_stage(16, 32, n, stride=2)
        self.layer3 = _make_stage(32, 64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        ftwt_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def resnet20(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-20 (3 blocks per stage)."""
    return CifarResNet(20, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-56 (9 blocks per stage); FTWT's reference model."""
    return CifarResNet(56, num_classes)


def resnet110(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-110 (18 blocks per stage)."""
    return CifarResNet(110, num_classes)


def removable_units(model: nn.Module) -> list[Unit] | None:
    """BasicBlocks that keep resolution and width (identity shortcut), in forward order; None
    when ``model`` is not a ``CifarResNet``.

    The stem is never a unit; the first block of layer2/layer3 (stride 2, wider) is not either;
    the first block of layer1 (16 -> 16, stride 1) is, as in LayerPrune's ``finetune.py``.
    The unit is scored by its internal filters (conv1/bn1), as the paper's block gates are.
    """
    if not isinstance(model, CifarResNet):
        return None
    units = []
    for stage in ("layer1", "layer2", "layer3"):
        for i, block in enumerate(getattr(model, stage)):
            if isinstance(block, BasicBlock) and isinstance(block.shortcut, nn.Identity):
                path = f"{stage}.{i}"
                units.append(Unit(path, (path,), ((f"{path}.conv1", f"{path}.bn1"),)))
    return units


def pruning_ignored(model: nn.Module) -> list[nn.Module] | None:
    """Layers whose output channels filter pruning (Torch-Pruning) must keep; None when ``model``
    is not a ``CifarResNet``. The classifier, and every conv but the blocks' conv1: the option-A
    shortcut (avg-pool + zero-pad, ``F.pad``) is not traced by Torch-Pruning's dependency graph,
    so pruning a block output would break the residual add. The block-internal width (conv1's
    output) is exactly where LayerPrune's engine places its block gates."""
    if not isinstance(model, CifarResNet):
        return None
    keep = {b.conv1 for b in model.modules() if isinstance(b, BasicBlock)}
    return [m for m in model.modules()
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m not in keep)]
