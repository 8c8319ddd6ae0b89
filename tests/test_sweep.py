"""End-to-end sweeps through the Python API on the embedded digits data, with tiny recipes."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from contextlib import contextmanager

import pandas as pd
import pytest
import torch

from conftest import FAST_RECIPE, FAST_TIMING, require_targets
from harness.engine.config import SweepConfig
from harness.errors import UserError
from harness.export import file_sha256
from harness.macs import count_cost
from harness.engine.report import COLUMNS
from harness.engine.sweep import plan_sweep, run_sweep
from methods import METHODS
from targets import TARGETS

REQUIRED = ["model", "method", "knob", "budget", "target", "scenario", "status", "error", "top1", "top1_drop",
            "parity_max_abs", "parity_top1_agree", "macs", "params", "size_bytes", "p50_ms", "p90_ms", "p99_ms",
            "mean_ms", "std_ms", "n", "throughput", "compile_s", "first_run_ms", "train_s", "speedup",
            "macs_ratio", "realised_share", "artifact", "threads", "cpu", "preset", "git_rev", "started",
            "versions"]


def _config(tmp_path, targets, **kw) -> SweepConfig:
    base = dict(models=["resnet20"], methods=["none"], data="digits", preset="quick", recipe=FAST_RECIPE,
                timing=FAST_TIMING, out=tmp_path / "out", targets=targets, progress=False, pool_size=32, offline_batch=16,
                noise={"settle_s": 2.0})
    base.update(kw)
    return SweepConfig(**base)


@contextmanager
def registered(registry, name, entry):
    registry.register(name, entry)
    try:
        yield
    finally:
        registry._entries.pop(name, None)
        registry._loaded.pop(name, None)


@pytest.mark.slow
def test_sweep_end_to_end(tmp_path, cpu_targets):
    cfg = _config(tmp_path, cpu_targets)
    rows = run_sweep(cfg)
    assert len(rows) == len(cpu_targets) * 2
    assert {r["status"] for r in rows} == {"ok"}, [r.get("error") for r in rows]
    for name in ("results.csv", "results.md", "pareto.png", "results.sqlite"):
        assert (cfg.out / name).stat().st_size > 0
    df = pd.read_csv(cfg.out / "results.csv")
    assert set(REQUIRED) <= set(df.columns) and list(df.columns[: len(COLUMNS) - 1]) == COLUMNS[:-1]
    assert (df["top1"] > 85).all()  # two epochs on digits; the default recipe reaches ~98%
    assert (df["parity_max_abs"] < 1e-3).all() and (df["parity_top1_agree"] == 100).all()
    trusted = df["timing_ok"].astype(bool)
    assert (df.loc[trusted, "speedup"] == 1.0).all() and df.loc[~trusted, "speedup"].isna().all()
    assert (df["macs_ratio"] == 1.0).all()
    # every row says what the machine was doing and whether its timing is trusted
    assert df["timing_tries"].between(1, 3).all() and df["other_cpu_share"].between(0, 1).all()
    assert (df.loc[~trusted, "timing_suspect"].fillna("").astype(str).str.len() > 0).all()  # CSV reads an all-empty column as NaN
    assert (df["top1_drop"] == 0).all()
    assert set(df["scenario"]) == {"SingleStream", "Offline"}
    assert (df.loc[df["scenario"] == "Offline", "batch"] == 16).all()
    assert (df["p50_ms"] > 0).all() and (df["n"] >= FAST_TIMING.min_n).all()
    assert df["git_rev"].notna().all() and df["cpu"].notna().all()
    # the latency model: SingleStream cells of default targets time its probes (the dense network
    # is measured whole); Offline rows and opt-in targets (tvm-cpu) say why they have no prediction
    from targets import get_target

    auto = (df["scenario"] == "SingleStream") & ~df["target"].map(lambda t: bool(get_target(t).opt_in))
    assert auto.any()
    assert (df.loc[auto, "p50_predicted_ms"] > 0).all() and (df.loc[auto, "speedup_predicted"] == 1).all()
    assert df.loc[~auto, "p50_predicted_ms"].isna().all()
    assert df.loc[~auto, "p50_predicted_note"].str.contains("latency model").all()
    md = (cfg.out / "results.md").read_text()
    assert "## resnet20 on digits, SingleStream" in md and "## resnet20 on digits, Offline" in md
    assert "multiply-accumulates" in md and "nearest rank" in md
    # the metadata is true: recompute MACs/params from the exported artifact's module
    for _, row in df.iterrows():
        module = torch.load(cfg.out / row["artifact"].replace(".onnx", ".pt"), weights_only=False)
        cost = count_cost(module, (3, 32, 32))
        assert (row["macs"], row["params"]) == (cost.macs, cost.params)
        assert row["artifact_sha256"] == file_sha256(cfg.out / row["artifact"])  # names what ran


@pytest.mark.slow
def test_resume_skips_finished_cells_and_never_duplicates(tmp_path, cpu_targets, capfd):
    cfg = _config(tmp_path, cpu_targets[:1], scenarios=["SingleStream"])
    first = run_sweep(cfg)
    cells = [line for line in capfd.readouterr().err.splitlines() if "] cell " in line]
    assert cells[-1].endswith(f"| {len(first)}/{len(first)} cells done, about 0.0 min left"), cells
    again = run_sweep(cfg)
    assert [(r["key"], r["written"]) for r in again] == [(r["key"], r["written"]) for r in first]
    # a sweep killed before its last cell: the missing cell alone is measured on the next run
    db = sqlite3.connect(cfg.out / "results.sqlite")
    db.execute("DELETE FROM rows WHERE key = ?", (first[0]["key"],))
    db.commit()
    third = run_sweep(cfg)
    assert len(third) == len(first) and third[0]["key"] == first[0]["key"]
    assert third[0]["written"] >= first[0]["written"]


def test_a_rerun_without_the_artifacts_compresses_nothing_finished(tmp_path, cpu_targets, capfd):
    """results/regenerate.sh removes a published folder's artifacts: an unchanged re-run must not
    fine-tune every method again to rebuild files no cell needs (only the dense export, the
    reference any unfinished cell would need, is made again)."""
    cfg = _config(tmp_path, cpu_targets[:1], scenarios=["SingleStream"], methods=["none", "layer-prune"],
                  budgets={"layer-prune": {"layers": ["1"]}})
    first = run_sweep(cfg)
    capfd.readouterr()
    shutil.rmtree(cfg.artifact_dir)
    again = run_sweep(cfg)
    err = capfd.readouterr().err
    assert [(r["key"], r["written"]) for r in again] == [(r["key"], r["written"]) for r in first]
    assert any("layer-prune" in line and "all cells finished earlier, skipped" in line for line in err.splitlines())
    assert not any("layer-prune" in line and ": compressed" in line for line in err.splitlines()), err


@pytest.mark.slow
def test_synthetic_rows_never_have_accuracy(tmp_path, cpu_targets):
    rows = run_sweep(_config(tmp_path, cpu_targets[:1], data="synthetic:32"))
    assert rows and all(r["status"] == "ok" and r["synthetic"] for r in rows)
    assert all(r.get("top1") is None and r.get("top1_torch") is None for r in rows)
    assert all(r["parity_max_abs"] < 1e-3 for r in rows)
    assert all(r["eval_n"] <= 16 and r["pool_inputs"] <= 64 for r in rows)  # no hundreds of MB of arrays
    assert "synthetic inputs: latency only" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.slow
def test_failures_are_rows_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the cell process imports the plugins
    with registered(METHODS, "test-fail", "support_plugins:FailingMethod"), \
            registered(METHODS, "test-picky", "support_plugins:PickyMethod"), \
            registered(TARGETS, "test-crash", "support_plugins:CrashTarget"), \
            registered(TARGETS, "test-hang", "support_plugins:HangTarget"):
        cfg = _config(tmp_path, ["torch-eager", "test-crash", "test-hang"], scenarios=["SingleStream"],
                      methods=["test-fail", "test-picky"], cell_timeout_s=20)
        rows = {(r["method"], r["target"]): r for r in run_sweep(cfg)}
    assert rows[("none", "torch-eager")]["status"] == "ok"
    crash = rows[("none", "test-crash")]
    assert crash["status"] == "error" and "SIGABRT" in crash["error"]
    hang = rows[("none", "test-hang")]
    assert hang["status"] == "timeout" and "20 s" in hang["error"]
    fail = rows[("test-fail", "torch-eager")]
    assert fail["status"] == "error" and "deliberate failure in apply" in fail["error"]
    assert rows[("test-picky", "torch-eager")]["status"] == "ok"
    skipped = rows[("test-picky", "test-crash")]
    assert skipped["status"] == "skipped" and "which test-crash does not have" in skipped["error"]


def test_an_emulated_board_declines_batches_and_builds_no_latency_model(tmp_path, monkeypatch):
    """A target that declines a cell (NotMeasured) gives a skipped row naming its board; rows
    timed on an emulated board get no latency-model probes (their latencies mean nothing)."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the cell process imports the plugins
    with registered(TARGETS, "test-emulated", "support_plugins:EmulatedBoardTarget"):
        rows = {r["scenario"]: r for r in run_sweep(_config(tmp_path, ["test-emulated"]))}
    single, offline = rows["SingleStream"], rows["Offline"]
    assert single["status"] == "ok" and single["emulated"] and single["board"] == "fakeqemu"
    assert single["p50_predicted_ms"] is None
    assert "no latency model on an emulated board" in single["p50_predicted_note"]
    assert offline["status"] == "skipped" and "batch 16 (Offline) is not run on an emulated board" in offline["error"]
    assert offline["emulated"] and offline["board"] == "fakeqemu"


def test_budgets_of_a_model_share_cells_with_one_dense_reference(tmp_path, cpu_targets):
    """A method's budgets on one target and scenario are timed in one cell (at most cell_items
    networks), each interleaved with the same dense reference; the dense network has its own."""
    target = cpu_targets[0]
    with registered(METHODS, "test-copy", "support_plugins:CopyMethod"):
        cfg = _config(tmp_path, [target], scenarios=["SingleStream"], methods=["test-copy"], cell_items=2)
        rows = run_sweep(cfg)
    assert {r["status"] for r in rows} == {"ok"}, [r["error"] for r in rows]
    copies = sorted((r for r in rows if r["method"] == "test-copy"), key=lambda r: r["measure_start"])
    dense = [r for r in rows if r["method"] == "none"]
    assert len(copies) == 3 and len(dense) == 1
    cells = {(r["measure_start"], r["measure_end"]) for r in copies}
    assert len(cells) == 2  # 3 budgets, 2 per cell
    first, second = copies[0], copies[1]
    assert (first["measure_start"], first["ref_p50_ms"]) == (second["measure_start"], second["ref_p50_ms"])
    assert all(r["ref_interleaved"] for r in copies) and not dense[0]["ref_interleaved"]
    assert (dense[0]["measure_start"], dense[0]["measure_end"]) not in cells


def test_plan_rejects_bad_input_before_running(tmp_path):
    with registered(METHODS, "test-fail", "support_plugins:FailingMethod"):
        with pytest.raises(UserError, match=r"ratio=1.5 out of range"):
            plan_sweep(_config(tmp_path, ["torch-eager"], methods=["test-fail"],
                               budgets={"test-fail": {"ratio": ["1.5"]}}))
    with pytest.raises(UserError, match="unknown model 'resnet21'"):
        plan_sweep(_config(tmp_path, ["torch-eager"], models=["resnet21"]))
    with pytest.raises(UserError, match="unknown target 'ort'; did you mean: ort-cpu"):
        plan_sweep(_config(tmp_path, ["ort"]))
    with pytest.raises(UserError, match="not available here"):
        plan_sweep(_config(tmp_path, ["trt"]))
    with pytest.raises(UserError, match="not in the sweep"):
        plan_sweep(_config(tmp_path, ["torch-eager"], budgets={"deepshift": {"mode": ["q"]}}))
    assert not (tmp_path / "out").exists()  # nothing was created before validation passed


@pytest.mark.slow
def test_sweep_on_cifar10_and_imagefolder_formats(tmp_path, cifar_root, folder_root, cpu_targets):
    for spec, classes in ((f"cifar10:{cifar_root}", 10), (f"imagefolder:{folder_root}", 3)):
        out = tmp_path / spec.split(":")[0]
        rows = run_sweep(_config(tmp_path, cpu_targets[:1], data=spec, out=out, scenarios=["SingleStream"],
                                 recipe=FAST_RECIPE.with_(steps=1)))
        assert len(rows) == 1 and rows[0]["status"] == "ok", rows[0].get("error")
        assert rows[0]["data"] == spec and rows[0]["top1"] is not None and rows[0]["parity_max_abs"] < 1e-3
        assert rows[0]["eval_n"] == 6
        module = torch.load(out / rows[0]["artifact"].replace(".onnx", ".pt"), weights_only=False)
        assert module.fc.out_features == classes


@pytest.mark.slow
def test_methods_can_probe_latency_on_a_target(tmp_path, monkeypatch):
    require_targets("ort-cpu")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    with registered(METHODS, "test-probe", "support_plugins:ProbingMethod"):
        rows = run_sweep(_config(tmp_path, ["ort-cpu"], methods=["test-probe"], scenarios=["SingleStream"]))
    probe = [r for r in rows if r["method"] == "test-probe"][0]
    assert probe["status"] == "ok" and 0.7 < probe["probe_fraction"] < 1.3  # A/A: about 1


def test_time_left_sums_the_past_timings_of_the_jobs_still_to_run(tmp_path):
    """The estimate the dry run prints and every progress line ends with: per job still to run,
    the store's mean seconds for its kind; a kind with no past timing makes it a floor."""
    from harness.engine.plan import summarize_plan
    from harness.engine.store import Store

    cfg = _config(tmp_path, ["torch-eager"], artifacts=tmp_path / "art")  # no cached baseline
    plan = plan_sweep(cfg)
    store = Store(tmp_path / "s.sqlite")
    try:
        assert summarize_plan(plan, store, tmp_path / "art" / "baselines").time_left() == "time left not known yet"
        store.add_phase("a", "compress", "none", 60.0)
        for seconds in (20.0, 40.0):  # two past cells of this kind: their mean counts
            store.add_phase("b", "cell", "torch-eager:SingleStream", seconds)
            store.add_phase("c", "cell", "torch-eager:Offline", seconds)
        floor = summarize_plan(plan, store, tmp_path / "art" / "baselines")
        assert floor.partial and floor.estimate_s == 60 + 2 * 30  # the baseline has no past timing
        assert floor.time_left() == "at least 2.0 min left" and floor.total["measure"] == 2
        store.add_phase("d", "baseline", "resnet20", 180.0)
        full = summarize_plan(plan, store, tmp_path / "art" / "baselines")
        assert not full.partial and full.estimate_s == 300 and full.time_left() == "about 5.0 min left"
    finally:
        store.close()


def test_default_targets_leave_out_opt_in_ones(tmp_path):
    """Without --targets, an opt-in target (untuned TVM) is left out with its reason; named, it is in."""
    plan = plan_sweep(_config(tmp_path, None))
    keys = [t.key for t in plan.targets]
    assert "tvm-cpu" not in keys and "torch-eager" in keys
    from targets import get_target

    if get_target("tvm-cpu").availability().ok:
        assert plan.skipped_targets["tvm-cpu"].startswith("opt-in: untuned TVM")
        assert [t.key for t in plan_sweep(_config(tmp_path, ["tvm-cpu"])).targets] == ["tvm-cpu"]
