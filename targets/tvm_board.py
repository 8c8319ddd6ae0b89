"""TVM RPC boards for ``tvm-arm``: a tracker on loopback, an emulated aarch64 board, and the sysroot
the emulated board runs from.

Nothing here imports tvm: the tracker and the servers are subprocesses
(``python -m tvm.exec.rpc_tracker``, ``targets/tvm_board_server.py``), and the tracker is queried
with its own small JSON protocol over a socket, so ``tvm-arm``'s availability check stays cheap.

The emulated board is an aarch64 Python 3.11 with the aarch64 TVM wheels, run by ``qemu-aarch64``
from a sysroot built once into the cache (Debian arm64 packages unpacked with ``dpkg -x``, wheels
installed with ``pip install --target``). There is no binfmt_misc in this container and TVM's RPC
server re-spawns ``sys.executable`` for its worker, so ``sys.executable`` points at a wrapper
script that runs the aarch64 interpreter under qemu (set in a ``sitecustomize.py``). Emulated
latencies mean nothing; rows timed on it say ``emulated=True``.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

TVM_WHEELS = ("apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "numpy", "ml_dtypes",
              "typing_extensions", "psutil", "cloudpickle", "tornado")
PLATFORM = "manylinux_2_28_aarch64"
PY_VERSION = "3.11"
# The aarch64 Python 3.11 and the shared libraries it and the TVM wheel load (Debian bookworm).
ARM64_DEBS = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6",
              "libgcc-s1", "libstdc++6", "libgomp1", "libexpat1", "zlib1g", "libffi8", "libssl3",
              "libbz2-1.0", "liblzma5", "libsqlite3-0", "libncursesw6", "libtinfo6",
              "libreadline8", "libuuid1", "libcrypt1", "libdb5.3", "libnsl2", "libtirpc3",
              "libgssapi-krb5-2", "libkrb5-3", "libk5crypto3", "libkrb5support0", "libcom-err2",
              "libkeyutils1", "media-types")
SERVER_SCRIPT = Path(__file__).with_name("tvm_board_server.py")
_TRACKER_MAGIC = 0x2F271
_SUMMARY = 6


def cache_dir() -> Path:
    """$HARNESS_CACHE, else ~/.cache/compress-harness (as harness.engine.baseline.cache_dir)."""
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "compress-harness"))


def sysroot_dir() -> Path:
    """Where the aarch64 sysroot lives: one per TVM wheel set, shared by every sweep."""
    tag = "-".join(w.split("==")[1] for w in TVM_WHEELS[:2])
    return cache_dir() / "tvm-board" / f"sysroot-aarch64-py{PY_VERSION}-tvm{tag}"


def parse_addr(text: str, default_port: int = 9190) -> tuple[str, int]:
    """``HOST:PORT`` (or ``HOST``) as a (host, port) pair; ValueError when malformed."""
    host, _, port = text.strip().rpartition(":") if ":" in text else (text.strip(), "", "")
    if not host:
        raise ValueError(f"not HOST:PORT: {text!r}")
    return host, int(port) if port else default_port


# ---------------------------------------------------------------- tracker queries (no tvm import)

def tracker_summary(host: str, port: int, timeout: float = 5.0) -> dict:
    """The tracker's summary ({"queue_info": {key: {"free", "pending"}}, "server_info": [...]}),
    spoken in its own protocol (magic, then length-prefixed JSON); OSError when unreachable."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack("<i", _TRACKER_MAGIC))
        if struct.unpack("<i", _recv(sock, 4))[0] != _TRACKER_MAGIC:
            raise OSError(f"{host}:{port} is not a TVM RPC tracker")
        body = json.dumps([_SUMMARY]).encode()
        sock.sendall(struct.pack("<i", len(body)) + body)
        size = struct.unpack("<i", _recv(sock, 4))[0]
        code, value = json.loads(_recv(sock, size))
    if code != 0:
        raise OSError(f"tracker {host}:{port} answered {code}")
    return value


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed by the tracker")
        buf += chunk
    return buf


def tracker_keys(host: str, port: int, timeout: float = 5.0) -> list[str]:
    """Keys of the servers registered with the tracker (busy ones included)."""
    info = tracker_summary(host, port, timeout)["server_info"]
    return sorted({s["key"].split(":", 1)[1] for s in info if ":" in s.get("key", "")})


def check_board(tracker: str, key: str, timeout: float = 5.0) -> str:
    """'' when the tracker at ``tracker`` is reachable and holds a server under ``key``, else why not."""
    try:
        host, port = parse_addr(tracker)
        keys = tracker_keys(host, port, timeout)
    except (OSError, ValueError) as exc:
        return f"RPC tracker {tracker} not reachable: {exc}"
    if key not in keys:
        held = ", ".join(keys) or "none"
        return f"RPC tracker {tracker} holds no server with key {key!r} (keys: {held})"
    return ""


def wait_for(pred: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None,
             period: float = 0.2) -> None:
    """Poll ``pred`` until true; RuntimeError naming ``what`` after ``timeout`` s or when ``proc`` dies."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        time.sleep(period)
    raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for tests and throw-away trackers)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- processes

def start_tracker(host: str = "127.0.0.1", port: int = 9190, *, wait_s: float = 30.0,
                  log: Path | None = None) -> subprocess.Popen:
    """A TVM RPC tracker on ``host:port`` (loopback unless told otherwise), ready when returned."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host,
                             "--port", str(port), "--port-end", str(port + 1), "--silent"],
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: _answers(host, port), wait_s, f"RPC tracker on {host}:{port}", proc)
    return proc


def _answers(host: str, port: int) -> bool:
    try:
        tracker_summary(host, port, timeout=1.0)
        return True
    except OSError:
        return False


def start_host_server(tracker: str, key: str, *, host: str = "127.0.0.1", port: int = 9090,
                      threads: int = 0, wait_s: float = 60.0, log: Path | None = None,
                      emulated: bool = False) -> subprocess.Popen:
    """A TVM RPC server run by this (host) Python, registered with ``tracker`` under ``key``:
    the fast stand-in for a board (tests, and ``tvm-arm`` with ``arch=host``). ``emulated``: it
    reports emulated=True, as the qemu board does (tests of what the harness does with one)."""
    return _start_server([sys.executable], tracker, key, host=host, port=port, emulated=emulated,
                         threads=threads or (os.cpu_count() or 1), wait_s=wait_s, log=log, env=dict(os.environ))


def start_emulated_server(tracker: str, key: str, *, host: str = "127.0.0.1", port: int = 9090,
                          sysroot: Path | None = None, threads: int = 0, wait_s: float = 300.0,
                          log: Path | None = None) -> subprocess.Popen:
    """An aarch64 TVM RPC server under qemu-aarch64 (sysroot from the cache, built when missing),
    registered with ``tracker`` under ``key``; ready (the tracker holds the key) when returned."""
    root = build_sysroot(sysroot)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(root / "home"), "PYTHONNOUSERSITE": "1", "LANG": "C.UTF-8"}
    return _start_server([str(root / "python-aarch64")], tracker, key, host=host, port=port, emulated=True,
                         threads=threads or (os.cpu_count() or 1), wait_s=wait_s, log=log, env=env)


def _start_server(python: list[str], tracker: str, key: str, *, host: str, port: int, emulated: bool,
                  threads: int, wait_s: float, log: Path | None, env: dict) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL
    cmd = python + [str(SERVER_SCRIPT), "--host", host, "--port", str(port), "--port-end", str(port + 100),
                    "--tracker", tracker, "--key", key, "--threads", str(threads)]
    if emulated:
        cmd.append("--emulated")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    wait_for(lambda: check_board(tracker, key, timeout=2.0) == "", wait_s,
             f"RPC server {key!r} registering with {tracker}", proc, period=0.5)
    return proc


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a server or tracker started here and the children in its process group."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait(timeout)


# ---------------------------------------------------------------- the aarch64 sysroot

def emulation_missing() -> str:
    """'' when this machine can run the emulated board (qemu-aarch64, dpkg and apt-get, or a built
    sysroot), else what is missing and how to install it."""
    if shutil.which("qemu-aarch64") is None:
        return "qemu-aarch64 not found (apt-get install qemu-user)"
    if (sysroot_dir() / ".complete").exists():
        return ""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return "no aarch64 sysroot in the cache and no apt-get/dpkg to build one"
    archs = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True).stdout
    if "arm64" not in archs.split():
        return "dpkg has no arm64 architecture (dpkg --add-architecture arm64 && apt-get update)"
    return ""


def build_sysroot(root: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """The aarch64 sysroot at ``root`` (default ``sysroot_dir()``), built when not yet complete:
    arm64 debs unpacked, aarch64 wheels installed, the qemu wrapper and sitecustomize written.
    About 10 minutes the first time; idempotent (a ``.complete`` marker) and rebuilt when interrupted."""
    root = Path(root or sysroot_dir())
    if (root / ".complete").exists():
        return root
    missing = emulation_missing()
    if missing:
        raise RuntimeError(f"cannot build the aarch64 sysroot: {missing}")
    work = root.with_name(root.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    (work / "debs").mkdir(parents=True)
    log(f"downloading {len(ARM64_DEBS)} arm64 packages")
    _run(["apt-get", "download"] + [f"{d}:arm64" if d != "media-types" else d for d in ARM64_DEBS],
         cwd=work / "debs")
    for deb in sorted((work / "debs").glob("*.deb")):
        _run(["dpkg", "-x", str(deb), str(work)])
    site = work / "usr" / "lib" / "python3" / "dist-packages"
    log("downloading the aarch64 wheels (apache-tvm is about 95 MB)")
    pip = [sys.executable, "-m", "pip"]
    plat = ["--only-binary=:all:", "--platform", PLATFORM, "--python-version", PY_VERSION,
            "--implementation", "cp"]
    _run(pip + ["download", "-q", "-d", str(work / "wheels")] + plat + list(TVM_WHEELS))
    _run(pip + ["install", "-q", "--no-index", "--find-links", str(work / "wheels"), "--no-deps",
                "--target", str(site)] + plat + [str(w) for w in sorted((work / "wheels").glob("*.whl"))])
    shutil.rmtree(work / "debs")
    shutil.rmtree(work / "wheels")
    _write_wrapper(work, root)
    if root.exists():
        shutil.rmtree(root)
    work.rename(root)
    log(f"checking the emulated interpreter in {root}")
    _run([str(root / "python-aarch64"), "-c", "import sys, platform, tvm; "
          f"assert platform.machine() == 'aarch64' and sys.executable.endswith('python-aarch64')"])
    (root / ".complete").write_text(json.dumps({"wheels": TVM_WHEELS, "debs": ARM64_DEBS}))
    return root


def _write_wrapper(work: Path, final: Path) -> None:
    """``python-aarch64`` runs the aarch64 interpreter under qemu with the final sysroot as its
    library root; sitecustomize makes it the interpreter that TVM's popen workers re-spawn."""
    wrapper = work / "python-aarch64"
    wrapper.write_text(f'#!/bin/sh\nexec qemu-aarch64 -L "{final}" "{final}/usr/bin/python3.11" "$@"\n')
    wrapper.chmod(0o755)
    # Debian's stdlib sitecustomize is an absolute link to /etc (the host's): replace it.
    custom = work / "usr" / "lib" / f"python{PY_VERSION}" / "sitecustomize.py"
    custom.unlink(missing_ok=True)
    custom.write_text(f"import sys\nsys.executable = {str(final / 'python-aarch64')!r}\n")
    (work / "home").mkdir(exist_ok=True)


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({res.returncode}): {res.stderr[-2000:]}")


# ---------------------------------------------------------------- CLI bodies

def run_tracker(host: str = "127.0.0.1", port: int = 9190) -> int:
    """``harness board tracker``: run a tracker in the foreground until interrupted."""
    proc = start_tracker(host, port)
    print(f"RPC tracker on {host}:{port} (pid {proc.pid}); Ctrl-C stops it", flush=True)
    return _foreground(proc)


def run_emulated(tracker: str, key: str, host: str = "127.0.0.1", port: int = 9090) -> int:
    """``harness board emulate``: build the sysroot if needed, run an emulated aarch64 server
    registered with ``tracker`` under ``key`` in the foreground until interrupted."""
    build_sysroot(log=lambda m: print(m, flush=True))
    proc = start_emulated_server(tracker, key, host=host, port=port)
    print(f"emulated aarch64 board {key!r} registered with {tracker} (pid {proc.pid}); "
          "its latencies mean nothing; Ctrl-C stops it", flush=True)
    return _foreground(proc)


def _foreground(proc: subprocess.Popen) -> int:
    """Wait for ``proc``; Ctrl-C or SIGTERM stops it (and its process group) first."""
    import signal

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop(proc)
        return 0


def add_board_parser(sub: Any) -> None:
    """The ``board`` subcommand (``python -m harness board tracker|emulate|sysroot``), added to
    the harness CLI's subparsers ``sub``; ``board_command`` runs it."""
    b = sub.add_parser("board", help="a TVM RPC tracker, or an emulated aarch64 board, for tvm-arm")
    which = b.add_subparsers(dest="board_command", required=True)
    t = which.add_parser("tracker", help="run a TVM RPC tracker (loopback unless told otherwise)")
    t.add_argument("--host", default="127.0.0.1")
    t.add_argument("--port", type=int, default=9190)
    e = which.add_parser("emulate", help="run an emulated aarch64 board (qemu-user) registered with a tracker")
    e.add_argument("--tracker", default="127.0.0.1:9190", help="HOST:PORT of the tracker")
    e.add_argument("--key", default="qemu", help="the key the board registers under")
    e.add_argument("--host", default="127.0.0.1", help="where the board's server listens")
    e.add_argument("--port", type=int, default=9090, help="first port the board's server tries")
    which.add_parser("sysroot", help="build the emulated board's aarch64 sysroot into the cache now")


def board_command(args: Any) -> int:
    """Run the ``board`` subcommand parsed by ``add_board_parser``."""
    if args.board_command == "tracker":
        return run_tracker(args.host, args.port)
    if args.board_command == "emulate":
        return run_emulated(args.tracker, args.key, args.host, args.port)
    print(build_sysroot(log=lambda m: print(m, flush=True)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m targets.tvm_board tracker|emulate|sysroot`` (what ``harness board`` runs)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m targets.tvm_board")
    add_board_parser(parser.add_subparsers(dest="command", required=True))
    return board_command(parser.parse_args(["board", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
