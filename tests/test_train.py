"""Training loop: seeded, resumable from its checkpoint, schedule; baseline cache by content hash."""
from __future__ import annotations

import pytest
import torch

from harness.baseline import get_baseline
from harness.data import load_data
from harness.models import build_model
from harness.train import TrainRecipe, fit


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", input_size=16)  # small inputs keep these tests fast


def _model():
    torch.manual_seed(0)
    return build_model("resnet20")


def test_fit_is_seeded(digits):
    recipe = TrainRecipe(epochs=1, batch_size=128)
    a, b = _model(), _model()
    fit(a, digits, recipe, seed=3, progress=False, max_batches=3)
    fit(b, digits, recipe, seed=3, progress=False, max_batches=3)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_killed_run_resumes_from_its_checkpoint(digits, tmp_path):
    recipe = TrainRecipe(epochs=2, batch_size=128)
    straight = _model()
    fit(straight, digits, recipe, seed=1, progress=False, max_batches=3)

    class Killed(Exception):
        pass

    def kill_in_second_epoch(epoch, model):
        if epoch == 1:
            raise Killed  # before epoch 2's checkpoint is written

    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Killed):
        fit(_model(), digits, recipe, seed=1, checkpoint=ckpt, progress=False, max_batches=3,
            on_epoch_end=kill_in_second_epoch)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    resumed = _model()
    result = fit(resumed, digits, recipe, seed=1, checkpoint=ckpt, progress=False, max_batches=3)
    assert len(result.epoch_s) == 2  # the first epoch's time is carried over, not re-run
    for pa, pb in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(pa.float(), pb.float(), atol=1e-6)


def test_schedules():
    cos = TrainRecipe(epochs=10, lr=0.1)
    assert cos.lr_at(0) == pytest.approx(0.1) and cos.lr_at(5) == pytest.approx(0.05)
    assert cos.lr_at(10) == pytest.approx(0.0, abs=1e-12)
    ms = TrainRecipe(epochs=200, lr=0.1, schedule="multistep", milestones=(0.405, 0.61, 0.755))
    assert ms.lr_at(80) == pytest.approx(0.1) and ms.lr_at(81) == pytest.approx(0.01)
    assert ms.lr_at(151) == pytest.approx(1e-4)
    step = TrainRecipe(epochs=30, lr=1e-3, schedule="step", step_size=10)
    assert step.lr_at(9) == pytest.approx(1e-3) and step.lr_at(10) == pytest.approx(1e-4)


def test_baseline_is_trained_once_then_cached(digits):
    recipe = TrainRecipe(epochs=1, batch_size=256)
    first = get_baseline("resnet20", digits, recipe, seed=0, progress=False)
    second = get_baseline("resnet20", digits, recipe, seed=0, progress=False)
    assert (first.source, second.source) == ("trained", "cache") and first.key == second.key
    for pa, pb in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(pa, pb)
    other = get_baseline("resnet20", digits, recipe, seed=1, progress=False)
    assert other.key != first.key and other.source == "trained"


def test_user_checkpoint_is_used_instead_of_training(digits, tmp_path):
    path = tmp_path / "mine.pt"
    torch.save(_model().state_dict(), path)
    base = get_baseline("resnet20", digits, TrainRecipe(epochs=1), seed=0, checkpoint=path, progress=False)
    assert base.source == f"checkpoint:{path}" and base.train_s == 0.0


def test_fit_in_phases_continues_the_schedule():
    """Two phases [0, 2) and [2, 4) with a fresh optimizer see the learning rates of one run."""
    from harness.data import load_data
    from harness.models import build_model
    from harness.train import TrainRecipe, fit, make_sgd

    data = load_data("synthetic:32", input_size=32)
    recipe = TrainRecipe(epochs=4, batch_size=16, schedule="cosine")
    seen = []
    model = build_model("resnet20", num_classes=data.num_classes)
    for start, end in ((0, 2), (2, 4)):
        opt = make_sgd(model, recipe)
        fit(model, data, recipe, seed=0, optimizer=opt, start_epoch=start, end_epoch=end, progress=False,
            max_batches=1, on_epoch_end=lambda e, m, o=opt: seen.append((e, o.param_groups[0]["lr"])))
    assert [e for e, _ in seen] == [0, 1, 2, 3]
    assert [lr for _, lr in seen] == [recipe.lr_at(e) for e in range(4)]


def test_trace_calls_lists_modules_in_call_order_with_input_shapes():
    from torch import nn

    from harness.models import build_model
    from harness.trace import trace_calls

    model = build_model("resnet20").train()
    calls = trace_calls(model, (3, 32, 32), lambda m: isinstance(m, (nn.Conv2d, nn.Linear)))
    assert calls[0] == ("conv1", (3, 32, 32)) and calls[-1] == ("fc", (64,))
    assert ("layer2.0.conv1", (16, 32, 32)) in calls and len(calls) == 20  # 19 convs + fc
    assert model.training  # mode restored
