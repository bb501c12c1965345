"""Inputs for ``fastnn predict``: rows of features read from .npy, .npz, .csv or an IDX image file, and the answers written out.

Inputs are checked as training data is (shape against the model, numbers, finite: see
``fastnn.validate.features``) and scaled by the one input rule (``fastnn.inputs``): whole numbers
(uint8 or int64 arrays, a CSV of whole numbers) are divided by the model's input scale, 255 for a
model trained on pixels, exactly as ``Network.predict`` does with the same array.
"""

import io
from pathlib import Path

import numpy as np

from . import readers, validate
from .data import read_idx
from .errors import ConfigError, DataError, ModelFileError
from .files import atomic_write

NPZ_KEYS = ("x", "X", "x_test", "inputs")  # the array a .npz of inputs is read from, first found
OUT_FORMATS = (".csv", ".npy")


def _rows(a, path):
    """``a`` as rows of features: one example per row, images flattened, the dtype kept (the model scales it)."""
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim < 2 or a.dtype.kind not in "biuf":
        raise DataError(f"{path} must hold numbers, one example per row; got {a.dtype} {a.shape}")
    if len(a) == 0 or a[0].size == 0:
        raise DataError(f"{path} holds no examples (shape {a.shape}); nothing to predict")
    return a.reshape(len(a), -1)


def read_inputs(path):
    """The examples in ``path`` as a 2-D numpy array (n, features), read by its extension or content."""
    path = validate.as_path(path, "input")
    if not path.exists():
        raise DataError(f"input file {path} does not exist")
    if not path.is_file():
        raise DataError(f"input {path} is not a file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _rows(readers.read_npy(path, f"cannot read {path} as .npy (truncated or corrupt?)", DataError,
                                      readers.host_memory()), path)
    if suffix == ".npz":
        with readers.Npz(path, f"cannot read {path} as .npz (truncated or corrupt?)", DataError) as npz:
            names = npz.names
            key = next((k for k in NPZ_KEYS if k in names), names[0] if len(names) == 1 else None)
            if key is None:
                raise DataError(f"{path} holds {', '.join(names) or 'no arrays'}; expected one array, or one named "
                                f"{', '.join(NPZ_KEYS)}")
            return _rows(npz.array(key, readers.host_memory()), f"{path}[{key}]")
    if suffix == ".csv":
        return _read_csv(path)
    try:
        return _rows(read_idx(path), path)  # IDX (gzip or raw), told apart by its magic number
    except DataError as e:
        raise DataError(f"{e}; inputs are .npy, .npz, .csv or IDX image files") from None


def _read_csv(path):
    """Numeric rows of a CSV file (UTF-8, a byte-order mark allowed).

    A first line that is not numbers is a header, and so is one that numbers the columns 0, 1, …, n-1
    as ``pandas.DataFrame.to_csv(index=False)`` writes (followed by rows of data).  The file is refused before it is parsed when
    its numbers could need more memory than the process may allocate.
    """
    try:
        size = path.stat().st_size
        if 4 * size > readers.host_memory():  # float64 rows of values at least two bytes apart ("0,"), and the text
            raise DataError(f"{path} is {readers.describe_bytes(size)} of text, whose numbers could need "
                            f"{readers.describe_bytes(4 * size)}, more than this process may allocate: "
                            f"{readers.memory_words()}")
        with readers.open_regular(path, DataError, "a CSV file of numbers") as f:
            lines = [line for line in f.read().decode("utf-8-sig").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from e
    if lines and (not _numeric(lines[0]) or (len(lines) > 1 and _column_numbers(lines[0]))):
        lines = lines[1:]
    if not lines:
        raise DataError(f"{path} holds no rows of numbers")
    try:
        rows = [[float(v) for v in line.split(",")] for line in lines]
    except ValueError as e:
        row = next(i for i, line in enumerate(lines) if not _numeric(line))
        raise DataError(f"{path}: row {row} is not comma-separated numbers ({e})") from None
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise DataError(f"{path}: rows have different numbers of values ({', '.join(map(str, sorted(widths)))})")
    rows = np.array(rows)
    if np.isfinite(rows).all() and (rows == np.round(rows)).all() and np.abs(rows).max() < 2 ** 53:
        return rows.astype(np.int64)  # whole numbers, such as 0-255 pixels: scaled as an int64 .npy would be
    return rows


def _column_numbers(line):
    """Whether ``line`` reads 0,1,…,n-1: pandas' column names, not an example."""
    values = [v.strip() for v in line.split(",")]
    return len(values) > 1 and values == [str(i) for i in range(len(values))]


def _numeric(line):
    try:
        [float(v) for v in line.split(",")]
    except ValueError:
        return False
    return True


def check_out(path):
    """Check ``--out`` for predictions: a writable .csv or .npy path."""
    path = validate.writable_file(path, "--out")
    if path.suffix.lower() not in OUT_FORMATS:
        raise ConfigError(f"--out {path}: predictions are written as {' or '.join(OUT_FORMATS)}; got {path.suffix!r}")
    return path


def lines(answers):
    """Text lines of ``answers``: one label (or regression output) per line, or one comma-separated row of
    outputs per line."""
    if answers.ndim == 1 and answers.dtype.kind in "iu":
        return [str(int(v)) for v in answers]
    if answers.ndim == 1:
        return [f"{v:.6g}" for v in answers]
    return [",".join(f"{v:.6g}" for v in row) for row in answers]


def write(answers, path):
    """Write ``answers`` (labels (n,) or outputs (n, k)) to ``path``, .csv or .npy, atomically."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, answers)
        data = buffer.getvalue()
    else:
        data = "".join(line + "\n" for line in lines(answers)).encode()
    try:
        atomic_write(path, lambda f: f.write(data))
    except OSError as e:
        raise ModelFileError(f"cannot write {path}: {e.strerror or e}") from e
