"""The compiled loops of the BLAS CPU engine (numba): one call trains a whole epoch.

The big products are BLAS's GEMMs, called from compiled code (numba's ``np.dot`` with an output
array: SciPy's BLAS); everything between them is a compiled loop over the GEMM's output.
A batch is held row-major, one row per example: A^l and δ^l are (m, n_l), W^l is (n_out, n_in).
    gather   x[i, :] = X[order[i], :]                          a copy loop (BLAS needs contiguous rows)
    forward  Z^l = A^{l-1} W^lᵀ (GEMM), then z + b and σ      in place, one pass
    BP1      δ^L[i] = cost'(a^L[i], y[i]) ⊙ σ'(z^L[i]) × step  ``cpu_kernels._output``, with the cost
    BP2      δ^{l-1} = δ^l W^l (GEMM, the old W^l), then ⊙ σ'  in place, one pass
    BP4      G = δ^lᵀ A^{l-1} (GEMM), then the update of W     one pass over W (and v)
    BP3      b += Σ_i δ^l[i]                                   column sums, with b's update
δ^L carries the step -η/m, so G is the step itself.  The activations, BP1 and the update rule's
prologue are ``cpu_kernels``' loops, so both CPU engines compute them alike.  Deterministic for a
given BLAS thread count: OpenBLAS splits a GEMM by rows and columns of its output, not by the sum.
"""
import numba
import numpy as np

from .cpu_kernels import DECAY, KEEP, MU, STEP, STEP_LAST, ZERO, _activate, _derivative, _output

# No reassociation: these loops are elementwise or column sums kept in source order (see
# cpu_kernels' note on determinism).
_jit = numba.njit(fastmath={"contract", "nsz"}, cache=True, nogil=True)


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
def _update(params, velocity, wo, bo, n_in, n_out, g, d, do, m, momentum, decay, c):
    """W (at wo) and b (at bo) take the step: G = Σ_i δ_i a_iᵀ in ``g``, Σ_i δ_i for b.

    plain: w ← (1 - ηλ/n) w + G; momentum: v ← μ v - (ηλ/n) w + G, w ← w + v; b without λ.
    """
    size = n_out * n_in
    w, gv = params[wo:wo + size], g[:size]
    keep, mu, dec = c[KEEP], c[MU], c[DECAY]
    if momentum:
        v = velocity[wo:wo + size]
        if decay:
            for k in range(size):
                v[k] = v[k] * mu - dec * w[k] + gv[k]
                w[k] += v[k]
        else:
            for k in range(size):
                v[k] = v[k] * mu + gv[k]
                w[k] += v[k]
    elif decay:
        for k in range(size):
            w[k] = w[k] * keep + gv[k]
    else:
        for k in range(size):
            w[k] += gv[k]
    for j in range(n_out):  # BP3
        s = c[ZERO]
        for i in range(m):
            s += d[do + i * n_out + j]
        if momentum:
            velocity[bo + j] = velocity[bo + j] * mu + s
            params[bo + j] += velocity[bo + j]
        else:
            params[bo + j] += s


@_jit
def epoch(X, Y, order, batch, params, velocity, sizes, codes, c, x, acts, deltas, zout, g):
    """Train one epoch over ``order`` in batches of ``batch``; returns the summed cost (float64).

    X (n, n_0) row-major, Y flat; params and velocity (momentum only) the flat buffers, updated in
    place; codes = (hidden, output, cost, momentum?, decay?); x holds the gathered inputs, acts and
    deltas A^l and δ^l of layers 1..L, zout z^L, g the largest layer's step G.
    """
    hidden, output, cost, momentum, decay = codes[0], codes[1], codes[2], codes[3], codes[4]
    depth = sizes.shape[0] - 1
    w_off = np.zeros(depth + 1, np.int64)  # W^l at params[w_off[l]:], b^l at params[b_off[l]:]
    b_off = np.zeros(depth + 1, np.int64)
    a_off = np.zeros(depth + 1, np.int64)  # A^l, δ^l at acts/deltas[a_off[l]:], (batch, n_l) row-major
    at = 0
    for l in range(1, depth + 1):
        w_off[l] = at
        at += sizes[l] * sizes[l - 1]
        if l < depth:
            a_off[l + 1] = a_off[l] + batch * sizes[l]
    for l in range(1, depth + 1):
        b_off[l] = at
        at += sizes[l]
    n0, nL = sizes[0], sizes[depth]
    total = 0.0
    n_order = order.shape[0]
    for start in range(0, n_order, batch):
        m = min(batch, n_order - start)
        step = c[STEP] if m == batch else c[STEP_LAST]
        for i in range(m):  # the gather
            x[i * n0:(i + 1) * n0] = X[order[start + i]]
        for l in range(1, depth + 1):  # forward
            n_in, n_out = sizes[l - 1], sizes[l]
            w = params[w_off[l]:w_off[l] + n_out * n_in].reshape((n_out, n_in))
            if l == 1:
                a = x[:m * n0].reshape((m, n0))
            else:
                a = acts[a_off[l - 1]:a_off[l - 1] + m * n_in].reshape((m, n_in))
            if l == depth:
                np.dot(a, w.T, zout[:m * n_out].reshape((m, n_out)))
                _bias_and_activate(hidden, zout, 0, m, n_out, params, b_off[l], c, False)
            else:
                np.dot(a, w.T, acts[a_off[l]:a_off[l] + m * n_out].reshape((m, n_out)))
                _bias_and_activate(hidden, acts, a_off[l], m, n_out, params, b_off[l], c, True)
        for i in range(m):  # BP1 and the cost, example by example
            total += _output(output, cost, zout, i * nL, acts, a_off[depth] + i * nL,
                             Y, order[start + i] * nL, deltas, a_off[depth] + i * nL, nL, step, c)
        for l in range(depth, 0, -1):  # backward: BP2 with the old W^l, then W^l's update
            n_in, n_out = sizes[l - 1], sizes[l]
            w = params[w_off[l]:w_off[l] + n_out * n_in].reshape((n_out, n_in))
            d = deltas[a_off[l]:a_off[l] + m * n_out].reshape((m, n_out))
            if l == 1:
                a = x[:m * n0].reshape((m, n0))
            else:
                a = acts[a_off[l - 1]:a_off[l - 1] + m * n_in].reshape((m, n_in))
                np.dot(d, w, deltas[a_off[l - 1]:a_off[l - 1] + m * n_in].reshape((m, n_in)))
                _derivative(hidden, deltas, a_off[l - 1], acts, a_off[l - 1], m * n_in, c)
            np.dot(d.T, a, g[:n_out * n_in].reshape((n_out, n_in)))
            _update(params, velocity, w_off[l], b_off[l], n_in, n_out, g, deltas, a_off[l], m, momentum, decay, c)
    return total
