"""Each kernel beside its NumPy twin, in float64 and float32, at W1's size.

    pytest benchmarks/bench_kernels.py --benchmark-only

A group per kernel holds both implementations, so the ratio reads off one
table. The forward and backward passes run on MNIST's digits as they are
(19% nonzeros: the sparse first layer) and standardised (91% nonzeros: the
dense one). The forward pass also appears at several input densities
("first-layer density"), which is where fastmlp's dense/sparse threshold
comes from.
"""

import numpy as np
import pytest
from workloads import load_data

from fastmlp import engine, kernels, reference

DTYPES = [np.float64, np.float32]
M, N_X, N_H, N_Y = 2000, 784, 64, 10


def fast_network(dtype):
    """The notebook's initial parameters, and a network that starts from them."""
    params = reference.init_params(N_X, N_H, N_Y, dtype=dtype)
    return params, engine.FastNetwork(engine.flatten_params(*params), N_X, N_H, N_Y, "logistic")


def network(dtype, X, y, sparse):
    params, net = fast_network(dtype)
    return params, net, net.full_batch(X, y, sparse)


@pytest.fixture(params=DTYPES, ids=lambda d: d.__name__)
def setup(request):
    dtype = request.param
    X, y, _ = load_data(M, dtype)
    return (dtype, X, y, *network(dtype, X, y, None))  # the density decides


def on_data(setup, data: str):
    """``setup``'s network and full batch on MNIST as it is, or standardised
    (each pixel less its mean, over its standard deviation plus one), which
    leaves no zeros but in the pixels that are always zero."""
    if data == "MNIST":
        return setup
    dtype, X, y = setup[:3]
    X = ((X - X.mean(axis=0)) / (X.std(axis=0) + 1)).astype(dtype)
    return (dtype, X, y, *network(dtype, X, y, None))


DATA = ["MNIST", "MNIST standardised"]


def timed(benchmark, group, function, *args):
    benchmark.group = group
    benchmark.pedantic(function, args=args, rounds=20, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("implementation", ["numpy", "numba"])
@pytest.mark.parametrize("name", ["sigmoid", "sigmoid_deriv", "softmax"])
def bench_elementwise(benchmark, setup, implementation, name):
    dtype = setup[0]
    n = N_Y if name == "softmax" else N_H
    Z = np.random.default_rng(0).normal(size=(M, n)).astype(dtype)
    group = f"{name} {dtype.__name__}"
    if implementation == "numpy":
        timed(benchmark, group, getattr(reference, name), Z.T)
    else:
        timed(benchmark, group, getattr(kernels, name), Z, np.empty_like(Z))


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("implementation", ["numpy", "numba"])
def bench_forward(benchmark, setup, implementation, data):
    dtype, X, y, params, net, batch = on_data(setup, data)
    group = f"forward {dtype.__name__}, {data}"
    if implementation == "numpy":
        timed(benchmark, group, reference.forward, *params, X.T)
    else:
        A1, A2, part_sums = batch.work[:3]
        args = (X, batch.rows, batch.nonzeros, *net.params, 0, A1, A2, part_sums)
        timed(benchmark, group, kernels.forward, *args)


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("implementation", ["numpy", "numba"])
def bench_backward(benchmark, setup, implementation, data):
    dtype, X, y, params, net, batch = on_data(setup, data)
    group = f"backward {dtype.__name__}, {data}"
    if implementation == "numpy":
        cache = reference.forward(*params, X.T)
        Y = reference.one_hot(y, N_Y).astype(dtype)
        timed(benchmark, group, reference.backward, *cache, params[0], params[2], X.T, Y)
    else:
        A1, A2, part_sums, *scratch = batch.work
        W1, b1, W2, b2 = net.params
        kernels.forward(X, batch.rows, batch.nonzeros, W1, b1, W2, b2, 0, A1, A2, part_sums)
        saved = A1.copy(), A2.copy()

        def backward():  # on fresh activations each round: backward overwrites them
            A1[:], A2[:] = saved
            return kernels.backward(
                X,
                batch.rows,
                batch.nonzeros,
                y,
                batch.weights,
                W1,
                W2,
                0,
                0.0,
                A1,
                A2,
                *kernels.unpack(net.grads, N_X, N_H, N_Y),
                *scratch,
            )

        timed(benchmark, group, backward)


@pytest.mark.parametrize("implementation", ["numpy", "numba"])
def bench_update(benchmark, setup, implementation):
    dtype, X, y, params, net, batch = setup
    group = f"update {dtype.__name__}"
    grads = np.random.default_rng(0).normal(size=net.theta.size).astype(dtype) * 1e-9
    if implementation == "numpy":
        timed(benchmark, group, reference.sgd_update, net.theta.copy(), grads, 0.5)
    else:
        timed(benchmark, group, kernels.sgd_update, net.theta.copy(), grads, 0.5)


@pytest.mark.parametrize("density", [0.05, 0.2, 0.4, 0.6, 0.75, 1.0])
@pytest.mark.parametrize("first_layer", ["dense", "sparse"])
@pytest.mark.parametrize("batching", ["full batch", "mini-batch"])
def bench_first_layer_density(benchmark, smoke, first_layer, density, batching):
    rng = np.random.default_rng(0)
    m = M if batching == "full batch" or smoke else 10_000
    X = rng.random((m, N_X))
    X[rng.random(X.shape) >= density] = 0
    y = rng.integers(0, N_Y, m)
    sparse = first_layer == "sparse"
    _, net, batch = network(np.float64, X, y, sparse)
    optimizer = engine.Optimizer("sgd", net.theta.size, np.float64, learning_rate=1e-3)
    if batching == "full batch":
        benchmark.group = f"first-layer density {density:.2f}: one full-batch step"
        benchmark.pedantic(batch.step, args=(optimizer,), rounds=10, warmup_rounds=1)
    else:
        benchmark.group = f"first-layer density {density:.2f}: one epoch, batches of 64"
        batches = net.mini_batches(X, y, 64, sparse)
        benchmark.pedantic(
            batches.epoch, args=(np.arange(m), optimizer), rounds=10, warmup_rounds=1
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("epochs", [1, 20], ids=["marked per batch", "listed once"])
def bench_mini_batch_nonzeros(benchmark, smoke, dtype, epochs):
    """An epoch of the estimator's benchmark (8,000 MNIST digits, batches of
    200, Adam) with the nonzeros marked in each batch, as for a single epoch,
    or listed once, as for many."""
    X, y, _ = load_data(1000 if smoke else 8000, dtype)
    _, net = fast_network(dtype)
    optimizer = engine.Optimizer("adam", net.theta.size, dtype, learning_rate=1e-3, l2=1e-4)
    batches = net.mini_batches(X, y, 200, sparse=True, epochs=epochs)
    orders = np.random.default_rng(0)
    benchmark.group = f"mini-batch epoch {dtype.__name__}: nonzeros marked or listed"
    benchmark.pedantic(
        batches.epoch,
        setup=lambda: ((orders.permutation(len(y)), optimizer), {}),
        rounds=20,
        warmup_rounds=1,
    )


@pytest.mark.parametrize("implementation", ["numpy", "numba"])
@pytest.mark.parametrize("when", ["early", "late"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def bench_adam_epoch_late_in_a_long_run(benchmark, smoke, dtype, when, implementation):
    """An epoch of Adam with an L2 penalty (the estimator's benchmark: 8,000
    MNIST digits, batches of 200) from the notebook's weights ("early") or
    after 50 epochs of the fast path ("late"). By then the weights of the
    inputs that are zero in every example have shrunk so far that their
    gradients and moments underflow: the NumPy reference pays for the slow
    arithmetic on subnormal numbers, the fast path flushes them to zero."""
    X, y, _ = load_data(1000 if smoke else 8000, dtype)
    _, net = fast_network(dtype)
    settings = dict(learning_rate=1e-3, l2=1e-4)
    optimizer = engine.Optimizer("adam", net.theta.size, dtype, **settings)
    batches = net.mini_batches(X, y, 200, sparse=True)
    orders = np.random.default_rng(0)
    for _ in range(50 if when == "late" and not smoke else 0):
        batches.epoch(orders.permutation(len(y)), optimizer)
    benchmark.group = f"Adam epoch {dtype.__name__}: early or late in a long run"
    if implementation == "numpy":
        params = list(engine.notebook_params(net.theta, N_X, N_H, N_Y))
        state = [engine.notebook_params(s, N_X, N_H, N_Y) for s in optimizer.state]
        step = int(optimizer.step[0])

        def epoch(order):
            nonlocal step
            with np.errstate(under="ignore"):
                _, step, _ = reference.train_epoch(
                    params, X.T, y, order, 200, "adam", state, step=step, **settings
                )

    else:

        def epoch(order):
            batches.epoch(order, optimizer)

    benchmark.pedantic(
        epoch, setup=lambda: ((orders.permutation(len(y)),), {}), rounds=5, warmup_rounds=1
    )
