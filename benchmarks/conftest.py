import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# The tests' helpers: the estimator's benchmark times the settings its tests check.
sys.path.insert(1, str(Path(__file__).parents[1] / "tests"))


@pytest.fixture
def smoke(benchmark) -> bool:
    """True under ``--benchmark-disable`` (CI's smoke run): use small sizes."""
    return benchmark.disabled
