"""The figures of ``report.md`` (matplotlib, Agg): the accuracy/latency front per target, realised
vs theoretical speed-up, predicted vs measured latency. Each function draws rows it is given and
saves one PNG; which rows may be drawn is decided in ``report_analysis``."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator  # noqa: E402

from harness.engine.report_analysis import LATENCY_BUDGETS, PREDICTED, front  # noqa: E402

SCENARIO_MARKERS = {"SingleStream": "o", "Offline": "s"}
DPI = 110
# PNG metadata without the matplotlib version, so a re-render with another release does not
# change a published file whose pixels are the same
_META = {"Software": None}


def method_colours(methods: list[str]) -> dict[str, tuple]:
    """One colour per method, the same in every figure of a report (dense in black)."""
    others = [m for m in sorted(set(methods)) if m != "none"]
    palette = plt.get_cmap("tab10").colors
    return {"none": (0, 0, 0, 1), **{m: palette[i % len(palette)] for i, m in enumerate(others)}}


# Ratio ticks in order of preference: 1 and the powers of two, then the latency budgets and halves
RATIO_TICKS = (1, 0.5, 2, 0.25, 4, 0.7, 1.5, 0.125, 8, 3, 16, 0.9, 1.25, 6, 32)


def ratio_ticks(lo: float, hi: float, n: int = 9) -> list[float]:
    """Ticks for a log axis from ``lo`` to ``hi``: the preferred ones first, each at least
    1/``n`` of the axis from those kept, so 0.9 and 1 do not crowd on a wide axis."""
    gap = np.log(hi / lo) / n
    kept: list[float] = []
    for t in RATIO_TICKS:
        if lo <= t <= hi and all(abs(np.log(t / k)) >= gap for k in kept):
            kept.append(t)
    return sorted(kept)


def _ratio_axis(axis: matplotlib.axis.Axis, lo: float, hi: float) -> None:
    """A log axis from ``lo`` to ``hi`` whose ticks read as plain ratios."""
    axis.set_major_locator(FixedLocator(ratio_ticks(lo, hi)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(NullLocator())


def _save(fig: plt.Figure, path: Path, bottom: float = 0.0) -> None:
    """Save with tight margins; ``bottom`` (a fraction of the figure) is kept for a figure legend."""
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=DPI, metadata=_META)
    plt.close(fig)


def _number_points(ax: plt.Axes, xs: list[float], ys: list[float], names: list[str]) -> None:
    """Number the points and name the numbers under the panel: labels beside the points overlap
    where points crowd (fronts here often end in two points 1% apart), and a label-placement
    library is not worth a dependency for a handful of labels."""
    for i, (x, y) in enumerate(zip(xs, ys), 1):
        ax.annotate(str(i), (x, y), xytext=(-6, 6), textcoords="offset points", ha="right", fontsize=7.5,
                    fontweight="bold")
    if names:
        key = "\n".join(f"{i}  {name}" for i, name in enumerate(names, 1))
        ax.text(0.0, -0.14, key, transform=ax.transAxes, va="top", ha="left", fontsize=7.5)


def front_figure(rows: pd.DataFrame, target: str, colours: dict[str, tuple], names: pd.Series,
                 notes: dict[str, str], path: Path) -> None:
    """Top-1 against p50 relative to dense (``report_analysis.comparable`` rows of one model and
    target), one panel per scenario; the Pareto front dashed, its points ringed and numbered,
    the numbers named (``names``, by row index) under the panel; ``notes[scenario]`` (dense p50, rows left out) in the
    panel's title."""
    scenarios = sorted(rows["scenario"].unique(), key=lambda s: (s != "SingleStream", s)) or ["(none)"]
    longest = max([len(front(rows[rows["scenario"] == s])) for s in scenarios] + [0])
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6.4 * len(scenarios), 4.6 + 0.16 * longest),
                             squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        part = rows[rows["scenario"] == scenario]
        for method, m in part.groupby("method", sort=True):
            ax.scatter(m["rel_latency"], m["top1"], s=34, color=colours[method],
                       label="dense" if method == "none" else method, zorder=3)
        on = front(part)
        if len(on):
            ax.plot(on["rel_latency"], on["top1"], "k--", lw=0.9, zorder=2, label="Pareto front")
            ax.scatter(on["rel_latency"], on["top1"], s=120, facecolors="none", edgecolors="k", lw=0.9, zorder=4)
            _number_points(ax, list(on["rel_latency"]), list(on["top1"].astype(float)),
                           [f"{names[i]}: {r:.2f}x dense p50, top-1 {a:.2f}%" for i, r, a in
                            zip(on.index, on["rel_latency"], on["top1"].astype(float))])
        for f in LATENCY_BUDGETS:
            ax.axvline(f, color="0.8", lw=0.8, ls=":", zorder=1)
        ax.axvline(1.0, color="0.5", lw=0.8, zorder=1)
        ax.set_xscale("log", base=2)
        lo = min([*part["rel_latency"], *LATENCY_BUDGETS]) / 1.15
        hi = max([*part["rel_latency"], 1.0]) * 1.15
        ax.set_xlim(lo, hi)
        _ratio_axis(ax.xaxis, lo, hi)
        if len(part):  # headroom for the numbers above the top points
            top1 = part["top1"].astype(float)
            span = max(top1.max() - top1.min(), 1.0)
            ax.set_ylim(top1.min() - 0.06 * span, top1.max() + 0.1 * span)
        ax.set_title(f"{target}, {scenario}\n{notes.get(scenario, '')}", fontsize=9)
        ax.set_xlabel("p50 / dense p50 (from the paired speed-up; dotted: 0.5, 0.7, 0.9)", fontsize=8)
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.25, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
        if part.empty:
            ax.text(0.5, 0.5, "no row to compare", ha="center", transform=ax.transAxes)
    _save(fig, path)


def _limits(values: pd.Series) -> tuple[float, float]:
    v = [*values.astype(float), 1.0]
    return min(v) / 1.2, max(v) * 1.2


def speedup_figure(rows: pd.DataFrame, colours: dict[str, tuple], names: pd.Series, notes: dict[str, str],
                   path: Path) -> None:
    """Measured speed-up against MACs ratio (``comparable`` rows of one model), one point per row,
    one panel per target, marker per scenario; the diagonal (the speed-up the MACs promise) and
    the line of no speed-up drawn, the compressed-but-not-faster rows numbered and named;
    ``notes[target]`` (rows left out) under the panel's title."""
    targets = sorted(rows["target"].unique()) or ["(none)"]
    slow_mask = (rows["macs_ratio"].astype(float) > 1.05) & (rows["speedup"].astype(float) < 1.0)
    longest = max([int(slow_mask[rows["target"] == t].sum()) for t in targets] + [0])
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 4.9 + 0.16 * longest), squeeze=False)
    (xlo, xhi), (ylo, yhi) = _limits(rows["macs_ratio"]), _limits(rows["speedup"])
    for ax, target in zip(axes[0], targets):
        part = rows[rows["target"] == target]
        ax.axhspan(ylo, 1.0, color="tab:red", alpha=0.06, lw=0)
        lo, hi = min(xlo, ylo), max(xhi, yhi)
        ax.plot([lo, hi], [lo, hi], color="0.4", ls="--", lw=0.9, label="speed-up = MACs ratio")
        ax.axhline(1.0, color="tab:red", lw=0.8, ls=":", label="not faster than dense")
        for (method, scenario), m in part.groupby(["method", "scenario"], sort=True):
            ax.scatter(m["macs_ratio"].astype(float), m["speedup"].astype(float), s=34, color=colours[method],
                       marker=SCENARIO_MARKERS.get(scenario, "^"), zorder=3, alpha=0.9)
        slow = part[slow_mask[part.index]].sort_values(["macs_ratio", "speedup"])
        _number_points(ax, list(slow["macs_ratio"].astype(float)), list(slow["speedup"].astype(float)),
                       [f"{names[i]} ({s}): {float(sp):.2f}x, MACs {float(m):.2f}x fewer"
                        for i, s, sp, m in zip(slow.index, slow["scenario"], slow["speedup"], slow["macs_ratio"])])
        ax.set(xscale="log", yscale="log", xlim=(xlo, xhi), ylim=(ylo, yhi))
        _ratio_axis(ax.xaxis, xlo, xhi)  # after set_xscale, which resets the formatter
        _ratio_axis(ax.yaxis, ylo, yhi)
        ax.set_title(f"{target}\n{notes.get(target, '')}".strip(), fontsize=9)
        ax.set_xlabel("MACs ratio (dense MACs / MACs)", fontsize=8)
        ax.set_ylabel("measured speed-up (dense p50 / p50)", fontsize=8)
        ax.grid(alpha=0.25, which="both")
        ax.legend(fontsize=7, loc="upper left")
    _legend_below(fig, rows, colours)
    _save(fig, path, bottom=0.07)


def _legend_below(fig: plt.Figure, rows: pd.DataFrame, colours: dict[str, tuple]) -> None:
    """One legend for the figure: methods by colour, scenarios by marker."""
    handles = [plt.Line2D([], [], ls="", marker="o", color=colours[m], label="dense" if m == "none" else m)
               for m in sorted(rows["method"].unique())]
    handles += [plt.Line2D([], [], ls="", marker=SCENARIO_MARKERS.get(s, "^"), color="0.45", label=s)
                for s in sorted(rows["scenario"].unique())]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=7, frameon=False)


def _ms_axis(axis: matplotlib.axis.Axis) -> None:
    """A log axis of milliseconds with plain labels at 1, 2 and 5 of each decade."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(NullLocator())


def predicted_figure(rows: pd.DataFrame, colours: dict[str, tuple], path: Path) -> None:
    """Predicted against measured p50 (``report_analysis.predicted_rows``), one point per row, one
    column of panels per target, marker per scenario, rows with a suspect timing hollow (they
    are not in the error figures): on top predicted against measured (log-log, the diagonal and
    a +-10% band), below the error in % of the measured p50 against it (the band again), where
    errors of a few percent are visible at every latency."""
    targets = sorted(rows["target"].unique()) or ["(none)"]
    fig, axes = plt.subplots(2, len(targets), figsize=(5.2 * len(targets), 8.4), squeeze=False, sharex="col",
                             gridspec_kw={"height_ratios": (3, 2)})
    err = rows["pred_error"].astype(float) * 100
    elim = max(15.0, float(err.abs().max()) * 1.15) if len(err) else 15.0
    for col, target in enumerate(targets):
        top, bottom = axes[0][col], axes[1][col]
        part = rows[rows["target"] == target]
        meas, pred = part["p50_ms"].astype(float), part[PREDICTED].astype(float)
        lo, hi = min(meas.min(), pred.min()) / 1.3, max(meas.max(), pred.max()) * 1.3
        grid = np.geomspace(lo, hi, 50)
        top.fill_between(grid, grid * 0.9, grid * 1.1, color="tab:green", alpha=0.15, lw=0, label="within 10%")
        top.plot(grid, grid, color="0.4", ls="--", lw=0.9, label="predicted = measured")
        bottom.axhspan(-10, 10, color="tab:green", alpha=0.15, lw=0)
        bottom.axhline(0, color="0.4", ls="--", lw=0.9)
        for (method, scenario, ok), m in part.groupby(["method", "scenario", "timing_trusted"], sort=True):
            c, marker = colours[method], SCENARIO_MARKERS.get(scenario, "^")
            style = {"s": 34, "zorder": 3, "marker": marker, "color": c if ok else "none", "edgecolors": c}
            top.scatter(m["p50_ms"].astype(float), m[PREDICTED].astype(float), **style)
            bottom.scatter(m["p50_ms"].astype(float), m["pred_error"].astype(float) * 100, **style)
        top.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi))
        bottom.set(xscale="log", xlim=(lo, hi), ylim=(-elim, elim))
        for axis in (top.xaxis, top.yaxis, bottom.xaxis):
            _ms_axis(axis)
        top.set_title(f"{target} (hollow: suspect timing)", fontsize=9)
        top.set_ylabel("predicted p50 (ms)", fontsize=8)
        bottom.set_xlabel("measured p50 (ms)", fontsize=8)
        bottom.set_ylabel("predicted / measured - 1 (%)", fontsize=8)
        for ax in (top, bottom):
            ax.grid(alpha=0.25, which="both")
        top.legend(fontsize=7, loc="upper left")
    _legend_below(fig, rows, colours)
    _save(fig, path, bottom=0.05)
