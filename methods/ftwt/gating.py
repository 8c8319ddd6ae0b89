"""FTWT mask predictors and the ground-truth rule (papers.md 1.2).

A ``GatedUnit`` replaces one conv+BN+activation triple of a model *in place* (the BN and the
activation modules of the original model become ``nn.Identity``), so the original model class and
its forward stay untouched. The unit computes the dense output and multiplies it by the predicted
binary mask; that is the training model and the "masked-dense" deployable (what the released code
does). Where the units go is ``wiring``; what a masked network costs is ``cost``; moving the
decision thresholds to the ground truth's keep rate is ``calibration``; real skipping is ``skip``.
"""
from __future__ import annotations

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


def _threshold(logits: torch.Tensor, k: int) -> float:
    """The logit threshold above which exactly ``k`` of ``logits`` lie (midway between the k-th
    and (k+1)-th largest values)."""
    flat = logits.flatten().sort(descending=True).values
    if k <= 0:
        return float(flat[0]) + 1.0
    if k >= len(flat):
        return float(flat[-1]) - 1.0
    return 0.5 * float(flat[k - 1] + flat[k])


def mask_loss(units: list[GatedUnit]) -> torch.Tensor:
    """L_mask = mean over layers of (sum over channels of mean over batch BCEWithLogits)."""
    per_layer = [F.binary_cross_entropy_with_logits(u.last["logits"], u.last["gt"], reduction="none")
                 .mean(dim=0).sum() for u in units]
    return torch.stack(per_layer).mean()
