"""Where two BLAS threads start to pay: fastnn's epoch with 1 thread and with all cores, per network.

    python -m bench.thread_policy [--rounds 5] [--json out.json]

For each network and batch size, ``fit`` runs one epoch with ``threads=1`` and one with
``threads=<cores>``, interleaved and alternating which goes first, after a pause that lets
OpenBLAS's spinning threads sleep; the medians and their ratio are printed with the step's
GEMM FLOPs (``fastnn.threads.step_flops``).  ``fastnn.threads.SPLIT_FLOPS`` is set from this
(its docstring has the numbers); run it on a quiet machine: under contention one thread always wins.
"""

import argparse
import json
import os
import statistics
import time

from fastnn import Network, bench
from fastnn.bench import machine
from fastnn.threads import step_flops

# (sizes, hidden activation, output, cost, batch size, lr, examples per timed epoch)
CASES = [
    ((784, 30, 10), "sigmoid", "sigmoid", "quadratic", 10, 3.0, 12000),
    ((784, 30, 10), "sigmoid", "sigmoid", "quadratic", 64, 3.0, 24000),
    ((784, 128, 10), "sigmoid", "softmax", "log-likelihood", 16, 0.5, 12000),
    ((784, 128, 10), "sigmoid", "softmax", "log-likelihood", 64, 0.5, 12000),
    ((784, 128, 10), "sigmoid", "softmax", "log-likelihood", 256, 0.5, 12000),
    ((784, 256, 10), "sigmoid", "softmax", "log-likelihood", 64, 0.5, 12000),
    ((784, 512, 10), "relu", "softmax", "log-likelihood", 64, 0.05, 6000),
    ((784, 512, 10), "relu", "softmax", "log-likelihood", 128, 0.05, 6000),
    ((784, 1024, 10), "relu", "softmax", "log-likelihood", 128, 0.05, 6000),
    ((784, 256, 256, 10), "relu", "softmax", "log-likelihood", 128, 0.05, 6000),
    ((784, 1024, 1024, 10), "relu", "softmax", "log-likelihood", 256, 0.05, 2048),
]
PAUSE = 0.3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", help="comma-separated batch sizes or layer strings to run, e.g. 784-128-10,256")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    cases = [c for c in CASES if only is None or {"-".join(map(str, c[0])), str(c[4])} & only]
    X, y, data = bench.load_data(max(c[-1] for c in cases))
    rows = []
    print(f"{data}; 1 vs {args.cores} BLAS threads, median of {args.rounds} epochs; load {os.getloadavg()[0]:.2f}")
    for sizes, act, out, cost, m, lr, n in cases:
        net = Network(list(sizes), activation=act, output=out, cost=cost, device="cpu", seed=0)
        net.fit(X[:n // 10], y[:n // 10], epochs=1, batch_size=m, lr=lr, threads=1)  # warm-up
        seconds = {1: [], args.cores: []}
        for r in range(args.rounds):
            for t in ([1, args.cores] if r % 2 == 0 else [args.cores, 1]):
                time.sleep(PAUSE)
                seconds[t].append(net.fit(X[:n], y[:n], epochs=1, batch_size=m, lr=lr, threads=t).seconds[0])
        one, many = (statistics.median(seconds[t]) / n * m * 1e6 for t in (1, args.cores))
        best = min(seconds[args.cores]) / min(seconds[1])  # noise only ever slows an epoch down
        flops = step_flops(sizes, m)
        rows.append({"sizes": sizes, "batch_size": m, "step_mflop": flops / 1e6, "us_per_step_1": one,
                     f"us_per_step_{args.cores}": many, "ratio": many / one, "ratio_of_minima": best,
                     "seconds": seconds})
        print(f"{'-'.join(map(str, sizes)):>18} b{m:<4} {flops / 1e6:8.1f} MFLOP/step   1 thread {one:9.1f} us   "
              f"{args.cores} threads {many:9.1f} us   {args.cores} / 1 = {many / one:.2f} (fastest epochs {best:.2f})",
              flush=True)
    print(f"load {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine.facts(), "rounds": args.rounds, "data": data, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
