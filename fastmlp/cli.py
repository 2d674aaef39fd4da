"""The ``fastmlp`` command line: train, evaluate, predict, bench.

Every failure a user can cause (a missing file, a bad option value, a
malformed data or model file) ends with one line on stderr and exit status
2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np

from . import __version__, datasets
from .errors import DivergenceError
from .modelfile import load_model, save_model
from .training import train

NOTEBOOK_TRAIN_SIZE = 2000
PROGRESS_AFTER_SECONDS = 2.0


class UsageError(Exception):
    """A problem with what the user asked for, reported in one line."""


def _needs(module: str, purpose: str):
    try:
        return __import__(module)
    except ImportError:
        raise UsageError(f"{purpose} needs {module}: pip install 'fastmlp[cli]'") from None


# ---- data ------------------------------------------------------------------------
def _load_data(spec: str, *, fall_back: bool) -> datasets.Dataset:
    try:
        return datasets.load(spec)
    except datasets.DatasetUnavailable as error:
        if spec != "mnist" or not fall_back:
            raise UsageError(str(error)) from None
        print(f"{error}; using scikit-learn's digits instead", file=sys.stderr)
        return datasets.load("digits")


def _train_size(requested: int | None, n_examples: int) -> int:
    if requested is not None:
        if not 0 < requested <= n_examples:
            raise UsageError(f"--train-size must be between 1 and {n_examples:,}")
        return requested
    # The notebook's 2,000, but keep a quarter back on a small data set.
    return min(NOTEBOOK_TRAIN_SIZE, n_examples - n_examples // 4)


def _read_images(path: Path, n_features: int) -> np.ndarray:
    """Images from an IDX file, a .npy array or a PNG, as rows scaled to [0, 1]."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".png":
        image = _read_png(path, n_features)
        return image.reshape(1, -1)
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise UsageError(f"{path}: not a readable .npy array ({error})") from None
    else:
        array = datasets.read_idx(path)
    if array.dtype.kind in "iu":
        array = array / 255.0  # pixel values 0-255, as MNIST stores them
    elif array.dtype.kind != "f":
        raise UsageError(f"{path}: holds {array.dtype} values, not pixels")
    square = array.ndim in (2, 3) and array.shape[-1] != n_features
    if square and array.shape[-2] * array.shape[-1] == n_features:
        array = array.reshape(-1, n_features)  # 28 x 28 images, one or a stack of them
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.shape[1] != n_features:
        raise UsageError(
            f"{path}: images of shape {array.shape[1:]} do not fit the model's {n_features} inputs"
        )
    return array


def _read_png(path: Path, n_features: int) -> np.ndarray:
    side = int(round(np.sqrt(n_features)))
    if side * side != n_features:
        raise UsageError(f"the model takes {n_features} inputs, not a square image")
    _needs("matplotlib", "reading PNG images")
    from PIL import Image

    try:
        image = Image.open(path).convert("L")
    except OSError as error:
        raise UsageError(f"{path}: not a readable image ({error})") from None
    if image.size != (side, side):
        image = image.resize((side, side), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.float64) / 255.0
    if pixels.mean() > 0.5:  # dark ink on a light page: MNIST digits are light on dark
        pixels = 1.0 - pixels
    return pixels


# ---- progress and plots ------------------------------------------------------------
class _Progress:
    """A tqdm bar that appears only on a terminal, after a couple of seconds,
    and the accuracy log printed above it."""

    def __init__(self, total: int, unit: str, word: str, quiet: bool):
        self.word, self.quiet, self.bar = word, quiet, None
        if not quiet and sys.stderr.isatty():
            tqdm = _needs("tqdm", "the progress bar").tqdm
            self.bar = tqdm(total=total, unit=unit, delay=PROGRESS_AFTER_SECONDS, leave=False)

    def __call__(self, progress) -> None:
        if self.bar is not None:
            self.bar.update(1)
        if progress.accuracy is not None and not self.quiet:
            line = f"{self.word} {progress.iteration}   Accuracy: {progress.accuracy * 100:.2f}%"
            if self.bar is not None:
                self.bar.write(line)
            else:
                print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _plot(model, path: Path, title: str) -> None:
    matplotlib = _needs("matplotlib", "--plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 3.5), dpi=100)
    left.plot(np.arange(len(model.loss_curve)), model.loss_curve)
    left.set(xlabel="iteration", ylabel="training loss (cross-entropy)", yscale="log")
    iterations = [p.iteration for p in model.history]
    right.plot(iterations, [100 * p.accuracy for p in model.history], marker="o")
    right.set(xlabel="iteration", ylabel="training accuracy (%)")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


# ---- commands ----------------------------------------------------------------------
def _cmd_train(args) -> int:
    started = time.perf_counter()
    data = _load_data(args.data, fall_back=True)
    n_train = _train_size(args.train_size, len(data.y))
    train_set, held_out = data.split(n_train)
    if not args.quiet:
        print(
            f"Data: {data.name}, {len(data.y):,} examples: training on the first "
            f"{n_train:,}, holding out {len(held_out.y):,}"
        )
    word = "Iteration" if args.batch_size is None else "Epoch"
    steps = args.iterations + (args.batch_size is None)
    progress = _Progress(steps, "step" if args.batch_size is None else "epoch", word, args.quiet)
    fit_started = time.perf_counter()
    try:
        model = train(
            train_set.X.astype(args.dtype),
            train_set.y,
            hidden=args.hidden,
            iterations=args.iterations,
            alpha=args.alpha,
            seed=args.seed,
            backend=args.backend,
            log_every=args.log_every or None,
            batch_size=args.batch_size,
            activation=args.activation,
            callback=progress,
        )
    except DivergenceError as error:
        raise UsageError(str(error)) from None
    finally:
        progress.close()
    fit_seconds = time.perf_counter() - fit_started
    if len(held_out.y):
        accuracy = model.score(held_out.X, held_out.y)
        print(f"Held-out accuracy: {accuracy * 100:.2f}% ({len(held_out.y):,} examples)")
    if args.save:
        print(f"Saved the model to {save_model(model, args.save)}")
    if args.plot:
        _plot(model, Path(args.plot), f"{data.name}: {n_train:,} examples, {args.backend}")
        print(f"Saved the curves to {args.plot}")
    total = time.perf_counter() - started
    compiled = args.backend == "numba" and _compiled_in_this_process()
    note = ", including compiling the kernels, cached for later runs" if compiled else ""
    print(f"Wall time: {total:.2f} s (training {fit_seconds:.2f} s{note}, {args.backend} backend)")
    return 0


def _compiled_in_this_process() -> bool:
    from . import kernels

    return bool(kernels.train_epoch.stats.cache_misses)


def _cmd_evaluate(args) -> int:
    model = load_model(args.model)
    data = _load_data(args.data, fall_back=False)
    X, y = data.X[args.skip :], data.y[args.skip :]
    if args.first is not None:
        X, y = X[: args.first], y[: args.first]
    if len(y) == 0:
        raise UsageError(f"no examples left after --skip {args.skip}")
    predicted = model.predict(X)
    print(f"Accuracy: {np.mean(predicted == y) * 100:.2f}% ({len(y):,} examples of {data.name})")
    labels = np.union1d(model.classes, y)
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(matrix, ([index[v] for v in y], [index[v] for v in predicted]), 1)
    width = max(len(str(matrix.max())), max(len(str(label)) for label in labels)) + 1
    print("Confusion matrix (rows: true label, columns: predicted):")
    print(" " * width + "".join(f"{str(label):>{width}}" for label in labels))
    for label, row in zip(labels, matrix, strict=True):
        print(f"{str(label):>{width}}" + "".join(f"{count:>{width}}" for count in row))
    return 0


def _cmd_predict(args) -> int:
    model = load_model(args.model)
    X = _read_images(Path(args.input), model.n_features)
    proba = model.predict_proba(X)
    best = np.argmax(proba, axis=1)
    for i, (label, p) in enumerate(
        zip(model.classes[best], proba[np.arange(len(X)), best], strict=True)
    ):
        print(f"{i}: {label} (probability {p:.3f})")
    return 0


def _cmd_bench(args) -> int:
    import numba

    try:
        data = datasets.load(args.data)
        X, y, source = data.X[:NOTEBOOK_TRAIN_SIZE], data.y[:NOTEBOOK_TRAIN_SIZE], data.name
    except datasets.DatasetUnavailable:
        rng = np.random.default_rng(0)
        X = rng.random((NOTEBOOK_TRAIN_SIZE, 784))
        X[rng.random(X.shape) < 0.81] = 0  # MNIST's share of zeros
        y = rng.integers(0, 10, NOTEBOOK_TRAIN_SIZE)
        source = "random data shaped like MNIST (81% zeros)"
    print(
        f"The notebook's work: {len(y):,} examples x {X.shape[1]} inputs, 64 hidden, "
        f"{args.iterations} full-batch steps; {source}; {numba.get_num_threads()} threads"
    )
    rows = []
    runs: tuple[tuple[Literal["numba", "numpy"], type[np.floating]], ...] = (
        ("numpy", np.float64),
        ("numba", np.float64),
        ("numba", np.float32),
    )
    for backend, dtype in runs:
        Xd = X.astype(dtype)
        train(Xd[:100], y[:100], iterations=1, backend=backend, log_every=None)  # compile
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            model = train(Xd, y, iterations=args.iterations, backend=backend, log_every=None)
            times.append(time.perf_counter() - start)
        rows.append((backend, np.dtype(dtype).name, float(np.median(times)), model.score(Xd, y)))
    reference_time = rows[0][2]
    print(
        f"{'backend':8s} {'dtype':8s} {'median s':>9s} {'ms/step':>8s} {'speed-up':>9s} "
        f"{'accuracy':>9s}"
    )
    for backend, dtype_name, seconds, accuracy in rows:
        per_step = 1000 * seconds / (args.iterations + 1)
        print(
            f"{backend:8s} {dtype_name:8s} {seconds:9.3f} {per_step:8.2f} "
            f"{reference_time / seconds:8.2f}x {accuracy:9.2%}"
        )
    return 0


# ---- parser -------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else _positive_int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2, as for every other error
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fastmlp",
        description="Train, evaluate and use a one-hidden-layer network on handwritten digits.",
    )
    parser.add_argument("--version", action="version", version=f"fastmlp {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    data_help = "mnist (OpenML, as in the notebook), digits, or idx:DIR (IDX files)"

    p = commands.add_parser(
        "train",
        help="train a network (by default the notebook's experiment)",
        description="Train a network. With no options: the notebook's experiment "
        "(first 2,000 MNIST images, 64 sigmoid units, alpha 0.5, 1,000 iterations). "
        "Offline, without a cached MNIST, it says so and uses scikit-learn's digits.",
    )
    p.add_argument("--data", default="mnist", help=f"{data_help} (default: mnist)")
    p.add_argument("--backend", choices=("numba", "numpy"), default="numba")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--hidden", type=_positive_int, default=64)
    p.add_argument("--activation", choices=("logistic", "tanh", "relu"), default="logistic")
    p.add_argument(
        "--iterations",
        "--epochs",
        type=_positive_int,
        default=1000,
        help="full-batch steps, or epochs with --batch-size (default: 1000)",
    )
    p.add_argument("--alpha", "--learning-rate", type=_positive_float, default=0.5)
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="mini-batch SGD with batches of this size",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--train-size",
        type=_positive_int,
        default=None,
        help="train on the first N examples (default: 2,000)",
    )
    p.add_argument(
        "--log-every",
        type=_non_negative_int,
        default=100,
        help="accuracy log interval, 0 for none (default: 100)",
    )
    p.add_argument("--save", metavar="MODEL", help="write the model to this .npz file")
    p.add_argument("--plot", metavar="PNG", help="draw the loss and accuracy curves here")
    p.add_argument("--quiet", action="store_true", help="print only the results")
    p.set_defaults(run=_cmd_train)

    p = commands.add_parser("evaluate", help="accuracy and confusion matrix of a saved model")
    p.add_argument("model", help="a model file written by 'fastmlp train --save'")
    p.add_argument("--data", default="mnist", help=f"{data_help} (default: mnist)")
    p.add_argument(
        "--skip",
        type=_non_negative_int,
        default=0,
        help="leave out the first N examples (the ones trained on)",
    )
    p.add_argument("--first", type=_positive_int, default=None, help="then use only the next N")
    p.set_defaults(run=_cmd_evaluate)

    p = commands.add_parser("predict", help="predict the digits in an IDX file, .npy or PNG")
    p.add_argument("model", help="a model file written by 'fastmlp train --save'")
    p.add_argument("input", help="IDX images (raw or .gz), a .npy array, or a PNG of a digit")
    p.set_defaults(run=_cmd_predict)

    p = commands.add_parser("bench", help="time numba against numpy on the notebook's work")
    p.add_argument(
        "--data",
        default="mnist",
        help=f"{data_help} (default: mnist, else random data shaped like it)",
    )
    p.add_argument("--iterations", type=_positive_int, default=100)
    p.add_argument("--rounds", type=_positive_int, default=3)
    p.set_defaults(run=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UsageError, ValueError, TypeError, OSError) as error:
        print(f"fastmlp: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastmlp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
