"""phases.py, which times a workload phase by phase, cannot rot.

Its timings are not checked (no test asserts a timing); what it measures is.
"""

import numpy as np
import phases
import pytest


@pytest.mark.parametrize("workload", ["W1", "W2"])
def test_each_phase_is_timed_with_the_fast_paths_own_kernels(workload):
    cumulative = phases.measure(np.dtype(np.float32), rounds=1, threads=1, workload=workload)
    assert list(cumulative) == list(phases.PHASES)
    assert all(ms > 0 for ms in cumulative.values())
