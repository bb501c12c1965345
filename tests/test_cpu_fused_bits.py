"""Seeded training on the compiled CPU engines is bit-identical whatever their buffers' addresses (issue 24).

Each fresh process (``tests/fused_bits_worker.py``) trains 24 small networks three times, shifting
the heap before each fit by a different amount; every fit of a network must leave the same bytes
(weights, biases and the epochs' losses), within a process and across processes.  Before the fix,
a reassociated sum ran in vector or scalar code depending on how close two buffers lay, and about
1 fit in 8 processes differed in the last bit.  The blas engine is held to the same (one BLAS
thread: the thread policy's choice for these small networks).
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import ROOT


def _env():
    """This tree first on the worker's path (``python -m tests.fused_bits_worker`` from any folder)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def _hashes(shift, engine):
    run = subprocess.run([sys.executable, "-m", "tests.fused_bits_worker", str(shift), engine], capture_output=True,
                         text=True, env=_env(), timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    return [line.split() for line in run.stdout.splitlines()]


def assert_bit_identical(processes, engine):
    with ThreadPoolExecutor(2) as pool:  # two at a time: the machine has two cores
        runs = list(pool.map(_hashes, range(processes), [engine] * processes))
    first = runs[0]
    assert len(first) == 24 and all(len(fits) == 3 for fits in first)
    for i, fits in enumerate(first):
        assert len(set(fits)) == 1, f"network {i}: fits in one process differ: {fits}"
    for shift, run in enumerate(runs[1:], 1):
        assert run == first, f"process {shift} differs from process 0"


@pytest.mark.parametrize("engine", ["fused", "blas"])
def test_seeded_fits_are_bit_identical_in_4_fresh_processes(engine):
    assert_bit_identical(4, engine)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fused", "blas"])
def test_seeded_fits_are_bit_identical_in_20_fresh_processes(engine):
    assert_bit_identical(20, engine)
