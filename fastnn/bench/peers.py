"""The implementations the benchmark compares, each behind the same small interface.

A peer is built for one config on one device with the training data (X float32 (n, 784),
y int labels (n,)); ``epoch(n)`` then runs one epoch of plain mini-batch SGD over the first n
examples, synchronises the device and returns its seconds.  Every peer starts from the same
weights (fastnn's seeded initialisation) and shuffles with its own seeded generator.

``memory()`` is a context manager inside which the peer's device allocations are counted,
and ``device_bytes()`` the device memory it holds at most so far (None on the CPU).
"""

import contextlib
import time

import numpy as np

from .. import reference
from ..errors import FastnnError
from ..network import Network
from .workloads import Floor


class PeerUnavailable(FastnnError):
    """A peer that cannot run here (PyTorch absent, no CUDA build); the message says why."""


def _initial(config, seed):
    """fastnn's initial weights for ``config`` as numpy: [W^l (n_out, n_in)], [b^l (n_out,)]."""
    net = Network(list(config.sizes), activation=config.activation, output=config.output,
                  cost=config.cost, device="cpu", dtype="float32", seed=seed)
    return net.weights, net.biases


class _CupyPool:
    """Counts one peer's cupy allocations in a memory pool of its own."""

    def __init__(self, backend):
        self.xp = backend.xp if backend.is_cuda else None
        self.pool = self.xp.cuda.MemoryPool() if self.xp else None

    def memory(self):
        return self.xp.cuda.using_allocator(self.pool.malloc) if self.xp else contextlib.nullcontext()

    def device_bytes(self):
        return int(self.pool.total_bytes()) if self.xp else None  # the pool never shrinks: its peak


class FastnnPeer(_CupyPool):
    """fastnn's own trainer, ``Network.fit`` for one epoch, timed by its epoch clock.

    The seconds are ``History.seconds``: the trainer's synchronised clock around the epoch
    (shuffle, gather, backprop, update, the loss read back once).  The input checks that
    ``fit`` makes once per call, before the epoch, are outside it; ``last_wall`` has the
    wall time of the whole call.
    """

    impl = "fastnn"

    def __init__(self, backend, config, X, y, seed=0):
        super().__init__(backend)
        self.device, self.config = backend.device, config
        with self.memory():
            self.net = Network(list(config.sizes), activation=config.activation, output=config.output,
                               cost=config.cost, device=backend, dtype="float32", seed=seed)
            self.X = backend.to_device(X, "float32")
            self.y = backend.to_device(y)
        self.last_wall = None
        self.engine = None  # the engine fit ran (engine="auto"), once an epoch has run

    def epoch(self, n):
        start = time.perf_counter()
        with self.memory():
            history = self.net.fit(self.X[:n], self.y[:n], epochs=1, batch_size=self.config.batch_size,
                                   lr=self.config.lr)
        self.last_wall = time.perf_counter() - start
        self.engine = history.records[0]["engine"]
        return history.seconds[0]


class FloorPeer(_CupyPool):
    """The floor: the epoch's GEMMs alone, in one layout (see ``fastnn.workloads.Floor``)."""

    impl = "floor"

    def __init__(self, backend, config, X, y, seed=0, layout="columns"):
        super().__init__(backend)
        self.device, self.layout = backend.device, layout
        with self.memory():
            self.floor = Floor(backend, config.sizes, config.batch_size, layout=layout, seed=seed)

    def epoch(self, n):
        with self.memory():
            start = time.perf_counter()
            self.floor.epoch(n)
            return time.perf_counter() - start


class TextbookPeer:
    """The textbook's per-example loop (``fastnn.reference``) in float32 numpy, on the CPU."""

    impl = "textbook-loop"

    def __init__(self, backend, config, X, y, seed=0):
        self.device, self.config = "cpu", config
        weights, biases = _initial(config, seed)
        self.weights, self.biases = weights, [b[:, None] for b in biases]
        self.X = X
        self.Y = np.eye(config.sizes[-1], dtype=np.float32)[y]
        self.rng = np.random.default_rng(seed)

    def memory(self):
        return contextlib.nullcontext()

    def device_bytes(self):
        return None

    def epoch(self, n):
        c = self.config
        start = time.perf_counter()
        order = self.rng.permutation(n)
        with np.errstate(over="ignore"):  # exp(-z) overflows to inf for very negative z: σ is still 0
            reference.sgd_epoch(self.weights, self.biases, self.X, self.Y, order, c.batch_size, c.lr,
                                c.activation, c.output, c.cost)
        return time.perf_counter() - start


def import_torch():
    """The torch module, or PeerUnavailable saying why not."""
    try:
        import torch
    except Exception as e:  # ImportError, or a broken install raising at import
        raise PeerUnavailable(f"PyTorch is not installed ({type(e).__name__}: {e})") from e
    return torch


class TorchPeer:
    """PyTorch eager: nn.Linear layers, torch.optim.SGD, the same batches, cost and learning rate.

    Softmax + log-likelihood is ``cross_entropy`` on the last layer's z (the same math);
    quadratic is ½ Σ ||a - y||² / m.  Batches are gathered on the device with ``index_select``
    and the summed loss is read back once per epoch, as fastnn does.
    """

    impl = "torch"

    def __init__(self, backend, config, X, y, seed=0):
        torch = self.torch = import_torch()
        if backend.is_cuda and not torch.cuda.is_available():
            raise PeerUnavailable(f"this PyTorch ({torch.__version__}) cannot use CUDA")
        self.device, self.config = backend.device, config
        self.dev = torch.device(backend.device)
        if backend.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.dev)
        weights, biases = _initial(config, seed)
        act = {"sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}
        layers = []
        for l, (w, b) in enumerate(zip(weights, biases)):
            linear = torch.nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(w))
                linear.bias.copy_(torch.from_numpy(b))
            layers.append(linear)
            name = config.activation if l < len(weights) - 1 else config.output
            if name in act:
                layers.append(act[name]())
            elif name != "softmax":  # softmax is folded into cross_entropy
                raise PeerUnavailable(f"the torch peer has no {name!r} activation")
        self.model = torch.nn.Sequential(*layers).to(self.dev)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=config.lr)
        self.X = torch.from_numpy(X).to(self.dev)  # no copy on the CPU
        if config.cost == "quadratic":
            self.Y = torch.from_numpy(np.eye(config.sizes[-1], dtype=np.float32)[y]).to(self.dev)
            self.loss = lambda out, target: 0.5 * (out - target).pow(2).sum() / out.shape[0]
        elif config.cost == "log-likelihood":
            self.Y = torch.from_numpy(np.asarray(y, np.int64)).to(self.dev)
            self.loss = torch.nn.functional.cross_entropy
        else:
            raise PeerUnavailable(f"the torch peer has no {config.cost!r} cost")
        self.rng = np.random.default_rng(seed)

    def memory(self):
        return contextlib.nullcontext()

    def device_bytes(self):
        if self.dev.type != "cuda":
            return None
        return int(self.torch.cuda.max_memory_reserved(self.dev))

    def _sync(self):
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize(self.dev)

    def epoch(self, n):
        torch, m = self.torch, self.config.batch_size
        start = time.perf_counter()
        order = torch.from_numpy(self.rng.permutation(n)).to(self.dev)
        total = torch.zeros((), dtype=torch.float64, device=self.dev)
        for first in range(0, n, m):
            idx = order[first:first + m]
            loss = self.loss(self.model(self.X.index_select(0, idx)), self.Y.index_select(0, idx))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += loss.detach()
        float(total)  # the one read-back of the epoch
        self._sync()
        return time.perf_counter() - start


PEERS = {"fastnn": FastnnPeer, "textbook-loop": TextbookPeer, "torch": TorchPeer, "floor": FloorPeer}
