"""Drives the kernels: one network's parameters, its buffers and its training steps.

This is the Python side of the fast path. It owns every array the kernels
write into, allocated once per run (not per step), and decides how the input
reaches the first layer: as it is (dense) or as its nonzeros (sparse), from
the input's density. A scipy.sparse input in CSR format is always read
through a list of its nonzeros, never made dense.
"""

from __future__ import annotations

import numba
import numpy as np

from . import kernels

SPARSE_BELOW_DENSITY = {np.dtype(np.float32): 0.45, np.dtype(np.float64): 0.75}
"""Inputs with a smaller fraction of nonzeros go through the sparse kernels.

Measured with the dense first layer four examples at a time (random
784-feature inputs, 64 hidden units, 2 threads, the Intel machine of the
README; ``benchmarks/bench_kernels.py``'s groups "first-layer density" time
float64): in float32 the dense path is the faster from 45% nonzeros on, a
full-batch step on 2,000 examples taking 1.47 ms against 1.33 ms sparse at
40%, 1.59 ms at 50% and 2.22 ms at 75%, and an epoch of batches of 64 over
10,000 examples 11.8 ms against 13.0 ms sparse at 50% and 16.4 ms at 100%.
In float64 the full-batch step is faster dense from about 63% (3.57 ms
against 3.36 ms sparse at 60%, 4.31 ms at 75%), but the epoch of batches
of 64 is faster sparse even at 100% (22.4 ms against 24.1 ms; 21.2 against
24.0 ms at 75%): float64 keeps 75% for both. Before the four examples, the
dense path took 10.7-11.3 ms a float64 full-batch step and 67-68 ms an
epoch, and 75% was the crossover of both. MNIST has 19% nonzeros,
scikit-learn's digits 51%."""

DENSITY_SAMPLE = 256
"""Rows (evenly spaced) whose nonzeros decide between the sparse and dense
kernels: counting all of a large input would cost more than a short run.
256 rows of MNIST are 200,000 values, plenty to place a density against
the threshold, and cost 0.15 ms on W2's 10,000 float32 images where 1,024
rows cost 0.55 ms (float64: 0.21 against 0.84 ms)."""

PREDICT_CHUNK = 4096
"""Examples per forward pass when predicting, to bound the buffers' size."""

ONE_THREAD_WEIGHTS = 1 << 14
ONE_THREAD_MADDS = {np.dtype(np.float32): 1 << 19, np.dtype(np.float64): 1 << 17}
"""Small batches train on one thread: those whose ``W1`` has at most
:data:`ONE_THREAD_WEIGHTS` weights and whose first layer costs at most
this many multiply-adds (examples x features x hidden units), unless the
input is sparse and wider than 64 features. The threads meet at every
parallel loop of every batch, about 10 us a batch on this project's
machine, and such a batch has too little work for two to share; a large
``W1`` (its gradient, penalty and update) shares well at any batch size. A
sparse input wider than 64 features is marked and summed by parts of its
features, one per thread, which shares well too (MNIST with 16 and 20
hidden units on one thread: 0.88x and 0.87x as fast at batches of 32 and
16 in float32). A multiply-add in float64 takes longer, so fewer of them
pay for the second thread.

Measured with FastMLPClassifier's Adam, this rule against two threads
taking turns in one process (the Intel machine of the README, medians of 6
pairs of fits of 5 epochs, 64 hidden units, float32 and float64, with the
dense first layer four examples at a time): scikit-learn's digits (64
features, half of them zero) at batches of 16 1.70x and 1.30x faster, at
64 1.23x (float32); 20 dense features of ``make_classification`` at
batches of 16 1.73x and 1.50x, at 64 1.25x and 1.21x, at 200 1.01x
(float32); 100 features at 16 1.78x and 1.33x, at 64 1.22x (float32); 256
features at 16 1.74x (float32). Where it leaves two threads, two were
faster (measured before the four examples): 20 features at batches of 200
in float64 (one thread 0.84x as fast), 100 at 64 in float64 (0.77x), 256
at 16 in float64 (0.79x), the digits standardised with 256 hidden units at
16 in float64 (0.79x); MNIST with 64 hidden units even at batches of 2
(0.80x). The number of threads does not change the results (see
:mod:`.kernels`)."""


def aligned_empty(shape, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` that starts on a cache line.

    NumPy's allocator aligns to 16 bytes only. The kernels read and write
    whole rows of hidden units (64 of them: 256 bytes in float32, four cache
    lines); a row that starts elsewhere spans five, and every load that
    crosses a line costs twice. Measured on W1 in float32: a step 1.39x
    faster with the parameters, gradients and activations aligned than at
    the offsets NumPy happened to give them (1.16x for the parameters alone,
    1.23x for the activations alone).
    """
    dtype = np.dtype(dtype)
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = np.empty(n_bytes + kernels.CACHE_LINE, np.uint8)
    start = -buffer.ctypes.data % kernels.CACHE_LINE
    return buffer[start : start + n_bytes].view(dtype).reshape(shape)


def aligned_zeros(shape, dtype) -> np.ndarray:
    """``np.zeros(shape, dtype)`` that starts on a cache line."""
    array = aligned_empty(shape, dtype)
    array.fill(0)
    return array


def flatten_params(W1, b1, W2, b2, dtype=None) -> np.ndarray:
    """Notebook-layout parameters -> the kernels' flat vector (a new array,
    aligned, of ``dtype`` or else the parameters' own)."""
    parts = [np.ravel(p) for p in (np.transpose(W1), b1, W2, b2)]
    theta = aligned_empty(sum(p.size for p in parts), dtype or np.result_type(*parts))
    start = 0
    for part in parts:
        theta[start : start + part.size] = part
        start += part.size
    return theta


def notebook_params(theta, n_x: int, n_h: int, n_y: int):
    """The kernels' flat vector -> new notebook-layout ``W1, b1, W2, b2``."""
    W1, b1, W2, b2 = kernels.unpack(theta, n_x, n_h, n_y)
    return (
        np.ascontiguousarray(W1.T),
        b1.reshape(n_h, 1).copy(),
        W2.copy(),
        b2.reshape(n_y, 1).copy(),
    )


def _example_weights(weights):
    """Weights as the kernels take them: float64, or empty for none."""
    if weights is None:
        return np.empty(0, np.float64)
    return np.ascontiguousarray(weights, dtype=np.float64)


def is_csr(X) -> bool:
    """Whether ``X`` is a scipy.sparse matrix or array in CSR format (told
    apart without importing scipy)."""
    return getattr(X, "format", None) == "csr" and hasattr(X, "indptr")


def kernel_rows(X) -> np.ndarray:
    """What the kernels take as ``X``: the array itself, or for a CSR input,
    whose nonzeros the kernels read from a list (:func:`listed_input`), as
    many rows of its dtype with no columns (no memory)."""
    return np.empty((X.shape[0], 0), X.dtype) if is_csr(X) else X


def is_sparse(X) -> bool:
    """Whether ``X`` has few enough nonzeros for the sparse first layer (a
    CSR input always goes through it)."""
    if is_csr(X):
        return True
    sample = X[:: max(1, len(X) // DENSITY_SAMPLE)]
    # On a strided view np.count_nonzero takes a slow path (3x slower than this).
    threshold = SPARSE_BELOW_DENSITY[np.dtype(X.dtype)]
    return int((sample != 0).sum()) < threshold * sample.size


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


def _part_sums(capacity: int, n_h: int, dtype) -> np.ndarray:
    """Room for the forward pass's parts of the first layer (see
    :func:`kernels.forward`) on up to ``capacity`` examples."""
    return aligned_empty((kernels.N_PARTS - 1, min(capacity, kernels.PART_GROUP), n_h), dtype)


def _work(capacity: int, n_x: int, n_h: int, n_y: int, dtype, by_parts: bool = True):
    """Buffers for a step on up to ``capacity`` examples: ``A1, A2`` (which the
    backward pass turns into ``dZ1, dZ2``), the parts of the first layer
    (none unless ``by_parts``: see :func:`kernels.reads_by_word`), the per-chunk
    sums, the per-chunk losses (later the per-block squared weights), and a
    flag for each block of ``dW1`` (at most one block per feature, plus the
    padding of :func:`kernels._dW1_blocks`' parts: less than 64 blocks per
    part)."""
    n_blocks = max(n_x + 64 * kernels.N_PARTS, kernels.N_CHUNKS)
    return (
        aligned_empty((capacity, n_h), dtype),
        aligned_empty((capacity, n_y), dtype),
        _part_sums(capacity if by_parts else 0, n_h, dtype),
        np.empty((kernels.N_CHUNKS, n_y * n_h + n_y + 2 * n_h), dtype),
        np.empty(n_blocks, np.float64),
        np.empty(n_blocks, np.bool_),
    )


def _index_dtype(n: int):
    """The smallest unsigned integer type that numbers ``n`` columns or
    examples: after the copy of their values, the lists of nonzeros are the
    largest arrays a full batch keeps."""
    return np.uint16 if n <= 1 << 16 else np.uint32


def _empty_nonzeros(n_x: int, dtype, mask_rows: int = 0):
    columns = _index_dtype(n_x)
    # Numba's pool size, which get_thread_id() numbers (set at import: no stub has it)
    threads = numba.config.NUMBA_NUM_THREADS if mask_rows else 0  # type: ignore[attr-defined]
    return kernels.Nonzeros(
        np.empty((mask_rows, -(-n_x // 64) if mask_rows else 0), np.uint64),
        np.empty((threads, 64 if mask_rows else 0), np.uint64),
        (np.empty((0, 0), np.int64), np.empty(0, columns), np.empty(0, dtype)),
        (np.empty(0, np.int64), np.empty(0, columns)),
        # The types of a prepared batch of up to 65,536 examples, so that every
        # form of the input runs the same compiled kernels.
        (np.empty(0, np.int64), np.empty(0, _index_dtype(0)), np.empty(0, dtype)),
    )


def dense_input(n_x: int, dtype) -> kernels.Nonzeros:
    """The :class:`kernels.Nonzeros` that tells the kernels to read the input
    (``n_x`` features of ``dtype``) as it is."""
    return _empty_nonzeros(n_x, dtype)


def batch_input(capacity: int, n_x: int, dtype) -> kernels.Nonzeros:
    """Room to mark the nonzeros of each mini-batch of up to ``capacity`` examples."""
    return _empty_nonzeros(n_x, dtype, capacity)


def listed_input(X) -> kernels.Nonzeros:
    """Every example's nonzeros with their values, listed once, for many
    epochs of mini-batches on ``X`` (a dense array or a CSR matrix)."""
    m, n_x = X.shape
    if is_csr(X):
        listed = _listed_csr(X)
    else:
        nnz = int(np.count_nonzero(X))
        listed = (
            np.empty((m, -(-n_x // 64) + 1), np.int64),
            np.empty(nnz, _index_dtype(n_x)),
            np.empty(nnz, X.dtype),
        )
        kernels.list_nonzeros(X, *listed)
    return _empty_nonzeros(n_x, X.dtype)._replace(listed=listed)


def _listed_csr(X):
    """:func:`kernels.list_nonzeros`' three arrays for a CSR matrix: its
    column numbers and values as they are, once sorted, without duplicates
    (summed, as ``X.toarray()`` does) and without stored zeros (which would
    shift the sums' grouping away from the dense form's), and where each
    word of 64 features starts in each row."""
    if not X.has_canonical_format or not X.data.all():
        X = X.copy()  # the caller's matrix stays as it was
        X.sum_duplicates()  # also sorts each row's columns
        X.eliminate_zeros()
    m, n_x = X.shape
    n_words = -(-n_x // 64)
    indptr = X.indptr.astype(np.int64)
    # Counting the nonzeros of every (row, word) pair, in order, gives where
    # each pair starts: the rows' columns are sorted, so the pairs come in order.
    pair = np.repeat(np.arange(m, dtype=np.int64) * n_words, np.diff(indptr))
    pair += X.indices // 64
    counts = np.bincount(pair, minlength=m * n_words)
    starts = np.cumsum(counts) - counts
    wordptr = np.empty((m, n_words + 1), np.int64)
    wordptr[:, :n_words] = starts.reshape(m, n_words)
    wordptr[:, n_words] = indptr[1:]
    return (
        wordptr,
        np.ascontiguousarray(X.indices, dtype=_index_dtype(n_x)),
        np.ascontiguousarray(X.data),
    )


def prepared_input(X) -> kernels.Nonzeros:
    """Where the nonzeros of ``X`` are, by example and by feature (with a
    copy of their values), for repeated steps on all of ``X``."""
    m, n_x = X.shape
    nnz = int(np.count_nonzero(X))
    csr = np.empty(m + 1, np.int64), np.empty(nnz + 1, _index_dtype(n_x))
    csc = np.empty(n_x + 1, np.int64), np.empty(nnz, _index_dtype(m)), np.empty(nnz, X.dtype)
    kernels.compress_rows(X, *csr)
    kernels.transpose_sparse(X, *csr, *csc)
    return _empty_nonzeros(n_x, X.dtype)._replace(csr=csr, csc=csc)


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
        self._grads: np.ndarray | None = None
        self.dims = (n_x, n_h, n_y)
        self.activation = activation
        self._code = kernels.ACTIVATIONS[activation]
        self._dense = dense_input(n_x, theta.dtype)

    @property
    def dtype(self):
        return self.theta.dtype

    @property
    def grads(self) -> np.ndarray:
        """The gradient buffer, allocated when training first needs it (a model
        that only predicts never does)."""
        if self._grads is None:
            self._grads = aligned_zeros(self.theta.shape, self.dtype)
        return self._grads

    @property
    def params(self):
        """Views ``W1, b1, W2, b2`` of the parameters, in the kernels' layout."""
        return kernels.unpack(self.theta, *self.dims)

    def output(self, X) -> np.ndarray:
        """The output layer's activations for ``X`` (``m`` x ``n_y``), an
        array or a CSR matrix."""
        n_x, n_h, n_y = self.dims
        m = X.shape[0]
        size = min(m, PREDICT_CHUNK)
        # A2 is the caller's result: a plain array (its rows of classes are
        # read once, so where it starts does not matter).
        A1, A2 = aligned_empty((size, n_h), self.dtype), np.empty((m, n_y), self.dtype)
        csr, sparse = is_csr(X), is_sparse(X)
        part_sums = _part_sums(size if sparse else 0, n_h, self.dtype)  # read by parts
        if not csr:
            nonzeros = batch_input(size, n_x, self.dtype) if sparse else self._dense
        for start in range(0, m, size):
            rows, chunk = np.arange(start, min(m, start + size)), X
            if csr:  # listed a chunk at a time, so that the list stays small
                chunk, rows = X[start : start + size], rows - start
                nonzeros = listed_input(chunk)
            kernels.forward(
                kernel_rows(chunk),
                rows,
                nonzeros,
                *self.params,
                self._code,
                A1[: rows.size],
                A2[start:][: rows.size],
                part_sums,
            )
        return A2

    def full_batch(self, X, labels, sparse: bool | None = None, weights=None) -> FullBatch:
        """Prepare repeated steps on all of ``X`` (full-batch gradient descent);
        ``sparse`` forces the first layer's kernels, else ``X``'s density decides.
        ``weights`` (one per example) make the loss a weighted mean."""
        return FullBatch(self, X, labels, sparse, weights)

    def mini_batches(
        self,
        X,
        labels,
        batch_size: int,
        sparse: bool | None = None,
        weights=None,
        epochs: int = 1,
    ) -> MiniBatches:
        """Prepare epochs of mini-batch training on ``X``; ``sparse`` forces
        the first layer's kernels, else ``X``'s density decides. ``epochs``
        is how many are planned (it decides how a sparse input is read).
        ``weights`` (one per example) make each batch's loss a weighted mean."""
        return MiniBatches(self, X, labels, batch_size, sparse, weights, epochs)


class MiniBatches:
    """Epochs of mini-batch training on one data set, buffers allocated once.

    A sparse input seen for one epoch has each batch's nonzeros marked as the
    batch comes, which reads its rows of ``X`` once. For several epochs,
    every example's nonzeros are listed once (:func:`listed_input`) and the
    epochs read the list instead, a fraction of the size of ``X``. Measured
    with the estimator's benchmark (8,000 MNIST digits, batches of 200, 20
    epochs), this code against the marking one in turns, 8 pairs of
    processes: fits 1.34x (Adam) and 1.21x (SGD) faster in float64, 1.20x
    in float32; listing the digits takes about 6 ms. On random inputs with
    20%, 50% and 75% nonzeros (8,000 x 784, batches of 200, the two taking
    turns in one process) listed epochs were 1.00x to 1.18x faster. The
    list takes the value and a 16-bit feature number per nonzero: near the
    sparse threshold, in float32, more than ``X`` itself (1.4x at 75%).
    The trained weights are the same, bitwise.
    """

    def __init__(
        self,
        network: FastNetwork,
        X,
        labels,
        batch_size: int,
        sparse: bool | None,
        weights=None,
        epochs: int = 1,
    ):
        n_x, n_h, n_y = network.dims
        self.network = network
        self.labels = labels
        self.weights = _example_weights(weights)
        self.batch_size = batch_size
        if sparse is None:
            sparse = is_sparse(X)
        elif is_csr(X) and not sparse:
            raise ValueError("a scipy.sparse X trains through the sparse kernels only")
        self.nonzeros = self._sparse_input(X, epochs) if sparse else network._dense
        by_parts = kernels.reads_by_word(self.nonzeros)
        self.one_thread = (
            not (by_parts and n_x > 64)  # the mask's parts of the features are one per thread
            and n_x * n_h <= ONE_THREAD_WEIGHTS
            and batch_size * n_x * n_h <= ONE_THREAD_MADDS[np.dtype(network.dtype)]
        )
        self.work = _work(batch_size, n_x, n_h, n_y, network.dtype, by_parts)
        self.X = kernel_rows(X)

    def _sparse_input(self, X, epochs: int) -> kernels.Nonzeros:
        """How the kernels read a sparse ``X`` for ``epochs`` planned epochs
        (a CSR matrix: always from the list of its nonzeros)."""
        if epochs > 1 or is_csr(X):
            return listed_input(X)
        n_x = self.network.dims[0]
        return batch_input(self.batch_size, n_x, self.network.dtype)

    def epoch(self, order, optimizer: Optimizer) -> tuple[float, int]:
        """One epoch over ``order`` (example numbers), in batches.

        Returns the sum of batch losses times batch sizes, and the index of
        the batch that produced a non-finite loss or gradient (the epoch stops
        there, with the parameters as they were before it), or -1.
        """
        net = self.network
        # train_epoch calls parallel kernels without being one. Numba saves it
        # in its cache without the call that starts the threads when the
        # parallel kernels came from the cache as it compiled, so a process
        # that then loads it would crash in its first parallel loop
        # (numba#8578; tests/test_jit.py). Asking for the thread count
        # starts them, once per process.
        threads = numba.get_num_threads()
        if self.one_thread:  # see ONE_THREAD_MADDS; the setting is this thread's own
            numba.set_num_threads(1)
        try:
            total, failed = kernels.train_epoch(
                self.X,
                self.labels,
                self.weights,
                order,
                self.batch_size,
                net.theta,
                net.grads,
                net._code,
                optimizer.as_kernel_args(),
                self.work,
                self.nonzeros,
            )
        finally:
            numba.set_num_threads(threads)
        return float(total), int(failed)


class FullBatch(MiniBatches):
    """Steps of full-batch gradient descent on one data set, buffers allocated
    once: each step is an epoch of one batch, all of ``X`` in order.

    For a sparse input the nonzeros are extracted once, in both orders the
    kernels need (by example for the forward pass, by feature with their
    values for the backward pass), and reused by every step.
    """

    def __init__(self, network: FastNetwork, X, labels, sparse: bool | None, weights=None):
        super().__init__(network, X, labels, X.shape[0], sparse, weights)
        self.rows = np.arange(X.shape[0])

    def _sparse_input(self, X, epochs: int) -> kernels.Nonzeros:
        return listed_input(X) if is_csr(X) else prepared_input(X)

    def step(self, optimizer: Optimizer) -> tuple[float, bool]:
        """One forward, backward and update; returns the loss before the update
        and whether the update was made (not when anything is non-finite)."""
        total, failed = self.epoch(self.rows, optimizer)
        if failed >= 0:
            return float("nan"), False
        return total / self.rows.size, True

    def predicted_classes(self) -> np.ndarray:
        """Class indices the current parameters predict for the training data."""
        net = self.network
        A1, A2, part_sums = self.work[:3]
        kernels.forward(self.X, self.rows, self.nonzeros, *net.params, net._code, A1, A2, part_sums)
        return class_indices(A2)


def class_indices(A2) -> np.ndarray:
    """The most probable class of each row of output activations."""
    if A2.shape[1] == 1:
        return (A2[:, 0] > 0.5).astype(np.int64)
    return np.argmax(A2, axis=1)
