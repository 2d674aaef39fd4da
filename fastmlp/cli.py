"""The ``fastmlp`` command line.

Every failure a user can cause (a missing file, a bad option value, a
malformed data or model file) ends with one line on stderr and exit status
2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import __version__, datasets
from .errors import DivergenceError
from .training import train

NOTEBOOK_TRAIN_SIZE = 2000


class UsageError(Exception):
    """A problem with what the user asked for, reported in one line."""


def _train_size(requested: int | None, n_examples: int) -> int:
    if requested is not None:
        if not 0 < requested <= n_examples:
            raise UsageError(f"--train-size must be between 1 and {n_examples}")
        return requested
    # The notebook's 2,000, but keep a quarter back on a small data set.
    return min(NOTEBOOK_TRAIN_SIZE, n_examples - n_examples // 4)


def _load_data(spec: str, quiet: bool) -> datasets.Dataset:
    try:
        return datasets.load(spec)
    except datasets.DatasetUnavailable as error:
        if spec != "mnist":
            raise UsageError(str(error)) from None
        print(f"{error}; using scikit-learn's digits instead", file=sys.stderr)
        return datasets.load("digits")


def _cmd_train(args) -> int:
    started = time.perf_counter()
    data = _load_data(args.data, args.quiet)
    n_train = _train_size(args.train_size, len(data.y))
    train_set, held_out = data.split(n_train)
    if not args.quiet:
        print(
            f"Data: {data.name}, {len(data.y):,} examples: training on the first "
            f"{n_train:,}, holding out {len(held_out.y):,}"
        )
    X = train_set.X.astype(args.dtype)
    fit_started = time.perf_counter()
    try:
        model = train(
            X, train_set.y, hidden=args.hidden, iterations=args.iterations,
            alpha=args.alpha, seed=args.seed, backend=args.backend,
            log_every=args.log_every or None, batch_size=args.batch_size,
            activation=args.activation, verbose=not args.quiet,
        )  # fmt: skip
    except DivergenceError as error:
        raise UsageError(str(error)) from None
    fit_seconds = time.perf_counter() - fit_started
    if len(held_out.y):
        accuracy = model.score(held_out.X, held_out.y)
        print(f"Held-out accuracy: {accuracy * 100:.2f}% ({len(held_out.y):,} examples)")
    total = time.perf_counter() - started
    print(f"Wall time: {total:.2f} s (training {fit_seconds:.2f} s, {args.backend} backend)")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastmlp",
        description="Train, evaluate and use a one-hidden-layer network on digits.",
    )
    parser.add_argument("--version", action="version", version=f"fastmlp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "train",
        help="train a network (by default the notebook's experiment)",
        description="Train a network. With no options: the notebook's experiment "
        "(first 2,000 MNIST images, 64 sigmoid units, alpha 0.5, 1,000 iterations).",
    )
    p.add_argument("--data", default="mnist", help="mnist, digits or idx:DIR (default: mnist)")
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
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="mini-batch SGD with batches of this size")  # fmt: skip
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train-size", type=_positive_int, default=None,
                   help="train on the first N examples (default: 2,000)")  # fmt: skip
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--quiet", action="store_true", help="print only the results")
    p.set_defaults(run=_cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, ValueError, TypeError, OSError) as error:
        print(f"fastmlp: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastmlp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
