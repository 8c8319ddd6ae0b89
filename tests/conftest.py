"""Shared fixtures and the one place where skips are decided."""
from __future__ import annotations

import importlib.util
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.timing import TimingRules
from harness.train import TrainRecipe

# Tiny settings for end-to-end runs: the engine is the real one, only the minimums are small.
FAST_TIMING = TimingRules(warmup_min_s=0.0, warmup_min_n=2, min_s=0.0, min_n=8, max_s=30.0)
FAST_RECIPE = TrainRecipe(steps=90, batch_size=64)  # 4 passes over digits: ~94% in ~6 s


def selected_targets() -> list[str]:
    """Registered targets the tests may use, restricted by $HARNESS_TEST_TARGETS (set per tox
    environment) when it is set."""
    from targets import TARGETS

    wanted = [t.strip() for t in os.environ.get("HARNESS_TEST_TARGETS", "").split(",") if t.strip()]
    return [k for k in TARGETS.names() if k in wanted] if wanted else TARGETS.names()


def available_cpu_targets() -> list[str]:
    from targets import get_target

    return [k for k in selected_targets() if get_target(k).device == "cpu" and get_target(k).availability().ok]


# ----------------------------------------------------------------------------- skips: decided here, each with its reason
# Every test that cannot run here skips through one of these, and the reason says what to install.

def tvm_missing() -> str:
    """'' when tvm and what its RPC tracker needs are importable, else what is missing."""
    for mod in ("tvm", "tornado", "cloudpickle", "psutil"):
        if importlib.util.find_spec(mod) is None:
            return f"python module {mod!r} not installed (pip install -e '.[tvm]')"
    return ""


def emulation_missing() -> str:
    """'' when an emulated aarch64 board can start: tvm, the cross compiler and qemu-user."""
    missing = tvm_missing()
    if missing:
        return missing
    if not shutil.which("aarch64-linux-gnu-g++"):
        return "aarch64-linux-gnu-g++ not found (apt-get install g++-aarch64-linux-gnu)"
    from targets.tvm_board import emulation_missing as board_missing

    return board_missing()


def ray_missing() -> str:
    return "" if importlib.util.find_spec("ray") else "ray is not installed (pip install -e '.[ray]')"


def fashion_missing() -> str:
    from harness.data.fashion_mnist import DEFAULT_PATH

    return "" if Path(DEFAULT_PATH).is_dir() else f"{DEFAULT_PATH} absent (apt-get install dataset-fashion-mnist)"


TVM_TUNING_OPT_IN = "HARNESS_TEST_TVM_TUNING"


def tuning_missing() -> str:
    return "" if os.environ.get(TVM_TUNING_OPT_IN) else (
        f"set {TVM_TUNING_OPT_IN}=1: MetaSchedule needs more than 10 min for the tiny net's 3 conv tasks on "
        "2 shared cores (design-space generation and fresh builder workers per batch), too long for the "
        "default suite")


def _needs(probe) -> pytest.MarkDecorator:
    reason = probe()
    return pytest.mark.skipif(bool(reason), reason=reason or "available")


needs_tvm = _needs(tvm_missing)
needs_emulation = _needs(emulation_missing)
needs_ray = _needs(ray_missing)
needs_fashion = _needs(fashion_missing)
needs_tvm_tuning = _needs(tuning_missing)


def require_targets(*keys: str) -> list[str]:
    """The CPU targets among ``keys`` that are selected and available; skips (with why) if none is."""
    available = available_cpu_targets()
    found = [k for k in keys if k in available]
    if not found:
        pytest.skip(f"none of {', '.join(keys)} is selected by HARNESS_TEST_TARGETS and available")
    return found


def require_target(key: str):
    """The target ``key``; skips with the reason when it is not selected or not available here."""
    from targets import get_target

    if key not in selected_targets():
        pytest.skip(f"{key} not selected by HARNESS_TEST_TARGETS")
    target = get_target(key)
    status = target.availability()
    if not status.ok:
        pytest.skip(f"{key}: {status.reason}")
    return target


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Baselines trained by tests go to one per-session cache, never the user's."""
    cache = tmp_path_factory.getbasetemp() / "harness-cache"
    monkeypatch.setenv("HARNESS_CACHE", str(cache))


@pytest.fixture
def cpu_targets() -> list[str]:
    keys = available_cpu_targets()
    if not keys:
        pytest.skip("no CPU target available among HARNESS_TEST_TARGETS")
    return keys


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- tiny data sets in the real formats
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]




def _write_cifar_batch(path: Path, n: int, rng: np.random.Generator) -> None:
    batch = {
        b"batch_label": b"test batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    """tmp/cifar-10-batches-py with 5 train batches of 4 images, a test batch of 6, and meta."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _write_cifar_batch(folder / f"data_batch_{i}", 4, rng)
    _write_cifar_batch(folder / "test_batch", 6, rng)
    meta = {b"label_names": [n.encode() for n in CIFAR_NAMES], b"num_cases_per_batch": 4, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return tmp_path


def _write_png(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """tmp/imgs/{train,val}/{a,b,c}/ with 2 PNGs of different sizes each."""
    root = tmp_path / "imgs"
    sizes = [(40, 30), (25, 50)]
    seed = 0
    for split in ("train", "val"):
        for cls in ("a", "b", "c"):
            for j, size in enumerate(sizes):
                _write_png(root / split / cls / f"{j}.png", size, seed)
                seed += 1
    return root


# Fashion-MNIST in the IDX format: magic (0, 0, 0x08 = ubyte, ndim), big-endian uint32 dims, data.
FASHION_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
                 "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def _idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def _write_fashion(root: Path, *, gz: bool = True, n_train: int = 40, n_test: int = 20, side: int = 28,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Four IDX files under ``root`` (gzip or raw); labels cycle 0..9, so classes are balanced."""
    import gzip

    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "test_labels": rng.permutation(np.arange(n_test) % 10).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for role, name in FASHION_FILES.items():
        blob = _idx_bytes(arrays[role])
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (root / name).write_bytes(blob)
    return arrays


@pytest.fixture
def fashion_root(tmp_path: Path) -> Path:
    """tmp/fashion with the four gzipped IDX files: 40 train and 20 test 28x28 images."""
    _write_fashion(tmp_path / "fashion")
    return tmp_path / "fashion"
