"""The compiled loops of the fused CPU engine (numba): one call trains a whole epoch.

Inside, a batch is held row-major, one row per example: A^l is (m, n_l) and δ^l is (m, n_l),
so every product is a dot or an axpy over contiguous rows of W^l (n_out, n_in):
    forward  Z[i, j] = b_j + W[j, :] · A[i, :]            _forward: 4 units × 2 examples at a time
    BP1      δ^L[i] = cost'(a^L[i], y[i]) ⊙ σ'(z^L[i])      _output: one example at a time, with its cost
    BP2      δ^{l-1}[i, :] = (Σ_j δ^l[i, j] W[j, :]) ⊙ σ'   _accumulate over the units j
    BP3/BP4  W[j, :] += Σ_i δ^l[i, j] A^{l-1}[i, :]          _accumulate over the examples i, then the update
δ^L is scaled by the step -η/m at once (as the generic engine does), so BP3/BP4 add the step itself.
Input rows are read from X through the shuffled indices (the gather costs no copy).  Products run
over chunks of KC inputs, so a chunk of the batch's rows stays in L1 while every unit's weights
pass over it.  Activation, cost and update rule are integer codes, so each dtype compiles once.

fastmath is limited to reassociation (vectorised sums), FMA contraction and signed zeros: NaN and
inf keep their IEEE meaning, so a diverging epoch still ends in a non-finite cost or weights.
"""

import numba
import numpy as np

SIGMOID, TANH, RELU, IDENTITY, SOFTMAX = range(5)
QUADRATIC, CROSS_ENTROPY, LOG_LIKELIHOOD = range(3)
# c: constants in the network's dtype: 0, ½, 1, the step -η/m of a full and of the last batch,
# μ, 1 - ηλ/n and ηλ/n.
ZERO, HALF, ONE, STEP, STEP_LAST, MU, KEEP, DECAY = range(8)
KC = 1024  # inputs per chunk: a chunk of 64 rows of float32 is 32 KiB, within L1

_jit = numba.njit(fastmath={"reassoc", "contract", "nsz"}, cache=True, nogil=True)


@_jit
def _forward(w, wo, n_in, src, rows, k0, k1, dst, do, n_out, m, zero):
    """dst[do + i n_out + j] += Σ_{k0≤k<k1} W[j, k] src[rows[i] + k]  (W at w[wo:], row-major).

    Rows are taken as slices (views): numba then knows each index is in range and vectorises;
    indexing w[r + k] directly costs a wraparound check per element and runs ~25× slower.
    """
    n = k1 - k0
    j = 0
    while j + 4 <= n_out:
        r = wo + j * n_in + k0
        w0, w1, w2, w3 = w[r:r + n], w[r + n_in:r + n_in + n], w[r + 2 * n_in:r + 2 * n_in + n], \
            w[r + 3 * n_in:r + 3 * n_in + n]
        i = 0
        while i + 2 <= m:
            xa, xb = src[rows[i] + k0:rows[i] + k1], src[rows[i + 1] + k0:rows[i + 1] + k1]
            s00 = s10 = s20 = s30 = s01 = s11 = s21 = s31 = zero
            for k in range(n):
                x0, x1 = xa[k], xb[k]
                s00 += w0[k] * x0
                s10 += w1[k] * x0
                s20 += w2[k] * x0
                s30 += w3[k] * x0
                s01 += w0[k] * x1
                s11 += w1[k] * x1
                s21 += w2[k] * x1
                s31 += w3[k] * x1
            t, u = do + i * n_out + j, do + (i + 1) * n_out + j
            dst[t] += s00
            dst[t + 1] += s10
            dst[t + 2] += s20
            dst[t + 3] += s30
            dst[u] += s01
            dst[u + 1] += s11
            dst[u + 2] += s21
            dst[u + 3] += s31
            i += 2
        if i < m:
            xa = src[rows[i] + k0:rows[i] + k1]
            s0 = s1 = s2 = s3 = zero
            for k in range(n):
                s0 += w0[k] * xa[k]
                s1 += w1[k] * xa[k]
                s2 += w2[k] * xa[k]
                s3 += w3[k] * xa[k]
            t = do + i * n_out + j
            dst[t] += s0
            dst[t + 1] += s1
            dst[t + 2] += s2
            dst[t + 3] += s3
        j += 4
    while j < n_out:
        r = wo + j * n_in + k0
        w0 = w[r:r + n]
        for i in range(m):
            xa = src[rows[i] + k0:rows[i] + k1]
            s = zero
            for k in range(n):
                s += w0[k] * xa[k]
            dst[do + i * n_out + j] += s
        j += 1


@_jit
def _accumulate(t, to, n, coef, co, stride, src, rows, m):
    """t[to:to+n] += Σ_{i<m} coef[co + i stride] src[rows[i] : rows[i] + n]."""
    tv = t[to:to + n]
    i = 0
    while i + 4 <= m:
        c0, c1, c2, c3 = coef[co + i * stride], coef[co + (i + 1) * stride], \
            coef[co + (i + 2) * stride], coef[co + (i + 3) * stride]
        x0, x1 = src[rows[i]:rows[i] + n], src[rows[i + 1]:rows[i + 1] + n]
        x2, x3 = src[rows[i + 2]:rows[i + 2] + n], src[rows[i + 3]:rows[i + 3] + n]
        for k in range(n):
            tv[k] += c0 * x0[k] + c1 * x1[k] + c2 * x2[k] + c3 * x3[k]
        i += 4
    if i + 2 <= m:
        c0, c1 = coef[co + i * stride], coef[co + (i + 1) * stride]
        x0, x1 = src[rows[i]:rows[i] + n], src[rows[i + 1]:rows[i + 1] + n]
        for k in range(n):
            tv[k] += c0 * x0[k] + c1 * x1[k]
        i += 2
    if i < m:
        c0, x0 = coef[co + i * stride], src[rows[i]:rows[i] + n]
        for k in range(n):
            tv[k] += c0 * x0[k]


@_jit
def _activate(code, a, ao, n, c):
    """a[ao:ao+n] = σ(a[ao:ao+n]) in place, σ an elementwise activation (sigmoid via tanh)."""
    v = a[ao:ao + n]
    if code == SIGMOID:
        half = c[HALF]
        for k in range(n):
            v[k] = np.tanh(v[k] * half) * half + half
    elif code == TANH:
        for k in range(n):
            v[k] = np.tanh(v[k])
    elif code == RELU:
        zero = c[ZERO]
        for k in range(n):
            if v[k] < zero:  # NaN stays NaN, as in numpy.maximum
                v[k] = zero


@_jit
def _derivative(code, g, go, a, ao, n, c):
    """g[go:go+n] *= σ'(z), written through a = σ(z) (relu: z > 0 exactly when a > 0)."""
    gv, av = g[go:go + n], a[ao:ao + n]
    one, zero = c[ONE], c[ZERO]
    if code == SIGMOID:
        for k in range(n):
            gv[k] *= (one - av[k]) * av[k]
    elif code == TANH:
        for k in range(n):
            gv[k] *= one - av[k] * av[k]
    elif code == RELU:
        for k in range(n):
            gv[k] *= one if av[k] > zero else zero


@_jit
def _output(code, cost, z, zo, a, ao, y, yo, d, do, n, step, c):
    """a^L, BP1's δ^L (times ``step``) and the cost (float64) of one example; z^L at z[zo:zo+n]."""
    zero = c[ZERO]
    if code == SOFTMAX:
        top = z[zo]
        for k in range(1, n):
            top = max(top, z[zo + k])
        total = zero
        for k in range(n):
            e = np.exp(z[zo + k] - top)
            a[ao + k] = e
            total += e
        for k in range(n):
            a[ao + k] /= total
    else:
        for k in range(n):
            a[ao + k] = z[zo + k]
        _activate(code, a, ao, n, c)
    for k in range(n):
        d[do + k] = a[ao + k] - y[yo + k]
    value = 0.0
    if cost == QUADRATIC:  # ½ ||a - y||², δ = (a - y) ⊙ σ'(z)
        for k in range(n):
            value += np.float64(d[do + k]) * np.float64(d[do + k])
        value *= 0.5
        if code == SOFTMAX:  # the Jacobian-vector product a ⊙ (g - Σ_k a_k g_k)
            dot = zero
            for k in range(n):
                dot += a[ao + k] * d[do + k]
            for k in range(n):
                d[do + k] = (d[do + k] - dot) * a[ao + k]
        else:
            _derivative(code, d, do, a, ao, n, c)
    elif cost == CROSS_ENTROPY:  # Σ softplus(z) - y z
        for k in range(n):
            x = z[zo + k]
            softplus = x + np.log1p(np.exp(-x)) if x > zero else np.log1p(np.exp(x))
            value += np.float64(softplus) - np.float64(y[yo + k]) * np.float64(x)
    else:  # log-likelihood: Σ y (logsumexp(z) - z)
        top = z[zo]
        for k in range(1, n):
            top = max(top, z[zo + k])
        total = zero
        for k in range(n):
            total += np.exp(z[zo + k] - top)
        lse = top + np.log(total)
        for k in range(n):
            value += np.float64(y[yo + k]) * (np.float64(lse) - np.float64(z[zo + k]))
    for k in range(n):
        d[do + k] *= step
    return value


@_jit
def _update(params, velocity, wo, bo, n_in, n_out, d, do, src, rows, m, momentum, decay, c):
    """BP3/BP4 and the update of one layer: W (at wo) and b (at bo) take the step Σ_i δ_i a_i^T.

    plain: w ← (1 - ηλ/n) w + step; momentum: v ← μ v - (ηλ/n) w + step, w ← w + v; b without λ.
    """
    mu, keep, dec = c[MU], c[KEEP], c[DECAY]
    for k0 in range(0, n_in, KC):
        k1 = min(k0 + KC, n_in)
        for j in range(n_out):
            to = wo + j * n_in + k0
            n = k1 - k0
            wv = params[to:to + n]
            if momentum:
                vv = velocity[to:to + n]
                for k in range(n):
                    vv[k] *= mu
                if decay:
                    for k in range(n):
                        vv[k] -= dec * wv[k]
                _accumulate(velocity, to, n, d, do + j, n_out, src, rows, m)
                for k in range(n):
                    wv[k] += vv[k]
            else:
                if decay:
                    for k in range(n):
                        wv[k] *= keep
                _accumulate(params, to, n, d, do + j, n_out, src, rows, m)
            if k0 == 0:  # BP3, once per unit
                g = c[ZERO]
                for i in range(m):
                    g += d[do + i * n_out + j]
                if momentum:
                    velocity[bo + j] = velocity[bo + j] * mu + g
                    params[bo + j] += velocity[bo + j]
                else:
                    params[bo + j] += g
        # the source rows shift with the chunk: _accumulate reads src[rows[i] + k] for k < n
        for i in range(m):
            rows[i] += min(KC, n_in - k0)


@_jit
def epoch(X, Y, order, batch, params, velocity, sizes, codes, c, acts, deltas, zout, rows, wrows):
    """Train one epoch over ``order`` in batches of ``batch``; returns the summed cost (float64).

    X (n, n_0) and Y (n, n_L) are flat row-major; params and velocity (momentum only) the flat
    buffers, updated in place; codes = (hidden, output, cost, momentum?, decay?); acts and deltas
    hold A^l and δ^l of layers 1..L for a batch, zout z^L; rows and wrows are scratch offsets.
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
        # forward: Z^l = W^l A^{l-1} + b^l, A^l = σ(Z^l)
        for l in range(1, depth + 1):
            n_in, n_out = sizes[l - 1], sizes[l]
            if l == depth:
                dst, do = zout, 0
            else:
                dst, do = acts, a_off[l]
            for i in range(m):
                for j in range(n_out):
                    dst[do + i * n_out + j] = params[b_off[l] + j]
            src = X if l == 1 else acts
            for i in range(m):
                rows[i] = order[start + i] * n0 if l == 1 else a_off[l - 1] + i * n_in
            for k0 in range(0, n_in, KC):
                _forward(params, w_off[l], n_in, src, rows, k0, min(k0 + KC, n_in), dst, do, n_out, m, c[ZERO])
            if l < depth:
                _activate(hidden, acts, a_off[l], m * n_out, c)
        # BP1 and the cost, example by example
        for i in range(m):
            total += _output(output, cost, zout, i * nL, acts, a_off[depth] + i * nL,
                             Y, order[start + i] * nL, deltas, a_off[depth] + i * nL, nL, step, c)
        # backward, from the top: BP2 into δ^{l-1} (with the old W^l), then W^l's update
        for l in range(depth, 0, -1):
            n_in, n_out = sizes[l - 1], sizes[l]
            if l > 1:
                for j in range(n_out):
                    wrows[j] = w_off[l] + j * n_in
                for i in range(m):
                    t = a_off[l - 1] + i * n_in
                    for k in range(n_in):
                        deltas[t + k] = c[ZERO]
                    _accumulate(deltas, t, n_in, deltas, a_off[l] + i * n_out, 1, params, wrows, n_out)
                    _derivative(hidden, deltas, t, acts, t, n_in, c)
            src = X if l == 1 else acts
            for i in range(m):
                rows[i] = order[start + i] * n0 if l == 1 else a_off[l - 1] + i * n_in
            _update(params, velocity, w_off[l], b_off[l], n_in, n_out, deltas, a_off[l], src, rows, m,
                    momentum, decay, c)
    return total
