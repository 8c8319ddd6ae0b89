"""Training subsets: ``train_limit=N`` keeps a fixed, class-stratified N of the training split.

The choice uses its own fixed random state, never the run seed (like digits' split): every seed
of a sweep trains on the same images, and the subset is part of the content hash, so baselines
trained on different subsets never share a cache key.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from harness.data.base import DataBundle
from harness.errors import UserError

SUBSET_RANDOM_STATE = 0
_SUBSET_RULE = f"stratified-largest-remainder random_state={SUBSET_RANDOM_STATE} v1"


def check_train_limit(limit: object) -> None:
    """A UserError unless ``limit`` is None or a positive integer."""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise UserError(f"train limit must be a positive integer, got {limit!r}")


def stratified_indices(labels: np.ndarray, n: int, random_state: int = SUBSET_RANDOM_STATE) -> np.ndarray:
    """``n`` indices into ``labels``, sorted, with each class's share of ``n`` proportional to
    its share of the labels (largest remainders round up, ties to the lower class)."""
    labels = np.asarray(labels)
    if n >= labels.shape[0]:
        return np.arange(labels.shape[0])
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    by_remainder = np.argsort(-(exact - quota), kind="stable")
    quota[by_remainder[: n - int(quota.sum())]] += 1
    rng = np.random.default_rng(random_state)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))


def limit_train(bundle: DataBundle, limit: int) -> DataBundle:
    """``bundle`` with its training split cut to the stratified subset of ``limit`` images
    (unchanged, hash included, when ``limit`` covers the whole split)."""
    check_train_limit(limit)
    train = bundle.train
    if train is None:
        raise UserError(f"data set {bundle.spec!r} has no training split to limit")
    total = len(train)
    if limit >= total:
        return bundle
    labels = getattr(train, "labels", getattr(train, "targets", None))
    if labels is None or not hasattr(train, "subset"):
        raise UserError(f"data set {bundle.name!r} does not support a train limit "
                        f"(its training set has no labels/targets and subset())")
    labels = np.asarray(labels)
    present = len(np.unique(labels))
    if limit < present:
        raise UserError(f"train limit {limit} is below the {present} classes of {bundle.spec!r}: "
                        f"a stratified subset needs at least one image per class")
    index = stratified_indices(labels, limit)
    digest = hashlib.sha256(f"{bundle.content_hash}\0train_limit={limit}\0{_SUBSET_RULE}".encode())
    return dataclasses.replace(bundle, train=train.subset(index.tolist()), train_n=limit,
                               train_total=total, content_hash=digest.hexdigest())
