"""Per-sample cost accounting of a gated network, and the cost estimate before training.

Which input feeds which conv is recorded in a ``CostSpec`` while wrapping (``wiring``: each
family's wrapper knows its wiring), and the per-sample MACs are computed from the recorded masks
with the corrected rules of papers.md 1.5: depthwise convs cost active_out*H*W*k^2, a conv after a
residual add reads a dense input, and the classifier and shortcut convs are in both the numerator
and the denominator.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from methods.ftwt.gating import masses_to_mask, normalised_mass

if TYPE_CHECKING:
    from methods.ftwt.gating import GatedUnit
    from methods.ftwt.wiring import FTWTNet


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


def r_for_macs(rs: np.ndarray, ratios: np.ndarray, target: float) -> float:
    """The r whose estimated MACs ratio is closest to ``target`` (linear interpolation on the
    monotone curve; the curve is non-decreasing in r)."""
    ratios = np.maximum.accumulate(ratios)
    if target <= ratios[0]:
        return float(rs[0])
    if target >= ratios[-1]:
        return float(rs[-1])
    return float(np.interp(target, ratios, rs))
