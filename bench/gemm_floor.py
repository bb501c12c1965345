"""The GEMMs of one training step, alone, by library: how fast numpy's BLAS, JAX (XLA) and torch multiply them.

    python -m bench.gemm_floor --out bench/results/cpu-2core-gemm-floor.txt

For each config, every matrix product of one step (fastnn's row layout: forward A W^T, the weight
gradient δ^T A, the backward δ W), float32, on arrays in the shapes and the orientation training
uses.  Each library multiplies a stack of SLICES different inputs (so nothing is hoisted or cached
across calls) into preallocated outputs:
    numpy     np.matmul(..., out=) with numpy's BLAS, at fit's thread policy and at every thread
    jax       one jit-compiled lax.map over the stack, pinned to float32 (XLA's own CPU GEMM)
    torch     torch.matmul(..., out=) (its BLAS: MKL or oneDNN where built with it), its default threads
Per product: microseconds and GFLOP/s; then the epoch's sum (each product times the steps of an
epoch over 60,000 examples): the GEMM floor each library sets.  A library whose floor is below
numpy's multiplies these shapes faster than numpy's BLAS can, whatever is built on top of it.
"""

import datetime
import itertools
import os
import time

import numpy as np
from threadpoolctl import threadpool_limits

from bench import report
from fastnn import threads as thread_policy
from fastnn.backend import get_backend
from fastnn.bench import machine
from fastnn.bench.workloads import CONFIGS

SLICES = 16
START_LOAD = [None]  # fit's thread policy applied as for the load at the start (the bench's own work raises it)



def products(sizes, m):
    """(name, A shape, B shape, transpose A?, transpose B?) of one step's GEMMs: C = op(A) op(B)."""
    out = []
    for l, (n_in, n_out) in enumerate(itertools.pairwise(sizes), 1):
        out.append((f"fwd{l}", (m, n_in), (n_out, n_in), False, True))  # Z = A W^T
        out.append((f"wgrad{l}", (m, n_out), (m, n_in), True, False))  # G = δ^T A
        if l > 1:
            out.append((f"back{l}", (m, n_out), (n_out, n_in), False, False))  # δ^{l-1} = δ^l W
    return out


def _shape(a, b, ta, tb):
    rows = a[1] if ta else a[0]
    cols = b[0] if tb else b[1]
    inner = a[0] if ta else a[1]
    return rows, cols, inner


def _stack(rng, shape):
    return rng.standard_normal((SLICES, *shape)).astype(np.float32) * 0.1


def best_of(reps, run):
    """The shortest of ``reps`` timed calls of ``run``, a slice's share (run multiplies all SLICES slices)."""
    best = np.inf
    for _ in range(reps):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best / SLICES


def _products(A, B, C, ta, tb):
    """Each slice's operands as the product wants them, with its output slice."""
    return [((A[i].T if ta else A[i]), (B[i].T if tb else B[i]), C[i]) for i in range(SLICES)]


def time_numpy(a, b, ta, tb, threads, reps):
    rng = np.random.default_rng(0)
    A, B = _stack(rng, a), _stack(rng, b)
    rows, cols, _ = _shape(a, b, ta, tb)
    views = _products(A, B, np.empty((SLICES, rows, cols), np.float32), ta, tb)
    def run():
        for x, y, z in views:
            np.matmul(x, y, out=z)

    with threadpool_limits(threads, user_api="blas"):
        return best_of(reps, run)


def jax_timer():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jax.config.update("jax_default_matmul_precision", "float32")

    def timer(a, b, ta, tb, reps):
        rng = np.random.default_rng(0)
        A, B = jnp.asarray(_stack(rng, a)), jnp.asarray(_stack(rng, b))

        @jax.jit
        def run(A, B):
            return jax.lax.map(lambda ab: (ab[0].T if ta else ab[0]) @ (ab[1].T if tb else ab[1]), (A, B))

        run(A, B).block_until_ready()
        return best_of(reps, lambda: run(A, B).block_until_ready())

    return timer, f"jax {jax.__version__}"


def torch_timer():
    try:
        import torch
    except ImportError:
        return None

    def timer(a, b, ta, tb, reps):
        rng = np.random.default_rng(0)
        A, B = torch.from_numpy(_stack(rng, a)), torch.from_numpy(_stack(rng, b))
        rows, cols, _ = _shape(a, b, ta, tb)
        views = _products(A, B, torch.empty((SLICES, rows, cols)), ta, tb)
        def run():
            for x, y, z in views:
                torch.matmul(x, y, out=z)

        with torch.no_grad():
            return best_of(reps, run)

    blas = "mkl" if torch.backends.mkl.is_available() else "no mkl"
    version = (f"torch {torch.__version__} ({blas}, mkldnn {torch.backends.mkldnn.is_available()}, "
               f"{torch.get_num_threads()} threads)")
    return timer, version


def profile(name, reps, peers, say):
    cfg = CONFIGS[name]
    m, n = cfg.batch_size, 60000
    steps = n / m
    policy = thread_policy.choose(cfg.sizes, m, load=START_LOAD[0]) or thread_policy.blas_threads()
    cores = thread_policy.blas_threads()
    cols = {f"numpy {policy}t": lambda *p: time_numpy(*p, policy, reps)}
    if cores != policy:
        cols[f"numpy {cores}t"] = lambda *p: time_numpy(*p, cores, reps)
    for key, (timer, _) in peers.items():
        cols[key] = lambda *p, timer=timer: timer(*p, reps)
    say(f"\n{name} {'-'.join(map(str, cfg.sizes))} b{m}: one step's GEMMs, us (GFLOP/s); fit's policy: "
        f"{policy} BLAS thread(s); load {report.load()}")
    say(f"  {'product':8} {'M x N x K':>16} " + " ".join(f"{k:>17}" for k in cols))
    epoch = dict.fromkeys(cols, 0.0)
    for label, a, b, ta, tb in products(cfg.sizes, m):
        rows, cols_, inner = _shape(a, b, ta, tb)
        flops = 2 * rows * cols_ * inner
        cells = []
        for key, run in cols.items():
            t = run(a, b, ta, tb)
            epoch[key] += t * steps
            cells.append(f"{t * 1e6:9.1f} ({flops / t / 1e9:5.1f})")
        say(f"  {label:8} {f'{rows}x{cols_}x{inner}':>16} " + " ".join(f"{c:>17}" for c in cells))
    base = epoch[f"numpy {policy}t"]
    say(f"  {'epoch s':8} {'':>16} " + " ".join(f"{t:17.3f}" for t in epoch.values()))
    say(f"  {'x numpy':8} {'':>16} " + " ".join(f"{t / base:17.2f}" for t in epoch.values()))


def main():
    args, out = report.arguments(__doc__, configs="textbook,mid,wide", reps=15)
    say = out.say

    START_LOAD[0] = os.getloadavg()[0]
    peers = {}
    for key, make in (("jax", jax_timer), ("torch", torch_timer)):
        made = make()
        if made is not None:
            peers[key] = made
    facts = machine.facts(get_backend("cpu"))
    say(f"# one step's GEMMs by library, float32, best of {args.reps} passes over {SLICES} input slices; "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; " + "; ".join(f"{k}: {v}" for k, v in facts.items()))
    say("# peers: " + "; ".join(version for _, version in peers.values()) + f"; load {report.load()}; fit's policy applied as for the load at the start, {START_LOAD[0]:.2f}")
    for name in args.configs.split(","):
        profile(name, args.reps, peers, say)
    out.write(args.out)


if __name__ == "__main__":
    main()
