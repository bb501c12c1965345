"""Model files and checkpoints: one .npz with the weights (W0, b0, W1, b1, …) and a JSON header.

A checkpoint is a model file with the training state added: the momentum buffer ``velocity``
and a JSON ``training`` record (completed epochs, the random generator's state, the settings,
the history).  Both are written atomically (temporary file, fsync, rename), so a crash or a
Ctrl-C while writing leaves the previous file whole.  Loading validates everything: that it
is a fastnn file, its format version, the names of its activations and cost, its dtype, and
that every array has the shape, type and finiteness the header calls for.
"""

import json
import math
import numbers
from pathlib import Path

import numpy as np

from . import __version__, readers, records, validate
from .backend import get_backend
from .errors import ConfigError, FastnnError, ModelFileError
from .files import atomic_write, remove_stale
from .state import SETTINGS, TrainState

FORMAT = "fastnn-model"
VERSION = 1
CHECKPOINT_FORMAT = "fastnn-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.npz"


def model_header(net, history=None):
    """The JSON-able description of ``net`` that a model file carries.

    Optional fields, absent from older files: ``dataset`` (``net.dataset``: what it was trained on, a
    dict with ``name``, ``data_dir`` and ``validation_size``), ``input_scale`` (255: whole-number inputs
    are pixels, divided by 255; see ``fastnn.inputs``), ``input_range`` ([min, max] of the scaled
    training inputs) and ``history`` (one record per epoch).
    """
    header = {"format": FORMAT, "version": VERSION, "fastnn": __version__, "sizes": net.sizes,
              "activation": net.activations[0].name if len(net.sizes) > 2 else None,  # None: no hidden layer
              "output": net.activations[-1].name, "cost": net.cost.name, "dtype": net.dtype.name}
    if isinstance(net.seed, numbers.Integral):
        header["seed"] = int(net.seed)
    if getattr(net, "dataset", None):
        header["dataset"] = dict(net.dataset)
    if getattr(net, "input_scale", None) is not None:
        header["input_scale"] = net.input_scale
    if getattr(net, "input_range", None) is not None:
        header["input_range"] = list(net.input_range)
    if history is not None:
        header["history"] = list(history.records)
    return header


def _model_arrays(net, flat=None, history=None):
    """The header and the W_l, b_l arrays of ``net``, or of the flat parameter buffer ``flat``."""
    ws, bs = net._views(net.backend.to_host(net.params if flat is None else flat))
    arrays = {"header": np.array(json.dumps(model_header(net, history)))}
    for i, (w, b) in enumerate(zip(ws, bs)):
        arrays[f"W{i}"], arrays[f"b{i}"] = w, b.reshape(-1)
    return arrays


def _write(path, arrays, what):
    remove_stale(path.parent)
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError as e:
        raise ModelFileError(f"cannot write {what} {path}: {e.strerror or e}") from e


def save_model(net, path, extra=None, history=None):
    """Write ``net`` to ``path`` (.npz) with its training ``history`` (default ``net.history``); ``extra`` adds arrays."""
    path = validate.as_path(path, "model path")
    extra = validate.extra_arrays(extra, ("header", "training", "velocity"))
    history = history if history is not None else getattr(net, "history", None)
    if history is not None and records.history_problem(getattr(history, "records", None)) is not None:
        raise ConfigError(f"history must be a fastnn.History (or None); got {type(history).__name__}")
    _write(path, {**_model_arrays(validate.network(net), history=history), **extra}, "model file")


def _open(path, what):
    """The model file or checkpoint at ``path`` as an open ``readers.Npz``."""
    path = validate.as_path(path, f"{what} path")
    if not path.exists():
        raise ModelFileError(f"{what} {path} does not exist")
    if path.is_dir():
        raise ModelFileError(f"{what} {path} is a folder; expected a file written by fastnn")
    return readers.Npz(path, f"{path} is not a readable fastnn {what} (truncated or corrupt?)", ModelFileError,
                       expected=f"a {what} written by fastnn")


def _record(npz, name):
    """(the JSON record ``name`` of ``npz``, None), or (None, why it is not JSON)."""
    text = npz.text(name)
    try:
        return json.loads(text), None
    except RecursionError:
        return None, "nested too deeply"
    except ValueError as e:
        return None, readers.one_line(e)


def _short(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _header_problem(header):
    """None when the fields of a model header have the right types, else what is wrong."""
    missing = [k for k in ("sizes", "activation", "output", "cost", "dtype") if k not in header]
    if missing:
        return f"it lacks {', '.join(missing)}"
    sizes = header["sizes"]
    if not (isinstance(sizes, list) and len(sizes) >= 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes)):
        return f"sizes must be a list of two or more integers >= 1; got {_short(sizes)}"
    for key in ("activation", "output", "cost", "dtype", "fastnn"):
        value = header.get(key, "")
        if not isinstance(value, str) and not (key == "activation" and value is None):
            return f"{key} must be a name (a string); got {_short(value)}"
    if len(sizes) > 2 and header["activation"] is None:
        return "activation must be a name (a string) for a network with hidden layers; got None"
    seed = header.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        return f"seed must be an integer >= 0 (or absent); got {_short(seed)}"
    scale, span = header.get("input_scale"), header.get("input_range")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0
                              or not math.isfinite(scale)):
        return f"input_scale must be a number > 0 (or absent); got {_short(scale)}"
    if span is not None and not (isinstance(span, list) and len(span) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in span)):
        return f"input_range must be [min, max] (or absent); got {_short(span)}"
    history = header.get("history")
    return records.dataset_problem(header.get("dataset")) or (
        None if history is None else records.history_problem(history))


def read_header(path, npz, what="model file"):
    """The JSON header of the open model file ``npz``, its fields type-checked."""
    header, problem = _record(npz, "header") if "header" in npz.names else (None, None)
    if problem:
        raise ModelFileError(f"{path} is not a fastnn {what} (its header is not JSON: {problem})")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a fastnn {what} (no fastnn header)")
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path} has an invalid header: version must be an integer >= 1; got {_short(version)}")
    if version > VERSION:
        raise ModelFileError(
            f"{path} has model format version {version}, newer than this fastnn {__version__} reads "
            f"({VERSION}): upgrade fastnn")
    problem = _header_problem(header)
    if problem:
        raise ModelFileError(f"{path} has an invalid header: {problem}")
    return header


def read_parameters(path, npz, sizes, prefix=""):
    """The W_l, b_l arrays that ``sizes`` calls for, each checked against it before it is read (named
    ``prefix`` + W_l: an ensemble's members)."""
    n = len(sizes) - 1
    missing = [prefix + k for i in range(n) for k in (f"W{i}", f"b{i}") if prefix + k not in npz.names]
    if missing:
        raise ModelFileError(f"{path} lacks the arrays {', '.join(missing)}")
    arrays = {}
    for i in range(n):
        for key, expected in ((prefix + f"W{i}", (sizes[i + 1], sizes[i])), (prefix + f"b{i}", (sizes[i + 1],))):
            shape, dtype = npz.describe(key)
            if dtype.kind not in "biuf":
                raise ModelFileError(f"{path}: array {key} must hold numbers; got dtype {dtype}")
            fits = shape == expected if len(expected) == 2 else len(shape) <= 2 and math.prod(shape) == expected[0]
            if not fits:
                kind = key[len(prefix)]
                raise ModelFileError(f"{path}: layer {i}: expected {kind} {expected} for the header's sizes "
                                     f"{_short(sizes)}; got {kind} {shape}")
            arrays[key] = npz.array(key, math.prod(expected) * dtype.itemsize)
    return arrays


def _network(path, header, arrays, device):
    """A Network on ``device`` built from a validated header and filled with the file's arrays."""
    from .network import Network

    sizes = header["sizes"]
    # Without a hidden layer the hidden activation is unused (files before 0.1.1 wrote the output's).
    activation = "sigmoid" if len(sizes) == 2 else header["activation"]
    backend = get_backend(device)  # outside the try: an unusable device is the device's fault, not the file's
    try:
        net = Network(sizes, activation=activation, output=header["output"], cost=header["cost"],
                      device=backend, dtype=header["dtype"])
    except FastnnError as e:
        raise ModelFileError(f"{path} has an invalid header: {e}") from e
    net.seed = header.get("seed")
    net.dataset = header.get("dataset")
    net.input_scale = header.get("input_scale")
    net.input_range = tuple(header["input_range"]) if header.get("input_range") else None
    if header.get("history") is not None:
        from .train import History  # train imports this module

        net.history = History(header["history"])
    n = len(net.sizes) - 1
    try:
        net.set_parameters([arrays[f"W{i}"] for i in range(n)], [arrays[f"b{i}"] for i in range(n)])
    except FastnnError as e:
        raise ModelFileError(f"{path}: {e}") from e
    return net


def load_model(path, device="auto"):
    """Read a model file (or a checkpoint) into a new Network on ``device``.

    Only the header and the weights are read (a checkpoint's training state is not), each
    array checked against the header before it is decompressed.  An ensemble file (``fastnn.ensemble``)
    gives an Ensemble, which predicts and evaluates as a Network does.
    """
    with _open(path, "model file") as npz:
        record = _record(npz, "header")[0] if "header" in npz.names else None
        if isinstance(record, dict) and record.get("format") == "fastnn-ensemble":
            from . import ensemble  # it imports this module

            return ensemble.read(path, npz, record, device)
        header = read_header(path, npz)
        arrays = read_parameters(path, npz, header["sizes"])
    return _network(path, header, arrays, device)


def checkpoint_file(path):
    """The checkpoint file of ``path``: ``path`` itself when it is a file, else path/checkpoint.npz."""
    path = Path(path)
    return path if path.is_file() else path / CHECKPOINT_FILE


def save_checkpoint(directory, net, state):
    """Write ``net``'s architecture and ``state`` (weights, momentum, generator, epoch, history,
    settings as the last completed epoch left them) to ``directory``/checkpoint.npz, atomically."""
    directory = validate.as_path(directory, "checkpoint folder")
    if directory.exists() and not directory.is_dir():
        raise ModelFileError(f"checkpoint folder {directory} is a file; expected a folder")
    validate.started_state(validate.network(net), state)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelFileError(f"cannot make checkpoint folder {directory}: {e.strerror or e}") from e
    arrays = _model_arrays(net, state.params)
    training = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": state.epoch,
                "rng": state.rng, "settings": state.settings, "history": state.history.records}
    if getattr(state, "fingerprint", None):
        training["fingerprint"] = state.fingerprint
    arrays["training"] = np.array(json.dumps(training))
    if state.velocity is not None:
        arrays["velocity"] = net.backend.to_host(state.velocity)
    _write(directory / CHECKPOINT_FILE, arrays, "checkpoint")


def _whole(value, low, high):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < high


def rng_state_problem(state, kind):
    """None when ``state`` is a valid ``bit_generator.state`` of numpy's ``kind`` (PCG64), else what is wrong."""
    if not isinstance(state, dict) or state.get("bit_generator") != kind:
        return f"expected the state of a {kind} generator; got {_short(state)}"
    inner = state.get("state")
    if kind == "PCG64":
        if not isinstance(inner, dict) or not all(_whole(inner.get(k), 0, 1 << 128) for k in ("state", "inc")):
            return f"state and inc must be integers in [0, 2**128); got {_short(inner)}"
        if inner["inc"] % 2 == 0:
            return f"a PCG64 increment is odd; got {inner['inc']}"
        if state.get("has_uint32") not in (0, 1) or not _whole(state.get("uinteger"), 0, 1 << 32):
            return (f"has_uint32 must be 0 or 1 and uinteger in [0, 2**32); got {_short(state.get('has_uint32'))} "
                    f"and {_short(state.get('uinteger'))}")
    return None


def _checkpoint_path(path):
    """The checkpoint file of ``path`` (a checkpoint folder or the file in it), checked to exist."""
    folder = validate.as_path(path, "checkpoint path")
    if not folder.exists():
        raise ModelFileError(f"checkpoint {path} does not exist")
    kind = readers.file_kind(folder)
    if kind not in (None, "a folder"):
        raise ModelFileError(f"checkpoint {path} is {kind}; expected a checkpoint folder or its checkpoint.npz")
    file = checkpoint_file(path)
    if not file.exists():
        raise ModelFileError(f"{path} holds no checkpoint: expected {file}, written by fit(checkpoint=...) "
                             f"or --checkpoint")
    return file


def _training(file, npz):
    """The checked training record of the open checkpoint ``npz``."""
    if "training" not in npz.names:
        raise ModelFileError(f"{file} is a fastnn model file, not a checkpoint: it holds no training state")
    training, problem = _record(npz, "training")
    if problem:
        raise ModelFileError(f"{file} has an unreadable training record ({problem}); expected fastnn checkpoint "
                             "JSON")
    _check_training(file, training)
    return training


def read_run(path):
    """(header, training record) of the checkpoint at ``path``, checked, without reading its arrays: the
    settings of the run it holds (``fastnn train --resume`` takes its defaults from them)."""
    file = _checkpoint_path(path)
    with _open(file, "checkpoint") as npz:
        return read_header(file, npz, "checkpoint"), _training(file, npz)


def load_checkpoint(path, device="auto"):
    """Read a checkpoint written by ``save_checkpoint`` (a folder, or the file in it): (Network, TrainState).

    The network holds the weights and the generator state of the checkpoint's last completed
    epoch; pass both to ``Network.fit(..., state=state)`` to continue the run.
    """
    file = _checkpoint_path(path)
    with _open(file, "checkpoint") as npz:
        header = read_header(file, npz, "checkpoint")
        training = _training(file, npz)
        settings = training["settings"]
        arrays = read_parameters(file, npz, header["sizes"])
        velocity = None
        if "velocity" in npz.names:
            sizes = header["sizes"]
            n_params = sum(o * i + o for o, i in zip(sizes[1:], sizes[:-1]))
            shape, dtype = npz.describe("velocity")
            if shape != (n_params,) or dtype.name != header["dtype"]:
                raise ModelFileError(f"{file}: the momentum buffer must be {n_params} finite {header['dtype']} "
                                     f"numbers; got {dtype} {shape}")
            velocity = npz.array("velocity", n_params * dtype.itemsize)
    net = _network(file, header, arrays, device)
    generator = type(net.rng.bit_generator).__name__
    problem = rng_state_problem(training.get("rng"), generator)
    if problem:
        raise ModelFileError(f"{file} has an invalid random generator state: {problem}")
    try:
        net.rng.bit_generator.state = training["rng"]
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise ModelFileError(f"{file} has an invalid random generator state "
                             f"(expected {generator}'s): {readers.one_line(e)}") from e
    if (velocity is None) != (settings["momentum"] == 0):
        raise ModelFileError(f"{file} has momentum {settings['momentum']} but "
                             f"{'no' if velocity is None else 'a'} momentum buffer")
    if velocity is not None:
        if not np.isfinite(velocity).all():
            raise ModelFileError(f"{file}: the momentum buffer must be {net.params.size} finite {net.dtype} "
                                 f"numbers; got NaN or infinity")
        velocity = net.backend.to_device(velocity)
    with net.backend.activate():  # the copy is made on the current device: the network's
        params = net.params.copy()
    state = TrainState.from_parts(training["epoch"], params, velocity, net.rng.bit_generator.state,
                                  training["history"], settings)
    state.fingerprint = training.get("fingerprint")
    return net, state


def _check_training(file, training):
    """The settings of a checkpoint's training record, after checking every field of the record."""
    if not isinstance(training, dict) or training.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{file} has an unreadable training record; expected fastnn checkpoint JSON")
    version = training.get("version")
    if not _whole(version, 1, CHECKPOINT_VERSION + 1):
        raise ModelFileError(f"{file} has checkpoint format version {_short(version)}; this fastnn {__version__} "
                             f"reads version {CHECKPOINT_VERSION}: upgrade fastnn")
    epoch, settings, history = training.get("epoch"), training.get("settings"), training.get("history")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ModelFileError(f"{file} has an invalid training record: epoch must be an integer >= 0; "
                             f"got {_short(epoch)}")
    problem = records.settings_problem(settings, SETTINGS)
    if problem:
        raise ModelFileError(f"{file} has an invalid training record: {problem}")
    if not isinstance(history, list) or len(history) != epoch:
        raise ModelFileError(f"{file} has an invalid training record: expected one history entry per epoch "
                             f"({epoch}); got {len(history) if isinstance(history, list) else _short(history)}")
    problem = records.history_problem(history)
    if problem:
        raise ModelFileError(f"{file} has an invalid training record: {problem}")
    fingerprint = training.get("fingerprint")
    if fingerprint is not None and not (isinstance(fingerprint, str) and len(fingerprint) <= 128):
        raise ModelFileError(f"{file} has an invalid training record: fingerprint must be text; got "
                             f"{_short(fingerprint)}")
    return settings
