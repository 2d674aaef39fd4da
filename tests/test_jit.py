"""How kernels compile: the on-disk cache, and the environment switches."""

import json
import os
import re
import subprocess
import sys
import textwrap

import llvmlite.binding
import numba
import numpy as np
import pytest

# Trains a small model and reports which kernels came from the cache.
SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import fastmlp
    from fastmlp import kernels
    rng = np.random.default_rng(0)
    X = rng.random((60, 12)); X[X < 0.7] = 0
    y = rng.integers(0, 3, 60)
    model = fastmlp.train(X, y, hidden=8, iterations=3)
    stats = {name: [len(getattr(kernels, name).stats.cache_hits),
                    len(getattr(kernels, name).stats.cache_misses)]
             for name in ("train_epoch", "forward")}
    json.dump({"stats": stats, "W1": model.W1.tolist()}, sys.stdout)
    """
)


def start(env_overrides):
    """Start :data:`SCRIPT` in a process with these environment variables."""
    env = dict(os.environ, **env_overrides)
    command = [sys.executable, "-c", SCRIPT]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process):
    """What a process from :func:`start` reported."""
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-2000:]
    return json.loads(out)


def run(env_overrides):
    return finish(start(env_overrides))


SWITCHED_OFF = {
    "default": {},
    "uncached": {"FASTMLP_CACHE": "0"},
    "serial": {"FASTMLP_PARALLEL": "0"},
    "checked": {"FASTMLP_NOALIAS": "0"},
    "narrow": {"FASTMLP_WIDE_VECTORS": "0"},
}
"""The cold runs: the default switches, and each switch turned off."""


@pytest.fixture(scope="module")
def cold_runs(tmp_path_factory):
    """Processes with empty caches, one with the default switches and one
    with each switch off: each one's cache directory and what it reported.
    They run at once, since each is mostly a cold compile on one core."""
    caches = {name: tmp_path_factory.mktemp(name) for name in SWITCHED_OFF}
    processes = {
        name: start({"NUMBA_CACHE_DIR": str(caches[name]), **switches})
        for name, switches in SWITCHED_OFF.items()
    }
    try:
        return {name: (caches[name], finish(process)) for name, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:  # one failed: stop the others
                process.kill()
                process.communicate()


def test_a_second_process_loads_the_kernels_from_the_cache(cold_runs):
    cache, first = cold_runs["default"]
    assert all(hits == 0 and misses >= 1 for hits, misses in first["stats"].values())
    assert any(cache.rglob("*.nbi"))
    second = run({"NUMBA_CACHE_DIR": str(cache)})
    assert all(hits >= 1 and misses == 0 for hits, misses in second["stats"].values())
    assert second["W1"] == first["W1"]


# Compiles (and caches) the parallel kernels that train_epoch calls, each on
# its own, before any training: the order in which numba#8578 struck.
CALLEES_FIRST = textwrap.dedent(
    """
    import numpy as np
    from fastmlp import engine, kernels
    rng = np.random.default_rng(0)
    X = rng.random((60, 12)); X[X < 0.7] = 0
    y = rng.integers(0, 3, 60)
    theta = engine.flatten_params(
        rng.normal(size=(12, 8)), np.zeros(8), rng.normal(size=(3, 8)), np.zeros(3)
    )
    network = engine.FastNetwork(theta, 12, 8, 3, "logistic")
    batches = network.mini_batches(X, y, 16)
    optimizer = engine.Optimizer("sgd", theta.size, theta.dtype, learning_rate=0.1)
    A1, A2, part_sums, partial, partial_loss, finite = batches.work
    (W1, b1, W2, b2), (dW1, db1, dW2, db2) = network.params, kernels.unpack(network.grads, 12, 8, 3)
    rows = np.arange(16)
    kernels.forward(
        batches.X, rows, batches.nonzeros, W1, b1, W2, b2, network._code, A1[:16], A2[:16],
        part_sums,
    )
    loss = kernels.backward(
        batches.X, rows, batches.nonzeros, batches.labels, batches.weights, W1, W2,
        network._code, 0.0, A1[:16], A2[:16], dW1, db1, dW2, db2, partial, partial_loss, finite,
    )
    kernels._update_if_finite(
        loss, theta, network.grads, optimizer.as_kernel_args(), 12, 8, batches.nonzeros, finite
    )
    """
)


def test_training_loads_kernels_cached_after_their_callees(tmp_path):
    """A process that compiled the parallel kernels on their own, then one
    that compiled the training loop around them from the cache, then one
    that loads the loop: Numba saves that loop without what starts its
    threads (numba#8578), and the third process crashed until the engine
    started them itself."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    subprocess.run([sys.executable, "-c", CALLEES_FIRST], env=env, check=True, timeout=600)
    first = run({"NUMBA_CACHE_DIR": str(tmp_path)})
    second = run({"NUMBA_CACHE_DIR": str(tmp_path)})
    assert second["stats"]["train_epoch"] == [1, 0]  # loaded, not compiled
    assert second["W1"] == first["W1"]


def test_cache_can_be_switched_off(cold_runs):
    cache, result = cold_runs["uncached"]
    assert not any(cache.rglob("*.nbi"))
    assert all(hits == 0 for hits, _ in result["stats"].values())


@pytest.mark.parametrize("switched_off", ["serial", "checked", "narrow"])
def test_switched_off_kernels_give_the_same_model(cold_runs, switched_off):
    """Kernels on one thread (FASTMLP_PARALLEL=0), without the no-overlap
    promise (FASTMLP_NOALIAS=0) or without wide vectors
    (FASTMLP_WIDE_VECTORS=0) train the same model."""
    default, other = cold_runs["default"][1], cold_runs[switched_off][1]
    np.testing.assert_allclose(other["W1"], default["W1"], rtol=1e-12, atol=1e-15)


def test_noalias_reaches_numba():
    from fastmlp import _jit, kernels

    assert _jit.NOALIAS  # this Numba has the flag, so the kernels use it
    assert kernels._add_rows.targetoptions.get("noalias") is True


def _axpy(out, x, a):
    for i in range(out.size):
        out[i] += a * x[i]


def test_kernels_prefer_the_widest_vectors(monkeypatch):
    """Every kernel carries the attribute that lets LLVM use 512-bit
    vectors, and on a CPU with AVX-512 its loops do, also where a parallel
    loop calls it."""
    from fastmlp import _jit

    assert _jit.WIDE_VECTORS  # this Numba takes the compiler, so the kernels use it
    monkeypatch.setattr(_jit, "CACHE", False)  # a kernel from the cache has no code to read
    axpy = _jit.kernel(_axpy)

    def rows_axpy(out, x, a):
        for r in numba.prange(out.shape[0]):
            axpy(out[r], x[r], a)

    kernels = axpy, _jit.kernel(rows_axpy, parallel=True)
    for compiled, shape in zip(kernels, [(1000,), (4, 1000)], strict=True):
        out = np.zeros(shape)
        compiled(out, np.ones(shape), 2.0)
        np.testing.assert_array_equal(out, 2.0)
        assert _jit.PREFER_WIDE in "".join(compiled.inspect_llvm().values())
    if "+avx512f" not in llvmlite.binding.get_host_cpu_features().flatten():
        pytest.skip("this CPU has no 512-bit vectors")
    for compiled in kernels:
        assert re.search(r"v(add|fmadd\w*)pd\s.*zmm", "".join(compiled.inspect_asm().values()))


@pytest.mark.parametrize(
    "value, expected", [("0", False), ("off", False), ("1", True), ("", True), (None, True)]
)
def test_switches_read_the_environment(monkeypatch, value, expected):
    from fastmlp import _jit

    if value is None:
        monkeypatch.delenv("FASTMLP_TEST_FLAG", raising=False)
    else:
        monkeypatch.setenv("FASTMLP_TEST_FLAG", value)
    assert _jit._env_flag("FASTMLP_TEST_FLAG", True) is expected


def test_fastmath_keeps_nan_and_inf_checks():
    from fastmlp import _jit

    assert not {"nnan", "ninf"} & _jit.FASTMATH
