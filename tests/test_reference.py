"""The reference path is the notebook: its own cells, run beside fastmlp, agree bit for bit.

The notebook (../shared/reference/seed-notebook.md) loads MNIST with
``fetch_openml``; here that call is replaced, as scikit-learn's own tests do,
by one that returns local images, so the cells run offline and unchanged.
"""

import contextlib
import io
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import sklearn.datasets
from _support import mnist_dir

import fastmlp
from fastmlp import datasets, reference

NOTEBOOK = Path(__file__).resolve().parents[2] / "shared" / "reference" / "seed-notebook.md"


def notebook_cells(text: str) -> list[str]:
    """The code of each ``In [n]:`` cell: the longest part of the cell's text,
    cut at a blank line, that is valid Python (what follows is its output)."""
    cells = []
    for chunk in re.split(r"^In \[\d+\]:\n", text, flags=re.M)[1:]:
        lines = chunk.split("\n## ")[0].split("\n")
        cuts = [i for i, line in enumerate(lines) if not line.strip()] + [len(lines)]
        code = ""
        for cut in cuts:
            candidate = "\n".join(lines[:cut])
            try:
                compile(candidate, "<cell>", "exec")
            except SyntaxError:
                continue
            code = candidate
        cells.append(code)
    return cells


def local_digits(n: int):
    """What ``fetch_openml('mnist_784', as_frame=False)`` returns, for ``n``
    local images: float pixels 0-255 and string labels."""
    if (mnist_dir() / "t10k-images-idx3-ubyte.gz").is_file():
        data = datasets.load(f"idx:{mnist_dir()}")
    else:  # a fresh clone without ../shared: scikit-learn's digits, same shape of API
        data = datasets.load("digits")
    return SimpleNamespace(data=data.X[:n] * 255.0, target=data.y[:n].astype(str))


@pytest.fixture(scope="module")
def notebook_run():
    if not NOTEBOOK.is_file():
        pytest.skip(f"the seed notebook is not at {NOTEBOOK}")
    cells = notebook_cells(NOTEBOOK.read_text())
    assert len(cells) == 8 and "gradient_descent(X, Y)" in cells[6]
    fake = local_digits(300)
    calls = []

    def fake_fetch_openml(name, **kwargs):
        calls.append((name, kwargs))
        return fake

    namespace = {}
    out = io.StringIO()
    original = sklearn.datasets.fetch_openml
    sklearn.datasets.fetch_openml = fake_fetch_openml
    try:
        with contextlib.redirect_stdout(out):
            for cell in cells[:7]:  # up to and including the training
                exec(cell, namespace)
    finally:
        sklearn.datasets.fetch_openml = original
    assert calls == [("mnist_784", {"version": 1, "as_frame": False, "parser": "auto"})]
    return namespace, out.getvalue()


def accuracy_log(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Iteration")]


def test_reference_path_reproduces_the_notebook_bit_for_bit(notebook_run):
    namespace, printed = notebook_run
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model = fastmlp.train(namespace["X"], namespace["Y"], backend="numpy", verbose=True)
    assert accuracy_log(printed) and accuracy_log(out.getvalue()) == accuracy_log(printed)
    for name in ("W1", "b1", "W2", "b2"):
        np.testing.assert_array_equal(getattr(model, name), namespace[name], err_msg=name)


def test_fast_drop_in_matches_the_notebook(notebook_run):
    namespace, printed = notebook_run
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        W1, b1, W2, b2 = fastmlp.gradient_descent(namespace["X"], namespace["Y"])
    ours = [float(line.split()[-1].rstrip("%")) for line in accuracy_log(out.getvalue())]
    theirs = [float(line.split()[-1].rstrip("%")) for line in accuracy_log(printed)]
    assert len(ours) == len(theirs) == 11
    np.testing.assert_allclose(ours, theirs, atol=0.1)  # percentage points
    np.testing.assert_allclose(W1, namespace["W1"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(W2, namespace["W2"], rtol=1e-9, atol=1e-9)


def test_initialisation_is_the_notebooks_and_leaves_global_state_alone():
    # The notebook's global random state, on purpose (hence the noqa).
    np.random.seed(123)  # noqa: NPY002
    before = np.random.get_state()[1].copy()  # noqa: NPY002
    W1, b1, W2, b2 = reference.init_params(784, 64, 10)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # noqa: NPY002
    np.random.seed(1)  # noqa: NPY002
    np.testing.assert_array_equal(W1, np.random.randn(64, 784) * 0.1)  # noqa: NPY002
    np.testing.assert_array_equal(W2, np.random.randn(10, 64) * 0.1)  # noqa: NPY002
    assert not b1.any() and not b2.any()


def test_notebook_cells_are_found():
    cells = notebook_cells(
        "In [1]:\nx = 1\n\nprint(x)\n\nLoading data...\n\n## Next\n\nIn [2]:\ny = 2\n\n"
        "Iteration 0   Accuracy: 15.35%\n"
    )
    assert cells == ["x = 1\n\nprint(x)", "y = 2"]
