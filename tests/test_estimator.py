"""FastMLPClassifier: scikit-learn's checks, and side by side with MLPClassifier."""

import inspect
import json
import os
import pickle
import subprocess
import sys
import textwrap
import tracemalloc

import numba
import numpy as np
import pytest
import scipy.sparse
from _support import equal_settings
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastmlp import DivergenceError, FastMLPClassifier, engine

# Short runs in the checks; they warn that they did not converge, as MLPClassifier does.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@parametrize_with_checks(
    [
        FastMLPClassifier(max_iter=60, random_state=0),
        FastMLPClassifier(solver="sgd", learning_rate_init=0.1, max_iter=60, random_state=0),
        FastMLPClassifier(
            solver="gd", learning_rate_init=0.5, activation="relu", max_iter=100, random_state=0
        ),
    ],
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_same_as_scikit_learn_at_equal_settings_on_digits(digits, solver):
    X_train, X_test, y_train, y_test = digits
    ours = FastMLPClassifier(**equal_settings(solver, 30)).fit(X_train, y_train)
    theirs = MLPClassifier(**equal_settings(solver, 30)).fit(X_train, y_train)
    # Same initial weights and batch order: the same training, up to rounding.
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)
    for a, b in zip(
        ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)
    assert abs(ours.score(X_test, y_test) - theirs.score(X_test, y_test)) <= 0.01
    assert (ours.n_iter_, ours.t_) == (theirs.n_iter_, theirs.t_)
    assert ours.best_loss_ == pytest.approx(theirs.best_loss_)


@pytest.mark.skipif(
    "sample_weight" not in inspect.signature(MLPClassifier.fit).parameters,
    reason="MLPClassifier takes sample_weight from scikit-learn 1.7",
)
@pytest.mark.parametrize(
    "solver, early_stopping", [("adam", False), ("sgd", False), ("adam", True)]
)
def test_sample_weights_train_as_in_scikit_learn(digits, solver, early_stopping):
    X_train, _, y_train, _ = digits
    weights = np.random.default_rng(0).uniform(0, 3, len(y_train))
    kwargs = equal_settings(solver, 8, alpha=1e-2, early_stopping=early_stopping)
    ours = FastMLPClassifier(**kwargs).fit(X_train, y_train, sample_weight=weights)
    theirs = MLPClassifier(**kwargs).fit(X_train, y_train, sample_weight=weights)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)
    for a, b in zip(
        ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)
    if early_stopping:
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_)
    else:  # partial_fit takes them as scikit-learn's does: before classes
        classes = np.unique(y_train)
        ours.partial_fit(X_train, y_train, weights, classes)
        theirs.partial_fit(X_train, y_train, weights, classes)
        assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-9)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_same_accuracy_as_scikit_learn_on_real_mnist(mnist, solver):
    """Train on 8,000 real MNIST digits, test on the other 2,000, at the
    settings benchmarks/bench_estimator.py times."""
    X_train, y_train, X_test, y_test = (
        mnist.X[:8000],
        mnist.y[:8000],
        mnist.X[8000:],
        mnist.y[8000:],
    )
    kwargs = equal_settings(solver, 20)
    ours = FastMLPClassifier(**kwargs).fit(X_train, y_train).score(X_test, y_test)
    theirs = MLPClassifier(**kwargs).fit(X_train, y_train).score(X_test, y_test)
    assert ours > 0.9
    assert abs(ours - theirs) <= 0.01


@pytest.mark.parametrize("solver", ["adam", "sgd", "gd"])
@pytest.mark.parametrize("activation", ["logistic", "tanh", "relu"])
def test_solvers_and_activations_learn(digits, solver, activation):
    X_train, X_test, y_train, y_test = digits
    lr = {"adam": 0.01, "sgd": 0.1, "gd": 0.5}[solver]
    clf = FastMLPClassifier(
        activation=activation,
        solver=solver,
        learning_rate_init=lr,
        max_iter=300 if solver == "gd" else 40,
        random_state=0,
    )
    clf.fit(X_train, y_train)
    assert clf.score(X_test, y_test) > 0.85
    assert len(clf.loss_curve_) == clf.n_iter_
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]


def test_fitted_attributes_match_scikit_learns(digits):
    X_train, _, y_train, _ = digits
    ours = FastMLPClassifier(max_iter=5, random_state=0).fit(X_train, y_train)
    theirs = MLPClassifier(
        hidden_layer_sizes=(64,), activation="logistic", max_iter=5, random_state=0
    ).fit(X_train, y_train)
    for name in (
        "classes_",
        "n_features_in_",
        "n_layers_",
        "n_outputs_",
        "out_activation_",
        "n_iter_",
        "t_",
    ):
        assert np.array_equal(getattr(ours, name), getattr(theirs, name)), name
    assert [c.shape for c in ours.coefs_] == [c.shape for c in theirs.coefs_]
    assert [b.shape for b in ours.intercepts_] == [b.shape for b in theirs.intercepts_]
    assert ours.validation_scores_ is None and ours.best_validation_score_ is None


def test_early_stopping_keeps_the_best_weights(digits):
    X_train, _, y_train, _ = digits
    kwargs = equal_settings("adam", 200, early_stopping=True, n_iter_no_change=3)
    ours = FastMLPClassifier(**kwargs).fit(X_train, y_train)
    theirs = MLPClassifier(**kwargs).fit(X_train, y_train)
    assert ours.best_loss_ is None
    assert ours.n_iter_ == theirs.n_iter_ < 200
    np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_)
    assert ours.best_validation_score_ == max(ours.validation_scores_)


def test_string_labels_binary_and_probabilities(digits):
    X_train, X_test, y_train, y_test = digits
    names = np.where(y_train % 2 == 0, "even", "odd")
    clf = FastMLPClassifier(max_iter=50, random_state=0).fit(X_train, names)
    assert list(clf.classes_) == ["even", "odd"]
    assert clf.n_outputs_ == 1 and clf.out_activation_ == "logistic"
    proba = clf.predict_proba(X_test)
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    np.testing.assert_allclose(clf.predict_log_proba(X_test), np.log(proba))
    assert set(clf.predict(X_test)) <= {"even", "odd"}
    assert clf.score(X_test, np.where(y_test % 2 == 0, "even", "odd")) > 0.85


def test_float32_input_trains_in_float32(digits):
    X_train, X_test, y_train, _ = digits
    clf = FastMLPClassifier(max_iter=5, random_state=0).fit(X_train.astype(np.float32), y_train)
    assert all(c.dtype == np.float32 for c in clf.coefs_ + clf.intercepts_)
    assert clf.predict_proba(X_test).dtype == np.float32
    forced = FastMLPClassifier(max_iter=5, random_state=0, dtype="float32").fit(X_train, y_train)
    assert forced.coefs_[0].dtype == np.float32


def _threads_of_each_epoch(monkeypatch):
    """Records the thread count each call of the epoch kernel runs with."""
    seen, train_epoch = [], engine.kernels.train_epoch

    def recording(*args):
        seen.append(numba.get_num_threads())
        return train_epoch(*args)

    monkeypatch.setattr(engine.kernels, "train_epoch", recording)
    return seen


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two threads")
@pytest.mark.parametrize("sparse", [False, True])
def test_small_batches_train_on_one_thread(digits, sparse, monkeypatch):
    X_train, _, y_train, _ = digits  # 64 features: 16 x 64 x 64 multiply-adds a batch
    rule = engine.ONE_THREAD_MADDS
    X = scipy.sparse.csr_matrix(X_train) if sparse else X_train
    seen = _threads_of_each_epoch(monkeypatch)
    default = numba.get_num_threads()
    small = FastMLPClassifier(batch_size=16, max_iter=3, random_state=0).fit(X, y_train)
    assert seen == [1, 1, 1]
    assert numba.get_num_threads() == default  # the caller's setting, back
    # On two threads (the rule off), the same weights, bit for bit.
    monkeypatch.setattr(engine, "ONE_THREAD_MADDS", dict.fromkeys(rule, 0))
    seen.clear()
    two = FastMLPClassifier(batch_size=16, max_iter=3, random_state=0).fit(X, y_train)
    assert seen == [default] * 3
    for a, b in zip(small.coefs_ + small.intercepts_, two.coefs_ + two.intercepts_, strict=True):
        np.testing.assert_array_equal(a, b)
    # Larger batches, a larger W1, and sparse inputs read by parts keep the
    # caller's threads; a dense input as wide, with a small W1, does not.
    monkeypatch.setattr(engine, "ONE_THREAD_MADDS", rule)
    seen.clear()
    FastMLPClassifier(batch_size=200, max_iter=1, random_state=0).fit(X, y_train)
    FastMLPClassifier((512,), batch_size=4, max_iter=1, random_state=0).fit(X, y_train)
    wide = np.hstack([X_train, X_train])  # 128 features, half of them zero
    FastMLPClassifier(batch_size=16, max_iter=1, random_state=0).fit(wide, y_train)
    FastMLPClassifier(batch_size=16, max_iter=1, random_state=0).fit(wide + 1, y_train)
    assert seen == [default, default, default, 1]


def test_the_thread_count_is_restored_when_an_epoch_fails(digits, monkeypatch):
    X_train, _, y_train, _ = digits
    default = numba.get_num_threads()

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.kernels, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        FastMLPClassifier(batch_size=16, max_iter=3).fit(X_train, y_train)
    assert numba.get_num_threads() == default


@pytest.mark.parametrize("solver", ["adam", "sgd", "gd"])
def test_sparse_input_trains_as_its_dense_form(digits, solver, monkeypatch):
    monkeypatch.setattr(engine, "PREDICT_CHUNK", 100)  # predictions in several chunks
    X_train, X_test, y_train, _ = digits
    kwargs = dict(solver=solver, max_iter=5, random_state=0)
    dense = FastMLPClassifier(**kwargs).fit(X_train, y_train)
    sparse = FastMLPClassifier(**kwargs).fit(scipy.sparse.csr_matrix(X_train), y_train)

    def assert_same_weights():
        ours, expected = sparse.coefs_ + sparse.intercepts_, dense.coefs_ + dense.intercepts_
        for a, b in zip(ours, expected, strict=True):
            if solver == "gd":  # dense input: a full batch's nonzeros, read by feature
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-15)
            else:  # the same sums in the same order
                np.testing.assert_array_equal(a, b)

    assert_same_weights()  # many epochs: both read a list of every sample's nonzeros
    np.testing.assert_array_equal(
        dense.predict_proba(scipy.sparse.csr_matrix(X_test)), dense.predict_proba(X_test)
    )
    dense.partial_fit(X_train, y_train)  # one epoch: marks each batch's nonzeros
    sparse.partial_fit(scipy.sparse.csr_array(X_train), y_train)  # lists them
    assert_same_weights()


def test_sparse_input_trains_as_a_dense_form_read_densely(digits):
    # In float32 the digits (51% nonzeros) go through the dense kernels, which
    # add the zeros too: the same weights to rounding.
    X_train, _, y_train, _ = digits
    X = X_train.astype(np.float32)
    assert not engine.is_sparse(X)
    dense = FastMLPClassifier(max_iter=5, random_state=0).fit(X, y_train)
    sparse = FastMLPClassifier(max_iter=5, random_state=0).fit(scipy.sparse.csr_matrix(X), y_train)
    ours, expected = sparse.coefs_ + sparse.intercepts_, dense.coefs_ + dense.intercepts_
    for a, b in zip(ours, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_sparse_input_with_early_stopping_and_sample_weights(digits):
    X_train, _, y_train, _ = digits
    weights = np.random.default_rng(0).integers(0, 3, len(y_train)).astype(float)
    kwargs = dict(max_iter=8, random_state=0, early_stopping=True, n_iter_no_change=3)
    dense = FastMLPClassifier(**kwargs).fit(X_train, y_train, sample_weight=weights)
    sparse = FastMLPClassifier(**kwargs).fit(
        scipy.sparse.csr_matrix(X_train), y_train, sample_weight=weights
    )
    assert sparse.validation_scores_ == dense.validation_scores_
    np.testing.assert_array_equal(sparse.coefs_[0], dense.coefs_[0])


@pytest.mark.parametrize(
    "kind", ["csr_matrix", "csr_array", "csc_matrix", "coo_array", "lil_matrix", "dok_matrix"]
)
def test_every_scipy_sparse_format_is_accepted(digits, kind):
    X_train, X_test, y_train, _ = digits
    as_sparse = getattr(scipy.sparse, kind)
    clf = FastMLPClassifier(max_iter=3, random_state=0).fit(as_sparse(X_train), y_train)
    expected = FastMLPClassifier(max_iter=3, random_state=0).fit(X_train, y_train)
    np.testing.assert_array_equal(clf.coefs_[0], expected.coefs_[0])
    np.testing.assert_array_equal(clf.predict(as_sparse(X_test)), expected.predict(X_test))


def test_wide_sparse_input_is_never_made_dense():
    # 1,000 documents, 50,000 features, 25 nonzeros each: 200 MB as a dense
    # float32 array; the class shows in the first 5 words of each document.
    rng = np.random.default_rng(0)
    m, n_x, per_row = 1000, 50_000, 25
    y = rng.integers(0, 2, m)
    columns = rng.integers(0, n_x, (m, per_row))
    columns[:, :5] = rng.integers(0, 100, (m, 5)) + 100 * y[:, None]
    X = scipy.sparse.csr_matrix(
        (np.ones(m * per_row, np.float32), columns.ravel(), np.arange(0, m * per_row + 1, per_row)),
        shape=(m, n_x),
    )
    kwargs = equal_settings("adam", 4, learning_rate_init=1e-2)
    FastMLPClassifier(**kwargs).fit(X[:200], y[:200])  # compiles outside the measurement
    tracemalloc.start()
    try:
        ours = FastMLPClassifier(**kwargs).fit(X, y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The parameters, their gradients, Adam's two moments and the epoch's
    # starting weights take 5 x 12.8 MB; the list of nonzeros 6.4 MB.
    assert peak < m * n_x * 4 / 2
    assert ours.coefs_[0].dtype == np.float32
    theirs = MLPClassifier(**kwargs).fit(X, y)  # scikit-learn reads sparse input too
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-4)
    assert ours.score(X, y) == theirs.score(X, y) == 1.0


def test_partial_fit_continues_one_epoch_at_a_time(digits):
    X_train, X_test, y_train, y_test = digits
    kwargs = equal_settings("sgd", 30, shuffle=False)
    incremental = FastMLPClassifier(**kwargs)
    with pytest.raises(ValueError, match="classes must be passed"):
        incremental.partial_fit(X_train, y_train)
    for _ in range(5):
        incremental.partial_fit(X_train, y_train, classes=np.arange(10))
    whole = FastMLPClassifier(**{**kwargs, "max_iter": 5}).fit(X_train, y_train)
    np.testing.assert_allclose(incremental.coefs_[0], whole.coefs_[0], rtol=1e-12, atol=1e-14)
    assert incremental.n_iter_ == 5
    with pytest.raises(ValueError, match="labels not in classes_"):
        incremental.partial_fit(X_train[:3], [0, 1, 11])


def test_warm_start_continues_from_the_last_fit(digits):
    X_train, _, y_train, _ = digits
    clf = FastMLPClassifier(max_iter=3, warm_start=True, random_state=0).fit(X_train, y_train)
    first = clf.coefs_[0].copy()
    clf.fit(X_train, y_train)
    assert clf.n_iter_ == 6 and not np.array_equal(first, clf.coefs_[0])


def test_pickle_and_clone(digits):
    X_train, X_test, y_train, _ = digits
    clf = FastMLPClassifier(max_iter=20, random_state=0).fit(X_train, y_train)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X_test), clf.predict_proba(X_test))
    restored.partial_fit(X_train, y_train)  # and it trains on
    fresh = clone(clf)
    assert not hasattr(fresh, "coefs_") and fresh.get_params() == clf.get_params()


def test_coefs_are_the_weights_it_predicts_with(digits):
    X_train, X_test, y_train, _ = digits
    clf = FastMLPClassifier(max_iter=20, random_state=0).fit(X_train, y_train)
    clf.coefs_ = [np.zeros_like(c) for c in clf.coefs_]
    clf.intercepts_ = [np.zeros_like(b) for b in clf.intercepts_]
    np.testing.assert_allclose(clf.predict_proba(X_test), 0.1)


def test_pipeline_cross_validation_and_grid_search(digits):
    X_train, X_test, y_train, y_test = digits
    clf = FastMLPClassifier(learning_rate_init=0.01, max_iter=30, random_state=0)
    pipe = make_pipeline(MinMaxScaler(), clf)
    scores = cross_val_score(pipe, X_train, y_train, cv=3)
    assert scores.mean() > 0.85

    def threads(estimator, X, y):  # runs in the worker: how many threads it trains with
        return numba.get_num_threads()

    search = GridSearchCV(
        pipe,
        {"fastmlpclassifier__hidden_layer_sizes": [(16,), (32,)]},
        cv=2,
        n_jobs=2,
        scoring={"accuracy": "accuracy", "threads": threads},
        refit="accuracy",
    )
    search.fit(X_train, y_train)
    # Two workers on two cores: each one trains with one thread, no oversubscription.
    assert set(search.cv_results_["mean_test_threads"]) == {1.0}
    assert search.score(X_test, y_test) > 0.85


GRID_SEARCH = textwrap.dedent(
    """
    import json, warnings
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV
    from fastmlp import FastMLPClassifier
    warnings.simplefilter("ignore", ConvergenceWarning)
    X, y = load_digits(return_X_y=True)
    grid = {"hidden_layer_sizes": [(8,), (16,)], "dtype": ["float32", "float64"]}
    search = GridSearchCV(FastMLPClassifier(max_iter=5, random_state=0), grid, cv=2, n_jobs=N)
    search.fit(X / 16, y)
    print(json.dumps(search.cv_results_["mean_test_score"].tolist()))
    """
)


def test_grid_search_on_a_cold_cache_in_two_processes(tmp_path):
    """Two loky workers compile and write the same cache at once (numba#4807)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    scores = []
    for jobs in (2, 1):
        code = GRID_SEARCH.replace("n_jobs=N", f"n_jobs={jobs}")
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-2000:]
        scores.append(json.loads(done.stdout))
    assert scores[0] == scores[1]


def test_bad_parameters_say_what_is_supported(digits):
    X_train, _, y_train, _ = digits
    cases = [
        (dict(hidden_layer_sizes=(10, 10)), "exactly one hidden layer"),
        (dict(solver="lbfgs"), "solver='lbfgs' is not supported; use one of 'sgd', 'adam', 'gd'"),
        (dict(activation="identity"), "activation='identity' is not supported"),
        (dict(learning_rate_init=0.0), "learning_rate_init must be positive"),
        (dict(momentum=1.5), r"momentum must be in \[0, 1\)"),
        (dict(batch_size=0), "batch_size must be 'auto' or a positive integer"),
        (dict(dtype="float16"), "dtype must be float32 or float64"),
    ]
    for params, message in cases:
        with pytest.raises(ValueError, match=message):
            FastMLPClassifier(**params).fit(X_train, y_train)


def test_divergence_is_reported_and_weights_stay_finite(digits):
    X_train, _, y_train, _ = digits
    clf = FastMLPClassifier(
        solver="sgd", learning_rate_init=1e300, activation="relu", max_iter=50, random_state=0
    )
    with pytest.raises(DivergenceError, match="diverged in epoch"):
        clf.fit(X_train, y_train)
    assert all(np.isfinite(c).all() for c in clf.coefs_ + clf.intercepts_)


def test_convergence_warning_at_max_iter(digits):
    X_train, _, y_train, _ = digits
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        FastMLPClassifier(max_iter=2, random_state=0).fit(X_train, y_train)
