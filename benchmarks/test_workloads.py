"""The workloads' implementations time the same span of work."""

import time

from workloads import WORKLOADS, available, estimator_case, load_data, run

from fastmlp import reference


def test_every_implementation_times_drawing_its_initial_weights(monkeypatch):
    """fastmlp (both paths) and PyTorch start from the notebook's weights, and
    each one's time includes drawing them, as MLPClassifier.fit's includes
    its own initialisation."""
    pause = 0.2
    draw = reference.init_params

    def slow_draw(*args, **kwargs):
        time.sleep(pause)
        return draw(*args, **kwargs)

    monkeypatch.setattr(reference, "init_params", slow_draw)
    workload = WORKLOADS["W2"].scaled(0.03)
    X, y, _ = load_data(workload.n_examples)
    timed = [i for i in ("numpy", "numba", "torch") if available(i)]
    for implementation in timed:
        assert run(implementation, workload, X, y).seconds >= pause, implementation


def test_estimator_cases_are_named_by_batch_size_and_hidden_units():
    assert estimator_case("fit") == (200, 64)
    assert estimator_case("fit:32") == (32, 64)
    assert estimator_case("fit:200:100") == (200, 100)
    assert estimator_case("W1") is None
    assert estimator_case("fitness") is None
    assert estimator_case("fit:") is None and estimator_case("fit:0") is None
    assert estimator_case("fit:abc") is None and estimator_case("fit:32:0") is None
    assert estimator_case("fit:32:64:1") is None
