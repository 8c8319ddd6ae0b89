"""What ``tvm-cpu`` and ``tvm-arm`` share: ONNX -> Relax import, the Relax pipeline, graph facts,
and MetaSchedule tuning against one database per (target string, TVM version) in the cache.

Imported only by the TVM targets' ``compile`` (it imports tvm at module level).

Tuning. A sweep's compressed variants share most conv shapes with the dense network, so the
database is keyed by workload (MetaSchedule's structural hash of each fused TIR function) and
shared by every model and every sweep on the same target: a task is tuned only when the database
has fewer than ``trials`` trials recorded for it (``tuned.json`` beside the database counts them),
and tuning a network tunes only its missing shapes. Only conv tasks are tuned by default
(``tune_ops=conv``): they carry almost all of a CNN's time, and every other task is a cheap
elementwise, pooling or dense kernel whose trials would cost as much as a conv's.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx
from tvm.s_tir import meta_schedule as ms

from targets.tvm_board import cache_dir


def import_onnx(path: Path, batch: int) -> tuple[tvm.IRModule, str]:
    """The Relax module of the ONNX file at ``path`` with a static batch, and its input's name.
    Weights are bound as constants so the pipeline can fold them."""
    model = onnx.load(str(path))
    inits = {t.name for t in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
    mod = from_onnx(model, shape_dict={inp.name: [batch, *dims]}, keep_params_in_input=False)
    return mod, inp.name


def relax_facts(mod: tvm.IRModule) -> dict[str, Any]:
    """Relax op counts ({"relax.nn.conv2d": 19, ...}) and conv weight shapes of ``main``."""
    ops: dict[str, int] = {}
    convs: list[list[int] | None] = []

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            ops[expr.op.name] = ops.get(expr.op.name, 0) + 1
            if expr.op.name == "relax.nn.conv2d":
                convs.append(_shape(expr.args[1]))

    relax.analysis.post_order_visit(mod["main"], visit)
    return {"ops": ops, "conv_weights": convs}


def _shape(expr: Any) -> list[int] | None:
    """Static shape of a Relax expression (a constant's data, else its struct info)."""
    value = getattr(expr, "value", None)  # a constant (tvm.ir.Constant in 0.27): its tensor
    if isinstance(value, tvm.runtime.Tensor):
        return [int(v) for v in value.shape]
    shape = getattr(getattr(expr, "struct_info_", None), "shape", None)
    try:
        return [int(v) for v in shape] if shape is not None else None
    except (TypeError, ValueError):  # symbolic dimensions
        return None


def kernel_counts(mod: tvm.IRModule) -> dict[str, int]:
    """How often ``main`` calls each TIR kernel after fusion, by name without its numeric suffix
    (``fused_conv2d3_add2_relu1`` and ``fused_conv2d_add_relu`` are one kernel kind)."""
    import re

    out: dict[str, int] = {}

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.call_tir":
            name = re.sub(r"\d+(?=_|$)", "", expr.args[0].name_hint)
            out[name] = out.get(name, 0) + 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return out


def prepare(mod: tvm.IRModule, target: tvm.target.Target) -> tuple[tvm.IRModule, dict[str, Any]]:
    """The module after the Relax pipeline's inference passes and fusion (what is tuned and
    built), and its graph facts: Relax ops and conv weights after constant folding, kernels
    after fusion."""
    seq = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                    relax.transform.CanonicalizeBindings(),
                                    relax.transform.FoldConstant(),
                                    relax.transform.DeadCodeElimination()])
    with target:
        mod = seq(mod)
        facts = relax_facts(mod)
        fused = relax.get_pipeline("zero")(mod)
    facts["kernels"] = kernel_counts(fused)
    return fused, facts


def database_dir(target: tvm.target.Target) -> Path:
    """One tuning database per (target string, TVM version), shared by every model and sweep."""
    text = json.dumps({"target": str(target), "tvm": tvm.__version__}, sort_keys=True)
    kind = "-".join(str(target.attrs.get(k, "")) for k in ("mtriple", "mcpu") if target.attrs.get(k))
    return cache_dir() / "tvm-tune" / f"{kind or target.kind.name}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


@contextlib.contextmanager
def _locked(directory: Path):
    """Exclusive use of a tuning database (two cells never tune into one file at once)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# MetaSchedule's 30 s defaults fail every candidate on a loaded 2-core machine (each build
# batch starts fresh popen workers that import tvm first): measured, 16 of 16 "build errors".
BUILD_TIMEOUT_S, RUN_TIMEOUT_S = 300, 120


def tune(mod: tvm.IRModule, target: tvm.target.Target, *, trials: int, ops: str,
         builder: Any = None, runner: Any = None) -> tuple[tvm.IRModule, dict[str, Any]]:
    """``mod`` (already through ``prepare``) with the database's best schedules applied, after
    tuning every task the database has fewer than ``trials`` trials for (``ops``: "conv" tunes
    only conv tasks, "all" every task). Info: tune_s, tasks, tasks_tuned, trials_run, database."""
    directory = database_dir(target)
    builder = builder or ms.builder.LocalBuilder(timeout_sec=BUILD_TIMEOUT_S)
    runner = runner or ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S)
    t0 = time.perf_counter()
    with _locked(directory):
        db = ms.database.JSONDatabase(work_dir=str(directory))
        extracted = ms.relax_integration.extract_tasks(mod, target)
        counts_path = directory / "tuned.json"
        counts = json.loads(counts_path.read_text()) if counts_path.exists() else {}
        todo = [t for t in extracted if (ops == "all" or "conv" in t.task_name)
                and counts.get(_workload_key(t), 0) < trials]
        if todo:
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                todo, work_dir=str(directory / "logs"), strategy=_strategy(trials), num_threads="physical")
            ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(directory / "logs"),
                          max_trials_global=trials * len(todo), max_trials_per_task=trials,
                          num_trials_per_iter=min(64, trials), builder=builder, runner=runner,
                          database=db)
            for t in todo:
                counts[_workload_key(t)] = max(trials, counts.get(_workload_key(t), 0))
            counts_path.write_text(json.dumps(counts, indent=0, sort_keys=True))
        tune_s = time.perf_counter() - t0
        with target, db:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    return mod, {"tune_s": tune_s, "tune_tasks": len(extracted), "tune_tasks_tuned": len(todo),
                 "tune_trials_run": trials * len(todo), "tune_trials_per_task": trials,
                 "tune_ops": ops, "tune_database": str(directory)}


def _strategy(trials: int) -> Any:
    """Evolutionary search sized to the budget: MetaSchedule's default population (512, 4
    generations) costs minutes of search per task on 2 cores before the first candidate is built,
    which dominates when a task gets tens of trials; 128 x 2 keeps the search a small share."""
    if trials >= 256:
        return "evolutionary"
    return ms.search_strategy.EvolutionarySearch(population_size=128, genetic_num_iters=2,
                                                 init_min_unmeasured=32)


def _workload_key(task: Any) -> str:
    return str(tvm_ffi.structural_hash(task.dispatched[0]))


def build(mod: tvm.IRModule, target: tvm.target.Target) -> Any:
    """The Relax VM executable of a prepared (and possibly tuned) module."""
    return relax.build(mod, target=target)


def target_dict(target: tvm.target.Target) -> dict[str, Any]:
    """The target as plain JSON values (for Session.info)."""
    return json.loads(str(target)) if str(target).startswith("{") else {"target": str(target)}


def set_threads(threads: int) -> int:
    """Make TVM's runtime thread pool use ``threads`` threads (TVM halves the core count on x86
    by default, assuming hyper-threads: backends.md pitfall 3); returns what the runtime reports."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    config = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
    if config is not None:
        config(0, threads)
    return int(tvm.get_global_func("runtime.NumThreads")())


def host_tensor(x: np.ndarray, dev: Any) -> Any:
    return tvm.runtime.tensor(np.ascontiguousarray(x), dev)
