"""Plugins that misbehave on purpose, to test that errors become rows (imported by the cell
process through their "module:Class" entry, so they must live in an importable module)."""
from __future__ import annotations

import os
import time

import numpy as np

from methods.base import Compressed, Deployable, Knob, Method
from targets.base import NotMeasured, Session, Target


class CrashTarget(Target):
    key = "test-crash"
    summary = "aborts the process while compiling (a native-runtime segfault stand-in)"
    needs = "torch"

    def compile(self, artifact, *, batch, scenario, threads, options=None):
        os.abort()


class _Hang(Session):
    def run(self, x: np.ndarray) -> np.ndarray:
        time.sleep(3600)
        return x


class HangTarget(Target):
    key = "test-hang"
    summary = "never returns from run"
    needs = "torch"

    def compile(self, artifact, *, batch, scenario, threads, options=None):
        return _Hang(batch=batch, info={"precision": "fp32"})


class FailingMethod(Method):
    name = "test-fail"
    summary = "raises during apply"
    produces = "smaller"
    knobs = (Knob("ratio", float, (0.5,), low=0.0, high=1.0),)

    def apply(self, ctx, knobs):
        raise RuntimeError("deliberate failure in apply")


class PickyMethod(Method):
    name = "test-picky"
    summary = "runs only on torch-eager (needs run-time weight shapes)"
    produces = "dense"

    def apply(self, ctx, knobs):
        return Compressed([Deployable(ctx.model, requires=frozenset({"runtime_weight_shapes"}),
                                      requires_why="this test method says so")])


class ProbingMethod(Method):
    name = "test-probe"
    summary = "measures its model's latency on a target through the sweep's probe"
    produces = "dense"

    def apply(self, ctx, knobs):
        fraction = ctx.measure_latency(ctx.model, "ort-cpu")  # the dense network against itself
        return Compressed([Deployable(ctx.model)], extra={"probe_fraction": fraction})


class CopyMethod(Method):
    name = "test-copy"
    summary = "the baseline unchanged, once per budget (cheap budgets for engine tests)"
    produces = "dense"
    knobs = (Knob("ratio", float, (0.25, 0.5, 0.75), low=0.0, high=1.0),)

    def apply(self, ctx, knobs):
        return Compressed([Deployable(ctx.model)])


class EmulatedBoardTarget(Target):
    """torch-eager on the host, reporting itself as an emulated board (as tvm-arm does on qemu):
    batch 1 only; larger batches are declined with NotMeasured."""
    key = "test-emulated"
    summary = "torch-eager that says it is an emulated board"
    needs = "torch"

    def compile(self, artifact, *, batch, scenario, threads, options=None):
        from harness.provenance import host_machine
        from targets import get_target

        board = {**host_machine(), "board": "fakeqemu", "emulated": True}
        if batch > 1:
            raise NotMeasured(f"batch {batch} ({scenario}) is not run on an emulated board", machine=board)
        session = get_target("torch-eager").compile(artifact, batch=batch, scenario=scenario, threads=threads,
                                                    options={"device": "cpu"})
        session.machine = lambda: board
        return session
