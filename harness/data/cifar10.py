"""``cifar10:PATH``: CIFAR-10 in torchvision's python-batch format, from a local folder."""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch

from harness.data.base import DataBundle, DataSet, one_line, require_dir
from harness.data.images import TensorImages
from harness.errors import UserError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


class Cifar10(DataSet):
    summary = "CIFAR-10 python batches in PATH or PATH/cifar-10-batches-py (never downloaded)"

    def load(self, spec: str, arg: str | None, *, size: int, seed: int) -> DataBundle:
        """CIFAR-10 python batches from ``path`` or ``path/cifar-10-batches-py``."""
        path = require_dir("cifar10", arg)
        # torchvision.datasets.CIFAR10(download=False) md5-checks every batch file against the
        # real release, so any other copy (e.g. a small test set) is rejected; the pickles are
        # read here in the same format instead: dict with b"data" (uint8 N x 3072) and
        # b"labels"; meta b"label_names".
        folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
        for name in CIFAR_FILES:
            if not (folder / name).is_file():
                raise UserError(f"cifar10: {folder} does not hold the CIFAR-10 python batches: missing {name}")
        blobs = {name: (folder / name).read_bytes() for name in CIFAR_FILES}
        classes = _cifar_classes(folder, blobs["batches.meta"])
        parts = [_cifar_batch(folder / n, blobs[n], len(classes)) for n in CIFAR_FILES[:5]]
        train_x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        train_y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        test_x, test_y = (torch.from_numpy(a) for a in
                          _cifar_batch(folder / "test_batch", blobs["test_batch"], len(classes)))
        common = dict(scale=1 / 255, size=size, mean=CIFAR_MEAN, std=CIFAR_STD)
        train = TensorImages(train_x, train_y, pad=max(1, round(4 * size / 32)), flip=True, **common)
        test = TensorImages(test_x, test_y, **common)
        return DataBundle(
            spec=spec, name="cifar10", train=train, test=test, num_classes=len(classes),
            input_shape=(3, size, size), synthetic=False, content_hash=_hash_blobs(blobs),
            mean=CIFAR_MEAN, std=CIFAR_STD, classes=classes, augment=True,
        )


def _hash_blobs(blobs: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in CIFAR_FILES:
        h.update(name.encode())
        h.update(blobs[name])
    return h.hexdigest()


def _unpickle(path: Path, blob: bytes) -> dict:
    try:
        obj = pickle.loads(blob, encoding="bytes")
    except Exception as exc:  # pickle raises many types on corrupt input
        raise UserError(f"cifar10: cannot read {path}: {one_line(exc) or type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise UserError(f"cifar10: {path} is not a CIFAR-10 batch (pickle holds {type(obj).__name__}, not dict)")
    return obj


def _cifar_classes(folder: Path, blob: bytes) -> list[str]:
    meta = _unpickle(folder / "batches.meta", blob)
    names = meta.get(b"label_names", meta.get("label_names"))
    if not isinstance(names, (list, tuple)) or not names:
        raise UserError(f"cifar10: {folder / 'batches.meta'} has no label_names list")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _cifar_batch(path: Path, blob: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N x 3 x 32 x 32 images, int64 labels) from one batch file, validated."""
    batch = _unpickle(path, blob)
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"cifar10: {path}: 'data' must be a uint8 N x 3072 array")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise UserError(f"cifar10: {path}: 'labels' must be a list of integers") from None
    if labels is None or y.shape[0] != data.shape[0]:
        raise UserError(f"cifar10: {path}: {data.shape[0]} images but {0 if labels is None else y.shape[0]} labels")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise UserError(f"cifar10: {path}: labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32).copy(), y
