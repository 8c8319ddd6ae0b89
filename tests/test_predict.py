"""Latency before training: filter-prune's latency budget and aligned widths against a stand-in
predictor, and ``harness predict`` end to end on ort-cpu (real probes, the session's cache)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from harness.data import load_data
from harness.errors import UserError
from harness.macs import count_cost
from harness.models import build_model
from harness.train import BASELINE_RECIPES
from methods.base import MethodContext
from methods.filter_prune import FilterPrune
from methods.pruning.channels import prunable_widths

SHAPE = (3, 32, 32)


def _ctx(tmp_path, predict=None) -> MethodContext:
    torch.manual_seed(0)
    return MethodContext(model_name="resnet20", model=build_model("resnet20"), data=load_data("synthetic:16", input_size=32),
                         recipe=BASELINE_RECIPES["quick"], seed=0, workdir=tmp_path, preset="quick",
                         structure_only=True, log=lambda m: None, predict_latency=predict)


def _staircase(calls: list):
    """A stand-in latency model: cost follows MACs, but a width that is no multiple of 8 costs as
    much as its next multiple of 8 plus 30% (the blocked-layout penalty ORT shows)."""
    dense = count_cost(build_model("resnet20"), SHAPE).macs

    def cost(net) -> float:
        penalty = sum(0.3 for w in prunable_widths(net).values() if w % 8) / 9
        return count_cost(net, SHAPE).macs / dense + penalty

    def predict(nets, target):
        calls.append(target)
        return [cost(n) for n in nets] if isinstance(nets, list) else cost(nets)
    return predict


def test_filter_prune_latency_budget_is_solved_with_the_predictor(tmp_path):
    calls: list = []
    fp = FilterPrune()
    ctx = _ctx(tmp_path, _staircase(calls))
    budgets = fp.budgets({"latency": [0.5]})
    assert budgets == [{"latency": 0.5, "criterion": "gate-taylor"}]  # ratio is dropped: alternatives
    dep = fp.apply(ctx, budgets[0]).deployables[0]
    extra = dep.extra
    assert extra["latency_budget"] == 0.5 and extra["latency_budget_target"] == "ort-cpu"
    assert abs(extra["latency_predicted_frac"] - 0.5) <= 0.05 and set(calls) == {"ort-cpu"}
    assert _staircase([])(dep.model, "x") == pytest.approx(extra["latency_predicted_frac"])
    with pytest.raises(UserError, match="latency model"):
        fp.apply(_ctx(tmp_path), {"latency": 0.5})


def test_filter_prune_align(tmp_path):
    fp = FilterPrune()
    ctx = _ctx(tmp_path, _staircase([]))
    plain = fp.apply(ctx, {"ratio": 0.3}).deployables[0]
    assert set(prunable_widths(plain.model).values()) == {11, 22, 44}
    auto = fp.apply(ctx, {"ratio": 0.3, "align": "auto"}).deployables[0]
    widths = set(prunable_widths(auto.model).values())
    assert all(w % 8 == 0 for w in widths) and auto.extra["filter_prune_align"] != "none"
    assert "none=" in auto.extra["filter_prune_align_predicted"]
    sixteen = fp.apply(_ctx(tmp_path), {"ratio": 0.3, "align": "16"}).deployables[0]
    assert set(prunable_widths(sixteen.model).values()) == {16, 48}  # 11 -> 16, 22 -> 16, 44 -> 48
    assert sixteen.model(torch.zeros(1, *SHAPE)).shape == (1, 10)
    with pytest.raises(UserError, match="latency_target"):
        fp.validate({"ratio": 0.3, "latency_target": "ov-cpu"})


def test_filter_prune_latency_budget_is_the_aligned_networks(tmp_path):
    """With align=auto the ratio is solved over the networks as aligned: the deployed network's
    prediction is the one that meets the budget (aligning after the solve could miss it far)."""
    fp = FilterPrune()
    budget = fp.budgets({"latency": [0.5], "align": ["auto"]})[0]
    dep = fp.apply(_ctx(tmp_path, _staircase([])), budget).deployables[0]
    assert dep.extra["filter_prune_align"] != "none"
    assert all(w % 8 == 0 for w in prunable_widths(dep.model).values())
    assert abs(dep.extra["latency_predicted_frac"] - 0.5) <= 0.05
    assert _staircase([])(dep.model, "x") == pytest.approx(dep.extra["latency_predicted_frac"])


def _harness(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=600)


def test_predict_command(cpu_targets):
    if "ort-cpu" not in cpu_targets:
        pytest.skip("ort-cpu is not available")
    proc = _harness("predict", "--model", "resnet20", "--methods", "layer-prune", "--budgets",
                    "layer-prune:layers=4", "--targets", "ort-cpu", "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["method"] for r in rows] == ["none", "layer-prune"]
    dense, pruned = rows
    assert dense["p50_predicted_ms"] > 0 and dense["p50_predicted_note"].startswith("measured")
    assert 0 < pruned["p50_predicted_ms"] < dense["p50_predicted_ms"] and pruned["speedup_predicted"] > 1
    assert "probe cell" in proc.stderr  # progress lines
    bad = _harness("predict", "--model", "resnet20", "--targets", "nope")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "nope" in bad.stderr
