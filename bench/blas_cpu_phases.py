"""Where a blas-cpu epoch's time goes: its GEMMs alone, everything else alone, the whole, the floor.

    python -m bench.blas_cpu_phases --out bench/results/cpu-2core-blas-phases.txt

For each config (Fashion-MNIST-sized random data, float32, the config's batch, fit's BLAS thread
policy unless ``--threads``), a numba copy of ``cpu_blas_kernels.epoch`` runs over one epoch with
parts of the step switched off, no Python per batch:
    gemm     the step's GEMMs alone, called from compiled code (numpy's CBLAS, no numpy call cost)
    gather   the copy of the batch's input rows alone (on this thread, no prefetch)
    rest     bias + σ, BP1 and the cost, δ ⊙ σ', the column sums and b's update alone
then the engine itself (``cpu_blas.Engine.epoch``):
    inline   gathering on its own thread (with the prefetch of the next batch)
    engine   as fit runs it: the gather on a second thread where ``cpu_blas.gather_ahead`` says so
and, for scale, ``floor``: the same GEMMs through numpy (``Floor``, as the interleaved bench
times it: a Python call each).  GFLOP/s are the GEMMs' FLOPs over each time; the sgemm peaks
(2048², one thread and all) say how far the step's small GEMMs sit below the BLAS's best.
"""

import datetime
import os
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from bench import report
from fastnn import threads as thread_policy
from fastnn.backend import get_backend
from fastnn.bench import machine
from fastnn.bench.workloads import CONFIGS, Floor, gemm_flops, peak_matmul
from fastnn.engines import cpu_blas, cpu_fused
from fastnn.network import Network

kb = cpu_blas.kernels()
from fastnn.engines.cpu_blas_kernels import NO_TRANS, TRANS, _bias_and_activate, _gemm, _update
from fastnn.engines.cpu_kernels import ONE, STEP, ZERO, _derivative, _output, offsets

GATHER, GEMM, REST = 1, 2, 4



@numba.njit(cache=False)
def _epoch(parts, X, Y, order, batch, params, velocity, sizes, codes, c, x, acts, deltas, zout, colsum):
    """``cpu_blas_kernels.epoch`` (plain SGD, full batches) with the parts not in ``parts`` skipped."""
    hidden, output, cost = codes[0], codes[1], codes[2]
    depth = sizes.shape[0] - 1
    w_off, b_off, a_off, _ = offsets(sizes, batch)
    n0, nL = sizes[0], sizes[depth]
    total = 0.0
    m = batch
    one, zero = c[ONE], c[ZERO]
    for start in range(0, order.shape[0] - batch + 1, batch):
        if parts & GATHER:
            for i in range(m):
                row = order[start + i] * n0
                x[i * n0:(i + 1) * n0] = X[row:row + n0]
        for l in range(1, depth + 1):
            n_in, n_out = sizes[l - 1], sizes[l]
            a, ao = (x, 0) if l == 1 else (acts, a_off[l - 1])
            z, zo = (zout, 0) if l == depth else (acts, a_off[l])
            if parts & GEMM:
                _gemm(NO_TRANS, TRANS, m, n_out, n_in, one, a, ao, n_in, params, w_off[l], n_in, zero, z, zo, n_out)
            if parts & REST:
                _bias_and_activate(hidden, z, zo, m, n_out, params, b_off[l], c, l < depth)
        if parts & REST:
            for i in range(m):
                total += _output(output, cost, zout, i * nL, acts, a_off[depth] + i * nL,
                                 Y, order[start + i] * nL, deltas, a_off[depth] + i * nL, nL, c[STEP], c)
        for l in range(depth, 0, -1):
            n_in, n_out = sizes[l - 1], sizes[l]
            a, ao = (x, 0) if l == 1 else (acts, a_off[l - 1])
            if l > 1:
                if parts & GEMM:
                    _gemm(NO_TRANS, NO_TRANS, m, n_in, n_out, one, deltas, a_off[l], n_out, params, w_off[l], n_in,
                          zero, deltas, a_off[l - 1], n_in)
                if parts & REST:
                    _derivative(hidden, deltas, a_off[l - 1], acts, a_off[l - 1], m * n_in, c)
            if parts & GEMM and parts & REST:
                _update(params, velocity, w_off[l], b_off[l], n_in, n_out, a, ao, deltas, a_off[l], m, False, False,
                        c, colsum)
            elif parts & GEMM:
                _gemm(TRANS, NO_TRANS, n_out, n_in, m, one, deltas, a_off[l], n_out, a, ao, n_in, one, params,
                      w_off[l], n_in)
            elif parts & REST:  # the column sums and b's update alone
                g = colsum[:n_out]
                g[:] = deltas[a_off[l]:a_off[l] + n_out]
                for i in range(1, m):
                    row = deltas[a_off[l] + i * n_out:a_off[l] + (i + 1) * n_out]
                    for j in range(n_out):
                        g[j] += row[j]
                b = params[b_off[l]:b_off[l] + n_out]
                for j in range(n_out):
                    b[j] += g[j]
    return total


def profile(name, examples, rounds, threads, say):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(0)
    X = rng.random((examples, cfg.sizes[0]), np.float32)
    y = rng.integers(0, cfg.sizes[-1], examples)
    net = Network(list(cfg.sizes), cfg.activation, cfg.output, cfg.cost, device="cpu", dtype="float32", seed=0)
    Xd, Yd, _ = net._inputs(X, y)
    engine = cpu_blas.Engine(net, cfg.batch_size)
    m = cfg.batch_size
    c, codes = cpu_fused.constants(net, examples, examples, m, cfg.lr, 0.0, 0.0, None, engine.codes)
    order = rng.permutation(examples).astype(np.int64)
    Xf, Yf = np.ascontiguousarray(Xd).reshape(-1), np.ascontiguousarray(Yd).reshape(-1)
    params = net.params.copy()

    def part(parts):
        def run():
            with np.errstate(over="ignore", invalid="ignore"):
                _epoch(parts, Xf, Yf, order, m, params, params[:0], engine.sizes, codes, c, engine.x, engine.acts,
                       engine.deltas, engine.zout, engine.colsum)
        return run

    floors = [Floor(get_backend("cpu"), cfg.sizes, m, layout=layout) for layout in ("columns", "rows")]
    def whole(ahead):
        runner = cpu_blas.Engine(net, m)
        runner.ahead = ahead

        def run():
            with np.errstate(over="ignore", invalid="ignore"):
                runner.epoch(Xd, Yd, order, m, cfg.lr, 0.0, 0.0, None)
        return run

    ahead = cpu_blas.gather_ahead(START_LOAD[0])
    runs = {"gemm": part(GEMM), "gather": part(GATHER), "rest": part(REST), "inline": whole(False),
            "engine": whole(ahead)}
    runs["floor"] = lambda: min(_timed(lambda f=f: f.epoch(examples)) for f in floors)
    n = threads if threads is not None else thread_policy.choose(cfg.sizes, m, load=START_LOAD[0])
    times = {key: [] for key in runs}
    with thread_policy.limited(n):
        for r in range(rounds + 1):
            for key, run in runs.items():
                t = run() if key == "floor" else _timed(run)
                if r:
                    times[key].append(t)
    full = (examples // m) * m
    flops = gemm_flops(cfg.sizes, full)
    med = {key: float(np.median(v)) for key, v in times.items()}
    say(f"\n{name} {'-'.join(map(str, cfg.sizes))} b{m}, {examples // m} steps, {n} BLAS thread(s), gather "
        f"{'ahead on a second thread' if ahead and n == 1 else 'inline'} in 'engine'; load {report.load()}")
    say(f"  {'part':7} {'median s':>9} {'us/step':>8} {'x floor':>8} {'GEMM GFLOP/s':>13} {'x 1-core':>9} "
        f"{'x peak':>7}")
    for key, t in med.items():
        rate = flops / t
        say(f"  {key:7} {t:9.4f} {t / (examples // m) * 1e6:8.1f} {t / med['floor']:8.2f} {rate / 1e9:13.1f} "
            f"{rate / PEAKS[1]:9.2f} {rate / PEAKS[0]:7.2f}")


def _timed(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


PEAKS = [None, None]
START_LOAD = [None]  # fit's policies applied as for the load at the start (the bench's own work raises it)


def main():
    args, out = report.arguments(__doc__, helps={"threads": "BLAS threads (default: fit's policy)"},
                                 configs="textbook,mid,wide", examples=60000, rounds=5, threads=None)
    say = out.say

    START_LOAD[0] = os.getloadavg()[0]
    cpu = get_backend("cpu")
    PEAKS[0] = peak_matmul(cpu, 2048)
    with threadpool_limits(1, user_api="blas"):
        PEAKS[1] = peak_matmul(cpu, 2048)
    facts = machine.facts(cpu)
    say(f"# blas-cpu epoch split into parts, float32, random data; {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} "
        f"UTC; numba {numba.__version__}; " + "; ".join(f"{k}: {v}" for k, v in facts.items()))
    say(f"# sgemm peak (2048^2): all threads {PEAKS[0] / 1e9:.0f} GFLOP/s, one core {PEAKS[1] / 1e9:.0f}; "
        f"load {report.load()}; fit's policies applied as for the load at the start, {START_LOAD[0]:.2f}")
    for name in args.configs.split(","):
        profile(name, args.examples, args.rounds, args.threads, say)
    out.write(args.out)


if __name__ == "__main__":
    main()
