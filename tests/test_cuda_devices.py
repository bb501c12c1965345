"""Two GPUs in one process, and sticky CUDA faults, on the cupy test double (tests/cupy_double).

The double refuses an array of another device than the current one (as cupy does where peer access is
unavailable), and a dead context fails every later operation on its device.  The fused CUDA engine runs here
through a RawModule stand-in that loads the g++ build of cuda_fused.cu (tests/kernel_shim) on the device current
when it is compiled, and refuses to be configured or launched on another, as a CUDA function is bound to the
context it was loaded in.
"""

import contextlib
import logging

import numpy as np
import pytest

from fastnn import BackendUnavailable, Network, engines, load_checkpoint
from fastnn.backend import Backend
from fastnn.engines import cuda_fused
from fastnn.engines.generic import GenericEngine
from fastnn.state import TrainState
from tests.kernel_shim import compiler_reason, fused_library

from .conftest import double_env, fastnn

pytestmark = pytest.mark.usefixtures("cupy_double")
STICKY = [(700, False), (715, False), (716, True), (719, True)]  # (code, raised by the driver)


def data(n=60, n_in=5, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_in)).astype(np.float32), rng.integers(0, n_out, n)


class DeviceKernel:
    """The fused kernel loaded on one device: cupy's RawKernel to cuda_fused.Engine."""

    def __init__(self, lib, device):
        self.lib, self.device = lib, device
        self._shared = 0
        self.launches = 0

    def _here(self):
        import cupy

        if cupy.cuda.Device().id != self.device:  # a CUfunction of another context
            raise cupy.cuda.driver.CUDADriverError(400)

    @property
    def max_dynamic_shared_size_bytes(self):
        return self._shared

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        self._here()
        self._shared = value

    def __call__(self, grid, block, args, shared_mem=0):
        import cupy

        self._here()
        assert grid == (1,) and shared_mem <= self._shared
        cupy._core.launch("the fused kernel", args)  # every array on this device, the context alive
        self.launches += 1
        assert self.lib.shim_fused_epoch(grid[0], block[0], shared_mem, *[cupy._core.unwrap(a, "") for a in args]) == 0


@pytest.fixture
def fused(monkeypatch, cupy_double, tmp_path_factory):
    """cupy.RawModule for the fused engine: the g++ build, loaded on the current device; returns those made."""
    reason = compiler_reason()
    if reason:
        pytest.fail(f"the fused engine's tests need g++: {reason}")
    lib = fused_library(tmp_path_factory.mktemp("devices"))
    made = []

    class RawModule:
        def __init__(self, code, options=()):
            self.kernel = DeviceKernel(lib, cupy_double.cuda.Device().id)
            made.append(self.kernel)

        def get_function(self, name):
            assert name == cuda_fused.KERNEL
            return self.kernel

    monkeypatch.setattr(cupy_double, "RawModule", RawModule, raising=False)
    monkeypatch.setattr(cuda_fused, "_modules", {})
    monkeypatch.setattr(cuda_fused, "THREADS", 32)  # the shim runs a std::thread per CUDA thread
    monkeypatch.setattr(cuda_fused, "cluster_size", lambda backend: 1)  # the double's devices have no clusters
    engines._verified.clear()
    yield made
    engines._verified.clear()


def two_gpus(monkeypatch):
    monkeypatch.setenv("CUPY_DOUBLE_GPUS", "2")
    return [Network([5, 6, 3], device=f"cuda:{i}", seed=7) for i in (0, 1)]


# -- every computation of a network inside its own device -----------------------------------------------

def test_two_networks_on_two_gpus_never_cross(monkeypatch, cupy_double, tmp_path):
    """Each network trains, predicts, evaluates and resumes on its own GPU, whichever device is current."""
    X, y = data()
    kw = {"batch_size": 8, "lr": 0.5, "momentum": 0.9, "l2": 0.1, "engine": "generic"}
    nets = two_gpus(monkeypatch)
    cpu = Network([5, 6, 3], device="cpu", seed=7)
    cpu.fit(X, y, epochs=2, **kw)
    for net, other in zip(nets, (1, 0)):
        with cupy_double.cuda.Device(other):  # the other GPU is current: the network's own must be used
            net.fit(X, y, epochs=1, checkpoint=tmp_path / net.backend.device, state=TrainState(), **kw)
            resumed, state = load_checkpoint(tmp_path / net.backend.device, device=net.backend.device)
            resumed.fit(X, y, epochs=2, state=state, **kw)
            np.testing.assert_array_equal(resumed.predict(X), cpu.predict(X))
            assert resumed.evaluate(X, y) == cpu.evaluate(X, y)
            for (dw, db), (cw, cb) in zip(resumed.gradients(X, y), cpu.gradients(X, y)):
                np.testing.assert_array_equal(dw, cw)
            assert cupy_double.cuda.Device().id == other  # and the current device is left as it was
        assert resumed.params.device.id == state.velocity.device.id == net.backend.index
    assert cupy_double.cuda.Device().id == 0


def test_without_its_device_the_double_catches_the_crossing(monkeypatch, cupy_double):
    """The test above would fail if a network computed on the current device instead of its own."""
    nets = two_gpus(monkeypatch)
    monkeypatch.setattr(Backend, "activate", lambda self: contextlib.nullcontext())
    X, y = data()
    with pytest.raises(ValueError, match=r"The device where the array resides \(1\) is different from the current "
                                         r"device \(0\)"):
        nets[1].fit(X, y, epochs=1, batch_size=8, lr=0.5, engine="generic")


def test_the_fused_engine_on_two_gpus_compiles_configures_and_launches_on_each(monkeypatch, cupy_double, fused):
    X, y = data()
    kw = {"epochs": 2, "batch_size": 8, "lr": 0.5, "momentum": 0.9, "l2": 0.1}
    nets = two_gpus(monkeypatch)
    cpu = Network([5, 6, 3], device="cpu", seed=7)
    cpu.fit(X, y, engine="generic", **kw)
    for net, other in zip(nets, (1, 0)):
        with cupy_double.cuda.Device(other):
            history = net.fit(X, y, engine="fused", **kw)
        assert [r["engine"] for r in history.records] == ["fused-cuda"] * 2
        np.testing.assert_allclose(net.backend.to_host(net.params), cpu.params, rtol=2e-4, atol=2e-5)
    # each device compiled its own modules (one per register block: info's and the batch's), and launched its own
    assert sorted({k.device for k in fused}) == [0, 1]
    assert [k.device for k in fused if k.launches] == [0, 1]
    assert [k.launches for k in fused if k.launches] == [2 + 2] * 2  # two epochs, and verify's two checks (L2 on)
    assert {key[0] for key in cuda_fused._modules} == {"cuda:0", "cuda:1"}  # keyed (device, register block, cluster)


def test_without_its_device_the_kernel_refuses_to_launch(monkeypatch, cupy_double, fused, caplog):
    nets = two_gpus(monkeypatch)
    monkeypatch.setattr(Backend, "activate", lambda self: contextlib.nullcontext())
    X, y = data()
    with pytest.raises(ValueError, match="is different from the current device"):
        nets[1].fit(X, y, epochs=1, batch_size=8, lr=0.5, engine="fused")


# -- sticky faults: one line, no clean-up on the dead context, no fallback claimed -------------------------

@pytest.mark.parametrize("code, driver", STICKY)
def test_a_sticky_fault_in_the_fused_kernel_is_one_error(cupy_double, fused, monkeypatch, caplog, code, driver):
    net = Network([5, 6, 3], device="cuda", seed=7)
    X, y = data()
    launch = DeviceKernel.__call__

    def faulting(kernel, *args, **kwargs):  # the kernel's first launch dies (in verify's first steps)
        cupy_double.cuda.runtime.inject_fault(code, after=0, driver=driver)
        launch(kernel, *args, **kwargs)

    monkeypatch.setattr(DeviceKernel, "__call__", faulting)
    kind = "CUDADriverError" if driver else "CUDARuntimeError"
    lost = (rf"^the CUDA context on cuda:0 is unusable after a fault in the fused-cuda engine \({kind}: \S+: [^)]+\): "
            rf"nothing more can run on it in this process and no fallback was tried; rerun with --engine generic$")
    with caplog.at_level(logging.WARNING, logger="fastnn"), pytest.raises(BackendUnavailable, match=lost) as caught:
        net.fit(X, y, epochs=2, batch_size=8, lr=0.5, engine="fused")
    assert "\n" not in str(caught.value) and getattr(caught.value.__cause__, "status", None) == code
    assert not [r for r in caplog.records if "generic engine" in r.getMessage()]  # no fallback claimed
    with pytest.raises(type(caught.value.__cause__)):  # the context is dead indeed: nothing more runs on it
        net.predict(X)


@pytest.mark.parametrize("code, driver", STICKY)
def test_a_sticky_fault_in_a_later_epoch_is_one_error(cupy_double, monkeypatch, code, driver):
    """In epoch 2 of the generic engine: the weights of epoch 1 cannot be put back on the dead context."""
    net = Network([5, 6, 3], device="cuda", seed=7)
    X, y = data()
    epoch, calls = GenericEngine.epoch, []

    def faulting(engine, *args, **kwargs):  # the second epoch dies a few kernels in
        calls.append(1)
        if len(calls) == 2:
            cupy_double.cuda.runtime.inject_fault(code, after=5, driver=driver)
        return epoch(engine, *args, **kwargs)

    monkeypatch.setattr(GenericEngine, "epoch", faulting)
    with pytest.raises(BackendUnavailable, match=r"^the CUDA context on cuda:0 is unusable after a fault in the "
                                                 r"generic engine \(.*\): nothing more can run on it in this process "
                                                 r"and no fallback was tried; rerun the command \(with --device cpu "
                                                 r"if it happens again\)$") as caught:
        net.fit(X, y, epochs=3, batch_size=8, lr=0.5, momentum=0.9, engine="generic")
    assert getattr(caught.value.__cause__, "status", None) == code


@pytest.mark.parametrize("after", [300, 1000])  # in epoch 1's batches; in its validation (no engine named)
def test_cli_a_sticky_fault_is_one_line(tiny, tmp_path, after):
    run = fastnn("train", "--dataset", tiny, "--layers", "4,8,3", "--epochs", "2", "--device", "cuda", "--engine",
                 "generic", "--out", tmp_path / "m.npz", env=double_env(CUPY_DOUBLE_FAULT=f"driver:719@{after}"),
                 cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("fastnn: error: the CUDA context on cuda:0 is unusable after a fault"), run.stderr
    assert ("(CUDADriverError: CUDA_ERROR_LAUNCH_FAILED: unspecified launch failure): nothing more can run on it in "
            "this process and no fallback was tried; rerun the command") in run.stderr
    assert run.stderr.count("\n") == 1 and "training with the generic engine" not in run.stderr
    assert not (tmp_path / "m.npz").exists()
