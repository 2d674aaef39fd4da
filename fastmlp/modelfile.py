"""Model files: one ``.npz`` archive of plain arrays, never a pickle.

A file holds the four parameter arrays (the notebook's layout), the class
labels, the activation, the input size, the dtype, a format name and version,
and a SHA-256 digest of everything else. Loading opens it with
``allow_pickle=False`` (so it cannot run code) and checks every one of those
before building a :class:`~fastmlp.Model`; a truncated, altered or foreign
file raises :class:`~fastmlp.ModelFileError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import reference
from .errors import ModelFileError
from .model import Model

FORMAT = "fastmlp-model"
VERSION = 1
_PARAMS = ("W1", "b1", "W2", "b2")
_FIELDS = {"format", "version", "digest", *_PARAMS, "classes", "activation", "n_features", "dtype"}


def _digest(fields: dict) -> str:
    """SHA-256 over every field but the digest: name, dtype, shape and bytes."""
    sha = hashlib.sha256()
    for name in sorted(fields):
        if name == "digest":
            continue
        array = np.ascontiguousarray(fields[name])
        sha.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()


def save_model(model: Model, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` (``.npz`` is added if missing); returns the path."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    classes = np.asarray(model.classes)
    if classes.dtype.kind not in "iub":  # labels of any other type are kept as text
        classes = classes.astype(str)
    fields: dict[str, Any] = {
        "format": np.array(FORMAT),
        "version": np.array(VERSION),
        "W1": model.W1,
        "b1": model.b1,
        "W2": model.W2,
        "b2": model.b2,
        "classes": classes,
        "activation": np.array(model.activation),
        "n_features": np.array(model.n_features),
        "dtype": np.array(model.dtype.name),
    }
    fields["digest"] = np.array(_digest(fields))
    with open(path, "wb") as handle:
        np.savez(handle, **fields)
    return path


def load_model(path: str | os.PathLike) -> Model:
    """Read a model written by :func:`save_model`, checking all of it.

    Raises
    ------
    ModelFileError
        When the file is missing, not a model file, truncated or altered.
    """
    path = Path(path)

    def fail(problem: str):
        raise ModelFileError(f"{path}: {problem}")

    if not path.is_file():
        fail("no such file")
    # The file is opened here, not by np.load, so that it is closed even when
    # the archive turns out to be damaged.
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":  # np.load would take anything else for a pickle
            fail("not an .npz model file (not a zip archive)")
        handle.seek(0)
        try:
            with np.load(handle, allow_pickle=False) as archive:
                names = set(archive.files)
                if "format" not in names:
                    fail("not a fastmlp model file (no format field)")
                missing, extra = _FIELDS - names, names - _FIELDS
                if missing or extra:
                    fail(f"unexpected contents (missing {sorted(missing)}, extra {sorted(extra)})")
                fields = {name: archive[name] for name in _FIELDS}
        except ModelFileError:
            raise
        except Exception as error:  # noqa: BLE001 - untrusted bytes: any parse failure
            if isinstance(error, ValueError) and "pickle" in str(error).lower():
                fail("holds pickled objects, which fastmlp never writes and will not load")
            fail(f"not a readable .npz model file ({type(error).__name__}: {error})")

    def text(name):
        value = fields[name]
        if value.shape != () or value.dtype.kind != "U":
            fail(f"field {name!r} should be text")
        return str(value)

    def integer(name):
        value = fields[name]
        if value.shape != () or value.dtype.kind not in "iu":
            fail(f"field {name!r} should be an integer")
        return int(value)

    if text("format") != FORMAT:
        fail(f"not a fastmlp model file (format {text('format')!r})")
    version = integer("version")
    if version != VERSION:
        fail(f"format version {version}; this fastmlp reads version {VERSION}")
    if text("digest") != _digest(fields):
        fail("contents do not match their digest: the file was altered or damaged")
    dtype = text("dtype")
    if dtype not in ("float32", "float64"):
        fail(f"dtype {dtype!r} is not float32 or float64")
    activation = text("activation")
    if activation not in reference.ACTIVATIONS:
        fail(f"unknown activation {activation!r}")
    n_features = integer("n_features")
    params = [fields[name] for name in _PARAMS]
    for name, array in zip(_PARAMS, params, strict=True):
        if array.dtype != np.dtype(dtype) or array.ndim != 2:
            fail(f"{name} should be a 2-D {dtype} array, got {array.ndim}-D {array.dtype}")
        if not np.isfinite(array).all():
            fail(f"{name} holds NaN or infinite values")
    W1, b1, W2, b2 = params
    n_h = W1.shape[0]
    n_y = W2.shape[0]
    shapes = {"W1": (n_h, n_features), "b1": (n_h, 1), "W2": (n_y, n_h), "b2": (n_y, 1)}
    for name, array in zip(_PARAMS, params, strict=True):
        if array.shape != shapes[name]:
            fail(
                f"{name} has shape {array.shape}, expected {shapes[name]} "
                f"for {n_features} inputs and {n_h} hidden units"
            )
    classes = fields["classes"]
    if classes.ndim != 1 or len(classes) != (2 if n_y == 1 else n_y):
        fail(f"{len(classes)} class labels do not fit {n_y} output units")
    if classes.dtype.kind not in "iubU":
        fail(f"class labels of dtype {classes.dtype} are not supported")
    return Model(W1, b1, W2, b2, classes, activation)
