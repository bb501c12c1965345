"""The device check (bench/gpu_check.sh): GPU tests cannot pass by skipping, environment skips are told apart,
the junit verdict, and the whole script rehearsed on this machine without a GPU (GPU_CHECK_REHEARSAL=1)."""

import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from bench import gpu_check_report as report
from fastnn import engines

from .conftest import ROOT, absent_env, double_env, gpu_required

SCRIPT = ROOT / "bench" / "gpu_check.sh"
ONE_GPU_TEST = "tests/test_backend.py::test_cuda_backend_round_trip"
STATUSES = {"PASS", "FAIL", "ENV-SKIP", "NEEDS-GPU"}


def pytest_run(*args, env, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, **env})


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


ENV_SKIP_TESTS = '''
import pytest
from tests.conftest import env_skip, env_skip_reason


@pytest.mark.gpu
@pytest.mark.needs_mpirun
@pytest.mark.skipif(True, reason=env_skip_reason("needs_mpirun", "no mpirun here"))
def test_marked_skipif_environment_skip():
    pass


@pytest.mark.gpu
@pytest.mark.needs_mnist
def test_marked_environment_skip():
    env_skip("needs_mnist", "no MNIST here")


@pytest.mark.gpu
def test_environment_skip_without_its_marker():
    env_skip("needs_mnist", "no MNIST here")


@pytest.mark.gpu
@pytest.mark.needs_mpirun
def test_marked_but_skips_for_another_reason():
    pytest.skip("no CUDA device")
'''


def test_an_environment_skip_stays_a_skip_and_only_when_marked(tmp_path):
    """Under FASTNN_REQUIRE_GPU=1 a GPU test's skip fails, unless it is an environment skip (pytest.skip or a skipif
    mark) for a marker it carries; the junit verdict reports those as ENV-SKIP and fails the step for the other two."""
    (tmp_path / "test_env.py").write_text(ENV_SKIP_TESTS)
    xml = tmp_path / "out.xml"
    run = pytest_run("-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), "-p", "tests.conftest",
                     "--junitxml", str(xml), str(tmp_path / "test_env.py"),
                     env={**absent_env(), "FASTNN_REQUIRE_GPU": "1"})
    assert "2 failed, 2 skipped" in run.stdout, run.stdout + run.stderr
    status, note, env = report.verdict(xml)
    assert status == report.FAIL and "2 failed" in note
    assert [name.split("::")[-1] for name, _ in env["needs_mnist"]] == ["test_marked_environment_skip"]
    assert report.env_lines(env) == ["pytest:needs_mnist ENV-SKIP 0 1 test(s): no MNIST here",
                                     "pytest:needs_mpirun ENV-SKIP 0 1 test(s): no mpirun here"]


def test_the_mnist_tests_skip_for_the_environment_where_mnist_is_missing(tmp_path):
    xml = tmp_path / "out.xml"
    run = pytest_run("-m", "gpu or needs_mnist", "tests/test_train.py", "tests/test_data.py", "-k", "mnist",
                     "--junitxml", str(xml),
                     env={**absent_env(), "FASTNN_REQUIRE_GPU": "1", "FASTNN_TEST_MNIST": str(tmp_path / "none")})
    assert run.returncode == 0, run.stdout  # every one an environment skip: none fails
    status, note, env = report.verdict(xml)
    assert status == report.PASS and set(env) == {"needs_mnist"} and len(env["needs_mnist"]) >= 7, note


def junit(tmp_path, cases):
    path = tmp_path / "junit.xml"
    path.write_text(f'<testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>')
    return path


ENV = '<skipped message="ENV-SKIP needs_mpirun: mpirun is not installed"/>'
DOUBLE = '<skipped message="no real CUDA device: cupy is the CPU test double"/>'
DEADLINE = '<skipped message="not run: the deadline passed"/>'


@pytest.mark.parametrize("cases, rehearsal, status, words", [
    (f'<testcase classname="t" name="a"/><testcase classname="t" name="b">{ENV}</testcase>', False, report.PASS,
     "1 passed, 1 environment skips (needs_mpirun)"),
    (f'<testcase classname="t" name="a">{DOUBLE}</testcase>', False, report.FAIL,
     "1 skipped without an environment reason"),
    (f'<testcase classname="t" name="a">{DOUBLE}</testcase>', True, report.NEEDS_GPU, "1 need a real GPU"),
    ('<testcase classname="t" name="a"><failure message="assert 1 == 2"/></testcase>', True, report.FAIL,
     "1 failed (first: t::a: assert 1 == 2)"),
    ('<testcase classname="t" name="a"><error message="failed on setup"/></testcase>', False, report.FAIL, "1 failed"),
    (f'<testcase classname="t" name="a"/><testcase classname="t" name="b">{DEADLINE}</testcase>', False, report.FAIL,
     "1 not run: the step's deadline passed"),
    ("", False, report.FAIL, "0 passed"),
])
def test_the_junit_verdict(tmp_path, cases, rehearsal, status, words):
    got, note, _ = report.verdict(junit(tmp_path, cases), rehearsal)
    assert got == status and words in note, note


def test_no_junit_xml_is_a_failure(tmp_path):
    status, note, _ = report.verdict(tmp_path / "missing.xml")
    assert status == report.FAIL and note.startswith("no junit XML")


def test_past_the_deadline_tests_skip_unrun_and_the_junit_xml_is_written(tmp_path):
    xml = tmp_path / "out.xml"
    run = pytest_run(ONE_GPU_TEST, "tests/test_gpu_check.py::test_no_junit_xml_is_a_failure", "--junitxml", str(xml),
                     env={**absent_env(), "FASTNN_TEST_DEADLINE": "0"})
    assert "2 skipped" in run.stdout, run.stdout
    status, note, _ = report.verdict(xml)
    assert status == report.FAIL and "2 not run: the step's deadline passed" in note, note


def test_script_is_valid_bash_and_needs_a_folder():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False).returncode == 0
    for args in ([], ["a", "b"], ["--bogus"]):
        run = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, check=False)
        assert run.returncode == 2 and run.stderr == "usage: bash bench/gpu_check.sh OUT_DIR | --stage-mnist [FROM]\n"


def test_stage_mnist_copies_the_test_set_into_a_git_ignored_folder(tmp_path):
    (tmp_path / "bench").mkdir()
    script = shutil.copy(SCRIPT, tmp_path / "bench")  # stages into tmp_path/tests/data/mnist, not this checkout
    source = tmp_path / "from"
    source.mkdir()
    run = subprocess.run(["bash", script, "--stage-mnist", str(source)], capture_output=True, text=True, check=False)
    assert run.returncode == 2 and "has no t10k-images-idx3-ubyte.gz (the MNIST test set)" in run.stderr
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (source / name).write_bytes(gzip.compress(name.encode()))
    for _ in range(2):  # staging again replaces the staged copy
        run = subprocess.run(["bash", script, "--stage-mnist", str(source)], capture_output=True, text=True,
                             check=False)
        assert run.returncode == 0, run.stderr
    staged = tmp_path / "tests" / "data" / "mnist"
    assert sorted(p.name for p in (tmp_path / "tests" / "data").iterdir()) == ["mnist"]  # no staging folder left
    assert gzip.decompress((staged / "t10k-labels-idx1-ubyte.gz").read_bytes()) == b"t10k-labels-idx1-ubyte.gz"
    ignored = subprocess.run(["git", "check-ignore", "-q", "tests/data/mnist/t10k-images-idx3-ubyte.gz"], cwd=ROOT,
                             check=False)
    assert ignored.returncode == 0  # git-ignored in this repository


def rehearse(tmp_path, **env):
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(SCRIPT), str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         check=False, env={**os.environ, "PYTHON": sys.executable, "GPU_CHECK_REHEARSAL": "1", **env})
    lines = (out / "summary.txt").read_text().splitlines()
    steps = {}
    for line in lines:
        if not line.startswith(("#", "headline: ")):
            name, status, seconds, *_ = line.split(" ", 3) + [""]
            assert status in STATUSES and seconds.isdigit(), line
            steps[name] = status
    return run, out, lines, steps


def test_a_planted_failure_fails_the_check(tmp_path):
    run, out, lines, steps = rehearse(tmp_path, GPU_CHECK_PLANT="cpu-equals-gpu",
                                      GPU_CHECK_ONLY="install,cpu-equals-gpu,no-sync")
    assert run.returncode == 1, run.stdout + run.stderr
    assert steps == {"install": "PASS", "no-sync": "NEEDS-GPU", "cpu-equals-gpu": "FAIL"}, lines
    failed = next(line for line in lines if line.startswith("cpu-equals-gpu FAIL"))
    assert "the GPU's step differs from the CPU's: float64 gap" in failed
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.tgz", "summary.txt"]


@pytest.mark.slow
def test_the_whole_rehearsal_returns_one_archive_and_no_failure(tmp_path):
    """CI's rehearsal: every step runs; at most 8 files (here: 2); every non-PASS line is ENV-SKIP or NEEDS-GPU; the
    archive holds every step's log, the junit XML, the bench JSON and chart and the fused-textbook numbers."""
    run, out, lines, steps = rehearse(tmp_path, FASTNN_TEST_MNIST=str(tmp_path / "no-mnist"))
    assert run.returncode == 0, "\n".join(lines) + run.stdout[-3000:] + run.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu-check.tgz", "summary.txt"] and len(files) <= 8
    names = ["install", "facts", "info", "pytest", "no-sync", "cpu-equals-gpu", "fused-textbook", "racecheck",
             "memcheck", "synccheck", "ncu", "bench"]
    assert [n for n in steps if ":" not in n] == names, steps
    assert steps["pytest:needs_mnist"] == "ENV-SKIP"  # MNIST hidden: the learning tests' skips are the machine's
    assert all(status in ("PASS", "ENV-SKIP", "NEEDS-GPU") for status in steps.values()), lines
    assert steps["fused-textbook"] == "NEEDS-GPU" and steps["facts"] == "NEEDS-GPU"
    assert any(line.startswith("headline: textbook 784-30-10 batch 10") and "fused-cpu" in line for line in lines)
    with tarfile.open(out / "gpu-check.tgz") as tar:
        held = {os.path.basename(name) for name in tar.getnames()}
    assert {f"{n}.log" for n in names} | {"pytest.xml", "bench-cuda.json", "fused-textbook.json", "summary.txt"} <= held
    assert lines[0].startswith("# fastnn device check") and "REHEARSAL" in lines[0]


# -- bench/gpu_check.py's fused-textbook check, on the CPU's fused engine (its rehearsal stand-in) -------------

def test_the_fused_textbook_check_runs_on_the_fused_engine_and_reports_both_engines(tmp_path):
    from bench import gpu_check

    lines = gpu_check.fused_textbook(rehearsal=True, examples=1500, results=tmp_path)
    assert "largest |fused - generic| / |step|" in lines[2] and lines[2].endswith("ok"), lines
    assert lines[-1].startswith("gpu_check: fused-cpu ") and "s/epoch, generic" in lines[-1]
    numbers = json.loads((tmp_path / "fused-textbook.json").read_text())
    assert numbers["fused"]["engines"] == ["fused-cpu"] and numbers["generic"]["engines"] == ["generic"]
    assert 0 <= numbers["step_gap"] <= gpu_check.STEP_TOLERANCE["float32"] and numbers["examples"] == 1500


def test_the_fused_textbook_check_catches_a_silent_fallback(monkeypatch):
    from bench import gpu_check

    monkeypatch.setattr(engines, "choose", lambda net, *args, **kwargs: engines.GenericEngine(net))
    with pytest.raises(gpu_check.CheckFailed, match=r"engine='fused' ran \['generic'\], not fused-cpu: a silent "):
        gpu_check.fused_textbook(rehearsal=True, examples=1500)


def test_the_fused_textbook_check_catches_a_wrong_step(monkeypatch):
    from bench import gpu_check

    monkeypatch.setenv("GPU_CHECK_PLANT", "fused-textbook")
    with pytest.raises(gpu_check.CheckFailed, match="the fused step differs from the generic step by"):
        gpu_check.fused_textbook(rehearsal=True, examples=1500)


NCU_DETAILS = """  fastnn_fused_epoch (1, 1, 1)x(512, 1, 1), Context 1, Stream 7, Device 0, CC 9.0
    Section: Launch Statistics
    Registers Per Thread             register/thread              64
    Achieved Occupancy                             %            3.12
    l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum                  1,234
    OPT   On average, each warp of this kernel spends 9.1 cycles being stalled waiting at a barrier.
"""


def test_the_headline_numbers(tmp_path):
    """The summary's headline: the fused textbook step, each bench result with its ratios, ncu's numbers."""
    (tmp_path / "fused-textbook.json").write_text(json.dumps({
        "device": "cuda:0", "examples": 60000, "batch": 10, "engine": "fused-cuda", "step_gap": 3e-6,
        "tolerance": 1e-4, "fused": {"seconds_per_epoch": 0.05}, "generic": {"seconds_per_epoch": 1.5}}))
    result = {"config": "textbook", "device": "cuda:0", "precision": "fp32", "median_s": 0.05}
    (tmp_path / "bench-cuda.json").write_text(json.dumps({"results": [
        {**result, "impl": "fastnn", "engine": "fused-cuda", "vs_torch": 40.0, "vs_torch_graph": 6.0, "vs_jax": 4.0},
        {**result, "impl": "jax", "median_s": 0.2}], "skipped": [
        {"config": "mid", "impl": "torch-graph", "device": "cuda:0", "reason": "why"}]}))
    (tmp_path / "ncu.log").write_text(NCU_DETAILS)
    lines = report.headline(tmp_path)
    assert lines == [
        ("headline: textbook 784-30-10 batch 10, 60000 examples on cuda:0: fused-cuda 0.0500 s/epoch, generic 1.5000 "
         "s/epoch (fused 30.0x faster); step gap 3e-06 (tolerance 0.0001)"),
        ("headline: bench textbook fastnn (fused-cuda) cuda:0 fp32: 0.0500 s/epoch; 40.00x vs torch, 6.00x vs "
         "torch-graph, 4.00x vs jax"),
        "headline: bench textbook jax cuda:0 fp32: 0.2000 s/epoch",
        "headline: bench mid torch-graph cuda:0 not run: why",
        ("headline: ncu, the fused launch: registers per thread 64 register/thread; achieved occupancy 3.12 %; "
         "shared-memory load bank conflicts 1,234; largest stall OPT On average, each warp of this kernel spends 9.1 "
         "cycles being stalled waiting at a barrier.")]
    assert report.headline(tmp_path / "none") == [
        "headline: no fused-textbook numbers (the step failed or did not run)",
        "headline: no bench JSON (the bench step failed or did not run)",
        "headline: no ncu numbers (ncu did not run, or read no counters)"]
