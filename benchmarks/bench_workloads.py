"""W1 to W3, every implementation side by side in one group per workload.

    pytest benchmarks/bench_workloads.py --benchmark-only

Each implementation trains from the same initial weights on the same data;
the first round is a warm-up (it compiles, or loads, the fast path's
kernels) and is not timed, and every round starts after a rest
(``workloads.IDLE``), as in the report. PyTorch joins where it is installed.
"""

import numba
import pytest
from workloads import IMPLEMENTATIONS, WORKLOADS, available, load_data, rest, run, warm_up


@pytest.mark.parametrize("name", ["W1", "W2", pytest.param("W3", marks=pytest.mark.slow)])
@pytest.mark.parametrize(
    "implementation, dtype", IMPLEMENTATIONS, ids=[f"{i}-{d.__name__}" for i, d in IMPLEMENTATIONS]
)
def bench_workload(benchmark, smoke, name, implementation, dtype):
    if not available(implementation):
        pytest.skip(f"{implementation} is not installed")
    workload = WORKLOADS[name].scaled(0.05) if smoke else WORKLOADS[name]
    if implementation == "sklearn" and name == "W1" and not smoke:
        workload = workload.scaled(0.1)  # 1,001 full-batch epochs take minutes there
    X, y, _ = load_data(workload.n_examples, dtype)
    warm_up(dtype)
    if implementation == "torch":
        import torch

        torch.set_num_threads(numba.get_num_threads())  # the same threads as fastmlp
    benchmark.group = workload.describe()
    benchmark.extra_info["threads"] = numba.get_num_threads()
    result = benchmark.pedantic(
        run,
        args=(implementation, workload, X, y),
        setup=None if smoke else rest,
        rounds=3,
        warmup_rounds=1,
    )
    benchmark.extra_info["accuracy"] = result.accuracy
    assert 0 <= result.accuracy <= 1
