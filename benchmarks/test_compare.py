"""compare.py, which times two versions of fastmlp taking turns, cannot rot.

Its timings are not checked (no test asserts a timing); what it runs and how
it sums them up are.
"""

import os

import compare
import pytest


def test_summary_takes_medians_and_the_median_of_the_pairs_ratios():
    base = [{"W1 float64": 2.0}, {"W1 float64": 4.0}, {"W1 float64": 3.0}]
    new = [{"W1 float64": 1.0}, {"W1 float64": 4.0}, {"W1 float64": 2.0}]
    (row,) = compare.summarize(base, new)
    assert row == {"case": "W1 float64", "base": 3.0, "new": 2.0, "speed_up": 1.5}


def test_a_revision_is_checked_out_beside_the_working_tree_and_removed():
    with compare.checkout("HEAD") as path:
        assert (path / "fastmlp" / "kernels.py").is_file()
        assert path.resolve() != compare.ROOT
    assert not path.exists()


def test_a_process_times_the_version_it_is_given(tmp_path):
    cache = os.environ.get("NUMBA_CACHE_DIR", tmp_path)  # warm in CI: the tests ran first
    result = compare.measure(compare.ROOT, cache, ["W2", "fit:32"], ["float32"], scale=0.03)
    assert set(result["times"]) == {"W2 float32", "fit:32 float32"}
    assert all(seconds > 0 for seconds in result["times"].values())
    assert len(result["core_to_core_ns"]) == 2  # measured before each run


def test_a_process_refuses_a_version_it_cannot_import(tmp_path):
    (tmp_path / "fastmlp").mkdir()  # no __init__.py: Python finds the installed one
    with pytest.raises(Exception, match="returned non-zero exit status"):
        compare.measure(tmp_path, tmp_path / "cache", ["W2"], ["float32"], scale=0.03)


def test_an_unknown_workload_is_refused_before_any_process_starts(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["compare.py", "HEAD", "--workloads", "W1,fit:abc"])
    monkeypatch.setattr(compare, "compare", lambda *args: pytest.fail("it ran"))
    with pytest.raises(SystemExit) as exit_:
        compare.main()
    assert exit_.value.code == 2
    assert "fit:abc?" in capsys.readouterr().err
