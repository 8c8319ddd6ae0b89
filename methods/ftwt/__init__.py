"""FTWT ("Fire Together Wire Together", Elkerdawy et al., CVPR 2022): dynamic per-input channel
pruning with self-supervised mask predictors, with the computation skipped for real.

See methods/ftwt/README.md and /work/shared/papers.md section 1. Pieces:
``gating`` (predictors, ground truth, mask loss), ``wiring`` (where the predictors go per model
family, the wrapped network), ``cost`` (per-sample MACs, the estimate before training),
``calibration`` (thresholds at the ground truth's keep rate), ``skip`` (the real-skipping
inference network and its ONNX export), this file (knobs, recipe, training, deployables).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from harness.data import eval_arrays, make_loader
from harness.errors import UserError
from harness.latency_budget import Solution, solve_knob
from harness.train import PAPER_CIFAR_STEPS, TrainRecipe, fit
from methods.base import Compressed, Deployable, Knob, Method, MethodContext, content_digest
from methods.ftwt.calibration import calibrate, keep_rates
from methods.ftwt.cost import estimate_curve, measure_macs, r_for_macs
from methods.ftwt.gating import mask_loss
from methods.ftwt.skip import build_skip, check_skip_graph, export_skip_onnx
from methods.ftwt.wiring import FTWTNet, wrap
from methods.recipes import recipe_columns

# The dynamic stage's recipe shape: the paper's (job_dynamic.sh): backbone SGD lr 1e-2 (momentum
# 0.9, wd 5e-4, batch 128) with x0.1 at epochs 81/122/151 of 200 from the baseline (78,200 steps:
# publication); predictors: their own SGD, lr 0.1, momentum 0.9, no weight decay, no schedule.
# quick/standard keep the shape and take the kit's fine-tune length (methods.recipes: 120 / 2,000
# steps at batch 32); the mask phase is the first ``cooldown`` fraction of the steps.
_PAPER_MILESTONES = (81 / 200, 122 / 200, 151 / 200)
SHAPE = TrainRecipe(lr=0.01, batch_size=128, schedule="multistep", milestones=_PAPER_MILESTONES)


def recipe_for(ctx: MethodContext) -> TrainRecipe:
    """The dynamic stage's recipe at ``ctx``'s preset."""
    return ctx.finetune_recipe(SHAPE, paper_steps=PAPER_CIFAR_STEPS)


PREDICTOR_LR = 0.1       # --mlr
PREDICTOR_MOMENTUM = 0.9
ESTIMATE_SAMPLES = 1024  # training images used for the MACs(r) curve before training
CALIBRATE_SAMPLES_LARGE = 64  # calibration images for inputs above 64x64 (one batch, see apply)
R_GRID = np.round(np.arange(0.50, 1.0001, 0.005), 4)


class FixedLrSGD(torch.optim.SGD):
    """SGD whose param groups with a ``fixed_lr`` keep that learning rate whatever ``fit``'s
    schedule sets (``harness.train._set_lr`` writes lr = schedule_lr * lr_scale into every group
    before every step). This is the paper's separate predictor optimizer (SGD, momentum
    0.9, lr 0.1, no weight decay, no scheduler) as a param group of the one optimizer fit takes:
    SGD updates each group independently, so the two are the same optimizer mathematically."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if "fixed_lr" in group:
                group["lr"] = group["fixed_lr"]
        return super().step(closure)


def _train_images(ctx: MethodContext, limit: int) -> torch.Tensor:
    loader = make_loader(ctx.data.train, batch_size=256, shuffle=False, seed=ctx.seed, augment=False)
    xs, n = [], 0
    for x, _ in loader:
        xs.append(x)
        n += len(x)
        if n >= limit:
            break
    return torch.cat(xs)[:limit]


# The skipping networks select weights per input: their ONNX graphs hold Convs whose weights (and
# channel counts) are computed at run time. Measured: OpenVINO's CPU plugin rejects them with
# "Doesn't support dynamic weights shape"; the masked variant runs everywhere.
RUNTIME_SHAPES = {"requires": frozenset({"runtime_weight_shapes"}),
                  "requires_why": "the skipping network gathers each layer's weights per input"}


class FTWT(Method):
    name = "ftwt"
    summary = ("FTWT dynamic channel pruning: per-input mask predictors trained on heatmap-mass "
               "ground truth; real skipping on torch-eager and in-graph selection for ONNX")
    produces = "dynamic"
    report_columns = ("ftwt_r", "ftwt_calibrate", "finetune_steps", "ftwt_kept_frac", "ftwt_gt_kept_frac",
                      "ftwt_est_reduction", "ftwt_achieved_reduction", "ftwt_est_gap_points",
                      "ftwt_macs_p10", "ftwt_macs_p50", "ftwt_macs_p90", "ftwt_predictor_macs",
                      "ftwt_execution", "ftwt_batch_policy", "ftwt_onnx_gather_nodes",
                      "latency_budget", "latency_budget_target", "latency_predicted_frac")
    knobs = (
        Knob("r", float, (0.8, 0.88, 0.92, 0.97, 1.0), 0.05, 1.0, quick_sweep=(0.88,),
             help="kept heatmap mass per layer (the ground truth's threshold, --mthresh)"),
        Knob("macs", float, (), 0.05, 1.0,
             help="target MACs ratio (kept/dense); r is picked from the MACs(r) curve estimated on "
                  "the baseline before training"),
        Knob("latency", float, (), 0.05, 1.0,
             help="target p50 as a fraction of the dense p50 on latency_target; r is solved before "
                  "training with measured probes of the skipping network (predictors calibrated to "
                  "the ground truth's keep rate at each r), verified on the row"),
        Knob("latency_target", str, (), choices=("torch-eager",), default="torch-eager",
             help="target the latency budget is measured on: the real-skipping network runs on "
                  "torch-eager (ONNX targets run the in-graph selection, slower than dense)"),
        Knob("mode", str, ("decoupled",), choices=("decoupled", "joint"), default="decoupled",
             help="decoupled: predictors see a detached input; joint: the mask loss trains the backbone too"),
        Knob("pool", str, ("max",), choices=("max", "avg"), default="max",
             help="predictor pooling: max (paper) or avg (released code)"),
        Knob("cooldown", float, (0.5,), 0.0, 1.0, default=0.5,
             help="fraction of the steps with mask loss weight 1 (0 afterwards)"),
        Knob("calibrate", str, ("gt",), choices=("gt", "off"), default="gt",
             help="gt: after each mask-phase pass, move each layer's threshold so it keeps as many "
                  "filters on average as the ground truth (our addition); off: the paper's "
                  "sigmoid > 0.5"),
    )
    exclusive = (("r", "macs", "latency"),)

    def validate(self, values: Mapping[str, Any]) -> None:
        if "latency_target" in values and "latency" not in values:
            raise UserError("knob latency_target needs latency=F")

    def apply(self, ctx: MethodContext, knobs: Mapping[str, Any]) -> Compressed:
        mode, pool, cooldown = knobs["mode"], knobs["pool"], float(knobs["cooldown"])
        recipe = recipe_for(ctx)
        fingerprint = content_digest(ctx.model)  # a training checkpoint is reused only for the same start
        baseline = copy.deepcopy(ctx.model)  # wrap() edits its model in place
        net = wrap(ctx.model, tuple(ctx.data.input_shape), family=ctx.family, pool=pool, mode=mode)
        dense = net.spec.dense_macs()
        # Cost before training: the MACs(r) curve of the ground-truth rule on the trained baseline.
        n_est = 64 if ctx.structure_only else ESTIMATE_SAMPLES
        images = _train_images(ctx, n_est)  # also the calibration set (no augmentation)
        curve = estimate_curve(net, images, R_GRID)
        hw = ctx.data.input_shape[-1] * ctx.data.input_shape[-2]
        calib_n = ESTIMATE_SAMPLES if hw <= 64 * 64 else CALIBRATE_SAMPLES_LARGE
        budget: dict[str, Any] = {}
        if "latency" in knobs:
            sol = _solve_latency(ctx, baseline, images[:calib_n], float(knobs["latency"]), knobs)
            r, budget = sol.value, sol.columns(knobs["latency_target"])
        elif "macs" in knobs:
            r = r_for_macs(R_GRID, curve, float(knobs["macs"]))
        else:
            r = float(knobs["r"])
        est_ratio = float(np.interp(r, R_GRID, curve))
        ctx.log(f"  ftwt: r={r:.4f}, estimated MACs ratio {est_ratio:.3f} before training")
        net.set(r=r)
        train_s = 0.0
        if not ctx.structure_only:
            # calibration runs the whole set as one batch: 1,024 CIFAR-size images take well
            # under 1 GB; ImageNet-size inputs are capped so the widest activation stays ~1 GB
            calib_images = images[:calib_n] if knobs["calibrate"] == "gt" else None
            train_s = _train(net, ctx, recipe, cooldown, knobs, r, fingerprint, calib_images)
        # how many filters the deployed predictors keep against the final network's ground truth
        kept, gt_kept = keep_rates(net, images)
        net.eval().set(collect=False, record=False, gating=True)
        x_test, _ = eval_arrays(ctx.data)
        if ctx.structure_only:
            x_test = x_test[:64]
        per_sample = measure_macs(net, torch.from_numpy(x_test)) if len(x_test) else np.array([dense], float)
        mean_macs = float(per_sample.mean())
        p10, p50, p90 = np.percentile(per_sample, [10, 50, 90])
        extra = {
            "ftwt_r": r, "ftwt_mode": mode, "ftwt_pool": pool, "ftwt_cooldown": cooldown,
            "ftwt_calibrate": knobs["calibrate"],
            "ftwt_kept_frac": round(float(kept.mean()), 4), "ftwt_gt_kept_frac": round(float(gt_kept.mean()), 4),
            "ftwt_est_reduction": round(1 - est_ratio, 4),
            "ftwt_achieved_reduction": round(1 - mean_macs / dense, 4),
            "ftwt_est_gap_points": round(100 * (mean_macs / dense - est_ratio), 2),
            "ftwt_macs_mean": mean_macs, "ftwt_macs_p10": float(p10), "ftwt_macs_p50": float(p50),
            "ftwt_macs_p90": float(p90), "ftwt_dense_macs_counted": dense,
            "ftwt_predictor_macs": net.spec.predictor_macs(net.units),
            **recipe_columns(recipe),
        }
        ctx.log(f"  ftwt: achieved MACs ratio {mean_macs / dense:.3f} (estimated {est_ratio:.3f})")
        deps = []
        skip = build_skip(net)
        if skip is not None:
            batch_policy = "union of masks, per-sample mask multiply"
            deps.append(Deployable(skip, "default", export_onnx=export_skip_onnx, macs=mean_macs,
                                   check_graph=check_skip_graph, **RUNTIME_SHAPES,
                                   extra={**extra, **budget, "ftwt_execution": "skip (gathered weights, BN folded)",
                                          "ftwt_batch_policy": batch_policy}))
            # the dense baseline run by the same engine: its accuracy is the baseline's, its cost
            # is the engine's at dense compute (the fine-tuned backbone, unmasked, is not a
            # network anyone would deploy: it was trained under masks)
            engine_dense = build_skip(wrap(baseline, tuple(ctx.data.input_shape), family=ctx.family, pool=pool,
                                           mode=mode), select_all=True)
            deps.append(Deployable(engine_dense, "skip-all", export_onnx=export_skip_onnx,
                                   macs=float(dense), check_graph=check_skip_graph, **RUNTIME_SHAPES,
                                   extra={**extra, "ftwt_execution": "the dense baseline in the skip engine, "
                                          "every filter selected (what the engine costs without skipping)",
                                          "ftwt_batch_policy": batch_policy}))
        deps.append(Deployable(net, "masked", macs=float(dense),
                               extra={**extra, "ftwt_execution": "masked dense (computes all, multiplies by mask)"}))
        return Compressed(deps, train_s=train_s)


def _solve_latency(ctx: MethodContext, baseline: torch.nn.Module, images: torch.Tensor, fraction: float,
                   knobs: Mapping[str, Any]) -> Solution:
    """r for a latency budget, before training. The trained network's cost is not known before
    training, but what its latency mostly depends on is: after calibration (``calibrate=gt``) each
    layer keeps, on average, as many filters as the ground truth at r. So each candidate r is a
    probe network built from the baseline with fresh predictors calibrated to the ground truth's
    keep rate at r on the calibration images, run by the real-skipping engine and measured against
    the dense baseline on the target (``ctx.measure_latency``: one interleaved cell per probe).
    Which filters the trained predictors pick per input differs; the row measures the result."""
    if ctx.measure_latency is None:
        raise UserError("ftwt: latency=F needs measured probes on the target, which this run does not have "
                        "(a sweep has them; inspect and predict do not)")
    target = knobs["latency_target"]

    def measure(rs: list[float]) -> list[float]:
        fractions = []
        for r in rs:
            torch.manual_seed(ctx.seed)  # the probe's fresh predictors: calibration sets their thresholds
            probe = wrap(copy.deepcopy(baseline), tuple(ctx.data.input_shape), family=ctx.family,
                         pool=knobs["pool"], mode=knobs["mode"])
            probe.eval().set(r=r)
            calibrate(probe, images, check=False)
            probe.set(collect=False, record=False, gating=True)
            fractions.append(ctx.measure_latency(build_skip(probe), target))
        return fractions

    if build_skip(wrap(copy.deepcopy(baseline), tuple(ctx.data.input_shape), family=ctx.family)) is None:
        raise UserError(f"ftwt: latency=F needs the real-skipping network, which {ctx.model_name} does not have")
    return solve_knob(measure, fraction, float(R_GRID[0]), float(R_GRID[-1]), points=4, rounds=4, log=ctx.log)


def _train(net: FTWTNet, ctx: MethodContext, recipe: TrainRecipe, cooldown: float,
           knobs: Mapping[str, Any], r: float, fingerprint: str,
           calib_images: torch.Tensor | None) -> float:
    """The dynamic stage, from the trained baseline: CE + lambda * L_mask with lambda = 1 for the
    first ``cooldown`` fraction of the steps, then 0. After the cooldown the ground truth is no
    longer computed, so the predictors stop moving (the released code keeps stepping them with zero
    gradient, which only lets their momentum decay). With ``calib_images``, the thresholds are
    calibrated (``calibration.calibrate``) at the end of every pass over the loader within the mask
    phase and at its end, so the backbone always trains on masks with the ground truth's keep rate,
    and the remaining steps fine-tune it on the masks that will be deployed. Returns the training
    seconds."""
    pred = [p for u in net.units for p in u.predictor.parameters()]
    pred_ids = {id(p) for p in pred}
    backbone = [p for p in net.parameters() if id(p) not in pred_ids and p.requires_grad]
    opt = FixedLrSGD([
        {"params": backbone, "weight_decay": recipe.weight_decay},
        {"params": pred, "weight_decay": 0.0, "momentum": PREDICTOR_MOMENTUM, "fixed_lr": PREDICTOR_LR},
    ], lr=recipe.lr, momentum=recipe.momentum)
    mask_steps = int(round(cooldown * recipe.steps))
    # resumable: a killed sweep continues from the last checkpoint of this exact run
    key = content_digest([ctx.model_name, fingerprint, repr(recipe), ctx.seed, sorted(knobs.items()), r,
                          ctx.data.content_hash])[:16]
    ckpt = Path(ctx.workdir) / f"ftwt-{ctx.model_name}-{key}.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    try:
        done = int(torch.load(ckpt, weights_only=True).get("step", 0)) if ckpt.exists() else 0
    except Exception:  # unusable checkpoint: fit says so and starts over
        done = 0
    net.set(collect=done < mask_steps, gating=True, record=False)

    def extra_loss(model, x, y, out):
        if not net.units[0].collect:
            return out.new_zeros(())
        return mask_loss(net.units)

    def calibrate_now(last: bool) -> None:
        if calib_images is None:
            return
        residual = calibrate(net, calib_images, check=last)  # the check pass only once, for the log
        if residual is not None:
            ctx.log(f"  ftwt: thresholds calibrated to the ground truth's keep rate "
                    f"(worst layer off by {max(residual):.3f} of its filters)")

    def on_pass_end(step: int, model) -> None:
        # calibrated after every pass of the mask phase, so the backbone trains on masks with the
        # ground truth's keep rate from the first pass on
        if step < mask_steps:
            calibrate_now(last=False)

    def on_step_end(step: int, model) -> None:
        if step == mask_steps:  # the end of the mask phase: the calibration that is deployed
            calibrate_now(last=True)
            net.set(collect=False)
            for u in net.units:
                u.last = {}

    if mask_steps == 0 and done == 0:  # cooldown 0: the predictors never train
        net.set(collect=False)
        calibrate_now(last=True)
    result = fit(net, ctx.data, recipe, seed=ctx.seed, optimizer=opt, extra_loss=extra_loss,
                 on_step_end=on_step_end, on_pass_end=on_pass_end, desc="ftwt", progress=False, checkpoint=ckpt)
    return result.train_s
