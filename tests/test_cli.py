"""The command line as a user runs it: one-line errors with exit status 2, results kept intact,
and the sweep, report, bench, inspect and ls commands end to end."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_targets


def harness(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=900)


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


BAD_INPUT = [
    (["sweep", "--models", "resnet21"], "did you mean: resnet20"),
    (["sweep", "--methods", "nnone"], "unknown method 'nnone'; did you mean: none"),
    (["sweep", "--targets", "tensorrt"], "unknown target 'tensorrt'; did you mean: trt"),
    (["sweep", "--targets", "trt"], "target trt is not available here: tensorrt is not installed"),
    (["sweep", "--budgets", "none:x=1"], "method none has no knob 'x'"),
    (["sweep", "--budgets", "nonsense"], "is not METHOD:KNOB=V1,V2"),
    (["sweep", "--data", "cifar10:/no/such/dir"], "/no/such/dir"),
    (["sweep", "--data", "imagenet"], "did you mean: imagefolder"),
    (["sweep", "--preset", "fast"], "unknown preset 'fast'"),
    (["sweep", "--checkpoint", "/no/such.pt"], "checkpoint not found"),
    (["sweep", "--bogus-flag"], "unrecognized arguments"),
    (["sweep", "--target-option", "ort-cpu.foo=1"], "ort-cpu: unknown option 'foo'"),
    (["sweep", "--target-option", "ort-cpu.graph_optimization=max"], "graph_optimization: 'max' not one of"),
    (["sweep", "--target-option", "nodot=1"], "is not TARGET.OPTION=VALUE"),
    (["report", "/no/such/dir"], "no results store"),
    (["bench", "/no/such.onnx"], "ONNX file not found"),
    (["inspect", "--model", "resnet20", "--method", "none", "--budget", "x=1"], "has no knob 'x'"),
]


@pytest.mark.parametrize("args,needle", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2(args, needle):
    assert_one_line_error(harness(*args), needle)


def test_malformed_config_and_unwritable_out(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("models = [")
    assert_one_line_error(harness("sweep", "--config", str(bad)), "malformed config")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(harness("sweep", "--out", str(blocker / "sub")), "is not writable")


def test_corrupt_checkpoint_fails_before_any_work(tmp_path):
    ckpt = tmp_path / "garbage.pt"
    ckpt.write_bytes(b"\x00not a checkpoint" * 10)
    out = tmp_path / "out"
    assert_one_line_error(harness("sweep", "--checkpoint", str(ckpt), "--out", str(out)),
                          "corrupt or unreadable checkpoint")
    assert not out.exists()


def _fast_config(tmp_path: Path, targets: list[str]) -> Path:
    cfg = tmp_path / "fast.toml"
    cfg.write_text(
        f'models = ["resnet20"]\nmethods = ["none"]\ntargets = {json.dumps(targets)}\npreset = "quick"\n'
        'scenarios = ["SingleStream"]\npool_size = 16\nprogress = false\n'
        "[timing]\nwarmup_min_s = 0.0\nwarmup_min_n = 2\nmin_s = 0.0\nmin_n = 8\nmax_s = 5.0\n"
        "[recipe]\nsteps = 90\nbatch_size = 64\n")
    return cfg


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_sweep_report_and_bad_rerun_keep_results(tmp_path, cpu_targets):
    out = tmp_path / "out"
    cfg = _fast_config(tmp_path, cpu_targets[:2])
    proc = harness("sweep", "--config", str(cfg), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "2 rows: 2 ok, 0 skipped, 0 errors, 0 timeouts" in proc.stdout
    # results.md names the command that made its rows, so a reader can regenerate them
    assert f"- Made by: `python -m harness sweep --config {cfg} --out {out}`" in (out / "results.md").read_text()
    before = {p.name: _digest(p) for p in out.iterdir() if p.is_file()}
    # a bad re-run into the same directory changes nothing
    assert_one_line_error(harness("sweep", "--config", str(cfg), "--out", str(out), "--models", "resnet99"),
                          "unknown model")
    assert {p.name: _digest(p) for p in out.iterdir() if p.is_file()} == before
    # report rebuilds the published files from the store alone
    csv = (out / "results.csv").read_text()
    for name in ("results.csv", "results.md", "pareto.png"):
        (out / name).unlink()
    proc = harness("report", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "results.csv").read_text() == csv
    assert (out / "results.md").exists() and (out / "pareto.png").exists()


def test_inspect_json_and_ls():
    proc = harness("inspect", "--model", "resnet56", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert {"model", "macs", "params", "size_bytes"} <= set(info)
    assert abs(info["macs"] - 125.49e6) / 125.49e6 < 0.005 and abs(info["params"] - 0.853e6) / 0.853e6 < 0.005
    assert info["size_bytes"] >= 4 * info["params"]
    proc = harness("ls")
    assert proc.returncode == 0
    for needle in ("methods:", "none", "targets:", "ort-cpu", "trt", "unavailable: tensorrt is not installed",
                   "models:", "resnet56", "vgg16_bn_imagenet"):
        assert needle in proc.stdout
    assert harness("ls", "targets").stdout.startswith("targets:")


@pytest.mark.slow
def test_bench_times_an_onnx_file(tmp_path):
    onnx_targets = require_targets("ort-cpu", "ov-cpu")
    from harness.export import export_onnx
    from harness.models import build_model

    path = export_onnx(build_model("resnet20").eval(), tmp_path / "m.onnx", (3, 32, 32))
    proc = harness("bench", str(path), "--targets", ",".join(onnx_targets), "--preset", "quick",
                   "--input-shape", "2,3,32,32", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["target"] for r in rows] == onnx_targets
    for r in rows:
        assert r["status"] == "ok" and r["batch"] == 2 and r["n"] >= 50 and r["p50_ms"] > 0
        assert r["precision"] == "fp32"
    text = harness("bench", str(path), "--targets", onnx_targets[0], "--preset", "quick").stdout
    assert text.splitlines()[0].split()[:4] == ["target", "status", "batch", "p50_ms"]
