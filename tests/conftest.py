import numpy as np
import pytest
from _support import require_mnist

from fastmlp import datasets


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST test set: 10,000 images scaled to [0, 1], and labels."""
    return datasets.load(f"idx:{require_mnist()}")


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)
