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
