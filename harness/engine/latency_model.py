"""A per-target latency model built from the harness's own measurements (issue 15).

What it is, in two parts:

1. **A table of unit latencies** per (target, its versions and options, threads, batch, scenario,
   machine), cached under ``$HARNESS_CACHE/latency-model/``. A *unit* is a block of a network
   (``granularity="block"``: every item of a ``nn.Sequential`` stage the model holds at its top
   level, e.g. a CIFAR ResNet's BasicBlocks, with whatever a method put inside: narrower convs,
   Tucker chains) or a layer (``"layer"``: every Conv2d / Linear). A unit's key is a hash of its
   ``repr`` (every submodule's class and shape) and input shape, so the narrower, shallower and
   decomposed shapes compression produces are looked up exactly; no weights are involved. A layer
   that computes exactly what a standard one does (a finalised DeepShift conv is a Conv2d whose
   weights happen to be powers of two) says so with ``latency_repr()`` and is keyed as that layer
   (``cost_repr``), so the same computation is timed once, not once per method.
   A unit is measured as a *probe*: a network that maps the image input to the unit's input shape
   with a cheap adapter (average pool + a fixed 1x1 conv) and runs the unit; the adapter alone is
   measured too and subtracted. Probes are timed by the one timing engine in ordinary cells
   (``harness.engine.cell``), interleaved with a fixed *calibration network*, and stored as a
   fraction of it (``paired_ratios``: a change of the machine's speed between cells cancels);
   milliseconds are that fraction times the calibration network's median p50 over all cells.
   Whole networks are measured the same way (their fraction of the calibration network) and are
   the points the correction is fitted on, together with every sweep row measured on the target
   (its paired speed-up against the dense network, times the dense network's table latency;
   the sweep's driver adds each row to the table as it is written).

2. **A correction fitted on whole networks**, because per-unit latencies do not add up: a probe
   pays the reorder into and out of ORT's blocked layout and its own run overhead, a network pays
   them once, fuses across blocks and streams more weights through the caches. Forms (``FORMS``):
   - ``lookup``: p50 = c + sum(units), c the median offset of the whole networks measured
     (with one network, the dense one: a per-unit delta from dense, as OFA-style tables do);
   - ``scale``: p50 = k * sum(units), k the median of measured / sum over the whole networks
     (with the dense network alone: a network's fraction of dense is its sum's fraction);
   - ``linear``: p50 = a + b * sum(units), least squares on relative errors (numpy).
   ``benchmarks/latency_model.py`` measures every form at both granularities on held-out
   networks; ``FORM`` and ``GRANULARITY`` are what it chose (README, "Latency before training").

Why no library: nn-Meter's predictors (the one maintained latency predictor for CNNs) are trained
on 2019-2021 runtimes and devices and cannot be refitted to this machine's ORT/OpenVINO without
its kernel-detection rules per backend; the measurements here are the harness's own, with its own
engine, and the model is two least-squares coefficients over a lookup table.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from harness.engine.rows import content_key

GRANULARITIES = ("block", "layer")
FORMS = ("lookup", "scale", "linear")
GRANULARITY = "block"  # chosen by benchmarks/latency_model.py (README: "Latency before training")
FORM = "linear"
# Probes are short: each block of the interleaved loop runs >= 0.1 s (paired ratios need >= 5
# queries a block; a probe query takes 10-200 us here), 5 rounds: about 0.8 s a probe with the
# calibration network's blocks. Half of that (0.05 s blocks) doubled the held-out error on
# ort-cpu (4.7% -> 13-14% MAPE, benchmarks/latency_model.py). A cell holds PROBES_PER_CELL.
PROBE_RULES = {"warmup_min_s": 0.1, "warmup_min_n": 10, "min_s": 0.5, "min_n": 50, "max_s": 10.0}
PROBES_PER_CELL = 24
VERSION = 2  # bump when what a table entry means changes


# ----------------------------------------------------------------------------- units and probes
@dataclass
class Unit:
    key: str  # hash of (repr, input shape): the same key costs the same on a target
    name: str  # module path in the network it came from
    module: nn.Module
    in_shape: tuple[int, ...]  # one sample's input shape, no batch


def _layer_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _block_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Items of the ``nn.Sequential`` stages at the model's top level (ResNet stages, MobileNet's
    block list, VGG's feature list). What lies outside them (stem, pooling, classifier) is the
    same in every compressed network of a model and goes into the correction's constant."""
    out = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            out += [(f"{name}.{i}", m) for i, m in child.named_children()]
    return out


@torch.no_grad()
def units(model: nn.Module, input_shape: tuple[int, ...], granularity: str = GRANULARITY) -> list[Unit]:
    """The units of ``model`` in forward order with the input shape each sees (one forward pass
    with hooks); a unit the forward pass never calls is left out."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    found = _block_units(model) if granularity == "block" else _layer_units(model)
    if granularity == "block" and not found:
        found = _layer_units(model)  # no top-level stages: layers are the blocks
    seen: dict[str, tuple[int, ...]] = {}
    order: list[str] = []

    def hook(name: str) -> Callable:
        def fn(_m: nn.Module, inp: tuple, _out: Any) -> None:
            if name not in seen:
                seen[name] = tuple(inp[0].shape[1:])
                order.append(name)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in found]
    was_training = model.training
    try:
        model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    by_name = dict(found)
    # a removed unit (nn.Identity: layer pruning) is no node in the exported graph and costs nothing
    return [Unit(content_key([cost_repr(by_name[n]), seen[n]]), n, by_name[n], seen[n]) for n in order
            if not isinstance(by_name[n], nn.Identity)]


def _has_latency_repr(module: nn.Module) -> bool:
    return callable(getattr(module, "latency_repr", None))


def cost_repr(module: nn.Module) -> str:
    """``repr(module)`` with every submodule that has ``latency_repr()`` written as the standard
    layer it computes exactly (``FrozenShiftConv2d`` without activation fixed point -> its
    ``Conv2d``): the unit key of what the target runs. Byte for byte ``nn.Module.__repr__``'s
    layout, so a block of such layers keys equal to the dense block; a container with its own
    ``__repr__`` keeps it (no sharing, never a wrong one)."""
    if _has_latency_repr(module):
        return module.latency_repr()
    if not any(_has_latency_repr(m) for m in module.modules()) or type(module).__repr__ is not nn.Module.__repr__:
        return repr(module)
    from torch.nn.modules.module import _addindent

    extra = module.extra_repr()
    extra_lines = extra.split("\n") if extra else []
    child_lines = ["(" + key + "): " + _addindent(cost_repr(m) if m is not None else "None", 2)
                   for key, m in module._modules.items()]
    lines = extra_lines + child_lines
    main = module._get_name() + "("
    if lines:
        main += extra_lines[0] if len(extra_lines) == 1 and not child_lines else "\n  " + "\n  ".join(lines) + "\n"
    return main + ")"


def net_key(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """The architecture of a whole network (weights excluded)."""
    return content_key(["net", repr(model), tuple(input_shape)])


class Adapter(nn.Module):
    """Image (N, C0, H0, W0) -> a unit's input shape: adaptive average pool to (H, W) (none when
    the size is kept), then a fixed 1x1 conv to C channels; (N, F) for a Linear unit (pool,
    flatten, a fixed Linear). What a block sees in a network is another conv's output, so a conv
    is the adapter that leaves the runtime's layout choices as they are in a network (ORT's NCHWc
    transformer mis-propagates channel counts through Tile/Slice adapters and fails at run time).
    Measured alone and subtracted."""

    def __init__(self, shape: Sequence[int], image_channels: int = 3):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        g = torch.Generator().manual_seed(0)
        if len(self.shape) == 1:
            self.map: nn.Module = nn.Linear(image_channels, self.shape[0], bias=False)
        else:
            self.map = nn.Conv2d(image_channels, self.shape[0], 1, bias=False)
        with torch.no_grad():
            self.map.weight.copy_(torch.randn(self.map.weight.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.shape) == 1:
            return self.map(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        h, w = self.shape[1:]
        if tuple(x.shape[-2:]) != (h, w):
            x = F.adaptive_avg_pool2d(x, (h, w))
        return self.map(x)

    def extra_repr(self) -> str:
        return str(self.shape)


class Probe(nn.Module):
    """What is timed for one unit: the adapter, then the unit (None: the adapter alone)."""

    def __init__(self, shape: Sequence[int], unit: nn.Module | None):
        super().__init__()
        self.adapter = Adapter(shape)
        self.unit = unit if unit is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit(self.adapter(x))


def calibration_net() -> nn.Module:
    """The fixed network every probe cell is timed against (seeded: the same weights and shapes
    on every machine): two 3x3 convs at the image size, pooled, a classifier."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.AdaptiveAvgPool2d(32), nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net.eval()


def adapter_key(shape: Sequence[int]) -> str:
    return content_key(["adapter", tuple(shape)])


# ----------------------------------------------------------------------------- the table
def probe_rules(timing: Any = None) -> dict[str, Any]:
    """The timing rules of probe cells: ``PROBE_RULES``, or a sweep's own rules where they are
    shorter (tests: a table built with them is keyed apart from one built with ``PROBE_RULES``)."""
    if timing is None or asdict(timing)["min_s"] >= PROBE_RULES["min_s"]:
        return dict(PROBE_RULES)
    t = asdict(timing)
    return {k: t[k] for k in ("warmup_min_s", "warmup_min_n", "min_s", "min_n", "max_s")}


def table_key(target: str, versions: dict[str, str], options: dict[str, Any], threads: int, batch: int,
              scenario: str, machine: dict[str, Any], image_shape: Sequence[int],
              rules: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a table's numbers depend on: they are reused only when all of it matches."""
    return {"version": VERSION, "rules": rules or PROBE_RULES, "target": target, "versions": versions,
            "options": options, "threads": threads,
            "batch": batch, "scenario": scenario, "cpu": machine.get("cpu"), "cpu_count": machine.get("cpu_count"),
            "arch": machine.get("arch"), "gpu": machine.get("gpu") or "", "board": machine.get("board") or "",
            "image_shape": list(image_shape), "torch": torch.__version__}


def cache_folder() -> Path:
    from harness.engine.baseline import cache_dir

    return cache_dir() / "latency-model"


@dataclass
class Table:
    """Measured fractions of the calibration network, and the calibration network's p50s."""

    key: dict[str, Any]
    units: dict[str, dict[str, Any]] = field(default_factory=dict)  # unit/adapter key -> {frac, desc, ...}
    nets: dict[str, dict[str, Any]] = field(default_factory=dict)  # net key -> {units, frac or y_ms, source}
    calib_ms: list[float] = field(default_factory=list)
    path: Path | None = None

    @property
    def level_ms(self) -> float | None:
        """The calibration network's p50 (median over every probe cell): the table's millisecond."""
        return float(np.median(self.calib_ms)) if self.calib_ms else None

    def unit_ms(self, key: str) -> float | None:
        entry = self.units.get(key)
        if entry is None or self.level_ms is None:
            return None
        return entry["frac"] * self.level_ms

    def net_ms(self, key: str) -> float | None:
        """A whole network's latency in table milliseconds: measured in a probe cell (its fraction
        of the calibration network), else the median of what sweep rows gave for it."""
        entry = self.nets.get(key)
        if entry is None or self.level_ms is None:
            return None
        if entry.get("frac") is not None:
            return entry["frac"] * self.level_ms
        ys = entry.get("rows_ms") or []
        return float(np.median(ys)) if ys else None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "units": self.units, "nets": self.nets, "calib_ms": self.calib_ms}


def table_path(key: dict[str, Any], folder: Path | None = None) -> Path:
    return (folder or cache_folder()) / f"{key['target']}-b{key['batch']}-{content_key(key)}.json"


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_table(key: dict[str, Any], folder: Path | None = None) -> Table:
    path = table_path(key, folder)
    if path.exists():
        try:
            raw = json.loads(path.read_text())
            return Table(raw["key"], raw.get("units", {}), raw.get("nets", {}), raw.get("calib_ms", []), path)
        except (OSError, ValueError, KeyError):
            pass  # a damaged table is rebuilt
    return Table(key, path=path)


def update_table(key: dict[str, Any], change: Callable[[Table], None], folder: Path | None = None) -> Table:
    """Read, change and write the table under a file lock (the sweep's driver and a compress
    job's solver may write one table at the same time); returns the table as written."""
    path = table_path(key, folder)
    with _locked(path):
        table = load_table(key, folder)
        change(table)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table.to_json(), indent=0, default=str))
        tmp.replace(path)
    return table


# ----------------------------------------------------------------------------- features and forms
@dataclass
class Features:
    """What a network is to the model: its units' keys (and the adapters they need)."""

    net: str
    units: list[str]
    adapters: list[str]  # per unit, the key of the adapter measured for its input shape
    granularity: str = GRANULARITY

    def sum_ms(self, table: Table) -> float | None:
        """Sum of unit latencies (each minus its adapter), None when any is not in the table."""
        total = 0.0
        for u, a in zip(self.units, self.adapters):
            um, am = table.unit_ms(u), table.unit_ms(a)
            if um is None or am is None:
                return None
            total += max(um - am, 0.0)
        return total


def features(model: nn.Module, input_shape: tuple[int, ...], granularity: str = GRANULARITY) -> Features:
    us = units(model, input_shape, granularity)
    return Features(net_key(model, input_shape), [u.key for u in us], [adapter_key(u.in_shape) for u in us],
                    granularity)


def probes_of(model: nn.Module, input_shape: tuple[int, ...],
              granularity: str = GRANULARITY) -> dict[str, tuple[str, nn.Module]]:
    """Every probe ``model`` needs: unit key -> (description, probe module), adapters included."""
    out: dict[str, tuple[str, nn.Module]] = {}
    for u in units(model, input_shape, granularity):
        out.setdefault(u.key, (f"{u.name} {type(u.module).__name__} in {list(u.in_shape)}",
                               Probe(u.in_shape, copy.deepcopy(u.module).eval())))
        out.setdefault(adapter_key(u.in_shape), (f"adapter to {list(u.in_shape)}", Probe(u.in_shape, None)))
    return out


@dataclass
class Fit:
    form: str
    coef: list[float]
    points: int
    note: str = ""

    def predict(self, s: float) -> float:
        if self.form == "lookup":
            return self.coef[0] + s
        if self.form == "scale":
            return self.coef[0] * s
        return self.coef[0] + self.coef[1] * s


def fit(points: list[tuple[float, float]], form: str = FORM) -> Fit | None:
    """The correction from whole networks: ``points`` = (sum of unit latencies, measured
    latency), both in table milliseconds. ``linear`` minimises relative errors (each point
    weighted by 1 / its latency, so small networks count as much as large ones) and needs 3
    networks of distinct sums, else it falls back to ``scale``."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    pts = [(s, y) for s, y in points if s > 0 and y > 0]
    if not pts:
        return None
    s = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    if form == "lookup":
        return Fit(form, [float(np.median(y - s))], len(pts))
    if form == "linear" and len(set(np.round(s, 9))) >= 3:
        w = 1.0 / y
        coef, *_ = np.linalg.lstsq(np.column_stack([np.ones_like(s), s]) * w[:, None], y * w, rcond=None)
        if coef[1] > 0:
            return Fit(form, [float(c) for c in coef], len(pts))
    note = "" if form == "scale" else "linear needs 3 networks of distinct sums: scale"
    return Fit("scale", [float(np.median(y / s))], len(pts), note)


def fit_points(table: Table, granularity: str = GRANULARITY, exclude: Iterable[str] = ()) -> list[tuple[float, float]]:
    """The table's whole networks (measured in probe cells or from sweep rows) as fit points,
    leaving out the networks in ``exclude`` (held out: a row's own network is never fitted on)."""
    skip = set(exclude)
    out = []
    for key, entry in table.nets.items():
        feats = entry.get("features", {}).get(granularity)
        if key in skip or feats is None:
            continue
        f = Features(key, feats["units"], feats["adapters"], granularity)
        s, y = f.sum_ms(table), table.net_ms(key)
        if s is not None and y is not None:
            out.append((s, y))
    return out


@dataclass
class Prediction:
    ms: float | None
    frac_of_dense: float | None = None
    note: str = ""
    form: str = ""


def predict(table: Table, feats: Features, dense: Features | None = None, form: str = FORM,
            exclude: Iterable[str] = ()) -> Prediction:
    """A network's p50 in milliseconds (the table's level) and as a fraction of ``dense``; the
    correction is fitted on the table's whole networks except ``exclude`` and the network itself."""
    if dense is not None and feats.net == dense.net and table.net_ms(feats.net) is not None:
        return Prediction(table.net_ms(feats.net), 1.0, "measured: the dense network itself", "measured")
    s = feats.sum_ms(table)
    if s is None:
        missing = sum(table.unit_ms(u) is None for u in feats.units) + sum(table.unit_ms(a) is None
                                                                          for a in set(feats.adapters))
        return Prediction(None, note=f"{missing} units not measured on this target yet")
    points = fit_points(table, feats.granularity, exclude=[*exclude, feats.net])
    model = fit(points, form)
    if model is None:
        return Prediction(None, note="no whole network measured on this target yet (the dense one is "
                                     "measured with the first probes)")
    ms = model.predict(s)
    frac = None
    if dense is not None:
        sd = dense.sum_ms(table)
        if sd is not None:
            dms = model.predict(sd)
            frac = ms / dms if dms > 0 else None
    note = f"{model.form} on {model.points} networks" + (f" ({model.note})" if model.note else "")
    return Prediction(ms, frac, note, model.form)


# ----------------------------------------------------------------------------- measuring
@dataclass
class ProbeFile:
    key: str
    desc: str
    onnx_path: str | None
    torch_path: str


def export_probe(key: str, desc: str, module: nn.Module, image_shape: tuple[int, ...], folder: Path,
                 onnx: bool = True) -> ProbeFile:
    """The probe's files under ``folder`` (by key: exported once, whatever target times it).
    ONNX through the TorchScript exporter: 0.1-0.3 s a probe against 1-3 s for dynamo, and a
    probe has nothing dynamo handles better (convs, BN, ReLU, adds, pads)."""
    from harness.export import export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    torch_path = folder / f"{key}.pt"
    onnx_path = folder / f"{key}.onnx"
    if not torch_path.exists():
        tmp = torch_path.with_suffix(".tmp")
        torch.save(module.eval(), tmp)
        tmp.replace(torch_path)
    if onnx and not onnx_path.exists():
        tmp = folder / f"{key}.tmp.onnx"
        export_onnx(module, tmp, tuple(image_shape), exporter="legacy")
        tmp.replace(onnx_path)
    return ProbeFile(key, desc, str(onnx_path) if onnx else None, str(torch_path))


def _artifact(name: str, image_shape: Sequence[int], onnx_path: str | None, torch_path: str | None) -> dict[str, Any]:
    return {"name": name, "input_shape": list(image_shape), "onnx_path": onnx_path, "torch_path": torch_path}


def measure_probes(target: str, options: dict[str, Any], threads: int, batch: int, scenario: str,
                   probes: list[ProbeFile], image_shape: tuple[int, ...], workdir: Path, *,
                   target_entry: str | None = None, timeout_s: float = 600.0, rules: dict[str, Any] | None = None,
                   isolated: bool = True,
                   log: Callable[[str], None] = lambda _m: None) -> tuple[dict[str, dict[str, Any]], list[float], list[str]]:
    """Time ``probes`` in cells of ``PROBES_PER_CELL`` interleaved with the calibration network;
    returns ({probe key: {"frac", "desc", "p50_ms", "ratio_se"}}, the calibration p50 of each cell,
    errors). A probe that fails to compile or time is left out (and named in the errors)."""
    from harness.engine.cell import CellSpec, run_cell
    from harness.engine.isolate import run_isolated

    workdir.mkdir(parents=True, exist_ok=True)
    calib = export_probe("calibration", "calibration network", calibration_net(), image_shape, workdir / "probes",
                         onnx=True)
    pool_path = workdir / f"pool-{'x'.join(map(str, image_shape))}.npy"
    if not pool_path.exists():
        rng = np.random.default_rng(0)
        np.save(pool_path, rng.standard_normal((max(64, 2 * batch), *image_shape), dtype=np.float32))
    out: dict[str, dict[str, Any]] = {}
    calib_ms: list[float] = []
    errors: list[str] = []
    cells = math.ceil(len(probes) / PROBES_PER_CELL)
    for c in range(cells):
        chunk = probes[c * PROBES_PER_CELL:(c + 1) * PROBES_PER_CELL]
        t0 = time.perf_counter()
        spec = CellSpec(target=target, scenario=scenario, batch=batch, threads=threads, rules=dict(rules or PROBE_RULES),
                        pool_path=str(pool_path),
                        items=[{"key": p.key, "artifact": _artifact(p.key, image_shape, p.onnx_path, p.torch_path)}
                               for p in chunk],
                        reference=_artifact("calibration", image_shape, calib.onnx_path, calib.torch_path),
                        options=options, target_entry=target_entry, noise={"tries": 1})
        if isolated:
            result = run_isolated(spec, workdir / f"cell-{target}-{content_key([p.key for p in chunk])}", timeout_s)
        else:  # the inline executor: no child processes
            try:
                result = {"status": "ok", **run_cell(spec)}
            except Exception as exc:
                result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        if result.get("status") != "ok":
            errors.append(f"probe cell on {target}: {result.get('status')}: {result.get('error', '')}")
            continue
        ref = None
        for p, item in zip(chunk, result["items"]):
            if item.get("status") != "ok":
                errors.append(f"{p.desc}: {item.get('error', '')}")
                continue
            ref = item.get("ref_p50_ms") or ref
            ratio = item.get("speedup_interleaved")
            frac = 1.0 / ratio if ratio else (item["p50_ms"] / item["ref_p50_ms"] if item.get("ref_p50_ms") else None)
            if frac is None:
                errors.append(f"{p.desc}: no ratio to the calibration network")
                continue
            out[p.key] = {"frac": frac, "desc": p.desc, "p50_ms": item["p50_ms"], "ratio_se": item.get("ratio_se"),
                          "measured": time.time()}
        if ref:
            calib_ms.append(ref)
        log(f"    latency model {target} b{batch}: probe cell {c + 1}/{cells}, {len(chunk)} probes "
            f"in {time.perf_counter() - t0:.1f} s")
    return out, calib_ms, errors


def merge_measured(table: Table, measured: dict[str, dict[str, Any]], calib_ms: list[float],
                   nets: dict[str, dict[str, Any]] | None = None) -> None:
    """Put probe results into ``table``: unit entries, and whole networks measured as probes
    (``nets``: net key -> {granularity: {"units", "adapters"}})."""
    nets = nets or {}
    for key, entry in measured.items():
        if key in nets:
            net = table.nets.setdefault(key, {})
            net.setdefault("features", {}).update(nets[key])
            net.update({"frac": entry["frac"], "desc": entry["desc"], "source": "probe"})
        else:
            table.units[key] = entry
    table.calib_ms.extend(calib_ms)


def add_row_point(table: Table, feats: Features, y_ms: float, row_key: str) -> None:
    """A sweep row's network as a fit point: its latency in table milliseconds (its paired
    speed-up against the dense network times the dense network's table latency)."""
    entry = table.nets.setdefault(feats.net, {})
    entry.setdefault("features", {})[feats.granularity] = {"units": feats.units, "adapters": feats.adapters}
    rows = entry.setdefault("row_keys", [])
    if row_key in rows:
        return
    rows.append(row_key)
    entry.setdefault("rows_ms", []).append(float(y_ms))


# ----------------------------------------------------------------------------- errors
def prediction_error(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per target, how far ``p50_predicted_ms`` is from the measured p50 on ``rows`` (the
    report's summary): ``n`` rows with both, ``mape`` (mean |predicted / measured - 1|),
    ``within_10`` (share of rows within 10%); and the same for the speed-up over dense
    (``speedup_predicted`` against the row's paired ``speedup``), which a change of the machine's
    speed between the table and the row does not move (``mape_speedup``, ``within_10_speedup``)."""
    out: dict[str, dict[str, Any]] = {}
    by_target: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("status", "ok") == "ok":
            by_target.setdefault(str(r.get("target")), []).append(r)

    def errs(pairs: list[tuple[Any, Any]]) -> list[float]:
        out_ = []
        for pred, meas in pairs:
            try:
                p, m = float(pred), float(meas)
            except (TypeError, ValueError):
                continue
            if math.isfinite(p) and math.isfinite(m) and m > 0:
                out_.append(abs(p / m - 1.0))
        return out_

    for target, rs in sorted(by_target.items()):
        e = errs([(r.get("p50_predicted_ms"), r.get("p50_ms")) for r in rs])
        es = errs([(r.get("speedup_predicted"), _speedup(r)) for r in rs if r.get("method") != "none"])
        out[target] = {"n": len(e), "mape": float(np.mean(e)) if e else None,
                       "within_10": float(np.mean([x <= 0.10 for x in e])) if e else None,
                       "n_speedup": len(es), "mape_speedup": float(np.mean(es)) if es else None,
                       "within_10_speedup": float(np.mean([x <= 0.10 for x in es])) if es else None}
    return out


def _speedup(row: dict[str, Any]) -> Any:
    """The row's measured speed-up: the report's ``speedup``, or the stored paired ratio unless withheld."""
    if row.get("speedup") is not None:
        return row["speedup"]
    return row.get("speedup_interleaved") if row.get("ratio_ok") is not False else None


def format_error(summary: dict[str, dict[str, Any]]) -> list[str]:
    """One line per target: what ``prediction_error`` found."""
    lines = []
    for target, s in summary.items():
        if not s["n"]:
            lines.append(f"{target}: no row with a predicted p50")
            continue
        sp = (f"; speed-up MAPE {100 * s['mape_speedup']:.1f}% ({100 * s['within_10_speedup']:.0f}% of "
              f"{s['n_speedup']} within 10%)") if s["n_speedup"] else ""
        lines.append(f"{target}: p50 MAPE {100 * s['mape']:.1f}%, {100 * s['within_10']:.0f}% of {s['n']} rows "
                     f"within 10%{sp}")
    return lines


def as_dict(p: Prediction) -> dict[str, Any]:
    return asdict(p)


# ----------------------------------------------------------------------------- one target's model
@dataclass
class TargetModel:
    """The latency model of one target at one batch/scenario on this machine: its table (cached),
    what is missing for a set of networks, measuring it, and predictions."""

    target: str
    options: dict[str, Any]
    threads: int
    batch: int
    scenario: str
    image_shape: tuple[int, ...]
    workdir: Path
    granularity: str = GRANULARITY
    form: str = FORM
    machine: dict[str, Any] | None = None
    folder: Path | None = None  # the cache folder (default $HARNESS_CACHE/latency-model)
    rules: dict[str, Any] | None = None  # probe timing rules (``probe_rules``)
    isolated: bool = True  # probe cells in child processes (False: the inline executor)

    def __post_init__(self) -> None:
        from harness.provenance import host_machine
        from targets import get_target

        self.image_shape = tuple(self.image_shape)
        self._target = get_target(self.target)
        self.options = self._target.parse_options(self.options or {})
        self.machine = self.machine or host_machine()
        self.key = table_key(self.target, self._target.versions(), self.options, self.threads, self.batch,
                             self.scenario, self.machine, self.image_shape, self.rules)

    @property
    def onnx(self) -> bool:
        return self._target.needs == "onnx"

    def table(self) -> Table:
        return load_table(self.key, self.folder)

    def missing(self, nets: Sequence[nn.Module], whole: Sequence[nn.Module] = ()) -> tuple[list[ProbeFile], dict[str, dict]]:
        """Probe files for what the table lacks: the units of ``nets`` and the ``whole`` networks."""
        table = self.table()
        want: dict[str, tuple[str, nn.Module]] = {}
        for net in nets:
            for k, v in probes_of(net, self.image_shape, self.granularity).items():
                if k not in table.units:
                    want.setdefault(k, v)
        whole_info: dict[str, dict[str, Any]] = {}
        for net in whole:
            f = {g: features(net, self.image_shape, g) for g in GRANULARITIES}
            key = f[self.granularity].net
            if table.nets.get(key, {}).get("frac") is None and key not in want:
                want[key] = (f"whole network {type(net).__name__} ({len(f[self.granularity].units)} units)", net)
                whole_info[key] = {g: {"units": v.units, "adapters": v.adapters} for g, v in f.items()}
        files = [export_probe(k, d, m, self.image_shape, self.workdir / "probes", onnx=self.onnx)
                 for k, (d, m) in want.items()]
        return files, whole_info

    def ensure(self, nets: Sequence[nn.Module], whole: Sequence[nn.Module] = (),
               log: Callable[[str], None] = lambda _m: None, timeout_s: float = 600.0) -> tuple[Table, list[str]]:
        """Measure what the table lacks for ``nets`` (and ``whole``) and cache it; (table, errors)."""
        files, whole_info = self.missing(nets, whole)
        if not files:
            return self.table(), []
        log(f"  latency model {self.target} (batch {self.batch}, {self.threads} threads): measuring "
            f"{len(files)} probes ({len(whole_info)} whole networks) in {math.ceil(len(files) / PROBES_PER_CELL)} cells")
        measured, calib, errors = measure_probes(self.target, self.options, self.threads, self.batch,
                                                 self.scenario, files, self.image_shape, self.workdir,
                                                 timeout_s=timeout_s, rules=self.rules, isolated=self.isolated,
                                                 log=log)
        table = update_table(self.key, lambda t: merge_measured(t, measured, calib, whole_info), self.folder)
        return table, errors

    def features(self, net: nn.Module) -> Features:
        return features(net, self.image_shape, self.granularity)

    def predict(self, net: nn.Module, dense: nn.Module | None = None, table: Table | None = None,
                exclude: Iterable[str] = ()) -> Prediction:
        table = table or self.table()
        return predict(table, self.features(net), self.features(dense) if dense is not None else None,
                       self.form, exclude)


def fraction_predictor(dense: nn.Module, image_shape: tuple[int, ...], threads: int,
                       target_options: dict[str, dict[str, Any]], workdir: Path, *,
                       log: Callable[[str], None] = lambda _m: None, folder: Path | None = None,
                       timeout_s: float = 600.0, rules: dict[str, Any] | None = None,
                       isolated: bool = True) -> Callable[[Any, str], Any]:
    """``MethodContext.predict_latency``: callable(model or list of models, target key) -> each
    model's predicted p50 as a fraction of ``dense`` at batch 1 (SingleStream) on that target,
    measuring the units the target's table lacks first (one pass for the whole list)."""
    models: dict[str, TargetModel] = {}

    def predict_fn(nets: Any, target: str) -> Any:
        single = isinstance(nets, nn.Module)
        batch = [nets] if single else list(nets)
        if target not in models:
            models[target] = TargetModel(target, target_options.get(target, {}), threads, 1, "SingleStream",
                                         image_shape, workdir, folder=folder, rules=rules, isolated=isolated)
        tm = models[target]
        table, errors = tm.ensure([dense, *batch], [dense], log=log, timeout_s=timeout_s)
        out = []
        for net in batch:
            p = tm.predict(net, dense, table)
            if p.frac_of_dense is None:
                raise RuntimeError(f"latency model on {target}: no prediction ({p.note}"
                                   f"{'; ' + errors[0] if errors else ''})")
            out.append(p.frac_of_dense)
        return out[0] if single else out
    return predict_fn
