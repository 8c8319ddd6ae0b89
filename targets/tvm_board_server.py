"""A TVM RPC server that also answers ``harness.board_facts`` (run as a script, on any board).

Standalone on purpose: it runs under the board's (or the emulated board's) Python, where only tvm
and the standard library are installed, so it imports nothing from the harness. It is TVM's own
``tvm.exec.rpc_server`` plus two global functions registered in the server's worker before it
forks a session, so a client can ask which machine it reached (arch, CPU, cores, emulated), and
``harness.time_once``, the board's own clock around one VM call::

    python tvm_board_server.py --tracker 127.0.0.1:9190 --key qemu [--emulated]

A real board may run plain ``python -m tvm.exec.rpc_server`` instead; ``tvm-arm`` then reports
the board from its options (emulated=False).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time


def _register_facts(emulated: bool) -> None:
    import tvm_ffi

    def facts() -> str:
        cpu = ""
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.lower().startswith(("model name", "cpu part", "hardware")):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        if emulated:  # qemu-user shows the host's /proc/cpuinfo
            cpu = f"qemu-user aarch64 (host: {cpu})"
        return json.dumps({"node": platform.node(), "arch": platform.machine(), "cpu": cpu,
                           "cpu_count": os.cpu_count() or 0, "emulated": emulated,
                           "num_threads": os.environ.get("TVM_NUM_THREADS", "")})

    def time_once(module, x) -> float:
        """The board's own time of one ``main`` call on an input already on the board."""
        main = module["main"]
        t0 = time.perf_counter()
        main(x)
        return time.perf_counter() - t0

    tvm_ffi.register_global_func("harness.board_facts", facts, override=True)
    tvm_ffi.register_global_func("harness.time_once", time_once, override=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--port-end", type=int, default=9199)
    p.add_argument("--tracker", required=True, help="HOST:PORT of the RPC tracker")
    p.add_argument("--key", required=True)
    p.add_argument("--emulated", action="store_true", help="report emulated=True (qemu-user)")
    p.add_argument("--threads", type=int, default=0,
                   help="TVM_NUM_THREADS for the sessions (0: leave TVM's default; x86 halves the cores)")
    args = p.parse_args()
    if args.threads > 0:  # read when the runtime's thread pool starts, in each session
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from functools import partial

    from tvm import rpc

    host, port = args.tracker.rsplit(":", 1)
    server = rpc.Server(args.host, args.port, args.port_end, key=args.key,
                        tracker_addr=(host, int(port)), silent=True,
                        server_init_callback=partial(_register_facts, args.emulated))
    server.proc.join()


if __name__ == "__main__":
    main()
