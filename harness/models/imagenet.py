"""ImageNet-shape (224x224) models from torchvision, built with random weights.

``weights=None`` always: nothing is downloaded. Pretrained weights, when wanted, are loaded from a
local file with ``harness.models.load_checkpoint``. Attribute names are torchvision's.
"""
from __future__ import annotations

from torch import nn
from torchvision import models as tvm


def resnet18(num_classes: int = 1000) -> nn.Module:
    """torchvision ResNet-18, random init."""
    return tvm.resnet18(weights=None, num_classes=num_classes)


def resnet50(num_classes: int = 1000) -> nn.Module:
    """torchvision ResNet-50, random init."""
    return tvm.resnet50(weights=None, num_classes=num_classes)


def mobilenet_v2(num_classes: int = 1000) -> nn.Module:
    """torchvision MobileNetV2 (width 1.0), random init."""
    return tvm.mobilenet_v2(weights=None, num_classes=num_classes)


def vgg16_bn(num_classes: int = 1000) -> nn.Module:
    """torchvision VGG16-bn (with its 4096-wide classifier), random init."""
    return tvm.vgg16_bn(weights=None, num_classes=num_classes)
