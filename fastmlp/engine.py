"""Drives the kernels: one network's parameters, its buffers and its training steps.

This is the Python side of the fast path. It owns every array the kernels
write into, allocated once per run (not per step), and decides how the input
reaches the first layer: as it is (dense) or as its nonzeros (sparse), from
the input's density.
"""

from __future__ import annotations

import numpy as np

from . import kernels

SPARSE_BELOW_DENSITY = 0.75
"""Inputs with a smaller fraction of nonzeros go through the sparse kernels.

Measured (benchmarks/bench_kernels.py, groups "first-layer density"): a
full-batch step on 2,000 x 784 inputs takes the sparse path 3.7 ms at 20 %
nonzeros against 17 ms dense, and the two meet between 60 % (11 ms against
14 ms) and 100 % (16 ms against 14 ms). MNIST has 19 % nonzeros, scikit-learn's
digits 51 %."""

PREDICT_CHUNK = 4096
"""Examples per forward pass when predicting, to bound the buffers' size."""


def flatten_params(W1, b1, W2, b2) -> np.ndarray:
    """Notebook-layout parameters -> the kernels' flat vector (a new array)."""
    parts = (W1.T, b1.ravel(), W2, b2.ravel())
    return np.concatenate([np.ascontiguousarray(p).ravel() for p in parts])


def notebook_params(theta, n_x: int, n_h: int, n_y: int):
    """The kernels' flat vector -> new notebook-layout ``W1, b1, W2, b2``."""
    W1, b1, W2, b2 = kernels.unpack(theta, n_x, n_h, n_y)
    return (
        np.ascontiguousarray(W1.T),
        b1.reshape(n_h, 1).copy(),
        W2.copy(),
        b2.reshape(n_y, 1).copy(),
    )


def batch_nonzeros(X, batch_size: int) -> int:
    """Room for the nonzeros of any batch of ``X``: the most that ``batch_size``
    rows hold. 0 when ``X`` is dense enough for the dense kernels."""
    # By slices: count_nonzero along an axis makes a boolean copy of its input.
    per_row = np.concatenate(
        [np.count_nonzero(X[i : i + 4096], axis=1) for i in range(0, len(X), 4096)]
    )
    if per_row.sum() >= SPARSE_BELOW_DENSITY * X.size:
        return 0
    k = min(batch_size, len(per_row))
    return int(np.partition(per_row, len(per_row) - k)[-k:].sum())


class Optimizer:
    """An update rule and its state, in the form the kernels take.

    Parameters
    ----------
    solver : {"sgd", "adam"}
        Plain SGD (with momentum when ``momentum > 0``) or Adam.
    n_params : int
        Length of the flat parameter vector.
    dtype : numpy dtype
        The parameters' dtype; the state has the same.
    """

    def __init__(
        self,
        solver: str,
        n_params: int,
        dtype,
        *,
        learning_rate: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
        l2: float = 0.0,
    ):
        if solver == "adam":
            code, n_state = kernels.ADAM, 2
        elif momentum > 0:
            code, n_state = kernels.MOMENTUM, 1
        else:
            code, n_state = kernels.SGD, 0
        hyper = np.zeros(kernels.N_HYPER)
        hyper[kernels.LEARNING_RATE] = learning_rate
        hyper[kernels.MOMENTUM_COEF] = momentum
        hyper[kernels.NESTEROV] = float(nesterov)
        hyper[kernels.BETA1] = beta1
        hyper[kernels.BETA2] = beta2
        hyper[kernels.EPSILON] = epsilon
        hyper[kernels.L2] = l2
        self.solver = code
        self.hyper = hyper
        self.state = np.zeros((n_state, n_params), dtype=dtype)
        self.step = np.zeros(1, dtype=np.int64)

    @property
    def learning_rate(self) -> float:
        return float(self.hyper[kernels.LEARNING_RATE])

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self.hyper[kernels.LEARNING_RATE] = value

    def as_kernel_args(self):
        return (self.solver, self.hyper, self.state, self.step)


def _work(capacity: int, n_h: int, n_y: int, dtype):
    """Buffers for a step on up to ``capacity`` examples: ``A1, A2`` (which the
    backward pass turns into ``dZ1, dZ2``) and the per-chunk sums."""
    return (
        np.empty((capacity, n_h), dtype),
        np.empty((capacity, n_y), dtype),
        np.empty((kernels.N_CHUNKS, n_y * n_h + n_y + 2 * n_h), dtype),
        np.empty(kernels.N_CHUNKS, np.float64),
    )


def _sparse_buffers(n_rows: int, n_x: int, nnz: int, dtype):
    """CSR and CSC buffers for ``nnz`` nonzeros in ``n_rows`` rows (one spare
    entry: :func:`kernels.compress_rows` writes one past the last nonzero),
    or the empty arrays that tell the kernels to read the input as it is."""
    if n_rows == 0:
        empty = (np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, dtype))
        return empty, empty
    csr = (
        np.empty(n_rows + 1, np.int64),
        np.empty(nnz + 1, np.int32),
        np.empty(nnz + 1, dtype),
    )
    csc = (
        np.empty(n_x + 1, np.int64),
        np.empty(nnz + 1, np.int32),
        np.empty(nnz + 1, dtype),
    )
    return csr, csc


class FastNetwork:
    """A network's parameters in the kernels' layout, with what it takes to train it.

    Parameters
    ----------
    theta : ndarray
        The flat parameter vector (see :func:`kernels.unpack`); used in place.
    n_x, n_h, n_y : int
        Inputs, hidden units, outputs (1 for a logistic output).
    activation : {"logistic", "tanh", "relu"}
    """

    def __init__(self, theta, n_x: int, n_h: int, n_y: int, activation: str):
        self.theta = theta
        self._grads = None
        self.dims = (n_x, n_h, n_y)
        self.activation = activation
        self._code = kernels.ACTIVATIONS[activation]
        self._epoch_buffers = {}
        self._dense = _sparse_buffers(0, n_x, 0, theta.dtype)[0]

    @property
    def dtype(self):
        return self.theta.dtype

    @property
    def grads(self) -> np.ndarray:
        """The gradient buffer, allocated when training first needs it (a model
        that only predicts never does)."""
        if self._grads is None:
            self._grads = np.zeros_like(self.theta)
        return self._grads

    @property
    def params(self):
        """Views ``W1, b1, W2, b2`` of the parameters, in the kernels' layout."""
        return kernels.unpack(self.theta, *self.dims)

    def output(self, X) -> np.ndarray:
        """The output layer's activations for ``X`` (``m`` x ``n_y``)."""
        n_x, n_h, n_y = self.dims
        m = X.shape[0]
        size = min(m, PREDICT_CHUNK)
        A1, A2 = np.empty((size, n_h), self.dtype), np.empty((m, n_y), self.dtype)
        for start in range(0, m, size):
            rows = np.arange(start, min(m, start + size))
            kernels.forward(
                X,
                rows,
                self._dense,
                *self.params,
                self._code,
                A1[: rows.size],
                A2[start:][: rows.size],
            )
        return A2

    def full_batch(self, X, labels, sparse: bool | None = None) -> FullBatch:
        """Prepare repeated steps on all of ``X`` (full-batch gradient descent);
        ``sparse`` forces the first layer's kernels, else ``X``'s density decides."""
        return FullBatch(self, X, labels, sparse)

    def epoch(self, X, labels, order, batch_size: int, optimizer: Optimizer, nonzeros: int):
        """One epoch of mini-batch training over ``order``.

        ``nonzeros`` is room for the nonzeros of one batch (see
        :func:`batch_nonzeros`); 0 reads ``X`` with the dense kernels.
        Returns the sum of batch losses times batch sizes, and the index of
        the batch that produced a non-finite loss or gradient (the epoch stops
        there, with the parameters as they were before it), or -1.
        """
        key = (batch_size, nonzeros)
        if key not in self._epoch_buffers:
            n_x, n_h, n_y = self.dims
            work = _work(batch_size, n_h, n_y, self.dtype)
            csr, csc = _sparse_buffers(batch_size if nonzeros else 0, n_x, nonzeros, self.dtype)
            self._epoch_buffers = {key: (work, csr, csc)}
        work, csr, csc = self._epoch_buffers[key]
        mode = kernels.SPARSE if nonzeros else kernels.DENSE
        return self._train_epoch(X, labels, order, batch_size, optimizer, work, csr, csc, mode)

    def _train_epoch(self, X, labels, order, batch_size, optimizer, work, csr, csc, mode):
        total, failed = kernels.train_epoch(
            X,
            labels,
            order,
            batch_size,
            self.theta,
            self.grads,
            self._code,
            optimizer.as_kernel_args(),
            work,
            csr,
            csc,
            mode,
        )
        return float(total), int(failed)


class FullBatch:
    """Steps of full-batch gradient descent on one data set, buffers allocated once.

    For a sparse input the nonzeros are extracted once, in both orders the
    kernels need (by example for the forward pass, by feature for the
    backward pass), and reused by every step.
    """

    def __init__(self, network: FastNetwork, X, labels, sparse: bool | None):
        n_x, n_h, n_y = network.dims
        m = X.shape[0]
        self.network = network
        self.X, self.labels = X, labels
        self.rows = np.arange(m)
        self.work = _work(m, n_h, n_y, network.dtype)
        nnz = int(np.count_nonzero(X))
        if sparse is None:
            sparse = nnz < SPARSE_BELOW_DENSITY * X.size
        self.csr, self.csc = _sparse_buffers(m if sparse else 0, n_x, nnz, network.dtype)
        if sparse:
            kernels.compress_rows(X, self.rows, *self.csr)
            kernels.transpose_sparse(*self.csr, n_x, *self.csc)
        self.mode = kernels.SPARSE_PREPARED if sparse else kernels.DENSE

    def step(self, optimizer: Optimizer) -> tuple[float, bool]:
        """One forward, backward and update; returns the loss before the update
        and whether the update was made (not when anything is non-finite)."""
        m = self.rows.size
        total, failed = self.network._train_epoch(
            self.X,
            self.labels,
            self.rows,
            m,
            optimizer,
            self.work,
            self.csr,
            self.csc,
            self.mode,
        )
        if failed >= 0:
            return float("nan"), False
        return total / m, True

    def predicted_classes(self) -> np.ndarray:
        """Class indices the current parameters predict for the training data."""
        net = self.network
        A1, A2 = self.work[0], self.work[1]
        kernels.forward(self.X, self.rows, self.csr, *net.params, net._code, A1, A2)
        return class_indices(A2)


def class_indices(A2) -> np.ndarray:
    """The most probable class of each row of output activations."""
    if A2.shape[1] == 1:
        return (A2[:, 0] > 0.5).astype(np.int64)
    return np.argmax(A2, axis=1)
