"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images), brought to 3xSxS."""
from __future__ import annotations

import numpy as np
import torch

from harness.data.base import DataBundle, DataSet, hash_arrays, no_argument, resized_stats
from harness.data.images import TensorImages


class Digits(DataSet):
    summary = "scikit-learn's 1,797 handwritten 8x8 digits, fixed stratified 80/20 split (bundled)"

    def load(self, spec: str, arg: str | None, *, size: int, seed: int) -> DataBundle:
        """The digits split 80/20 stratified with a fixed random_state (never the run seed)."""
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        no_argument("digits", spec, arg)
        digits = load_digits()
        x_all = np.asarray(digits.data, dtype=np.float64)
        y_all = np.asarray(digits.target, dtype=np.int64)
        # The split ignores the run seed on purpose: every run is scored on the same 360 images.
        x_tr, x_te, y_tr, y_te = train_test_split(x_all, y_all, test_size=0.2, stratify=y_all,
                                                  random_state=0)
        train_raw, test_raw = _images(x_tr), _images(x_te)
        mean, std = resized_stats(train_raw, scale=1 / 16, size=size)
        common = dict(scale=1 / 16, size=size, mean=(mean,) * 3, std=(std,) * 3)
        # Pad/crop only: a mirrored digit is not the same digit.
        train = TensorImages(train_raw, torch.from_numpy(y_tr), pad=max(1, round(4 * size / 32)),
                             flip=False, **common)
        test = TensorImages(test_raw, torch.from_numpy(y_te), **common)
        return DataBundle(
            spec=spec, name="digits", train=train, test=test, num_classes=10,
            input_shape=(3, size, size), synthetic=False, content_hash=hash_arrays(x_all, y_all),
            mean=(mean,) * 3, std=(std,) * 3, classes=[str(i) for i in range(10)], augment=True,
        )


def _images(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32)).view(-1, 1, 8, 8)
