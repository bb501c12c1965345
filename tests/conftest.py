"""Shared fixtures: the backends to run numeric tests on, and the real MNIST test set.

GPU tests may not pass by skipping: with FASTNN_REQUIRE_GPU=1, or on a machine with an NVIDIA
driver loaded, a ``gpu``-marked test that skips fails instead, with the reason.  The one exception is
an environment skip: a test marked with one of ENV_NEEDS (needs_mnist, needs_mpirun, multi_gpu) that
skips through ``env_skip`` for that need, whose reason starts "ENV-SKIP <marker>:"; the device check
(bench/gpu_check_report.py junit) reports those as ENV-SKIP and fails on any other skip.

FASTNN_TEST_DEADLINE (seconds since the epoch): tests that would start after it skip with "not run:
the deadline passed", so that a time-boxed run (the device check's pytest step) still ends and writes
its junit XML; the device check counts those as failures.

The MNIST test set is read from FASTNN_TEST_MNIST, else tests/data/mnist (git-ignored; ``bash
bench/gpu_check.sh --stage-mnist`` copies it there, so that it travels with a checkout), else
../shared/data/mnist.

The CUDA branches run on every machine through the cupy test double (tests/cupy_double, its
README says what it cannot prove): the ``cupy_double`` fixture puts it in place of cupy for one
test; ``device`` runs each numeric test on "cuda-double" too; FASTNN_TEST_CUPY_DOUBLE=1 puts it
in place of cupy for the whole run (subprocesses included), so that ``pytest -m gpu`` runs every
GPU test on it.
"""

import contextlib
import importlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastnn import backend as backend_module
from fastnn import engines
from fastnn.backend import get_backend
from fastnn.errors import BackendUnavailable

ROOT = Path(__file__).resolve().parent.parent
STAGED_MNIST = ROOT / "tests" / "data" / "mnist"  # git-ignored: bash bench/gpu_check.sh --stage-mnist
MNIST_DIR = Path(os.environ.get("FASTNN_TEST_MNIST") or
                 (STAGED_MNIST if STAGED_MNIST.is_dir() else ROOT.parent / "shared" / "data" / "mnist"))
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CUPY_DOUBLE = ROOT / "tests" / "cupy_double"  # a numpy-backed cupy, importable as cupy
CUPY_ABSENT = ROOT / "tests" / "cupy_absent"  # a cupy whose import fails, as on a machine without it
DOUBLE_VARIABLES = ("CUPY_DOUBLE_GPUS", "CUPY_DOUBLE_NO_DRIVER", "CUPY_DOUBLE_MEMORY", "CUDA_VISIBLE_DEVICES",
                    "CUPY_DOUBLE_FAULT")
NVIDIA_DRIVER = (Path("/proc/driver/nvidia/version"), Path("/dev/nvidiactl"))
SESSION_DOUBLE = os.environ.get("FASTNN_TEST_CUPY_DOUBLE") == "1"
# Markers for what a test needs besides a GPU (registered in pyproject.toml): when it is missing, the
# test skips through env_skip and the device check reports an environment skip, not a failure.
ENV_NEEDS = {"needs_mnist": "the MNIST test set", "needs_mpirun": "Open MPI's mpirun and mpi4py",
             "multi_gpu": "a second GPU"}
ENV_SKIP = "ENV-SKIP"
DEADLINE_SKIP = "not run: the deadline passed"


def env_skip_reason(marker, why):
    """The skip reason of an environment skip for ``marker`` (one of ENV_NEEDS): "ENV-SKIP marker: why"."""
    assert marker in ENV_NEEDS, marker
    return f"{ENV_SKIP} {marker}: {why}"


def env_skip(marker, why):
    """Skip this test because the machine lacks what ``marker`` names; the test must carry that marker."""
    pytest.skip(env_skip_reason(marker, why))


def _skip_reason(report):
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ")


def is_env_skip(item, reason):
    """True when ``reason`` is an environment skip for a marker ``item`` carries."""
    if not reason.startswith(ENV_SKIP + " "):
        return False
    marker = reason[len(ENV_SKIP) + 1:].split(":", 1)[0]
    return marker in ENV_NEEDS and item.get_closest_marker(marker) is not None


def gpu_required():
    """Why a GPU test may not skip on this machine (one phrase), or None."""
    if os.environ.get("FASTNN_REQUIRE_GPU") == "1":
        return "FASTNN_REQUIRE_GPU=1"
    for path in NVIDIA_DRIVER:
        if path.exists():
            return f"an NVIDIA driver is loaded ({path} exists)"
    return None


@pytest.hookimpl(tryfirst=True)  # before pytest-randomly's, which reads its seed
def pytest_configure(config):
    """With FASTNN_TEST_ORDER_SEED=N (CI sets it), pytest-randomly shuffles by seed N, as ``--randomly-seed=N`` would:
    the order is still shuffled, and a red run can be replayed; an explicit ``--randomly-seed`` wins.  With
    FASTNN_REQUIRE_GPU=1, the cupy test double is refused."""
    seed = os.environ.get("FASTNN_TEST_ORDER_SEED")
    if seed and config.pluginmanager.hasplugin("randomly") and config.getoption("randomly_seed", "default") == "default":
        config.option.randomly_seed = int(seed)
    if os.environ.get("FASTNN_REQUIRE_GPU") != "1":
        return
    found = importlib.util.find_spec("cupy")
    if SESSION_DOUBLE or (found is not None and str(CUPY_DOUBLE) in str(found.origin)):
        raise pytest.UsageError("FASTNN_REQUIRE_GPU=1, but cupy here is the CPU test double (tests/cupy_double, "
                                "from FASTNN_TEST_CUPY_DOUBLE=1 or PYTHONPATH): a GPU test would prove nothing")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A ``gpu`` test that skips where a GPU is required fails instead, saying why it skipped."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or item.get_closest_marker("gpu") is None:
        return
    why = gpu_required()
    reason = _skip_reason(report)
    if why and not is_env_skip(item, reason):
        report.outcome = "failed"
        report.longrepr = f"this GPU test may not skip when {why}; it skipped: {reason}"


def pytest_runtest_setup(item):
    """Past FASTNN_TEST_DEADLINE, a test skips unrun (the device check counts it as a failure)."""
    deadline = os.environ.get("FASTNN_TEST_DEADLINE")
    if deadline and time.time() > float(deadline):
        pytest.skip(DEADLINE_SKIP)


def pytest_runtest_logreport(report):
    """With FASTNN_TEST_RECORD_SKIPS=FILE, append the id of each test that skipped to FILE: CI runs the README's
    test command with nothing extra installed, then installs the extras and runs these tests again (``@FILE``)."""
    record = os.environ.get("FASTNN_TEST_RECORD_SKIPS")
    if record and report.skipped and report.when in ("setup", "call") and _ours(report.nodeid):
        with open(record, "a") as f:
            f.write(report.nodeid + "\n")


def _ours(nodeid):
    """Whether ``nodeid`` is a test of this suite: a pytest that a test starts (the device check's tests do) inherits
    FASTNN_TEST_RECORD_SKIPS, and its own tests' ids mean nothing here."""
    path = nodeid.split("::")[0]
    return path.startswith("tests/") and (ROOT / path).exists()


def pytest_collectreport(report):
    """A whole module that skips (``pytest.importorskip`` at its top) is recorded too."""
    record = os.environ.get("FASTNN_TEST_RECORD_SKIPS")
    if record and report.skipped and report.nodeid and _ours(report.nodeid):
        with open(record, "a") as f:
            f.write(report.nodeid + "\n")


def path_with(*folders):
    """PYTHONPATH for a subprocess: ``folders``, the repository, then what it was."""
    parts = [str(f) for f in folders] + [str(ROOT), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


def double_env(**variables):
    """Environment for a subprocess in which ``import cupy`` gives the test double (see its README)."""
    return {"PYTHONPATH": path_with(CUPY_DOUBLE), **{k: str(v) for k, v in variables.items()}}


def absent_env():
    """Environment for a subprocess in which ``import cupy`` fails, whatever is installed."""
    return {"PYTHONPATH": path_with(CUPY_ABSENT)}


def _cupy_modules():
    return [name for name in sys.modules if name.split(".")[0] in ("cupy", "cupyx", "cupy_backends")]


@contextlib.contextmanager
def cupy_double_installed():
    """``import cupy`` gives the double inside; fastnn's backend forgets what it had found before and after."""
    saved = {name: sys.modules.pop(name) for name in _cupy_modules()}
    state = (backend_module._cupy, backend_module._cupy_error, dict(backend_module._cache))
    sys.path.insert(0, str(CUPY_DOUBLE))
    backend_module._cupy = backend_module._cupy_error = None
    backend_module._cache.clear()
    try:
        yield importlib.import_module("cupy")
    finally:
        sys.path.remove(str(CUPY_DOUBLE))
        for name in _cupy_modules():
            del sys.modules[name]
        sys.modules.update(saved)
        backend_module._cupy, backend_module._cupy_error = state[:2]
        backend_module._cache.clear()
        backend_module._cache.update(state[2])
        for key in [k for k in engines._verified if str(k[0]).startswith("cuda")]:
            del engines._verified[key]


@pytest.fixture
def cupy_double(monkeypatch):
    """The cupy test double in place of cupy for this test: one GPU with 16 GiB, driver present."""
    for name in DOUBLE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with cupy_double_installed() as cp:
        yield cp


if SESSION_DOUBLE:  # the whole run, subprocesses included, sees the double as cupy
    sys.path.insert(0, str(CUPY_DOUBLE))
    os.environ["PYTHONPATH"] = path_with(CUPY_DOUBLE)


def cuda_reason():
    """None when a CUDA backend is usable, else why not."""
    try:
        get_backend("cuda")
    except BackendUnavailable as e:
        return str(e)
    return None


def real_gpu_reason():
    """None when a real CUDA GPU is usable, else why not: the cupy test double runs no CUDA kernels
    (RawModule, ElementwiseKernel), and PyTorch or JAX see no GPU through it."""
    reason = cuda_reason()
    if reason is None and getattr(get_backend("cuda").xp, "is_test_double", False):
        return "cupy is the CPU test double, which runs no CUDA kernels and lends PyTorch and JAX no GPU"
    return reason


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu), "cuda-double"])
def device(request):
    """Each numeric test runs on the CPU, on a CUDA GPU when one works, and on the cupy test double."""
    if request.param == "cuda":
        reason = cuda_reason()
        if reason:
            pytest.skip(f"no CUDA device: {reason}")
    if request.param == "cuda-double":
        request.getfixturevalue("cupy_double")
        return "cuda"
    return request.param


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST test set as (X, y): 10,000 rows of 784 floats in [0, 1]."""
    from fastnn.data import read_idx_pair

    images, labels = MNIST_DIR / "t10k-images-idx3-ubyte.gz", MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    if not images.exists():
        env_skip("needs_mnist", f"the MNIST test set is not at {MNIST_DIR} (set FASTNN_TEST_MNIST, or run "
                                "bash bench/gpu_check.sh --stage-mnist)")
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


@pytest.fixture(autouse=True)
def fresh_engine_checks():
    """Every test starts with no engine verified: the process-wide record in ``engines._verified`` would
    otherwise make a test's result depend on which tests ran before it (verify runs, or not)."""
    engines._verified.clear()
    yield
    engines._verified.clear()
