"""A workload phase by phase: where the time goes, on one thread and on all.

    python benchmarks/phases.py [--workload W2] [--dtype float32] [--rounds 30]

Runs the workload's loop over batches (W2 by default: 10,000 MNIST images,
batches of 64, hidden 64, SGD; W1 is timed over ``FULL_BATCH_STEPS`` steps
of its full batch) with the fast path's own kernels three times over: the
forward passes alone, then with the backward passes, then with the updates,
and prints the median time of each and the differences, which are each
phase's cost, for one thread and for Numba's default count. The parameters
are updated only in the last of the three, so the first two repeat the same
batches on the same weights; the cost of an update includes what it costs
the next forward pass to read the rows of ``W1`` it changed. The latency
between two CPUs (see report.py) is printed beside, since two threads
exchange data at every batch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np
from report import core_to_core_ns
from workloads import WORKLOADS, load_data

from fastmlp import engine, kernels, reference

PHASES = ("forward", "backward", "update")
FULL_BATCH_STEPS = 10


@numba.njit
def _epoch(X, y, weights, order, batch_size, theta, grads, work, nonzeros, optimizer, phases):
    """train_epoch's loop, stopped after the first ``phases`` of PHASES."""
    A1, A2, part_sums, partial, partial_loss, finite = work
    n_h, n_y = A1.shape[1], A2.shape[1]
    n_x = (theta.size - n_h - n_y * n_h - n_y) // n_h
    W1, b1, W2, b2 = kernels.unpack(theta, n_x, n_h, n_y)
    dW1, db1, dW2, db2 = kernels.unpack(grads, n_x, n_h, n_y)
    for start in range(0, order.size, batch_size):
        rows = order[start : start + batch_size]
        a1, a2 = A1[: rows.size], A2[: rows.size]
        kernels.forward(X, rows, nonzeros, W1, b1, W2, b2, kernels.LOGISTIC, a1, a2, part_sums)
        if phases >= 2:
            loss = kernels.backward(
                X, rows, nonzeros, y, weights, W1, W2, kernels.LOGISTIC, 0.0, a1, a2,
                dW1, db1, dW2, db2, partial, partial_loss, finite,
            )  # fmt: skip
            if phases >= 3:
                kernels._update_if_finite(loss, theta, grads, optimizer, n_x, n_h, nonzeros, finite)


def measure(dtype, rounds: int, threads: int, workload: str = "W2") -> dict[str, float]:
    """Median milliseconds of the workload's epoch (W1: ``FULL_BATCH_STEPS``
    steps) up to each phase, on ``threads`` threads."""
    workload = WORKLOADS[workload]
    X, y, _ = load_data(workload.n_examples, dtype)
    n_x, n_h, n_y = X.shape[1], workload.hidden, 10
    theta = engine.flatten_params(*reference.init_params(n_x, n_h, n_y, 1, dtype))
    network = engine.FastNetwork(theta, n_x, n_h, n_y, "logistic")
    if workload.batch_size is None:
        batches, batch_size, repeats = network.full_batch(X, y), len(y), FULL_BATCH_STEPS
        order = batches.rows
    else:
        batches = network.mini_batches(X, y, workload.batch_size)
        batch_size, repeats = workload.batch_size, 1
        order = np.random.default_rng(1).permutation(workload.n_examples)
    optimizer = engine.Optimizer("sgd", theta.size, dtype, learning_rate=workload.alpha)
    default = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        medians = {}
        for phases, name in enumerate(PHASES, start=1):
            args = (batches.X, batches.labels, batches.weights, order, batch_size)
            rest = (network.theta, network.grads, batches.work, batches.nonzeros)
            _epoch(*args, *rest, optimizer.as_kernel_args(), phases)  # compile, warm up
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                for _ in range(repeats):
                    _epoch(*args, *rest, optimizer.as_kernel_args(), phases)
                times.append(time.perf_counter() - start)
            medians[name] = statistics.median(times) * 1e3
    finally:
        numba.set_num_threads(default)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="W2", choices=list(WORKLOADS))
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    dtype = np.dtype(args.dtype)
    full_batch = WORKLOADS[args.workload].batch_size is None
    unit = f"{FULL_BATCH_STEPS} steps" if full_batch else "epoch"
    for threads in sorted({1, numba.get_num_threads()}):
        latency = core_to_core_ns()
        cumulative = measure(dtype, args.rounds, threads, args.workload)
        costs, before = [], 0.0
        for name in PHASES:
            costs.append(f"{name} {cumulative[name] - before:.2f}")
            before = cumulative[name]
        near = f"{latency:.0f} ns between two CPUs" if latency else "one CPU"
        print(
            f"{threads} thread(s), {args.workload} {dtype.name}: {unit} {before:.2f} ms = "
            + ", ".join(costs)
            + f" ms (medians of {args.rounds}; {near})"
        )


if __name__ == "__main__":
    main()
