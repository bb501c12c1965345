"""The BLAS CPU engine: a whole epoch in one compiled call whose big products are BLAS GEMMs.

``auto``'s engine on the CPU for almost every network (``RULE``; ``slower`` says where not).  The GEMMs
stay in numpy's own BLAS, called from compiled code through its CBLAS entry points (plain SGD's update is the weight-gradient GEMM
itself, with β = 1 - ηλ/n), and everything between them (the gather, bias + σ, δ ⊙ σ', the column
sums, the momentum pass) is one compiled pass over each GEMM's output (``cpu_blas_kernels``): no
numpy temporaries and no Python per batch, where the generic engine makes ~25 numpy calls a step.
It trains every network the generic engine trains on the CPU, to the same weights within rounding.

Its BLAS threads are numpy's, so ``fastnn.threads``' policy applies to it as to generic.  Needs
numba and a BLAS with CBLAS GEMMs loaded by numpy (numpy's wheels, OpenBLAS, MKL, BLIS); where
either is missing it is unavailable and ``auto`` falls back on ``cpu_fused``'s own rule (fused-cpu up
to its MAX_PARAMS, generic above).  SciPy is not
needed: numba's ``np.dot`` would call SciPy's own BLAS, measured ~10% slower here than numpy's.
"""

import importlib
import itertools
import threading

import numpy as np

from .. import threads as thread_policy
from . import cpu_fused

# Measured (python -m bench.auto_rule: bench/results/cpu-2core-auto-rule.txt, 2-core Xeon, OpenBLAS 0.3.31):
# blas-cpu beats fused-cpu on every network, 81 parameters to 1.9M, but for one kind of step: a batch of at
# most SMALL_BATCH examples through a layer whose GEMM passes PACKED_MACS multiply-adds (batch x inputs x
# outputs).  Up to that size OpenBLAS multiplies small matrices in place; above it, it packs W^l anew for
# every product, which at such batches costs about as much as the product, and fused-cpu's loops (which read
# W^l in place) are 1.1-2.2x faster.  fit's BLAS thread policy applied to both.
SMALL_BATCH = 16
PACKED_MACS = 1_000_000
RULE = (f"auto picks blas-cpu (BLAS GEMMs, the rest compiled) for every network, except batches of at most "
        f"{SMALL_BATCH} through a layer of over {PACKED_MACS:,} multiply-adds a batch (batch x inputs x outputs), "
        "where fused-cpu is faster; generic where neither can run")

_kernels = None
_import_error = None


def kernels():
    """The compiled-loop module, imported once (it finds numpy's BLAS on import)."""
    global _kernels, _import_error
    if _kernels is None and _import_error is None:
        if cpu_fused.kernels() is None:
            _import_error = cpu_fused.available_reason()
            return None
        try:
            _kernels = importlib.import_module(".cpu_blas_kernels", __package__)
        except (ImportError, OSError) as e:
            _import_error = f"numpy's BLAS cannot be called from compiled code ({type(e).__name__}: {e})"
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
    """None where this engine is the faster one for ``net`` at ``batch_size``, else why ``auto`` leaves it to fused-cpu."""
    macs = batch_size * max(n_in * n_out for n_in, n_out in itertools.pairwise(net.sizes))
    if batch_size <= SMALL_BATCH and macs > PACKED_MACS:
        layers = "-".join(map(str, net.sizes))
        return (f"{layers} at batch {batch_size} has a layer of {macs:,} multiply-adds a batch: above "
                f"{PACKED_MACS:,} at batches of at most {SMALL_BATCH}, fused-cpu is faster")
    return None


AHEAD = None  # None: ``gather_ahead`` decides when an engine is made; True/False: always/never (a pool's workers)


def gather_ahead(load=None):
    """True when a second core can copy the next batch's input rows while this one trains: at least two
    cores, and the load average leaves two idle (``fastnn.threads.idle_cores``: read once, when fit makes the
    engine, as the BLAS thread count is).  Each epoch also needs the BLAS at one thread (the policy for small
    steps), so that the copy does not take a core from the GEMMs.  ``load``: as for ``idle_cores``.

    Measured (python -m bench.blas_cpu_phases, bench/results/cpu-2core-blas-phases.txt): the copy reads X
    from memory at ~5 GB/s on one core, 7 us of textbook's 22 us step and 45 of mid's 290, which the GEMMs
    wait for; on the second core it is hidden (textbook 0.109 -> 0.075-0.082 s/epoch, mid 0.259 -> 0.227).
    The load is read once: a process that takes the second core later shares it with the helper, and each
    slows the other (two textbook runs at once, both with a helper: 0.14 s/epoch each, 0.11 without).  An
    epoch that waits over ~1 ms for the helper gathers on its own from then on (``cpu_blas_kernels.YIELDS``).
    """
    return thread_policy.cores() >= 2 and thread_policy.idle_cores(load) >= 2


def _gather_ahead(X, order, batch_size, n0, x, flags):
    """The helper thread: ``gather_ahead``; if it fails, flags[STOP] tells the epoch to gather on its own."""
    k = kernels()
    try:
        k.gather_ahead(X, order, batch_size, n0, x, flags)
    except BaseException:
        flags[k.STOP] = flags[k.DONE] = 1
        raise


COMPILE_NOTICE = ("fastnn: compiling the blas CPU engine for {dtype} once, about 10 s; later runs load it from "
                  "the cache")


def compiled(dtype):
    """As ``cpu_fused.compiled``, for this engine's epoch loop."""
    k = kernels()
    return None if k is None else cpu_fused.in_cache(k.epoch, dtype)


class Engine:
    """Mini-batch SGD with the whole epoch compiled around BLAS: the same updates as ``GenericEngine``."""

    name = "blas-cpu"

    def __init__(self, net, batch_size):
        self.net = net
        self.sizes = np.array(net.sizes, np.int64)
        self.codes = cpu_fused._codes(net)
        kernels()
        self._allocate(batch_size)
        self.ahead = gather_ahead() if AHEAD is None else AHEAD
        self.one_thread = None  # the BLAS at one thread: read at the first epoch call (inside fit's limit), once
        if self.ahead:  # loaded now (from numba's cache), not while an epoch waits for it
            kernels().gather_ahead(self.x, np.zeros(0, np.int64), 1, 0, self.x, np.zeros(4, np.int64))

    def _allocate(self, m):
        """Inputs, activations and errors for batches of up to m examples."""
        sizes, dtype = self.net.sizes, self.net.dtype
        self.m = m
        self.x = np.empty(2 * m * sizes[0], dtype)  # two slots: one read by this batch, one filled ahead
        self.acts = np.empty(m * sum(sizes[1:]), dtype)
        self.deltas = np.empty_like(self.acts)
        self.zout = np.empty(m * sizes[-1], dtype)
        self.colsum = np.empty(max(sizes[1:]), dtype)

    def epoch(self, X, Y, order, batch_size, lr, momentum, l2, velocity):
        """One pass over ``order`` (int64 indices into X/Y); returns the summed cost (a float).

        ``net.params`` and ``velocity`` (None without momentum) are updated in place.
        """
        net = self.net
        if batch_size > self.m:
            self._allocate(batch_size)
        c, codes = cpu_fused.constants(net, X.shape[0], order.shape[0], batch_size, lr, momentum, l2, velocity,
                                       self.codes)
        v = net.params[:0] if velocity is None else velocity
        k = kernels()
        X, Y = np.ascontiguousarray(X).reshape(-1), np.ascontiguousarray(Y).reshape(-1)
        order = np.ascontiguousarray(order, np.int64)
        flags = np.zeros(k.DONE + 1, np.int64)
        helper = None
        if self.ahead and self.one_thread is None:
            self.one_thread = thread_policy.blas_threads() == 1  # threadpool_info: ~0.3 ms, not one per chunk
        if self.ahead and self.one_thread:
            helper = threading.Thread(target=_gather_ahead, args=(X, order, batch_size, net.sizes[0], self.x, flags),
                                      name="fastnn-gather", daemon=True)
            helper.start()
        try:
            return k.epoch(X, Y, order, batch_size, net.params, v, self.sizes, codes, c, self.x, self.acts,
                           self.deltas, self.zout, self.colsum, helper is not None, flags)
        finally:
            if helper is not None:
                flags[k.STOP] = 1
                helper.join()
