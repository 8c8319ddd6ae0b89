"""What ``report.md`` says, as pure functions of the derived rows (``report.derive``): which rows
may be compared on latency, the accuracy/latency Pareto front, the winner at each latency budget,
the rows that are not faster, the error of the latency predictions, and how a budget reads."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

LATENCY_BUDGETS = (0.5, 0.7, 0.9)  # fractions of the dense p50 the summary names a winner for
# Below this speed-up a row counts as not faster: the paired ratios of a quick-preset row spread a
# few percent (README, "latency budgets that hold"), so 1.02x is not a speed-up a user would see.
NOT_FASTER = 1.05


def _false(v: Any) -> bool:
    return v is False or v == 0 or v == "False"


def _true(v: Any) -> bool:
    return v is True or v == 1 or v == "True"


def timing_trusted(df: pd.DataFrame) -> pd.Series:
    """Rows whose timing is not suspect (``timing_ok`` is not False; rows from before the column
    count as trusted)."""
    return ~df["timing_ok"].map(_false)


def ratio_trusted(df: pd.DataFrame) -> pd.Series:
    """Rows whose speed-up may be published: ``ratio_ok`` where the row was timed against an
    interleaved reference (its paired ratios agree), else ``timing_ok`` (rows without one, and
    rows from before the column)."""
    own = timing_trusted(df)
    if "ratio_ok" not in df.columns:
        return own
    has = df["ratio_ok"].map(lambda v: v is not None and not (isinstance(v, float) and np.isnan(v)) and v != "")
    return own.where(~has, ~df["ratio_ok"].map(_false))


def emulated(df: pd.DataFrame) -> pd.Series:
    """Rows timed on an emulated board: their latencies mean nothing."""
    return df["emulated"].map(_true) if "emulated" in df.columns else pd.Series(False, df.index)


def plottable(df: pd.DataFrame) -> pd.Series:
    """ok rows whose latency means something: trusted timing, not an emulated board."""
    return (df["status"] == "ok") & timing_trusted(df) & ~emulated(df)


def pareto_mask(lat: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Points not dominated by another that is at least as fast and at least as accurate."""
    keep = np.ones(len(lat), bool)
    for i in range(len(lat)):
        better = (lat <= lat[i]) & (acc >= acc[i]) & ((lat < lat[i]) | (acc > acc[i]))
        keep[i] = not better.any()
    return keep


def _num(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        return pd.Series(np.nan, df.index, dtype=float)
    return pd.to_numeric(df[col], errors="coerce")


# ---------------------------------------------------------------------------------- how rows read
def budget_pairs(knob: Any, budget: Any) -> str:
    """``knob`` and ``budget`` (comma-joined names and values, ``rows.knob_text``) as
    ``name=value`` pairs; the raw budget where the counts disagree (a value with a comma)."""
    if not isinstance(budget, str) or not budget:
        return ""  # the dense row
    if not isinstance(knob, str) or not knob:
        return budget
    names, values = knob.split(","), str(budget).split(",")
    if len(names) != len(values):
        return str(budget)
    return " ".join(f"{n}={v}" for n, v in zip(names, values))


def row_name(row: pd.Series | dict[str, Any]) -> str:
    """A row's full name: method ("dense" for none), its budget as pairs, the variant where it
    is not the default."""
    method = "dense" if row["method"] == "none" else row["method"]
    name = " ".join(p for p in (method, budget_pairs(row.get("knob"), row.get("budget"))) if p)
    variant = row.get("variant")
    return name + (f" [{variant}]" if isinstance(variant, str) and variant != "default" else "")


def short_names(df: pd.DataFrame) -> pd.Series:
    """Names for figure labels: method, only the budget pairs that differ between the method's
    rows in ``df`` (the first pair where none differ), and the variant where not the default."""
    out = pd.Series("", df.index, dtype=object)
    for _, part in df.groupby("method", sort=False):
        pairs = [budget_pairs(k, b).split(" ") for k, b in zip(part["knob"], part["budget"])]
        varying = {p.split("=")[0] for ps in pairs for p in ps if sum(p in qs for qs in pairs) < len(pairs)}
        for idx, ps, variant in zip(part.index, pairs, part["variant"]):
            shown = [p for p in ps if p.split("=")[0] in varying] or ps[:1]
            method = part.at[idx, "method"]
            name = " ".join(["dense" if method == "none" else method, *[p for p in shown if p]])
            out[idx] = name + (f" [{variant}]" if isinstance(variant, str) and variant != "default" else "")
    return out


# ------------------------------------------------------------------------- latency against dense
def comparable(df: pd.DataFrame, accuracy: bool = True) -> tuple[pd.DataFrame, dict[str, int]]:
    """The ok rows that may stand on a latency axis, with ``rel_latency`` = p50 / dense p50 =
    1 / speedup (the paired speed-up, so a change of the machine's speed during the cell
    cancels), and the count of ok rows left out per reason: the speed-up withheld (suspect
    timing, or paired ratios that disagree: ``ratio_trusted``), an emulated board, no dense
    reference, and with ``accuracy`` no top-1 (synthetic inputs)."""
    ok = df[df["status"] == "ok"].copy()
    # the dense row is 1.0x itself by definition: a suspect absolute timing of its own does not
    # move it on an axis of p50 / dense p50 (the other rows' ratios come from their own pairs)
    dense = ok["method"] == "none"
    ok["speedup"] = _num(ok, "speedup").where(~dense, 1.0)
    emu = emulated(ok)
    trusted = ratio_trusted(ok) | dense
    speedup, top1 = _num(ok, "speedup"), _num(ok, "top1")
    reasons = {
        "emulated board (its latency means nothing)": emu,
        "suspect timing or speed-up (withheld)": ~emu & ~trusted,
        "no dense reference to compare with": ~emu & trusted & speedup.isna(),
        "no accuracy (synthetic inputs)": ~emu & trusted & speedup.notna() & top1.isna() & accuracy,
    }
    left_out = {why: int(mask.sum()) for why, mask in reasons.items() if mask.any()}
    keep = ok[~emu & trusted & speedup.notna() & (top1.notna() | (not accuracy)) & (speedup > 0)].copy()
    keep["rel_latency"] = 1.0 / _num(keep, "speedup")
    return keep, left_out


def front(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows (of ``comparable``) on the accuracy/latency Pareto front, fastest first."""
    if rows.empty:
        return rows
    mask = pareto_mask(rows["rel_latency"].to_numpy(float), _num(rows, "top1").to_numpy(float))
    return rows[mask].sort_values(["rel_latency", "top1"], kind="stable")


def winners(rows: pd.DataFrame, fractions: tuple[float, ...] = LATENCY_BUDGETS) -> list[tuple[float, Any]]:
    """Per latency budget F (a fraction of the dense p50): the most accurate row of ``rows``
    (``comparable``) at or under F x dense, the faster one on a tie; None where no row is."""
    out: list[tuple[float, Any]] = []
    for f in fractions:
        under = rows[rows["rel_latency"] <= f]
        if under.empty:
            out.append((f, None))
            continue
        best = under.assign(_acc=-_num(under, "top1")).sort_values(["_acc", "rel_latency"], kind="stable")
        out.append((f, best.iloc[0]))
    return out


def not_faster(rows: pd.DataFrame) -> pd.DataFrame:
    """Compressed rows (of ``comparable``) whose measured speed-up is under ``NOT_FASTER``, the
    ones with the most fewer MACs first: compressed, yet not faster on this target."""
    slow = rows[(rows["method"] != "none") & (_num(rows, "speedup") < NOT_FASTER)]
    return slow.assign(_m=-_num(slow, "macs_ratio")).sort_values(["_m", "speedup"], kind="stable").drop(columns="_m")


# --------------------------------------------------------------------------- predicted latency
PREDICTED = "p50_predicted_ms"


def has_predictions(df: pd.DataFrame) -> bool:
    """Whether any row carries a predicted p50."""
    return PREDICTED in df.columns and _num(df, PREDICTED).notna().any()


def predicted_rows(df: pd.DataFrame) -> pd.DataFrame:
    """ok rows, not emulated, with a measured and a predicted p50, and ``pred_error`` =
    predicted / measured - 1 and ``timing_trusted``."""
    if PREDICTED not in df.columns:
        return df.iloc[0:0].assign(pred_error=[], timing_trusted=[])
    meas, pred = _num(df, "p50_ms"), _num(df, PREDICTED)
    sel = (df["status"] == "ok") & ~emulated(df) & (meas > 0) & (pred > 0)
    out = df[sel].copy()
    out["pred_error"] = pred[sel] / meas[sel] - 1.0
    out["timing_trusted"] = timing_trusted(out)
    return out


def mape(measured: Any, predicted: Any) -> tuple[float, float]:
    """Mean absolute percentage error of ``predicted`` against ``measured`` and the share (in %)
    of points within 10%; NaN for no points."""
    m, p = np.asarray(measured, float), np.asarray(predicted, float)
    if m.size == 0:
        return float("nan"), float("nan")
    ape = np.abs(p - m) / m
    return float(ape.mean() * 100), float((ape <= 0.10 + 1e-12).mean() * 100)  # 2.2 vs 2.0 is within


def _speedup_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """Compressed ok rows, not emulated, with a published (not withheld) speed-up and a predicted one."""
    pred = _num(df, "speedup_predicted")
    sel = (df["status"] == "ok") & ~emulated(df) & (df["method"] != "none") & _num(df, "speedup").notna() & (pred > 0)
    return df[sel]


ERROR_COLUMNS = ["target", "scenario", "rows", "mape_pct", "within_10_pct", "trusted", "mape_trusted_pct",
                 "within_10_trusted_pct", "speedup_rows", "mape_speedup_pct", "within_10_speedup_pct"]


def prediction_error(df: pd.DataFrame) -> pd.DataFrame:
    """Per target and scenario, then per target over all its scenarios ("all", where it has more
    than one): the error |predicted / measured - 1| of ``p50_predicted_ms`` as MAPE (%) and share
    within 10% (%) over every row with a prediction (``rows``), then over the rows whose timing is
    trusted (``trusted``: a suspect p50 measures the machine, not the model), and of
    ``speedup_predicted`` against the row's paired speed-up (``speedup_rows``: compressed rows
    whose speed-up is not withheld; a change of the machine's speed does not move it). The same
    error as ``latency_model.prediction_error``, computed here so the report needs no torch."""
    rows, pairs = predicted_rows(df), _speedup_pairs(df)

    def line(target: str, scenario: str, part: pd.DataFrame, sp: pd.DataFrame) -> dict[str, Any]:
        good = part[part["timing_trusted"]]
        return dict(zip(ERROR_COLUMNS, [
            target, scenario, len(part), *mape(part["p50_ms"].astype(float), part[PREDICTED].astype(float)),
            len(good), *mape(good["p50_ms"].astype(float), good[PREDICTED].astype(float)),
            len(sp), *mape(_num(sp, "speedup"), _num(sp, "speedup_predicted"))]))

    out = []
    for target, tpart in rows.groupby("target", sort=True):
        tpairs = pairs[pairs["target"] == target]
        scenarios = sorted(tpart["scenario"].unique())
        out += [line(target, s, tpart[tpart["scenario"] == s], tpairs[tpairs["scenario"] == s]) for s in scenarios]
        if len(scenarios) > 1:
            out.append(line(target, "all", tpart, tpairs))
    return pd.DataFrame(out, columns=ERROR_COLUMNS)
