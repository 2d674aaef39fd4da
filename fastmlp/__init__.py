"""fastmlp: train a one-hidden-layer network on the CPU, fast.

The public API:

* :func:`gradient_descent` - the notebook's trainer, as a drop-in.
* :func:`train` - the same network with options, returning a :class:`Model`.
* :class:`FastMLPClassifier` - a scikit-learn estimator, a drop-in for
  ``MLPClassifier`` with one hidden layer.
* :func:`save_model`, :func:`load_model` - model files.
"""

from typing import TYPE_CHECKING

from .errors import DivergenceError, ModelFileError
from .model import Model, Progress
from .modelfile import load_model, save_model
from .training import gradient_descent, train

__version__ = "0.1.0"

if TYPE_CHECKING:  # type checkers see the estimator; an import only loads it when used
    from .estimator import FastMLPClassifier


def __getattr__(name):
    # The estimator imports scikit-learn: only pay for it when it is used.
    if name == "FastMLPClassifier":
        from .estimator import FastMLPClassifier

        return FastMLPClassifier
    raise AttributeError(f"module 'fastmlp' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "DivergenceError",
    "FastMLPClassifier",
    "Model",
    "ModelFileError",
    "Progress",
    "__version__",
    "gradient_descent",
    "load_model",
    "save_model",
    "train",
]
