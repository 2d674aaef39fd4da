"""Loaders: IDX files (real and malformed), digits, and OpenML with the network replaced."""

import gzip
import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
from _support import require_mnist

from fastmlp import datasets

# The published checksums of the official files (../shared/data/mnist/README.md).
MD5 = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


def write_idx(path, array, magic_type=0x08, compress=False):
    header = bytes([0, 0, magic_type, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    data = header + array.astype(">u1" if magic_type == 0x08 else ">i4").tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def test_real_mnist_test_set(mnist):
    folder = require_mnist()
    for name, digest in MD5.items():
        assert hashlib.md5((folder / name).read_bytes()).hexdigest() == digest
    assert mnist.X.shape == (10_000, 784) and mnist.y.shape == (10_000,)
    assert mnist.X.min() == 0 and mnist.X.max() == 1
    assert set(np.unique(mnist.y)) == set(range(10))
    assert 0.18 < np.count_nonzero(mnist.X) / mnist.X.size < 0.20  # the README's 19 %
    assert list(mnist.y[:5]) == [7, 2, 1, 0, 4]


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_idx_folder_with_both_splits(tmp_path, rng, compress):
    suffix = ".gz" if compress else ""
    images = {s: rng.integers(0, 256, (n, 4, 3)) for s, n in (("train", 6), ("t10k", 2))}
    for split, array in images.items():
        write_idx(tmp_path / f"{split}-images-idx3-ubyte{suffix}", array, compress=compress)
        write_idx(
            tmp_path / f"{split}-labels-idx1-ubyte{suffix}",
            np.arange(len(array)) % 3,
            compress=compress,
        )
    data = datasets.load(f"idx:{tmp_path}")
    expected = np.concatenate([images["train"], images["t10k"]]).reshape(8, 12) / 255
    np.testing.assert_array_equal(data.X, expected)
    np.testing.assert_array_equal(data.y, [0, 1, 2, 0, 1, 2, 0, 1])
    assert data.image_shape == (4, 3)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b"\x01" + b[1:], "not an IDX file"),
        (lambda b: b[:2] + b"\x07" + b[3:], "not an IDX file"),
        (lambda b: b[:3] + b"\x01" + b[4:], "magic number 2049, expected 2051"),
        (lambda b: b[:-1], "bytes, but a uint8 array of shape (2, 4, 3) takes"),
        (lambda b: b + b"\x00", "bytes, but a uint8 array"),
        (lambda b: b[:6], "truncated header"),
        (lambda b: gzip.compress(b)[:-9], "corrupt gzip data"),
    ],
)
def test_malformed_idx_files_are_rejected_by_name(tmp_path, rng, damage, message):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (2, 4, 3)))
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte") as caught:
        datasets.read_idx(path, magic=datasets.IMAGES_MAGIC)
    assert message in str(caught.value)


def test_idx_folder_problems(tmp_path, rng):
    with pytest.raises(datasets.DatasetUnavailable, match="no such directory"):
        datasets.load(f"idx:{tmp_path / 'absent'}")
    with pytest.raises(datasets.DatasetUnavailable, match="no IDX files"):
        datasets.load(f"idx:{tmp_path}")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (2, 4, 3)))
    with pytest.raises(datasets.DatasetUnavailable, match="t10k-labels-idx1-ubyte"):
        datasets.load(f"idx:{tmp_path}")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(3))
    with pytest.raises(ValueError, match=r"expected n images and n labels"):
        datasets.load(f"idx:{tmp_path}")
    with pytest.raises(ValueError, match="unknown data set"):
        datasets.load("cifar10")


def test_digits_ship_with_scikit_learn():
    data = datasets.load("digits")
    assert data.X.shape == (1797, 64) and data.X.max() == 1.0 and data.image_shape == (8, 8)


def test_mnist_from_openml_with_the_network_replaced(monkeypatch, tmp_path):
    calls = []

    def fake_fetch_openml(name, **kwargs):
        calls.append((name, kwargs))
        return SimpleNamespace(data=np.full((3, 784), 255.0), target=np.array(["5", "0", "4"]))

    monkeypatch.setattr("sklearn.datasets.fetch_openml", fake_fetch_openml)
    data = datasets.load("mnist", data_home=tmp_path)
    assert calls[0][0] == "mnist_784"
    assert calls[0][1]["version"] == 1 and calls[0][1]["data_home"] == tmp_path
    assert calls[0][1]["as_frame"] is False and calls[0][1]["parser"] == "auto"
    np.testing.assert_array_equal(data.y, [5, 0, 4])
    assert data.X.max() == 1.0 and data.image_shape == (28, 28)


def test_mnist_offline_is_reported_as_unavailable(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr("sklearn.datasets.fetch_openml", offline)
    with pytest.raises(datasets.DatasetUnavailable, match="could not be fetched from OpenML"):
        datasets.load("mnist")


def test_mnist_without_pandas_names_the_extra(monkeypatch):
    def without_pandas(*args, **kwargs):  # what fetch_openml raises without pandas
        raise ImportError("fetch_openml with as_frame=False requires pandas.")

    monkeypatch.setattr("sklearn.datasets.fetch_openml", without_pandas)
    with pytest.raises(datasets.DatasetUnavailable, match=r"pip install 'fastmlp\[mnist\]'"):
        datasets.load("mnist")
