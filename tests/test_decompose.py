"""decompose: factorisations at full rank, EVBMF on known ranks, rank rules, the skip rule, layer
selection, exact folding, the schedule hand-over and one apply() on real data."""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from harness.errors import UserError
from harness.models import build_model
from harness.train import TrainRecipe
from methods.decompose import factors
from methods.decompose.ranks import RankPolicy, energy_rank, evbmf, round_up
from methods.decompose.surgery import FOLD_TOLERANCE, decompose_model, eligible, reconstruct_model


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def conv(c_in: int, c_out: int, k: int = 3, stride: int = 1, bias: bool = True, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=bias)


# ----------------------------------------------------------------------------- tensorly API drift
def test_partial_tucker_has_the_pinned_api():
    """papers.md 3.4: tensorly renamed ranks= to rank= and now returns ((core, factors), errors).
    If this fails, tensorly moved again and factors.tucker2 must follow."""
    from tensorly.decomposition import partial_tucker

    assert "rank" in inspect.signature(partial_tucker).parameters
    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3))
    out = partial_tucker(w, rank=[2, 2], modes=[0, 1], init="svd")
    (core, (u_out, u_in)), errors = out
    assert core.shape == (2, 2, 3, 3) and u_out.shape == (4, 2) and u_in.shape == (3, 2)
    assert len(errors) >= 1


# ----------------------------------------------------------------------------- full-rank reconstruction
@pytest.mark.parametrize("stride", [1, 2])
def test_tucker_full_rank_reproduces_the_conv(stride):
    layer = conv(6, 5, stride=stride)
    chain = factors.TuckerConv(layer, r_out=5, r_in=6)
    factors.fill_tucker(chain, layer)
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        assert rel(chain(x), layer(x)) < 1e-5
    assert rel(chain.fold().weight, layer.weight) < 1e-5


@pytest.mark.parametrize("stride", [1, 2])
def test_cp_full_rank_reproduces_a_rank3_kernel(stride):
    """A kernel that is exactly CP rank 3 is recovered by parafac at rank 3 (ALS converges)."""
    g = torch.Generator().manual_seed(1)
    a, b, v, h = (torch.randn(n, 3, generator=g) for n in (5, 4, 3, 3))
    layer = conv(4, 5, stride=stride)
    with torch.no_grad():
        layer.weight.copy_(torch.einsum("or,ir,hr,wr->oihw", a, b, v, h))
    chain = factors.CPConv(layer, rank=3)
    factors.fill_cp(chain, layer)
    x = torch.randn(2, 4, 10, 10)
    with torch.no_grad():
        assert rel(chain(x), layer(x)) < 1e-4
    assert [m.groups for m in chain] == [1, 3, 3, 1]  # the depthwise kx1 and 1xk factors


def test_svd_full_rank_linear_and_1x1_conv():
    torch.manual_seed(0)
    lin = nn.Linear(7, 5)
    chain = factors.SVDLinear(lin, 5)
    factors.fill_svd(chain, lin)
    x = torch.randn(3, 7)
    with torch.no_grad():
        assert rel(chain(x), lin(x)) < 1e-6
    pw = conv(6, 4, k=1, stride=2)
    pchain = factors.SVDConv(pw, 4)
    factors.fill_svd(pchain, pw)
    xc = torch.randn(2, 6, 8, 8)
    with torch.no_grad():
        assert rel(pchain(xc), pw(xc)) < 1e-6


def test_truncated_svd_error_is_the_tail_of_the_spectrum():
    """Eckart-Young: ||W - W_r||_F = sqrt(sum of the dropped sigma^2); here sigma = 4, 3, 2, 1."""
    u, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    vt, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    w = u @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)) @ vt.T
    left, right = factors.svd(w, 2)
    assert float((w - left @ right).norm()) == pytest.approx(math.sqrt(4 + 1), rel=1e-9)


# ----------------------------------------------------------------------------- ranks
@pytest.mark.parametrize("shape,rank", [((40, 120), 5), ((120, 40), 5), ((16, 144), 3), ((64, 576), 10),
                                        ((30, 30), 4)])
def test_evbmf_finds_the_rank_of_low_rank_plus_noise(shape, rank):
    rng = np.random.default_rng(rank)
    signal = rng.normal(size=(shape[0], rank)) @ rng.normal(size=(rank, shape[1]))
    assert evbmf(signal + 0.5 * rng.normal(size=shape))[0] == rank


def test_evbmf_on_pure_noise_is_rank_zero_and_handles_a_single_row():
    rng = np.random.default_rng(0)
    assert evbmf(rng.normal(size=(32, 288)))[0] == 0
    assert evbmf(rng.normal(size=(1, 50)))[0] in (0, 1)
    assert evbmf(np.zeros((4, 9)))[0] == 0


def _reference_evbmf(Y):
    """EVBMF transcribed line by line from the vendored VBMF.py the paper's code calls
    (CasvandenBogaard's port of Nakajima et al.): an oracle written apart from ranks.evbmf."""
    from scipy.optimize import minimize_scalar

    L, M = Y.shape
    H = L
    alpha = L / M
    tauubar = 2.5129 * np.sqrt(alpha)
    s = np.linalg.svd(Y, compute_uv=False)[:H]
    residual = 0.0

    def tau(x):
        return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))

    def EVBsigma2(sigma2):
        x = s ** 2 / (M * sigma2)
        z1, z2 = x[x > xubar], x[x <= xubar]
        tau_z1 = tau(z1)
        return (np.sum(z2 - np.log(z2)) + np.sum(z1 - tau_z1) + np.sum(np.log(np.divide(tau_z1 + 1, z1)))
                + alpha * np.sum(np.log(tau_z1 / alpha + 1)) + residual / (M * sigma2) + (L - H) * np.log(sigma2))

    xubar = (1 + tauubar) * (1 + alpha / tauubar)
    eH_ub = int(np.min([np.ceil(L / (1 + alpha)) - 1, H])) - 1
    upper_bound = (np.sum(s ** 2) + residual) / (L * M)
    lower_bound = np.max([s[eH_ub + 1] ** 2 / (M * xubar), np.mean(s[eH_ub + 1:] ** 2) / M])
    sigma2 = minimize_scalar(EVBsigma2, bounds=[lower_bound, upper_bound], method="Bounded").x
    threshold = np.sqrt(M * sigma2 * (1 + tauubar) * (1 + alpha / tauubar))
    return int(np.sum(s > threshold)), sigma2


@pytest.mark.parametrize("c_out,c_in,rank,noise", [(16, 16, 3, 0.1), (32, 16, 6, 0.2), (64, 64, 10, 0.05),
                                                   (64, 32, 0, 0.1), (32, 32, 20, 0.02)])
def test_evbmf_agrees_with_the_papers_vbmf_on_conv_unfoldings(c_out, c_in, rank, noise):
    """Both mode unfoldings of a conv-shaped kernel (low rank + init-like noise): same rank and
    noise variance as the reference the paper's code vendors."""
    from methods.decompose.diagnose import unfold

    rng = np.random.default_rng(c_out + rank)
    w = noise * rng.normal(size=(c_out, c_in, 3, 3))
    if rank:
        w += (rng.normal(size=(c_out, rank)) @ rng.normal(size=(rank, c_in * 9))).reshape(w.shape) / 10
    for mode in (0, 1):
        m = unfold(w, mode)
        ref_rank, ref_sigma2 = _reference_evbmf(m)
        ours, _, sigma2 = evbmf(m)
        assert ours == ref_rank
        assert sigma2 == pytest.approx(ref_sigma2, rel=1e-3)


def test_diagnosis_sees_the_initialisation_as_pure_noise():
    """At init every conv is N(0, 2/(k^2 C_out)): EVBMF's noise estimate is that variance and it
    keeps nothing; a learned rank-2 update on top of it is what EVBMF then keeps."""
    from methods.decompose.diagnose import diagnose_model

    torch.manual_seed(0)
    model = build_model("resnet20")
    layers = diagnose_model(model)
    assert len(layers) == 18 and layers[0].layer == "layer1.0.conv1"  # the stem conv is left out
    for d in layers:
        for m in d.modes:
            assert m.rank == 0 and m.energy_kept == 0.0 and 0.85 < m.noise_ratio < 1.15
    conv = model.layer3[0].conv2
    with torch.no_grad():
        u, v = torch.randn(64, 2), torch.randn(2, 64 * 9)
        conv.weight += (u @ v).reshape(conv.weight.shape) * 0.05
    d = next(x for x in diagnose_model(model) if x.layer == "layer3.0.conv2")
    assert d.modes[0].rank == 2 and d.modes[0].top_over_edge > 1


def test_energy_ratio_and_rounding_rules():
    w = np.diag([3.0, 2.0, 1.0])  # sigma^2 = 9, 4, 1 of 14: 64%, 93%, 100%
    assert energy_rank(w, 0.6) == 1 and energy_rank(w, 0.9) == 2 and energy_rank(w, 0.95) == 3
    assert RankPolicy("ratio", 0.25).rank(np.ones((16, 9))) == 4
    assert RankPolicy("ratio", 0.3).rank(np.ones((10, 9))) == 3
    assert round_up(5, 16, 64) == 16 and round_up(17, 16, 64) == 32 and round_up(5, 16, 12) == 12
    assert round_up(0, 16, 64) == 0


# ----------------------------------------------------------------------------- skip rule and layer selection
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(x.mean((2, 3)))


def test_skip_rule_leaves_layers_that_would_not_get_cheaper():
    """conv2 (16->16, 3x3, 8x8 output): 147,456 MACs. Full-rank Tucker costs 64 * (256 + 2304 + 256)
    = 180,224, so it is skipped; ratio 0.25 (ranks 4, 4) costs 64 * (64 + 144 + 64) = 17,408."""
    torch.manual_seed(0)
    full = decompose_model(Tiny(), (3, 8, 8), RankPolicy("ratio", 1.0))
    assert [(p.name, p.macs_before, p.macs_after) for p in full] == [("conv2", 147456, 180224)]
    assert full[0].skipped.startswith("no MAC saving")
    model = Tiny()
    quarter = decompose_model(model, (3, 8, 8), RankPolicy("ratio", 0.25))
    assert quarter[0].skipped == "" and quarter[0].macs_after == 17408
    assert isinstance(model.conv2, factors.TuckerConv) and model.conv2.ranks() == [4, 4]
    # rounding ranks up to 16 on a 16-channel layer leaves nothing to gain
    rounded = decompose_model(Tiny(), (3, 8, 8), RankPolicy("ratio", 0.25, multiple=16))
    assert rounded[0].ranks == [16, 16] and rounded[0].skipped.startswith("no MAC saving")


def test_rank_zero_is_skipped():
    model = Tiny()  # random init: EVBMF sees only noise
    plans = decompose_model(model, (3, 8, 8), RankPolicy("vbmf"))
    assert plans[0].skipped == "rank 0" and isinstance(model.conv2, nn.Conv2d)


def test_layer_policies_on_resnet20():
    model = build_model("resnet20")
    names = lambda policy, first=False: [n for n, _ in eligible(model, (3, 32, 32), policy, first)[0]]
    conv2 = names("conv2")
    assert len(conv2) == 9 and all(n.endswith(".conv2") for n in conv2)
    assert len(names("all")) == 18 and "conv1" not in names("all")  # the first conv is excluded
    assert names("all", first=True)[0] == "conv1"
    assert names("all+linear")[-1] == "fc"
    with pytest.raises(UserError, match="conv2"):
        eligible(build_model("vgg16_bn"), (3, 32, 32), "conv2")


# ----------------------------------------------------------------------------- folding back
@pytest.mark.parametrize("decomp,layers", [("tucker", "all+linear"), ("cp", "conv2")])
def test_reconstruction_is_exact(decomp, layers):
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    plans = decompose_model(model, (3, 32, 32), RankPolicy("ratio", 0.5), decomp=decomp, layers=layers)
    assert sum(not p.skipped for p in plans) >= 9
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    errors = reconstruct_model(model, (3, 32, 32))
    assert errors and max(errors.values()) <= FOLD_TOLERANCE
    assert not any(isinstance(m, factors.CHAINS) for m in model.modules())
    assert type(model.layer1[0].conv2) is nn.Conv2d
    with torch.no_grad():
        assert rel(model(x), ref) < 1e-5


# ----------------------------------------------------------------------------- schedule hand-over
def test_schedule_hand_over_keeps_the_learning_rate_curve():
    """Dense 1 step, decomposed 2, reconstructed 1: every phase has a new optimizer over the
    network it trains, and the lrs are those of one uninterrupted multistep schedule."""
    from harness.data import load_data
    from methods.decompose.schedule import train_decomposed

    data = load_data("synthetic:32", input_size=32)
    recipe = TrainRecipe(steps=4, batch_size=16, schedule="multistep", milestones=(0.5, 0.75))
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=data.num_classes)
    params_seen = []

    def decompose(m):
        params_seen.append({id(p) for p in m.parameters()})
        return decompose_model(m, (3, 32, 32), RankPolicy("ratio", 0.5), layers="conv2")

    def reconstruct(m):
        params_seen.append({id(p) for p in m.parameters()})
        return reconstruct_model(m, (3, 32, 32))

    run = train_decomposed(model, data, recipe, seed=0, decompose_at=1, decompose=decompose, reconstruct_at=3,
                           reconstruct=reconstruct, progress=False)
    assert run.phases == ["dense", "decomposed", "reconstructed"]
    assert run.phase_steps == {"dense": 1, "decomposed": 2, "reconstructed": 1}
    assert run.lrs == [recipe.lr_at(k) for k in range(4)] == [0.1, 0.1, 0.010000000000000002, 0.0010000000000000002]
    assert len(run.optimizers) == 3
    opt_params = [{id(p) for g in o.param_groups for p in g["params"]} for o in run.optimizers]
    # each optimizer holds exactly the parameters of the network its phase trained
    assert opt_params[0] == params_seen[0]  # the dense network
    assert opt_params[1] == params_seen[1] != opt_params[0]  # the factorised one
    assert opt_params[2] == {id(p) for p in model.parameters()}  # the folded one
    assert isinstance(run.snapshot.layer1[0].conv2, factors.TuckerConv)
    assert type(model.layer1[0].conv2) is nn.Conv2d  # finished in the original architecture
    assert run.train_s >= run.decomp_s + sum(run.phase_s.values()) - 1e-9
    assert run.step_s("decomposed") == pytest.approx(run.phase_s["decomposed"] / 2)


# ----------------------------------------------------------------------------- the method
def test_apply_trains_both_schedules_and_checks_the_graph(tmp_path, monkeypatch):
    """One apply() on digits (a 256-image training subset) with a 4-step schedule, decomposed after
    2: dense-schedule and decomposed variants, the comparison columns, LR continuity, the recipe
    columns, and the exported graph keeps the thin chains."""
    import dataclasses

    from harness.data import load_data
    from harness.export import export_onnx
    from harness.train import BASELINE_RECIPES
    from methods.base import MethodContext
    from methods.decompose import Decompose, schedule

    tiny = schedule.DecomposeRecipe(TrainRecipe(steps=4, batch_size=128, schedule="multistep", weight_decay=1e-4),
                                    decompose_at=0.5, post=TrainRecipe(steps=2, lr=1e-3, schedule="constant"))
    monkeypatch.setattr(schedule, "recipe_for", lambda ctx: tiny)
    full = load_data("digits")
    data = dataclasses.replace(full, train=torch.utils.data.Subset(full.train, range(256)))
    ctx = MethodContext(model_name="resnet20", model=None, data=data, recipe=BASELINE_RECIPES["quick"], seed=0,
                        workdir=tmp_path, preset="quick", log=lambda m: None)
    out = Decompose().apply(ctx, Decompose().settings({"ratio": 0.5, "layers": "conv2"}))
    deps = {d.variant: d for d in out.deployables}
    assert set(deps) == {"default", "dense-schedule"}
    e = out.extra
    assert e["decompose_layers"] == 9 and e["decompose_lr_continuous"] is True
    assert (e["finetune_steps"], e["decompose_at_step"]) == (4, 2)
    # both runs' times per phase: the dense run over the decomposed phase's steps is the reference
    assert e["decompose_dense_step_s_after"] > 0 and e["decompose_dense_step_s_before"] > 0
    assert e["decompose_phase_speedup"] == pytest.approx(e["decompose_dense_step_s_after"] / e["decompose_step_s_after"])
    assert e["decompose_steps_per_epoch"] == 2  # 256 images at batch 128
    assert e["decompose_epoch_s_after"] == pytest.approx(2 * e["decompose_step_s_after"])
    assert e["decompose_channels_last"] == "all" and e["decompose_step_speedup_best"] > 0
    assert e["decompose_step_best_layouts"].count("/") == 1
    assert e["decompose_train_speedup"] == pytest.approx(e["decompose_dense_train_s"] / e["decompose_train_s"])
    assert out.train_s == e["decompose_train_s"] > e["decompose_decomp_s"] > 0
    assert 0 <= e["decompose_dense_top1"] <= 100 and e["decompose_step_speedup"] > 0
    assert deps["dense-schedule"].extra["train_s"] == e["decompose_dense_train_s"]
    assert (tmp_path / "decompose").glob("dense-*.pt")
    path = export_onnx(deps["default"].model, tmp_path / "d.onnx", (3, 32, 32))
    graph = deps["default"].check_graph(path)
    assert graph["decompose_graph_ok"] is True and graph["decompose_graph_thin_convs"] == 27
    # a second budget reuses the dense run of the same schedule instead of training it again
    again = Decompose().apply(ctx, Decompose().settings({"ratio": 0.25, "layers": "conv2"}))
    assert again.extra["decompose_dense_source"] == "this sweep"
    assert again.extra["decompose_dense_train_s"] == e["decompose_dense_train_s"]


# ----------------------------------------------------------------------------- batch, layout, phase times
def test_batch_knob_scales_the_lr_and_is_validated():
    """decompose:batch=128 gives both recipes batch 128 at sqrt-scaled lr (0.05 at 32 -> the
    paper's 0.1 at 128) and the same number of steps; lr= overrides; bad values are one-line errors."""
    from methods.decompose import Decompose, schedule

    rec = schedule.DecomposeRecipe(TrainRecipe(steps=270, batch_size=32, lr=0.05), 1 / 3,
                                   TrainRecipe(steps=120, batch_size=32, lr=1e-3))
    big = schedule.with_batch(rec, 128, None)
    assert (big.train.batch_size, big.train.steps, big.train.lr) == (128, 270, pytest.approx(0.1))
    assert (big.post.batch_size, big.post.lr) == (128, pytest.approx(2e-3)) and big.decompose_at == rec.decompose_at
    assert schedule.with_batch(rec, 128, 0.02).train.lr == 0.02 and schedule.with_batch(rec, None, None) is rec
    method = Decompose()
    with pytest.raises(UserError, match="batch=4 out of range"):
        method.knob("batch").parse("4")
    with pytest.raises(UserError, match="channels_last"):
        method.knob("channels_last").parse("nhwc")


def test_dense_run_span_gives_the_time_of_any_phase_of_the_schedule():
    from methods.decompose.schedule import RunResult

    run = RunResult(None, step_clock=[1.0, 2.5, 3.0, 4.5])
    assert run.span_s(0, 2) == 2.5 and run.span_s(2, 4) == 2.0 and run.span_s(0, 4) == 4.5
    assert RunResult(None).span_s(0, 2) is None  # a dense run cached before the step clock existed


def test_latency_budget_solves_the_rank_ratio_before_training(tmp_path):
    """decompose:latency=F picks the rank ratio with the target's latency model before training;
    here the 'model' is the MACs fraction (no timing in unit tests), so the solved ratio's network
    must cost about F of the dense MACs; the budget's columns land on the decomposed network only."""
    from harness.data import load_data
    from harness.macs import count_cost
    from methods import MethodContext, get_method

    torch.manual_seed(0)
    data = load_data("synthetic:16", input_size=32)
    model = build_model("resnet20")
    dense = count_cost(model, (3, 32, 32)).macs
    asked = []

    def predict(nets, target):
        asked.append(target)
        return [count_cost(n, (3, 32, 32)).macs / dense for n in nets]

    method = get_method("decompose")
    with pytest.raises(UserError, match="latency_target needs latency"):
        method.validate({"latency_target": "ov-cpu"})
    ctx = MethodContext(model_name="resnet20", model=model, data=data, recipe=None, seed=0, workdir=tmp_path,
                        preset="quick", structure_only=True, log=lambda m: None, predict_latency=predict)
    out = method.apply(ctx, method.settings({"latency": 0.6, "latency_target": "ov-cpu"}))
    (dep,) = out.deployables
    assert set(asked) == {"ov-cpu"} and dep.extra["latency_budget_target"] == "ov-cpu"
    assert abs(dep.extra["latency_predicted_frac"] - 0.6) < 0.06
    assert abs(count_cost(dep.model, (3, 32, 32)).macs / dense - dep.extra["latency_predicted_frac"]) < 1e-9
    assert out.extra["decompose_policy"].startswith("ratio")
    no_model = MethodContext(model_name="resnet20", model=build_model("resnet20"), data=data, recipe=None, seed=0,
                             workdir=tmp_path, preset="quick", structure_only=True, log=lambda m: None)
    with pytest.raises(UserError, match="latency model"):
        method.apply(no_model, method.settings({"latency": 0.6}))
