"""FTWT real-skipping engine (methods/ftwt/skip.py): the batch-1 conv kernels against
``F.conv2d``, and every family with a plan (CIFAR ResNet, VGG, MobileNetV2; torchvision ResNet-18,
-34, -50 and MobileNetV2) against the masked network at batch 1 (TorchScript and Python), batched,
after pickling, and with a layer that selects nothing."""
from __future__ import annotations

import io

import pytest
import torch
from torch.nn import functional as F
from torchvision import models as tvm

from harness.models.cifar_mobilenet import CifarMobileNetV2
from harness.models.cifar_resnet import CifarResNet
from harness.models.cifar_vgg import CifarVGG
from methods.ftwt import skip
from methods.ftwt.cost import measure_macs
from methods.ftwt.wiring import wrap


def _spec(c_in, k, stride, pad, hw, depthwise=False, mm1x1=False, small=False):
    return skip.ConvSpec(c_in, stride, pad, k, depthwise, False, False, True, mm1x1, small, False, 0, hw, hw)


@pytest.mark.parametrize("c_in,c_out,hw,k,stride,kernel", [
    (10, 7, 32, 3, 1, "thnn"),
    (19, 11, 8, 3, 2, "thnn"),
    (13, 6, 2, 3, 1, "small"),   # transposed im2col GEMM, 2x2
    (7, 5, 1, 3, 1, "small"),    # 1x1 map (only the centre tap sees data)
    (6, 8, 4, 3, 2, "small"),    # stride 2 to 2x2
    (12, 9, 8, 1, 1, "mm1x1"),
    (9, 9, 8, 3, 2, "dw"),
])
def test_single_conv_kernels_match_conv2d(c_in, c_out, hw, k, stride, kernel):
    torch.manual_seed(hw * 100 + c_in)
    pad = k // 2
    x = torch.randn(1, c_in, hw, hw).relu()
    dw = kernel == "dw"
    w = torch.randn(c_out, 1 if dw else c_in, k, k) * 0.2
    b = torch.randn(c_out)
    ho = (hw + 2 * pad - k) // stride + 1
    d = _spec(c_in, k, stride, pad, hw, depthwise=dw, mm1x1=kernel == "mm1x1", small=kernel == "small")
    idx = skip._cols_index((hw, hw), k, stride, pad, ho, ho) if kernel == "small" else torch.zeros(0, dtype=torch.long)
    with torch.inference_mode():
        got = skip._conv_single(x, w, b, d, idx)
        ref = F.conv2d(x, w, b, stride, pad, 1, c_in if dw else 1)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() < 1e-4


def _randomise_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


# (model, family, input shape): every family with a skipping plan; the torchvision networks at
# 64x64 so that the test stays fast (the plan does not depend on the input size)
FAMILIES = [
    (lambda: CifarResNet(8), "resnet_cifar", (3, 32, 32)),
    # 32x32 and 16x16 (THNN), 4x4 (THNN), 2x2 (transposed GEMM), then 1x1 into the classifier
    (lambda: CifarVGG([12, 12, "M", 16, "M", "M", 16, "M", 16, "M"]), "vgg_cifar", (3, 32, 32)),
    (CifarMobileNetV2, "mobilenet_v2_cifar", (3, 32, 32)),
    (lambda: tvm.resnet18(num_classes=10), "resnet_imagenet", (3, 64, 64)),
    (lambda: tvm.resnet34(num_classes=10), "resnet_imagenet", (3, 64, 64)),
    (lambda: tvm.resnet50(num_classes=10), "resnet_imagenet", (3, 64, 64)),
    (lambda: tvm.mobilenet_v2(num_classes=10), "mobilenet_v2_imagenet", (3, 64, 64)),
]


def _gated(build, family, shape, seed=1):
    torch.manual_seed(seed)
    model = build()
    _randomise_bn(model)
    net = wrap(model, shape, family=family).eval()
    for u in net.units:  # keep roughly half of the filters
        u.predictor.bias.data -= u.predictor.bias.data.mean() + 0.02
    net.units[2].predictor.bias.data.fill_(-100.0)  # a layer that never selects anything
    return net


@pytest.mark.parametrize("build,family,shape", FAMILIES, ids=[f"{f}-{i}" for i, (_, f, _) in enumerate(FAMILIES)])
def test_every_family_matches_masked(build, family, shape, monkeypatch):
    net = _gated(build, family, shape)
    sk = skip.build_skip(net)
    x = torch.randn(3, *shape)
    with torch.inference_mode():
        ref = net(x)
        scale = max(1.0, float(ref.abs().max()))
        single = torch.cat([sk(x[i:i + 1]) for i in range(len(x))])
        assert sk.engine == "torchscript"
        assert (single - ref).abs().max() / scale < 1e-4
        assert (sk(x) - ref).abs().max() / scale < 1e-4  # batched: union of masks, per-sample multiply
        python = skip.build_skip(net).use_python()  # the same plan, uncompiled
        assert (python(x[:1]) - ref[:1]).abs().max() / scale < 1e-4
        monkeypatch.setattr(skip, "_FLAT_GATHER", 0)  # every weight slice by one flat gather
        flat = skip.build_skip(net)
        assert all(d.flat or d.depthwise for d in flat.convs)
        assert (flat(x[:1]) - ref[:1]).abs().max() / scale < 1e-4
    macs = measure_macs(net, x)
    assert macs.max() < 0.8 * net.spec.dense_macs()  # really skipping, not near-dense


def test_pickled_network_runs_and_select_all_is_the_dense_function():
    net = _gated(lambda: tvm.resnet18(num_classes=10), "resnet_imagenet", (3, 64, 64))
    sk = skip.build_skip(net)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        sk(x[:1])  # compiled before pickling: the ScriptFunction is not pickled, and rebuilt
    buf = io.BytesIO()
    torch.save(sk, buf)  # the torch-eager target pickles the module
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.inference_mode():
        assert (loaded(x[:1]) - net(x[:1])).abs().max() < 1e-4 and loaded.engine == "torchscript"
        dense = net.set(gating=False)(x)
        every = skip.build_skip(net, select_all=True)
        assert (every(x[:1]) - dense[:1]).abs().max() < 1e-4
        assert (every(x) - dense).abs().max() < 1e-4


def test_networks_pickled_without_input_shape_need_it_given():
    net = wrap(CifarResNet(8), (3, 32, 32), family="resnet_cifar").eval()
    net.input_shape = None  # an FTWTNet pickled before the shape was recorded
    with pytest.raises(ValueError, match="input_shape"):
        skip.build_skip(net)
    assert skip.build_skip(net, input_shape=(3, 32, 32)) is not None
