"""Interleaved epochs on Fashion-MNIST (60k, float32): fastnn generic, fastnn fused-cpu, JAX, the floor.

    python -m bench.fused_cpu_interleaved textbook,mid 4

JAX (optional: ``pip install "jax[cpu]"``) runs what a JAX user writes: one ``jax.jit`` epoch with
an on-device shuffle, ``lax.scan`` over the full batches, then the short last batch; same initial
weights, math and plain SGD.  Rounds rotate the order; medians and best epochs, as ratios.
For a per-core comparison on a shared machine pin every peer to one thread:
    OPENBLAS_NUM_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
"""

import sys
import time

import numpy as np

import fastnn
from fastnn.backend import get_backend
from fastnn.bench.workloads import CONFIGS, Floor
from fastnn.engines import GenericEngine, cpu_fused
from fastnn.network import Network


def jax_epoch(cfg, X, y):
    """A function running one jit-compiled JAX epoch (None when JAX is absent)."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    net = Network(list(cfg.sizes), cfg.activation, cfg.output, cfg.cost, device="cpu", seed=0)
    params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in zip(net.weights, net.biases)]
    Xj, Yj = jnp.asarray(X), jax.nn.one_hot(jnp.asarray(y), cfg.sizes[-1], dtype=jnp.float32)
    n, m, lr, depth = X.shape[0], cfg.batch_size, cfg.lr, len(params)
    act = {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu}[cfg.activation]

    def loss(params, x, t):
        a = x
        for l, (w, b) in enumerate(params):
            z = a @ w.T + b
            a = act(z) if l < depth - 1 else z
        if cfg.cost == "quadratic":
            return 0.5 * jnp.sum((jax.nn.sigmoid(z) - t) ** 2)
        return jnp.sum(jax.nn.logsumexp(z, axis=1) * t.sum(1) - (t * z).sum(1))

    grad = jax.value_and_grad(loss)

    def step(params, idx):
        cost, g = grad(params, Xj[idx], Yj[idx])
        return jax.tree.map(lambda p, d: p - (lr / idx.shape[0]) * d, params, g), cost

    full = n // m

    @jax.jit
    def epoch(params, key):
        perm = jax.random.permutation(key, n)
        params, costs = jax.lax.scan(step, params, perm[:full * m].reshape(full, m))
        total = costs.sum()
        if n % m:
            params, cost = step(params, perm[full * m:])
            total += cost
        return params, total

    state = {"params": params, "key": jax.random.PRNGKey(0)}

    def run():
        state["key"], key = jax.random.split(state["key"])
        state["params"], _ = epoch(state["params"], key)
        jax.block_until_ready(state["params"])

    return run


def fastnn_epoch(cfg, engine, X, y):
    net = Network(list(cfg.sizes), cfg.activation, cfg.output, cfg.cost, device="cpu", dtype="float32", seed=0)
    Xd, Yd, _ = net._inputs(X, y)
    runner = GenericEngine(net) if engine == "generic" else cpu_fused.Engine(net, cfg.batch_size)

    def run():
        order = net.rng.permutation(X.shape[0]).astype(np.int64)
        with np.errstate(over="ignore", invalid="ignore"):
            float(runner.epoch(Xd, Yd, order, cfg.batch_size, cfg.lr, 0.0, 0.0, None))

    return run


def floor_epoch(cfg, n):
    floors = [Floor(get_backend("cpu"), cfg.sizes, cfg.batch_size, layout=layout) for layout in ("columns", "rows")]

    def run():
        for f in floors:
            f.epoch(n)

    return run, floors


def main(names, rounds):
    X, y, _, _ = fastnn.load_dataset("fashion-mnist")
    X = X.astype(np.float32)
    n = X.shape[0]
    for name in names:
        cfg = CONFIGS[name]
        runs = {"generic": fastnn_epoch(cfg, "generic", X, y), "fused": fastnn_epoch(cfg, "fused", X, y)}
        jax_run = jax_epoch(cfg, X, y)
        if jax_run is not None:
            runs["jax"] = jax_run
        _, floors = floor_epoch(cfg, n)
        times = {k: [] for k in [*runs, "floor"]}
        keys = list(runs)
        for r in range(rounds + 1):  # round 0 warms up (JAX compiles, numba loads)
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                start = time.perf_counter()
                runs[k]()
                if r:
                    times[k].append(time.perf_counter() - start)
            best = np.inf
            for f in floors:  # the floor: the faster layout
                start = time.perf_counter()
                f.epoch(n)
                best = min(best, time.perf_counter() - start)
            if r:
                times["floor"].append(best)
        med = {k: float(np.median(v)) for k, v in times.items()}
        low = {k: float(np.min(v)) for k, v in times.items()}
        print(f"{name}: median s/epoch " + " ".join(f"{k}={v:.3f}" for k, v in med.items()))
        for other in [k for k in times if k != "fused"]:
            print(f"  fused / {other}: median {med['fused'] / med[other]:.2f}, best {low['fused'] / low[other]:.2f}")


if __name__ == "__main__":
    main(sys.argv[1].split(",") if len(sys.argv) > 1 else ["textbook", "mid"],
         int(sys.argv[2]) if len(sys.argv) > 2 else 3)
