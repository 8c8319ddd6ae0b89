"""OpenVINO on the CPU plugin, from the ONNX artifact reshaped to a static batch.

Precision is always set explicitly: on CPUs with AMX or AVX512-BF16 OpenVINO silently runs bf16
(6x faster here, logits off by ~2e-2; backends.md pitfall 1). After compiling, the compiled model's
own properties are read back into ``info``, so a row records what really ran, not what was asked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from harness.errors import UserError
from harness.knobs import Knob
from targets.base import Artifact, Session, Target

# Accepted spellings -> OpenVINO element type name.
_PRECISIONS = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}
# OpenVINO's type names (Type.to_string()) -> the harness's precision names.
_OV_TO_HARNESS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


@dataclass
class OvSession(Session):
    compiled: Any = None
    request: Any = None

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits for ``x``, copied out of the request's output buffer (reused by the next call)."""
        # share_inputs/outputs avoid two hidden copies; the explicit copy below keeps results
        # from aliasing the request's buffer.
        result = self.request.infer({0: x}, share_inputs=True, share_outputs=True)
        return np.array(result[0], copy=True)

    def graph_facts(self) -> dict[str, Any]:
        """Op counts of the CPU plugin's runtime model (what really runs, after fusion), and how
        many of its convolutions run in int8."""
        ops: dict[str, int] = {}
        int8_convs = 0
        for op in self.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
            prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else ""
            ops[kind] = ops.get(kind, 0) + 1
            int8_convs += "Convolution" in kind and prec.lower() in ("i8", "u8")
        return {"ops": ops, "int8_convs": int8_convs}

    def close(self) -> None:
        self.request = None
        self.compiled = None


class OvCpu(Target):
    key = "ov-cpu"
    summary = "OpenVINO CPU plugin, static batch, explicit precision/threads/streams"
    modules = ("openvino",)
    packages = ("openvino",)
    options = (
        Knob("precision", str, choices=tuple(_PRECISIONS), default="fp32",
             help="inference precision (OpenVINO defaults to bf16 on AMX/AVX512-BF16 CPUs; forced here)"),
        Knob("streams", str, default="1", help="'auto' or a positive integer number of CPU streams"),
    )
    capabilities = frozenset({"int8_qdq"})  # no run-time weight shapes: "Doesn't support dynamic weights shape"
    install_hint = "install the ov extra: pip install -e '.[ov]'"

    def parse_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        opts = super().parse_options(raw)
        streams = opts["streams"]
        if streams != "auto" and not (streams.isdigit() and int(streams) >= 1):
            raise UserError(f"ov-cpu: streams must be 'auto' or a positive integer, got {streams!r}")
        return opts

    def compile(self, artifact: Artifact, *, batch: int, scenario: str, threads: int,
                options: Mapping[str, Any] | None = None) -> OvSession:
        """Compile the ONNX graph for ``batch`` on CPU; info holds the compiled model's properties."""
        import openvino as ov

        opts = self.parse_options(options or {})
        if artifact.onnx_path is None:
            raise UserError(f"ov-cpu needs an ONNX file; artifact {artifact.name!r} has none")
        ov_type = _PRECISIONS[opts["precision"]]
        core = ov.Core()
        model = core.read_model(str(artifact.onnx_path))
        # A static shape lets the CPU plugin pick blocked layouts and kernels for this batch.
        model.reshape({model.inputs[0].get_any_name(): [batch, *artifact.input_shape]})
        config = _config(ov, scenario, threads, ov_type, opts["streams"])
        compiled = core.compile_model(model, "CPU", config)
        session = OvSession(batch=batch, compiled=compiled, request=compiled.create_infer_request())
        session.info.update(_read_back(compiled, opts["precision"], threads, scenario))
        return session


def _config(ov: Any, scenario: str, threads: int, ov_type: str, streams: Any) -> dict[Any, Any]:
    import openvino.properties as props
    import openvino.properties.hint as hints

    # SingleStream is a latency: LATENCY hint (benchmark_app's THROUGHPUT default is not one).
    # Offline uses the THROUGHPUT hint but still one stream by default: run() drives a single
    # synchronous request, and THROUGHPUT's automatic 2 streams here gave that request only half
    # the threads (resnet56 batch 64: ~62 ms with 2 streams vs ~32 ms with 1). "streams" overrides.
    mode = hints.PerformanceMode.LATENCY if scenario == "SingleStream" else hints.PerformanceMode.THROUGHPUT
    config = {hints.performance_mode: mode, props.inference_num_threads: threads,
              hints.inference_precision: getattr(ov.Type, ov_type)}
    if streams != "auto":
        config[props.num_streams] = int(streams)
    return config


def _read_back(compiled: Any, requested: str, threads: int, scenario: str) -> dict[str, Any]:
    """What the compiled model reports it will run with (not what was requested)."""
    import openvino.properties as props
    import openvino.properties.hint as hints

    ov_precision = compiled.get_property(hints.inference_precision).to_string()
    return {"precision": _OV_TO_HARNESS.get(ov_precision, ov_precision),
            "precision_requested": requested,
            "inference_precision_hint": ov_precision,
            "threads": int(compiled.get_property(props.inference_num_threads)),
            "threads_requested": threads,
            "streams": int(compiled.get_property(props.num_streams)),
            "hint": str(compiled.get_property(hints.performance_mode)),
            "device": "CPU", "scenario": scenario, "infer_requests": 1,
            "timing_scope": "host numpy in -> numpy out (sync infer, output copied)"}
