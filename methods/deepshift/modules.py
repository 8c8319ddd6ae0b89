"""Shift layers of DeepShift (mostafaelhoushi/DeepShift, ``pytorch/deepshift``), restated.

A shift layer computes y = x * W with every weight W = s * 2^p, s in {-1, (0), +1}, p an integer
in [p_min, 0]. Three module families, all subclasses of ``nn.Conv2d`` / ``nn.Linear`` so that the
harness's MAC counter sees them:

- ``ShiftConv2dQ`` / ``ShiftLinearQ`` (DeepShift-Q): a latent float weight, clamped in place and
  rounded to the nearest power of two in the log domain, straight-through gradient.
- ``ShiftConv2dPS`` / ``ShiftLinearPS`` (DeepShift-PS): latent shift P and sign S trained directly,
  with the paper code's "unsymmetric" gradient (``PSWeight``).
- ``FrozenShiftConv2d`` / ``FrozenShiftLinear``: the finalised network. The rounded weights are
  baked into an ordinary ``weight`` parameter, so a pickled or exported model is exactly the
  power-of-two network (the paper repo's issues #13 and #19 came from saving latent values).

Written by hand: no maintained library implements these layers (the paper's own package pins
torch 1.1 and is not on PyPI).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- bit-width ranges
def p_min_for(mode: str, weight_bits: int) -> int:
    """The smallest shift for ``weight_bits`` (papers.md 4.2): Q has a binary sign, so p in
    [-(2^(b-1)-1), 0]; PS has a ternary sign with one code kept for zero, so p in [-(2^(b-1)-2), 0]."""
    if mode == "q":
        return -(2 ** (weight_bits - 1) - 1)
    if mode == "ps":
        return -(2 ** (weight_bits - 1) - 2)
    raise ValueError(f"mode must be 'q' or 'ps', got {mode!r}")


# ----------------------------------------------------------------------------- rounding helpers
def round_pow2(w: torch.Tensor) -> torch.Tensor:
    """sign(w) * 2^round(log2|w|), zeros kept: nearest power of two in the *log* domain.

    ``torch.round`` rounds half to even, as in the paper's code: log2|w| = -0.5 (|w| = 2^-0.5)
    goes to 2^0, log2|w| = -1.5 goes to 2^-2, -2.5 to 2^-2.
    """
    mag = torch.exp2(torch.round(torch.log2(w.abs())))
    return torch.where(w == 0, torch.zeros_like(w), torch.sign(w) * mag)


def ternary_sign(s: torch.Tensor) -> torch.Tensor:
    """-1 where S <= -0.5, 0 where |S| < 0.5, +1 where S >= 0.5.

    Choice (papers.md 4.2 and the paper code differ at exactly |S| = 0.5): papers.md states the
    thresholds as ">= 0.5"; the code's ``sign(round(S))`` with half-to-even rounding gives 0 at
    exactly +-0.5. We follow papers.md; the two agree everywhere else.
    """
    return torch.where(s.abs() >= 0.5, torch.sign(s), torch.zeros_like(s))


def clamp_q_weight_(w: torch.Tensor, p_min: int) -> None:
    """In place: every nonzero |w| clamped to [2^p_min, 1]; exact zeros stay 0 (papers.md 4.2 Q.1).

    Runs every forward pass, also under ``no_grad``; the optimizer state does not see it.
    """
    with torch.no_grad():
        w.copy_(torch.sign(w) * w.abs().clamp(2.0 ** p_min, 1.0))


def fixed_point(x: torch.Tensor, int_bits: int, frac_bits: int) -> torch.Tensor:
    """Signed fixed point INT.FRAC with floor (not round), as the paper code:
    clamp(floor(x * 2^FRAC) / 2^FRAC, -2^(INT-1), 2^(INT-1) - 1). Forward only."""
    step = 2.0 ** -frac_bits
    bound = 2.0 ** (int_bits - 1)
    return torch.clamp(torch.floor(x / step) * step, -bound, bound - 1)


class _FixedPointSTE(torch.autograd.Function):
    """Fixed point forward, identity backward (no clipping mask, as the paper code)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, int_bits: int, frac_bits: int) -> torch.Tensor:
        return fixed_point(x, int_bits, frac_bits)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None


def quantize_act(x: torch.Tensor, act_bits: tuple[int, int] | None) -> torch.Tensor:
    """Activation fixed point when ``act_bits`` = (INT, FRAC) is set; identity otherwise."""
    if act_bits is None:
        return x
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or not torch.is_grad_enabled():
        return fixed_point(x, *act_bits)  # same values; a plain graph for the exporters
    return _FixedPointSTE.apply(x, *act_bits)


class _RoundPow2STE(torch.autograd.Function):
    """Q weights: forward rounds to a power of two, backward passes the gradient straight through."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        return round_pow2(w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class PSWeight(torch.autograd.Function):
    """W = ternary_sign(S) * 2^round(P), with the paper code's gradients (papers.md 4.2):
    dL/dS := dL/dW (straight through, *not* times 2^P), dL/dP := dL/dW * W * ln 2.
    A weight whose sign rounds to 0 therefore gets no shift gradient."""

    @staticmethod
    def forward(ctx, shift: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        w = ternary_sign(sign) * torch.exp2(torch.round(shift))
        ctx.save_for_backward(w)
        return w

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (w,) = ctx.saved_tensors
        return grad * w * LN2, grad


# ----------------------------------------------------------------------------- shared state
class _ShiftMixin:
    """Bookkeeping shared by all shift layers: bit width, range, activation fixed point."""

    mode: str = ""
    weight_bits: int
    p_min: int
    act_bits: tuple[int, int] | None

    def _init_shift(self, weight_bits: int, act_bits: tuple[int, int] | None) -> None:
        self.weight_bits = int(weight_bits)
        self.p_min = p_min_for(self.mode, weight_bits)
        self.act_bits = act_bits

    def _bias(self) -> torch.Tensor | None:
        # papers.md 4.2: the bias goes through the same fixed point as the activations.
        if self.bias is None or self.act_bits is None:
            return self.bias
        return quantize_act(self.bias, self.act_bits)

    def shift_weight(self) -> torch.Tensor:
        """The effective power-of-two weight (differentiable in training)."""
        raise NotImplementedError

    def extra_repr(self) -> str:  # type: ignore[override]
        base = super().extra_repr()  # type: ignore[misc]
        act = "off" if self.act_bits is None else f"{self.act_bits[0]}.{self.act_bits[1]}"
        return f"{base}, mode={self.mode}, weight_bits={self.weight_bits}, p=[{self.p_min},0], act={act}"


class _QMixin(_ShiftMixin):
    mode = "q"

    def shift_weight(self) -> torch.Tensor:
        clamp_q_weight_(self.weight.data, self.p_min)
        return _RoundPow2STE.apply(self.weight)


class _PSMixin(_ShiftMixin):
    mode = "ps"

    def _replace_weight(self, weight: torch.Tensor | None) -> None:
        """Turn the inherited ``weight`` parameter into latent ``shift`` (P) and ``sign`` (S);
        from a trained weight: (P, S) = (round(log2|W|), sign(W)) (papers.md 4.2)."""
        w = self.weight.detach().clone() if weight is None else weight.detach().clone()
        del self.weight
        with torch.no_grad():
            shift = torch.where(w == 0, torch.full_like(w, float(self.p_min)), torch.round(torch.log2(w.abs())))
            self.shift = nn.Parameter(shift.clamp(self.p_min, 0))
            self.sign = nn.Parameter(torch.sign(w))

    def shift_weight(self) -> torch.Tensor:
        with torch.no_grad():
            self.shift.data.clamp_(self.p_min, 0)  # in place, every forward pass (papers.md 4.2)
        return PSWeight.apply(self.shift, self.sign)

    def magnitude_penalty(self) -> torch.Tensor:
        """sum (2^P)^2 over unrounded P: the PS replacement for weight decay (times wd/2 outside)."""
        return torch.exp2(self.shift).pow(2).sum()


# ----------------------------------------------------------------------------- trainable layers
class ShiftConv2dQ(_QMixin, nn.Conv2d):
    """DeepShift-Q convolution: latent float weight, power-of-two forward, STE backward."""

    def __init__(self, *args, weight_bits: int = 5, act_bits: tuple[int, int] | None = None, **kw):
        super().__init__(*args, **kw)
        self._init_shift(weight_bits, act_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(quantize_act(x, self.act_bits), self.shift_weight(), self._bias())


class ShiftLinearQ(_QMixin, nn.Linear):
    """DeepShift-Q linear layer."""

    def __init__(self, *args, weight_bits: int = 5, act_bits: tuple[int, int] | None = None, **kw):
        super().__init__(*args, **kw)
        self._init_shift(weight_bits, act_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(quantize_act(x, self.act_bits), self.shift_weight(), self._bias())


class ShiftConv2dPS(_PSMixin, nn.Conv2d):
    """DeepShift-PS convolution: trained shift P and ternary sign S."""

    def __init__(self, *args, weight_bits: int = 5, act_bits: tuple[int, int] | None = None,
                 weight: torch.Tensor | None = None, **kw):
        super().__init__(*args, **kw)
        self._init_shift(weight_bits, act_bits)
        self._replace_weight(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(quantize_act(x, self.act_bits), self.shift_weight(), self._bias())


class ShiftLinearPS(_PSMixin, nn.Linear):
    """DeepShift-PS linear layer."""

    def __init__(self, *args, weight_bits: int = 5, act_bits: tuple[int, int] | None = None,
                 weight: torch.Tensor | None = None, **kw):
        super().__init__(*args, **kw)
        self._init_shift(weight_bits, act_bits)
        self._replace_weight(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(quantize_act(x, self.act_bits), self.shift_weight(), self._bias())


# ----------------------------------------------------------------------------- finalised layers
class FrozenShiftConv2d(_ShiftMixin, nn.Conv2d):
    """A finalised shift convolution: ``weight`` holds exactly s * 2^p (no latent values), the bias
    is already fixed point; only the input fixed point (when on) runs at inference."""

    def __init__(self, *args, mode: str = "q", weight_bits: int = 5,
                 act_bits: tuple[int, int] | None = None, **kw):
        super().__init__(*args, **kw)
        self.mode = mode
        self._init_shift(weight_bits, act_bits)

    def shift_weight(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(quantize_act(x, self.act_bits), self.weight, self.bias)

    def latency_repr(self) -> str:
        """For the latency model's unit keys (``harness.engine.latency_model.cost_repr``): without
        activation fixed point this layer computes exactly its Conv2d (the weights are data)."""
        return f"Conv2d({nn.Conv2d.extra_repr(self)})" if self.act_bits is None else repr(self)


class FrozenShiftLinear(_ShiftMixin, nn.Linear):
    """A finalised shift linear layer (see ``FrozenShiftConv2d``)."""

    def __init__(self, *args, mode: str = "q", weight_bits: int = 5,
                 act_bits: tuple[int, int] | None = None, **kw):
        super().__init__(*args, **kw)
        self.mode = mode
        self._init_shift(weight_bits, act_bits)

    def shift_weight(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(quantize_act(x, self.act_bits), self.weight, self.bias)

    def latency_repr(self) -> str:
        """See ``FrozenShiftConv2d.latency_repr``."""
        return f"Linear({nn.Linear.extra_repr(self)})" if self.act_bits is None else repr(self)


class ChannelAffine(nn.Module):
    """y = x * scale + shift per channel (dim 1): an eval-mode BatchNorm written out, so that the
    ONNX exporters cannot fold it into the preceding shift conv's power-of-two weights."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        shape = (1, -1, 1, 1)
        self.register_buffer("scale", scale.detach().clone().reshape(shape))
        self.register_buffer("shift", shift.detach().clone().reshape(shape))

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d) -> "ChannelAffine":
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        return cls(scale, shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


SHIFT_TRAINABLE = (ShiftConv2dQ, ShiftLinearQ, ShiftConv2dPS, ShiftLinearPS)
SHIFT_FROZEN = (FrozenShiftConv2d, FrozenShiftLinear)
SHIFT_LAYERS = SHIFT_TRAINABLE + SHIFT_FROZEN
