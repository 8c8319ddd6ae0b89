"""What every data set shares: the DataBundle it returns, the DataSet interface it implements,
and the small helpers (argument checks, hashing, statistics) the built-in loaders use."""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from harness.errors import UserError


@dataclass
class DataBundle:
    """A loaded data set. ``train_n`` is the size of the training split in use (after
    ``train_limit``), ``train_total`` the size of the full split; both default to ``len(train)``."""

    spec: str
    name: str  # the registered scheme: "digits", "cifar10", "fashion-mnist", ...
    train: Dataset | None
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    synthetic: bool
    content_hash: str
    mean: tuple
    std: tuple
    classes: list[str]
    augment: bool
    train_n: int | None = None
    train_total: int | None = None

    def __post_init__(self) -> None:
        size = 0 if self.train is None else len(self.train)
        self.train_n = size if self.train_n is None else self.train_n
        self.train_total = self.train_n if self.train_total is None else self.train_total
        if not 0 <= self.train_n <= self.train_total:
            raise ValueError(f"train_n={self.train_n} outside 0..train_total={self.train_total}")


class DataSet(ABC):
    """One data-set scheme of a ``SCHEME[:ARG]`` spec, registered in ``harness.data.DATASETS``.

    ``load_data`` parses the spec, calls :meth:`load` and then applies ``train_limit`` itself, so an
    implementation always returns its full training split (its ``train`` should offer ``labels``
    or ``targets`` and ``subset(indices)`` for the limit to work).
    """

    #: side of the square input when the caller gives no ``input_size``
    default_size: int = 32
    #: one line for listings
    summary: str = ""

    @abstractmethod
    def load(self, spec: str, arg: str | None, *, size: int, seed: int) -> DataBundle:
        """The bundle for ``spec``; ``arg`` is the text after the first ':' (None without one).

        Bad input raises a one-line :class:`UserError`; nothing may be downloaded.
        """


def one_line(text: Any) -> str:
    return " ".join(str(text).split())


def no_argument(name: str, spec: str, arg: str | None) -> None:
    """A UserError unless the spec had no ':ARG' part."""
    if arg is not None:
        raise UserError(f"data set {name!r} takes no argument, got {spec!r}")


def require_dir(name: str, arg: str | None, default: str | None = None) -> Path:
    """``arg`` (or ``default`` when there is none) as an existing directory, else a UserError."""
    text = arg or default
    if not text:
        raise UserError(f"data set {name!r} needs a path: use '{name}:PATH'")
    path = Path(text).expanduser()
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise UserError(f"{name}: {text} {what}")
    return path


def hash_arrays(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def resized_stats(raw: torch.Tensor, *, scale: float, size: int) -> tuple[float, float]:
    """Mean and std of the images after scaling and resizing to ``size`` (chunked, float64)."""
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, raw.shape[0], 4096):
        x = raw[start:start + 4096].to(torch.float32) * scale
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > size)
        x = x.to(torch.float64)
        total += float(x.sum())
        total_sq += float((x * x).sum())
        count += x.numel()
    mean = total / count
    std = max((total_sq / count - mean * mean), 0.0) ** 0.5
    return mean, std if std > 0 else 1.0
