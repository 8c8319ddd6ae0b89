"""The fine-tune and training lengths of every method, per preset: the ONE place they live.

A method declares its recipe's *shape* (optimizer settings, schedule, milestones as fractions)
from its paper and asks ``preset_recipe`` (or ``MethodContext.finetune_recipe``) for the length:

- ``publication``: the paper's own number of steps (given by the method, e.g. LayerPrune's 30
  CIFAR-10 epochs at batch 128 = 11,730 steps) at the paper's batch size.
- ``quick`` / ``standard``: the sizes below, at batch 32: the presets run on small training sets
  (the 1,437 training digits, Fashion-MNIST subsets), where batch 32 gives four times the steps
  of batch 128 per pass (see ``harness.train.BASELINE_RECIPES``). Every method gets the same
  length for the same kind of run, so methods compared with each other (a layer-pruned network
  and its filter-pruned twin) are fine-tuned with identical steps, schedule and data.

Kinds: ``finetune`` (from the trained baseline) and ``train`` (from scratch, as long as the
preset's baseline training: decomposition's dense-then-decomposed schedule, DeepShift from
scratch).

Measured step cost on the project's 2 cores (digits 3x32x32, batch 32, forward + backward +
SGD step): resnet20 0.125 s, resnet56 0.35 s, vgg16_bn 0.56 s (about 4 / 11 / 18 ms an image,
nearly linear in the batch). quick: 120 steps, ~15 s for a dense resnet20 (a pruned one less),
so the quick default sweep's ~17 fine-tunes stay within a few minutes. standard: 2,000 steps
(~4 min resnet20, ~12 min resnet56 dense), against the paper's 11,730 for LayerPrune.
"""
from __future__ import annotations

from typing import Any, Mapping

from harness.errors import UserError

FINETUNE_STEPS: dict[str, int] = {"quick": 120, "standard": 2000}
SMALL_DATA_BATCH = 32
KINDS = ("finetune", "train")


def preset_recipe(shape: Any, preset: str, *, paper_steps: int, kind: str = "finetune",
                  small_data: Mapping[str, Any] | None = None) -> Any:
    """``shape`` (a ``harness.train.TrainRecipe``) with the length and batch of ``preset``:
    publication -> ``paper_steps`` at the shape's batch; quick/standard -> FINETUNE_STEPS (kind
    finetune) or the preset's baseline steps (kind train) at batch 32, with ``small_data``
    overrides (e.g. a learning rate re-tuned for batch 32)."""
    from harness.train import BASELINE_RECIPES

    if kind not in KINDS:
        raise ValueError(f"recipe kind {kind!r} not one of {KINDS}")
    if preset == "publication":
        return shape.with_(steps=int(paper_steps))
    if preset not in FINETUNE_STEPS:
        raise UserError(f"unknown preset {preset!r}; one of {', '.join([*FINETUNE_STEPS, 'publication'])}")
    steps = FINETUNE_STEPS[preset] if kind == "finetune" else BASELINE_RECIPES[preset].steps
    return shape.with_(steps=steps, batch_size=SMALL_DATA_BATCH, **dict(small_data or {}))


def recipe_columns(recipe: Any, prefix: str = "finetune") -> dict[str, Any]:
    """The row columns of a method's fine-tune: ``finetune_steps``, ``finetune_lr``,
    ``finetune_schedule`` (and its batch size)."""
    return {f"{prefix}_steps": recipe.steps, f"{prefix}_lr": recipe.lr,
            f"{prefix}_schedule": recipe.describe(), f"{prefix}_batch": recipe.batch_size}
