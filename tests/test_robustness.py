"""Bad input, numerical edge cases, concurrency, and property tests.

The table of bad inputs and what each gets is in CONTRIBUTING.md; every row
has a case in ``test_bad_input`` under the same id.
"""

import re
import threading
import zipfile

import numpy as np
import pytest
import scipy.sparse
from _support import (
    DTYPES,
    FORMS,
    NO_WEIGHTS,
    RTOL,
    assert_close,
    input_nonzeros,
    loss_function,
    sparse_data,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastmlp
from fastmlp import DivergenceError, FastMLPClassifier, ModelFileError, engine, kernels
from fastmlp import reference as ref

rng0 = np.random.default_rng(7)
X10, y10 = sparse_data(rng0, 10, 784, 3, np.float64, density=0.3)
MODEL = fastmlp.train(X10, y10, hidden=4, iterations=2)


def with_nan():
    X = X10.copy()
    X[3, 5] = np.nan
    return X


def with_inf():
    X = X10.copy()
    X[3, 5] = np.inf
    return X


# id -> (call, exception, message)
BAD_INPUTS = {
    "X-1d": (
        lambda: fastmlp.train(X10[0], y10),
        ValueError,
        "X must be 2-D (examples x features), got 1-D",
    ),
    "X-3d": (lambda: MODEL.predict(X10.reshape(10, 28, 28)), ValueError, "got 3-D"),
    "X-empty": (lambda: MODEL.predict(X10[:0]), ValueError, "X is empty"),
    "X-nan": (
        lambda: fastmlp.train(with_nan(), y10),
        ValueError,
        "X contains NaN or infinity (first at row 3, column 5)",
    ),
    "X-inf": (lambda: MODEL.predict(with_inf()), ValueError, "X contains NaN or infinity"),
    "X-text": (lambda: fastmlp.train(X10.astype(str), y10), TypeError, "X must hold numbers"),
    "X-complex": (lambda: MODEL.predict(X10 + 1j), TypeError, "X must hold numbers"),
    "X-sparse": (
        lambda: fastmlp.train(scipy.sparse.csr_array(X10), y10),
        TypeError,
        "or train fastmlp.FastMLPClassifier, which takes sparse input",
    ),
    "X-783": (
        lambda: MODEL.predict(X10[:, :783]),
        ValueError,
        "X has 783 features per example, the model expects 784",
    ),
    "y-length": (
        lambda: fastmlp.train(X10, y10[:9]),
        ValueError,
        "y has 9 labels but X has 10 examples",
    ),
    "y-2d": (
        lambda: fastmlp.train(X10, y10.reshape(10, 1, 1)),
        ValueError,
        "y must be 1-D (one label per example)",
    ),
    "y-one-class": (lambda: fastmlp.train(X10, np.zeros(10)), ValueError, "y has 1 class"),
    "y-nan": (
        lambda: fastmlp.train(X10, np.r_[y10[:9], np.nan]),
        ValueError,
        "y contains NaN or infinity",
    ),
    "y-not-one-hot": (
        lambda: fastmlp.train(X10, np.full((10, 3), 0.5)),
        ValueError,
        "a 2-D Y must be one-hot",
    ),
    "y-unknown": (
        lambda: (
            FastMLPClassifier(max_iter=1)
            .partial_fit(X10, y10, classes=[0, 1, 2])
            .partial_fit(X10, y10 + 5)
        ),
        ValueError,
        "y has labels not in classes_",
    ),
    "weights-length": (
        lambda: FastMLPClassifier(max_iter=1).fit(X10, y10, sample_weight=np.ones(9)),
        ValueError,
        "sample_weight.shape == (9,), expected (10,)",
    ),
    "weights-nan": (
        lambda: FastMLPClassifier(max_iter=1).fit(X10, y10, sample_weight=np.full(10, np.nan)),
        ValueError,
        "sample_weight contains NaN",
    ),
    "weights-zero": (
        lambda: FastMLPClassifier(max_iter=1).fit(X10, y10, sample_weight=np.zeros(10)),
        ValueError,
        "at least one non-zero",
    ),
    "hidden-0": (
        lambda: fastmlp.train(X10, y10, hidden=0),
        ValueError,
        "hidden must be at least 1",
    ),
    "alpha-neg": (
        lambda: fastmlp.train(X10, y10, alpha=-1),
        ValueError,
        "alpha must be a finite positive number",
    ),
    "alpha-text": (
        lambda: fastmlp.train(X10, y10, alpha="big"),
        TypeError,
        "alpha must be a number",
    ),
    "backend": (
        lambda: fastmlp.train(X10, y10, backend="cuda"),
        ValueError,
        "backend must be one of 'numba', 'numpy'",
    ),
    "dtype": (
        lambda: fastmlp.train(X10, y10, dtype=np.float16),
        ValueError,
        "dtype must be float32 or float64",
    ),
    "layers": (
        lambda: FastMLPClassifier(hidden_layer_sizes=(10, 10)).fit(X10, y10),
        ValueError,
        "exactly one hidden layer",
    ),
    "solver": (
        lambda: FastMLPClassifier(solver="lbfgs").fit(X10, y10),
        ValueError,
        "solver='lbfgs' is not supported",
    ),
    "diverge": (
        lambda: fastmlp.train(X10, y10, alpha=1e300, activation="relu"),
        DivergenceError,
        "diverged at iteration",
    ),
}


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("batch_size", [None, 4])
@pytest.mark.parametrize("activation", ["logistic", "relu"])
@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_training_names_a_non_finite_input_before_any_update(
    value, backend, batch_size, activation, dense
):
    # train() looks for NaN and infinity in X only when a step fails: every
    # path (every form of the input: mask, list, prepared, dense) must fail
    # the first step, even where the activation hides the value from the
    # forward pass (relu), and report X, not a divergence.
    X = X10 + 0.5 if dense else X10.copy()
    X[6, 700] = value
    for iterations in (0, 3):
        with pytest.raises(
            ValueError, match=re.escape("X contains NaN or infinity (first at row 6, column 700)")
        ):
            fastmlp.train(
                X, y10, hidden=4, iterations=iterations, backend=backend,
                batch_size=batch_size, activation=activation, log_every=None,
            )  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(case):
    call, exception, message = BAD_INPUTS[case]
    with pytest.raises(exception, match=re.escape(message)):
        call()


def test_huge_finite_input_whose_sum_overflows_is_accepted():
    # The finiteness check sums X first; an overflowing sum must fall back to
    # the element-wise check, not reject finite data.
    X = np.full((4, 3), np.finfo(np.float32).max, np.float32)
    X[::2] = 0
    with np.errstate(over="ignore"):
        assert np.isinf(X.sum())
    model = fastmlp.train(X, [0, 1, 0, 1], hidden=2, iterations=0, log_every=None)
    assert model.predict(X).shape == (4,)


def test_the_table_in_contributing_lists_every_case():
    from pathlib import Path

    table = (Path(__file__).parents[1] / "CONTRIBUTING.md").read_text()
    rows = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")}
    tested_elsewhere = {  # rows whose tests live with their module
        "file-missing", "file-truncated", "file-flipped", "file-version", "file-pickle",
        "file-shape", "idx-magic", "cli-option",
    }  # fmt: skip
    assert rows - {"id"} == set(BAD_INPUTS) | tested_elsewhere


# ---- accepted layouts ----------------------------------------------------------------
@pytest.mark.parametrize(
    "variant",
    [
        lambda X: np.asfortranarray(X),
        lambda X: np.repeat(X, 2, axis=1)[:, ::2],  # strided
        lambda X: np.require(X, requirements="C").copy().view(),  # a view
        "read-only",
        "uint8",
    ],
    ids=["fortran", "strided", "view", "read-only", "uint8"],
)
def test_unusual_arrays_give_the_contiguous_result(rng, variant):
    pixels = rng.integers(0, 256, (40, 30)).astype(np.uint8)
    pixels[pixels < 180] = 0
    X = pixels / 255.0
    y = rng.integers(0, 3, 40)
    if variant == "uint8":
        unusual, X_expected = pixels, pixels.astype(np.float64)
    elif variant == "read-only":
        unusual, X_expected = X.copy(), X
        unusual.setflags(write=False)
    else:
        unusual, X_expected = variant(X), X
    expected = fastmlp.train(X_expected, y, iterations=3)
    model = fastmlp.train(unusual, y, iterations=3)
    np.testing.assert_array_equal(model.W1, expected.W1)
    np.testing.assert_array_equal(model.predict_proba(unusual), expected.predict_proba(X_expected))
    clf = FastMLPClassifier(max_iter=2, random_state=0)
    with pytest.warns(Warning):  # ConvergenceWarning after two epochs
        a = clf.fit(unusual, y).predict_proba(unusual)
    with pytest.warns(Warning):
        b = clf.fit(X_expected, y).predict_proba(X_expected)
    np.testing.assert_array_equal(a, b)


# ---- numerics ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_stays_finite_for_huge_logits(dtype):
    """Logits of +-1e4 reach the output: probabilities 0 and 1 exactly. The loss
    (with clipped probabilities) and every gradient stay finite."""
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype)
    y = np.array([0, 0, 1])  # the second example is confidently wrong
    W1 = np.array([[1e4, -1e4], [-1e4, 1e4]], dtype)  # kernel layout: n_x x n_h
    b1 = np.zeros(2, dtype)
    W2 = np.array([[1e4, -1e4], [-1e4, 1e4]], dtype)  # n_y x n_h
    b2 = np.zeros(2, dtype)
    rows = np.arange(3)
    dense = engine.dense_input(X.shape[1], X.dtype)
    A1, A2, part_sums, *scratch = engine._work(3, 2, 2, 2, dtype)
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        kernels.forward(X, rows, dense, W1, b1, W2, b2, kernels.LOGISTIC, A1, A2, part_sums)
        grads = [np.empty_like(p) for p in (W1, b1, W2, b2)]
        loss = kernels.backward(
            X, rows, dense, y, NO_WEIGHTS, W1, W2, 0, 0.0, A1, A2, *grads, *scratch
        )
        reference_loss = ref.cross_entropy(
            ref.forward(W1.T, b1[:, None], W2, b2[:, None], X.T)[3], ref.one_hot(y, 2).astype(dtype)
        )
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads)
    assert loss == pytest.approx(reference_loss, rel=RTOL[np.dtype(dtype)])
    assert loss > 5  # -log(eps) for the wrong one


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_no_warning_escapes_a_training_run_on_extreme_data(rng, backend):
    X, y = sparse_data(rng, 50, 20, 3, np.float64)
    with np.errstate(
        over="raise", divide="raise", invalid="raise"
    ):  # and the suite turns every warning into an error
        fastmlp.train(X * 1e4, y, iterations=20, alpha=5.0, backend=backend)


# ---- concurrency ---------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [None, 16], ids=["full-batch", "mini-batch"])
def test_two_threads_training_at_once_match_one_after_the_other(rng, batch_size):
    data = [sparse_data(rng, 300, 60, 4, dtype) for dtype in DTYPES]
    kwargs = dict(iterations=30, batch_size=batch_size, alpha=0.3, log_every=None)
    sequential = [fastmlp.train(X, y, **kwargs) for X, y in data]
    results = [None, None]

    def work(i):
        results[i] = fastmlp.train(*data[i], **kwargs)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for a, b in zip(results, sequential, strict=True):
        np.testing.assert_array_equal(a.W1, b.W1)
        np.testing.assert_array_equal(a.W2, b.W2)


# ---- property tests ------------------------------------------------------------------
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    m = draw(st.integers(1, 40))
    n_x = draw(st.integers(1, 150))
    n_h = draw(st.integers(1, 20))
    n_y = draw(st.sampled_from([1, 2, 3, 7]))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    activation = draw(st.sampled_from(list(kernels.ACTIVATIONS)))
    density = draw(st.sampled_from([0.0, 0.3, 1.0]))
    form = draw(st.sampled_from(FORMS))
    return m, n_x, n_h, n_y, np.dtype(dtype), seed, activation, density, form


@FAST
@given(problems())
def test_property_fast_and_reference_paths_agree(problem):
    m, n_x, n_h, n_y, dtype, seed, activation, density, form = problem
    rng = np.random.default_rng(seed)
    X, y = sparse_data(rng, m, n_x, max(n_y, 2), dtype, density)
    params = ref.init_params(n_x, n_h, n_y, seed % 1000, dtype)
    W1, b1, W2, b2 = (
        np.ascontiguousarray(params[0].T),
        params[1].ravel(),
        params[2],
        params[3].ravel(),
    )
    rows = np.arange(m)
    nonzeros = input_nonzeros(X, form)
    A1, A2, part_sums, *scratch = engine._work(m, n_x, n_h, n_y, dtype)
    code = kernels.ACTIVATIONS[activation]
    kernels.forward(X, rows, nonzeros, W1, b1, W2, b2, code, A1, A2, part_sums)
    Z1, A1_ref, Z2, A2_ref = ref.forward(*params, X.T, activation)
    assert_close(A1, A1_ref.T)
    assert_close(A2, A2_ref.T)
    grads = [np.empty_like(p) for p in (W1, b1, W2, b2)]
    loss = kernels.backward(
        X, rows, nonzeros, y, NO_WEIGHTS, W1, W2, code, 0.1, A1, A2, *grads, *scratch
    )
    Y = ref.one_hot(y, n_y).astype(dtype)
    expected = ref.backward(Z1, A1_ref, Z2, A2_ref, params[0], params[2], X.T, Y, activation, 0.1)
    assert_close(grads[0], expected[0].T)
    # dW2 and db1 are means of terms that can cancel (in X = 0, every example
    # has the same activations), bounded by |A1| and by sum |W2| (|dZ2| <= 1,
    # |f'| <= 1).
    assert_close(grads[2], expected[2], scale=np.abs(A1_ref).max() + np.abs(expected[2]).max())
    assert_close(grads[1], expected[1].ravel(), scale=np.abs(params[2]).sum())
    penalty = 0.05 * (np.sum(params[0] ** 2) + np.sum(params[2] ** 2)) / m
    assert_close(loss, ref.cross_entropy(A2_ref, Y) + penalty, dtype)


@st.composite
def sparse_matrices(draw):
    """Small CSR matrices as users build them: rows of (column, value) entries
    in any order, with repeated columns and stored zeros (the values are
    exact in binary, so that duplicates sum to the same whatever the order)."""
    n_x = draw(st.integers(1, 150))
    entry = st.tuples(st.integers(0, n_x - 1), st.sampled_from([0.0, -0.0, 0.25, 0.5, -1.0, 2.0]))
    rows = draw(st.lists(st.lists(entry, max_size=12), min_size=1, max_size=6))
    entries = [e for row in rows for e in row]
    data = np.array([v for _, v in entries], draw(st.sampled_from(DTYPES)))
    columns = np.array([c for c, _ in entries], np.int32)
    indptr = np.cumsum([0] + [len(row) for row in rows])
    return scipy.sparse.csr_matrix((data, columns, indptr), shape=(len(rows), n_x))


@FAST
@given(sparse_matrices())
def test_property_a_csr_matrix_is_listed_as_its_dense_form(X):
    listed = engine.listed_input(X).listed
    for got, expected in zip(listed, engine.listed_input(X.toarray()).listed, strict=True):
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == expected.dtype


@FAST
@given(
    st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=30),
    st.sampled_from(DTYPES),
)
def test_property_softmax_rows_sum_to_one(logits, dtype):
    Z = np.array([logits], dtype)
    out = np.empty_like(Z)
    kernels.softmax(Z, out)
    assert np.isfinite(out).all() and (out >= 0).all()
    assert abs(out.sum() - 1) <= 4 * len(logits) * np.finfo(dtype).eps
    assert out[0, np.argmax(Z)] == out.max()


@FAST
@given(st.lists(st.floats(-1e4, 1e4), min_size=2, max_size=40), st.sampled_from(DTYPES))
def test_property_sigmoid_is_bounded_and_monotone(values, dtype):
    Z = np.sort(np.array([values], dtype))
    out = np.empty_like(Z)
    kernels.sigmoid(Z, out)
    assert ((out >= 0) & (out <= 1)).all()
    assert (np.diff(out) >= 0).all()


@st.composite
def small_networks(draw):
    m, n_x, n_h = draw(st.integers(2, 8)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    n_y = draw(st.sampled_from([1, 3]))
    return (
        m,
        n_x,
        n_h,
        n_y,
        draw(st.sampled_from(list(kernels.ACTIVATIONS))),
        draw(st.integers(0, 10**6)),
    )


def network_problem(network, l2):
    """Data, parameters and the loss function of a drawn small network:
    ``X, theta, f, activation``."""
    m, n_x, n_h, n_y, activation, seed = network
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, n_x))
    y = rng.integers(0, max(n_y, 2), m)
    theta = rng.normal(0, 0.5, n_x * n_h + n_h + n_y * n_h + n_y)
    return X, theta, loss_function(X, y, n_h, n_y, activation, l2), activation


@FAST
@given(small_networks())
def test_property_gradient_matches_finite_differences(network):
    _, theta, f, activation = network_problem(network, l2=0.3)
    _, grads = f(theta)
    h = 1e-6
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = h
        numeric = (f(theta + step)[0] - f(theta - step)[0]) / (2 * h)
        if activation == "relu" and abs(numeric - grads[i]) > 1e-5:
            continue  # a kink of relu inside [-h, h]: the derivative is not defined there
        assert numeric == pytest.approx(grads[i], rel=1e-5, abs=1e-7)


@FAST
@given(small_networks(), st.sampled_from(["sgd", "momentum", "adam"]))
def test_property_every_solver_steps_downhill(network, solver):
    """A small step of each update rule changes the loss as the gradient predicts."""
    X, theta, f, activation = network_problem(network, l2=0.0)
    loss, grads = f(theta)
    if np.linalg.norm(grads) < 1e-6:
        return
    moved = theta.copy()
    lr = 1e-4
    if solver == "adam":
        kernels.adam_update(
            moved, grads, np.zeros_like(theta), np.zeros_like(theta), lr, 0.9, 0.999, 1e-8, 1
        )
    elif solver == "momentum":
        kernels.momentum_update(moved, grads, np.zeros_like(theta), lr, 0.9, True)
    else:
        kernels.sgd_update(moved, grads, lr)
    step = moved - theta
    predicted = float(grads @ step)  # first-order change of the loss
    assert predicted < 0
    if activation == "relu":
        # A step that turns a hidden unit of an example on or off crosses a
        # kink of the loss, beyond which the first-order change does not hold.
        n_x, n_h, n_y = network[1:4]

        def hidden_on(t):
            W1, b1, _, _ = kernels.unpack(t, n_x, n_h, n_y)
            return X @ W1 + b1 > 0

        assume(np.array_equal(hidden_on(theta), hidden_on(moved)))
    assert f(moved)[0] - loss == pytest.approx(predicted, rel=0.05, abs=1e-9)


# ---- model-file fuzzing --------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "model.npz"
    return fastmlp.save_model(MODEL, path)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_model_files_are_rejected_or_unchanged(saved_model, tmp_path_factory, data):
    original = saved_model.read_bytes()
    if data.draw(st.booleans(), label="truncate"):
        cut = data.draw(st.integers(0, len(original) - 1), label="length")
        damaged = original[:cut]
    else:
        damaged = bytearray(original)
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            position = data.draw(st.integers(0, len(original) - 1), label="position")
            damaged[position] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        damaged = bytes(damaged)
    path = tmp_path_factory.mktemp("case") / "damaged.npz"
    path.write_bytes(damaged)
    try:
        loaded = fastmlp.load_model(path)
    except ModelFileError as error:
        assert str(path) in str(error)
        return
    # Loaded despite the damage: only where the bytes hit nothing that matters
    # (zip metadata outside the data), so the model must be the same.
    for name in ("W1", "b1", "W2", "b2", "classes"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(MODEL, name))


def test_a_model_file_is_a_plain_zip_of_arrays(saved_model):
    with zipfile.ZipFile(saved_model) as archive:
        assert all(name.endswith(".npy") for name in archive.namelist())
