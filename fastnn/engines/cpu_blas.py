"""The BLAS CPU engine: a whole epoch in one compiled call whose big products are BLAS GEMMs.

For the networks too large for ``cpu_fused``'s loops: the GEMMs stay in numpy's own BLAS, called
from compiled code through its CBLAS entry points (plain SGD's update is the weight-gradient GEMM
itself, with β = 1 - ηλ/n), and everything between them (the gather, bias + σ, δ ⊙ σ', the column
sums, the momentum pass) is one compiled pass over each GEMM's output (``cpu_blas_kernels``): no
numpy temporaries and no Python per batch, where the generic engine makes ~25 numpy calls a step.
It trains every network the generic engine trains on the CPU, to the same weights within rounding.

Its BLAS threads are numpy's, so ``fastnn.threads``' policy applies to it as to generic.  Needs
numba and a BLAS with CBLAS GEMMs loaded by numpy (numpy's wheels, OpenBLAS, MKL, BLIS); where
either is missing it is unavailable and ``auto`` trains these networks with generic.  SciPy is not
needed: numba's ``np.dot`` would call SciPy's own BLAS, measured ~10% slower here than numpy's.
"""

import importlib

import numpy as np

from . import cpu_fused

# Measured (bench/fused_cpu_interleaved.py, see bench/results/cpu-2core-blas.txt): above
# cpu_fused.MAX_PARAMS this engine beats generic at every size measured, mid (102k) to wide (1.9M).
MIN_PARAMS = cpu_fused.MAX_PARAMS
RULE = (f"auto picks fused-cpu for networks of up to {cpu_fused.MAX_PARAMS:,} parameters, blas-cpu above "
        "(BLAS GEMMs, the rest compiled), generic where neither can run")

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
    """None where this engine is the faster one for ``net``, else why ``auto`` leaves it to another."""
    n = net.params.size
    if n <= MIN_PARAMS:
        layers = "-".join(map(str, net.sizes))
        return f"{layers} has {n:,} parameters: fused-cpu is faster up to {cpu_fused.MAX_PARAMS:,}"
    return None


class Engine:
    """Mini-batch SGD with the whole epoch compiled around BLAS: the same updates as ``GenericEngine``."""

    name = "blas-cpu"

    def __init__(self, net, batch_size):
        self.net = net
        self.sizes = np.array(net.sizes, np.int64)
        self.codes = cpu_fused._codes(net)
        kernels()
        self._allocate(batch_size)

    def _allocate(self, m):
        """Inputs, activations and errors for batches of up to m examples."""
        sizes, dtype = self.net.sizes, self.net.dtype
        self.m = m
        self.x = np.empty(m * sizes[0], dtype)
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
        return kernels().epoch(np.ascontiguousarray(X).reshape(-1), np.ascontiguousarray(Y).reshape(-1),
                               np.ascontiguousarray(order, np.int64), batch_size, net.params, v, self.sizes, codes,
                               c, self.x, self.acts, self.deltas, self.zout, self.colsum)
