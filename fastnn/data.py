"""Datasets: IDX files (MNIST, Fashion-MNIST) found on disk or downloaded, and user .npz files.

Every file read is validated whatever its source: magic number, dimensions, sizes, counts
and label range.  Images come back as float32 rows in [0, 1], labels as int64.
"""

import contextlib
import gzip
import math
import os
from pathlib import Path

import numpy as np

from . import download, inputs, readers, validate
from .errors import ConfigError, DataError, DownloadError, ShapeError

SPLITS = ("train", "t10k")
KINDS = {"images": "idx3-ubyte", "labels": "idx1-ubyte"}

# Published md5 sums of the .gz files the mirrors serve.
DATASETS = {
    "mnist": {
        "mirrors": [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ],
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
    "fashion-mnist": {
        "mirrors": [
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ],
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
}

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """Read an IDX file (gzip or raw, told apart by content) into a numpy array, validating it.

    The dimensions are checked against the file's size (a gzip file cannot hold more than
    ``readers.DEFLATE_RATIO`` times its size) and the machine's memory before the array is made.
    """
    path = Path(path)
    try:
        with readers.open_regular(path, DataError, "an IDX file (.gz or raw)") as f:
            size = os.fstat(f.fileno()).st_size
            zipped = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            if not zipped and path.suffix == ".gz":
                raise DataError(f"{path} is named .gz but is not gzip data")
            with gzip.GzipFile(fileobj=f) if zipped else contextlib.nullcontext(f) as stream:
                return _read_idx_stream(path, stream, size, zipped)
    except readers.DECODING_ERRORS as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot read {path}: {readers.one_line(e)}") from e


def _read_idx_stream(path, stream, size, zipped):
    head = stream.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in IDX_TYPES or head[3] == 0:
        raise DataError(f"{path} is not an IDX file (bad magic number {head.hex() or 'none'})")
    ndim = head[3]
    header = 4 + 4 * ndim
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{path} is truncated: its header needs {header} bytes, it has {4 + len(dims)}")
    shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
    dtype = np.dtype(IDX_TYPES[head[2]])
    need = header + math.prod(shape) * dtype.itemsize
    if not zipped and size != need:
        problem = "is truncated" if size < need else "has trailing bytes"
        raise DataError(f"{path} {problem}: dimensions {shape} need {need} bytes, it has {size}")
    if need > size * readers.DEFLATE_RATIO + 1024:
        raise DataError(f"{path} is corrupt: dimensions {shape} need {readers.describe_bytes(need)}, more than a "
                        f"gzip file of {size} bytes can hold")
    if need > readers.host_memory():
        raise DataError(f"{path}: dimensions {shape} need {readers.describe_bytes(need)}, more than this process "
                        f"may allocate: {readers.memory_words()}")
    out = np.empty(shape, dtype)
    got = header + readers.read_exactly(stream, out)
    if got < need:
        raise DataError(f"{path} is truncated: dimensions {shape} need {need} bytes, it has {got}")
    more = 0
    while more <= size * readers.DEFLATE_RATIO and (block := stream.read(readers.CHUNK)):
        more += len(block)
    if more:
        raise DataError(f"{path} has trailing bytes: dimensions {shape} need {need} bytes, it has {need + more}")
    return out


def read_idx_pair(images_path, labels_path, n_classes=10):
    """Read matching image and label IDX files: X (n, rows*cols) float32 in [0, 1], y (n,) int64."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path} must hold uint8 images (n, rows, cols); got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"{labels_path} must hold uint8 labels (n,); got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if labels.size and labels.max() >= n_classes:
        raise DataError(f"{labels_path} has label {labels.max()}; expected 0..{n_classes - 1}")
    X = images.reshape(len(images), images.shape[1] * images.shape[2]).astype(np.float32)
    X *= np.float32(1 / 255)
    return X, labels.astype(np.int64)


def _find_file(folder, split, kind):
    stem = f"{split}-{kind}-{KINDS[kind]}"
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete(folder, splits=SPLITS):
    """The files of ``splits`` in ``folder`` as {(split, kind): path}, or None when any is missing."""
    found = {(s, k): _find_file(folder, s, k) for s in splits for k in KINDS}
    return found if all(found.values()) else None


def _missing(folder, splits=SPLITS):
    """The names of the IDX files of ``splits`` that ``folder`` lacks (each may also be .gz)."""
    return [f"{s}-{k}-{KINDS[k]}(.gz)" for s in splits for k in KINDS if _find_file(folder, s, k) is None]


def cache_dir():
    """The user cache: $XDG_CACHE_HOME/fastnn, default ~/.cache/fastnn."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastnn"


def candidate_dirs(name, data_dir=None):
    """Folders searched for dataset ``name``, in order."""
    if data_dir is not None:
        return [Path(data_dir), Path(data_dir) / name]
    dirs = []
    if os.environ.get("FASTNN_DATA"):
        dirs.append(Path(os.environ["FASTNN_DATA"]) / name)
    return dirs + [cache_dir() / name, Path("/usr/share/datasets") / name]


def how_to_supply(name):
    """One sentence naming the ways to supply dataset ``name`` by hand."""
    files = ", ".join(DATASETS[name]["md5"])
    extra = "; or use --dataset fashion-mnist after 'apt-get install dataset-fashion-mnist'" if name == "mnist" else (
        "; on Debian: apt-get install dataset-fashion-mnist")
    return (f"supply it by hand: put the four IDX files ({files}, .gz or raw) in a folder and pass "
            f"--data-dir DIR, or put them in $FASTNN_DATA/{name} or {cache_dir() / name}{extra}")


def _mirrors(name):
    override = os.environ.get("FASTNN_MIRROR")
    return [m for m in override.split(",") if m] if override else DATASETS[name]["mirrors"]


def locate(name, data_dir=None, progress=None, splits=SPLITS):
    """Return {(split, kind): path} for the ``splits`` of dataset ``name``, downloading only their files into
    the cache if needed (evaluating needs the t10k files alone)."""
    for folder in candidate_dirs(name, data_dir):
        found = _complete(folder, splits)
        if found:
            return found
    if data_dir is not None:
        raise DataError(f"{data_dir} lacks the {name} IDX files {', '.join(_missing(Path(data_dir), splits))}: "
                        f"{how_to_supply(name)}")
    target = cache_dir() / name
    files = {f: md5 for f, md5 in DATASETS[name]["md5"].items() if f.startswith(tuple(f"{s}-" for s in splits))}
    try:
        download.fetch(files, _mirrors(name), target, progress=progress)
    except DownloadError as e:
        raise DownloadError(f"{name} was not found on disk and {e}; {how_to_supply(name)}") from e
    return _complete(target, splits)


def load_npz(path):
    """Read a user .npz with x_train, y_train, x_test, y_test; whole-number pixels (uint8, or integers in 0..255)
    are scaled to [0, 1] (the rule of ``fastnn.inputs``, decided by x_train for both splits); y: integer
    labels, or real targets (n,) or (n, k) for regression."""
    keys = ("x_train", "y_train", "x_test", "y_test")
    with readers.Npz(path, f"cannot read {path} as .npz (truncated or corrupt?)", DataError) as npz:
        missing = [k for k in keys if k not in npz.names]
        if missing:
            raise DataError(f"{path} lacks the arrays {', '.join(missing)} "
                            f"(needs x_train, y_train, x_test, y_test; has {', '.join(npz.names) or 'none'})")
        sizes = [math.prod(shape) * dtype.itemsize for shape, dtype in map(npz.describe, keys)]
        need, limit = sum(sizes), readers.host_memory()
        if max(sizes) <= limit < need:  # all four together, before any is read (one alone: npz.array says which)
            raise DataError(f"{path}: its arrays declare {readers.describe_bytes(need)} in all, more than this "
                            f"process may allocate: {readers.memory_words()}")
        found = {k: npz.array(k, readers.host_memory()) for k in keys}  # only these members are decompressed
    out, scale = [], None
    for split in ("train", "test"):
        x, y = found[f"x_{split}"], found[f"y_{split}"]
        if x.ndim < 2 or x.dtype.kind not in "biuf":
            raise DataError(f"x_{split} in {path} must be a numeric array (n, features...); got {x.dtype} {x.shape}")
        if len(x) == 0 or x[0].size == 0:
            raise DataError(f"x_{split} in {path} is empty: expected at least one example with at least one "
                            f"feature; got shape {x.shape}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            row = int(np.isfinite(x.reshape(len(x), -1)).all(axis=1).argmin())
            raise DataError(f"x_{split} in {path} must be finite; got NaN or infinity in example {row}")
        scale = scale or np.float32(1 / inputs.scale_of(x))  # x_train's rule, for both splits
        with np.errstate(over="ignore"):
            x = x.reshape(len(x), x[0].size).astype(np.float32) * scale
        if not np.isfinite(x).all():
            row = int(np.isfinite(x).all(axis=1).argmin())
            raise DataError(f"x_{split} in {path} must be within float32's range (±{np.finfo(np.float32).max:.4g}); "
                            f"got a larger value in example {row}")
        if y.dtype.kind == "f" and y.ndim in (1, 2) and len(y) == len(x):  # regression targets
            if not np.isfinite(y).all():
                raise DataError(f"y_{split} in {path} must be finite; got NaN or infinity")
            out += [x, y]
            continue
        if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
            raise DataError(f"y_{split} in {path} must be {len(x)} integer labels; got {y.dtype} {y.shape} (or real "
                            f"regression targets, (n,) or (n, k))")
        if y.min() < 0:
            raise DataError(f"y_{split} in {path} must hold class labels >= 0; got {y.min()}")
        out += [x, y.astype(np.int64)]
    if out[0].shape[1] != out[2].shape[1]:
        raise DataError(f"x_train and x_test in {path} differ in features: {out[0].shape[1]} vs {out[2].shape[1]}")
    return tuple(out)


def input_scale(name):
    """What the raw inputs of dataset ``name`` were divided by (``fastnn.inputs``): 255 for the IDX datasets'
    pixels and a .npz of whole numbers in 0..255, else 1.  Models trained on it record this."""
    if name in DATASETS:
        return inputs.PIXELS
    with readers.Npz(name, f"cannot read {name} as .npz (truncated or corrupt?)", DataError) as npz:
        dtype = npz.describe("x_train")[1]
        if dtype.kind not in "iu":
            return 1
        return inputs.scale_of(npz.array("x_train", readers.host_memory()))


def load_dataset(name, data_dir=None, progress=None):
    """Return (X_train, y_train, X_test, y_test) for "mnist", "fashion-mnist" or a path to a .npz.

    IDX datasets are looked for in ``data_dir``, $FASTNN_DATA/<name>, the user cache and
    /usr/share/datasets/<name>, and downloaded into the cache (checksums verified) otherwise.
    """
    name = str(name)
    if name.endswith(".npz"):
        if data_dir is not None:
            raise ConfigError(f"a data folder (--data-dir, data_dir=) is for mnist and fashion-mnist, not for the "
                              f".npz file {name}; got {data_dir}")
        if not Path(name).exists():
            raise DataError(f"dataset file {name} does not exist")
        if not Path(name).is_file():
            raise DataError(f"dataset file {name} is not a file")
        return load_npz(name)
    if data_dir is not None:
        data_dir = validate.as_path(data_dir, "data_dir")
    if name not in DATASETS:
        raise ConfigError(f"dataset must be one of {', '.join(DATASETS)} or a path to a .npz file; got {name!r}")
    found = locate(name, data_dir, progress)
    X_train, y_train = read_idx_pair(found["train", "images"], found["train", "labels"])
    X_test, y_test = read_idx_pair(found["t10k", "images"], found["t10k", "labels"])
    for path, X in ((found["train", "images"], X_train), (found["t10k", "images"], X_test)):
        if X.size == 0:
            raise DataError(f"{path} is empty: expected at least one image; got shape {X.shape}")
    if X_train.shape[1] != X_test.shape[1]:
        raise DataError(f"the training and test images of {name} differ in size: {X_train.shape[1]} vs "
                        f"{X_test.shape[1]} pixels ({found['train', 'images']}, {found['t10k', 'images']})")
    return X_train, y_train, X_test, y_test


def load_test_set(name, data_dir=None, progress=None):
    """Return (X_test, y_test) of dataset ``name``: a folder holding only the two t10k files is enough."""
    name = str(name)
    if name in DATASETS:
        for folder in candidate_dirs(name, data_dir):
            found = _complete(folder, ("t10k",))
            if found:
                return read_idx_pair(found["t10k", "images"], found["t10k", "labels"])
        if data_dir is not None:
            raise DataError(f"{data_dir} lacks the {name} test files {', '.join(_missing(Path(data_dir), ('t10k',)))}: "
                            f"{how_to_supply(name)}")
        found = locate(name, data_dir, progress, splits=("t10k",))  # the test files alone, not the training set
        return read_idx_pair(found["t10k", "images"], found["t10k", "labels"])
    return load_dataset(name, data_dir, progress)[2:]


def split_validation(X, y, size):
    """Carve the last ``size`` examples off as a validation set: (X_train, y_train, X_val, y_val)."""
    X, y = validate.as_array(X, "X"), validate.as_array(y, "y")
    if len(X.shape) == 0 or len(y.shape) == 0:
        raise ShapeError(f"X and y must be arrays of examples; got shapes {tuple(X.shape)} and {tuple(y.shape)}")
    n = len(X)
    if len(y) != n:
        raise ShapeError(f"X and y must hold the same number of examples; got {n} and {len(y)}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 0 <= size < n:
        raise ConfigError(f"validation size must be an integer in [0, {n - 1}] for {n} training examples; got {size!r}")
    return X[:n - size], y[:n - size], X[n - size:], y[n - size:]
