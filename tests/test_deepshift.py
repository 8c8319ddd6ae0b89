"""DeepShift plugin: rounding thresholds, ranges, PS gradients, finalisation, export and sizes.

Hand-computed values on tiny tensors; the method contract (tests/test_methods.py) covers apply and
export on resnet20.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from harness.errors import UserError
from harness.export import export_onnx
from harness.macs import size_bytes
from harness.models import build_model
from methods.deepshift import DeepShift, MagnitudePenalty, packed_sizes, parse_act_bits, ps_optimizer
from methods.deepshift.convert import convert_to_shift, finalize, frozen_modules
from methods.deepshift.export import Pow2Check, ShiftExporter, pow2_violations
from methods.deepshift.int8 import int8_weights
from methods.deepshift.modules import (ChannelAffine, PSWeight, ShiftConv2dPS,
                                       ShiftConv2dQ, ShiftLinearPS, ShiftLinearQ, fixed_point,
                                       p_min_for, quantize_act, round_pow2, ternary_sign)

LN2 = math.log(2.0)


class TinyNet(nn.Module):
    """conv-BN-ReLU-conv-BN-ReLU-pool-linear: small enough for hand checks, has BN to fold."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(6)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def tiny(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet()
    with torch.no_grad():  # non-trivial BN statistics, so folding BN would change the weights
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return net.eval()


def is_pow2_or_zero(w: torch.Tensor, p_min: int) -> bool:
    return pow2_violations(w.detach().numpy(), p_min) == 0


# ----------------------------------------------------------------------------- rounding thresholds
def test_log_domain_threshold_is_two_to_minus_half():
    t = torch.tensor(2 ** -0.5)  # float32 0.70710677; torch.log2 gives exactly -0.5 for it
    assert torch.log2(t).item() == -0.5
    below = torch.nextafter(t, torch.tensor(0.0))
    above = torch.nextafter(t, torch.tensor(1.0))
    w = torch.stack([below, t, above, torch.tensor(0.74), torch.tensor(0.76), torch.tensor(0.70)])
    # 0.74 < 0.75 would round to 1 only in the log domain; linear rounding would give 0.5
    assert round_pow2(w).tolist() == [0.5, 1.0, 1.0, 1.0, 1.0, 0.5]
    assert round_pow2(-w).tolist() == [-0.5, -1.0, -1.0, -1.0, -1.0, -0.5]


def test_ties_in_the_log_domain_round_half_to_even():
    w = torch.exp2(torch.tensor([-0.5, -1.5, -2.5, -3.5]))
    assert torch.log2(w).tolist() == [-0.5, -1.5, -2.5, -3.5]  # exact ties in float32
    assert round_pow2(w).tolist() == [1.0, 0.25, 0.25, 2 ** -4]


def test_zero_stays_zero_and_q_layer_uses_the_same_rounding():
    layer = ShiftLinearQ(3, 1, bias=False, weight_bits=5)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 0.7072, -0.7070]]))
    assert layer.shift_weight().tolist() == [[0.0, 1.0, -0.5]]


# ----------------------------------------------------------------------------- ranges per bit width
@pytest.mark.parametrize("bits,q_min,ps_min", [(5, -15, -14), (4, -7, -6), (3, -3, -2), (2, -1, 0)])
def test_p_ranges_per_bit_width(bits, q_min, ps_min):
    assert p_min_for("q", bits) == q_min
    assert p_min_for("ps", bits) == ps_min


@pytest.mark.parametrize("bits", [5, 4, 3, 2])
def test_q_clamp_range(bits):
    p_min = p_min_for("q", bits)
    layer = ShiftLinearQ(5, 1, bias=False, weight_bits=bits)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, -1e-9, 0.0, 2.0 ** (p_min - 3), -0.3]]))
    w = layer.shift_weight().detach()
    # 0.3 rounds to 2^-2 in the log domain, unless the clamp lifts it first (b=2: to 2^-1)
    expected = [1.0, -2.0 ** p_min, 0.0, 2.0 ** p_min, -max(0.25, 2.0 ** p_min)]
    assert w.tolist() == [expected]
    # the clamp is in place on the latent weight, exact zeros untouched
    assert layer.weight[0, 0].item() == 1.0 and layer.weight[0, 1].item() == -2.0 ** p_min
    assert layer.weight[0, 2].item() == 0.0


@pytest.mark.parametrize("bits", [5, 4, 3, 2])
def test_ps_clamp_range(bits):
    p_min = p_min_for("ps", bits)
    layer = ShiftLinearPS(4, 1, bias=False, weight_bits=bits)
    with torch.no_grad():
        layer.shift.copy_(torch.tensor([[-100.0, 3.0, -0.4, p_min + 0.2]]))
        layer.sign.copy_(torch.tensor([[1.0, -1.0, 0.6, -0.7]]))
    w = layer.shift_weight().detach()
    assert layer.shift.min().item() == p_min and layer.shift.max().item() == 0.0  # clamped in place
    assert w.tolist() == [[2.0 ** p_min, -1.0, 1.0, -(2.0 ** p_min)]]


def test_ternary_sign_thresholds():
    s = torch.tensor([-1.7, -0.5, -0.4999, 0.0, 0.4999, 0.5, 2.3])
    assert ternary_sign(s).tolist() == [-1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0]


# ----------------------------------------------------------------------------- PS gradients
def test_ps_gradients_match_hand_computed_values():
    shift = torch.tensor([-1.2, -0.4, -2.6, -3.0], requires_grad=True)
    sign = torch.tensor([0.7, -0.9, 0.2, 0.5], requires_grad=True)
    w = PSWeight.apply(shift, sign)
    # round(P) = -1, 0, -3, -3; sign(S) = +1, -1, 0, +1
    assert w.tolist() == [0.5, -1.0, 0.0, 0.125]
    g = torch.tensor([2.0, 3.0, -1.0, 4.0])
    (w * g).sum().backward()
    assert sign.grad.tolist() == [2.0, 3.0, -1.0, 4.0]  # straight through, not times 2^P
    expected = [2.0 * 0.5 * LN2, 3.0 * -1.0 * LN2, 0.0, 4.0 * 0.125 * LN2]  # zero sign: no shift grad
    assert torch.allclose(shift.grad, torch.tensor(expected))


def test_ps_linear_layer_gradients_through_the_layer():
    layer = ShiftLinearPS(2, 1, bias=False, weight_bits=5)
    with torch.no_grad():
        layer.shift.copy_(torch.tensor([[-1.0, -2.0]]))
        layer.sign.copy_(torch.tensor([[1.0, -1.0]]))
    x = torch.tensor([[3.0, 5.0]])
    y = layer(x)  # 3 * 0.5 + 5 * -0.25 = 0.25
    assert y.item() == 0.25
    y.sum().backward()  # dL/dW = x
    assert layer.sign.grad.tolist() == [[3.0, 5.0]]
    assert torch.allclose(layer.shift.grad, torch.tensor([[3.0 * 0.5 * LN2, 5.0 * -0.25 * LN2]]))


def test_q_gradient_is_straight_through():
    layer = ShiftLinearQ(2, 1, bias=False, weight_bits=5)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.3, -0.8]]))
    layer(torch.tensor([[3.0, 5.0]])).sum().backward()
    assert layer.weight.grad.tolist() == [[3.0, 5.0]]


def test_magnitude_penalty_and_radam_groups():
    net = tiny()
    convert_to_shift(net, (3, 8, 8), mode="ps", weight_bits=5)
    ps = [m for m in net.modules() if isinstance(m, (ShiftConv2dPS, ShiftLinearPS))]
    expected = 0.5 * 1e-4 * sum(float(torch.exp2(m.shift.detach()).pow(2).sum()) for m in ps)
    assert MagnitudePenalty(1e-4)(net, None, None, None).item() == pytest.approx(expected, rel=1e-5)
    opt = ps_optimizer(net, 1e-3, 1e-4)
    assert isinstance(opt, torch.optim.RAdam)
    latent, others = opt.param_groups
    assert latent["weight_decay"] == 0.0 and others["weight_decay"] == 1e-4
    assert len(latent["params"]) == 2 * len(ps)


# ----------------------------------------------------------------------------- activation fixed point
def test_activation_fixed_point_floor_signed_and_ste():
    x = torch.tensor([0.30, -0.30, 100.0, -100.0, 1.99], requires_grad=True)
    # INT.FRAC = 3.2: step 0.25, range [-4, 3]; floor, not round
    assert fixed_point(x, 3, 2).tolist() == [0.25, -0.5, 3.0, -4.0, 1.75]
    quantize_act(x, (3, 2)).sum().backward()
    assert x.grad.tolist() == [1.0] * 5  # straight through, no clipping mask
    assert parse_act_bits("off") is None and parse_act_bits("3.5") == (3, 5)
    with pytest.raises(UserError):
        parse_act_bits("8")


# ----------------------------------------------------------------------------- conversion and depth
def test_depth_counts_from_the_input():
    net = tiny()
    names = convert_to_shift(net, (3, 8, 8), mode="q", weight_bits=5, depth=2)
    assert names == ["conv1", "conv2"]
    assert isinstance(net.conv1, ShiftConv2dQ) and isinstance(net.conv2, ShiftConv2dQ)
    assert type(net.fc) is nn.Linear
    assert convert_to_shift(tiny(), (3, 8, 8), mode="ps", weight_bits=5) == ["conv1", "conv2", "fc"]


def test_ps_from_pretrained_reproduces_q_rounding():
    base = tiny()
    q, ps = tiny(), tiny()
    convert_to_shift(q, (3, 8, 8), mode="q", weight_bits=5)
    convert_to_shift(ps, (3, 8, 8), mode="ps", weight_bits=5)
    # (P, S) = (round(log2|W|), sign W): the same power of two as Q wherever |W| >= 2^p_min(PS)
    wq, wps = q.conv1.shift_weight(), ps.conv1.shift_weight()
    big = base.conv1.weight.abs() >= 2.0 ** -14
    assert torch.equal(wq[big], wps[big])


# ----------------------------------------------------------------------------- finalisation
@pytest.mark.parametrize("mode", ["q", "ps"])
def test_finalize_bakes_exact_powers_of_two_and_survives_reload(mode, tmp_path):
    net = tiny()
    convert_to_shift(net, (3, 8, 8), mode=mode, weight_bits=4)
    opt = ps_optimizer(net, 1e-2, 0.0) if mode == "ps" else torch.optim.SGD(net.parameters(), lr=0.05)
    net.train()
    x = torch.randn(8, 3, 8, 8)
    for _ in range(3):  # move the latent values off their initial powers of two
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), torch.arange(8) % 5).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        before = net(x)
    finalize(net)
    assert not any(isinstance(m, (ShiftConv2dQ, ShiftConv2dPS)) for m in net.modules())
    assert not any(k.endswith((".shift", ".sign")) for k in net.state_dict())
    p_min = p_min_for(mode, 4)
    for m in frozen_modules(net).values():
        assert is_pow2_or_zero(m.weight, p_min)
    with torch.no_grad():
        after = net(x)
    assert torch.equal(before, after)
    torch.save(net, tmp_path / "net.pt")
    reloaded = torch.load(tmp_path / "net.pt", weights_only=False).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), after)
    assert finalize(reloaded) is reloaded  # idempotent


# ----------------------------------------------------------------------------- export and check
def test_export_keeps_powers_of_two_and_the_check_bites(tmp_path):
    net = tiny()
    names = convert_to_shift(net, (3, 8, 8), mode="q", weight_bits=5)
    finalize(net)
    layers = [(i, tuple(net.get_submodule(n).weight.shape)) for i, n in enumerate(names)]
    check = Pow2Check(layers, p_min_for("q", 5), 3)
    good = ShiftExporter((3, 8, 8))(net, tmp_path / "shift.onnx", (3, 8, 8))
    cols = check(good)
    assert cols["pow2_ok"] is True and cols["pow2_bad_weights"] == 0 and cols["pow2_layers"] == 3
    assert cols["pow2_checked_weights"] == sum(m.weight.numel() for m in frozen_modules(net).values())
    import onnxruntime as ort

    x = torch.randn(2, 3, 8, 8)
    got = ort.InferenceSession(str(good), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(got, net(x).numpy(), atol=1e-5)
    folded = export_onnx(net, tmp_path / "folded.onnx", (3, 8, 8))  # the harness exporter folds BN
    bad = check(folded)
    assert bad["pow2_ok"] is False and bad["pow2_bad_weights"] > 0


def test_channel_affine_equals_eval_batchnorm():
    bn = tiny().bn2
    x = torch.randn(2, 6, 3, 3)
    with torch.no_grad():
        assert torch.allclose(ChannelAffine.from_bn(bn)(x), bn(x), atol=1e-6)


# ----------------------------------------------------------------------------- int8 variant
def test_int8_weights_exact_within_seven_levels():
    w = np.array([[1.0, -0.5, 2.0 ** -6, 0.0], [0.25, -2.0 ** -8, 2.0 ** -9, 2.0 ** -10]], np.float32)
    q, scale, inexact = int8_weights(w)
    assert scale.tolist() == [2.0 ** -6, 2.0 ** -8]
    assert q.tolist() == [[64, -32, 1, 0], [64, -1, 0, 0]]  # 2^-9, 2^-10: below 7 levels -> 0
    assert inexact == 2
    exact = q.astype(np.float64) * scale[:, None]
    assert (exact[0] == w[0]).all()


# ----------------------------------------------------------------------------- sizes and knobs
def test_packed_size_resnet56_five_bits_is_at_most_a_sixth_of_fp32():
    torch.manual_seed(0)
    net = build_model("resnet56")
    convert_to_shift(net, (3, 32, 32), mode="q", weight_bits=5)
    finalize(net)
    sizes = packed_sizes(net, 5)
    fp32 = size_bytes(net)
    assert sizes["packed"] <= fp32 / 6
    weights = sum(m.weight.numel() for m in frozen_modules(net).values())
    assert sizes["packed"] == fp32 - 4 * weights + sum(math.ceil(m.weight.numel() * 5 / 8)
                                                        for m in frozen_modules(net).values())


def test_knobs_and_validation():
    method = DeepShift()
    combos = method.budgets()
    assert {(c["mode"], c["weight_bits"]) for c in combos} == {(m, b) for m in ("q", "ps") for b in (5, 4, 3)}
    with pytest.raises(UserError):
        method.budgets({"act_bits": ["x.y"]})


def test_int8_variant_graph_is_exact_and_fused(tmp_path):
    from harness.data import load_data
    from harness.train import BASELINE_RECIPES
    from methods.base import MethodContext
    from methods.deepshift.int8 import int8_deployable

    net = tiny()
    with torch.no_grad():
        net.bn2.weight[1] = -0.75  # a negative BN factor: its sign must go into the int8 weights
    names = convert_to_shift(net, (3, 8, 8), mode="ps", weight_bits=3)  # span <= 3 levels: all exact
    finalize(net)
    data = load_data("synthetic:64", input_size=8)
    ctx = MethodContext(model_name="tiny", model=net, data=data, recipe=BASELINE_RECIPES["quick"], seed=0,
                        workdir=tmp_path, preset="quick", structure_only=False, log=lambda m: None)
    dep = int8_deployable(ctx, net, (3, 8, 8), names, "ps", 3)
    assert dep.variant == "int8" and dep.model is net and dep.extra["int8_bn_folded"] is True
    path = dep.export_onnx(net, tmp_path / "int8.onnx", (3, 8, 8))
    cols = dep.check_graph(path)
    assert cols["int8_layers"] == 2 and cols["int8_weights_pow2_ok"] is True
    assert cols["int8_inexact_weights"] == 0 and cols["int8_exact_share"] == 1.0
    assert dep.requires == {"int8_qdq"}
    # BN is folded into the convs: no float Mul/Add (the written-out BN) and no BatchNormalization left
    import onnx

    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "BatchNormalization" not in ops and "Mul" not in ops and ops.count("Conv") == 2
    # the int8 weights times their scales are the BN-folded shift weights, exactly
    from onnx import numpy_helper
    from methods.deepshift.int8 import fold_batchnorm

    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    folded = fold_batchnorm(net, (3, 8, 8), names)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    for node, name in zip(convs, ("conv1", "conv2")):
        dq = producers[node.input[1]]
        q, scale = inits[dq.input[0]].astype(np.float64), inits[dq.input[1]].astype(np.float64)
        w = folded.get_submodule(name).weight.detach().numpy().astype(np.float64)
        assert np.array_equal(q * scale[:, None, None, None], w)
        assert (scale > 0).all()
    # what ORT runs in int8 comes from its own optimised graph, collected in the cell
    from targets import Artifact, get_target

    session = get_target("ort-cpu").compile(Artifact("int8", (3, 8, 8), onnx_path=path), batch=1,
                                            scenario="SingleStream", threads=1)
    facts = dep.check_facts("ort-cpu", session.graph_facts())
    assert facts["int8_ort_qlinearconv"] == 2  # both convs fused
    # the ReLUs went into the QuantizeLinear after each conv: conv1's output stays uint8 into conv2
    assert facts["int8_ort_qdq_left"] <= 2, facts  # the input's Q and the DQ before pooling/classifier
    x = dep.export_onnx.images[:8]  # calibration images: inside the calibrated ranges
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    out = np.concatenate([session.run(x[i:i + 1]) for i in range(len(x))])
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()
    assert dep.size_bytes < size_bytes(net)


def test_ps_scratch_init_is_explicit():
    torch.manual_seed(0)
    net = tiny()
    convert_to_shift(net, (3, 8, 8), mode="ps", weight_bits=5, scratch=True)
    conv_p, fc_p = net.conv2.shift.detach(), net.fc.shift.detach()
    assert conv_p.min() >= -10 and conv_p.max() <= -1  # U(-10, -1) for convs
    assert fc_p.min() >= -14 and fc_p.max() <= 0  # U(p_min, 0) for linears
    assert net.conv2.sign.abs().max() <= 1 and net.conv2.sign.std() > 0.3  # U(-1, 1), not sign(W)
