"""Derived columns and the published files, from hand-made rows."""
import numpy as np
import pandas as pd
import pytest

from harness.engine.report import _pareto_mask, derive, publish


def _row(method, p50, macs, top1, target="ort-cpu", baseline="b1", **kw):
    return {"model": "resnet20", "data": "digits", "method": method, "budget": "", "variant": "default",
            "target": target, "scenario": "SingleStream", "batch": 1, "preset": "quick", "threads": 2,
            "baseline_key": baseline, "status": "ok", "p50_ms": p50, "macs": macs, "top1": top1,
            "synthetic": False, "cpu": "cpu", "cpu_count": 2, "gpu": "none", "git_rev": "abc", **kw}


def test_ratios_against_the_dense_row_of_the_same_target_and_baseline():
    rows = [_row("none", 2.0, 400, 98.0), _row("x", 1.0, 100, 97.5),
            _row("none", 4.0, 400, 98.0, target="ov-cpu"), _row("x", 3.0, 100, 96.0, target="ov-cpu"),
            _row("x", 1.0, 100, 90.0, baseline="other")]  # no dense row for this baseline
    df = derive(rows).set_index(["method", "target", "baseline_key"])
    r = df.loc[("x", "ort-cpu", "b1")]
    assert (r["speedup"], r["macs_ratio"], r["realised_share"]) == (2.0, 4.0, 0.5)
    assert r["top1_drop"] == pytest.approx(0.5)
    assert df.loc[("x", "ov-cpu", "b1")]["speedup"] == pytest.approx(4 / 3)
    assert np.isnan(df.loc[("x", "ort-cpu", "other")]["speedup"])
    assert df.loc[("none", "ort-cpu", "b1")]["speedup"] == 1.0


def test_pareto_front():
    lat = np.array([1.0, 2.0, 3.0, 1.5])
    acc = np.array([90.0, 95.0, 94.0, 89.0])
    assert _pareto_mask(lat, acc).tolist() == [True, True, False, False]


def test_publish_writes_three_files_with_errors_listed(tmp_path):
    rows = [_row("none", 2.0, 400, 98.0), {**_row("x", None, 100, None), "status": "error", "error": "boom"}]
    paths = publish(tmp_path, rows)
    assert all(p.stat().st_size > 0 for p in paths.values())
    md = paths["md"].read_text()
    assert "## resnet20 on digits, SingleStream" in md and "x[] on ort-cpu: error: boom" in md
    assert len(pd.read_csv(paths["csv"])) == 2


def test_results_md_names_every_command_and_revision_that_made_its_rows(tmp_path):
    rows = [_row("none", 2.0, 400, 98.0, command="python -m harness sweep --preset quick", written="1"),
            _row("x", 1.0, 100, 97.5, command="python -m harness sweep --methods x", git_rev="def+dirty", written="2"),
            _row("y", 1.0, 100, 97.5)]  # a row from before the command was recorded
    md = publish(tmp_path, rows)["md"].read_text()
    assert "git abc, def+dirty" in md
    assert md.index("- Made by: `python -m harness sweep --preset quick`") < md.index(
        "- Made by: `python -m harness sweep --methods x`")
    assert "- Made by: not recorded for 1 row(s)" in md


def test_machine_line_comes_from_a_row_that_ran(tmp_path):
    err = {**_row("x", None, None, None), "status": "error", "error": "boom", "cpu": None, "cpu_count": None,
           "gpu": None}
    md = publish(tmp_path, [err, _row("none", 2.0, 400, 98.0)])["md"].read_text()
    assert "- Machine: cpu (2 CPUs), GPU: none" in md


def test_results_md_opens_with_the_study_summary_and_keeps_it_when_republished(tmp_path):
    (tmp_path / "summary.md").write_text("# Study: X vs Y\n\nClaim: X is faster. Held here: no.\n")
    rows = [_row("none", 2.0, 400, 98.0), _row("x", 1.0, 100, 97.5)]
    for _ in range(2):  # the second publish must not lose or double the summary
        md = publish(tmp_path, rows)["md"].read_text()
        assert md.startswith("# Study: X vs Y\n\nClaim: X is faster. Held here: no.\n\n# Latency vs accuracy")
        assert md.count("Claim: X is faster") == 1
    (tmp_path / "summary.md").unlink()
    assert publish(tmp_path, rows)["md"].read_text().startswith("# Latency vs accuracy")


def test_method_details_table_shows_the_declared_columns(tmp_path, monkeypatch):
    from methods import METHODS
    from methods.none import NoCompression

    class Detailed(NoCompression):
        name = "detailed"
        report_columns = ("chosen_rank", "absent_column")

    monkeypatch.setitem(METHODS._entries, "detailed", Detailed)
    monkeypatch.setitem(METHODS._loaded, "detailed", Detailed())
    rows = [_row("none", 2.0, 400, 98.0), _row("detailed", 1.0, 100, 97.0, chosen_rank=7),
            _row("detailed", 1.1, 100, 97.0, target="ov-cpu", chosen_rank=7)]
    md = publish(tmp_path, rows)["md"].read_text()
    details = md.split("## resnet20: detailed details")[1]
    assert "chosen_rank" in details and "absent_column" not in details
    assert details.count(" 7 |") == 1  # one line per network, not per target


def test_speedup_is_withheld_by_its_own_verdict_where_the_row_has_a_paired_ratio():
    rows = [_row("none", 2.0, 400, 98.0),
            # latency suspect (the machine drifted) but the paired ratios agree: the ratio stands
            _row("x", 1.0, 100, 97.0, budget_tag="drifted", timing_ok=False, ratio_ok=True, speedup_interleaved=1.9),
            # paired ratios disagree: withheld, whatever the latency verdict
            _row("x", 1.0, 100, 97.0, budget_tag="split", timing_ok=True, ratio_ok=False, speedup_interleaved=1.9),
            # no interleaved reference (older rows): the latency verdict decides
            _row("x", 1.0, 100, 97.0, budget_tag="old", timing_ok=False)]
    df = derive(rows).set_index("budget_tag")
    assert df.loc["drifted", "speedup"] == pytest.approx(1.9)
    assert np.isnan(df.loc["split", "speedup"]) and np.isnan(df.loc["old", "speedup"])


# ------------------------------------------------------------------------------- report.md
from harness.engine import report_analysis as ra  # noqa: E402
from harness.engine.report_page import summary_lines  # noqa: E402


def _knobbed(method, p50, top1, knob, budget, variant="default", macs=100, **kw):
    return {**_row(method, p50, macs, top1, **kw), "knob": knob, "budget": budget, "variant": variant}


def test_budgets_read_as_knob_value_pairs():
    assert ra.budget_pairs("r,mode,pool", "0.88,decoupled,max") == "r=0.88 mode=decoupled pool=max"
    assert ra.budget_pairs("layers", "half") == "layers=half"
    assert ra.budget_pairs(np.nan, np.nan) == ""  # the dense row
    assert ra.budget_pairs("a,b", "1,2,3") == "1,2,3"  # a value with a comma: shown as it is
    row = {"method": "deepshift", "knob": "mode,weight_bits", "budget": "ps,5", "variant": "int8"}
    assert ra.row_name(row) == "deepshift mode=ps weight_bits=5 [int8]"
    assert ra.row_name({"method": "none", "knob": np.nan, "budget": np.nan, "variant": "default"}) == "dense"


def test_short_names_keep_only_the_knobs_that_differ():
    df = pd.DataFrame([
        {"method": "deepshift", "knob": "mode,weight_bits", "budget": "ps,5", "variant": "default"},
        {"method": "deepshift", "knob": "mode,weight_bits", "budget": "q,5", "variant": "int8"},
        {"method": "ftwt", "knob": "r,mode", "budget": "0.88,decoupled", "variant": "default"},
        {"method": "none", "knob": np.nan, "budget": np.nan, "variant": "default"}])
    assert ra.short_names(df).tolist() == ["deepshift mode=ps", "deepshift mode=q [int8]", "ftwt r=0.88", "dense"]


def test_comparable_rows_leave_out_withheld_and_emulated_ones_and_count_them():
    rows = [_row("none", 2.0, 400, 98.0, timing_ok=False),  # dense: 1.0x by definition, even if its ms is suspect
            _knobbed("a", 1.0, 97.0, "k", "1", timing_ok=False, ratio_ok=True, speedup_interleaved=2.0),
            _knobbed("b", 0.5, 99.0, "k", "2", timing_ok=True, ratio_ok=False, speedup_interleaved=4.0),
            _knobbed("c", 0.4, 99.5, "k", "3", timing_ok=False),  # no paired ratio: the latency verdict decides
            _knobbed("d", 0.2, 99.9, "k", "4", emulated=True)]
    comp, left_out = ra.comparable(derive(rows))
    assert sorted(comp["method"]) == ["a", "none"]
    assert comp.set_index("method")["rel_latency"].to_dict() == {"none": 1.0, "a": 0.5}
    assert left_out == {"emulated board (its latency means nothing)": 1, "suspect timing or speed-up (withheld)": 2}
    # b, c and d would each dominate the whole front: none of them may be on it
    assert ra.front(comp)["method"].tolist() == ["a", "none"]


def _comparable(points):
    """Hand-made comparable rows: (method, budget, rel_latency, top1, macs_ratio)."""
    return pd.DataFrame([{"method": m, "knob": "k" if b else np.nan, "budget": b or np.nan, "variant": "default", "rel_latency": rel,
                          "speedup": 1 / rel, "top1": acc, "top1_drop": 90.0 - acc, "macs_ratio": mr}
                         for m, b, rel, acc, mr in points])


def test_winner_at_each_latency_budget_is_the_most_accurate_row_under_it():
    rows = _comparable([("none", "", 1.0, 90.0, 1.0), ("a", "1", 0.45, 80.0, 3.0), ("a", "2", 0.62, 85.0, 2.0),
                        ("b", "1", 0.66, 88.0, 1.0), ("b", "2", 0.55, 88.0, 1.0), ("c", "1", 0.85, 89.5, 1.3)])
    won = {f: (None if r is None else (r["method"], r["budget"])) for f, r in ra.winners(rows, (0.4, 0.5, 0.7, 0.9))}
    # 0.4: nothing that fast; 0.5: the only one; 0.7: b at 0.55x and 0.66x tie on accuracy, the faster wins
    assert won == {0.4: None, 0.5: ("a", "1"), 0.7: ("b", "2"), 0.9: ("c", "1")}


def test_summary_names_the_rows_with_fewer_macs_that_are_not_faster():
    rows = _comparable([("none", "", 1.0, 90.0, 1.0), ("ftwt", "1", 2.5, 88.0, 1.6), ("dec", "1", 1.0 / 1.04, 89.0, 1.2),
                        ("shift", "1", 1.0, 90.0, 1.0), ("prune", "1", 0.5, 87.0, 2.0)])
    slow = ra.not_faster(rows)
    assert slow["method"].tolist() == ["ftwt", "dec", "shift"]  # most fewer MACs first; 1.04x is not faster
    text = "\n".join(summary_lines(rows, {"suspect timing or speed-up (withheld)": 2}, ra.short_names(rows)))
    assert "**Fewer MACs, not faster**" in text and "ftwt k=1: 1.60x fewer MACs, 0.400x speed-up" in text
    assert "Not faster either, at about the dense MACs: shift k=1 (1.000x)" in text
    assert ("Pareto front, fastest first: prune k=1 (0.50x, 87.00%); dec k=1 (0.96x, 89.00%); dense (1.00x, 90.00%); "
            "shift k=1 (1.00x, 90.00%)") in text  # a tie with dense is on the front too
    assert "Left out here and in the figures: 2 suspect timing or speed-up (withheld)" in text


def test_mape_and_share_within_ten_percent():
    err, within = ra.mape([1.0, 2.0, 4.0, 10.0], [1.05, 2.4, 4.0, 9.0])
    assert err == pytest.approx((5 + 20 + 0 + 10) / 4)
    assert within == pytest.approx(75.0)  # 10% exactly counts as within
    assert all(np.isnan(v) for v in ra.mape([], []))


def test_prediction_error_per_target_over_all_rows_trusted_timings_and_speedups():
    rows = [_row("none", 2.0, 400, 98.0, p50_predicted_ms=2.2),
            _row("x", 1.0, 100, 97.0, p50_predicted_ms=1.0, speedup_predicted=2.0),
            _row("y", 1.0, 100, 97.0, p50_predicted_ms=3.0, timing_ok=False, speedup_predicted=2.0),  # suspect
            _row("z", 1.0, 100, 97.0, p50_predicted_ms=1.2, speedup_predicted=3.0, ratio_ok=True, speedup_interleaved=2.5),
            _row("x", 1.0, 100, 97.0, target="ov-cpu", scenario="Offline", p50_predicted_ms=1.5),
            _row("x", 1.0, 100, 97.0, target="ov-cpu", p50_predicted_ms=None),
            _row("x", 1.0, 100, 97.0, target="tvm-cpu", p50_predicted_ms=1.1),
            _row("x", 2.0, 100, 97.0, target="tvm-cpu", scenario="Offline", p50_predicted_ms=2.0)]
    err = ra.prediction_error(derive(rows)).set_index(["target", "scenario"])
    ort = err.loc[("ort-cpu", "SingleStream")]
    assert ort[["rows", "mape_pct", "within_10_pct"]].tolist() == pytest.approx([4, (10 + 0 + 200 + 20) / 4, 50.0])
    assert ort[["trusted", "mape_trusted_pct", "within_10_trusted_pct"]].tolist() == \
        pytest.approx([3, (10 + 0 + 20) / 3, 200 / 3])
    # speed-ups: x 2.0 vs 2.0, z 3.0 vs its paired 2.5; y's speed-up is withheld (suspect, no paired ratio)
    assert ort[["speedup_rows", "mape_speedup_pct", "within_10_speedup_pct"]].tolist() == pytest.approx([2, 10.0, 50.0])
    assert err.loc[("ov-cpu", "Offline"), "mape_pct"] == pytest.approx(50.0)
    assert ("ov-cpu", "SingleStream") not in err.index  # its row has no prediction
    # a target predicted in two scenarios gets a line over both
    assert err.loc[("tvm-cpu", "all")][["rows", "mape_pct"]].tolist() == pytest.approx([2, 5.0])
    assert ("ort-cpu", "all") not in err.index and ("ov-cpu", "all") not in err.index


def _sweep_rows():
    return [_row("none", 2.0, 400, 98.0),
            _knobbed("ftwt", 4.0, 96.0, "r,mode", "0.88,decoupled", macs=250),
            _knobbed("layer-prune", 1.0, 90.0, "layers,criterion", "half,gate-taylor", macs=200),
            _knobbed("layer-prune", 0.8, 99.0, "layers,criterion", "2,gate-taylor", macs=300,
                     ratio_ok=False, speedup_interleaved=2.5),
            _row("none", 3.0, 400, 98.0, target="ov-cpu"),
            _knobbed("layer-prune", 2.0, 90.0, "layers,criterion", "half,gate-taylor", macs=200, target="ov-cpu"),
            {**_knobbed("ftwt", None, None, "r,mode", "0.88,decoupled", target="ov-cpu"), "status": "skipped",
             "error": "needs runtime_weight_shapes"}]


def test_report_md_has_its_sections_figures_and_readable_tables(tmp_path):
    paths = publish(tmp_path, _sweep_rows())
    md = paths["report"].read_text()
    for section in ("## resnet20 on digits", "### Summary", "### Accuracy vs latency",
                    "### Realised vs theoretical speed-up", "### Predicted vs measured latency",
                    "### Rows: SingleStream", "**Accuracy**", "**Latency**", "**Cost**", "**Provenance**"):
        assert section in md, section
    assert "[results.csv](results.csv)" in md
    assert "No predictions in these rows" in md
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert figures == ["resnet20-digits-front-ort-cpu.png", "resnet20-digits-front-ov-cpu.png",
                       "resnet20-digits-speedup.png"]
    for name in figures:
        assert f"](figures/{name})" in md
        assert (tmp_path / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| layers=half criterion=gate-taylor " in md and "half,gate-taylor" not in md
    assert "Not measured: ftwt r=0.88 mode=decoupled on ov-cpu: skipped: needs runtime_weight_shapes" in md
    # the withheld 0.32x row (it would win every budget) is counted, not shown as a winner
    summary = md.split("### Accuracy vs latency")[0]
    assert "layers=2" not in summary.split("Left out")[0]
    assert "1 suspect timing or speed-up (withheld)" in summary
    assert "**ftwt r=0.88**" not in summary and "ftwt r=0.88: 1.60x fewer MACs, 0.500x speed-up" in summary
    assert "**layer-prune layers=half**: 0.50x, 90.00% (-8.00)" in summary


def test_report_md_shows_the_prediction_error_and_drops_stale_figures(tmp_path):
    rows = [{**r, "p50_predicted_ms": r["p50_ms"] * 1.05} if r["p50_ms"] else r for r in _sweep_rows()]
    md = publish(tmp_path, rows)["report"].read_text()
    assert "| ort-cpu  | SingleStream |" in md and "5.0%" in md and "No predictions" not in md
    assert (tmp_path / "figures" / "resnet20-digits-predicted.png").is_file()
    publish(tmp_path, [r for r in _sweep_rows() if r["target"] == "ort-cpu"])  # the predictions and ov-cpu gone
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "resnet20-digits-front-ort-cpu.png", "resnet20-digits-speedup.png"]


def test_report_is_rebuilt_byte_for_byte(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        publish(tmp_path / name, _sweep_rows())
    assert (tmp_path / "a" / "report.md").read_text() == (tmp_path / "b" / "report.md").read_text()
    for png in (tmp_path / "a" / "figures").iterdir():
        assert png.read_bytes() == (tmp_path / "b" / "figures" / png.name).read_bytes()


def test_report_md_survives_rows_with_nothing_to_compare(tmp_path):
    emulated = [{**r, "emulated": True, "p50_predicted_ms": 1.0} for r in _sweep_rows()]
    md = publish(tmp_path, emulated)["report"].read_text()
    assert "no compressed row to compare" in md and "No prediction on an ok row" in md
    assert "emulated board (its latency means nothing)" in md
    synthetic = [{**r, "top1": None, "synthetic": True} for r in _sweep_rows()]
    assert "no accuracy (synthetic inputs)" in publish(tmp_path, synthetic)["report"].read_text()
    comp, left_out = ra.comparable(derive(synthetic), accuracy=False)  # the speed-up figure needs no accuracy
    assert len(comp) == 5 and left_out == {"suspect timing or speed-up (withheld)": 1}
    failed = [{**r, "status": "error", "error": "boom"} for r in _sweep_rows()]
    assert "Not measured: dense on ort-cpu: error: boom" in publish(tmp_path, failed)["report"].read_text()
