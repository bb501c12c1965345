"""The fused CPU engine: a whole epoch in one compiled call (numba; the loops are ``cpu_kernels``).

It trains every network the generic engine trains on the CPU (any depth, every activation, cost
and update rule, float32 and float64) to the same weights within rounding.  What it saves is
numpy's fixed cost per call, ~25 calls a step; blas-cpu saves it too and multiplies faster, so
``auto`` picks this engine only where blas-cpu is the slower (``cpu_blas.slower``: batches of at
most 16 through big layers, where OpenBLAS packs W for every GEMM), and, where blas-cpu cannot
run, up to MAX_PARAMS parameters (``slower`` says why not above); ``fused`` runs it for any network.

The first call in a process loads the compiled loops for the network's dtype from numba's disk
cache (about a second, numba's import included); the very first compiles them (8 s of CPU a dtype on
this 2-core machine) and writes the cache: to NUMBA_CACHE_DIR when set, else to ``__pycache__``
beside this file, else (that folder read-only) to the user's cache folder (~/.cache/numba).  Where
none is writable the engine is unavailable and ``auto`` trains with generic, saying why in ``info``.
"""

import importlib

import numpy as np

# Against generic (auto's rule where blas-cpu cannot run), measured on 2 cores with numpy's OpenBLAS on
# its own kernel for the CPU: textbook (24k parameters) runs 2x faster fused; mid (102k: 0.30 s fused,
# 0.22 s generic) and 784-300-10 (239k: 0.67 s, 0.30 s) run faster on BLAS, and so does wide (1.9M).
MAX_PARAMS = 50_000
RULE = f"auto picks fused-cpu for networks of up to {MAX_PARAMS:,} parameters, generic above (BLAS is faster there)"

_kernels = None
_import_error = None


def kernels():
    """The compiled-loop module, imported once (numba loads on first use, not on ``import fastnn``)."""
    global _kernels, _import_error
    if _kernels is None and _import_error is None:
        try:
            _kernels = importlib.import_module(".cpu_kernels", __package__)
        except ImportError as e:
            _import_error = f"numba cannot be imported ({type(e).__name__}: {e})"
        except RuntimeError as e:  # numba found no writable cache folder (see the module docstring)
            _import_error = f"numba cannot cache its compiled loops ({e}); set NUMBA_CACHE_DIR to a writable folder"
    return _kernels


def available(backend):
    """None when this engine can run on ``backend``, else why not."""
    if backend.is_cuda:
        return "it runs on the CPU only"
    if kernels() is None:
        return _import_error
    return None


def unfit(net, batch_size, momentum, l2):
    """None: every network, batch size and update rule of the generic CPU path is accepted."""


def slower(net, batch_size):
    """None where this engine is the faster one for ``net``, else why ``auto`` leaves it to generic."""
    n = net.params.size
    if n > MAX_PARAMS:
        layers = "-".join(map(str, net.sizes))
        return (f"{layers} has {n:,} parameters: above the fused CPU engine's {MAX_PARAMS:,}, "
                "where BLAS is faster")
    return None


COMPILE_NOTICE = ("fastnn: compiling the fused CPU engine for {dtype} once, about 10 s; later runs load it from "
                  "the cache")


def compiled(dtype):
    """True when the epoch loop for ``dtype`` is compiled in this process or in numba's disk cache; False when
    the next call compiles it; None when numba's cache cannot be read (then nothing is said)."""
    k = kernels()
    return None if k is None else in_cache(k.epoch, dtype)


def in_cache(epoch, dtype):
    """``compiled`` for a numba ``epoch`` function whose first argument is an array of ``dtype``."""
    name = np.dtype(dtype).name
    try:
        if any(str(sig[0].dtype) == name for sig in epoch.signatures):
            return True
        index = epoch._cache._cache_file._load_index()  # numba's on-disk index: {(signature, target): file}
        return any(str(key[0][0].dtype) == name for key in index)
    except Exception:  # noqa: BLE001 - numba's internals moved: say nothing rather than guess
        return None


def _codes(net):
    k = kernels()
    act = {"sigmoid": k.SIGMOID, "tanh": k.TANH, "relu": k.RELU, "identity": k.IDENTITY, "softmax": k.SOFTMAX}
    cost = {"quadratic": k.QUADRATIC, "cross-entropy": k.CROSS_ENTROPY, "log-likelihood": k.LOG_LIKELIHOOD}
    return act[net.activations[0].name], act[net.activations[-1].name], cost[net.cost.name]


def available_reason():
    """Why the compiled loops cannot be loaded (None when they can)."""
    return None if kernels() is not None else _import_error


def constants(net, n, n_order, batch_size, lr, momentum, l2, velocity, act_codes):
    """The kernels' constants ``c`` (in the network's dtype, as numpy casts them) and integer ``codes``.

    As ``Engine.epoch`` makes them (left inline there for now); the blas engine's kernels take the same."""
    k = kernels()
    last = n_order - (-(-n_order // batch_size) - 1) * batch_size  # the last batch's size
    decay = lr * l2 / n
    c = np.zeros(k.DECAY + 1, net.dtype)
    c[k.HALF], c[k.ONE] = 0.5, 1.0
    c[k.STEP], c[k.STEP_LAST] = -lr / batch_size, -lr / last
    c[k.MU], c[k.KEEP], c[k.DECAY] = momentum, 1.0 - decay, decay
    return c, np.array(act_codes + (velocity is not None, decay != 0), np.int64)


class Engine:
    """Mini-batch SGD with the whole epoch compiled: the same updates as ``GenericEngine``."""

    name = "fused-cpu"

    def __init__(self, net, batch_size):
        self.net = net
        self.sizes = np.array(net.sizes, np.int64)
        self.codes = _codes(net)
        self._allocate(batch_size)

    def _allocate(self, m):
        """Activations, errors and scratch offsets for batches of up to m examples."""
        sizes, dtype = self.net.sizes, self.net.dtype
        self.m = m
        self.acts = np.empty(m * sum(sizes[1:]), dtype)
        self.deltas = np.empty_like(self.acts)
        self.zout = np.empty(m * sizes[-1], dtype)
        self.rows = np.empty(m, np.int64)
        self.wrows = np.empty(max(sizes[1:]), np.int64)

    def epoch(self, X, Y, order, batch_size, lr, momentum, l2, velocity):
        """One pass over ``order`` (int64 indices into X/Y); returns the summed cost (a float).

        ``net.params`` and ``velocity`` (None without momentum) are updated in place.
        """
        net = self.net
        if batch_size > self.m:
            self._allocate(batch_size)
        n, n_order = X.shape[0], order.shape[0]
        last = n_order - (-(-n_order // batch_size) - 1) * batch_size  # the last batch's size
        decay = lr * l2 / n
        k = kernels()
        c = np.zeros(k.DECAY + 1, net.dtype)  # the constants in the network's dtype, as numpy casts them
        c[k.HALF], c[k.ONE] = 0.5, 1.0
        c[k.STEP], c[k.STEP_LAST] = -lr / batch_size, -lr / last
        c[k.MU], c[k.KEEP], c[k.DECAY] = momentum, 1.0 - decay, decay
        codes = np.array(self.codes + (velocity is not None, decay != 0), np.int64)
        v = net.params[:0] if velocity is None else velocity
        return k.epoch(np.ascontiguousarray(X).reshape(-1), np.ascontiguousarray(Y).reshape(-1),
                       np.ascontiguousarray(order, np.int64), batch_size, net.params, v, self.sizes, codes, c,
                       self.acts, self.deltas, self.zout, self.rows, self.wrows)
