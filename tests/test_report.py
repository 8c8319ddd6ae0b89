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
