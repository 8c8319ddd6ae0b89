"""The two dataset types the built-in data sets return: in-memory tensors and image folders.

Both augment only on the copy that :meth:`augmented` returns, from a random stream of their own
that survives pickling into DataLoader workers, and both can be cut to a fixed subset.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


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

    def subset(self, indices: Sequence[int]) -> "TensorImages":
        """A copy holding only ``indices`` (in that order), with the same transforms."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        part = copy.copy(self)
        part.images, part.labels = self.images[index], self.labels[index]
        return part

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

    def subset(self, indices: Sequence[int]) -> "FolderImages":
        """A copy holding only ``indices`` (in that order), with the same transforms."""
        part = copy.copy(self)
        part.samples = [self.samples[int(i)] for i in indices]
        part.targets = [t for _, t in part.samples]
        return part

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
