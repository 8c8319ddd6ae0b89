"""Placeholder for TVM over RPC to a remote (ARM) board: registered, reported unavailable."""
from __future__ import annotations

from targets.tvm_cpu import TvmCpu


class TvmRpc(TvmCpu):
    key = "tvm-rpc"
    summary = "TVM Relax cross-build, run on a board through an RPC tracker (not implemented yet)"
