"""Calibration of the mask thresholds to the ground truth's keep rate (our addition, see the
README's "Calibration"), and the keep rates it is measured by."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from methods.ftwt.wiring import FTWTNet


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
