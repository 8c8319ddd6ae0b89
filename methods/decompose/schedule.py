"""The recipes (one place) and the training runs: decomposition-accelerated, dense on the same
schedule (cached), and post-training fine-tuning.

Recipes per preset. ``publication`` is the paper's CIFAR-10 schedule (papers.md 3.2: SGD momentum
0.9, lr 0.1, weight decay 1e-4, batch 128, 200 epochs, x0.1 at epochs 100 and 150; decomposition
after epoch 10 as in the README example; post-training mode: 15 epochs at lr 1e-3, x0.1 every 5).
``quick`` and ``standard`` keep that schedule's shape (SGD momentum 0.9, weight decay 1e-4,
milestones at 50% / 75%) scaled down for the 1,437 training images of digits: 6 and 15 epochs,
decomposition after epoch 2 and 4, and batch 32 at lr 0.05 instead of 128 at 0.1, so that an epoch
has 45 SGD steps instead of 12. Measured on this machine (seed 0, 6 epochs): at batch 128 / lr 0.1
ResNet-56 did not train (18% top-1, dense) and EVBMF found rank 0 in every ResNet-20 layer at
epoch 2 (the weights are still noise to it); at batch 32 / lr 0.05 ResNet-56 reached 57% by
epoch 2 and EVBMF found ranks in 51 of its 54 eligible layers.
"""
from __future__ import annotations

import copy
import hashlib
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from harness.data import DataBundle, make_loader
from harness.train import TrainRecipe, fit, make_sgd, recipe_dict


@dataclass(frozen=True)
class DecomposeRecipe:
    """The schedule both the dense and the decomposed run follow, where decomposition happens,
    and the post-training fine-tune."""

    train: TrainRecipe
    decompose_at: int
    post: TrainRecipe


_PAPER = TrainRecipe(epochs=200, lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=128,
                     schedule="multistep", milestones=(0.5, 0.75))
_DIGITS = _PAPER.with_(batch_size=32, lr=0.05)
RECIPES: dict[str, DecomposeRecipe] = {
    "quick": DecomposeRecipe(_DIGITS.with_(epochs=6), decompose_at=2,
                             post=TrainRecipe(epochs=2, lr=1e-3, weight_decay=1e-4, schedule="constant")),
    "standard": DecomposeRecipe(_DIGITS.with_(epochs=15), decompose_at=4,
                                post=TrainRecipe(epochs=5, lr=1e-3, weight_decay=1e-4, schedule="constant")),
    "publication": DecomposeRecipe(_PAPER, decompose_at=10,
                                   post=TrainRecipe(epochs=15, lr=1e-3, weight_decay=1e-4, schedule="step",
                                                    step_size=5, gamma=0.1)),
}


def recipe_for(preset: str) -> DecomposeRecipe:
    return RECIPES.get(preset, RECIPES["standard"])


@dataclass
class RunResult:
    """One training run: the final model, wall time (the one-off decomposition and fold included)
    and what happened per epoch."""

    model: nn.Module
    train_s: float = 0.0
    decomp_s: float = 0.0
    fold_s: float = 0.0
    epoch_s: list[float] = field(default_factory=list)
    phase: list[str] = field(default_factory=list)  # per epoch: dense | decomposed | reconstructed
    lrs: list[float] = field(default_factory=list)  # learning rate each epoch actually ran at
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)  # one per phase
    snapshot: nn.Module | None = None  # the factorised network at the fold, when there is one
    snapshot_train_s: float = 0.0
    plans: list = field(default_factory=list)
    fold_errors: dict[str, float] = field(default_factory=dict)

    def mean_epoch(self, phase: str) -> float | None:
        times = [t for t, p in zip(self.epoch_s, self.phase) if p == phase]
        return statistics.fmean(times) if times else None


def _phase(run: RunResult, model: nn.Module, data: DataBundle, recipe: TrainRecipe, seed: int,
           start: int, end: int, name: str, progress: bool, max_batches: int | None) -> None:
    """Epochs [start, end) with a fresh optimizer; fit sets each epoch's lr from the schedule."""
    if end <= start:
        return
    opt = make_sgd(model, recipe)
    run.optimizers.append(opt)
    res = fit(model, data, recipe, seed=seed, optimizer=opt, start_epoch=start, end_epoch=end,
              progress=progress, max_batches=max_batches, desc=f"decompose {name}",
              on_epoch_end=lambda e, m: run.lrs.append(opt.param_groups[0]["lr"]))
    run.epoch_s += res.epoch_s
    run.phase += [name] * len(res.epoch_s)
    run.train_s += res.train_s


def train_decomposed(model: nn.Module, data: DataBundle, recipe: TrainRecipe, *, seed: int, decompose_at: int,
                     decompose: Callable[[nn.Module], list], reconstruct_at: int = 0,
                     reconstruct: Callable[[nn.Module], dict[str, float]] | None = None,
                     progress: bool = True, max_batches: int | None = None) -> RunResult:
    """Train ``model`` (freshly initialised) dense for ``decompose_at`` epochs, decompose it, and
    continue to the end of the same schedule; with ``reconstruct_at`` fold it back at that epoch
    and finish in the original architecture. Every phase gets a new optimizer (momentum is lost,
    as in the paper's code) whose lr continues the schedule (``fit`` takes it from
    ``recipe.lr_at(epoch)``)."""
    end = recipe.epochs
    fold_at = reconstruct_at if reconstruct_at and reconstruct is not None else end
    if not 0 < decompose_at < fold_at <= end:
        raise ValueError(f"need 0 < decompose_at ({decompose_at}) < reconstruct_at/end ({fold_at}) <= {end}")
    run = RunResult(model)
    _phase(run, model, data, recipe, seed, 0, decompose_at, "dense", progress, max_batches)
    t0 = time.perf_counter()
    run.plans = decompose(model)
    run.decomp_s = time.perf_counter() - t0
    run.train_s += run.decomp_s
    _phase(run, model, data, recipe, seed, decompose_at, fold_at, "decomposed", progress, max_batches)
    if fold_at < end:
        run.snapshot, run.snapshot_train_s = copy.deepcopy(model).eval(), run.train_s
        t0 = time.perf_counter()
        run.fold_errors = reconstruct(model)
        run.fold_s = time.perf_counter() - t0
        run.train_s += run.fold_s
        _phase(run, model, data, recipe, seed, fold_at, end, "reconstructed", progress, max_batches)
    model.eval()
    return run


def train_dense(model: nn.Module, data: DataBundle, recipe: TrainRecipe, *, seed: int,
                progress: bool = True, max_batches: int | None = None) -> RunResult:
    """The same schedule, dense from start to end (the comparison the paper's claim is about)."""
    run = RunResult(model)
    _phase(run, model, data, recipe, seed, 0, recipe.epochs, "dense", progress, max_batches)
    model.eval()
    return run


# --------------------------------------------------------------------------------- dense cache
_DENSE: dict[str, tuple[dict, RunResult]] = {}  # in-process: several budgets of one sweep share it


def dense_key(model_name: str, data: DataBundle, recipe: TrainRecipe, seed: int) -> str:
    spec = {"model": model_name, "data": data.content_hash, "classes": data.num_classes,
            "recipe": recipe_dict(recipe), "seed": seed, "torch": torch.__version__}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cached_dense(key: str, build: Callable[[], nn.Module], train: Callable[[nn.Module], RunResult],
                 folder: Path) -> tuple[RunResult, str]:
    """The dense same-schedule run for ``key``: from this process, from ``folder`` (an earlier,
    resumed sweep) or trained now; returns it and where it came from."""
    path = folder / f"dense-{key}.pt"
    if key in _DENSE:
        state, run = _DENSE[key]
        source = "this sweep"
    elif path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state = blob["model"]
        run = RunResult(None, train_s=blob["train_s"], epoch_s=list(blob["epoch_s"]),
                        phase=["dense"] * len(blob["epoch_s"]), lrs=list(blob["lrs"]))
        source = "cache (earlier run of this sweep)"
    else:
        run = train(build())
        state = {k: v.clone() for k, v in run.model.state_dict().items()}
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"model": state, "train_s": run.train_s, "epoch_s": run.epoch_s, "lrs": run.lrs},
                   path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        source = "trained"
    _DENSE[key] = (state, run)
    model = build()
    model.load_state_dict(state)
    out = copy.copy(run)
    out.model = model.eval()
    return out, source


# --------------------------------------------------------------------------------- interleaved step timing
def step_time_ratio(dense: nn.Module, decomposed: nn.Module, data: DataBundle, batch_size: int,
                    pairs: int = 4, seed: int = 0) -> tuple[float, float, float]:
    """Median wall time of one training step (forward + backward on one real batch) of each
    network, measured interleaved A B A B in this process so machine load hits both alike;
    returns (dense_s, decomposed_s, dense / decomposed). Works on copies (BN stats untouched)."""
    loader = make_loader(data.train, batch_size=batch_size, shuffle=True, seed=seed, augment=False)
    x, y = next(iter(loader))
    nets = [copy.deepcopy(dense).train(), copy.deepcopy(decomposed).train()]
    loss_fn = nn.CrossEntropyLoss()
    times: list[list[float]] = [[], []]
    for i in range(pairs + 1):  # the first pair warms up allocators and kernels
        for j, net in enumerate(nets):
            t0 = time.perf_counter()
            loss_fn(net(x), y).backward()
            dt = time.perf_counter() - t0
            net.zero_grad(set_to_none=True)
            if i:
                times[j].append(dt)
    d, c = statistics.median(times[0]), statistics.median(times[1])
    return d, c, d / c
