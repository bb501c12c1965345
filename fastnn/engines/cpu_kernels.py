"""The compiled loops of the fused CPU engine (numba): one call trains a whole epoch.

Inside, a batch is held row-major, one row per example: A^l is (m, n_l) and δ^l is (m, n_l),
so every product is a dot or an axpy over contiguous rows of W^l (n_out, n_in):
    forward  Z[i, j] = b_j + W[j, :] · A[i, :]            _forward: 4 units × 2 examples at a time
    BP1      δ^L[i] = cost'(a^L[i], y[i]) ⊙ σ'(z^L[i])      _output: one example at a time, with its cost
    BP2      δ^{l-1}[i, :] = (Σ_j δ^l[i, j] W[j, :]) ⊙ σ'   _accumulate4: 4 examples at a time
    BP3/BP4  W[j, :] += Σ_i δ^l[i, j] A^{l-1}[i, :]          _update: 4 units at a time, the batch inside
δ^L is scaled by the step -η/m at once (as the generic engine does), so BP3/BP4 add the step itself,
straight into W (or the velocity): no gradient buffer.  BP2 reads W^l before W^l is updated.
Input rows are read from X through the shuffled indices (the gather costs no copy).  A block of
4 rows of W stays in L1 while the batch's rows pass over it.  Products over more than KC inputs
run in chunks of KC.  Activation, cost and update rule are integer codes, so each dtype compiles once.

fastmath is limited to FMA contraction and signed zeros (plus reassociation in ``_forward`` only, see
below): NaN and inf keep their IEEE meaning, so a diverging epoch still ends in a non-finite cost or weights.

Determinism: a seeded epoch gives the same bits whatever the buffers' addresses (issue 24).  LLVM
vectorises a loop that stores to one array and reads another behind a runtime overlap check (a
"diff check": are the two pointers closer than a vector's length?); when the check fails, the
scalar copy of the loop runs.  Small buffers sit close together on the heap, so which copy runs
depends on where numpy put them.  The two copies agree bit for bit only if they do the same
operations in the same order: true of elementwise loops (FMA contraction is the same in both),
false of a reduction reassociated into vector partial sums.  So reassociation is allowed only in
``_forward``, whose loops over the inputs store nothing: no overlap check, the vector code always
runs, and its partial sums are a fixed function of the loop's length.  Every other sum is kept in
source order.
"""
import numba
import numpy as np

SIGMOID, TANH, RELU, IDENTITY, SOFTMAX = range(5)
QUADRATIC, CROSS_ENTROPY, LOG_LIKELIHOOD = range(3)
# c: constants in the network's dtype: 0, ½, 1, the step -η/m of a full and of the last batch,
# μ, 1 - ηλ/n and ηλ/n.
ZERO, HALF, ONE, STEP, STEP_LAST, MU, KEEP, DECAY = range(8)
KC = 1024  # inputs per chunk (measured on 784 inputs: chunks of 256 made textbook and mid 20-50% slower)

# error_model="numpy": a float division by zero gives inf or NaN, as IEEE says, where Python's model
# raises; its check on every divisor kept LLVM from vectorising tanh's p / q (scalar: 22 us for 8192
# elements, vectorised: 3.7 us, the same bits).  No loop here divides integers.
_jit = numba.njit(fastmath={"contract", "nsz"}, cache=True, nogil=True, error_model="numpy")
# Reassociated sums (vector partial sums): only for loops that store nothing (see the module docstring).
_jit_sums = numba.njit(fastmath={"reassoc", "contract", "nsz"}, cache=True, nogil=True, error_model="numpy")


@_jit
def offsets(sizes, batch):
    """Where a network's layers live: W^l at params[w_off[l]:] and b^l at params[b_off[l]:] (the biases after every
    W), A^l and δ^l at acts/deltas[a_off[l]:] ((batch, n_l) row-major, l = 1..L-1); and the parameters' count."""
    depth = sizes.shape[0] - 1
    w_off = np.zeros(depth + 1, np.int64)
    b_off = np.zeros(depth + 1, np.int64)
    a_off = np.zeros(depth + 1, np.int64)
    at = 0
    for l in range(1, depth + 1):
        w_off[l] = at
        at += sizes[l] * sizes[l - 1]
        if l < depth:
            a_off[l + 1] = a_off[l] + batch * sizes[l]
    for l in range(1, depth + 1):
        b_off[l] = at
        at += sizes[l]
    return w_off, b_off, a_off, at


@_jit_sums
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
def _accumulate4(t, to, ts, n, coef, co, cs, ct, src, rows, m):
    """_accumulate into the 4 target rows t[to + r ts : +n], r < 4, with coefficients coef[co + i cs + r ct].

    Each source element loaded serves the 4 targets: 4 FMAs a load instead of 1.
    """
    t0, t1, t2, t3 = t[to:to + n], t[to + ts:to + ts + n], t[to + 2 * ts:to + 2 * ts + n], \
        t[to + 3 * ts:to + 3 * ts + n]
    i = 0
    while i + 4 <= m:
        x0, x1 = src[rows[i]:rows[i] + n], src[rows[i + 1]:rows[i + 1] + n]
        x2, x3 = src[rows[i + 2]:rows[i + 2] + n], src[rows[i + 3]:rows[i + 3] + n]
        e = co + i * cs
        a00, a01, a02, a03 = coef[e], coef[e + cs], coef[e + 2 * cs], coef[e + 3 * cs]
        e += ct
        a10, a11, a12, a13 = coef[e], coef[e + cs], coef[e + 2 * cs], coef[e + 3 * cs]
        e += ct
        a20, a21, a22, a23 = coef[e], coef[e + cs], coef[e + 2 * cs], coef[e + 3 * cs]
        e += ct
        a30, a31, a32, a33 = coef[e], coef[e + cs], coef[e + 2 * cs], coef[e + 3 * cs]
        for k in range(n):
            y0, y1, y2, y3 = x0[k], x1[k], x2[k], x3[k]
            t0[k] += a00 * y0 + a01 * y1 + a02 * y2 + a03 * y3
            t1[k] += a10 * y0 + a11 * y1 + a12 * y2 + a13 * y3
            t2[k] += a20 * y0 + a21 * y1 + a22 * y2 + a23 * y3
            t3[k] += a30 * y0 + a31 * y1 + a32 * y2 + a33 * y3
        i += 4
    if i + 2 <= m:
        x0, x1 = src[rows[i]:rows[i] + n], src[rows[i + 1]:rows[i + 1] + n]
        e = co + i * cs
        a00, a01, a10, a11 = coef[e], coef[e + cs], coef[e + ct], coef[e + ct + cs]
        a20, a21, a30, a31 = coef[e + 2 * ct], coef[e + 2 * ct + cs], coef[e + 3 * ct], coef[e + 3 * ct + cs]
        for k in range(n):
            y0, y1 = x0[k], x1[k]
            t0[k] += a00 * y0 + a01 * y1
            t1[k] += a10 * y0 + a11 * y1
            t2[k] += a20 * y0 + a21 * y1
            t3[k] += a30 * y0 + a31 * y1
        i += 2
    if i < m:
        x0 = src[rows[i]:rows[i] + n]
        e = co + i * cs
        a0, a1, a2, a3 = coef[e], coef[e + ct], coef[e + 2 * ct], coef[e + 3 * ct]
        for k in range(n):
            y0 = x0[k]
            t0[k] += a0 * y0
            t1[k] += a1 * y0
            t2[k] += a2 * y0
            t3[k] += a3 * y0


# tanh in float32 as a rational function (Eigen's generic_fast_tanh_float): vectorised, ~6x faster
# than the scalar tanhf per element, within 5 ulp of tanh (numpy's own float32 tanh: 1.4 ulp).
_TANH_CLAMP = np.float32(7.90531110763549805)
_TANH_P = tuple(np.float32(a) for a in (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                                        5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                                        4.89352455891786e-03))
_TANH_Q = tuple(np.float32(b) for b in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                                        4.89352518554385e-03))


@_jit
def _tanh(v, scale, shift):
    """v ← tanh(v scale) scale + shift in place (sigmoid: scale = shift = ½; tanh: 1, 0)."""
    if v.itemsize != 4:
        for k in range(v.shape[0]):
            v[k] = np.tanh(v[k] * scale) * scale + shift
        return
    c, one = _TANH_CLAMP, np.float32(1.0)
    p13, p11, p9, p7, p5, p3, p1 = _TANH_P
    q6, q4, q2, q0 = _TANH_Q
    for k in range(v.shape[0]):
        z = v[k] * scale
        x = c if z > c else (-c if z < -c else z)  # noqa: FURB136 (NaN passes through; max() would not say)
        x2 = x * x
        p = x * (((((((x2 * p13 + p11) * x2 + p9) * x2 + p7) * x2 + p5) * x2 + p3) * x2) + p1)
        q = ((x2 * q6 + q4) * x2 + q2) * x2 + q0
        t = p / q
        if abs(z) < np.float32(0.0004):
            t = z
        elif z >= np.float32(9.0):  # tanh rounds to ±1 in float32 from 9.0 on
            t = one
        elif z <= np.float32(-9.0):
            t = -one
        v[k] = t * scale + shift


@_jit
def _activate(code, a, ao, n, c):
    """a[ao:ao+n] = σ(a[ao:ao+n]) in place, σ an elementwise activation (sigmoid via tanh)."""
    v = a[ao:ao + n]
    if code == SIGMOID:
        _tanh(v, c[HALF], c[HALF])
    elif code == TANH:
        _tanh(v, c[ONE], c[ZERO])
    elif code == RELU:
        zero = c[ZERO]
        for k in range(n):
            if v[k] < zero:  # noqa: PLR1730 (not max(): NaN stays NaN, as in numpy.maximum)
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
def _prepare(params, velocity, to, n, momentum, decay, c):
    """Before a step is added to the part of W at ``to``: w ← (1 - ηλ/n) w, or v ← μ v - (ηλ/n) w."""
    wv = params[to:to + n]
    if momentum:
        vv = velocity[to:to + n]
        mu, dec = c[MU], c[DECAY]
        if decay:
            for k in range(n):
                vv[k] = vv[k] * mu - dec * wv[k]
        else:
            for k in range(n):
                vv[k] *= mu
    elif decay:
        keep = c[KEEP]
        for k in range(n):
            wv[k] *= keep


@_jit
def _update(params, velocity, wo, bo, n_in, n_out, d, do, src, rows, m, momentum, decay, c):
    """BP3/BP4 and the update of one layer: W (at wo) and b (at bo) take the step Σ_i δ_i a_i^T.

    plain: w ← (1 - ηλ/n) w + step; momentum: v ← μ v - (ηλ/n) w + step, w ← w + v; b without λ.
    The step goes into W's rows (v's with momentum) four units at a time, over chunks of KC inputs.
    """
    target = velocity if momentum else params
    for k0 in range(0, n_in, KC):
        n = min(KC, n_in - k0)
        j = 0
        while j < n_out:
            to = wo + j * n_in + k0
            block = 4 if j + 4 <= n_out else 1
            for r in range(block):
                _prepare(params, velocity, to + r * n_in, n, momentum, decay, c)
            if block == 4:
                _accumulate4(target, to, n_in, n, d, do + j, n_out, 1, src, rows, m)
            else:
                _accumulate(target, to, n, d, do + j, n_out, src, rows, m)
            if momentum:
                for r in range(block):
                    t = to + r * n_in
                    wv, vv = params[t:t + n], velocity[t:t + n]
                    for k in range(n):
                        wv[k] += vv[k]
            j += block
        for i in range(m):  # the source rows move on to the next chunk
            rows[i] += n
    mu = c[MU]
    for j in range(n_out):  # BP3
        g = c[ZERO]
        for i in range(m):
            g += d[do + i * n_out + j]
        if momentum:
            velocity[bo + j] = velocity[bo + j] * mu + g
            params[bo + j] += velocity[bo + j]
        else:
            params[bo + j] += g


@_jit
def epoch(X, Y, order, batch, params, velocity, sizes, codes, c, acts, deltas, zout, rows, wrows):
    """Train one epoch over ``order`` in batches of ``batch``; returns the summed cost (float64).

    X (n, n_0) and Y (n, n_L) are flat row-major; params and velocity (momentum only) the flat
    buffers, updated in place; codes = (hidden, output, cost, momentum?, decay?); acts and deltas
    hold A^l and δ^l of layers 1..L for a batch, zout z^L; rows and wrows are scratch offsets.
    """
    hidden, output, cost, momentum, decay = codes[0], codes[1], codes[2], codes[3], codes[4]
    depth = sizes.shape[0] - 1
    w_off, b_off, a_off, _ = offsets(sizes, batch)
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
                t = a_off[l - 1]
                for k in range(t, t + m * n_in):
                    deltas[k] = c[ZERO]
                i = 0
                while i < m:  # four examples at a time share each row of W loaded
                    t = a_off[l - 1] + i * n_in
                    if i + 4 <= m:
                        _accumulate4(deltas, t, n_in, n_in, deltas, a_off[l] + i * n_out, 1, n_out,
                                     params, wrows, n_out)
                        i += 4
                    else:
                        _accumulate(deltas, t, n_in, deltas, a_off[l] + i * n_out, 1, params, wrows, n_out)
                        i += 1
                _derivative(hidden, deltas, a_off[l - 1], acts, a_off[l - 1], m * n_in, c)
            src = X if l == 1 else acts
            for i in range(m):
                rows[i] = order[start + i] * n0 if l == 1 else a_off[l - 1] + i * n_in
            _update(params, velocity, w_off[l], b_off[l], n_in, n_out, deltas, a_off[l], src, rows, m,
                    momentum, decay, c)
    return total
