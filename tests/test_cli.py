"""The ``fastmlp`` command, run as a user runs it: a subprocess, real digits."""

import gzip
import re
import subprocess
import sys

import numpy as np
import pytest
from _support import require_mnist

from fastmlp import cli, datasets, modelfile


def fastmlp(*args, check=True):
    done = subprocess.run(
        [sys.executable, "-m", "fastmlp", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def assert_one_line_error(done, *fragments):
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``fastmlp train`` on the real digits: save a model and plot its curves."""
    mnist = require_mnist()
    folder = tmp_path_factory.mktemp("cli")
    done = fastmlp(
        "train",
        "--data",
        f"idx:{mnist}",
        "--iterations",
        300,
        "--save",
        folder / "model",
        "--plot",
        folder / "curves.png",
    )
    return mnist, folder, done.stdout


def test_train_prints_the_notebook_log_and_held_out_accuracy(trained):
    _, folder, out = trained
    log = re.findall(r"^Iteration (\d+)   Accuracy: (\d+\.\d\d)%$", out, flags=re.M)
    assert [int(i) for i, _ in log] == [0, 100, 200, 300]
    assert float(log[-1][1]) > 90
    held_out = re.search(r"Held-out accuracy: (\d+\.\d\d)% \(8,000 examples\)", out)
    assert held_out and float(held_out.group(1)) > 85
    assert re.search(r"Wall time: \d+\.\d\d s", out)
    assert (folder / "model.npz").is_file()


def test_plot_writes_a_png_of_the_expected_size(trained):
    _, folder, _ = trained
    from PIL import Image

    with Image.open(folder / "curves.png") as image:
        assert image.format == "PNG"
        assert image.size == (800, 350)


def test_evaluate_reports_accuracy_and_confusion(trained):
    mnist, folder, out = trained
    done = fastmlp("evaluate", folder / "model.npz", "--data", f"idx:{mnist}", "--skip", 2000)
    accuracy = re.search(r"Accuracy: (\d+\.\d\d)% \(8,000 examples", done.stdout).group(1)
    assert f"Held-out accuracy: {accuracy}%" in out  # the same model, the same 8,000 images
    rows = [line.split() for line in done.stdout.splitlines()[-10:]]
    matrix = np.array([[int(v) for v in row[1:]] for row in rows])
    assert matrix.shape == (10, 10) and matrix.sum() == 8000
    assert np.trace(matrix) == round(float(accuracy) * 80)


def test_predict_reads_idx_npy_and_png(trained, tmp_path):
    mnist, folder, _ = trained
    model = folder / "model.npz"
    data = datasets.load(f"idx:{mnist}")
    expected = modelfile.load_model(model).predict(data.X[:5])

    done = fastmlp("predict", model, mnist / "t10k-images-idx3-ubyte.gz")
    first = [int(line.split()[1]) for line in done.stdout.splitlines()[:5]]
    assert first == list(expected)

    pixels = (data.X[:5] * 255).round().astype(np.uint8).reshape(5, 28, 28)
    np.save(tmp_path / "digits.npy", pixels)
    done = fastmlp("predict", model, tmp_path / "digits.npy")
    assert [int(line.split()[1]) for line in done.stdout.splitlines()] == list(expected)

    from PIL import Image

    # A user's drawing: dark ink on white, larger than 28 x 28.
    Image.fromarray(255 - pixels[0]).resize((112, 112)).save(tmp_path / "digit.png")
    done = fastmlp("predict", model, tmp_path / "digit.png")
    assert done.stdout.startswith(f"0: {expected[0]} (probability")


def test_bench_runs_and_reports_speed_ups():
    done = fastmlp("bench", "--iterations", 5, "--rounds", 1, "--data", "digits")
    assert re.search(r"^numba\s+float32\s+[\d.]+\s+[\d.]+\s+[\d.]+x", done.stdout, flags=re.M)


def test_bad_input_gets_one_line_and_status_2(trained, tmp_path):
    mnist, folder, _ = trained
    model = folder / "model.npz"
    assert_one_line_error(
        fastmlp("evaluate", tmp_path / "missing.npz", check=False), "missing.npz", "no such file"
    )
    assert_one_line_error(
        fastmlp("predict", model, tmp_path / "none.npy", check=False), "none.npy", "no such file"
    )

    wrong_magic = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(wrong_magic, "wb") as handle:
        handle.write(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + bytes(5))
    assert_one_line_error(fastmlp("predict", model, wrong_magic, check=False))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + bytes(4))
    assert_one_line_error(
        fastmlp("evaluate", model, "--data", f"idx:{tmp_path}", check=False),
        "magic number 2049, expected 2051",
    )

    # A model file whose first layer lost a column: its digest no longer matches...
    with np.load(model, allow_pickle=False) as archive:
        fields = dict(archive)
    fields["W1"] = fields["W1"][:, :783]
    np.savez(tmp_path / "altered.npz", **fields)
    assert_one_line_error(
        fastmlp("evaluate", tmp_path / "altered.npz", check=False),
        "altered.npz",
        "do not match their digest",
    )
    # ...and with the digest recomputed, the shape check catches it.
    fields["digest"] = np.array(modelfile._digest(fields))
    np.savez(tmp_path / "reshaped.npz", **fields)
    assert_one_line_error(
        fastmlp("evaluate", tmp_path / "reshaped.npz", check=False),
        "reshaped.npz",
        "W1 has shape (64, 783), expected (64, 784)",
    )

    assert_one_line_error(
        fastmlp("train", "--dtype", "float16", check=False), "invalid choice: 'float16'"
    )
    assert_one_line_error(
        fastmlp("train", "--alpha", "-1", check=False), "must be a positive number"
    )
    assert_one_line_error(
        fastmlp("train", "--data", "cifar", check=False), "unknown data set 'cifar'"
    )
    assert_one_line_error(
        fastmlp("train", "--data", f"idx:{tmp_path / 'nowhere'}", check=False), "no such directory"
    )
    digits_model = tmp_path / "digits.npz"
    fastmlp("train", "--data", "digits", "--iterations", 2, "--quiet", "--save", digits_model)
    assert_one_line_error(
        fastmlp("evaluate", digits_model, "--data", f"idx:{mnist}", check=False),
        "784 features",
        "expects 64",
    )


def test_train_falls_back_to_digits_when_mnist_cannot_be_fetched(monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr("sklearn.datasets.fetch_openml", offline)
    status = cli.main(["train", "--iterations", "3", "--log-every", "1"])
    out, err = capsys.readouterr()
    assert status == 0
    assert err.strip().splitlines() == [
        "MNIST could not be fetched from OpenML (<urlopen error [Errno -2] Name or service not "
        "known>); using scikit-learn's digits instead"
    ]
    assert "Data: digits, 1,797 examples: training on the first 1,348, holding out 449" in out
    assert "Iteration 3   Accuracy:" in out and "Held-out accuracy:" in out


def test_quiet_prints_only_the_results(tmp_path):
    done = fastmlp("train", "--data", "digits", "--iterations", 5, "--quiet")
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == [
        "Held-out accuracy",
        "Wall time",
    ]


def test_progress_bar_on_a_terminal_only(monkeypatch, capsys):
    monkeypatch.setattr(cli, "PROGRESS_AFTER_SECONDS", 0)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli.main(["train", "--data", "digits", "--iterations", "30"]) == 0
    err = capsys.readouterr().err
    assert "/31 [" in err and "step/s" in err  # tqdm's counter, on the terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert cli.main(["train", "--data", "digits", "--iterations", "30"]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli.main(["train", "--data", "digits", "--iterations", "30", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
