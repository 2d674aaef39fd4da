"""Data sets of handwritten digits, through one loader.

``load("mnist")``
    MNIST from OpenML with scikit-learn's ``fetch_openml``, as in the notebook:
    70,000 images, cached in scikit-learn's data home after the first download.
``load("idx:DIR")``
    The original MNIST (or Fashion-MNIST) IDX files in ``DIR``, gzip-compressed
    or raw: ``train-images-idx3-ubyte`` with ``train-labels-idx1-ubyte``,
    and/or ``t10k-...``; the format's magic numbers and sizes are checked.
``load("digits")``
    scikit-learn's 1,797 8x8 digits, which ship with scikit-learn.

Images come back as rows of pixel values scaled to [0, 1] (the notebook's
``/ 255.0``), labels as integers.
"""

from __future__ import annotations

import gzip
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Dataset", "DatasetUnavailable", "load", "read_idx"]

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DatasetUnavailable(OSError):
    """A data set cannot be loaded here (no network and no cache, say)."""


@dataclass(frozen=True)
class Dataset:
    """Examples as rows, with their labels.

    Attributes
    ----------
    X : ndarray of shape (n_examples, n_features)
        Pixel values in [0, 1].
    y : ndarray of shape (n_examples,)
        Integer labels.
    name : str
        Where the data came from.
    image_shape : tuple of int
        The shape of one image (28 x 28 for MNIST, 8 x 8 for digits).
    """

    X: np.ndarray
    y: np.ndarray
    name: str
    image_shape: tuple[int, int]

    def split(self, n_train: int) -> tuple[Dataset, Dataset]:
        """The first ``n_train`` examples, and the rest (as the notebook takes
        its first 2,000)."""
        first = Dataset(self.X[:n_train], self.y[:n_train], self.name, self.image_shape)
        rest = Dataset(self.X[n_train:], self.y[n_train:], self.name, self.image_shape)
        return first, rest


def read_idx(path: str | os.PathLike, *, magic: int | None = None) -> np.ndarray:
    """Read one IDX file (gzip-compressed or raw) into an array of its shape.

    Parameters
    ----------
    path : path-like
    magic : int, optional
        The magic number the file must have (2051 for images, 2049 for labels).

    Raises
    ------
    ValueError
        When the file is not IDX, has another magic number, or its size does
        not match its header; the message names the file.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path}: corrupt gzip data ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    found = int.from_bytes(raw[:4], "big")
    if magic is not None and found != magic:
        raise ValueError(f"{path}: magic number {found}, expected {magic}")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: {len(raw)} bytes, but a {dtype.name} array of shape {shape} takes {expected}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def load_idx_dir(directory: str | os.PathLike) -> Dataset:
    """The images and labels of an IDX folder: the training split and then the
    test split, whichever of them are there."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetUnavailable(f"{directory}: no such directory")
    parts = []
    for split in ("train", "t10k"):
        images = _find(directory, f"{split}-images-idx3-ubyte")
        labels = _find(directory, f"{split}-labels-idx1-ubyte")
        if images is None and labels is None:
            continue
        if images is None or labels is None:
            missing = f"{split}-{'images-idx3' if images is None else 'labels-idx1'}-ubyte"
            raise DatasetUnavailable(f"{directory}: {missing}[.gz] is missing")
        X = read_idx(images, magic=IMAGES_MAGIC)
        y = read_idx(labels, magic=LABELS_MAGIC)
        if X.ndim != 3 or y.ndim != 1 or len(X) != len(y):
            raise ValueError(
                f"{images.name} holds {X.shape} and {labels.name} holds {y.shape}: "
                "expected n images and n labels"
            )
        parts.append((X, y))
    if not parts:
        raise DatasetUnavailable(
            f"{directory}: no IDX files (train-images-idx3-ubyte[.gz] or "
            "t10k-images-idx3-ubyte[.gz])"
        )
    X = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts]).astype(np.int64)
    n, height, width = X.shape
    return Dataset(X.reshape(n, height * width) / 255.0, y, f"idx:{directory}", (height, width))


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (values 0-16, scaled to [0, 1])."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    return Dataset(digits.data / 16.0, digits.target.astype(np.int64), "digits", (8, 8))


def fetch_mnist(data_home: str | os.PathLike | None = None) -> Dataset:
    """MNIST from OpenML, as the notebook loads it (the first call downloads
    about 15 MB into scikit-learn's data home; later calls read the cache)."""
    from sklearn.datasets import fetch_openml

    try:
        with warnings.catch_warnings():
            # fetch_openml warns before each retry; the error below says it once.
            warnings.filterwarnings("ignore", "A network error occurred", UserWarning)
            mnist = fetch_openml(
                "mnist_784",
                version=1,
                as_frame=False,
                parser="auto",
                data_home=data_home,
                n_retries=1,
                delay=0.5,
            )
    except OSError as error:  # URLError, HTTPError and socket errors
        raise DatasetUnavailable(f"MNIST could not be fetched from OpenML ({error})") from None
    except ImportError as error:  # its parser for dense ARFF data is pandas'
        raise DatasetUnavailable(
            f"loading MNIST from OpenML needs pandas ({error}): pip install 'fastmlp[mnist]'"
        ) from None
    return Dataset(mnist.data / 255.0, mnist.target.astype(np.int64), "mnist", (28, 28))


def load(spec: str, *, data_home: str | os.PathLike | None = None) -> Dataset:
    """Load a data set by name: ``"mnist"``, ``"digits"`` or ``"idx:DIR"``.

    Raises
    ------
    DatasetUnavailable
        When the data cannot be had here (no network, missing files).
    ValueError
        For an unknown name or a malformed file.
    """
    if spec == "mnist":
        return fetch_mnist(data_home)
    if spec == "digits":
        return load_digits()
    if spec.startswith("idx:"):
        return load_idx_dir(os.path.expanduser(spec[4:]))
    raise ValueError(f"unknown data set {spec!r}: use 'mnist', 'digits' or 'idx:DIR'")
