"""BLAS threads while training: how many, chosen from the size of a step's GEMMs (threadpoolctl).

A BLAS splits a GEMM across its threads; on a small step that costs more than it saves (the
threads wake and meet for every product, and numpy's single-threaded update then reads gradients
another core wrote).  The policy: one BLAS thread when a step's GEMMs come to less than
``SPLIT_FLOPS``, else the BLAS's own count, untouched.  ``fit`` applies it for its own duration
only (``limited``), so numpy outside training keeps whatever the user set; ``threads=N``
(``fastnn train --threads N``) overrides it.  It serves every BLAS threadpoolctl knows
(OpenBLAS, MKL, BLIS), and only on the CPU: a GPU's GEMMs are not the host BLAS's.

Measured (``python -m bench.thread_policy --rounds 7``, 2-core AMD EPYC, OpenBLAS 0.3.31, load
1.0-1.5): a step's time with 2 BLAS threads over its time with 1, median epochs:
    784-30-10 b10 (1.0 MFLOP) 0.87   784-30-10 b64 (6.1) 6.11      784-128-10 b16 (6.5) 1.17
    784-128-10 b64 (26.2) 1.14       784-256-10 b64 (52.4) 0.77    784-128-10 b256 (105) 0.74
    784-512-10 b64 (105) 0.75        784-512-10 b128 (210) 0.66    784-1024-1024-10 b256 (2448) 0.56
so the crossover lies between 26 and 52 MFLOP a step.  Under contention (load 2-30, other
processes on both cores) one thread won at every size, by 2x (wide) to 40x.

Hence the load rule (issue 21: the BLAS's own count was 7-16x slower than one thread on a busy
machine): above SPLIT_FLOPS, the threads are the cores left idle by other work, read once when fit
starts from the 1-minute load average: ``floor(cores + 1 - load)`` (the +1: this process's own share
of the load), at least 1 and at most the BLAS's own count.  ``python -m bench.thread_load`` measures
it against ``--threads 1`` and ``--threads <cores>`` under N synthetic busy processes.  The thread
count changes the last bits of a result (BLAS splits its sums by thread): the same seed gives the same
weights only with the same count, so pin ``threads`` (``--threads``) to reproduce a run bit for bit.
"""

import contextlib
import itertools
import math
import os

from threadpoolctl import threadpool_info, threadpool_limits

from . import validate

SPLIT_FLOPS = 40e6  # GEMM FLOPs of one step from which the BLAS's threads beat one (measured, see above)


def step_flops(sizes, batch_size):
    """FLOPs of one step's GEMMs: forward, weight gradients, and backward into every layer but the first."""
    products = [n_out * n_in for n_in, n_out in itertools.pairwise(sizes)]
    return 2 * batch_size * (3 * sum(products) - products[0])


def libraries():
    """The BLAS libraries loaded in this process: [{api, version, threads, threading, file}]."""
    return [{"api": lib["internal_api"], "version": lib.get("version"), "threads": lib["num_threads"],
             "threading": lib.get("threading_layer"), "file": os.path.basename(lib["filepath"])}
            for lib in threadpool_info() if lib["user_api"] == "blas"]


def blas_threads():
    """The BLAS's thread count (the largest when several are loaded), or None when none is found."""
    counts = [lib["threads"] for lib in libraries()]
    return max(counts) if counts else None


def set_blas_threads(n):
    """Set every loaded BLAS to ``n`` threads for the rest of the process; return the count in use."""
    threadpool_limits(limits=validate.integer("threads", n, 1), user_api="blas")
    return blas_threads()


def check(threads):
    """``threads`` as given to fit: None (the policy) or an integer >= 1."""
    return None if threads is None else validate.integer("threads", threads, 1)


def cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def idle_cores(load=None):
    """The cores other work leaves idle: floor(cores + 1 - load) from the 1-minute ``load`` average, >= 1."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average on this system: take every core as idle
            return cores()
    return max(1, min(cores(), math.floor(cores() + 1 - load)))


def choose(sizes, batch_size, threads=None, on_gpu=False, load=None):
    """The BLAS threads to train with: ``threads`` when given, else the policy; None leaves the BLAS as it is."""
    if threads is not None:
        return threads
    if on_gpu:
        return None
    if step_flops(sizes, batch_size) < SPLIT_FLOPS:
        return 1
    idle, own = idle_cores(load), blas_threads()
    return None if own is None or idle >= own else idle


@contextlib.contextmanager
def limited(n):
    """Inside the block every loaded BLAS runs ``n`` threads (None: unchanged); restored afterwards."""
    if n is None:
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


def describe():
    """What ``fastnn info`` says of the policy, in one line."""
    own = blas_threads()
    return (f"1 BLAS thread while training when a step's GEMMs are under {SPLIT_FLOPS / 1e6:.0f} MFLOP "
            f"(784-30-10 batch 10: {step_flops((784, 30, 10), 10) / 1e6:.1f} MFLOP -> 1), else the cores other "
            f"work leaves idle, floor(cores + 1 - load) (now {idle_cores()} of {cores()}), at most the BLAS's own "
            f"{own if own is not None else 'count'}; --threads N overrides (and pins the result's last bits)")
