"""Jobs as Ray tasks: compress and baseline jobs on nodes with CPUs to spare, measure jobs each holding a
whole node (timing never shares a machine with other work).

``ray:auto`` / ``ray:HOST:PORT`` connect to a running cluster; without an address a local Ray
instance is started, bound to 127.0.0.1 (no dashboard) and shut down by ``close``.

Scheduling (the driver places every task on a node, ``NodeAffinitySchedulingStrategy(soft=False)``,
and Ray enforces the resources asked for):
- compress and baseline tasks ask for ``task.cpus`` CPUs (capped at the largest node's) plus
  ``task.resources`` (a GPU when a method trains on one), on a node with that many CPUs left;
- a measure task asks for *all* of its node's CPUs plus the target's resources (a GPU, a board),
  so while it runs no compress task and no other measure task can start there; and from the
  moment it is placed, no compress task is placed on that node, so it cannot starve behind them.
  One measure task per node at a time; each finished node gets the next one.

Every task is a streaming generator that first reports when and where it started, so a task's
time-out counts from its start, not from its time in a queue. A task past its time-out is
cancelled (force: its worker is killed). A worker killed mid-job, a node removed, or an object
lost with it sends the task back once (to any node that fits); a second failure is
a ``Done`` with the reason. Results stream back one at a time to the driver, which alone writes
the store.
"""
from __future__ import annotations

import logging
import os
import platform
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

from harness.engine.executors.base import KINDS, Done, Executor, Task
from harness.errors import UserError, first_line
from harness.provenance import cpu_count

ATTEMPTS = 2  # a job that lost its worker or node runs once more, then is an error
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray keeps 127.0.0.1 instead of the host's IP
NODE_ENV = "HARNESS_NODE"  # read by harness.provenance.host_machine: which Ray node ran a cell
_POLL_S = 1.0


def loopback_only() -> None:
    """Make Ray advertise and bind 127.0.0.1: it otherwise swaps 127.0.0.1 for the host's address
    (and binds every interface). Ray reads the switch once, at import, hence both lines."""
    os.environ[LOOPBACK_ENV] = "0"  # for the raylet and the workers it starts
    import ray._private.ray_constants as constants

    constants.ENABLE_RAY_CLUSTER = False


def node_label(node_id: str) -> str:
    """The ``node`` column for a cell run on Ray node ``node_id``: the host name alone cannot tell
    two raylets on one machine apart."""
    return f"{platform.node() or 'unknown'}/ray-{node_id[:8]}"


def _format_error(exc: BaseException) -> str:
    tb = traceback.format_exc(limit=-1).strip().splitlines()
    where = f" [{tb[-2].strip()}]" if len(tb) >= 2 else ""
    return f"{type(exc).__name__}: {first_line(exc)}{where}"


def run_task(fn: Any, args: tuple) -> Iterator[tuple]:
    """The Ray task around every job: say where and when it started, then its outcome."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    os.environ[NODE_ENV] = node_label(node_id)  # the cell process inherits it
    yield ("started", time.time(), node_id)
    try:
        yield ("ok", fn(*args))
    except UserError as exc:
        yield ("user-error", str(exc))
    except Exception as exc:  # a bug in a job: its rows say so, the sweep goes on
        yield ("error", _format_error(exc))


@dataclass(eq=False)
class _Running:
    task: Task
    gen: Any  # ray.ObjectRefGenerator
    attempt: int
    node: str  # the node it is pinned to
    cpus: float
    started: float | None = None


@dataclass
class _Nodes:
    """Alive nodes and their total resources, as Ray reports them."""

    resources: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def now(cls) -> "_Nodes":
        import ray

        return cls({n["NodeID"]: dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")})

    def without(self, gone: set[str]) -> "_Nodes":
        return _Nodes({n: r for n, r in self.resources.items() if n not in gone})

    def cpus(self, node: str) -> float:
        return self.resources[node].get("CPU", 0.0)

    def max_cpus(self) -> float:
        return max((r.get("CPU", 0.0) for r in self.resources.values()), default=0.0)

    def fitting(self, needs: dict[str, float]) -> list[str]:
        return [nid for nid, res in self.resources.items()
                if res.get("CPU", 0.0) >= 1 and all(res.get(k, 0.0) >= v for k, v in needs.items())]

    def missing(self, needs: dict[str, float]) -> str:
        have = {k: max((r.get(k, 0.0) for r in self.resources.values()), default=0.0) for k in needs}
        short = [f"{k}={v:g} (most on one node: {have[k]:g})" for k, v in needs.items() if have[k] < v]
        if short:
            return ", ".join(short)
        return "all of " + ", ".join(f"{k}={v:g}" for k, v in needs.items()) + " on one node" if needs else \
            "a node with at least one CPU"


def _ray_resources(needs: dict[str, float]) -> dict[str, Any]:
    """Task resources as Ray's options: GPUs by their own keyword, everything else by name."""
    other = {k: v for k, v in needs.items() if k not in ("GPU", "CPU")}
    return {"num_gpus": needs.get("GPU", 0), **({"resources": other} if other else {})}


class RayExecutor(Executor):
    """Jobs as Ray tasks on a cluster or on a local Ray instance (see the module docstring)."""

    name = "ray"
    isolated = True  # each measure cell still runs in its own process, inside its Ray task

    def __init__(self, address: str | None = None):
        super().__init__(address or None)
        self._owns_instance = address is None
        self._remote: Any = None
        self._queue: deque[tuple[Task, int]] = deque()  # (task, attempt) waiting for a node
        self._running: list[_Running] = []
        self._ready: deque[Done] = deque()
        self._node_jobs: dict[str, int] = {}  # measure tasks dispatched per node (round-robin)
        self._gone: set[str] = set()  # nodes a task was lost with

    # ----------------------------------------------------------------- life cycle
    def start(self, threads: int) -> None:
        if self._owns_instance:
            loopback_only()
        import ray

        quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
        try:
            if self._owns_instance:
                ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                         num_cpus=max(cpu_count(), threads), **quiet)
            else:
                ray.init(address=self.address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = "a local Ray instance" if self._owns_instance else f"Ray cluster {self.address!r}"
            raise UserError(f"cannot start {where}: {first_line(exc)}") from None
        self._remote = ray.remote(run_task)

    def close(self) -> None:
        import ray

        if not ray.is_initialized():
            return
        for run in self._running:  # a sweep stopped early leaves no job running on the cluster
            ray.cancel(run.gen, force=True)
        self._running.clear()
        ray.shutdown()  # a local instance stops with it; a cluster only loses this driver

    # ----------------------------------------------------------------- submitting
    def submit(self, task: Task) -> None:
        self._queue.append((task, 1))
        self._dispatch()

    def _launch(self, task: Task, attempt: int, node: str, options: dict[str, Any]) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(node, soft=False)
        gen = self._remote.options(name=f"harness-{task.kind}", num_returns="streaming", max_retries=0,
                                   scheduling_strategy=strategy, **options).remote(task.fn, task.args)
        self._running.append(_Running(task, gen, attempt, node, cpus=options["num_cpus"]))

    def _dispatch(self) -> None:
        """Place queued tasks on nodes, measure tasks first (they finish rows).

        A measure task reserves a node: it gets all of that node's CPUs, and no compress task is
        placed there from then on, so Ray starts it as soon as what already runs there ends.
        Compress tasks go to unreserved nodes with CPUs left. While compress tasks wait, measure
        tasks reserve at most half the nodes (at least one), so neither kind starves the other.
        """
        if not self._queue:
            return
        nodes = _Nodes.now().without(self._gone)
        reserved = {r.node for r in self._running if r.task.exclusive}
        used: dict[str, float] = {}
        for r in self._running:
            if not r.task.exclusive:
                used[r.node] = used.get(r.node, 0.0) + r.cpus
        compress_waiting = any(not t.exclusive for t, _ in self._queue)
        max_reserved = max(1, len(nodes.resources) // 2) if compress_waiting else len(nodes.resources)
        waiting: deque[tuple[Task, int]] = deque()
        for task, attempt in sorted(self._queue, key=lambda q: KINDS.index(q[0].kind)):
            needs = {k: v for k, v in task.resources.items() if k != "CPU"}
            fits = [n for n in nodes.fitting(needs) if n not in reserved]
            if not nodes.fitting(needs):
                self._ready.append(Done(task, error=f"no node of the Ray cluster has {nodes.missing(needs)}"))
                continue
            if task.exclusive:
                node = min(fits, key=lambda n: (used.get(n, 0.0), self._node_jobs.get(n, 0)), default=None)
                if node is None or len(reserved) >= max_reserved:
                    waiting.append((task, attempt))
                    continue
                reserved.add(node)
                self._node_jobs[node] = self._node_jobs.get(node, 0) + 1
                self._launch(task, attempt, node, {"num_cpus": nodes.cpus(node), **_ray_resources(needs)})
                continue
            cpus = min(task.cpus, nodes.max_cpus())
            room = [n for n in fits if nodes.cpus(n) - used.get(n, 0.0) >= cpus]
            if not room:
                waiting.append((task, attempt))
                continue
            node = min(room, key=lambda n: used.get(n, 0.0))
            used[node] = used.get(node, 0.0) + cpus
            self._launch(task, attempt, node, {"num_cpus": cpus, **_ray_resources(needs)})
        self._queue = waiting

    # ----------------------------------------------------------------- results
    def pending(self) -> int:
        return len(self._queue) + len(self._running) + len(self._ready)

    def next_done(self) -> Done:
        import ray

        while not self._ready:
            if not self._running:
                raise RuntimeError("ray executor: tasks are queued but none can start")  # not reached
            ready, _ = ray.wait([r.gen for r in self._running], num_returns=1, timeout=self._wait_s())
            for gen in ready:
                self._advance(next(r for r in self._running if r.gen is gen))
            self._expire()
            self._dispatch()
        return self._ready.popleft()

    def _wait_s(self) -> float:
        deadlines = [r.started + r.task.timeout_s - time.time() for r in self._running
                     if r.started is not None and r.task.timeout_s is not None]
        return max(0.05, min([_POLL_S, *deadlines]))

    def _advance(self, run: _Running) -> None:
        import ray

        try:
            item = ray.get(next(run.gen))
        except StopIteration:  # not reached: the generator always yields an outcome
            item = ("error", "the Ray task ended without a result")
        except ray.exceptions.RayError as exc:
            self._finish(run)
            self._retry_or_fail(run, exc)
            return
        if item[0] == "started":
            run.started = time.time()  # the driver's clock: a node's clock may differ from it
            return
        self._finish(run)
        kind, value = item
        if kind == "user-error":
            raise UserError(value)
        self._ready.append(Done(run.task, value) if kind == "ok" else Done(run.task, error=value))

    def _finish(self, run: _Running) -> None:
        self._running.remove(run)

    def _retry_or_fail(self, run: _Running, exc: BaseException) -> None:
        import ray.exceptions as rex

        lost = (rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError, rex.LocalRayletDiedError,
                rex.TaskUnschedulableError, rex.OutOfMemoryError, rex.RaySystemError)
        reason = f"{type(exc).__name__}: {first_line(exc, 200)}"
        if isinstance(exc, (rex.NodeDiedError, rex.LocalRayletDiedError, rex.TaskUnschedulableError)):
            self._gone.add(run.node)  # Ray may list a dead node as alive for a while yet
        if isinstance(exc, lost) and (run.started is None or run.attempt < ATTEMPTS):
            print(f"  {run.task.label}: {reason}; running it again", file=sys.stderr, flush=True)
            # a task that never started (its node went first) has not used up an attempt
            self._queue.append((run.task, run.attempt + (run.started is not None)))
            return
        tries = f" (attempt {run.attempt} of {ATTEMPTS})" if isinstance(exc, lost) else ""
        self._ready.append(Done(run.task, error=f"ray task lost: {reason}{tries}"))

    def _expire(self) -> None:
        import ray

        now = time.time()
        for run in list(self._running):
            limit = run.task.timeout_s
            if run.started is None or limit is None or now - run.started <= limit:
                continue
            ray.cancel(run.gen, force=True)
            self._finish(run)
            self._ready.append(Done(run.task, error=f"{run.task.label} did not finish within {limit:.0f} s "
                                                   "(Ray task cancelled)"))
