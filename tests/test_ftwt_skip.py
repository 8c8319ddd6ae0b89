"""FTWT real-skipping engine (methods/ftwt/skip.py): the batch-1 conv kernels (NNPACK for large
maps, a transposed im2col GEMM for tiny maps, THNN otherwise) against ``F.conv2d``, and a tiny VGG
whose convs hit every kernel, against masked-dense at batch 1, batched and after pickling."""
from __future__ import annotations

import io

import pytest
import torch
from torch.nn import functional as F

from harness.models.cifar_resnet import CifarResNet
from harness.models.cifar_vgg import CifarVGG
from methods.ftwt import skip
from methods.ftwt.cost import measure_macs
from methods.ftwt.wiring import wrap


@pytest.mark.parametrize("c_in,c_out,hw,stride", [
    (10, 7, 32, 1),   # NNPACK (when available)
    (5, 9, 16, 1),    # NNPACK
    (19, 11, 8, 1),   # THNN
    (13, 6, 2, 1),    # transposed im2col GEMM, 2x2
    (7, 5, 1, 1),     # transposed im2col GEMM, 1x1 map (only the centre tap sees data)
    (6, 8, 4, 2),     # stride 2 to 2x2: transposed im2col GEMM
    (6, 8, 32, 2),    # stride 2, large: THNN
])
def test_single_conv_kernels_match_conv2d(c_in, c_out, hw, stride):
    torch.manual_seed(hw * 100 + c_in)
    x = torch.randn(1, c_in, hw, hw).relu()
    w = torch.randn(c_out, c_in, 3, 3) * 0.2
    b = torch.randn(c_out)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):  # NNPACK is chosen at one thread only
            torch.set_num_threads(n)
            with torch.inference_mode():
                got = skip._conv_single(x, w, b, (stride, stride), (1, 1))
                ref = F.conv2d(x, w, b, stride, 1)
            assert got.shape == ref.shape
            assert (got - ref).abs().max() < 1e-4
    finally:
        torch.set_num_threads(threads)


def _randomise_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("nnpack", [True, False])
def test_vgg_every_kernel_matches_masked(monkeypatch, nnpack):
    # 32x32 and 16x16 (NNPACK), 4x4 (THNN), 2x2 (transposed GEMM), then 1x1 into the classifier
    monkeypatch.setattr(skip, "_NNPACK", skip._NNPACK and nnpack)
    torch.manual_seed(1)
    model = CifarVGG([12, 12, "M", 16, "M", "M", 16, "M", 16, "M"])
    _randomise_bn(model)
    net = wrap(model, (3, 32, 32), family="vgg_cifar").eval()
    for u in net.units:  # keep roughly half of the filters
        u.predictor.bias.data -= u.predictor.bias.data.mean() + 0.02
    sk = skip.build_skip(net)
    buf = io.BytesIO()
    torch.save(sk, buf)  # the torch-eager target pickles the module
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = torch.randn(6, 3, 32, 32)
    with torch.inference_mode():
        ref = net(x)
        for m in (sk, loaded):
            single = torch.cat([m(x[i:i + 1]) for i in range(len(x))])
            assert (single - ref).abs().max() < 1e-4
        assert (sk(x) - ref).abs().max() < 1e-4
    macs = measure_macs(net, x)
    assert macs.max() < 0.8 * net.spec.dense_macs()  # really skipping, not near-dense


def test_resnet_single_matches_masked_with_dead_layer():
    torch.manual_seed(2)
    model = CifarResNet(8)
    _randomise_bn(model)
    net = wrap(model, (3, 32, 32), family="resnet_cifar").eval()
    net.units[1].predictor.bias.data.fill_(-100.0)  # conv1 of block 1 never selects anything
    sk = skip.build_skip(net)
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        ref = net(x)
        single = torch.cat([sk(x[i:i + 1]) for i in range(len(x))])
    assert (single - ref).abs().max() < 1e-4


def test_unpickles_modules_of_the_previous_engine():
    # sweep artifacts pickled before neg_pb existed must still load and run
    torch.manual_seed(3)
    net = wrap(CifarResNet(8), (3, 32, 32), family="resnet_cifar").eval()
    sk = skip.build_skip(net)
    for m in sk.modules():
        if isinstance(m, skip.SkipConv):
            del m._buffers["neg_pb"]
    buf = io.BytesIO()
    torch.save(sk, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        assert (loaded(x) - net(x)).abs().max() < 1e-4
