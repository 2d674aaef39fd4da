"""benchmarks/hotspots.py: naming compiled code for perf, without running perf."""

import os

import numpy as np
import pytest
from hotspots import code_symbols, main, readable, write_map
from numba import njit, prange


def test_readable_names_numbas_mangled_names():
    mangled = "_ZN7fastmlp7kernels16_add_listed_rowsB3v17B12c8tJTIeFIjxE5ArrayIfLi1E1C7mutableE"
    assert readable(mangled) == "fastmlp.kernels._add_listed_rows"
    assert readable("NRT_incref") == "NRT_incref"


@njit(parallel=True, cache=False)
def _halve_rows(out):
    for r in prange(out.shape[0]):
        out[r] = out[r] / 2


def test_every_compiled_function_and_parallel_loop_gets_a_named_start(tmp_path):
    _halve_rows(np.ones((4, 3)))
    symbols = code_symbols([_halve_rows])
    names = set(symbols.values())
    assert any(name.endswith("._halve_rows") for name in names)
    assert "parallel loop in _halve_rows" in names
    assert all(address > 0 for address in symbols)
    path = tmp_path / "perf.map"
    write_map(symbols, path)
    lines = [line.split(" ", 2) for line in path.read_text().splitlines()]
    assert len(lines) == len(symbols)
    starts = [int(start, 16) for start, _, _ in lines]
    assert starts == sorted(symbols)
    assert all(int(size, 16) > 0 for _, size, _ in lines)


def test_without_perf_it_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr("hotspots.shutil.which", lambda name: None)
    monkeypatch.setattr("sys.argv", ["hotspots.py"])
    monkeypatch.delenv("FASTMLP_CACHE", raising=False)
    with pytest.raises(SystemExit, match="perf is not installed"):
        main()
    assert "FASTMLP_CACHE" not in os.environ  # later processes still cache


def test_an_unknown_workload_is_refused_before_anything_runs(monkeypatch, capsys):
    monkeypatch.setattr("hotspots.shutil.which", lambda name: "/usr/bin/perf")
    monkeypatch.setattr("sys.argv", ["hotspots.py", "--workload", "W9"])
    monkeypatch.setenv("FASTMLP_CACHE", "1")  # main sets it to 0; restored afterwards
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert "choose from W1, W2, W3, fit, fit:BATCH or fit:BATCH:HIDDEN" in capsys.readouterr().err
