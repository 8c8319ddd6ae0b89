"""ONNX Runtime on the CPU execution provider.

ORT_ENABLE_ALL is the default because its NCHWc layout transform makes constant-weight convs about
1.5x faster than ORT_ENABLE_EXTENDED on this CPU (backends.md pitfall 9); the level is an option so
that effect can be measured, and it is always recorded.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from harness.errors import UserError
from harness.knobs import Knob
from targets.base import Artifact, Session, Target

_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED",
           "basic": "ORT_ENABLE_BASIC", "disable": "ORT_DISABLE_ALL"}


@dataclass
class OrtSession(Session):
    session: Any = None
    input_name: str = "input"
    output_name: str = "logits"
    onnx_path: Any = None
    level: str = "ORT_ENABLE_ALL"
    threads: int = 1

    def run(self, x: np.ndarray) -> np.ndarray:
        """The first output for ``x``; ORT allocates a new array per call, so results never alias."""
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def graph_facts(self) -> dict[str, Any]:
        """Node counts of ORT's own optimised graph at this session's level (written by a second
        session with ``optimized_model_filepath``), and the constant conv weights' shapes."""
        import tempfile

        import onnxruntime as ort
        from harness.export import onnx_facts

        with tempfile.TemporaryDirectory() as tmp:
            so = _session_options(ort, self.level, self.threads)
            so.log_severity_level = 3  # "the optimised model is hardware specific": expected
            so.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
            ort.InferenceSession(str(self.onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
            return onnx_facts(Path(so.optimized_model_filepath))

    def close(self) -> None:
        self.session = None


class OrtCpu(Target):
    key = "ort-cpu"
    summary = "ONNX Runtime, CPUExecutionProvider, sequential, explicit intra-op threads"
    modules = ("onnxruntime",)
    packages = ("onnxruntime",)
    options = (Knob("graph_optimization", str, choices=tuple(_LEVELS), default="all",
                    help="ORT graph optimisation level (all = ORT_ENABLE_ALL, with the NCHWc layout)"),)
    capabilities = frozenset({"runtime_weight_shapes", "int8_qdq"})
    install_hint = "onnxruntime is a core dependency: reinstall with pip install -e ."

    def compile(self, artifact: Artifact, *, batch: int, scenario: str, threads: int,
                options: Mapping[str, Any] | None = None) -> OrtSession:
        """An InferenceSession on the ONNX artifact; info records the options that shape speed."""
        import onnxruntime as ort

        opts = self.parse_options(options or {})
        level = _LEVELS[opts["graph_optimization"]]
        if artifact.onnx_path is None:
            raise UserError(f"ort-cpu needs an ONNX file; artifact {artifact.name!r} has none")
        so = _session_options(ort, level, threads)
        sess = ort.InferenceSession(str(artifact.onnx_path), sess_options=so,
                                    providers=["CPUExecutionProvider"])
        session = OrtSession(batch=batch, session=sess, input_name=sess.get_inputs()[0].name,
                             output_name=sess.get_outputs()[0].name, onnx_path=artifact.onnx_path,
                             level=level, threads=threads)
        session.info.update({"precision": "fp32", "threads": threads, "inter_op_threads": 1,
                             "execution_mode": "ORT_SEQUENTIAL", "graph_optimization": level,
                             "providers": sess.get_providers(), "scenario": scenario,
                             "timing_scope": "host numpy in -> numpy out"})
        return session


def _session_options(ort: Any, level: str, threads: int) -> Any:
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    # intra-op threads default to the physical core count; set them so the row says what ran.
    so.intra_op_num_threads = threads
    # A CNN is a chain: parallel node execution adds scheduling cost and no speed.
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


# ----------------------------------------------------------------------------- ORT's quantiser
def quantize_qdq(float_path: Path, out_path: Path, images: np.ndarray, input_name: str, *,
                 weight_scales: Mapping[str, np.ndarray], exclude: list[str]) -> None:
    """ONNX Runtime's own static quantiser (``onnxruntime.quantization.quantize_static``) on
    ``float_path``, written to ``out_path`` in QDQ format: int8 symmetric per-channel weights,
    uint8 asymmetric activations, MinMax calibration over ``images`` (N x C x H x W, batches of
    64, fed as the graph input ``input_name``), without the int32-bias weight-scale adjustment. ``weight_scales`` forces the scale of the
    named weight initializers (one per output channel, zero point 0); nodes named in ``exclude``
    stay in float. It lives here, not in a method, because calibration runs ONNX Runtime and
    runtimes are imported only under ``targets/``; DeepShift's int8 variant calls it."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    overrides = {name: [{"axis": 0, "scale": np.float32(s), "zero_point": np.int8(0)} for s in scale]
                 for name, scale in weight_scales.items()}
    # quantize_static logs a root WARNING asking for onnxruntime's pre-processing (shape inference
    # and graph clean-up): the exporter's graph needs neither, and the warning would land in every
    # sweep log, so the root logger is raised around the call.
    with _root_log_level(logging.ERROR):
        quantize_static(str(float_path), str(out_path), _Images(images, input_name),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(exclude),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                       "TensorQuantOverrides": overrides,
                                       "QDQDisableWeightAdjustForInt32Bias": True})


class _Images:
    """onnxruntime.quantization.CalibrationDataReader over an image array, in batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = 64):
        self._batches = iter([{input_name: images[i:i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@contextlib.contextmanager
def _root_log_level(level: int):
    root = logging.getLogger()
    old = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(old)
