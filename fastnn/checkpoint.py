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
import os
import tempfile
from pathlib import Path

import numpy as np

from . import __version__, validate
from .backend import get_backend
from .data import read_npz
from .errors import FastnnError, ModelFileError
from .state import SETTINGS, TrainState

FORMAT = "fastnn-model"
VERSION = 1
CHECKPOINT_FORMAT = "fastnn-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.npz"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # as open() would make it, not mkstemp's 0600
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def model_header(net, history=None):
    """The JSON-able description of ``net`` that a model file carries.

    Optional fields, absent from older files: ``dataset`` (``net.dataset``: what it was trained on, a
    dict with ``name``, ``data_dir`` and ``validation_size``) and ``history`` (one record per epoch).
    """
    header = {"format": FORMAT, "version": VERSION, "fastnn": __version__, "sizes": net.sizes,
              "activation": net.activations[0].name if len(net.sizes) > 2 else None,  # None: no hidden layer
              "output": net.activations[-1].name, "cost": net.cost.name, "dtype": net.dtype.name}
    if isinstance(net.seed, numbers.Integral):
        header["seed"] = int(net.seed)
    if getattr(net, "dataset", None):
        header["dataset"] = dict(net.dataset)
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
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError as e:
        raise ModelFileError(f"cannot write {what} {path}: {e.strerror or e}") from e


def save_model(net, path, extra=None, history=None):
    """Write ``net`` to ``path`` (.npz) with its training ``history`` (default ``net.history``); ``extra`` adds arrays."""
    path = validate.as_path(path, "model path")
    history = history if history is not None else getattr(net, "history", None)
    _write(path, {**_model_arrays(net, history=history), **(extra or {})}, "model file")


def read_model_file(path, what="model file"):
    """Return (header dict, {name: array}) of a model file, validated as a fastnn file."""
    path = validate.as_path(path, f"{what} path")
    if not Path(path).exists():
        raise ModelFileError(f"{what} {path} does not exist")
    if Path(path).is_dir():
        raise ModelFileError(f"{what} {path} is a folder; expected a file written by fastnn")
    arrays = read_npz(path, f"{path} is not a readable fastnn {what} (truncated or corrupt?)", ModelFileError)
    try:
        header = json.loads(str(arrays.pop("header")))
        ok = isinstance(header, dict) and header.get("format") == FORMAT
    except (KeyError, ValueError):
        ok = False
    if not ok:
        raise ModelFileError(f"{path} is not a fastnn {what} (no fastnn header)")
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path} has an invalid header: version must be an integer >= 1; got {version!r}")
    if version > VERSION:
        raise ModelFileError(
            f"{path} has model format version {version}, newer than this fastnn {__version__} reads "
            f"({VERSION}): upgrade fastnn")
    return header, arrays


def _network(path, header, arrays, device):
    """A Network on ``device`` built from a validated header and filled with the file's arrays."""
    from .network import Network

    missing = [k for k in ("sizes", "activation", "output", "cost", "dtype") if k not in header]
    if missing:
        raise ModelFileError(f"{path} has an invalid header: it lacks {', '.join(missing)}")
    sizes = header["sizes"]
    # Without a hidden layer the hidden activation is unused (files before 0.1.1 wrote the output's).
    activation = "sigmoid" if isinstance(sizes, list) and len(sizes) == 2 else header["activation"]
    try:
        net = Network(sizes, activation=activation, output=header["output"], cost=header["cost"],
                      device=get_backend(device), dtype=header["dtype"])
    except FastnnError as e:
        raise ModelFileError(f"{path} has an invalid header: {e}") from e
    seed = header.get("seed")
    net.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    dataset, history = header.get("dataset"), header.get("history")
    net.dataset = dataset if isinstance(dataset, dict) and isinstance(dataset.get("name"), str) else None
    if isinstance(history, list) and all(isinstance(r, dict) for r in history):
        from .train import History  # train imports this module

        net.history = History(history)
    n = len(net.sizes) - 1
    names = [k for i in range(n) for k in (f"W{i}", f"b{i}")]
    missing = [k for k in names if k not in arrays]
    if missing:
        raise ModelFileError(f"{path} lacks the arrays {', '.join(missing)}")
    for k in names:
        if arrays[k].dtype.kind not in "biuf":
            raise ModelFileError(f"{path}: array {k} must hold numbers; got dtype {arrays[k].dtype}")
    try:
        net.set_parameters([arrays[f"W{i}"] for i in range(n)], [arrays[f"b{i}"] for i in range(n)])
    except FastnnError as e:
        raise ModelFileError(f"{path}: {e}") from e
    return net


def load_model(path, device="auto"):
    """Read a model file (or a checkpoint) into a new Network on ``device``."""
    header, arrays = read_model_file(path)
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
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelFileError(f"cannot make checkpoint folder {directory}: {e.strerror or e}") from e
    arrays = _model_arrays(net, state.params)
    training = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": state.epoch,
                "rng": state.rng, "settings": state.settings, "history": state.history.records}
    arrays["training"] = np.array(json.dumps(training))
    if state.velocity is not None:
        arrays["velocity"] = net.backend.to_host(state.velocity)
    _write(directory / CHECKPOINT_FILE, arrays, "checkpoint")


def _settings_ok(settings):
    if not isinstance(settings, dict) or any(k not in settings for k in SETTINGS):
        return False
    whole = [settings[k] for k in ("batch_size", "n_train")]
    reals = [settings[k] for k in ("lr", "momentum", "l2")]
    return (all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in whole)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in reals)
            and isinstance(settings["shuffle"], bool))


def load_checkpoint(path, device="auto"):
    """Read a checkpoint written by ``save_checkpoint`` (a folder, or the file in it): (Network, TrainState).

    The network holds the weights and the generator state of the checkpoint's last completed
    epoch; pass both to ``Network.fit(..., state=state)`` to continue the run.
    """
    folder = validate.as_path(path, "checkpoint path")
    if not folder.exists():
        raise ModelFileError(f"checkpoint {path} does not exist")
    file = checkpoint_file(path)
    if not file.exists():
        raise ModelFileError(f"{path} holds no checkpoint: expected {file}, written by fit(checkpoint=...) "
                             f"or --checkpoint")
    header, arrays = read_model_file(file, "checkpoint")
    if "training" not in arrays:
        raise ModelFileError(f"{file} is a fastnn model file, not a checkpoint: it holds no training state")
    try:
        training = json.loads(str(arrays.pop("training")))
    except ValueError:
        training = None
    if not isinstance(training, dict) or training.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{file} has an unreadable training record; expected fastnn checkpoint JSON")
    version = training.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise ModelFileError(f"{file} has checkpoint format version {version!r}; this fastnn {__version__} "
                             f"reads version {CHECKPOINT_VERSION}: upgrade fastnn")
    epoch, settings, history = training.get("epoch"), training.get("settings"), training.get("history")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ModelFileError(f"{file} has an invalid training record: epoch must be an integer >= 0; got {epoch!r}")
    if not _settings_ok(settings):
        raise ModelFileError(f"{file} has an invalid training record: settings must give {', '.join(SETTINGS)}; "
                             f"got {settings!r}")
    if not isinstance(history, list) or len(history) != epoch or not all(isinstance(r, dict) for r in history):
        raise ModelFileError(f"{file} has an invalid training record: expected one history entry per epoch "
                             f"({epoch}); got {len(history) if isinstance(history, list) else history!r}")
    net = _network(file, header, arrays, device)
    try:
        net.rng.bit_generator.state = training.get("rng")
    except (TypeError, ValueError, KeyError) as e:
        raise ModelFileError(f"{file} has an invalid random generator state "
                             f"(expected {type(net.rng.bit_generator).__name__}'s): {e}") from e
    velocity = arrays.get("velocity")
    if (velocity is None) != (settings["momentum"] == 0):
        raise ModelFileError(f"{file} has momentum {settings['momentum']} but "
                             f"{'no' if velocity is None else 'a'} momentum buffer")
    if velocity is not None:
        if velocity.shape != net.params.shape or velocity.dtype != net.dtype or not np.isfinite(velocity).all():
            raise ModelFileError(f"{file}: the momentum buffer must be {net.params.size} finite {net.dtype} "
                                 f"numbers; got {velocity.dtype} {velocity.shape}")
        velocity = net.backend.to_device(velocity)
    state = TrainState.from_parts(epoch, net.params.copy(), velocity, net.rng.bit_generator.state, history,
                                  settings)
    return net, state
