"""Can blas-cpu's work between its GEMMs use the second core?  How soon another thread runs after a GEMM.

    python -m bench.second_core --out bench/results/cpu-2core-second-core.txt

wide's forward GEMM (256 x 1024 x 1024, float32, numpy's BLAS called from compiled code as
blas-cpu calls it) at 1 and at 2 BLAS threads; after each GEMM this thread hands a task to a
helper thread and times (CPU cycles) how long the helper takes to start on it:
    spin     the helper reads a flag, giving up its core every ``cpu_blas_kernels.SPINS`` reads
             (sched_yield), as blas-cpu's ``gather_ahead`` waits
    futex    the helper sleeps in the kernel (FUTEX_WAIT) and is woken (FUTEX_WAKE)
then wide's bias + relu pass over one (256, 1024) output after the same GEMM, on this thread and
as a numba ``prange`` loop over both cores.  A split of the pass pays only when the helper starts
within a few microseconds: the pass takes 30-60 us on one core.
"""

import datetime
import threading
import time

import numba
import numpy as np
from llvmlite import ir
from numba import types
from threadpoolctl import threadpool_limits

from bench import report
from fastnn.backend import get_backend
from fastnn.bench import machine
from fastnn.engines import cpu_blas

k = cpu_blas.kernels()
M, N_IN, N_OUT, STEPS = 256, 1024, 1024, 300
POST, ACK, STOP, STAMP = 0, 1, k.STOP, 3
FUTEX, FUTEX_WAIT, FUTEX_WAKE = 202, 0, 1  # x86-64 Linux: syscall number and operations
_syscall = types.ExternalFunction("syscall", types.int64(types.int64, types.voidptr, types.int64, types.int64,
                                                         types.voidptr, types.voidptr, types.int64))


@numba.extending.intrinsic
def _cycles(typingctx):
    """The CPU's cycle counter (llvm.readcyclecounter: rdtsc)."""
    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.readcyclecounter", fnty=ir.FunctionType(ir.IntType(64), []))
        return builder.call(fn, [])
    return types.int64(), codegen


_jit = numba.njit(nogil=True, cache=False)


@_jit
def _futex(word, op):
    _syscall(FUTEX, k._address(word), op, 0 if op == FUTEX_WAIT else 1, k._address(word[:0]), k._address(word[:0]), 0)


@_jit
def helper(word, flags, late, futex):
    """Wait for each task (flags[POST]), note how late it started (cycles since flags[STAMP]), acknowledge it."""
    seen = 0
    while True:
        if futex:
            while k._load_acquire(flags, POST) == seen and k._load_acquire(flags, STOP) == 0:
                _futex(word, FUTEX_WAIT)  # sleeps while word == 0
            if k._load_acquire(flags, POST) == seen:
                return
        elif k._wait(flags, POST, seen + 1, 1 << 62) < 0:
            return
        seen += 1
        late[seen - 1] = _cycles() - flags[STAMP]
        word[0] = 0
        k._store_release(flags, ACK, seen)


@_jit
def hand_over(a, w, z, word, flags, steps, futex):
    """``steps`` times: the GEMM, then a task for the helper, then wait for its acknowledgement."""
    one, zero = np.float32(1.0), np.float32(0.0)
    for i in range(steps):
        k._gemm(k.NO_TRANS, k.TRANS, M, N_OUT, N_IN, one, a, 0, N_IN, w, 0, N_IN, zero, z, 0, N_OUT)
        flags[STAMP] = _cycles()
        word[0] = 1
        k._store_release(flags, POST, i + 1)
        if futex:
            _futex(word, FUTEX_WAKE)
        while k._load_acquire(flags, ACK) != i + 1:
            pass


@numba.njit(fastmath={"contract", "nsz"})
def relu_serial(z, b):
    for i in range(M):
        for j in range(N_OUT):
            v = z[i * N_OUT + j] + b[j]
            z[i * N_OUT + j] = v if v > 0 else 0  # noqa: FURB136 (as the engine writes relu)


@numba.njit(fastmath={"contract", "nsz"}, parallel=True)
def relu_prange(z, b):
    for i in numba.prange(M):
        for j in range(N_OUT):
            v = z[i * N_OUT + j] + b[j]
            z[i * N_OUT + j] = v if v > 0 else 0  # noqa: FURB136 (as the engine writes relu)


@_jit
def _now():
    return _cycles()


def cycles_per_us():
    start, t = _now(), time.perf_counter()
    time.sleep(0.2)
    return (_now() - start) / ((time.perf_counter() - t) * 1e6)


def latencies(a, w, z, futex, rate):
    """The helper's start after each GEMM, microseconds."""
    word, flags, late = np.zeros(1, np.int32), np.zeros(4, np.int64), np.zeros(STEPS, np.int64)
    thread = threading.Thread(target=helper, args=(word, flags, late, futex), daemon=True)
    thread.start()
    hand_over(a, w, z, word, flags, STEPS, futex)
    flags[STOP] = word[0] = 1
    _futex(word, FUTEX_WAKE)
    thread.join()
    return late / rate


def pass_times(a, w, z, b, run):
    """The bias + relu pass right after each GEMM, microseconds."""
    zf, times = z.reshape(-1), []
    for _ in range(STEPS):
        np.matmul(a, w.T, out=z)
        start = time.perf_counter()
        run(zf, b)
        times.append(time.perf_counter() - start)
    return np.array(times) * 1e6


def main():
    args, out = report.arguments(__doc__)
    say = out.say
    rng = np.random.default_rng(0)
    a, w = rng.random((M, N_IN), np.float32), rng.random((N_OUT, N_IN), np.float32)
    z, b = np.empty((M, N_OUT), np.float32), rng.random(N_OUT, np.float32)
    word, flags, late = np.zeros(1, np.int32), np.zeros(4, np.int64), np.zeros(1, np.int64)
    hand_over(a.reshape(-1), w.reshape(-1), z.reshape(-1), word, flags, 0, False)  # compiled before timing
    flags[STOP] = 1
    helper(word, flags, late, False)
    helper(word, flags, late, True)
    relu_serial(z.reshape(-1), b)
    rate = cycles_per_us()
    facts = machine.facts(get_backend("cpu"))
    say(f"# a helper thread's start after a GEMM, float32 {M}x{N_IN}x{N_OUT}, {STEPS} GEMMs each; "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; numba {numba.__version__}; " + "; ".join(f"{key}: {v}" for key, v in facts.items()))
    say(f"# load {report.load()}")
    say(f"  {'BLAS threads':12} {'what':26} {'median us':>10} {'p90 us':>8} {'max us':>8}")
    rows = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            rows += [(threads, "helper starts (spin)", latencies(a.reshape(-1), w.reshape(-1), z.reshape(-1), False,
                                                                  rate)),
                     (threads, "helper starts (futex)", latencies(a.reshape(-1), w.reshape(-1), z.reshape(-1), True,
                                                                   rate)),
                     (threads, "bias + relu, this thread", pass_times(a, w, z, b, relu_serial))]
    relu_prange(z.reshape(-1), b)  # last: its pool's threads spin on after each loop, and would take the helpers' core
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            rows.append((threads, "bias + relu, prange", pass_times(a, w, z, b, relu_prange)))
    for threads, what, v in rows:
        say(f"  {threads:12} {what:26} {np.median(v):10.1f} {np.percentile(v, 90):8.1f} {v.max():8.1f}")
    say(f"# prange: numba's {numba.threading_layer()} threading layer, {numba.get_num_threads()} threads; load {report.load()}")
    out.write(args.out)


if __name__ == "__main__":
    main()
