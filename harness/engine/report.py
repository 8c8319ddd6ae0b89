"""Publish rows as ``results.csv``, ``results.md`` and ``pareto.png``; derived columns are
computed here from the stored rows, so ``harness report DIR`` rebuilds exactly the same files."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness.engine.rows import COLUMNS, GROUP  # noqa: E402
from harness.macs import CONVENTION  # noqa: E402
from harness.timing import PERCENTILE_RULE, SAMPLE_FLOORS  # noqa: E402

def derive(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a table with the ratios against the dense row of the same model, target and
    scenario: speedup (dense p50 / p50), macs_ratio (dense MACs / MACs), realised_share
    (speedup / macs_ratio), top1_drop (dense top1 - top1)."""
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
    df["speedup"] = num("_d_p50") / num("p50_ms")
    df["macs_ratio"] = num("_d_macs") / num("macs")
    df["realised_share"] = df["speedup"] / df["macs_ratio"]
    df["top1_drop"] = num("_d_top1") - num("top1")
    extra = sorted(c for c in df.columns if c not in COLUMNS and not c.startswith("_d_"))
    df = df[COLUMNS[:-1] + extra + ["key"]]
    return df.sort_values(["model", "scenario", "target", "method", "budget", "variant"], kind="stable")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 or abs(value) >= 1e5 else f"{value:.{digits}f}"
    return str(value)


def _md_cell(col: str, value: Any) -> str:
    """Human units in the Markdown table (the CSV keeps exact numbers)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if col in ("macs", "params") and isinstance(value, (int, float)):
        return f"{value / 1e6:.2f} M"
    if col == "size_bytes" and isinstance(value, (int, float)):
        return f"{value / 2**20:.3f} MiB"
    return _fmt(value)


MD_COLUMNS = ["method", "budget", "variant", "target", "status", "top1", "top1_drop", "parity_max_abs",
              "macs", "params", "size_bytes", "p50_ms", "p90_ms", "p99_ms", "n", "throughput",
              "speedup", "macs_ratio", "realised_share", "compile_s", "first_run_ms", "train_s"]


def _markdown(df: pd.DataFrame) -> str:
    first = df.iloc[0] if len(df) else None
    lines = ["# Latency vs accuracy", ""]
    if first is not None:
        lines += [f"- Machine: {first['cpu']} ({_fmt(first['cpu_count'])} CPUs), GPU: {first['gpu']}; "
                  f"threads {_fmt(first['threads'])}; git {first['git_rev']}",
                  f"- Timing: preset `{first['preset']}`, percentiles by {PERCENTILE_RULE}; p90 needs "
                  f">= {SAMPLE_FLOORS['p90']} samples and p99 >= {SAMPLE_FLOORS['p99']}, else blank. "
                  "Latency in ms per query; throughput in samples/s.",
                  "- SingleStream: batch 1, one query at a time. Offline: one large batch per query.",
                  f"- Counting: {CONVENTION}",
                  "- speedup = dense p50 / p50 on the same target and scenario; macs_ratio = dense MACs / "
                  "MACs; realised_share = speedup / macs_ratio. top1 is measured from the target's own "
                  "outputs; parity is the max |logit - PyTorch logit| on the same inputs.", ""]
    for (model, data, scenario), part in df.groupby(["model", "data", "scenario"], sort=True):
        synthetic = bool(part["synthetic"].fillna(False).astype(bool).any())
        title = f"## {model} on {data}, {scenario}"
        lines += [title + (" (synthetic inputs: latency only, no accuracy)" if synthetic else ""), ""]
        table = pd.DataFrame({c: [_md_cell(c, v) for v in part[c]] for c in MD_COLUMNS})
        lines += [table.to_markdown(index=False), ""]
        errors = part[part["status"] != "ok"]
        for _, r in errors.iterrows():
            lines.append(f"- {r['method']}[{r['budget']}] on {r['target']}: {r['status']}: {r['error']}")
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
        table = pd.DataFrame({c: [_md_cell(c, v) for v in part[c]] for c in ["budget", "variant", *cols]})
        lines += [f"## {model}: {method} details", "", table.to_markdown(index=False), ""]
    return lines


def _pareto_mask(lat: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Points not dominated by another that is at least as fast and at least as accurate."""
    keep = np.ones(len(lat), bool)
    for i in range(len(lat)):
        better = (lat <= lat[i]) & (acc >= acc[i]) & ((lat < lat[i]) | (acc > acc[i]))
        keep[i] = not better.any()
    return keep


def _plot(df: pd.DataFrame, path: Path) -> None:
    ok = df[(df["status"] == "ok") & (df["scenario"] == "SingleStream")].copy()
    if ok.empty:
        ok = df[df["status"] == "ok"].copy()
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def publish(out: Path, rows: list[dict[str, Any]]) -> dict[str, Path]:
    """Write results.csv, results.md and pareto.png under ``out``; returns their paths."""
    out = Path(out)
    paths = {"csv": out / "results.csv", "md": out / "results.md", "png": out / "pareto.png"}
    df = derive(rows) if rows else pd.DataFrame(columns=COLUMNS)
    df.to_csv(paths["csv"], index=False)
    paths["md"].write_text(_markdown(df) if len(df) else "# Latency vs accuracy\n\nNo rows yet.\n")
    _plot(df, paths["png"])
    return paths
