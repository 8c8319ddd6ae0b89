"""The fine-tune of both layer-prune and filter-prune: one recipe, so a layer-pruned network and
its filter-pruned twin are fine-tuned with identical steps, schedule and data.

Shape: the paper's ``one-shot-finetune.sh`` -> ``finetune.py``: SGD momentum 0.9, lr 1e-3, x0.1
every 10 of 30 epochs (milestones at 1/3 and 2/3 of the run), weight decay 5e-4 (the script's
default; it passes no --wd), batch 128. Length: publication = the paper's 30 CIFAR-10 epochs at
batch 128 (11,730 steps); quick / standard = the kit's fine-tune length (``methods.recipes``:
120 / 2,000 steps at batch 32), the paper's lr and schedule shape kept.
"""
from __future__ import annotations

import time
from typing import Any

from torch import nn

from harness.train import TrainRecipe, fit
from methods.base import MethodContext
from methods.recipes import recipe_columns

SHAPE = TrainRecipe(lr=1e-3, momentum=0.9, weight_decay=5e-4, batch_size=128, schedule="multistep",
                    milestones=(1 / 3, 2 / 3), gamma=0.1)
PAPER_STEPS = 30 * 391  # 30 epochs of CIFAR's 50,000 training images at batch 128


def finetune_recipe(ctx: MethodContext) -> TrainRecipe:
    """The pruning fine-tune of ``ctx``'s preset."""
    return ctx.finetune_recipe(SHAPE, paper_steps=PAPER_STEPS)


def finetune(model: nn.Module, ctx: MethodContext, desc: str) -> dict[str, Any]:
    """Fine-tune ``model`` in place with the preset's pruning recipe; returns the row columns
    (``finetune_s`` and ``finetune_steps``/``_lr``/``_schedule``/``_batch``)."""
    recipe = finetune_recipe(ctx)
    t0 = time.perf_counter()
    fit(model, ctx.data, recipe, seed=ctx.seed, desc=desc, progress=False)
    model.eval()
    seconds = time.perf_counter() - t0
    ctx.log(f"    {desc}: fine-tuned {recipe.steps} steps in {seconds:.1f} s")
    return {"finetune_s": seconds, **recipe_columns(recipe)}
