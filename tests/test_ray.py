"""The Ray executor on a real local Ray instance and on a two-raylet cluster, all on 127.0.0.1.

Sweeps are tiny (resnet20, the dense method, one or two CPU targets, FAST_RECIPE/FAST_TIMING);
the cluster is started once for the module and every cluster sweep shares one artifact folder,
so the baseline is trained once.
"""
from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray's import: keep 127.0.0.1

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import FAST_RECIPE, FAST_TIMING, ray_missing, require_targets

if ray_missing():
    pytest.skip(ray_missing(), allow_module_level=True)
import ray  # noqa: E402

from harness.engine.config import SweepConfig  # noqa: E402
from harness.engine.executors import Task  # noqa: E402
from harness.engine.executors.ray import RayExecutor, loopback_only  # noqa: E402
from harness.engine.rows import TIMING_COLUMNS  # noqa: E402
from harness.engine.sweep import run_sweep  # noqa: E402

pytestmark = pytest.mark.slow


def _targets(n: int) -> list[str]:
    return require_targets("ort-cpu", "torch-eager")[:n]


def _config(out: Path, executor: str, targets: list[str], **kw) -> SweepConfig:
    base = dict(models=["resnet20"], methods=["none"], data="digits", preset="quick", recipe=FAST_RECIPE,
                timing=FAST_TIMING, out=out, targets=targets, progress=False, pool_size=32, offline_batch=16,
                threads=1, executor=executor, cell_timeout_s=120,
                noise={"tries": 1})  # no re-timing: two raylets on one machine always see each other's work
    base.update(kw)
    return SweepConfig(**base)


def _comparable(row: dict) -> dict:
    # baseline_source says whether this run trained the baseline or found it in the cache
    return {k: v for k, v in row.items() if k not in TIMING_COLUMNS and k not in ("artifact", "baseline_source")}


@pytest.fixture(scope="module")
def cluster():
    """Head and one more raylet with 1 CPU each, bound to 127.0.0.1; no dashboard."""
    from ray.cluster_utils import Cluster

    loopback_only()
    c = Cluster(initialize_head=True,
                head_node_args={"node_ip_address": "127.0.0.1", "num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def shared_artifacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shared-artifacts")


def _on_cluster(tmp_path: Path, cluster, artifacts: Path, targets: list[str]) -> SweepConfig:
    return _config(tmp_path / "out", f"ray:{cluster.address}", targets, artifacts=artifacts)


def _assert_complete(rows: list[dict], expected: int) -> None:
    """Every planned row exists once; each is ok or an error that says why."""
    assert len(rows) == expected and len({r["key"] for r in rows}) == expected
    for r in rows:
        assert r["status"] == "ok" or (r["status"] == "error" and r["error"]), r


def _ray_processes(title: str) -> list[int]:
    """Pids of Ray workers whose process title is ``title`` (Ray names a busy worker ray::TASK)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().split(b"\0")[0].decode() == title:
                    pids.append(int(proc.name))
            except (OSError, UnicodeDecodeError):
                pass
    return pids


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def body():
        try:
            out["rows"] = fn()
        except BaseException as exc:  # the test thread re-raises it
            out["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, out


def _join(t: threading.Thread, out: dict, limit: float) -> list[dict]:
    t.join(limit)
    assert not t.is_alive(), f"sweep still running after {limit:.0f} s"
    if "error" in out:
        raise out["error"]
    return out["rows"]


# ----------------------------------------------------------------------------- placement, without Ray
def _placing(monkeypatch, nodes: dict[str, dict[str, float]]) -> tuple[RayExecutor, list]:
    """An executor whose cluster is ``nodes`` and whose launches are only recorded."""
    from harness.engine.executors import ray as ray_executor

    monkeypatch.setattr(ray_executor._Nodes, "now", classmethod(lambda cls: cls(nodes)))
    ex, launched = RayExecutor("auto"), []

    def launch(task, attempt, node, options):
        launched.append((task.label, node, options))
        ex._running.append(ray_executor._Running(task, object(), attempt, node, cpus=options["num_cpus"]))
    monkeypatch.setattr(ex, "_launch", launch)
    return ex, launched


def test_a_measure_task_holds_its_node_and_compress_tasks_stay_off_it(monkeypatch):
    ex, launched = _placing(monkeypatch, {"a": {"CPU": 4.0}, "b": {"CPU": 4.0, "GPU": 1.0}})
    ex.submit(Task("compress", print, (), "c1", cpus=2))
    ex.submit(Task("measure", print, (), "m1", exclusive=True))
    ex.submit(Task("measure", print, (), "m2", exclusive=True))  # both nodes are taken: it waits
    ex.submit(Task("compress", print, (), "c2", cpus=2))
    ex.submit(Task("measure", print, (), "gpu", exclusive=True, resources={"GPU": 1}))
    ex.submit(Task("measure", print, (), "board", exclusive=True, resources={"board": 1}))
    placed = {label: (node, opts) for label, node, opts in launched}
    assert placed["c1"] == ("a", {"num_cpus": 2, "num_gpus": 0})
    assert placed["m1"] == ("b", {"num_cpus": 4.0, "num_gpus": 0})  # the node without compress work
    assert placed["m2"] == ("a", {"num_cpus": 4.0, "num_gpus": 0})  # Ray starts it once c1 ends
    assert "c2" not in placed and "gpu" not in placed  # never beside a measure task; one per node
    board = ex.next_done()
    assert board.task.label == "board" and "board=1 (most on one node: 0)" in board.error
    ex._running = [r for r in ex._running if r.task.label != "m1"]  # m1 finished: b is free
    ex._dispatch()
    assert launched[-1][:2] == ("c2", "b")  # while compress work waits, measure holds half the nodes
    ex._running = [r for r in ex._running if r.task.label not in ("m2", "c2")]
    ex._dispatch()
    assert launched[-1] == ("gpu", "b", {"num_cpus": 4.0, "num_gpus": 1})


# ----------------------------------------------------------------------------- a local instance
def test_rows_equal_a_local_run(tmp_path):
    """executor=ray (a local instance on 127.0.0.1) gives the rows executor=local gives, apart
    from timing, where and when."""
    targets = _targets(1)
    local = run_sweep(_config(tmp_path / "local", "local", targets))
    on_ray = run_sweep(_config(tmp_path / "ray", "ray", targets))
    assert {r["status"] for r in local + on_ray} == {"ok"}, [r["error"] for r in local + on_ray]
    by_key = {r["key"]: r for r in local}
    assert sorted(by_key) == sorted(r["key"] for r in on_ray)
    for row in on_ray:
        assert _comparable(row) == _comparable(by_key[row["key"]])
        assert "/ray-" in row["node"]  # the Ray node that ran the cell, not only the host
    assert not ray.is_initialized()  # close() shut the local instance down


# ----------------------------------------------------------------------------- a two-node cluster
def test_measure_jobs_hold_a_node_alone_and_both_nodes_work(tmp_path, cluster, shared_artifacts):
    targets = _targets(2)
    rows = run_sweep(_on_cluster(tmp_path, cluster, shared_artifacts, targets))
    _assert_complete(rows, 2 * len(targets))
    assert {r["status"] for r in rows} == {"ok"}, [r["error"] for r in rows]
    spans: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        assert r["measure_start"] < r["measure_end"]
        spans.setdefault(r["node"], []).append((r["measure_start"], r["measure_end"]))
    assert len(spans) == 2, spans  # both raylets timed cells, and rows tell them apart
    for node, intervals in spans.items():
        intervals.sort()
        for (_, end), (start, _) in zip(intervals, intervals[1:]):
            assert end <= start, f"measure jobs overlapped on {node}: {intervals}"


def test_missing_resources_and_time_outs_are_errors(cluster):
    """A measure task no node can hold says which resource is missing; a task past its time-out
    is cancelled and says so; neither hangs the executor."""
    ex = RayExecutor(cluster.address)
    ex.start(1)
    try:
        ex.submit(Task("measure", time.sleep, (0,), "needs a board", exclusive=True, resources={"board": 1}))
        ex.submit(Task("compress", time.sleep, (60,), "sleeps", timeout_s=2))
        ex.submit(Task("measure", time.sleep, (0,), "fits", exclusive=True))
        t0 = time.time()
        done = {d.task.label: d for d in (ex.next_done(), ex.next_done(), ex.next_done())}
        assert time.time() - t0 < 30 and ex.pending() == 0
    finally:
        ex.close()
    assert "board=1" in done["needs a board"].error
    assert "did not finish within 2 s" in done["sleeps"].error
    assert done["fits"].error is None


def test_driver_killed_mid_sweep_then_rerun_has_no_duplicates(tmp_path, cluster, shared_artifacts):
    targets = _targets(2)
    out = tmp_path / "out"
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_ray import _config
        from harness.engine.sweep import run_sweep
        from pathlib import Path
        run_sweep(_config(Path({str(out)!r}), {f"ray:{cluster.address}"!r}, {targets!r},
                          artifacts=Path({str(shared_artifacts)!r})))
        """))
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    db_path, deadline, first = out / "results.sqlite", time.time() + 240, 0
    while time.time() < deadline and driver.poll() is None and not first:
        time.sleep(0.5)
        if db_path.exists():
            with sqlite3.connect(db_path) as db:
                first = db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert 0 < first < 2 * len(targets), "the driver was not killed mid-sweep"
    with sqlite3.connect(db_path) as db:
        before = dict(db.execute("SELECT key, written FROM rows").fetchall())
    rows = run_sweep(_on_cluster(tmp_path, cluster, shared_artifacts, targets))
    _assert_complete(rows, 2 * len(targets))
    kept = {r["key"]: r for r in rows if r["key"] in before}
    assert len(kept) == len(before)  # rows written before the kill are kept, not measured again
    with sqlite3.connect(db_path) as db:
        for key, written in db.execute("SELECT key, written FROM rows").fetchall():
            if key in before and before[key] is not None:
                assert written == before[key]


def test_worker_killed_mid_job_is_retried(tmp_path, cluster, shared_artifacts):
    targets = _targets(1)
    t, out = _in_thread(lambda: run_sweep(_on_cluster(tmp_path, cluster, shared_artifacts, targets)))
    killed = []
    deadline = time.time() + 240
    while not killed and t.is_alive() and time.time() < deadline:
        for pid in _ray_processes("ray::harness-measure"):
            cells = _children(pid)
            if not cells:  # wait for its cell process: it must not outlive the worker
                break
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            break
        time.sleep(0.1)
    rows = _join(t, out, 300)
    assert killed, "no measure task was seen running"
    assert not [c for c in cells if _alive(c)], "a cell process outlived its killed worker"
    _assert_complete(rows, 2 * len(targets))
    assert {r["status"] for r in rows} == {"ok"}, [r["error"] for r in rows]  # the killed job ran again


def test_node_removed_mid_sweep_ends_with_every_row(tmp_path, cluster, shared_artifacts):
    targets = _targets(2)
    extra = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    raylet = extra.all_processes["raylet"][0].process.pid
    t, out = _in_thread(lambda: run_sweep(_on_cluster(tmp_path, cluster, shared_artifacts, targets)))
    removed = False
    deadline = time.time() + 240
    while not removed and t.is_alive() and time.time() < deadline:
        busy = [pid for pid in _ray_processes("ray::harness-measure") + _ray_processes("ray::harness-compress")
                if _parent(pid) == raylet]
        if busy:
            cluster.remove_node(extra, allow_graceful=False)
            removed = True
        time.sleep(0.1)
    rows = _join(t, out, 300)
    assert removed, "no job was seen running on the node to remove"
    _assert_complete(rows, 2 * len(targets))


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(int(p.name)) == pid]


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])
