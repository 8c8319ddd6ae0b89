"""The recipes and the training runs: decomposition-accelerated, dense on the same schedule
(cached), and post-training fine-tuning.

Recipes: the paper's shapes, sized per preset by the kit (``methods.recipes``, the one place the
presets' step counts live). The training schedule is the paper's CIFAR-10 one (papers.md 3.2:
SGD momentum 0.9, lr 0.1, weight decay 1e-4, batch 128, 200 epochs = 78,200 steps, x0.1 at 50%
and 75%; decomposition after epoch 10 of 200 as in the README example); post-training mode is
the paper's fine-tune (15 epochs at lr 1e-3, x0.1 every 5: milestones 1/3, 2/3; 5,865 steps).
``quick`` and ``standard`` keep those shapes and take the kit's lengths: the training schedule is
as long as the preset's baseline training (270 / 3,000 steps at batch 32; lr 0.05 instead of 0.1
for the smaller batch), decomposition after 1/3 (quick) or 4/15 (standard) of it, and the
post-training fine-tune is the kit's fine-tune length (120 / 2,000 steps). Measured on digits
(seed 0, 6 epochs = 270 steps): at batch 128 / lr 0.1 ResNet-56 did not train (18% top-1, dense)
and EVBMF found rank 0 in every ResNet-20 layer after 2 of 6 epochs (the weights are still noise
to it); at batch 32 / lr 0.05 ResNet-56 reached 57% by then and EVBMF found ranks in 51 of its
54 eligible layers.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from harness.data import DataBundle, make_loader
from harness.train import PAPER_CIFAR_STEPS, TrainRecipe, fit, make_sgd, recipe_dict


@dataclass(frozen=True)
class DecomposeRecipe:
    """The schedule both the dense and the decomposed run follow, where decomposition happens
    (a fraction of its steps), and the post-training fine-tune."""

    train: TrainRecipe
    decompose_at: float
    post: TrainRecipe


TRAIN_SHAPE = TrainRecipe(lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=128, schedule="multistep",
                          milestones=(0.5, 0.75))
POST_SHAPE = TrainRecipe(lr=1e-3, weight_decay=1e-4, schedule="multistep", milestones=(1 / 3, 2 / 3))
POST_PAPER_STEPS = 15 * 391
DECOMPOSE_AT = {"quick": 1 / 3, "standard": 4 / 15, "publication": 10 / 200}


def recipe_for(ctx: Any) -> DecomposeRecipe:
    """The recipes of ``ctx``'s preset (a ``MethodContext``)."""
    train = ctx.finetune_recipe(TRAIN_SHAPE, paper_steps=PAPER_CIFAR_STEPS, kind="train", small_data={"lr": 0.05})
    post = ctx.finetune_recipe(POST_SHAPE, paper_steps=POST_PAPER_STEPS)
    return DecomposeRecipe(train, DECOMPOSE_AT.get(ctx.preset, DECOMPOSE_AT["standard"]), post)


def with_batch(rec: DecomposeRecipe, batch: int | None, lr: float | None) -> DecomposeRecipe:
    """``rec`` with the ``batch``/``lr`` knobs applied to both recipes (same number of steps).

    A new batch without an lr scales the preset's lr by sqrt(batch / preset batch) (Krizhevsky
    2014; Hoffer et al. 2017): the quick/standard 0.05 at batch 32 becomes the paper's 0.1 at 128.
    Wide layers pay for decomposition only at larger batches (``README``: per-layer measurement),
    so this is how a sweep asks for batch 128.
    """
    if batch is None and lr is None:
        return rec

    def one(r: TrainRecipe) -> TrainRecipe:
        b = batch or r.batch_size
        return r.with_(batch_size=b, lr=lr if lr is not None else r.lr * math.sqrt(b / r.batch_size))

    return dataclasses.replace(rec, train=one(rec.train), post=one(rec.post))


@dataclass
class RunResult:
    """One training run: the final model, wall time (the one-off decomposition and fold included)
    and what happened per phase and per pass."""

    model: nn.Module
    train_s: float = 0.0
    decomp_s: float = 0.0
    fold_s: float = 0.0
    pass_s: list[float] = field(default_factory=list)  # per pass over the loader, per phase
    phase_s: dict[str, float] = field(default_factory=dict)  # dense | decomposed | reconstructed
    phase_steps: dict[str, int] = field(default_factory=dict)
    lrs: list[float] = field(default_factory=list)  # learning rate each step actually ran at
    step_clock: list[float] = field(default_factory=list)  # run's train_s at each step's end
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)  # one per phase
    snapshot: nn.Module | None = None  # the factorised network at the fold, when there is one
    snapshot_train_s: float = 0.0
    plans: list = field(default_factory=list)
    fold_errors: dict[str, float] = field(default_factory=dict)

    def step_s(self, phase: str) -> float | None:
        """Mean wall seconds per optimizer step in ``phase`` (None when it did not run)."""
        steps = self.phase_steps.get(phase, 0)
        return self.phase_s[phase] / steps if steps else None

    def span_s(self, start: int, end: int) -> float | None:
        """Training seconds of steps [start, end) of this run (None without a step clock, e.g. a
        dense run cached before the clock existed). For the dense run of the schedule this is
        what the decomposed run's phase over the same steps is compared with."""
        if not 0 <= start < end <= len(self.step_clock):
            return None
        return self.step_clock[end - 1] - (self.step_clock[start - 1] if start else 0.0)

    @property
    def phases(self) -> list[str]:
        return list(self.phase_s)


def _phase(run: RunResult, model: nn.Module, data: DataBundle, recipe: TrainRecipe, seed: int,
           start: int, end: int, name: str, progress: bool, channels_last: bool = False) -> None:
    """Steps [start, end) with a fresh optimizer; fit sets each step's lr from the schedule."""
    if end <= start:
        return
    opt = make_sgd(model, recipe)
    run.optimizers.append(opt)
    offset = run.train_s
    res = fit(model, data, recipe, seed=seed, optimizer=opt, start_step=start, end_step=end,
              progress=progress, desc=f"decompose {name}", channels_last=channels_last,
              on_step_end=lambda s, m: run.lrs.append(opt.param_groups[0]["lr"]))
    run.pass_s += res.pass_s
    run.step_clock += [offset + c for c in res.step_clock]
    run.phase_s[name] = run.phase_s.get(name, 0.0) + res.train_s
    run.phase_steps[name] = run.phase_steps.get(name, 0) + res.steps
    run.train_s += res.train_s


def at_step(recipe: TrainRecipe, fraction: float) -> int:
    """The step a fraction of ``recipe``'s run falls on (0 for 0: never)."""
    return round(fraction * recipe.steps) if fraction else 0


def train_decomposed(model: nn.Module, data: DataBundle, recipe: TrainRecipe, *, seed: int, decompose_at: int,
                     decompose: Callable[[nn.Module], list], reconstruct_at: int = 0,
                     reconstruct: Callable[[nn.Module], dict[str, float]] | None = None,
                     progress: bool = True, layouts: tuple[bool, bool] = (False, False)) -> RunResult:
    """Train ``model`` (freshly initialised) dense for ``decompose_at`` steps, decompose it, and
    continue to the end of the same schedule; with ``reconstruct_at`` (a step) fold it back there
    and finish in the original architecture. Every phase gets a new optimizer (momentum is lost,
    as in the paper's code) whose lr continues the schedule (``fit`` takes it from
    ``recipe.lr_at(step)``). ``layouts``: channels_last for the networks in the original
    architecture (dense, reconstructed phases) and for the decomposed one."""
    end = recipe.steps
    fold_at = reconstruct_at if reconstruct_at and reconstruct is not None else end
    if not 0 < decompose_at < fold_at <= end:
        raise ValueError(f"need 0 < decompose_at ({decompose_at}) < reconstruct_at/end ({fold_at}) <= {end}")
    run = RunResult(model)
    dense_cl, thin_cl = layouts
    _phase(run, model, data, recipe, seed, 0, decompose_at, "dense", progress, dense_cl)
    t0 = time.perf_counter()
    run.plans = decompose(model)
    run.decomp_s = time.perf_counter() - t0
    run.train_s += run.decomp_s
    _phase(run, model, data, recipe, seed, decompose_at, fold_at, "decomposed", progress, thin_cl)
    if fold_at < end:
        run.snapshot, run.snapshot_train_s = copy.deepcopy(model).eval(), run.train_s
        t0 = time.perf_counter()
        run.fold_errors = reconstruct(model)
        run.fold_s = time.perf_counter() - t0
        run.train_s += run.fold_s
        _phase(run, model, data, recipe, seed, fold_at, end, "reconstructed", progress, dense_cl)
    model.eval()
    return run


def train_dense(model: nn.Module, data: DataBundle, recipe: TrainRecipe, *, seed: int,
                progress: bool = True, channels_last: bool = False) -> RunResult:
    """The same schedule, dense from start to end (the comparison the paper's claim is about)."""
    run = RunResult(model)
    _phase(run, model, data, recipe, seed, 0, recipe.steps, "dense", progress, channels_last)
    model.eval()
    return run


# --------------------------------------------------------------------------------- dense cache
_DENSE: dict[str, tuple[dict, RunResult]] = {}  # in-process: several budgets of one sweep share it


def dense_key(model_name: str, data: DataBundle, recipe: TrainRecipe, seed: int,
              channels_last: bool = False) -> str:
    spec = {"model": model_name, "data": data.content_hash, "classes": data.num_classes,
            "recipe": recipe_dict(recipe), "seed": seed, "torch": torch.__version__}
    if channels_last:  # a key of its own (other float rounding); NCHW keys stay as they were
        spec["channels_last"] = True
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
        run = RunResult(None, train_s=blob["train_s"], pass_s=list(blob["pass_s"]), phase_s=dict(blob["phase_s"]),
                        phase_steps=dict(blob["phase_steps"]), lrs=list(blob["lrs"]),
                        step_clock=list(blob.get("step_clock", [])))
        source = "cache (earlier run of this sweep)"
    else:
        run = train(build())
        state = {k: v.clone() for k, v in run.model.state_dict().items()}
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"model": state, "train_s": run.train_s, "pass_s": run.pass_s, "phase_s": run.phase_s,
                    "phase_steps": run.phase_steps, "lrs": run.lrs, "step_clock": run.step_clock},
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
                    pairs: int = 4, seed: int = 0, layouts: tuple[bool, bool] = (False, False)) -> dict[str, Any]:
    """Median wall time of one training step (forward + backward on one real batch) of each
    network in each memory layout (NCHW, channels_last), measured interleaved in this process so
    machine load hits all alike. Returns the row's columns: the two networks at the run's
    ``layouts`` (dense, decomposed: channels_last or not) and their ratio, and the ratio of each
    network in its faster layout (``_best``: what a user who picks the layout per network gets).
    Works on copies (BN stats untouched)."""
    loader = make_loader(data.train, batch_size=batch_size, shuffle=True, seed=seed, augment=False)
    x, y = next(iter(loader))
    nets = {}
    for name, net in (("dense", dense), ("decomposed", decomposed)):
        for cl in (False, True):
            fmt = torch.channels_last if cl else torch.contiguous_format
            nets[name, cl] = (copy.deepcopy(net).train().to(memory_format=fmt), x.contiguous(memory_format=fmt))
    loss_fn = nn.CrossEntropyLoss()
    times: dict[tuple[str, bool], list[float]] = {k: [] for k in nets}
    for i in range(pairs + 1):  # the first round warms up allocators and kernels
        for k, (net, xb) in nets.items():
            t0 = time.perf_counter()
            loss_fn(net(xb), y).backward()
            dt = time.perf_counter() - t0
            net.zero_grad(set_to_none=True)
            if i:
                times[k].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    d, c = med["dense", layouts[0]], med["decomposed", layouts[1]]
    best_d, best_c = min(med["dense", False], med["dense", True]), min(med["decomposed", False], med["decomposed", True])

    def name(net: str) -> str:
        return "cl" if med[net, True] < med[net, False] else "nchw"

    return {"decompose_step_s_dense": d, "decompose_step_s_decomposed": c, "decompose_step_speedup": d / c,
            "decompose_step_speedup_best": best_d / best_c,
            "decompose_step_best_layouts": f"{name('dense')}/{name('decomposed')}",
            "decompose_step_s_dense_nchw": med["dense", False], "decompose_step_s_dense_cl": med["dense", True],
            "decompose_step_s_decomposed_nchw": med["decomposed", False],
            "decompose_step_s_decomposed_cl": med["decomposed", True]}
