"""Tests pass in any order: a test that trains the same kinds of network first changes nothing for the two
tests that once passed only when they were the first to verify an engine (issue 24)."""

import os
import subprocess
import sys

from .conftest import ROOT, path_with

PRIME = '''
import numpy as np
from fastnn import Network


def test_prime():
    """Verify the fused CPU engine for the networks and batch sizes that the two tests below train."""
    rng = np.random.default_rng(0)
    for sizes, batch in (([9, 6, 3], 4), ([3, 4, 2], 3), ([3, 4, 2], 7)):
        X, y = rng.normal(size=(40, sizes[0])), rng.integers(0, sizes[-1], 40)
        Network(sizes, device="cpu", seed=2).fit(X, y, epochs=1, batch_size=batch, lr=0.5)
'''


def test_tests_that_verify_engines_pass_after_a_test_that_verified_them(tmp_path):
    (tmp_path / "test_prime.py").write_text(PRIME)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
         "-c", str(ROOT / "pyproject.toml"), str(tmp_path / "test_prime.py"),
         str(ROOT / "tests" / "test_cpu_fused.py"), str(ROOT / "tests" / "test_train.py"),
         "-k", "prime or ctrl_c_after_the_compiled_epoch or workspaces_share_one_set_of_buffers and cpu"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": path_with()},
        timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "3 passed" in done.stdout, done.stdout[-3000:]
