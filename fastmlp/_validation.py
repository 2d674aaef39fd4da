"""Checks run at every public entry point, before any kernel sees the data.

Kernels trust their inputs (no checks in the hot loops), so everything that
could make them read out of bounds or compute garbage is caught here, with a
message that names the argument and what was expected.
"""

from __future__ import annotations

import numbers

import numpy as np

_CHECK_ROWS = 4096


def resolve_dtype(dtype, X=None) -> np.dtype:
    """The training dtype: ``dtype`` if given, else float32 for float32 ``X``
    (never promoted silently), else float64."""
    if dtype is None:
        if X is not None and np.asarray(X).dtype == np.float32:
            return np.dtype(np.float32)
        return np.dtype(np.float64)
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return resolved


def reject_sparse(X, name: str = "X") -> None:
    if hasattr(X, "toarray") and hasattr(X, "nnz"):
        raise TypeError(
            f"{name} is a scipy.sparse matrix; pass a dense array (fastmlp finds the "
            "zeros itself), or train fastmlp.FastMLPClassifier, which takes sparse input"
        )


def check_2d(array, name: str = "X") -> None:
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (examples x features), got {array.ndim}-D with shape {array.shape}"
        )


def as_matrix(
    X, name: str = "X", *, dtype=None, n_features: int | None = None, ensure_finite: bool = True
):
    """``X`` as a C-contiguous 2-D float array of ``dtype``, non-empty, and
    finite unless ``ensure_finite=False`` (see :func:`check_finite`).

    Integer pixels (uint8), Fortran-ordered, strided and read-only arrays are
    accepted and copied once into the layout the kernels need.
    """
    reject_sparse(X, name)
    array = np.asarray(X)
    if array.dtype.kind not in "fiub":
        raise TypeError(
            f"{name} must hold numbers (floats, integers or booleans), got dtype {array.dtype}"
        )
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (examples x features), got {array.ndim}-D with shape {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {array.shape}")
    if n_features is not None and array.shape[1] != n_features:
        hint = ""
        if array.shape[0] == n_features:
            hint = " (examples as columns, the notebook's layout? pass X.T)"
        raise ValueError(
            f"{name} has {array.shape[1]} features per example, the model "
            f"expects {n_features}{hint}"
        )
    target = resolve_dtype(dtype, array)
    array = np.ascontiguousarray(array, dtype=target)
    if ensure_finite:
        check_finite(array, name)
    return array


def check_finite(array, name: str = "X") -> None:
    """Raise ValueError naming the first NaN or infinity of the 2-D ``array``.

    Training skips this check up front (``ensure_finite=False``) and makes it
    only when a step fails: any NaN or infinity in ``X`` makes the first step
    fail, and a finite ``X`` is then read once less (W2 in float32, after the
    caches were flushed: 20.6 against 23.2 ms).
    """
    # A sum is finite only if every term is: one pass and no array of booleans,
    # as scikit-learn checks (W2's 10,000 images in float64: 1.9 ms against
    # 3.0 ms; in float32 both take about 1.5 ms, the time to read X). Where the
    # sum is not finite, find the first culprit, or none if it overflowed.
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(array.sum()):
            return
    # In slices, so that checking a large X does not allocate another X of booleans.
    for start in range(0, array.shape[0], _CHECK_ROWS):
        finite = np.isfinite(array[start : start + _CHECK_ROWS])
        if not finite.all():
            row, column = np.argwhere(~finite)[0]
            raise ValueError(
                f"{name} contains NaN or infinity (first at row {start + row}, "
                f"column {column}); remove or impute them first"
            )


def as_labels(y, n_examples: int, name: str = "y"):
    """``y`` as a 1-D array of ``n_examples`` labels, and its sorted classes."""
    array = np.asarray(y)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array.ravel()
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per example), got shape {array.shape}")
    if array.shape[0] != n_examples:
        raise ValueError(f"{name} has {array.shape[0]} labels but X has {n_examples} examples")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinity")
    if array.dtype.kind == "O":
        array = array.astype(str) if all(isinstance(v, str) for v in array) else array
    classes, indices = np.unique(array, return_inverse=True)
    if classes.size < 2:
        raise ValueError(f"{name} has 1 class ({classes[0]!r}); a classifier needs at least two")
    return indices.astype(np.int64), classes


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def check_positive_float(value, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a finite {bound} number, got {value}")
    return value


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}; got {value!r}")
    return value
