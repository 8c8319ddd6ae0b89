"""TVM Relax cross-built for an aarch64 board and run there through a TVM RPC tracker.

ONNX -> Relax (static batch) -> llvm build for ``aarch64-linux-gnu`` (``mcpu``, ``mattr``,
``num_cores`` options) -> ``export_library`` with Debian's ``aarch64-linux-gnu-g++`` -> the ``.so``
is kept next to the ONNX artifact (path, sha256 and its ELF header in ``Session.info``) ->
uploaded to the board the tracker hands out for ``key`` -> Relax VM on the board.

Timing follows the harness's rules: the engine warms up, applies the stop rule and computes the
percentiles; this target's timer returns the BOARD's measurement of one query on an input tensor
already on the board (uploaded once per pool input), never the RPC round trip: the board's
``harness.time_once`` (perf_counter around one VM call, registered by
``targets/tvm_board_server.py``) when it offers it, else ``time_evaluator(number=1, repeat=1)``
(which also runs one discarded call per query).

Faults: every compile in a cell process shares one RPC session per (tracker, key) (a server
serves one session at a time). A board that is killed or disconnects makes the next RPC call
raise (an error row); one that hangs is ended by the harness's cell time-out (a timeout row),
and by the server's ``session_timeout``. Asking the tracker for a board waits at most
``request_timeout_s``.

``arch=host`` builds for the host CPU instead (a host RPC server stands in for the board: the
fast contract test); the transport, timer and artifact handling are the same.

Capabilities: as ``tvm-cpu`` (see its docstring): neither int8_qdq nor runtime_weight_shapes.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from harness.errors import UserError
from harness.knobs import Knob
from targets import tvm_board
from targets.base import Artifact, Availability, NotMeasured, Session, Target
from targets.tvm_cpu import TUNE_OPTIONS

ENV_TRACKER, ENV_KEY = "HARNESS_TVM_TRACKER", "HARNESS_TVM_KEY"
_REMOTES: dict[tuple[str, str], Any] = {}  # one RPC session per (tracker, key) per process
_LOADED: dict[tuple[int, str], Any] = {}  # (session, .so sha256) -> the module loaded on the board
# qemu-user runs an untuned resnet20 at 0.27-1.4 s per image on the project machine (README), so
# an Offline query of 64 images takes 17-90 s and a cell (10 warm-up queries, then timing) minutes
# per network, up to the quick preset's 300 s time-out, for a latency that means nothing: an
# emulated board measures batch 1 only unless told otherwise (the row is skipped, saying why).
EMULATED_MAX_BATCH = 1
# Session.machine()'s keys, as the board gives them
_MACHINE_KEYS = ("node", "cpu", "cpu_count", "arch", "gpu", "board", "emulated")


def elf_facts(path: Path) -> dict[str, Any]:
    """The ELF header of ``path``: class (64), machine ('aarch64', 'x86_64' or the number),
    type ('shared object') and whether it is an aarch64 shared object."""
    head = Path(path).read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        return {"elf": False, "elf_aarch64_so": False}
    endian = "<" if head[5] == 1 else ">"
    e_type, e_machine = struct.unpack(endian + "HH", head[16:20])
    machine = {183: "aarch64", 62: "x86_64", 40: "arm"}.get(e_machine, str(e_machine))
    kind = {2: "executable", 3: "shared object"}.get(e_type, str(e_type))
    return {"elf": True, "elf_class": 64 if head[4] == 2 else 32, "elf_machine": machine,
            "elf_type": kind, "elf_aarch64_so": machine == "aarch64" and kind == "shared object"}


class BoardTimer:
    """The board's own time for one query on ``x``: the input is uploaded to the board the first
    time it is seen (outside the timed call) and reused, so only the VM call is measured."""

    def __init__(self, session: "TvmArmSession"):
        self.session = session
        self._remote_inputs: dict[int, tuple[np.ndarray, Any]] = {}
        self._time = None

    def __call__(self, x: np.ndarray) -> float:
        entry = self._remote_inputs.get(id(x))
        if entry is None or entry[0] is not x:
            entry = (x, self.session.upload(x))  # keep x: its id must not be reused
            self._remote_inputs[id(x)] = entry
        if self._time is None:
            self._time = self.session.board_clock()
        return float(self._time(entry[1]))


@dataclass
class TvmArmSession(Session):
    vm: Any = None
    dev: Any = None
    remote: Any = None
    facts: dict[str, Any] | None = None
    board: dict[str, Any] = field(default_factory=dict)
    clock: str = "auto"

    def upload(self, x: np.ndarray) -> Any:
        import tvm

        return tvm.runtime.tensor(np.ascontiguousarray(x), self.dev)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits for ``x``: uploaded, run by the Relax VM on the board, downloaded."""
        return self.vm["main"](self.upload(x)).numpy()

    def board_clock(self) -> Any:
        """A function (remote input tensor) -> seconds measured on the board."""
        once = _remote_func(self.remote, "harness.time_once") if self.clock == "auto" else None
        if once is not None:
            module = self.vm.module
            self.info["board_timer"] = "harness.time_once: board perf_counter around one VM call"
            return lambda xt: once(module, xt)
        evaluator = self.vm.time_evaluator("main", self.dev, number=1, repeat=1)
        self.info["board_timer"] = "time_evaluator(number=1, repeat=1) on the board"
        return lambda xt: evaluator(xt).results[0]

    def timer(self) -> BoardTimer:
        return BoardTimer(self)

    def machine(self) -> dict[str, Any]:
        """The board: its key, arch and cores from ``harness.board_facts`` when its server offers
        it, else what the options say (emulated=False); node is the board's name."""
        return {k: self.board[k] for k in _MACHINE_KEYS}

    def graph_facts(self) -> dict[str, Any]:
        return dict(self.facts or {})

    def close(self) -> None:
        self.vm = None


def _remote_func(remote: Any, name: str) -> Any:
    """The board's global function ``name``, or None when its server has none."""
    try:
        return remote.get_function(name)
    except Exception:  # tvm raises (not returns None) for a missing remote function
        return None


class TvmArm(Target):
    key = "tvm-arm"
    summary = "TVM Relax cross-built for aarch64, run on a board through an RPC tracker (Relax VM, board-side timing)"
    modules = ("tvm", "tornado", "cloudpickle", "psutil")
    packages = ("apache-tvm", "apache-tvm-ffi")
    options = (
        Knob("tracker", str, default="", help=f"RPC tracker HOST:PORT (default ${ENV_TRACKER})"),
        Knob("key", str, default="", help=f"the board's key in the tracker (default ${ENV_KEY})"),
        Knob("arch", str, choices=("aarch64", "host"), default="aarch64",
             help="aarch64: cross-build for the board; host: build for this CPU (a host RPC server as the board, for tests)"),
        Knob("mcpu", str, default="cortex-a72", help="llvm -mcpu for aarch64 (cortex-a55, cortex-a76, neoverse-n1, ...)"),
        Knob("mattr", str, default="+neon", help="llvm -mattr, comma-separated (+neon,+dotprod,...)"),
        Knob("num_cores", int, low=0, high=1024, default=0,
             help="the target's num-cores (0 = the board's core count when it tells, else 4); the board's "
                  "threads are its server's TVM_NUM_THREADS"),
        *TUNE_OPTIONS,
        Knob("timer", str, choices=("auto", "time_evaluator"), default="auto",
             help="auto: the board server's harness.time_once when offered, else time_evaluator(number=1)"),
        Knob("session_timeout_s", int, low=0, high=86400, default=3600,
             help="the server ends an RPC session after this long (0 = never)"),
        Knob("request_timeout_s", int, low=1, high=86400, default=120,
             help="how long to wait for the tracker to hand out a free board"),
        Knob("emulated_max_batch", int, low=1, high=65536, default=EMULATED_MAX_BATCH,
             help="the largest batch measured on an emulated board (qemu-user); a larger one is a skipped row"),
    )
    install_hint = ("pip install -e '.[tvm]'; apt-get install g++-aarch64-linux-gnu; a tracker and a board "
                    "(python -m harness board tracker / board emulate)")

    @property
    def resources(self) -> dict[str, float]:  # type: ignore[override]
        """One board of this key per measure job (Ray custom resource)."""
        return {f"tvm-board:{getattr(self, '_key', '') or os.environ.get(ENV_KEY, 'any')}": 1.0}

    def parse_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Options with tracker/key from the environment when not given."""
        opts = super().parse_options(raw)
        opts["tracker"] = opts["tracker"] or os.environ.get(ENV_TRACKER, "")
        opts["key"] = opts["key"] or os.environ.get(ENV_KEY, "")
        self._key = opts["key"]
        return opts

    def availability(self, options: Mapping[str, Any] | None = None) -> Availability:
        """Needs tvm, the cross compiler (arch=aarch64), and a reachable tracker holding ``key``."""
        base = super().availability(options)
        if not base.ok:
            return base
        opts = self.parse_options(options or {})
        if opts["arch"] == "aarch64" and not _which("aarch64-linux-gnu-g++"):
            return Availability(False, "cross compiler aarch64-linux-gnu-g++ not found (apt-get install g++-aarch64-linux-gnu)")
        if not opts["tracker"] or not opts["key"]:
            return Availability(False, f"no board given: set tvm-arm.tracker=HOST:PORT and tvm-arm.key=NAME "
                                       f"(or ${ENV_TRACKER} / ${ENV_KEY})")
        reason = tvm_board.check_board(opts["tracker"], opts["key"])
        return Availability(not reason, reason)

    def compile(self, artifact: Artifact, *, batch: int, scenario: str, threads: int,
                options: Mapping[str, Any] | None = None) -> TvmArmSession:
        """Cross-build, export the .so next to the ONNX file, upload and load it on the board."""
        import tvm
        from tvm import relax

        from targets import tvm_common as tc

        opts = self.parse_options(options or {})
        if artifact.onnx_path is None:
            raise UserError(f"tvm-arm needs an ONNX file; artifact {artifact.name!r} has none")
        remote = _remote(opts)
        board = _board_facts(remote, opts)
        if board["emulated"] and batch > opts["emulated_max_batch"]:
            raise NotMeasured(
                f"batch {batch} ({scenario}) is not run on an emulated board (tvm-arm.emulated_max_batch="
                f"{opts['emulated_max_batch']}): under qemu-user each query of {batch} images takes tens of "
                f"seconds, a cell minutes per network, and emulated latencies mean nothing",
                machine={k: board[k] for k in _MACHINE_KEYS})
        cores = opts["num_cores"] or int(board.get("cpu_count") or 4)
        board["threads"] = _board_threads(remote)
        target = _target(opts, cores)
        mod, _ = tc.import_onnx(artifact.onnx_path, batch)
        mod, facts = tc.prepare(mod, target)
        info: dict[str, Any] = {"tune_s": 0.0, "tune_trials_per_task": 0}
        if opts["tune_trials"] > 0:
            mod, info = tc.tune(mod, target, trials=opts["tune_trials"], ops=opts["tune_ops"],
                                **_tuning_io(opts, target))
        so_path = _export(tc.build(mod, target), artifact, opts, batch)
        sha = _sha256(so_path)
        vm = relax.VirtualMachine(_load(remote, so_path, sha), remote.cpu())
        session = TvmArmSession(batch=batch, vm=vm, dev=remote.cpu(), remote=remote, facts=facts,
                                board=board, clock=opts["timer"])
        session.info.update({"precision": "fp32", "threads": board["threads"], "target": tc.target_dict(target),
                             "tvm": tvm.__version__, "scenario": scenario, "tracker": opts["tracker"],
                             "board_facts": board["board_facts"],
                             "key": opts["key"], "artifact_so": str(so_path), "artifact_so_sha256": sha,
                             **elf_facts(so_path), "emulated": board["emulated"],
                             "timing_scope": "board-side time of one VM call, input already on the board", **info})
        return session


def _which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None


def _target(opts: Mapping[str, Any], cores: int) -> Any:
    import tvm
    from tvm.target import codegen

    if opts["arch"] == "host":
        return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": cores})
    mattr = [a.strip() for a in opts["mattr"].split(",") if a.strip()]
    spec = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": opts["mcpu"], "num-cores": cores}
    if mattr:
        spec["mattr"] = mattr
    return tvm.target.Target(spec)


def _remote(opts: Mapping[str, Any]) -> Any:
    """This process's RPC session to a board of ``key`` (opened once, reused by every compile)."""
    from tvm import rpc

    slot = (opts["tracker"], opts["key"])
    remote = _REMOTES.get(slot)
    if remote is not None:
        return remote
    host, port = tvm_board.parse_addr(opts["tracker"])
    tracker = rpc.connect_tracker(host, port)
    sock = getattr(tracker, "_sock", None)
    if sock is not None:  # request() blocks until a board is free: bound the wait
        sock.settimeout(opts["request_timeout_s"])
    try:
        remote = tracker.request(opts["key"], priority=1, session_timeout=opts["session_timeout_s"], max_retry=2)
    except Exception as exc:
        raise RuntimeError(f"no board {opts['key']!r} from tracker {opts['tracker']}: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    _REMOTES[slot] = remote
    return remote


def _load(remote: Any, so_path: Path, sha: str) -> Any:
    """The .so loaded on the board, uploaded under a name unique to its content: loading a new
    file over one the board has mapped crashes its server, and an identical build (the dense
    reference and an item of one network) is loaded once."""
    slot = (id(remote), sha)
    if slot not in _LOADED:
        name = f"{sha[:16]}-{so_path.name}"
        remote.upload(str(so_path), name)
        _LOADED[slot] = remote.load_module(name)
    return _LOADED[slot]


def _board_facts(remote: Any, opts: Mapping[str, Any]) -> dict[str, Any]:
    """Machine facts of the board: from its ``harness.board_facts`` when offered, else the options'."""
    facts_fn = _remote_func(remote, "harness.board_facts")
    told = json.loads(facts_fn()) if facts_fn is not None else {}
    arch = told.get("arch") or ("aarch64" if opts["arch"] == "aarch64" else "unknown")
    return {"node": told.get("node") or opts["key"], "cpu": told.get("cpu", ""),
            "cpu_count": int(told.get("cpu_count") or opts["num_cores"] or 0), "arch": arch, "gpu": "",
            "board": opts["key"], "emulated": bool(told.get("emulated", False)),
            "board_facts": "harness.board_facts" if told else "options (the server offers no harness.board_facts)"}


def _board_threads(remote: Any) -> int:
    """The board runtime's thread count (its server's TVM_NUM_THREADS, else TVM's default)."""
    count = _remote_func(remote, "runtime.NumThreads")
    return int(count()) if count is not None else 0


def _export(executable: Any, artifact: Artifact, opts: Mapping[str, Any], batch: int) -> Path:
    """The deployable .so beside the ONNX artifact, cross-linked for aarch64 (host: plain g++)."""
    tag = "host" if opts["arch"] == "host" else f"aarch64-{opts['mcpu']}"
    tuned = f"-t{opts['tune_trials']}" if opts["tune_trials"] else ""
    path = Path(artifact.onnx_path).with_name(f"{Path(artifact.onnx_path).stem}.tvm-{tag}-b{batch}{tuned}.so")
    if opts["arch"] == "host":
        executable.export_library(str(path))
    else:
        from tvm.support import cc

        executable.export_library(str(path), fcompile=cc.cross_compiler("aarch64-linux-gnu-g++"))
    return path


def _tuning_io(opts: Mapping[str, Any], target: Any) -> dict[str, Any]:
    """MetaSchedule's builder and runner for the board: candidates cross-built here, timed on a
    board of the same key through the tracker (ms.runner.RPCRunner)."""
    from tvm.s_tir import meta_schedule as ms

    from targets import tvm_common as tc

    host, port = tvm_board.parse_addr(opts["tracker"])
    runner = ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=opts["key"],
                                       session_timeout_sec=max(60, opts["session_timeout_s"] or 600)),
        evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0),
        max_workers=1)
    if opts["arch"] == "host":
        return {"runner": runner}
    return {"builder": ms.builder.LocalBuilder(f_export=cross_export, timeout_sec=tc.BUILD_TIMEOUT_S),
            "runner": runner}


def cross_export(mod: Any) -> str:
    """MetaSchedule builder export: link one candidate for aarch64 (runs in its popen workers)."""
    import tempfile

    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
    mod.export_library(path, fcompile=cc.cross_compiler("aarch64-linux-gnu-g++"))
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
