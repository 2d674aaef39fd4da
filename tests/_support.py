"""Shared test helpers: tolerances, data and conversions between layouts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Tolerances for "fast path equals reference", in one place.
#
# The kernels add the same terms as NumPy but in another order (rows of four,
# vectorised lanes, chunks), so a sum of n terms may differ by about
# n * eps * (sum of |terms|). With at most ~1,000 terms per sum:
#   float64: eps = 2.2e-16, so 1e-12 relative covers it (as the issue asks);
#   float32: eps = 1.2e-7, so n * eps reaches 1e-4 in the worst case; sums of
#            logits and gradients in these tests stay well inside 2e-4.
# ``atol`` is the same bound relative to the largest expected magnitude, for
# entries that cancel to nearly zero.
RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-4}

# What the kernels take for "no sample weights".
NO_WEIGHTS = np.empty(0, np.float64)


def assert_close(actual, expected, dtype=None, scale=None):
    """Assert two arrays agree to the tolerance of ``dtype`` (default: theirs).

    ``scale`` is the size of the terms that were summed, for sums that can
    cancel to exactly 0 in one order and not in another; by default the
    largest expected magnitude.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    rtol = RTOL[np.dtype(dtype if dtype is not None else actual.dtype)]
    if scale is None:
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


DTYPES = [np.float64, np.float32]


SOLVERS = {
    "adam": dict(solver="adam", learning_rate_init=1e-3),
    "sgd": dict(solver="sgd", learning_rate_init=0.1, momentum=0.9),
    "plain sgd": dict(solver="sgd", learning_rate_init=0.1, momentum=0.0),
}


def equal_settings(
    solver: str, epochs: int, batch_size: int = 200, hidden: int = 64, **changes
) -> dict:
    """Settings under which FastMLPClassifier and MLPClassifier train alike:
    one hidden layer of logistic units, the same seed (so the same initial
    weights and batch order), and ``epochs`` epochs with no early stop. The
    estimator's accuracy tests and its benchmark (benchmarks/bench_estimator.py)
    both use them."""
    settings = dict(
        hidden_layer_sizes=(hidden,),
        activation="logistic",
        batch_size=batch_size,
        max_iter=epochs,
        random_state=0,
        tol=0.0,
        n_iter_no_change=epochs + 1,
        **SOLVERS[solver],
    )
    return {**settings, **changes}


def mnist_dir() -> Path:
    """The shared MNIST test set, beside the project (or FASTMLP_MNIST_DIR)."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    return Path(os.environ.get("FASTMLP_MNIST_DIR", default))


def require_mnist() -> Path:
    path = mnist_dir()
    if not (path / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(
            f"the real MNIST test set is not at {path} (it sits beside the project "
            "as ../shared/data/mnist; set FASTMLP_MNIST_DIR to point elsewhere)"
        )
    return path


def sparse_data(rng, m, n_x, n_y, dtype, density=0.2):
    """Random MNIST-like inputs in [0, 1] with about ``density`` nonzeros."""
    X = rng.random((m, n_x))
    X[rng.random((m, n_x)) > density] = 0
    return X.astype(dtype), rng.integers(0, n_y, m)


FORMS = ["dense", "mask", "listed", "prepared"]
"""How the kernels can see an input: as it is, through a nonzero mask (mini-batches
seen once), through its nonzeros listed by example (mini-batches for many epochs)
or through its nonzeros prepared in both orders (full batches)."""


def input_nonzeros(X, form):
    """The :class:`fastmlp.kernels.Nonzeros` of all of ``X`` in one of ``FORMS``
    (a mask starts empty: the forward pass marks it)."""
    from fastmlp import engine

    if form == "prepared":
        return engine.prepared_input(X)
    if form == "mask":
        return engine.batch_input(len(X), X.shape[1], X.dtype)
    if form == "listed":
        return engine.listed_input(X)
    return engine.dense_input(X.shape[1], X.dtype)


def kernel_gradients(
    X, y, params, *, weights=NO_WEIGHTS, form="dense", l2=0.0, activation="logistic", grads=None
):
    """The kernels' forward and backward passes over all of ``X`` with the
    kernel-layout ``params``; returns the loss and the gradients (written into
    ``grads`` where given)."""
    from fastmlp import engine, kernels

    W1, b1, W2, b2 = params
    m, (n_y, n_h) = len(y), W2.shape
    rows, code = np.arange(m), kernels.ACTIVATIONS[activation]
    nonzeros = input_nonzeros(X, form)
    A1, A2, part_sums, *scratch = engine._work(m, X.shape[1], n_h, n_y, X.dtype)
    kernels.forward(X, rows, nonzeros, W1, b1, W2, b2, code, A1, A2, part_sums)
    if grads is None:
        grads = [np.empty_like(p) for p in params]
    loss = kernels.backward(
        X, rows, nonzeros, y, weights, W1, W2, code, l2, A1, A2, *grads, *scratch
    )
    return loss, grads


def loss_function(X, y, n_h, n_y, activation, l2):
    """The fast path's loss and gradient as functions of the flat float64
    parameter vector: for finite-difference checks."""
    from fastmlp import kernels

    n_x = X.shape[1]

    def f(theta):
        grads = np.empty_like(theta)
        loss, _ = kernel_gradients(
            X,
            y,
            kernels.unpack(theta, n_x, n_h, n_y),
            l2=l2,
            activation=activation,
            grads=kernels.unpack(grads, n_x, n_h, n_y),
        )
        return loss, grads

    return f
