"""``fashion-mnist[:PATH]``: Zalando's Fashion-MNIST (60,000 + 10,000 28x28 grey images, 10
classes) from the four standard IDX files; PATH defaults to where Debian's
``dataset-fashion-mnist`` package installs them."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from harness.data.base import DataBundle, DataSet, resized_stats
from harness.data.idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx, read_idx_bytes
from harness.data.images import TensorImages
from harness.errors import UserError

DEFAULT_PATH = "/usr/share/datasets/fashion-mnist"
PACKAGE = "dataset-fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# role -> file name without .gz; the hash covers (role, IDX bytes) in this order
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class FashionMnist(DataSet):
    summary = (f"Fashion-MNIST IDX files (.gz or raw) in PATH (default {DEFAULT_PATH}, "
               f"Debian package {PACKAGE}); official 60,000/10,000 split")

    def load(self, spec: str, arg: str | None, *, size: int, seed: int) -> DataBundle:
        """Train = the 60,000 training images in file order, test = the official t10k set."""
        folder = _folder(arg or DEFAULT_PATH)
        blobs = {role: read_idx_bytes(_find(folder, name), "fashion-mnist") for role, name in FILES.items()}
        train_x, train_y = _split(blobs, "train", folder)
        test_x, test_y = _split(blobs, "test", folder)
        if train_x.shape[1:] != test_x.shape[1:]:
            raise UserError(f"fashion-mnist: {folder}: train images are {_hw(train_x)} but test images {_hw(test_x)}")
        train_raw = torch.from_numpy(train_x.copy()).unsqueeze(1)
        test_raw = torch.from_numpy(test_x.copy()).unsqueeze(1)
        mean, std = resized_stats(train_raw, scale=1 / 255, size=size)
        common = dict(scale=1 / 255, size=size, mean=(mean,) * 3, std=(std,) * 3)
        # Clothes are mirror-symmetric classes (a left shoe is as much a Sneaker as a right one),
        # so the training augmentation flips as well as pads and crops, as for CIFAR-10.
        train = TensorImages(train_raw, torch.from_numpy(train_y), pad=max(1, round(4 * size / 32)),
                             flip=True, **common)
        test = TensorImages(test_raw, torch.from_numpy(test_y), **common)
        return DataBundle(
            spec=spec, name="fashion-mnist", train=train, test=test, num_classes=len(CLASSES),
            input_shape=(3, size, size), synthetic=False, content_hash=_hash(blobs),
            mean=(mean,) * 3, std=(std,) * 3, classes=list(CLASSES), augment=True,
        )


def _folder(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise UserError(f"fashion-mnist: {text} {what} (install the Debian package {PACKAGE}, "
                        f"or give fashion-mnist:PATH to a folder with the four IDX files)")
    return path


def _find(folder: Path, name: str) -> Path:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    raise UserError(f"fashion-mnist: missing {name}.gz (or {name}) in {folder} "
                    f"(the Debian package {PACKAGE} installs them in {DEFAULT_PATH})")


def _split(blobs: dict[str, bytes], split: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N x rows x cols images, int64 labels) of one split, validated."""
    images_name, labels_name = FILES[f"{split}_images"], FILES[f"{split}_labels"]
    images = parse_idx(blobs[f"{split}_images"], IMAGES_MAGIC, f"fashion-mnist: {folder / images_name}")
    labels = parse_idx(blobs[f"{split}_labels"], LABELS_MAGIC, f"fashion-mnist: {folder / labels_name}")
    if images.shape[0] != labels.shape[0]:
        raise UserError(f"fashion-mnist: {folder}: {images_name} holds {images.shape[0]} images "
                        f"but {labels_name} {labels.shape[0]} labels")
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise UserError(f"fashion-mnist: {folder / labels_name}: label {int(labels.max())} "
                        f"outside 0..{len(CLASSES) - 1}")
    if images.shape[0] == 0 or min(images.shape[1:]) == 0:
        raise UserError(f"fashion-mnist: {folder / images_name} holds no images")
    return images, labels.astype(np.int64)


def _hw(images: np.ndarray) -> str:
    return f"{images.shape[1]}x{images.shape[2]}"


def _hash(blobs: dict[str, bytes]) -> str:
    # Over the decompressed IDX bytes: the same data gzipped again (new mtime) keeps its hash.
    h = hashlib.sha256()
    for role in FILES:
        h.update(role.encode() + b"\0")
        h.update(blobs[role])
    return h.hexdigest()
