"""GFLOP/s of each phase of the fused CPU engine's step, against one core's sgemm peak.

    python -m bench.fused_cpu_phases --out bench/results/cpu-2core-fused-phases.txt

For each config (Fashion-MNIST-sized random data, float32, the config's batch), the compiled
loops of ``cpu_kernels`` run one phase at a time over an epoch's worth of batches, from a numba
driver (no Python per batch), on one core:
    forward   Z^l = W^l A^{l-1} + b^l for every layer (``_forward``), no activation
    BP2       δ^{l-1} = W^lᵀ δ^l for every layer but the first (``_accumulate4``/``_accumulate``)
    BP4+upd   W^l += Σ_i δ_i a_iᵀ and b^l's column sums (``_update``, plain SGD)
and numpy's sgemm (one thread) does the same products on the same gathered batches, for scale.
Last, what the vectoriser made of the hot loops: the FMA instructions in their machine code by
register width (ymm: 8 floats, zmm: 16), from numba's ``inspect_asm``.
"""

import datetime
import itertools
import re
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from bench import report
from fastnn.backend import get_backend
from fastnn.bench.workloads import CONFIGS, peak_matmul
from fastnn.engines import cpu_fused
from fastnn.engines.cpu_kernels import offsets

k = cpu_fused.kernels()



@numba.njit(cache=False)
def _forward_phase(params, w_off, sizes, X, order, rows, acts, a_off, m, batches, zero):
    for b in range(batches):
        for l in range(1, sizes.shape[0]):
            n_in, n_out = sizes[l - 1], sizes[l]
            for i in range(m):
                rows[i] = order[b * m + i] * n_in if l == 1 else a_off[l - 1] + i * n_in
            src = X if l == 1 else acts
            for k0 in range(0, n_in, k.KC):
                k._forward(params, w_off[l], n_in, src, rows, k0, min(k0 + k.KC, n_in), acts, a_off[l], n_out, m,
                           zero)


@numba.njit(cache=False)
def _bp2_phase(params, w_off, sizes, deltas, a_off, wrows, m, batches):
    for b in range(batches):
        for l in range(sizes.shape[0] - 1, 1, -1):
            n_in, n_out = sizes[l - 1], sizes[l]
            for j in range(n_out):
                wrows[j] = w_off[l] + j * n_in
            i = 0
            while i < m:
                t = a_off[l - 1] + i * n_in
                if i + 4 <= m:
                    k._accumulate4(deltas, t, n_in, n_in, deltas, a_off[l] + i * n_out, 1, n_out, params, wrows,
                                   n_out)
                    i += 4
                else:
                    k._accumulate(deltas, t, n_in, deltas, a_off[l] + i * n_out, 1, params, wrows, n_out)
                    i += 1


@numba.njit(cache=False)
def _update_phase(params, velocity, w_off, b_off, sizes, X, order, rows, acts, deltas, a_off, m, batches, c):
    for b in range(batches):
        for l in range(sizes.shape[0] - 1, 0, -1):
            n_in, n_out = sizes[l - 1], sizes[l]
            for i in range(m):
                rows[i] = order[b * m + i] * n_in if l == 1 else a_off[l - 1] + i * n_in
            src = X if l == 1 else acts
            k._update(params, velocity, w_off[l], b_off[l], n_in, n_out, deltas, a_off[l], src, rows, m, False,
                      False, c)


def layout(sizes, m):
    """The engine's own offsets of each layer (cpu_kernels.offsets) and the parameters' count."""
    return offsets(np.asarray(sizes, np.int64), m)


def numpy_phases(sizes, m, X, order, batches):
    """numpy's sgemm on the same products: forward, BP2, BP4 (one thread), seconds each."""
    W = [np.random.default_rng(l).normal(0, 0.05, (b, a)).astype(np.float32) for l, (a, b) in
         enumerate(itertools.pairwise(sizes))]
    A = [np.empty((m, s), np.float32) for s in sizes]
    D = [np.ones((m, s), np.float32) * 1e-3 for s in sizes]
    G = [np.empty_like(w) for w in W]
    out = {}
    for phase in ("forward", "BP2", "BP4+upd"):
        start = time.perf_counter()
        for b in range(batches):
            A[0] = X[order[b * m:(b + 1) * m]]
            for l, w in enumerate(W):
                if phase == "forward":
                    np.matmul(A[l], w.T, out=A[l + 1])
                elif phase == "BP2" and l:
                    np.matmul(D[l + 1], w, out=D[l])
                elif phase == "BP4+upd":
                    np.matmul(D[l + 1].T, A[l], out=G[l])
                    w += G[l]
        out[phase] = time.perf_counter() - start
    return out


def fma_widths(function):
    """Counts of FMA instructions by register in ``function``'s machine code: {'ymm': n, 'zmm': n, 'xmm': n}."""
    options = {key: v for key, v in function.targetoptions.items() if key not in ("cache", "nopython")}
    fresh = numba.njit(**options)(function.py_func)  # numba shows no machine code of a cached function
    for signature in function.signatures:
        fresh.compile(signature)
    text = "\n".join(fresh.inspect_asm().values())
    found = re.findall(r"vfmadd\w*ps\s+[^\n]*?%?([xyz]mm)\d+", text)
    return {w: found.count(w) for w in ("xmm", "ymm", "zmm")}


def profile(name, examples, say):
    cfg = CONFIGS[name]
    sizes, m = np.array(cfg.sizes, np.int64), cfg.batch_size
    batches = examples // m
    rng = np.random.default_rng(0)
    X = rng.random((examples, sizes[0]), dtype=np.float32).reshape(-1)
    order = rng.permutation(examples).astype(np.int64)
    w_off, b_off, a_off, n_params = layout(list(cfg.sizes), m)
    params = rng.normal(0, 0.05, n_params).astype(np.float32)
    acts = rng.random(m * int(sizes[1:].sum()), dtype=np.float32)
    deltas = (rng.random(acts.size, dtype=np.float32) - 0.5) * 1e-6
    rows, wrows = np.empty(m, np.int64), np.empty(int(sizes[1:].max()), np.int64)
    c = np.zeros(k.DECAY + 1, np.float32)
    c[k.ONE], c[k.KEEP] = 1, 1
    runs = {
        "forward": lambda n: _forward_phase(params, w_off, sizes, X, order, rows, acts, a_off, m, n, c[k.ZERO]),
        "BP2": lambda n: _bp2_phase(params, w_off, sizes, deltas, a_off, wrows, m, n),
        "BP4+upd": lambda n: _update_phase(params, params[:0], w_off, b_off, sizes, X, order, rows, acts, deltas,
                                           a_off, m, n, c),
    }
    products = [int(a * b) for a, b in itertools.pairwise(sizes)]
    flops = {"forward": 2 * m * sum(products), "BP2": 2 * m * sum(products[1:]), "BP4+upd": 2 * m * sum(products)}
    with threadpool_limits(1, user_api="blas"):
        ref = numpy_phases(list(cfg.sizes), m, X.reshape(examples, -1), order, batches)
    say(f"\n{name} {'-'.join(map(str, cfg.sizes))} b{m}, {batches} batches; load {report.load()}")
    say(f"  {'phase':8} {'fused s':>8} {'GFLOP/s':>8} {'x 1-core peak':>13} {'numpy sgemm s':>13} {'GFLOP/s':>8}")
    for phase, run in runs.items():
        run(1)  # compile
        best = np.inf
        for _ in range(3):
            start = time.perf_counter()
            run(batches)
            best = min(best, time.perf_counter() - start)
        total = flops[phase] * batches
        if total == 0:
            say(f"  {phase:8} (no such product: one weight layer)")
            continue
        say(f"  {phase:8} {best:8.3f} {total / best / 1e9:8.1f} {total / best / PEAK:13.2f} {ref[phase]:13.3f} "
            f"{total / ref[phase] / 1e9:8.1f}")


def main():
    args, out = report.arguments(__doc__, configs="textbook,mid", examples=60000)
    say = out.say

    global PEAK
    with threadpool_limits(1, user_api="blas"):
        PEAK = peak_matmul(get_backend("cpu"), 2048)
    say(f"# fused-cpu phases, float32, one core; {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
        f"numba {numba.__version__}, numpy {np.__version__}; one core's sgemm peak (2048^2) {PEAK / 1e9:.0f} GFLOP/s")
    for name in args.configs.split(","):
        profile(name, args.examples, say)
    say("\nFMA instructions in the machine code, by register width (ymm: 8 floats, zmm: 16):")
    for function in (k._forward, k._accumulate4, k._accumulate):
        say(f"  {function.__name__:12} {fma_widths(function)}")
    out.write(args.out)


PEAK = None

if __name__ == "__main__":
    main()
