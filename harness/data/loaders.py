"""Reading a DataBundle: seeded DataLoaders for training, fixed arrays for evaluation."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from harness.data.base import DataBundle
from harness.data.images import TensorImages

# Offset so the augmentation stream never equals the shuffling stream of the same seed.
_AUG_SEED_OFFSET = 0x5EED


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
