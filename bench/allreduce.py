"""Communication cost per step of data-parallel training, beside the compute it is added to.

    OPENBLAS_NUM_THREADS=1 mpirun -n 2 [--mca ...] python bench/allreduce.py [--out FILE.json]

For each benchmark config, with every rank on the CPU in float32, measured in one run:
    allreduce_s      one in-place all-reduce of the flat gradient buffer (what each step adds)
    compute_s        one training step of the global batch B in a single process (rank 0 alone,
                     the other ranks asleep): gather, backprop, update, as ``fit`` runs them
    compute_share_s  the same for one rank's share of the batch, B/N rows (rank 0 alone)
    step_s           one step of ``fit(distributed=...)`` with all N ranks at once: the real thing
    model_s          the scaling model compute_s/N + allreduce_s, to compare with step_s
    model_share_s    compute_share_s + allreduce_s: the model with the share's measured compute,
                     which keeps the per-step overheads that do not shrink with B/N
Step times come from ``fit``'s own epoch clock (History.seconds) divided by the steps per epoch.
Each number is the best of its repeats (as timeit reports), since other processes may share the
machine; the medians are kept beside them (``*_median_s``), and the load average before and after.
Results go to bench/results/ as JSON with the date, Open MPI, mpi4py, numpy/BLAS versions, CPU
model and the MCA settings of the run.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import mpi4py
import numpy as np
from mpi4py import MPI

from fastnn import Network
from fastnn.bench import machine
from fastnn.distributed import connect

CONFIGS = {  # name: (layers, global batch size)
    "textbook": ([784, 30, 10], 10),
    "mid": ([784, 128, 10], 64),
    "wide": ([784, 1024, 1024, 10], 256),
    "huge": ([784, 4096, 4096, 10], 1024),
}
MIN_SECONDS = 0.5  # each repeat of a measurement runs at least this long
REPEATS = 5
MCA_SHOWN = ("btl", "oob", "pml", "coll", "hwloc_base_binding", "rmaps_base_oversubscribe")


def idle_until_rank_0(comm):
    """Wait for rank 0 without spinning a core (MPI's own Barrier busy-polls), so it measures alone."""
    request = comm.world.Ibarrier()
    while not request.Test():
        time.sleep(0.002)


def best_and_median(seconds):
    return min(seconds), statistics.median(seconds)


def per_step(net, X, y, batch_size, steps, epochs, comm=None):
    """(best, median) seconds per step of ``fit`` over ``epochs`` epochs of ``steps`` steps each."""
    history = net.fit(X[:steps * batch_size], y[:steps * batch_size], epochs=epochs, batch_size=batch_size,
                      lr=0.01, distributed=comm)
    return best_and_median([s / steps for s in history.seconds[1:]])  # the first epoch warms up


def time_allreduce(comm, buf):
    """(best, median) seconds of one in-place all-reduce of ``buf``, on the slowest rank's clock."""
    comm.allreduce_sum(buf)  # warm up: connections, registration
    start = time.perf_counter()
    comm.allreduce_sum(buf)
    once = comm.world.allreduce(time.perf_counter() - start, op=comm.mpi.MAX)
    calls = max(1, min(1000, round(MIN_SECONDS / max(once, 1e-9))))
    results = []
    for _ in range(REPEATS):
        comm.barrier()
        start = time.perf_counter()
        for _ in range(calls):
            comm.allreduce_sum(buf)
        results.append(comm.world.allreduce((time.perf_counter() - start) / calls, op=comm.mpi.MAX))
    return best_and_median(results)


def measure(comm, name, sizes, batch):
    """All the numbers of one config (every rank calls it; rank 0's dict is the result)."""
    n_ranks = comm.size
    rng = np.random.default_rng(0)
    net = Network(sizes, device=comm.backend, dtype="float32", seed=1)
    steps_probe = 2
    X = rng.random((steps_probe * batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], steps_probe * batch)
    share = -(-batch // n_ranks)
    if comm.rank == 0:  # how many steps make an epoch of about MIN_SECONDS
        once = per_step(net, X, y, batch, steps_probe, 2)[0]
        steps = max(2, min(2000, round(MIN_SECONDS / once)))
    else:
        steps = None
    steps = comm.broadcast(steps)
    X = rng.random((steps * batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], steps * batch)
    epochs = REPEATS + 1
    if comm.rank == 0:
        compute = per_step(net, X, y, batch, steps, epochs)
        compute_share = per_step(net, X, y, share, steps, epochs)
        comm.world.Ibarrier().Wait()
    else:
        compute = compute_share = None
        idle_until_rank_0(comm)
    compute, compute_share = comm.broadcast((compute, compute_share))
    net = Network(sizes, device=comm.backend, dtype="float32", seed=1)  # the same start on every rank
    step = per_step(net, X, y, batch, steps, epochs, comm=comm)
    step = tuple(comm.world.allreduce(t, op=comm.mpi.MAX) for t in step)  # the slowest rank's
    net.grads.fill(0)  # sums of zeros cost what sums of gradients do, and never overflow
    allreduce = time_allreduce(comm, net.grads)
    medians = {"allreduce_median_s": allreduce[1], "compute_median_s": compute[1],
               "compute_share_median_s": compute_share[1], "step_median_s": step[1]}
    allreduce, compute, compute_share, step = allreduce[0], compute[0], compute_share[0], step[0]
    nbytes = net.grads.nbytes
    return {
        "config": name, "layers": sizes, "batch": batch, "ranks": n_ranks, "dtype": "float32",
        "parameters": int(net.grads.size), "bytes": int(nbytes), "steps_per_epoch": steps, "epochs": epochs,
        "allreduce_s": allreduce,
        "allreduce_algbw_GBps": nbytes / allreduce / 1e9,
        "allreduce_busbw_GBps": nbytes / allreduce / 1e9 * 2 * (n_ranks - 1) / n_ranks,
        "compute_s": compute, "compute_share_s": compute_share, "step_s": step,
        "model_s": compute / n_ranks + allreduce, "model_share_s": compute_share + allreduce,
        "allreduce_over_compute": allreduce / compute,
        "speedup_measured": compute / step, "speedup_model": compute / (compute / n_ranks + allreduce),
        **medians,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="JSON file to write (default: bench/results/allreduce-<N>ranks-<btl>.json)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names of configs to run")
    args = parser.parse_args(argv)
    comm = connect("cpu")
    hosts = sorted(set(comm.world.allgather(MPI.Get_processor_name())))
    load_before = os.getloadavg()
    results = []
    for name in args.configs.split(","):
        sizes, batch = CONFIGS[name]
        results.append(measure(comm, name, sizes, batch))
        if comm.rank == 0:
            r = results[-1]
            print(f"{name:9s} {r['bytes'] / 1e6:8.2f} MB  allreduce {r['allreduce_s'] * 1e3:9.3f} ms  "
                  f"compute {r['compute_s'] * 1e3:9.3f} ms  share {r['compute_share_s'] * 1e3:9.3f} ms  "
                  f"step {r['step_s'] * 1e3:9.3f} ms  model {r['model_s'] * 1e3:9.3f} ms", flush=True)
    if comm.rank != 0:
        return
    mca = {k[len("OMPI_MCA_"):]: v for k, v in sorted(os.environ.items())  # the transport and binding chosen
           if k.startswith(tuple(f"OMPI_MCA_{p}" for p in MCA_SHOWN))}
    report = {
        "benchmark": "allreduce", "command": "mpirun -n {} python {}".format(comm.size, " ".join(sys.argv)),
        "machine": machine.facts(comm.backend), "open_mpi": MPI.Get_library_version().strip("\0 \n"),
        "mpi4py": mpi4py.__version__, "ranks": comm.size, "hosts": hosts, "mca": mca,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "blas_threads_per_rank": os.environ.get("OPENBLAS_NUM_THREADS", "default"), "results": results,
    }
    btl = mca.get("btl", "default").replace(",", "+")
    out = Path(args.out or Path(__file__).parent / "results" / f"allreduce-{comm.size}ranks-{btl}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
