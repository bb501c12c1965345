"""Mini-batch SGD: the training set goes to the device once, batches are gathered there.

Per batch of m examples (n in the training set), with g the summed gradient from backprop:
    plain      w ← (1 - η λ/n) w - (η/m) g           (the textbook's L2 rule; biases get no λ)
    momentum   v ← μ v - (η/m) g - (η λ/n) w,  w ← w + v
Backprop is asked for the step s = -(η/m) g itself (it scales δ^L, a small array), so the plain
update is one pass over the parameters: w ← w + s.
Nothing is read back to the host inside the batch loop: the cost is summed on the device and
read once per epoch, when it is also checked for divergence.

Distributed (see ``fastnn.distributed``): every rank takes the same shuffled order, backprops its
share of each global batch, and one all-reduce of ``net.grads`` sums the shares before the
update, which then uses the global m; the epoch's cost is summed across ranks once.
"""

import contextlib
import logging
import math
import sys
import time
import warnings

import numpy as np
from tqdm.auto import tqdm

from . import advice, defaults, engines, inputs, validate
from . import records as records_module
from . import threads as thread_policy
from .backend import (
    PRECISIONS,
    context_lost_message,
    is_out_of_memory,
    is_sticky_fault,
    matmul_precision,
    out_of_memory_message,
)
from .checkpoint import CHECKPOINT_FILE, checkpoint_file, save_checkpoint, save_model
from .distributed import training_communicator
from .engines import cpu_blas, cpu_fused
from .engines.generic import sgd_step  # noqa: F401 (the generic update, importable from here as before)
from .errors import (
    BackendUnavailable,
    ConfigError,
    DeviceOutOfMemory,
    DivergenceError,
    ModelFileError,
    NotLearningWarning,
)
from .files import FolderLock
from .state import TrainState

log = logging.getLogger("fastnn")


class History:
    """What each epoch of ``fit`` measured: one dict per epoch in ``records``.

    Keys: epoch (1-based), engine (the one that ran), precision (of its matmuls: fp32 or tf32), loss (mean
    training cost over the epoch's batches, each measured before its update), seconds (training time of the epoch, device synchronised),
    examples_per_second, and val_loss / val_accuracy when validation data was given (val_loss / val_rmse /
    val_r2 for regression).
    """

    def __init__(self, records=None):
        problem = None if records is None else records_module.history_problem(records)
        if problem:
            raise ConfigError(f"records must be a list of dicts, one per epoch; got {type(records).__name__}: {problem}")
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

    @property
    def best_epoch(self):
        """The (first) epoch with the highest validation accuracy (regression: the lowest validation loss);
        None without validation."""
        scored = [r for r in self.records if r.get("val_accuracy") is not None]
        if scored:
            return max(scored, key=lambda r: r["val_accuracy"])["epoch"]
        scored = [r for r in self.records if r.get("val_loss") is not None]
        return min(scored, key=lambda r: r["val_loss"])["epoch"] if scored else None

    def since_best(self):
        """Epochs completed after the best one (0 when the last epoch is the best)."""
        best = self.best_epoch
        return 0 if best is None else self.records[-1]["epoch"] - best


def _check_hyperparameters(epochs, batch_size, lr, momentum, l2):
    return (validate.integer("epochs", epochs, 0),
            validate.integer("batch_size", batch_size, 1, records_module.MAX_BATCH),
            validate.real("lr", lr, 0.0, low_open=True),
            validate.real("momentum", momentum, 0.0, 1.0, high_open=True),
            validate.real("l2", l2, 0.0))


def _check_decay(lr, l2, n):
    """Refuse an L2 decay whose factor 1 - ηλ/n (each step's w <- (1 - ηλ/n) w - …) is not above 0: the weights
    would change sign or blow up at every step, and the run would diverge for a reason the learning rate is not."""
    factor = 1 - lr * l2 / n
    if l2 and not factor > 0:
        raise ConfigError(f"l2 {l2:g} with lr {lr:g} and {n} training examples makes the weight decay factor "
                          f"1 - lr*l2/n = {factor:.4g}; it must be above 0: use an l2 below {n / lr:.4g}")


def _check_precision(net, precision):
    """The precision the matmuls will run in: "fp32" or "tf32" (float32 on a GPU only; ignored on the CPU)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "tf32" and str(net.dtype) != "float32":
        raise ConfigError(f"precision 'tf32' is for float32 networks; this one is {net.dtype} (use precision 'fp32')")
    if precision == "tf32" and not net.backend.is_cuda:
        log.warning("fastnn: precision tf32 has no effect on the CPU; training in fp32")
        return "fp32"
    return precision


def fit(net, X, y, epochs, batch_size, lr=None, momentum=0.0, l2=0.0, validation_data=None,
        shuffle=True, progress=False, callback=None, state=None, checkpoint=None, distributed=None,
        engine="auto", precision="fp32", threads=None, overwrite=False, early_stop=None,
        save_best=None):
    """Train ``net`` by mini-batch SGD and return its History.

    X is (n_samples, n_in); y integer labels (n,) or targets (n, n_out); numpy or cupy.
    Each epoch reshuffles (from the network's seeded generator) unless ``shuffle`` is False,
    and uses the last short batch.  ``callback(record)`` is called after each epoch.  ``progress``
    True shows a bar per epoch (whatever the engine: a fused epoch then runs in chunks) and prints one
    line per epoch on stderr, as Keras does; "bar": the bar alone (the CLI prints its own lines).

    ``state`` (a TrainState) advances after every completed epoch; one that has already
    advanced (e.g. from ``fastnn.load_checkpoint``) continues its run with epoch state.epoch + 1
    up to ``epochs`` in all, and must be given the same settings and a training set of the same
    size.  ``checkpoint`` (a folder; made if missing, its parent must exist) receives
    ``checkpoint.npz`` after every completed epoch, written atomically; fit holds a lock on it
    (ConfigError if another process has it), and makes it again if it is deleted meanwhile.  A
    folder that already holds the checkpoint of another run is refused (ConfigError) unless
    ``overwrite`` is True or ``state`` continues that run.

    ``lr`` None takes the default for the network (see ``fastnn.defaults``).  With validation data,
    ``early_stop`` N stops after N epochs without a better validation accuracy, and ``save_best`` (a
    path) receives the model of each epoch that reaches the best validation accuracy so far, with the
    history up to it (``History.best_epoch`` names it).  After epoch 1 of a new run, a
    NotLearningWarning says when the run is not learning and what to try (see ``fastnn.advice``).

    ``distributed``: True or a ``fastnn.distributed`` Communicator trains data-parallel across the
    ranks of an MPI job (every rank calls fit with the same arguments and seed); only rank 0
    writes the checkpoint.

    ``engine``: "auto" (the fused engine of the device where the network fits, else generic),
    "fused" (ConfigError when it cannot run this network) or "generic"; see ``fastnn.engines``.
    Each epoch's record names the engine that ran.

    ``precision``: "fp32" (plain fp32 cuBLAS, whatever CUPY_TF32 says), or "tf32" for float32 cuBLAS
    matmuls on TF32 tensor cores (CUDA only: refused for float64, ignored with a one-line notice on the
    CPU).  The fused CUDA engine computes in fp32 whatever is asked.  Each epoch's record has the
    precision its matmuls ran in.

    ``threads``: the BLAS threads while training on the CPU; None picks them from the size of a
    step's GEMMs (``fastnn.threads``), for the duration of fit only.

    Whatever stops training (DivergenceError for a non-finite cost or one over 1000 times epoch 1's,
    DeviceOutOfMemory, Ctrl-C)
    leaves ``net`` and ``state`` as the last completed epoch left them, never half an epoch.  A sticky CUDA
    fault (an illegal address, a launch failure: the context is dead) raises BackendUnavailable, one line, and
    nothing is put back or run on that device after it.  Everything runs inside the network's own device
    (``Backend.activate``), whichever device is current.
    The History returned covers every epoch of the run, those before a resume included.
    """
    if lr is None:
        lr = defaults.learning_rate(*advice.names(net))
    epochs, batch_size, lr, momentum, l2 = _check_hyperparameters(epochs, batch_size, lr, momentum, l2)
    if not isinstance(shuffle, (bool, np.bool_)):
        raise ConfigError(f"shuffle must be True or False; got {shuffle!r}")
    if not isinstance(progress, (bool, np.bool_)) and progress != "bar":
        raise ConfigError(f"progress must be True, False or 'bar'; got {progress!r}")
    early_stop = None if early_stop is None else validate.integer("early_stop", early_stop, 1)
    if (early_stop is not None or save_best is not None) and validation_data is None:
        raise ConfigError("early_stop and save_best compare validation accuracies (regression: losses): they need "
                          "validation_data")
    if save_best is not None:
        validate.writable_file(save_best, "save_best")
    if callback is not None and not callable(callback):
        raise ConfigError(f"callback must be a function of one epoch's record, or None; got {callback!r}")
    if state is not None and not isinstance(state, TrainState):
        raise ConfigError(f"state must be a fastnn.TrainState or None; got {type(state).__name__}")
    engines.check_name(engine)
    precision = _check_precision(net, precision)
    threads = thread_policy.check(threads)
    state = TrainState() if state is None else state
    if checkpoint is not None:
        refuse_other_run(checkpoint, state, overwrite)
        validate.writable_folder(checkpoint, "checkpoint")
    with net.backend.activate(), out_of_memory_as_error(net.backend, batch_size), \
            _context_lost_in(net.backend.device):  # all on the network's device
        if net.input_scale is None:  # the first fit decides how whole-number inputs are scaled (fastnn.inputs)
            net.input_scale = inputs.scale_of(inputs.as_rows(X, net.sizes[0]))
        X, Y, labels = net._inputs(X, y)
        if net.input_range is None:
            net.input_range = inputs.value_range(net.xp, X)
        _check_decay(lr, l2, int(X.shape[0]))
        validation = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ConfigError("validation_data must be a pair (X_val, y_val)")
            validation = net._inputs(*validation_data)
        state.begin(net, {"batch_size": batch_size, "lr": lr, "momentum": momentum, "l2": l2,
                          "shuffle": bool(shuffle), "n_train": int(X.shape[0])})
        if state.epoch >= epochs and state.epoch > 0:
            log.warning("fastnn: nothing left to train: the run has done %d epochs and epochs is %d", state.epoch,
                        epochs)
        state.settings["epochs"] = epochs  # the run's target; not compared on resume: it may be raised
        comm = training_communicator(distributed, net, X, Y, batch_size, shuffle, (epochs, lr, momentum, l2))
        if comm is not None and comm.rank != 0:
            checkpoint = save_best = None  # every rank holds the same state: rank 0 writes it
        runner = engines.choose(net, engine, batch_size, momentum, l2, comm)
        share = -(-batch_size // comm.size) if comm is not None else batch_size  # this rank's rows of a batch
        blas = thread_policy.choose(net.sizes, share, threads, on_gpu=net.backend.is_cuda)
        watch = None
        if state.epoch == 0 and (comm is None or comm.rank == 0):
            watch = _Watch(net, lr, (X[:advice.SAMPLE], Y[:advice.SAMPLE], None if labels is None else labels[:advice.SAMPLE]),
                           validation, -(-int(X.shape[0]) // batch_size))
        lock = None if checkpoint is None else FolderLock(checkpoint)  # a second run on the folder is refused
        try:
            with lock or contextlib.nullcontext(), matmul_precision(net.backend, precision), \
                    thread_policy.limited(blas):
                _epochs(net, runner, X, Y, validation, state, epochs, batch_size, lr, momentum, l2, shuffle,
                        progress, callback, lock, comm, precision, (watch, early_stop, save_best))
        except BaseException as e:
            if not is_sticky_fault(e):  # on a dead CUDA context nothing can be put back, nor run
                state.restore(net)  # never half an epoch
            net.history = state.history
            raise
    net.history = state.history
    return state.history


def refuse_other_run(folder, state, overwrite):
    """ConfigError when ``folder`` holds a checkpoint that this fit would replace without continuing it."""
    if overwrite or state.started:
        return
    folder = validate.as_path(folder, "checkpoint")
    file = checkpoint_file(folder)
    if folder.is_dir() and file.is_file():
        raise ConfigError(f"checkpoint folder {folder} already holds the checkpoint of another run ({file}); "
                          f"continue that run (--resume {folder}, or state=load_checkpoint(...)[1]), or replace "
                          f"it (--overwrite, overwrite=True)")


class _Watch:
    """Measures what the not-learning check needs: the untrained loss, then the accuracy after epoch 1."""

    def __init__(self, net, lr, sample, validation, updates):
        self.net, self.lr, self.updates = net, lr, updates
        self.sample = sample
        self.loss_before = net._measure(*sample)["loss"]
        self.measured = validation if validation is not None else sample

    def check(self, record):
        """Warn (NotLearningWarning) when epoch 1 shows the run is not learning."""
        labels = self.measured[2]
        if labels is None:  # regression: only the loss tells
            accuracy = chance = None
        elif "val_accuracy" in record and self.measured is not self.sample:
            accuracy = record["val_accuracy"]
        else:
            accuracy = self.net._measure(*self.measured)["accuracy"]
        if labels is not None:
            chance = advice.majority_share(self.net.xp, labels)
        message = advice.check_first_epoch(self.net, self.lr, self.loss_before, record["loss"], accuracy, chance,
                                           self.updates)
        if message:
            warnings.warn(message, NotLearningWarning, stacklevel=4)


@contextlib.contextmanager
def out_of_memory_as_error(backend, batch_size):
    """Turn the device's (or the host's) out-of-memory errors into DeviceOutOfMemory."""
    try:
        yield
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        raise DeviceOutOfMemory(out_of_memory_message(backend.device, e, batch_size)) from e


def _epochs(net, runner, X, Y, validation, state, epochs, batch_size, lr, momentum, l2, shuffle, progress,
            callback, lock, comm, precision, extras):
    """Epochs state.epoch + 1 .. epochs of ``fit``, on validated device arrays, run by ``runner``;
    each saved to the checkpoint folder that ``lock`` holds (None: no checkpoints).  ``extras``:
    the not-learning watch, early_stop and save_best."""
    watch, early_stop, save_best = extras
    backend, xp = net.backend, net.xp
    n = X.shape[0]
    velocity = state.working_velocity(net)
    for epoch in range(state.epoch + 1, epochs + 1):
        order = net.rng.permutation(n) if shuffle else np.arange(n)
        order = backend.to_device(order, "int64")
        compiling = {"fused-cpu": cpu_fused, "blas-cpu": cpu_blas}.get(runner.name)
        if compiling is not None and compiling.compiled(net.dtype) is False:
            log.warning(compiling.COMPILE_NOTICE.format(dtype=net.dtype))
        if not engines.verify(runner, net, X, Y, order, batch_size, lr, momentum, l2, velocity):  # compiles first
            runner = engines.GenericEngine(net, comm)
        start_time = time.perf_counter()  # after the check: a first compile is not the epoch's time
        bar = tqdm(total=n, unit="ex", leave=False, desc=f"epoch {epoch}", disable=not progress)
        with bar, np.errstate(over="ignore", invalid="ignore"), _context_lost_in(backend.device, runner.name):
            cost = _run_epoch(runner, X, Y, order, batch_size, lr, momentum, l2, velocity, bar, progress)
            loss = float(cost)  # the one read-back of the epoch (a fault in the epoch's kernels shows here)
        loss = (comm.allreduce_scalar(loss) if comm is not None else loss) / n
        backend.synchronize()
        seconds = time.perf_counter() - start_time
        diverged = _divergence(epoch, loss, bool(xp.isfinite(net.params).all()), state.history.records, lr)
        if diverged:
            state.restore(net)
            raise DivergenceError(diverged)
        record = {"epoch": epoch, "loss": loss, "seconds": seconds,
                  "examples_per_second": n / seconds if seconds > 0 else math.inf, "engine": runner.name,
                  "precision": precision if isinstance(runner, engines.GenericEngine) else "fp32"}
        if validation is not None:
            record.update({f"val_{key}": value for key, value in net._measure(*validation).items()})
        state.advance(net, velocity, record)
        if lock is not None:
            _save_checkpoint(lock, net, state)
        if progress is True:
            tqdm.write(summary(record, epochs), file=sys.stderr)
        if callback is not None:
            callback(record)
        if watch is not None and epoch == 1:
            watch.check(record)
        if save_best is not None and state.history.best_epoch == epoch:
            save_model(net, save_best, history=state.history)
        if early_stop is not None and state.history.since_best() >= early_stop:
            break


@contextlib.contextmanager
def _context_lost_in(device, engine=None):
    """Turn a sticky CUDA fault on ``device`` (while ``engine`` trains) into BackendUnavailable, one line."""
    try:
        yield
    except Exception as e:
        if not is_sticky_fault(e) or isinstance(e, BackendUnavailable):
            raise
        raise BackendUnavailable(context_lost_message(device, e, engine)) from e


CHUNK_BATCHES = 200  # a fused epoch under a progress bar runs in chunks of this many batches


def _run_epoch(runner, X, Y, order, batch_size, lr, momentum, l2, velocity, bar, progress):
    """One epoch by ``runner``; the summed cost.  With ``progress``, an engine that runs a whole epoch in one
    call runs it in chunks of CHUNK_BATCHES batches (the same batches, in the same order) so the bar moves."""
    if isinstance(runner, engines.GenericEngine):
        return runner.epoch(X, Y, order, batch_size, lr, momentum, l2, velocity, on_batch=bar.update)
    n = order.shape[0]
    step = CHUNK_BATCHES * batch_size if progress and runner.name in ("fused-cpu", "blas-cpu") else n
    cost = 0.0
    for start in range(0, n, step):
        part = order[start:start + step]
        cost = cost + runner.epoch(X, Y, part, batch_size, lr, momentum, l2, velocity)
        bar.update(part.shape[0])
    return cost


def summary(record, epochs):
    """One line for an epoch's record, as Keras prints it: 'epoch 3/10 - 1.2 s - loss 0.1234 - val_accuracy 0.9'."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"{record['seconds']:.2f} s", f"loss {record['loss']:.4f}"]
    parts += [f"{key} {record[key]:.4f}" for key in ("val_loss", "val_accuracy", "val_rmse", "val_r2") if key in record]
    return " - ".join(parts)


BLOW_UP = 1000  # an epoch's loss this many times the first epoch's is a divergence, finite or not


def _divergence(epoch, loss, finite_weights, records, lr):
    """Why training diverged in ``epoch`` (its mean ``loss``; ``records``: the epochs before), or None."""
    first = records[0]["loss"] if records else None
    if not math.isfinite(loss) or not finite_weights:
        why = f"the cost became {loss}" if not math.isfinite(loss) else "the weights became non-finite"
    elif first and loss > BLOW_UP * first:
        why = f"the cost rose to {loss:.4g}, over {BLOW_UP} times epoch 1's {first:.4g}"
    else:
        return None
    if epoch == 1:
        kept = "no epoch had completed, so there are no good weights to keep (the network has its initial ones)"
    else:
        kept = f"the weights of the last good epoch ({epoch - 1}) were kept"
    return f"training diverged in epoch {epoch}: {why}; {kept}; try a smaller learning rate than {lr}"


def _save_checkpoint(lock, net, state):
    """Write the checkpoint; a folder deleted under the run (even mid-write) is made again, and locked again.

    A folder deleted and made anew by another run is that run's: nothing is written there (ModelFileError).
    """
    _renew(lock)
    try:
        save_checkpoint(lock.folder, net, state)
    except ModelFileError:
        if lock.folder.is_dir() and (lock.folder / CHECKPOINT_FILE).exists():
            raise
        save_checkpoint(lock.folder, net, state)  # makes the folder anew
    _renew(lock)


def _renew(lock):
    try:
        lock.renew()
    except ConfigError as e:
        raise ModelFileError(f"cannot write the checkpoint: the folder was deleted under this run and made anew; "
                             f"{e}") from None