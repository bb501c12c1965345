"""Shared fixtures: the backends to run numeric tests on, and the real MNIST test set."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastnn.backend import get_backend
from fastnn.errors import BackendUnavailable

ROOT = Path(__file__).resolve().parent.parent
MNIST_DIR = Path(os.environ.get("FASTNN_TEST_MNIST", ROOT.parent / "shared" / "data" / "mnist"))
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def cuda_reason():
    """None when a CUDA backend is usable, else why not."""
    try:
        get_backend("cuda")
    except BackendUnavailable as e:
        return str(e)
    return None


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    """Each numeric test runs on the CPU and, when one works, on a CUDA GPU."""
    if request.param == "cuda":
        reason = cuda_reason()
        if reason:
            pytest.skip(f"no CUDA device: {reason}")
    return request.param


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST test set as (X, y): 10,000 rows of 784 floats in [0, 1]."""
    from fastnn.data import read_idx_pair

    images, labels = MNIST_DIR / "t10k-images-idx3-ubyte.gz", MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    if not images.exists():
        pytest.skip(f"the MNIST test set is not at {MNIST_DIR} (set FASTNN_TEST_MNIST)")
    return read_idx_pair(images, labels)


def fastnn(*args, env=None, timeout=300, cwd=None):
    """Run the fastnn command on the CPU as a user would; returns the CompletedProcess."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    full_env = {**os.environ, "FASTNN_DEVICE": "cpu", "PYTHONPATH": path, **(env or {})}
    return subprocess.run([sys.executable, "-m", "fastnn", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, check=False, cwd=cwd)


@pytest.fixture
def tiny(tmp_path):
    """A small, learnable 3-class problem in a user .npz."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 4)) * 3
    y = rng.integers(0, 3, 300)
    X = centers[y] + rng.normal(size=(300, 4))
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=X[:240], y_train=y[:240], x_test=X[240:], y_test=y[240:])
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
