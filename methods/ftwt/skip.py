"""Real skipping: an inference network that computes only the filters each input selects.

Built from a trained ``FTWTNet`` (CIFAR ResNets and VGG): every gated conv becomes a ``SkipConv``
with BN folded into its weight and bias. Activations travel *compact*: a tensor holding only the
live channels plus a LongTensor of their indices (None = dense). For each conv:

1. predictor: pool the compact input, scatter it into a C_in vector (dead channels are 0, exactly
   as in the masked network, so the softmax is the same), softmax, Linear, ``> 0``;
2. ``sel`` = indices of the selected output filters (``nonzero``: no ``.item()``/``.tolist()``);
3. the weight slice ``W[sel][:, live_in]`` and ``b[sel]`` are gathered and one conv runs on the
   compact input; ReLU in place.

Residual blocks scatter-add the live conv2 channels into the dense residual (``index_add_``), so
the block output is dense. The classifier reads only the live columns of its weight.

Batch policy (documented in the README): the computed set of a layer is the *union* of the
selections of the samples in the batch, and each sample's output is then multiplied by its own
mask, so every sample gets exactly its masked-dense result. At batch 1 the union is the sample's
own set and the multiply is skipped. With large batches the union tends to the dense set.

Batch 1 in eager (``SkipConv._single``) is the latency path: a trimmed op sequence and a conv
kernel picked by shape (``_conv_single``: NNPACK for stride-1 3x3 convs on maps >= 16x16 at one thread, a
transposed im2col GEMM for maps of <= 4 output pixels, THNN otherwise; the measurements behind
that choice are in the comment above it). Batched inputs and tracing take ``SkipConv._batched``
(plain ``F.conv2d``).

No ``torch.jit``/compile tricks: plain modules, picklable (torch-eager target), and traceable by
the TorchScript ONNX exporter, which keeps the selection inside the graph (NonZero -> Gather ->
Conv) at run time. (Scripting the batch-1 step saved ~0.5 us of ~12 us per conv: not worth it.)
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from methods.ftwt.gating import GatedUnit
from methods.ftwt.wiring import FTWTNet


def _fold(unit: GatedUnit) -> tuple[torch.Tensor, torch.Tensor]:
    conv, bn = unit.conv, unit.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight * scale[:, None, None, None]
    b = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        b = b + conv.bias * scale
    return w.detach().clone(), b.detach().clone()


class SkipConv(nn.Module):
    """One gated conv (BN folded) that computes only its selected output filters from the live
    input channels. ``forward(x, live) -> (y, sel)``; ``live``/``sel`` are index tensors or None."""

    def __init__(self, unit: GatedUnit):
        super().__init__()
        w, b = _fold(unit)
        self.weight = nn.Parameter(w, requires_grad=False)
        self.bias = nn.Parameter(b, requires_grad=False)
        self.pw = nn.Parameter(unit.predictor.weight.detach().t().contiguous(), requires_grad=False)
        self.pb = nn.Parameter(unit.predictor.bias.detach().clone(), requires_grad=False)
        # -pb for the batch-1 compare (logits > 0 <=> softmax(e) @ pw > -pb); derived from pb
        # here, so rebuild the SkipConv (build_skip) after changing the predictor bias.
        self.register_buffer("neg_pb", -self.pb.detach().clone())
        self.stride = unit.conv.stride
        self.padding = unit.conv.padding
        self.c_in = unit.conv.in_channels
        self.relu = not isinstance(unit.act, nn.Identity)
        self.relu6 = isinstance(unit.act, nn.ReLU6)
        self.max_pool = unit.pool == "max"

    def __setstate__(self, state):
        # modules pickled by the previous engine (sweep artifacts) have no neg_pb
        super().__setstate__(state)
        if "neg_pb" not in self._buffers:
            self.register_buffer("neg_pb", -self.pb.detach().clone())

    def logits(self, x: torch.Tensor, live: torch.Tensor | None) -> torch.Tensor:
        """(B, C_out) predictor logits from the compact input (mask = logits > 0)."""
        e = x.amax(dim=(2, 3)) if self.max_pool else x.mean(dim=(2, 3))
        if live is not None:
            e = e.new_zeros(e.shape[0], self.c_in).index_copy_(1, live, e)
        return torch.addmm(self.pb, torch.softmax(e, dim=1), self.pw)

    def forward(self, x: torch.Tensor, live: torch.Tensor | None):
        if x.shape[0] == 1 and not torch.jit.is_tracing():
            return self._single(x, live)
        return self._batched(x, live)

    def _single(self, x: torch.Tensor, live: torch.Tensor | None):
        """Batch 1, eager: the sample's own selection, fewest ops (this runs 55 times per ResNet-56
        inference, so every op counts: ~2-3 us of dispatch each against ~20-40 us per conv)."""
        e = x.amax(dim=(2, 3)) if self.max_pool else x.mean(dim=(2, 3))
        if live is not None:
            e = e.new_zeros(1, self.c_in).index_copy_(1, live, e)
        # mask = (softmax(e) @ pw + pb > 0) == (softmax(e) @ pw > -pb): mm + an in-place
        # tensor compare is two ops where addmm + select + compare-with-scalar were three.
        sel = torch.mm(torch.softmax(e, dim=1), self.pw).gt_(self.neg_pb).view(-1).nonzero().view(-1)
        w, b = self._slices(sel, live)
        if sel.shape[0] == 0 or x.shape[1] == 0:
            y = _empty_conv(x, w, b, self.stride, self.padding)
        else:
            y = _conv_single(x, w, b, self.stride, self.padding)
        return self._act(y), sel

    def _batched(self, x: torch.Tensor, live: torch.Tensor | None):
        """Batch > 1, and the traced (ONNX) graph: the union of the batch's selections, then each
        sample multiplied by its own mask."""
        logits = self.logits(x, live)
        # union over the batch; when nothing is selected, the best channel is computed anyway
        # (and zeroed by the mask below), so the set is never empty: no data-dependent branch,
        # which keeps the traced ONNX graph valid for every input.
        best = logits.amax(dim=0)
        sel = (best >= torch.clamp(best.max(), max=0.0)).nonzero().view(-1)
        w, b = self._slices(sel, live)
        y = self._act(F.conv2d(x, w, b, self.stride, self.padding))
        # each sample keeps exactly its own filters
        y = y * (logits.index_select(1, sel) > 0).to(y.dtype)[:, :, None, None]
        return y, sel

    def _slices(self, sel: torch.Tensor, live: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the selected filters, restricted to the live input channels."""
        w = self.weight.index_select(0, sel)
        if live is not None:
            w = w.index_select(1, live)
        return w, self.bias.index_select(0, sel)

    def _act(self, y: torch.Tensor) -> torch.Tensor:
        if self.relu6:
            return torch.clamp_(y, 0.0, 6.0)
        return torch.relu_(y) if self.relu else y


# Batch-1 conv kernels. At batch 1 PyTorch sends a 3x3 fp32 conv with a small input to THNN's
# im2col + GEMM (``_slow_conv2d_forward``); measured here (1 thread, min of rounds, us):
#
#   shape (C_in->C_out @ HxW)   THNN   NNPACK   mkldnn(NCHW / NHWC fused ReLU)  im2col+mm^T
#   16->10 @ 32x32              63-75  33       59 / 50
#   10->10 @ 32x32              39-45  22       44 / 42
#   19->19 @ 16x16              34     17       54 / 40
#   38->38 @ 8x8                30     35-37    48 / 43                          31 (mm 20 + im2col 12)
#   300->300 @ 4x4              333    1383     359 / 521                        320
#   300->300 @ 2x2              651    -        259 / 462                        134 (mm^T 124 + im2col 10)
#   512->512 @ 2x2              1910   -        -                                361
#
# - THNN's im2col is a fixed cost that does not shrink with the selected filters, so at
#   32x32 / 16x16 a conv on 60 % of the filters costs ~85 % of the dense one. NNPACK (the kernel
#   PyTorch itself uses for batches >= 16) has no such floor: we call it for stride-1 3x3 convs
#   with a spatial size >= 16, at ONE intra-op thread only. With 2 threads its own thread pool
#   and PyTorch's OpenMP pool fight over the cores; measured on a quiet machine (2 threads, us,
#   THNN / NNPACK): 16->10 @ 32x32 66 / 91, 19->19 @ 16x16 26 / 44, 32->32 @ 16x16 45 / 110. Its error is ~1e-5 relative per conv (THNN ~1e-6); end to end the
#   logits stay within ~5e-6 of masked-dense on the trained nets.
# - At 2x2 THNN's GEMM has N = H*W = 4 columns, a shape MKL handles badly; the same product
#   transposed (N = C_out) is ~5x faster, so tiny maps use an explicit im2col (one gather from a
#   padded copy) and ``addmm(b, cols^T, W^T)``.
# - mkldnn (``torch.mkldnn_convolution``, ``mkldnn._convolution_pointwise`` with fused ReLU,
#   channels_last) did not pay in the network: the selected shapes change with every input, so
#   its primitive cache misses (resnet56 at 60 % kept: 0.75-0.9x the THNN engine's speed).
# - 8x8 and 4x4 stay on THNN (nothing measured was faster).
_NNPACK = False
if hasattr(torch, "_nnpack_available"):
    try:  # also initialises NNPACK: the first call of the op fails without it
        _NNPACK = bool(torch._nnpack_available())
    except RuntimeError:
        _NNPACK = False
_NNPACK_MIN_HW = 16
_SMALL_HW = 4  # output pixels at or below which the transposed im2col GEMM is used
_COLS_INDEX: dict[tuple[int, int, int, int, int, int], torch.Tensor] = {}


def _conv_single(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride, padding) -> torch.Tensor:
    """One conv at batch 1 on the fastest kernel for its shape (see the table above); every
    kernel computes exactly the gathered filters on the live channels."""
    if x.is_cpu:
        h, wd = x.shape[2], x.shape[3]
        kh, kw = w.shape[2], w.shape[3]
        if (_NNPACK and stride[0] == 1 and stride[1] == 1 and kh == 3 and kw == 3
                and h >= _NNPACK_MIN_HW and wd >= _NNPACK_MIN_HW and torch.get_num_threads() == 1):
            return torch._nnpack_spatial_convolution(x, w, b, list(padding), [1, 1])
        ho = (h + 2 * padding[0] - kh) // stride[0] + 1
        wo = (wd + 2 * padding[1] - kw) // stride[1] + 1
        if ho * wo <= _SMALL_HW:
            return _conv_small(x, w, b, stride, padding, ho, wo)
    return F.conv2d(x, w, b, stride, padding)


def _conv_small(x, w, b, stride, padding, ho, wo):
    """im2col by one gather from the padded input, then (H*W, C_out) = cols^T @ W^T + b. The
    result is returned as a (1, C_out, ho, wo) view of the transposed product (no copy)."""
    c, h, wd = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    key = (h, wd, kh, kw, stride[0] * 1000 + stride[1], padding[0] * 1000 + padding[1])
    idx = _COLS_INDEX.get(key)
    if idx is None:
        wp = wd + 2 * padding[1]
        oy = torch.arange(ho)[:, None] * stride[0]
        ox = torch.arange(wo)[None, :] * stride[1]
        base = (oy * wp + ox).reshape(-1)
        idx = torch.cat([base + ky * wp + kx for ky in range(kh) for kx in range(kw)])
        _COLS_INDEX[key] = idx
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0])).view(c, -1)
    cols = xp.index_select(1, idx).view(c * kh * kw, ho * wo)
    out = torch.addmm(b, cols.t(), w.view(w.shape[0], -1).t())  # (ho*wo, C_out)
    return out.t().view(1, w.shape[0], ho, wo)


def _empty_conv(x, w, b, stride, padding):
    """A conv with no selected filters or no live input channels (eager path only): the output of
    a conv on an all-zero input is its bias."""
    h = (x.shape[2] + 2 * padding[0] - w.shape[2]) // stride[0] + 1
    wd = (x.shape[3] + 2 * padding[1] - w.shape[3]) // stride[1] + 1
    return b[None, :, None, None].expand(x.shape[0], b.shape[0], h, wd).contiguous()


def _dense(x: torch.Tensor, live: torch.Tensor | None, channels: int) -> torch.Tensor:
    if live is None:
        return x
    return x.new_zeros(x.shape[0], channels, x.shape[2], x.shape[3]).index_copy_(1, live, x)


class SkipBasicBlock(nn.Module):
    """CIFAR BasicBlock: conv1 (ReLU) -> conv2 (pre-residual mask) -> scatter-add into the dense
    residual -> ReLU. The option-A shortcut is an average pool plus zero channels."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv1 = SkipConv(block.conv1)
        self.conv2 = SkipConv(block.conv2)
        self.in_planes = block.conv1.conv.in_channels
        self.out_planes = block.conv2.conv.out_channels
        self.down = block.conv1.conv.stride[0]

    def forward(self, x: torch.Tensor, live: torch.Tensor | None):
        y, s1 = self.conv1(x, live)
        y, s2 = self.conv2(y, s1)
        res = _dense(x, live, self.in_planes)
        if self.down > 1:
            res = F.avg_pool2d(res, self.down, self.down)
        if self.out_planes > self.in_planes:
            res = F.pad(res, (0, 0, 0, 0, 0, self.out_planes - self.in_planes))
        return torch.relu_(res.index_add_(1, s2, y)), None


class SkipResNet(nn.Module):
    """CIFAR ResNet with real skipping (see the module docstring)."""

    def __init__(self, net: FTWTNet):
        super().__init__()
        m = net.net
        self.stem = SkipConv(m.conv1)
        self.blocks = nn.ModuleList([SkipBasicBlock(b) for s in (m.layer1, m.layer2, m.layer3) for b in s])
        self.fc_w = nn.Parameter(m.fc.weight.detach().clone(), requires_grad=False)
        self.fc_b = nn.Parameter(m.fc.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, live = self.stem(x, None)
        for blk in self.blocks:
            x, live = blk(x, live)
        x = _dense(x, live, self.fc_w.shape[1])
        return F.linear(x.mean(dim=(2, 3)), self.fc_w, self.fc_b)


class SkipVGG(nn.Module):
    """CIFAR VGG with real skipping: convs and 2x2 max pools (channel-wise, so the live set
    passes through), classifier on the live columns."""

    def __init__(self, net: FTWTNet):
        super().__init__()
        layers, pools = [], []
        for m in net.net.features:
            if isinstance(m, GatedUnit):
                layers.append(SkipConv(m))
                pools.append(0)
            elif isinstance(m, nn.MaxPool2d):
                pools[-1] += 1  # number of 2x2 max pools after this conv
        self.convs = nn.ModuleList(layers)
        self.pool_after = pools
        self.fc_w = nn.Parameter(net.net.classifier.weight.detach().clone(), requires_grad=False)
        self.fc_b = nn.Parameter(net.net.classifier.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        live = None
        for conv, pool in zip(self.convs, self.pool_after):
            x, live = conv(x, live)
            for _ in range(pool):
                x = (F.max_pool2d(x, 2, 2) if x.shape[1] > 0 else  # no live channel (eager only)
                     x.new_zeros(x.shape[0], 0, x.shape[2] // 2, x.shape[3] // 2))
        x = torch.flatten(x, 1)
        w = self.fc_w if live is None else self.fc_w.index_select(1, live)
        return F.linear(x, w, self.fc_b)


SKIP_FAMILIES = {"resnet_cifar": SkipResNet, "vgg_cifar": SkipVGG}


def build_skip(net: FTWTNet, select_all: bool = False) -> nn.Module | None:
    """The real-skipping network for ``net``, or None for a family without one.

    ``select_all``: the same engine (BN folded, predictors run, weights gathered, the same batch-1
    kernels) with every filter selected. It computes the dense function; measured beside the
    skipping network it separates what skipping buys from what the engine's kernels and folding
    buy over the dense baseline (the ``skip-all`` variant)."""
    cls = SKIP_FAMILIES.get(net.family)
    if cls is None:
        return None
    model = cls(net).eval()
    if select_all:
        for m in model.modules():
            if isinstance(m, SkipConv):
                # logits = softmax(e) @ pw + pb with softmax(e) in the simplex: pb above the
                # largest |pw| makes every logit positive for every input
                big = float(m.pw.abs().max()) + 1.0
                m.pb.data.fill_(big)
                m.neg_pb.fill_(-big)
    return model


def export_skip_onnx(model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> Path:
    """The skipping network as ONNX with the selection inside the graph (NonZero -> Gather on the
    weights -> Conv, run time). The TorchScript exporter traces the batched (union) path with a
    dynamic batch axis; the dynamo exporter cannot export data-dependent channel counts into
    ``conv2d`` here."""
    from harness.export import export_onnx

    return export_onnx(model, path, input_shape, opset=17, exporter="legacy")


def check_skip_graph(path: Path) -> dict:
    """Graph-survival check for the skipping export: the selection must be in the graph (NonZero
    feeding Gathers on the weights), and no Conv may have a constant weight."""
    import onnx

    from harness.export import onnx_summary

    nodes = onnx.load(str(path)).graph.node
    summary = onnx_summary(path)
    return {"ftwt_onnx_nonzero_nodes": sum(n.op_type == "NonZero" for n in nodes),
            "ftwt_onnx_gather_nodes": sum(n.op_type == "Gather" for n in nodes),
            "ftwt_onnx_conv_nodes": summary["conv_nodes"],
            "ftwt_onnx_static_convs": sum(s is not None for s in summary["conv_shapes"])}
