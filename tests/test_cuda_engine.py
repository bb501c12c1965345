"""The fused CUDA engine end to end on the CPU: ``fit`` selects it, ``engines.verify`` checks it, and its
kernel launches run the g++ build of cuda_fused.cu (tests/kernel_shim) in place of cupy's RawKernel.

Everything of the engine runs except cupy itself: compiling, the shared-memory attribute and the launch.
"""

import json
import logging

import numpy as np
import pytest

from fastnn import Network, engines
from fastnn.engines import cpu_blas, cuda_fused
from fastnn.errors import ConfigError
from tests.kernel_shim import compiler_reason, fused_library

pytestmark = pytest.mark.kernel
THREADS = 32  # the shim runs one std::thread per CUDA thread: keep the block small here
WRONG = {  # deliberately wrong kernels: a wrong σ', and a momentum term that only shows from the second step
    "slope": ("case ACT_SIGMOID: return (1.0f - a) * a;", "case ACT_SIGMOID: return a;"),
    "momentum": ("float u = v * momentum + s;", "float u = v * (0.5f * momentum) + s;"),
}


class ShimKernel:
    """What cupy's RawKernel is to Engine: called as kernel(grid, block, args, shared_mem=...)."""

    def __init__(self, lib, cluster=1):
        self.lib, self.cluster = lib, cluster
        self.max_dynamic_shared_size_bytes = 0
        self.launches = 0

    def __call__(self, grid, block, args, shared_mem=0):
        assert len(grid) == 1 and grid[0] % self.cluster == 0 and shared_mem <= self.max_dynamic_shared_size_bytes
        self.launches += 1
        assert self.lib.shim_fused_epoch(grid[0], block[0], shared_mem, *args) == 0


class ShimModule:
    def __init__(self, lib):
        self.kernel = ShimKernel(lib)

    def get_function(self, name):
        assert name == cuda_fused.KERNEL
        return self.kernel


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    reason = compiler_reason()
    if reason:
        pytest.fail(f"the kernel tests need g++: {reason}")
    folder = tmp_path_factory.mktemp("engine")
    source = cuda_fused.SOURCE.read_text()
    out = {"right": fused_library(folder)}
    for name, (old, new) in WRONG.items():
        assert old in source
        out[name] = fused_library(folder, source.replace(old, new), f"wrong_{name}")
    return out


def tile_module(folder, batch_size, cluster, chunks, shape):
    """The kernel as the host compiles it with W^0 in registers (its -D options), built for the shim once."""
    defines = [o[2:] for o in cuda_fused.compile_options(batch_size, cluster, chunks, shape) if o.startswith("-D")]
    folder.mkdir(exist_ok=True)
    return ShimModule(fused_library(folder, name="tile_" + "_".join(d.split("=")[1] for d in defines),
                                    defines=tuple(defines)))


@pytest.fixture
def shim(monkeypatch, tmp_path_factory):
    """Make the CPU's fused engine the CUDA one, launching the kernel given by ``use(lib)`` (or, for a network
    whose W^0 the host puts in registers, the kernel built as the host compiles it)."""
    engines._verified.clear()
    monkeypatch.setattr(engines, "fused_module", lambda backend: cuda_fused)
    monkeypatch.setattr(cuda_fused, "available", lambda backend: None)
    monkeypatch.setattr(cpu_blas, "available", lambda backend: "the CPU stands in for a CUDA device here")  # auto's
    # CPU rule (blas-cpu) is not a CUDA device's
    monkeypatch.setattr(cuda_fused, "_shared_limit", lambda backend: 232448)  # an H100's opt-in limit
    monkeypatch.setattr(cuda_fused, "THREADS", THREADS)
    module = {}
    monkeypatch.setattr(cuda_fused, "_module", lambda backend, batch_size=None, cluster=1, chunks=0, shape=None:
                        tile_module(tmp_path_factory.getbasetemp() / "tiles", batch_size, cluster, chunks, shape) if chunks
                        else module["now"])
    monkeypatch.setattr(cuda_fused, "cluster_size", lambda backend: 1)

    def use(lib):
        module["now"] = ShimModule(lib)
        return module["now"].kernel

    yield use
    engines._verified.clear()


def data(n=23, n_in=6, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_in)).astype(np.float32), rng.integers(0, n_out, n)


def train(engine, momentum=0.9, l2=1.0, **net_kwargs):
    net = Network([6, 5, 3], device="cpu", seed=4, **net_kwargs)
    X, y = data()
    history = net.fit(X, y, epochs=3, batch_size=5, lr=0.5, momentum=momentum, l2=l2, engine=engine)
    return net, history


def test_fit_runs_the_fused_kernel_once_per_epoch(shim, libs):
    kernel = shim(libs["right"])
    fused, history = train("fused", output="softmax", cost="log-likelihood")
    generic, reference = train("generic", output="softmax", cost="log-likelihood")
    assert [r["engine"] for r in history.records] == ["fused-cuda"] * 3
    assert kernel.launches == 3 + 2  # one per epoch, and verify's first steps: as run, and with a large λ (L2 on)
    np.testing.assert_allclose(fused.params, generic.params, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(history.loss, reference.loss, rtol=2e-4)


def test_auto_picks_it_where_it_fits_and_generic_where_not(shim, libs):
    shim(libs["right"])
    _, history = train("auto", activation="relu", output="sigmoid", cost="cross-entropy")
    assert history.records[-1]["engine"] == "fused-cuda"
    net = Network([784, 1024, 10], device="cpu", seed=0)
    assert isinstance(engines.choose(net, "auto", 10, 0.0, 0.0), engines.GenericEngine)
    with pytest.raises(ConfigError, match=r"^the fused engine cannot train this network: 784-1024-10 has 814k "
                                          r"parameters, .* at most 227 KiB"):
        engines.choose(net, "fused", 10, 0.0, 0.0)
    textbook = cuda_fused.least_shared_bytes([784, 30, 10], 10) / 1024  # W^0 in registers: no copy in shared memory
    assert f"(784-30-10 at batch 10 takes {textbook:.0f} KiB)" in engines.describe(net.backend)
    assert "227 KiB of shared memory" in engines.describe(net.backend)


@pytest.mark.parametrize("wrong", list(WRONG))
def test_a_wrong_kernel_is_caught_by_the_first_steps_check(shim, libs, caplog, wrong):
    """A deliberately wrong kernel: one warning line, and the run is the generic engine's, exactly."""
    shim(libs[wrong])
    with caplog.at_level(logging.WARNING, logger="fastnn"):
        fused, history = train("fused")
    generic, _ = train("generic")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].startswith("fastnn: the fused-cuda engine disagreed with the generic engine"), warnings
    assert [r["engine"] for r in history.records] == ["generic"] * 3
    np.testing.assert_array_equal(fused.params, generic.params)


def test_a_kernel_that_cannot_launch_falls_back_to_generic(shim, libs, caplog, monkeypatch):
    kernel = shim(libs["right"])

    def refuse(*args, **kwargs):
        raise RuntimeError("cudaErrorInvalidValue: invalid argument\nmore detail")

    monkeypatch.setattr(ShimKernel, "__call__", refuse)
    with caplog.at_level(logging.WARNING, logger="fastnn"):
        net, history = train("auto")
    assert kernel.launches == 0 and [r["engine"] for r in history.records] == ["generic"] * 3
    assert [r.getMessage() for r in caplog.records] == [
        ("fastnn: the fused-cuda engine failed on its first steps on cpu (RuntimeError: cudaErrorInvalidValue: invalid "
        "argument); training with the generic engine")]
    np.testing.assert_array_equal(net.params, train("generic")[0].params)


def test_the_check_passes_the_right_kernel_and_leaves_the_weights(shim, libs):
    shim(libs["right"])
    net = Network([6, 5, 3], device="cpu", seed=1)
    X, y = data()
    X, Y, _ = net._inputs(X, y)
    start = net.params.copy()
    velocity = np.zeros_like(net.params)
    order = np.arange(X.shape[0], dtype=np.int64)
    engine = cuda_fused.Engine(net, 5)
    assert engines.verify(engine, net, X, Y, order, 5, 0.5, 0.9, 1.0, velocity)
    np.testing.assert_array_equal(net.params, start)
    assert not velocity.any()


def test_the_prepared_gpu_benchmark_runs_its_code_on_the_cpu(shim, libs, tmp_path, capsys):
    """bench/cuda_engines.py (for a GPU session): here the shim stands in for the fused kernel."""
    from bench import cuda_engines

    shim(libs["right"])
    out = tmp_path / "engines.json"
    cuda_engines.main(["--device", "cpu", "--configs", "textbook,wide", "--examples", "40", "--epochs", "1",
                       "--json", str(out)])
    report = json.loads(out.read_text())
    rows = {(r["config"], r["engine"]): r for r in report["results"]}
    assert set(rows) == {("textbook", "fused-cpu"), ("textbook", "generic-plain"), ("wide", "fused-cpu"),
                         ("wide", "generic-plain")}
    assert rows["textbook", "fused-cpu"]["median_s"] > 0
    assert rows["textbook", "fused-cpu"]["loss"] == pytest.approx(rows["textbook", "generic-plain"]["loss"], rel=1e-4)
    assert "parameters" in rows["wide", "fused-cpu"]["skipped"]
    assert report["machine"]["device"] == "cpu"


@pytest.fixture
def cluster_shim(monkeypatch, tmp_path_factory):
    """An "sm_90" device: the engine compiles the cluster variant (the shim's FASTNN_CLUSTER=8 build) or, after
    a failed cluster launch, the single-SM one; ``refuse`` makes every cluster launch raise."""
    if compiler_reason():
        pytest.fail(f"the kernel tests need g++: {compiler_reason()}")
    folder = tmp_path_factory.mktemp("engine_cluster")
    kernels = {1: ShimKernel(fused_library(folder)),
               8: ShimKernel(fused_library(folder, name="fused_cluster", defines=("FASTNN_CLUSTER=8",)), cluster=8)}
    engines._verified.clear()
    monkeypatch.setattr(engines, "fused_module", lambda backend: cuda_fused)
    monkeypatch.setattr(cuda_fused, "available", lambda backend: None)
    monkeypatch.setattr(cpu_blas, "available", lambda backend: "the CPU stands in for a CUDA device here")
    monkeypatch.setattr(cuda_fused, "_shared_limit", lambda backend: 232448)
    monkeypatch.setattr(cuda_fused, "THREADS", THREADS)
    monkeypatch.setattr(cuda_fused, "cluster_size", lambda backend: 8)

    class Module:
        def __init__(self, cluster):
            self.cluster = cluster

        def get_function(self, name):
            return kernels[self.cluster]

    monkeypatch.setattr(cuda_fused, "_module", lambda backend, batch_size=None, cluster=1, chunks=0, shape=None:
                        Module(cluster))
    yield kernels
    engines._verified.clear()


def test_on_sm90_the_engine_trains_on_a_cluster(cluster_shim):
    fused, history = train("fused", output="softmax", cost="log-likelihood")
    generic, _ = train("generic", output="softmax", cost="log-likelihood")
    assert cluster_shim[8].launches == 3 + 2 and cluster_shim[1].launches == 0  # 3 epochs + verify's two (L2 on)
    assert [r["engine"] for r in history.records] == ["fused-cuda"] * 3
    np.testing.assert_allclose(fused.params, generic.params, rtol=2e-4, atol=2e-5)


def test_a_cluster_that_cannot_launch_falls_back_to_one_sm(cluster_shim):
    """The cluster launch raises (as cudaErrorClusterOutOfResources would, before any block runs): the engine
    launches the single-SM variant from the same parameters, and stays with it."""
    refused = []

    class Refusing:
        max_dynamic_shared_size_bytes = 0

        def __call__(self, grid, block, args, shared_mem=0):
            refused.append(grid)
            raise RuntimeError("cudaErrorClusterOutOfResources: too many resources requested for launch")

    cluster_shim[8] = Refusing()
    net = Network([6, 5, 3], device="cpu", seed=4)
    X, y = data()
    X, Y, _ = net._inputs(X, y)
    engine = cuda_fused.Engine(net, 5)
    twin = Network([6, 5, 3], device="cpu", seed=4)
    order = np.arange(X.shape[0], dtype=np.int64)
    cost = float(engine.epoch(X, Y, order, 5, 0.5, 0.0, 0.0, None))
    expected = float(engines.GenericEngine(twin).epoch(X, Y, order, 5, 0.5, 0.0, 0.0, None))
    assert len(refused) == 1 and engine.launch.cluster == 1
    assert engine.launch.fell_back.startswith("RuntimeError: cudaErrorClusterOutOfResources")
    assert cost == pytest.approx(expected, rel=2e-4)
    np.testing.assert_allclose(net.params, twin.params, rtol=2e-4, atol=2e-5)
    engine.epoch(X, Y, order, 5, 0.5, 0.0, 0.0, None)
    assert len(refused) == 1 and cluster_shim[1].launches == 2
