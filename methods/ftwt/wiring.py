"""Where FTWT's gated units go in each model family, and the wrapped network (``FTWTNet``).

The wiring is chosen by the model's registered family (``harness.models.model_spec(name).family``,
given by the method context), never guessed from module names: each family's wrapper replaces its
conv+BN+activation triples by ``GatedUnit``s and records, for the cost accounting, which unit's
mask gives each layer's live input channels.
"""
from __future__ import annotations

import torch
from torch import nn

from harness.errors import UserError
from methods.ftwt.cost import CostEntry, CostSpec
from methods.ftwt.gating import GatedUnit


class FTWTNet(nn.Module):
    """The wrapped model (``net``, its original class with GatedUnits inside) plus its units, in
    forward order, and its cost spec. ``family`` is the registered model family whose wiring was
    used (the skipping engine picks its network by it); ``input_shape`` the (C, H, W) it was
    wrapped at."""

    def __init__(self, net: nn.Module, family: str, units: list[GatedUnit], spec: CostSpec,
                 input_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.net = net
        self.family = family
        self.input_shape = input_shape
        self.__dict__["units"] = units  # plain list: the modules are already registered under net
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def set(self, **flags) -> "FTWTNet":
        for u in self.units:
            for k, v in flags.items():
                setattr(u, k, v)
        return self


# ----------------------------------------------------------------------------- wrapping per family
class _Builder:
    def __init__(self, pool: str, mode: str):
        self.pool, self.mode = pool, mode
        self.units: list[GatedUnit] = []
        self.entries: list[tuple[str, nn.Module, int | None, int | None]] = []

    def unit(self, name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: nn.Module, src: int | None) -> GatedUnit:
        u = GatedUnit(conv, bn, act, self.pool, self.mode)
        self.units.append(u)
        self.entries.append((name, conv, len(self.units) - 1, src))
        return u

    def plain(self, name: str, layer: nn.Module, src: int | None) -> None:
        self.entries.append((name, layer, None, src))

    @property
    def last(self) -> int:
        return len(self.units) - 1


def _act_like(m: nn.Module) -> nn.Module:
    return nn.ReLU6() if isinstance(m, nn.ReLU6) else nn.ReLU()


def _wrap_cifar_resnet(model: nn.Module, b: _Builder) -> None:
    model.conv1 = b.unit("conv1", model.conv1, model.bn1, nn.ReLU(), None)
    model.bn1, model.relu = nn.Identity(), nn.Identity()
    live: int | None = b.last  # the first block reads the (masked) stem output
    for lname in ("layer1", "layer2", "layer3"):
        for i, blk in enumerate(getattr(model, lname)):
            blk.conv1 = b.unit(f"{lname}.{i}.conv1", blk.conv1, blk.bn1, nn.ReLU(), live)
            blk.bn1, blk.relu1 = nn.Identity(), nn.Identity()
            # conv2's mask is applied before the residual add (raw BN output, papers.md 1.2)
            blk.conv2 = b.unit(f"{lname}.{i}.conv2", blk.conv2, blk.bn2, nn.Identity(), b.last)
            blk.bn2 = nn.Identity()
            live = None  # after the residual add the block output is dense
    b.plain("fc", model.fc, None)


def _wrap_cifar_vgg(model: nn.Module, b: _Builder) -> None:
    feats = model.features
    live: int | None = None
    for i in range(len(feats)):
        if isinstance(feats[i], nn.Conv2d):
            feats[i] = b.unit(f"features.{i}", feats[i], feats[i + 1], _act_like(feats[i + 2]), live)
            feats[i + 1], feats[i + 2] = nn.Identity(), nn.Identity()
            live = b.last
    b.plain("classifier", model.classifier, live)


def _wrap_cifar_mobilenet(model: nn.Module, b: _Builder) -> None:
    model.conv0 = b.unit("conv0", model.conv0, model.bn0, nn.ReLU6(), None)
    model.bn0, model.relu0 = nn.Identity(), nn.Identity()
    live: int | None = b.last
    for i, blk in enumerate(model.bottlenecks):
        src = live
        blk.conv1 = b.unit(f"bottlenecks.{i}.conv1", blk.conv1, blk.bn1, nn.ReLU6(), src)
        blk.conv2 = b.unit(f"bottlenecks.{i}.conv2", blk.conv2, blk.bn2, nn.ReLU6(), b.last)
        blk.conv3 = b.unit(f"bottlenecks.{i}.conv3", blk.conv3, blk.bn3, nn.Identity(), b.last)
        blk.bn1 = blk.relu1 = blk.bn2 = blk.relu2 = blk.bn3 = nn.Identity()
        if isinstance(blk.shortcut, nn.Sequential):
            b.plain(f"bottlenecks.{i}.shortcut.0", blk.shortcut[0], src)
        live = None if blk.shortcut is not None else b.last
    model.conv1 = b.unit("conv1", model.conv1, model.bn1, nn.ReLU6(), live)
    model.bn1, model.relu1 = nn.Identity(), nn.Identity()
    b.plain("fc", model.fc, b.last)


def _wrap_tv_resnet(model: nn.Module, b: _Builder) -> None:
    model.conv1 = b.unit("conv1", model.conv1, model.bn1, nn.ReLU(), None)
    model.bn1, model.relu = nn.Identity(), nn.Identity()
    live: int | None = b.last  # max pooling keeps the live set
    for lname in ("layer1", "layer2", "layer3", "layer4"):
        for i, blk in enumerate(getattr(model, lname)):
            src = live
            convs = ["conv1", "conv2"] + (["conv3"] if hasattr(blk, "conv3") else [])
            prev = src
            for j, cname in enumerate(convs):
                act = nn.Identity() if j == len(convs) - 1 else nn.ReLU()
                setattr(blk, cname, b.unit(f"{lname}.{i}.{cname}", getattr(blk, cname),
                                           getattr(blk, f"bn{j + 1}"), act, prev))
                setattr(blk, f"bn{j + 1}", nn.Identity())
                prev = b.last
            # blk.relu is shared by all positions in torchvision's blocks; applying it again to
            # an already activated, masked output is a no-op, so it stays for the residual add.
            if blk.downsample is not None:
                b.plain(f"{lname}.{i}.downsample.0", blk.downsample[0], src)
            live = None
    b.plain("fc", model.fc, None)


def _wrap_tv_mobilenet(model: nn.Module, b: _Builder) -> None:
    feats = model.features
    live: int | None = None

    def cna(seq: nn.Sequential, name: str, src: int | None) -> None:  # Conv2dNormActivation
        act = seq[2] if len(seq) > 2 else nn.Identity()
        seq[0] = b.unit(name, seq[0], seq[1], _act_like(act) if len(seq) > 2 else nn.Identity(), src)
        seq[1] = nn.Identity()
        if len(seq) > 2:
            seq[2] = nn.Identity()

    for i, m in enumerate(feats):
        if hasattr(m, "conv"):  # InvertedResidual: conv = [CNA(expand)?, CNA(dw), Conv, BN]
            src, seq = live, m.conv
            prev = src
            for j in range(len(seq)):
                if isinstance(seq[j], nn.Sequential):
                    cna(seq[j], f"features.{i}.conv.{j}", prev)
                    prev = b.last
                elif isinstance(seq[j], nn.Conv2d):
                    seq[j] = b.unit(f"features.{i}.conv.{j}", seq[j], seq[j + 1], nn.Identity(), prev)
                    seq[j + 1] = nn.Identity()
                    prev = b.last
            live = None if m.use_res_connect else b.last
        else:
            cna(m, f"features.{i}", live)
            live = b.last
    b.plain("classifier.1", model.classifier[1], live)


# registered model family (harness.models.FAMILIES) -> its wiring
WIRINGS = {"resnet_cifar": _wrap_cifar_resnet, "vgg_cifar": _wrap_cifar_vgg,
           "mobilenet_v2_cifar": _wrap_cifar_mobilenet, "resnet_imagenet": _wrap_tv_resnet,
           "mobilenet_v2_imagenet": _wrap_tv_mobilenet}


def wrap(model: nn.Module, input_shape: tuple[int, ...], *, family: str | None, pool: str = "max",
         mode: str = "decoupled") -> FTWTNet:
    """Put a GatedUnit on every prunable conv of ``model`` (in place) and build its cost spec;
    ``family`` is the model's registered family (``MethodContext.family``), which picks the
    wiring. UserError for a family without one."""
    if family not in WIRINGS:
        raise UserError(f"ftwt: no predictor wiring for model family {family!r} "
                        f"(wired: {', '.join(WIRINGS)})")
    b = _Builder(pool, mode)
    WIRINGS[family](model, b)
    # output sizes from one probe pass (gating off: a dense pass)
    sizes: dict[int, tuple[int, int]] = {}
    hooks = [layer.register_forward_hook(lambda m, i, o, k=id(layer): sizes.__setitem__(k, (o.shape, i[0].shape)))
             for _, layer, _, _ in b.entries]
    net = FTWTNet(model, family, b.units, CostSpec(), tuple(input_shape))
    net.set(gating=False)
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    model.train(was)
    net.set(gating=True)
    for h in hooks:
        h.remove()
    for name, layer, unit, src in b.entries:
        out_shape, in_shape = sizes[id(layer)]
        if isinstance(layer, nn.Linear):
            entry = CostEntry(name, "linear", layer.in_features, layer.out_features, 1, 1, unit, src,
                              in_spatial=1)
        else:
            dw = layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels
            if layer.groups > 1 and not dw:
                raise ValueError(f"ftwt: grouped conv {name} not supported")
            k2 = layer.kernel_size[0] * layer.kernel_size[1]
            entry = CostEntry(name, "dwconv" if dw else "conv", layer.in_channels, layer.out_channels,
                              k2, int(out_shape[2] * out_shape[3]), unit, src)
        net.spec.entries.append(entry)
    return net
