"""Where a training step's time goes, beyond the GEMMs: python -m bench.profile_step mid [--threads 1].

Times (best of --repeats) the same steps as ``fit``'s batch loop, with one part left out at a
time, next to the floor's GEMMs for the same batches:

    floor          the step's GEMMs alone (the faster layout)
    full step      gather + backprop + update + storing the cost, as fit does
    - gather       the same without gathering the batch (so: what gathering costs)
    - update       without the SGD update pass
    - cost store   without storing the batch's cost
    backprop only  backprop with the batch already in place

A developer's tool: it uses fastnn's internals (Network._workspace, _backprop, train.sgd_step).
"""

import argparse
import timeit

import numpy as np

from fastnn import Network, bench
from fastnn.backend import get_backend
from fastnn.bench.workloads import CONFIGS, Floor
from fastnn.threads import blas_threads, set_blas_threads
from fastnn.train import sgd_step

STEPS = {"textbook": 2000, "mid": 400, "wide": 40, "huge": 4}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, help="BLAS threads (default: as numpy starts)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if args.threads:
        set_blas_threads(args.threads)
    c = CONFIGS[args.config]
    steps, m = STEPS[c.name], c.batch_size
    X, y, _ = bench.load_data(bench.EXAMPLES)
    net = Network(list(c.sizes), activation=c.activation, output=c.output, cost=c.cost, device="cpu", seed=0)
    X, Y, _ = net._inputs(X, y)
    order = np.random.default_rng(0).permutation(len(X))
    costs = np.zeros(steps)

    def loop(gather=True, update=True, store=True):
        ws = net._workspace(m)
        for i in range(steps):
            idx = order[i * m:(i + 1) * m]
            if gather:
                net.backend.take_rows(X, idx, out=ws.x)
                net.backend.take_rows(Y, idx, out=ws.y)
            cost = net._backprop(ws, scale=-c.lr / m)
            if store:
                costs[i] = cost
            if update:
                sgd_step(net, None, len(X), c.lr, 0.0, 0.0)

    floors = [Floor(get_backend("cpu"), c.sizes, m, layout=layout) for layout in ("columns", "rows")]

    def best(f):
        f()
        return min(timeit.repeat(f, number=1, repeat=args.repeats)) / steps * 1e6

    with np.errstate(all="ignore"):
        floor = min(best(lambda f=f: f.epoch(steps * m)) for f in floors)
        rows = [("full step", best(loop)), ("- gather", best(lambda: loop(gather=False))),
                ("- update", best(lambda: loop(update=False))), ("- cost store", best(lambda: loop(store=False))),
                ("backprop only", best(lambda: loop(gather=False, update=False, store=False)))]
    full = rows[0][1]
    print(f"{c.name} ({c.describe()}), {steps} steps, BLAS threads {blas_threads()}: us per step")
    print(f"  {'floor':14s} {floor:9.1f}")
    for name, t in rows:
        extra = f"  (that part: {full - t:6.1f})" if name.startswith("-") else ""
        print(f"  {name:14s} {t:9.1f}{extra}")
    print(f"  full step / floor = {full / floor:.2f}x; backprop beyond the floor's GEMMs: {rows[-1][1] - floor:.1f}")


if __name__ == "__main__":
    main()
