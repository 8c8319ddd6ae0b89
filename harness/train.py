"""Training and evaluation loops shared by the baseline and every method.

A run is sized in optimizer steps (``TrainRecipe.steps``), not epochs: it takes as many passes
over the seeded training loader as it needs, sets the learning rate every step from the schedule
(``TrainRecipe.lr_at(step)``), and is resumable: a checkpoint is written at the end of every pass
(and every ``checkpoint_every`` steps when given), and a run started again with the same
checkpoint path continues from it with the same batches, so it ends with the same weights as an
uninterrupted run. A method that changes the network mid-schedule runs ``fit`` once per phase
(``start_step``/``end_step``) with the same recipe.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from harness.data import DataBundle, make_loader
from harness.errors import UserError, first_line

SCHEDULES = ("cosine", "multistep", "constant")


@dataclass(frozen=True)
class TrainRecipe:
    """A training schedule of ``steps`` optimizer steps. ``milestones`` are fractions of
    ``steps`` (multistep: the lr is multiplied by ``gamma`` at each)."""

    steps: int = 1000
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    nesterov: bool = False

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {self.schedule!r}; one of {', '.join(SCHEDULES)}")
        if self.steps < 0 or self.batch_size < 1 or self.lr < 0:
            raise UserError("recipe needs steps >= 0, batch_size >= 1 and lr >= 0")
        if any(not 0 <= m <= 1 for m in self.milestones):
            raise UserError(f"milestones are fractions of the steps, in [0, 1]: {self.milestones}")
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))

    def with_(self, **changes: Any) -> "TrainRecipe":
        return replace(self, **changes)

    def milestone_steps(self) -> tuple[int, ...]:
        """The steps at which a multistep schedule decays (``round(m * steps)``)."""
        return tuple(round(m * self.steps) for m in self.milestones)

    def lr_at(self, step: float) -> float:
        """Learning rate of optimizer step ``step`` (0-based): one formula, so a phase that
        starts with a fresh optimizer mid-run (decomposition) continues exactly where the
        schedule was."""
        if self.schedule == "cosine":
            return 0.5 * self.lr * (1 + math.cos(math.pi * min(step, self.steps) / max(self.steps, 1)))
        if self.schedule == "multistep":
            return self.lr * self.gamma ** sum(step >= s for s in self.milestone_steps())
        return self.lr

    def describe(self) -> str:
        """The schedule in words, e.g. ``multistep x0.1 at 0.333,0.667`` (the row's
        ``finetune_schedule``)."""
        if self.schedule == "multistep":
            return f"multistep x{self.gamma:g} at {','.join(f'{m:.3g}' for m in self.milestones)}"
        return self.schedule

    def passes(self, train_n: int) -> float:
        """How many passes over ``train_n`` training images the run takes."""
        return self.steps / max(1, math.ceil(train_n / self.batch_size))


# Baseline recipes per timing preset (the row records which). quick/standard are for small
# training sets (the 1,437 training digits, Fashion-MNIST subsets): at the papers' batch 128 and
# lr 0.1, ResNet-56 and VGG16-bn stay at 20-30% top-1 on digits after 15 epochs (too few steps,
# too hot); batch 32 at lr 0.02 gives 99.7% (ResNet-56) and 98.9% (VGG16-bn) in 6 epochs
# (270 steps; measured). standard trains 3,000 steps: 67 passes over digits, 1.6 over the
# 60,000 Fashion-MNIST images. publication: FTWT's CIFAR-10 schedule, 200 epochs of 391 steps at
# batch 128, x0.1 at epochs 81/122/151.
PAPER_CIFAR_STEPS = 200 * 391  # 200 epochs of CIFAR-10's 50,000 images at batch 128
BASELINE_RECIPES: dict[str, TrainRecipe] = {
    "quick": TrainRecipe(steps=270, batch_size=32, lr=0.02),
    "standard": TrainRecipe(steps=3000, batch_size=32, lr=0.02),
    "publication": TrainRecipe(steps=PAPER_CIFAR_STEPS, schedule="multistep", milestones=(0.405, 0.61, 0.755)),
}


@dataclass
class FitResult:
    """What one ``fit`` call (one phase) cost: wall seconds, per pass over the loader (a pass
    the phase starts or ends inside counts its part), the steps it ran and the lr it ended at.
    Resumed runs include the seconds and passes of the run they continue."""

    train_s: float
    pass_s: list[float] = field(default_factory=list)
    start_step: int = 0
    end_step: int = 0
    final_lr: float = 0.0
    # the run's training clock (``train_s`` so far) at the end of each step this call ran, the
    # last entry at ``end_step``: the time of any span of steps, e.g. a phase of another run
    step_clock: list[float] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return self.end_step - self.start_step

    @property
    def step_s(self) -> float | None:
        """Mean wall seconds per optimizer step of this phase."""
        return self.train_s / self.steps if self.steps else None

    @property
    def epoch_s(self) -> list[float]:  # the name before runs were sized in steps
        return self.pass_s


def make_sgd(model: nn.Module, recipe: TrainRecipe, lr: float | None = None) -> torch.optim.Optimizer:
    """Plain SGD with momentum and weight decay over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=recipe.lr if lr is None else lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def batches_per_pass(data: DataBundle, recipe: TrainRecipe) -> int:
    """Optimizer steps in one pass over the training split (the last batch may be short)."""
    return max(1, math.ceil(len(data.train) / recipe.batch_size))


@dataclass
class _State:
    step: int
    train_s: float = 0.0
    pass_s: dict[int, float] = field(default_factory=dict)


def _save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, state: _State) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": state.step,
                "train_s": state.train_s, "pass_s": {str(k): v for k, v in state.pass_s.items()}}, tmp)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written checkpoint


def _resume(path: Path | None, model: nn.Module, opt: torch.optim.Optimizer, start: int, end: int) -> _State:
    if path is None or not path.exists():
        return _State(start)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        step = int(saved["step"])
        if not start <= step <= end:
            raise ValueError(f"it stopped at step {step}, outside this phase's [{start}, {end}]")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
    except Exception as exc:  # a stale or corrupt checkpoint of ours: start over, say why
        tqdm.write(f"ignoring unusable training checkpoint {path}: {first_line(exc)}")
        return _State(start)
    return _State(step, float(saved["train_s"]), {int(k): float(v) for k, v in saved["pass_s"].items()})


def _batches(data: DataBundle, recipe: TrainRecipe, seed: int, step: int):
    """The loader's batches from ``step`` to the end of its pass, with that pass's order and
    augmentation: pass p is seeded by ``seed * 1000 + p``, and the batches of the pass before
    ``step`` are drawn and dropped (data only, no training), so a resumed run or a later phase
    sees exactly the batches an uninterrupted run would."""
    p, b = divmod(step, batches_per_pass(data, recipe))
    loader = make_loader(data.train, batch_size=recipe.batch_size, shuffle=True, seed=seed * 1000 + p,
                         augment=data.augment)
    it = iter(loader)
    for _ in range(b):
        next(it)
    return p, it


StepHook = Callable[[int, nn.Module], None]


def fit(model: nn.Module, data: DataBundle, recipe: TrainRecipe, *, seed: int,
        checkpoint: Path | None = None, checkpoint_every: int | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        extra_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        on_step_end: StepHook | None = None, on_pass_end: StepHook | None = None,
        desc: str = "train", progress: bool = True, start_step: int = 0,
        end_step: int | None = None, channels_last: bool = False) -> FitResult:
    """Train ``model`` in place on ``data.train`` for steps [start_step, end_step) of ``recipe``
    (default: all of it); return what it cost.

    Every step's lr is ``recipe.lr_at(step)`` (a param group may carry an ``lr_scale`` to follow
    the schedule at another scale), so a phase with a fresh optimizer continues the schedule.
    ``extra_loss(model, x, y, logits)`` adds a method's loss term; ``on_step_end(step, model)``
    runs after every optimizer step and ``on_pass_end(step, model)`` at the end of every pass
    over the loader (``step`` = steps done so far). A checkpoint is written at every pass end,
    every ``checkpoint_every`` steps and at the end; a call with the same ``checkpoint`` resumes.

    ``channels_last`` trains in NHWC (weights and batches; the model is back in the usual layout
    when ``fit`` returns): oneDNN's native CPU layout, which skips the reorders around every conv.
    Measured on 2 cores (``benchmarks/decompose_step_profile.py``): a ResNet-56 step at batch 32
    1.2x faster, Tucker-2-decomposed networks 1.4-1.5x, but VGG16-bn's wide dense convs at batch
    128 0.92x; the same math, different float rounding, so it stays opt-in (default runs keep
    their results).
    """
    if data.train is None or len(data.train) == 0:
        raise UserError(f"data set {data.spec!r} has no training images")
    end = recipe.steps if end_step is None else end_step
    if not 0 <= start_step <= end <= recipe.steps:
        raise ValueError(f"steps [{start_step}, {end}) not inside the recipe's {recipe.steps}")
    opt = optimizer or make_sgd(model, recipe)
    state = _resume(checkpoint, model, opt, start_step, end)
    per_pass = batches_per_pass(data, recipe)
    loss_fn = nn.CrossEntropyLoss()
    # disable=None: tqdm draws only on a terminal, so logs and CI output stay readable
    bar = tqdm(total=end - state.step, desc=desc, leave=False, disable=None if progress else True)
    lines = _LogProgress(desc, state.step, end)
    step_clock: list[float] = []
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    while state.step < end:
        p, batches = _batches(data, recipe, seed, state.step)
        clock = _PassClock(state, p)
        for x, y in batches:
            # in-model randomness (none in the registry's models today) is per step: resumable
            torch.manual_seed(seed * 1_000_003 + state.step)
            _set_lr(opt, recipe.lr_at(state.step))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = model(x)
            loss = loss_fn(out, y)
            if extra_loss is not None:
                loss = loss + extra_loss(model, x, y, out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state.step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            lines.update(state.step)
            if on_step_end is not None:
                on_step_end(state.step, model)
            step_clock.append(clock.elapsed())
            if state.step >= end:
                break
            if checkpoint is not None and checkpoint_every and state.step % checkpoint_every == 0:
                clock.lap()
                _save_checkpoint(checkpoint, model, opt, state)
                clock.restart()
        clock.lap()
        if state.step % per_pass == 0 and on_pass_end is not None:
            on_pass_end(state.step, model)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, opt, state)
    bar.close()
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return FitResult(state.train_s, [state.pass_s[k] for k in sorted(state.pass_s)], start_step, end,
                     recipe.lr_at(end), step_clock)


class _LogProgress:
    """Progress lines for logs. tqdm draws only on a terminal; without one, a long run would say
    nothing for minutes (a method's 2,000-step fine-tune of ResNet-56 is 10 min here), so every
    ``every_s`` seconds it prints how far it is and about how long is left (from its own pace so
    far). Always on when stderr is not a terminal, whatever ``progress`` says (that switches the
    bars); a line a minute is not clutter in a log."""

    every_s = 60.0

    def __init__(self, desc: str, start: int, end: int):
        self.enabled = not sys.stderr.isatty()
        self.desc, self.start, self.end = desc, start, end
        self.t0 = self.last = time.perf_counter()

    def update(self, step: int) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.every_s or step <= self.start:
            return
        self.last = now
        done, total = step - self.start, max(1, self.end - self.start)
        left = (now - self.t0) / done * (self.end - step)
        print(f"    {self.desc}: step {step}/{self.end} ({100 * done / total:.0f}%), {clock(now - self.t0)} "
              f"elapsed, about {clock(left)} left", file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
    """Seconds as m:ss (progress lines here and in the sweep's log)."""
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


class _PassClock:
    """Adds the wall time since the last lap to the run's and to pass ``p``'s total; the time a
    checkpoint or ``on_pass_end`` takes is not training time (``on_step_end``'s is)."""

    def __init__(self, state: _State, p: int):
        self.state, self.p, self.t0 = state, p, time.perf_counter()

    def lap(self) -> None:
        now = time.perf_counter()
        self.state.pass_s[self.p] = self.state.pass_s.get(self.p, 0.0) + now - self.t0
        self.state.train_s += now - self.t0
        self.t0 = now

    def restart(self) -> None:
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        """The run's training seconds up to now (what ``lap`` would add, not yet added)."""
        return self.state.train_s + time.perf_counter() - self.t0

@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of ``model`` (eval mode) on the float32 NCHW array ``x``."""
    model.eval()
    outs = [model(torch.from_numpy(x[i:i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def top1(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """Top-1 accuracy in percent; None when there are no real labels (synthetic data)."""
    if len(labels) == 0 or (labels < 0).any():
        return None
    return float((logits.argmax(1) == labels).mean() * 100.0)


def recipe_dict(recipe: TrainRecipe) -> dict[str, Any]:
    return asdict(recipe)
