"""harness.data: real loaders on tiny data sets written in the real formats under tmp_path."""
from __future__ import annotations

import gzip
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import CIFAR_NAMES, FASHION_FILES, _idx_bytes, _write_cifar_batch, _write_fashion, _write_png, needs_fashion
from harness.data import DATASETS, DataBundle, DataSet, eval_arrays, load_data, make_loader, stratified_indices
from harness.data.fashion_mnist import CLASSES as FASHION_CLASSES
from harness.data.fashion_mnist import DEFAULT_PATH as FASHION_DEFAULT
from harness.errors import UserError

# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_data("digits")


def test_digits_split_and_shapes(digits: DataBundle) -> None:
    assert digits.name == "digits" and not digits.synthetic and digits.augment
    assert len(digits.train) == 1437 and len(digits.test) == 360
    assert digits.num_classes == 10 and digits.input_shape == (3, 32, 32)
    x, y = digits.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert 0 <= y < 10
    train_labels = set(digits.train.labels.tolist())
    test_labels = set(digits.test.labels.tolist())
    assert train_labels == test_labels == set(range(10))


def test_digits_normalised_on_train(digits: DataBundle) -> None:
    x, _ = digits.train.batch(torch.arange(len(digits.train)))
    assert abs(float(x.mean())) < 1e-3
    assert abs(float(x.std()) - 1.0) < 1e-2
    assert torch.allclose(x[:, 0], x[:, 1]) and torch.allclose(x[:, 0], x[:, 2])


def test_digits_deterministic_across_calls_and_seeds(digits: DataBundle) -> None:
    other = load_data("digits", seed=123)
    assert other.content_hash == digits.content_hash
    assert torch.equal(other.test.labels, digits.test.labels)
    a, _ = eval_arrays(digits, limit=20)
    b, _ = eval_arrays(other, limit=20)
    np.testing.assert_array_equal(a, b)


def test_digits_input_size() -> None:
    bundle = load_data("digits", input_size=16)
    assert bundle.input_shape == (3, 16, 16)
    x, y = eval_arrays(bundle, limit=5)
    assert x.shape == (5, 3, 16, 16)


# ----------------------------------------------------------------------------- eval arrays / loaders


def test_eval_arrays_shapes_dtypes_limit(digits: DataBundle) -> None:
    x, y = eval_arrays(digits)
    assert x.shape == (360, 3, 32, 32) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    assert y.shape == (360,) and y.dtype == np.int64
    xl, yl = eval_arrays(digits, limit=7)
    np.testing.assert_array_equal(xl, x[:7])
    np.testing.assert_array_equal(yl, y[:7])
    # The arrays are exactly what a model is fed by the (unaugmented) loader.
    xb, yb = next(iter(make_loader(digits.test, batch_size=7, shuffle=False, seed=0, augment=True)))
    np.testing.assert_allclose(xb.numpy(), xl, atol=1e-6)
    assert eval_arrays(digits, limit=0)[0].shape == (0, 3, 32, 32)


def _first_batches(bundle: DataBundle, seed: int, augment: bool, n: int = 2) -> list:
    loader = make_loader(bundle.train, batch_size=32, shuffle=True, seed=seed, augment=augment)
    out = []
    for i, batch in enumerate(loader):
        if i == n:
            break
        out.append(batch)
    return out


def test_loader_deterministic(digits: DataBundle) -> None:
    for augment in (False, True):
        a = _first_batches(digits, seed=5, augment=augment)
        b = _first_batches(digits, seed=5, augment=augment)
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = _first_batches(digits, seed=6, augment=False)
    assert not torch.equal(a[0][1], c[0][1])


def test_augmentation_keeps_shape_and_changes_pixels(digits: DataBundle) -> None:
    plain = make_loader(digits.train, batch_size=64, shuffle=False, seed=0)
    aug = make_loader(digits.train, batch_size=64, shuffle=False, seed=0, augment=True)
    (xp, yp), (xa, ya) = next(iter(plain)), next(iter(aug))
    assert xa.shape == xp.shape == (64, 3, 32, 32)
    assert torch.equal(ya, yp)
    assert not torch.equal(xa, xp)
    # Padding is black (raw 0) after normalisation, never a value outside the data range.
    assert float(xa.min()) >= float(xp.min()) - 1e-5
    # The bundle's own data set is left unaugmented.
    assert torch.equal(next(iter(plain))[0], xp)


def test_loader_with_workers(digits: DataBundle) -> None:
    kwargs = dict(batch_size=128, shuffle=True, seed=3, augment=True, workers=2)
    a = [x for x, _ in make_loader(digits.train, **kwargs)]
    b = [x for x, _ in make_loader(digits.train, **kwargs)]
    assert len(a) == 12 and all(torch.equal(p, q) for p, q in zip(a, b))


# ----------------------------------------------------------------------------- cifar10


def test_cifar10_loads_parent_or_batches_folder(cifar_root: Path) -> None:
    for path in (cifar_root, cifar_root / "cifar-10-batches-py"):
        bundle = load_data(f"cifar10:{path}")
        assert bundle.name == "cifar10" and bundle.classes == CIFAR_NAMES
        assert len(bundle.train) == 20 and len(bundle.test) == 6
        assert bundle.input_shape == (3, 32, 32) and bundle.num_classes == 10
        assert len(bundle.content_hash) == 64
    x, y = eval_arrays(bundle)
    assert x.shape == (6, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    raw = pickle.loads((cifar_root / "cifar-10-batches-py" / "test_batch").read_bytes(), encoding="bytes")
    assert y.tolist() == raw[b"labels"]
    expected = (raw[b"data"][0, :1024].reshape(32, 32) / 255.0 - 0.4914) / 0.2023
    np.testing.assert_allclose(x[0, 0], expected, atol=1e-5)


def test_cifar10_augment_and_resize(cifar_root: Path) -> None:
    bundle = load_data(f"cifar10:{cifar_root}", input_size=48)
    xb, _ = next(iter(make_loader(bundle.train, batch_size=8, shuffle=True, seed=0, augment=True)))
    assert xb.shape == (8, 3, 48, 48)


def test_cifar10_hash_tracks_content(cifar_root: Path) -> None:
    before = load_data(f"cifar10:{cifar_root}").content_hash
    _write_cifar_batch(cifar_root / "cifar-10-batches-py" / "test_batch", 6, np.random.default_rng(9))
    assert load_data(f"cifar10:{cifar_root}").content_hash != before


# ----------------------------------------------------------------------------- imagefolder


def test_imagefolder_train_val(folder_root: Path) -> None:
    bundle = load_data(f"imagefolder:{folder_root}", input_size=24)
    assert bundle.classes == ["a", "b", "c"] and bundle.num_classes == 3
    assert len(bundle.train) == 6 and len(bundle.test) == 6
    assert bundle.input_shape == (3, 24, 24) and bundle.augment
    x, y = eval_arrays(bundle, limit=3)
    assert x.shape == (3, 3, 24, 24) and x.dtype == np.float32
    assert y.tolist() == [0, 1, 2]  # interleaved, so a prefix covers every class
    a = [x for x, _ in make_loader(bundle.train, batch_size=4, shuffle=True, seed=1, augment=True)]
    b = [x for x, _ in make_loader(bundle.train, batch_size=4, shuffle=True, seed=1, augment=True)]
    assert [t.shape for t in a] == [(4, 3, 24, 24), (2, 3, 24, 24)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_imagefolder_test_only(folder_root: Path) -> None:
    bundle = load_data(f"imagefolder:{folder_root / 'val'}", input_size=16)
    assert bundle.train is None and not bundle.augment and len(bundle.test) == 6


def test_imagefolder_class_mismatch(folder_root: Path) -> None:
    _write_png(folder_root / "val" / "d" / "0.png", (10, 10), 99)
    _raises_one_line(f"imagefolder:{folder_root}", "differ")


# ----------------------------------------------------------------------------- synthetic


def test_synthetic() -> None:
    bundle = load_data("synthetic")
    assert bundle.synthetic and bundle.name == "synthetic" and len(bundle.test) == 512
    assert bundle.num_classes == 10 and bundle.input_shape == (3, 32, 32)
    x, y = eval_arrays(bundle, limit=10)
    assert x.shape == (10, 3, 32, 32) and (y == -1).all()
    small = load_data("synthetic:7:4", input_size=20)
    assert len(small.test) == 7 and small.num_classes == 4 and small.input_shape == (3, 20, 20)
    xb, yb = next(iter(make_loader(small.train, batch_size=4, shuffle=True, seed=0, augment=True)))
    assert xb.shape == (4, 3, 20, 20) and ((yb >= 0) & (yb < 4)).all()


# ----------------------------------------------------------------------------- errors


def _raises_one_line(spec: str, fragment: str, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        load_data(spec, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message and message
    assert fragment in message, message
    return message


def test_errors_spec_and_paths(tmp_path: Path) -> None:
    _raises_one_line("cifar:/x", "did you mean: cifar10")
    _raises_one_line("imgfolder:/x", "imagefolder")
    _raises_one_line("cifar10", "needs a path")
    _raises_one_line("cifar10:", "needs a path")
    _raises_one_line("imagefolder", "needs a path")
    _raises_one_line(f"cifar10:{tmp_path / 'nope'}", "does not exist")
    _raises_one_line("digits:extra", "no argument")
    _raises_one_line("digits", "input size", input_size=0)


def test_errors_cifar_files(cifar_root: Path) -> None:
    folder = cifar_root / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    (folder / "batches.meta").unlink()
    _raises_one_line(f"cifar10:{cifar_root}", "missing data_batch_3")


def test_errors_cifar_corrupt(cifar_root: Path) -> None:
    folder = cifar_root / "cifar-10-batches-py"
    (folder / "data_batch_2").write_bytes(b"\x80\x02}q\x00(garbage\nmore garbage")
    _raises_one_line(f"cifar10:{cifar_root}", "cannot read")
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    _raises_one_line(f"cifar10:{cifar_root}", "N x 3072")


def test_errors_imagefolder(tmp_path: Path, folder_root: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _raises_one_line(f"imagefolder:{empty}", "no images")
    (empty / "cls").mkdir()
    _raises_one_line(f"imagefolder:{empty}", "no images")
    lonely = tmp_path / "lonely"
    (lonely / "train").mkdir(parents=True)
    _raises_one_line(f"imagefolder:{lonely}", "no val/")


@pytest.mark.parametrize("spec", ["synthetic:0", "synthetic:-3", "synthetic:abc", "synthetic:8:0", "synthetic:1:2:3"])
def test_errors_synthetic(spec: str) -> None:
    _raises_one_line(spec, "synthetic")


# ----------------------------------------------------------------------------- the registry


def test_registry_lists_every_scheme_and_imports_lazily() -> None:
    assert {"digits", "fashion-mnist", "cifar10", "imagefolder", "synthetic"} <= set(DATASETS.names())
    for name in DATASETS.names():
        assert isinstance(DATASETS.entry(name), str)  # "module:Class", imported on use
    code = ("import sys, harness.data as d; d.DATASETS.names(); "
            "print(sorted(m for m in ('sklearn', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_registry_is_strict_and_takes_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="duplicate data set name 'digits'"):
        DATASETS.register("digits", "harness.data.digits:Digits")
    _raises_one_line("fashion:/x", "did you mean: fashion-mnist")

    class Tiny(DataSet):
        def load(self, spec: str, arg: str | None, *, size: int, seed: int) -> DataBundle:
            bundle = load_data("synthetic:4:2", input_size=size, seed=seed)
            bundle.spec, bundle.name = spec, f"tiny({arg})"
            return bundle

    monkeypatch.setitem(DATASETS._entries, "tiny", Tiny)
    bundle = load_data("tiny:a:b", input_size=12)
    assert bundle.name == "tiny(a:b)" and bundle.spec == "tiny:a:b" and bundle.input_shape == (3, 12, 12)


# ----------------------------------------------------------------------------- fashion-mnist


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_fashion_loads_idx_files(tmp_path: Path, gz: bool) -> None:
    arrays = _write_fashion(tmp_path / "f", gz=gz)
    bundle = load_data(f"fashion-mnist:{tmp_path / 'f'}")
    assert bundle.name == "fashion-mnist" and not bundle.synthetic and bundle.augment
    assert bundle.classes == FASHION_CLASSES and bundle.num_classes == 10
    assert len(bundle.train) == 40 and len(bundle.test) == 20
    assert bundle.train_n == bundle.train_total == 40
    assert bundle.input_shape == (3, 32, 32) and len(bundle.content_hash) == 64
    # File order kept: train in file order, test = the t10k files in their order.
    assert bundle.train.labels.tolist() == arrays["train_labels"].tolist()
    x, y = eval_arrays(bundle)
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.float32
    assert y.tolist() == arrays["test_labels"].tolist()


def test_fashion_gzip_and_raw_are_the_same_data(tmp_path: Path) -> None:
    _write_fashion(tmp_path / "gz", gz=True)
    _write_fashion(tmp_path / "raw", gz=False)
    a, b = load_data(f"fashion-mnist:{tmp_path / 'gz'}"), load_data(f"fashion-mnist:{tmp_path / 'raw'}")
    assert a.content_hash == b.content_hash
    np.testing.assert_array_equal(eval_arrays(a)[0], eval_arrays(b)[0])


def test_fashion_resized_grey_to_three_channels_normalised_on_train(tmp_path: Path) -> None:
    arrays = _write_fashion(tmp_path / "f")
    bundle = load_data(f"fashion-mnist:{tmp_path / 'f'}")
    resize = lambda a: F.interpolate(torch.from_numpy(a).float()[:, None] / 255, size=(32, 32),  # noqa: E731
                                     mode="bilinear", align_corners=False).double()
    train = resize(arrays["train_images"])
    mean, std = float(train.mean()), float(train.std(unbiased=False))
    assert bundle.mean == (pytest.approx(mean),) * 3 and bundle.std == (pytest.approx(std),) * 3
    x, _ = bundle.train.batch(torch.arange(40))
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std(unbiased=False)) - 1) < 1e-4
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    xt, _ = eval_arrays(bundle)
    expected = (resize(arrays["test_images"])[:, 0] - mean) / std
    np.testing.assert_allclose(xt[:, 2], expected.numpy(), atol=1e-5)
    assert load_data(f"fashion-mnist:{tmp_path / 'f'}", input_size=28).input_shape == (3, 28, 28)


def test_fashion_augments_with_crop_and_flip(fashion_root: Path) -> None:
    bundle = load_data(f"fashion-mnist:{fashion_root}")
    assert bundle.train.flip and bundle.train.pad == 4 and not bundle.test.flip
    plain = next(iter(make_loader(bundle.train, batch_size=40, shuffle=False, seed=0)))
    aug = next(iter(make_loader(bundle.train, batch_size=40, shuffle=False, seed=0, augment=True)))
    assert aug[0].shape == plain[0].shape == (40, 3, 32, 32) and torch.equal(aug[1], plain[1])
    assert not torch.equal(aug[0], plain[0])


def test_fashion_hash_tracks_content(fashion_root: Path) -> None:
    before = load_data(f"fashion-mnist:{fashion_root}").content_hash
    _write_fashion(fashion_root, seed=1)
    assert load_data(f"fashion-mnist:{fashion_root}").content_hash != before


def _rewrite(root: Path, role: str, blob: bytes) -> None:
    (root / f"{FASHION_FILES[role]}.gz").write_bytes(gzip.compress(blob))


def test_fashion_errors_missing(tmp_path: Path, fashion_root: Path) -> None:
    message = _raises_one_line(f"fashion-mnist:{tmp_path / 'nope'}", "does not exist")
    assert "dataset-fashion-mnist" in message
    (fashion_root / "t10k-labels-idx1-ubyte.gz").unlink()
    message = _raises_one_line(f"fashion-mnist:{fashion_root}", "missing t10k-labels-idx1-ubyte.gz")
    assert "dataset-fashion-mnist" in message and FASHION_DEFAULT in message


def test_fashion_errors_bad_files(fashion_root: Path) -> None:
    spec = f"fashion-mnist:{fashion_root}"
    images = np.zeros((40, 28, 28), np.uint8)
    labels = (np.arange(40) % 10).astype(np.uint8)
    _rewrite(fashion_root, "train_images", _idx_bytes(labels))  # a labels file where images belong
    _raises_one_line(spec, "bad IDX magic 0x00000801, expected 0x00000803")
    _rewrite(fashion_root, "train_images", b"\x00\x00")
    _raises_one_line(spec, "not an IDX file")
    _rewrite(fashion_root, "train_images", _idx_bytes(images)[:10])
    _raises_one_line(spec, "truncated IDX header")
    _rewrite(fashion_root, "train_images", _idx_bytes(images)[:-5])
    _raises_one_line(spec, "truncated data")
    _rewrite(fashion_root, "train_images", _idx_bytes(images) + b"\x00")
    _raises_one_line(spec, "1 bytes after the data")
    _rewrite(fashion_root, "train_images", _idx_bytes(images[:39]))
    _raises_one_line(spec, "holds 39 images but train-labels-idx1-ubyte 40 labels")
    _rewrite(fashion_root, "train_images", _idx_bytes(images))
    _rewrite(fashion_root, "train_labels", _idx_bytes(np.where(labels == 3, 10, labels)))
    _raises_one_line(spec, "label 10 outside 0..9")
    _rewrite(fashion_root, "train_labels", _idx_bytes(images))
    _raises_one_line(spec, "bad IDX magic 0x00000803, expected 0x00000801")
    (fashion_root / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    _raises_one_line(spec, "cannot read")


def test_fashion_errors_train_test_sizes_differ(tmp_path: Path) -> None:
    _write_fashion(tmp_path / "f")
    _rewrite(tmp_path / "f", "test_images", _idx_bytes(np.zeros((20, 20, 20), np.uint8)))
    _raises_one_line(f"fashion-mnist:{tmp_path / 'f'}", "train images are 28x28 but test images 20x20")


@needs_fashion
def test_fashion_real_files() -> None:
    bundle = load_data("fashion-mnist")
    assert len(bundle.train) == 60_000 and len(bundle.test) == 10_000 and bundle.num_classes == 10
    assert bundle.train.images.shape == (60_000, 1, 28, 28)
    assert np.bincount(bundle.train.labels.numpy()).tolist() == [6000] * 10
    assert np.bincount(bundle.test.labels.numpy()).tolist() == [1000] * 10
    x, y = eval_arrays(bundle, limit=4)
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [9, 2, 1, 1]  # t10k's first labels


# ----------------------------------------------------------------------------- training subsets


def test_stratified_indices_proportional_sorted_fixed() -> None:
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_indices(labels, 10)
    assert np.bincount(labels[idx]).tolist() == [5, 3, 2]
    assert (np.diff(idx) > 0).all() and np.array_equal(idx, stratified_indices(labels, 10))
    assert np.bincount(labels[stratified_indices(labels, 7)]).tolist() == [4, 2, 1]  # 3.5, 2.1, 1.4
    assert np.array_equal(stratified_indices(labels, 100), np.arange(100))


def test_train_limit_fashion(fashion_root: Path) -> None:
    spec = f"fashion-mnist:{fashion_root}"
    full = load_data(spec)
    part = load_data(spec, train_limit=20, seed=7)
    assert part.train_n == len(part.train) == 20 and part.train_total == 40
    assert np.bincount(part.train.labels.numpy()).tolist() == [2] * 10
    again = load_data(spec, train_limit=20, seed=3)  # the run seed does not change the subset
    assert torch.equal(again.train.images, part.train.images) and again.content_hash == part.content_hash
    assert len({full.content_hash, part.content_hash, load_data(spec, train_limit=30).content_hash}) == 3
    # The subset's images are the full set's, and the test set and normalisation stay as they were.
    rows = [int(np.flatnonzero((full.train.images == img).all(dim=(1, 2, 3)))[0]) for img in part.train.images]
    assert rows == sorted(rows) and torch.equal(full.train.labels[rows], part.train.labels)
    np.testing.assert_array_equal(eval_arrays(part)[0], eval_arrays(full)[0])
    assert part.mean == full.mean and part.augment
    whole = load_data(spec, train_limit=40)
    assert whole.content_hash == full.content_hash and whole.train_n == whole.train_total == 40


def test_train_limit_digits_stratified(digits: DataBundle) -> None:
    part = load_data("digits", train_limit=100)
    counts = np.bincount(part.train.labels.numpy(), minlength=10)
    share = np.bincount(digits.train.labels.numpy(), minlength=10) * 100 / len(digits.train)
    assert counts.sum() == 100 and (np.abs(counts - share) < 1).all()
    assert (part.train_n, part.train_total) == (100, 1437) and part.content_hash != digits.content_hash
    xb, _ = next(iter(make_loader(part.train, batch_size=32, shuffle=True, seed=0, augment=True)))
    assert xb.shape == (32, 3, 32, 32)


def test_train_limit_other_data_sets(cifar_root: Path, folder_root: Path) -> None:
    folders = load_data(f"imagefolder:{folder_root}", input_size=16, train_limit=3)
    assert folders.train_n == 3 and sorted(folders.train.targets) == [0, 1, 2]
    assert len(folders.train) == 3 and folders.train[0][0].shape == (3, 16, 16)
    cifar = load_data(f"cifar10:{cifar_root}", train_limit=12)
    assert len(cifar.train) == 12 and cifar.train_total == 20
    assert load_data("synthetic", train_limit=16).train_n == 16


def test_train_limit_errors(folder_root: Path) -> None:
    for bad in (0, -4, True, 2.5, "10"):
        _raises_one_line("digits", "train limit must be a positive integer", train_limit=bad)
    _raises_one_line("digits", "below the 10 classes", train_limit=9)
    _raises_one_line(f"imagefolder:{folder_root / 'val'}", "no training split", train_limit=2)
