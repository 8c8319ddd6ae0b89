"""Filter pruning with LayerPrune's criteria (papers.md 2.2 step 5), the paper's counterpart:
same filter criteria as ``layer-prune`` (collected in one shot, ``methods.pruning.criteria``),
channels removed physically and dependency-aware by Torch-Pruning (``methods.pruning.channels``),
then the same fine-tune recipe (``methods.pruning.recipe``).

Differences from the paper's engine, on purpose: one-shot removal of a uniform fraction per
layer (``ratio``) or of the fraction that meets a MACs target (``macs``), instead of the engine's
iterative 100-neurons-per-10-iterations schedule; that keeps the comparison with layer-prune at
matched MACs one-shot on both sides. Which layers keep their channels is declared per model
family (CIFAR ResNets: only the block-internal width, where the paper's engine places its
gates; other models: every conv, with Torch-Pruning's residual coupling; never the classifier).
"""
from __future__ import annotations

import copy
import time
from typing import Any, Mapping

from harness.macs import count_cost
from methods.base import Compressed, Deployable, Knob, Method, MethodContext
from methods.pruning import criteria as crit
from methods.pruning.channels import MAX_RATIO, CriterionImportance, prune_ratio, prune_to_macs
from methods.pruning.graph import narrower_convs_check
from methods.pruning.recipe import finetune
from methods.pruning.scores import batches_knob, collect_scores, criterion_knob

__all__ = ["FilterPrune", "CriterionImportance", "prune_ratio", "prune_to_macs"]


class FilterPrune(Method):
    name = "filter-prune"
    summary = ("filter pruning with LayerPrune's criteria via Torch-Pruning (physically narrower "
               "layers, depth kept), fine-tuned like layer-prune; CIFAR ResNets: block-internal "
               "width only")
    produces = "smaller"
    report_columns = ("criterion", "filter_prune_ratio", "finetune_steps", "graph_conv_nodes",
                      "graph_narrower_convs", "graph_filter_ok")
    knobs = (
        Knob("ratio", float, (0.25, 0.5), low=0.0, high=MAX_RATIO, default=0.5, quick_sweep=(0.5,),
             help="fraction of channels removed in every prunable layer"),
        Knob("macs", float, (), low=0.05, high=1.0,
             help="alternative to ratio: target fraction of the dense MACs (ratio found by search)"),
        criterion_knob(crit.FILTER_CHOICES),
        batches_knob(),
    )
    exclusive = (("ratio", "macs"),)

    def apply(self, ctx: MethodContext, knobs: Mapping[str, Any]) -> Compressed:
        model = ctx.model.eval()
        shape = tuple(ctx.data.input_shape)
        criterion = knobs["criterion"]
        t0 = time.perf_counter()
        scores = crit.filter_scores(collect_scores(ctx, model, knobs.get("collect_batches")), criterion)
        dense_macs = count_cost(model, shape).macs
        pruned = copy.deepcopy(model)
        if "macs" in knobs:
            pruned, ratio = prune_to_macs(pruned, scores, knobs["macs"] * dense_macs, shape)
        else:
            ratio = float(knobs["ratio"])
            pruned = prune_ratio(pruned, scores, ratio, shape)
        ctx.log(f"    filter-prune[{criterion}]: ratio {ratio:.3f}, MACs "
                f"{count_cost(pruned, shape).macs / dense_macs:.3f} of dense")
        train_s = time.perf_counter() - t0
        extra: dict[str, Any] = {"criterion": criterion, "filter_prune_ratio": ratio}
        if not ctx.structure_only:
            extra.update(finetune(pruned, ctx, "filter-prune finetune"))
            train_s += extra["finetune_s"]
        return Compressed([Deployable(pruned.eval(), check_graph=narrower_convs_check(model, shape),
                                      extra=extra)], train_s=train_s)
