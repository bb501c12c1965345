"""Shared fixtures: the backends to run numeric tests on, and the real MNIST test set."""

import os
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


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
