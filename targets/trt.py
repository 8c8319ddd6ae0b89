"""TensorRT 10 on a CUDA GPU, engine built from the ONNX artifact.

UNTESTED HERE: the project machine has no GPU and cannot install ``tensorrt`` (its wheels pull
libraries from NVIDIA's index, which it cannot reach). This adapter is written against the
documented TensorRT 10 Python API (Builder, OnnxParser, build_serialized_network, Runtime,
IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3) and is skipped cleanly
wherever TensorRT or a CUDA device is missing. Device buffers and the stream are torch CUDA
objects, so no pycuda / cuda-python dependency is needed.

Timing scope of ``run``: host numpy in -> H2D copy -> enqueueV3 -> D2H copy -> numpy out, all on one
non-default stream; its ``timer`` measures the device time of that sequence with CUDA events.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from harness.errors import UserError
from harness.knobs import Knob
from harness.timing import CudaEventTimer, Timer
from targets.base import Artifact, Availability, Session, Target

NO_TRT = ("tensorrt is not installed (its wheels pull libraries from NVIDIA's index, "
          "which this machine cannot reach)")
_PRECISIONS = ("fp32", "tf32", "fp16")
_DEFAULT_WORKSPACE_MIB = 1024


@dataclass
class TrtSession(Session):
    engine: Any = None
    context: Any = None
    stream: Any = None
    inp: Any = None  # torch CUDA tensor bound to the engine's input
    out: Any = None  # torch CUDA tensor bound to the engine's output

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits for ``x`` as a fresh host array (copied out of the reused device buffer)."""
        import torch

        with torch.cuda.stream(self.stream):
            # Enqueued on self.stream, so the engine cannot start before the input has landed.
            self.inp.copy_(torch.from_numpy(x))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            # A blocking D2H copy on the same stream: returns once the logits are on the host.
            return self.out.to("cpu", copy=True).numpy()

    def sync(self) -> None:
        # Only our stream carries work; waiting on it (not the device) avoids unrelated waits.
        self.stream.synchronize()

    def timer(self) -> Timer:
        return CudaEventTimer(self.run, self.stream)

    def close(self) -> None:
        self.context = self.engine = self.inp = self.out = None


class TensorRT(Target):
    key = "trt"
    summary = "NVIDIA TensorRT 10 engine from ONNX (static batch profile), CUDA"
    device = "cuda"
    modules = ("tensorrt",)
    packages = ("tensorrt",)

    options = (
        Knob("precision", str, choices=_PRECISIONS, default="fp32",
             help="fp32 clears TF32 (IEEE fp32 like other targets); tf32; fp16"),
        Knob("workspace_mib", int, low=1, high=1 << 20, default=_DEFAULT_WORKSPACE_MIB,
             help="builder workspace memory pool limit"),
    )
    capabilities = frozenset({"int8_qdq"})
    resources = {"GPU": 1}
    install_hint = "install TensorRT 10 (pip install -e '.[trt]', needs NVIDIA's package index) on a CUDA machine"

    def availability(self, options: Mapping[str, Any] | None = None) -> Availability:
        """Needs the tensorrt module (probed, not imported) and a CUDA device."""
        if importlib.util.find_spec("tensorrt") is None:
            return Availability(False, NO_TRT)
        import torch  # core dependency; the CUDA probe does not load TensorRT

        if not torch.cuda.is_available():
            return Availability(False, "no CUDA device")
        return Availability(True)

    def compile(self, artifact: Artifact, *, batch: int, scenario: str, threads: int,
                options: Mapping[str, Any] | None = None) -> TrtSession:
        """Build an engine for exactly ``batch`` samples, bind torch CUDA buffers to it."""
        import tensorrt as trt
        import torch

        opts = self.parse_options(options or {})
        precision = opts["precision"]
        if artifact.onnx_path is None:
            raise UserError(f"trt needs an ONNX file; artifact {artifact.name!r} has none")
        shape = (batch, *artifact.input_shape)
        workspace = opts["workspace_mib"]
        logger = trt.Logger(trt.Logger.WARNING)
        plan, build_info = _build(trt, logger, Path(artifact.onnx_path), shape, precision, workspace)
        session = _bind(trt, torch, trt.Runtime(logger), plan, shape, batch)
        session.info.update(build_info)
        session.info.update(_info(trt, torch, precision, threads, scenario, workspace, shape))
        return session


def _build(trt: Any, logger: Any, onnx_path: Path, shape: tuple[int, ...], precision: str,
           workspace_mib: int) -> tuple[Any, dict[str, Any]]:
    """Parse the ONNX file and build a serialized engine (plan); returns it with build facts."""
    builder = trt.Builder(logger)
    # TensorRT 10 supports explicit batch only; the EXPLICIT_BATCH flag is deprecated and ignored.
    network = builder.create_network(0)
    _parse(trt, network, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    _set_precision(trt, config, precision)
    input_name = network.get_input(0).name
    profile = builder.create_optimization_profile()
    # min = opt = max: the engine is tuned for, and only accepts, this session's batch.
    profile.set_shape(input_name, shape, shape, shape)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT could not build an engine for {onnx_path} (see its log)")
    return plan, {"tf32": bool(config.get_flag(trt.BuilderFlag.TF32)),
                  "fp16": bool(config.get_flag(trt.BuilderFlag.FP16)),
                  "builder_optimization_level": getattr(config, "builder_optimization_level", None),
                  "profile": {"input": input_name, "min": list(shape), "opt": list(shape),
                              "max": list(shape)}}


def _parse(trt: Any, network: Any, logger: Any, onnx_path: Path) -> None:
    """Fill ``network`` from the ONNX file; report every parser error on failure."""
    parser = trt.OnnxParser(network, logger)
    # path= lets the parser find external weight files next to the model, should there be any.
    if not parser.parse(onnx_path.read_bytes(), path=str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT ONNX parser rejected {onnx_path}: {errors}")


def _set_precision(trt: Any, config: Any, precision: str) -> None:
    # TF32 is on by default in TensorRT; "fp32" clears it so it means IEEE fp32 like other targets.
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)


def _bind(trt: Any, torch: Any, runtime: Any, plan: Any, shape: tuple[int, ...],
          batch: int) -> TrtSession:
    """Deserialize the plan, create a context, and bind one input and one output buffer."""
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise RuntimeError("TensorRT could not deserialize the engine it just built")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if len(inputs) != 1 or not outputs:
        raise RuntimeError(f"expected one input and at least one output, got {inputs} / {outputs}")
    context.set_input_shape(inputs[0], shape)
    inp = torch.empty(shape, dtype=_torch_dtype(trt, torch, engine.get_tensor_dtype(inputs[0])),
                      device="cuda")
    out_shape = tuple(context.get_tensor_shape(outputs[0]))
    out = torch.empty(out_shape, dtype=_torch_dtype(trt, torch, engine.get_tensor_dtype(outputs[0])),
                      device="cuda")
    context.set_tensor_address(inputs[0], inp.data_ptr())
    context.set_tensor_address(outputs[0], out.data_ptr())
    # A non-default stream: enqueueV3 on the legacy default stream adds hidden synchronizations.
    stream = torch.cuda.Stream()
    return TrtSession(batch=batch, engine=engine, context=context, stream=stream, inp=inp, out=out)


def _torch_dtype(trt: Any, torch: Any, dtype: Any) -> Any:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    if dtype not in table:
        raise RuntimeError(f"unsupported TensorRT I/O dtype {dtype}")
    return table[dtype]


def _info(trt: Any, torch: Any, precision: str, threads: int, scenario: str, workspace_mib: int,
          shape: tuple[int, ...]) -> dict[str, Any]:
    return {"precision": precision, "threads": threads, "device": "cuda",
            "gpu": torch.cuda.get_device_name(), "tensorrt": trt.__version__,
            "workspace_mib": workspace_mib, "input_shape": list(shape), "scenario": scenario,
            "stream": "non-default torch CUDA stream",
            "timing_scope": "numpy in -> H2D copy -> execute_async_v3 -> D2H copy -> numpy out; "
                            "timed by CUDA events on the engine's stream around that sequence"}
