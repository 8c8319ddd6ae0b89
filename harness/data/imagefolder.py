"""``imagefolder:PATH``: ImageNet-style ``train/`` and ``val/`` class folders (or one folder of
class folders as a test set only)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from harness.data.base import DataBundle, DataSet, one_line, require_dir
from harness.data.images import FolderImages
from harness.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFolderSet(DataSet):
    default_size = 224
    summary = "PATH/train and PATH/val class folders (or PATH's class folders as a test set only)"

    def load(self, spec: str, arg: str | None, *, size: int, seed: int) -> DataBundle:
        """``path/train`` + ``path/val`` class folders; or, without both, ``path``'s own class
        folders as the test set only (``train`` is then None and nothing can be trained)."""
        from torchvision import transforms as T

        path = require_dir("imagefolder", arg)
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
            _same_classes(train_folder.classes, val_folder.classes)
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


def _same_classes(train: list[str], val: list[str]) -> None:
    if train != val:
        only = sorted(set(train) ^ set(val))
        detail = f"first difference: {only[0]!r}" if only else "same names, different order"
        raise UserError(f"imagefolder: train/ and val/ class folders differ ({detail})")


def _image_folder(root: Path) -> Any:
    """torchvision ImageFolder of ``root``; empty or class-less folders raise UserError."""
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(root))
    except (FileNotFoundError, OSError) as exc:
        raise UserError(f"imagefolder: no images in {root}: {one_line(exc)}") from None


def _hash_listing(root: Path, samples: list[tuple[str, int]]) -> str:
    # Hashing every image's bytes is too slow for ImageNet; (relative path, size) catches
    # added, removed, renamed and re-encoded files.
    h = hashlib.sha256()
    for rel, size in sorted((os.path.relpath(p, root), os.path.getsize(p)) for p, _ in samples):
        h.update(f"{rel}\0{size}\n".encode())
    return h.hexdigest()
