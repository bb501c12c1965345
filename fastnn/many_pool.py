"""``fit_many``'s processes method: a pool of spawned workers, each training one model's next epoch at a time.

Every epoch, each model's next epoch is one job: a worker runs the ordinary ``fit`` on it (``many.epoch_job``),
continuing the model's TrainState, and sends the state back.  The workers are spawned once and kept for later
calls (they have imported numpy and loaded numba's kernels); each trains with one BLAS thread and ignores stop
signals, which the parent handles (it keeps the last epoch all models completed, and ends the workers).  The
run's arrays reach the workers through .npy files in a temporary folder, mapped read-only (no copy per job).
"""

import atexit
import multiprocessing
import os
import shutil
import signal
import tempfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from .many import commit, epoch_job

_worker = {}  # in a worker: the data of the current run (by folder) and a network per model index
_pool = {}  # in the parent: the pool, kept for the next call (its workers have imported numpy and numba)


def _start_worker():
    """A worker leaves stop signals to the parent (which saves the run) and trains with one BLAS thread."""
    for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if s is not None:
            signal.signal(s, signal.SIG_IGN)
    from threadpoolctl import threadpool_limits

    _worker["blas"] = threadpool_limits(limits=1, user_api="blas")
    from .engines import cpu_blas

    cpu_blas.AHEAD = False  # the workers share the cores: no second thread each to gather batches


def _worker_data(shared):
    """The run's data in a worker: the arrays ``shared`` names, mapped from their files (read once per run)."""
    folder, has_validation, shuffle, engine = shared
    if _worker.get("folder") != folder:
        load = lambda name: np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r")
        validation = (load("X_val"), load("y_val")) if has_validation else None
        _worker["folder"], _worker["data"] = folder, (load("X"), load("y"), validation, shuffle, engine)
    return _worker["data"]


def _pool_job(job):
    """In a worker: one model's next epoch (``job``: index, the network's description, its state, the epoch, data)."""
    from .network import Network

    i, spec, state, epoch, shared = job
    kind = repr({k: v for k, v in spec.items() if k != "seed"})
    net = _worker.get((i, kind))
    if net is None:
        net = _worker[i, kind] = Network(spec["sizes"], activation=spec["activation"], output=spec["output"],
                                         cost=spec["cost"], device="cpu", dtype=spec["dtype"], seed=0)
    net.seed = spec["seed"]
    return i, epoch_job(net, state, _worker_data(shared), epoch)


def spec_of(net):
    return {"sizes": net.sizes, "activation": net.activations[0].name if len(net.sizes) > 2 else "sigmoid",
            "output": net.activations[-1].name, "cost": net.cost.name, "dtype": net.dtype.name, "seed": net.seed}


def pool(workers):
    """The pool of ``workers`` spawned processes, started on first use and kept for later calls."""
    executor = _pool.get(workers)
    if executor is None or getattr(executor, "_broken", False):
        for old in _pool.values():
            old.shutdown(wait=False, cancel_futures=True)
        _pool.clear()
        executor = _pool[workers] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                        initializer=_start_worker)
    return executor


@atexit.register
def close_pool():
    """End the workers (at exit, or to free their memory now)."""
    for executor in _pool.values():
        executor.shutdown(wait=True, cancel_futures=True)
    _pool.clear()


def share(data):
    """Write the run's arrays to a new temporary folder, which workers map: (folder, shared description)."""
    X, y, validation, shuffle, engine = data
    folder = tempfile.mkdtemp(prefix="fastnn-many-")
    arrays = {"X": X, "y": y, **({"X_val": validation[0], "y_val": validation[1]} if validation else {})}
    for name, array in arrays.items():
        np.save(os.path.join(folder, f"{name}.npy"), np.asarray(array))
    return folder, (folder, validation is not None, shuffle, engine)


def train_epochs(nets, states, data, epochs, diverged, report, on_epoch, workers):
    """The epochs in a pool of spawned processes (a worker that dies ends the run with BrokenProcessPool)."""
    executor = pool(workers)
    folder, shared = share(data)
    try:
        for epoch in range(min(s.epoch for s in states) + 1, epochs + 1):
            jobs = [executor.submit(_pool_job, (i, spec_of(net), state, epoch, shared))
                    for i, (net, state) in enumerate(zip(nets, states)) if i not in diverged and state.epoch < epoch]
            done = dict(job.result() for job in jobs)
            commit(nets, states, done, diverged, report, epoch)
            if on_epoch is not None:
                on_epoch(epoch, states)
    except BaseException:
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            process.terminate()  # a stop: the run's state is whole; the epochs under way are not wanted
        executor.shutdown(wait=False, cancel_futures=True)
        _pool.clear()
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
