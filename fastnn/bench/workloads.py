"""The benchmark's work: four network configs, their GEMM FLOP count, the floor, the peak rate.

The floor is one epoch of the matrix products alone (forward, backward and weight-gradient
GEMMs, on preallocated arrays, nothing else) on the same device and BLAS: no implementation of
mini-batch backpropagation can be faster.  It is timed in two layouts, fastnn's textbook one
(W (n_out, n_in) times activations (n, m)) and the batch-major one PyTorch uses
(activations (m, n) times W^T); the faster of the two is the floor.
"""

import itertools
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Config:
    """One benchmark workload: a network, its batch size and learning rate (plain SGD)."""

    name: str
    sizes: tuple
    activation: str
    output: str
    cost: str
    batch_size: int
    lr: float
    gpu_only: bool = False  # too slow for a CPU: run it there only when asked for by name

    def describe(self):
        layers = "-".join(map(str, self.sizes))
        return f"{layers} {self.activation}/{self.output}/{self.cost}, batch {self.batch_size}"


CONFIGS = {c.name: c for c in (
    Config("textbook", (784, 30, 10), "sigmoid", "sigmoid", "quadratic", 10, 3.0),
    Config("mid", (784, 128, 10), "sigmoid", "softmax", "log-likelihood", 64, 0.5),
    Config("wide", (784, 1024, 1024, 10), "relu", "softmax", "log-likelihood", 256, 0.05),
    Config("huge", (784, 4096, 4096, 10), "relu", "softmax", "log-likelihood", 1024, 0.02, gpu_only=True),
)}


def gemm_flops(sizes, n):
    """FLOPs of the GEMMs of one epoch over n examples (any batch split: the count is linear in m).

    Per example and layer l (n_l x n_{l-1}): forward Z = W A, weight gradient δ A^T, and, for
    every layer but the first, the backward W^T δ; each costs 2 n_l n_{l-1} FLOPs.
    """
    products = [n_out * n_in for n_in, n_out in itertools.pairwise(sizes)]
    return 2 * n * (3 * sum(products) - products[0])


def batches(n, m):
    """The batch sizes of an epoch of n examples in batches of m (the last one may be short)."""
    return [min(m, n - start) for start in range(0, n, m)]


class Floor:
    """The GEMMs of one epoch on preallocated arrays of realistic magnitude, in one ``layout``.

    layout "columns": fastnn's, Z (n_out, m) = W (n_out, n_in) @ X^T; "rows": Z^T (m, n_out) =
    X (m, n_in) @ W^T.  Arrays hold small random numbers, never garbage: uninitialised memory
    can hold denormals, which make a BLAS many times slower than real training.
    """

    def __init__(self, backend, sizes, batch_size, dtype="float32", layout="columns", seed=0):
        self.backend, self.xp, self.sizes, self.m, self.layout = backend, backend.xp, sizes, batch_size, layout
        rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.w = [self._random(rng, (o, i), 1 / np.sqrt(i)) for i, o in itertools.pairwise(sizes)]
        self.dw = [self.xp.zeros_like(w) for w in self.w]
        self._rng = rng
        self._buffers = {}

    def _random(self, rng, shape, scale):
        return self.backend.to_device(rng.standard_normal(shape) * scale, self.dtype)

    def _arrays(self, m):
        """Input, activations and errors for a batch of m: (n_in, m) / (n, m) or their transposes."""
        if m not in self._buffers:
            rows = self.layout == "rows"
            shape = (lambda n: (m, n)) if rows else (lambda n: (n, m))
            x = self._random(self._rng, (m, self.sizes[0]), 1.0)  # gathered rows, as fastnn holds them
            z = [self._random(self._rng, shape(n), 1.0) for n in self.sizes[1:]]
            d = [self._random(self._rng, shape(n), 0.1) for n in self.sizes[1:]]
            self._buffers[m] = (x, z, d)
        return self._buffers[m]

    def epoch(self, n):
        """Run the GEMMs of an epoch over n examples; the device is synchronised before returning."""
        mm, w, dw = self.xp.matmul, self.w, self.dw
        last = len(w) - 1
        for m in batches(n, self.m):
            x, z, d = self._arrays(m)
            if self.layout == "rows":
                a = x
                for l in range(last + 1):
                    mm(a, w[l].T, out=z[l])  # forward
                    a = z[l]
                for l in range(last, -1, -1):
                    mm(d[l].T, z[l - 1] if l else x, out=dw[l])  # weight gradient
                    if l:
                        mm(d[l], w[l], out=d[l - 1])  # backward
            else:
                a = x.T
                for l in range(last + 1):
                    mm(w[l], a, out=z[l])
                    a = z[l]
                for l in range(last, -1, -1):
                    mm(d[l], z[l - 1].T if l else x, out=dw[l])
                    if l:
                        mm(w[l].T, d[l], out=d[l - 1])
        self.backend.synchronize()


def peak_matmul(backend, size, repeats=5, dtype="float32"):
    """The device's matmul rate in FLOP/s: the best of ``repeats`` square (size x size) products."""
    xp = backend.xp
    rng = np.random.default_rng(0)
    a = backend.to_device(rng.standard_normal((size, size)), dtype)
    b = backend.to_device(rng.standard_normal((size, size)), dtype)
    c = xp.empty_like(a)
    xp.matmul(a, b, out=c)  # warm-up: threads started, kernels chosen
    backend.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        xp.matmul(a, b, out=c)
        backend.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best
