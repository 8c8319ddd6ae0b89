"""DeepShift training recipes: the paper's shapes, sized per preset by the kit
(``methods.recipes``, the one place the presets' step counts live).

Paper (mostafaelhoushi/DeepShift README, papers.md 4.2):
- from pretrained: lr 1e-3, x0.1 every 5 epochs, 15 epochs (CIFAR and ImageNet): milestones at
  1/3 and 2/3 of the run; 15 CIFAR-10 epochs at batch 128 = 5,865 steps (publication);
- from scratch (CIFAR): 200 epochs, lr 0.01 (README "Important notes"; its commands run at the
  script default 0.1), MultiStep x0.1 at 80/120/160/180 (fractions 0.4/0.6/0.8/0.9), batch 128,
  momentum 0.9, wd 1e-4: 78,200 steps (publication).
PS always with RAdam; Q with the scripts' default SGD.

quick / standard keep each shape and take the kit's lengths at batch 32: from pretrained the
fine-tune length (120 / 2,000 steps), from scratch the preset's baseline training length
(270 / 3,000 steps), so a from-scratch shift network trains as long as its dense baseline did.
"""
from __future__ import annotations

from harness.train import PAPER_CIFAR_STEPS, TrainRecipe

_PAPER_MILESTONES = (80 / 200, 120 / 200, 160 / 200, 180 / 200)
FINETUNE = TrainRecipe(lr=1e-3, schedule="multistep", milestones=(1 / 3, 2 / 3), gamma=0.1, weight_decay=1e-4,
                       batch_size=128)
FINETUNE_PAPER_STEPS = 15 * 391
SCRATCH = TrainRecipe(lr=0.01, schedule="multistep", milestones=_PAPER_MILESTONES, weight_decay=1e-4,
                      batch_size=128)


def recipe_for(ctx, init: str) -> TrainRecipe:
    """The fine-tune (init=pretrained) or from-scratch recipe of ``ctx``'s preset."""
    if init == "pretrained":
        return ctx.finetune_recipe(FINETUNE, paper_steps=FINETUNE_PAPER_STEPS)
    return ctx.finetune_recipe(SCRATCH, paper_steps=PAPER_CIFAR_STEPS, kind="train")
