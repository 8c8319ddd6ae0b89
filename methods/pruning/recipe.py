"""The fine-tune recipe of both layer-prune and filter-prune, per preset: the ONE place to change it.

publication = the paper's ``one-shot-finetune.sh`` -> ``finetune.py``: SGD momentum 0.9, lr 1e-3,
x0.1 every 10 epochs, 30 epochs, batch 128, weight decay 5e-4 (the script's default; it passes no
--wd). quick and standard keep lr, momentum, wd and the two x0.1 steps, scaled down for the
1,797-image digits set (whose baseline itself trains 6 / 15 epochs): quick 6 epochs (step every
2), standard 15 epochs (step every 5).
"""
from __future__ import annotations

import time
from typing import Callable

from torch import nn

from harness.data import DataBundle
from harness.train import TrainRecipe, fit

FINETUNE_RECIPES: dict[str, TrainRecipe] = {
    "quick": TrainRecipe(epochs=6, lr=1e-3, momentum=0.9, weight_decay=5e-4, batch_size=128,
                         schedule="step", step_size=2, gamma=0.1),
    "standard": TrainRecipe(epochs=15, lr=1e-3, momentum=0.9, weight_decay=5e-4, batch_size=128,
                            schedule="step", step_size=5, gamma=0.1),
    "publication": TrainRecipe(epochs=30, lr=1e-3, momentum=0.9, weight_decay=5e-4, batch_size=128,
                               schedule="step", step_size=10, gamma=0.1),
}


def finetune_recipe(preset: str) -> TrainRecipe:
    """The fine-tune recipe for ``preset`` (unknown presets get the standard one)."""
    return FINETUNE_RECIPES.get(preset, FINETUNE_RECIPES["standard"])


def finetune(model: nn.Module, data: DataBundle, preset: str, *, seed: int, desc: str,
             log: Callable[[str], None]) -> float:
    """Fine-tune ``model`` in place with the preset's recipe; returns wall seconds."""
    recipe = finetune_recipe(preset)
    t0 = time.perf_counter()
    fit(model, data, recipe, seed=seed, desc=desc, progress=False)
    model.eval()
    log(f"    {desc}: fine-tuned {recipe.epochs} epochs in {time.perf_counter() - t0:.1f} s")
    return time.perf_counter() - t0
