"""The target contract, written once and run for every registered target, plus export checks.

HARNESS_TEST_TARGETS (a comma list, set by the tox envs) restricts which targets are exercised.
An unavailable target has every contract test skipped with its own reason.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import require_target, selected_targets
from harness.errors import UserError
from harness.export import export_onnx, file_sha256, onnx_summary
from targets import TARGETS, Artifact, get_target

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ("onnxruntime", "openvino", "tensorrt", "tvm")
INPUT_SHAPE = (3, 16, 16)
CLASSES = 10
CASES = [("SingleStream", 1), ("Offline", 4)]


class TinyNet(nn.Module):
    """A CIFAR-like conv net: three conv+BN+ReLU stages, global pooling, a linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def make_net() -> TinyNet:
    torch.manual_seed(0)
    net = TinyNet()
    for m in net.modules():  # non-trivial BN statistics, so folding BN into Conv is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def reference(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def inputs(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *INPUT_SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def net() -> TinyNet:
    return make_net()


@pytest.fixture(scope="module")
def artifact(net, tmp_path_factory) -> Artifact:
    folder = tmp_path_factory.mktemp("artifact")
    onnx_path = export_onnx(net, folder / "tiny.onnx", INPUT_SHAPE)
    torch.save(net, folder / "tiny.pt")
    return Artifact(name="tiny", input_shape=INPUT_SHAPE, onnx_path=onnx_path,
                    torch_path=folder / "tiny.pt")


@pytest.fixture(scope="module")
def imported_runtimes() -> list[str]:
    """Runtime modules present in sys.modules after a fresh process asks every target's availability."""
    code = ("import json, sys; from targets import TARGETS, get_target\n"
            "for n in TARGETS.names(): get_target(n).availability()\n"
            f"print(json.dumps(sorted(m for m in {RUNTIMES!r} if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(params=selected_targets())
def target(request):
    return require_target(request.param)


@pytest.fixture
def compiled(target, artifact):
    """A factory compiling the tiny artifact; every session it made is closed after the test."""
    sessions = []

    def make(scenario: str, batch: int, **options):
        session = target.compile(artifact, batch=batch, scenario=scenario, threads=1,
                                 options=options or None)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


class TestTargetContract:
    """What every target promises; parametrized over the registry, so new targets are covered."""

    def test_availability_imports_no_runtime(self, target, imported_runtimes):
        assert imported_runtimes == []

    def test_options_are_typed_and_validated_up_front(self, target):
        defaults = target.parse_options({})  # the defaults are always valid, and all filled in
        assert set(defaults) == {k.name for k in target.options if k.default is not None}
        for knob in target.options:
            assert knob.help and knob.describe().startswith(knob.name + "=")
            assert target.parse_options({knob.name: str(defaults[knob.name])})[knob.name] == defaults[knob.name]
        with pytest.raises(UserError, match="unknown option 'no_such_option'"):
            target.parse_options({"no_such_option": 1})

    def test_capabilities_are_known(self, target):
        from targets.base import CAPABILITIES

        assert set(target.capabilities) <= set(CAPABILITIES)

    def test_versions_are_strings(self, target):
        versions = target.versions()
        assert isinstance(versions, dict)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in versions.items())

    @pytest.mark.parametrize("scenario,batch", CASES)
    def test_output_shape_and_parity(self, compiled, net, scenario, batch):
        session = compiled(scenario, batch)
        x = inputs(batch, seed=1)
        y, ref = session.run(x), reference(net, x)
        session.sync()
        assert y.shape == (batch, CLASSES)
        assert np.abs(y - ref).max() < 1e-4
        assert (y.argmax(1) == ref.argmax(1)).all()

    @pytest.mark.parametrize("scenario,batch", CASES)
    def test_info_records_precision_and_threads(self, compiled, scenario, batch):
        info = compiled(scenario, batch).info
        assert "precision" in info and "threads" in info
        assert "timing_scope" in info

    def test_machine_timer_and_graph_facts(self, compiled):
        session = compiled("SingleStream", 1)
        machine = session.machine()
        assert {"node", "cpu", "cpu_count", "arch", "gpu", "board", "emulated"} <= set(machine)
        latency = session.timer()(inputs(1, seed=4))  # one query, its latency in seconds
        assert 0 < latency < 60
        facts = session.graph_facts()
        assert isinstance(facts, dict)
        if "ops" in facts:  # a backend that reports its optimised graph: every op counted
            assert all(isinstance(v, int) and v > 0 for v in facts["ops"].values())

    @pytest.mark.parametrize("scenario,batch", CASES)
    def test_outputs_do_not_alias(self, compiled, net, scenario, batch):
        session = compiled(scenario, batch)
        x1, x2 = inputs(batch, seed=2), inputs(batch, seed=3)
        y1 = session.run(x1)
        kept = y1.copy()
        y2 = session.run(x2)
        session.sync()
        np.testing.assert_array_equal(y1, kept)  # the second run did not overwrite the first result
        assert np.abs(y1 - reference(net, x1)).max() < 1e-4
        assert np.abs(y2 - reference(net, x2)).max() < 1e-4


def test_export_has_dynamic_batch_and_leaves_model_alone(tmp_path):
    import onnxruntime as ort

    net = make_net().train()
    path = export_onnx(net, tmp_path / "m.onnx", INPUT_SHAPE)
    assert net.training, "export must not switch the caller's model to eval mode"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # one file, no .onnx.data
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    net.eval()
    for batch in (1, 3):
        x = inputs(batch, seed=batch)
        y = sess.run(None, {"input": x})[0]
        assert y.shape == (batch, CLASSES)
        assert np.abs(y - reference(net, x)).max() < 1e-4


def test_onnx_summary_counts_convs(artifact):
    summary = onnx_summary(artifact.onnx_path)
    assert summary["conv_nodes"] == 3
    assert summary["conv_shapes"] == [[8, 3, 3, 3], [16, 8, 3, 3], [16, 16, 3, 3]]
    assert summary["opset"] == 18
    assert summary["nodes"] >= summary["conv_nodes"]


def test_file_sha256_is_stable(artifact):
    digest = file_sha256(artifact.onnx_path)
    assert len(digest) == 64 and digest == file_sha256(artifact.onnx_path)


@pytest.fixture
def ov_target():
    return require_target("ov-cpu")


def test_ort_graph_facts_come_from_its_optimised_graph(artifact):
    session = get_target("ort-cpu").compile(artifact, batch=1, scenario="SingleStream", threads=1)
    facts = session.graph_facts()
    # ORT_ENABLE_ALL rewrites the constant-weight convs into its NCHWc layout ops
    assert facts["ops"].get("com.microsoft.nchwc.Conv", 0) == 3 and "Conv" not in facts["ops"]
    # ...whose weights are reordered into channel blocks: 8 filters padded up to the block size
    assert [w[0] >= o for w, o in zip(facts["conv_weights"], (8, 16, 16))] == [True] * 3
    session.close()


def test_ov_graph_facts_count_runtime_ops(ov_target, artifact):
    session = ov_target.compile(artifact, batch=1, scenario="SingleStream", threads=1)
    facts = session.graph_facts()
    assert sum(n for op, n in facts["ops"].items() if "Convolution" in op) == 3
    assert facts["int8_convs"] == 0
    session.close()


def test_ov_records_real_fp32_by_default(ov_target, artifact):
    session = ov_target.compile(artifact, batch=1, scenario="SingleStream", threads=1)
    # Read back from the compiled model: OpenVINO would otherwise pick bf16 on AMX/BF16 CPUs.
    assert session.info["precision"] == "fp32"
    assert session.info["inference_precision_hint"] == "f32"
    assert session.info["hint"] == "LATENCY" and session.info["streams"] == 1
    session.close()


def test_ov_records_requested_bf16(ov_target, artifact):
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16 support, so OpenVINO would run f32")
    session = ov_target.compile(artifact, batch=4, scenario="Offline", threads=1,
                                options={"precision": "bf16"})
    assert session.info["precision"] == "bf16"
    assert session.info["precision_requested"] == "bf16"
    assert session.info["hint"] == "THROUGHPUT"
    session.close()
