"""The plain-numpy peer: what a numpy user writes for the same network, batched, in float32 on the CPU.

About 40 lines: gather the batch, Z = A Wᵀ + b and σ per layer, δ^L, then per layer from the top
ΔW = δᵀ A, Δb = Σ δ, δ ← (δ W) ⊙ σ' and W -= (η/m) ΔW; same initial weights as fastnn, plain SGD.
The BLAS threads follow fastnn's training policy (``fastnn.threads``), so it is timed as fastnn is.
"""

import contextlib
import time

import numpy as np

from .. import threads as thread_policy
from ..network import Network


def batched_epoch(config, X, y, seed=0):
    """A function ``run(n, order=None)`` training one epoch over the first n rows of X (float32) in a shuffled
    (or the given) order; its weights and biases are ``run.weights`` and ``run.biases``."""
    net = Network(list(config.sizes), config.activation, config.output, config.cost, device="cpu", dtype="float32",
                  seed=seed)
    W = [w.copy() for w in net.weights]
    b = [v.copy() for v in net.biases]
    Y = np.eye(config.sizes[-1], dtype=np.float32)[y]
    rng = np.random.default_rng(seed)
    m, lr, depth = config.batch_size, np.float32(config.lr), len(W)
    sigmoid = config.activation == "sigmoid"
    threads = thread_policy.choose(config.sizes, config.batch_size)

    def act(z):
        return 1 / (1 + np.exp(-z)) if sigmoid else np.maximum(z, 0)

    def run(n, order=None):
        with np.errstate(over="ignore", invalid="ignore"), thread_policy.limited(threads):
            order = rng.permutation(n) if order is None else order
            for start in range(0, n, m):
                idx = order[start:start + m]
                a = [X[idx]]
                for l in range(depth):
                    z = a[-1] @ W[l].T + b[l]
                    a.append(act(z) if l < depth - 1 else z)
                t = Y[idx]
                if config.output == "softmax":  # log-likelihood: δ = a - y
                    e = np.exp(z - z.max(1, keepdims=True))
                    delta = e / e.sum(1, keepdims=True) - t
                else:  # sigmoid output, quadratic cost: δ = (a - y) σ'(z)
                    out = 1 / (1 + np.exp(-z))
                    delta = (out - t) * out * (1 - out)
                step = lr / np.float32(idx.shape[0])
                for l in range(depth - 1, -1, -1):
                    gw, gb = delta.T @ a[l], delta.sum(0)
                    if l:
                        delta = delta @ W[l]
                        delta *= a[l] * (1 - a[l]) if sigmoid else (a[l] > 0)
                    W[l] -= step * gw
                    b[l] -= step * gb

    run.weights, run.biases = W, b
    return run


class NumpyPeer:
    """``fastnn bench``'s plain batched numpy implementation (see ``batched_epoch``)."""

    impl = "numpy"
    precision = "fp32"  # numpy's float32 GEMMs: plain fp32 on the CPU

    def __init__(self, backend, config, X, y, seed=0):
        self.device = "cpu"
        self.run = batched_epoch(config, np.asarray(X, np.float32), y, seed)

    def memory(self):
        return contextlib.nullcontext()

    def device_bytes(self):
        return None

    def epoch(self, n):
        start = time.perf_counter()
        self.run(n)
        return time.perf_counter() - start
