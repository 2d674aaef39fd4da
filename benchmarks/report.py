"""One table for W1 to W3: every implementation, one machine, one run.

    python benchmarks/report.py [--rounds 3] [--json results.json] [--markdown table.md]

For each workload (see workloads.py) and implementation it reports the
median wall time over ``--rounds`` rounds, in each of which every
implementation runs once in turn (after one untimed warm-up of the fast
path), the ratio against fastmlp's NumPy reference and against PyTorch
at the same dtype (where installed), the final training accuracy, and the
achieved rate in GFLOP/s of the dense computation beside the machine's own
dense matrix-product rate measured in the same run. The sparse first layer
skips zeros, so its dense-equivalent rate can exceed the product rate.

Before each timed run it measures how long a write on one CPU takes to be
seen on another (core_to_core_ns): on a virtual machine this changes as the
host moves the virtual CPUs, and two threads exchange data at every batch.

Then: two threads against one on W1 and W2 (and whether the weights are
bitwise the same), compile and cached start-up times, and the peak memory a training
run allocates, NumPy reference against fastmlp, on W1 and W3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

sys.path.insert(0, str(Path(__file__).parent))
import startup  # noqa: E402
from workloads import (  # noqa: E402
    IMPLEMENTATIONS,
    WORKLOADS,
    available,
    flops,
    load_data,
    rest,
    run,
    warm_up,
)

import fastmlp  # noqa: E402
from fastmlp.engine import aligned_zeros  # noqa: E402


def machine() -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.*)", text).group(1)
    except (OSError, AttributeError):
        pass
    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "fastmlp": fastmlp.__version__,
    }
    for name in ("sklearn", "torch"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "not installed"
    system = f"{platform.system()} {platform.release()}"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": numba.get_num_threads(),
        "system": system,
        "versions": versions,
    }


def gemm_rate(dtype, rounds: int = 20) -> float:
    """GFLOP/s of NumPy's matrix product at W1's first-layer shape."""
    rng = np.random.default_rng(0)
    A = rng.random((2000, 784)).astype(dtype)
    B = rng.random((784, 64)).astype(dtype)
    A @ B
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        A @ B
        times.append(time.perf_counter() - start)
    return 2 * 2000 * 784 * 64 / statistics.median(times) / 1e9


@intrinsic
def _load_acquire(typingctx, array, index):
    """``array[index]``, read from memory every time (an atomic load)."""

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, array, [args[1]])
        return builder.load_atomic(pointer, "acquire", array_type.dtype.bitwidth // 8)

    return array.dtype(array, types.intp), codegen


@intrinsic
def _store_release(typingctx, array, index, value):
    """``array[index] = value``, written to memory at once (an atomic store)."""

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, array, [args[1]])
        builder.store_atomic(args[2], pointer, "release", array_type.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.void(array, types.intp, array.dtype), codegen


SPIN_LIMIT = 200_000_000
"""How many times in all a side may look for the other's answer before it
gives up (a few tenths of a second; 200,000 rounds take about 30 million):
on a busy machine the other thread may not be running."""


@numba.njit(nogil=True)
def _bounce(flag, rounds, serve):
    """Pass a number back and forth through ``flag[0]`` ``rounds`` times, as
    the side that serves (writes odd numbers) or the side that answers;
    False if the other side was too slow to answer."""
    spins = 0
    for i in range(rounds):
        if serve:
            _store_release(flag, 0, 2 * i + 1)
        expected = 2 * i + 2 if serve else 2 * i + 1
        while _load_acquire(flag, 0) != expected:
            spins += 1
            if spins > SPIN_LIMIT:
                _store_release(flag, 1, 1)  # tell the other side to stop as well
                return False
            if _load_acquire(flag, 1):
                return False
        if not serve:
            _store_release(flag, 0, 2 * i + 2)
    return True


def core_to_core_ns(rounds: int = 200_000) -> float | None:
    """Nanoseconds for a write on one CPU to be seen on another: half the
    round trip of a number passed back and forth between two threads pinned
    to the first two CPUs this process may use. None with fewer than two
    CPUs, or when one side stopped answering (another program had its CPU).

    This is what every exchange between fastmlp's two threads costs, and on
    a virtual machine it changes as the host moves the virtual CPUs: on this
    project's, 27-50 ns when they share a cache, 160-200 ns when not, and
    the mini-batch workloads ran up to twice as slow on two threads then.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return None
    flag = aligned_zeros(8, np.int64)  # one cache line
    _bounce.compile((numba.typeof(flag), types.intp, types.boolean))  # before timing
    answered, ready = [], threading.Event()

    def answer():
        os.sched_setaffinity(0, {cpus[1]})  # 0: the calling thread, on Linux
        ready.set()
        answered.append(_bounce(flag, rounds, False))

    other = threading.Thread(target=answer)
    other.start()
    ready.wait()
    try:
        os.sched_setaffinity(0, {cpus[0]})
        start = time.perf_counter()
        served = _bounce(flag, rounds, True)
        elapsed = time.perf_counter() - start
    finally:
        os.sched_setaffinity(0, cpus)
        other.join()
    return elapsed / rounds / 2 * 1e9 if served and all(answered) else None


def time_workloads(rounds: int, names) -> list[dict]:
    rows = []
    for name in names:
        workload = WORKLOADS[name]
        present = [(i, d) for i, d in IMPLEMENTATIONS if available(i)]
        data = {d: load_data(workload.n_examples, d) for d in {d for _, d in present}}
        for dtype in data:
            warm_up(dtype)
        if any(i == "torch" for i, _ in present):
            import torch

            torch.set_num_threads(numba.get_num_threads())
        results = {key: [] for key in present}
        latencies = {key: [] for key in present}
        # Each round runs every implementation in turn, so that a slow spell
        # of a shared machine slows them alike rather than one of them.
        for _ in range(rounds):
            for implementation, dtype in present:
                X, y, _ = data[dtype]
                rest()
                latencies[implementation, dtype].append(core_to_core_ns(rounds=20_000))
                results[implementation, dtype].append(run(implementation, workload, X, y))
        for implementation, dtype in IMPLEMENTATIONS:
            row = {
                "workload": name,
                "implementation": implementation,
                "dtype": np.dtype(dtype).name,
            }
            rows.append(row)
            if (implementation, dtype) not in results:
                row["note"] = f"{implementation} is not installed"
                continue
            runs = results[implementation, dtype]
            seconds = statistics.median(r.seconds for r in runs)
            row.update(
                seconds=seconds,
                accuracy=runs[-1].accuracy,
                data=data[dtype][2],
                gflops=flops(workload) / seconds / 1e9,
                core_to_core_ns=latencies[implementation, dtype],
            )
            print(
                f"  {name} {implementation:8s} {row['dtype']:8s} {seconds:8.3f} s  "
                f"accuracy {row['accuracy']:.4f}",
                flush=True,
            )
    for row in rows:
        if "seconds" not in row:
            continue
        same = {(r["workload"], r["implementation"], r["dtype"]): r for r in rows}
        ref = same.get((row["workload"], "numpy", "float64"))
        torch_row = same.get((row["workload"], "torch", row["dtype"]))
        row["vs_numpy"] = ref["seconds"] / row["seconds"]
        if torch_row and "seconds" in torch_row:
            row["vs_torch"] = torch_row["seconds"] / row["seconds"]
    return rows


THREAD_ROUNDS = {"W1": 3, "W2": 15}
"""Rounds of the thread comparison: W2 lasts 20-40 ms and swings most."""


def thread_scaling(names=("W1", "W2"), scale: float = 1.0, rounds=THREAD_ROUNDS) -> dict:
    """Two threads (the default count) against one on each workload and dtype,
    over ``rounds[name]`` rounds: median seconds, the speed-up, whether the
    trained parameters are bitwise the same, and the latency between two CPUs
    before each timed run."""
    result = {}
    default = numba.get_num_threads()
    counts = sorted({1, default})
    for name in names:
        workload = WORKLOADS[name].scaled(scale)
        for dtype in (np.float64, np.float32):
            X, y, _ = load_data(workload.n_examples, dtype)
            warm_up(dtype)
            times, params, latency = {t: [] for t in counts}, {}, []
            # Rounds alternate the thread counts, so that a slow spell of a
            # shared machine slows both alike.
            try:
                for _ in range(rounds[name]):
                    for threads in counts:
                        numba.set_num_threads(threads)
                        rest()
                        latency.append(core_to_core_ns(rounds=20_000))
                        trained = run("numba", workload, X, y)
                        times[threads].append(trained.seconds)
                        params[threads] = trained.params
            finally:
                numba.set_num_threads(default)
            seconds = {t: statistics.median(times[t]) for t in counts}
            result[f"{name} {np.dtype(dtype).name}"] = {
                "seconds": seconds,
                "speed_up": seconds[1] / seconds[default],
                "bitwise_identical": all(
                    all(np.array_equal(a, b) for a, b in zip(params[1], p, strict=True))
                    for p in params.values()
                ),
                "core_to_core_ns": latency,
            }
    return result


MEMORY_CHILD = """
import gc, json, sys, tracemalloc
sys.path.insert(0, {here!r})
from workloads import WORKLOADS, load_data, run, warm_up
import numpy as np

workload = WORKLOADS[{name!r}]
X, y, _ = load_data(workload.n_examples, np.float64)
warm_up(np.float64)
gc.collect()
tracemalloc.start()
run({implementation!r}, workload, X, y)
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({{"peak_mb": peak / 2**20}}))
"""


def peak_memory() -> dict:
    """Peak memory a training run allocates beyond its data, in a fresh process each.

    Counted with tracemalloc, which sees every NumPy array (the kernels
    allocate nothing themselves): the growth of the resident set would hide
    buffers placed in heap pages that loading the data had freed.
    """
    result = {}
    for name in ("W1", "W3"):
        for implementation in ("numpy", "numba"):
            code = MEMORY_CHILD.format(
                here=str(Path(__file__).parent), name=name, implementation=implementation
            )
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            ).stdout
            result[f"{name} {implementation}"] = json.loads(out)["peak_mb"]
    return result


def core_to_core_line(rows) -> list[str]:
    """A line that says how far apart the two CPUs were during the timed runs."""
    measured = [ns for row in rows for ns in row.get("core_to_core_ns", []) if ns is not None]
    if not measured:
        return []
    return [
        f"Between two CPUs, a write took {min(measured):.0f} to {max(measured):.0f} ns "
        f"(median {statistics.median(measured):.0f}) to be seen, measured before each "
        "timed run (see core_to_core_ns).",
        "",
    ]


def markdown(report: dict) -> str:
    """The report as text: the machine, the table, then whichever of the thread,
    start-up and memory sections it holds."""
    m = report["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads, {m['system']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
        f"NumPy matrix product at W1's shape: {report['gemm_gflops']['float64']:.0f} GFLOP/s "
        f"float64, {report['gemm_gflops']['float32']:.0f} GFLOP/s float32.",
        "",
        *core_to_core_line(report["workloads"]),
        "| workload | implementation | dtype | time (s, median) | vs NumPy ref | vs PyTorch "
        "| accuracy | GFLOP/s (dense-equivalent) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["workloads"]:
        if "seconds" not in row:
            lines.append(
                f"| {row['workload']} | {row['implementation']} | {row['dtype']} "
                f"| {row['note']} | | | | |"
            )
            continue
        vs_torch = f"{row['vs_torch']:.2f}x" if "vs_torch" in row else ""
        lines.append(
            f"| {row['workload']} | {row['implementation']} | {row['dtype']} "
            f"| {row['seconds']:.3f} | {row['vs_numpy']:.2f}x | {vs_torch} "
            f"| {row['accuracy']:.2%} | {row['gflops']:.1f} |"
        )
    for case, t in report.get("threads", {}).items():
        lines.append(
            f"\n{case}, {max(t['seconds'])} threads against 1: {t['speed_up']:.2f}x; "
            f"weights bitwise identical: {t['bitwise_identical']}."
        )
    if "startup" in report:
        s = report["startup"]
        lines.append(
            "\nStart-up: cold compile of the kernels a training run uses "
            f"{s['cold']['first_step']:.1f} s "
            f"(every kernel, both dtypes: {s['cold']['all_kernels']:.1f} s); a second "
            f"process imports in {s['cached']['import']:.2f} s and finishes its first step "
            f"{s['cached']['first_step']:.2f} s later."
        )
    if "memory" in report:
        lines.append(
            "\nPeak memory a training run allocates (MB, traced): "
            + ", ".join(f"{k} {v:.1f}" for k, v in report["memory"].items())
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", default="W1,W2,W3")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--markdown", help="write the table here")
    args = parser.parse_args()
    report = {"machine": machine()}
    print(f"Machine: {report['machine']['cpu']}, {report['machine']['threads']} threads")
    report["gemm_gflops"] = {"float64": gemm_rate(np.float64), "float32": gemm_rate(np.float32)}
    report["workloads"] = time_workloads(args.rounds, args.workloads.split(","))
    report["threads"] = thread_scaling()
    with tempfile.TemporaryDirectory() as cache:
        report["startup"] = {
            "cold": startup.measure(cache, all_kernels=True),
            "cached": startup.measure(cache, all_kernels=False),
        }
    report["memory"] = peak_memory()
    text = markdown(report)
    print()
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
