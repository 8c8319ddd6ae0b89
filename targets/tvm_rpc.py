"""Placeholder for TVM over RPC to a remote (ARM) board: registered, reported unavailable."""
from __future__ import annotations

from typing import Any, Mapping

from targets.base import Artifact, Availability, Session, Target
from targets.tvm_cpu import NOT_YET


class TvmRpc(Target):
    key = "tvm-rpc"
    summary = "TVM Relax cross-build, run on a board through an RPC tracker (not implemented yet)"
    modules = ("tvm",)
    packages = ("apache-tvm", "apache-tvm-ffi")

    def availability(self) -> Availability:
        """Always unavailable, even where tvm is installed: there is no adapter yet."""
        return Availability(False, NOT_YET)

    def compile(self, artifact: Artifact, *, batch: int, scenario: str, threads: int,
                options: Mapping[str, Any] | None = None) -> Session:
        raise NotImplementedError(NOT_YET)
