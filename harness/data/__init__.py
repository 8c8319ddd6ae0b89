"""Data sets: one ``SCHEME[:ARG]`` spec -> a DataBundle of in-memory (or folder-backed) sets.

Built in: ``digits`` (default, bundled with scikit-learn), ``fashion-mnist[:PATH]``,
``cifar10:PATH``, ``imagefolder:PATH``, ``synthetic[:N[:C]]``. Nothing is ever downloaded; every
bad input raises a one-line UserError. Each scheme is a :class:`DataSet` registered in
``DATASETS`` as a lazy ``"module:Class"`` string (so listing data sets imports neither
scikit-learn nor torchvision); other packages add theirs through the ``harness.datasets``
entry-point group.
"""
from __future__ import annotations

from harness.data.base import DataBundle, DataSet
from harness.data.cifar10 import CIFAR_MEAN, CIFAR_STD
from harness.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from harness.data.images import FolderImages, TensorImages
from harness.data.loaders import eval_arrays, make_loader
from harness.data.subset import SUBSET_RANDOM_STATE, check_train_limit, limit_train, stratified_indices
from harness.errors import UserError
from harness.registry import Registry

__all__ = ["DATASETS", "DataBundle", "DataSet", "FolderImages", "TensorImages", "CIFAR_MEAN",
           "CIFAR_STD", "IMAGENET_MEAN", "IMAGENET_STD", "SUBSET_RANDOM_STATE", "eval_arrays",
           "get_dataset", "limit_train", "load_data", "make_loader", "stratified_indices"]

DATASETS: Registry[DataSet] = Registry("data set", entry_point_group="harness.datasets")
DATASETS.register("digits", "harness.data.digits:Digits")
DATASETS.register("fashion-mnist", "harness.data.fashion_mnist:FashionMnist")
DATASETS.register("cifar10", "harness.data.cifar10:Cifar10")
DATASETS.register("imagefolder", "harness.data.imagefolder:ImageFolderSet")
DATASETS.register("synthetic", "harness.data.synthetic:Synthetic")


def get_dataset(scheme: str) -> DataSet:
    """The data set registered as ``scheme`` (UserError with a did-you-mean when unknown)."""
    dataset = DATASETS.get(scheme)
    if not callable(getattr(dataset, "load", None)):
        raise TypeError(f"data set {scheme!r} is registered as {type(dataset).__name__}, not a DataSet")
    return dataset


def load_data(spec: str = "digits", *, input_size: int | None = None, seed: int = 0,
              train_limit: int | None = None) -> DataBundle:
    """Parse ``SCHEME[:ARG]`` and return its DataBundle (nothing is downloaded).

    ``input_size`` overrides the data set's default side (32, or 224 for imagefolder); ``seed``
    only matters to synthetic data; ``train_limit=N`` keeps a fixed, class-stratified N of the
    training split (see :func:`harness.data.subset.limit_train`).
    """
    if input_size is not None and (not isinstance(input_size, int) or isinstance(input_size, bool)
                                   or input_size < 8):
        raise UserError(f"input size must be an integer >= 8, got {input_size!r}")
    check_train_limit(train_limit)
    scheme, sep, arg = spec.partition(":")
    dataset = get_dataset(scheme)
    bundle = dataset.load(spec, arg if sep else None, size=input_size or dataset.default_size, seed=seed)
    return bundle if train_limit is None else limit_train(bundle, train_limit)
