"""The first compile is announced and kept out of epoch 1's time; a bar and a line per epoch whatever the engine."""

import logging
import time

import numpy as np
import pytest

from fastnn import Network, engines, train
from fastnn.engines import cpu_blas, cpu_fused


def data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, 8), dtype=np.float32)
    return X, (X[:, 0] > X[:, 1]).astype(np.int64)


@pytest.fixture
def fused():
    if cpu_fused.available(Network([8, 2], device="cpu").backend):
        pytest.skip(f"the fused CPU engine is unavailable: {cpu_fused.available(Network([8, 2], device='cpu').backend)}")


@pytest.mark.parametrize(("engine", "name"), [("fused", "fused-cpu"), ("blas", "blas-cpu")])
def test_a_compiled_epoch_in_chunks_under_a_bar_gives_the_same_weights(fused, capsys, engine, name):
    X, y = data()
    runs = []
    for progress in (False, True):
        net = Network([8, 6, 2], activation="relu", device="cpu", seed=0)
        history = net.fit(X, y, epochs=2, batch_size=5, engine=engine, progress=progress)
        assert history.records[0]["engine"] == name
        runs.append((net.params.copy(), history.loss))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[1][1] == pytest.approx(runs[0][1], rel=1e-6)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("epoch ") and " - loss " in line]
    assert [line.split(" - ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]  # one line per epoch, Keras-like
    assert train.CHUNK_BATCHES * 5 < len(X)  # so the bar did move within the epoch: 3000 rows in chunks of 1000


def test_the_first_compile_is_announced_once(fused, monkeypatch, caplog):
    monkeypatch.setattr(cpu_fused, "compiled", lambda dtype: False)  # as on a machine with an empty numba cache
    X, y = data(300)
    with caplog.at_level(logging.WARNING, logger="fastnn"):
        Network([8, 6, 2], activation="relu", device="cpu", dtype="float64", seed=0).fit(X, y, epochs=1, batch_size=10,
                                                                                          engine="fused")
    said = [r.getMessage() for r in caplog.records if "compiling" in r.getMessage()]
    assert said == [("fastnn: compiling the fused CPU engine for float64 once, about 10 s; later runs load it from "
                     "the cache")]


def test_the_blas_engines_first_compile_is_announced_once(fused, monkeypatch, caplog):
    monkeypatch.setattr(cpu_blas, "compiled", lambda dtype: False)  # as on a machine with an empty numba cache
    X, y = data(300)
    with caplog.at_level(logging.WARNING, logger="fastnn"):
        Network([8, 6, 2], activation="relu", device="cpu", dtype="float64", seed=0).fit(X, y, epochs=1, batch_size=10)
    said = [r.getMessage() for r in caplog.records if "compiling" in r.getMessage()]
    assert said == [("fastnn: compiling the blas CPU engine for float64 once, about 10 s; later runs load it from "
                     "the cache")]


def test_after_a_blas_run_the_loop_counts_as_compiled(fused):
    X, y = data(300)
    Network([8, 6, 2], activation="relu", device="cpu", seed=0).fit(X, y, epochs=1, batch_size=10, engine="blas")
    assert cpu_blas.compiled("float32") is True


def test_after_a_fused_run_the_loop_counts_as_compiled(fused):
    X, y = data(300)
    Network([8, 6, 2], activation="relu", device="cpu", seed=0).fit(X, y, epochs=1, batch_size=10, engine="fused")
    assert cpu_fused.compiled("float32") is True


def test_the_engine_check_and_compile_are_not_epoch_1s_time(monkeypatch):
    """Where a first compile's time is booked, not how long anything takes: time.perf_counter is replaced by a
    count of the engine's first-use checks done so far, so an epoch's 'seconds' is the number of checks inside its
    timed span, which must be none.  No time is read or compared."""
    checks = [0]
    real = engines.verify

    def counting(*args):  # the check (and a first compile) on the engine's first use
        checks[0] += 1
        return real(*args)

    monkeypatch.setattr(time, "perf_counter", lambda: float(checks[0]))
    monkeypatch.setattr(engines, "verify", counting)
    X, y = data(300)
    history = Network([8, 6, 2], activation="relu", device="cpu", seed=0).fit(X, y, epochs=2, batch_size=10)
    assert checks[0] >= 1  # the check ran
    assert all(r["seconds"] == 0 for r in history.records)  # and in no epoch's span
