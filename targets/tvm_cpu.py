"""TVM Relax on the host CPU: ONNX -> Relax (static batch) -> llvm build for this CPU -> Relax VM.

Threads are explicit (backends.md pitfall 3: TVM halves the core count on x86): the build target
says ``num-cores`` = threads and the runtime's pool is configured to the same count (the cell
process also gets ``TVM_NUM_THREADS`` from the environment).

Untuned TVM has no CPU conv schedules (pitfall 5: resnet20 29.6 ms vs 0.3-0.5 ms in ORT), so an
untuned row is a cold-start number, not a speed. ``tune_trials=N`` tunes each conv task with N
MetaSchedule trials into the shared database (``targets.tvm_common``); ``Session.info["tune_s"]``
is the tuning time this compile spent (0 when every task was already in the database).

Capabilities, decided from real tries with apache-tvm 0.27 (tests/test_tvm.py repeats them):
- int8_qdq: not declared. Relax's ONNX frontend imports DeepShift's QDQ graph and runs it
  correctly (parity 1e-6 against ORT), but keeps QuantizeLinear/DequantizeLinear as
  relax.quantize/dequantize around float convs: there are no int8 conv kernels, which is what
  the capability promises.
- runtime_weight_shapes: not declared. FTWT's in-graph channel selection does not import:
  ``from_onnx`` fails with "Node /blocks.0/conv1/ScatterElements cannot handle ShapeExpr inputs"
  (the mask's indices come from Shape/ConstantOfShape chains that Relax keeps symbolic), so the
  row is ``skipped`` with that reason instead of an error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from harness.errors import UserError
from harness.knobs import Knob
from targets.base import Artifact, Session, Target

TUNE_OPTIONS = (
    Knob("tune_trials", int, low=0, high=100_000, default=0,
         help="MetaSchedule trials per tuned task (0 = untuned); tuned tasks are kept in one shared database"),
    Knob("tune_ops", str, choices=("conv", "all"), default="conv",
         help="which tasks to tune: conv tasks only (most of a CNN's time), or every task"),
)


@dataclass
class TvmSession(Session):
    vm: Any = None
    dev: Any = None
    facts: dict[str, Any] | None = None

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits for ``x``: copied into a TVM tensor, run by the Relax VM, copied back."""
        import tvm

        return self.vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x), self.dev)).numpy()

    def graph_facts(self) -> dict[str, Any]:
        """Relax ops and conv weights after the inference passes and constant folding, and the
        TIR kernels ``main`` calls after fusion (``kernels``)."""
        return dict(self.facts or {})

    def close(self) -> None:
        self.vm = None


class TvmCpu(Target):
    key = "tvm-cpu"
    summary = "TVM Relax from ONNX, llvm build for this CPU (mcpu from the host), Relax VM"
    modules = ("tvm",)
    packages = ("apache-tvm", "apache-tvm-ffi")
    options = TUNE_OPTIONS
    install_hint = "pip install -e '.[tvm]'"
    # Measured on the project's 2 cores (clean clone, quick preset): untuned resnet20 is 51 ms at
    # SingleStream against ORT's 0.84 ms, and an Offline query at batch 64 takes 3.2 s, so one
    # variant's two cells cost 3 min and an Offline cell of the next variant hit the 300 s time-out.
    opt_in = ("untuned TVM is about 60x slower than ORT here and its batch-64 Offline cells take "
              "minutes; name it in --targets (with tvm-cpu.tune_trials=N for a fair number)")

    def compile(self, artifact: Artifact, *, batch: int, scenario: str, threads: int,
                options: Mapping[str, Any] | None = None) -> TvmSession:
        """Import, (tune,) build and load on the host; info records target, threads and tuning."""
        import tvm
        from tvm import relax
        from tvm.target import codegen

        from targets import tvm_common as tc

        opts = self.parse_options(options or {})
        if artifact.onnx_path is None:
            raise UserError(f"tvm-cpu needs an ONNX file; artifact {artifact.name!r} has none")
        runtime_threads = tc.set_threads(threads)
        target = tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": threads})
        mod, _ = tc.import_onnx(artifact.onnx_path, batch)
        mod, facts = tc.prepare(mod, target)
        info: dict[str, Any] = {"tune_s": 0.0, "tune_trials_per_task": 0}
        if opts["tune_trials"] > 0:
            mod, info = tc.tune(mod, target, trials=opts["tune_trials"], ops=opts["tune_ops"])
        vm = relax.VirtualMachine(tc.build(mod, target), tvm.cpu())
        session = TvmSession(batch=batch, vm=vm, dev=tvm.cpu(), facts=facts)
        session.info.update({"precision": "fp32", "threads": threads, "runtime_threads": runtime_threads,
                             "target": tc.target_dict(target), "tvm": tvm.__version__, "scenario": scenario,
                             "timing_scope": "host numpy in -> numpy out (copies included)", **info})
        return session
