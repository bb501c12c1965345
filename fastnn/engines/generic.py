"""The generic engine: the batch loop written against ``xp``, the same code on numpy and cupy.

It is the reference every fused engine is checked against (``fastnn.engines.verify``).
Per batch: gather the rows by index, BP1–BP4 (``Network._backprop``), then one SGD update.
On cupy the elementwise chains of a step run as fused kernels (``engines.cuda_elementwise``).
"""

from . import cuda_elementwise


def sgd_step(net, velocity, n, lr, momentum, l2):
    """Apply one update from the step -(η/m) g that backprop left in ``net.grads`` (training set of n)."""
    xp = net.xp
    step = net.grads
    weights = net.params[:net.n_weights]
    decay = lr * l2 / n
    if velocity is None:
        if decay:
            weights *= 1.0 - decay
        net.params += step
        return
    velocity *= momentum
    velocity += step
    if decay:
        sw = step[:net.n_weights]  # the step is spent: reuse it as scratch for the λ-term
        xp.multiply(weights, decay, out=sw)
        velocity[:net.n_weights] -= sw
    net.params += velocity


class GenericEngine:
    """Mini-batch SGD over whole-batch array operations (numpy or cupy); works for every network."""

    name = "generic"

    def __init__(self, net, comm=None, kernels="auto"):
        """``kernels``: "auto" (the fused elementwise kernels on cupy, none on numpy), None (the plain
        array code: the reference), or a ``cuda_elementwise.Kernels``."""
        self.net = net
        self.comm = comm  # a fastnn.distributed Communicator, or None
        self.kernels = cuda_elementwise.for_backend(net.backend) if kernels == "auto" else kernels
        self._costs = None

    def epoch(self, X, Y, order, batch_size, lr, momentum, l2, velocity, on_batch=None):
        """One pass over ``order`` (device int64 indices into X/Y); returns the summed cost (device scalar).

        ``velocity`` is the momentum buffer (None without momentum), updated in place like
        ``net.params``.  ``on_batch(m)`` is called after each batch of m examples (a progress bar).
        """
        net, comm, xp = self.net, self.comm, self.net.xp
        n_order = order.shape[0]
        n = X.shape[0]
        batches = -(-n_order // batch_size)
        if self._costs is None or self._costs.shape[0] < batches:
            self._costs = xp.zeros(batches, "float64")  # each batch's summed cost: storing is cheaper than +=
        costs = self._costs[:batches]
        for i, start in enumerate(range(0, n_order, batch_size)):
            idx = order[start:start + batch_size]
            m = idx.shape[0]  # the global batch: the update takes the mean over all of it
            if comm is not None:
                idx = idx[comm.share(m)]  # this rank's rows of it
            if idx.shape[0]:
                ws = net._workspace(idx.shape[0])
                net.backend.take_rows(X, idx, out=ws.x)
                net.backend.take_rows(Y, idx, out=ws.y)
                if self.kernels is None:  # grads ← (this rank's share of) the step -(η/m) g
                    costs[i] = net._backprop(ws, scale=-lr / m)
                else:
                    costs[i] = cuda_elementwise.backprop(net, self.kernels, ws, -lr / m)
            else:  # a short last batch left this rank no rows: it adds zero gradients and cost
                net.grads.fill(0)
                costs[i] = 0
            if comm is not None:
                comm.allreduce_sum(net.grads)  # one all-reduce of the flat buffer per step
            if self.kernels is None:
                sgd_step(net, velocity, n, lr, momentum, l2)
            else:
                cuda_elementwise.sgd_step(net, self.kernels, velocity, n, lr, momentum, l2)
            if on_batch is not None:
                on_batch(m)
        return costs.sum()
