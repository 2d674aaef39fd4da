"""Two versions of fastmlp side by side: is a change faster, and by how much?

    python benchmarks/compare.py BASE [--pairs 6] [--workloads W1,W2,fit] [--dtypes float64,float32]

``BASE`` is a git revision (a commit, a branch, ``HEAD``). It is checked out
in a temporary worktree and compared with the working tree, as
CONTRIBUTING.md's measuring traps ask: the two versions take turns, each in a
fresh process with its own ``NUMBA_CACHE_DIR`` (even two copies of the same
code in one process run at different speeds, and a shared machine's speed
drifts over minutes), and which goes first alternates from pair to pair. Each process
times every workload once on the fast path, after an untimed warm-up. A
first pair that only fills the two caches is not counted.

Besides W1 to W3, ``fit`` times FastMLPClassifier's fit at the settings of
``bench_estimator.py``'s first benchmark: Adam, 8,000 MNIST digits, hidden
64, batches of 200, 20 epochs, after a rest (``workloads.IDLE``); ``fit:32``
the same at batches of 32, ``fit:200:100`` with 100 hidden units.

Prints, for each workload and dtype, each version's median time and the
median over pairs of base time / new time: above 1 means the working tree is
faster. Both versions run the working tree's workloads (``workloads.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CHILD = """
import json, sys, time
sys.path.insert(0, {benchmarks!r})
sys.path.insert(1, {tests!r})
import numpy as np
import fastmlp
from report import core_to_core_ns
from workloads import (
    ESTIMATOR_EPOCHS, ESTIMATOR_EXAMPLES, WORKLOADS, estimator_case, fit_estimator,
    load_data, rest, run, warm_up, warm_up_estimator,
)

if not fastmlp.__file__.startswith({root!r}):
    sys.exit(f"imported {{fastmlp.__file__}}, not the version under {root}")
times, latency = {{}}, []
for dtype in {dtypes!r}:
    warm_up(np.dtype(dtype))
    for name in {workloads!r}:
        case = estimator_case(name)
        if case is not None:
            batch_size, hidden = case
            X, y, _ = load_data(ESTIMATOR_EXAMPLES, dtype)
            warm_up_estimator(X, y, batch_size, hidden=hidden)
            latency.append(core_to_core_ns(rounds=20_000))
            rest()
            start = time.perf_counter()
            fit_estimator(
                X, y, max(1, round(ESTIMATOR_EPOCHS * {scale!r})), batch_size, hidden=hidden
            )
            times[f"{{name}} {{dtype}}"] = time.perf_counter() - start
            continue
        workload = WORKLOADS[name].scaled({scale!r})
        X, y, _ = load_data(workload.n_examples, dtype)
        latency.append(core_to_core_ns(rounds=20_000))
        times[f"{{name}} {{dtype}}"] = run("numba", workload, X, y).seconds
print(json.dumps({{"times": times, "core_to_core_ns": latency}}))
"""


def measure(root, cache_dir, workloads, dtypes, scale: float = 1.0) -> dict:
    """Seconds for each workload and dtype (``times``), timed in a fresh
    process that imports fastmlp from ``root`` and keeps its compiled kernels
    in ``cache_dir``, and the latency between two CPUs before each
    (``core_to_core_ns``, see report.py)."""
    root = str(Path(root).resolve())
    code = CHILD.format(
        benchmarks=str(HERE),
        tests=str(Path(root) / "tests"),
        root=root,
        dtypes=list(dtypes),
        workloads=list(workloads),
        scale=scale,
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    # Run from root: Python searches the current directory first, so that is
    # the version it imports (the child checks).
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.splitlines()[-1])


@contextlib.contextmanager
def checkout(revision: str):
    """A temporary git worktree of ``revision``, removed afterwards."""
    with tempfile.TemporaryDirectory() as parent:
        path = Path(parent) / "base"
        git = ["git", "-C", str(ROOT), "worktree"]
        add = [*git, "add", "--detach", str(path), revision]
        subprocess.run(add, check=True, capture_output=True)
        try:
            yield path
        finally:
            subprocess.run([*git, "remove", "--force", str(path)], check=True, capture_output=True)


def summarize(base: list[dict], new: list[dict]) -> list[dict]:
    """Per key: each side's median, and the median of the pairs' ratios base / new."""
    rows = []
    for key in base[0]:
        before = [run[key] for run in base]
        after = [run[key] for run in new]
        rows.append(
            {
                "case": key,
                "base": statistics.median(before),
                "new": statistics.median(after),
                "speed_up": statistics.median(b / a for b, a in zip(before, after, strict=True)),
            }
        )
    return rows


def compare(revision: str, pairs: int, workloads, dtypes, scale: float = 1.0):
    """Time ``revision`` and the working tree in ``pairs`` counted pairs of
    processes; returns :func:`summarize`'s rows and every latency measured
    between two CPUs (ns)."""
    with checkout(revision) as base_root, tempfile.TemporaryDirectory() as caches:
        sides = {
            "base": (base_root, Path(caches) / "base"),
            "new": (ROOT, Path(caches) / "new"),
        }
        runs = {"base": [], "new": []}
        latency = []
        for pair in range(pairs + 1):
            order = ("base", "new") if pair % 2 == 0 else ("new", "base")
            for side in order:
                result = measure(*sides[side], workloads, dtypes, scale)
                if pair > 0:  # the first pair compiles into the empty caches
                    runs[side].append(result["times"])
                    latency += [ns for ns in result["core_to_core_ns"] if ns is not None]
        return summarize(runs["base"], runs["new"]), latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="git revision to compare the working tree with")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--workloads", default="W1,W2")
    parser.add_argument("--dtypes", default="float64,float32")
    args = parser.parse_args()
    from workloads import WORKLOADS, estimator_case

    names = args.workloads.split(",")
    unknown = [n for n in names if n not in WORKLOADS and estimator_case(n) is None]
    if unknown:  # before any process starts
        parser.error(
            f"--workloads: {', '.join(unknown)}? (W1, W2, W3, fit, fit:BATCH, fit:BATCH:HIDDEN)"
        )
    rows, latency = compare(args.base, args.pairs, names, args.dtypes.split(","))
    print(f"{args.base} against the working tree, {args.pairs} pairs of processes:")
    for row in rows:
        print(
            f"  {row['case']:<12} base {row['base']:.4f} s   new {row['new']:.4f} s   "
            f"base/new {row['speed_up']:.2f}x (median over pairs)"
        )
    if latency:
        # Two threads exchange data at every batch: a run with the CPUs far
        # apart is slower, whichever version it runs.
        print(
            f"  between two CPUs before each run: {min(latency):.0f} to "
            f"{max(latency):.0f} ns (median {statistics.median(latency):.0f})"
        )


if __name__ == "__main__":
    main()
