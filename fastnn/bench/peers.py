"""The implementations the benchmark compares, each behind the same small interface.

A peer is built for one config on one device with the training data (X float32 (n, 784),
y int labels (n,)); ``epoch(n)`` then runs one epoch of plain mini-batch SGD over the first n
examples, synchronises the device and returns its seconds.  Every peer starts from the same
weights (fastnn's seeded initialisation) and shuffles with its own seeded generator.

``memory()`` is a context manager inside which the peer's device allocations are counted,
and ``device_bytes()`` the device memory it holds at most so far (None on the CPU).
``precision`` says how its float32 matmuls compute: "fp32", or "tf32" where a GPU's tensor
cores round the inputs to TF32 (cuBLAS with CUPY_TF32=1, PyTorch with allow_tf32); the bench
records it per implementation.  JAX would run float32 matmuls as TF32 on Ampere/Hopper by
default: its peer pins every matmul to float32 (``precision=HIGHEST``) so that the race is fair.
"""

import contextlib
import os
import time
import warnings

import numpy as np

from .. import reference
from .. import threads as thread_policy
from ..errors import FastnnError, NotLearningWarning
from ..network import Network
from .numpy_peer import NumpyPeer
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
    wall time of the whole call.  ``threads``: its BLAS threads (None: fit's own policy, as a user
    gets it; ``blas_threads`` says what that is).
    """

    impl = "fastnn"

    def __init__(self, backend, config, X, y, seed=0, precision="fp32", threads=None):
        super().__init__(backend)
        self.device, self.config, self.threads = backend.device, config, threads
        self.precision = precision if backend.is_cuda else "fp32"  # tf32 is for cuBLAS: the CPU runs fp32
        chosen = thread_policy.choose(config.sizes, config.batch_size, threads, on_gpu=backend.is_cuda)
        self.blas_threads = None if backend.is_cuda else chosen or thread_policy.blas_threads()
        with self.memory():
            self.net = Network(list(config.sizes), activation=config.activation, output=config.output,
                               cost=config.cost, device=backend, dtype="float32", seed=seed)
            self.X = backend.to_device(X, "float32")
            self.y = backend.to_device(y)
        self.last_wall = self.engine = None

    def epoch(self, n):
        start = time.perf_counter()
        with self.memory(), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotLearningWarning)  # a timed epoch of part of the data, not a run
            history = self.net.fit(self.X[:n], self.y[:n], epochs=1, batch_size=self.config.batch_size,
                                   lr=self.config.lr, precision=self.precision, threads=self.threads)
        self.last_wall = time.perf_counter() - start
        self.engine = history.records[0]["engine"]  # fused-cuda where the network fits on a GPU, else generic
        self.precision = history.records[0]["precision"]  # the fused CUDA engine runs fp32 whatever is asked
        return history.seconds[0]


class FloorPeer(_CupyPool):
    """The floor: the epoch's GEMMs alone, in one layout (see ``fastnn.workloads.Floor``)."""

    impl = "floor"

    def __init__(self, backend, config, X, y, seed=0, layout="columns"):
        super().__init__(backend)
        self.device, self.layout = backend.device, layout
        self.precision = "tf32" if backend.is_cuda and os.environ.get("CUPY_TF32") == "1" else "fp32"
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
    precision = "fp32"

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
        self.precision = "fp32"
        if backend.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.dev)
            self.precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
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

    def weights(self):
        """The trained W^l (n_out, n_in) as numpy arrays."""
        return [layer.weight.detach().cpu().numpy() for layer in self.model if isinstance(layer, self.torch.nn.Linear)]

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


class TorchGraphPeer(TorchPeer):
    """PyTorch with the training step captured once in a CUDA graph (``torch.cuda.graph``) and replayed.

    Per step the batch's indices are copied into a static index buffer and the graph replays:
    the gather by index, forward, backward, the SGD update and the loss added to a device total.
    One graph per batch size (the full batch and the short last one), captured on first use after
    PyTorch's recommended warm-up on a side stream (those few steps train too, on the first rows).  ``capture=False`` runs the same step eagerly:
    the CPU stand-in that the tests compare with fastnn.
    """

    impl = "torch-graph"
    WARM_STEPS = 3  # eager steps on a side stream before a capture, as PyTorch's CUDA-graph docs do

    def __init__(self, backend, config, X, y, seed=0, capture=True):
        if capture and not backend.is_cuda:
            raise PeerUnavailable("CUDA graphs need a CUDA device")
        super().__init__(backend, config, X, y, seed)
        self.capture = capture
        self.total = self.torch.zeros((), dtype=self.torch.float64, device=self.dev)
        self._graphs = {}  # batch size -> (CUDAGraph, its static index buffer)

    def _step(self, idx):
        """One step on the rows ``idx``: gather, forward, backward, update; the loss added to ``total``."""
        self.opt.zero_grad(set_to_none=True)  # under capture: backward allocates the grads in the graph's pool
        loss = self.loss(self.model(self.X.index_select(0, idx)), self.Y.index_select(0, idx))
        loss.backward()
        self.opt.step()
        self.total += loss.detach()

    def _graph(self, m):
        """The captured step for batches of m, and its index buffer (captured on first use)."""
        if m not in self._graphs:
            torch = self.torch
            idx = torch.arange(m, device=self.dev)
            side = torch.cuda.Stream(self.dev)
            side.wait_stream(torch.cuda.current_stream(self.dev))
            with torch.cuda.stream(side):
                for _ in range(self.WARM_STEPS):
                    self._step(idx)
            torch.cuda.current_stream(self.dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step(idx)
            self._graphs[m] = graph, idx
        return self._graphs[m]

    def epoch(self, n):
        m = self.config.batch_size
        start = time.perf_counter()
        order = self.torch.from_numpy(self.rng.permutation(n)).to(self.dev)
        self.total.zero_()
        for first in range(0, n, m):
            part = order[first:first + m]
            if not self.capture:
                self._step(part)
                continue
            graph, idx = self._graph(part.shape[0])
            idx.copy_(part)
            graph.replay()
        float(self.total)  # the one read-back of the epoch
        self._sync()
        return time.perf_counter() - start


def import_jax():
    """The jax module, or PeerUnavailable saying why not.

    On a GPU JAX would take 75% of the device's memory at start; it allocates as it needs here
    instead, so that the other peers in the process keep theirs (XLA_PYTHON_CLIENT_PREALLOCATE).
    """
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax
    except Exception as e:  # ImportError, or a broken install raising at import
        raise PeerUnavailable(f"JAX is not installed ({type(e).__name__}: {e}); pip install jax") from e
    return jax


def jax_device(jax, backend):
    """The JAX device for ``backend``: the CPU, or the GPU of cuda:N; PeerUnavailable when JAX has none."""
    if not backend.is_cuda:
        return jax.devices("cpu")[0]
    try:
        gpus = jax.devices("gpu")
    except RuntimeError as e:
        raise PeerUnavailable(f"this JAX ({jax.__version__}) sees no GPU ({e}); pip install 'jax[cuda12]'") from e
    if backend.index >= len(gpus):
        raise PeerUnavailable(f"JAX sees {len(gpus)} GPU(s), not {backend.device}")
    return gpus[backend.index]


def jax_training(jax, config, batch_size, lr):
    """``(step, sweep, epoch)``: plain SGD on ``config``'s network, written as a JAX user would.

    params is [(W^l (n_out, n_in), b^l (n_out,))]; batches are rows, Z = X W^T + b.
    ``step(params, x, y) -> (params, summed cost)``: one SGD step on the batch (x, y), the mean
    cost's gradient times lr.  ``sweep(params, X, Y, order) -> (params, summed cost)``: a
    ``lax.scan`` of steps over the full batches of ``order``, then the short last batch.
    ``epoch(params, key, X, Y, n)``: the shuffle of n examples on the device and a sweep; to be
    jitted with n static.  Every matmul runs at ``precision=HIGHEST``: float32, not the TF32 that XLA
    picks for float32 on Ampere/Hopper GPUs by default.
    """
    jnp = jax.numpy
    highest = jax.lax.Precision.HIGHEST
    act = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu, "identity": lambda z: z}
    if config.activation not in act or config.output not in (*act, "softmax"):
        raise PeerUnavailable(f"the jax peer has no {config.activation!r}/{config.output!r} activation")
    costs = {
        "quadratic": lambda z, y: 0.5 * jnp.sum((act[config.output](z) - y) ** 2),
        "cross-entropy": lambda z, y: jnp.sum(jax.nn.softplus(z) - y * z),
        "log-likelihood": lambda z, y: jnp.sum(
            jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, y[:, None], axis=1)[:, 0]),
    }
    if config.cost not in costs:
        raise PeerUnavailable(f"the jax peer has no {config.cost!r} cost")
    summed_cost = costs[config.cost]
    hidden = act[config.activation]

    def mean_cost(params, x, y):
        a = x
        for w, b in params[:-1]:
            a = hidden(jnp.matmul(a, w.T, precision=highest) + b)
        w, b = params[-1]
        return summed_cost(jnp.matmul(a, w.T, precision=highest) + b, y) / x.shape[0]

    def step(params, x, y):
        cost, grads = jax.value_and_grad(mean_cost)(params, x, y)
        return jax.tree.map(lambda p, g: p - lr * g, params, grads), cost * x.shape[0]

    def sweep(params, X, Y, order):
        full = order.shape[0] // batch_size

        def body(params, idx):
            return step(params, X[idx], Y[idx])

        params, cost = jax.lax.scan(body, params, order[:full * batch_size].reshape(full, batch_size))
        total = cost.sum()
        if order.shape[0] % batch_size:  # the short last batch: its own shapes, outside the scan
            last = order[full * batch_size:]
            params, cost = step(params, X[last], Y[last])
            total = total + cost
        return params, total

    def epoch(params, key, X, Y, n):
        key, shuffle = jax.random.split(key)
        params, total = sweep(params, X, Y, jax.random.permutation(shuffle, n))
        return params, key, total

    return step, sweep, epoch


class JaxPeer:
    """JAX: one ``jax.jit``-compiled epoch, the shuffle on the device, a ``lax.scan`` over the batches.

    What a JAX user writes for plain SGD: ``value_and_grad`` of the mean cost, a tree map for the
    update, the scan carrying the parameters, the short last batch as a second step inside the
    same jitted function.  The epoch is compiled for each number of examples before its clock
    starts, for the whole training set when the peer is built (compile time is never counted);
    the summed cost is read back once per epoch.
    """

    impl = "jax"
    precision = "fp32"  # pinned: jax_training's matmuls run at precision=HIGHEST

    def __init__(self, backend, config, X, y, seed=0):
        jax = self.jax = import_jax()
        self.device, self.config = backend.device, config
        self.dev = jax_device(jax, backend)
        weights, biases = _initial(config, seed)
        Y = np.asarray(y, np.int32) if config.cost == "log-likelihood" else np.eye(config.sizes[-1], dtype=np.float32)[y]
        *_, epoch = jax_training(jax, config, config.batch_size, config.lr)
        self._epoch = jax.jit(epoch, static_argnums=4, donate_argnums=0)
        self.params, self.key, self.X, self.Y = jax.device_put(
            ([(w, b) for w, b in zip(weights, biases)], jax.random.key(seed), X, Y), self.dev)
        self._compiled = {}  # examples -> the compiled epoch
        self._compile(len(X))  # the whole epoch's, which is timed: compiled here, before any clock

    def _compile(self, n):
        if n not in self._compiled:
            self._compiled[n] = self._epoch.lower(self.params, self.key, self.X, self.Y, n).compile()
        return self._compiled[n]

    def memory(self):
        return contextlib.nullcontext()

    def device_bytes(self):
        if self.dev.platform == "cpu":
            return None
        stats = self.dev.memory_stats() or {}
        return stats.get("peak_bytes_in_use")

    def weights(self):
        """The trained W^l (n_out, n_in) as numpy arrays."""
        return [np.asarray(w) for w, _ in self.params]

    def epoch(self, n):
        compiled = self._compile(n)  # before the clock starts
        start = time.perf_counter()
        self.params, self.key, total = compiled(self.params, self.key, self.X, self.Y)
        float(total)  # the one read-back of the epoch
        self.jax.block_until_ready(self.params)
        return time.perf_counter() - start


PEERS = {"fastnn": FastnnPeer, "textbook-loop": TextbookPeer, "torch": TorchPeer, "torch-graph": TorchGraphPeer,
         "jax": JaxPeer, "floor": FloorPeer}
PEERS["numpy"] = NumpyPeer  # plain batched numpy (issue 22), in its own module
