"""The sweep engine: model x method x budget x target x scenario, one row per cell.

Order of work: validate the whole sweep (names, knobs, targets, paths) before anything runs;
then per model get the baseline, per (method, budget) compress once, export once, and measure
every (target, scenario) in an isolated process. Every row is stored the moment it exists.
"""
from __future__ import annotations

import copy
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from harness import provenance
from harness.baseline import Baseline, get_baseline
from harness.cell import CellSpec
from harness.config import SweepConfig
from harness.data import DataBundle, eval_arrays, load_data
from harness.errors import UserError, first_line
from harness.export import export_onnx, file_sha256
from harness.isolate import run_isolated
from harness.macs import CONVENTION, count_cost, size_bytes
from harness.models import build_model, load_checkpoint, model_spec
from harness.report import publish
from harness.store import Store
from harness.timing import PERCENTILE_RULE, PRESETS, TimingRules
from harness.train import predict, recipe_dict, top1
from methods import METHODS, Deployable, Method, MethodContext, get_method
from targets import TARGETS, Artifact, Target, get_target


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Plan:
    """A validated sweep: resolved methods with their budgets, and resolved targets."""

    config: SweepConfig
    methods: list[tuple[Method, list[dict[str, Any]]]]
    targets: list[Target]
    data: dict[str, DataBundle]  # per model: synthetic data follows each model's input size
    skipped_targets: dict[str, str] = field(default_factory=dict)


def _resolve_methods(config: SweepConfig) -> list[tuple[Method, list[dict[str, Any]]]]:
    names = config.methods if config.methods is not None else METHODS.names()
    names = ["none"] + [n for n in dict.fromkeys(names) if n != "none"]  # the dense row is always there
    for name in config.budgets:
        if name not in names:
            raise UserError(f"budgets given for method {name!r}, which is not in the sweep")
    out = []
    for name in names:
        method = get_method(name)
        raw = config.budgets.get(name, {})
        values = {k: [method.knob(k).parse(str(v)) for v in vs] for k, vs in raw.items()}
        out.append((method, method.budgets(values)))
    return out


def _resolve_targets(config: SweepConfig) -> tuple[list[Target], dict[str, str]]:
    if config.targets is None:  # the default: every available CPU target
        chosen, skipped = [], {}
        for key in TARGETS.names():
            t = get_target(key)
            avail = t.availability()
            if t.device == "cpu" and avail.ok:
                chosen.append(t)
            else:
                skipped[key] = avail.reason or "not a CPU target"
        return chosen, skipped
    chosen = []
    for key in dict.fromkeys(config.targets):
        t = get_target(key)
        avail = t.availability()
        if not avail.ok:
            raise UserError(f"target {key} is not available here: {avail.reason}")
        chosen.append(t)
    return chosen, {}


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output directory {out} is not writable: {exc.strerror or exc}") from None


def _load_all_data(config: SweepConfig) -> dict[str, DataBundle]:
    cache: dict[int | None, DataBundle] = {}
    out = {}
    for name in config.models:
        size = model_spec(name).input_size if config.data.startswith("synthetic") else None
        if size not in cache:
            cache[size] = load_data(config.data, input_size=size, seed=config.seed)
        out[name] = cache[size]
    return out


def _check_checkpoint(config: SweepConfig, data: dict[str, DataBundle]) -> None:
    if config.checkpoint is None:
        return
    if not config.checkpoint.is_file():
        raise UserError(f"checkpoint not found: {config.checkpoint}")
    for name in config.models:  # a corrupt or mismatched file fails now, not after hours of work
        load_checkpoint(build_model(name, num_classes=data[name].num_classes), config.checkpoint)


def plan_sweep(config: SweepConfig) -> Plan:
    """Validate everything a sweep needs before its first cell; UserError on the first problem."""
    for name in config.models:
        model_spec(name)
    methods = _resolve_methods(config)
    targets, skipped = _resolve_targets(config)
    if not targets:
        raise UserError("no target is available here; see `python -m harness ls targets`")
    by_key = {t.key: t for t in targets}
    for key, options in config.target_options.items():
        if key not in by_key:
            raise UserError(f"target options given for {key!r}, which is not in the sweep")
        by_key[key].parse_options(options)
    data = _load_all_data(config)
    _check_checkpoint(config, data)
    _check_out_dir(config.out)
    return Plan(config, methods, targets, data, skipped)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _knob_text(knobs: dict[str, Any]) -> tuple[str, str]:
    return ",".join(knobs), ",".join(str(v) for v in knobs.values())


@dataclass
class ModelRun:
    """Per-model state shared by all of its cells."""

    name: str
    data: DataBundle
    baseline: Baseline
    eval_x: np.ndarray
    eval_y: np.ndarray
    pool_path: Path
    eval_x_path: Path
    eval_y_path: Path
    dense_macs: int = 0


class Sweep:
    """Runs a validated Plan, writing rows to the store as cells finish."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.cfg = plan.config
        self.out = self.cfg.out
        self.store = Store(self.out / "results.sqlite")
        self.work = self.out / "work"
        self.started = provenance.now()

    # ----------------------------------------------------------------- data and baseline
    def _model_run(self, name: str) -> ModelRun:
        data = self.plan.data[name]
        log(f"[{name}] baseline on {data.spec} ({self.cfg.preset} recipe)")
        base = get_baseline(name, data, self.cfg.baseline_recipe, seed=self.cfg.seed,
                            checkpoint=self.cfg.checkpoint, progress=self.cfg.progress)
        x, y = eval_arrays(data, self.cfg.eval_limit)
        folder = self.work / f"{name}-{base.key}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / "pool.npy", folder / "eval_x.npy", folder / "eval_y.npy"]
        for path, arr in zip(paths, (x[: self.cfg.pool_size], x, y)):
            np.save(path, arr)
        run = ModelRun(name, data, base, x, y, *paths)
        run.dense_macs = count_cost(base.model, data.input_shape).macs
        return run

    # ----------------------------------------------------------------- keys and rows
    def _cell_key(self, run: ModelRun, method: str, knobs: dict, variant: str, target: str,
                  scenario: str) -> str:
        cfg = self.cfg
        return _hash({"model": run.name, "baseline": run.baseline.key, "method": method, "knobs": knobs,
                      "variant": variant, "target": target, "scenario": scenario, "preset": cfg.preset,
                      "threads": cfg.threads, "batch": self._batch(scenario), "seed": cfg.seed,
                      "timing": asdict(cfg.timing_rules), "eval_limit": cfg.eval_limit,
                      "pool": cfg.pool_size, "options": cfg.target_options.get(target, {})})

    def _batch(self, scenario: str) -> int:
        return 1 if scenario == "SingleStream" else self.cfg.offline_batch

    def _base_row(self, run: ModelRun, method: Method, knobs: dict, target: Target, scenario: str) -> dict:
        knob, budget = _knob_text(knobs)
        cfg = self.cfg
        return {
            "model": run.name, "data": run.data.spec, "synthetic": run.data.synthetic,
            "method": method.name, "produces": method.produces, "knob": knob, "budget": budget,
            "variant": "default", "target": target.key, "device": target.device, "scenario": scenario,
            "target_options": json.dumps(cfg.target_options.get(target.key, {}), sort_keys=True),
            "batch": self._batch(scenario), "status": "ok", "error": "",
            "threads": cfg.threads, "preset": cfg.preset, "percentile_rule": PERCENTILE_RULE,
            "macs_convention": CONVENTION, "baseline_source": run.baseline.source,
            "baseline_key": run.baseline.key, "recipe": json.dumps(recipe_dict(cfg.baseline_recipe)),
            "seed": cfg.seed, "data_hash": run.data.content_hash, "cpu": provenance.cpu_model(),
            "cpu_count": provenance.cpu_count(), "gpu": provenance.gpu_name(),
            "git_rev": provenance.git_revision(), "started": self.started,
            "versions": json.dumps(provenance.package_versions()),
        }

    def _put(self, key: str, row: dict) -> None:
        row["written"] = provenance.now()
        self.store.put(key, row)
        status = row["status"] if row["status"] == "ok" else f"{row['status']}: {row.get('error', '')}"
        p50 = f" p50 {row['p50_ms']:.3f} ms" if row.get("p50_ms") is not None else ""
        acc = f" top1 {row['top1']:.2f}" if row.get("top1") is not None else ""
        log(f"  {row['method']}[{row['budget']}] {row['variant']} {row['target']} {row['scenario']}:"
            f"{acc}{p50} ({status})")

    # ----------------------------------------------------------------- the loop
    def run(self) -> list[dict]:
        for name in self.cfg.models:
            run = self._model_run(name)
            for method, budgets in self.plan.methods:
                for knobs in budgets:
                    self._run_budget(run, method, knobs)
        rows = self.store.rows()
        publish(self.out, rows)
        return rows

    def _cells(self, run: ModelRun, method: Method, knobs: dict, variant: str) -> list[tuple[Target, str, str]]:
        return [(t, s, self._cell_key(run, method.name, knobs, variant, t.key, s))
                for t in self.plan.targets for s in self.cfg.scenarios]

    def _run_budget(self, run: ModelRun, method: Method, knobs: dict) -> None:
        cells = self._cells(run, method, knobs, "default")
        if all(self.store.is_finished(k) for _, _, k in cells) and self._variants_done(run, method, knobs):
            log(f"  {method.name}[{_knob_text(knobs)[1]}]: all cells finished earlier, skipped")
            return
        ctx = MethodContext(model_name=run.name, model=copy.deepcopy(run.baseline.model), data=run.data,
                            recipe=self.cfg.baseline_recipe, seed=self.cfg.seed,
                            workdir=self.work / "methods", preset=self.cfg.preset,
                            measure_latency=self._probe_latency(run), log=log)
        t0 = time.perf_counter()
        try:
            torch.manual_seed(self.cfg.seed)
            compressed = method.apply(ctx, method.settings(knobs))
        except Exception as exc:  # a failed method is a row per cell, and the sweep goes on
            err = f"method failed: {type(exc).__name__}: {first_line(exc)}"
            for target, scenario, key in cells:
                self._put(key, {**self._base_row(run, method, knobs, target, scenario), "status": "error",
                                "error": err})
            return
        apply_s = time.perf_counter() - t0
        train_s = compressed.train_s if method.name != "none" else run.baseline.train_s
        done_variants = []
        for dep in compressed.deployables:
            self._run_deployable(run, method, knobs, dep, train_s, apply_s, compressed.extra)
            done_variants.append(dep.variant)
        self._record_variants(run, method, knobs, done_variants)

    def _variants_key(self, run: ModelRun, method: Method, knobs: dict) -> Path:
        return self.work / "variants" / f"{_hash([run.baseline.key, method.name, knobs])}.json"

    def _record_variants(self, run: ModelRun, method: Method, knobs: dict, variants: list[str]) -> None:
        path = self._variants_key(run, method, knobs)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(variants))

    def _variants_done(self, run: ModelRun, method: Method, knobs: dict) -> bool:
        path = self._variants_key(run, method, knobs)
        if not path.exists():
            return False
        return all(self.store.is_finished(k) for v in json.loads(path.read_text())
                   for _, _, k in self._cells(run, method, knobs, v))

    # ----------------------------------------------------------------- one deployable
    @staticmethod
    def _save_artifact(model: nn.Module, folder: Path, tag: str, input_shape: tuple[int, ...], *,
                       onnx: bool, exporter: Callable[..., Path] = export_onnx) -> Artifact:
        """The pickled module and, when ``onnx``, the ONNX export, under ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        model = model.eval()
        torch_path = folder / f"{tag}.pt"
        torch.save(model, torch_path)
        onnx_path = exporter(model, folder / f"{tag}.onnx", input_shape) if onnx else None
        return Artifact(name=tag, input_shape=input_shape, onnx_path=onnx_path, torch_path=torch_path)

    def _artifact(self, run: ModelRun, method: Method, knobs: dict, dep: Deployable) -> tuple[Artifact, dict]:
        tag = f"{run.name}-{method.name}-{_hash([run.baseline.key, knobs, dep.variant])[:10]}-{dep.variant}"
        art = self._save_artifact(dep.model, self.out / "artifacts", tag, tuple(run.data.input_shape),
                                  onnx=any(t.needs == "onnx" for t in self.plan.targets),
                                  exporter=dep.export_onnx or export_onnx)
        extra: dict[str, Any] = {"torch_sha256": file_sha256(art.torch_path)}
        if art.onnx_path is not None:
            extra["onnx_sha256"] = file_sha256(art.onnx_path)
            if dep.check_graph is not None:
                extra.update(dep.check_graph(art.onnx_path))
        return art, extra

    def _spec(self, target: Target, art: Artifact, run: ModelRun, scenario: str,
              ref_path: Path | None = None, rules: TimingRules | None = None) -> CellSpec:
        """What the cell process needs; with ``ref_path`` it also measures accuracy and parity."""
        evaluate = ref_path is not None
        return CellSpec(target=target.key, artifact=_artifact_json(art), scenario=scenario,
                        batch=self._batch(scenario), threads=self.cfg.threads,
                        rules=asdict(rules or self.cfg.timing_rules), pool_path=str(run.pool_path),
                        eval_x_path=str(run.eval_x_path) if evaluate else None,
                        eval_y_path=str(run.eval_y_path) if evaluate else None,
                        ref_logits_path=str(ref_path) if evaluate else None,
                        options=self.cfg.target_options.get(target.key, {}),
                        target_entry=_entry_string(target.key))

    def _run_deployable(self, run: ModelRun, method: Method, knobs: dict, dep: Deployable,
                        train_s: float, apply_s: float, extra: dict) -> None:
        cells = [c for c in self._cells(run, method, knobs, dep.variant) if not self.store.is_finished(c[2])]
        if not cells:  # measured in an earlier run: no reference pass, no export
            return
        cost = count_cost(dep.model, run.data.input_shape)
        macs = dep.macs if dep.macs is not None else cost.macs
        shared = {"variant": dep.variant, "macs": macs, "params": cost.params,
                  "size_bytes": dep.size_bytes if dep.size_bytes is not None else size_bytes(dep.model),
                  "size_fp32_bytes": size_bytes(dep.model), "dense_macs": run.dense_macs,
                  "train_s": train_s, "method_s": apply_s, **extra, **dep.extra}
        ref = predict(dep.model, run.eval_x)
        shared["top1_torch"] = top1(ref, run.eval_y)
        ref_path = self.work / f"ref-{_hash([run.baseline.key, method.name, knobs, dep.variant])}.npy"
        np.save(ref_path, ref)
        try:
            art, art_extra = self._artifact(run, method, knobs, dep)
        except Exception as exc:
            err = f"export failed: {type(exc).__name__}: {first_line(exc)}"
            for target, scenario, key in cells:
                self._put(key, {**self._base_row(run, method, knobs, target, scenario), **shared,
                                "status": "error", "error": err})
            return
        hashes = {"onnx": art_extra.pop("onnx_sha256", None), "torch": art_extra.pop("torch_sha256")}
        shared.update(art_extra)
        for target, scenario, key in cells:
            row = {**self._base_row(run, method, knobs, target, scenario), **shared}
            # the file this target deploys, and its hash: the row names exactly what was measured
            row["artifact"] = str((art.onnx_path if target.needs == "onnx" else art.torch_path)
                                  .relative_to(self.out))
            row["artifact_sha256"] = hashes[target.needs]
            reason = skip_reason(target, dep)
            if reason:
                self._put(key, {**row, "status": "skipped", "error": reason})
                continue
            spec = self._spec(target, art, run, scenario, ref_path)
            spec.graph_facts = dep.check_facts is not None
            result = run_isolated(spec, self.work / "cells" / key, self.cfg.timeout_s)
            facts = result.pop("graph_facts", None)
            if facts is not None and result.get("status") == "ok":
                result.update(dep.check_facts(target.key, facts))
            session = result.pop("session", {})
            versions = result.pop("runtime_versions", {})
            result.pop("traceback", None)
            self._put(key, {**row, **result, "precision": session.get("precision", ""),
                            "session": json.dumps(session), "runtime_versions": json.dumps(versions)})

    # ----------------------------------------------------------------- latency probe for methods
    def _probe_latency(self, run: ModelRun) -> Callable[[nn.Module, str], float]:
        """A callable(model, target_key) -> p50 ms at batch 1, for methods with a latency budget.

        Probes time with the quick preset's rules (or the sweep's own, when they are shorter, as
        in tests): a method may probe dozens of candidate networks before its result is measured
        in full like every other row."""
        rules = self.cfg.timing_rules
        if rules.min_s > PRESETS["quick"].min_s:
            rules = PRESETS["quick"]

        def probe(model: nn.Module, target_key: str) -> float:
            target = get_target(target_key)
            avail = target.availability()
            if not avail.ok:
                raise UserError(f"target {target_key} is not available: {avail.reason}")
            tag = f"probe-{int(time.time() * 1e6)}"
            art = self._save_artifact(model, self.work / "probe", tag, tuple(run.data.input_shape),
                                      onnx=target.needs == "onnx")
            result = run_isolated(self._spec(target, art, run, "SingleStream", rules=rules), self.work / "probe" / tag,
                                  self.cfg.timeout_s)
            if result.get("status") != "ok":
                raise RuntimeError(f"latency probe on {target_key} failed: {result.get('error')}")
            return float(result["p50_ms"])
        return probe


def skip_reason(target: Target, dep: Deployable) -> str | None:
    """Why ``dep`` cannot run on ``target`` (a capability it requires and the target lacks)."""
    from targets.base import CAPABILITIES

    missing = target.lacks(dep.requires)
    if not missing:
        return None
    needs = "; ".join(f"{c} ({CAPABILITIES.get(c, c)})" for c in missing)
    return f"needs {needs}, which {target.key} does not have" + (f": {dep.requires_why}" if dep.requires_why else "")


def _entry_string(key: str) -> str | None:
    entry = TARGETS.entry(key)
    return entry if isinstance(entry, str) else None


def _artifact_json(art: Artifact) -> dict[str, Any]:
    return {"name": art.name, "input_shape": list(art.input_shape),
            "onnx_path": str(art.onnx_path) if art.onnx_path else None,
            "torch_path": str(art.torch_path) if art.torch_path else None}


def run_sweep(config: SweepConfig) -> list[dict]:
    """Validate and run a sweep; rows are stored under ``config.out`` and published there."""
    plan = plan_sweep(config)
    torch.set_num_threads(config.threads)
    for key, reason in plan.skipped_targets.items():
        log(f"target {key} left out: {reason}")
    sweep = Sweep(plan)
    try:
        return sweep.run()
    finally:
        sweep.store.close()
