"""phases.py, which times W2's epoch phase by phase, cannot rot.

Its timings are not checked (no test asserts a timing); what it measures is.
"""

import numpy as np
import phases


def test_each_phase_is_timed_with_the_fast_paths_own_kernels():
    cumulative = phases.measure(np.dtype(np.float32), rounds=1, threads=1)
    assert list(cumulative) == list(phases.PHASES)
    assert all(ms > 0 for ms in cumulative.values())
