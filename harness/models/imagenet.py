"""ImageNet-shape (224x224) models from torchvision, built with random weights.

``weights=None`` always: nothing is downloaded. Pretrained weights, when wanted, are loaded from a
local file with ``harness.models.load_checkpoint``. Attribute names are torchvision's.
"""
from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from harness.models.units import Unit


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


def removable_units(model: nn.Module) -> list[Unit] | None:
    """Removable units of torchvision ResNet, MobileNetV2 and VGG; None for other models.

    ResNet: basic and bottleneck blocks without ``downsample`` (resolution and width kept),
    scored by their internal convs (conv1/bn1, plus conv2/bn2 in a bottleneck, as LayerPrune's
    ``get_resnet50_importance``). MobileNetV2: inverted residuals with ``use_res_connect``,
    scored by the expand and depthwise convs. VGG: see ``cifar_vgg.vgg_units`` (our assumption).
    """
    if isinstance(model, tvm.ResNet):
        return _resnet_units(model)
    if isinstance(model, tvm.MobileNetV2):
        return _mobilenet_units(model)
    if isinstance(model, tvm.VGG):
        from harness.models.cifar_vgg import vgg_units
        return vgg_units(model.features)
    return None


def _resnet_units(model: nn.Module) -> list[Unit]:
    units = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(model, stage)):
            if block.downsample is not None:
                continue
            p = f"{stage}.{i}"
            pairs = [(f"{p}.conv1", f"{p}.bn1")]
            if isinstance(block, tvm.resnet.Bottleneck):
                pairs.append((f"{p}.conv2", f"{p}.bn2"))
            units.append(Unit(p, (p,), tuple(pairs)))
    return units


def _mobilenet_units(model: nn.Module) -> list[Unit]:
    units = []
    for i, block in enumerate(model.features):
        if not getattr(block, "use_res_connect", False):
            continue
        p = f"features.{i}"
        # block.conv = [expand Conv2dNormActivation (when t > 1)], depthwise Conv2dNormActivation,
        # 1x1 project conv, BN: the hidden-width convs are the Conv2dNormActivation entries.
        pairs = tuple((f"{p}.conv.{j}.0", f"{p}.conv.{j}.1") for j, sub in enumerate(block.conv)
                      if isinstance(sub, nn.Sequential))
        units.append(Unit(p, (p,), pairs))
    return units


def pruning_ignored(model: nn.Module) -> list[nn.Module] | None:
    """Layers whose output channels filter pruning keeps in torchvision ResNet, MobileNetV2 and
    VGG: the classifier's Linear layers (Torch-Pruning traces their residual adds); None for
    other models."""
    if not isinstance(model, (tvm.ResNet, tvm.MobileNetV2, tvm.VGG)):
        return None
    return [m for m in model.modules() if isinstance(m, nn.Linear)]
