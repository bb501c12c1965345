"""Fused elementwise kernels for the generic engine on cupy: fewer launches per step on the networks
that the fused CUDA engine cannot hold.

Each elementwise chain of a step becomes one ElementwiseKernel (made through ``xp``, so cupy is
not imported here); the matmuls stay cuBLAS calls:

    forward   z ← z + b;  a ← σ(z)                               was 2-5 launches per layer
    BP1/BP2   δ ← δ ⊙ σ'(a)                                      was 1-3 (σ' from a, as activations.py)
    update    w ← w·keep + s                        (plain, L2)   was 2
              v ← μ v + s - decay·w;  w ← w + v     (momentum)    was 4-6 for weights and biases

``backprop`` and ``sgd_step`` take the steps of ``Network._backprop`` and ``generic.sgd_step`` in
the same order with the same float roundings (barring the compiler's fused multiply-adds); softmax
and the costs' values stay the generic array code.  The numpy path never uses this module.  The
kernel bodies are compiled with NVRTC and run through a g++ build against the numpy path in CI
(tests/test_cuda_elementwise.py); they have not run on a GPU yet.
"""

FORWARD = {  # out: z (read and written), a; in: b, the bias column broadcast over the batch
    "sigmoid": "z = z + b; a = (T)0.5 * tanh((T)0.5 * z) + (T)0.5;",
    "tanh": "z = z + b; a = tanh(z);",
    "relu": "z = z + b; a = z < (T)0 ? (T)0 : z;",
    "identity": "z = z + b; a = z;",
}
SLOPE = {  # δ ⊙ σ'(z), σ' written with a = σ(z); the identity's is no operation
    "sigmoid": "delta = delta * (((T)1 - a) * a);",
    "tanh": "delta = delta * ((T)1 - a * a);",
    "relu": "delta = delta * (a > (T)0 ? (T)1 : (T)0);",
}
UPDATE = {  # name: (inputs, outputs, body)
    "decay": ("T s, T keep", "T w", "w = w * keep; w = w + s;"),
    "momentum": ("T s, T mu", "T w, T v", "v = v * mu; v = v + s; w = w + v;"),
    "momentum_decay": ("T s, T mu, T decay", "T w, T v", "v = v * mu; v = v + s; v = v - w * decay; w = w + v;"),
}


def specs():
    """Every kernel as (name, inputs, outputs, body): what ``Kernels`` makes and the tests compile."""
    out = [(f"fastnn_forward_{k}", "T b", "T z, T a", body) for k, body in FORWARD.items()]
    out += [(f"fastnn_slope_{k}", "T a", "T delta", body) for k, body in SLOPE.items()]
    out += [(f"fastnn_sgd_{k}", *parts) for k, parts in UPDATE.items()]
    return out


class Kernels:
    """The kernels of ``specs()``, each made by ``make(inputs, outputs, body, name)``
    (``xp.ElementwiseKernel`` on cupy; the tests pass a CPU build of the same bodies)."""

    def __init__(self, make):
        self.by_name = {name: make(i, o, body, name) for name, i, o, body in specs()}

    def forward(self, act):
        return self.by_name.get(f"fastnn_forward_{act}")

    def slope(self, act):
        return self.by_name.get(f"fastnn_slope_{act}")


_cache = {}


def for_backend(backend):
    """The kernels on a cupy backend (compiled by cupy on first call of each), None on numpy."""
    if not backend.is_cuda:
        return None
    if not hasattr(backend.xp, "ElementwiseKernel"):  # cupy has it; the CPU test double of cupy does not
        return None
    key = (backend.device, id(backend.xp))  # the array module too: a test may load a fresh one
    if key not in _cache:
        _cache[key] = Kernels(backend.xp.ElementwiseKernel)
    return _cache[key]


class _Slope:
    """An activation whose backward is the fused δ ⊙ σ'(a) kernel (what costs.output_error calls)."""

    def __init__(self, kernel):
        self.kernel = kernel

    def backward(self, xp, grad, z, a, tmp):
        self.kernel(a, grad)
        return grad


def _backward(kernels, act):
    kernel = kernels.slope(act.name)
    if kernel is not None:
        return _Slope(kernel)
    return act  # identity (a no-op) and softmax: the generic code


def backprop(net, kernels, ws, scale):
    """``Network._backprop`` with its elementwise chains fused: fill net.grads with ``scale`` times the
    summed gradients of the batch in ``ws``; return its summed cost (a device scalar)."""
    xp = net.xp
    x = ws.x.T
    a_prev = x
    for w, b, act, z, a in zip(net._w, net._b, net.activations, ws.z, ws.a):
        xp.matmul(w, a_prev, out=z)  # Z^l = W^l A^{l-1}
        forward = kernels.forward(act.name)
        if forward is not None:
            forward(b, z, a)  # Z^l += b^l; A^l = σ(Z^l)
        else:  # softmax
            z += b
            act.forward(xp, z, out=a)
        a_prev = a
    last = net.activations[-1]
    cost = net.cost.output_error(xp, ws.z[-1], ws.a[-1], ws.y.T, _backward(kernels, last), out=ws.delta[-1],
                                 tmp=ws.z[-1])  # BP1
    if scale != 1.0:
        ws.delta[-1] *= scale
    for l in range(len(net._w) - 1, -1, -1):
        delta = ws.delta[l]
        a_prev = ws.a[l - 1] if l > 0 else x
        xp.matmul(delta, a_prev.T, out=net._nabla_w[l])  # BP4
        xp.matmul(delta, ws.ones, out=net._nabla_b[l])  # BP3
        if l > 0:  # BP2
            xp.matmul(net._w[l].T, delta, out=ws.delta[l - 1])
            _backward(kernels, net.activations[l - 1]).backward(xp, ws.delta[l - 1], ws.z[l - 1], ws.a[l - 1],
                                                                 ws.z[l - 1])
    return cost


def sgd_step(net, kernels, velocity, n, lr, momentum, l2):
    """``generic.sgd_step`` in one or two kernels: the step -(η/m) g is in net.grads."""
    scalar = net.params.dtype.type  # typed scalars: no float64 promotion of float32 buffers
    decay = lr * l2 / n
    nw = net.n_weights
    params, step = net.params, net.grads
    if velocity is None:
        if decay:
            kernels.by_name["fastnn_sgd_decay"](step[:nw], scalar(1.0 - decay), params[:nw])
            params[nw:] += step[nw:]
        else:
            params += step
        return
    if decay:
        kernels.by_name["fastnn_sgd_momentum_decay"](step[:nw], scalar(momentum), scalar(decay), params[:nw],
                                                     velocity[:nw])
        kernels.by_name["fastnn_sgd_momentum"](step[nw:], scalar(momentum), params[nw:], velocity[nw:])
    else:
        kernels.by_name["fastnn_sgd_momentum"](step, scalar(momentum), params, velocity)
