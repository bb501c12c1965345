"""Mini-batch SGD: the training set goes to the device once, batches are gathered there.

Per batch of m examples (n in the training set), with g the summed gradient from backprop:
    plain      w ← (1 - η λ/n) w - (η/m) g           (the textbook's L2 rule; biases get no λ)
    momentum   v ← μ v - (η/m) g - (η λ/n) w,  w ← w + v
Nothing is read back to the host inside the batch loop: the cost is summed on the device and
read once per epoch, when it is also checked for divergence.

Distributed (see ``fastnn.distributed``): every rank takes the same shuffled order, backprops its
share of each global batch, and one all-reduce of ``net.grads`` sums the shares before the
update, which then uses the global m; the epoch's cost is summed across ranks once.
"""

import math
import time

from tqdm.auto import tqdm

from . import validate
from .distributed import training_communicator
from .errors import ConfigError, DivergenceError


class History:
    """What each epoch of ``fit`` measured: one dict per epoch in ``records``.

    Keys: epoch (1-based), loss (mean training cost over the epoch's batches, each measured
    before its update), seconds (training time of the epoch, device synchronised),
    examples_per_second, and val_loss / val_accuracy when validation data was given.
    """

    def __init__(self, records=None):
        self.records = list(records or [])

    def __len__(self):
        return len(self.records)

    def __repr__(self):
        return f"History({self.records!r})"

    def _column(self, key):
        return [r.get(key) for r in self.records]

    @property
    def loss(self):
        return self._column("loss")

    @property
    def val_loss(self):
        return self._column("val_loss")

    @property
    def val_accuracy(self):
        return self._column("val_accuracy")

    @property
    def seconds(self):
        return self._column("seconds")


def sgd_step(net, velocity, m, n, lr, momentum, l2):
    """Apply one update from the summed gradients in ``net.grads`` (batch of m, training set of n)."""
    xp = net.xp
    g = net.grads
    g *= lr / m
    weights = net.params[:net.n_weights]
    decay = lr * l2 / n
    if velocity is None:
        if decay:
            weights *= 1.0 - decay
        net.params -= g
        return
    velocity *= momentum
    velocity -= g
    if decay:
        gw = g[:net.n_weights]  # g is spent: reuse it as scratch for λ-term
        xp.multiply(weights, decay, out=gw)
        velocity[:net.n_weights] -= gw
    net.params += velocity


def _check_hyperparameters(epochs, batch_size, lr, momentum, l2):
    return (validate.integer("epochs", epochs, 0),
            validate.integer("batch_size", batch_size, 1),
            validate.real("lr", lr, 0.0, low_open=True),
            validate.real("momentum", momentum, 0.0, 1.0, high_open=True),
            validate.real("l2", l2, 0.0))


def fit(net, X, y, epochs, batch_size, lr, momentum=0.0, l2=0.0, validation_data=None,
        shuffle=True, progress=False, callback=None, distributed=None):
    """Train ``net`` by mini-batch SGD and return its History.

    X is (n_samples, n_in); y integer labels (n,) or targets (n, n_out); numpy or cupy.
    Each epoch reshuffles (from the network's seeded generator) unless ``shuffle`` is False,
    and uses the last short batch.  ``callback(record)`` is called after each epoch.
    A non-finite cost raises DivergenceError and leaves the weights of the last good epoch.
    ``distributed``: True or a ``fastnn.distributed`` Communicator trains data-parallel across the
    ranks of an MPI job (every rank calls fit with the same arguments and seed).
    """
    epochs, batch_size, lr, momentum, l2 = _check_hyperparameters(epochs, batch_size, lr, momentum, l2)
    X, Y, _ = net._inputs(X, y)
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ConfigError("validation_data must be a pair (X_val, y_val)")
        validation = net._inputs(*validation_data)
    backend, xp = net.backend, net.xp
    n = X.shape[0]
    comm = training_communicator(distributed, net, X, Y, batch_size, shuffle, (epochs, lr, momentum, l2))
    velocity = xp.zeros_like(net.params) if momentum else None
    history = History()
    for epoch in range(1, epochs + 1):
        start_time = time.perf_counter()
        last_good = net.params.copy()
        order = net.rng.permutation(n) if shuffle else range(n)
        order = backend.to_device(order, "int64")
        total = xp.zeros((), "float64")
        bar = tqdm(total=n, unit="ex", leave=False, desc=f"epoch {epoch}", disable=not progress)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            m = idx.shape[0]  # the global batch: the update takes the mean over all of it
            if comm is not None:
                idx = idx[comm.share(m)]  # this rank's rows of it
            if idx.shape[0]:
                ws = net._workspace(idx.shape[0])
                backend.take_rows(X, idx, out=ws.x)
                backend.take_rows(Y, idx, out=ws.y)
                total += net._backprop(ws)
            else:  # a short last batch left this rank no rows: it adds zero gradients
                net.grads.fill(0)
            if comm is not None:
                comm.allreduce_sum(net.grads)  # one all-reduce of the flat buffer per step
            sgd_step(net, velocity, m, n, lr, momentum, l2)
            bar.update(m)
        bar.close()
        loss = float(total)  # the one read-back of the epoch
        loss = (comm.allreduce_scalar(loss) if comm is not None else loss) / n
        backend.synchronize()
        seconds = time.perf_counter() - start_time
        if not math.isfinite(loss) or not bool(xp.isfinite(net.params).all()):
            net.params[...] = last_good
            raise DivergenceError(
                f"training diverged in epoch {epoch}: the cost became {loss}; the weights of the "
                f"last good epoch were kept; try a smaller learning rate than {lr}"
            )
        record = {"epoch": epoch, "loss": loss, "seconds": seconds,
                  "examples_per_second": n / seconds if seconds > 0 else math.inf}
        if validation_data is not None:
            record["val_loss"], record["val_accuracy"] = net._measure(*validation)
        history.records.append(record)
        if callback is not None:
            callback(record)
    return history
