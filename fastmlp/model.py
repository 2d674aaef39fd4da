"""A trained network: its parameters, its classes, and how to use it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from . import reference
from ._validation import as_matrix, check_choice
from .engine import FastNetwork, class_indices, flatten_params

BACKENDS = ("numba", "numpy")


@dataclass(frozen=True)
class Progress:
    """What training reports after each iteration (see ``train``'s ``callback``).

    Attributes
    ----------
    iteration : int
        Full-batch step (from 0, as in the notebook) or epoch (from 1).
    loss : float
        Mean cross-entropy on the training data before this iteration's update
        (for an epoch: the mean over its batches).
    accuracy : float or None
        Training accuracy after the update, on logged iterations only.
    """

    iteration: int
    loss: float
    accuracy: float | None = None


@dataclass(frozen=True, eq=False, repr=False)
class Model:
    """A network with one hidden layer, as returned by :func:`fastmlp.train`.

    The parameters keep the notebook's layout: ``W1`` is ``n_hidden`` x
    ``n_features``, ``b1`` is ``n_hidden`` x 1, ``W2`` is ``n_outputs`` x
    ``n_hidden``, ``b2`` is ``n_outputs`` x 1. They are read-only; copy them
    to change them. Two classes given as labels use one logistic output
    unit (as scikit-learn does), otherwise there is one softmax unit per class.

    Methods take examples as rows (``n_examples`` x ``n_features``); for data
    in the notebook's layout pass ``X.T``.

    Attributes
    ----------
    W1, b1, W2, b2 : ndarray
    classes : ndarray
        The label of each output class, in order.
    activation : {"logistic", "tanh", "relu"}
    backend : {"numba", "numpy"}
        The path used to train, and used to predict.
    loss_curve : ndarray
        Training loss at each iteration.
    history : tuple of Progress
        The logged iterations, with their training accuracy.
    """

    W1: np.ndarray
    b1: np.ndarray
    W2: np.ndarray
    b2: np.ndarray
    classes: np.ndarray
    activation: str = "logistic"
    backend: str = "numba"
    loss_curve: np.ndarray = field(default_factory=lambda: np.empty(0))
    history: tuple[Progress, ...] = ()
    _fast: FastNetwork | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        check_choice(self.backend, "backend", BACKENDS)
        check_choice(self.activation, "activation", tuple(reference.ACTIVATIONS))
        n_h, n_x = self.W1.shape
        n_y = self.W2.shape[0]
        expected = {"b1": (n_h, 1), "W2": (n_y, n_h), "b2": (n_y, 1)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"{name} has shape {getattr(self, name).shape}, expected {shape} "
                    f"for W1 of shape {self.W1.shape}"
                )
        if len(self.classes) != (2 if n_y == 1 else n_y):
            raise ValueError(
                f"{len(self.classes)} classes do not fit {n_y} output units "
                "(one logistic unit for two classes, else one unit per class)"
            )
        for name in ("W1", "b1", "W2", "b2", "classes", "loss_curve"):
            array = np.array(getattr(self, name))  # a private, read-only copy
            array.setflags(write=False)
            object.__setattr__(self, name, array)

    def __repr__(self) -> str:
        # The shape of the network, not its 50,000 weights.
        classes = np.array2string(self.classes, threshold=10, edgeitems=3, separator=", ")
        return (
            f"Model(n_features={self.n_features}, n_hidden={self.n_hidden}, "
            f"classes={classes}, activation={self.activation!r}, "
            f"backend={self.backend!r}, dtype={self.dtype.name!r})"
        )

    @property
    def _network(self) -> FastNetwork:
        """The parameters in the kernels' layout, made when first predicting."""
        network = self._fast
        if network is None:
            n_h, n_x = self.W1.shape
            theta = flatten_params(self.W1, self.b1, self.W2, self.b2)
            network = FastNetwork(theta, n_x, n_h, self.W2.shape[0], self.activation)
            object.__setattr__(self, "_fast", network)
        return network

    @property
    def n_features(self) -> int:
        return self.W1.shape[1]

    @property
    def n_hidden(self) -> int:
        return self.W1.shape[0]

    @property
    def dtype(self) -> np.dtype:
        return self.W1.dtype

    def _output(self, X) -> np.ndarray:
        X = as_matrix(X, dtype=self.dtype, n_features=self.n_features)
        if self.backend == "numpy":
            params = (self.W1, self.b1, self.W2, self.b2)
            return reference.forward(*params, X.T, self.activation)[3].T
        return self._network.output(X)

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities, one row per example and one column per class.

        Parameters
        ----------
        X : array-like of shape (n_examples, n_features)

        Returns
        -------
        ndarray of shape (n_examples, n_classes)
        """
        A2 = self._output(X)
        if A2.shape[1] == 1:
            return np.hstack([1 - A2, A2])
        return A2

    def predict(self, X: ArrayLike) -> np.ndarray:
        """The most probable class of each example (labels from ``classes``)."""
        return self.classes[class_indices(self._output(X))]

    def score(self, X: ArrayLike, y: ArrayLike) -> float:
        """Accuracy: the fraction of examples whose predicted class is ``y``."""
        predicted = self.predict(X)
        y = np.asarray(y)
        if y.shape != predicted.shape:
            raise ValueError(
                f"y has shape {y.shape}, expected one label per example: {predicted.shape}"
            )
        return float(np.mean(predicted == y))
