"""The ``decompose`` method: decomposition-accelerated training (Elhoushi et al. 2019) and
post-training decomposition, each measured against the dense network of the same schedule."""
from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from harness.data import eval_arrays
from harness.errors import UserError
from harness.export import onnx_summary
from harness.latency_budget import solve_knob
from harness.models import build_model
from harness.train import TrainRecipe, batches_per_pass, fit, make_sgd, predict, top1
from methods.base import Compressed, Deployable, Knob, Method, MethodContext
from methods.decompose import factors, schedule
from methods.decompose.ranks import RankPolicy
from methods.decompose.schedule import (RunResult, at_step, cached_dense, dense_key, step_time_ratio,
                                        train_decomposed, train_dense)
from methods.recipes import recipe_columns
from methods.decompose.surgery import DECOMPS, LAYER_POLICIES, decompose_model, reconstruct_model, summary

SCHEDULES = ("train", "post")
# channels_last for (the networks in the original architecture, the decomposed one); measured in
# README "Where decomposition pays": NHWC speeds up every decomposed network and the dense
# ResNets, but VGG16-bn's dense 256-512-channel convs at batch 128 run 9% slower in it.
LAYOUTS = {"none": (False, False), "all": (True, True), "decomposed": (False, True)}


@dataclass(frozen=True)
class Settings:
    """The knobs of one budget, with defaults filled in."""

    policy: RankPolicy
    decomp: str
    layers: str
    include_first: bool
    schedule: str
    decompose_at: float | None  # a fraction of the schedule; None: the preset recipe's
    reconstruct_at: float  # a fraction of the schedule; 0: never
    layouts: tuple[bool, bool] = LAYOUTS["all"]
    batch: int | None = None  # None: the preset recipe's
    lr: float | None = None  # None: the preset recipe's, scaled with the batch (schedule.with_batch)

    @classmethod
    def from_knobs(cls, k: Mapping[str, Any]) -> "Settings":
        """From ``Method.settings`` (every knob with a default is present)."""
        if "energy" in k:
            policy = RankPolicy("energy", float(k["energy"]), int(k["multiple"]))
        elif "ratio" in k:
            policy = RankPolicy("ratio", float(k["ratio"]), int(k["multiple"]))
        else:
            policy = RankPolicy(k["rank"], 0.0, int(k["multiple"]))
        return cls(policy, k["decomp"], k["layers"], bool(k["first"]), k["schedule"], k.get("decompose_at"),
                   float(k["reconstruct_at"]), LAYOUTS[k["channels_last"]], k.get("batch"), k.get("lr"))


class Decompose(Method):
    name = "decompose"
    summary = ("tensor decomposition (Tucker-2 / CP / SVD, EVBMF ranks) mid-training to train faster "
               "(Elhoushi et al. 2019), or post-training; vs dense training of the same schedule")
    produces = "smaller"
    report_columns = ("decompose_top1", "decompose_dense_top1", "finetune_steps", "decompose_train_s",
                      "decompose_dense_train_s", "decompose_train_speedup", "decompose_step_s_before",
                      "decompose_step_s_after", "decompose_dense_step_s_after", "decompose_phase_speedup",
                      "decompose_step_ratio_in_run", "decompose_step_speedup",
                      "decompose_layers",
                      "decompose_layers_skipped", "decompose_fold_max_rel_err", "decompose_graph_ok",
                      "latency_budget", "latency_budget_target", "latency_predicted_frac")
    knobs = (
        Knob("rank", str, ("vbmf",), choices=("vbmf",), default="vbmf", help="rank policy: EVBMF on each mode unfolding"),
        Knob("energy", float, (), 0.01, 1.0, help="alternative: keep this share of sum(sigma^2) per mode"),
        Knob("ratio", float, (), 0.01, 1.0, help="alternative: rank = ceil(ratio * channels) per mode"),
        Knob("latency", float, (), 0.05, 1.0,
             help="alternative: target p50 as a fraction of the dense p50 on latency_target; the rank "
                  "ratio is solved with that target's latency model before training, verified on the row"),
        Knob("latency_target", str, (), default="ort-cpu",
             help="target whose latency model latency=F uses"),
        Knob("decomp", str, (), choices=DECOMPS, default="tucker",
             help="tucker (1x1, kxk, 1x1) or cp (1x1, kx1, 1xk, 1x1)"),
        Knob("multiple", int, (), 1, 1024, default=1, help="round ranks up to a multiple (paper's ResNet path: 16)"),
        Knob("layers", str, (), choices=LAYER_POLICIES, default="all",
             help="all convs, residual conv2 only, or all + Linear"),
        Knob("first", int, (), 0, 1, default=0, help="1: decompose the first conv too (excluded by default)"),
        Knob("decompose_at", float, (), 0.001, 0.999,
             help="fraction of the schedule's steps trained dense before decomposing (default: preset's)"),
        Knob("reconstruct_at", float, (), 0.0, 0.999, default=0.0,
             help="fraction of the schedule's steps after which the chains are folded back (0 = never)"),
        Knob("schedule", str, (), choices=SCHEDULES, default="train",
             help="train: decompose mid-training (the paper's claim); post: decompose the trained baseline"),
        Knob("channels_last", str, (), choices=tuple(LAYOUTS), default="all",
             help="train in NHWC: every network, only the decomposed one, or none (dense and decomposed run alike)"),
        Knob("batch", int, (), 8, 1024,
             help="optimizer batch of the run, dense and decomposed alike (default: preset's; paper: 128)"),
        Knob("lr", float, (), 1e-4, 1.0,
             help="peak lr of the run (default: preset's, x sqrt(batch / preset's batch) when batch is given)"),
    )
    exclusive = (("rank", "energy", "ratio", "latency"),)

    def validate(self, values: Mapping[str, Any]) -> None:
        if "latency_target" in values and "latency" not in values:
            raise UserError("decompose: knob latency_target needs latency=F")
        s = self.settings(values)
        if s["schedule"] == "post" and ("decompose_at" in values or s["reconstruct_at"]):
            raise UserError("decompose: decompose_at/reconstruct_at belong to schedule=train, not post")
        if s["reconstruct_at"] and "decompose_at" in values and s["reconstruct_at"] <= values["decompose_at"]:
            raise UserError("decompose: reconstruct_at must come after decompose_at")

    # ----------------------------------------------------------------------------------- apply
    def apply(self, ctx: MethodContext, knobs: Mapping[str, Any]) -> Compressed:
        budget: dict[str, Any] = {}
        if "latency" in knobs:
            knobs, budget = _solve_latency(ctx, knobs)
        out = self._apply(ctx, knobs)
        for dep in out.deployables:  # the budget is the decomposed network's, not the dense-schedule one's
            if dep.variant == "default":
                dep.extra.update(budget)
        return out

    def _apply(self, ctx: MethodContext, knobs: Mapping[str, Any]) -> Compressed:
        s = Settings.from_knobs(knobs)
        decompose = partial(decompose_model, input_shape=tuple(ctx.data.input_shape), policy=s.policy,
                            decomp=s.decomp, layers=s.layers, include_first=s.include_first, seed=ctx.seed)
        common = {"decompose_schedule": s.schedule, "decompose_policy": s.policy.describe(),
                  "decompose_channels_last": knobs["channels_last"],
                  "decompose_kind": s.decomp, "decompose_layer_policy": s.layers}
        if ctx.structure_only or ctx.data.synthetic:
            # No training: inspect/contract tests, and latency-only sweeps on random labels (the
            # dense baseline is not trained there either). Ranks come from the weights as they are.
            plans = decompose(ctx.model)
            note = "structure only" if ctx.structure_only else "synthetic data: untrained weights decomposed"
            return Compressed([_decomposed(ctx.model, {})], 0.0,
                              {**common, **summary(plans), "decompose_note": note})
        if s.schedule == "post":
            return self._post(ctx, s, decompose, common)
        return self._train(ctx, s, decompose, common)

    def _post(self, ctx: MethodContext, s: Settings, decompose: partial, common: dict) -> Compressed:
        recipe = schedule.with_batch(schedule.recipe_for(ctx), s.batch, s.lr).post
        x, y = eval_arrays(ctx.data)
        before = top1(predict(ctx.model, x), y)
        run, no_finetune = train_decomposed_post(ctx.model, ctx, recipe, decompose, s.layouts[1])
        ctx.log(f"  decompose[post]: {summary(run.plans)['decompose_layers']} layers in {run.decomp_s:.1f} s, "
                f"fine-tune {recipe.steps} steps")
        extra = {**common, **summary(run.plans), **recipe_columns(recipe),
                 "decompose_train_s": run.train_s, "decompose_decomp_s": run.decomp_s,
                 "decompose_step_s_decomposed": run.step_s("decomposed"),
                 "decompose_baseline_top1": before, "decompose_top1_no_finetune": no_finetune,
                 "decompose_top1": top1(predict(run.model, x), y)}
        return Compressed([_decomposed(run.model, {})], run.train_s, extra)

    def _train(self, ctx: MethodContext, s: Settings, decompose: partial, common: dict) -> Compressed:
        rec = schedule.with_batch(schedule.recipe_for(ctx), s.batch, s.lr)
        recipe = rec.train
        at, fold = at_step(recipe, s.decompose_at or rec.decompose_at), at_step(recipe, s.reconstruct_at)
        if not 0 < at < recipe.steps or (fold and not at < fold < recipe.steps):
            raise UserError(f"decompose: need 0 < decompose_at (step {at}) < reconstruct_at (step {fold}, "
                            f"0 = off) < the {ctx.preset} schedule's {recipe.steps} steps")

        def build() -> nn.Module:
            torch.manual_seed(ctx.seed)  # the dense and the decomposed run start from one init
            return build_model(ctx.model_name, num_classes=ctx.data.num_classes)

        dense_cl = s.layouts[0]
        dense, dense_source = cached_dense(
            dense_key(ctx.model_name, ctx.data, recipe, ctx.seed, dense_cl), build,
            lambda m: train_dense(m, ctx.data, recipe, seed=ctx.seed, channels_last=dense_cl),
            Path(ctx.workdir) / "decompose")
        ctx.log(f"  decompose: dense {recipe.steps}-step schedule {dense.train_s:.1f} s ({dense_source})")
        shape = tuple(ctx.data.input_shape)
        run = train_decomposed(build(), ctx.data, recipe, seed=ctx.seed, decompose_at=at, decompose=decompose,
                               reconstruct_at=fold, reconstruct=partial(reconstruct_model, input_shape=shape),
                               layouts=s.layouts)
        thin = run.snapshot if run.snapshot is not None else run.model
        step = step_time_ratio(dense.model, thin, ctx.data, recipe.batch_size, seed=ctx.seed, layouts=s.layouts)
        x, y = eval_arrays(ctx.data)
        accs = {"dense": top1(predict(dense.model, x), y), "final": top1(predict(run.model, x), y)}
        extra = {**common, **summary(run.plans), **recipe_columns(recipe), **step,
                 **_timing(run, dense, recipe.steps, at, fold, batches_per_pass(ctx.data, recipe)),
                 "decompose_dense_source": dense_source, "decompose_dense_top1": accs["dense"],
                 "decompose_top1": accs["final"],
                 "decompose_top1_vs_dense": None if None in accs.values() else accs["final"] - accs["dense"],
                 "decompose_lr_continuous": run.lrs == [recipe.lr_at(k) for k in range(recipe.steps)],
                 "decompose_fold_max_rel_err": max(run.fold_errors.values(), default=None)}
        ctx.log(f"  decompose: {extra['decompose_layers']} layers, train {run.train_s:.1f} s vs dense "
                f"{dense.train_s:.1f} s (x{extra['decompose_train_speedup']:.2f}), step in run x"
                f"{extra['decompose_phase_speedup'] or float('nan'):.2f}, interleaved step x{step['decompose_step_speedup']:.2f}")
        deps = [_decomposed(thin, {"decompose_trained_steps": fold or recipe.steps,
                                   "train_s": run.snapshot_train_s or run.train_s}),
                Deployable(dense.model, "dense-schedule", check_graph=_conv_count,
                           extra={"decompose_trained_steps": recipe.steps, "train_s": dense.train_s})]
        if run.snapshot is not None:
            deps.append(Deployable(run.model, "reconstructed", check_graph=_conv_count,
                                   extra={"decompose_trained_steps": recipe.steps, "train_s": run.train_s}))
        return Compressed(deps, run.train_s, extra)


def _solve_latency(ctx: MethodContext, knobs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``latency=F``: the rank ratio whose decomposed network the target's latency model predicts at
    F x the dense p50 (``harness.latency_budget.solve_knob``), before any training: under the ratio
    policy the decomposed architecture depends only on the layer shapes (ranks = ceil(ratio x
    channels), the skip rule counts MACs), so decomposing the baseline gives the very architecture
    the run decomposes into mid-schedule. Returns the knobs with that ratio, and the row's columns."""
    if ctx.predict_latency is None:
        raise UserError("decompose: latency=F needs the target's latency model, which this run does not have")
    target = knobs["latency_target"]

    def build(ratio: float) -> nn.Module:
        net = copy.deepcopy(ctx.model).eval()
        decompose_model(net, input_shape=tuple(ctx.data.input_shape),
                        policy=RankPolicy("ratio", ratio, int(knobs["multiple"])), decomp=knobs["decomp"],
                        layers=knobs["layers"], include_first=bool(knobs["first"]), seed=ctx.seed)
        return net

    sol = solve_knob(lambda ratios: list(ctx.predict_latency([build(r) for r in ratios], target)),
                     float(knobs["latency"]), 0.02, 1.0, log=ctx.log)
    ctx.log(f"  decompose: latency {knobs['latency']} of dense on {target} -> rank ratio {sol.value:.3f}")
    solved = {k: v for k, v in knobs.items() if k != "latency"}
    solved["ratio"] = sol.value
    return solved, sol.columns(target)


def train_decomposed_post(model: nn.Module, ctx: MethodContext, recipe: TrainRecipe,
                          decompose: partial, channels_last: bool = False) -> tuple[RunResult, float | None]:
    """Post-training mode: decompose the trained ``model`` and fine-tune it with a fresh optimizer;
    returns the run and the top-1 right after decomposition (before fine-tuning)."""
    run = RunResult(model)
    t0 = time.perf_counter()
    run.plans = decompose(model)
    run.decomp_s = time.perf_counter() - t0
    x, y = eval_arrays(ctx.data)
    no_finetune = top1(predict(model, x), y)
    res = fit(model, ctx.data, recipe, seed=ctx.seed, optimizer=make_sgd(model, recipe), desc="decompose post",
              progress=False, channels_last=channels_last)
    run.pass_s, run.phase_s, run.phase_steps = res.pass_s, {"decomposed": res.train_s}, {"decomposed": res.steps}
    run.train_s = run.decomp_s + res.train_s
    model.eval()
    return run, no_finetune


def _timing(run: RunResult, dense: RunResult, steps: int, at: int, reconstruct_at: int,
            per_epoch: int) -> dict[str, Any]:
    before, after = run.step_s("dense"), run.step_s("decomposed")
    dense_step = dense.step_s("dense")
    # the dense run of the schedule over the same steps as each phase of this run (same batches)
    end = reconstruct_at or steps
    span_before, span_after = dense.span_s(0, at), dense.span_s(at, end)
    dense_before = span_before / at if span_before is not None else None
    dense_after = span_after / (end - at) if span_after is not None else None

    def epoch(s: float | None) -> float | None:
        return s * per_epoch if s is not None else None

    return {"decompose_steps": steps, "decompose_at_step": at, "decompose_reconstruct_at_step": reconstruct_at,
            "decompose_train_s": run.train_s, "decompose_decomp_s": run.decomp_s, "decompose_fold_s": run.fold_s,
            "decompose_step_s_before": before, "decompose_step_s_after": after,
            "decompose_step_s_reconstructed": run.step_s("reconstructed"),
            "decompose_step_ratio_in_run": before / after if before and after else None,
            "decompose_dense_train_s": dense.train_s, "decompose_dense_step_s": dense_step,
            "decompose_dense_step_s_before": dense_before, "decompose_dense_step_s_after": dense_after,
            "decompose_steps_per_epoch": per_epoch,
            "decompose_epoch_s_before": epoch(before), "decompose_epoch_s_after": epoch(after),
            "decompose_dense_epoch_s_before": epoch(dense_before), "decompose_dense_epoch_s_after": epoch(dense_after),
            # the decomposed phase against the dense run's same steps: issue 14's per-epoch ratio
            "decompose_phase_speedup": dense_after / after if dense_after and after else None,
            "decompose_train_speedup": dense.train_s / run.train_s,
            # the same ratio with the dense time estimated from this run's own dense steps (phase A):
            # immune to load changes between the cached dense run and this one on a shared machine
            "decompose_train_speedup_in_run": steps * before / run.train_s if before else None,
            "decompose_step_speedup_phase": dense_step / after if dense_step and after else None}


# ----------------------------------------------------------------------------------- deployables
def _decomposed(model: nn.Module, extra: dict) -> Deployable:
    convs, linears = expected_shapes(model)
    return Deployable(model, "default", check_graph=partial(check_chains, convs=convs, linears=linears),
                      extra=extra)


def expected_shapes(model: nn.Module) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Weight shapes of every factor conv and factor linear of the chains in ``model``."""
    convs, linears = [], []
    for m in model.modules():
        if isinstance(m, factors.CHAINS):
            for layer in m:
                (convs if isinstance(layer, nn.Conv2d) else linears).append(tuple(layer.weight.shape))
    return convs, linears


def check_chains(path: Path, convs: list[tuple[int, ...]], linears: list[tuple[int, ...]]) -> dict[str, Any]:
    """Graph survival: the exported ONNX still holds every thin factor conv (Conv nodes with the
    chosen ranks as channel counts) and every factor linear weight (either orientation)."""
    import onnx

    found = Counter(tuple(s) for s in onnx_summary(path)["conv_shapes"] if s is not None)
    need = Counter(convs)
    conv_hits = sum(min(n, found[s]) for s, n in need.items())
    inits = Counter(tuple(t.dims) for t in onnx.load(str(path)).graph.initializer)
    lin_hits = sum(1 for s in linears if inits[s] or inits[s[::-1]])
    return {"decompose_graph_conv_nodes": sum(found.values()), "decompose_graph_thin_convs": len(convs),
            "decompose_graph_thin_convs_found": conv_hits, "decompose_graph_factor_linears": len(linears),
            "decompose_graph_factor_linears_found": lin_hits,
            "decompose_graph_ok": conv_hits == len(convs) and lin_hits == len(linears)}


def _conv_count(path: Path) -> dict[str, Any]:
    return {"decompose_graph_conv_nodes": onnx_summary(path)["conv_nodes"]}


__all__ = ["Decompose", "check_chains", "expected_shapes"]
