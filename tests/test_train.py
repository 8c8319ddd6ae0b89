"""Training loop: seeded, resumable from its checkpoint, schedule; baseline cache by content hash."""
from __future__ import annotations

import pytest
import torch

from harness.engine.baseline import get_baseline
from harness.data import load_data
from harness.models import build_model
from harness.errors import UserError
from harness.train import TrainRecipe, fit


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", input_size=16)  # small inputs keep these tests fast


def _model():
    torch.manual_seed(0)
    return build_model("resnet20")


def test_fit_is_seeded(digits):
    recipe = TrainRecipe(steps=3, batch_size=128)
    a, b = _model(), _model()
    fit(a, digits, recipe, seed=3, progress=False)
    fit(b, digits, recipe, seed=3, progress=False)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_a_run_without_a_terminal_prints_progress_lines(digits, capsys, monkeypatch):
    """tqdm draws only on a terminal; a log gets 'step s/N (p%), elapsed, about ... left' lines
    (every 60 s; every step here), also from runs whose bars are off (methods' fine-tunes);
    a terminal gets none (tqdm draws there)."""
    from harness import train

    monkeypatch.setattr(train._LogProgress, "every_s", 0.0)
    recipe = TrainRecipe(steps=3, batch_size=128)
    fit(_model(), digits, recipe, seed=0, desc="baseline resnet20")
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "baseline resnet20: step" in ln]
    assert [ln.split("step ")[1].split(" ")[0] for ln in lines] == ["1/3", "2/3", "3/3"]
    assert "(100%)" in lines[-1] and "elapsed, about 0:00 left" in lines[-1]
    fit(_model(), digits, recipe, seed=0, desc="finetune", progress=False)
    assert "finetune: step 3/3" in capsys.readouterr().err
    monkeypatch.setattr(train.sys.stderr, "isatty", lambda: True, raising=False)
    fit(_model(), digits, recipe, seed=0, desc="on a terminal", progress=False)
    assert "on a terminal: step" not in capsys.readouterr().err


def _same_weights(a, b) -> None:
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(pa.float(), pb.float(), atol=1e-6), name


def test_run_sized_in_steps_takes_as_many_passes_as_needed(digits):
    """digits at batch 512: 3 batches a pass (1,437 images), so 7 steps are 2 passes and a
    third of one; the lr is set every step from the schedule."""
    recipe = TrainRecipe(steps=7, batch_size=512, schedule="multistep", milestones=(0.5,), lr=0.1)
    seen, passes = [], []
    result = fit(_model(), digits, recipe, seed=0, progress=False,
                 on_step_end=lambda s, m: seen.append(s), on_pass_end=lambda s, m: passes.append(s))
    assert seen == list(range(1, 8)) and passes == [3, 6]
    assert result.steps == 7 and len(result.pass_s) == 3 and result.train_s == pytest.approx(sum(result.pass_s))
    assert result.final_lr == pytest.approx(0.01)
    assert recipe.passes(len(digits.train)) == pytest.approx(7 / 3)


def test_killed_run_resumes_mid_pass_with_the_weights_of_an_uninterrupted_run(digits, tmp_path):
    recipe = TrainRecipe(steps=8, batch_size=512, schedule="cosine")  # 3 batches a pass
    straight = _model()
    fit(straight, digits, recipe, seed=1, progress=False)

    class Killed(Exception):
        pass

    def kill_at_step_5(step, model):
        if step == 5:
            raise Killed  # inside the second pass, after step 4's checkpoint

    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Killed):
        fit(_model(), digits, recipe, seed=1, checkpoint=ckpt, checkpoint_every=2, progress=False,
            on_step_end=kill_at_step_5)
    assert torch.load(ckpt, weights_only=True)["step"] == 4
    resumed = _model()
    steps_run = []
    result = fit(resumed, digits, recipe, seed=1, checkpoint=ckpt, checkpoint_every=2, progress=False,
                 on_step_end=lambda s, m: steps_run.append(s))
    assert steps_run == [5, 6, 7, 8]  # steps 1-4 are not run again
    assert len(result.pass_s) == 3 and result.train_s > 0  # earlier passes' times carried over
    _same_weights(straight, resumed)


def test_lr_at_step_and_milestones():
    cos = TrainRecipe(steps=10, lr=0.1)
    assert cos.lr_at(0) == pytest.approx(0.1) and cos.lr_at(5) == pytest.approx(0.05)
    assert cos.lr_at(10) == pytest.approx(0.0, abs=1e-12)
    ms = TrainRecipe(steps=200, lr=0.1, schedule="multistep", milestones=(0.405, 0.61, 0.755))
    assert ms.milestone_steps() == (81, 122, 151)
    assert ms.lr_at(80) == pytest.approx(0.1) and ms.lr_at(81) == pytest.approx(0.01)
    assert ms.lr_at(151) == pytest.approx(1e-4)
    # LayerPrune's shape: x0.1 at 1/3 and 2/3 of the run
    lp = TrainRecipe(steps=120, lr=1e-3, schedule="multistep", milestones=(1 / 3, 2 / 3))
    assert [lp.lr_at(s) for s in (0, 39, 40, 79, 80, 119)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    assert lp.describe() == "multistep x0.1 at 0.333,0.667"
    with pytest.raises(UserError):
        TrainRecipe(steps=10, milestones=(1.5,))
    with pytest.raises(UserError):
        TrainRecipe(schedule="step")


def test_baseline_is_trained_once_then_cached(digits):
    recipe = TrainRecipe(steps=3, batch_size=256)
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
    base = get_baseline("resnet20", digits, TrainRecipe(steps=1), seed=0, checkpoint=path, progress=False)
    assert base.source == f"checkpoint:{path}" and base.train_s == 0.0


def test_fit_in_phases_continues_the_schedule(digits):
    """Two phases [0, 5) and [5, 8) with a fresh optimizer each see the learning rates of one
    run, step by step, and the second phase starts mid-pass on the batches one run would see."""
    from harness.train import make_sgd

    recipe = TrainRecipe(steps=8, batch_size=512, schedule="cosine")
    seen = []
    model = _model()
    results = []
    for start, end in ((0, 5), (5, 8)):
        opt = make_sgd(model, recipe)
        results.append(fit(model, digits, recipe, seed=0, optimizer=opt, start_step=start, end_step=end,
                           progress=False, on_step_end=lambda s, m, o=opt: seen.append((s, o.param_groups[0]["lr"]))))
    assert [s for s, _ in seen] == list(range(1, 9))
    assert [lr for _, lr in seen] == [recipe.lr_at(s) for s in range(8)]
    assert [r.steps for r in results] == [5, 3] and results[1].start_step == 5
    assert results[0].step_s > 0
    # one optimizer over both phases = one uninterrupted run: same weights
    one_opt = _model()
    opt = make_sgd(one_opt, recipe)
    for start, end in ((0, 5), (5, 8)):
        fit(one_opt, digits, recipe, seed=0, optimizer=opt, start_step=start, end_step=end, progress=False)
    straight = _model()
    fit(straight, digits, recipe, seed=0, progress=False)
    _same_weights(straight, one_opt)
    with pytest.raises(ValueError):
        fit(_model(), digits, recipe, seed=0, start_step=6, end_step=9, progress=False)


def test_trace_calls_lists_modules_in_call_order_with_input_shapes():
    from torch import nn

    from harness.models import build_model
    from harness.trace import trace_calls

    model = build_model("resnet20").train()
    calls = trace_calls(model, (3, 32, 32), lambda m: isinstance(m, (nn.Conv2d, nn.Linear)))
    assert calls[0] == ("conv1", (3, 32, 32)) and calls[-1] == ("fc", (64,))
    assert ("layer2.0.conv1", (16, 32, 32)) in calls and len(calls) == 20  # 19 convs + fc
    assert model.training  # mode restored


def test_channels_last_trains_the_same_network_and_hands_it_back_in_nchw(digits):
    """channels_last=True is a layout, not other math: the weights end within float rounding of
    the NCHW run (oneDNN orders its sums differently: after 3 steps the two differ by a few
    percent of how far training moved the weights), the model comes back contiguous, and the
    step clock holds the run's training seconds after every step (its last entry is train_s)."""
    recipe = TrainRecipe(steps=3, batch_size=128, lr=0.02)
    init, nchw, nhwc = _model(), _model(), _model()
    a = fit(nchw, digits, recipe, seed=0, progress=False)
    b = fit(nhwc, digits, recipe, seed=0, progress=False, channels_last=True)
    flat = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (init, nchw, nhwc)]
    assert float((flat[1] - flat[2]).norm()) < 0.05 * float((flat[1] - flat[0]).norm())
    assert all(p.is_contiguous() for p in nhwc.parameters())
    for res in (a, b):
        assert len(res.step_clock) == 3 and res.step_clock == sorted(res.step_clock)
        assert 0 < res.step_clock[0] and res.step_clock[-1] == pytest.approx(res.train_s, rel=1e-3)
