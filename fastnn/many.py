"""Many networks at once: ``fit_many`` trains a list of networks of one shape, each with its own settings and seed.

Every network keeps its own seed (its initial weights and its shuffling) and ends with the weights
``net.fit`` alone gives it with the same settings.  How the models share the machine (``method``):

- ``processes`` (the CPU's, ``fastnn.many_pool``): a pool of spawned workers, ``os.cpu_count()`` of them,
  one BLAS thread each.  Every epoch, each model's next epoch is one job: a worker runs the ordinary ``fit`` on it
  (``engine`` as asked), continuing the model's TrainState, and sends the state back as arrays.  It is
  the same code on the same numbers as a solo run, so each model's weights are bit-identical to
  ``net.fit(..., threads=1)`` with the same engine.
- ``one-by-one``: the same jobs in this process, one model after another (the reference and the baseline).
- ``batched`` (the GPU's generic fallback, ``fastnn.many_batched``): the parameters of all models
  stacked, every matmul a batched (3-D) one; the generic engine's math, so each model agrees with its
  solo generic run within BATCHED_RTOL (relative to the largest weight), not bit for bit.
- ``fused`` (the GPU's, ``fastnn.many_fused``): the fused CUDA kernel (``engines.cuda_fused.ManyEngine``)
  with one block, or one cluster on sm_90, per model: ONE launch per epoch trains every model of a batch size
  (models are grouped by batch size; in a group with momentum, a model without it takes the momentum update
  from a zero velocity).  Each model keeps its seed, its solo run's shuffled orders, lr, momentum, l2 and
  velocity, and agrees with its solo generic run as the fused engine does (the kernel tests: atol 2e-5 + rtol
  2e-4 a model); records name the engine "fused-cuda".  For CUDA, float32 networks that
  ``cuda_fused.unfit`` accepts at their settings, with engine "auto" or "fused"; anything else is refused with
  one ConfigError line.  The first use of each kind of settings is checked by ``engines.verify`` (one model
  through the same ManyEngine); where it disagrees or cannot launch, that batch size trains batched.
- ``auto``: on a CUDA device fused where every network fits it (and engine is "auto" or "fused"), else
  batched; processes on a CPU with more than one core and more than one model; else one-by-one.

Across engines the models differ as solo runs do: a fused engine's step agrees with the generic one's within
``engines.VERIFY_RTOL`` (checked on its first steps), and epochs of such steps drift apart like any two
float32 computations in another order.  (On numpy, batched came out bit-identical to solo generic runs in the
tests, as numpy's stacked matmul calls the same GEMM per model; cuBLAS's batched GEMM promises no such thing.)

The fused method's kernel was tested in CI only through the g++ build of cuda_fused.cu (tests/kernel_shim: the
launch's blocks run one after another) on the cupy test double, every model against its own solo generic run
(tests/test_many_fused.py); its launch and speed on a real GPU are ``engines.cuda_fused``'s, not measured here.

The whole run moves one epoch at a time: all models finish epoch e before any starts e + 1, so a stop
(Ctrl-C, a stop signal) leaves every network and state at the last epoch all of them completed.  A model
that diverges stops there with its last good weights; its History's ``diverged`` says why, the others go on.
"""

import os
import warnings

import numpy as np
from tqdm.auto import tqdm

from . import advice, defaults, engines, interrupts, train, validate
from . import threads as thread_policy
from .errors import ConfigError, DivergenceError
from .readers import describe_bytes
from .state import TrainState

METHODS = ("auto", "processes", "batched", "fused", "one-by-one")
SWEPT = ("batch_size", "lr", "momentum", "l2")  # the settings that may differ from network to network
BATCHED_RTOL = {"float32": 1e-4, "float64": 1e-10}  # batched vs solo generic: max |Δw| / max |w|


def check_nets(nets):
    """The list of networks, refused (ConfigError, one line) unless they share shape, activations, cost, dtype, device."""
    from .network import Network

    if not isinstance(nets, (list, tuple)) or not nets:
        raise ConfigError(f"nets must be a non-empty list of fastnn Networks; got {nets!r:.80}")
    for k, net in enumerate(nets):
        if not isinstance(net, Network):
            raise ConfigError(f"nets[{k}] must be a fastnn Network; got {type(net).__name__}")
    first = describe(nets[0])
    for k, net in enumerate(nets[1:], 1):
        if describe(net) != first:
            raise ConfigError(f"fit_many trains networks of one shape, activation, output, cost, dtype and device: "
                              f"nets[0] is {first}, but nets[{k}] is {describe(net)}")
    if len({id(net) for net in nets}) != len(nets):
        raise ConfigError("nets holds the same Network twice; give each model its own Network")
    return list(nets)


def describe(net):
    acts = "/".join(a.name for a in net.activations[-2:]) if len(net.sizes) > 2 else net.activations[-1].name
    return (f"{'-'.join(map(str, net.sizes))} {acts} {net.cost.name} {net.dtype} on {net.backend.device}")


def bytes_per_model(sizes, dtype, batch_size, momentum):
    """Memory one model needs while trained with the others: parameters, gradients, the last epoch's copy
    and a working copy (a momentum buffer and its copy too), and a batch's activations, z and δ."""
    n = validate.parameter_count(sizes)
    itemsize = np.dtype(dtype).itemsize
    return itemsize * (n * (4 + 2 * bool(momentum)) + batch_size * (sizes[0] + sizes[-1] + 3 * sum(sizes[1:])))


def check_memory(k, sizes, dtype, batch_size, momentum, backend, data_bytes):
    """ConfigError (one line, saying how many fit) when k models need more than the device's memory."""
    each = bytes_per_model(sizes, dtype, batch_size, momentum)
    free = backend.memory() - 2 * data_bytes  # the data, and its copy in the networks' dtype
    fit = max(free, 0) // each
    if k > fit:
        raise ConfigError(f"{k:,} models of {'-'.join(map(str, sizes))} need about {describe_bytes(each)} each "
                          f"({describe_bytes(k * each)} in all), more than the {describe_bytes(max(free, 0))} "
                          f"of memory {backend.device} has beside the data: {fit:,} fit; train fewer models")
    return fit


def per_net(name, value, k):
    """``value`` for each of k networks: a scalar repeated, or a list with exactly one entry per network."""
    if isinstance(value, (list, tuple, np.ndarray)):
        values = list(value)
        if len(values) != k:
            raise ConfigError(f"{name} must be one value or a list of one per network ({k}); got a list of "
                              f"{len(values)}")
        return values
    return [value] * k


def settings_of(nets, batch_size, lr, momentum, l2):
    """One checked dict of batch_size, lr, momentum and l2 per network (lr None: each network's default)."""
    k = len(nets)
    lrs = [defaults.learning_rate(*advice.names(net)) if v is None else v
           for net, v in zip(nets, per_net("lr", lr, k))]
    columns = zip(per_net("batch_size", batch_size, k), lrs, per_net("momentum", momentum, k), per_net("l2", l2, k))
    out = []
    for i, (b, r, m, d) in enumerate(columns):
        try:
            b, r, m, d = train._check_hyperparameters(1, b, r, m, d)[1:]
        except ConfigError as e:
            raise ConfigError(f"network {i}: {e}") from None
        out.append({"batch_size": b, "lr": r, "momentum": m, "l2": d})
    return out


def choose_method(method, nets, workers, settings=None, engine="auto"):
    """The method that trains ``nets`` (see the module docstring); ConfigError, one line, for one that cannot."""
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    cuda = nets[0].backend.is_cuda
    if method == "processes" and cuda:
        raise ConfigError("method 'processes' is for the CPU; on a GPU use 'fused', 'batched' or 'one-by-one'")
    if method == "fused":
        from . import many_fused

        reason = many_fused.unfit(nets, settings or [], engine)
        if reason is not None:
            raise ConfigError(f"method 'fused' cannot train these networks: {reason}")
    if method != "auto":
        return method
    if cuda:
        from . import many_fused

        return "fused" if settings is not None and many_fused.unfit(nets, settings, engine) is None else "batched"
    return "processes" if workers > 1 and len(nets) > 1 else "one-by-one"


def fit_many(nets, X, y, epochs, batch_size, lr=None, momentum=0.0, l2=0.0, validation_data=None, shuffle=True,
             engine="auto", method="auto", workers=None, progress=False, callback=None, states=None,
             on_epoch=None):
    """Train every network of ``nets`` on (X, y) and return one History per network.

    ``batch_size``, ``lr``, ``momentum`` and ``l2``: each one value for all, or a list of one per network
    (lr None: each network's default).  Each network's own seed draws its weights and its shuffling.
    ``engine`` is the single-model engine the processes and one-by-one methods run ("auto", "fused",
    "generic"); on a GPU, "auto" or "fused" allow the fused method, "generic" means batched.  ``method``
    and the equality each gives are in the module docstring.  ``workers``: the
    processes (default ``os.cpu_count()``, at most one per network).

    ``callback(k, record)`` is called after each epoch of network k; ``states`` (a list of TrainState, one
    per network, e.g. from ``fastnn.sweep``'s checkpoint) continues a run; ``on_epoch(epoch, states)`` is
    called when every model has completed ``epoch`` (a checkpoint of the whole run).  Whatever stops it
    leaves each network and its state at the last epoch that all completed.
    """
    nets = check_nets(nets)
    k = len(nets)
    epochs = validate.integer("epochs", epochs, 0)
    settings = settings_of(nets, batch_size, lr, momentum, l2)
    engines.check_name(engine)
    if not isinstance(shuffle, (bool, np.bool_)):
        raise ConfigError(f"shuffle must be True or False; got {shuffle!r}")
    workers = (os.cpu_count() or 1) if workers is None else validate.integer("workers", workers, 1)
    method = choose_method(method, nets, workers, settings, engine)
    for name, fn in (("callback", callback), ("on_epoch", on_epoch)):
        if fn is not None and not callable(fn):
            raise ConfigError(f"{name} must be a function or None; got {fn!r}")
    with train.out_of_memory_as_error(nets[0].backend, max(s["batch_size"] for s in settings)):
        n_train = nets[0]._inputs(X, y)[0].shape[0]  # validated at the door, once
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ConfigError("validation_data must be a pair (X_val, y_val)")
            nets[0]._inputs(*validation_data)
            validation_data = (nets[0]._features(validation_data[0]), validation_data[1])
        X = nets[0]._features(X)  # in the networks' dtype once, not once per model and epoch
        check_memory(k, nets[0].sizes, nets[0].dtype, max(s["batch_size"] for s in settings),
                     any(s["momentum"] for s in settings), nets[0].backend, X.nbytes)
        states = begin_states(nets, states, settings, n_train, shuffle, epochs)
        histories = [None] * k
        diverged = {}
        data = (X, y, validation_data, bool(shuffle), engine)
        bar = tqdm(total=k * epochs, initial=sum(s.epoch for s in states), unit="model-epoch", leave=False,
                   desc=f"{k} models", disable=not progress)
        try:
            with bar:
                if method == "fused":
                    from . import many_fused

                    many_fused.train_epochs(nets, states, data, epochs, diverged, _reporter(bar, callback), on_epoch)
                elif method == "batched":
                    from . import many_batched

                    many_batched.train_epochs(nets, states, data, epochs, diverged, _reporter(bar, callback),
                                              on_epoch)
                elif method == "processes":
                    from . import many_pool

                    many_pool.train_epochs(nets, states, data, epochs, diverged, _reporter(bar, callback), on_epoch,
                                           min(workers, k))
                else:
                    _one_by_one(nets, states, data, epochs, diverged, _reporter(bar, callback), on_epoch)
        except BaseException:
            for net, state in zip(nets, states):
                state.restore(net)  # never half an epoch: every model as the last epoch all completed left it
            raise
    for i, state in enumerate(states):
        histories[i] = state.history
        histories[i].diverged = diverged.get(i)
    return histories


def begin_states(nets, states, settings, n_train, shuffle, epochs):
    """A started TrainState per network: new ones from the networks, or ``states`` checked to continue them."""
    if states is None:
        states = [TrainState() for _ in nets]
    elif not isinstance(states, (list, tuple)) or len(states) != len(nets) or \
            not all(isinstance(s, TrainState) for s in states):
        raise ConfigError(f"states must be a list of one TrainState per network ({len(nets)}), or None")
    for net, state, s in zip(nets, states, settings):
        state.begin(net, {**s, "shuffle": bool(shuffle), "n_train": n_train})
        state.settings["epochs"] = epochs
    return list(states)


def _reporter(bar, callback):
    def report(i, record):
        bar.update(1)
        if callback is not None:
            callback(i, record)
    return report


def epoch_job(net, state, data, epoch):
    """Train ``net`` from ``state`` up to ``epoch`` with the ordinary ``fit``: (state, divergence or None, warnings)."""
    X, y, validation, shuffle, engine = data
    s = state.settings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            train.fit(net, X, y, epochs=epoch, batch_size=s["batch_size"], lr=s["lr"], momentum=s["momentum"],
                      l2=s["l2"], validation_data=validation, shuffle=shuffle, state=state, engine=engine,
                      threads=1)
            failure = None
        except DivergenceError as e:  # the state kept the last good epoch: this model stops there
            failure = str(e)
    return state, failure, [(w.category, str(w.message)) for w in caught]


def commit(nets, states, done, diverged, report, epoch):
    """Take the states of a completed epoch (``done``: {i: (state, failure, warnings)}) into the run, all of
    them before any is reported (a callback that stops the run finds every model at the same epoch)."""
    with interrupts.deferred():  # a stop signal waits: the run's states move to the new epoch all together
        for i in sorted(done):
            state, failure, _ = done[i]
            states[i].follow(state)
            states[i].restore(nets[i])
            if failure is not None:
                diverged[i] = failure
    for i in sorted(done):
        for category, message in done[i][2]:
            warnings.warn(f"network {i}: {message}", category, stacklevel=4)
        if states[i].epoch == epoch and i not in diverged:
            report(i, states[i].history.records[-1])


def _one_by_one(nets, states, data, epochs, diverged, report, on_epoch):
    with thread_policy.limited(1):  # one BLAS thread, as in each worker (fit's own checks run outside its limit)
        _one_by_one_epochs(nets, states, data, epochs, diverged, report, on_epoch)


def _one_by_one_epochs(nets, states, data, epochs, diverged, report, on_epoch):
    for epoch in range(min(s.epoch for s in states) + 1, epochs + 1):
        done = {}
        for i, (net, state) in enumerate(zip(nets, states)):
            if i in diverged or state.epoch >= epoch:
                continue
            twin = TrainState.from_parts(state.epoch, state.params, state.velocity, state.rng,
                                         state.history.records, state.settings)  # the run's state stays whole
            done[i] = epoch_job(net, twin, data, epoch)
        commit(nets, states, done, diverged, report, epoch)
        if on_epoch is not None:
            on_epoch(epoch, states)
