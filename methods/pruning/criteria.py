"""Filter-importance criteria of LayerPrune (papers.md 2.2), collected in one shot, the
imprint criterion of its companion paper (papers.md 2.2 step 6), and the layer (unit) importance
built from them. Shared by ``layer-prune`` and ``filter-prune`` (imprint scores units, not
filters: layer-prune only).

Collection follows the Taylor-pruning engine the paper uses (NVlabs/Taylor_pruning,
``do_iterative_pruning: false``): the model TRAINS for a number of batches (default one epoch,
SGD lr 1e-3, momentum 0.9, wd 1e-4) and every criterion is accumulated at every iteration, then
averaged over iterations, without momentum. A gate (a per-channel multiplier fixed at 1, held
outside the optimizer) sits after every BN so that the gate criterion exists. Per-layer L2
normalisation is off, except for the feature-map criterion, whose definition (Molchanov
ICLR'17) includes it. Written by hand: no library collects these on-line during training
(Torch-Pruning's Taylor importance is computed from one backward pass on a fixed model).

Criteria (engine method ids in brackets), per output filter c of a conv followed by BN:
  weight-taylor [0]  sum_{w in filter c} (w * dL/dw)^2
  weight-norm   [2]  sum w^2  (squared L2, not L1: a known pitfall)
  weight-l1     [3]  sum |w|
  fmap-taylor   [6]  mean over batch and space of |a * dL/da| (a = BN output), then the layer's
                     vector divided by its L2 norm
  gate-taylor   [22] (g * dL/dg)^2 with g = 1, i.e. (dL/dg)^2, g a gate after the BN
  bn-scale      [30] |gamma| of the BN
  random        [1]  uniform(0, 1), seeded (a control)
  imprint            (ICIP'20, one-shot-layer-pruning) per UNIT: accuracy of an imprinted linear
                     classifier on the unit's output minus that on its input (see ``imprint``)
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from harness.data import DataBundle, make_loader
from harness.models import Unit

CRITERIA = ("weight-taylor", "weight-norm", "weight-l1", "fmap-taylor", "gate-taylor", "bn-scale",
            "random")
# The paper's table compares these five; "ensemble" sums their ranks (plot_layer_importance.py).
ENSEMBLE_OF = ("weight-taylor", "weight-norm", "fmap-taylor", "gate-taylor", "bn-scale")
IMPRINT = "imprint"
FILTER_CHOICES = CRITERIA + ("ensemble",)   # criteria that rank filters (filter-prune)
CHOICES = FILTER_CHOICES + (IMPRINT,)        # criteria that rank units (layer-prune)


@dataclass(frozen=True)
class CollectSettings:
    """One-shot collection: ``batches`` None = one epoch; the optimizer settings of papers.md."""

    batches: int | None = None
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128


Scores = dict[str, dict[str, torch.Tensor]]  # criterion -> conv path -> per-filter score


def conv_bn_points(model: nn.Module) -> list[tuple[str, str]]:
    """Every (conv, bn) pair where a BatchNorm2d directly follows a Conv2d in registration
    order with the conv's output width: the points where the engine puts a gate."""
    mods = list(model.named_modules())
    out = []
    for (name, mod), (next_name, nxt) in zip(mods, mods[1:]):
        if (isinstance(mod, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d)
                and nxt.num_features == mod.out_channels):
            out.append((name, next_name))
    return out


class _Gates:
    """Forward hooks that multiply each BN output by a gate of ones and keep what the
    activation-based criteria need from the backward pass."""

    def __init__(self, model: nn.Module, points: list[tuple[str, str]]):
        self.gates = {conv: torch.ones(model.get_submodule(bn).num_features, requires_grad=True)
                      for conv, bn in points}
        self.fmap: dict[str, torch.Tensor] = {}
        self.handles = [model.get_submodule(bn).register_forward_hook(self._hook(conv))
                        for conv, bn in points]

    def _hook(self, conv: str) -> Callable:
        def hook(_mod: nn.Module, _inp: tuple, a: torch.Tensor) -> torch.Tensor:
            if a.requires_grad:
                # a is used only by the gate product below, so dL/da = g * dL/d(ga) = dL/d(ga),
                # and a is never modified in place (an inplace ReLU acts on the product).
                # The hook holds a detached view, never ``a`` itself: a hook on ``a`` that captures
                # ``a`` is a cycle through autograd's C++ graph that Python's GC cannot see, so
                # every iteration's whole graph leaked (24 GB RSS, OOM-killed, over one
                # Fashion-MNIST epoch of ResNet-56 at batch 128).
                seen = a.detach()
                a.register_hook(lambda grad: self._store_fmap(conv, seen, grad))
            return a * self.gates[conv].view(1, -1, 1, 1)
        return hook

    def _store_fmap(self, conv: str, a: torch.Tensor, grad: torch.Tensor) -> None:
        self.fmap[conv] = (a * grad).abs().mean(dim=(0, 2, 3))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _iteration_scores(model: nn.Module, points: list[tuple[str, str]],
                      gates: _Gates) -> dict[str, dict[str, torch.Tensor]]:
    """All criteria at this iteration (after backward, before the optimizer step)."""
    out: dict[str, dict[str, torch.Tensor]] = {c: {} for c in CRITERIA if c != "random"}
    for conv_name, bn_name in points:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        w = conv.weight.detach()
        g = conv.weight.grad if conv.weight.grad is not None else torch.zeros_like(w)
        out["weight-taylor"][conv_name] = (w * g).pow(2).flatten(1).sum(1)
        out["weight-norm"][conv_name] = w.pow(2).flatten(1).sum(1)
        out["weight-l1"][conv_name] = w.abs().flatten(1).sum(1)
        out["bn-scale"][conv_name] = bn.weight.detach().abs().clone()
        gate = gates.gates[conv_name]
        out["gate-taylor"][conv_name] = (gate.grad.pow(2) if gate.grad is not None
                                         else torch.zeros_like(gate)).detach()
        out["fmap-taylor"][conv_name] = gates.fmap.get(conv_name, torch.zeros_like(gate)).detach()
    return out


def collect(model: nn.Module, data: DataBundle, settings: CollectSettings, *, seed: int,
            log: Callable[[str], None] = print) -> Scores:
    """Every criterion for every (conv, bn) point of ``model``, averaged over the collection
    iterations. ``model`` is not changed: a copy trains during collection (papers.md: the
    weights move slightly while criteria accumulate); pruning starts from the baseline."""
    work = copy.deepcopy(model).train()
    points = conv_bn_points(work)
    gates = _Gates(work, points)
    # Gates are plain tensors, not parameters of ``work``: the optimizer never moves them.
    opt = torch.optim.SGD(work.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay)
    loader = make_loader(data.train, batch_size=settings.batch_size, shuffle=True, seed=seed,
                         augment=data.augment)
    sums: dict[str, dict[str, torch.Tensor]] = {}
    n = 0
    loss_fn = nn.CrossEntropyLoss()
    try:
        for b, (x, y) in enumerate(loader):
            if settings.batches is not None and b >= settings.batches:
                break
            opt.zero_grad(set_to_none=True)
            for g in gates.gates.values():
                g.grad = None
            loss_fn(work(x), y).backward()
            for crit, per in _iteration_scores(work, points, gates).items():
                acc = sums.setdefault(crit, {})
                for k, v in per.items():
                    acc[k] = acc[k] + v if k in acc else v.clone()
            opt.step()
            n += 1
    finally:
        gates.remove()
    if n == 0:
        raise ValueError("criterion collection saw no training batch")
    scores: Scores = {c: {k: v / n for k, v in per.items()} for c, per in sums.items()}
    scores["fmap-taylor"] = {k: v / v.norm().clamp_min(1e-12) for k, v in scores["fmap-taylor"].items()}
    scores["random"] = random_scores(model, seed)
    log(f"    criteria collected over {n} batches ({len(points)} conv-BN points)")
    return scores


def random_scores(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The control criterion: uniform scores from a generator seeded by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return {conv: torch.rand(model.get_submodule(conv).out_channels, generator=gen)
            for conv, _ in conv_bn_points(model)}


def structural_scores(model: nn.Module, seed: int) -> Scores:
    """Scores needing no data (``structure_only``: weight norms, BN scale, random); the
    gradient-based criteria are replaced by the squared weight norm there, since the
    architecture, not the ranking, is what a structure-only run reports."""
    points = conv_bn_points(model)
    norm = {c: model.get_submodule(c).weight.detach().pow(2).flatten(1).sum(1) for c, _ in points}
    out: Scores = {k: norm for k in ("weight-taylor", "weight-norm", "fmap-taylor", "gate-taylor")}
    out["weight-l1"] = {c: model.get_submodule(c).weight.detach().abs().flatten(1).sum(1) for c, _ in points}
    out["bn-scale"] = {c: model.get_submodule(b).weight.detach().abs() for c, b in points}
    out["random"] = random_scores(model, seed)
    return out


def structural_imprint(model: nn.Module, units: list[Unit]) -> dict[str, torch.Tensor]:
    """The data-free stand-in for imprint (``structure_only``): each unit's mean squared filter
    weight norm."""
    return {u.name: torch.tensor([float(np.mean([model.get_submodule(c).weight.detach().pow(2).flatten(1)
                                                  .sum(1).mean() for c, _ in u.filters]))])
            for u in units}


# ----------------------------------------------------------------------------- imprint (ICIP'20)
IMPRINT_DIM = 512  # d is chosen so that d^2 * C is about this (papers.md 2.2 step 6)


def imprint_features(a: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, d*d*C): adaptive average pooling to d x d, d = round(sqrt(512 / C))
    (at least 1, at most the map's size), flattened; a (B, F) input is returned as it is."""
    if a.dim() == 2:
        return a
    c, h, w = a.shape[1:]
    d = max(1, min(round(math.sqrt(IMPRINT_DIM / c)), h, w))
    return nn.functional.adaptive_avg_pool2d(a, d).flatten(1)


def imprint_weights(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Imprinted classifier weights (K, F): per class, the mean feature (``sums`` (K, F) over
    ``counts`` (K,) samples), L2-normalised; a class without samples gets a zero row."""
    means = sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype)
    return means / means.norm(dim=1, keepdim=True).clamp_min(1e-12)


def imprint_correct(weights: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor) -> int:
    """How many of ``feats`` (B, F) the dot-product classifier ``weights`` (K, F) gets right."""
    return int(((feats @ weights.T).argmax(dim=1) == labels).sum())


class _UnitTaps:
    """Forward hooks keeping each unit's input (of its first module) and output (of its last
    module), pooled by ``imprint_features``."""

    def __init__(self, model: nn.Module, units: list[Unit]):
        self.inp: dict[str, torch.Tensor] = {}
        self.out: dict[str, torch.Tensor] = {}
        self.handles = []
        for u in units:
            first, last = model.get_submodule(u.modules[0]), model.get_submodule(u.modules[-1])
            self.handles.append(first.register_forward_hook(
                lambda m, i, o, n=u.name: self.inp.__setitem__(n, imprint_features(i[0]))))
            self.handles.append(last.register_forward_hook(
                lambda m, i, o, n=u.name: self.out.__setitem__(n, imprint_features(o))))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def imprint(model: nn.Module, data: DataBundle, units: list[Unit], *, batch_size: int = 256,
            holdout_every: int = 5, log: Callable[[str], None] = print) -> dict[str, torch.Tensor]:
    """The imprint criterion per unit (one-element tensor by unit name): accuracy (%) of an
    imprinted classifier on the unit's output minus that on its input (its gain over the
    preceding layer, papers.md 2.2 step 6; units with the least gain go first).

    Weights are imprinted from the training split (eval mode, no augmentation) except every
    ``holdout_every``-th image, which is the set the accuracies are scored on. The companion
    paper scores on the test set; here the test set is kept for the rows' accuracy, never for a
    choice the method makes."""
    loader = make_loader(data.train, batch_size=batch_size, shuffle=False, seed=0, augment=False)
    k = data.num_classes
    model.eval()
    taps = _UnitTaps(model, units)
    sides = (("in", taps.inp), ("out", taps.out))
    sums: dict[str, torch.Tensor] = {}
    counts = torch.zeros(k)
    correct: dict[str, int] = {}
    n_held = 0
    try:
        # two passes, so memory does not grow with the training set: imprint, then score
        for scoring in (False, True):
            weights = {key: imprint_weights(v, counts) for key, v in sums.items()} if scoring else {}
            start = 0
            for x, y in loader:
                hold = (torch.arange(start, start + len(y)) % holdout_every) == 0
                start += len(y)
                if not (hold if scoring else ~hold).any():
                    continue
                model(x)
                for side, feats in sides:
                    for name, f in feats.items():
                        key = f"{side}:{name}"
                        if scoring:
                            correct[key] = correct.get(key, 0) + imprint_correct(weights[key], f[hold].double(), y[hold])
                        else:
                            acc = sums.setdefault(key, torch.zeros(k, f.shape[1], dtype=torch.float64))
                            acc.index_add_(0, y[~hold], f[~hold].double())
                if scoring:
                    n_held += int(hold.sum())
                else:
                    counts += torch.bincount(y[~hold], minlength=k).float()
    finally:
        taps.remove()
    if n_held == 0:
        raise ValueError("imprint: no held-out training images to score on")
    out = {u.name: torch.tensor([100.0 * (correct[f"out:{u.name}"] - correct[f"in:{u.name}"]) / n_held],
                                dtype=torch.float64) for u in units}
    log(f"    imprint: {len(units)} units scored on {n_held} held-out training images")
    return out


# ----------------------------------------------------------------------------- layer importance

def ranks(values: np.ndarray) -> np.ndarray:
    """Rank of each value, 0 = smallest (argsort of argsort, stable: ties keep order)."""
    order = np.argsort(values, kind="stable")
    out = np.empty(len(values), dtype=np.int64)
    out[order] = np.arange(len(values))
    return out


def unit_importance(scores: Scores, units: list[Unit], criterion: str) -> np.ndarray:
    """Importance per unit: the mean over the unit's conv-BN points of the mean of their filter
    scores (one point: the mean of its filters). Raw, not normalised across layers (paper).
    ``ensemble``: for each of ENSEMBLE_OF, rank the units ascending; sum the ranks."""
    if criterion == "ensemble":
        return sum(ranks(unit_importance(scores, units, c)) for c in ENSEMBLE_OF).astype(np.float64)
    per = scores[criterion]
    if criterion == IMPRINT:  # a unit-level criterion: one value per unit, by unit name
        return np.array([float(per[u.name].mean()) for u in units])
    return np.array([np.mean([float(per[conv].mean()) for conv, _ in u.filters]) for u in units])


def filter_scores(scores: Scores, criterion: str) -> dict[str, torch.Tensor]:
    """Per-filter scores of one criterion; ``ensemble`` = summed within-layer ranks of
    ENSEMBLE_OF (filter pruning here removes the same fraction per layer, so only the order
    inside a layer matters). ``imprint`` scores units, not filters: ValueError."""
    if criterion == IMPRINT:
        raise ValueError("the imprint criterion scores units (layers), not filters")
    if criterion != "ensemble":
        return scores[criterion]
    convs = scores[ENSEMBLE_OF[0]].keys()
    return {k: torch.as_tensor(sum(ranks(scores[c][k].numpy()) for c in ENSEMBLE_OF), dtype=torch.float32)
            for k in convs}
