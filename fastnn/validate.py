"""Checks made once, at the door: every message says what was wrong, what was expected, what it got."""

import math
import numbers
import os
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError, ShapeError
from .files import temp_path
from .readers import describe_bytes

DTYPES = ("float32", "float64")
CHUNK = 8192  # rows checked at a time, so that a check never doubles the memory of a big array


def _whole(s):
    """``s`` as an int when it is an integer or the text of one (not a fraction, not a bool)."""
    if isinstance(s, str):
        return int(s)
    if isinstance(s, bool) or not isinstance(s, numbers.Integral):
        raise TypeError(s)
    return int(s)


def layer_sizes(sizes):
    """Return ``sizes`` as a list of ints, at least two of them, each >= 1."""
    def refuse(got, why=""):
        raise ConfigError(f"layer sizes must be two or more integers >= 1, like 784,30,10; got {got!r}{why}")

    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        refuse(sizes)
    given, whole = list(sizes), []
    for s in given:
        try:
            whole.append(_whole(s))
        except (TypeError, ValueError):
            refuse(given, f" ({s!r} is not a whole number)")
    if len(whole) < 2 or min(whole) < 1:
        refuse(whole)
    return whole


def parameter_count(sizes):
    """Weights and biases of a fully-connected network with layer ``sizes``."""
    return sum(n_out * n_in + n_out for n_out, n_in in zip(sizes[1:], sizes[:-1]))


def network_fits(sizes, dtype, memory, device):
    """Refuse, before anything is allocated, a network whose parameters, gradients and the copy of the
    last epoch's weights that training keeps (TrainState) alone need more than the ``memory`` bytes
    ``device`` can still give: that is a size no run can have there."""
    n = parameter_count(sizes)
    need = 3 * n * dtype.itemsize
    if need > memory:
        raise ConfigError(f"layer sizes {sizes} make a network of {n:,} parameters, which need "
                          f"{describe_bytes(need)} as {dtype.name} with their gradients and the last epoch's copy, "
                          f"more than the {describe_bytes(memory)} of memory {device} can give; use smaller layers")


def generator(seed):
    """The numpy Generator for ``seed``: None (fresh entropy) or an integer >= 0."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ConfigError(f"seed must be None or an integer >= 0; got {seed!r}")
    return np.random.default_rng(seed)


def dtype(name):
    """Return the numpy dtype for 'float32' or 'float64'."""
    try:
        found = np.dtype(name).name
    except TypeError:
        found = None
    if found not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {name!r}")
    return np.dtype(found)


def integer(name, value, low, high=None):
    """Return ``value`` as an int >= ``low`` (and <= ``high``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or (
            high is not None and value > high):
        within = f"<= {high}" if high is not None and isinstance(value, numbers.Integral) and value > high \
            else f">= {low}"
        raise ConfigError(f"{name} must be an integer {within}; got {value!r}")
    return int(value)


def real(name, value, low, high=math.inf, low_open=False, high_open=False):
    """Return ``value`` as a finite float in the given range."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        value = float(value)
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ConfigError(f"{name} must be a finite number in {lo}{low}, {high}{hi}; got {value!r}")
    return value


def _check_finite(backend, a, what, source=None):
    """Refuse NaN and infinity in ``a``; ``source``: the dtype ``a`` was cast from, to name overflows."""
    xp = backend.xp
    for start in range(0, a.shape[0], CHUNK):
        ok = xp.isfinite(a[start:start + CHUNK])
        if not bool(ok.all()):
            rows = ok.reshape(ok.shape[0], -1).all(axis=1)
            row = start + int(rows.argmin())
            wider = source is not None and source.kind == "f" and source.itemsize > a.dtype.itemsize
            beyond = f" or a value beyond {a.dtype}'s range (±{np.finfo(a.dtype).max:.4g})" if wider else ""
            raise DataError(f"{what} must be finite; got NaN or infinity{beyond} in row {row} (the first such row)")


def as_array(a, what):
    """``a`` itself when it is an array (numpy or cupy), else ``numpy.asarray(a)``; ragged lists refused."""
    if getattr(a, "shape", None) is not None and isinstance(getattr(a, "dtype", None), np.dtype) and \
            isinstance(a.shape, tuple):
        return a
    try:
        return np.asarray(a)
    except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as e:
        raise ShapeError(f"{what} must be a rectangular array; got {type(a).__name__} that numpy cannot "
                         f"make one of (rows of different lengths?): {e}") from None


def features(backend, X, n_in, dtype):
    """Return X (n_samples, n_in) as a finite C-contiguous ``dtype`` array on the backend."""
    X = as_array(X, "X")
    shape = X.shape
    if len(shape) != 2:
        raise ShapeError(f"X must be 2-D (n_samples, n_features); got shape {tuple(shape)}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"X must hold numbers; got dtype {X.dtype}")
    if shape[0] == 0:
        raise DataError("X is empty: it has 0 samples")
    if shape[1] != n_in:
        raise ShapeError(
            f"X has {shape[1]} features per sample, but the network's input layer has {n_in} units"
        )
    source = X.dtype
    with np.errstate(over="ignore"):  # a value beyond dtype's range becomes inf, refused below
        X = backend.to_device(X, dtype)
    _check_finite(backend, X, "X", source)
    return X


def targets(backend, y, n, n_out, dtype, regression=False):
    """Return (Y, labels): Y the (n, n_out) target matrix, labels the class of each row (None for regression).

    ``y`` is either integer class labels of shape (n,) in [0, n_out) (0 or 1 for one output unit), or a
    finite target matrix (n, n_out) such as one-hot rows; for ``regression`` (one unit) real targets (n,)
    or (n, 1).
    """
    xp = backend.xp
    y = as_array(y, "y")
    shape = y.shape
    if len(shape) not in (1, 2) or shape[0] != n:
        raise ShapeError(f"y must have shape ({n},) or ({n}, {n_out}) to match X; got shape {tuple(shape)}")
    if y.dtype.kind not in "biuf":
        raise DataError(f"y must hold numbers; got dtype {y.dtype}")
    y = backend.to_device(y)
    if len(shape) == 2:
        if shape[1] != n_out:
            raise ShapeError(
                f"y has {shape[1]} columns, but the network's output layer has {n_out} units"
            )
        with np.errstate(over="ignore"):
            Y = y.astype(dtype, copy=False)
        _check_finite(backend, Y, "y", y.dtype)
        labels = None if regression else Y.argmax(axis=1) if n_out > 1 else (Y[:, 0] > 0.5).astype(np.int64)
        return xp.ascontiguousarray(Y), labels
    if regression:
        with np.errstate(over="ignore"):
            Y = y.astype(dtype).reshape(n, 1)
        _check_finite(backend, Y, "y", y.dtype)
        return Y, None
    labels = class_labels(backend, y, n_out)
    if n_out == 1:  # binary: the one unit's target is the label itself
        return labels.astype(dtype).reshape(n, 1), labels
    Y = xp.zeros((n, n_out), dtype=dtype)
    Y[xp.arange(n), labels] = 1
    return Y, labels


def class_labels(backend, y, n_out, what="y"):
    """Return the 1-D array ``y`` (on the backend) as int64 class labels in [0, n_out) (0 or 1 for one unit)."""
    xp = backend.xp
    if y.dtype.kind == "f":
        _check_finite(backend, y, what)
        if not bool((y == xp.round(y)).all()):
            raise DataError(f"{what} holds class labels, which must be whole numbers; got fractions (regression "
                            "targets need one output unit with output identity)")
    low, high = int(y.min()), int(y.max())
    if n_out == 1 and (low < 0 or high > 1):
        raise DataError(f"labels in {what} must be 0 or 1 for one sigmoid output unit (binary); got {low}..{high} "
                        "(regression targets need output identity)")
    if low < 0 or high >= max(n_out, 2):
        raise DataError(f"labels in {what} must be in [0, {n_out - 1}] for {n_out} output units; got {low}..{high}")
    return y.astype(np.int64)


def as_path(value, name):
    """Return ``value`` (a str or os.PathLike naming a file or folder) as a Path."""
    if not isinstance(value, (str, os.PathLike)) or str(value) == "":
        raise ConfigError(f"{name} must be a path (str or pathlib.Path); got {value!r}")
    return Path(value)


def _probe(folder, what):
    """Raise ConfigError unless a file can be created in ``folder``."""
    try:
        tmp = temp_path(Path(folder) / "probe")  # a recognisable name: a kill here leaves nothing lasting
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(tmp)
    except OSError as e:
        raise ConfigError(f"{what}: cannot write in {folder} ({e.strerror or e})") from None


def writable_file(path, name):
    """Check, before any work is done, that a file can be written at ``path`` (option ``name``)."""
    path = as_path(path, name)
    what = f"{name} {path}"
    if path.is_dir():
        raise ConfigError(f"{what} is a folder; expected a file name, such as {path / 'model.npz'}")
    if not path.parent.exists():
        raise ConfigError(f"{what}: the folder {path.parent} does not exist")
    if not path.parent.is_dir():
        raise ConfigError(f"{what}: {path.parent} is not a folder")
    _probe(path.parent, what)
    return path


def writable_folder(path, name):
    """Make the folder ``path`` (option ``name``) if needed and check that files can be written in it."""
    path = as_path(path, name)
    what = f"{name} {path}"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} is a file; expected a folder (or a name for a new one)")
    if not path.parent.exists():
        raise ConfigError(f"{what}: the folder {path.parent} does not exist")
    try:
        path.mkdir(exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what}: cannot make the folder ({e.strerror or e})") from None
    _probe(path, what)
    return path


def network(net, name="net"):
    """Return ``net`` if it is a fastnn.Network."""
    from .network import Network  # network imports this module

    if not isinstance(net, Network):
        raise ConfigError(f"{name} must be a fastnn.Network; got {type(net).__name__}")
    return net


def started_state(net, state):
    """Return ``state`` if it is a TrainState that ``fit`` has started for a network like ``net``."""
    from .state import TrainState

    if not isinstance(state, TrainState):
        raise ConfigError(f"state must be a fastnn.TrainState; got {type(state).__name__}")
    if not state.started:
        raise ConfigError("state has no training run to save: pass the TrainState that fit(..., state=state) "
                          "advanced, or one from fastnn.load_checkpoint; got a new TrainState()")
    params = state.params
    if params is None or params.shape != net.params.shape or params.dtype != net.params.dtype:
        had = "no weights" if params is None else f"{params.size} {params.dtype} parameters"
        raise ConfigError(f"state belongs to a network of {had}; got net with {net.params.size} {net.params.dtype}")
    return state


def extra_arrays(extra, reserved):
    """Return ``extra`` ({name: numeric array} or None) as a dict of numpy arrays; ``reserved`` names refused."""
    if extra is None:
        return {}
    if not isinstance(extra, dict):
        raise ConfigError(f"extra must be a dict of named arrays, or None; got {type(extra).__name__}")
    out = {}
    for key, value in extra.items():
        if not isinstance(key, str) or not key.isidentifier() or key in reserved or key[:1] in "Wb" and key[1:].isdigit():
            raise ConfigError(f"extra array names must be identifiers other than header, training, velocity, "
                              f"W0, b0, …; got {key!r}")
        value = np.asarray(as_array(value, f"extra array {key}"))
        if value.dtype.kind not in "biuf":
            raise DataError(f"extra array {key} must hold numbers; got dtype {value.dtype}")
        out[key] = value
    return out
