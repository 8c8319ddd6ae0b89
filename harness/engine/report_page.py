"""``report.md``: the page a user reads first. Per model: a generated summary per target (the
winner at each latency budget, the Pareto front, the rows that are not faster), the front,
realised-vs-theoretical and predicted-vs-measured figures (PNG under ``figures/``), and the rows
in tables grouped by accuracy, latency, cost and provenance. ``results.md`` stays the full
record; this page is built from the same derived rows (``report.derive``)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.engine import report_analysis as ra
from harness.engine import report_figures as rf
from harness.engine.report import md_cell

REPORT_FILE = "report.md"
FIGURES_DIR = "figures"
IDENTITY = ["method", "budget", "variant", "target"]
GROUPS = {  # the table groups, in the order a reader asks: is it right, is it fast, what did it cost, where from
    "accuracy": ["top1", "top1_drop", "top5", "parity_max_abs", "parity_top1_agree"],
    "latency": ["p50_ms", "p90_ms", "p99_ms", "n", "throughput", "speedup", "ratio_se", "verdict",
                "latency_target_ms", "latency_miss", ra.PREDICTED],
    "cost": ["macs", "params", "size_bytes", "macs_ratio", "realised_share", "train_s", "compile_s", "first_run_ms"],
    "provenance": ["precision", "preset", "threads", "node", "git_rev", "written", "key"],
}


def _slug(text: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_")


def _pct(v: float) -> str:
    return "" if v is None or np.isnan(v) else f"{v:.1f}%"


def _left_out_text(left_out: dict[str, int]) -> str:
    return "; ".join(f"{n} {why}" for why, n in left_out.items())


def _scenarios(df: pd.DataFrame) -> list[str]:
    """The scenarios of ``df``, SingleStream (the latency a user waits for) first."""
    return sorted(df["scenario"].dropna().unique(), key=lambda s: (s != "SingleStream", s))


def _dense(df: pd.DataFrame) -> pd.Series | None:
    """The dense row of a (model, target, scenario) part, the last one written."""
    dense = df[(df["method"] == "none") & (df["status"] == "ok")]
    return dense.iloc[-1] if len(dense) else None


def _dense_note(part: pd.DataFrame) -> str:
    d = _dense(part)
    if d is None:
        return "no dense row"
    ms = "suspect" if not ra.timing_trusted(d.to_frame().T).iloc[0] else f"{float(d['p50_ms']):.3g} ms"
    top1 = f", top-1 {float(d['top1']):.2f}%" if pd.notna(d.get("top1")) else ""
    return f"p50 {ms}{top1}"


def _winner_cell(best: pd.Series | None, rows: pd.DataFrame, names: pd.Series) -> str:
    if best is None:
        compressed = rows[rows["method"] != "none"]
        if compressed.empty:
            return "no compressed row to compare"
        fastest = compressed.sort_values("rel_latency", kind="stable").iloc[0]
        return f"none (fastest: {names[fastest.name]}, {fastest['rel_latency']:.2f}x)"
    drop = float(best["top1_drop"]) if pd.notna(best.get("top1_drop")) else float("nan")
    vs = "" if np.isnan(drop) else (" (same)" if abs(drop) < 0.005 else f" ({-drop:+.2f})")
    return f"**{names[best.name]}**: {best['rel_latency']:.2f}x, {float(best['top1']):.2f}%{vs}"


def winners_table(parts: list[tuple[str, str, str, pd.DataFrame]], names: pd.Series) -> str:
    """One line per (target, scenario, dense note, ``comparable`` rows): the most accurate row at
    or under each latency budget (its p50 / dense p50, top-1 and the change from dense), or the
    fastest row where none is."""
    table = []
    for target, scenario, dense, rows in parts:
        line = {"target": target, "scenario": scenario, "dense": dense}
        for f, best in ra.winners(rows):
            line[f"<= {f:g}x dense p50"] = _winner_cell(best, rows, names)
        table.append(line)
    return pd.DataFrame(table).to_markdown(index=False)


def summary_lines(rows: pd.DataFrame, left_out: dict[str, int], names: pd.Series) -> list[str]:
    """The generated notes of one target and scenario from its ``comparable`` rows: the front,
    the rows with fewer MACs that are not faster, the others not faster, what was left out."""
    lines = []
    on = ra.front(rows)
    if len(on):
        lines.append("- Pareto front, fastest first: " + "; ".join(
            f"{names[i]} ({r['rel_latency']:.2f}x, {float(r['top1']):.2f}%)" for i, r in on.iterrows()) + ".")
    slow = ra.not_faster(rows)
    fewer = slow[slow["macs_ratio"].astype(float) > ra.NOT_FASTER]
    if len(fewer):
        lines.append("- **Fewer MACs, not faster** (speed-up under "
                     f"{ra.NOT_FASTER:g}x): " + "; ".join(
                         f"{names[i]}: {float(r['macs_ratio']):.2f}x fewer MACs, {float(r['speedup']):.3f}x speed-up"
                         for i, r in fewer.iterrows()) + ".")
    same = slow.drop(fewer.index)
    if len(same):
        lines.append(f"- Not faster either, at about the dense MACs: " + "; ".join(
            f"{names[i]} ({float(r['speedup']):.3f}x)" for i, r in same.iterrows()) + ".")
    if left_out:
        lines.append(f"- Left out here and in the figures: {_left_out_text(left_out)}.")
    return lines


def _verdict(df: pd.DataFrame) -> pd.Series:
    """The latency table's verdict: what may be read from a row's numbers."""
    ratio, timing = ra.ratio_trusted(df) | (df["method"] == "none"), ra.timing_trusted(df)
    return pd.Series(np.where(~ratio, "speed-up withheld", np.where(~timing, "ms suspect, ratio sound", "")),
                     df.index).where(~((df["method"] == "none") & ~timing), "ms suspect")


def _tables(part: pd.DataFrame) -> list[str]:
    """The ok rows of one model and scenario in the four grouped tables; the others listed."""
    ok = part[part["status"] == "ok"].copy()
    ok["budget"] = [ra.budget_pairs(k, b) for k, b in zip(ok["knob"], ok["budget"])]
    ok["verdict"] = _verdict(ok)
    lines = []
    for group, cols in GROUPS.items():
        shown = [c for c in cols if c in ok.columns and ok[c].replace("", np.nan).notna().any()]
        table = pd.DataFrame({c: [md_cell(c, v) for v in ok[c]] for c in IDENTITY + shown})
        align = ["left"] * len(IDENTITY) + ["left" if c == "verdict" else "right" for c in shown]
        # the cells are formatted already (md_cell): tabulate must not re-read them as numbers
        lines += [f"**{group.capitalize()}**", "", table.to_markdown(index=False, disable_numparse=True,
                                                                     colalign=align), ""]
    for _, r in part[part["status"] != "ok"].iterrows():
        why = str(r.get("error") or "")
        why = why if len(why) <= 110 else why[:107] + "..."
        lines.append(f"- Not measured: {ra.row_name(r)} on {r['target']}: {r['status']}: {why}")
    return lines + [""]


def _prediction_section(part: pd.DataFrame, colours: dict, fig_dir: Path, stem: str) -> tuple[list[str], list[Path]]:
    if not ra.has_predictions(part):
        return ["No predictions in these rows (no `p50_predicted_ms`).", ""], []
    if ra.predicted_rows(part).empty:
        return ["No prediction on an ok row with a measured p50 (not emulated).", ""], []
    err = ra.prediction_error(part)
    table = pd.DataFrame({
        "target": err["target"], "scenario": err["scenario"], "rows": err["rows"],
        "p50 MAPE": [_pct(v) for v in err["mape_pct"]], "within 10%": [_pct(v) for v in err["within_10_pct"]],
        "trusted timing": err["trusted"], "p50 MAPE, trusted": [_pct(v) for v in err["mape_trusted_pct"]],
        "within 10%, trusted": [_pct(v) for v in err["within_10_trusted_pct"]],
        "speed-up rows": err["speedup_rows"], "speed-up MAPE": [_pct(v) for v in err["mape_speedup_pct"]],
        "within 10%, speed-up": [_pct(v) for v in err["within_10_speedup_pct"]]})
    path = fig_dir / f"{stem}-predicted.png"
    rf.predicted_figure(ra.predicted_rows(part), colours, path)
    lines = ["The error |predicted / measured - 1| of `p50_predicted_ms` against the measured p50, as MAPE and "
             "the share of rows within 10%: over every row with a prediction, then over the rows whose timing is "
             "trusted (timing_ok not False: a suspect p50 measures the machine, not the model); and of "
             "`speedup_predicted` against the row's paired speed-up (compressed rows whose speed-up is not "
             "withheld), which a change of the machine's speed between the latency model's table and the row "
             "does not move. A sweep predicts each row held out: the latency model is fitted without the row's own "
             "network (`p50_predicted_note` in the CSV says what the prediction rests on).", "", table.to_markdown(index=False), "",
             f"![predicted vs measured p50]({FIGURES_DIR}/{path.name})", ""]
    return lines, [path]


def _model_section(part: pd.DataFrame, colours: dict, fig_dir: Path) -> tuple[list[str], list[Path]]:
    model, data = part["model"].iloc[0], part["data"].iloc[0]
    stem = f"{_slug(model)}-{_slug(data)}"
    rows, _ = ra.comparable(part)
    names = ra.short_names(part)
    lines, written, figs, parts, notes_md = [f"## {model} on {data}", "", "### Summary", ""], [], [], [], []
    for target, tpart in part.groupby("target", sort=True):
        notes = {}
        for scenario in _scenarios(tpart):
            spart = tpart[tpart["scenario"] == scenario]
            comp, left_out = ra.comparable(spart)
            parts.append((target, scenario, _dense_note(spart), comp))
            more = summary_lines(comp, left_out, names)
            notes_md += [f"**{target}, {scenario}**", "", *more, ""] if more else []
            notes[scenario] = "dense " + _dense_note(spart) + (f"; left out: {sum(left_out.values())} row(s)" if left_out else "")
        path = fig_dir / f"{stem}-front-{_slug(target)}.png"
        rf.front_figure(rows[rows["target"] == target], str(target), colours, names, notes, path)
        figs.append(f"![{target}: top-1 vs latency]({FIGURES_DIR}/{path.name})")
        written.append(path)
    lines += ["The most accurate row at or under each latency budget (a fraction of the dense p50 on the same "
              "target and scenario): its p50 / dense p50, top-1 and the change in points from dense.", "", winners_table(parts, names), "", *notes_md]
    lines += ["### Accuracy vs latency", "", "One figure per target; latency is the p50 over the dense p50 "
              "(log scale); the Pareto front dashed, its points numbered and named under the panel.", ""]
    lines += [line for f in figs for line in (f, "")]
    path = fig_dir / f"{stem}-speedup.png"
    left = {t: sum(ra.comparable(tp, accuracy=False)[1].values()) for t, tp in part.groupby("target", sort=True)}
    rf.speedup_figure(ra.comparable(part, accuracy=False)[0], colours, names,
                      {t: f"left out: {n} row(s)" for t, n in left.items() if n}, path)
    written.append(path)
    lines += ["### Realised vs theoretical speed-up", "", "One point per row: the speed-up its MACs promise (x) "
              "against the one measured (y). On the dashed diagonal the MACs are realised; under the dotted "
              "line (shaded) the row is slower than dense; rows with fewer MACs that are slower are numbered "
              "and named under the panel.", "", f"![realised vs theoretical]({FIGURES_DIR}/{path.name})", ""]
    pred_lines, pred_paths = _prediction_section(part, colours, fig_dir, stem)
    lines += ["### Predicted vs measured latency", "", *pred_lines]
    written += pred_paths
    for scenario in _scenarios(part):
        lines += [f"### Rows: {scenario}", "", *_tables(part[part["scenario"] == scenario])]
    return lines, written


def _header(df: pd.DataFrame) -> list[str]:
    counts = df["status"].value_counts()
    status = ", ".join(f"{int(counts[s])} {s}" for s in sorted(counts.index))
    ran = df[df["cpu"].notna()] if "cpu" in df.columns else df
    first = (ran if len(ran) else df).iloc[0]
    revs = ", ".join(dict.fromkeys(str(v) for v in df["git_rev"].dropna()))
    return ["# Report", "",
            "Built by `python -m harness report DIR` from `results.sqlite` (and at the end of every sweep). "
            "Every row with every column: [results.csv](results.csv); the measurement notes and the full tables: "
            "[results.md](results.md).", "",
            f"- Rows: {len(df)} ({status}); machine: {first['cpu']}, threads {md_cell('threads', first['threads'])}; "
            f"git {revs}.",
            "- Latency here is the p50 as a fraction of the dense network's p50 on the same target and scenario, "
            "from the paired speed-up (the dense network timed interleaved in the same cell), so a change of the "
            "machine's speed during a cell cancels. A row whose speed-up is withheld (ratio_ok False, or suspect "
            "timing where the row has no paired ratio) is left out of the summaries and figures, and each says how "
            "many; a row with timing_ok False but sound paired ratios stays (its absolute ms is suspect, not its "
            "ratio to dense). Rows timed on an emulated board are left out: their latencies mean nothing.",
            f"- A row is 'not faster' under a {ra.NOT_FASTER:g}x speed-up; budgets read as `knob=value`; "
            "[variant] names a form of the same compressed network (e.g. int8, masked).", ""]


def write_report(out: Path, df: pd.DataFrame) -> Path:
    """Write ``out/report.md`` and its figures under ``out/figures/`` from derived rows; figures
    this run did not draw (a model or target no longer in the store) are removed."""
    out = Path(out)
    path = out / REPORT_FILE
    fig_dir = out / FIGURES_DIR
    if df.empty:
        path.write_text("# Report\n\nNo rows yet.\n")
        return path
    fig_dir.mkdir(exist_ok=True)
    colours = rf.method_colours(list(df["method"].dropna()))
    lines, written = _header(df), []
    for _, part in df.groupby(["model", "data"], sort=True):
        more, paths = _model_section(part, colours, fig_dir)
        lines += more
        written += paths
    for stale in set(fig_dir.glob("*.png")) - set(written):
        stale.unlink()
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
