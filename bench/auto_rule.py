"""fused-cpu against blas-cpu, one epoch each, over a grid of networks: the measurement behind ``auto``'s CPU rule.

    python -m bench.auto_rule --out bench/results/cpu-2core-auto-rule.txt

Random data (20,000 examples, fewer for the big networks; float32), sigmoid/quadratic, plain
SGD, fit's BLAS thread policy; the two engines alternate, median of 4 epochs after a warm-up.
Below 1 in ``blas/fused``, blas-cpu is the faster; ``batch MACs`` is the batch's largest layer GEMM (batch x inputs x outputs);
``auto`` is what ``auto`` picks.
"""

import datetime
import itertools
import time

import numpy as np

from bench import report
from fastnn import threads as thread_policy
from fastnn.backend import get_backend
from fastnn.bench import machine
from fastnn.engines import choose, cpu_blas, cpu_fused
from fastnn.network import Network

GRID = [((9, 6, 3), 10), ((20, 10, 3), 10), ((64, 32, 10), 10), ((100, 30, 10), 10), ((784, 10, 10), 10),
        ((784, 30, 10), 1), ((784, 30, 10), 10), ((784, 30, 10), 32), ((784, 30, 30, 10), 10), ((784, 60, 10), 10),
        ((784, 100, 10), 4), ((784, 100, 10), 10), ((784, 120, 10), 10), ((784, 150, 10), 1), ((784, 150, 10), 4),
        ((784, 150, 10), 10), ((784, 128, 10), 64), ((784, 300, 10), 1), ((784, 300, 10), 2), ((784, 300, 10), 4),
        ((784, 300, 10), 8), ((784, 300, 10), 10), ((784, 300, 10), 16), ((784, 300, 10), 20), ((784, 300, 10), 32),
        ((784, 300, 10), 64), ((784, 1024, 10), 1), ((784, 1024, 10), 2), ((784, 1024, 1024, 10), 4),
        ((784, 1024, 1024, 10), 16), ((784, 1024, 1024, 10), 32)]



def epoch_times(sizes, m, n, rounds):
    """Median seconds of an epoch of fused-cpu and of blas-cpu on the same random data."""
    rng = np.random.default_rng(0)
    X, y = rng.random((n, sizes[0]), np.float32), rng.integers(0, sizes[-1], n)
    runs = {}
    for name, make in (("fused", cpu_fused.Engine), ("blas", cpu_blas.Engine)):
        net = Network(list(sizes), device="cpu", dtype="float32", seed=0)
        Xd, Yd, _ = net._inputs(X, y)
        runs[name] = (net, Xd, Yd, make(net, m))
    times = {name: [] for name in runs}
    with np.errstate(over="ignore", invalid="ignore"), thread_policy.limited(thread_policy.choose(sizes, m)):
        for r in range(rounds + 1):
            for name, (net, Xd, Yd, engine) in runs.items():
                order = net.rng.permutation(n).astype(np.int64)
                start = time.perf_counter()
                engine.epoch(Xd, Yd, order, m, 0.5, 0.0, 0.0, None)
                if r:
                    times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}, runs["blas"][0].params.size


def main():
    args, out = report.arguments(__doc__, examples=20000, rounds=4)
    say = out.say

    facts = machine.facts(get_backend("cpu"))
    say(f"# fused-cpu vs blas-cpu, {args.examples} random examples, float32, median of {args.rounds} epochs; "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; " + "; ".join(f"{k}: {v}" for k, v in facts.items()))
    say(f"# load at start {report.load()}")
    say(f"  {'network':16} {'batch':>5} {'params':>9} {'batch MACs':>11} {'examples':>8} {'fused s':>8} {'blas s':>8} "
        f"{'blas/fused':>10} {'auto':>9}")
    for sizes, m in GRID:
        net = Network(list(sizes), device="cpu", seed=0)
        n = min(args.examples, int(4e9 // net.params.size // 10) * 10)  # the big networks on fewer examples
        t, params = epoch_times(sizes, m, n, args.rounds)
        macs = m * max(a * b for a, b in itertools.pairwise(sizes))
        say(f"  {'-'.join(map(str, sizes)):16} {m:5} {params:9,} {macs:11,} {n:8} {t['fused']:8.4f} {t['blas']:8.4f} "
            f"{t['blas'] / t['fused']:10.2f} {choose(net, 'auto', m, 0.0, 0.0).name:>9}")
    say(f"# load at end {report.load()}")
    out.write(args.out)


if __name__ == "__main__":
    main()
