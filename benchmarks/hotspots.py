"""Where a workload's time goes inside fastmlp's compiled kernels, sampled by perf.

    python benchmarks/hotspots.py [--workload W1] [--dtype float32] [--seconds 6] [--top 25]

``--workload`` is W1, W2 or W3, or ``fit`` for FastMLPClassifier's Adam fit
at the settings of ``bench_estimator.py`` (``fit:32`` at batches of 32,
``fit:200:100`` with 100 hidden units), as in ``compare.py``.

Linux's ``perf`` samples where every thread of a process is (its software
``cpu-clock`` event works inside virtual machines, which expose no hardware
counters), but it cannot name code that Numba compiled at run time. This
script compiles the kernels in its own process (``FASTMLP_CACHE=0``: code
loaded from Numba's cache keeps no symbol table), writes the map perf reads
to name such code (``/tmp/perf-PID.map``), then trains the workload over and
over while ``perf record`` samples the process, and prints perf's table of
where the samples fell, as shares of all samples on all threads.

Helpers that LLVM inlined count as their callers; a parallel loop's body is
named ``parallel loop in KERNEL``; a name listed twice is two compiled
versions (signatures) of one kernel. Addresses without a name are shown with
their library: in ``libgomp``, the OpenMP runtime's threads waiting at the
end of a parallel loop. Timing a helper in
a loop of one's own misleads (it compiles differently there: see
docs/performance-log.md); this measures it where it runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from numba.core.registry import CPUDispatcher

_ROW = re.compile(r"^\s*([\d.]+%)\s+(.+?)\s+\[[.k]\]\s+(.*?)[\s-]*$", re.MULTILINE)
"""A line of ``perf report --sort dso,symbol --stdio``: share of the samples,
the library, the symbol."""
_DEFINE = re.compile(r'^define [^@]*@"?([^"(]+)"?\(', re.MULTILINE)


def readable(symbol: str) -> str:
    """``fastmlp.kernels.forward`` for Numba's mangled name of a compiled
    function (its nested names; Numba's ``_XX`` escapes of other characters
    are left, as they cannot be told from underscores); other names as they
    are."""
    if not symbol.startswith("_ZN"):
        return symbol
    parts, i = [], 3
    while i < len(symbol) and symbol[i].isdigit():
        j = i
        while symbol[j].isdigit():
            j += 1
        length = int(symbol[i:j])
        parts.append(symbol[j : j + length])
        i = j + length
    return ".".join(parts) or symbol


def code_symbols(dispatchers) -> dict[int, str]:
    """Start address and readable name of every function compiled for
    ``dispatchers`` (and linked into them), a parallel loop's body named after
    the kernel that holds it."""
    found: dict[int, str] = {}
    owner: dict[str, tuple[int, str]] = {}
    for dispatcher in dispatchers:
        for result in dispatcher.overloads.values():
            library = result.library
            names = _DEFINE.findall(library.get_llvm_str())
            for name in names:
                address = library.get_pointer_to_function(name)
                if not address:
                    continue
                pretty = readable(name)
                if "__numba_parfor_gufunc" in pretty:
                    # Linked into every kernel that calls the one holding it:
                    # the smallest library that defines it is its own kernel's.
                    here = (len(names), f"parallel loop in {dispatcher.__name__}")
                    if name in owner and owner[name][0] <= here[0]:
                        continue
                    owner[name] = here
                    pretty = here[1]
                found[address] = pretty
    return found


def write_map(symbols: dict[int, str], path: Path) -> None:
    """perf's map of JIT code: ``START SIZE NAME`` in hex, each function
    taken to end where the next one starts."""
    starts = sorted(symbols)
    with open(path, "w") as out:
        for start, end in zip(starts, starts[1:] + [starts[-1] + 4096], strict=True):
            out.write(f"{start:x} {min(end - start, 1 << 16):x} {symbols[start]}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workload", default="W1", help="W1, W2, W3, fit, fit:BATCH or fit:BATCH:HIDDEN"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()  # before the imports below, which take seconds
    perf = shutil.which("perf")
    if perf is None:
        sys.exit("perf is not installed (on Debian and Ubuntu: apt install linux-perf)")
    # Before fastmlp is imported (by workloads), so that this process, and
    # only this one, compiles the kernels instead of loading them.
    os.environ["FASTMLP_CACHE"] = "0"
    sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))  # for fit
    import numba
    import numpy as np
    from workloads import (
        ESTIMATOR_EXAMPLES,
        WORKLOADS,
        estimator_case,
        fit_estimator,
        load_data,
        run,
        warm_up_estimator,
    )

    from fastmlp import kernels

    dtype = np.dtype(args.dtype).type
    case = estimator_case(args.workload)
    if case is not None:
        batch_size, hidden = case
        X, y, _ = load_data(ESTIMATOR_EXAMPLES, dtype)

        def train(small=False):
            if small:
                warm_up_estimator(X, y, batch_size, hidden=hidden)
            else:
                fit_estimator(X, y, batch_size=batch_size, hidden=hidden)

    elif args.workload in WORKLOADS:
        workload = WORKLOADS[args.workload]
        X, y, _ = load_data(workload.n_examples, dtype)

        def train(small=False):
            run("numba", workload.scaled(0.01) if small else workload, X, y)

    else:
        choices = ", ".join(sorted(WORKLOADS))
        parser.error(f"--workload: choose from {choices}, fit, fit:BATCH or fit:BATCH:HIDDEN")
    print(f"compiling the kernels for {args.workload} in {args.dtype} ...", flush=True)
    train(small=True)
    dispatchers = [f for f in vars(kernels).values() if isinstance(f, CPUDispatcher)]
    perf_map = Path(f"/tmp/perf-{os.getpid()}.map")
    write_map(code_symbols(dispatchers), perf_map)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = str(Path(tmp) / "perf.data")
            record = subprocess.Popen(
                [perf, "record", "-q", "-F", "4000", "-e", "cpu-clock", "-p", str(os.getpid()),
                 "-o", data, "--", "sleep", str(args.seconds)],
            )  # fmt: skip
            time.sleep(0.5)  # perf attaches
            runs = 0
            while record.poll() is None:
                train()
                runs += 1
            if record.returncode != 0:
                sys.exit(
                    "perf record failed (see its message above; sampling another process "
                    "may need a lower /proc/sys/kernel/perf_event_paranoid)"
                )
            report = subprocess.run(
                [perf, "report", "-i", data, "--no-children", "--sort", "dso,symbol", "--stdio"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
    finally:
        perf_map.unlink()  # perf reads it only while reporting
    print(
        f"{args.workload} in {args.dtype} on {numba.get_num_threads()} threads, "
        f"{runs} runs sampled for {args.seconds:g} s; share of all samples:"
    )
    for share, library, name in _ROW.findall(report)[: args.top]:
        print(f"  {share:>7}  {name}" + (f" in {library}" if name.startswith("0x") else ""))


if __name__ == "__main__":
    main()
