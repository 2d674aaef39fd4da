"""The three workloads of the benchmarks, and every implementation that runs them.

W1  the notebook's: 2,000 examples, 64 hidden, full-batch gradient descent,
    alpha 0.5, 1,000 iterations (1,001 steps, as the notebook counts).
W2  mini-batch: one epoch over 10,000 examples, batch 64, hidden 64, plain SGD.
W3  scale: 60,000 examples (the 10,000 real images tiled six times), hidden
    256, batch 256, one epoch of plain SGD.

Every implementation does the same arithmetic on the same data: the same
initial weights (the notebook's), the same batches in the same order, and
reports the accuracy it reaches on the data it trained on.

Implementations: ``numpy`` (fastmlp's reference path), ``numba`` (the fast
path), ``torch`` (PyTorch on the CPU, where installed) and ``sklearn``
(scikit-learn's MLPClassifier with the same solver and settings; its own
initialisation and batch order, as it offers no way to set them).
"""

from __future__ import annotations

import importlib.util
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import fastmlp
from fastmlp import datasets, reference

MNIST = Path(
    os.environ.get(
        "FASTMLP_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    )
)


IDLE = 0.5
"""Seconds of rest before each timed run. A library's worker threads keep
spinning for a while after its last call (OpenBLAS's for about 0.2 s) and take
cores from whatever runs next: W2 in fastmlp took 45 ms right after the NumPy
reference and 23 ms after a rest of 0.2 s; on 2026-12-06, 25.5 ms right
after NumPy's matrix products against 13.9 ms after a rest (medians of 8),
and FastMLPClassifier's fit 346 ms right after one of MLPClassifier against
298 ms after a rest (medians of 6)."""


def rest() -> None:
    """Wait :data:`IDLE` seconds before a timed run."""
    time.sleep(IDLE)


IMPLEMENTATIONS = [
    ("numpy", np.float64),
    ("numba", np.float64),
    ("numba", np.float32),
    ("torch", np.float64),
    ("torch", np.float32),
    ("sklearn", np.float64),
]
"""Who runs each workload, and in which dtype: the reference path in the
notebook's float64, fastmlp and PyTorch in both, scikit-learn in float64."""


@dataclass(frozen=True)
class Workload:
    name: str
    n_examples: int
    hidden: int
    batch_size: int | None  # None: full batch
    steps: int  # full-batch steps, or epochs
    alpha: float

    def describe(self) -> str:
        how = "full batch" if self.batch_size is None else f"batch {self.batch_size}"
        unit = "steps" if self.batch_size is None else "epoch(s)"
        return (
            f"{self.name}: {self.n_examples:,} examples, hidden {self.hidden}, {how}, "
            f"{self.steps:,} {unit}"
        )

    def scaled(self, factor: float) -> Workload:
        """A smaller version, for smoke runs (``factor`` < 1)."""
        n = max(256, int(self.n_examples * factor)) if self.batch_size else self.n_examples
        steps = max(1, int(self.steps * factor)) if self.batch_size is None else self.steps
        return Workload(self.name, n, self.hidden, self.batch_size, steps, self.alpha)


WORKLOADS = {
    "W1": Workload("W1", 2000, 64, None, 1001, 0.5),
    "W2": Workload("W2", 10_000, 64, 64, 1, 0.1),
    "W3": Workload("W3", 60_000, 256, 256, 1, 0.1),
}


def load_data(n_examples: int, dtype=np.float64):
    """``n_examples`` MNIST images (tiled from the 10,000 real ones when more are
    asked for) and labels; MNIST-like random data where the real set is absent."""
    if (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        data = datasets.load(f"idx:{MNIST}")
        X, y, source = data.X, data.y, "MNIST test set"
    else:  # pragma: no cover - only without ../shared
        rng = np.random.default_rng(0)
        X = rng.random((10_000, 784))
        X[rng.random(X.shape) < 0.81] = 0
        y = rng.integers(0, 10, 10_000)
        source = "random MNIST-like data (../shared/data/mnist is absent)"
    reps = -(-n_examples // len(y))
    X = np.tile(X, (reps, 1))[:n_examples].astype(dtype)
    y = np.tile(y, reps)[:n_examples]
    return X, y, source


def batch_orders(workload: Workload, seed: int = 1) -> list[np.ndarray]:
    """The example order of each epoch, the one fastmlp.train(seed=1) uses."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(workload.n_examples) for _ in range(workload.steps)]


@dataclass
class Result:
    """Training time, and how to get the trained model's accuracy afterwards
    (outside the timed part)."""

    seconds: float
    evaluate: object  # () -> float
    params: tuple = ()  # fastmlp's trained parameters (W1, b1, W2, b2)

    @property
    def accuracy(self) -> float:
        return self.evaluate()


def _accuracy_of_params(X, y, params) -> float:
    A2 = reference.forward(*params, X.T)[3]
    return float(np.mean(np.argmax(A2, axis=0) == y))


def run_fastmlp(workload: Workload, X, y, backend: str) -> Result:
    start = time.perf_counter()
    model = fastmlp.train(
        X,
        y,
        hidden=workload.hidden,
        iterations=workload.steps - (workload.batch_size is None),
        alpha=workload.alpha,
        backend=backend,
        batch_size=workload.batch_size,
        log_every=None,
    )
    seconds = time.perf_counter() - start
    return Result(seconds, lambda: model.score(X, y), (model.W1, model.b1, model.W2, model.b2))


def run_torch(workload: Workload, X, y) -> Result:
    import torch

    dtype = torch.float32 if X.dtype == np.float32 else torch.float64
    # Timed from the data to the trained weights, initialisation included,
    # as fastmlp.train and MLPClassifier.fit are (drawing the notebook's
    # weights takes about 1.6 ms at 64 hidden units).
    start = time.perf_counter()
    W1, b1, W2, b2 = (
        torch.tensor(p, dtype=dtype) for p in reference.init_params(X.shape[1], workload.hidden, 10)
    )
    params = [W1.requires_grad_(), b1.requires_grad_(), W2.requires_grad_(), b2.requires_grad_()]
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    optimizer = torch.optim.SGD(params, lr=workload.alpha)

    def step(rows):
        xb, yb = (Xt, yt) if rows is None else (Xt[rows], yt[rows])
        optimizer.zero_grad(set_to_none=True)
        logits = torch.sigmoid(xb @ W1.T + b1.T) @ W2.T + b2.T
        torch.nn.functional.cross_entropy(logits, yb).backward()
        optimizer.step()

    if workload.batch_size is None:
        for _ in range(workload.steps):
            step(None)
    else:
        for order in batch_orders(workload):
            order = torch.from_numpy(order)
            for begin in range(0, len(order), workload.batch_size):
                step(order[begin : begin + workload.batch_size])
    seconds = time.perf_counter() - start
    detached = [p.detach().numpy() for p in params]
    return Result(seconds, lambda: _accuracy_of_params(X, y, detached))


def run_sklearn(workload: Workload, X, y) -> Result:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(
        hidden_layer_sizes=(workload.hidden,),
        activation="logistic",
        solver="sgd",
        alpha=0.0,
        batch_size=workload.batch_size or len(y),
        learning_rate_init=workload.alpha,
        momentum=0.0,
        max_iter=workload.steps,
        shuffle=True,
        tol=0.0,
        n_iter_no_change=workload.steps + 1,
        random_state=1,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    seconds = time.perf_counter() - start
    return Result(seconds, lambda: float(clf.score(X, y)))


def available(implementation: str) -> bool:
    if implementation == "torch":
        return importlib.util.find_spec("torch") is not None
    return True


def run(implementation: str, workload: Workload, X, y) -> Result:
    if implementation in ("numpy", "numba"):
        return run_fastmlp(workload, X, y, implementation)
    if implementation == "torch":
        return run_torch(workload, X, y)
    if implementation == "sklearn":
        return run_sklearn(workload, X, y)
    raise ValueError(implementation)


ESTIMATOR_EXAMPLES = 8000
"""The MNIST digits FastMLPClassifier fits in ``bench_estimator.py``."""
ESTIMATOR_EPOCHS = 20
"""The epochs of each of those fits."""


def fit_estimator(
    X,
    y,
    epochs: int = ESTIMATOR_EPOCHS,
    batch_size: int = 200,
    solver="adam",
    hidden=64,
    estimator=None,
):
    """Fit ``estimator`` (a class: FastMLPClassifier unless given, or
    scikit-learn's MLPClassifier) at the settings of ``bench_estimator.py``:
    the tests' ``equal_settings`` (``tests/_support.py``, whose folder must be
    on ``sys.path``); returns the fitted classifier."""
    from _support import equal_settings
    from sklearn.exceptions import ConvergenceWarning

    estimator = estimator or fastmlp.FastMLPClassifier
    settings = equal_settings(solver, epochs, batch_size, hidden)
    with warnings.catch_warnings():
        # No convergence is expected at a fixed number of epochs.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator(**settings).fit(X, y)


def warm_up_estimator(X, y, batch_size: int = 200, solver="adam", hidden=64) -> None:
    """Compile (or load from the cache) the kernels that FastMLPClassifier's
    fits on ``X`` at these settings run: one epoch on its first 300 examples."""
    fit_estimator(X[:300], y[:300], 1, batch_size, solver, hidden)


def estimator_case(name: str) -> tuple[int, int] | None:
    """The batch size and hidden units of an estimator case named ``fit``
    (200 and 64), ``fit:B`` (batches of ``B``) or ``fit:B:H`` (and ``H``
    hidden units), positive integers; None for any other name."""
    head, *sizes = name.split(":")
    if head != "fit" or len(sizes) > 2 or not all(s.isdigit() and int(s) > 0 for s in sizes):
        return None
    batch_size, hidden = [int(s) for s in sizes] + [200, 64][len(sizes) :]
    return batch_size, hidden


def warm_up(dtype) -> None:
    """Compile (or load from the cache) every fast-path kernel for ``dtype``."""
    X, y, _ = load_data(300, dtype)
    fastmlp.train(X, y, iterations=1, log_every=None)
    fastmlp.train(X, y, iterations=1, batch_size=64, log_every=None)


def flops(workload: Workload, n_x: int = 784, n_y: int = 10) -> float:
    """Floating-point operations of the dense computation (multiply-adds count
    two): forward ``X W1`` and ``A1 W2``, backward ``dW2``, ``dA1``, ``dW1``."""
    per_example = 2 * (2 * n_x * workload.hidden + 3 * workload.hidden * n_y)
    steps = workload.steps
    return float(per_example * workload.n_examples * steps)
