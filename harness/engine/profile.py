"""Progress a user can follow, and where the time went.

``Progress`` prints one line per phase and per finished cell (also when the output is not a
terminal: tqdm bars only draw on one), each with the elapsed time and, when the sweep gives it a
``status`` callable, what is left (cells done of planned, the time left estimated like the dry
run's, from the store's past phase timings, this run's included). ``breakdown`` sums the phase
timings a sweep recorded in its store into the table printed at the end of every sweep.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from harness.train import clock


class Progress:
    def __init__(self, log: Callable[[str], None], status: Callable[[], str] | None = None):
        self.log, self.status = log, status
        self.t0 = time.time()
        self.cells = 0

    def _tail(self) -> str:
        if self.status is None:
            return ""
        try:
            return f" | {self.status()}"
        except Exception as e:  # an estimate must never stop a sweep
            return f" | time left unknown ({type(e).__name__})"

    def phase(self, msg: str) -> None:
        self.log(f"[{clock(time.time() - self.t0)}] {msg}{self._tail()}")

    def cell(self, row: dict[str, Any]) -> None:
        self.cells += 1
        status = row["status"] if row["status"] == "ok" else f"{row['status']}: {row.get('error', '')}"
        p50 = f" p50 {row['p50_ms']:.3f} ms" if row.get("p50_ms") is not None else ""
        acc = f" top1 {row['top1']:.2f}" if row.get("top1") is not None else ""
        self.log(f"[{clock(time.time() - self.t0)}] cell {self.cells}: {row['model']} {row['method']}"
                 f"[{row['budget']}] {row['variant']} {row['target']} {row['scenario']}:{acc}{p50} ({status}){self._tail()}")

    @staticmethod
    def breakdown(phases: list[tuple[str, str, float]], wall_s: float) -> str:
        """Seconds per phase of this run: baseline, each method's compression (fine-tune), export,
        reference logits, and the cells' start-up, compile, accuracy, timing; the share of the
        sweep's wall time each took."""
        sums: dict[str, float] = {}
        for kind, phase, seconds in phases:
            if kind == "baseline":
                name = "baseline training / loading"
            elif kind == "compress":
                name = f"compress: {phase}"
            elif kind == "cell-phase":
                name = f"cells: {phase}"
            elif kind == "cell":
                continue  # the per-cell total: its parts are the cell-phase entries
            else:
                name = kind
            sums[name] = sums.get(name, 0.0) + seconds
        lines = [f"time by phase (sweep wall time {clock(wall_s)}):"]
        for name, seconds in sorted(sums.items(), key=lambda kv: -kv[1]):
            share = f"{100 * seconds / wall_s:5.1f}%" if wall_s > 0 else ""
            lines.append(f"  {name:<34} {seconds:8.1f} s {share}")
        accounted = sum(sums.values())
        lines.append(f"  {'(driver: planning, store, report)':<34} {max(0.0, wall_s - accounted):8.1f} s")
        return "\n".join(lines)
