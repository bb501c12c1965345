"""Options and shared data for the pytest-benchmark suites in bench/.

    pytest bench --benchmark-json out.json                     # every config and implementation
    pytest bench -k "mid and fastnn" --bench-examples 10000    # a subset, on fewer examples
"""

import os

import pytest

from fastnn import bench
from fastnn.backend import get_backend
from fastnn.bench import machine
from fastnn.errors import BackendUnavailable


def pytest_addoption(parser):
    group = parser.getgroup("fastnn bench")
    group.addoption("--bench-examples", type=int, default=bench.EXAMPLES,
                    help="examples per epoch (default 60000, the Fashion-MNIST training set)")
    group.addoption("--bench-rounds", type=int, default=3, help="timed epochs per benchmark (default 3)")
    group.addoption("--bench-threads", type=int, default=os.cpu_count() or 1,
                    help="BLAS and PyTorch threads (default: the number of cores)")


@pytest.fixture(scope="session")
def data(request):
    """(X, y, description): Fashion-MNIST's training set when installed, else synthetic data."""
    return bench.load_data(request.config.getoption("--bench-examples"))


@pytest.fixture(scope="session", autouse=True)
def threads(request):
    """Pin numpy's BLAS and PyTorch's intra-op threads to the same count, once, for every suite."""
    n = request.config.getoption("--bench-threads")
    return bench._set_threads(n, bench.IMPLS)


@pytest.fixture(scope="session")
def rounds(request):
    return request.config.getoption("--bench-rounds")


def backend_for(device):
    """The backend for "cpu" or "cuda", or a skip that says why there is none."""
    try:
        return get_backend(device)
    except BackendUnavailable as e:
        pytest.skip(f"no GPU: {e}")


def pytest_benchmark_update_machine_info(config, machine_info):
    """--benchmark-json's machine_info gets fastnn's facts: CPU, BLAS and threads, versions, load."""
    machine_info["fastnn"] = machine.facts()
    machine_info["fastnn"]["loadavg"] = list(os.getloadavg())
