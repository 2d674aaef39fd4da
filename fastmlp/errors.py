"""Exceptions fastmlp raises besides ValueError and TypeError."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Model


class DivergenceError(ValueError):
    """Training produced a non-finite loss or gradient and was stopped.

    The parameters were not updated with the non-finite gradient: training
    stopped before that update, so ``model`` (when the caller can use one)
    holds the last finite parameters.

    Attributes
    ----------
    iteration : int
        The iteration (full-batch step, or epoch) at which it happened.
    model : Model or None
        The last finite model from ``fastmlp.train``; None from
        ``FastMLPClassifier``, which keeps its weights from before the epoch.
    """

    def __init__(self, message: str, iteration: int, model: Model | None = None) -> None:
        super().__init__(message)
        self.iteration = iteration
        self.model = model


class ModelFileError(ValueError):
    """A model file is missing, truncated, altered, or not a fastmlp model."""
