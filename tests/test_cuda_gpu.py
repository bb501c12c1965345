"""The CUDA engines on a real GPU (skipped without one; not yet run: no GPU was at hand when written).

Run on a device with:  python -m pytest -m "gpu or kernel" tests/test_cuda_gpu.py tests/test_cuda_*.py
"""

import numpy as np
import pytest

from fastnn import Network, engines
from fastnn.engines import cuda_fused
from fastnn.engines.generic import GenericEngine
from tests.conftest import real_gpu_reason

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def gpu():
    reason = real_gpu_reason()
    if reason:
        pytest.skip(f"no real CUDA device: {reason}")
    engines._verified.clear()


def data(n=203, n_in=12, n_out=4):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, n_in)).astype(np.float32), rng.integers(0, n_out, n)


CASES = [("sigmoid", "sigmoid", "quadratic"), ("tanh", "softmax", "quadratic"), ("relu", "identity", "quadratic"),
         ("identity", "tanh", "quadratic"), ("relu", "sigmoid", "cross-entropy"), ("tanh", "softmax", "log-likelihood")]


@pytest.mark.parametrize("momentum, l2", [(0.0, 0.0), (0.9, 0.0), (0.0, 5.0), (0.9, 5.0)])
@pytest.mark.parametrize("hidden, output, cost", CASES)
def test_fused_engine_matches_the_cpu(hidden, output, cost, momentum, l2):
    X, y = data()
    nets = {}
    for device, engine in (("cuda", "fused"), ("cpu", "generic")):
        net = Network([12, 9, 7, 4], activation=hidden, output=output, cost=cost, device=device, seed=2)
        history = net.fit(X, y, epochs=2, batch_size=10, lr=0.2, momentum=momentum, l2=l2, engine=engine)
        nets[device] = (net, history)
    assert [r["engine"] for r in nets["cuda"][1].records] == ["fused-cuda"] * 2
    np.testing.assert_allclose(nets["cuda"][0].backend.to_host(nets["cuda"][0].params), nets["cpu"][0].params,
                               rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(nets["cuda"][1].loss, nets["cpu"][1].loss, rtol=2e-4)


@pytest.mark.parametrize("hidden, output, cost", CASES)
def test_elementwise_kernels_match_the_plain_generic_engine(hidden, output, cost):
    X, y = data()
    results = []
    for kernels in ("auto", None):
        net = Network([12, 9, 4], activation=hidden, output=output, cost=cost, device="cuda", seed=2)
        Xd, Yd, _ = net._inputs(X, y)
        engine = GenericEngine(net, kernels=kernels)
        assert (engine.kernels is None) == (kernels is None)
        velocity = net.xp.zeros_like(net.params)
        order = net.backend.to_device(np.random.default_rng(3).permutation(len(X)), "int64")
        engine.epoch(Xd, Yd, order, 10, 0.2, 0.9, 5.0, velocity)
        results.append(net.backend.to_host(net.params))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_the_textbook_network_fits_on_chip_and_a_wide_one_does_not():
    assert cuda_fused.unfit(Network([784, 30, 10], device="cuda"), 10, 0.9, 5.0) is None
    assert "parameters" in cuda_fused.unfit(Network([784, 1024, 10], device="cuda"), 10, 0.0, 0.0)


def test_tf32_trains_and_is_reported():
    X, y = data()
    net = Network([12, 64, 4], device="cuda", seed=0)
    history = net.fit(X, y, epochs=1, batch_size=50, lr=0.1, engine="generic", precision="tf32")
    assert history.records[0]["precision"] == "tf32" and np.isfinite(history.loss[0])
