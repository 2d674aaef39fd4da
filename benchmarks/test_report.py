"""The report script runs end to end on the smallest workload, so it cannot rot.

Its timings are not checked (no test asserts a timing); its table is.
"""

import json

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
