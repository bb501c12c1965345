"""GPU tests cannot pass by skipping, and the device check (bench/gpu_check.sh) fails cleanly here."""

import os
import subprocess
import sys

import pytest

from .conftest import ROOT, absent_env, double_env, gpu_required

SCRIPT = ROOT / "bench" / "gpu_check.sh"
ONE_GPU_TEST = "tests/test_backend.py::test_cuda_backend_round_trip"


def pytest_run(*args, env):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False, env={**os.environ, **env})


def test_require_gpu_turns_a_skip_into_a_failure():
    run = pytest_run("-m", "gpu", ONE_GPU_TEST, env={**absent_env(), "FASTNN_REQUIRE_GPU": "1"})
    assert run.returncode == 1, run.stdout
    assert "this GPU test may not skip when FASTNN_REQUIRE_GPU=1; it skipped: no CUDA device: cupy cannot be " \
           "imported" in run.stdout, run.stdout
    if gpu_required() is None:  # a machine without an NVIDIA driver: without the variable, it skips
        run = pytest_run("-m", "gpu", ONE_GPU_TEST, env={**absent_env(), "FASTNN_REQUIRE_GPU": "0"})
        assert run.returncode == 0 and "1 skipped" in run.stdout, run.stdout


def test_require_gpu_refuses_the_cupy_double():
    for env in (double_env(FASTNN_REQUIRE_GPU=1), {"FASTNN_TEST_CUPY_DOUBLE": "1", "FASTNN_REQUIRE_GPU": "1"}):
        run = pytest_run("-m", "gpu", ONE_GPU_TEST, env=env)
        assert run.returncode == 4, run.stdout + run.stderr  # a usage error
        assert "cupy here is the CPU test double" in run.stderr


def check(tmp_path, env):
    results = tmp_path / "results"
    run = subprocess.run(["bash", str(SCRIPT), str(results)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, check=False,
                         env={**os.environ, "PYTHON": sys.executable, "GPU_CHECK_INSTALL": "0",
                              "GPU_CHECK_BENCH": "--quick --configs textbook --impl fastnn", **env})
    steps = dict(line.split(" ", 1) for line in (results / "steps.txt").read_text().splitlines())
    return run, results, {name: text.split()[0] for name, text in steps.items()}


def test_script_is_valid_bash_and_needs_a_folder():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False).returncode == 0
    run = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert run.returncode == 2 and "usage: bash bench/gpu_check.sh RESULTS_DIR" in run.stderr


@pytest.mark.slow
def test_script_without_a_gpu_runs_every_step_and_fails(tmp_path):
    run, results, steps = check(tmp_path, absent_env())
    assert run.returncode == 1, run.stdout
    assert list(steps) == ["facts", "info", "pytest-gpu", "no-sync", "cpu-equals-gpu", "bench"]
    assert all(status != "exit=0" for status in steps.values()), steps
    assert "cupy cannot be imported" in (results / "info.log").read_text()
    assert "gpu_check: FAILED: cupy cannot be imported" in (results / "no-sync.log").read_text()
    assert "may not skip when FASTNN_REQUIRE_GPU=1" in (results / "pytest-gpu.log").read_text()


@pytest.mark.slow
def test_script_on_the_cupy_double_passes_its_python_steps(tmp_path):
    run, results, steps = check(tmp_path, double_env())
    assert run.returncode == 1, run.stdout  # the double is not a GPU: the test suite refuses it
    assert steps["pytest-gpu"] != "exit=0" and steps["facts"] != "exit=0"  # no nvidia-smi here
    for name in ("info", "no-sync", "cpu-equals-gpu", "bench"):
        assert steps[name] == "exit=0", (name, (results / f"{name}.log").read_text())
    assert "gpu: cupy test double" in (results / "info.log").read_text()
    assert (results / "bench-cuda.json").exists()
