"""Decomposition-accelerated training against the dense run of the same schedule, side by side.

    python benchmarks/decompose_train_speed.py [--model vgg16_bn] [--data fashion-mnist]
        [--train-limit 10000] [--preset quick] [--batch 128] [--lr 0.02] [--decompose-at 0.1] [--ratios 0.25,0.5]
        [--layers all] [--channels-last decomposed] [--threads 2]

One process trains the dense network and one decomposed-schedule network per ``--ratios`` entry
(the method's ``train_decomposed`` schedule: dense to ``decompose_at``, Tucker-2 at ``ratio=``,
a fresh optimizer, the same lr curve to the end), all from the same init, on the same batches,
with the recipe a sweep's ``decompose:ratio=R,batch=B`` budget gets (``schedule.recipe_for``'s
preset length, ``with_batch``'s lr). The runs advance **alternately, one chunk at a time**
(a chunk = one pass over the training set, also cut at the decomposition step; the arm that
goes first rotates), so a load change on the shared machine hits every run alike. Each run keeps
its optimizer across chunks: the result is that of one uninterrupted ``fit``.

It prints, per run: seconds of the dense phase (steps before ``decompose_at``), of the
decomposed phase (after; the dense run over the same steps), the one-off decomposition, the
whole run, per-epoch times, the phase and whole-run speed-ups (sums, and the median of the
per-chunk paired ratios) and top-1 on the test set, next to issue 14's goals: decomposed phase
>= 1.5x per epoch, whole run >= 1.3x, <= 1.5 points below the dense run. Run it alone (under
the lock): it times.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from functools import partial
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from torch import nn

from harness.data import eval_arrays, load_data
from harness.models import build_model
from harness.train import batches_per_pass, fit, make_sgd, predict, top1
from methods.recipes import preset_recipe
from methods.decompose import schedule
from methods.decompose.method import LAYOUTS
from methods.decompose.ranks import RankPolicy
from methods.decompose.surgery import decompose_model, summary

GOALS = {"phase": 1.5, "whole": 1.3, "drop": 1.5}


@dataclass
class Arm:
    name: str
    model: nn.Module
    ratio: float | None  # None: the dense run
    channels_last: bool
    opt: torch.optim.Optimizer | None = None
    chunk_s: dict[tuple[int, int], float] = field(default_factory=dict)
    decomp_s: float = 0.0
    layers: int = 0

    def span(self, start: int, end: int) -> float:
        return sum(t for (a, b), t in self.chunk_s.items() if start <= a and b <= end)


def _chunks(steps: int, per_pass: int, at: int) -> list[tuple[int, int]]:
    cuts = sorted({*range(0, steps, per_pass), at, steps})
    return list(zip(cuts[:-1], cuts[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vgg16_bn")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--train-limit", type=int, default=10000)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=None, help="the budget's lr= (default: with_batch's sqrt scaling)")
    ap.add_argument("--decompose-at", type=float, default=None, help="the budget's decompose_at= (default: preset's)")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's length (timing only)")
    ap.add_argument("--ratios", default="0.25,0.5")
    ap.add_argument("--layers", default="all")
    ap.add_argument("--channels-last", default="decomposed", choices=tuple(LAYOUTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(args.data, input_size=32, train_limit=args.train_limit)
    # what a sweep's MethodContext gives schedule.recipe_for: the preset's lengths from the kit
    ctx = SimpleNamespace(preset=args.preset, finetune_recipe=partial(preset_recipe, preset=args.preset))
    rec = schedule.with_batch(schedule.recipe_for(ctx), args.batch, args.lr)
    recipe = rec.train if args.steps is None else rec.train.with_(steps=args.steps)
    at = schedule.at_step(recipe, args.decompose_at or rec.decompose_at)
    per_pass = batches_per_pass(data, recipe)
    dense_cl, thin_cl = LAYOUTS[args.channels_last]
    torch.manual_seed(args.seed)
    init = build_model(args.model, num_classes=data.num_classes)
    arms = [Arm("dense", copy.deepcopy(init), None, dense_cl)]
    arms += [Arm(f"ratio={r}", copy.deepcopy(init), float(r), dense_cl) for r in args.ratios.split(",") if r]
    for arm in arms:
        arm.opt = make_sgd(arm.model, recipe)
    print(f"{args.model} on {data.spec} ({len(data.train)} training images, {per_pass} steps an epoch), "
          f"{recipe.steps} steps at batch {recipe.batch_size}, lr {recipe.lr:g} {recipe.describe()}, "
          f"decomposed at step {at}; channels_last={args.channels_last}; {torch.get_num_threads()} threads", flush=True)
    chunks = _chunks(recipe.steps, per_pass, at)
    t_start = time.perf_counter()
    for i, (a, b) in enumerate(chunks):
        for arm in arms[i % len(arms):] + arms[:i % len(arms)]:
            if a == at and arm.ratio is not None:  # the hand-over: decompose, a fresh optimizer
                t0 = time.perf_counter()
                plans = decompose_model(arm.model, tuple(data.input_shape), RankPolicy("ratio", arm.ratio),
                                        layers=args.layers, seed=args.seed)
                arm.decomp_s = time.perf_counter() - t0
                arm.layers = summary(plans)["decompose_layers"]
                arm.opt, arm.channels_last = make_sgd(arm.model, recipe), thin_cl
            res = fit(arm.model, data, recipe, seed=args.seed, optimizer=arm.opt, start_step=a, end_step=b,
                      progress=False, channels_last=arm.channels_last, desc=arm.name)
            arm.chunk_s[a, b] = res.train_s
        print(f"  chunk {i + 1}/{len(chunks)} steps [{a}, {b}): " + ", ".join(
            f"{arm.name} {arm.chunk_s[a, b]:.1f} s" for arm in arms) + f" ({time.perf_counter() - t_start:.0f} s)",
            flush=True)
    x, y = eval_arrays(data)
    report(arms, chunks, recipe.steps, at, per_pass, x, y)


def report(arms: list[Arm], chunks: list[tuple[int, int]], steps: int, at: int, per_pass: int, x, y) -> None:
    dense = arms[0]
    acc = {arm.name: top1(predict(arm.model, x), y) for arm in arms}
    d_before, d_after = dense.span(0, at), dense.span(at, steps)
    print(f"\n| run | layers decomposed | dense phase s (steps 0-{at}) | decomposed phase s (steps {at}-{steps}) | "
          "epoch s before / after | decomposition s | whole run s | phase speed-up (sum / median chunk) | "
          "whole-run speed-up | top-1 | vs dense |")
    print("|---" * 11 + "|")
    for arm in arms:
        before, after = arm.span(0, at), arm.span(at, steps)
        whole = before + after + arm.decomp_s
        paired = [dense.chunk_s[c] / arm.chunk_s[c] for c in chunks if c[0] >= at]
        drop = acc[arm.name] - acc["dense"] if acc["dense"] is not None else None
        epoch = f"{before / at * per_pass:.1f} / {after / (steps - at) * per_pass:.1f}"
        print(f"| {arm.name} | {arm.layers} | {before:.1f} | {after:.1f} | {epoch} | {arm.decomp_s:.2f} | {whole:.1f} | "
              f"{d_after / after:.2f} / {statistics.median(paired):.2f} | {(d_before + d_after) / whole:.2f} | "
              f"{acc[arm.name]:.2f} | {drop:+.2f} |")
    print(f"\ngoals (issue 14): decomposed phase >= {GOALS['phase']}x per epoch, whole run >= {GOALS['whole']}x, "
          f"top-1 drop <= {GOALS['drop']} points")
    for arm in arms[1:]:
        after = arm.span(at, steps)
        whole = arm.span(0, steps) + arm.decomp_s
        phase, run = d_after / after, (d_before + d_after) / whole
        drop = acc["dense"] - acc[arm.name]
        ok = phase >= GOALS["phase"] and run >= GOALS["whole"] and drop <= GOALS["drop"]
        print(f"  {arm.name}: phase {phase:.2f}x, whole run {run:.2f}x, top-1 drop {drop:.2f} -> "
              f"{'goal met' if ok else 'goal missed'}")


if __name__ == "__main__":
    main()
