"""Method contract, written once and run for every registered method (parametrized from the
registry, so a new plugin is tested the day it is registered)."""
from __future__ import annotations

import pytest
import torch

from harness.data import load_data
from harness.export import export_onnx
from harness.engine.inspection import inspect_model
from harness.macs import count_cost
from harness.models import build_model
from harness.train import BASELINE_RECIPES
from methods import METHODS, Compressed, MethodContext, get_method
from methods.base import PRODUCES

NAMES = METHODS.names()


@pytest.fixture(params=NAMES)
def method(request):
    return get_method(request.param)


def test_declares_itself(method):
    assert method.name and method.summary
    assert method.produces in PRODUCES
    for knob in method.knobs:  # an empty default sweep marks an alternative form, given by the user
        for value in knob.default_sweep:
            knob.check(value)  # defaults are inside the declared range
        assert knob.describe().startswith(knob.name)


def test_default_budgets_validate(method):
    combos = method.budgets()
    assert combos and all(isinstance(c, dict) for c in combos)
    swept = {k.name for k in method.knobs if k.default_sweep}
    assert all(set(c) == swept for c in combos)


@pytest.mark.parametrize("model_name", ["resnet20"])
def test_apply_yields_runnable_exportable_models(method, model_name, tmp_path):
    torch.manual_seed(0)
    model = build_model(model_name)
    data = load_data("synthetic:16", input_size=32)
    ctx = MethodContext(model_name=model_name, model=model, data=data, recipe=BASELINE_RECIPES["quick"],
                        seed=0, workdir=tmp_path, preset="quick", structure_only=True, log=lambda m: None)
    out = method.apply(ctx, method.settings(method.budgets()[0]))
    assert isinstance(out, Compressed) and out.deployables
    assert len({d.variant for d in out.deployables}) == len(out.deployables)
    for dep in out.deployables:
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert dep.model.eval()(x).shape == (2, 10)
        assert count_cost(dep.model, (3, 32, 32)).params > 0
        exporter = dep.export_onnx or export_onnx
        path = exporter(dep.model, tmp_path / f"{dep.variant}.onnx", (3, 32, 32))
        assert path.stat().st_size > 0
        if dep.check_graph is not None:
            assert isinstance(dep.check_graph(path), dict)


def test_inspect_reports_costs(method):
    info = inspect_model("resnet20", method.name)
    assert info["macs"] > 0 and info["params"] > 0 and info["size_bytes"] > 0
    if method.produces == "dense":
        assert info["macs"] == info["dense_macs"]
