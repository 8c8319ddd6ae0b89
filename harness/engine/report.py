"""Publish rows as ``results.csv``, ``results.md``, ``pareto.png`` and ``report.md`` (``report_page``);
derived columns are computed here from the stored rows, so ``harness report DIR`` rebuilds exactly
the same files."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness.engine.report_analysis import pareto_mask as _pareto_mask  # noqa: E402
from harness.engine.report_analysis import plottable, ratio_trusted, timing_trusted  # noqa: E402
from harness.engine.rows import COLUMNS, GROUP  # noqa: E402
from harness.macs import CONVENTION  # noqa: E402
from harness.timing import PERCENTILE_RULE, SAMPLE_FLOORS  # noqa: E402


def derive(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a table with the ratios against the dense network of the same model, target and
    scenario: speedup = dense p50 / p50, from the dense reference timed interleaved in the same
    cell when there was one (``speedup_interleaved``), else from the dense row; macs_ratio = dense
    MACs / MACs; realised_share = speedup / macs_ratio; top1_drop = dense top1 - top1. A row whose
    speed-up is suspect (``ratio_trusted``) gets no speedup or realised_share."""
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    df["target_options"] = df["target_options"].astype(object).fillna("{}")  # rows from before the column
    dense = df[(df["method"] == "none") & (df["status"] == "ok")]
    dense = dense.drop_duplicates(GROUP, keep="last")[GROUP + ["p50_ms", "top1", "macs"]]
    dense = dense.rename(columns={"p50_ms": "_d_p50", "top1": "_d_top1", "macs": "_d_macs"})
    df = df.merge(dense, on=GROUP, how="left")
    num = lambda c: pd.to_numeric(df[c], errors="coerce")  # noqa: E731
    interleaved = num("speedup_interleaved") if "speedup_interleaved" in df.columns else pd.Series(np.nan, df.index)
    df["speedup"] = interleaved.where(interleaved.notna(), num("_d_p50") / num("p50_ms"))
    df.loc[df["method"] == "none", "speedup"] = df.loc[df["method"] == "none", "speedup"].where(
        df["p50_ms"].isna(), 1.0)  # the dense row is its own reference
    df.loc[~ratio_trusted(df), "speedup"] = np.nan
    df["macs_ratio"] = num("_d_macs") / num("macs")
    df["realised_share"] = df["speedup"] / df["macs_ratio"]
    df["top1_drop"] = num("_d_top1") - num("top1")
    _latency_budget_miss(df, num)
    extra = sorted(c for c in df.columns if c not in COLUMNS and not c.startswith("_d_"))
    df = df[COLUMNS[:-1] + extra + ["key"]]
    return df.sort_values(["model", "scenario", "target", "method", "budget", "variant"], kind="stable")


def _latency_budget_miss(df: pd.DataFrame, num: Any) -> None:
    """Rows of a latency budget (``latency_budget`` = F on ``latency_budget_target``), on that
    target: ``latency_target_ms`` = F x the dense p50 (the reference interleaved in the row's
    cell, else the dense row) and ``latency_miss`` = (1 / speedup) / F - 1, the relative miss of
    the row's p50 against that target, from the same paired ratio as ``speedup`` (empty when the
    speed-up is withheld)."""
    if "latency_budget" not in df.columns:
        return
    budget = num("latency_budget")
    on_target = budget.notna() & (df["target"] == df.get("latency_budget_target"))
    dense_ms = num("ref_p50_ms").where(num("speedup_interleaved").notna(), num("_d_p50"))
    df["latency_target_ms"] = (budget * dense_ms).where(on_target)
    df["latency_miss"] = (1.0 / num("speedup") / budget - 1.0).where(on_target)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 or abs(value) >= 1e5 else f"{value:.{digits}f}"
    return str(value)


def _count(value: Any) -> str:
    """A count read back as a float from a column with gaps (2.0 -> "2")."""
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return _fmt(value)


def md_cell(col: str, value: Any) -> str:
    """Human units in the Markdown table (the CSV keeps exact numbers)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if col in ("macs", "params") and isinstance(value, (int, float)):
        return f"{value / 1e6:.2f} M"
    if col == "size_bytes" and isinstance(value, (int, float)):
        return f"{value / 2**20:.3f} MiB"
    return _fmt(value)


SUMMARY_FILE = "summary.md"  # a study's hand-written opening, kept across re-publishing

MD_COLUMNS = ["method", "budget", "variant", "target", "status", "top1", "top1_drop", "parity_max_abs",
              "macs", "params", "size_bytes", "p50_ms", "p90_ms", "p99_ms", "n", "throughput",
              "speedup", "macs_ratio", "realised_share", "ratio_ok", "timing_ok", "compile_s", "first_run_ms", "train_s"]

BUDGET_COLUMNS = ["latency_target_ms", "latency_miss"]  # shown where a row has a latency budget


def _distinct(df: pd.DataFrame, col: str) -> list[str]:
    """The distinct non-empty values of ``col``, in the order the rows were written."""
    if col not in df.columns:
        return []
    ordered = df.sort_values("written", kind="stable") if "written" in df.columns else df
    return [str(v) for v in dict.fromkeys(ordered[col].dropna()) if str(v) not in ("", "nan")]


def _unrecorded(df: pd.DataFrame) -> list[str]:
    """A line for rows whose command was not recorded (stores older than the column)."""
    missing = int(df["command"].isna().sum()) if "command" in df.columns else len(df)
    return [f"- Made by: not recorded for {missing} row(s) (written by a harness version that did not "
            "record its command)"] if missing else []


def _markdown(df: pd.DataFrame) -> str:
    # the machine facts come from a row that ran on it (an error row before any cell has none)
    ran = df[df["cpu"].notna()] if "cpu" in df.columns else df
    first = (ran if len(ran) else df).iloc[0] if len(df) else None
    lines = ["# Latency vs accuracy", ""]
    if first is not None:
        lines += [f"- Machine: {first['cpu']} ({_count(first['cpu_count'])} CPUs), GPU: {first['gpu']}; "
                  f"threads {_count(first['threads'])}; git {', '.join(_distinct(df, 'git_rev'))}",
                  *[f"- Made by: `{c}`" for c in _distinct(df, "command")],
                  *_unrecorded(df),
                  f"- Timing: preset `{first['preset']}`, percentiles by {PERCENTILE_RULE}; p90 needs "
                  f">= {SAMPLE_FLOORS['p90']} samples and p99 >= {SAMPLE_FLOORS['p99']}, else blank. "
                  "Latency in ms per query; throughput in samples/s.",
                  "- SingleStream: batch 1, one query at a time. Offline: one large batch per query.",
                  f"- Counting: {CONVENTION}",
                  "- speedup = dense p50 / p50 on the same target and scenario: the dense network is timed "
                  "interleaved with the row's networks in the same cell (R A B C R D E F ... R blocks), and the "
                  "speed-up is the median over the row's blocks of (the dense blocks just before and after) / "
                  "block, so a change of the machine's own speed during the cell cancels; macs_ratio = dense "
                  "MACs / MACs; realised_share = speedup / macs_ratio. top1 is measured from the target's own "
                  "outputs; parity is the max |logit - PyTorch logit| on the same inputs.",
                  "- timing_ok = False marks a latency that stayed suspect after re-timing (other processes "
                  "busy, long tail, its block medians drifted, or the cap): it is left out of the plots. "
                  "ratio_ok = False marks a speed-up whose standard error (ratio_se, from the interquartile "
                  "range of its paired ratios) is above the preset's limit, or other processes, or the cap: "
                  "its ratios are left empty. "
                  "Rows timed on an emulated board (emulated = True) have latencies that mean nothing and "
                  "are left out of the plots too.", ""]
    for (model, data, scenario), part in df.groupby(["model", "data", "scenario"], sort=True):
        synthetic = bool(part["synthetic"].fillna(False).astype(bool).any())
        title = f"## {model} on {data}, {scenario}"
        lines += [title + (" (synthetic inputs: latency only, no accuracy)" if synthetic else ""), ""]
        cols = MD_COLUMNS + [c for c in BUDGET_COLUMNS if c in part.columns and part[c].notna().any()]
        table = pd.DataFrame({c: [md_cell(c, v) for v in part[c]] for c in cols})
        lines += [table.to_markdown(index=False), ""]
        errors = part[part["status"] != "ok"]
        for _, r in errors.iterrows():
            lines.append(f"- {r['method']}[{r['budget']}] on {r['target']}: {r['status']}: {r['error']}")
        noisy = part[(part["status"] == "ok") & ~timing_trusted(part)]
        if len(noisy):
            lines.append(f"- {len(noisy)} row(s) with a suspect latency (not plotted):")
            for _, r in noisy.iterrows():
                lines.append(f"  - {r['method']}[{r['budget']}] {r['variant']} on {r['target']}: {r['timing_suspect']}")
        withheld = part[(part["status"] == "ok") & ~ratio_trusted(part)]
        if len(withheld):
            lines.append(f"- {len(withheld)} row(s) with a suspect speed-up (ratios left empty):")
            for _, r in withheld.iterrows():
                why = r.get("ratio_suspect") if isinstance(r.get("ratio_suspect"), str) and r.get("ratio_suspect") else r["timing_suspect"]
                lines.append(f"  - {r['method']}[{r['budget']}] {r['variant']} on {r['target']}: {why}")
        lines.append("")
    lines += _details(df)
    return "\n".join(lines)


def _details(df: pd.DataFrame) -> list[str]:
    """One table per (model, method) with the method's own columns (``Method.report_columns``),
    one line per compressed network: these values do not depend on the target."""
    from methods import METHODS  # imported here: the report must not need the methods to load

    lines: list[str] = []
    for (model, method), part in df[df["method"] != "none"].groupby(["model", "method"], sort=True):
        try:
            wanted = METHODS.get(method).report_columns
        except Exception:  # a plugin that is not installed here: its rows still are in the CSV
            continue
        cols = [c for c in wanted if c in part.columns and part[c].notna().any()]
        if not cols:
            continue
        part = part.drop_duplicates(["budget", "variant"])
        table = pd.DataFrame({c: [md_cell(c, v) for v in part[c]] for c in ["budget", "variant", *cols]})
        lines += [f"## {model}: {method} details", "", table.to_markdown(index=False), ""]
    return lines


def _plot(df: pd.DataFrame, path: Path) -> None:
    usable = plottable(df)
    left_out = int(((df["status"] == "ok") & ~usable).sum())
    ok = df[usable & (df["scenario"] == "SingleStream")].copy()
    if ok.empty:
        ok = df[usable].copy()
    targets = sorted(ok["target"].dropna().unique()) or ["(no rows)"]
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4), squeeze=False)
    for ax, target in zip(axes[0], targets):
        part = ok[ok["target"] == target]
        lat = pd.to_numeric(part["p50_ms"], errors="coerce").to_numpy(float)
        acc = pd.to_numeric(part["top1"], errors="coerce").to_numpy(float)
        has = ~np.isnan(lat) & ~np.isnan(acc)
        for method in sorted(part["method"].unique()):
            sel = has & (part["method"] == method).to_numpy()
            ax.scatter(lat[sel], acc[sel], label=method, s=30)
        if has.any():
            front = _pareto_mask(lat[has], acc[has])
            order = np.argsort(lat[has][front])
            ax.plot(lat[has][front][order], acc[has][front][order], "k--", lw=1, label="Pareto front")
            ax.scatter(lat[has][front], acc[has][front], s=110, facecolors="none", edgecolors="k", lw=1)
        else:
            ax.text(0.5, 0.5, "no accuracy (synthetic data or no ok rows)", ha="center",
                    transform=ax.transAxes)
        scen = part["scenario"].iloc[0] if len(part) else ""
        ax.set(title=f"{target} ({scen})", xlabel="p50 latency (ms)", ylabel="top-1 (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if left_out:
        fig.suptitle(f"{left_out} ok row(s) left out: suspect timing or emulated board", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _summary(out: Path) -> str:
    """A study's own summary (``OUT/summary.md``: the claim tested, what was measured, whether it
    held), written by whoever ran the study from these rows; results.md opens with it and the
    generated tables follow, so a re-published folder keeps its summary beside fresh numbers."""
    path = out / SUMMARY_FILE
    return path.read_text().rstrip() + "\n\n" if path.is_file() else ""


def publish(out: Path, rows: list[dict[str, Any]]) -> dict[str, Path]:
    """Write results.csv, results.md, pareto.png and report.md (with its figures) under ``out``;
    returns their paths."""
    from harness.engine.report_page import write_report  # it builds on this module's helpers

    out = Path(out)
    paths = {"csv": out / "results.csv", "md": out / "results.md", "png": out / "pareto.png"}
    df = derive(rows) if rows else pd.DataFrame(columns=COLUMNS)
    df.to_csv(paths["csv"], index=False)
    body = _markdown(df) if len(df) else "# Latency vs accuracy\n\nNo rows yet.\n"
    paths["md"].write_text(_summary(out) + body)
    _plot(df, paths["png"])
    paths["report"] = write_report(out, df)
    return paths
