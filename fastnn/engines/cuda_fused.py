"""The fused CUDA engine: one kernel launch per epoch, the network held in one SM's shared memory.

The kernel (``cuda_fused.cu``, beside this file) is a persistent single-block kernel: it copies
``net.params`` into shared memory, loops over every step of the epoch (gather by index, forward,
BP1, BP2, BP3/BP4, the plain/momentum/L2 update, the cost summed on the device) with a
``__syncthreads()`` between phases, and writes the parameters back; the velocity is updated in
place in global memory.  It trains float32 only.

The on-chip limit: parameters plus one batch's activations must fit the device's opt-in shared
memory per block (``shared_bytes`` below; 227 KiB on an H100/H200, 163 KiB on an A100): about
53k parameters at batch 10 (37k on an A100), so 784-30-10 (23,860 parameters, 113 KiB at batch 10) fits and
784-100-10 (79,510) does not.  At most ``MAX_LAYERS`` weight layers.

Untested on real hardware (no GPU was at hand when it was written): the launch, the shared-memory
attribute and the speed.  The kernel's logic is tested in CI by compiling the same .cu with g++
(tests/kernel_shim) and comparing with the generic numpy engine, and it is compiled for sm_80 and
sm_90 with NVRTC; on a device, ``engines.verify`` checks the first two steps against the generic engine.
Estimated from the design, not measured: for 784-30-10 at batch 10, 16 warps on 4 schedulers issue
~1.1k instructions per thread in the first layer's forward pass and ~1.2k in its BP4 + update, ~5 µs,
plus the small phases and ~12 barriers: ~5-8 µs per step, ~30-50 ms per 60k-example epoch, 25-50×
below the generic engine's 1.2-2.4 s but above the ~12 ms FMA limit.  Tiling over neurons as well as
examples is the next step once a GPU can measure it.
"""

from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("cuda_fused.cu")
KERNEL = "fastnn_fused_epoch"
THREADS = 512  # one block (FASTNN_THREADS in the kernel); every loop in the kernel strides by blockDim.x
MAX_LAYERS = 16  # FASTNN_MAX_LAYERS in the kernel
EXAMPLE_BLOCK = 8  # FASTNN_MB in the kernel: examples per register block of the forward pass
ACTIVATIONS = {"sigmoid": 0, "tanh": 1, "relu": 2, "identity": 3, "softmax": 4}
COSTS = {"quadratic": 0, "cross-entropy": 1, "log-likelihood": 2}

_modules = {}  # device -> compiled cupy RawModule


def shared_floats(sizes, batch_size, threads=None):
    """Floats of dynamic shared memory the kernel lays out (see the comment at the top of the .cu)."""
    n_params = sum(o * i + o for o, i in zip(sizes[1:], sizes[:-1]))
    threads = THREADS if threads is None else threads
    return n_params + batch_size * (2 * sum(sizes[1:]) + sizes[-1] + 1) + threads * EXAMPLE_BLOCK


def shared_bytes(sizes, batch_size, threads=None):
    return 4 * shared_floats(sizes, batch_size, threads)


def _module(backend):
    """The kernel compiled for ``backend``'s device (cupy picks -arch from the device); cached."""
    module = _modules.get(backend.device)
    if module is None:
        xp = backend.xp
        with xp.cuda.Device(backend.index):
            module = xp.RawModule(code=SOURCE.read_text(), options=("--std=c++17",))
            module.get_function(KERNEL)  # compile now, so that a failure says so here
        _modules[backend.device] = module
    return module


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
    if len(sizes) - 1 > MAX_LAYERS:
        return f"{shape} has {len(sizes) - 1} weight layers; the fused CUDA engine takes at most {MAX_LAYERS}"
    need = shared_bytes(sizes, batch_size)
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
    textbook = shared_bytes([784, 30, 10], 10)
    return (f"parameters + one batch's activations in {_shared_limit(backend) / 1024:.0f} KiB of shared memory "
            f"(784-30-10 at batch 10 takes {textbook / 1024:.0f} KiB)")


class Engine:
    """Runs each epoch as one launch of the fused kernel (see the module docstring)."""

    name = "fused-cuda"

    def __init__(self, net, batch_size):
        self.net = net
        xp = net.xp
        self.kernel = _module(net.backend).get_function(KERNEL)
        self.sizes = xp.asarray(net.sizes, dtype=np.int32)
        self.cost = xp.zeros(1, np.float64)

    def epoch(self, X, Y, order, batch_size, lr, momentum, l2, velocity):
        """One pass over ``order`` in one launch; returns the summed cost (a device scalar)."""
        nbytes, args = kernel_arguments(self.net, self.sizes, self.cost, X, Y, order, batch_size, lr, momentum, l2,
                                        velocity)
        self.kernel.max_dynamic_shared_size_bytes = nbytes  # the opt-in past 48 KiB
        self.kernel((1,), (THREADS,), args, shared_mem=nbytes)
        return self.cost[0]


def kernel_arguments(net, sizes, cost_out, X, Y, order, batch_size, lr, momentum, l2, velocity, threads=None):
    """(bytes of shared memory, the kernel's arguments in order) for one epoch of ``net``.

    ``sizes`` is net.sizes as an int32 array and ``cost_out`` a float64 array of one, on the
    device of the other arrays (the tests pass numpy arrays to the CPU build of the kernel).
    The update's scalars are computed as the generic engine computes them (``sgd_step``).
    """
    n = X.shape[0]
    batch = min(batch_size, order.shape[0])
    decay = lr * l2 / n
    has_velocity = velocity is not None
    args = (X, Y, order, np.int32(order.shape[0]), np.int32(batch), sizes, np.int32(len(net.sizes) - 1),
            np.int32(ACTIVATIONS[net.activations[0].name]), np.int32(ACTIVATIONS[net.activations[-1].name]),
            np.int32(COSTS[net.cost.name]), net.params, velocity if has_velocity else net.params,
            np.int32(has_velocity), np.float64(lr), np.float32(momentum), np.float32(1.0 - decay),
            np.float32(decay), cost_out)
    return shared_bytes(net.sizes, batch, THREADS if threads is None else threads), args
