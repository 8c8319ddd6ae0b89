"""DeepShift training recipes per preset: the ONE place they are defined.

Paper (mostafaelhoushi/DeepShift README, papers.md 4.2):
- from pretrained: lr 1e-3, step x0.1 every 5 epochs, 15 epochs (CIFAR and ImageNet);
- from scratch (CIFAR): 200 epochs, lr 0.01 (README "Important notes"; its commands run at the
  script default 0.1), MultiStep x0.1 at 80/120/160/180, batch 128, momentum 0.9, wd 1e-4.
PS always with RAdam; Q with the scripts' default SGD.

Scaling for the 1,797-image digits set: the 15-epoch fine-tune is cheap on digits (about 12
batches per epoch), so ``standard`` and ``publication`` use it unchanged; ``quick`` keeps lr 1e-3
and the x0.1 steps but over 6 epochs (step every 2 epochs). From scratch, ``quick`` and ``standard``
use the baseline's epoch counts (6 and 15, the digits baseline converges in about 8) with the
paper's milestones as fractions of the run.
"""
from __future__ import annotations

from harness.train import TrainRecipe

_PAPER_MILESTONES = (80 / 200, 120 / 200, 160 / 200, 180 / 200)

FINETUNE: dict[str, TrainRecipe] = {
    "quick": TrainRecipe(epochs=6, lr=1e-3, schedule="step", step_size=2, gamma=0.1, weight_decay=1e-4,
                         batch_size=128),
    "standard": TrainRecipe(epochs=15, lr=1e-3, schedule="step", step_size=5, gamma=0.1, weight_decay=1e-4,
                            batch_size=128),
    "publication": TrainRecipe(epochs=15, lr=1e-3, schedule="step", step_size=5, gamma=0.1,
                               weight_decay=1e-4, batch_size=128),
}

SCRATCH: dict[str, TrainRecipe] = {
    "quick": TrainRecipe(epochs=6, lr=0.01, schedule="multistep", milestones=_PAPER_MILESTONES,
                         weight_decay=1e-4, batch_size=128),
    "standard": TrainRecipe(epochs=15, lr=0.01, schedule="multistep", milestones=_PAPER_MILESTONES,
                            weight_decay=1e-4, batch_size=128),
    "publication": TrainRecipe(epochs=200, lr=0.01, schedule="multistep", milestones=_PAPER_MILESTONES,
                               weight_decay=1e-4, batch_size=128),
}


def recipe_for(init: str, preset: str) -> TrainRecipe:
    """The fine-tune (init=pretrained) or from-scratch recipe of ``preset``."""
    table = FINETUNE if init == "pretrained" else SCRATCH
    return table.get(preset, table["standard"])
