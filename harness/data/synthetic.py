"""``synthetic[:N[:C]]``: random inputs for latency-only runs (no accuracy is ever computed)."""
from __future__ import annotations

import hashlib

import torch

from harness.data.base import DataBundle, DataSet
from harness.data.images import TensorImages
from harness.errors import UserError


class Synthetic(DataSet):
    summary = "N (default 512) standard-normal inputs, C (default 10) classes; latency only"

    def load(self, spec: str, arg: str | None, *, size: int, seed: int) -> DataBundle:
        """N standard-normal inputs with labels all -1; ``train`` is a tiny random-label set so
        code paths that need a training loader still run."""
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
