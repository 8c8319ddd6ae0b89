"""Placeholder for the TVM Relax host target: registered, reported unavailable until written."""
from __future__ import annotations

from typing import Any, Mapping

from targets.base import Artifact, Availability, Session, Target

NOT_YET = "adapter not implemented yet (planned: TVM Relax host build and RPC to ARM boards)"


class TvmCpu(Target):
    key = "tvm-cpu"
    summary = "TVM Relax, llvm host build (not implemented yet)"
    modules = ("tvm",)
    packages = ("apache-tvm", "apache-tvm-ffi")

    def availability(self) -> Availability:
        """Always unavailable, even where tvm is installed: there is no adapter yet."""
        return Availability(False, NOT_YET)

    def compile(self, artifact: Artifact, *, batch: int, scenario: str, threads: int,
                options: Mapping[str, Any] | None = None) -> Session:
        raise NotImplementedError(NOT_YET)
