"""The latency-budget form of layer pruning: measure what each unit costs on the target, then
remove the least important units until the predicted latency meets the budget; re-measure and
correct the prediction (unit savings are not exactly additive: fixed per-run overheads)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from torch import nn

from harness.macs import count_cost
from harness.models import Unit
from methods.pruning.units import removed_copy, signatures

TOLERANCE = 0.10  # the "done": within 10% of the requested latency
_REFINE_TOL = 0.05  # aim tighter than the tolerance, the final measurement is noisy
_ROUNDS = 3


@dataclass
class LatencyPlan:
    """What the planner chose and measured (latencies in ms, or MACs for the proxy)."""

    chosen: list[int]
    dense: float
    requested: float
    predicted: float
    achieved: float
    source: str  # "measured:<target>" or "macs-proxy"
    probes: int = 0
    notes: list[str] = field(default_factory=list)


def _greedy(order: np.ndarray, saving: np.ndarray, dense: float, requested: float) -> tuple[list[int], float]:
    """The prefix of ``order`` (least important first) whose predicted latency is closest to
    ``requested``: removal follows importance; the budget only sets how many go."""
    predicted = dense - np.concatenate([[0.0], np.cumsum(saving[order])])
    k = int(np.argmin(np.abs(predicted - requested)))
    return [int(i) for i in order[:k]], float(predicted[k])


def plan(model: nn.Module, units: list[Unit], order: np.ndarray, fraction: float,
         input_shape: tuple[int, ...], measure: Callable[[nn.Module], float], source: str,
         log: Callable[[str], None]) -> LatencyPlan:
    """Units to remove (indices into ``units``, least important first) so that ``measure`` of
    the pruned model is about ``fraction`` of the dense one.

    Units with the same signature (input shape, parameter shapes) cost the same, so each
    signature's saving is measured once, by removing all its units together and dividing: one
    probe per stage of a ResNet instead of one per block, and a saving far above timer noise.
    """
    dense = measure(model)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, sig in enumerate(signatures(model, units, input_shape)):
        groups[sig].append(i)
    saving = np.zeros(len(units))
    for idxs in groups.values():
        probe = measure(removed_copy(model, [units[i] for i in idxs]))
        saving[idxs] = max(dense - probe, 0.0) / len(idxs)
    requested = fraction * dense
    result = LatencyPlan([], dense, requested, dense, dense, source, probes=1 + len(groups))
    scale, last = 1.0, None
    for round_ in range(_ROUNDS):
        chosen, predicted = _greedy(order, saving * scale, dense, requested)
        if round_ and chosen == last:
            break  # the corrected prediction picks the same units: nothing left to refine
        last = chosen
        achieved = measure(removed_copy(model, [units[i] for i in chosen])) if chosen else dense
        result.probes += 1
        if round_ == 0 or abs(achieved - requested) < abs(result.achieved - requested):
            result.chosen, result.predicted, result.achieved = chosen, predicted, achieved  # best round
        log(f"    latency plan round {round_ + 1}: remove {len(chosen)} units, predicted "
            f"{predicted:.4g}, measured {achieved:.4g}, requested {requested:.4g} (dense {dense:.4g})")
        all_gone = len(chosen) == len(units) and achieved > requested
        if abs(achieved - requested) <= _REFINE_TOL * requested or all_gone:
            break
        if dense - predicted > 0 and dense - achieved > 0:
            scale *= (dense - achieved) / (dense - predicted)  # observed / predicted saving
    if len(result.chosen) == len(units) and result.achieved > requested * (1 + TOLERANCE):
        result.notes.append("budget unreachable: every removable unit removed")
    return result


def macs_measure(input_shape: tuple[int, ...]) -> Callable[[nn.Module], float]:
    """The MACs proxy for latency, when no target can be measured (structure-only runs)."""
    return lambda m: float(count_cost(m, input_shape).macs)
