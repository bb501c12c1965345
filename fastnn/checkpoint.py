"""Model files: one .npz with the weights (W0, b0, W1, b1, …) and a JSON header, written atomically.

Loading validates everything: that it is a fastnn file, its format version, the names of its
activations and cost, and that every array has the shape the header's sizes call for.
"""

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from . import __version__
from .backend import get_backend
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
    return {"format": FORMAT, "version": VERSION, "fastnn": __version__, "sizes": net.sizes,
            "activation": net.activations[0].name if len(net.sizes) > 2 else net.activations[-1].name,
            "output": net.activations[-1].name, "cost": net.cost.name, "dtype": net.dtype.name}


def save_model(net, path, extra=None):
    """Write ``net`` to ``path`` (.npz); ``extra`` adds arrays (e.g. optimizer state)."""
    arrays = {"header": np.array(json.dumps(model_header(net)))}
    for i, (w, b) in enumerate(zip(net.weights, net.biases)):
        arrays[f"W{i}"], arrays[f"b{i}"] = w, b
    arrays.update(extra or {})
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError as e:
        raise ModelFileError(f"cannot write model file {path}: {e.strerror or e}") from e


def read_model_file(path):
    """Return (header dict, {name: array}) of a model file, validated as a fastnn file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError as e:
        raise ModelFileError(f"model file {path} does not exist") from e
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ModelFileError(f"{path} is not a readable fastnn model file (truncated or corrupt?): {e}") from e
    try:
        header = json.loads(str(arrays.pop("header")))
        ok = header.get("format") == FORMAT
    except (KeyError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise ModelFileError(f"{path} is not a fastnn model file (no fastnn header)")
    if not isinstance(header.get("version"), int) or header["version"] > VERSION:
        raise ModelFileError(
            f"{path} has model format version {header.get('version')!r}, newer than this fastnn "
            f"{__version__} reads ({VERSION}): upgrade fastnn")
    return header, arrays


def load_model(path, device="auto"):
    """Read a model file into a new Network on ``device``."""
    from .network import Network

    header, arrays = read_model_file(path)
    backend = get_backend(device)
    try:
        net = Network(header["sizes"], activation=header["activation"], output=header["output"],
                      cost=header["cost"], device=backend, dtype=header["dtype"])
    except KeyError as e:
        raise ModelFileError(f"{path} header lacks {e}") from e
    except FastnnError as e:
        raise ModelFileError(f"{path} has an invalid header: {e}") from e
    n = len(header["sizes"]) - 1
    missing = [k for i in range(n) for k in (f"W{i}", f"b{i}") if k not in arrays]
    if missing:
        raise ModelFileError(f"{path} lacks the arrays {', '.join(missing)}")
    try:
        net.set_parameters([arrays[f"W{i}"] for i in range(n)], [arrays[f"b{i}"] for i in range(n)])
    except FastnnError as e:
        raise ModelFileError(f"{path}: {e}") from e
    return net
