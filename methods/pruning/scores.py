"""The criteria for a method context: collected once per (weights, data, settings, seed) and
cached in the sweep's workdir (``MethodContext.cached``), so every budget of a sweep, the paired
filter-pruned twin and filter-prune itself share one collection. Also the criterion knobs."""
from __future__ import annotations

from torch import nn

from harness.knobs import Knob
from harness.models import removable_units
from methods.base import MethodContext
from methods.pruning import criteria as crit

# Default criterion. The ACCV table (per-criterion accuracies) is not retrievable (papers.md
# 2.3), so the table cannot pick it; gate Taylor is the default of the Taylor-pruning engine
# the paper builds on (method 22) and the criterion the paper inserts gates for.
DEFAULT_CRITERION = "gate-taylor"


def criterion_knob(choices: tuple[str, ...] = crit.CHOICES) -> Knob:
    extra = "; imprint = accuracy gain of an imprinted classifier over the unit (ICIP'20)" \
        if crit.IMPRINT in choices else ""
    return Knob("criterion", str, (DEFAULT_CRITERION,), choices=choices, default=DEFAULT_CRITERION,
                help="filter criterion scoring units/filters; ensemble = summed ranks of "
                     + ", ".join(crit.ENSEMBLE_OF) + extra)


def batches_knob() -> Knob:
    return Knob("collect_batches", int, (), low=1, high=100000,
                help="training batches for the one-shot criterion collection (default: one epoch)")


def collect_scores(ctx: MethodContext, model: nn.Module, batches: int | None,
                   criterion: str = DEFAULT_CRITERION) -> crit.Scores:
    """The criteria of ``model``: the gradient ones collected by training a copy (one epoch by
    default), plus ``imprint`` when it is the criterion asked for; structure-only runs use
    data-free stand-ins (see ``criteria.structural_scores``)."""
    if ctx.structure_only:
        scores = crit.structural_scores(model, ctx.seed)
        if criterion == crit.IMPRINT:
            scores[crit.IMPRINT] = crit.structural_imprint(model, removable_units(model))
        return scores
    settings = crit.CollectSettings(batches=batches)
    key = [model, ctx.data.content_hash, ctx.data.spec, repr(settings), ctx.seed, crit.CRITERIA]
    scores = dict(ctx.cached("layer-prune-criteria", key,
                             lambda: crit.collect(model, ctx.data, settings, seed=ctx.seed, log=ctx.log)))
    if criterion == crit.IMPRINT:
        units = removable_units(model)
        scores[crit.IMPRINT] = ctx.cached(
            "layer-prune-imprint", [model, ctx.data.content_hash, ctx.data.spec, [u.name for u in units]],
            lambda: crit.imprint(model, ctx.data, units, log=ctx.log))
    return scores
