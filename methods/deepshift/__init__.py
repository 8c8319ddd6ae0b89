"""DeepShift (Elhoushi et al., arXiv:1905.13298): multiplication-free networks whose weights are
s * 2^p, trained as DeepShift-Q (rounded latent weights) or DeepShift-PS (trained shift and sign).

The plugin converts every Conv2d/Linear (or the first ``depth``), trains with the recipe of
``recipes.py``, finalises (bakes the exact power-of-two weights in), and returns two deployables:
``default``, the float shift network exported with BN written out so the ONNX file keeps every
power of two, and ``int8``, an exact-int8 QDQ graph of the same network (``int8.py``).
See README.md next to this file.
"""
from __future__ import annotations

import math
import time
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from harness.errors import UserError
from harness.macs import size_bytes
from harness.models import build_model
from harness.train import fit, make_sgd, predict, top1
from methods.base import Compressed, Deployable, Knob, Method, MethodContext
from methods.deepshift.convert import call_order, convert_to_shift, finalize, frozen_modules, frozen_weight
from methods.deepshift.export import Pow2Check, ShiftExporter
from methods.deepshift.modules import ShiftConv2dPS, ShiftLinearPS, p_min_for
from methods.deepshift.recipes import recipe_for
from methods.recipes import recipe_columns

__all__ = ["DeepShift"]


def parse_act_bits(text: str) -> tuple[int, int] | None:
    """"off" -> None; "INT.FRAC" (e.g. "3.5", 8-bit) -> (3, 5); UserError otherwise."""
    if text == "off":
        return None
    parts = str(text).split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) < 1:
        raise UserError(f"deepshift: act_bits must be 'off' or INT.FRAC like 3.5 (INT >= 1), got {text!r}")
    return int(parts[0]), int(parts[1])


class DeepShift(Method):
    name = "deepshift"
    summary = ("DeepShift-Q / -PS: every conv/linear weight becomes sign x 2^p (bit shifts); "
               "packed low-bit size, exact-int8 QDQ variant")
    produces = "dense"
    report_columns = ("deepshift_top1_converted", "finetune_steps", "deepshift_changed_weight_share", "pow2_ok", "pow2_bad_weights",
                      "pow2_checked_weights", "deepshift_finalize_max_abs", "int8_exact_share",
                      "int8_ort_qlinearconv", "int8_ort_qlinearadd", "int8_ort_qdq_left", "int8_ov_int8_convs", "size_fp32_bytes")
    knobs = (
        Knob("mode", str, ("q", "ps"), choices=("q", "ps"), default="q",
             help="q: rounded latent weights (STE); ps: trained shift P and ternary sign S (RAdam)"),
        Knob("weight_bits", int, (5, 4, 3), low=2, high=8, default=5, quick_sweep=(5,),
             help="bits per weight: Q p in [-(2^(b-1)-1), 0], PS p in [-(2^(b-1)-2), 0]"),
        Knob("act_bits", str, (), default="off", help="activation fixed point INT.FRAC (floor, signed), or off (default)"),
        Knob("init", str, (), choices=("pretrained", "scratch"), default="pretrained",
             help="pretrained (default): fine-tune from the baseline; scratch: paper's scratch init/recipe"),
        Knob("depth", int, (), low=1, high=100000,
             help="convert only the first N Conv2d/Linear layers in call order, counted from the input "
                  "(the paper code counts from the end); default all"),
    )

    def validate(self, values: Mapping[str, Any]) -> None:
        # weight_bits >= 2 (the knob's range) leaves a shift range in both modes (PS b=2: ternary)
        parse_act_bits(values.get("act_bits", "off"))  # before defaults are filled in

    def apply(self, ctx: MethodContext, knobs: Mapping[str, Any]) -> Compressed:
        mode, bits = knobs["mode"], int(knobs["weight_bits"])
        act = parse_act_bits(knobs["act_bits"])
        init, depth = knobs["init"], knobs.get("depth")  # depth: None = every layer
        shape = tuple(ctx.data.input_shape)
        model = ctx.model
        if init == "scratch":  # a fresh float init (seeded), not the trained baseline
            torch.manual_seed(ctx.seed)
            model = build_model(ctx.model_name, num_classes=ctx.data.num_classes)
        converted = convert_to_shift(model, shape, mode=mode, weight_bits=bits, act_bits=act, depth=depth,
                                     scratch=init == "scratch")
        extra: dict[str, Any] = {"deepshift_mode": mode, "deepshift_weight_bits": bits,
                                 "deepshift_act_bits": knobs["act_bits"], "deepshift_init": init,
                                 "deepshift_converted_layers": len(converted)}
        train_s = 0.0
        if not ctx.structure_only:
            start = {n: frozen_weight(model.get_submodule(n)) for n in converted}
            train_s, more = self._train(ctx, model, mode, init)
            extra.update(more)
            changed = sum(int((frozen_weight(model.get_submodule(n)) != w).sum()) for n, w in start.items())
            # how many power-of-two weights training moved to another value (sign or shift)
            extra["deepshift_changed_weight_share"] = changed / sum(w.numel() for w in start.values())
        trained_logits = self._eval_logits(ctx, model)
        finalize(model)
        model.eval()
        if trained_logits is not None:  # the finalised network computes what training evaluated
            extra["deepshift_finalize_max_abs"] = float(np.abs(self._eval_logits(ctx, model) - trained_logits).max())
        deployables = [self._float_deployable(model, shape, converted, mode, bits, extra)]
        deployables.extend(self._int8_deployables(ctx, model, shape, converted, mode, bits, extra))
        return Compressed(deployables, train_s=train_s, extra={})

    # ------------------------------------------------------------------ training
    def _train(self, ctx: MethodContext, model: nn.Module, mode: str, init: str) -> tuple[float, dict]:
        recipe = recipe_for(ctx, init)
        extra: dict[str, Any] = {**recipe_columns(recipe), "deepshift_optimizer": "RAdam" if mode == "ps" else "SGD"}
        if init == "pretrained" and ctx.data.train is not None and len(ctx.data.test):
            logits = self._eval_logits(ctx, model)
            extra["deepshift_top1_converted"] = self._top1(ctx, logits)
        t0 = time.perf_counter()
        if mode == "ps":
            opt = ps_optimizer(model, recipe.lr, recipe.weight_decay)
            penalty = MagnitudePenalty(recipe.weight_decay)
            fit(model, ctx.data, recipe, seed=ctx.seed, optimizer=opt, extra_loss=penalty,
                desc="deepshift-ps", progress=False)
        else:
            fit(model, ctx.data, recipe, seed=ctx.seed, optimizer=make_sgd(model, recipe),
                desc="deepshift-q", progress=False)
        return time.perf_counter() - t0, extra

    @staticmethod
    def _eval_logits(ctx: MethodContext, model: nn.Module) -> np.ndarray | None:
        if ctx.structure_only or ctx.data.synthetic:
            return None
        from harness.data import eval_arrays

        x, _ = eval_arrays(ctx.data)
        return predict(model, x)

    @staticmethod
    def _top1(ctx: MethodContext, logits: np.ndarray | None) -> float | None:
        if logits is None:
            return None
        from harness.data import eval_arrays

        _, y = eval_arrays(ctx.data)
        return top1(logits, y)

    # ------------------------------------------------------------------ deployables
    def _float_deployable(self, model: nn.Module, shape: tuple[int, ...], converted: list[str], mode: str,
                          bits: int, extra: dict) -> Deployable:
        layers = _layer_index(model, shape, converted)
        check = Pow2Check(layers, p_min_for(mode, bits), len(call_order(model, shape, (nn.Conv2d, nn.Linear))))
        sizes = packed_sizes(model, bits)
        return Deployable(model, variant="default", export_onnx=ShiftExporter(shape), size_bytes=sizes["packed"],
                          check_graph=check,
                          extra={**extra, **_weight_stats(model),
                                 "deepshift_size_int32_packed_bytes": sizes["int32_packed"]})

    def _int8_deployables(self, ctx: MethodContext, model: nn.Module, shape: tuple[int, ...],
                          converted: list[str], mode: str, bits: int, extra: dict) -> list[Deployable]:
        from methods.deepshift.int8 import int8_deployable

        dep = int8_deployable(ctx, model, shape, converted, mode, bits)
        if dep is None:
            return []
        dep.extra = {**extra, **dep.extra}
        return [dep]


# ----------------------------------------------------------------------------- PS training pieces
def ps_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """RAdam (torch.optim.RAdam, the paper's choice for PS): shift/sign params without weight decay
    (their decay is the magnitude penalty), all other params with the recipe's decay."""
    latent = [p for m in model.modules() if isinstance(m, (ShiftConv2dPS, ShiftLinearPS))
              for p in (m.shift, m.sign)]
    ids = {id(p) for p in latent}
    others = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    return torch.optim.RAdam([{"params": latent, "weight_decay": 0.0},
                              {"params": others, "weight_decay": weight_decay}], lr=lr)


class MagnitudePenalty:
    """fit(extra_loss=...): 1/2 * wd * sum (2^P)^2 over every PS layer's unrounded shift."""

    def __init__(self, weight_decay: float):
        self.weight_decay = weight_decay

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        total = sum(m.magnitude_penalty() for m in model.modules() if isinstance(m, (ShiftConv2dPS, ShiftLinearPS)))
        return 0.5 * self.weight_decay * total


# ----------------------------------------------------------------------------- sizes and stats
def packed_sizes(model: nn.Module, weight_bits: int) -> dict[str, int]:
    """Bytes with every converted weight at ``weight_bits`` (densely packed, rounded up to a byte
    per layer) and everything else at its stored dtype (fp32); also the paper's packing
    (floor(32 / weight_bits) weights per int32 word)."""
    frozen = frozen_modules(model)
    fp = size_bytes(model) - sum(m.weight.numel() * m.weight.element_size() for m in frozen.values())
    packed = sum(math.ceil(m.weight.numel() * weight_bits / 8) for m in frozen.values())
    per_word = 32 // weight_bits
    words = sum(math.ceil(m.weight.numel() / per_word) for m in frozen.values())
    return {"packed": fp + packed, "int32_packed": fp + 4 * words}


def _weight_stats(model: nn.Module) -> dict[str, Any]:
    ws = [m.weight.detach() for m in frozen_modules(model).values()]
    n = sum(w.numel() for w in ws)
    zeros = sum(int((w == 0).sum()) for w in ws)
    return {"deepshift_converted_weights": n, "deepshift_zero_weight_share": zeros / n if n else None}


def _layer_index(model: nn.Module, shape: tuple[int, ...], converted: list[str]) -> list[tuple[int, tuple]]:
    order = call_order(model, shape, (nn.Conv2d, nn.Linear))
    return [(order.index(name), tuple(model.get_submodule(name).weight.shape)) for name in converted]

