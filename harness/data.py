"""Data sets: one spec string -> a DataBundle of in-memory (or folder-backed) train/test sets.

Specs: ``digits`` (default, bundled with scikit-learn), ``cifar10:PATH``, ``imagefolder:PATH``,
``synthetic[:N[:C]]``. Nothing is ever downloaded. Every bad input raises a one-line UserError.
"""
from __future__ import annotations

import copy
import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, get_worker_info

from harness.errors import UserError
from harness.registry import unknown_message

SCHEMES = ("digits", "cifar10", "imagefolder", "synthetic")

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")

# Offset so the augmentation stream never equals the shuffling stream of the same seed.
_AUG_SEED_OFFSET = 0x5EED


@dataclass
class DataBundle:
    spec: str
    name: str  # "digits" | "cifar10" | "imagefolder" | "synthetic"
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


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


# ----------------------------------------------------------------------------- tensor data sets


class _SeededAugmentation:
    """An augmentation random stream that survives pickling into DataLoader workers."""

    _aug_seed: int | None = None
    _gen: torch.Generator | None = None

    def reseed(self, seed: int) -> None:
        """Restart the augmentation stream (called in each DataLoader worker)."""
        self._aug_seed = int(seed) % (2**63)
        self._gen = torch.Generator().manual_seed(self._aug_seed)

    def _twin(self, seed: int) -> Any:
        twin = copy.copy(self)  # shares the data; only the random stream differs
        twin.reseed(seed)
        return twin

    def __getstate__(self) -> dict:
        # Generators are rebuilt from the seed; workers reseed anyway.
        state = self.__dict__.copy()
        state["_gen"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._aug_seed is not None:
            self._gen = torch.Generator().manual_seed(self._aug_seed)


class TensorImages(_SeededAugmentation, Dataset):
    """In-memory images; each item is (normalised float32 CxSxS tensor, int label).

    ``images`` hold raw values (uint8 or float) at their native resolution; resizing to ``size``,
    augmentation and normalisation happen per batch (``__getitems__``), so CIFAR at 224 never
    needs 30 GB of float tensors. ``pad``/``flip`` describe the training augmentation; it is
    applied only on the copy returned by :meth:`augmented`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, scale: float, size: int,
                 mean: Sequence[float], std: Sequence[float], pad: int = 0, flip: bool = False):
        self.images = images
        self.labels = labels.to(torch.int64)
        self.scale = float(scale)
        self.size = int(size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.pad = int(pad)
        self.flip = bool(flip)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def augmented(self, seed: int) -> "TensorImages":
        """A copy (sharing the tensors) that augments with a generator seeded from ``seed``."""
        return self if self.pad == 0 and not self.flip else self._twin(seed)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 NCHW normalised inputs, int64 labels) for the given indices."""
        x = self.images[index].to(torch.float32) * self.scale
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            # Bilinear, align_corners=False; antialias only matters (and only helps) when shrinking.
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > self.size)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self._gen is not None:
            x = _random_crop(x, self.pad, self._gen) if self.pad else x
            x = _random_flip(x, self._gen) if self.flip else x
        x = (x - self.mean) / self.std
        return x.contiguous(), self.labels[index]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.batch(torch.tensor([int(i)]))
        return x[0], int(y[0])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        # DataLoader calls this with a whole batch: the tensor work is vectorised, and the
        # per-sample list keeps the default collate_fn (and user collate_fns) working.
        x, y = self.batch(torch.as_tensor(indices, dtype=torch.int64))
        return list(zip(x.unbind(0), y.tolist()))


def _random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random crop of the same size after ``pad`` pixels of zero padding."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def _random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mask = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


# ----------------------------------------------------------------------------- folder data sets


class FolderImages(_SeededAugmentation, Dataset):
    """ImageFolder-backed images; items are (normalised float32 tensor, int label).

    Uses ``eval_transform`` unless this is the copy returned by :meth:`augmented`, which uses
    ``train_transform`` with torch's RNG seeded per sample from its own generator (deterministic).
    """

    def __init__(self, folder: Any, eval_transform: Any, train_transform: Any = None,
                 interleave: bool = False):
        self.folder = folder
        self.classes: list[str] = list(folder.classes)
        self.samples: list[tuple[str, int]] = list(folder.samples)
        if interleave:
            self.samples = _round_robin(self.samples)
        self.targets = [t for _, t in self.samples]
        self.eval_transform = eval_transform
        self.train_transform = train_transform

    def __len__(self) -> int:
        return len(self.samples)

    def augmented(self, seed: int) -> "FolderImages":
        """A copy that applies the training transform, seeded from ``seed``."""
        return self if self.train_transform is None else self._twin(seed)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        image = self.folder.loader(path)
        if self._gen is None:
            return self.eval_transform(image), label
        # torchvision transforms draw from the global RNG: fork it so runs are reproducible
        # without disturbing the caller's RNG state.
        sample_seed = int(torch.randint(0, 2**62, (1,), generator=self._gen))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.train_transform(image), label


def _round_robin(samples: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Interleave classes (keeping in-class order) so any prefix is roughly class-balanced."""
    by_class: dict[int, list[tuple[str, int]]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    groups = [by_class[k] for k in sorted(by_class)]
    out = []
    for j in range(max((len(g) for g in groups), default=0)):
        out.extend(g[j] for g in groups if j < len(g))
    return out


# ----------------------------------------------------------------------------- public API


def load_data(spec: str = "digits", *, input_size: int | None = None, seed: int = 0) -> DataBundle:
    """Parse ``spec`` and return the loaded DataBundle (nothing is downloaded)."""
    if input_size is not None and (not isinstance(input_size, int) or isinstance(input_size, bool)
                                   or input_size < 8):
        raise UserError(f"input size must be an integer >= 8, got {input_size!r}")
    scheme, sep, arg = spec.partition(":")
    if scheme not in SCHEMES:
        raise UserError(unknown_message("data set", scheme, list(SCHEMES)))
    if scheme == "digits":
        if sep:
            raise UserError(f"data set 'digits' takes no argument, got {spec!r}")
        return _load_digits(spec, input_size or 32)
    if scheme == "synthetic":
        return _load_synthetic(spec, arg if sep else "", input_size or 32, seed)
    if not arg:
        raise UserError(f"data set {scheme!r} needs a path: use '{scheme}:PATH'")
    path = Path(arg).expanduser()
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise UserError(f"{scheme}: {arg} {what}")
    if scheme == "cifar10":
        return _load_cifar10(spec, path, input_size or 32)
    return _load_imagefolder(spec, path, input_size or 224)


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int,
                augment: bool = False, workers: int = 0) -> DataLoader:
    """A DataLoader whose order (and augmentation) is fixed by ``seed``.

    ``augment=True`` uses the dataset's ``augmented(seed)`` copy; test sets (and data sets
    without an ``augmented`` method) return themselves, so they are never augmented.
    """
    if augment and hasattr(dataset, "augmented"):
        dataset = dataset.augmented(seed + _AUG_SEED_OFFSET)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        num_workers=workers,
        worker_init_fn=_seed_worker if workers > 0 else None,
    )


def _seed_worker(worker_id: int) -> None:
    # torch.initial_seed() in a worker is the loader's (seeded) base seed + worker id, so each
    # worker gets its own, reproducible augmentation stream instead of a copy of the parent's.
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed") and getattr(info.dataset, "_gen", None) is not None:
        info.dataset.reseed(torch.initial_seed())


def eval_arrays(bundle: DataBundle, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 NCHW inputs normalised as the model sees them, int64 labels): the first
    ``limit`` test samples (all when None) in the test set's fixed order."""
    test = bundle.test
    n = len(test) if limit is None else max(0, min(int(limit), len(test)))
    if isinstance(test, TensorImages):
        xs, ys = [], []
        for start in range(0, n, 1024):
            x, y = test.batch(torch.arange(start, min(n, start + 1024)))
            xs.append(x.numpy())
            ys.append(y.numpy())
    else:
        subset = torch.utils.data.Subset(test, range(n))
        batches = [(x.numpy(), y.numpy()) for x, y in DataLoader(subset, batch_size=64, shuffle=False)]
        xs = [b[0] for b in batches]
        ys = [b[1] for b in batches]
    if not xs:
        c, h, w = bundle.input_shape
        return np.zeros((0, c, h, w), np.float32), np.zeros((0,), np.int64)
    return (np.ascontiguousarray(np.concatenate(xs), dtype=np.float32),
            np.concatenate(ys).astype(np.int64))


# ----------------------------------------------------------------------------- digits


def _load_digits(spec: str, size: int) -> DataBundle:
    """The scikit-learn 8x8 digits, split 80/20 stratified with a fixed random_state."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_all = np.asarray(digits.data, dtype=np.float64)
    y_all = np.asarray(digits.target, dtype=np.int64)
    # The split ignores the run seed on purpose: every run is scored on the same 360 images.
    x_tr, x_te, y_tr, y_te = train_test_split(x_all, y_all, test_size=0.2, stratify=y_all, random_state=0)
    to_images = lambda a: torch.from_numpy(a.astype(np.float32)).view(-1, 1, 8, 8)  # noqa: E731
    train_raw, test_raw = to_images(x_tr), to_images(x_te)
    mean, std = _resized_stats(train_raw, scale=1 / 16, size=size)
    common = dict(scale=1 / 16, size=size, mean=(mean,) * 3, std=(std,) * 3)
    pad = max(1, round(4 * size / 32))
    train = TensorImages(train_raw, torch.from_numpy(y_tr), pad=pad, flip=False, **common)
    test = TensorImages(test_raw, torch.from_numpy(y_te), **common)
    return DataBundle(
        spec=spec, name="digits", train=train, test=test, num_classes=10, input_shape=(3, size, size),
        synthetic=False, content_hash=_hash_arrays(x_all, y_all), mean=(mean,) * 3, std=(std,) * 3,
        classes=[str(i) for i in range(10)], augment=True,
    )


def _resized_stats(raw: torch.Tensor, *, scale: float, size: int) -> tuple[float, float]:
    """Mean and std of the images after scaling and resizing to ``size`` (chunked, float64)."""
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, raw.shape[0], 256):
        x = raw[start:start + 256].to(torch.float32) * scale
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > size)
        x = x.to(torch.float64)
        total += float(x.sum())
        total_sq += float((x * x).sum())
        count += x.numel()
    mean = total / count
    std = max((total_sq / count - mean * mean), 0.0) ** 0.5
    return mean, std if std > 0 else 1.0


def _hash_arrays(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- cifar10


def _load_cifar10(spec: str, path: Path, size: int) -> DataBundle:
    """CIFAR-10 python batches from ``path`` or ``path/cifar-10-batches-py``."""
    # torchvision.datasets.CIFAR10(download=False) md5-checks every batch file against the real
    # release, so any other copy (e.g. a small test set) is rejected; the pickles are read here in
    # the same format instead: dict with b"data" (uint8 N x 3072) and b"labels"; meta b"label_names".
    folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    for name in CIFAR_FILES:
        if not (folder / name).is_file():
            raise UserError(f"cifar10: {folder} does not hold the CIFAR-10 python batches: missing {name}")
    blobs = {name: (folder / name).read_bytes() for name in CIFAR_FILES}
    classes = _cifar_classes(folder, blobs["batches.meta"])
    parts = [_cifar_batch(folder / n, blobs[n], len(classes)) for n in CIFAR_FILES[:5]]
    train_x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    train_y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    test_x, test_y = (torch.from_numpy(a) for a in _cifar_batch(folder / "test_batch", blobs["test_batch"], len(classes)))
    h = hashlib.sha256()
    for name in CIFAR_FILES:
        h.update(name.encode())
        h.update(blobs[name])
    common = dict(scale=1 / 255, size=size, mean=CIFAR_MEAN, std=CIFAR_STD)
    train = TensorImages(train_x, train_y, pad=max(1, round(4 * size / 32)), flip=True, **common)
    test = TensorImages(test_x, test_y, **common)
    return DataBundle(
        spec=spec, name="cifar10", train=train, test=test, num_classes=len(classes),
        input_shape=(3, size, size), synthetic=False, content_hash=h.hexdigest(),
        mean=CIFAR_MEAN, std=CIFAR_STD, classes=classes, augment=True,
    )


def _unpickle(path: Path, blob: bytes) -> dict:
    try:
        obj = pickle.loads(blob, encoding="bytes")
    except Exception as exc:  # pickle raises many types on corrupt input
        raise UserError(f"cifar10: cannot read {path}: {_one_line(exc) or type(exc).__name__}") from None
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


# ----------------------------------------------------------------------------- imagefolder


def _load_imagefolder(spec: str, path: Path, size: int) -> DataBundle:
    """``path/train`` + ``path/val`` class folders; or, without both, ``path``'s own class
    folders as the test set only (``train`` is then None and nothing can be trained)."""
    from torchvision import transforms as T

    has_train, has_val = (path / "train").is_dir(), (path / "val").is_dir()
    if has_train != has_val:
        missing = "val" if has_train else "train"
        raise UserError(f"imagefolder: {path} has {'train' if has_train else 'val'}/ but no {missing}/ folder")
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    eval_tf = T.Compose([T.Resize(round(size / 0.875)), T.CenterCrop(size), T.ToTensor(), normalize])
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    train = None
    if has_train:
        train_folder, val_folder = _image_folder(path / "train"), _image_folder(path / "val")
        if train_folder.classes != val_folder.classes:
            only = sorted(set(train_folder.classes) ^ set(val_folder.classes))
            detail = f"first difference: {only[0]!r}" if only else "same names, different order"
            raise UserError(f"imagefolder: train/ and val/ class folders differ ({detail})")
        train = FolderImages(train_folder, eval_tf, train_tf)
        test = FolderImages(val_folder, eval_tf, interleave=True)
    else:
        test = FolderImages(_image_folder(path), eval_tf, interleave=True)
    samples = test.samples + (train.samples if train is not None else [])
    return DataBundle(
        spec=spec, name="imagefolder", train=train, test=test, num_classes=len(test.classes),
        input_shape=(3, size, size), synthetic=False, content_hash=_hash_listing(path, samples),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, classes=list(test.classes), augment=train is not None,
    )


def _image_folder(root: Path) -> Any:
    """torchvision ImageFolder of ``root``; empty or class-less folders raise UserError."""
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(root))
    except (FileNotFoundError, OSError) as exc:
        raise UserError(f"imagefolder: no images in {root}: {_one_line(exc)}") from None


def _hash_listing(root: Path, samples: list[tuple[str, int]]) -> str:
    # Hashing every image's bytes is too slow for ImageNet; (relative path, size) catches
    # added, removed, renamed and re-encoded files.
    h = hashlib.sha256()
    for rel, size in sorted((os.path.relpath(p, root), os.path.getsize(p)) for p, _ in samples):
        h.update(f"{rel}\0{size}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- synthetic


def _load_synthetic(spec: str, arg: str, size: int, seed: int) -> DataBundle:
    """``synthetic[:N[:C]]``: N (default 512) standard-normal inputs, labels all -1.

    For timing and output-agreement checks only: accuracy is never computed on it. ``train`` is a
    tiny random-label set so code paths that need a training loader still run.
    """
    fields = arg.split(":") if arg else []
    if len(fields) > 2:
        raise UserError(f"synthetic spec is synthetic[:N[:C]], got {spec!r}")
    n = _positive_int(fields[0], "N (number of inputs)", spec) if fields else 512
    c = _positive_int(fields[1], "C (number of classes)", spec) if len(fields) > 1 else 10
    shape = (3, size, size)
    gen = torch.Generator().manual_seed(seed)
    test_x = torch.randn((n, *shape), generator=gen)
    n_train = min(n, 64)
    train_x = torch.randn((n_train, *shape), generator=gen)
    train_y = torch.randint(0, c, (n_train,), generator=gen)
    common = dict(scale=1.0, size=size, mean=(0.0,) * 3, std=(1.0,) * 3)
    train = TensorImages(train_x, train_y, **common)
    test = TensorImages(test_x, torch.full((n,), -1, dtype=torch.int64), **common)
    params = f"synthetic n={n} classes={c} shape={shape} seed={seed} train={n_train} randn-v1"
    return DataBundle(
        spec=spec, name="synthetic", train=train, test=test, num_classes=c, input_shape=shape,
        synthetic=True, content_hash=hashlib.sha256(params.encode()).hexdigest(),
        mean=(0.0,) * 3, std=(1.0,) * 3, classes=[f"class_{i}" for i in range(c)], augment=False,
    )


def _positive_int(text: str, what: str, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"synthetic: {what} must be a positive integer, got {text!r} in {spec!r}") from None
    if value <= 0:
        raise UserError(f"synthetic: {what} must be a positive integer, got {text!r} in {spec!r}")
    return value
