"""FastMLPClassifier: scikit-learn's MLPClassifier, one hidden layer, on fastmlp's kernels."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import ArrayLike, DTypeLike
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from . import kernels
from ._validation import resolve_dtype
from .engine import FastNetwork, Optimizer, class_indices, flatten_params
from .errors import DivergenceError

if TYPE_CHECKING:
    from scipy.sparse import sparray, spmatrix

SOLVERS = ("sgd", "adam", "gd")
LEARNING_RATES = ("constant", "invscaling", "adaptive")


class FastMLPClassifier(ClassifierMixin, BaseEstimator):
    """A classifier with one hidden layer, a drop-in for scikit-learn's MLPClassifier.

    Same parameters, fitted attributes and behaviour as
    :class:`sklearn.neural_network.MLPClassifier` for a network with one hidden
    layer, trained by fastmlp's compiled kernels. With the same
    ``random_state`` it starts from the same weights and visits the batches in
    the same order as scikit-learn.

    ``X`` may be a scipy.sparse matrix or array, in any format: its nonzeros
    are listed once and the kernels read only them, so a wide sparse input
    (text features, say) is never made dense. It trains to the same weights
    as its dense form (bitwise with "adam" and "sgd" where the dense form
    goes through the sparse kernels too, see
    :data:`fastmlp.engine.SPARSE_BELOW_DENSITY`; else to rounding). The list holds each
    nonzero's value and feature number, and where every run of 64 features
    starts in every sample: ``n_samples * n_features / 8`` bytes (6.3 MB for
    1,000 samples of 50,000 features; predictions list 4,096 samples at a
    time).

    Parameters
    ----------
    hidden_layer_sizes : int or tuple of one int, default=(64,)
        Units of the hidden layer. Only one hidden layer is supported.
    activation : {"logistic", "tanh", "relu"}, default="logistic"
        The hidden layer's activation (the notebook's is "logistic").
    solver : {"adam", "sgd", "gd"}, default="adam"
        "adam" and "sgd" (with ``momentum`` and ``nesterovs_momentum``) train
        on mini-batches, as in scikit-learn. "gd" is the notebook's full-batch
        gradient descent: each epoch is one step on all samples, without
        momentum; ``batch_size`` and ``shuffle`` do not apply.
    alpha : float, default=1e-4
        Strength of the L2 penalty (as in scikit-learn). **Not** the notebook's
        ``alpha``, which is a learning rate: that is ``learning_rate_init`` here.
    batch_size : int or "auto", default="auto"
        Mini-batch size; "auto" is ``min(200, n_samples)``.
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        Schedule for "sgd" and "gd", as in scikit-learn.
    learning_rate_init : float, default=1e-3
    power_t : float, default=0.5
        Exponent of the "invscaling" schedule.
    max_iter : int, default=200
        Epochs (full-batch steps for "gd").
    shuffle : bool, default=True
        Shuffle the samples before each epoch.
    random_state : int, RandomState instance or None, default=None
        Initial weights, shuffling, and the early-stopping split.
    tol : float, default=1e-4
        Improvement of the loss (or validation score) that counts as progress.
    verbose : bool, default=False
        Print the loss after each epoch.
    warm_start : bool, default=False
        Continue from the previous fit's weights.
    momentum : float, default=0.9
        For "sgd".
    nesterovs_momentum : bool, default=True
        For "sgd" with momentum.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data (stratified) and stop when
        its accuracy stops improving; keeps the best weights.
    validation_fraction : float, default=0.1
    beta_1, beta_2, epsilon : float
        Adam's parameters.
    n_iter_no_change : int, default=10
        Epochs without improvement (by ``tol``) before stopping.
    dtype : {None, "float32", "float64"}, default=None
        Precision of training. None keeps float32 input in float32 (as
        scikit-learn does) and uses float64 otherwise.
    init : {"glorot", "notebook"}, default="glorot"
        scikit-learn's Glorot-uniform initialisation, or the notebook's
        (normal with standard deviation 0.1, zero biases).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when ``X`` has feature names.
    coefs_ : list of two ndarrays
        ``coefs_[0]`` is ``n_features`` x ``n_hidden``, ``coefs_[1]`` is
        ``n_hidden`` x ``n_outputs``.
    intercepts_ : list of two ndarrays
    loss_ : float
    loss_curve_ : list of float
    best_loss_ : float or None
        None with early stopping.
    validation_scores_ : list of float or None
    best_validation_score_ : float or None
    n_iter_ : int
    t_ : int
        Training samples seen.
    n_layers_ : int
    n_outputs_ : int
        1 for two classes (a logistic output unit), else the number of classes.
    out_activation_ : str
    """

    def __init__(
        self,
        hidden_layer_sizes: int | Sequence[int] = (64,),
        activation: Literal["logistic", "tanh", "relu"] = "logistic",
        *,
        solver: Literal["adam", "sgd", "gd"] = "adam",
        alpha: float = 1e-4,
        batch_size: int | Literal["auto"] = "auto",
        learning_rate: Literal["constant", "invscaling", "adaptive"] = "constant",
        learning_rate_init: float = 1e-3,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: int | np.random.RandomState | None = None,
        tol: float = 1e-4,
        verbose: bool = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: int = 10,
        dtype: DTypeLike | None = None,
        init: Literal["glorot", "notebook"] = "glorot",
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dtype = dtype
        self.init = init

    # ---- public API ------------------------------------------------------------
    def fit(
        self,
        X: ArrayLike | spmatrix | sparray,
        y: ArrayLike,
        sample_weight: ArrayLike | None = None,
    ) -> FastMLPClassifier:
        """Fit the network to ``X`` and labels ``y``; returns ``self``.

        ``sample_weight`` (one per sample) makes each batch's loss a weighted
        mean, as in scikit-learn; a weight of 2 counts a sample twice in its
        batch. With early stopping the validation score is weighted too.
        """
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(
        self,
        X: ArrayLike | spmatrix | sparray,
        y: ArrayLike,
        sample_weight: ArrayLike | None = None,
        classes: ArrayLike | None = None,
    ) -> FastMLPClassifier:
        """One epoch on ``X, y`` (weighted by ``sample_weight``, as in
        :meth:`fit`). The first call needs ``classes``, every label that will
        ever be seen (as in scikit-learn); returns ``self``."""
        first = not hasattr(self, "classes_")
        if first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        if classes is not None:
            classes = np.unique(classes)
            if not first and not np.array_equal(classes, self.classes_):
                raise ValueError(
                    f"classes={classes!r} is not the same as on the first call to "
                    f"partial_fit: {self.classes_!r}"
                )
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def predict_proba(self, X: ArrayLike | spmatrix | sparray) -> np.ndarray:
        """Probability of each class (columns follow ``classes_``)."""
        A2 = self._output(X)
        if A2.shape[1] == 1:
            return np.hstack([1 - A2, A2])
        return A2

    def predict_log_proba(self, X: ArrayLike | spmatrix | sparray) -> np.ndarray:
        """Logarithm of :meth:`predict_proba`."""
        proba = self.predict_proba(X)
        with np.errstate(divide="ignore"):
            return np.log(proba, out=proba)

    def predict(self, X: ArrayLike | spmatrix | sparray) -> np.ndarray:
        """The most probable class of each sample."""
        A2 = self._output(X)
        return self.classes_[class_indices(A2)]

    # ---- fitting ---------------------------------------------------------------
    def _check_params(self):
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, numbers.Integral) else list(sizes)
        if len(sizes) != 1:
            raise ValueError(
                f"FastMLPClassifier has exactly one hidden layer; got hidden_layer_sizes="
                f"{self.hidden_layer_sizes!r}. Pass one size, e.g. (64,)"
            )
        hidden = sizes[0]
        if isinstance(hidden, bool) or not isinstance(hidden, numbers.Integral) or hidden < 1:
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {sizes}")
        checks = {
            "activation": (self.activation, tuple(kernels.ACTIVATIONS)),
            "solver": (self.solver, SOLVERS),
            "learning_rate": (self.learning_rate, LEARNING_RATES),
            "init": (self.init, ("glorot", "notebook")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(
                    f"{name}={value!r} is not supported; use one of "
                    + ", ".join(repr(a) for a in allowed)
                )
        positive = {"learning_rate_init": self.learning_rate_init, "epsilon": self.epsilon}
        non_negative = {"alpha": self.alpha, "tol": self.tol, "power_t": self.power_t}
        for name, value in {**positive, **non_negative}.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not np.isfinite(value) or value < 0 or (name in positive and value == 0):
                raise ValueError(
                    f"{name} must be {'positive' if name in positive else '>= 0'}, got {value}"
                )
        for name in ("momentum", "beta_1", "beta_2", "validation_fraction"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        for name in ("max_iter", "n_iter_no_change"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_size != "auto" and (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, numbers.Integral)
            or self.batch_size < 1
        ):
            raise ValueError(
                f"batch_size must be 'auto' or a positive integer, got {self.batch_size!r}"
            )
        if self.dtype is not None:
            resolve_dtype(self.dtype)
        return int(hidden)

    def _fit(self, X, y, sample_weight, incremental, classes=None):
        hidden = self._check_params()
        first = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        dtype = [np.float64, np.float32] if self.dtype is None else resolve_dtype(self.dtype).type
        if not first:
            self._sync_network()
            dtype = self._network.dtype.type
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=dtype, reset=first, order="C")
        check_classification_targets(y)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
            if not sample_weight.any():  # scikit-learn checks this itself from 1.8 on
                raise ValueError("Sample weights must contain at least one non-zero number.")
        labels = self._encode_labels(y, first, classes)
        self._random_state = check_random_state(self.random_state)
        if first:
            self._initialize(X.shape[1], hidden, X.dtype)
        elif self._network.dims[1] != hidden:
            raise ValueError(
                f"hidden_layer_sizes changed from ({self._network.dims[1]},) to ({hidden},); "
                "warm_start and partial_fit continue the same network"
            )
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._make_optimizer()
        self._train(X, labels, sample_weight, incremental)
        return self

    def _encode_labels(self, y, first, classes):
        if classes is not None and first:
            self.classes_ = classes
        elif first or not hasattr(self, "classes_"):
            self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(
                f"y has 1 class ({self.classes_[0]!r}); a classifier needs at least two"
            )
        index = np.searchsorted(self.classes_, y)
        index = np.clip(index, 0, len(self.classes_) - 1)
        unknown = self.classes_[index] != y
        if unknown.any():
            raise ValueError(
                f"y has labels not in classes_ {self.classes_!r}: "
                f"{np.unique(np.asarray(y)[unknown])!r}"
            )
        return index.astype(np.int64)

    def _initialize(self, n_features, hidden, dtype):
        n_classes = len(self.classes_)
        n_out = 1 if n_classes == 2 else n_classes
        self.n_outputs_ = n_out
        self.n_layers_ = 3
        self.out_activation_ = "logistic" if n_out == 1 else "softmax"
        rng = self._random_state
        coefs, intercepts = [], []
        for fan_in, fan_out in ((n_features, hidden), (hidden, n_out)):
            if self.init == "notebook":
                coefs.append(rng.randn(fan_out, fan_in).T * 0.1)
                intercepts.append(np.zeros(fan_out))
            else:
                # scikit-learn's Glorot-uniform draws, in its order.
                bound = np.sqrt(
                    (2.0 if self.activation == "logistic" else 6.0) / (fan_in + fan_out)
                )
                coefs.append(rng.uniform(-bound, bound, (fan_in, fan_out)))
                intercepts.append(rng.uniform(-bound, bound, fan_out))
        self._network = self._network_from(coefs, intercepts, dtype)
        self._point_attributes_at_network()
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = np.inf

    def _point_attributes_at_network(self):
        """``coefs_`` and ``intercepts_`` are views of the network's parameters."""
        W1, b1, W2, b2 = self._network.params
        self.coefs_ = [W1, W2.T]
        self.intercepts_ = [b1, b2]

    def _sync_network(self):
        """Rebuild the network if ``coefs_``/``intercepts_`` were replaced or unpickled."""
        network = getattr(self, "_network", None)
        if network is not None and all(
            np.shares_memory(a, network.theta) for a in (*self.coefs_, *self.intercepts_)
        ):
            return
        coefs = [np.asarray(c) for c in self.coefs_]
        dtype = coefs[0].dtype if coefs[0].dtype in (np.float32, np.float64) else np.float64
        self._network = self._network_from(coefs, self.intercepts_, dtype)
        self._point_attributes_at_network()

    def _network_from(self, coefs, intercepts, dtype) -> FastNetwork:
        """A network from scikit-learn's layout (``coefs_[i]`` is fan-in x fan-out)."""
        (n_x, n_h), n_y = coefs[0].shape, coefs[1].shape[1]
        # flatten_params takes the notebook's layout, the transpose of coefs_.
        theta = flatten_params(
            coefs[0].T, np.asarray(intercepts[0]), coefs[1].T, np.asarray(intercepts[1]), dtype
        )
        return FastNetwork(theta, n_x, n_h, n_y, self.activation)

    def _make_optimizer(self):
        theta = self._network.theta
        solver = "adam" if self.solver == "adam" else "sgd"
        momentum = self.momentum if self.solver == "sgd" else 0.0
        return Optimizer(
            solver,
            theta.size,
            theta.dtype,
            learning_rate=self.learning_rate_init,
            momentum=momentum,
            nesterov=self.nesterovs_momentum,
            beta1=self.beta_1,
            beta2=self.beta_2,
            epsilon=self.epsilon,
            l2=self.alpha,
        )

    def _train(self, X, labels, weights, incremental):
        X_val = labels_val = weights_val = None
        if self.early_stopping:
            # Split as scikit-learn does (stratified only with one output), so
            # that the same random_state holds out the same samples.
            stratify = labels.reshape(-1, 1).astype(bool) if self.n_outputs_ == 1 else None
            arrays = (X, labels) if weights is None else (X, labels, weights)
            parts = train_test_split(
                *arrays,
                random_state=self._random_state,
                test_size=self.validation_fraction,
                stratify=stratify,
            )
            X, X_val, labels, labels_val = parts[:4]
            if weights is not None:
                weights, weights_val = parts[4:]
            if len(labels_val) < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' "
                    "or the size of your dataset."
                )
            self._best_theta = self._network.theta.copy()
        n = len(labels)
        network, optimizer = self._network, self._optimizer
        epochs = 1 if incremental else self.max_iter
        if self.solver == "gd":
            batch_size, full_batch = n, network.full_batch(X, labels, weights=weights)
        else:
            full_batch = None
            batch_size = min(200, n) if self.batch_size == "auto" else self.batch_size
            if batch_size > n:
                warnings.warn(
                    "Got `batch_size` less than 1 or larger than sample size. "
                    "It is going to be clipped",
                    stacklevel=3,
                )
            batch_size = min(batch_size, n)
            batches = network.mini_batches(X, labels, batch_size, weights=weights, epochs=epochs)
        order = np.arange(n)
        # The weights an epoch starts from, to go back to if it diverges: one
        # buffer, refilled, so that two copies never coexist.
        before = np.empty_like(network.theta)
        for _ in range(epochs):
            before[:] = network.theta
            if full_batch is not None:
                loss, finite = full_batch.step(optimizer)
            else:
                if self.shuffle:
                    self._random_state.shuffle(order)
                total, failed = batches.epoch(order, optimizer)
                finite, loss = failed < 0, total / n
            if not finite:
                network.theta[:] = before
                raise DivergenceError(
                    f"training diverged in epoch {self.n_iter_ + 1}: the loss or a gradient "
                    "became NaN or infinite; the weights are those before that epoch. "
                    f"Lower learning_rate_init (now {self.learning_rate_init}) or scale X.",
                    iteration=self.n_iter_ + 1,
                )
            self.n_iter_ += 1
            self.loss_ = loss
            self.t_ += n
            self.loss_curve_.append(loss)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")
            self._update_no_improvement_count(X_val, labels_val, weights_val)
            if self.solver != "adam" and self.learning_rate == "invscaling":
                optimizer.learning_rate = self.learning_rate_init / (self.t_ + 1) ** self.power_t
            if self._no_improvement_count > self.n_iter_no_change:
                what = "Validation score" if self.early_stopping else "Training loss"
                msg = (
                    f"{what} did not improve more than tol={self.tol:f} for "
                    f"{self.n_iter_no_change} consecutive epochs."
                )
                if self._stop(msg, optimizer):
                    break
                self._no_improvement_count = 0
            if incremental:
                break
            if self.n_iter_ == self.max_iter:
                warnings.warn(
                    f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                    "the optimization hasn't converged yet.",
                    ConvergenceWarning,
                    stacklevel=3,
                )
        if self.early_stopping:
            network.theta[:] = self._best_theta
            del self._best_theta

    def _stop(self, msg, optimizer) -> bool:
        if self.solver == "adam" or self.learning_rate != "adaptive":
            if self.verbose:
                print(msg + " Stopping.")
            return True
        if optimizer.learning_rate <= 1e-6:
            if self.verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        optimizer.learning_rate /= 5.0
        if self.verbose:
            print(msg + f" Setting learning rate to {optimizer.learning_rate:f}")
        return False

    def _update_no_improvement_count(self, X_val, labels_val, weights_val):
        if self.early_stopping:
            correct = class_indices(self._network.output(X_val)) == labels_val
            score = float(np.average(correct, weights=weights_val))
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_theta = self._network.theta.copy()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            self.best_loss_ = min(self.best_loss_, self.loss_curve_[-1])

    # ---- prediction --------------------------------------------------------------
    def _output(self, X):
        check_is_fitted(self)
        self._sync_network()
        X = validate_data(
            self, X, accept_sparse="csr", reset=False, dtype=self._network.dtype.type, order="C"
        )
        return self._network.output(X)

    # ---- pickling: the network holds buffers; rebuild it from coefs_ on load ----------
    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_network", None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.classifier_tags.multi_label = False
        return tags
