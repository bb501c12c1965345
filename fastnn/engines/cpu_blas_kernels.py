"""The compiled loops of the BLAS CPU engine (numba): one call trains a whole epoch.

The big products are GEMMs of numpy's own BLAS, called from compiled code through its CBLAS entry
point (``cblas_sgemm``/``cblas_dgemm``, found in the BLAS library numpy loaded); everything
between them is a compiled loop over the GEMM's output.  A batch is held row-major, one row per
example: A^l and δ^l are (m, n_l), W^l is (n_out, n_in).
    gather   x[i, :] = X[order[i], :]                          a copy loop (BLAS needs contiguous rows):
             either ``gather_ahead`` on a second thread, a batch ahead into the other of x's two
             slots (``cpu_blas.gather_ahead`` says when), or here, followed by a prefetch of the
             next batch's rows, which then arrive while this batch's GEMMs run (X is read from
             memory at ~5 GB/s on this machine: textbook 0.128 s/epoch inline, 0.109 with the
             prefetch, 0.075 with the second thread)
    forward  Z^l = A^{l-1} W^lᵀ (GEMM), then z + b and σ      in place, one pass
    BP1      δ^L[i] = cost'(a^L[i], y[i]) ⊙ σ'(z^L[i]) × step  ``cpu_kernels._output``, with the cost
    BP2      δ^{l-1} = δ^l W^l (GEMM, the old W^l), then ⊙ σ'  in place, one pass
    BP4      W ← β W + δ^lᵀ A^{l-1} (one GEMM: β = 1 - ηλ/n)   plain SGD: the update is the GEMM itself
             v ← μ v + δ^lᵀ A^{l-1} (GEMM, β = μ), then        momentum: one pass over W and v
             v -= (ηλ/n) w, w += v
    BP3      b += Σ_i δ^l[i]                                   column sums, with b's update
δ^L carries the step -η/m, so the GEMM adds the step itself.  The activations, BP1 and the cost are
``cpu_kernels``' loops, so both CPU engines compute them alike.  Deterministic for a given BLAS
thread count: OpenBLAS splits a GEMM by rows and columns of its output, never along the sum.
"""
import ctypes

import llvmlite.binding
import numba
from llvmlite import ir
from numba import types
from numba.extending import intrinsic
from threadpoolctl import threadpool_info

from .cpu_kernels import DECAY, KEEP, MU, ONE, STEP, STEP_LAST, ZERO, _activate, _derivative, _output, offsets

# CBLAS entry points to look for, with the width of their integers: numpy's own wheels (OpenBLAS
# built ILP64 with a prefix), other ILP64 builds, and the plain LP64 CBLAS (OpenBLAS, MKL, BLIS).
SYMBOLS = (("scipy_cblas_{}gemm64_", types.int64), ("cblas_{}gemm64_", types.int64), ("cblas_{}gemm", types.int32))
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
STOP, DONE = 2, 3  # flags[STOP]: gather_ahead is to stop (or it failed); flags[DONE]: it has stopped


def _find_blas():
    """(library path, symbol pattern, integer type) of a loaded BLAS with CBLAS GEMMs, numpy's first."""
    found = [lib["filepath"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    found.sort(key=lambda path: "numpy" not in path)
    for path in found:
        library = ctypes.CDLL(path)
        for pattern, integer in SYMBOLS:
            if all(hasattr(library, pattern.format(t)) for t in "sd"):
                return path, pattern, integer
    raise ImportError(f"no CBLAS sgemm/dgemm found in the BLAS libraries loaded ({', '.join(found) or 'none'})")


BLAS_PATH, _pattern, _int = _find_blas()
llvmlite.binding.load_library_permanently(BLAS_PATH)  # the symbols resolve by name, so numba's cache holds
_ptr = types.voidptr
_sgemm = types.ExternalFunction(_pattern.format("s"), types.void(
    types.int32, types.int32, types.int32, _int, _int, _int, types.float32, _ptr, _int, _ptr, _int, types.float32,
    _ptr, _int))
_dgemm = types.ExternalFunction(_pattern.format("d"), types.void(
    types.int32, types.int32, types.int32, _int, _int, _int, types.float64, _ptr, _int, _ptr, _int, types.float64,
    _ptr, _int))

# No reassociation: these loops are elementwise or column sums kept in source order (see
# cpu_kernels' note on determinism).
# error_model: see cpu_kernels (the integer divisions here are by the batch size and the item size, never 0).
_jit = numba.njit(fastmath={"contract", "nsz"}, cache=True, nogil=True, error_model="numpy")


@intrinsic
def _address(typingctx, array):
    """The address of ``array``'s first element, for a C call."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.bitcast(data, context.get_value_type(types.voidptr))
    return types.voidptr(array), codegen


@intrinsic
def _prefetch(typingctx, array, index):
    """Ask the CPU to start loading the cache line of array[index] (llvm.prefetch: read, keep in all levels)."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        byte = ir.IntType(8).as_pointer()
        int32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic("llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(),
                                                                                    [byte, int32, int32, int32]))
        builder.call(fn, [builder.bitcast(builder.gep(data, [args[1]]), byte), int32(0), int32(3), int32(1)])
        return context.get_dummy_value()
    return types.void(array, types.int64), codegen


@intrinsic
def _load_acquire(typingctx, flags, index):
    """flags[index] read atomically (acquire): what the other thread wrote before its release is seen."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.load_atomic(builder.gep(data, [args[1]]), "acquire", 8)
    return types.int64(flags, types.int64), codegen


@intrinsic
def _store_release(typingctx, flags, index, value):
    """flags[index] = value atomically (release): everything written before it is seen by an acquire."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        builder.store_atomic(args[2], builder.gep(data, [args[1]]), "release", 8)
        return context.get_dummy_value()
    return types.void(flags, types.int64, types.int64), codegen


_sched_yield = types.ExternalFunction("sched_yield", types.int32())
SPINS = 2000  # a waiting thread gives up its core after this many reads of the flag (the other may need it)
# The epoch gathers on its own from the moment one wait for the helper has given up its core this many times
# (~1-2 ms: the helper was descheduled, another process holds the second core; measured: a helper that must
# share a core makes textbook's epoch 25% slower, where a free one makes it 25% faster).  A helper on a free
# core keeps about one batch ahead: the epoch's waits for it are a few microseconds.
YIELDS = 200


@_jit
def _wait(flags, slot, value, yields):
    """Spin until flags[slot] == value, giving up the core every SPINS reads, at most ``yields`` times: the
    times left, or -1 when they ran out or flags[STOP] came first."""
    spins = 0
    while _load_acquire(flags, slot) != value:
        if _load_acquire(flags, STOP) != 0:
            return -1
        spins += 1
        if spins == SPINS:
            if yields == 0:
                return -1
            _sched_yield()
            spins = 0
            yields -= 1
    return yields


@_jit
def _stop_helper(flags):
    """Tell gather_ahead to stop and wait until it has (it finishes the batch it is copying first)."""
    _store_release(flags, STOP, 1)
    while _load_acquire(flags, DONE) == 0:
        _sched_yield()


@_jit
def gather_ahead(X, order, batch, n0, x, flags):
    """On a second thread: copy each batch's input rows into x's slot b % 2 once the epoch has freed it.

    flags[s] = 0: slot s is free (the epoch is done with it), 1: it holds the next batch; flags[STOP] ends this
    early (the epoch gathers on its own from then, or it raised), flags[DONE] says this thread has ended.  The
    rows are the same the epoch's own gather copies: the result is the same bits.
    """
    for start in range(0, order.shape[0], batch):
        slot = (start // batch) % 2
        if _wait(flags, slot, 0, 1 << 62) < 0:  # waits as long as the epoch works on the other slot
            break
        _gather(X, order, start, min(batch, order.shape[0] - start), n0, x, slot * batch * n0)
        _store_release(flags, slot, 1)
    _store_release(flags, DONE, 1)


@_jit
def _gather(X, order, start, m, n0, x, xo):
    """Rows order[start .. start + m) of X (flat, n0 a row) into x[xo:], one after another: the batch's inputs."""
    for i in range(m):
        row = order[start + i] * n0
        x[xo + i * n0:xo + (i + 1) * n0] = X[row:row + n0]


@_jit
def _gemm(trans_a, trans_b, m, n, k, alpha, a, ao, lda, b, bo, ldb, beta, c, co, ldc):
    """C (m, n) at c[co:] ← alpha op(A) op(B) + beta C, row-major; A at a[ao:], B at b[bo:]."""
    if c.itemsize == 4:
        _sgemm(ROW_MAJOR, trans_a, trans_b, m, n, k, alpha, _address(a[ao:]), lda, _address(b[bo:]), ldb, beta,
               _address(c[co:]), ldc)
    else:
        _dgemm(ROW_MAJOR, trans_a, trans_b, m, n, k, alpha, _address(a[ao:]), lda, _address(b[bo:]), ldb, beta,
               _address(c[co:]), ldc)


@_jit
def _bias_and_activate(code, z, zo, m, n, params, bo, c, apply):
    """z[zo + i n + j] += b_j for the (m, n) block at zo, then σ in place when ``apply``."""
    for i in range(m):
        row = z[zo + i * n:zo + (i + 1) * n]
        b = params[bo:bo + n]
        for j in range(n):
            row[j] += b[j]
    if apply:
        _activate(code, z, zo, m * n, c)


@_jit
def _update(params, velocity, wo, bo, n_in, n_out, a, ao, d, do, m, momentum, decay, c, colsum):
    """BP3/BP4 and the update of one layer: W (at wo) and b (at bo) take the step Σ_i δ_i a_iᵀ.

    plain: w ← (1 - ηλ/n) w + step, the GEMM alone; momentum: v ← μ v + step (the GEMM), then
    v ← v - (ηλ/n) w and w ← w + v in one pass; b without λ.  BP3's column sums run row by row
    into ``colsum`` (contiguous, so they vectorise; each sum still adds its rows in order).
    """
    one, mu, dec = c[ONE], c[MU], c[DECAY]
    if momentum:
        _gemm(TRANS, NO_TRANS, n_out, n_in, m, one, d, do, n_out, a, ao, n_in, mu, velocity, wo, n_in)
        size = n_out * n_in
        w, v = params[wo:wo + size], velocity[wo:wo + size]
        if decay:
            for k in range(size):
                v[k] -= dec * w[k]
                w[k] += v[k]
        else:
            for k in range(size):
                w[k] += v[k]
    else:
        _gemm(TRANS, NO_TRANS, n_out, n_in, m, one, d, do, n_out, a, ao, n_in, c[KEEP] if decay else one, params,
              wo, n_in)
    g = colsum[:n_out]  # BP3
    g[:] = d[do:do + n_out]
    for i in range(1, m):
        row = d[do + i * n_out:do + (i + 1) * n_out]
        for j in range(n_out):
            g[j] += row[j]
    b = params[bo:bo + n_out]
    if momentum:
        vb = velocity[bo:bo + n_out]
        for j in range(n_out):
            vb[j] = vb[j] * mu + g[j]
            b[j] += vb[j]
    else:
        for j in range(n_out):
            b[j] += g[j]


@_jit
def epoch(X, Y, order, batch, params, velocity, sizes, codes, c, x, acts, deltas, zout, colsum, ahead, flags):
    """Train one epoch over ``order`` in batches of ``batch``; returns the summed cost (float64).

    X and Y flat row-major; params and velocity (momentum only) the flat buffers, updated in place;
    codes = (hidden, output, cost, momentum?, decay?); x holds the gathered inputs (two slots of a
    batch), acts and deltas A^l and δ^l of layers 1..L, zout z^L, colsum a column sum of δ^l.
    ``ahead``: ``gather_ahead`` fills x's slots on another thread (``flags``: its handshake);
    else this loop gathers each batch itself into slot 0.
    """
    hidden, output, cost, momentum, decay = codes[0], codes[1], codes[2], codes[3], codes[4]
    depth = sizes.shape[0] - 1
    w_off, b_off, a_off, _ = offsets(sizes, batch)
    n0, nL = sizes[0], sizes[depth]
    line = 64 // X.itemsize  # elements in a cache line
    total = 0.0
    n_order = order.shape[0]
    for start in range(0, n_order, batch):
        m = min(batch, n_order - start)
        step = c[STEP] if m == batch else c[STEP_LAST]
        slot = (start // batch) % 2 if ahead else 0
        if ahead and _wait(flags, slot, 1, YIELDS) < 0:  # the helper failed or lost its core: gather here from now
            _stop_helper(flags)
            ahead, slot = False, 0
        xo = slot * batch * n0  # this batch's inputs at x[xo:]
        if not ahead:
            _gather(X, order, start, m, n0, x, 0)
            for i in range(start + batch, min(start + 2 * batch, n_order)):  # the next batch's rows, on their way
                row = order[i] * n0
                for k in range(0, n0, line):
                    _prefetch(X, row + k)
        for l in range(1, depth + 1):  # forward
            n_in, n_out = sizes[l - 1], sizes[l]
            a, ao = (x, xo) if l == 1 else (acts, a_off[l - 1])
            z, zo = (zout, 0) if l == depth else (acts, a_off[l])
            _gemm(NO_TRANS, TRANS, m, n_out, n_in, c[ONE], a, ao, n_in, params, w_off[l], n_in, c[ZERO], z, zo, n_out)
            _bias_and_activate(hidden, z, zo, m, n_out, params, b_off[l], c, l < depth)
        for i in range(m):  # BP1 and the cost, example by example
            total += _output(output, cost, zout, i * nL, acts, a_off[depth] + i * nL,
                             Y, order[start + i] * nL, deltas, a_off[depth] + i * nL, nL, step, c)
        for l in range(depth, 0, -1):  # backward: BP2 with the old W^l, then W^l's update
            n_in, n_out = sizes[l - 1], sizes[l]
            a, ao = (x, xo) if l == 1 else (acts, a_off[l - 1])
            if l > 1:
                _gemm(NO_TRANS, NO_TRANS, m, n_in, n_out, c[ONE], deltas, a_off[l], n_out, params, w_off[l], n_in,
                      c[ZERO], deltas, a_off[l - 1], n_in)
                _derivative(hidden, deltas, a_off[l - 1], acts, a_off[l - 1], m * n_in, c)
            _update(params, velocity, w_off[l], b_off[l], n_in, n_out, a, ao, deltas, a_off[l], m, momentum, decay, c,
                    colsum)
        if ahead:
            _store_release(flags, slot, 0)  # the slot is free for the batch after next
    return total
