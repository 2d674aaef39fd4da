"""``train`` and the notebook's ``gradient_descent``: the trainer's public API."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import reference
from ._validation import (
    as_labels,
    as_matrix,
    check_2d,
    check_choice,
    check_finite,
    check_positive_float,
    check_positive_int,
    reject_sparse,
)
from .engine import (
    FastNetwork,
    Optimizer,
    class_indices,
    flatten_params,
    notebook_params,
)
from .errors import DivergenceError
from .model import BACKENDS, Model, Progress


def _examples_and_targets(X, y, dtype):
    """Examples as rows, class indices, class labels and the number of outputs.

    Accepts the common layout (``X`` examples x features, ``y`` labels or
    one-hot rows) and the notebook's (``X`` features x examples, ``Y``
    one-hot columns, or labels).
    """
    reject_sparse(X)
    X = np.asarray(X)
    Y = np.asarray(y)
    check_2d(X)
    if Y.ndim == 2 and Y.shape[0] > 1 and Y.shape[1] > 1:
        in_columns = Y.shape[1] == X.shape[1] and Y.shape[0] != X.shape[0]
        in_rows = Y.shape[0] == X.shape[0] and Y.shape[1] != X.shape[1]
        if in_columns == in_rows:
            raise ValueError(
                f"cannot tell examples from features: X has shape {X.shape} and "
                f"one-hot Y has shape {Y.shape}; pass y as 1-D integer labels"
            )
        if in_columns:
            X, Y = X.T, Y.T
        if not (np.isin(Y, (0, 1)).all() and (Y.sum(axis=1) == 1).all()):
            raise ValueError("a 2-D Y must be one-hot: exactly one 1 per example, zeros elsewhere")
        X = as_matrix(X, "X", dtype=dtype, ensure_finite=False)
        return X, np.argmax(Y, axis=1).astype(np.int64), np.arange(Y.shape[1]), Y.shape[1]
    if Y.ndim == 1 and len(Y) != X.shape[0] and len(Y) == X.shape[1]:
        X = X.T
    X = as_matrix(X, "X", dtype=dtype, ensure_finite=False)
    labels, classes = as_labels(Y, X.shape[0], "y")
    n_outputs = 1 if len(classes) == 2 else len(classes)
    return X, labels, classes, n_outputs


def _logged(iteration: int, last: int, log_every: int | None, first: int) -> bool:
    if not log_every:
        return False
    return (iteration - first) % log_every == 0 or (first == 1 and iteration == last)


def train(
    X: ArrayLike,
    y: ArrayLike,
    hidden: int = 64,
    iterations: int = 1000,
    alpha: float = 0.5,
    seed: int = 1,
    backend: Literal["numba", "numpy"] = "numba",
    dtype: DTypeLike | None = None,
    log_every: int | None = 100,
    callback: Callable[[Progress], None] | None = None,
    *,
    batch_size: int | None = None,
    activation: Literal["logistic", "tanh", "relu"] = "logistic",
    verbose: bool = False,
) -> Model:
    """Train the notebook's network: one hidden layer, softmax output, gradient descent.

    With the defaults this is the notebook's experiment: 64 sigmoid hidden
    units, ``alpha = 0.5``, the notebook's initialisation from seed 1, and
    ``iterations + 1`` full-batch steps numbered 0 to ``iterations``.

    Parameters
    ----------
    X : array-like
        Examples as rows (``m`` x ``n_features``), or as columns (the notebook's
        layout) when ``y`` says so. Integer pixels are converted.
    y : array-like
        Labels (``m``,) of any type, or one-hot targets: ``m`` x ``n_classes``,
        or ``n_classes`` x ``m`` like the notebook's ``Y``.
    hidden : int
        Hidden units.
    iterations : int
        Full-batch steps after the first (the notebook runs 0..iterations), or
        epochs when ``batch_size`` is set.
    alpha : float
        The learning rate (the notebook's name for it).
    seed : int
        Seeds the initialisation (the notebook's ``np.random.seed(1)``) and,
        with ``batch_size``, the order of the examples in each epoch.
    backend : {"numba", "numpy"}
        The compiled kernels, or the notebook's NumPy code (the reference).
    dtype : {None, numpy.float32, numpy.float64}
        Precision of the parameters and arithmetic. By default float32 data
        trains in float32 and everything else in float64.
    log_every : int or None
        Record (and with ``verbose`` print) the training accuracy every this
        many iterations; None records nothing.
    callback : callable, optional
        Called after every iteration with a :class:`Progress`.
    batch_size : int, optional
        Train with mini-batch SGD on shuffled batches of this size instead.
    activation : {"logistic", "tanh", "relu"}
        The hidden layer's activation; the notebook's is logistic (sigmoid).
    verbose : bool
        Print the notebook's accuracy log.

    Returns
    -------
    Model

    Raises
    ------
    ValueError
        When an argument is invalid, or ``X`` holds NaN or infinity (the fast
        path finds them when its first step fails, which it then does, so
        that a finite ``X`` is not read an extra time for the check).
    DivergenceError
        When the loss or a gradient stops being finite (the learning rate is
        too large); its ``model`` holds the last finite parameters.
    """
    hidden = check_positive_int(hidden, "hidden")
    iterations = check_positive_int(iterations, "iterations", minimum=0)
    alpha = check_positive_float(alpha, "alpha")
    check_choice(backend, "backend", BACKENDS)
    check_choice(activation, "activation", tuple(reference.ACTIVATIONS))
    if log_every is not None:
        log_every = check_positive_int(log_every, "log_every", minimum=0)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {callback!r}")
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")

    examples, labels, classes, n_y = _examples_and_targets(X, y, dtype)
    m, n_x = examples.shape
    params = reference.init_params(n_x, hidden, n_y, seed, examples.dtype)
    if batch_size is None:
        run: _Run = _FULL_BATCH[backend](examples, labels, params, alpha, activation)
        steps, first, word = range(iterations + 1), 0, "Iteration"
    else:
        run = _MINI_BATCH[backend](
            examples, labels, params, alpha, activation, batch_size, seed, iterations
        )
        steps, first, word = range(1, iterations + 1), 1, "Epoch"
    del params  # the fast path copied them: keep one copy through training

    losses: list[float] = []
    history: list[Progress] = []
    if backend == "numpy" or not steps:
        # The fast path finds a NaN or infinity in X when its first step
        # fails; NumPy would warn on the way there, and no epochs, no steps.
        check_finite(examples)

    def model():
        run.release()  # the training buffers go before the model copies the parameters
        return Model(*run.params(), classes, activation, backend, np.array(losses), tuple(history))

    for i in steps:
        loss, updated = run.step()
        if not updated:
            check_finite(examples)  # a NaN or infinity in X fails the first step: say so
            raise DivergenceError(
                f"training diverged at {word.lower()} {i}: the loss or a gradient "
                "became NaN or infinite, so training stopped before that update. "
                f"Lower the learning rate (alpha = {alpha}).",
                iteration=i,
                model=model(),
            )
        losses.append(loss)
        accuracy = None
        if _logged(i, steps[-1], log_every, first):
            accuracy = float(np.mean(run.predicted_classes() == labels))
            history.append(Progress(i, loss, accuracy))
            if verbose:
                print(f"{word} {i}   Accuracy: {accuracy * 100:.2f}%")
        if callback is not None:
            callback(Progress(i, loss, accuracy))
    return model()


def gradient_descent(
    X: ArrayLike, Y: ArrayLike, iterations: int = 1000, alpha: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The notebook's ``gradient_descent``, on the fast path.

    Same arguments (``X`` features x examples, ``Y`` one-hot classes x
    examples), same accuracy log, and the same return value: new arrays
    ``W1, b1, W2, b2`` in the notebook's layout.
    """
    model = train(X, Y, 64, iterations, alpha, seed=1, verbose=True)
    W1, b1, W2, b2 = (np.array(p) for p in (model.W1, model.b1, model.W2, model.b2))
    return W1, b1, W2, b2


# ---- the two paths, behind one small interface ---------------------------
class _Run(Protocol):
    def step(self) -> tuple[float, bool]:
        """One full-batch step or epoch: its loss, and whether it updated."""

    def predicted_classes(self) -> np.ndarray:
        """Each training example's predicted class index."""

    def params(self) -> Sequence[np.ndarray]:
        """``W1, b1, W2, b2`` in the notebook's layout."""

    def release(self) -> None:
        """Free the training buffers."""


class _Reference:
    def __init__(self, X, labels, params, alpha, activation):
        self.X = X.T  # the notebook's layout, as a view
        self.labels = labels
        self.parameters = list(params)
        self.alpha, self.activation = alpha, activation

    def release(self):
        pass

    def predicted_classes(self):
        A2 = reference.forward(*self.parameters, self.X, self.activation)[3]
        return class_indices(A2.T)

    def params(self):
        return self.parameters


class _ReferenceFullBatch(_Reference):
    """The notebook's loop body, one step at a time."""

    def __init__(self, X, labels, params, alpha, activation):
        super().__init__(X, labels, params, alpha, activation)
        self.Y = reference.one_hot(labels, params[2].shape[0]).astype(X.dtype)

    def step(self):
        W1, b1, W2, b2 = self.parameters
        X, Y = self.X, self.Y
        Z1, A1, Z2, A2 = reference.forward(W1, b1, W2, b2, X, self.activation)
        loss = reference.cross_entropy(A2, Y)
        grads = reference.backward(Z1, A1, Z2, A2, W1, W2, X, Y, self.activation)
        if not reference.all_finite(loss, grads):
            return loss, False
        reference.update_params(W1, b1, W2, b2, *grads, self.alpha)
        return loss, True


class _MiniBatch:
    """Epochs over a fresh shuffle each; ``_epoch(order)`` gives ``(total, failed)``."""

    def _shuffle(self, labels, batch_size, seed):
        self.batch_size = min(batch_size, len(labels))
        self.rng = np.random.default_rng(seed)

    def step(self):
        order = self.rng.permutation(len(self.labels))
        total, failed = self._epoch(order)
        if failed >= 0:
            return float("nan"), False
        return total / len(order), True


class _ReferenceMiniBatch(_MiniBatch, _Reference):
    def __init__(self, X, labels, params, alpha, activation, batch_size, seed, epochs):
        # ``epochs`` tells the fast path how to read a sparse X; here it changes nothing.
        _Reference.__init__(self, X, labels, params, alpha, activation)
        self._shuffle(labels, batch_size, seed)

    def _epoch(self, order):
        total, _, failed = reference.train_epoch(
            self.parameters, self.X, self.labels, order, self.batch_size,
            learning_rate=self.alpha, activation=self.activation,
        )  # fmt: skip
        return total, failed


class _Fast:
    def __init__(self, X, labels, params, alpha, activation):
        (n_h, n_x), n_y = params[0].shape, params[2].shape[0]
        self.X, self.labels = X, labels
        self.theta, self.dims = flatten_params(*params), (n_x, n_h, n_y)
        self.network = FastNetwork(self.theta, *self.dims, activation)
        self.optimizer = Optimizer("sgd", self.theta.size, self.theta.dtype, learning_rate=alpha)

    def params(self):
        return notebook_params(self.theta, *self.dims)

    def release(self):
        del self.network, self.optimizer


class _FastFullBatch(_Fast):
    def __init__(self, X, labels, params, alpha, activation):
        super().__init__(X, labels, params, alpha, activation)
        self.batch = self.network.full_batch(X, labels)

    def release(self):
        super().release()
        del self.batch

    def step(self):
        return self.batch.step(self.optimizer)

    def predicted_classes(self):
        return self.batch.predicted_classes()


class _FastMiniBatch(_MiniBatch, _Fast):
    def __init__(self, X, labels, params, alpha, activation, batch_size, seed, epochs):
        _Fast.__init__(self, X, labels, params, alpha, activation)
        self._shuffle(labels, batch_size, seed)
        self.batches = self.network.mini_batches(X, labels, self.batch_size, epochs=epochs)

    def release(self):
        super().release()
        del self.batches

    def _epoch(self, order):
        return self.batches.epoch(order, self.optimizer)

    def predicted_classes(self):
        return class_indices(self.network.output(self.X))


_FULL_BATCH: dict[str, Callable[..., _Run]] = {
    "numpy": _ReferenceFullBatch,
    "numba": _FastFullBatch,
}
_MINI_BATCH: dict[str, Callable[..., _Run]] = {
    "numpy": _ReferenceMiniBatch,
    "numba": _FastMiniBatch,
}
