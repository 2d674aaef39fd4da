"""``train``, ``gradient_descent`` and ``Model``: the trainer's public API."""

import contextlib
import io

import numpy as np
import pytest
from _support import assert_close, sparse_data

import fastmlp
from fastmlp import Model, Progress


@pytest.fixture
def small(rng):
    """Sparse inputs whose labels a network can learn (a random linear rule)."""
    X, _ = sparse_data(rng, 120, 30, 4, np.float64, density=0.4)
    return X, np.argmax(X @ rng.normal(size=(30, 4)), axis=1)


def test_gradient_descent_is_a_drop_in(small):
    X, y = small
    Y = np.eye(4)[y].T  # the notebook's one-hot columns
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        W1, b1, W2, b2 = fastmlp.gradient_descent(X.T, Y, iterations=200, alpha=0.5)
    assert (W1.shape, b1.shape, W2.shape, b2.shape) == ((64, 30), (64, 1), (4, 64), (4, 1))
    assert all(p.dtype == np.float64 and p.flags.writeable for p in (W1, b1, W2, b2))
    lines = out.getvalue().splitlines()
    assert [line.split("   ")[0] for line in lines] == [
        "Iteration 0",
        "Iteration 100",
        "Iteration 200",
    ]
    assert all(line.endswith("%") and "   Accuracy: " in line for line in lines)


def test_both_layouts_and_target_forms_train_the_same_model(small):
    X, y = small
    Y = np.eye(4)[y]
    models = [
        fastmlp.train(X, y, iterations=20),
        fastmlp.train(X.T, Y.T, iterations=20),  # the notebook's layout
        fastmlp.train(X, Y, iterations=20),  # one-hot rows
        fastmlp.train(X.T, y, iterations=20),  # examples as columns, labels
    ]
    for other in models[1:]:
        np.testing.assert_array_equal(models[0].W1, other.W1)
        np.testing.assert_array_equal(models[0].b2, other.b2)


@pytest.mark.parametrize("batch_size", [None, 16], ids=["full-batch", "mini-batch"])
@pytest.mark.parametrize("activation", ["logistic", "tanh", "relu"])
def test_numba_and_numpy_backends_agree(small, batch_size, activation):
    X, y = small
    kwargs = dict(iterations=15, alpha=0.3, batch_size=batch_size, activation=activation)
    fast = fastmlp.train(X, y, backend="numba", **kwargs)
    slow = fastmlp.train(X, y, backend="numpy", **kwargs)
    assert_close(fast.loss_curve, slow.loss_curve)
    np.testing.assert_allclose(fast.W1, slow.W1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fast.W2, slow.W2, rtol=1e-10, atol=1e-12)
    assert [(p.iteration, p.accuracy) for p in fast.history] == [
        (p.iteration, p.accuracy) for p in slow.history
    ]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_float32_data_trains_in_float32(small, backend):
    X, y = small
    model = fastmlp.train(X.astype(np.float32), y, iterations=5, backend=backend)
    assert model.dtype == np.float32
    assert all(p.dtype == np.float32 for p in (model.W1, model.b1, model.W2, model.b2))
    assert model.predict_proba(X).dtype == np.float32
    assert fastmlp.train(X, y, iterations=5, dtype=np.float32).dtype == np.float32
    assert fastmlp.train(X.astype(np.float32), y, iterations=5, dtype="float64").dtype == (
        np.float64
    )


def test_model_predicts_labels_of_any_type(small):
    X, y = small
    names = np.array(["zero", "one", "two", "three"])[y]
    model = fastmlp.train(X, names, iterations=500, alpha=2.0)
    assert list(model.classes) == sorted(set(names))
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 4)
    assert_close(proba.sum(axis=1), np.ones(len(X)))
    predicted = model.predict(X)
    assert predicted.dtype == names.dtype
    np.testing.assert_array_equal(predicted, model.classes[np.argmax(proba, axis=1)])
    assert model.score(X, names) == np.mean(predicted == names) > 0.9


def test_two_classes_use_one_logistic_output(small):
    X, y = small
    model = fastmlp.train(X, y % 2, iterations=50)
    assert model.W2.shape == (1, 64)
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 2)
    assert_close(proba.sum(axis=1), np.ones(len(X)))
    np.testing.assert_array_equal(model.predict(X), (proba[:, 1] > 0.5).astype(int))


def test_model_is_read_only_and_reports_its_training(small):
    X, y = small
    seen = []
    model = fastmlp.train(X, y, iterations=30, log_every=10, callback=seen.append)
    assert isinstance(model, Model)
    with pytest.raises(ValueError):
        model.W1[0, 0] = 1.0
    with pytest.raises(AttributeError):
        model.W1 = None
    assert [p.iteration for p in seen] == list(range(31))
    assert [p.iteration for p in model.history] == [0, 10, 20, 30]
    assert all(isinstance(p, Progress) and 0 <= p.accuracy <= 1 for p in model.history)
    assert [p.accuracy is None for p in seen] == [i % 10 != 0 for i in range(31)]
    np.testing.assert_array_equal(model.loss_curve, [p.loss for p in seen])
    assert model.loss_curve[-1] < model.loss_curve[0]
    assert (model.n_features, model.n_hidden) == (30, 64)
    assert repr(model) == (
        "Model(n_features=30, n_hidden=64, classes=[0, 1, 2, 3], activation='logistic', "
        "backend='numba', dtype='float64')"
    )


def test_model_rejects_the_wrong_number_of_features(small):
    X, y = small
    model = fastmlp.train(X, y, iterations=2)
    with pytest.raises(ValueError, match="has 29 features per example, the model expects 30"):
        model.predict(X[:, :29])
    with pytest.raises(ValueError, match="pass X.T"):
        model.predict(X[:20].T)


def test_divergence_stops_before_the_bad_update(small):
    X, y = small
    with pytest.raises(fastmlp.DivergenceError, match="diverged at iteration") as caught:
        fastmlp.train(X, y, iterations=100, alpha=1e300, activation="relu")
    error = caught.value
    assert error.iteration >= 1
    last = error.model
    assert all(np.isfinite(p).all() for p in (last.W1, last.b1, last.W2, last.b2))
    assert len(last.loss_curve) == error.iteration


# ---- the notebook's experiment on real MNIST digits ----------------------------
def test_notebook_experiment_on_real_mnist(mnist, record_property, capsys):
    """First 2,000 images, the notebook's settings: both paths agree on every
    logged accuracy, pass 98 % at iteration 1,000, and generalise to the other
    8,000 images."""
    train_set, held_out = mnist.split(2000)
    X, Y = train_set.X.T, np.eye(10)[train_set.y].T  # the notebook's layout
    models = {b: fastmlp.train(X, Y, backend=b) for b in ("numpy", "numba")}
    fast32 = fastmlp.train(X.astype(np.float32), Y)
    accuracy = {name: np.array([p.accuracy for p in m.history]) for name, m in models.items()}
    np.testing.assert_allclose(accuracy["numba"], accuracy["numpy"], atol=0.001)
    assert accuracy["numba"][-1] > 0.98
    float32_accuracy = np.array([p.accuracy for p in fast32.history])
    np.testing.assert_allclose(float32_accuracy, accuracy["numpy"], atol=0.005)

    scores = {name: m.score(held_out.X, held_out.y) for name, m in models.items()}
    scores["numba float32"] = fast32.score(held_out.X, held_out.y)
    for name, score in scores.items():
        record_property(f"held_out_accuracy_{name}", score)
    with capsys.disabled():
        print(
            "\nheld-out accuracy on the other 8,000 images:",
            ", ".join(f"{n} {s:.2%}" for n, s in scores.items()),
        )
    assert abs(scores["numba"] - scores["numpy"]) <= 0.001
    assert scores["numba"] > 0.85
