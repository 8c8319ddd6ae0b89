"""Real skipping: an inference network that computes only the filters each input selects.

Built from a trained ``FTWTNet`` of any wired family with a plan here (CIFAR ResNets, VGG,
CIFAR MobileNetV2, torchvision ResNets and MobileNetV2): every gated conv gets BN folded into its
weight and bias. Activations travel *compact*: a tensor holding only the live channels plus a
LongTensor of their indices (None = dense). For each gated conv:

1. predictor: pool the compact input, scatter it into a C_in vector (dead channels are 0, exactly
   as in the masked network, so the softmax is the same), softmax, Linear, ``> 0``;
2. ``sel`` = indices of the selected output filters (``nonzero``: no ``.item()``/``.tolist()``);
3. the weight slice ``W[sel][:, live_in]`` and ``b[sel]`` are gathered and one conv runs on the
   compact input; the activation in place. A depthwise conv computes its selected channels from
   the dense input (a channel whose input is dead gives its activated bias, as in the masked net).

Residual blocks scatter-add the live channels of their last conv into the dense residual
(``index_add_``: identity, option-A pad shortcut, or a BN-folded shortcut conv on the compact
input), so the block output is dense. The classifier reads only the live columns of its weight.

The network is one *plan* (``SkipNet``): per-conv tensors and integer descriptors, per-block
descriptors (which convs, which residual), and one function, ``_run``, that walks it. Why a plan
and one function rather than a module per block: at batch 1 a ResNet-56 runs 55 small convs, and
the Python around each (module calls, attribute look-ups) cost as much as the ops themselves;
``_run`` is compiled with TorchScript at the first batch-1 call (``SkipNet._fast``), which removes
that Python overhead (``benchmarks/ftwt_skip_engine.py`` measures it: the README has the numbers).
torch.compile cannot take this network: inductor's conv lowering needs concrete weight sizes, and
here they come from ``nonzero`` (GuardOnDataDependentSymNode). If scripting fails, the same
function runs in Python (``engine`` says which).

Batch policy (documented in the README): the computed set of a layer is the *union* of the
selections of the samples in the batch, and each sample's output is then multiplied by its own
mask, so every sample gets exactly its masked-dense result. At batch 1 the union is the sample's
own set and the multiply is skipped. With large batches the union tends to the dense set.

Batch-1 conv kernels (``_conv_single``), chosen per layer when the plan is built: PyTorch's THNN
im2col + GEMM (``thnn_conv2d``, called directly: ``F.conv2d``'s backend selection costs ~3 us a
call) for 3x3 convs, one ``addmm`` for stride-1 1x1 convs, a transposed im2col GEMM for maps of
<= 4 output pixels, and ``F.conv2d`` with groups for depthwise convs. The measurements behind the
choice are in the comment above ``_conv_single``.

Traced (ONNX) and batched inputs take the union path; the TorchScript ONNX exporter keeps the
selection inside the graph (NonZero -> Gather -> Conv) at run time. A depthwise conv's group
count would be a constant in a traced graph, so when tracing it is written as its k*k shifted
multiply-adds (exact, any channel count).
"""
# no `from __future__ import annotations` here: TorchScript reads the NamedTuple field types
# at run time, and string annotations reach it as unresolvable ForwardRefs
import warnings
from pathlib import Path
from typing import List, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from methods.ftwt.gating import GatedUnit
from methods.ftwt.wiring import FTWTNet

class ConvSpec(NamedTuple):
    """One conv's static description (the plan's per-conv record). Booleans rather than codes:
    TorchScript cannot read module-level constants, and a bool test is its cheapest branch."""
    c_in: int
    stride: int
    pad: int
    k: int
    depthwise: bool
    relu: bool
    relu6: bool
    max_pool: bool    # predictor pooling: max (paper) or average (released code)
    mm1x1: bool       # batch-1 kernel: one addmm (stride-1 1x1 conv)
    small: bool       # batch-1 kernel: transposed im2col GEMM (<= 4 output pixels)
    flat: bool        # gather W[sel][:, live] as one index_select on (C_out*C_in, k*k) rows
    post: int         # max pools after the conv: n 2x2 pools (VGG), -1 = 3x3/2 pad 1 (torchvision stem)
    in_h: int
    in_w: int


class BlockSpec(NamedTuple):
    """A chain of gated convs (``first`` .. ``first + count - 1``, each reading the previous) and
    its residual, when ``residual``: the shortcut conv number ``shortcut`` on the block input, or
    (``shortcut`` < 0) the dense block input, ``down``x``down`` average pooled and zero-padded
    from ``c_in`` to ``c_out`` channels (CIFAR option A; identity when down is 1 and c_in ==
    c_out); the live channels of the last conv are added into it, then ReLU when ``relu``."""
    first: int
    count: int
    residual: bool
    shortcut: int
    down: int
    c_in: int
    c_out: int
    relu: bool


_SMALL_HW = 4  # output pixels at or below which the transposed im2col GEMM is used
# C_in * C_out from which the weight slice is gathered by one flat index_select: measured (2
# threads, us; two index_selects / one flat; --kernels): 16x16 3.0 / 5.0, 64x64 8.1 / 9.9,
# 512x512 with 150 of each 231 / 55, with 300 of each 564 / 235. The dim-1 index_select copies one slice per
# live channel; the flat one copies k*k floats per (filter, channel) pair.
_FLAT_GATHER = 128 * 128


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight * scale[:, None, None, None]
    b = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        b = b + conv.bias * scale
    return w.detach().clone().contiguous(), b.detach().clone()


# ------------------------------------------------------------------------------------ the kernels
# Batch-1 conv kernels, measured on the project machine (2 threads, us, median of 7 x 200 calls;
# THNN = PyTorch's batch-1 default, im2col + GEMM; ``benchmarks/ftwt_skip_engine.py --kernels``):
#
#   shape (C_in->C_out @ HxW)   THNN   mkldnn NCHW / NHWC   im2col (one gather) + mm   9 shifted mm   NNPACK
#   12->10 @ 32x32              40     75 / 58              144                        76             83
#   25->20 @ 16x16              39     92 / 65              105                        73             68
#   51->41 @ 8x8                33     78 / 72              89                         75             224
#   38->38 @ 32x32              180    273 / 166            411                        202            289
#   154->154 @ 8x8              161    184 / 257            232                        213            1305
#   307->307 @ 4x4              251    345 / 953            345                        292            5462
#
# - THNN is the fastest kernel at the shapes the networks run (mkldnn channels-last wins 8% at
#   38->38 @ 32x32 before its layout conversions are counted). NNPACK, which this engine used for
#   32x32 and 16x16 maps at one thread on the previous (AMD) machine, is 1.7-22x slower than
#   THNN on this Xeon at either thread count. ``thnn_conv2d`` is called directly: ``F.conv2d`` first walks
#   convolution -> _convolution -> backend selection (~3 us a call).
# - THNN at 2 threads is 1.1-1.6x faster than at 1 thread on these shapes (40 vs 44, 39 vs 44,
#   33 vs 50 us), so every conv runs at the caller's thread count.
# - At 2x2 THNN's GEMM has N = H*W = 4 columns, a shape MKL handles badly; the same product
#   transposed (N = C_out) is ~5x faster (measured on the previous machine; here vgg16_bn's 2x2
#   layers' convs take 139-177 us against 640-658 us dense, ``--layers vgg16_bn``), so tiny maps
#   use an explicit im2col (one gather from a padded copy, index precomputed for the layer's
#   input size) and ``addmm(b, cols^T, W^T)``.
# - A stride-1 1x1 conv is one ``addmm`` on the (C, H*W) view.
def _conv_single(x: Tensor, w: Tensor, b: Tensor, d: ConvSpec, idx: Tensor) -> Tensor:
    """One conv at batch 1 on the kernel chosen for its layer; exactly the gathered filters on
    the live channels."""
    if d.mm1x1:
        n = w.shape[0]
        return torch.addmm(b.view(-1, 1), w.view(n, -1), x.view(x.shape[1], -1)).view(1, n, x.shape[2], x.shape[3])
    if d.small and x.shape[2] == d.in_h and x.shape[3] == d.in_w:
        n, c, p, k = w.shape[0], x.shape[1], d.pad, d.k
        hw = _out_hw(x, d)
        cols = F.pad(x, [p, p, p, p]).view(c, -1).index_select(1, idx).view(c * k * k, hw[0] * hw[1])
        return torch.addmm(b, cols.t(), w.view(n, -1).t()).t().view(1, n, hw[0], hw[1])
    if d.depthwise:
        return F.conv2d(x, w, b, d.stride, d.pad, 1, w.shape[0])
    return torch._C._nn.thnn_conv2d(x, w, [d.k, d.k], b, [d.stride, d.stride], [d.pad, d.pad])


def _out_hw(x: Tensor, d: ConvSpec) -> List[int]:
    return [(x.shape[2] + 2 * d.pad - d.k) // d.stride + 1, (x.shape[3] + 2 * d.pad - d.k) // d.stride + 1]


def _dw_taps(x: Tensor, w: Tensor, b: Tensor, d: ConvSpec) -> Tensor:
    """Depthwise conv as k*k shifted multiply-adds: any channel count, so a traced graph keeps a
    run-time channel selection (a Conv's group count would be a constant)."""
    p, k, s = d.pad, d.k, d.stride
    hw = _out_hw(x, d)
    xp = F.pad(x, [p, p, p, p])
    y = b.view(1, -1, 1, 1)
    for ky in range(k):
        for kx in range(k):
            tap = xp[:, :, ky:ky + s * (hw[0] - 1) + 1:s, kx:kx + s * (hw[1] - 1) + 1:s]
            y = y + tap * w[:, 0, ky, kx].view(1, -1, 1, 1)
    return y


def _dense(x: Tensor, live: Optional[Tensor], channels: int) -> Tensor:
    if live is None:
        return x
    return torch.zeros(x.shape[0], channels, x.shape[2], x.shape[3], dtype=x.dtype,
                       device=x.device).index_copy_(1, live, x)


def _act(y: Tensor, d: ConvSpec) -> Tensor:
    if d.relu:
        return torch.relu_(y)
    if d.relu6:
        return torch.clamp_(y, 0.0, 6.0)
    return y


def _post(x: Tensor, post: int) -> Tensor:
    """Max pools after a conv (channel-wise, so the live set passes through)."""
    if post == -1:
        if x.shape[1] == 0:  # no live channel (eager only)
            return x.new_zeros(x.shape[0], 0, (x.shape[2] - 1) // 2 + 1, (x.shape[3] - 1) // 2 + 1)
        return F.max_pool2d(x, 3, 2, 1)
    for _ in range(post):
        x = (F.max_pool2d(x, 2, 2) if x.shape[1] > 0 else
             x.new_zeros(x.shape[0], 0, x.shape[2] // 2, x.shape[3] // 2))
    return x


def _gated_single(x: Tensor, live: Optional[Tensor], w_all: Tensor, b_all: Tensor, pw: Tensor,
                  neg_pb: Tensor, idx: Tensor, d: ConvSpec):
    """Batch 1: the sample's own selection, fewest ops (this runs 55 times per ResNet-56
    inference: every op counts, ~1-3 us of dispatch each against ~30-40 us per conv)."""
    e = x.amax(dim=(2, 3)) if d.max_pool else x.mean(dim=(2, 3))
    if live is not None:
        e = torch.zeros(1, d.c_in, dtype=x.dtype, device=x.device).index_copy_(1, live, e)
    # mask = (softmax(e) @ pw + pb > 0) == (softmax(e) @ pw > -pb): mm + an in-place tensor
    # compare is two ops where addmm + compare-with-scalar were three.
    sel = torch.mm(torch.softmax(e, dim=1), pw).gt_(neg_pb).view(-1).nonzero().view(-1)
    b = b_all.index_select(0, sel)
    if d.depthwise:  # from the dense input: a selected channel whose input is dead gives act(bias)
        xs = _dense(x, live, d.c_in).index_select(1, sel)
        if sel.shape[0] == 0:
            hw = _out_hw(x, d)
            return xs.new_zeros(1, 0, hw[0], hw[1]), sel
        return _act(_conv_single(xs, w_all.index_select(0, sel), b, d, idx), d), sel
    if sel.shape[0] == 0 or x.shape[1] == 0:
        # no selected filter, or no live input channel: a conv of an all-zero input is its bias
        hw = _out_hw(x, d)
        n = sel.shape[0]
        return _act(b.view(1, n, 1, 1).expand(1, n, hw[0], hw[1]).contiguous(), d), sel
    if live is None:
        w = w_all.index_select(0, sel)
    elif d.flat:
        kk = d.k * d.k
        rows = (sel * d.c_in).view(-1, 1).add(live).view(-1)
        w = w_all.view(-1, kk).index_select(0, rows).view(sel.shape[0], live.shape[0], d.k, d.k)
    else:
        w = w_all.index_select(0, sel).index_select(1, live)
    return _act(_conv_single(x, w, b, d, idx), d), sel


def _gated_batched(x: Tensor, live: Optional[Tensor], w_all: Tensor, b_all: Tensor, pw: Tensor,
                   pb: Tensor, d: ConvSpec):
    """Batch > 1, and the traced (ONNX) graph: the union of the batch's selections, then each
    sample multiplied by its own mask."""
    e = x.amax(dim=(2, 3)) if d.max_pool else x.mean(dim=(2, 3))
    if live is not None:
        e = e.new_zeros(e.shape[0], d.c_in).index_copy_(1, live, e)
    logits = torch.addmm(pb, torch.softmax(e, dim=1), pw)
    # union over the batch; when nothing is selected, the best channel is computed anyway (and
    # zeroed by the mask below), so the set is never empty: no data-dependent branch, which
    # keeps the traced ONNX graph valid for every input.
    best = logits.amax(dim=0)
    sel = (best >= torch.clamp(best.max(), max=0.0)).nonzero().view(-1)
    b = b_all.index_select(0, sel)
    w = w_all.index_select(0, sel)
    if d.depthwise:
        xs = _dense(x, live, d.c_in).index_select(1, sel)
        if torch.jit.is_tracing():
            y = _dw_taps(xs, w, b, d)
        else:
            y = F.conv2d(xs, w, b, d.stride, d.pad, 1, sel.shape[0])
    else:
        if live is not None:
            w = w.index_select(1, live)
        y = F.conv2d(x, w, b, d.stride, d.pad)
    y = _act(y, d)
    # each sample keeps exactly its own filters
    return y * (logits.index_select(1, sel) > 0).to(y.dtype)[:, :, None, None], sel


def _plain(x: Tensor, live: Optional[Tensor], w: Tensor, b: Tensor, d: ConvSpec) -> Tensor:
    """An ungated (shortcut) conv, BN folded, on a compact or dense input: dense output."""
    if live is not None:
        w = w.index_select(1, live)
    if x.shape[1] == 0:  # no live input channel (eager only)
        hw = _out_hw(x, d)
        return b.view(1, -1, 1, 1).expand(x.shape[0], b.shape[0], hw[0], hw[1]).contiguous()
    return F.conv2d(x, w, b, d.stride, d.pad)


def _run(x: Tensor, W: List[Tensor], B: List[Tensor], PW: List[Tensor], PB: List[Tensor],
         NPB: List[Tensor], IDX: List[Tensor], convs: List[ConvSpec], SW: List[Tensor],
         SB: List[Tensor], shortcuts: List[ConvSpec], blocks: List[BlockSpec], fc_w: Tensor,
         fc_b: Tensor, flatten: bool) -> Tensor:
    """The whole network on ``x``: batch 1 outside tracing takes the sample's own selections,
    anything else the union path. TorchScript-compilable (``SkipNet._fast``)."""
    single = x.shape[0] == 1 and not torch.jit.is_tracing()
    live: Optional[Tensor] = None
    for blk in blocks:
        inp, inp_live = x, live
        for j in range(blk.first, blk.first + blk.count):
            d = convs[j]
            if single:
                x, sel = _gated_single(x, live, W[j], B[j], PW[j], NPB[j], IDX[j], d)
            else:
                x, sel = _gated_batched(x, live, W[j], B[j], PW[j], PB[j], d)
            live = sel
            if d.post != 0:
                x = _post(x, d.post)
        if blk.residual and live is not None:
            if blk.shortcut >= 0:
                res = _plain(inp, inp_live, SW[blk.shortcut], SB[blk.shortcut], shortcuts[blk.shortcut])
            else:
                res = _dense(inp, inp_live, blk.c_in)
                if blk.down > 1:
                    res = F.avg_pool2d(res, blk.down, blk.down)
                if blk.c_out > blk.c_in:
                    res = F.pad(res, [0, 0, 0, 0, 0, blk.c_out - blk.c_in])
            x = res.index_add_(1, live, x)
            if blk.relu:
                x = torch.relu_(x)
            live = None
    x = torch.flatten(x, 1) if flatten else x.mean(dim=(2, 3))
    w = fc_w if live is None else fc_w.index_select(1, live)
    return F.linear(x, w, fc_b)


# ------------------------------------------------------------------------------------- the network
class SkipNet(nn.Module):
    """A real-skipping network: the plan (weights registered as frozen parameters and derived
    tensors as buffers, so ``.to()`` and pickling carry them; ``ConvSpec``/``BlockSpec`` records in plain lists) and ``_run``. ``engine`` is "torchscript" once
    the compiled function is in use, "python" if scripting failed."""

    def __init__(self, family: str):
        super().__init__()
        self.family = family
        self.convs: list[ConvSpec] = []
        self.shortcuts: list[ConvSpec] = []
        self.blocks: list[BlockSpec] = []
        self.flatten = False  # classifier input: flattened map (VGG) or global average (the rest)
        self.engine = "python"
        self._fast_fn = None

    # -- building
    def _weight(self, name: str, t: Tensor) -> None:
        """A weight of the plan, as a frozen parameter: the row's ``params`` counts parameters
        (buffers hold only what is derived from them: -pb, column indices)."""
        self.register_parameter(name, nn.Parameter(t, requires_grad=False))

    def add_gated(self, unit: GatedUnit, in_hw: tuple[int, int]) -> int:
        conv = unit.conv
        j = len(self.convs)
        w, b = _fold(conv, unit.bn)
        dw = conv.groups > 1
        if dw and not conv.groups == conv.in_channels == conv.out_channels:
            raise ValueError(f"ftwt skip: grouped conv with {conv.groups} groups is not supported")
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1] or \
                conv.padding[0] != conv.padding[1] or conv.dilation != (1, 1):
            raise ValueError("ftwt skip: only square kernels, strides and paddings, no dilation")
        ho, wo = (in_hw[0] + 2 * p - k) // s + 1, (in_hw[1] + 2 * p - k) // s + 1
        mm1x1 = not dw and k == 1 and s == 1 and p == 0
        small = not dw and not mm1x1 and ho * wo <= _SMALL_HW
        idx = _cols_index(in_hw, k, s, p, ho, wo) if small else torch.zeros(0, dtype=torch.long)
        flat = not dw and conv.in_channels * conv.out_channels >= _FLAT_GATHER
        pw = unit.predictor.weight.detach().t().contiguous()
        pb = unit.predictor.bias.detach().clone()
        for name, t in (("w", w), ("b", b), ("pw", pw), ("pb", pb)):
            self._weight(f"{name}{j}", t)
        self.register_buffer(f"npb{j}", -pb)  # derived (refresh), and the conv's column index
        self.register_buffer(f"idx{j}", idx)
        relu6 = isinstance(unit.act, nn.ReLU6)
        relu = not relu6 and not isinstance(unit.act, nn.Identity)
        self.convs.append(ConvSpec(conv.in_channels, s, p, k, dw, relu, relu6, unit.pool == "max", mm1x1, small,
                                   flat, 0, in_hw[0], in_hw[1]))
        return j

    def add_shortcut(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> int:
        i = len(self.shortcuts)
        w, b = _fold(conv, bn)
        self._weight(f"sw{i}", w)
        self._weight(f"sb{i}", b)
        k = conv.kernel_size[0]
        self.shortcuts.append(ConvSpec(conv.in_channels, conv.stride[0], conv.padding[0], k, False, False, False,
                                       True, False, False, False, 0, 0, 0))
        return i

    def add_block(self, convs: list[int], residual: bool = False, shortcut: int = -1, down: int = 1,
                  c_in: int = 0, c_out: int = 0, relu: bool = False) -> None:
        self.blocks.append(BlockSpec(convs[0], len(convs), residual, shortcut, down, c_in, c_out, relu))

    def set_fc(self, linear: nn.Linear, flatten: bool) -> None:
        self._weight("fc_w", linear.weight.detach().clone())
        self._weight("fc_b", linear.bias.detach().clone())
        self.flatten = flatten

    # -- running
    def _args(self) -> tuple:
        n, m = len(self.convs), len(self.shortcuts)
        g = lambda name, k: [getattr(self, f"{name}{i}") for i in range(k)]  # noqa: E731
        return (g("w", n), g("b", n), g("pw", n), g("pb", n), g("npb", n), g("idx", n), self.convs,
                g("sw", m), g("sb", m), self.shortcuts, self.blocks, self.fc_w, self.fc_b, self.flatten)

    def _fast(self):
        """``_run`` with this plan bound, compiled by TorchScript at the first call."""
        if self._fast_fn is None:
            bound = _Bound(self._args())
            try:
                with warnings.catch_warnings():  # torch.jit.script is marked deprecated in torch 2.x
                    warnings.simplefilter("ignore")
                    # kept out of _modules: not part of state_dict/.to()/pickling (a ScriptModule
                    # does not pickle inside a plain module); rebuilt on first use after loading
                    self.__dict__["_fast_fn"] = torch.jit.script(bound)
                self.engine = "torchscript"
            except Exception as e:  # noqa: BLE001 - any scripting failure: run the same code in Python
                warnings.warn(f"ftwt skip: TorchScript failed ({type(e).__name__}: {e}); running in Python")
                self.use_python()
        return self._fast_fn

    def use_python(self) -> "SkipNet":
        """Run the plan with the Python interpreter (what TorchScript saves is measured against it)."""
        self.__dict__["_fast_fn"], self.engine = _Bound(self._args()), "python"
        return self

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_tracing():
            return _run(x, *self._args())
        return self._fast()(x)

    def refresh(self) -> None:
        """Re-derive -pb from pb (after a predictor bias changed) and rebuild the argument lists."""
        for j in range(len(self.convs)):
            getattr(self, f"npb{j}").copy_(-getattr(self, f"pb{j}"))
        self._fast_fn = None

    def _apply(self, fn, *args, **kwargs):  # .to()/.cuda() replace the tensors: rebuild the lists
        self._fast_fn = None
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_fast_fn"] = None  # rebuilt at first use
        return state


class _Bound(nn.Module):
    """``_run`` with a plan bound as attributes: a compiled call then converts only ``x`` (passing
    the ~330 tensors and 55 records of a ResNet-56 plan as arguments converts them on every call)."""
    W: List[Tensor]
    B: List[Tensor]
    PW: List[Tensor]
    PB: List[Tensor]
    NPB: List[Tensor]
    IDX: List[Tensor]
    convs: List[ConvSpec]
    SW: List[Tensor]
    SB: List[Tensor]
    shortcuts: List[ConvSpec]
    blocks: List[BlockSpec]
    flatten: bool

    def __init__(self, args: tuple):
        super().__init__()
        (self.W, self.B, self.PW, self.PB, self.NPB, self.IDX, self.convs, self.SW, self.SB, self.shortcuts,
         self.blocks, fc_w, fc_b, self.flatten) = args
        self.fc_w, self.fc_b = fc_w, fc_b

    def forward(self, x: Tensor) -> Tensor:
        return _run(x, self.W, self.B, self.PW, self.PB, self.NPB, self.IDX, self.convs, self.SW, self.SB,
                    self.shortcuts, self.blocks, self.fc_w, self.fc_b, self.flatten)


def _cols_index(in_hw: tuple[int, int], k: int, s: int, p: int, ho: int, wo: int) -> Tensor:
    """Gather index of the im2col columns on the padded, flattened input, tap-major (ky, kx)."""
    wp = in_hw[1] + 2 * p
    oy = torch.arange(ho)[:, None] * s
    ox = torch.arange(wo)[None, :] * s
    base = (oy * wp + ox).reshape(-1)
    return torch.cat([base + ky * wp + kx for ky in range(k) for kx in range(k)])


# ---------------------------------------------------------------------------- plans per family
def _input_sizes(net: FTWTNet, input_shape: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    """Spatial input size of every GatedUnit, from one probe pass at ``input_shape``."""
    sizes: dict[int, tuple[int, int]] = {}
    hooks = [u.register_forward_pre_hook(lambda m, i: sizes.__setitem__(id(m), tuple(i[0].shape[2:])))
             for u in net.units]
    was = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, *input_shape))
    finally:
        net.train(was)
        for h in hooks:
            h.remove()
    return sizes


def _plan_cifar_resnet(sk: SkipNet, m: nn.Module, hw) -> None:
    sk.add_block([sk.add_gated(m.conv1, hw[id(m.conv1)])])
    for blk in (b for s in (m.layer1, m.layer2, m.layer3) for b in s):
        c1 = sk.add_gated(blk.conv1, hw[id(blk.conv1)])
        sk.add_gated(blk.conv2, hw[id(blk.conv2)])
        sk.add_block([c1, c1 + 1], True, -1, blk.conv1.conv.stride[0], blk.conv1.conv.in_channels,
                     blk.conv2.conv.out_channels, relu=True)
    sk.set_fc(m.fc, flatten=False)


def _plan_cifar_vgg(sk: SkipNet, m: nn.Module, hw) -> None:
    for layer in m.features:
        if isinstance(layer, GatedUnit):
            sk.add_block([sk.add_gated(layer, hw[id(layer)])])
        elif isinstance(layer, nn.MaxPool2d):
            sk.convs[-1] = sk.convs[-1]._replace(post=sk.convs[-1].post + 1)  # 2x2 max pools after it
    sk.set_fc(m.classifier, flatten=True)


def _chain(sk: SkipNet, blk: nn.Module, hw) -> list[int]:
    """The block's gated convs, in forward order (registration order in every wired family)."""
    return [sk.add_gated(u, hw[id(u)]) for u in blk.modules() if isinstance(u, GatedUnit)]


def _plan_cifar_mobilenet(sk: SkipNet, m: nn.Module, hw) -> None:
    sk.add_block([sk.add_gated(m.conv0, hw[id(m.conv0)])])
    for blk in m.bottlenecks:
        js = _chain(sk, blk, hw)
        c_in, c_out = blk.conv1.conv.in_channels, blk.conv3.conv.out_channels
        if blk.shortcut is None:
            sk.add_block(js)
        elif isinstance(blk.shortcut, nn.Sequential):
            sk.add_block(js, True, sk.add_shortcut(blk.shortcut[0], blk.shortcut[1]), 1, c_in, c_out)
        else:
            sk.add_block(js, True, -1, 1, c_in, c_out)
    sk.add_block([sk.add_gated(m.conv1, hw[id(m.conv1)])])
    sk.set_fc(m.fc, flatten=False)


def _plan_tv_resnet(sk: SkipNet, m: nn.Module, hw) -> None:
    stem = sk.add_gated(m.conv1, hw[id(m.conv1)])
    sk.convs[stem] = sk.convs[stem]._replace(post=-1)  # 3x3 max pool, stride 2
    sk.add_block([stem])
    for blk in (b for s in (m.layer1, m.layer2, m.layer3, m.layer4) for b in s):
        js = _chain(sk, blk, hw)
        units = [u for u in blk.modules() if isinstance(u, GatedUnit)]
        c_in, c_out = units[0].conv.in_channels, units[-1].conv.out_channels
        shortcut = -1 if blk.downsample is None else sk.add_shortcut(blk.downsample[0], blk.downsample[1])
        sk.add_block(js, True, shortcut, 1, c_in, c_out, relu=True)
    sk.set_fc(m.fc, flatten=False)


def _plan_tv_mobilenet(sk: SkipNet, m: nn.Module, hw) -> None:
    for layer in m.features:
        js = _chain(sk, layer, hw)
        if getattr(layer, "use_res_connect", False):
            units = [u for u in layer.modules() if isinstance(u, GatedUnit)]
            sk.add_block(js, True, -1, 1, units[0].conv.in_channels, units[-1].conv.out_channels)
        else:
            sk.add_block(js)
    sk.set_fc(m.classifier[1], flatten=False)  # classifier = Dropout (identity in eval), Linear


PLANS = {"resnet_cifar": _plan_cifar_resnet, "vgg_cifar": _plan_cifar_vgg,
         "mobilenet_v2_cifar": _plan_cifar_mobilenet, "resnet_imagenet": _plan_tv_resnet,
         "mobilenet_v2_imagenet": _plan_tv_mobilenet}


def build_skip(net: FTWTNet, select_all: bool = False,
               input_shape: tuple[int, ...] | None = None) -> SkipNet | None:
    """The real-skipping network for ``net``, or None for a family without a plan.

    ``input_shape`` (C, H, W) defaults to the shape ``net`` was wrapped at (``net.input_shape``;
    networks pickled before it was recorded need it given); the tiny-map kernels are set up for
    that input size (other sizes run on THNN).

    ``select_all``: the same engine (BN folded, predictors run, weights gathered, the same batch-1
    kernels) with every filter selected. It computes the dense function; measured beside the
    skipping network it separates what skipping buys from what the engine's kernels and folding
    buy over the dense baseline (the ``skip-all`` variant)."""
    plan = PLANS.get(net.family)
    if plan is None:
        return None
    shape = input_shape or getattr(net, "input_shape", None)
    if shape is None:
        raise ValueError("ftwt skip: this network does not record its input shape; pass input_shape")
    sk = SkipNet(net.family)
    plan(sk, net.net, _input_sizes(net, tuple(shape)))
    sk.eval()
    if select_all:
        for j in range(len(sk.convs)):
            # logits = softmax(e) @ pw + pb with softmax(e) in the simplex: pb above the largest
            # |pw| makes every logit positive for every input
            getattr(sk, f"pb{j}").fill_(float(getattr(sk, f"pw{j}").abs().max()) + 1.0)
        sk.refresh()
    return sk


def export_skip_onnx(model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> Path:
    """The skipping network as ONNX with the selection inside the graph (NonZero -> Gather on the
    weights -> Conv, run time). The TorchScript exporter traces the batched (union) path with a
    dynamic batch axis; the dynamo exporter cannot export data-dependent channel counts into
    ``conv2d`` here."""
    from harness.export import export_onnx

    return export_onnx(model, path, input_shape, opset=17, exporter="legacy")


def check_skip_graph(path: Path) -> dict:
    """Graph-survival check for the skipping export: the selection must be in the graph (NonZero
    feeding Gathers on the weights); ``ftwt_onnx_static_convs`` counts Convs with a constant
    weight (shortcut convs on a dense input; 0 for the CIFAR ResNets and VGG)."""
    import onnx

    from harness.export import onnx_summary

    nodes = onnx.load(str(path)).graph.node
    summary = onnx_summary(path)
    return {"ftwt_onnx_nonzero_nodes": sum(n.op_type == "NonZero" for n in nodes),
            "ftwt_onnx_gather_nodes": sum(n.op_type == "Gather" for n in nodes),
            "ftwt_onnx_conv_nodes": summary["conv_nodes"],
            "ftwt_onnx_static_convs": sum(s is not None for s in summary["conv_shapes"])}
