"""Solve a method's continuous knob for a latency budget with a latency predictor (issue 15 item 4).

A budget ``latency=F`` asks for a network whose p50 on a named target is F x the dense p50. A
method with a continuous knob (filter-prune's ``ratio``, decompose's rank ``ratio``, FTWT's
``r``) hands ``solve_knob`` a function that builds the networks for a list of knob values and
returns their predicted latencies as fractions of dense (``MethodContext.predict_latency`` for
lists of networks: one measuring pass for all of them). The knob is searched on a grid that
narrows around where the prediction crosses F, a few rounds: latency is not monotone in a width
(the staircase of blocked layouts), so a plain bisection could be led astray by one step.
The row then verifies the budget by measurement (``latency_target_ms``, ``latency_miss``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from harness.errors import UserError


@dataclass
class Solution:
    value: float  # the knob value chosen
    predicted: float  # its predicted latency, a fraction of dense
    requested: float
    evaluations: list[tuple[float, float]] = field(default_factory=list)  # (knob value, predicted fraction)
    note: str = ""

    def columns(self, target: str) -> dict[str, object]:
        """The row columns every latency-budget method writes (the report adds the measured miss)."""
        return {"latency_budget": self.requested, "latency_budget_target": target,
                "latency_predicted_frac": self.predicted, "latency_predicted_error": self.predicted / self.requested - 1,
                "latency_solver_evaluations": len(self.evaluations),
                **({"latency_budget_note": self.note} if self.note else {})}


def solve_knob(predict_many: Callable[[list[float]], Sequence[float]], fraction: float, low: float, high: float,
               *, points: int = 5, rounds: int = 3, log: Callable[[str], None] = lambda _m: None) -> Solution:
    """The knob value in [low, high] whose predicted latency (a fraction of dense) is closest to
    ``fraction``. ``predict_many(values)`` predicts a list of knob values at once. Each round
    evaluates ``points`` values evenly spread over the current interval, then narrows it to the
    two neighbours of the best value; no assumption on the direction the knob moves latency."""
    if not 0 < fraction <= 1:
        raise UserError(f"latency budget {fraction} must be a fraction of the dense p50 in (0, 1]")
    if not low < high:
        raise ValueError("solve_knob needs low < high")
    seen: dict[float, float] = {}
    lo, hi = low, high
    for r in range(rounds):
        grid = [round(lo + (hi - lo) * i / (points - 1), 6) for i in range(points)]
        todo = [g for g in grid if g not in seen]
        if todo:
            for value, pred in zip(todo, predict_many(todo)):
                seen[value] = float(pred)
        ordered = sorted(seen)
        best = min(ordered, key=lambda v: abs(seen[v] - fraction))
        log(f"    latency budget round {r + 1}: best knob {best:.4g} predicted {seen[best]:.3f} of dense "
            f"(requested {fraction:.3f}; {len(seen)} values predicted)")
        i = ordered.index(best)
        lo, hi = ordered[max(0, i - 1)], ordered[min(len(ordered) - 1, i + 1)]
        if hi - lo < 1e-3 or abs(seen[best] - fraction) < 0.01 * fraction:
            break
    best = min(seen, key=lambda v: abs(seen[v] - fraction))
    note = ""
    if abs(seen[best] / fraction - 1) > 0.10:
        note = (f"budget not reachable by the knob in [{low:g}, {high:g}]: closest predicted "
                f"{seen[best]:.3f} of dense at {best:.4g}")
    return Solution(best, seen[best], fraction, sorted(seen.items()), note)
