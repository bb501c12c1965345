"""The fused CUDA engine: one kernel launch per epoch, each network held on chip (one SM, or a cluster of SMs).

The kernel (``cuda_fused.cu``, beside this file; its top comment gives the shared-memory layout and the
mapping of each phase onto warps) is a persistent kernel: it copies a network's parameters into shared memory,
loops over every step of the epoch (forward, BP1, BP2, BP3/BP4, the plain/momentum/L2 update, the cost summed on
the device) and writes the parameters back.  The next batch's rows are copied into shared memory (cp.async, two
buffers) while the current step computes.  It trains float32 only.  Two variants, compiled per device:

- **sm_90 (H100/H200): a thread-block cluster of CLUSTER = 8 blocks per network**, a compile-time
  ``__cluster_dims__`` (cupy 14 launches with plain cuLaunchKernel and no launch attributes).  The blocks split
  layer 0's inputs (each holds its columns of W^0, of the inputs and of W^0's velocity), exchange their partial
  sums through distributed shared memory with one cluster barrier per step, and finish the small layers
  identically.  **Fallback:** when a cluster launch raises (the device cannot place the cluster: another
  process holds SMs, an MPS/MIG partition is too small), nothing has run, and the engine launches the
  single-SM variant from the same parameters and keeps it (``Engine.launch.fell_back`` says why).
- **sm_80 and later: one block (one SM) per network.**  Where W^0 fits in registers (``register_chunks``: n_1 <= 32,
  a batch of at most 16, the tile within W0_BUDGET) the block is W0_THREADS = 256 threads and holds W^0 there for
  the whole epoch (FASTNN_W0REG), reading only the inputs from shared memory in the forward pass and BP4.  A thread
  holds ``rows`` rows over every slots-th chunk, a slot being ``group`` threads side by side (``tile_shape``: the
  fewest empty rows, an even group; the textbook's 30 rows: 3 rows a thread, 10 threads a slot, 25 slots).

Block b of a launch (cluster b on sm_90) trains network b: K networks of one shape, activations and cost train
in one launch (``ManyEngine``); the single-network ``Engine`` is the K = 1 case.

API for training many networks at once (issue 23's ``fit_many``)::

    engine = ManyEngine(nets, batch_size)     # nets: same sizes, activations, cost, dtype, backend
    costs = engine.epoch(X, Y, orders, batch_size, lrs, momenta, l2s, velocities)
        # X, Y: (n, n_in), (n, n_out) on the device, shared by every network
        # orders: (K, n) int64 on the device, one shuffled order per network
        # lrs, momenta, l2s: K numbers each (host floats); velocities: K arrays like net.params, or None
        # returns the K summed costs (a device float64 array); every net.params (and velocity) is updated

With velocities every network takes the momentum update (momentum 0 is then v = s - decay·W; W += v,
the plain rule up to one rounding).  ``unfit(nets[0], batch_size, ...)`` says whether the shape fits.

The on-chip limit: per block, the padded parameters (in a cluster: 1/8 of W^0; with W^0 in registers: none of
it) plus two buffers of a batch's inputs and one batch's activations must fit the device's opt-in shared memory
(``shared_bytes`` below; 227 KiB on an H100/H200, 163 KiB on an A100): 784-30-10 at batch 10 takes 100 KiB on one
SM (W^0 in registers; 177 KiB without), 44 KiB a block on a cluster; 784-128-10 fits a cluster up to batch 32 (the
"mid" benchmark's batch 64 does not fit).

Not run on real hardware (no GPU was at hand when it was written): the launch, the shared-memory attribute,
the cluster and the speed.  The kernel's logic is tested in CI by compiling the same .cu with g++
(tests/kernel_shim: clusters, shuffles and cp.async included) and comparing with the generic numpy engine; its
machine code is compiled for sm_90 with NVRTC 13 and read with nvdisasm in CI (tests/test_cuda_sass.py: no stack
frame, no spills, shared memory through LDS/STS only); ``python -m bench.cuda_model`` predicts its time per step
from that machine code (bench/results/cuda-model.txt, a PREDICTION: textbook 1.61 µs per step on a cluster,
3.30 µs on one SM with W^0 in registers).  On a device, ``engines.verify`` checks the first steps against the generic engine.
"""

import itertools
from pathlib import Path

import numpy as np

from ..backend import is_sticky_fault

SOURCE = Path(__file__).with_name("cuda_fused.cu")
KERNEL = "fastnn_fused_epoch"
CLUSTER = 8  # blocks per network in the sm_90 variant (FASTNN_CLUSTER, a compile-time __cluster_dims__)
THREADS = 384  # one block per network (FASTNN_THREADS in the kernel); a multiple of 32
EXAMPLE_BLOCK = 16  # the most examples per register block (FASTNN_MB in the kernel, compiled per batch size)
W0_THREADS = 256  # the block size of the variant holding W^0 in registers (FASTNN_W0REG > 0): 255 registers a thread
W0_SHAPE = (2, 16)  # the kernel's (FASTNN_W0ROWS, FASTNN_W0GROUP) where none is given: 2 rows a thread, 16 a slot
W0_BUDGET = 134  # what a tile of 2 rows a thread may weigh, 8 a chunk and 3 an example, so that the kernel compiles
                 # without a spill (budget(rows) for the others; tests/test_cuda_sass.py compiles their edges)
LAYER_INTS = 20  # the kernel's table row per layer (LAYER_INTS)
ACTIVATIONS = {"sigmoid": 0, "tanh": 1, "relu": 2, "identity": 3, "softmax": 4}
COSTS = {"quadratic": 0, "cross-entropy": 1, "log-likelihood": 2}

_modules = {}  # device -> compiled cupy RawModule


def _round4(n):
    return (n + 3) // 4 * 4


def row_stride(n):
    """The kernel's weight row stride for n inputs: at least n rounded to 4, and 4 more than a multiple of 32."""
    r = _round4(n)
    return r + (36 - r % 32) % 32


def block_inputs(sizes, layer, cluster=1):
    """Inputs of ``layer`` one block holds (the kernel's block_inputs): all, rounded to 4, or in a cluster of
    ``cluster`` blocks layer 0's share of its 4-wide chunks."""
    if layer > 0 or cluster == 1:
        return _round4(sizes[layer])
    return 4 * -(-(_round4(sizes[0]) // 4) // cluster)


def input_split(n_in, n_out, warps):
    """How many warps share a layer's inputs in the forward pass (the kernel's input_split); n_in: the block's."""
    jblocks = -(-n_out // 32)
    return min(max(1, warps // jblocks), _round4(n_in) // 4)


def shared_floats(sizes, batch_size, threads=None, cluster=1, velocity=False, chunks=0, shape=W0_SHAPE):
    """Floats of dynamic shared memory the kernel lays out for one block (see the comment at the top of the .cu);
    ``velocity``: with W^0's velocity in shared memory too; ``chunks`` > 0: W^0 in registers (none of it here), its
    tile's ``shape`` (rows, group): its slots leave the forward pass's split sums."""
    warps = (THREADS if threads is None else threads) // 32
    inputs = [block_inputs(sizes, layer, cluster) for layer in range(len(sizes) - 1)]
    outputs = sizes[1:]
    floats = sum(n_out * row_stride(n_in) + _round4(n_out) for n_in, n_out in zip(inputs, outputs))  # W^l, b^l
    if chunks:
        floats -= outputs[0] * row_stride(inputs[0])
    floats += 2 * batch_size * inputs[0] + _round4(2 * batch_size * sizes[-1])  # x, y: two buffers each
    floats += sum(2 * batch_size * _round4(n) for n in outputs)  # a^l, δ^l
    floats += batch_size * _round4(sizes[-1]) + _round4(batch_size)  # z^L, cost
    splits = [input_split(n_in, n_out, warps) for n_in, n_out in zip(inputs, outputs)]
    sums = [k * batch_size * n_out if k > 1 else 0 for k, n_out in zip(splits, outputs)]
    if chunks:  # the tile's slots (W0_SLOTS), each every example's row of the tile's rows (W0_LD)
        rows, group = shape
        sums[0] = (warps * 32) // group * example_block(batch_size) * rows * group
    partial = max(sums)
    floats += _round4(partial) + LAYER_INTS * (len(outputs) + 1)  # the split sums, the table (a row per layer, the layout)
    if chunks:
        floats += sizes[1] * _round4(example_block(batch_size))  # the tile's δ^1, unit-major (W0_DT)
    floats += 4 * batch_size  # the ring of the next two steps' row indices (long longs)
    floats += _round4(sum(o * i for i, o in itertools.pairwise(sizes[1:])) + sum(outputs))  # velocity but W^0's
    if cluster > 1:
        floats += _round4(2 * batch_size * sizes[1])  # the cluster's exchange of layer 0's sums
    floats += 4  # the epoch's cost, a double
    return floats + (sizes[1] * row_stride(inputs[0]) if velocity else 0)


def shared_bytes(sizes, batch_size, threads=None, cluster=1, velocity=False, chunks=0, shape=W0_SHAPE):
    return 4 * shared_floats(sizes, batch_size, threads, cluster, velocity, chunks, shape)


def least_shared_bytes(sizes, batch_size, cluster=1):
    """The shared memory of the variant the host launches on one SM (W^0 in registers where register_chunks allows),
    or on a block of a cluster where that is less."""
    chunks = register_chunks(sizes, batch_size)
    need = shared_bytes(sizes, batch_size, threads(chunks), 1, chunks=chunks, shape=tile_shape(sizes))
    if cluster > 1:
        need = min(need, shared_bytes(sizes, batch_size, cluster=cluster))
    return need


def example_block(batch_size):
    """FASTNN_MB for a batch size: the whole batch in registers up to EXAMPLE_BLOCK examples."""
    return max(1, min(batch_size, EXAMPLE_BLOCK))


def tile_shape(sizes):
    """(FASTNN_W0ROWS, FASTNN_W0GROUP) for a network: W^0's n_1 rows, ``rows`` a thread (2, 3 or 4) in groups of
    ``group`` threads, rows·group >= n_1.  The group is even, so that lanes 2i and 2i + 1 of a warp are in one slot
    and read one address (shared memory then returns a 16-byte read of a warp in 2 cycles, not 4); of the shapes
    leaving the fewest rows empty, the most rows a thread (more FMAs a read).  30 rows: (3, 10)."""
    n_1 = min(sizes[1], 2 * W0_SHAPE[1])
    shapes = [(rows, 2 * -(-n_1 // (2 * rows))) for rows in (2, 3, 4)]
    return min(shapes, key=lambda shape: (shape[0] * shape[1] - n_1, -shape[0]))


def tile_slots(sizes):
    """The tile's slots (the kernel's W0_SLOTS): groups of threads side by side; each slot holds every slots-th
    chunk of the inputs."""
    return W0_THREADS // tile_shape(sizes)[1]


def register_chunks(sizes, batch_size, cluster=1):
    """FASTNN_W0REG for a network at a batch size: the 4-wide chunks of W^0's rows the busiest slot holds in
    registers for the whole epoch (the kernel's w0_fits: every slot the first FASTNN_W0REG - 1, some the last),
    or 0 where W^0 stays in shared memory: n_1 > 32, a batch past EXAMPLE_BLOCK, fewer chunks than slots (an empty
    slot's split sums are zeros, added all the same: the shared variant's split is shorter), a tile past its budget
    of registers (``budget``), or a cluster (a block's share of W^0 is an eighth there, and the cycle model predicts the 384 threads of the
    shared-memory variant faster: the exchange and the small layers in one pass each)."""
    if cluster > 1:
        return 0
    chunks, slots = block_inputs(sizes, 0, cluster) // 4, tile_slots(sizes)
    if sizes[1] > 2 * W0_SHAPE[1] or batch_size > EXAMPLE_BLOCK or chunks < slots:
        return 0
    held, rows = -(-chunks // slots), tile_shape(sizes)[0]
    return held if 4 * rows * held + (rows + 1) * example_block(batch_size) <= budget(rows) else 0


def budget(rows):
    """What the tile may weigh at ``rows`` rows a thread (4·rows a chunk, rows + 1 an example): W0_BUDGET at 2,
    14 more a row past it (tests/test_cuda_sass.py compiles the largest tile each allows at every batch)."""
    return W0_BUDGET + 14 * (rows - 2)


def threads(chunks):
    """The block size of the kernel compiled with FASTNN_W0REG = chunks."""
    return W0_THREADS if chunks else THREADS


def compile_options(batch_size=EXAMPLE_BLOCK, cluster=1, chunks=0, shape=W0_SHAPE):
    """NVRTC options beside cupy's own (-arch of the device, -ftz=true --device-as-default-execution-space)."""
    return ("--std=c++17", f"-DFASTNN_MB={example_block(batch_size)}", f"-DFASTNN_CLUSTER={cluster}",
            f"-DFASTNN_W0REG={chunks}", f"-DFASTNN_THREADS={threads(chunks)}", f"-DFASTNN_W0ROWS={shape[0]}",
            f"-DFASTNN_W0GROUP={shape[1]}")


def _module(backend, batch_size=EXAMPLE_BLOCK, cluster=1, chunks=0, shape=W0_SHAPE):
    """The kernel compiled for ``backend``'s device, this batch size's register block, cluster size and W^0's
    register tile (``chunks``, 0: none; its ``shape``); cached."""
    key = (backend.device, example_block(batch_size), cluster, chunks, tuple(shape))
    module = _modules.get(key)
    if module is None:
        xp = backend.xp
        with xp.cuda.Device(backend.index):
            module = xp.RawModule(code=SOURCE.read_text(), options=compile_options(batch_size, cluster, chunks, shape))
            module.get_function(KERNEL)  # compile now, so that a failure says so here
        _modules[key] = module
    return module


def cluster_size(backend):
    """Blocks per network: CLUSTER on an sm_90 device (H100/H200: thread-block clusters), else 1 (one SM)."""
    props = backend.xp.cuda.runtime.getDeviceProperties(backend.index)
    return CLUSTER if props.get("major", 0) == 9 else 1


def _shared_limit(backend):
    """Bytes of shared memory one block may opt in to on ``backend``'s device."""
    props = backend.xp.cuda.runtime.getDeviceProperties(backend.index)
    return int(props.get("sharedMemPerBlockOptin", props["sharedMemPerBlock"]))


def available(backend):
    """None when this engine can run on ``backend``, else why not."""
    if not backend.is_cuda:
        return "it runs on a CUDA GPU only"
    try:
        _module(backend)
    except Exception as e:  # noqa: BLE001 - NVRTC or driver errors: the reason is reported, generic runs
        return f"its kernel does not compile on {backend.device} ({type(e).__name__}: {str(e).strip()[:200]})"
    return None


def unfit(net, batch_size, momentum, l2):
    """None when ``net`` trains with this engine at ``batch_size``, else why not (one sentence)."""
    sizes = net.sizes
    shape = "-".join(map(str, sizes))
    if str(net.dtype) != "float32":
        return f"it trains float32 only; this network is {net.dtype}"
    cluster = cluster_size(net.backend)
    need = least_shared_bytes(sizes, batch_size, cluster)  # (on a cluster the single-SM fallback may need more)
    limit = _shared_limit(net.backend)
    if need > limit:
        n_params = net.params.size
        room = (limit - need) // 4 + n_params  # parameters that would fit beside this batch's activations
        fits = (f"about {room / 1000:.0f}k parameters at this batch size" if room > 0
                else f"batch {batch_size}'s activations alone are too many")
        return (f"{shape} has {n_params / 1000:.0f}k parameters, which with batch {batch_size} need "
                f"{need / 1024:.0f} KiB of shared memory; the fused CUDA engine holds at most {limit / 1024:.0f} KiB "
                f"on one SM of {net.backend.device} ({fits})")
    return None


def limits(backend):
    """What ``fastnn info`` says of the on-chip limit on ``backend``."""
    cluster = cluster_size(backend)
    textbook = least_shared_bytes([784, 30, 10], 10, cluster)
    where = f"a block of a {cluster}-SM cluster" if cluster > 1 else "one SM"
    return (f"parameters + one batch's activations in {_shared_limit(backend) / 1024:.0f} KiB of shared memory "
            f"on {where} (784-30-10 at batch 10 takes {textbook / 1024:.0f} KiB)")


class _Launcher:
    """Launches the kernel for networks shaped as ``net``: the cluster variant where the device has clusters, and
    the single-SM variant after a cluster launch fails (cupy 14 launches with plain cuLaunchKernel: the cluster
    comes from the kernel's compile-time __cluster_dims__, and a launch the device cannot place raises before any
    block runs, so the parameters are untouched and the single-SM launch starts from them)."""

    def __init__(self, net, batch_size):
        self.net, self.batch_size = net, batch_size
        self.cluster = cluster_size(net.backend)
        self.kernel(batch_size)  # compiled now, so that a failure says so here
        self.fell_back = None  # why the cluster variant was left, once it was

    def kernel(self, batch):
        """(the kernel for a launch whose batch is ``batch``, its block size, its W^0 tile's chunks and shape): W^0
        in registers where it fits."""
        chunks, shape = register_chunks(self.net.sizes, batch, self.cluster), tile_shape(self.net.sizes)
        kernel = _module(self.net.backend, batch, self.cluster, chunks=chunks, shape=shape).get_function(KERNEL)
        return kernel, threads(chunks), chunks, shape

    def __call__(self, networks, n_order, arguments):
        """Run one epoch of ``networks`` networks over orders of ``n_order`` rows; ``arguments(cluster, threads,
        chunks, shape)`` -> (shared bytes, the kernel's args)."""
        batch = min(self.batch_size, n_order)  # the kernel's batch (kernel_arguments): a short epoch is one batch
        while True:
            kernel, block, chunks, shape = self.kernel(batch)
            nbytes, args = arguments(self.cluster, block, chunks, shape)
            try:
                kernel.max_dynamic_shared_size_bytes = nbytes  # the opt-in past 48 KiB
                kernel((networks * self.cluster,), (block,), args, shared_mem=nbytes)
                return
            except Exception as e:  # the cluster cannot launch here (re-raised on one SM): one SM per network instead
                if self.cluster == 1 or is_sticky_fault(e):  # a dead context: nothing more can launch on it
                    raise
                self.fell_back = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
                self.cluster = 1


class ManyEngine:
    """Runs an epoch of K networks of one shape as one launch (see the module docstring)."""

    name = "fused-cuda"

    def __init__(self, nets, batch_size):
        first = nets[0]
        same = [(n.sizes, [a.name for a in n.activations], n.cost.name, str(n.dtype), n.backend.device)
                for n in nets]
        assert all(x == same[0] for x in same), "ManyEngine trains networks of one shape, activations and cost"
        self.nets = nets
        self.launch = _Launcher(first, batch_size)
        xp = first.xp
        self.sizes = xp.asarray(first.sizes, dtype=np.int32)
        self.cost = xp.zeros(len(nets), np.float64)

    def epoch(self, X, Y, orders, batch_size, lrs, momenta, l2s, velocities):
        """One pass of every network over its row of ``orders``, in one launch; returns the K summed costs."""
        xp = self.nets[0].xp
        params = xp.stack([n.params for n in self.nets])
        velocity = None if velocities is None else xp.stack(velocities)
        self.launch(len(self.nets), orders.shape[-1], lambda cluster, block, chunks, shape: kernel_arguments(
            self.nets[0], self.sizes, self.cost, X, Y, orders, batch_size, lrs, momenta, l2s, velocity, threads=block,
            params=params, cluster=cluster, limit=_shared_limit(self.nets[0].backend), chunks=chunks,
            shape=shape))
        for k, net in enumerate(self.nets):
            net.params[...] = params[k]
            if velocities is not None:
                velocities[k][...] = velocity[k]
        return self.cost


class Engine:
    """Runs each epoch as one launch of the fused kernel (see the module docstring)."""

    name = "fused-cuda"

    def __init__(self, net, batch_size):
        self.net = net
        xp = net.xp
        self.launch = _Launcher(net, batch_size)
        self.sizes = xp.asarray(net.sizes, dtype=np.int32)
        self.cost = xp.zeros(1, np.float64)

    def epoch(self, X, Y, order, batch_size, lr, momentum, l2, velocity):
        """One pass over ``order`` in one launch; returns the summed cost (a device scalar)."""
        limit = _shared_limit(self.net.backend)
        self.launch(1, order.shape[-1], lambda cluster, block, chunks, shape: kernel_arguments(
            self.net, self.sizes, self.cost, X, Y, order, batch_size, lr, momentum, l2, velocity, threads=block,
            cluster=cluster, limit=limit, chunks=chunks, shape=shape))
        return self.cost[0]


def kernel_arguments(net, sizes, cost_out, X, Y, orders, batch_size, lrs, momenta, l2s, velocity, threads=None,
                     params=None, cluster=1, limit=None, chunks=0, shape=W0_SHAPE):
    """(bytes of shared memory, the kernel's arguments in order) for one epoch of K networks shaped as ``net``.

    One network (K = 1): ``orders`` is its order (n,), ``lrs``, ``momenta``, ``l2s`` numbers, ``velocity`` an
    array like net.params or None, and ``params`` defaults to net.params.  K networks: ``orders`` is (K, n),
    the hyperparameters are K numbers each, ``params`` and ``velocity`` are (K, n_params).
    ``cluster``: blocks per network (the kernel's FASTNN_CLUSTER), ``chunks`` and ``shape`` (its FASTNN_W0REG and
    (FASTNN_W0ROWS, FASTNN_W0GROUP)), for the shared memory it lays out; ``limit``:
    the device's shared memory per block, given which W^0's velocity goes to shared memory where it fits.
    ``sizes`` is net.sizes as an int32 array and ``cost_out`` a float64 array of K, on the device of the other
    arrays (the tests pass numpy arrays to the CPU build of the kernel).  The update's scalars are computed
    as the generic engine computes them (``sgd_step``).
    """
    xp = net.xp
    n = X.shape[0]
    n_order = orders.shape[-1]
    batch = min(batch_size, n_order)
    lrs, momenta, l2s = (np.atleast_1d(np.asarray(v, np.float64)) for v in (lrs, momenta, l2s))
    decay = lrs * l2s / n
    hyper = np.stack([momenta, 1.0 - decay, decay], axis=1).astype(np.float32)
    has_velocity = velocity is not None
    params = net.params if params is None else params
    args = (X, Y, orders, np.int32(n_order), np.int32(batch), sizes, np.int32(len(net.sizes) - 1),
            np.int32(ACTIVATIONS[net.activations[0].name]), np.int32(ACTIVATIONS[net.activations[-1].name]),
            np.int32(COSTS[net.cost.name]), params, velocity if has_velocity else params, np.int32(has_velocity),
            xp.asarray(lrs), xp.asarray(hyper.ravel()), cost_out)
    threads = THREADS if threads is None else threads
    nbytes = shared_bytes(net.sizes, batch, threads, cluster, chunks=chunks, shape=shape)
    with_v = shared_bytes(net.sizes, batch, threads, cluster, True, chunks, shape)
    if has_velocity and limit is not None and with_v <= limit:
        nbytes = with_v
    return nbytes, args
