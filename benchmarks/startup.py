"""Compile and start-up times: a cold process compiles, a second one loads the cache.

    python benchmarks/startup.py [--json PATH]

Each measurement runs in a fresh process with an empty ``NUMBA_CACHE_DIR``
(then the same one again), and reports:

* ``import``: ``import fastmlp``;
* ``first_step``: from calling ``fastmlp.train`` to the end of its first
  full-batch step on MNIST-shaped data (784 inputs, 64 hidden, 10 classes) -
  in the cold process this is the compilation of every kernel training uses;
* ``all_kernels``: (cold only) compiling the rest: the mini-batch variants,
  float32 and the standalone elementwise kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = """
import json, time
t0 = time.perf_counter()
import numpy as np
import fastmlp
t1 = time.perf_counter()
rng = np.random.default_rng(0)
X = rng.random((200, 784)); X[X < 0.81] = 0
y = rng.integers(0, 10, 200)
t2 = time.perf_counter()
fastmlp.train(X, y, iterations=0, log_every=None)
t3 = time.perf_counter()
result = {"import": t1 - t0, "first_step": t3 - t2}
if ALL:
    from fastmlp import kernels
    fastmlp.train(X, y, iterations=1, batch_size=32, log_every=None)
    for dtype in (np.float32,):
        Xd = X.astype(dtype)
        fastmlp.train(Xd, y, iterations=1, log_every=None)
        fastmlp.train(Xd, y, iterations=1, batch_size=32, log_every=None)
    for dtype in (np.float64, np.float32):
        Z = rng.normal(size=(4, 4)).astype(dtype)
        for k in (kernels.sigmoid, kernels.sigmoid_deriv, kernels.softmax):
            k(Z, np.empty_like(Z))
    result["all_kernels"] = time.perf_counter() - t2
print(json.dumps(result))
"""


def measure(cache_dir: str, all_kernels: bool) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    code = CHILD.replace("ALL", repr(all_kernels), 1)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cold = measure(cache, all_kernels=True)
        warm = measure(cache, all_kernels=False)
    result = {"cold": cold, "cached": warm}
    print(
        f"cold process:   import {cold['import']:.2f} s, compile + first step "
        f"{cold['first_step']:.2f} s, every kernel {cold['all_kernels']:.2f} s"
    )
    print(f"cached process: import {warm['import']:.2f} s, first step {warm['first_step']:.2f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
