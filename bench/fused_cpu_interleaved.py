"""Interleaved epochs on Fashion-MNIST (float32): fastnn's CPU engines, JAX, plain batched numpy, the floor.

    python -m bench.fused_cpu_interleaved --out bench/results/cpu-2core-engines.txt
    python -m bench.fused_cpu_interleaved --configs textbook,mid --rounds 4 --examples 20000

Runners, one epoch each per round, order rotating: fastnn ``generic``, ``fused`` (fused-cpu),
``blas`` (blas-cpu), what ``auto`` picks (named in the header), JAX (optional: ``pip install
"jax[cpu]"``: one ``jax.jit`` epoch with an on-device shuffle and ``lax.scan`` over the full
batches, pinned to float32 matmuls), ``numpy`` (40 lines of plain batched numpy doing the same
math), and the floor (the epoch's GEMMs alone through numpy's BLAS, the faster of two layouts).
Each row: median seconds, GEMM GFLOP/s, × floor, × the machine's sgemm peak (2048², all threads)
and × one core's (each epoch after a PAUSE, so that no runner meets the last one's spinning threads);
then the issue's ratios fastnn/JAX and numpy/fastnn for the engine ``auto``
picks.  Last, the extra host memory of a textbook run (RSS after a fused-cpu epoch minus RSS with
the data loaded, numba's LLVM included), in a fresh process.
For a per-core comparison on a shared machine pin every peer to one thread:
    OPENBLAS_NUM_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
"""

import datetime
import os
import subprocess
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import fastnn
from bench import report
from fastnn import threads as thread_policy
from fastnn.backend import get_backend
from fastnn.bench import machine
from fastnn.bench.numpy_peer import batched_epoch
from fastnn.bench.workloads import CONFIGS, Floor, gemm_flops, peak_matmul
from fastnn.engines import GenericEngine, choose, cpu_blas, cpu_fused
from fastnn.network import Network


def jax_epoch(cfg, X, y):
    """A function running one jit-compiled JAX epoch (None when JAX is absent)."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jax.config.update("jax_default_matmul_precision", "float32")
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


ENGINES = {"generic": lambda net, m: GenericEngine(net), "fused": cpu_fused.Engine, "blas": cpu_blas.Engine}


PAUSE = 0.3  # seconds between runners, untimed (as bench.thread_policy: OpenBLAS's threads spin a while after)
START_LOAD = None  # the 1-minute load when the bench began: fit's policies are applied as for it (see main)


def fastnn_epoch(cfg, engine, X, y):
    """One epoch of one of fastnn's engines, with fit's BLAS thread policy."""
    net = Network(list(cfg.sizes), cfg.activation, cfg.output, cfg.cost, device="cpu", dtype="float32", seed=0)
    Xd, Yd, _ = net._inputs(X, y)
    runner = ENGINES[engine](net, cfg.batch_size)
    threads = thread_policy.choose(cfg.sizes, cfg.batch_size, load=START_LOAD)

    def run():
        order = net.rng.permutation(X.shape[0]).astype(np.int64)
        with np.errstate(over="ignore", invalid="ignore"), thread_policy.limited(threads):
            float(runner.epoch(Xd, Yd, order, cfg.batch_size, cfg.lr, 0.0, 0.0, None))

    return run


def numpy_epoch(cfg, X, y):
    """Plain batched numpy (``fastnn bench``'s numpy peer): one epoch over all of X."""
    run = batched_epoch(cfg, X, y)
    return lambda: run(X.shape[0])


def floor_epoch(cfg, n):
    floors = [Floor(get_backend("cpu"), cfg.sizes, cfg.batch_size, layout=layout) for layout in ("columns", "rows")]

    def run():
        for f in floors:
            f.epoch(n)

    return run, floors


def textbook_memory():
    """Extra host memory (bytes) of a textbook fused-cpu epoch: RSS after it minus RSS with the data loaded."""
    code = ("import numpy as np, fastnn\n"
            "def rss():\n"
            "    return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
            "X, y, _, _ = fastnn.load_dataset('fashion-mnist'); X = X.astype(np.float32)\n"
            "before = rss()\n"
            "net = fastnn.Network([784, 30, 10], device='cpu', seed=0)\n"
            "net.fit(X, y, epochs=1, batch_size=10, lr=3.0, engine='fused')\n"
            "print(rss() - before)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=False)
    return int(run.stdout.split()[-1]) if run.returncode == 0 else None


def main(names, rounds, examples, say):
    # fit reads the load once, when it starts; here the bench's own epochs (JAX and numpy on every core) would
    # raise it for the configs after the first, so fit's policies (BLAS threads, blas-cpu's gather ahead) are
    # applied as for the load at the bench's start, which is when the machine's quiet is checked.
    global START_LOAD
    START_LOAD = os.getloadavg()[0]
    cpu_blas.AHEAD = cpu_blas.gather_ahead(START_LOAD)
    X, y, _, _ = fastnn.load_dataset("fashion-mnist")
    X = np.ascontiguousarray(X[:examples], np.float32)
    y = y[:examples]
    n = X.shape[0]
    cpu = get_backend("cpu")
    peak_all = peak_matmul(cpu, 2048)
    with threadpool_limits(1, user_api="blas"):
        peak_one = peak_matmul(cpu, 2048)
    facts = machine.facts(cpu)
    say(f"# fastnn CPU engines, interleaved epochs, Fashion-MNIST {n} examples, float32, {rounds} timed rounds")
    say(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; " + "; ".join(f"{k}: {v}" for k, v in facts.items()))
    say(f"# sgemm peak (2048^2): all threads {peak_all / 1e9:.0f} GFLOP/s, one core {peak_one / 1e9:.0f} GFLOP/s; "
        f"load {report.load()}; fit's policies applied as for the load at the start, {START_LOAD:.2f}")
    for name in names:
        cfg = CONFIGS[name]
        probe = Network(list(cfg.sizes), cfg.activation, cfg.output, cfg.cost, device="cpu", seed=0)
        auto = choose(probe, "auto", cfg.batch_size, 0.0, 0.0).name
        runs = {k: fastnn_epoch(cfg, k, X, y) for k in ENGINES}
        jax_run = jax_epoch(cfg, X, y)
        if jax_run is not None:
            runs["jax"] = jax_run
        runs["numpy"] = numpy_epoch(cfg, X, y)
        _, floors = floor_epoch(cfg, n)
        times = {k: [] for k in [*runs, "floor"]}
        keys = list(runs)
        for r in range(rounds + 1):  # round 0 warms up (JAX compiles, numba loads)
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                time.sleep(PAUSE)  # the last runner's spinning threads (OpenBLAS, XLA's pool) go to sleep
                start = time.perf_counter()
                runs[k]()
                if r:
                    times[k].append(time.perf_counter() - start)
            best = np.inf
            for f in floors:  # the floor: the faster layout, with fit's BLAS thread policy
                start = time.perf_counter()
                with thread_policy.limited(thread_policy.choose(cfg.sizes, cfg.batch_size, load=START_LOAD)):
                    f.epoch(n)
                best = min(best, time.perf_counter() - start)
            if r:
                times["floor"].append(best)
        flops = gemm_flops(cfg.sizes, n)
        med = {k: float(np.median(v)) for k, v in times.items()}
        threads = thread_policy.choose(cfg.sizes, cfg.batch_size, load=START_LOAD)
        say(f"\n{name} {'-'.join(map(str, cfg.sizes))} b{cfg.batch_size} ({flops / 1e9:.2f} GFLOP an epoch); "
            f"auto picks {auto}; fastnn and the floor at {threads or 'all'} BLAS thread(s), blas-cpu gathering "
            f"{'ahead on a second thread' if cpu_blas.AHEAD and threads == 1 else 'inline'}; load {report.load()}")
        say(f"  {'runner':8} {'median s':>9} {'GFLOP/s':>8} {'x floor':>8} {'x peak':>7} {'x 1-core':>8}")
        for k, t in med.items():
            rate = flops / t
            say(f"  {k:8} {t:9.3f} {rate / 1e9:8.1f} {t / med['floor']:8.2f} {rate / peak_all:7.2f} "
                f"{rate / peak_one:8.2f}")
        picked = {"fused-cpu": "fused", "blas-cpu": "blas", "generic": "generic"}[auto]
        line = f"  auto ({auto}): x floor {med[picked] / med['floor']:.2f}, numpy/fastnn {med['numpy'] / med[picked]:.2f}"
        if "jax" in med:
            line += f", fastnn/JAX {med[picked] / med['jax']:.2f}"
        say(line)
    memory = textbook_memory()
    say(f"\ntextbook fused-cpu run, extra host memory over the loaded data (numba's LLVM included): "
        f"{'unknown' if memory is None else f'{memory / 2**20:.0f} MiB'}")


if __name__ == "__main__":
    args, out = report.arguments(__doc__, configs="textbook,mid,wide", rounds=5, examples=60000)
    say = out.say

    main(args.configs.split(","), args.rounds, args.examples, say)
    out.write(args.out)
