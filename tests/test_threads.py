"""The BLAS thread policy: what it picks, that fit applies it only while training, the override, the reports."""

import numpy as np
import pytest

from fastnn import ConfigError, Network
from fastnn import threads as thread_policy

from .conftest import fastnn


@pytest.fixture
def blas():
    """numpy's BLAS (threadpoolctl finds it in every numpy wheel) at 2 threads, restored afterwards."""
    before = thread_policy.blas_threads()
    assert before is not None, "threadpoolctl found no BLAS"
    thread_policy.set_blas_threads(2)
    yield thread_policy.blas_threads()
    thread_policy.set_blas_threads(before)


def test_step_flops_by_hand():
    # 3-4-2, batch 5: forward 2*5*(12 + 8), weight gradients the same, backward into the hidden layer 2*5*8
    assert thread_policy.step_flops((3, 4, 2), 5) == 480
    assert thread_policy.step_flops((784, 30, 10), 10) == 958800


@pytest.fixture
def idle(monkeypatch):
    """A machine with no other work: the 1-minute load average is 0."""
    monkeypatch.setattr(thread_policy.os, "getloadavg", lambda: (0.0, 0.0, 0.0))


def test_the_policy(blas, idle):
    small, large = ((784, 30, 10), 10), ((784, 1024, 1024, 10), 256)
    assert thread_policy.step_flops(*small) < thread_policy.SPLIT_FLOPS <= thread_policy.step_flops(*large)
    assert thread_policy.choose(*small) == 1
    own = thread_policy.choose(*large)
    assert own is None or own == thread_policy.cores() < blas  # idle: the BLAS's own count (or every core)
    assert thread_policy.choose(*small, threads=3) == 3 and thread_policy.choose(*large, threads=1) == 1
    assert thread_policy.choose(*small, on_gpu=True) is None  # a GPU's GEMMs are not the host BLAS's


@pytest.mark.parametrize("load, cores, idle_cores", [
    (0.0, 16, 16), (1.0, 16, 16), (5.0, 16, 12), (15.5, 16, 1), (40.0, 16, 1), (1.5, 2, 1), (0.4, 2, 2)])
def test_threads_follow_the_load(monkeypatch, load, cores, idle_cores):
    monkeypatch.setattr(thread_policy, "cores", lambda: cores)
    monkeypatch.setattr(thread_policy, "blas_threads", lambda: cores)
    large = ((784, 256, 128, 10), 64)  # the network: 64 MFLOP a step
    assert thread_policy.idle_cores(load) == idle_cores
    assert thread_policy.choose(*large, load=load) == (None if idle_cores == cores else idle_cores)


def test_the_same_seed_and_thread_count_give_the_same_weights():
    rng = np.random.default_rng(0)
    X, y = rng.random((512, 784), dtype=np.float32), rng.integers(0, 10, 512)
    runs = []
    for _ in range(2):
        net = Network([784, 256, 128, 10], activation="relu", device="cpu", seed=3)
        net.fit(X, y, epochs=1, batch_size=64, threads=2, engine="generic")
        runs.append(net.params.copy())
    np.testing.assert_array_equal(runs[0], runs[1])


def test_limited_sets_every_blas_and_restores_it(blas):
    with thread_policy.limited(1):
        assert [lib["threads"] for lib in thread_policy.libraries()] == [1] * len(thread_policy.libraries())
    assert thread_policy.blas_threads() == blas
    with thread_policy.limited(None):
        assert thread_policy.blas_threads() == blas


@pytest.mark.parametrize("sizes, threads, inside", [
    ([20, 8, 3], None, 1),  # a small step: one thread
    ([20, 8, 3], 2, 2),  # --threads overrides
    ([784, 1024, 1024, 10], None, "own"),  # large enough to split: the BLAS's own count
    ([784, 1024, 1024, 10], 1, 1),
])
def test_fit_applies_it_while_training_only(blas, idle, sizes, threads, inside):
    rng = np.random.default_rng(0)
    m = 10 if sizes[0] == 20 else 256
    X, y = rng.random((m, sizes[0]), dtype=np.float32), rng.integers(0, sizes[-1], m)
    seen = []
    net = Network(sizes, device="cpu", seed=0)
    net.fit(X, y, epochs=2, batch_size=m, lr=0.1, threads=threads,
            callback=lambda record: seen.append(thread_policy.blas_threads()))
    assert seen == [blas if inside == "own" else inside] * 2
    assert thread_policy.blas_threads() == blas  # the user's numpy is as it was


def test_fit_restores_the_threads_when_training_fails(blas):
    net = Network([4, 3, 2], device="cpu", seed=0)
    X, y = np.ones((6, 4), np.float32), np.array([0, 1] * 3)

    def stop(record):
        assert thread_policy.blas_threads() == 1
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, epochs=3, batch_size=2, lr=0.1, callback=stop)
    assert thread_policy.blas_threads() == blas


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_fit_refuses_bad_threads(bad):
    net = Network([4, 3, 2], device="cpu", seed=0)
    with pytest.raises(ConfigError, match=r"threads must be an integer >= 1; got"):
        net.fit(np.ones((2, 4), np.float32), [0, 1], epochs=1, batch_size=2, lr=0.1, threads=bad)


def test_cli_train_threads(tiny):
    run = fastnn("train", "--dataset", tiny, "--layers", "4,8,3", "--epochs", "1", "--threads", "1", "--seed", "1")
    assert run.returncode == 0 and "test: loss" in run.stdout, run.stderr
    bad = fastnn("train", "--dataset", tiny, "--layers", "4,8,3", "--threads", "0")
    assert bad.returncode == 2 and bad.stderr == "fastnn: error: --threads must be an integer >= 1; got 0\n"


def test_info_reports_the_blas_and_the_policy():
    run = fastnn("info", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    lines = dict(line.split(": ", 1) for line in run.stdout.splitlines())
    assert int(lines["blas_threads"]) >= 1
    assert "threads)" in lines["blas_libraries"]  # e.g. "openblas 0.3.31 (pthreads, 2 threads) libscipy_openblas..."
    assert lines["blas threads policy"].startswith("1 BLAS thread while training when a step's GEMMs are under")
