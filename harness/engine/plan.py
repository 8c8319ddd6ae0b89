"""Plan a sweep up front: validate everything, then lay it out as jobs with content keys.

Jobs: one *baseline* job per model (train, load from the cache, or the user's checkpoint); one
*compress* job per (model, method, budget): the method applied to the baseline, its deployables
exported; one *measure* job per (deployable, target, scenario): one result row. A measure job
names the compress job it needs. Which deployables (variants) a method produces is known once
its compress job has run; the store remembers them, so a re-run plans every measure job exactly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.data import DataBundle, load_data
from harness.engine.baseline import baseline_cached, baseline_key
from harness.engine.config import SweepConfig
from harness.engine.rows import content_key, knob_text
from harness.engine.store import Store
from harness.errors import UserError
from harness.models import build_model, load_checkpoint, model_spec
from methods import METHODS, Method, get_method
from targets import TARGETS, Target, get_target


@dataclass(frozen=True)
class BaselineJob:
    model: str
    key: str  # content hash of what determines the baseline's weights


@dataclass(frozen=True)
class CompressJob:
    key: str
    model: str
    method: str
    knobs: dict[str, Any]
    baseline_key: str

    @property
    def label(self) -> str:
        return f"{self.model}/{self.method}[{knob_text(self.knobs)[1]}]"


@dataclass(frozen=True)
class MeasureJob:
    key: str  # the row's key in the store
    compress_key: str
    model: str
    method: str
    knobs: dict[str, Any]
    variant: str
    target: str
    scenario: str


@dataclass
class Plan:
    """A validated sweep: resolved methods, targets with parsed options, data, and jobs."""

    config: SweepConfig
    methods: list[tuple[Method, list[dict[str, Any]]]]
    targets: list[Target]
    options: dict[str, dict[str, Any]]  # per target key: parsed, typed build options
    data: dict[str, DataBundle]  # per model: synthetic data follows each model's input size
    baselines: dict[str, BaselineJob]
    compress: list[CompressJob]
    skipped_targets: dict[str, str] = field(default_factory=dict)

    def batch(self, scenario: str) -> int:
        return 1 if scenario == "SingleStream" else self.config.offline_batch

    def measure_jobs(self, job: CompressJob, variants: list[str]) -> list[MeasureJob]:
        """Every (variant, target, scenario) of ``job``, with the row keys the store uses."""
        base = self.baselines[job.model].key
        return [MeasureJob(self.cell_key(job.model, base, job.method, job.knobs, v, t.key, s), job.key,
                           job.model, job.method, job.knobs, v, t.key, s)
                for v in variants for t in self.targets for s in self.config.scenarios]

    def cell_key(self, model: str, baseline: str, method: str, knobs: dict, variant: str, target: str,
                 scenario: str) -> str:
        cfg = self.config
        return content_key({"model": model, "baseline": baseline, "method": method, "knobs": knobs,
                            "variant": variant, "target": target, "scenario": scenario, "preset": cfg.preset,
                            "threads": cfg.threads, "batch": self.batch(scenario), "seed": cfg.seed,
                            "timing": asdict(cfg.timing_rules), "eval_limit": cfg.eval_limit,
                            "pool": cfg.pool_size, "options": cfg.target_options.get(target, {})})


# ----------------------------------------------------------------------------- validation
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
        out.append((method, method.budgets(values, config.preset)))
    return out


def _unavailable(target: Target, reason: str) -> UserError:
    hint = f"{target.install_hint}, or drop it from --targets" if target.install_hint else "drop it from --targets"
    return UserError(f"target {target.key} is not available here: {reason} (to proceed: {hint})")


def _resolve_targets(config: SweepConfig) -> tuple[list[Target], dict[str, dict], dict[str, str]]:
    for key in config.target_options:
        if config.targets is not None and key not in config.targets:
            raise UserError(f"target options given for {key!r}, which is not in the sweep")
        get_target(key)  # unknown keys: did-you-mean
    chosen, options, skipped = [], {}, {}
    explicit = config.targets is not None
    for key in (dict.fromkeys(config.targets) if explicit else TARGETS.names()):
        target = get_target(key)
        opts = target.parse_options(config.target_options.get(key, {}))
        avail = target.availability(opts)
        if explicit and not avail.ok:
            raise _unavailable(target, avail.reason)
        left_out = "" if explicit else _left_out_by_default(target, avail)
        if left_out:
            skipped[key] = left_out
            continue
        chosen.append(target)
        options[key] = opts
    if not chosen:
        raise UserError("no target is available here; see `python -m harness ls targets`")
    return chosen, options, skipped


def _left_out_by_default(target: Target, avail) -> str:
    """Why a sweep without --targets leaves ``target`` out ("" = it is in): the default is every
    available CPU target that is not opt-in."""
    if not avail.ok:
        return avail.reason
    if target.device != "cpu":
        return "not a CPU target"
    return f"opt-in: {target.opt_in}" if target.opt_in else ""


def _check_no_mixing(config: SweepConfig) -> None:
    """A store holds one data set and one set of models unless the user asks to append: two
    different sweeps in one default directory would publish one confusing table."""
    path = config.out / "results.sqlite"
    if config.append or not path.exists():
        return
    import sqlite3

    try:
        db = sqlite3.connect(path)
        seen = db.execute("SELECT DISTINCT json_extract(row, '$.data'), json_extract(row, '$.model') FROM rows").fetchall()
        db.close()
    except sqlite3.Error:
        return  # Store() reports an unreadable store with its own message
    data = {d for d, _ in seen if d}
    models = {m for _, m in seen if m}
    if data and (data != {config.data} or not models <= set(config.models)):
        raise UserError(f"{config.out} already holds rows of data {', '.join(sorted(data))} and models "
                        f"{', '.join(sorted(models))}; use another --out, or --append to add these rows to them")


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output directory {out} is not writable: {exc.strerror or exc}") from None


def data_size(config: SweepConfig, model: str) -> int | None:
    """The input size a model's data is loaded at: synthetic data follows the model, real data
    keeps its data set's own size."""
    return model_spec(model).input_size if config.data.startswith("synthetic") else None


def load_model_data(config: SweepConfig, model: str) -> DataBundle:
    """The data a model is trained and evaluated on."""
    return load_data(config.data, input_size=data_size(config, model), seed=config.seed,
                     train_limit=config.train_limit)


def _load_all_data(config: SweepConfig) -> dict[str, DataBundle]:
    cache: dict[int | None, DataBundle] = {}
    out = {}
    for name in config.models:
        size = data_size(config, name)
        if size not in cache:
            cache[size] = load_model_data(config, name)
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
    """Validate everything a sweep needs before its first job; UserError on the first problem."""
    for name in config.models:
        model_spec(name)
    methods = _resolve_methods(config)
    targets, options, skipped = _resolve_targets(config)
    data = _load_all_data(config)
    _check_checkpoint(config, data)
    _check_no_mixing(config)
    _check_out_dir(config.out)
    baselines = {m: BaselineJob(m, baseline_key(m, data[m], config.baseline_recipe, config.seed, config.checkpoint))
                 for m in config.models}
    compress = [CompressJob(compress_key(config, baselines[m].key, method.name, knobs), m, method.name, knobs,
                            baselines[m].key)
                for m in config.models for method, budgets in methods for knobs in budgets]
    return Plan(config, methods, targets, options, data, baselines, compress, skipped)


def compress_key(config: SweepConfig, baseline: str, method: str, knobs: dict[str, Any]) -> str:
    """Everything a compress job's result depends on: the baseline, the method at its budget, the
    preset (each method scales its recipe by it), the seed, and the evaluation set (reference
    logits and top1_torch are computed on it)."""
    return content_key({"baseline": baseline, "method": method, "knobs": knobs, "preset": config.preset,
                        "seed": config.seed, "eval_limit": config.eval_limit, "pool": config.pool_size})


# ----------------------------------------------------------------------------- the dry run
@dataclass
class PlanSummary:
    lines: list[str]
    jobs: dict[str, int]  # kind -> jobs still to run
    estimate_s: float | None
    partial: bool = False  # some kinds of jobs still to run have no past timing: estimate_s is a floor
    total: dict[str, int] = field(default_factory=dict)  # kind -> jobs planned

    def time_left(self) -> str:
        """The estimate as the progress lines print it."""
        if self.estimate_s is None:
            return "time left not known yet"
        return f"{'at least' if self.partial else 'about'} {self.estimate_s / 60:.1f} min left"


def summarize_plan(plan: Plan, store: Store, cache: Path) -> PlanSummary:
    """What a run of ``plan`` would do: jobs per kind, those already in the store or cache, and
    the time left estimated from the store's own past phase timings (where it has them)."""
    cfg = plan.config
    means = store.phase_means()
    finished = store.finished_keys()
    todo = {"baseline": 0, "compress": 0, "measure": 0}
    total = {"baseline": len(plan.baselines), "compress": len(plan.compress), "measure": 0}
    unknown_variants, estimate, unknown_time = 0, 0.0, False

    def add(kind: str, phase: str) -> None:
        nonlocal estimate, unknown_time
        if (kind, phase) in means:
            estimate += means[(kind, phase)]
        else:
            unknown_time = True

    for job in plan.baselines.values():
        if cfg.checkpoint is None and not plan.data[job.model].synthetic and not baseline_cached(
                cache, job.model, job.key):
            todo["baseline"] += 1
            add("baseline", job.model)
    for job in plan.compress:
        variants = list(store.variants(job.key))
        done = (store.budget(job.key) or {}).get("status") == "ok"
        if not done:
            todo["compress"] += 1
            add("compress", job.method)
        if not variants:  # the method decides its variants when it runs: at least one
            unknown_variants += 1
            variants = ["default"]
        for mj in plan.measure_jobs(job, variants):
            total["measure"] += 1
            if mj.key not in finished:
                todo["measure"] += 1
                add("cell", f"{mj.target}:{mj.scenario}")
    lines = [f"plan for {cfg.out}: models {', '.join(cfg.models)}; data {cfg.data}; preset {cfg.preset}; "
             f"targets {', '.join(t.key for t in plan.targets)}; executor {cfg.executor}"]
    for kind in ("baseline", "compress", "measure"):
        lines.append(f"  {kind:<9} jobs: {total[kind]:>4} planned, {total[kind] - todo[kind]:>4} already in the "
                     f"{'cache' if kind == 'baseline' else 'store'}, {todo[kind]:>4} to run")
    if unknown_variants:
        lines.append(f"  ({unknown_variants} compress jobs have not run yet: their measure jobs are counted for one "
                     "variant each; a method may produce more)")
    for key, reason in plan.skipped_targets.items():
        lines.append(f"  target {key} left out: {reason}")
    if todo == {"baseline": 0, "compress": 0, "measure": 0}:
        est_s: float | None = 0.0
        lines.append("  nothing to run: every job is in the store")
    elif unknown_time and not estimate:
        est_s = None
        lines.append("  time left: no estimate (the store has no timings of these kinds of jobs yet)")
    else:
        est_s = estimate
        more = " (at least: some kinds of jobs have no past timing)" if unknown_time else ""
        lines.append(f"  time left: about {estimate / 60:.1f} min from the store's past timings{more}")
    return PlanSummary(lines, todo, est_s, partial=bool(unknown_time and est_s), total=total)
