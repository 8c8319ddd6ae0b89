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
        for value in knob.default_sweep + (knob.quick_sweep or ()):
            knob.check(value)  # defaults are inside the declared range
        assert knob.describe().startswith(knob.name)


@pytest.mark.parametrize("preset", ["quick", "standard"])
def test_default_budgets_validate(method, preset):
    combos = method.budgets(preset=preset)
    assert combos and all(isinstance(c, dict) for c in combos)
    swept = {k.name for k in method.knobs if k.sweep(preset)}
    assert all(set(c) == swept for c in combos)
    if preset == "quick":  # the quick default sweep keeps every method, with fewer budgets
        assert len(combos) <= len(method.budgets())


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


def test_apply_always_receives_typed_settings(tmp_path):
    """Whoever calls apply (the sweep, inspect, a test), every knob with a default is filled in;
    given values win; settings are idempotent."""
    from harness.knobs import Knob
    from methods.base import Deployable, Method

    seen = []

    class Probe(Method):
        name, summary = "probe", "records what apply receives"
        knobs = (Knob("a", int, (1,), default=7), Knob("b", str, (), default="x"), Knob("c", float, ()))

        def apply(self, ctx, knobs):
            seen.append(dict(knobs))
            return Compressed([Deployable(ctx.model)])

    probe = Probe()
    ctx = MethodContext(model_name="resnet20", model=torch.nn.Identity(), data=None, recipe=None, seed=0,
                        workdir=tmp_path)
    probe.apply(ctx, {"a": 2})
    probe.apply(ctx, probe.settings({"c": 0.5}))
    assert seen == [{"a": 2, "b": "x"}, {"a": 7, "b": "x", "c": 0.5}]


def test_one_length_table_for_every_preset(tmp_path):
    """Fine-tunes: quick 120 / standard 2,000 steps at batch 32, publication = the paper's steps at
    the paper's batch; training runs are as long as the preset's baseline; the shape is kept."""
    from harness.errors import UserError
    from harness.train import TrainRecipe
    from methods.recipes import preset_recipe, recipe_columns

    shape = TrainRecipe(lr=1e-3, batch_size=128, schedule="multistep", milestones=(1 / 3, 2 / 3))
    ft = {p: preset_recipe(shape, p, paper_steps=5865) for p in ("quick", "standard", "publication")}
    assert [(r.steps, r.batch_size) for r in ft.values()] == [(120, 32), (2000, 32), (5865, 128)]
    assert all((r.lr, r.milestones) == (1e-3, (1 / 3, 2 / 3)) for r in ft.values())
    train = preset_recipe(shape, "standard", paper_steps=1, kind="train", small_data={"lr": 0.05})
    assert (train.steps, train.lr) == (BASELINE_RECIPES["standard"].steps, 0.05)
    assert recipe_columns(ft["quick"]) == {"finetune_steps": 120, "finetune_lr": 1e-3, "finetune_batch": 32,
                                           "finetune_schedule": "multistep x0.1 at 0.333,0.667"}
    with pytest.raises(UserError):
        preset_recipe(shape, "fast", paper_steps=1)
    ctx = MethodContext(model_name="resnet56", model=None, data=None, recipe=None, seed=0, workdir=tmp_path,
                        preset="quick")
    assert ctx.family == "resnet_cifar" and ctx.finetune_recipe(shape, paper_steps=9) == ft["quick"]
