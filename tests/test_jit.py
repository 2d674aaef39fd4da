"""How kernels compile: the on-disk cache, and the environment switches."""

import json
import os
import subprocess
import sys
import textwrap

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


def run(env_overrides):
    env = dict(os.environ, **env_overrides)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """A process with the default switches and an empty cache: its cache
    directory and what it reported. Shared, since a cold compile takes most
    of each of these tests."""
    cache = tmp_path_factory.mktemp("default-cache")
    return cache, run({"NUMBA_CACHE_DIR": str(cache)})


def test_a_second_process_loads_the_kernels_from_the_cache(default_run):
    cache, first = default_run
    assert all(hits == 0 and misses >= 1 for hits, misses in first["stats"].values())
    assert any(cache.rglob("*.nbi"))
    second = run({"NUMBA_CACHE_DIR": str(cache)})
    assert all(hits >= 1 and misses == 0 for hits, misses in second["stats"].values())
    assert second["W1"] == first["W1"]


def test_cache_can_be_switched_off(tmp_path):
    result = run({"NUMBA_CACHE_DIR": str(tmp_path), "FASTMLP_CACHE": "0"})
    assert not any(tmp_path.rglob("*.nbi"))
    assert all(hits == 0 for hits, _ in result["stats"].values())


def test_serial_kernels_give_the_same_model(tmp_path, default_run):
    parallel = default_run[1]
    serial = run({"NUMBA_CACHE_DIR": str(tmp_path), "FASTMLP_PARALLEL": "0"})
    np.testing.assert_allclose(serial["W1"], parallel["W1"], rtol=1e-12, atol=1e-15)


def test_kernels_without_noalias_give_the_same_model(tmp_path, default_run):
    declared = default_run[1]
    checked = run({"NUMBA_CACHE_DIR": str(tmp_path), "FASTMLP_NOALIAS": "0"})
    np.testing.assert_allclose(checked["W1"], declared["W1"], rtol=1e-12, atol=1e-15)


def test_noalias_reaches_numba():
    from fastmlp import _jit, kernels

    assert _jit.NOALIAS  # this Numba has the flag, so the kernels use it
    assert kernels._add_rows.targetoptions.get("noalias") is True


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
