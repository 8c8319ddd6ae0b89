"""Every LayerPrune criterion on one trained baseline, one shot (no fine-tune): which units each
removes, and the top-1 of the layer-pruned network and of its filter-pruned twin at the same MACs
(same criterion) before any fine-tuning.

The paper's Table 2 compares the criteria *after* a 30-epoch fine-tune of each network; a
fine-tune per (criterion, depth, pruning kind) is 20+ fine-tunes of ResNet-56, which a sweep can
run (``--budgets layer-prune:criterion=...``) but these 2 cores cannot afford for every
criterion. The one-shot table is what the criteria decide before training repairs anything, and
costs one criterion collection (none with ``--workdir`` pointing at a sweep's method workdir that
already holds it) plus one test-set pass per network:

    python benchmarks/layer_prune_criteria.py --model resnet56 --data fashion-mnist \\
        --preset standard --layers 1,2,half --collect-batches 300

The baseline is the sweep's own (``harness.engine.baseline.get_baseline``: from the cache when
a sweep of the same model, data, preset and seed trained it, else trained now).
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from harness.data import load_data
from harness.data.loaders import eval_arrays
from harness.engine.baseline import get_baseline
from harness.macs import count_cost
from harness.models import removable_units
from harness.train import BASELINE_RECIPES, predict, top1
from methods.base import MethodContext
from methods.layer_prune import parse_layers
from methods.pruning import criteria as crit
from methods.pruning.channels import prune_to_macs
from methods.pruning.scores import collect_scores
from methods.pruning.units import removed_copy


def table(model_name: str, data_spec: str, preset: str, seed: int, layers: Sequence[str],
          collect_batches: int | None, criteria: Sequence[str], eval_limit: int | None = None,
          train_limit: int | None = None, workdir: Path | None = None) -> list[dict]:
    data = load_data(data_spec, seed=seed, train_limit=train_limit)
    base = get_baseline(model_name, data, BASELINE_RECIPES[preset], seed=seed).model.eval()
    shape = tuple(data.input_shape)
    x, y = eval_arrays(data, eval_limit)
    units = removable_units(base)
    dense_macs = count_cost(base, shape).macs
    rows = [{"criterion": "(dense)", "layers": 0, "removed": "", "macs_share": 1.0,
             "layer_top1": top1(predict(base, x), y), "filter_top1": None}]
    with tempfile.TemporaryDirectory() as tmp:
        ctx = MethodContext(model_name, base, data, BASELINE_RECIPES[preset], seed, Path(workdir or tmp),
                            preset=preset, log=lambda m: print(m, file=sys.stderr))
        for criterion in criteria:
            scores = collect_scores(ctx, base, collect_batches, criterion)
            order = np.argsort(crit.unit_importance(scores, units, criterion), kind="stable")
            for text in layers:
                chosen = [units[int(i)] for i in order[:parse_layers(text, len(units))]]
                pruned = removed_copy(base, chosen).eval()
                macs = count_cost(pruned, shape).macs
                row = {"criterion": criterion, "layers": len(chosen), "removed": " ".join(u.name for u in chosen),
                       "macs_share": macs / dense_macs, "layer_top1": top1(predict(pruned, x), y),
                       "filter_top1": None}
                if criterion in crit.FILTER_CHOICES:
                    twin, _ = prune_to_macs(copy.deepcopy(base), crit.filter_scores(scores, criterion), macs, shape)
                    row["filter_top1"] = top1(predict(twin.eval(), x), y)
                rows.append(row)
                print(f"  {criterion} {text}: layer {row['layer_top1']:.2f} filter "
                      f"{row['filter_top1'] if row['filter_top1'] is None else round(row['filter_top1'], 2)}",
                      file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| criterion | units removed | MACs share | top-1 layer-pruned | top-1 filter-pruned, same MACs | units |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        f = "" if r["filter_top1"] is None else f"{r['filter_top1']:.2f}"
        lines.append(f"| {r['criterion']} | {r['layers']} | {r['macs_share']:.3f} | {r['layer_top1']:.2f} | {f} | "
                     f"{r['removed']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/layer_prune_criteria.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--data", default="digits")
    p.add_argument("--preset", default="standard", choices=sorted(BASELINE_RECIPES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", default="1,2,half", help="comma list of unit counts or 'half'")
    p.add_argument("--criteria", default=",".join(crit.CHOICES))
    p.add_argument("--collect-batches", type=int, help="training batches for the collection (default one epoch)")
    p.add_argument("--eval-limit", type=int)
    p.add_argument("--train-limit", type=int)
    p.add_argument("--workdir", type=Path,
                   help="a sweep's OUT/artifacts/methods: reuse the criteria it collected on the same baseline")
    p.add_argument("--out", type=Path, help="also write the Markdown table here")
    a = p.parse_args(argv)
    criteria = a.criteria.split(",")
    bad = [c for c in criteria if c not in crit.CHOICES]
    if bad:
        p.error(f"unknown criteria {bad}; choose from {', '.join(crit.CHOICES)}")
    rows = table(a.model, a.data, a.preset, a.seed, a.layers.split(","), a.collect_batches, criteria,
                 a.eval_limit, a.train_limit, a.workdir)
    md = markdown(rows)
    print(md)
    if a.out:
        a.out.write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
