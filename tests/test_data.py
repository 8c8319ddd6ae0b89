"""harness.data: real loaders on tiny data sets written in the real formats under tmp_path."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CIFAR_NAMES, _write_cifar_batch, _write_png
from harness.data import DataBundle, eval_arrays, load_data, make_loader
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
