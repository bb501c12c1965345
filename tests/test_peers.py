"""The benchmark's JAX and PyTorch-CUDA-graph peers do fastnn's math: one step, and an epoch in a given order.

The oracle is fastnn's generic engine (numpy), from the same initial weights.  Tolerances:
float32 rtol 1e-4 / atol 1e-6 on the weights (one step; BLAS and XLA sum in different orders),
float64 rtol 1e-10 / atol 1e-12.  JAX tests skip where JAX is not installed (CI installs it);
the CUDA-graph capture and JAX on a GPU run only on a GPU (marked gpu).
"""

import functools
import types

import numpy as np
import pytest

from fastnn import Network, bench
from fastnn.backend import get_backend
from fastnn.bench.peers import FastnnPeer, JaxPeer, PeerUnavailable, TorchGraphPeer, TorchPeer, jax_device, jax_training
from fastnn.bench.workloads import CONFIGS, Config
from fastnn.engines.generic import GenericEngine

from .conftest import real_gpu_reason

TOL = {"float32": {"rtol": 1e-4, "atol": 1e-6}, "float64": {"rtol": 1e-10, "atol": 1e-12}}
SMALL = [  # every activation and cost the jax peer accepts, on small nets
    Config("sigmoid-quadratic", (6, 5, 3), "sigmoid", "sigmoid", "quadratic", 4, 3.0),
    Config("tanh-quadratic-identity", (6, 5, 3), "tanh", "identity", "quadratic", 4, 0.5),
    Config("relu-log-likelihood", (6, 8, 5, 3), "relu", "softmax", "log-likelihood", 4, 0.5),
    Config("sigmoid-cross-entropy", (6, 5, 3), "sigmoid", "sigmoid", "cross-entropy", 4, 1.0),
]
CASES = SMALL + [CONFIGS[name] for name in ("textbook", "mid", "wide")]


def network(config, dtype, seed=0):
    return Network(list(config.sizes), activation=config.activation, output=config.output, cost=config.cost,
                   device="cpu", dtype=dtype, seed=seed)


@functools.cache
def fashion():
    X, y, _ = bench.load_data(1024)  # Fashion-MNIST's first rows when installed (read once), else synthetic
    return X, y


def data(config, n, seed=1):
    if config.sizes[0] == 784:
        X, y = fashion()
        return X[:n], y[:n]
    rng = np.random.default_rng(seed)
    return rng.random((n, config.sizes[0]), dtype=np.float32), rng.integers(0, config.sizes[-1], n)


def jax_targets(config, y, dtype):
    """Labels for log-likelihood, one-hot rows otherwise, as the jax peer holds them."""
    if config.cost == "log-likelihood":
        return np.asarray(y, np.int32)
    return np.eye(config.sizes[-1], dtype=dtype)[y]


def jax_params(jax, net):
    return [(jax.numpy.asarray(w), jax.numpy.asarray(b)) for w, b in zip(net.weights, net.biases)]


def assert_same(got, want, dtype):
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g, np.float64), w, **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("config", CASES, ids=lambda c: c.name)
def test_one_jax_step_equals_fastnns_step(config, dtype):
    jax = pytest.importorskip("jax")
    X, y = data(config, config.batch_size)
    net = network(config, dtype)
    with jax.enable_x64(dtype == "float64"):
        params = jax_params(jax, net)
        step, _, _ = jax_training(jax, config, config.batch_size, config.lr)
        params, cost = jax.jit(step)(params, X.astype(dtype), jax_targets(config, y, dtype))
        assert params[0][0].dtype == np.dtype(dtype)
        history = net.fit(X, y, epochs=1, batch_size=config.batch_size, lr=config.lr, shuffle=False, engine="generic")
        start = network(config, dtype).weights
        assert not np.allclose(net.weights[0], start[0], rtol=0, atol=0)  # it did train
        assert_same([w for w, _ in params], net.weights, dtype)
        assert_same([b for _, b in params], net.biases, dtype)
        np.testing.assert_allclose(float(cost) / config.batch_size, history.loss[0], rtol=TOL[dtype]["rtol"] * 10)


@pytest.mark.parametrize("config", [SMALL[0], SMALL[2], CONFIGS["mid"]], ids=lambda c: c.name)
def test_the_jax_scan_and_short_last_batch_equal_fastnns_epoch(config):
    """An epoch in a given order: the scan over the full batches, then the short one, jitted."""
    jax = pytest.importorskip("jax")
    m = config.batch_size
    n = 3 * m + m // 2 + 1  # three full batches and a short one
    X, y = data(config, n)
    order = np.random.default_rng(2).permutation(n)
    net = network(config, "float64")
    with jax.enable_x64(True):
        params = jax_params(jax, net)
        _, sweep, _ = jax_training(jax, config, m, config.lr)
        params, total = jax.jit(sweep)(params, X.astype(np.float64), jax_targets(config, y, np.float64), order)
        Xd, Yd, _ = net._inputs(X, y)
        cost = GenericEngine(net).epoch(Xd, Yd, order, m, config.lr, 0.0, 0.0, None)
        assert_same([w for w, _ in params], net.weights, "float64")
        assert_same([b for _, b in params], net.biases, "float64")
        np.testing.assert_allclose(float(total), float(cost), rtol=1e-9)


def test_the_jax_peer_trains_a_shuffled_epoch_on_the_device():
    """The peer's own epoch: compiled per number of examples, the shuffle on the device, float32."""
    pytest.importorskip("jax")
    config = CONFIGS["textbook"]
    X, y = data(config, 95)
    cpu = get_backend("cpu")
    peer, start = JaxPeer(cpu, config, X, y), FastnnPeer(cpu, config, X, y).net.weights
    assert_same(peer.weights(), start, "float32")  # the same initial weights as every peer
    assert peer.epoch(95) >= 0 and peer.epoch(40) >= 0 and peer.epoch(95) >= 0
    assert sorted(peer._compiled) == [40, 95] and peer.device_bytes() is None and peer.dev.platform == "cpu"
    weights = peer.weights()
    assert all(np.isfinite(w).all() for w in weights) and not np.allclose(weights[0], start[0])


def test_the_jax_peer_pins_every_matmul_to_float32():
    """XLA runs float32 matmuls as TF32 on Ampere/Hopper unless told: the peer's forward and gradient matmuls are
    all precision=HIGHEST (in the lowered program, which is what the GPU compiles), and it records fp32."""
    pytest.importorskip("jax")
    config = CONFIGS["textbook"]
    X, y = data(config, 20)
    peer = JaxPeer(get_backend("cpu"), config, X, y)
    text = peer._epoch.lower(peer.params, peer.key, peer.X, peer.Y, 20).as_text()
    dots = [line for line in text.splitlines() if "dot_general" in line]
    assert len(dots) >= 4, text  # forward and backward of two layers, at least
    assert all("precision = [HIGHEST, HIGHEST]" in line for line in dots), dots
    assert peer.precision == "fp32"


def test_jax_without_a_gpu_says_why():
    jax = pytest.importorskip("jax")
    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("JAX sees a GPU here")
    cuda = types.SimpleNamespace(is_cuda=True, index=0, device="cuda:0")
    with pytest.raises(PeerUnavailable, match=r"this JAX \(.*\) sees no GPU"):
        jax_device(jax, cuda)


def test_the_torch_graph_step_run_eagerly_equals_fastnn_and_pytorch_eager():
    """The step the CUDA graph captures, run eagerly on the CPU: one batch equals fastnn's step, and an
    epoch of several batches (the short last one included) equals the PyTorch eager peer's."""
    pytest.importorskip("torch")
    cpu = get_backend("cpu")
    for config in (CONFIGS["textbook"], CONFIGS["mid"]):
        X, y = data(config, 3 * config.batch_size + 3)
        graph, fastnn = TorchGraphPeer(cpu, config, X, y, capture=False), FastnnPeer(cpu, config, X, y)
        graph.epoch(config.batch_size)
        fastnn.epoch(config.batch_size)
        assert_same(graph.weights(), fastnn.net.weights, "float32")
        eager = TorchPeer(cpu, config, X, y)
        eager.epoch(config.batch_size)
        n = len(X)
        graph.epoch(n)
        eager.epoch(n)  # the same seeded shuffle
        for a, b in zip(graph.weights(), eager.weights()):
            np.testing.assert_array_equal(a, b)


def test_the_torch_graph_peer_needs_a_cuda_device():
    pytest.importorskip("torch")
    config = CONFIGS["textbook"]
    X, y = data(config, 10)
    with pytest.raises(PeerUnavailable, match="CUDA graphs need a CUDA device"):
        TorchGraphPeer(get_backend("cpu"), config, X, y)


def cuda_or_skip():
    reason = real_gpu_reason()
    if reason:
        pytest.skip(f"no real CUDA device: {reason}")
    return get_backend("cuda")


@pytest.mark.gpu
def test_the_captured_torch_graph_equals_its_eager_step_on_the_gpu():
    pytest.importorskip("torch")
    gpu = cuda_or_skip()
    config = CONFIGS["mid"]
    X, y = data(config, 10 * config.batch_size + 7)
    n = len(X)
    graph, eager = TorchGraphPeer(gpu, config, X, y), TorchGraphPeer(gpu, config, X, y, capture=False)
    graph.epoch(n)  # captures both batch sizes, after warm-up steps that train too
    eager.epoch(n)  # the same shuffle drawn: both generators stay in step
    eager.model.load_state_dict(graph.model.state_dict())  # from the same weights on
    graph.epoch(n)
    eager.epoch(n)
    assert sorted(graph._graphs) == [7, config.batch_size]  # the full batch and the short last one
    for a, b in zip(graph.weights(), eager.weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
def test_jax_on_the_gpu_equals_fastnns_step():
    jax = pytest.importorskip("jax")
    gpu = cuda_or_skip()
    config = CONFIGS["mid"]
    X, y = data(config, config.batch_size)
    peer = JaxPeer(gpu, config, X, y)
    assert peer.dev.platform == "gpu"
    # Pinned to float32, as fastnn computes: TF32 (XLA's default for float32 on this GPU) moves ~250 of the
    # 100,352 weights outside the float32 tolerance.  The peer pins each matmul (precision=HIGHEST).
    text = peer._epoch.lower(peer.params, peer.key, peer.X, peer.Y, config.batch_size).as_text()
    assert all("precision = [HIGHEST, HIGHEST]" in line for line in text.splitlines() if "dot_general" in line)
    peer.epoch(config.batch_size)
    fastnn = FastnnPeer(get_backend("cpu"), config, X, y)
    fastnn.epoch(config.batch_size)
    assert_same(peer.weights(), fastnn.net.weights, "float32")
    assert jax.devices("gpu") and peer.device_bytes() > 0
