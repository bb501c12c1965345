"""Model files: one .npz with the weights (W0, b0, W1, b1, …) and a JSON header, written atomically.

Loading validates everything: that it is a fastnn file, its format version, the names of its
activations and cost, its dtype, and that every array has the shape, type and finiteness the
header calls for.
"""

import json
import numbers
import os
import tempfile
from pathlib import Path

import numpy as np

from . import __version__
from .backend import get_backend
from .data import read_npz
from .errors import FastnnError, ModelFileError

FORMAT = "fastnn-model"
VERSION = 1


def atomic_write(path, write):
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def model_header(net):
    """The JSON-able description of ``net`` that a model file carries."""
    header = {"format": FORMAT, "version": VERSION, "fastnn": __version__, "sizes": net.sizes,
              "activation": net.activations[0].name if len(net.sizes) > 2 else None,  # None: no hidden layer
              "output": net.activations[-1].name, "cost": net.cost.name, "dtype": net.dtype.name}
    if isinstance(net.seed, numbers.Integral):
        header["seed"] = int(net.seed)
    return header


def _model_arrays(net, flat=None):
    """The header and the W_l, b_l arrays of ``net``, or of the flat parameter buffer ``flat``."""
    ws, bs = net._views(net.backend.to_host(net.params if flat is None else flat))
    arrays = {"header": np.array(json.dumps(model_header(net)))}
    for i, (w, b) in enumerate(zip(ws, bs)):
        arrays[f"W{i}"], arrays[f"b{i}"] = w, b.reshape(-1)
    return arrays


def _write(path, arrays, what):
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError as e:
        raise ModelFileError(f"cannot write {what} {path}: {e.strerror or e}") from e


def save_model(net, path, extra=None):
    """Write ``net`` to ``path`` (.npz); ``extra`` adds arrays."""
    _write(path, {**_model_arrays(net), **(extra or {})}, "model file")


def read_model_file(path, what="model file"):
    """Return (header dict, {name: array}) of a model file, validated as a fastnn file."""
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
