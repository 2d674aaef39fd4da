import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def smoke(benchmark) -> bool:
    """True under ``--benchmark-disable`` (CI's smoke run): use small sizes."""
    return benchmark.disabled
