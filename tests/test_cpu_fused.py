"""The fused CPU engine against its oracle, the generic engine: same seed and order, same weights.

Tolerances, relative to the largest |parameter|: float64 1e-10 (the engines differ only in the
order of their sums), float32 1e-4 (after 2 epochs of 6 steps; the gaps measured were ~1e-6).
The loops compile once per dtype and process (numba caches them on disk across processes).
"""

import re

import numpy as np
import pytest

from fastnn import ConfigError, DivergenceError, Network, TrainState, load_checkpoint
from fastnn.activations import HIDDEN, OUTPUT
from fastnn.costs import COSTS, get_cost
from fastnn.engines import GenericEngine, choose, cpu_fused, describe

from .conftest import fastnn

RTOL = {"float64": 1e-10, "float32": 1e-4}
UPDATES = {"plain": (0.0, 0.0), "momentum": (0.9, 0.0), "l2": (0.0, 1.0), "momentum+l2": (0.9, 1.0)}


def _combinations():
    """Every (hidden, output, cost) the generic path accepts."""
    out = []
    for hidden in HIDDEN:
        for output in OUTPUT:
            for cost in COSTS:
                try:
                    get_cost(cost, output)
                except ConfigError:
                    continue
                out.append((hidden, output, cost))
    return out


def _problem(n=23, n_in=9, n_out=3, seed=5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_in)), rng.integers(0, n_out, n)


def _train(engine, sizes, hidden, output, cost, dtype, momentum, l2, batch_size=7, lr=0.02, epochs=2, X=None,
           y=None):
    net = Network(sizes, activation=hidden, output=output, cost=cost, device="cpu", dtype=dtype, seed=3)
    if X is None:
        X, y = _problem(n_in=sizes[0], n_out=sizes[-1])
    history = net.fit(X, y, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, l2=l2, engine=engine)
    return net, history


def assert_same_training(sizes, hidden, output, cost, dtype, update, **kw):
    momentum, l2 = UPDATES[update]
    generic, hg = _train("generic", sizes, hidden, output, cost, dtype, momentum, l2, **kw)
    fused, hf = _train("fused", sizes, hidden, output, cost, dtype, momentum, l2, **kw)
    assert [r["engine"] for r in hf.records] == ["fused-cpu"] * len(hf)  # not a fallback to generic
    want, got = generic.params.astype(np.float64), fused.params.astype(np.float64)
    assert np.isfinite(want).all()
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)
    np.testing.assert_allclose(hf.loss, hg.loss, rtol=RTOL[dtype])
    assert fused.params.dtype == np.dtype(dtype)


@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("hidden, output, cost", _combinations())
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_same_weights_as_the_generic_engine(dtype, hidden, output, cost, update):
    """Three weight layers (BP2 twice), 6 and 5 units (blocks of 4 and remainders), batches of 7, 7, 7, 2."""
    assert_same_training([9, 6, 5, 3], hidden, output, cost, dtype, update)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("sizes, batch_size", [([9, 3], 4), ([9, 8, 3], 1), ([1100, 5, 2], 6), ([4, 13, 9, 6, 4, 2], 16)])
def test_any_depth_width_and_batch(dtype, sizes, batch_size):
    """No hidden layer, batch 1, inputs over a chunk (KC), five layers with a batch larger than the set's last."""
    assert_same_training(sizes, "tanh", "softmax", "log-likelihood", dtype, "momentum+l2", batch_size=batch_size)


def test_one_epoch_call_returns_the_summed_cost_and_updates_in_place():
    X, y = _problem()
    nets = [Network([9, 6, 3], device="cpu", dtype="float64", seed=1) for _ in range(2)]
    order = np.random.default_rng(0).permutation(23)
    costs = []
    for net, engine in zip(nets, (GenericEngine(nets[0]), cpu_fused.Engine(nets[1], 5))):
        Xd, Yd, _ = net._inputs(X, y)
        velocity = np.zeros_like(net.params)
        params = net.params
        costs.append(float(engine.epoch(Xd, Yd, order, 5, 0.3, 0.5, 0.1, velocity)))
        assert net.params is params and np.abs(velocity).max() > 0
    assert costs[1] == pytest.approx(costs[0], rel=1e-12)
    np.testing.assert_allclose(nets[1].params, nets[0].params, rtol=1e-12, atol=1e-12)


# -- which engine runs -------------------------------------------------------------


def test_auto_picks_fused_only_where_blas_is_slower():
    """auto gives fused-cpu the small batches through big layers (cpu_blas.slower, issue 22), blas-cpu the rest;
    cpu_fused's own rule (MAX_PARAMS) is the one auto keeps where blas-cpu cannot run (see test_cpu_blas)."""
    small = Network([9, 6, 3], device="cpu", seed=0)
    big = Network([784, 300, 10], device="cpu", seed=0)  # 238,510 parameters
    assert choose(small, "auto", 10, 0.0, 0.0).name == "blas-cpu"
    assert choose(big, "auto", 10, 0.0, 0.0).name == "fused-cpu"
    assert choose(big, "auto", 64, 0.0, 0.0).name == "blas-cpu"
    assert choose(big, "fused", 64, 0.0, 0.0).name == "fused-cpu"  # forced: it can run any network
    assert choose(small, "generic", 10, 0.0, 0.0).name == "generic"
    assert cpu_fused.slower(small, 10) is None
    assert cpu_fused.slower(big, 10) == ("784-300-10 has 238,510 parameters: above the fused CPU engine's "
                                         "50,000, where BLAS is faster")
    assert describe(small.backend).startswith("auto picks blas-cpu (BLAS GEMMs, the rest compiled) for every network")


def test_fused_forced_where_it_cannot_run_is_refused(monkeypatch):
    monkeypatch.setattr(cpu_fused, "available", lambda backend: "numba cannot be imported (ImportError: test)")
    net = Network([9, 6, 3], device="cpu", seed=0)
    X, y = _problem()
    with pytest.raises(ConfigError, match=r"^the fused engine cannot train this network: numba cannot be imported"):
        net.fit(X, y, epochs=1, batch_size=4, lr=0.1, engine="fused")
    assert net.fit(X, y, epochs=1, batch_size=4, lr=0.1, engine="auto").records[0]["engine"] == "generic"


def test_the_command_line_names_the_engine_and_refuses_in_one_line(tiny, monkeypatch, capsys):
    run = fastnn("train", "--dataset", tiny, "--layers", "4,8,3", "--epochs", 2, "--seed", 1, "--engine", "fused")
    assert run.returncode == 0, run.stderr
    assert len(re.findall(r"^epoch \d/2: .*, cpu, fused-cpu engine$", run.stdout, re.MULTILINE)) == 2
    info = fastnn("info")
    assert re.search(r"^engine: auto picks blas-cpu \(BLAS GEMMs, the rest compiled\) for every network, except ",
                     info.stdout, re.MULTILINE), info.stdout

    from fastnn import cli
    monkeypatch.setattr(cpu_fused, "available", lambda backend: "numba cannot be imported (ImportError: test)")
    status = cli.main(["train", "--dataset", str(tiny), "--layers", "4,3", "--epochs", "1", "--device", "cpu",
                       "--engine", "fused"])
    captured = capsys.readouterr()
    assert status == 2  # a setting that cannot be honoured: ConfigError
    assert captured.err == ("fastnn: error: the fused engine cannot train this network: numba cannot be imported "
                            "(ImportError: test)\n")


# -- what the trainer expects of it ------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_divergence_is_still_detected(dtype):
    """A learning rate far too large: the epoch's cost or weights go non-finite, fit says so and keeps epoch 1."""
    X, y = _problem()
    X[0] *= 1e3
    net = Network([9, 6, 3], activation="relu", output="identity", device="cpu", dtype=dtype, seed=0)
    state = TrainState()
    with pytest.raises(DivergenceError, match="training diverged in epoch"):
        net.fit(X, y, epochs=50, batch_size=4, lr=50.0, state=state, engine="fused")
    assert [r["engine"] for r in state.history.records] == ["fused-cpu"] * state.epoch
    np.testing.assert_array_equal(net.params, state.params)
    assert np.isfinite(net.params).all()


def test_resume_with_the_fused_engine_is_bit_identical(tmp_path):
    """3 epochs straight == 2 epochs, checkpoint, load, 1 more (momentum and L2: the velocity is saved too)."""
    X, y = _problem()
    kw = {"batch_size": 4, "lr": 0.3, "momentum": 0.9, "l2": 2.0, "engine": "fused"}
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
    assert {r["engine"] for r in resumed.records} == {"fused-cpu"}


def test_ctrl_c_after_the_compiled_epoch_keeps_the_last_completed_epoch(monkeypatch):
    """Ctrl-C reaches Python when the compiled epoch returns: the epoch is dropped, never half-kept."""
    X, y = _problem()
    net = Network([9, 6, 3], device="cpu", seed=2)
    state = TrainState()
    kernels = cpu_fused.kernels()
    real, calls = kernels.epoch, []

    def interrupted(*args):
        cost = real(*args)
        calls.append(1)
        if len(calls) == 3:  # verify's step, epoch 1, then epoch 2
            raise KeyboardInterrupt
        return cost

    monkeypatch.setattr(kernels, "epoch", interrupted)
    after_one = []
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, epochs=3, batch_size=4, lr=0.5, state=state, engine="fused",
                callback=lambda r: after_one.append(net.params.copy()))
    assert state.epoch == 1
    np.testing.assert_array_equal(net.params, after_one[0])
