"""What makes a row reproducible: machine, package versions, git revision, time."""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime", "openvino", "numpy")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=None)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    """CPUs this process may use (the affinity mask, not the host's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@lru_cache(maxsize=None)
def gpu_name() -> str:
    """The CUDA device's name, or "none". Asks torch only if it is already imported."""
    import sys
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "none"


@lru_cache(maxsize=None)
def git_revision() -> str:
    """The project's commit, with "+dirty" when the work tree has uncommitted changes outside
    ``results/`` (the published results are the harness's own output: a sweep that writes them
    into a clean checkout still ran clean code)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    try:
        rev = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> str:
    """One line naming the machine, printed with every table."""
    return (f"{cpu_model()}, {cpu_count()} CPUs, GPU: {gpu_name()}, "
            f"{platform.system()} {platform.machine()}, Python {platform.python_version()}")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@lru_cache(maxsize=None)
def node_name() -> str:
    """This machine's host name (what a row's ``node`` column says)."""
    return platform.node() or "unknown"


def host_machine() -> dict:
    """Facts of the machine this process runs on, as ``Session.machine()`` reports them.
    ``node`` is $HARNESS_NODE where an executor sets it (two Ray nodes on one host share a name)."""
    return {"node": os.environ.get("HARNESS_NODE") or node_name(), "cpu": cpu_model(), "cpu_count": cpu_count(),
            "arch": platform.machine(), "gpu": gpu_name(), "board": "", "emulated": False}
