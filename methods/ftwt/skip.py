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

No ``torch.jit``/compile tricks: plain modules, picklable (torch-eager target), and traceable by
the TorchScript ONNX exporter, which keeps the selection inside the graph (NonZero -> Gather ->
Conv) at run time.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from methods.ftwt.gating import FTWTNet, GatedUnit


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
        self.stride = unit.conv.stride
        self.padding = unit.conv.padding
        self.c_in = unit.conv.in_channels
        self.relu = not isinstance(unit.act, nn.Identity)
        self.relu6 = isinstance(unit.act, nn.ReLU6)
        self.max_pool = unit.pool == "max"

    def logits(self, x: torch.Tensor, live: torch.Tensor | None) -> torch.Tensor:
        """(B, C_out) predictor logits from the compact input (mask = logits > 0)."""
        e = x.amax(dim=(2, 3)) if self.max_pool else x.mean(dim=(2, 3))
        if live is not None:
            e = e.new_zeros(e.shape[0], self.c_in).index_copy_(1, live, e)
        return torch.addmm(self.pb, torch.softmax(e, dim=1), self.pw)

    def forward(self, x: torch.Tensor, live: torch.Tensor | None):
        logits = self.logits(x, live)
        batched = x.shape[0] != 1 or torch.jit.is_tracing()
        if batched:
            # union over the batch; when nothing is selected, the best channel is computed anyway
            # (and zeroed by the mask below), so the set is never empty: no data-dependent branch,
            # which keeps the traced ONNX graph valid for every input.
            best = logits.amax(dim=0)
            sel = (best >= torch.clamp(best.max(), max=0.0)).nonzero().view(-1)
        else:
            sel = (logits[0] > 0).nonzero().view(-1)
        w = self.weight.index_select(0, sel)
        b = self.bias.index_select(0, sel)
        if live is not None:
            w = w.index_select(1, live)
        if not batched and (sel.shape[0] == 0 or (live is not None and live.shape[0] == 0)):
            y = _empty_conv(x, w, b, self.stride, self.padding)
        else:
            y = F.conv2d(x, w, b, self.stride, self.padding)
        if self.relu6:
            y = torch.clamp_(y, 0.0, 6.0)
        elif self.relu:
            y = torch.relu_(y)
        if batched:  # each sample keeps exactly its own filters
            y = y * (logits.index_select(1, sel) > 0).to(y.dtype)[:, :, None, None]
        return y, sel


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


SKIP_FAMILIES = {"cifar_resnet": SkipResNet, "cifar_vgg": SkipVGG}


def build_skip(net: FTWTNet) -> nn.Module | None:
    """The real-skipping network for ``net``, or None for a family without one."""
    cls = SKIP_FAMILIES.get(net.family)
    return cls(net).eval() if cls is not None else None


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
