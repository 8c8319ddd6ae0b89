"""Why EVBMF picks the ranks it picks: the spectrum of every conv's unfoldings at chosen steps of
the decomposition schedule's dense run, against the noise level of the weights' initialisation.

EVBMF (``ranks.evbmf``) models an unfolding as low rank + i.i.d. Gaussian noise, estimates the
noise variance sigma^2 from the spectrum and keeps only the components above the noise edge
sqrt(M sigma^2 x_bar). A conv freshly initialised N(0, 2 / (k^2 C_out)) (``harness.models.init``)
*is* such noise, so early in training the question EVBMF answers is "how much has this layer
learned beyond its random initialisation", not "how many components does it need". This module
prints, per layer and step: both unfoldings' EVBMF ranks, sigma^2 / init variance, the share of
sum(sigma_i^2) the EVBMF rank keeps, and the rank that would keep 90% (the energy rule).

    python -m methods.decompose.diagnose --model resnet20 --data digits --preset standard

trains the preset's decomposition schedule dense (the same recipe, seed and data order as
``decompose``'s dense-schedule run) and analyses it at step 0, at the decomposition step and at
the end. Costs one dense training run of the preset (standard resnet20: about 6 min here).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from harness.data import load_data
from harness.models import build_model
from harness.train import PAPER_CIFAR_STEPS, fit, make_sgd
from methods.decompose.ranks import TAU_BAR_COEF, energy_rank, evbmf
from methods.decompose.schedule import DECOMPOSE_AT, TRAIN_SHAPE
from methods.decompose.surgery import unfold
from methods.recipes import preset_recipe


@dataclass(frozen=True)
class Unfolding:
    """One mode unfolding (L x M after transposing to L <= M) seen by EVBMF."""

    rank: int
    rows: int  # size of the mode being reduced (the rank's upper bound)
    noise_ratio: float  # EVBMF's sigma^2 / the initialisation's per-entry variance
    energy_kept: float  # share of sum(sigma_i^2) in the EVBMF rank's components
    energy90_rank: int  # the energy rule's rank at 0.9
    top_over_edge: float  # largest singular value / EVBMF's noise edge


@dataclass(frozen=True)
class LayerDiagnosis:
    layer: str
    shape: tuple[int, ...]
    modes: tuple[Unfolding, Unfolding]  # mode 0 (C_out) and mode 1 (C_in)


def init_variance(weight: np.ndarray) -> float:
    """Per-entry variance of the CIFAR models' conv init: 2 / (k_h k_w C_out) (Kaiming fan-out)."""
    c_out, _, kh, kw = weight.shape
    return 2.0 / (kh * kw * c_out)


def diagnose_unfolding(matrix: np.ndarray, init_var: float) -> Unfolding:
    rank, _, sigma2 = evbmf(matrix)
    s = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
    L, M = sorted(matrix.shape)
    alpha = L / M
    tau_bar = TAU_BAR_COEF * math.sqrt(alpha)
    edge = math.sqrt(M * sigma2 * (1 + tau_bar) * (1 + alpha / tau_bar))
    energy = float((s[:rank] ** 2).sum() / (s ** 2).sum()) if s.any() else 0.0
    return Unfolding(rank=rank, rows=matrix.shape[0], noise_ratio=sigma2 / init_var, energy_kept=energy,
                     energy90_rank=energy_rank(matrix, 0.9), top_over_edge=float(s[0] / edge) if edge else math.inf)


def diagnose_model(model: nn.Module, skip_first: bool = True) -> list[LayerDiagnosis]:
    """Every dense kxk conv (not grouped) of ``model``; the first one left out like ``layers=all``."""
    out = []
    convs = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size != (1, 1)]
    for name, conv in convs[1:] if skip_first else convs:
        w = conv.weight.detach().cpu().numpy()
        var = init_variance(w)
        out.append(LayerDiagnosis(name, tuple(w.shape), (diagnose_unfolding(unfold(w, 0), var),
                                                         diagnose_unfolding(unfold(w, 1), var))))
    return out


def format_table(step: int, layers: list[LayerDiagnosis]) -> str:
    head = (f"step {step}\n{'layer':<22} {'shape':<16} {'rank0':>7} {'rank1':>7} {'s2/init0':>9} "
            f"{'kept0':>6} {'e90r0':>6} {'top/edge0':>9}")
    lines = [head]
    for d in layers:
        m0, m1 = d.modes
        lines.append(f"{d.layer:<22} {'x'.join(map(str, d.shape)):<16} {m0.rank:>3}/{m0.rows:<3} "
                     f"{m1.rank:>3}/{m1.rows:<3} {m0.noise_ratio:>9.3f} {m0.energy_kept:>6.1%} "
                     f"{m0.energy90_rank:>6} {m0.top_over_edge:>9.2f}")
    share = [d.modes[0].rank / d.modes[0].rows for d in layers]
    ratio = [d.modes[0].noise_ratio for d in layers]
    kept = [d.modes[0].energy_kept for d in layers]
    lines.append(f"median over {len(layers)} layers: mode-0 rank share {np.median(share):.1%}, "
                 f"sigma^2/init variance {np.median(ratio):.3f}, energy kept {np.median(kept):.1%}")
    return "\n".join(lines)


def run(model_name: str, data_spec: str, preset: str, seed: int, steps: Sequence[int] | None,
        train_limit: int | None = None) -> dict[int, list[LayerDiagnosis]]:
    """Train the preset's decomposition schedule dense and diagnose the convs at ``steps``
    (default: 0, the decomposition step, the end)."""
    data = load_data(data_spec, seed=seed, train_limit=train_limit)
    recipe = preset_recipe(TRAIN_SHAPE, preset, paper_steps=PAPER_CIFAR_STEPS, kind="train", small_data={"lr": 0.05})
    at = round(DECOMPOSE_AT.get(preset, DECOMPOSE_AT["standard"]) * recipe.steps)
    wanted = sorted(set(steps if steps is not None else (0, at, recipe.steps)))
    if wanted and (wanted[0] < 0 or wanted[-1] > recipe.steps):
        raise SystemExit(f"error: steps must lie in [0, {recipe.steps}] for preset {preset}")
    torch.manual_seed(seed)  # the init decompose's dense-schedule run starts from
    model = build_model(model_name, num_classes=data.num_classes)
    found: dict[int, list[LayerDiagnosis]] = {}
    if 0 in wanted:
        found[0] = diagnose_model(model)

    def snapshot(step: int, m: nn.Module) -> None:  # step = optimizer steps done so far
        if step in wanted:
            found[step] = diagnose_model(m)

    if wanted[-1] > 0:
        fit(model, data, recipe, seed=seed, optimizer=make_sgd(model, recipe), end_step=wanted[-1],
            on_step_end=snapshot, desc="dense schedule")
    print(f"{model_name} on {data_spec}, preset {preset}: {recipe.describe()}; decomposed at step {at}")
    for step in wanted:
        print(format_table(step, found[step]) + "\n")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m methods.decompose.diagnose", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", default="digits")
    p.add_argument("--preset", default="standard", choices=("quick", "standard"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int)
    p.add_argument("--steps", help="comma list of steps (default: 0, the decomposition step, the end)")
    a = p.parse_args(argv)
    steps = [int(s) for s in a.steps.split(",")] if a.steps else None
    run(a.model, a.data, a.preset, a.seed, steps, a.train_limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
