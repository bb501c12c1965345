"""The fused CUDA engine's kernel logic, run on the CPU: the .cu compiled with g++ (tests/kernel_shim)
against the generic numpy engine, same seed and order.

Tolerance (float32): after two epochs every parameter, velocity entry and the epoch costs agree with
the generic engine's within atol 2e-5 + rtol 2e-4: a few float32 roundings per step, as the sums run
in another order (the kernel's dot products vs BLAS) and σ is the C library's.
"""

import numpy as np
import pytest

from fastnn import Network
from fastnn.engines import cuda_fused
from fastnn.engines.generic import GenericEngine
from tests.kernel_shim import compiler_reason, fused_library

pytestmark = pytest.mark.kernel

ATOL, RTOL = 2e-5, 2e-4
HIDDEN = ("sigmoid", "tanh", "relu", "identity")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    reason = compiler_reason()
    if reason:
        pytest.fail(f"the kernel tests need g++: {reason}")  # CI has it: failing, not skipping, keeps them honest
    return fused_library(tmp_path_factory.mktemp("shim"))


def problem(sizes, n, seed=0):
    """n random inputs and one-hot targets (a single output gets 0/1 targets)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, sizes[0])).astype(np.float32)
    labels = rng.integers(0, max(sizes[-1], 2), n)
    Y = np.zeros((n, sizes[-1]), np.float32)
    if sizes[-1] == 1:
        Y[:, 0] = labels
    else:
        Y[np.arange(n), labels] = 1
    return X, Y


def run_fused(lib, net, X, Y, order, batch_size, lr, momentum, l2, velocity, threads, cluster=1, limit=None,
              chunks=0, shape=cuda_fused.W0_SHAPE):
    """One epoch of the kernel on the CPU, through the engine's own argument list; returns the cost.
    ``limit``: the device's shared memory (W^0's velocity then goes on chip where it fits), or None (global);
    ``chunks``, ``shape``: the library's FASTNN_W0REG (its layout has no W^0) and (FASTNN_W0ROWS, FASTNN_W0GROUP)."""
    cost = np.zeros(1, np.float64)
    sizes = np.asarray(net.sizes, np.int32)
    nbytes, args = cuda_fused.kernel_arguments(net, sizes, cost, X, Y, order, batch_size, lr, momentum, l2,
                                               velocity, threads=threads, cluster=cluster, limit=limit, chunks=chunks,
                                               shape=shape)
    assert lib.shim_fused_epoch(cluster, threads, nbytes, *args) == 0
    return cost[0]


def compare(lib, sizes, activation, output, cost, momentum=0.0, l2=0.0, batch_size=4, n=11, threads=64,
            epochs=2, lr=0.5, cluster=1, limit=None, chunks=0, shape=cuda_fused.W0_SHAPE):
    """Train twin networks for ``epochs`` epochs with the kernel and with the generic engine; compare."""
    kwargs = {"activation": activation, "output": output, "cost": cost, "device": "cpu", "seed": 3}
    fused, generic = Network(sizes, **kwargs), Network(sizes, **kwargs)
    X, Y = problem(sizes, n)
    v_fused = np.zeros_like(fused.params) if momentum else None
    v_generic = np.zeros_like(generic.params) if momentum else None
    rng = np.random.default_rng(1)
    for _ in range(epochs):
        order = rng.permutation(n).astype(np.int64)
        c_fused = run_fused(lib, fused, X, Y, order, batch_size, lr, momentum, l2, v_fused, threads, cluster, limit,
                            chunks, shape)
        c_generic = float(GenericEngine(generic).epoch(X, Y, order, batch_size, lr, momentum, l2, v_generic))
        np.testing.assert_allclose(c_fused, c_generic, rtol=RTOL, atol=ATOL)
    assert not np.array_equal(generic.params, Network(sizes, **kwargs).params)  # training moved the weights
    np.testing.assert_allclose(fused.params, generic.params, rtol=RTOL, atol=ATOL)
    if momentum:
        np.testing.assert_allclose(v_fused, v_generic, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("output", HIDDEN + ("softmax",))
def test_every_activation_quadratic(lib, hidden, output):
    compare(lib, [5, 4, 3], hidden, output, "quadratic", lr=0.3 if output == "identity" else 0.5)


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("output, cost", [("sigmoid", "cross-entropy"), ("softmax", "log-likelihood")])
def test_matched_costs(lib, hidden, output, cost):
    compare(lib, [5, 4, 3], hidden, output, cost)


@pytest.mark.parametrize("momentum, l2", [(0.0, 0.0), (0.9, 0.0), (0.0, 5.0), (0.9, 5.0)],
                         ids=["plain", "momentum", "l2", "momentum+l2"])
@pytest.mark.parametrize("output, cost", [("sigmoid", "quadratic"), ("softmax", "log-likelihood")])
@pytest.mark.parametrize("limit", [None, 227 * 1024], ids=["v0-global", "v0-shared"])
def test_every_update_rule(lib, momentum, l2, output, cost, limit):
    """Every rule, with W^0's velocity in global memory and (where the device has room) in shared memory."""
    compare(lib, [5, 4, 3], "sigmoid", output, cost, momentum=momentum, l2=l2, limit=limit)


@pytest.mark.parametrize("sizes", [[4, 3], [6, 5, 4, 3], [3, 7, 1], [9, 40, 2]], ids=str)
def test_depths_and_widths(lib, sizes):
    """No hidden layer, two hidden layers, one output unit, and a layer wider than the dot-product groups."""
    cost = "cross-entropy" if sizes[-1] == 1 else "quadratic"
    compare(lib, sizes, "tanh", "sigmoid", cost, momentum=0.5, l2=1.0)


@pytest.mark.parametrize("threads", [32, 96, 128])
@pytest.mark.parametrize("batch_size, n", [(4, 11), (3, 3), (20, 7), (1, 5), (10, 23), (16, 37), (17, 40)],
                         ids=["short-last", "one-batch", "batch-past-n", "batch-1", "two-example-blocks",
                              "two-full-example-blocks", "three-example-blocks"])
def test_block_sizes_and_batches(lib, threads, batch_size, n):
    """Any block size (odd, one thread), a short last batch, a batch larger than the set, batches of 1."""
    compare(lib, [5, 4, 3], "relu", "softmax", "log-likelihood", momentum=0.9, l2=1.0, batch_size=batch_size, n=n,
            threads=threads)


def test_the_gpu_block_size_on_a_textbook_shaped_layer(lib):
    """cuda_fused.THREADS threads and 30 hidden units, as the textbook net runs on the GPU (12 warps split its inputs)."""
    compare(lib, [20, 30, 10], "sigmoid", "sigmoid", "quadratic", momentum=0.9, l2=1.0, batch_size=10, n=25,
            threads=cuda_fused.THREADS, epochs=1)


def test_shared_memory_layout_fits_what_the_kernel_uses(lib):
    """shared_bytes is the kernel's own layout, worked by hand for 5-4-3 at batch 4 on one warp; one float less
    is refused by the kernel (cost NaN, parameters untouched), and at exactly that size the result is right
    (the shim fills shared memory with NaN before each launch)."""
    net = Network([5, 4, 3], device="cpu", seed=0)
    X, Y = problem(net.sizes, 6)
    order = np.arange(6, dtype=np.int64)
    weights = 4 * 36 + 3 * 4 + 4 + 4  # rows padded to 36 (≥ 8, ≡ 4 mod 32) and 4 floats; b^1, b^2 to 4 each
    inputs = 2 * 4 * 8 + 24  # x: two buffers of 4 rows of 8; y: two of 4 rows of 3
    layers = 2 * 4 * 4 * 2 + 4 * 4 + 4  # a^l and δ^l (rows of 4), z^L, the costs; no split sums on one warp
    layers += 20 * 3 + 4  # the table (a row of 20 ints per layer, one for the layout), the epoch's cost (a double)
    layers += 3 * 4 + 4 + 4  # the velocity of W^2 (3 × 4) and of b^1, b^2 (4 + 3, rounded to 8)
    layers += 2 * 4 * 2  # the ring: two steps' row indices, 4 long longs each
    cost = np.zeros(1, np.float64)
    nbytes, args = cuda_fused.kernel_arguments(net, np.asarray(net.sizes, np.int32), cost, X, Y, order, 4, 0.5,
                                               0.0, 0.0, None, threads=32)
    assert nbytes == 4 * (weights + inputs + layers)
    start = net.params.copy()
    assert lib.shim_fused_epoch(1, 32, nbytes - 4, *args) == 0
    assert np.isnan(cost[0]) and np.array_equal(net.params, start)
    assert lib.shim_fused_epoch(1, 32, nbytes, *args) == 0
    assert np.isfinite(net.params).all() and np.isfinite(cost).all() and not np.array_equal(net.params, start)


def test_a_layout_past_227_kib_is_refused_not_run(lib):
    """784-60-10 at batch 10 needs more than an H100's 227 KiB: unfit says so, and the shim refuses the launch."""
    net = Network([784, 60, 10], device="cpu", seed=0)
    X, Y = problem(net.sizes, 20)
    cost = np.zeros(1, np.float64)
    nbytes, args = cuda_fused.kernel_arguments(net, np.asarray(net.sizes, np.int32), cost, X, Y,
                                               np.arange(20, dtype=np.int64), 10, 0.5, 0.0, 0.0, None)
    assert nbytes > 227 * 1024
    start = net.params.copy()
    assert lib.shim_fused_epoch(1, cuda_fused.THREADS, nbytes, *args) == 1
    assert np.array_equal(net.params, start) and cost[0] == 0


@pytest.mark.parametrize("batch_size, n", [(4, 11), (4, 12), (5, 3), (1, 4)], ids=["short-last", "even", "one-short",
                                                                                    "batch-1"])
def test_prefetch_copies_every_row_once_and_none_past_the_order(lib, batch_size, n):
    """The next batch's rows are fetched while a step computes: over an epoch every row of the order is copied
    exactly once (its X row and its Y row), and so is each index from the third step on (into the ring: the first
    two steps' are read before the loop), the last step fetches nothing past the order's end, and the result is the
    generic engine's (compare).  The order here is a view into a longer array whose tail names a row of NaN: a fetch
    past the end would read it."""
    sizes = [6, 5, 3]
    net = Network(sizes, device="cpu", seed=0)
    X, Y = problem(sizes, n + 1)
    X[n] = np.nan
    longer = np.concatenate([np.random.default_rng(2).permutation(n), [n] * batch_size]).astype(np.int64)
    lib.shim_copied()
    cost = run_fused(lib, net, X, Y, longer[:n], batch_size, 0.5, 0.0, 0.0, None, 64)
    assert lib.shim_copied() == 4 * n * (sizes[0] + sizes[-1]) + 8 * max(0, n - 2 * batch_size)
    assert np.isfinite(cost) and np.isfinite(net.params).all()
    compare(lib, sizes, "sigmoid", "softmax", "log-likelihood", batch_size=batch_size, n=n, threads=64)


def test_many_networks_in_one_launch(lib):
    """Three networks of one shape, each with its own weights, order, learning rate, momentum and L2, trained as
    three blocks of one launch: each ends as the generic engine leaves it when trained alone."""
    sizes, n, batch, K = [7, 6, 3], 13, 4, 3
    kwargs = {"activation": "tanh", "output": "softmax", "cost": "log-likelihood", "device": "cpu"}
    nets = [Network(sizes, seed=s, **kwargs) for s in range(K)]
    twins = [Network(sizes, seed=s, **kwargs) for s in range(K)]
    X, Y = problem(sizes, n)
    rng = np.random.default_rng(5)
    orders = np.stack([rng.permutation(n) for _ in range(K)]).astype(np.int64)
    lrs, momenta, l2s = [0.5, 0.2, 0.05], [0.9, 0.5, 0.0], [1.0, 0.0, 3.0]
    params = np.stack([net.params for net in nets])
    velocity = np.zeros_like(params)
    cost = np.zeros(K, np.float64)
    nbytes, args = cuda_fused.kernel_arguments(nets[0], np.asarray(sizes, np.int32), cost, X, Y, orders, batch, lrs,
                                               momenta, l2s, velocity, threads=64, params=params)
    assert lib.shim_fused_epoch(K, 64, nbytes, *args) == 0
    for k, twin in enumerate(twins):
        v = np.zeros_like(twin.params)
        expected = float(GenericEngine(twin).epoch(X, Y, orders[k], batch, lrs[k], momenta[k], l2s[k], v))
        np.testing.assert_allclose(cost[k], expected, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(params[k], twin.params, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(velocity[k], v, rtol=RTOL, atol=ATOL)
    assert not np.allclose(params[0], params[1])


@pytest.mark.parametrize("batch_size, n", [(10, 23), (4, 9), (3, 7)], ids=["three-blocks", "one-block", "short"])
def test_a_register_block_smaller_than_the_batch(tmp_path_factory, batch_size, n):
    """The host compiles FASTNN_MB = the batch size (up to 16); built with FASTNN_MB=4, a batch of 10 takes three
    register blocks in the forward pass and the shared-memory path of BP4 past the first four examples."""
    small = fused_library(tmp_path_factory.mktemp("mb4"), name="fused_mb4", defines=("FASTNN_MB=4",))
    compare(small, [6, 40, 5, 3], "sigmoid", "softmax", "log-likelihood", momentum=0.9, l2=1.0,
            batch_size=batch_size, n=n, threads=64)


def test_unfit_says_why_and_the_limit():
    """The refusals name the network, its parameters and the limit (a stand-in backend reports 227 KiB)."""

    class Props:
        is_cuda, device, index = True, "cuda:0", 0

        class xp:
            class cuda:
                class runtime:
                    @staticmethod
                    def getDeviceProperties(i):
                        return {"sharedMemPerBlockOptin": 232448, "sharedMemPerBlock": 49152}

    big = Network([784, 1024, 10], device="cpu", seed=0)
    big.backend = Props()
    reason = cuda_fused.unfit(big, 10, 0.0, 0.0)
    assert reason.startswith("784-1024-10 has 814k parameters") and "227 KiB" in reason, reason
    textbook = Network([784, 30, 10], device="cpu", seed=0)
    textbook.backend = Props()
    assert cuda_fused.unfit(textbook, 10, 0.9, 5.0) is None
    assert cuda_fused.unfit(textbook, 1000, 0.0, 0.0).endswith("(batch 1000's activations alone are too many)")
    assert "float32 only" in cuda_fused.unfit(Network([4, 3], device="cpu", dtype="float64"), 10, 0, 0)


@pytest.fixture(scope="module")
def cluster_lib(tmp_path_factory):
    """The sm_90 variant: FASTNN_CLUSTER=8 blocks per network, layer 0's inputs split between them."""
    if compiler_reason():
        pytest.fail(f"the kernel tests need g++: {compiler_reason()}")
    return fused_library(tmp_path_factory.mktemp("cluster"), name="fused_cluster", defines=("FASTNN_CLUSTER=8",))


@pytest.mark.parametrize("sizes, batch_size, n", [([64, 30, 10], 10, 23), ([37, 6, 3], 4, 11), ([20, 40, 5, 3], 3, 7),
                                                  ([9, 4], 5, 12)],
                         ids=["even-split", "ranks-without-columns", "deep-wide-short", "one-layer"])
@pytest.mark.parametrize("momentum, l2", [(0.0, 0.0), (0.9, 1.0)], ids=["plain", "momentum+l2"])
def test_the_cluster_split(cluster_lib, sizes, batch_size, n, momentum, l2):
    """Eight blocks share layer 0's inputs and exchange their sums through distributed shared memory once a step;
    every block finishes the small layers identically: the generic engine's result.  37 inputs are 10 chunks, so
    ranks 5-7 hold none; a network of one layer takes the exchange straight into the output."""
    output, cost = ("softmax", "log-likelihood") if sizes[-1] > 1 else ("sigmoid", "cross-entropy")
    compare(cluster_lib, sizes, "tanh", output, cost, momentum=momentum, l2=l2, batch_size=batch_size, n=n,
            threads=32, cluster=8)
    if momentum:  # W^0's velocity on chip, each block its columns
        compare(cluster_lib, sizes, "tanh", output, cost, momentum=momentum, l2=l2, batch_size=batch_size, n=n,
                threads=32, cluster=8, limit=227 * 1024)


def test_the_cluster_prefetches_each_block_its_columns(cluster_lib):
    """In a cluster each block fetches its share of every row of X (and the whole row of Y): over an epoch
    the rows of X are copied once in all, those of Y once per block, and the indices (from the third step on) once
    per block."""
    sizes, n = [64, 6, 3], 9
    net = Network(sizes, device="cpu", seed=0)
    X, Y = problem(sizes, n)
    cluster_lib.shim_copied()
    run_fused(cluster_lib, net, X, Y, np.arange(n, dtype=np.int64), 4, 0.5, 0.0, 0.0, None, 32, cluster=8)
    assert cluster_lib.shim_copied() == 4 * n * (sizes[0] + 8 * sizes[-1]) + 8 * 8 * (n - 2 * 4)


def test_many_networks_on_clusters(cluster_lib):
    """Two networks, two clusters of eight blocks in one launch."""
    sizes, n, batch, K = [40, 6, 3], 9, 4, 2
    nets = [Network(sizes, seed=s, device="cpu") for s in range(K)]
    twins = [Network(sizes, seed=s, device="cpu") for s in range(K)]
    X, Y = problem(sizes, n)
    orders = np.stack([np.random.default_rng(s).permutation(n) for s in range(K)]).astype(np.int64)
    params = np.stack([net.params for net in nets])
    cost = np.zeros(K, np.float64)
    nbytes, args = cuda_fused.kernel_arguments(nets[0], np.asarray(sizes, np.int32), cost, X, Y, orders, batch,
                                               [0.5, 0.1], [0.0, 0.0], [0.0, 2.0], None, threads=32, params=params,
                                               cluster=8)
    assert cluster_lib.shim_fused_epoch(K * 8, 32, nbytes, *args) == 0
    for k, (twin, lr, l2) in enumerate(zip(twins, [0.5, 0.1], [0.0, 2.0])):
        expected = float(GenericEngine(twin).epoch(X, Y, orders[k], batch, lr, 0.0, l2, None))
        np.testing.assert_allclose(cost[k], expected, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(params[k], twin.params, rtol=RTOL, atol=ATOL)


def test_the_cluster_fits_what_one_sm_cannot():
    """784-128-10 at batch 32 needs more than one SM's 227 KiB; split over a cluster of 8 it fits.  At batch 64
    (the "mid" benchmark) its activations and split sums alone are too many even for the cluster."""
    limit = 227 * 1024
    assert cuda_fused.shared_bytes([784, 128, 10], 32) > limit >= cuda_fused.shared_bytes([784, 128, 10], 32, cluster=8)
    assert cuda_fused.shared_bytes([784, 128, 10], 64, cluster=8) > limit
