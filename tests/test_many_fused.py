"""fit_many's fused method (fastnn.many_fused) on the cupy test double: the multi-model fused CUDA kernel, one
block per model in one launch per epoch, run by a RawModule stand-in that calls the g++ build of cuda_fused.cu
(tests/kernel_shim) and runs the launch's blocks one after another; every model is checked against its own solo
generic training on the CPU."""

import json
import logging

import numpy as np
import pytest

from fastnn import ConfigError, Network, engines
from fastnn.engines import cuda_fused
from fastnn.many import fit_many
from fastnn.state import TrainState
from tests.kernel_shim import compiler_reason, fused_library

pytestmark = [pytest.mark.kernel, pytest.mark.filterwarnings("ignore::fastnn.NotLearningWarning")]
RTOL, ATOL = 2e-4, 2e-5  # the kernel tests' tolerance
SIZES = [5, 6, 3]
LRS, MOMENTA, L2S = [0.5, 0.2, 0.05], [0.9, 0.5, 0.0], [1.0, 0.0, 3.0]
BATCH, EPOCHS = 8, 3
KIND = {"activation": "tanh", "output": "softmax", "cost": "log-likelihood"}


class ShimKernel:
    """cupy's RawKernel to cuda_fused's launcher: the g++ build on the double's arrays; records each launch's grid."""

    def __init__(self, lib):
        self.lib = lib
        self.max_dynamic_shared_size_bytes = 0
        self.grids = []

    def __call__(self, grid, block, args, shared_mem=0):
        import cupy

        assert len(grid) == 1 and shared_mem <= self.max_dynamic_shared_size_bytes
        cupy._core.launch("the fused kernel", args)  # every array on the device, the context alive
        self.grids.append(grid[0])
        assert self.lib.shim_fused_epoch(grid[0], block[0], shared_mem, *[cupy._core.unwrap(a, "") for a in args]) == 0


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    reason = compiler_reason()
    if reason:
        pytest.fail(f"the fused method's tests need g++: {reason}")
    folder = tmp_path_factory.mktemp("many_fused")
    source = cuda_fused.SOURCE.read_text()
    old, new = "case ACT_SIGMOID: return (1.0f - a) * a;", "case ACT_SIGMOID: return a;"  # a wrong σ'
    assert old in source
    return {"right": fused_library(folder), "wrong": fused_library(folder, source.replace(old, new), "many_wrong")}


@pytest.fixture
def shim(monkeypatch, cupy_double):
    """cupy.RawModule on the double: the kernel given by ``use(lib)``; returns its ShimKernel."""
    module = {}

    class RawModule:
        def __init__(self, code, options=()):
            self.kernel = module["now"]

        def get_function(self, name):
            assert name == cuda_fused.KERNEL
            return self.kernel

    def use(lib):
        module["now"] = ShimKernel(lib)
        return module["now"]

    monkeypatch.setattr(cupy_double, "RawModule", RawModule, raising=False)
    monkeypatch.setattr(cuda_fused, "_modules", {})
    monkeypatch.setattr(cuda_fused, "THREADS", 32)  # the shim runs a std::thread per CUDA thread
    monkeypatch.setattr(cuda_fused, "cluster_size", lambda backend: 1)  # one block per model
    engines._verified.clear()
    yield use
    engines._verified.clear()


def data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, SIZES[0]))
    return X, rng.integers(0, SIZES[-1], n)


def solo(seeds=range(3), kind=KIND, lrs=LRS, momenta=MOMENTA, l2s=L2S, batch=BATCH):
    X, y = data()
    nets = [Network(SIZES, seed=s, device="cpu", **kind) for s in seeds]
    histories = [net.fit(X, y, EPOCHS, batch, lr=lr, momentum=mu, l2=l2, validation_data=(X[:20], y[:20]),
                         engine="generic")
                 for net, lr, mu, l2 in zip(nets, lrs, momenta, l2s)]
    return nets, histories


def many(method, seeds=range(3), kind=KIND, lrs=LRS, momenta=MOMENTA, l2s=L2S, batch=BATCH, **options):
    X, y = data()
    nets = [Network(SIZES, seed=s, device="cuda", **kind) for s in seeds]
    histories = fit_many(nets, X, y, EPOCHS, batch, lr=lrs, momentum=momenta, l2=l2s,
                         validation_data=(X[:20], y[:20]), method=method, **options)
    return nets, histories


def assert_like_solo(together, histories, alone, expected, engine="fused-cuda"):
    for k, (a, b, h, e) in enumerate(zip(together, alone, histories, expected)):
        assert a.backend.is_cuda and [r["engine"] for r in h.records] == [engine] * EPOCHS, k
        np.testing.assert_allclose(a.backend.to_host(a.params), b.params, rtol=RTOL, atol=ATOL, err_msg=str(k))
        np.testing.assert_allclose(h.loss, e.loss, rtol=RTOL)
        assert h.diverged is None and len(h) == EPOCHS and "val_accuracy" in h.records[-1]
        assert a.rng.bit_generator.state == b.rng.bit_generator.state  # each drew its solo run's orders


@pytest.mark.parametrize("method", ["fused", "auto"])
def test_each_model_of_one_launch_per_epoch_ends_as_its_solo_generic_run(shim, libs, method):
    kernel = shim(libs["right"])
    alone, expected = solo()
    together, histories = many(method)
    assert_like_solo(together, histories, alone, expected)
    assert not np.allclose(together[0].backend.to_host(together[0].params), alone[1].params)
    # verify's first steps, one network a launch: momentum and L2 (twice: as run, and with a large λ), momentum
    # alone, L2 alone (twice); then ONE launch of all three models per epoch
    assert kernel.grids == [1] * 5 + [3] * EPOCHS


def test_each_batch_size_is_one_launch(shim, libs):
    kernel = shim(libs["right"])
    X, y = data()
    nets = [Network(SIZES, seed=s, device="cuda", **KIND) for s in range(4)]
    twins = [Network(SIZES, seed=s, device="cpu", **KIND) for s in range(4)]
    batches, lrs = [8, 5, 8, 5], [0.5, 0.2, 0.1, 0.3]
    histories = fit_many(nets, X, y, EPOCHS, batches, lr=lrs, method="fused")
    for a, b, h, batch, lr in zip(nets, twins, histories, batches, lrs):
        e = b.fit(X, y, EPOCHS, batch, lr=lr, engine="generic")
        assert h.records[-1]["engine"] == "fused-cuda"
        np.testing.assert_allclose(a.backend.to_host(a.params), b.params, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(h.loss, e.loss, rtol=RTOL)
    assert kernel.grids.count(2) == 2 * EPOCHS and set(kernel.grids) == {1, 2}


def test_a_network_that_does_not_fit_trains_batched_and_fused_refuses_it(shim, libs, monkeypatch):
    kernel = shim(libs["right"])
    monkeypatch.setattr(cuda_fused, "_shared_limit", lambda backend: 2048)  # too small for batch 8's activations
    alone, _ = solo()
    together, histories = many("auto")
    assert kernel.grids == []
    for a, b, h in zip(together, alone, histories):
        assert [r["engine"] for r in h.records] == ["batched-generic"] * EPOCHS
        np.testing.assert_allclose(a.backend.to_host(a.params), b.params, rtol=RTOL, atol=ATOL)
    with pytest.raises(ConfigError, match=r"^method 'fused' cannot train these networks: network 0: 5-6-3 has \d+k "
                                          r"parameters, which with batch 8 need \d+ KiB of shared memory") as caught:
        many("fused")
    assert "\n" not in str(caught.value)


def test_bad_combinations_are_refused_in_one_line(shim, libs):
    shim(libs["right"])
    X, y = data()
    cases = [
        ([Network(SIZES, seed=0, device="cpu")], {}, r"on a CUDA GPU only; these networks are on cpu"),
        ([Network(SIZES, seed=0, device="cuda", dtype="float64")], {}, r"network 0: it trains float32 only"),
        ([Network(SIZES, seed=0, device="cuda")], {"engine": "generic"}, r"engine 'generic' was asked"),
    ]
    for nets, options, message in cases:
        with pytest.raises(ConfigError, match=r"^method 'fused' cannot train these networks: .*" + message) as caught:
            fit_many(nets, X, y, 1, BATCH, lr=0.5, method="fused", **options)
        assert "\n" not in str(caught.value)
    # auto with the generic engine, or float64, is the batched method
    net = Network(SIZES, seed=0, device="cuda", dtype="float64")
    assert fit_many([net], X, y, 1, BATCH, lr=0.5)[0].records[0]["engine"] == "batched-generic"
    net = Network(SIZES, seed=0, device="cuda")
    assert fit_many([net], X, y, 1, BATCH, lr=0.5, engine="generic")[0].records[0]["engine"] == "batched-generic"


def test_a_wrong_kernel_is_caught_by_verify_and_the_run_is_batched(shim, libs, caplog):
    shim(libs["wrong"])
    kind = {"activation": "sigmoid", "output": "softmax", "cost": "log-likelihood"}
    alone, expected = solo(kind=kind)
    with caplog.at_level(logging.WARNING, logger="fastnn"):
        together, histories = many("fused", kind=kind)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("fastnn: the fused-cuda engine disagreed"), warnings
    assert_like_solo(together, histories, alone, expected, engine="batched-generic")


def test_a_diverging_model_stops_and_the_others_go_on(shim, libs):
    shim(libs["right"])
    kind = {"activation": "sigmoid", "output": "identity", "cost": "quadratic"}
    lrs = [0.1, 1e30, 0.05]
    alone, expected = solo(seeds=(0, 2), kind=kind, lrs=lrs[::2], momenta=MOMENTA[::2], l2s=L2S[::2])
    together, histories = many("fused", kind=kind, lrs=lrs)
    assert "diverged" in histories[1].diverged and len(histories[1]) < EPOCHS
    assert_like_solo(together[::2], histories[::2], alone, expected)


def test_the_sweep_command_trains_with_the_fused_method(shim, libs, tiny, tmp_path, monkeypatch, capsys):
    from fastnn import cli

    kernel = shim(libs["right"])
    monkeypatch.setenv("FASTNN_DEVICE", "cuda")
    out = tmp_path / "out"
    status = cli.main(["sweep", "--dataset", str(tiny), "--layers", "4,8,3", "--validation-size", "60", "--lr",
                       "0.5,1", "--momentum", "0,0.5", "--seeds", "0-1", "--epochs", "2", "--method", "fused",
                       "--out-dir", str(out), "--quiet"])
    assert status in (0, None), capsys.readouterr().err
    log = [json.loads(line) for line in (out / "sweep-log.jsonl").read_text().splitlines()]
    assert len(log) == 8 * 2 and {r["engine"] for r in log} == {"fused-cuda"}
    assert kernel.grids.count(8) == 2  # all eight models in one launch per epoch


def test_a_run_continued_from_its_states_ends_as_a_straight_one(shim, libs):
    shim(libs["right"])
    straight, _ = many("fused")
    X, y = data()
    nets = [Network(SIZES, seed=s, device="cuda", **KIND) for s in range(3)]
    states = [TrainState() for _ in nets]
    epochs_seen = []
    options = {"lr": LRS, "momentum": MOMENTA, "l2": L2S, "validation_data": (X[:20], y[:20]), "method": "fused"}
    fit_many(nets, X, y, 2, BATCH, states=states, on_epoch=lambda e, s: epochs_seen.append(e), **options)
    histories = fit_many(nets, X, y, EPOCHS, BATCH, states=states, **options)
    assert epochs_seen == [1, 2] and [len(h) for h in histories] == [EPOCHS] * 3
    for a, b in zip(nets, straight):
        assert a.backend.to_host(a.params).tobytes() == b.backend.to_host(b.params).tobytes()


def test_the_sweep_command_refuses_the_fused_method_on_the_cpu_in_one_line(tiny, tmp_path, capsys):
    from fastnn import cli

    status = cli.main(["sweep", "--dataset", str(tiny), "--layers", "4,5,3", "--validation-size", "60", "--lr", "0.5",
                       "--seeds", "0-1", "--epochs", "1", "--method", "fused", "--device", "cpu", "--out-dir",
                       str(tmp_path / "out")])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    expected = ("fastnn: error: method 'fused' cannot train these networks: it runs the fused CUDA kernel, on a CUDA "
                "GPU only; these networks are on cpu")
    assert status == 2 and errors == [expected]
