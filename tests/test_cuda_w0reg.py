"""W^0 held in registers for the whole epoch (the kernel built with FASTNN_W0REG > 0): its logic on the CPU, through
the g++ shim, against the generic numpy engine (tests/test_cuda_kernel.compare, the same tolerance).

The host compiles it where register_chunks says so (n_1 <= 32, a batch of at most 16, a tile within W0_BUDGET),
with the block size it was compiled for; here small block sizes keep the shim's threads few.  Each build's
mapping (FASTNN_W0ROWS = R, FASTNN_W0GROUP = G; 2 and 16 unless given): thread t holds rows t % G, t % G + G, ...
(R of them) of W^0 over every (threads / G)-th chunk, from chunk t / G (its slot).
"""

import numpy as np
import pytest

from fastnn import Network
from fastnn.engines import cuda_fused
from tests.kernel_shim import compiler_reason, fused_library
from tests.test_cuda_kernel import compare, problem, run_fused

pytestmark = pytest.mark.kernel


def build(tmp_path_factory, chunks, threads, batch, cluster=1, shape=cuda_fused.W0_SHAPE):
    if compiler_reason():
        pytest.fail(f"the kernel tests need g++: {compiler_reason()}")
    name = f"w0_{chunks}_{threads}_{batch}_{cluster}_{shape[0]}_{shape[1]}"
    defines = (f"FASTNN_W0REG={chunks}", f"FASTNN_THREADS={threads}", f"FASTNN_MB={batch}", f"FASTNN_CLUSTER={cluster}",
               f"FASTNN_W0ROWS={shape[0]}", f"FASTNN_W0GROUP={shape[1]}")
    return fused_library(tmp_path_factory.mktemp(name), name=name, defines=defines)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """Two warps, 2 rows a thread in groups of 16 (four slots), three chunks each, batch 4: 40 inputs are 10 chunks,
    so slots 0 and 1 hold three and 2 and 3 hold two; n_1 = 20 fills rows 16-19 of the second rows, 20-31 empty."""
    return build(tmp_path_factory, 3, 64, 4)


HIDDEN = ("sigmoid", "tanh", "relu", "identity")


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("output, cost", [("sigmoid", "quadratic"), ("softmax", "log-likelihood"),
                                          ("sigmoid", "cross-entropy")])
def test_every_activation_and_cost(lib, hidden, output, cost):
    compare(lib, [40, 20, 3], hidden, output, cost, batch_size=4, n=11, threads=64, chunks=3)


@pytest.mark.parametrize("momentum, l2", [(0.0, 0.0), (0.9, 0.0), (0.0, 5.0), (0.9, 5.0)],
                         ids=["plain", "momentum", "l2", "momentum+l2"])
@pytest.mark.parametrize("limit", [None, 227 * 1024], ids=["v0-global", "v0-shared"])
def test_every_update_rule(lib, momentum, l2, limit):
    """Each rule, W^0's velocity in global memory and in shared memory; n = 11 ends every epoch on a short batch
    of 3, whose fourth example slot holds an earlier step's inputs (δ there is 0: it adds nothing)."""
    compare(lib, [40, 20, 3], "sigmoid", "softmax", "log-likelihood", momentum=momentum, l2=l2, batch_size=4, n=11,
            threads=64, limit=limit, chunks=3)


@pytest.mark.parametrize("sizes", [[40, 32, 3], [38, 5, 4, 3], [37, 20]], ids=str)
def test_shapes(lib, sizes):
    """Every row of both halves (n_1 = 32), rows only in the lower lanes (n_1 = 5) with a second hidden layer, an
    input width whose last chunk is padded (37), and a network of one layer (the tile's sums are the output)."""
    output, cost = ("softmax", "log-likelihood") if sizes[-1] > 1 else ("sigmoid", "cross-entropy")
    if len(sizes) == 2:
        output, cost = "softmax", "log-likelihood"
    compare(lib, sizes, "tanh", output, cost, momentum=0.5, l2=1.0, batch_size=4, n=9, threads=64, chunks=3)


def test_launches_the_tile_does_not_cover_are_refused_not_run(lib):
    """A launch with another block size, another batch, n_1 > 32, more chunks than the tile holds (13 > 12), so few
    that no thread needs its last (6 <= 8: the tile was compiled for another width), or fewer than the warps: the
    kernel returns a NaN cost and leaves the weights (the host never launches them: register_chunks)."""
    for sizes, batch, threads in (([40, 20, 3], 4, 96), ([40, 20, 3], 3, 64), ([40, 33, 3], 4, 64),
                                  ([52, 20, 3], 4, 64), ([24, 20, 3], 4, 64), ([4, 20, 3], 4, 64)):
        net = Network(sizes, device="cpu", seed=0)
        X, Y = problem(sizes, 8)
        start = net.params.copy()
        cost = run_fused(lib, net, X, Y, np.arange(8, dtype=np.int64), batch, 0.5, 0.0, 0.0, None, threads, chunks=3)
        assert np.isnan(cost) and np.array_equal(net.params, start), (sizes, batch, threads)


def test_the_textbook_as_the_host_compiles_it(tmp_path_factory):
    """784-30-10 at batch 10: 3 rows a thread in groups of 10, 25 slots (threads 250-255 in none), 196 chunks over
    the slots, 8 a thread (slots 21-24 hold 7), as register_chunks, tile_shape and threads() give it; the fetching
    warps are 5-7 (w0_fetchers); 25 examples end on a short batch of 5."""
    sizes = [784, 30, 10]
    chunks, shape = cuda_fused.register_chunks(sizes, 10), cuda_fused.tile_shape(sizes)
    assert (chunks, shape, cuda_fused.tile_slots(sizes), cuda_fused.threads(chunks)) == (8, (3, 10), 25, 256)
    big = build(tmp_path_factory, chunks, 256, 10, shape=shape)
    for momentum, l2, limit in ((0.9, 1.0, 227 * 1024), (0.0, 0.0, None)):
        compare(big, sizes, "sigmoid", "sigmoid", "quadratic", momentum=momentum, l2=l2, batch_size=10, n=25,
                threads=256, epochs=1, limit=limit, chunks=chunks, shape=shape)


@pytest.mark.parametrize("sizes, shape, slots, batch", [([104, 30, 3], (3, 10), 6, 4), ([44, 20, 3], (2, 10), 6, 4),
                                                       ([100, 10, 3], (3, 4), 16, 4), ([104, 32, 3], (4, 8), 8, 4),
                                                       ([104, 30, 3], (3, 10), 6, 2)], ids=str)
def test_every_shape_and_threads_past_the_last_slot(tmp_path_factory, sizes, shape, slots, batch):
    """The shapes tile_shape picks, on 64 threads: 30 rows 3 a thread in 6 slots of 10 (threads 60-63 in none; 26
    chunks, 5 for slots 0 and 1, 4 for the rest); 20 rows 2 a thread, 6 slots of 10 (11 chunks); 10 rows 3 a thread
    in 16 slots of 4 (two rows of the last group empty; 25 chunks); 32 rows 4 a thread in 8 slots of 8.  The threads
    past the last slot run the unguarded chunks on zeros and write nothing.  At batch 2 every chunk is guarded
    (W0_HELD)."""
    assert (cuda_fused.tile_shape(sizes), 64 // shape[1]) == (shape, slots)
    chunks = -(-(sizes[0] // 4) // slots)
    lib = build(tmp_path_factory, chunks, 64, batch, shape=shape)
    for momentum, l2 in ((0.0, 0.0), (0.9, 1.0)):
        compare(lib, sizes, "tanh", "softmax", "log-likelihood", momentum=momentum, l2=l2, batch_size=batch, n=11,
                threads=64, chunks=chunks, shape=shape)


@pytest.mark.parametrize("momentum, l2", [(0.0, 0.0), (0.9, 1.0)], ids=["plain", "momentum+l2"])
def test_the_tile_on_a_cluster(tmp_path_factory, momentum, l2):
    """The sm_90 variant with the tile (which the host does not pick: register_chunks): 8 blocks of two warps; 216
    inputs are 54 chunks, 7 a block, over four slots of 16 (two, two, two and one); the blocks' sums meet through
    the exchange."""
    sizes = [216, 12, 3]
    assert cuda_fused.block_inputs(sizes, 0, 8) // 4 == 7
    lib8 = build(tmp_path_factory, 2, 64, 4, cluster=8)
    compare(lib8, sizes, "tanh", "softmax", "log-likelihood", momentum=momentum, l2=l2, batch_size=4, n=11,
            threads=64, cluster=8, chunks=2)
    if momentum:  # W^0's velocity on chip, each block its columns
        compare(lib8, sizes, "tanh", "softmax", "log-likelihood", momentum=momentum, l2=l2, batch_size=4, n=11,
                threads=64, cluster=8, limit=227 * 1024, chunks=2)


def test_register_chunks_says_where_the_tile_goes():
    assert cuda_fused.register_chunks([784, 30, 10], 10, cluster=8) == 0  # on a cluster: the shared variant
    assert cuda_fused.register_chunks([784, 128, 10], 10) == 0  # n_1 > 32
    assert cuda_fused.register_chunks([784, 30, 10], 64) == 0  # a batch past EXAMPLE_BLOCK
    assert cuda_fused.register_chunks([20, 30, 10], 10) == 0  # 5 chunks: fewer than the 25 slots
    assert cuda_fused.register_chunks([784, 30, 10], 16) == 0  # 8 chunks at batch 16: 12·8 + 4·16 past budget(3)
    assert cuda_fused.register_chunks([700, 30, 10], 16) == 7  # 175 chunks: 7 a slot, 12·7 + 4·16 = budget(3)
    assert cuda_fused.register_chunks([784, 30, 10], 10) == 8  # 196 chunks over 25 slots
    assert cuda_fused.register_chunks([804, 30, 10], 10) == 9  # 201 chunks: 9 a slot, 12·9 + 4·10 = budget(3)
    assert cuda_fused.register_chunks([904, 30, 10], 10) == 0  # 226 chunks: 10 a slot, past budget(3)
    assert cuda_fused.register_chunks([784, 32, 10], 10) == 7  # 4 rows in 32 slots: 16·7 + 5·10 = budget(4)
    assert [cuda_fused.tile_shape([784, n, 10]) for n in (1, 2, 5, 10, 20, 30, 31, 32)] == [
        (2, 2), (2, 2), (3, 2), (3, 4), (2, 10), (3, 10), (4, 8), (4, 8)]  # the fewest empty rows, even groups
    options = cuda_fused.compile_options(10, 1, 8, (3, 10))
    assert {"-DFASTNN_W0REG=8", "-DFASTNN_THREADS=256", "-DFASTNN_W0ROWS=3", "-DFASTNN_W0GROUP=10"} <= set(options)
    assert "-DFASTNN_W0REG=0" in cuda_fused.compile_options(64) and "-DFASTNN_THREADS=384" in cuda_fused.compile_options(64)


def test_the_tile_leaves_w0_out_of_shared_memory(lib):
    """With W^0 in registers the block lays out no copy of it: that much less shared memory (less the slots' split
    sums, more than the warps', and δ^1 unit-major), which the kernel uses to the last float (one float less is
    refused: NaN cost, weights untouched)."""
    sizes = [40, 20, 3]
    net = Network(sizes, device="cpu", seed=0)
    X, Y = problem(sizes, 8)
    order = np.arange(8, dtype=np.int64)
    cost = np.zeros(1, np.float64)
    args = (net, np.asarray(sizes, np.int32), cost, X, Y, order, 4, 0.5, 0.0, 0.0, None)
    with_w0, _ = cuda_fused.kernel_arguments(*args, threads=64)
    nbytes, call = cuda_fused.kernel_arguments(*args, threads=64, chunks=3)
    split_sums = 4 * 4 * 32 - 2 * 4 * 20  # the tile's 4 slots' sums of 4 examples, in rows of both rows of its 16
    # pairs (W0_LD = 32), against the two warps' sums of the 20 units (more)
    unit_major = 20 * 4  # and δ^1 unit-major for the tile's BP4, 4 examples a unit
    assert with_w0 - nbytes == 4 * (20 * cuda_fused.row_stride(40) - split_sums - unit_major)
    start = net.params.copy()
    assert lib.shim_fused_epoch(1, 64, nbytes - 4, *call) == 0
    assert np.isnan(cost[0]) and np.array_equal(net.params, start)
    assert lib.shim_fused_epoch(1, 64, nbytes, *call) == 0
    assert np.isfinite(cost[0]) and not np.array_equal(net.params, start)


def test_the_textbook_fits_an_a100_with_the_tile(monkeypatch):
    """An A100 opts in to 163 KiB of shared memory a block: 784-30-10 at batch 10 needs 177 KiB with W^0 in shared
    memory, 100 KiB with W^0 in registers, so the engine takes it there; at batch 16 (no tile) it does not fit."""
    monkeypatch.setattr(cuda_fused, "_shared_limit", lambda backend: 166912)
    monkeypatch.setattr(cuda_fused, "cluster_size", lambda backend: 1)
    net = Network([784, 30, 10], device="cpu", seed=0)
    assert cuda_fused.shared_bytes(net.sizes, 10) > 166912 >= cuda_fused.least_shared_bytes(net.sizes, 10)
    assert cuda_fused.unfit(net, 10, 0.0, 0.0) is None
    assert "163 KiB" in cuda_fused.unfit(net, 16, 0.0, 0.0)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_verify_rejects_a_tile_kernel_without_l2_and_passes_the_right_one(tmp_path_factory, monkeypatch, momentum):
    """engines.verify on the engine as the host launches the tile (256 inputs, 64 chunks: one a slot, 3 rows a
    thread in 64 slots of 4): the kernel with its L2 term dropped from the tile's update is rejected; the right one
    passes."""
    from tests.test_cuda_engine import ShimModule
    from tests.test_verify import check

    sizes = [256, 12, 3]
    chunks = cuda_fused.register_chunks(sizes, 10)
    assert chunks == 1
    source = cuda_fused.SOURCE.read_text()
    old = "fmaf(w.x, keep, st[i].x), fmaf(w.y, keep, st[i].y), fmaf(w.z, keep, st[i].z)"
    assert old in source
    defines = tuple(o[2:] for o in cuda_fused.compile_options(10, 1, chunks, cuda_fused.tile_shape(sizes))
                    if o.startswith("-D"))
    folder = tmp_path_factory.mktemp("verify_tile")
    right = fused_library(folder, name="verify_tile_right", defines=defines)
    wrong_source = source.replace(old, "(w.x + st[i].x), (w.y + st[i].y), (w.z + st[i].z)")
    wrong_source = wrong_source.replace("momentum_update(w.x, s.x, vc.x, momentum, decay)",
                                        "momentum_update(w.x, s.x, vc.x, momentum, 0.0f)")
    wrong = fused_library(folder, wrong_source, name="verify_tile_wrong", defines=defines)
    monkeypatch.setattr(cuda_fused, "cluster_size", lambda backend: 1)
    monkeypatch.setattr(cuda_fused, "_shared_limit", lambda backend: 232448)
    net = Network(sizes, device="cpu", seed=0)
    rng = np.random.default_rng(0)
    X, Y, _ = net._inputs(rng.standard_normal((40, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], 40))
    order = np.arange(40, dtype=np.int64)
    for lib, expected in ((wrong, False), (right, True)):
        monkeypatch.setattr(cuda_fused, "_module", lambda backend, batch_size=None, cluster=1, chunks=0, shape=None, lib=lib:
                            ShimModule(lib))
        assert check(cuda_fused.Engine(net, 10), net, X, Y, order, momentum=momentum, l2=0.1) is expected
