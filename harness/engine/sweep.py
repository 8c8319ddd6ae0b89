"""The sweep loop: plan, then hand jobs to an executor and write every result to the store.

The driver submits baseline jobs, then per finished baseline its compress jobs, then per finished
compress job its measure jobs (or, for a budget compressed in an earlier run, its missing measure
jobs straight from the variants the store remembers). It alone writes the store, the moment each
result arrives, so a killed sweep loses nothing and a re-run runs only what is missing.

Measure jobs of one model, target and scenario are held and timed together in one cell (at most
``cell_items`` networks, interleaved with the dense reference once), released when the group is
full or when no compress work is left: a cell's process start-up and its dense reference are paid
once per group instead of once per budget (measured on the quick default sweep: 42 cells, start-up
63 s and the reference about a third of the 242 s of timing).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from harness import provenance
from harness.engine.config import SweepConfig
from harness.engine.executors import Done, Executor, Task, make_executor
from harness.engine.jobs import run_baseline, run_compress, run_measure
from harness.engine.plan import CompressJob, MeasureJob, Plan, plan_sweep
from harness.engine.profile import Progress
from harness.engine.report import publish
from harness.engine.rows import knob_text
from harness.engine.store import Store
from harness.macs import CONVENTION
from harness.timing import PERCENTILE_RULE
from harness.train import recipe_dict
from methods import get_method
from targets import Target, get_target
from targets.base import CAPABILITIES


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def skip_reason(target: Target, requires: list[str], why: str) -> str | None:
    """Why a deployable requiring ``requires`` cannot run on ``target``, or None."""
    missing = target.lacks(set(requires))
    if not missing:
        return None
    needs = "; ".join(f"{c} ({CAPABILITIES.get(c, c)})" for c in missing)
    return f"needs {needs}, which {target.key} does not have" + (f": {why}" if why else "")


class Sweep:
    """Runs a validated Plan through an executor, writing rows to the store as jobs finish."""

    def __init__(self, plan: Plan, executor: Executor):
        self.plan, self.cfg, self.executor = plan, plan.config, executor
        self.store = Store(self.cfg.out / "results.sqlite")
        self.started = provenance.now()
        self.t_start = time.time()
        self.targets = {t.key: t for t in plan.targets}
        self.bases: dict[str, dict[str, Any]] = {}
        self.needs_onnx = any(t.needs == "onnx" for t in plan.targets)
        self.progress = Progress(log, self._left)
        self.dense: dict[str, dict[str, Any] | None] = {}  # per model: the dense network's variant record
        self.waiting: dict[str, list[tuple[CompressJob, dict[str, Any]]]] = {}  # budgets waiting for it
        # measure jobs held to share a cell: (model, target, scenario) -> [(job, record, row)]
        self.held: dict[tuple[str, str, str], list[tuple[MeasureJob, dict[str, Any], dict[str, Any]]]] = {}
        self.compress_open = 0  # baseline and compress tasks submitted and not finished

    # ----------------------------------------------------------------- rows
    def _base_row(self, job: CompressJob | MeasureJob, target: str, scenario: str) -> dict[str, Any]:
        cfg, data = self.cfg, self.plan.data[job.model]
        base = self.bases.get(job.model, {})
        method = get_method(job.method)
        knob, budget = knob_text(job.knobs)
        tgt = self.targets[target]
        return {
            "model": job.model, "data": data.spec, "synthetic": data.synthetic, "method": job.method,
            "produces": method.produces, "knob": knob, "budget": budget, "variant": "default", "target": target,
            "device": tgt.device, "scenario": scenario,
            "target_options": json.dumps(cfg.target_options.get(target, {}), sort_keys=True),
            "batch": self.plan.batch(scenario), "status": "ok", "error": "", "threads": cfg.threads,
            "preset": cfg.preset, "percentile_rule": PERCENTILE_RULE, "macs_convention": CONVENTION,
            "baseline_source": base.get("source", ""), "baseline_key": self.plan.baselines[job.model].key,
            "recipe": json.dumps(recipe_dict(cfg.baseline_recipe)), "seed": cfg.seed,
            "data_hash": data.content_hash, "train_n": data.train_n, "git_rev": provenance.git_revision(),
            "command": cfg.command or "(Python API: harness.run_sweep)",
            "started": self.started, "versions": json.dumps(provenance.package_versions()),
        }

    def _left(self) -> str:
        """What the progress lines end with: cells done of planned, and the time left."""
        from harness.engine.jobs import _baseline_folder
        from harness.engine.plan import summarize_plan

        s = summarize_plan(self.plan, self.store, _baseline_folder(self.cfg))
        return f"{s.total['measure'] - s.jobs['measure']}/{s.total['measure']} cells done, {s.time_left()}"

    def _put(self, key: str, row: dict[str, Any]) -> None:
        row["written"] = provenance.now()
        self.store.put(key, row)
        self.progress.cell(row)

    def _artifact_column(self, path: str | None) -> str:
        if not path:
            return ""
        p = Path(path)
        try:
            return str(p.relative_to(self.cfg.out))
        except ValueError:
            return str(p)

    # ----------------------------------------------------------------- submitting
    def _submit_baseline(self, model: str) -> None:
        job = self.plan.baselines[model]
        self.compress_open += 1
        self.executor.submit(Task("baseline", run_baseline, (self.cfg, job), f"baseline {model}", context=job,
                                  cpus=self.cfg.threads))

    def _submit_compress(self, job: CompressJob) -> None:
        variants = self.store.variants(job.key)
        measure = self.plan.measure_jobs(job, list(variants))
        budget = self.store.budget(job.key) or {}
        if budget.get("status") == "ok" and measure:
            have = self._artifacts_exist(variants)
            finished = self.store.finished_keys()
            done = all(m.key in finished for m in measure)
            # every cell finished: nothing needs the files (a published folder has none left),
            # except the dense network's, the reference of other budgets' unfinished cells
            if have or (done and job.method != "none"):
                if done:
                    log(f"  {job.label}: all cells finished earlier, skipped")
                else:
                    self._submit_measures(job, variants)  # compressed earlier: measure only
                if job.method == "none":
                    self._dense_ready(job.model, variants.get("default"))
                return
        self.compress_open += 1
        self.executor.submit(Task("compress", run_compress, (self.cfg, job, self.bases[job.model], self.needs_onnx),
                                  job.label, context=job, cpus=self.cfg.threads))

    def _submit_measures(self, job: CompressJob, variants: dict[str, dict[str, Any]]) -> None:
        """The budget's unfinished measure jobs, per (target, scenario): the dense network's go
        out at once; a method's are held to share a cell with other budgets of the model (see
        ``_release``), interleaved with the model's dense reference (the ``none`` job's network;
        they wait for that to exist). Capability skips and failed exports are rows now."""
        if job.method != "none" and job.model not in self.dense:
            self.waiting.setdefault(job.model, []).append((job, variants))
            return
        reference = None if job.method == "none" else self.dense.get(job.model)
        finished = self.store.finished_keys()
        groups: dict[tuple[str, str], list[tuple[MeasureJob, dict[str, Any], dict[str, Any]]]] = {}
        for mjob in self.plan.measure_jobs(job, list(variants)):
            if mjob.key in finished:
                continue
            record, target = variants[mjob.variant], self.targets[mjob.target]
            row = self._row(mjob, record)
            reason = record.get("error") or skip_reason(target, record.get("requires", []), record.get("requires_why", ""))
            if reason:  # a failed export or a capability the target lacks: a row, no cell
                self._put(mjob.key, {**row, "status": "error" if record.get("error") else "skipped", "error": reason})
                continue
            groups.setdefault((mjob.target, mjob.scenario), []).append((mjob, record, row))
        for (target_key, scenario), members in groups.items():
            if job.method == "none":
                self._submit_cell(job.model, target_key, scenario, members, None, job.label)
                continue
            held = self.held.setdefault((job.model, target_key, scenario), [])
            held.extend(members)
            if len(held) >= self.cfg.cell_items:
                self._release((job.model, target_key, scenario))

    def _release(self, group: tuple[str, str, str]) -> None:
        """Submit a held group's measure jobs, ``cell_items`` networks per cell."""
        model, target_key, scenario = group
        members = self.held.pop(group, [])
        reference = self.dense.get(model)
        usable_ref = reference if reference and not reference.get("error") else None
        step = self.cfg.cell_items
        for i in range(0, len(members), step):
            self._submit_cell(model, target_key, scenario, members[i:i + step], usable_ref, model)

    def _submit_cell(self, model: str, target_key: str, scenario: str,
                     members: list[tuple[MeasureJob, dict[str, Any], dict[str, Any]]],
                     reference: dict[str, Any] | None, label: str) -> None:
        target = self.targets[target_key]
        mjobs, records = [m for m, _, _ in members], [r for _, r, _ in members]
        args = (self.cfg, mjobs, records, reference, self.bases[model], self.plan.batch(scenario),
                self.executor.isolated, str(self.cfg.artifact_dir / "cells"))
        self.executor.submit(Task("measure", run_measure, args,
                                  f"{label} {target_key} {scenario} ({len(mjobs)} networks)",
                                  context=(mjobs, [row for _, _, row in members], reference is not None, records),
                                  cpus=self.cfg.threads, exclusive=True, resources=dict(target.resources),
                                  timeout_s=self.cfg.timeout_s * (len(mjobs) + 1) + 60))

    def _dense_ready(self, model: str, record: dict[str, Any] | None) -> None:
        """The model's dense network is exported (or failed): release the budgets waiting for it."""
        self.dense[model] = record
        for job, variants in self.waiting.pop(model, []):
            self._submit_measures(job, variants)

    @staticmethod
    def _artifacts_exist(variants: dict[str, dict[str, Any]]) -> bool:
        """Whether every exported file a stored variant names is still there (else compress again)."""
        paths = [r.get(k) for r in variants.values() for k in ("torch_path", "onnx_path", "ref_path")]
        return all(Path(p).exists() for p in paths if p)

    def _row(self, mjob: MeasureJob, record: dict[str, Any]) -> dict[str, Any]:
        row = {**self._base_row(mjob, mjob.target, mjob.scenario), **record.get("shared", {})}
        target = self.targets[mjob.target]
        path = record.get("onnx_path") if target.needs == "onnx" else record.get("torch_path")
        row["artifact"] = self._artifact_column(path)
        row["artifact_sha256"] = record.get("onnx_sha256" if target.needs == "onnx" else "torch_sha256") or ""
        return row

    # ----------------------------------------------------------------- finished tasks
    def _on_baseline(self, done: Done) -> None:
        job = done.task.context
        self.compress_open -= 1
        if done.error:
            raise RuntimeError(f"baseline {job.model} failed: {done.error}")
        self.bases[job.model] = done.result
        for phase, seconds in done.result["phases"].items():
            self.store.add_phase(job.key, "baseline" if phase == "baseline" else "arrays",
                                 job.model if phase == "baseline" else phase, seconds)
        self.progress.phase(f"[{job.model}] baseline ready ({done.result['source']})")
        for cjob in self.plan.compress:
            if cjob.model == job.model:
                self._submit_compress(cjob)

    def _on_compress(self, done: Done) -> None:
        job: CompressJob = done.task.context
        self.compress_open -= 1
        result = done.result if not done.error else {"status": "error", "error": f"compress job failed: {done.error}",
                                                     "variants": {}, "phases": {}}
        for phase, seconds in result.get("phases", {}).items():
            self.store.add_phase(job.key, phase, job.method, seconds)
        if result["status"] != "ok":
            for mjob in self.plan.measure_jobs(job, ["default"]):
                self._put(mjob.key, {**self._base_row(mjob, mjob.target, mjob.scenario), "status": "error",
                                     "error": result["error"]})
            if job.method == "none":
                self._dense_ready(job.model, None)
            return
        self.store.put_budget(job.key, {"status": "ok", "variants": list(result["variants"])}, result["variants"])
        self.progress.phase(f"  {job.label}: compressed ({', '.join(result['variants'])})")
        self._submit_measures(job, result["variants"])
        if job.method == "none":
            self._dense_ready(job.model, result["variants"].get("default"))

    def _on_measure(self, done: Done) -> None:
        mjobs, rows, interleaved, records = done.task.context
        results = done.result if not done.error else [{"status": "error", "error": f"measure job failed: {done.error}"}
                                                      for _ in mjobs]
        probes = results[0].pop("_latency", None) if results else None
        predictions = self._predictions(mjobs, records, results, probes)
        for mjob, row, result, predicted in zip(mjobs, rows, results, predictions):
            result.update(predicted)
            session = result.pop("session", {}) or {}
            versions = result.pop("runtime_versions", {})
            for phase, seconds in result.pop("phases", {}).items():
                self.store.add_phase(mjob.key, "cell-phase", phase, seconds)
            if "measure_start" in result:
                self.store.add_phase(mjob.key, "cell", f"{mjob.target}:{mjob.scenario}",
                                     (result["measure_end"] - result["measure_start"]) / len(mjobs))
            self._put(mjob.key, {**row, **result, "ref_interleaved": interleaved,
                                 "precision": session.get("precision", ""), "tune_s": session.get("tune_s"),
                                 "session": json.dumps(session), "runtime_versions": json.dumps(versions)})

    # ----------------------------------------------------------------- predicted latency
    def _predictions(self, mjobs: list[MeasureJob], records: list[dict[str, Any]], results: list[dict[str, Any]],
                     probes: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Per row: ``p50_predicted_ms``, ``speedup_predicted`` and ``p50_predicted_note`` from the
        target's latency model (this cell's probes merged first), fitted on the whole networks the
        table holds except the row's own; then the row becomes a fit point for later rows."""
        from harness.engine import latency_model as lm

        head = mjobs[0]
        empty = {"p50_predicted_ms": None, "speedup_predicted": None}
        machine = (probes or {}).get("machine") or next((r for r in results if r.get("cpu")), {})
        if not machine.get("cpu"):
            return [{**empty, "p50_predicted_note": "no latency model: the cell did not run"} for _ in mjobs]
        shape = tuple(self.plan.data[head.model].input_shape)
        try:
            tm = lm.TargetModel(head.target, self.cfg.target_options.get(head.target, {}), self.cfg.threads,
                                self.plan.batch(head.scenario), head.scenario, shape,
                                self.cfg.artifact_dir / "latency-model", machine=machine,
                                rules=lm.probe_rules(self.cfg.timing))
            if probes and probes.get("measured"):
                table = lm.update_table(tm.key, lambda t: lm.merge_measured(t, probes["measured"], probes["calib_ms"],
                                                                            probes["whole"]))
            else:
                table = tm.table()
        except Exception as exc:  # a prediction must never stop a sweep
            return [{**empty, "p50_predicted_note": f"latency model failed: {type(exc).__name__}: {exc}"}
                    for _ in mjobs]
        dense_rec = (self.dense.get(head.model) or {}).get("latency") or {}
        dense = lm.Features(dense_rec["net"], dense_rec["units"], dense_rec["adapters"]) if dense_rec.get("net") else None
        out, points = [], []
        for mjob, record, result in zip(mjobs, records, results):
            lat = record.get("latency") or {}
            if not lat.get("net"):
                out.append({**empty, "p50_predicted_note": lat.get("note") or (probes or {}).get("note", "")})
                continue
            feats = lm.Features(lat["net"], lat["units"], lat["adapters"], lat.get("granularity", lm.GRANULARITY))
            if not table.units:
                why = (probes or {}).get("note") or (
                    f"no latency model for {head.target} {head.scenario} (batch {self.plan.batch(head.scenario)}) here: "
                    f"python -m harness predict --model {head.model} --targets {head.target} --scenarios {head.scenario}")
                out.append({**empty, "p50_predicted_note": why})
                continue
            p = lm.predict(table, feats, dense)
            out.append({"p50_predicted_ms": p.ms, "p50_predicted_note": p.note,
                        "speedup_predicted": (1.0 / p.frac_of_dense if p.frac_of_dense and mjob.method != "none"
                                              else (1.0 if p.ms is not None and mjob.method == "none" else None))})
            ratio = result.get("speedup_interleaved")
            dense_ms = table.net_ms(dense.net) if dense is not None else None
            if (mjob.method != "none" and result.get("status") == "ok" and ratio and result.get("ratio_ok") is not False
                    and dense_ms):
                points.append((feats, dense_ms / ratio, mjob.key))
        if points:
            def add(t: Any) -> None:
                for feats, y, key in points:
                    lm.add_row_point(t, feats, y, key)
            lm.update_table(tm.key, add)
        return out

    # ----------------------------------------------------------------- the loop
    def run(self) -> list[dict[str, Any]]:
        handlers = {"baseline": self._on_baseline, "compress": self._on_compress, "measure": self._on_measure}
        self.executor.start(self.cfg.threads)
        try:
            for model in self.cfg.models:
                self._submit_baseline(model)
            while self.executor.pending() or self.held:
                if not self.compress_open:  # nothing more will join a held group
                    for group in list(self.held):
                        self._release(group)
                done = self.executor.next_done()
                handlers[done.task.kind](done)
        except KeyboardInterrupt:
            publish(self.cfg.out, self.store.rows())  # the tables hold every row kept so far
            raise
        finally:
            self.executor.close()
        rows = self.store.rows()
        publish(self.cfg.out, rows)
        return rows


def dry_run(config: SweepConfig) -> list[str]:
    """The plan's summary lines: jobs per kind, what is already done, the time left."""
    from harness.engine.jobs import _baseline_folder
    from harness.engine.plan import summarize_plan

    plan = plan_sweep(config)
    path = config.out / "results.sqlite"
    store = Store(path if path.exists() else Path(":memory:"))
    try:
        return summarize_plan(plan, store, _baseline_folder(config)).lines
    finally:
        store.close()


def run_sweep(config: SweepConfig) -> list[dict[str, Any]]:
    """Validate, plan and run a sweep; rows are stored under ``config.out`` and published there."""
    import torch

    plan = plan_sweep(config)
    torch.set_num_threads(config.threads)
    for key, reason in plan.skipped_targets.items():
        log(f"target {key} left out: {reason}")
    sweep = Sweep(plan, make_executor(config.executor))
    try:
        rows = sweep.run()
        log(sweep.progress.breakdown(sweep.store.phases_since(sweep.t_start), time.time() - sweep.t_start))
        return rows
    finally:
        sweep.store.close()
