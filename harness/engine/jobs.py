"""What each kind of job does, as top-level functions of picklable arguments, so the same code
runs in the driver (local and inline executors) or on any node of a Ray cluster.

A job reads and writes only files under the artifact location (``config.artifact_dir``, shared
storage on a cluster) and returns its result to the driver, which alone writes the store:
- ``run_baseline``: the dense baseline (trained once and cached by content hash, or the user's
  checkpoint), its weights, and the evaluation and timing-pool arrays of the model's test set;
- ``run_compress``: one method at one budget on the baseline; every deployable exported once
  (pickled module + ONNX), its reference logits and its target-independent row columns;
- ``run_measure``: one deployable on one target and scenario, in an isolated cell process (or
  in-process for the inline executor); the cell's result plus where and when it ran.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from harness.data import DataBundle, eval_arrays
from harness.engine.baseline import cache_dir, get_baseline
from harness.engine.cell import CellSpec, run_cell
from harness.engine.config import SweepConfig
from harness.engine.isolate import run_isolated
from harness.engine.plan import BaselineJob, CompressJob, MeasureJob, data_size, load_model_data
from harness.engine.rows import content_key
from harness.errors import UserError, first_line
from harness.export import export_onnx, file_sha256
from harness.macs import count_cost, size_bytes
from harness.models import build_model
from harness.timing import PRESETS
from harness.train import predict, top1
from methods import Deployable, MethodContext, get_method
from targets import TARGETS, Artifact, get_target

_DATA: dict[tuple, DataBundle] = {}  # per process: a worker loads each data set once


def log(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def _data(config: SweepConfig, model: str) -> DataBundle:
    key = (config.data, data_size(config, model), config.seed, config.train_limit)
    if key not in _DATA:
        _DATA[key] = load_model_data(config, model)
    return _DATA[key]


def _baseline_folder(config: SweepConfig) -> Path:
    # on a cluster the trained baselines live on the shared artifact location; alone, in the
    # user's cache, where every sweep of the same (model, data, recipe, seed) finds them
    return config.artifacts / "baselines" if config.artifacts else cache_dir() / "baselines"


# ----------------------------------------------------------------------------- baseline
SYNTHETIC_POOL = 64  # timing inputs of a latency-only (synthetic) run
SYNTHETIC_PARITY = 16  # its parity inputs

def run_baseline(config: SweepConfig, job: BaselineJob) -> dict[str, Any]:
    """Baseline weights and the model's evaluation arrays, as files; returns their paths."""
    t0 = time.perf_counter()
    data = _data(config, job.model)
    if data.synthetic:
        log(f"[{job.model}] untrained weights (synthetic data: latency only)")
    else:
        log(f"[{job.model}] baseline on {data.spec} ({config.preset} recipe)")
    base = get_baseline(job.model, data, config.baseline_recipe, seed=config.seed, checkpoint=config.checkpoint,
                        progress=config.progress, folder=_baseline_folder(config))
    train_wall = time.perf_counter() - t0
    folder = config.artifact_dir / "data" / f"{job.model}-{job.key}-{content_key([config.eval_limit, config.pool_size])}"
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "baseline.pt"
    torch.save(base.model.state_dict(), weights)
    x, y = eval_arrays(data, config.eval_limit)
    pool = x[: config.pool_size]
    if data.synthetic:
        # No accuracy: parity needs only a few inputs, and rotating more than a few dozen random
        # tensors through the timed loop changes nothing, so a latency-only ImageNet-size run does
        # not leave hundreds of MB of arrays behind (resnet18: 46 MB instead of 296 MB).
        pool, x, y = x[:SYNTHETIC_POOL], x[:SYNTHETIC_PARITY], y[:SYNTHETIC_PARITY]
    paths = {"pool": folder / "pool.npy", "eval_x": folder / "eval_x.npy", "eval_y": folder / "eval_y.npy"}
    for name, arr in (("pool", pool), ("eval_x", x), ("eval_y", y)):
        np.save(paths[name], arr)
    return {"key": base.key, "source": base.source, "train_s": base.train_s, "weights": str(weights),
            "dense_macs": count_cost(base.model, data.input_shape).macs, "train_n": data.train_n,
            **{k: str(p) for k, p in paths.items()},
            "phases": {"baseline": train_wall, "arrays": time.perf_counter() - t0 - train_wall}}


def _baseline_model(model: str, base: dict[str, Any], classes: int) -> nn.Module:
    net = build_model(model, num_classes=classes)
    net.load_state_dict(torch.load(base["weights"], map_location="cpu", weights_only=True))
    return net.eval()


# ----------------------------------------------------------------------------- compress
def run_compress(config: SweepConfig, job: CompressJob, base: dict[str, Any], needs_onnx: bool) -> dict[str, Any]:
    """Apply ``job``'s method to the baseline and export every deployable; returns
    {"status", "error", "variants": {name: record}, "phases"}. A failing method is a result with
    status "error" (every cell of the budget becomes an error row), not an exception."""
    torch.set_num_threads(config.threads)
    data = _data(config, job.model)
    method = get_method(job.method)
    model = _baseline_model(job.model, base, data.num_classes)
    ctx = MethodContext(model_name=job.model, model=model, data=data, recipe=config.baseline_recipe,
                        seed=config.seed, workdir=config.artifact_dir / "methods", preset=config.preset,
                        measure_latency=_latency_probe(config, job, base, data.num_classes),
                        predict_latency=_latency_predictor(config, job, base, data.num_classes), log=log)
    t0 = time.perf_counter()
    try:
        torch.manual_seed(config.seed)
        compressed = method.apply(ctx, method.settings(job.knobs))
    except Exception as exc:  # a failed method is a row per cell, and the sweep goes on
        return {"status": "error", "error": f"method failed: {type(exc).__name__}: {first_line(exc)}",
                "variants": {}, "phases": {"compress": time.perf_counter() - t0}}
    apply_s = time.perf_counter() - t0
    train_s = compressed.train_s if method.name != "none" else base["train_s"]
    variants: dict[str, dict[str, Any]] = {}
    phases = {"compress": apply_s, "reference": 0.0, "export": 0.0}
    for dep in compressed.deployables:
        variants[dep.variant] = _variant_record(config, job, base, dep, data, needs_onnx, phases,
                                                {"train_s": train_s, "method_s": apply_s, **compressed.extra})
    return {"status": "ok", "error": "", "variants": variants, "phases": phases}


def _import_name(fn: Callable | None) -> str | None:
    """``module:qualname`` of a module-level function, so another process can import it."""
    if fn is None:
        return None
    name = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in name:
        raise ValueError(f"check_facts must be a module-level function, got {name}")
    return name


def _variant_record(config: SweepConfig, job: CompressJob, base: dict[str, Any], dep: Deployable,
                    data: DataBundle, needs_onnx: bool, phases: dict[str, float],
                    common: dict[str, Any]) -> dict[str, Any]:
    """What every measure job of this deployable needs: files, hashes, target-independent columns."""
    t0 = time.perf_counter()
    cost = count_cost(dep.model, data.input_shape)
    shared: dict[str, Any] = {
        "variant": dep.variant, "macs": dep.macs if dep.macs is not None else cost.macs, "params": cost.params,
        "size_bytes": dep.size_bytes if dep.size_bytes is not None else size_bytes(dep.model),
        "size_fp32_bytes": size_bytes(dep.model), "dense_macs": base["dense_macs"], **common, **dep.extra}
    tag = f"{job.model}-{job.method}-{job.key[:10]}-{dep.variant}"
    folder = config.artifact_dir
    ref = predict(dep.model, np.load(base["eval_x"]))
    shared["top1_torch"] = top1(ref, np.load(base["eval_y"]))
    ref_path = folder / f"{tag}.ref.npy"
    np.save(ref_path, ref)
    phases["reference"] += time.perf_counter() - t0
    record: dict[str, Any] = {"shared": shared, "ref_path": str(ref_path), "requires": sorted(dep.requires),
                              "requires_why": dep.requires_why, "check_facts": _import_name(dep.check_facts),
                              "error": "", "latency": _latency_record(config, job, dep, data)}
    t0 = time.perf_counter()
    try:
        art = _save_artifact(dep.model, folder, tag, tuple(data.input_shape), onnx=needs_onnx,
                             exporter=dep.export_onnx or export_onnx)
        record.update({"torch_path": str(art.torch_path), "torch_sha256": file_sha256(art.torch_path),
                       "onnx_path": str(art.onnx_path) if art.onnx_path else None,
                       "onnx_sha256": file_sha256(art.onnx_path) if art.onnx_path else None})
        if art.onnx_path is not None and dep.check_graph is not None:
            shared.update(dep.check_graph(art.onnx_path))
    except Exception as exc:
        record["error"] = f"export failed: {type(exc).__name__}: {first_line(exc)}"
    phases["export"] += time.perf_counter() - t0
    return record


def _latency_record(config: SweepConfig, job: CompressJob, dep: Deployable, data: DataBundle) -> dict[str, Any]:
    """What the latency model needs of this network (``harness.engine.latency_model``): its units'
    keys and their probe files (exported once per key, shared by every network that has the unit),
    or why it is not modelled."""
    from harness.engine import latency_model as lm

    if get_method(job.method).produces == "dynamic":
        return {"note": "dynamic network: its cost depends on the input; not modelled"}
    if dep.requires:
        return {"note": f"needs {', '.join(sorted(dep.requires))}: not modelled by unit probes"}
    shape = tuple(data.input_shape)
    t0 = time.perf_counter()
    try:
        feats = lm.features(dep.model, shape)
        probes = {k: asdict(lm.export_probe(k, d, m, shape, config.artifact_dir / "latency-probes"))
                  for k, (d, m) in lm.probes_of(dep.model, shape).items()}
    except Exception as exc:  # a unit the exporter cannot take: the row says so, nothing else changes
        return {"note": f"latency model: a unit could not be probed: {type(exc).__name__}: {first_line(exc, 200)}"}
    return {"net": feats.net, "units": feats.units, "adapters": feats.adapters, "granularity": feats.granularity,
            "probes": probes, "probe_export_s": time.perf_counter() - t0}


def _save_artifact(model: nn.Module, folder: Path, tag: str, input_shape: tuple[int, ...], *, onnx: bool,
                   exporter: Callable[..., Path] = export_onnx) -> Artifact:
    """The pickled module and, when ``onnx``, the ONNX export, under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    torch_path = folder / f"{tag}.pt"
    torch.save(model, torch_path)
    onnx_path = exporter(model, folder / f"{tag}.onnx", input_shape) if onnx else None
    return Artifact(name=tag, input_shape=input_shape, onnx_path=onnx_path, torch_path=torch_path)


def _latency_probe(config: SweepConfig, job: CompressJob, base: dict[str, Any],
                   classes: int) -> Callable[[nn.Module, str], float]:
    """A callable(model, target_key) -> the model's p50 as a fraction of the dense baseline's, at
    batch 1, for methods with a latency budget.

    Each probe is one cell: the candidate timed interleaved with the dense baseline (saved once
    per probe folder), its fraction = 1 / the median paired ratio, the same estimator as the
    row's speed-up, so probe and row agree however the machine's speed moves between them.
    Probes time with the quick preset's rules, whatever the sweep's (shorter rules, as in tests,
    make blocks of a few queries whose paired ratios are noise: a dense network against itself
    read 1.7x with 5-query blocks), and are re-timed once when suspect: a method may probe dozens
    of candidate networks before its result is measured in full like every other row. On a Ray cluster a probe runs
    inside its compress job, on a node that may be shared with other compress jobs: its numbers
    are then only as good as that node is quiet.
    """
    rules = PRESETS["quick"]
    work = config.artifact_dir / "probe"
    dense: dict[bool, dict[str, Any]] = {}  # ONNX or not -> the saved dense baseline

    def probe(model: nn.Module, target_key: str) -> float:
        target = get_target(target_key)
        options = target.parse_options(config.target_options.get(target_key, {}))
        avail = target.availability(options)
        if not avail.ok:
            raise UserError(f"target {target_key} is not available: {avail.reason}")
        shape = tuple(np.load(base["pool"], mmap_mode="r").shape[1:])
        onnx = target.needs == "onnx"
        if onnx not in dense:
            reference = _baseline_model(job.model, base, classes)
            dense[onnx] = _artifact_json(_save_artifact(reference, work, f"dense-{job.key[:10]}-{int(onnx)}",
                                                        shape, onnx=onnx))
        tag = f"probe-{int(time.time() * 1e6)}"
        art = _save_artifact(model, work, tag, shape, onnx=onnx)
        spec = CellSpec(target=target_key, scenario="SingleStream", batch=1, threads=config.threads,
                        rules=asdict(rules), pool_path=base["pool"], items=[{"key": tag, "artifact": _artifact_json(art)}],
                        reference=dense[onnx], options=config.target_options.get(target_key, {}),
                        target_entry=_entry_string(target_key), noise={"tries": 2, "settle_s": 2.0})
        result = run_isolated(spec, work / tag, config.timeout_s)
        item = result.get("items", [{}])[0] if result.get("status") == "ok" else result
        if item.get("status") != "ok":
            raise RuntimeError(f"latency probe on {target_key} failed: {item.get('error')}")
        if not item.get("speedup_interleaved"):
            raise RuntimeError(f"latency probe on {target_key}: no paired ratio with the dense baseline "
                               f"({item.get('ref_error') or item.get('ratio_suspect') or 'no reference'})")
        return 1.0 / float(item["speedup_interleaved"])
    return probe


def _latency_predictor(config: SweepConfig, job: CompressJob, base: dict[str, Any],
                       classes: int) -> Callable[[Any, str], Any]:
    """``MethodContext.predict_latency`` for a compress job: the targets' latency models (cached
    tables; units they lack are timed as probes in cells, like the latency probes above)."""
    from harness.engine import latency_model as lm

    state: dict[str, Any] = {}

    def predict_fn(models: Any, target_key: str) -> Any:
        if "fn" not in state:
            shape = tuple(np.load(base["pool"], mmap_mode="r").shape[1:])
            state["fn"] = lm.fraction_predictor(_baseline_model(job.model, base, classes), shape, config.threads,
                                                config.target_options, config.artifact_dir / "latency-model",
                                                log=log, timeout_s=config.timeout_s,
                                                rules=lm.probe_rules(config.timing))
        return state["fn"](models, target_key)
    return predict_fn


def _entry_string(key: str) -> str | None:
    entry = TARGETS.entry(key)
    return entry if isinstance(entry, str) else None


def _artifact_json(art: Artifact) -> dict[str, Any]:
    return {"name": art.name, "input_shape": list(art.input_shape),
            "onnx_path": str(art.onnx_path) if art.onnx_path else None,
            "torch_path": str(art.torch_path) if art.torch_path else None}


# ----------------------------------------------------------------------------- measure
def _record_artifact(record: dict[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
    return {"name": Path(record["torch_path"]).stem, "input_shape": list(input_shape),
            "onnx_path": record.get("onnx_path"), "torch_path": record.get("torch_path")}


def run_measure(config: SweepConfig, jobs: list[MeasureJob], records: list[dict[str, Any]],
                reference: dict[str, Any] | None, base: dict[str, Any], batch: int, isolated: bool,
                workdir: str) -> list[dict[str, Any]]:
    """One cell for the deployables of one compressed network on one target and scenario:
    compile each ``records[i]``, accuracy and parity against its reference logits, and one timed
    loop interleaved with the dense ``reference`` (None: timed alone). Returns the cell's fields
    per job (in order), each with measure_start/measure_end (epoch seconds, on the node that ran
    it) and the backend's graph-survival columns."""
    head = jobs[0]
    shape = tuple(np.load(base["pool"], mmap_mode="r").shape[1:])
    items = [{"key": j.key, "artifact": _record_artifact(r, shape), "ref_logits_path": r["ref_path"],
              "graph_facts": r.get("check_facts") is not None} for j, r in zip(jobs, records)]
    spec = CellSpec(target=head.target, scenario=head.scenario, batch=batch, threads=config.threads,
                    rules=asdict(config.timing_rules), pool_path=base["pool"], items=items,
                    reference=_record_artifact(reference, shape) if reference else None,
                    eval_x_path=base["eval_x"], eval_y_path=base["eval_y"],
                    options=config.target_options.get(head.target, {}), target_entry=_entry_string(head.target),
                    noise=config.noise_rules)
    start = time.time()
    if isolated:
        result = run_isolated(spec, Path(workdir) / head.key, config.timeout_s * len(items))
    else:
        try:
            result = {"status": "ok", **run_cell(spec)}
        except Exception as exc:  # the inline executor: the same error a cell process would give
            result = {"status": "error", "error": f"{type(exc).__name__}: {first_line(exc, 400)}"}
    end = time.time()
    from harness.provenance import host_machine

    out = []
    for i, record in enumerate(records):
        fields = result["items"][i] if result.get("status") == "ok" else \
            {"status": result["status"], "error": result.get("error", "")}
        if fields.get("status") != "ok" or "node" not in fields:
            fields = {**host_machine(), **fields}  # a dead cell still names the node it died on
        facts = fields.pop("graph_facts", None)
        if facts is not None and record.get("check_facts"):
            module, _, name = record["check_facts"].partition(":")
            fields.update(getattr(importlib.import_module(module), name)(head.target, facts))
        phases = fields.setdefault("phases", {})
        # what is neither compiling, evaluating nor timing: process start, imports, loading arrays
        phases["cell start-up"] = max(0.0, (end - start) / len(records) - sum(phases.values()))
        fields.update({"measure_start": start, "measure_end": end})
        out.append(fields)
    if out and head.scenario in config.predict_scenarios:
        emulated = any(o.get("emulated") for o in out)
        out[0]["_latency"] = _probe_pass(config, head, records, batch, shape, Path(workdir), isolated, emulated)
        out[0].setdefault("phases", {})["latency-model probes"] = out[0]["_latency"].get("seconds", 0.0)
    return out


def _probe_pass(config: SweepConfig, head: MeasureJob, records: list[dict[str, Any]], batch: int,
                shape: tuple[int, ...], workdir: Path, isolated: bool, emulated: bool = False) -> dict[str, Any]:
    """After a cell: time the probes of the cell's networks that the target's latency table lacks
    (and the dense network whole, in the dense cell), cache them, and return what was measured
    so the driver's table gets it too (on a cluster, the node's cache is not the driver's).
    ``emulated``: the cell ran on an emulated board, where probes would take minutes each for
    latencies that mean nothing."""
    from harness.engine import latency_model as lm
    from harness.provenance import host_machine

    target = get_target(head.target)
    if emulated:
        return {"note": "no latency model on an emulated board: its latencies mean nothing"}
    if target.opt_in or target.device != "cpu":
        return {"note": f"the sweep builds latency models of default CPU targets only; build this one with "
                        f"python -m harness predict --targets {head.target}"}
    t0 = time.perf_counter()
    machine = host_machine()
    tm = lm.TargetModel(head.target, config.target_options.get(head.target, {}), config.threads, batch,
                        head.scenario, shape, workdir, machine=machine, rules=lm.probe_rules(config.timing),
                        isolated=isolated)
    table = tm.table()
    files: dict[str, lm.ProbeFile] = {}
    whole: dict[str, dict[str, Any]] = {}
    for record in records:
        lat = record.get("latency") or {}
        for key, probe in (lat.get("probes") or {}).items():
            if key not in table.units:
                files[key] = lm.ProbeFile(**probe)
        if head.method == "none" and lat.get("net") and table.nets.get(lat["net"], {}).get("frac") is None:
            files[lat["net"]] = lm.ProbeFile(lat["net"], "whole dense network", record.get("onnx_path"),
                                             record["torch_path"])
            whole[lat["net"]] = {lat["granularity"]: {"units": lat["units"], "adapters": lat["adapters"]}}
    if not files:
        return {"measured": {}, "calib_ms": [], "whole": {}, "machine": machine, "seconds": 0.0}
    measured, calib, errors = lm.measure_probes(head.target, tm.options, config.threads, batch, head.scenario,
                                                list(files.values()), shape, workdir / "latency-probes",
                                                target_entry=_entry_string(head.target), rules=tm.rules,
                                                timeout_s=config.timeout_s, isolated=isolated, log=log)
    lm.update_table(tm.key, lambda t: lm.merge_measured(t, measured, calib, whole))
    return {"measured": measured, "calib_ms": calib, "whole": whole, "machine": machine, "errors": errors[:5],
            "seconds": time.perf_counter() - t0}
