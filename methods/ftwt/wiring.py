"""FTWT mask predictors, the ground-truth rule, model wrapping and per-sample cost accounting.

A ``GatedUnit`` replaces one conv+BN+activation triple of a model *in place* (the BN and the
activation modules of the original model become ``nn.Identity``), so the original model class and
its forward stay untouched. The unit computes the dense output and multiplies it by the predicted
binary mask; that is the training model and the "masked-dense" deployable (what the released code
does). Real skipping is in ``methods.ftwt.skip``.

Which input feeds which conv is recorded in a ``CostSpec`` while wrapping (each family's wrapper
knows its wiring), and the per-sample MACs are computed from the recorded masks with the corrected
rules of papers.md 1.5: depthwise convs cost active_out*H*W*k^2, a conv after a residual add reads a
dense input, and the classifier and shortcut convs are in both the numerator and the denominator.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# The released code's tolerance: a channel at sorted position j is dropped if S_j - r > 1e-5, and a
# channel whose normalised mass is <= 1e-5 is "dead" (no pixel fires).
GT_EPS = 1e-5


@torch.no_grad()
def ground_truth(out: torch.Tensor, r: float) -> torch.Tensor:
    """FTWT "rank features" target: (B, C) float 0/1.

    Per sample: a_c = max_{h,w} |out_c|, p = a / sum(a); sort p descending, cumulative sum S_j; keep
    the channels at sorted positions with S_j <= r + 1e-5 and mass p > 1e-5 (r = 1 keeps all but
    dead channels).
    """
    return masses_to_mask(normalised_mass(out.detach().abs().amax(dim=(2, 3))), r)


def normalised_mass(a: torch.Tensor) -> torch.Tensor:
    """p = a / sum(a) per sample, for the per-channel peaks ``a`` (B, C)."""
    return a / a.sum(dim=1, keepdim=True).clamp_min(1e-12)


def masses_to_mask(p: torch.Tensor, r: float) -> torch.Tensor:
    """The kept set for normalised masses ``p`` (B, C) at threshold ``r`` (see ``ground_truth``)."""
    sorted_p, order = p.sort(dim=1, descending=True)
    keep_sorted = (sorted_p.cumsum(dim=1) <= r + GT_EPS) & (sorted_p > GT_EPS)
    mask = torch.zeros_like(p)
    return mask.scatter_(1, order, keep_sorted.to(p.dtype))


class GatedUnit(nn.Module):
    """conv -> BN -> act, multiplied per sample by the binary mask of a predictor head.

    Predictor (papers.md 1.2 step 3): pool the layer input to one value per channel (``pool`` =
    "max", the paper, or "avg", the released code), softmax over channels, Linear C_in -> C_out,
    mask = logit > 0 (the same as sigmoid > 0.5). ``mode`` "decoupled" feeds the predictor a detached
    input (only the mask loss trains it); "joint" lets the mask loss reach the backbone too. The mask
    itself never carries a gradient (no straight-through path from the task loss).
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: nn.Module, pool: str = "max",
                 mode: str = "decoupled"):
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act
        self.predictor = nn.Linear(conv.in_channels, conv.out_channels)
        self.pool, self.mode = pool, mode
        self.r = 1.0
        self.gating = True    # False: dense output (used for the estimate on the baseline)
        self.collect = False  # True: keep logits and ground truth for the mask loss / estimate
        self.record = False   # True: keep the mask for cost accounting
        self.calibrating = False  # True (with collect): set the threshold from this batch (calibrate)
        self.last: dict[str, torch.Tensor] = {}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        e = x.detach() if self.mode == "decoupled" else x
        e = e.amax(dim=(2, 3)) if self.pool == "max" else e.mean(dim=(2, 3))
        return self.predictor(torch.softmax(e, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(x)
        out = self.act(self.bn(self.conv(x)))
        if self.collect:
            with torch.no_grad():
                peak = out.detach().abs().amax(dim=(2, 3))
                gt = masses_to_mask(normalised_mass(peak), self.r)
                if self.calibrating:
                    t = _threshold(logits, int(gt.sum()))
                    self.predictor.bias.sub_(t)
                    logits = logits - t
                self.last = {"logits": logits, "peak": peak, "gt": gt}
        if not self.gating:
            return out
        mask = (logits.detach() > 0).to(out.dtype)
        if self.record:
            self.last["mask"] = mask
        return out * mask[:, :, None, None]


@dataclass
class CostEntry:
    """One MAC-counted layer: ``unit`` is the index of its GatedUnit (None: never gated, e.g. a
    shortcut conv or the classifier); ``src`` the index of the unit whose mask gives the live input
    channels (None: dense input, e.g. the image or the output of a residual add)."""

    name: str
    kind: str  # "conv" | "dwconv" | "linear"
    c_in: int
    c_out: int
    k2: int
    hw: int
    unit: int | None
    src: int | None
    in_spatial: int = 1  # linear layers fed by a flattened C x H x W map (1 for CIFAR nets)


@dataclass
class CostSpec:
    entries: list[CostEntry] = field(default_factory=list)

    def dense_macs(self) -> int:
        return int(sum(_macs(e, e.c_in, e.c_out) for e in self.entries))

    def per_sample(self, masks: list[torch.Tensor]) -> np.ndarray:
        """Per-sample MACs (B,) given each unit's (B, C_out) 0/1 mask."""
        counts = [m.sum(dim=1).double() for m in masks]
        batch = masks[0].shape[0] if masks else 1
        total = torch.zeros(batch, dtype=torch.float64)
        for e in self.entries:
            a_out = counts[e.unit] if e.unit is not None else torch.full((batch,), float(e.c_out), dtype=torch.float64)
            a_in = counts[e.src] if e.src is not None else torch.full((batch,), float(e.c_in), dtype=torch.float64)
            total += _macs(e, a_in, a_out)
        return total.numpy()

    def predictor_macs(self, units: list[GatedUnit]) -> int:
        """MACs of all predictor heads (dense Linear C_in x C_out each), reported separately."""
        return int(sum(u.predictor.in_features * u.predictor.out_features for u in units))


def _macs(e: CostEntry, a_in, a_out):
    if e.kind == "linear":
        return a_out * a_in * e.in_spatial
    if e.kind == "dwconv":  # corrected rule: active_out * H * W * k^2 (papers.md 1.5)
        return a_out * e.hw * e.k2
    return a_out * e.hw * e.k2 * a_in


class FTWTNet(nn.Module):
    """The wrapped model (``net``, its original class with GatedUnits inside) plus its units, in
    forward order, and its cost spec. ``family`` names the wiring (used by the skipping engine)."""

    def __init__(self, net: nn.Module, family: str, units: list[GatedUnit], spec: CostSpec):
        super().__init__()
        self.net = net
        self.family = family
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


def _family(model: nn.Module) -> str:
    names = {n for n, _ in model.named_children()}
    if {"layer1", "layer2", "layer3", "fc"} <= names and "layer4" not in names:
        return "cifar_resnet"
    if "layer4" in names:
        return "tv_resnet"
    if {"features", "classifier"} <= names and isinstance(model.classifier, nn.Linear):
        return "cifar_vgg"
    if "bottlenecks" in names:
        return "cifar_mobilenet"
    if {"features", "classifier"} <= names and any(hasattr(m, "use_res_connect") for m in model.features):
        return "tv_mobilenet"
    raise ValueError(f"ftwt: no predictor placement for {type(model).__name__}")


_WRAPPERS = {"cifar_resnet": _wrap_cifar_resnet, "cifar_vgg": _wrap_cifar_vgg,
             "cifar_mobilenet": _wrap_cifar_mobilenet, "tv_resnet": _wrap_tv_resnet,
             "tv_mobilenet": _wrap_tv_mobilenet}


def wrap(model: nn.Module, input_shape: tuple[int, ...], pool: str = "max", mode: str = "decoupled") -> FTWTNet:
    """Put a GatedUnit on every prunable conv of ``model`` (in place) and build its cost spec."""
    family = _family(model)
    b = _Builder(pool, mode)
    _WRAPPERS[family](model, b)
    # output sizes from one probe pass (gating off: a dense pass)
    sizes: dict[int, tuple[int, int]] = {}
    hooks = [layer.register_forward_hook(lambda m, i, o, k=id(layer): sizes.__setitem__(k, (o.shape, i[0].shape)))
             for _, layer, _, _ in b.entries]
    net = FTWTNet(model, family, b.units, CostSpec())
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


# ----------------------------------------------------------------------------- measuring and estimating
@torch.no_grad()
def measure_macs(net: FTWTNet, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Per-sample MACs of the gated (predicted-mask) model on ``x`` (eval mode)."""
    net.eval().set(record=True, collect=False, gating=True)
    out = []
    try:
        for i in range(0, len(x), batch_size):
            net(x[i:i + batch_size])
            out.append(net.spec.per_sample([u.last["mask"] for u in net.units]))
    finally:
        net.set(record=False)
        for u in net.units:
            u.last = {}
    return np.concatenate(out)


@torch.no_grad()
def estimate_curve(net: FTWTNet, x: torch.Tensor, rs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Expected MACs ratio for each r in ``rs``, before any training (papers.md 1.2 step 9):
    the ground-truth rule run on the *dense* baseline (no masking), with the ground truth in place
    of the predicted mask in the cost formula. One pass serves every r."""
    net.eval().set(collect=True, gating=False)
    dense = net.spec.dense_macs()
    totals = np.zeros(len(rs))
    n = 0
    try:
        for i in range(0, len(x), batch_size):
            net(x[i:i + batch_size])
            masses = []
            for u in net.units:
                masses.append(normalised_mass(u.last["peak"]))
            for j, r in enumerate(rs):
                totals[j] += net.spec.per_sample([masses_to_mask(p, float(r)) for p in masses]).sum()
            n += len(x[i:i + batch_size])
    finally:
        net.set(collect=False, gating=True)
        for u in net.units:
            u.last = {}
    return totals / max(n, 1) / dense


@torch.no_grad()
def calibrate(net: FTWTNet, x: torch.Tensor, batch_size: int = 256, check: bool = True) -> list[float] | None:
    """Shift each predictor's bias so that its mean kept count on ``x`` equals the ground truth's.

    Why (measured, see README "Calibration"): the paper's rule, mask = sigmoid(logit) > 0.5, is the
    BCE-optimal decision per channel, so a channel that the ground truth keeps for more than half of
    the inputs is kept for (nearly) all of them when the predictor cannot tell inputs apart well.
    On digits the predictors converge to about that: ResNet-56 at r = 0.8 keeps 81% of the filters
    where the ground truth keeps 70%, which puts the achieved MACs 10-19 points above the estimate.
    Calibration keeps the predictor's ranking of inputs and channels (its logits) and moves only
    each layer's decision threshold, to the quantile at which the layer keeps as many filters, on
    average, as the ground truth does.

    One forward pass over all of ``x`` at once (eval mode, no grad): each unit sets its threshold
    from the whole set's logits before its mask is applied, so every layer is calibrated on inputs
    masked by the already calibrated layers before it. Keep ``x`` small enough for one batch (1,024
    CIFAR-size images take well under 1 GB). With ``check``, returns per layer |mean kept - mean
    ground-truth kept| / C_out measured afterwards on ``x`` in batches of ``batch_size`` (0 up to
    ties; one more pass); without, returns None.
    """
    with _probing(net, calibrating=True):
        net(x)
    if not check:
        return None
    kept, gt = keep_rates(net, x, batch_size)
    return list(np.abs(kept - gt))


@torch.no_grad()
def keep_rates(net: FTWTNet, x: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per layer, the mean fraction of filters the predictors keep on ``x`` and the mean fraction
    the ground truth keeps (on the same, masked, forward pass; eval mode). Flags are restored."""
    kept = np.zeros(len(net.units))
    gt = np.zeros(len(net.units))
    with _probing(net):
        for i in range(0, len(x), batch_size):
            net(x[i:i + batch_size])
            for j, u in enumerate(net.units):
                kept[j] += float((u.last["logits"] > 0).sum())
                gt[j] += float(u.last["gt"].sum())
    width = np.array([u.predictor.out_features for u in net.units], float)
    return kept / max(len(x), 1) / width, gt / max(len(x), 1) / width


@contextmanager
def _probing(net: FTWTNet, calibrating: bool = False):
    """Eval mode with masks applied and ground truth collected; restores the train/eval mode and
    every unit's ``collect`` flag afterwards, and drops what the pass kept."""
    was, collecting = net.training, [u.collect for u in net.units]
    net.eval().set(collect=True, gating=True, record=False, calibrating=calibrating)
    try:
        yield
    finally:
        for u, c in zip(net.units, collecting):
            u.collect, u.calibrating, u.last = c, False, {}
        net.train(was)


def _threshold(logits: torch.Tensor, k: int) -> float:
    """The logit threshold above which exactly ``k`` of ``logits`` lie (midway between the k-th
    and (k+1)-th largest values)."""
    flat = logits.flatten().sort(descending=True).values
    if k <= 0:
        return float(flat[0]) + 1.0
    if k >= len(flat):
        return float(flat[-1]) - 1.0
    return 0.5 * float(flat[k - 1] + flat[k])


def r_for_macs(rs: np.ndarray, ratios: np.ndarray, target: float) -> float:
    """The r whose estimated MACs ratio is closest to ``target`` (linear interpolation on the
    monotone curve; the curve is non-decreasing in r)."""
    ratios = np.maximum.accumulate(ratios)
    if target <= ratios[0]:
        return float(rs[0])
    if target >= ratios[-1]:
        return float(rs[-1])
    return float(np.interp(target, ratios, rs))


def mask_loss(units: list[GatedUnit]) -> torch.Tensor:
    """L_mask = mean over layers of (sum over channels of mean over batch BCEWithLogits)."""
    per_layer = [F.binary_cross_entropy_with_logits(u.last["logits"], u.last["gt"], reduction="none")
                 .mean(dim=0).sum() for u in units]
    return torch.stack(per_layer).mean()
