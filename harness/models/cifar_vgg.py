"""CIFAR VGG16-bn as in selkerdawy/FTWT ``models/cifar/vgg.py``.

Structure::

    model.features    nn.Sequential: per conv entry [Conv2d 3x3 (bias=True), BatchNorm2d, ReLU],
                      per "M" a MaxPool2d(2, 2); after five pools a 32x32 input is 512x1x1
    model.classifier  a single nn.Linear(512, num_classes) (FTWT has no hidden FC layers)

The convs keep their bias, as in FTWT; that bias is part of the 14.73 M parameter reference.
FTWT's 313,478,144 MACs come from a thop version that also counts one op per output element for
the conv bias (276,480 of them); ``harness.macs`` does not count bias adds and gives 313,201,664
(0.09 % lower).
"""
from __future__ import annotations

import torch
from torch import nn

from harness.models.init import ftwt_init
from harness.models.units import Unit

# "M" = 2x2 max pool; numbers = output channels of a conv3x3+BN+ReLU unit.
VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                              512, 512, 512, "M", 512, 512, 512, "M"]


def make_features(cfg: list[int | str], in_channels: int = 3) -> nn.Sequential:
    """The conv/BN/ReLU/max-pool stack described by ``cfg``."""
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1),
                       nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
            in_channels = int(v)
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    """VGG with BN for 32x32 inputs: ``features`` then flatten then ``classifier``."""

    def __init__(self, cfg: list[int | str], num_classes: int = 10):
        super().__init__()
        self.features = make_features(cfg)
        last = [v for v in cfg if v != "M"][-1]
        self.classifier = nn.Linear(int(last), num_classes)
        ftwt_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg16_bn(num_classes: int = 10) -> CifarVGG:
    """CIFAR VGG16 with batch norm (FTWT's configuration "D")."""
    return CifarVGG(VGG16_CFG, num_classes)


def vgg_units(features: nn.Sequential, prefix: str = "features") -> list[Unit]:
    """Conv-BN-ReLU units of a VGG ``features`` stack whose removal keeps every shape.

    OUR ASSUMPTION (LayerPrune released no VGG layer-removal code, papers.md 2.2): a unit is
    removable only when its conv has C_in == C_out, stride 1 and "same" padding, and no pooling
    sits inside the unit; units that change width or resolution would need the next layer
    re-initialised, which the paper does not describe.
    """
    units = []
    mods = list(features)
    for i in range(len(mods) - 2):
        conv, bn, act = mods[i:i + 3]
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                and isinstance(act, (nn.ReLU, nn.ReLU6))):
            continue
        keeps_shape = (conv.in_channels == conv.out_channels and conv.stride == (1, 1)
                       and conv.groups == 1 and conv.dilation == (1, 1)
                       and all(2 * p == k - 1 for p, k in zip(conv.padding, conv.kernel_size)))
        if keeps_shape:
            paths = tuple(f"{prefix}.{j}" for j in range(i, i + 3))
            units.append(Unit(paths[0], paths, ((paths[0], paths[1]),)))
    return units


def removable_units(model: nn.Module) -> list[Unit] | None:
    """Shape-keeping conv-BN-ReLU units (see ``vgg_units``); None when not a ``CifarVGG``."""
    if not isinstance(model, CifarVGG):
        return None
    return vgg_units(model.features)


def pruning_ignored(model: nn.Module) -> list[nn.Module] | None:
    """Layers whose output channels filter pruning keeps: the classifier; None when not a
    ``CifarVGG``."""
    if not isinstance(model, CifarVGG):
        return None
    return [m for m in model.modules() if isinstance(m, nn.Linear)]
