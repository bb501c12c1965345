"""The blas CPU engine against its oracle, the generic engine: same seed and order, same weights.

Tolerances as for the fused CPU engine (tests/test_cpu_fused.py): relative to the largest
|parameter|, float64 1e-10 and float32 1e-4 (the gaps measured were ~1e-16 and ~1e-7).
"""

import re
import threading
import time

import numpy as np
import pytest

from fastnn import ConfigError, DivergenceError, Network, TrainState, engines, load_checkpoint, load_model, threads
from fastnn.engines import GenericEngine, choose, cpu_blas, cpu_fused, describe

from .conftest import fastnn
from .test_cpu_fused import RTOL, UPDATES, _combinations, _problem, _train
from .test_resume import TRAIN, interrupt_after


def assert_same_training(sizes, hidden, output, cost, dtype, update, **kw):
    momentum, l2 = UPDATES[update]
    generic, hg = _train("generic", sizes, hidden, output, cost, dtype, momentum, l2, **kw)
    blas, hb = _train("blas", sizes, hidden, output, cost, dtype, momentum, l2, **kw)
    assert [r["engine"] for r in hb.records] == ["blas-cpu"] * len(hb)  # not a fallback to generic
    want, got = generic.params.astype(np.float64), blas.params.astype(np.float64)
    assert np.isfinite(want).all()
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)
    np.testing.assert_allclose(hb.loss, hg.loss, rtol=RTOL[dtype])
    assert blas.params.dtype == np.dtype(dtype)


@pytest.fixture(params=[False, True], ids=["gather-inline", "gather-ahead"])
def ahead(request, monkeypatch):
    """Both ways of gathering a batch's inputs: in the epoch's loop, and ahead on a second thread."""
    monkeypatch.setattr(cpu_blas, "AHEAD", request.param)
    return request.param


@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("hidden, output, cost", _combinations())
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_same_weights_as_the_generic_engine(dtype, hidden, output, cost, update, ahead):
    """Three weight layers (BP2 twice), batches of 7, 7, 7, 2."""
    assert_same_training([9, 6, 5, 3], hidden, output, cost, dtype, update)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("sizes, batch_size", [([9, 3], 4), ([9, 8, 3], 1), ([1100, 5, 2], 6), ([4, 13, 9, 6, 4, 2], 16)])
def test_any_depth_width_and_batch(dtype, sizes, batch_size, ahead):
    """No hidden layer, batch 1, a wide input, five layers with a batch larger than the set's last."""
    assert_same_training(sizes, "tanh", "softmax", "log-likelihood", dtype, "momentum+l2", batch_size=batch_size)


def test_one_epoch_call_returns_the_summed_cost_and_updates_in_place():
    X, y = _problem()
    nets = [Network([9, 6, 3], device="cpu", dtype="float64", seed=1) for _ in range(2)]
    order = np.random.default_rng(0).permutation(23)
    costs = []
    for net, engine in zip(nets, (GenericEngine(nets[0]), cpu_blas.Engine(nets[1], 5))):
        Xd, Yd, _ = net._inputs(X, y)
        velocity = np.zeros_like(net.params)
        params = net.params
        costs.append(float(engine.epoch(Xd, Yd, order, 5, 0.3, 0.5, 0.1, velocity)))
        assert net.params is params and np.abs(velocity).max() > 0
    assert costs[1] == pytest.approx(costs[0], rel=1e-12)
    np.testing.assert_allclose(nets[1].params, nets[0].params, rtol=1e-12, atol=1e-12)


# -- the gather on a second thread ---------------------------------------------------


def _fit_with(monkeypatch, ahead, sizes, batch_size, dtype, **kw):
    monkeypatch.setattr(cpu_blas, "AHEAD", ahead)
    X, y = _problem()
    net = Network(sizes, activation="tanh", output="softmax", cost="log-likelihood", device="cpu", dtype=dtype,
                  seed=5)
    history = net.fit(X, y, epochs=3, batch_size=batch_size, lr=0.3, engine="blas", **kw)
    return net.params.tobytes(), history.loss


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("sizes, batch_size", [([9, 6, 3], 4), ([9, 6, 3], 1), ([9, 8, 5, 3], 7), ([9, 3], 30)])
def test_gathering_ahead_gives_the_same_bits(monkeypatch, dtype, sizes, batch_size):
    """The helper thread copies the same rows the epoch's own loop would: weights and costs equal bit for bit
    (an odd number of batches, a short last one, one batch bigger than the set)."""
    started = []
    real = cpu_blas.kernels().gather_ahead

    def counted(*args):
        started.append(1)
        return real(*args)

    monkeypatch.setattr(cpu_blas.kernels(), "gather_ahead", counted)
    inline = _fit_with(monkeypatch, False, sizes, batch_size, dtype, momentum=0.9, l2=1.0)
    assert not started
    ahead = _fit_with(monkeypatch, True, sizes, batch_size, dtype, momentum=0.9, l2=1.0)
    assert len(started) >= 3  # it ran: once an epoch at least (verify's steps too)
    assert ahead[0] == inline[0] and ahead[1] == inline[1]


def test_the_helper_thread_ends_when_the_epoch_fails(monkeypatch):
    def failing(*args):
        raise RuntimeError("the epoch failed")

    monkeypatch.setattr(cpu_blas, "AHEAD", True)
    X, y = _problem()
    net = Network([9, 6, 3], device="cpu", seed=0)
    Xd, Yd, _ = net._inputs(X, y)
    engine = cpu_blas.Engine(net, 2)
    monkeypatch.setattr(cpu_blas.kernels(), "epoch", failing)
    with threads.limited(1), pytest.raises(RuntimeError, match="the epoch failed"):
        engine.epoch(Xd, Yd, np.arange(23, dtype=np.int64), 2, 0.1, 0.0, 0.0, None)
    assert not [t for t in threading.enumerate() if t.name == "fastnn-gather"]


def test_a_failed_helper_thread_leaves_the_epoch_to_gather_on_its_own(monkeypatch):
    def failing(X, order, *args):
        if order.shape[0]:  # not the engine's empty call that loads it
            raise RuntimeError("the helper failed")

    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the thread's traceback is not this test's
    monkeypatch.setattr(cpu_blas.kernels(), "gather_ahead", failing)
    want = _fit_with(monkeypatch, False, [9, 6, 3], 4, "float64")
    assert _fit_with(monkeypatch, True, [9, 6, 3], 4, "float64") == want


def test_a_helper_that_falls_behind_is_stopped_and_the_epoch_gathers_on_its_own(monkeypatch):
    """As when another process holds the second core: the epoch gives up waiting, stops the helper, goes on."""
    k = cpu_blas.kernels()
    stopped = []

    def stalled(X, order, batch, n0, x, flags):
        if order.shape[0]:
            while flags[k.STOP] == 0:  # fills nothing until told to stop
                time.sleep(0.001)
            stopped.append(1)
            flags[k.DONE] = 1

    monkeypatch.setattr(k, "gather_ahead", stalled)
    want = _fit_with(monkeypatch, False, [9, 6, 3], 4, "float64")
    assert _fit_with(monkeypatch, True, [9, 6, 3], 4, "float64") == want
    assert len(stopped) >= 3  # once an epoch


def test_no_helper_thread_with_more_than_one_blas_thread_or_when_told(monkeypatch):
    started = []
    monkeypatch.setattr(cpu_blas.kernels(), "gather_ahead", lambda X, order, *args: order.shape[0] and started.append(1))
    X, y = _problem()
    net = Network([9, 6, 3], device="cpu", seed=0)
    Xd, Yd, _ = net._inputs(X, y)
    for ahead, blas_threads in ((True, 2), (False, 1)):
        monkeypatch.setattr(cpu_blas, "AHEAD", ahead)
        engine = cpu_blas.Engine(net, 4)
        with threads.limited(blas_threads):
            engine.epoch(Xd, Yd, np.arange(23, dtype=np.int64), 4, 0.1, 0.0, 0.0, None)
    assert not started


# -- which engine runs -------------------------------------------------------------


def test_auto_picks_blas_but_fused_for_small_batches_through_big_layers():
    """The measured rule (bench/results/cpu-2core-auto-rule.txt): blas-cpu, but fused-cpu for a batch of at most 16
    through a layer of over 1,000,000 multiply-adds a batch (OpenBLAS packs W there)."""
    small = Network([9, 6, 3], device="cpu", seed=0)
    textbook = Network([784, 30, 10], device="cpu", seed=0)
    big = Network([784, 300, 10], device="cpu", seed=0)  # 235,200 multiply-adds an example in its first layer
    assert choose(small, "auto", 10, 0.0, 0.0).name == "blas-cpu"
    assert choose(textbook, "auto", 10, 0.0, 0.0).name == "blas-cpu"
    assert choose(big, "auto", 4, 0.0, 0.0).name == "blas-cpu"  # 940,800: under the line
    assert choose(big, "auto", 5, 0.0, 0.0).name == "fused-cpu"  # 1,176,000: over it
    assert choose(big, "auto", 16, 0.0, 0.0).name == "fused-cpu"
    assert choose(big, "auto", 17, 0.0, 0.0).name == "blas-cpu"  # a batch above 16
    assert choose(big, "blas", 10, 0.0, 0.0).name == "blas-cpu"  # forced: it can run any network
    assert choose(small, "fused", 10, 0.0, 0.0).name == "fused-cpu"
    assert cpu_blas.slower(big, 4) is None and cpu_blas.slower(big, 17) is None
    assert cpu_blas.slower(big, 10) == ("784-300-10 at batch 10 has a layer of 2,352,000 multiply-adds a batch: above "
                                        "1,000,000 at batches of at most 16, fused-cpu is faster")
    assert describe(small.backend) == cpu_blas.RULE
    assert cpu_blas.RULE.startswith("auto picks blas-cpu (BLAS GEMMs, the rest compiled) for every network, except "
                                    "batches of at most 16 through a layer of over 1,000,000 multiply-adds a batch")


def test_blas_where_it_cannot_run(monkeypatch):
    """Unavailable: auto keeps fused-cpu's own rule (fused up to its size, generic above), a forced blas is refused
    in one sentence."""
    reason = "numpy's BLAS cannot be called from compiled code (ImportError: test)"
    monkeypatch.setattr(cpu_blas, "available", lambda backend: reason)
    big = Network([784, 300, 10], device="cpu", seed=0)
    assert choose(big, "auto", 10, 0.0, 0.0).name == "generic"
    assert choose(big, "auto", 64, 0.0, 0.0).name == "generic"
    assert choose(Network([784, 30, 10], device="cpu", seed=0), "auto", 10, 0.0, 0.0).name == "fused-cpu"
    with pytest.raises(ConfigError, match=r"^the blas engine cannot train this network: numpy's BLAS cannot be "
                                          r"called from compiled code \(ImportError: test\)$"):
        choose(big, "blas", 10, 0.0, 0.0)
    assert describe(big.backend) == cpu_fused.RULE


def test_the_command_line_trains_with_blas_and_names_it(tiny):
    run = fastnn("train", "--dataset", tiny, "--layers", "4,8,3", "--epochs", 2, "--seed", 1, "--engine", "blas")
    assert run.returncode == 0, run.stderr
    assert len(re.findall(r"^epoch \d/2: .*, cpu, blas-cpu engine$", run.stdout, re.MULTILINE)) == 2
    info = fastnn("info")
    assert re.search(r"^engine: auto picks blas-cpu \(BLAS GEMMs, the rest compiled\) for every network, except ",
                     info.stdout, re.MULTILINE), info.stdout


# -- what the trainer expects of it ------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_divergence_is_still_detected(dtype):
    X, y = _problem()
    X[0] *= 1e3
    net = Network([9, 6, 3], activation="relu", output="identity", device="cpu", dtype=dtype, seed=0)
    state = TrainState()
    with pytest.raises(DivergenceError, match="training diverged in epoch"):
        net.fit(X, y, epochs=50, batch_size=4, lr=50.0, state=state, engine="blas")
    assert [r["engine"] for r in state.history.records] == ["blas-cpu"] * state.epoch
    np.testing.assert_array_equal(net.params, state.params)


def test_resume_with_the_blas_engine_is_bit_identical(tmp_path):
    """3 epochs straight == 2 epochs, checkpoint, load, 1 more (momentum and L2: the velocity is saved too)."""
    X, y = _problem()
    kw = {"batch_size": 4, "lr": 0.3, "momentum": 0.9, "l2": 2.0, "engine": "blas"}
    make = lambda: Network([9, 6, 3], activation="tanh", output="softmax", cost="log-likelihood", device="cpu",
                           seed=11)
    straight = make()
    full = straight.fit(X, y, epochs=3, **kw)
    make().fit(X, y, epochs=2, checkpoint=tmp_path / "run", **kw)
    net, state = load_checkpoint(tmp_path / "run", device="cpu")
    resumed = net.fit(X, y, epochs=3, state=state, **kw)
    np.testing.assert_array_equal(net.params, straight.params)
    assert net.rng.bit_generator.state == straight.rng.bit_generator.state
    assert [r["loss"] for r in resumed.records] == [r["loss"] for r in full.records]
    assert {r["engine"] for r in resumed.records} == {"blas-cpu"}


def test_ctrl_c_after_the_compiled_epoch_keeps_the_last_completed_epoch(monkeypatch):
    X, y = _problem()
    net = Network([9, 6, 3], device="cpu", seed=2)
    state = TrainState()
    kernels = cpu_blas.kernels()
    real, calls = kernels.epoch, []
    monkeypatch.setattr(engines, "_verified", {})  # verify's step runs in this fit, whatever ran before

    def interrupted(*args):
        cost = real(*args)
        calls.append(1)
        if len(calls) == 3:  # verify's step, epoch 1, then epoch 2
            raise KeyboardInterrupt
        return cost

    monkeypatch.setattr(kernels, "epoch", interrupted)
    after_one = []
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, epochs=3, batch_size=4, lr=0.5, state=state, engine="blas",
                callback=lambda r: after_one.append(net.params.copy()))
    assert state.epoch == 1
    np.testing.assert_array_equal(net.params, after_one[0])


def test_ctrl_c_on_the_command_line_and_resume_are_bit_identical(tiny, tmp_path):
    """A real SIGINT to 'fastnn train --engine blas': one line, the checkpoint, and a bit-identical resume."""
    args = [*TRAIN, "--engine", "blas"]
    status, out, err = interrupt_after([*args, "--epochs", 100000, "--checkpoint", "ck"], "epoch 2/", tmp_path)
    assert status == 130, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    k = int(re.search(r"after epoch (\d+) of 100000", err).group(1))
    assert "blas-cpu engine" in out
    resumed = fastnn(*args, "--epochs", k + 2, "--resume", "ck", "--out", "resumed.npz", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    straight = fastnn(*args, "--epochs", k + 2, "--out", "straight.npz", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    a, b = load_model(tmp_path / "resumed.npz", device="cpu"), load_model(tmp_path / "straight.npz", device="cpu")
    for x, y in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_array_equal(x, y)
