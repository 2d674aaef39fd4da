"""FastMLPClassifier beside scikit-learn's MLPClassifier at equal settings.

    pytest benchmarks/bench_estimator.py --benchmark-only

8,000 MNIST digits (the real test set's first 8,000), one hidden layer of 64
logistic units (Adam also with 32 and 100), batches of 200 (scikit-learn's
default; Adam also at 32 and 64), 20 epochs; both classifiers start from the
same weights and see the batches in the same order. And a wide sparse input
as text gives: 5,000 documents of 100 words each out of 50,000, as a
scipy.sparse CSR matrix, which neither library makes dense. The digits
standardised, a dense input, with 64 and 100 hidden units. And a narrow
input: scikit-learn's 1,797 digits of 64 features at batches of 16 and 32,
which fastmlp trains on one thread, beside the same on two.

Plain SGD (no momentum) is also timed beside the notebook's NumPy code doing
the same epochs (fastmlp.train's reference path, mini-batch): the 10x goal
of the estimator's issue assumes scikit-learn is about 3x slower than such a
bare NumPy loop, and this shows by how much it is on the machine at hand.
"""

import numba
import numpy as np
import pytest
import scipy.sparse
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from workloads import (
    ESTIMATOR_EPOCHS,
    ESTIMATOR_EXAMPLES,
    fit_estimator,
    load_data,
    rest,
    warm_up_estimator,
)

import fastmlp
from fastmlp import FastMLPClassifier, engine


def group_name(data: str, solver: str, epochs: int, batch_size: int = 200, hidden: int = 64) -> str:
    batches = "" if batch_size == 200 else f", batches of {batch_size}"
    units = "" if hidden == 64 else f", {hidden} hidden units"
    return f"estimator fit: {data}, {solver}{batches}{units}, {epochs} epochs"


def time_fits(benchmark, library, solver, epochs, X, y, group, batch_size=200, hidden=64):
    """Time three fits of one library at the tests' ``equal_settings``, after
    an untimed fit of fastmlp on a few samples that compiles its kernels,
    each after a rest (``workloads.IDLE``); return the last model."""
    warm_up_estimator(X, y, batch_size, solver, hidden)  # untimed
    benchmark.group = group_name(group, solver, epochs, batch_size, hidden)
    benchmark.extra_info["threads"] = numba.get_num_threads()
    return benchmark.pedantic(
        fit_estimator,
        args=(X, y, epochs, batch_size, solver, hidden),
        kwargs=dict(estimator=MLPClassifier if library == "sklearn" else FastMLPClassifier),
        setup=None if benchmark.disabled else rest,
        rounds=3,
        warmup_rounds=0,
    )


def digits(smoke: bool, dtype):
    """The MNIST digits, epochs and data's name of the benchmarks on digits."""
    n = 1000 if smoke else ESTIMATOR_EXAMPLES
    X, y, _ = load_data(n, dtype)
    return X, y, 2 if smoke else ESTIMATOR_EPOCHS, f"{n:,} MNIST digits"


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("library", ["fastmlp", "sklearn"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def bench_estimator_fit(benchmark, smoke, library, solver, dtype):
    X, y, epochs, data = digits(smoke, dtype)
    model = time_fits(benchmark, library, solver, epochs, X, y, data)
    benchmark.extra_info["training accuracy"] = float(model.score(X, y))


@pytest.mark.parametrize("batch_size", [32, 64])
@pytest.mark.parametrize("library", ["fastmlp", "sklearn"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def bench_estimator_fit_small_batches(benchmark, smoke, library, dtype, batch_size):
    """Adam at smaller batches, where each library's cost per batch that
    does not shrink with the batch shows most: scikit-learn's Python and
    NumPy calls, fastmlp's passes over every weight (the gradient, the L2
    term, Adam's moments)."""
    X, y, epochs, data = digits(smoke, dtype)
    time_fits(benchmark, library, "adam", epochs, X, y, data, batch_size)


@pytest.mark.parametrize("hidden", [32, 100])
@pytest.mark.parametrize("library", ["fastmlp", "sklearn"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def bench_estimator_fit_hidden_sizes(benchmark, smoke, library, dtype, hidden):
    """Adam with hidden layers that are not a whole number of the kernels'
    blocks of 64 units (:data:`fastmlp.kernels.HIDDEN_BLOCK`): scikit-learn's
    default of 100, and 32, whose units the kernels add outside the blocks."""
    X, y, epochs, data = digits(smoke, dtype)
    time_fits(benchmark, library, "adam", epochs, X, y, data, hidden=hidden)


@pytest.mark.parametrize("hidden", [64, 100])
@pytest.mark.parametrize("library", ["fastmlp", "sklearn"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def bench_estimator_fit_standardised(benchmark, smoke, library, dtype, hidden):
    """Adam on the digits standardised, as scikit-learn's guide to its MLP
    advises (``StandardScaler`` in a pipeline): a dense input, which fastmlp
    reads four examples (or features) at a time; with 64 hidden units and
    scikit-learn's default of 100."""
    X, y, epochs, data = digits(smoke, dtype)
    X = StandardScaler().fit_transform(X).astype(dtype)
    time_fits(benchmark, library, "adam", epochs, X, y, f"{data} standardised", hidden=hidden)


@pytest.mark.parametrize("library", ["fastmlp", "sklearn", "numpy loop"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def bench_plain_sgd_fit(benchmark, smoke, library, dtype):
    """Plain SGD at the estimator benchmark's settings, and the NumPy reference
    loop doing the same epochs on the notebook's initial weights (the same
    arithmetic: scikit-learn's alpha 0 is no L2 term)."""
    X, y, epochs, data = digits(smoke, dtype)
    if library != "numpy loop":
        model = time_fits(benchmark, library, "plain sgd", epochs, X, y, data)
    else:
        benchmark.group = group_name(data, "plain sgd", epochs)
        settings = dict(iterations=epochs, batch_size=200, alpha=0.1, log_every=None)
        model = benchmark.pedantic(
            fastmlp.train,
            args=(X, y),
            kwargs=dict(backend="numpy", **settings),
            setup=None if smoke else rest,
            rounds=3,
        )
    benchmark.extra_info["training accuracy"] = float(model.score(X, y))


@pytest.mark.parametrize("batch_size", [16, 32])
@pytest.mark.parametrize("library", ["fastmlp", "fastmlp, two threads", "sklearn"])
def bench_estimator_fit_narrow(benchmark, smoke, monkeypatch, library, batch_size):
    """Adam on scikit-learn's 1,797 digits (64 features, float64) at small
    batches, whose batches fastmlp trains on one thread
    (:data:`fastmlp.engine.ONE_THREAD_MADDS`); "two threads" turns that off."""
    if library.endswith("two threads"):
        monkeypatch.setattr(engine, "ONE_THREAD_MADDS", dict.fromkeys(engine.ONE_THREAD_MADDS, 0))
    X, y = load_digits(return_X_y=True)
    epochs = 2 if smoke else ESTIMATOR_EPOCHS
    time_fits(benchmark, library, "adam", epochs, X / 16, y, "1,797 8x8 digits", batch_size)


@pytest.mark.parametrize("library", ["fastmlp", "sklearn"])
def bench_estimator_fit_sparse(benchmark, smoke, library):
    m, n_x = (500, 5000) if smoke else (5000, 50_000)
    rng = np.random.default_rng(0)
    words = rng.integers(0, n_x, (m, 100))  # a word may repeat: its count adds up
    X = scipy.sparse.csr_matrix(
        (rng.random(words.size, np.float32), words.ravel(), np.arange(0, words.size + 1, 100)),
        shape=(m, n_x),
    )
    y = rng.integers(0, 10, m)
    group = f"{m:,} sparse documents x {n_x:,} features"
    time_fits(benchmark, library, "adam", 5, X, y, group)
