"""FTWT plugin: the ground-truth rule, real skipping against masking, cost accounting on a
hand-computed tiny net, the estimate before training, the optimizer and the in-graph ONNX export."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from conftest import require_target
from harness.data import load_data
from harness.macs import count_cost
from harness.models.cifar_resnet import CifarResNet
from harness.models.cifar_vgg import CifarVGG
from harness.train import TrainRecipe, _set_lr
from methods import MethodContext, get_method
import methods.ftwt as ftwt_method
from methods.ftwt import FixedLrSGD
from methods.ftwt.calibration import calibrate
from methods.ftwt.cost import CostEntry, CostSpec, estimate_curve, measure_macs, r_for_macs
from methods.ftwt.gating import _threshold, ground_truth, mask_loss
from methods.ftwt.wiring import wrap
from methods.ftwt.skip import build_skip, check_skip_graph, export_skip_onnx


def _maps(maxes: list[list[float]]) -> torch.Tensor:
    """(B, C, 3, 3) activations whose per-channel max |value| is ``maxes`` (one negative peak)."""
    m = torch.tensor(maxes)
    x = torch.rand(m.shape[0], m.shape[1], 3, 3) * 0.5 * m[:, :, None, None]
    x[:, :, 1, 1] = -m  # the abs value counts
    return x


def test_ground_truth_poster_example():
    # Poster: r = 0.95 on sorted masses 0.3, 0.3, 0.2, 0.1, 0.1, 0.03, 0.01 gives k = 4.
    masses = [0.1, 0.3, 0.01, 0.2, 0.03, 0.3, 0.1]  # shuffled order
    g = ground_truth(_maps([masses]), 0.95)
    assert g.sum().item() == 4
    assert g[0].tolist() == [0, 1, 0, 1, 0, 1, 0] or g[0].tolist() == [1, 1, 0, 1, 0, 1, 0]
    # exactly one of the two tied 0.1 channels is kept (sorted position 4)
    assert g[0, 1] == g[0, 3] == g[0, 5] == 1 and g[0, 0] + g[0, 6] == 1


def test_ground_truth_per_sample_and_r_one():
    x = _maps([[0.5, 0.5, 0.0, 0.0], [0.7, 0.1, 0.1, 0.1]])
    assert ground_truth(x, 0.5).tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]  # 0.7 > 0.5: k = 0
    assert ground_truth(x, 0.7).sum(1).tolist() == [1, 1]
    # r = 1 keeps everything except dead channels (no pixel fires)
    assert ground_truth(x, 1.0).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def _randomise_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("family", ["resnet", "vgg"])
def test_skipping_matches_masked_dense(family):
    torch.manual_seed(0)
    model = CifarResNet(20) if family == "resnet" else CifarVGG([16, "M", 32, "M", 32, 32, "M", "M", "M"])
    _randomise_bn(model)
    net = wrap(model, (3, 32, 32), family="resnet_cifar" if isinstance(model, CifarResNet) else "vgg_cifar").eval()
    # an empty selection somewhere (all filters off for every input) exercises the bias-only path
    net.units[3].predictor.bias.data.fill_(-100.0)
    skip = build_skip(net)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
        single = torch.cat([skip(x[i:i + 1]) for i in range(len(x))])
        batched = skip(x)
    assert (single - ref).abs().max() < 1e-4
    assert (batched - ref).abs().max() < 1e-4
    assert measure_macs(net, x).max() < net.spec.dense_macs()  # something was really skipped


def test_cost_accounting_hand_computed():
    # ResNet-8 (one block per stage) on 8x8 inputs: 8x8 -> 4x4 -> 2x2. Predictors are forced to
    # keep a fixed number of filters per layer, whatever the input.
    torch.manual_seed(0)
    model = CifarResNet(8)
    net = wrap(model, (3, 8, 8), family="resnet_cifar").eval()
    kept = [8, 4, 2, 10, 5, 20, 7]  # stem, l1.c1, l1.c2, l2.c1, l2.c2, l3.c1, l3.c2
    for u, k in zip(net.units, kept):
        u.predictor.weight.data.zero_()
        u.predictor.bias.data.fill_(-1.0)
        u.predictor.bias.data[:k] = 1.0
    # hand count: active_out * H*W * 9 * active_in; dense input after each residual add;
    # classifier counted (64 x 10)
    hand = (8 * 64 * 9 * 3          # stem, image input
            + 4 * 64 * 9 * 8        # layer1 conv1 reads the masked stem output (8 live)
            + 2 * 64 * 9 * 4        # layer1 conv2
            + 10 * 16 * 9 * 16      # layer2 conv1: dense input after the residual add
            + 5 * 16 * 9 * 10
            + 20 * 4 * 9 * 32       # layer3 conv1: dense input
            + 7 * 4 * 9 * 20
            + 64 * 10)              # fc on the dense pooled output
    assert hand == 95824
    per_sample = measure_macs(net, torch.randn(3, 3, 8, 8))
    assert per_sample.tolist() == [hand] * 3
    # the dense denominator is the harness's own count of the unwrapped model
    assert net.spec.dense_macs() == count_cost(CifarResNet(8), (3, 8, 8)).macs
    assert net.spec.predictor_macs(net.units) == sum(u.conv.in_channels * u.conv.out_channels for u in net.units)


def test_cost_depthwise_rule():
    # corrected rule: depthwise = active_out * H*W * k^2, independent of how many inputs are live
    spec = CostSpec([CostEntry("pw", "conv", 4, 8, 1, 16, 0, None),
                     CostEntry("dw", "dwconv", 8, 8, 9, 16, 1, 0),
                     CostEntry("fc", "linear", 8, 10, 1, 1, None, 1)])
    masks = [torch.tensor([[1., 1, 1, 0, 0, 0, 0, 0]]), torch.tensor([[1., 1, 0, 0, 0, 0, 0, 0]])]
    assert spec.per_sample(masks).tolist() == [3 * 16 * 4 + 2 * 16 * 9 + 10 * 2]
    assert spec.dense_macs() == 8 * 16 * 4 + 8 * 16 * 9 + 10 * 8


def test_estimate_curve_monotone_and_picks_r():
    torch.manual_seed(0)
    net = wrap(CifarResNet(8), (3, 16, 16), family="resnet_cifar")
    rs = np.array([0.5, 0.7, 0.9, 1.0])
    curve = estimate_curve(net, torch.randn(16, 3, 16, 16), rs)
    assert np.all(np.diff(curve) >= 0) and 0 < curve[0] < curve[-1] <= 1.0
    r = r_for_macs(rs, curve, float(curve[1] + curve[2]) / 2)
    assert 0.7 <= r <= 0.9
    assert all(u.gating and not u.collect for u in net.units)  # flags restored


def test_threshold_splits_at_k():
    logits = torch.tensor([[3.0, -1.0, 0.5], [2.0, 1.0, -4.0]])
    for k in range(7):
        assert int((logits > _threshold(logits, k)).sum()) == k


def test_calibration_matches_ground_truth_keep_rate():
    """The paper's sigmoid > 0.5 over-keeps when the predictor is unsure; calibration moves each
    layer's threshold so that its mean kept count equals the ground truth's, layer after layer
    on inputs masked by the calibrated layers before it."""
    torch.manual_seed(0)
    model = CifarResNet(8)
    _randomise_bn(model)
    net = wrap(model, (3, 16, 16), family="resnet_cifar").set(r=0.7)
    for u in net.units:  # an "unsure" predictor that keeps everything
        u.predictor.bias.data.fill_(5.0)
    x = torch.randn(40, 3, 16, 16)
    net.units[0].collect = True  # a flag that calibration must restore
    net.train()
    residual = calibrate(net, x, batch_size=16)
    assert net.training and net.units[0].collect and not net.units[1].collect
    assert not any(u.calibrating for u in net.units)
    assert max(residual) < 1e-6  # |kept - ground truth| per layer, as a fraction of its filters
    # independent check: one pass with the calibrated thresholds, mask vs ground truth per layer
    net.eval().set(collect=True)
    with torch.no_grad():
        net(x)
    for u in net.units:
        kept, gt = (u.last["logits"] > 0).sum(), u.last["gt"].sum()
        assert int(kept) == int(gt) and 0 < int(gt) < u.last["gt"].numel()
    # the predictors' ranking is kept: only the bias moved
    assert all(u.predictor.bias.data.std() < 1e-6 for u in net.units)


def test_predictor_group_keeps_fixed_lr_and_mask_loss():
    net = wrap(CifarResNet(8), (3, 8, 8), family="resnet_cifar")
    pred = [p for u in net.units for p in u.predictor.parameters()]
    ids = {id(p) for p in pred}
    opt = FixedLrSGD([{"params": [p for p in net.parameters() if id(p) not in ids]},
                      {"params": pred, "fixed_lr": 0.1, "weight_decay": 0.0}], lr=0.01, momentum=0.9)
    _set_lr(opt, 0.0001)  # what fit does each epoch
    net.train().set(collect=True, r=0.9)
    out = net(torch.randn(4, 3, 8, 8))
    loss = mask_loss(net.units)
    # decoupled: the mask loss reaches only the predictors
    loss.backward()
    assert all(p.grad is not None for p in pred)
    assert net.units[0].conv.weight.grad is None
    opt.step()
    assert opt.param_groups[1]["lr"] == 0.1 and opt.param_groups[0]["lr"] == 0.0001
    assert out.shape == (4, 10)


def test_apply_trains_and_reports(monkeypatch, tmp_path):
    monkeypatch.setattr(ftwt_method, "recipe_for", lambda ctx: TrainRecipe(steps=4, lr=0.01, batch_size=8))
    torch.manual_seed(0)
    data = load_data("synthetic:16", input_size=32)
    model = CifarResNet(20)
    baseline = copy.deepcopy(model)
    ctx = MethodContext(model_name="resnet20", model=model, data=data, recipe=None, seed=0,
                        workdir=tmp_path, preset="quick", log=lambda m: None)
    method = get_method("ftwt")
    out = method.apply(ctx, method.settings({"macs": 0.6, "mode": "decoupled", "pool": "max", "cooldown": 0.5}))
    variants = {d.variant: d for d in out.deployables}
    assert set(variants) == {"default", "skip-all", "masked"} and out.train_s > 0
    extra = variants["default"].extra
    assert 0.0 <= extra["ftwt_est_reduction"] <= 1 and 0.05 <= extra["ftwt_r"] <= 1.0
    assert extra["ftwt_macs_p10"] <= extra["ftwt_macs_p50"] <= extra["ftwt_macs_p90"]
    assert extra["ftwt_calibrate"] == "gt" and 0 <= extra["ftwt_kept_frac"] <= 1 and 0 <= extra["ftwt_gt_kept_frac"] <= 1
    assert variants["default"].macs == pytest.approx(extra["ftwt_macs_mean"])
    assert variants["masked"].macs == extra["ftwt_dense_macs_counted"]
    from targets import get_target

    ov, ort = get_target("ov-cpu"), get_target("ort-cpu")
    assert ov.lacks(variants["default"].requires) == ["runtime_weight_shapes"] and not ov.lacks(variants["masked"].requires)
    assert ov.lacks(variants["skip-all"].requires) and not ort.lacks(variants["skip-all"].requires)
    assert variants["skip-all"].macs == variants["masked"].macs
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():  # skip-all is the untouched baseline run by the skip engine
        dense = baseline.eval()(x)
        assert (variants["skip-all"].model(x[:1]) - dense[:1]).abs().max() < 1e-4
        assert (variants["skip-all"].model(x) - dense).abs().max() < 1e-4
    assert len(variants["masked"].model.units) == 19  # stem + 2 per block of ResNet-20
    assert (extra["finetune_steps"], extra["finetune_batch"]) == (4, 8)


def test_latency_budget_solves_r_with_measured_probes(monkeypatch, tmp_path):
    """ftwt:latency=F picks r before training from probes of calibrated networks measured on the
    target; here the 'measurement' is the probe's kept-MACs fraction (no timing in unit tests), so
    the solved r must give about F of the dense MACs, and the row carries the budget's columns."""
    monkeypatch.setattr(ftwt_method, "recipe_for", lambda ctx: TrainRecipe(steps=2, lr=0.01, batch_size=8))
    monkeypatch.setattr(ftwt_method, "build_skip", lambda net, select_all=False: net)  # probe = masked net
    torch.manual_seed(0)
    data = load_data("synthetic:64", input_size=32)
    x = torch.randn(16, 3, 32, 32)
    seen = []

    def fake_measure(net, target):
        seen.append(target)
        return float(measure_macs(net, x).mean() / net.spec.dense_macs())

    ctx = MethodContext(model_name="resnet20", model=CifarResNet(20), data=data, recipe=None, seed=0,
                        workdir=tmp_path, preset="quick", log=lambda m: None, measure_latency=fake_measure)
    method = get_method("ftwt")
    with pytest.raises(Exception, match="latency_target needs latency"):
        method.validate({"latency_target": "torch-eager"})
    out = method.apply(ctx, method.settings({"latency": 0.7}))
    variants = {d.variant: d.extra for d in out.deployables}
    assert all("latency_budget" not in variants[v] for v in ("skip-all", "masked"))  # the budget is the skipping net's
    extra = variants["default"]
    assert seen and set(seen) == {"torch-eager"} and extra["latency_solver_evaluations"] == len(seen)
    assert (extra["latency_budget"], extra["latency_budget_target"]) == (0.7, "torch-eager")
    assert abs(extra["latency_predicted_frac"] - 0.7) < 0.07 and 0.5 <= extra["ftwt_r"] < 1.0
    no_probe = MethodContext(model_name="resnet20", model=CifarResNet(20), data=data, recipe=None, seed=0,
                             workdir=tmp_path, preset="quick", log=lambda m: None)
    with pytest.raises(Exception, match="needs measured probes"):
        method.apply(no_probe, method.settings({"latency": 0.7}))


def test_wiring_comes_from_the_registered_family():
    """The context gives the family from the model registry; a family without wiring is a
    one-line UserError, never a guess from module names."""
    from harness.errors import UserError

    ctx = MethodContext(model_name="vgg16_bn", model=None, data=None, recipe=None, seed=0, workdir=".")
    assert ctx.family == "vgg_cifar"
    assert MethodContext(model_name="tiny", model=None, data=None, recipe=None, seed=0, workdir=".").family is None
    net = wrap(CifarResNet(8), (3, 8, 8), family="resnet_cifar")
    assert net.family == "resnet_cifar" and len(net.units) == 7
    with pytest.raises(UserError, match="no predictor wiring"):
        wrap(CifarResNet(8), (3, 8, 8), family="vgg_imagenet")


@pytest.mark.parametrize("family", ["resnet_cifar", "mobilenet_v2_cifar"])
def test_onnx_selection_in_graph_matches_torch(tmp_path, family):
    require_target("ort-cpu")
    import onnxruntime as ort
    import onnx

    from harness.models.cifar_mobilenet import CifarMobileNetV2

    torch.manual_seed(0)
    model = CifarResNet(8) if family == "resnet_cifar" else CifarMobileNetV2()
    _randomise_bn(model)
    net = wrap(model, (3, 32, 32), family=family).eval()
    net.units[2].predictor.bias.data.fill_(-100.0)  # a layer that never selects anything
    skip = build_skip(net)
    path = export_skip_onnx(skip, tmp_path / "skip.onnx", (3, 32, 32))
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"NonZero", "Gather", "Conv"} <= ops  # selection happens at run time, in the graph
    facts = check_skip_graph(path)
    assert facts["ftwt_onnx_nonzero_nodes"] == len(net.units)
    # a Conv with a constant weight is only a shortcut conv on a dense input (MobileNetV2 has 3);
    # the depthwise convs are shifted multiply-adds, so they are not Convs in the graph
    assert facts["ftwt_onnx_static_convs"] == (0 if family == "resnet_cifar" else 3)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            ref = net(x).numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        assert np.abs(got - ref).max() / max(1.0, np.abs(ref).max()) < 1e-4
