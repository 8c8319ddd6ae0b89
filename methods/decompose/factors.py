"""The factor chains that replace a layer, how their weights are computed, and how they fold back.

Which library does what:
- Tucker-2 (kxk conv -> 1x1, kxk, 1x1): ``tensorly.decomposition.partial_tucker`` (HOOI, SVD
  init) on the two channel modes, with tensorly's NumPy backend in float64.
- CP (kxk conv -> 1x1, depthwise kx1, depthwise 1xk, 1x1): ``tensorly.decomposition.parafac``
  (CP-ALS, SVD init), NumPy backend, float64.
- Truncated SVD (Linear -> two Linears; 1x1 conv -> two 1x1 convs): ``torch.linalg.svd``.
- Folding a chain back into one layer is an exact product of its factors (``torch.einsum`` in
  float64): no library is needed for that.

tensorly's API changed across versions (papers.md 3.4): ``partial_tucker`` took ``ranks=`` and
returned ``(core, factors)`` up to 0.6; 0.7+ takes ``rank=`` and returns ``((core, factors),
errors)``. This module is written for the pinned 0.10 API and ``tucker2`` fails loudly otherwise.

BLAS runs on one thread here: these matrices are tiny, and on a loaded 2-core machine OpenBLAS's
threads made one 64 x 576 SVD take 1 s instead of 1.5 ms (measured), which would inflate the
one-off decomposition time that is part of the training time.

Every chain is an ``nn.Sequential`` subclass made of plain ``nn.Conv2d`` / ``nn.Linear`` modules,
so the harness's MAC counter sees every factor and ``torch.save`` pickles it by class name.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np
import tensorly as tl
import torch
from tensorly.decomposition import parafac, partial_tucker
from threadpoolctl import threadpool_limits
from torch import nn


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class TuckerConv(nn.Sequential):
    """Tucker-2 chain: 1x1 C_in->R_in (U_in^T), kxk R_in->R_out (core G, the original stride,
    padding and dilation), 1x1 R_out->C_out (U_out, the original bias)."""

    def __init__(self, conv: nn.Conv2d, r_out: int, r_in: int):
        super().__init__(OrderedDict(
            first=nn.Conv2d(conv.in_channels, r_in, 1, bias=False),
            core=nn.Conv2d(r_in, r_out, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                           dilation=conv.dilation, bias=False),
            last=nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None)))

    def ranks(self) -> list[int]:
        return [self.core.out_channels, self.core.in_channels]

    def fold(self) -> nn.Conv2d:
        """The one kxk conv equal to this chain: W = G x_0 U_out x_1 U_in."""
        w = torch.einsum("oa,abhw,bi->oihw", self.last.weight.double()[:, :, 0, 0], self.core.weight.double(),
                         self.first.weight.double()[:, :, 0, 0])
        return _conv_like(self.core, self.first.in_channels, self.last.out_channels, w, self.last.bias)


class CPConv(nn.Sequential):
    """CP chain: 1x1 C_in->R, depthwise kx1, depthwise 1xk, 1x1 R->C_out (the original bias).
    The vertical depthwise conv carries the row stride/padding, the horizontal one the column's,
    which together equal the kxk conv's."""

    def __init__(self, conv: nn.Conv2d, rank: int):
        (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
        (ph, pw), (dh, dw) = _pair(conv.padding), conv.dilation
        super().__init__(OrderedDict(
            first=nn.Conv2d(conv.in_channels, rank, 1, bias=False),
            vertical=nn.Conv2d(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1),
                               groups=rank, bias=False),
            horizontal=nn.Conv2d(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw),
                                 groups=rank, bias=False),
            last=nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None)))

    def ranks(self) -> list[int]:
        return [self.first.out_channels]

    def fold(self) -> nn.Conv2d:
        w = torch.einsum("or,rh,rw,ri->oihw", self.last.weight.double()[:, :, 0, 0],
                         self.vertical.weight.double()[:, 0, :, 0], self.horizontal.weight.double()[:, 0, 0, :],
                         self.first.weight.double()[:, :, 0, 0])
        v, h = self.vertical, self.horizontal
        template = nn.Conv2d(1, 1, (v.kernel_size[0], h.kernel_size[1]), stride=(v.stride[0], h.stride[1]),
                             padding=(v.padding[0], h.padding[1]), dilation=(v.dilation[0], h.dilation[1]))
        return _conv_like(template, self.first.in_channels, self.last.out_channels, w, self.last.bias)


class SVDConv(nn.Sequential):
    """Truncated SVD of a 1x1 conv: 1x1 C_in->R, 1x1 R->C_out (the original stride and bias on the
    first/last). Tucker-2 of a 1x1 kernel would add a pointless third 1x1 layer."""

    def __init__(self, conv: nn.Conv2d, rank: int):
        super().__init__(OrderedDict(
            first=nn.Conv2d(conv.in_channels, rank, 1, stride=conv.stride, bias=False),
            last=nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None)))

    def ranks(self) -> list[int]:
        return [self.first.out_channels]

    def fold(self) -> nn.Conv2d:
        w = (self.last.weight.double()[:, :, 0, 0] @ self.first.weight.double()[:, :, 0, 0])[:, :, None, None]
        return _conv_like(self.first, self.first.in_channels, self.last.out_channels, w, self.last.bias)


class SVDLinear(nn.Sequential):
    """Truncated SVD of a Linear: in->R (sqrt(S) V^T), R->out (U sqrt(S), the original bias)."""

    def __init__(self, linear: nn.Linear, rank: int):
        super().__init__(OrderedDict(
            first=nn.Linear(linear.in_features, rank, bias=False),
            last=nn.Linear(rank, linear.out_features, bias=linear.bias is not None)))

    def ranks(self) -> list[int]:
        return [self.first.out_features]

    def fold(self) -> nn.Linear:
        out = nn.Linear(self.first.in_features, self.last.out_features, bias=self.last.bias is not None)
        with torch.no_grad():
            out.weight.copy_((self.last.weight.double() @ self.first.weight.double()).float())
            if self.last.bias is not None:
                out.bias.copy_(self.last.bias)
        return out


CHAINS = (TuckerConv, CPConv, SVDConv, SVDLinear)


def _conv_like(template: nn.Conv2d, c_in: int, c_out: int, weight: torch.Tensor,
               bias: torch.Tensor | None) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, template.kernel_size, stride=template.stride, padding=template.padding,
                     dilation=template.dilation, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(weight.float())
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


# --------------------------------------------------------------------------------- factorisations
# HOOI sweeps after the SVD (HOSVD) init. The decomposition is a one-off cost inside the training
# time being compared, and on VGG16-bn's 512-channel kernels (512 x 4,608 unfoldings) HOOI rarely
# meets tol=1e-6: measured on its conv at init, ranks 128/256, 100 sweeps (the old cap) took 34-38 s
# per layer (6 such layers: ~4 min, most of a 270-step dense run), 5 sweeps 2.7-4.2 s, and the
# relative fit error differs by 0.0013 (0.8939 vs 0.8926; 0.7327 vs 0.7321). ResNet-sized kernels
# converged in fewer sweeps anyway.
HOOI_ITERS = 5


def tucker2(weight: np.ndarray, r_out: int, r_in: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(core R_out x R_in x kh x kw, U_out C_out x R_out, U_in C_in x R_in): partial Tucker of a
    conv kernel on modes 0 and 1 (tensorly >= 0.7 API: ``rank=``, returns ((core, factors), errors))."""
    with tl.backend_context("numpy"), threadpool_limits(1, user_api="blas"):
        out = partial_tucker(np.asarray(weight, np.float64), rank=[r_out, r_in], modes=[0, 1], init="svd",
                             tol=1e-6, n_iter_max=HOOI_ITERS, random_state=seed)
    (core, factors), _errors = out
    u_out, u_in = factors
    return np.asarray(core), np.asarray(u_out), np.asarray(u_in)


def cp(weight: np.ndarray, rank: int, seed: int = 0, n_iter_max: int = 200) -> list[np.ndarray]:
    """[A (C_out x R, weights folded in), B (C_in x R), V (kh x R), H (kw x R)]: CP-ALS of a kernel."""
    # rank > kh or kw is normal here; tensorly warns that it pads the SVD init of those modes
    with tl.backend_context("numpy"), threadpool_limits(1, user_api="blas"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs")
        cpt = parafac(np.asarray(weight, np.float64), rank=rank, init="svd", n_iter_max=n_iter_max,
                      tol=1e-10, random_state=seed)
    weights, (a, b, v, h) = cpt
    return [np.asarray(a) * np.asarray(weights)[None, :], np.asarray(b), np.asarray(v), np.asarray(h)]


def svd(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(left out x R, right R x in) with left @ right the best rank-R approximation; sqrt(S) is
    split between the two so that both factors start at the same scale for SGD."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


# --------------------------------------------------------------------------------- filling chains
def _set(param: torch.Tensor, value: np.ndarray | torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_(torch.as_tensor(value).reshape(param.shape).to(param.dtype))


def fill_tucker(chain: TuckerConv, conv: nn.Conv2d, seed: int = 0) -> None:
    r_out, r_in = chain.ranks()
    core, u_out, u_in = tucker2(conv.weight.detach().double().numpy(), r_out, r_in, seed)
    _set(chain.first.weight, u_in.T)
    _set(chain.core.weight, core)
    _set(chain.last.weight, u_out)
    if conv.bias is not None:
        _set(chain.last.bias, conv.bias.detach())


def fill_cp(chain: CPConv, conv: nn.Conv2d, seed: int = 0) -> None:
    a, b, v, h = cp(conv.weight.detach().double().numpy(), chain.ranks()[0], seed)
    _set(chain.first.weight, b.T)
    _set(chain.vertical.weight, v.T)
    _set(chain.horizontal.weight, h.T)
    _set(chain.last.weight, a)
    if conv.bias is not None:
        _set(chain.last.bias, conv.bias.detach())


def fill_svd(chain: SVDConv | SVDLinear, layer: nn.Conv2d | nn.Linear) -> None:
    w = layer.weight.detach()
    left, right = svd(w.reshape(w.shape[0], -1), chain.ranks()[0])
    _set(chain.first.weight, right)
    _set(chain.last.weight, left)
    if layer.bias is not None:
        _set(chain.last.bias, layer.bias.detach())
