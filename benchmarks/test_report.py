"""The report script runs end to end on the smallest workload, so it cannot rot.

Its timings are not checked (no test asserts a timing); its table is.
"""

import json
import os

import numpy as np
import report


def test_report_tables_every_implementation_of_a_workload():
    result = {
        "machine": report.machine(),
        "gemm_gflops": {"float64": report.gemm_rate(np.float64, rounds=2)},
        "workloads": report.time_workloads(1, ["W2"]),
    }
    result["gemm_gflops"]["float32"] = report.gemm_rate(np.float32, rounds=2)
    json.dumps(result, default=str)  # what --json writes
    text = report.markdown(result)
    for implementation, dtype in report.IMPLEMENTATIONS:
        assert f"| W2 | {implementation} | {np.dtype(dtype).name} |" in text
    rows = {(r["implementation"], r["dtype"]): r for r in result["workloads"]}
    reference = rows[("numpy", "float64")]
    assert reference["vs_numpy"] == 1.0
    for row in rows.values():
        if "seconds" in row and row["implementation"] != "sklearn":  # sklearn: its own init
            assert abs(row["accuracy"] - reference["accuracy"]) < 0.01  # same training
        elif "seconds" not in row:
            assert row["note"].endswith("is not installed")


def test_thread_scaling_compares_one_thread_with_the_default_on_each_dtype():
    result = report.thread_scaling(["W2"], scale=0.03, rounds={"W2": 1})
    assert set(result) == {"W2 float64", "W2 float32"}
    for case in result.values():
        assert case["bitwise_identical"]  # whatever the thread count
        assert 1 in case["seconds"] and case["speed_up"] > 0
        assert len(case["core_to_core_ns"]) == len(case["seconds"])
    machine_only = {"machine": report.machine(), "gemm_gflops": {"float64": 1, "float32": 1}}
    text = report.markdown({**machine_only, "workloads": [], "threads": result})
    assert "W2 float32, " in text and "weights bitwise identical: True" in text


def test_core_to_core_latency_is_measured_between_two_cpus():
    cpus = os.sched_getaffinity(0)
    ns = report.core_to_core_ns(rounds=2000)
    assert os.sched_getaffinity(0) == cpus  # the calling thread is unpinned again
    if len(cpus) < 2:
        assert ns is None
    else:  # None only if another program kept the other CPU busy throughout
        assert ns is None or 1 < ns < 1e6


def test_a_side_left_without_answers_gives_up():
    flag = np.zeros(8, np.int64)
    assert not report._bounce(flag, 3, True)  # nobody answers: stops after SPIN_LIMIT looks
    assert flag[1] == 1  # and tells the other side to stop too
