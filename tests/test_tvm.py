"""TVM targets: tvm-cpu on the host, tvm-arm against a host RPC server on loopback (fast), and
end to end against an emulated aarch64 board (qemu-user) through the harness's own cell.

Skips are decided in conftest.py: tvm (the ``tvm`` extra), the aarch64 cross compiler and
qemu-user (Debian ``g++-aarch64-linux-gnu``, ``qemu-user``); each skip says what is missing.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST_TIMING, emulation_missing, needs_emulation, needs_tvm, needs_tvm_tuning, tvm_missing
from test_targets import CLASSES, INPUT_SHAPE, TestTargetContract as _Contract  # noqa: F401
from test_targets import artifact, imported_runtimes, inputs, make_net, net, reference  # noqa: F401  fixtures

from targets import get_target


PARITY = 1e-3


# ----------------------------------------------------------------------------- tvm-cpu

@needs_tvm
def test_tvm_cpu_parity_info_machine_and_graph_facts(artifact, net):
    target = get_target("tvm-cpu")
    assert target.availability().ok
    for batch, scenario in ((1, "SingleStream"), (4, "Offline")):
        session = target.compile(artifact, batch=batch, scenario=scenario, threads=2, options=None)
        x = inputs(batch, seed=batch)
        y = session.run(x)
        assert y.shape == (batch, CLASSES)
        assert np.abs(y - reference(net, x)).max() <= PARITY
        info = session.info
        # TVM's thread pool is per process and fixed when first used: in this shared pytest process
        # an earlier test may have started it at 1 thread; a harness cell (a fresh process) gets 2.
        # The session records what TVM really runs with, so the row cannot claim 2 when it ran 1.
        assert info["threads"] == 2 and info["runtime_threads"] in (1, 2)
        assert info["target"]["kind"] == "llvm" and info["target"]["num-cores"] == 2 and info["target"]["mcpu"]
        assert info["tune_s"] == 0.0 and info["precision"] == "fp32"
        machine = session.machine()
        assert machine["emulated"] is False and machine["board"] == ""
        facts = session.graph_facts()
        assert facts["ops"]["relax.nn.conv2d"] == 3
        assert facts["conv_weights"] == [[8, 3, 3, 3], [16, 8, 3, 3], [16, 16, 3, 3]]  # BN folded
        assert sum(v for k, v in facts["kernels"].items() if "conv2d" in k) == 3
        session.close()


@needs_tvm
def test_tvm_cpu_declares_no_capability_it_lacks():
    # Relax keeps QDQ graphs as float convs and cannot import FTWT's run-time channel selection
    # (targets/tvm_cpu.py says why): neither capability may be declared.
    assert get_target("tvm-cpu").capabilities == frozenset()
    assert get_target("tvm-arm").capabilities == frozenset()


@needs_tvm
@pytest.mark.slow
@pytest.mark.timeout(1800)
@needs_tvm_tuning
def test_tvm_cpu_tuning_shares_one_database(artifact, net, tmp_path, monkeypatch):
    """Tuning fills the shared database once; a second compile tunes nothing and reuses it."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    target = get_target("tvm-cpu")
    opts = target.parse_options({"tune_trials": "1"})
    first = target.compile(artifact, batch=1, scenario="SingleStream", threads=2, options=opts)
    assert first.info["tune_tasks_tuned"] == 3 and first.info["tune_trials_run"] == 3
    assert first.info["tune_s"] > 0 and Path(first.info["tune_database"]).is_dir()
    again = target.compile(artifact, batch=1, scenario="SingleStream", threads=2, options=opts)
    assert again.info["tune_tasks_tuned"] == 0 and again.info["tune_database"] == first.info["tune_database"]
    x = inputs(1, seed=5)
    assert np.abs(again.run(x) - reference(net, x)).max() <= PARITY


# ----------------------------------------------------------------------------- boards

@pytest.fixture(scope="module")
def host_board():
    """A tracker and a host-built TVM RPC server (the board stand-in) on free loopback ports."""
    if tvm_missing():
        pytest.skip(tvm_missing())
    from targets import tvm_board as tb

    port = tb.free_port()
    tracker = tb.start_tracker("127.0.0.1", port)
    server = tb.start_host_server(f"127.0.0.1:{port}", "hostboard", port=tb.free_port(), threads=2)
    yield {"tracker": f"127.0.0.1:{port}", "key": "hostboard", "arch": "host", "server": server}
    tb.stop(server)
    tb.stop(tracker)


@pytest.fixture(scope="module")
def emulated_board():
    """A tracker and the emulated aarch64 board (qemu-user; sysroot built into the cache once)."""
    if emulation_missing():
        pytest.skip(emulation_missing())
    from targets import tvm_board as tb

    port = tb.free_port()
    tracker = tb.start_tracker("127.0.0.1", port)
    server = tb.start_emulated_server(f"127.0.0.1:{port}", "qemu", port=tb.free_port())
    yield {"tracker": f"127.0.0.1:{port}", "key": "qemu"}
    tb.stop(server)
    tb.stop(tracker)


class TestTvmArmContract(_Contract):
    """The shared target contract for tvm-arm, run against the host RPC server."""

    @pytest.fixture
    def target(self, host_board):
        return get_target("tvm-arm")

    @pytest.fixture
    def compiled(self, target, artifact, host_board):
        sessions = []
        board = {k: host_board[k] for k in ("tracker", "key", "arch")}

        def make(scenario: str, batch: int, **options):
            opts = target.parse_options({**board, **options})
            session = target.compile(artifact, batch=batch, scenario=scenario, threads=1, options=opts)
            sessions.append(session)
            return session

        yield make
        for session in sessions:
            session.close()


def test_tvm_arm_availability_names_the_missing_board(host_board):
    target = get_target("tvm-arm")
    board = {k: host_board[k] for k in ("tracker", "key", "arch")}
    assert target.availability(target.parse_options(board)).ok
    other = target.availability(target.parse_options({**board, "key": "rk3588"}))
    assert not other.ok and "no server with key 'rk3588'" in other.reason and "hostboard" in other.reason
    gone = target.availability(target.parse_options({**board, "tracker": "127.0.0.1:1"}))
    assert not gone.ok and "not reachable" in gone.reason
    assert "no board given" in target.availability(target.parse_options({"arch": "host"})).reason


def test_tvm_arm_host_board_records_artifact_machine_and_board_timer(host_board, artifact, net):
    target = get_target("tvm-arm")
    opts = target.parse_options({k: host_board[k] for k in ("tracker", "key", "arch")})
    session = target.compile(artifact, batch=1, scenario="SingleStream", threads=1, options=opts)
    info = session.info
    so = Path(info["artifact_so"])
    assert so.parent == Path(artifact.onnx_path).parent and so.suffix == ".so"
    assert info["elf_machine"] == "x86_64" and info["elf_type"] == "shared object"
    assert len(info["artifact_so_sha256"]) == 64 and info["board_facts"] == "harness.board_facts"
    machine = session.machine()
    assert machine["board"] == "hostboard" and machine["emulated"] is False and machine["arch"] == "x86_64"
    x = inputs(1, seed=7)
    assert np.abs(session.run(x) - reference(net, x)).max() <= PARITY
    for clock in ("auto", "time_evaluator"):
        s = target.compile(artifact, batch=1, scenario="SingleStream", threads=1, options={**opts, "timer": clock})
        timer = s.timer()
        lat = [timer(x) for _ in range(3)]
        assert all(0 < v < 5 for v in lat)
        assert ("time_once" in s.info["board_timer"]) == (clock == "auto")


# ----------------------------------------------------------------------------- through the harness cell

def _cell_spec(tmp: Path, target: str, options: dict, n: int = 8, rules=FAST_TIMING):
    """A real CellSpec for the tiny net: pool, eval set and PyTorch reference logits on disk."""
    from harness.engine.cell import CellSpec
    from harness.export import export_onnx

    netw = make_net()
    onnx_path = export_onnx(netw, tmp / "tiny.onnx", INPUT_SHAPE)
    x = inputs(n, seed=11)
    np.save(tmp / "pool.npy", x)
    np.save(tmp / "eval_x.npy", x)
    np.save(tmp / "eval_y.npy", reference(netw, x).argmax(1))
    np.save(tmp / "ref.npy", reference(netw, x))
    item = {"key": "tiny", "artifact": {"name": "tiny", "input_shape": list(INPUT_SHAPE),
                                        "onnx_path": str(onnx_path), "torch_path": None},
            "ref_logits_path": str(tmp / "ref.npy"), "graph_facts": True}
    return CellSpec(target=target, scenario="SingleStream", batch=1, threads=2, rules=asdict(rules),
                    pool_path=str(tmp / "pool.npy"), items=[item], eval_x_path=str(tmp / "eval_x.npy"),
                    eval_y_path=str(tmp / "eval_y.npy"), options=options)


@needs_tvm
def test_emulated_board_skips_batches_it_cannot_run_in_time(tmp_path):
    """On a board that reports emulated=True, a cell above ``emulated_max_batch`` is a skipped row
    naming the board and the reason (no time-out after minutes); batch 1 is measured as usual."""
    from harness.engine.cell import run_cell
    from targets import tvm_board as tb

    port = tb.free_port()
    tracker = tb.start_tracker("127.0.0.1", port)
    server = tb.start_host_server(f"127.0.0.1:{port}", "fakeqemu", port=tb.free_port(), threads=1, emulated=True)
    try:
        options = {"tracker": f"127.0.0.1:{port}", "key": "fakeqemu", "arch": "host"}
        spec = _cell_spec(tmp_path, "tvm-arm", options)
        offline = run_cell(replace(spec, scenario="Offline", batch=4))["items"][0]
        single = run_cell(spec)["items"][0]
        allowed = run_cell(replace(spec, scenario="Offline", batch=4,
                                   options={**options, "emulated_max_batch": 4}))["items"][0]
    finally:
        tb.stop(server)
        tb.stop(tracker)
    assert offline["status"] == "skipped", offline
    assert "batch 4 (Offline) is not run on an emulated board" in offline["error"]
    assert offline["emulated"] is True and offline["board"] == "fakeqemu"
    for row in (single, allowed):
        assert row["status"] == "ok" and row["emulated"] is True and row["parity_max_abs"] <= PARITY, row


@needs_emulation
@pytest.mark.slow
def test_emulated_aarch64_board_end_to_end(emulated_board, tmp_path):
    """The harness cell compiles the tiny net for aarch64, runs it on the emulated board through
    the tracker, and the row has parity <= 1e-3, an aarch64 .so and emulated=True."""
    from harness.engine.isolate import run_isolated

    spec = _cell_spec(tmp_path, "tvm-arm", dict(emulated_board))
    result = run_isolated(spec, tmp_path / "cell", timeout_s=600)
    assert result["status"] == "ok", result.get("error")
    row = result["items"][0]
    assert row["status"] == "ok", row.get("error")
    assert row["parity_max_abs"] <= PARITY and row["parity_top1_agree"] == 100.0
    assert row["arch"] == "aarch64" and row["emulated"] is True and row["board"] == "qemu"
    session = row["session"]
    assert session["elf_aarch64_so"] is True and session["elf_machine"] == "aarch64"
    assert Path(session["artifact_so"]).read_bytes()[:4] == b"\x7fELF"
    assert session["target"]["mtriple"] == "aarch64-linux-gnu"
    assert row["n"] >= FAST_TIMING.min_n and row["p50_ms"] > 0
    assert row["graph_facts"]["ops"]["relax.nn.conv2d"] == 3


@needs_tvm
def test_board_killed_mid_cell_is_an_error_not_a_hang(tmp_path):
    """Killing the board's server while a cell times it ends the cell with an error (or, for a
    hang, the cell time-out), never a stuck sweep."""
    from harness.engine.isolate import run_isolated
    from harness.timing import TimingRules
    from targets import tvm_board as tb

    port = tb.free_port()
    tracker = tb.start_tracker("127.0.0.1", port)
    server = tb.start_host_server(f"127.0.0.1:{port}", "victim", port=tb.free_port(), threads=1)
    try:
        long = TimingRules(warmup_min_s=0.0, warmup_min_n=2, min_s=300.0, min_n=8, max_s=300.0)
        spec = _cell_spec(tmp_path, "tvm-arm", {"tracker": f"127.0.0.1:{port}", "key": "victim",
                                                 "arch": "host"}, rules=long)

        killed = []

        def kill_when_busy():  # the session is held (queue not free) once the cell compiled
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                queue = tb.tracker_summary("127.0.0.1", port)["queue_info"].get("victim", {})
                if queue.get("free", 1) == 0 and (tmp_path / "tiny.onnx").exists():
                    time.sleep(8)  # inside the long timed loop
                    break
                time.sleep(0.5)
            tb.stop(server)
            killed.append(time.monotonic())

        killer = threading.Thread(target=kill_when_busy)
        killer.start()
        t0 = time.monotonic()
        result = run_isolated(spec, tmp_path / "cell", timeout_s=280)
        killer.join()
        elapsed = time.monotonic() - t0
    finally:
        tb.stop(server)
        tb.stop(tracker)
    statuses = [result["status"]] + [i.get("status") for i in result.get("items", [])]
    assert "error" in statuses or "timeout" in statuses, result
    assert elapsed < 290
    assert killed and time.monotonic() - killed[0] < 60, "the cell outlived the board by a minute"
    if result["status"] == "error":
        assert result["error"]
