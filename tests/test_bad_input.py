"""Every bad input a user can give the fastnn command, one row each, run end to end as a subprocess.

Each must end in exactly one line on stderr that starts with "fastnn: error:" and names what
was wrong, what was expected and what it got; no traceback; exit 2 for a bad option, 1 for
bad data or files.  The files each row needs are made in tmp_path by its ``make`` function.
"""

import gzip
import io
import json
import os
import re
import zipfile

import numpy as np
import pytest

from fastnn import (
    ConfigError,
    DataError,
    FastnnError,
    History,
    Network,
    ShapeError,
    TrainState,
    load_dataset,
    load_model,
    save_checkpoint,
    save_model,
    split_validation,
)
from fastnn.data import KINDS

from .conftest import absent_env, double_env, fastnn

CONFIG, FAILURE = 2, 1


def npz(name, **changes):
    """A maker for a 3-class .npz like ``tiny`` with some arrays replaced (None drops one)."""
    def make(tmp):
        rng = np.random.default_rng(0)
        arrays = {"x_train": rng.normal(size=(20, 4)), "y_train": rng.integers(0, 3, 20),
                  "x_test": rng.normal(size=(5, 4)), "y_test": rng.integers(0, 3, 5)}
        for key, value in changes.items():
            if value is None:
                del arrays[key]
            else:
                arrays[key] = value
        np.savez(tmp / name, **arrays)
    return make


def idx_bytes(array, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(">u1").tobytes()


def idx(**spoil):
    """A maker for the four MNIST IDX files in tmp/idx, with some replaced by raw bytes."""
    def make(tmp):
        folder = tmp / "idx"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for split, n in (("train", 6), ("t10k", 4)):
            for kind, arr in (("images", rng.integers(0, 256, (n, 28, 28))), ("labels", rng.integers(0, 10, n))):
                name = f"{split}-{kind}-{KINDS[kind]}.gz"
                raw = spoil.get(f"{split}_{kind}", gzip.compress(idx_bytes(arr)))
                (folder / name).write_bytes(raw(arr) if callable(raw) else raw)
    return make


def gz(array):
    return gzip.compress(idx_bytes(array))


def checkpoint(tmp, **training):
    """A real checkpoint of 'train --dataset tiny.npz --layers 4,8,3 --seed 1' after one epoch, in tmp/ck."""
    with np.load(tmp / "tiny.npz") as f:
        X, y = f["x_train"], f["y_train"]
    Network([4, 8, 3], device="cpu", seed=1).fit(X, y, epochs=1, batch_size=10, lr=3.0, checkpoint=tmp / "ck")
    if training:
        path = tmp / "ck" / "checkpoint.npz"
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        arrays["training"] = np.array(json.dumps(json.loads(str(arrays["training"])) | training))
        np.savez(path, **arrays)


def model(tmp, name="m.npz", **header):
    """A model file of a [4, 8, 3] net, its header changed by ``header``."""
    path = tmp / name
    net = Network([4, 8, 3], device="cpu", seed=0)
    from fastnn.checkpoint import model_header
    arrays = {"header": np.array(json.dumps(model_header(net) | header))}
    for i, (w, b) in enumerate(zip(net.weights, net.biases)):
        arrays[f"W{i}"], arrays[f"b{i}"] = w, b
    np.savez(path, **arrays)


def model_arrays(tmp, name="m.npz", header=None, **arrays):
    """A model file of a [4, 8, 3] net with raw header text and some arrays replaced."""
    net = Network([4, 8, 3], device="cpu", seed=0)
    from fastnn.checkpoint import model_header
    found = {"header": np.array(header if header is not None else json.dumps(model_header(net)))}
    for i, (w, b) in enumerate(zip(net.weights, net.biases)):
        found[f"W{i}"], found[f"b{i}"] = w, b
    np.savez(tmp / name, **(found | arrays))


def member_claims(path, name, size):
    """Make the zip's central directory say that member ``name`` decompresses to ``size`` bytes, deflated."""
    raw = bytearray(path.read_bytes())
    at = raw.index(b"PK\x01\x02")  # the first central directory entry
    while raw[at + 46:at + 46 + len(name)] != name.encode():
        at = raw.index(b"PK\x01\x02", at + 4)
    raw[at + 10:at + 12] = (8).to_bytes(2, "little")  # deflated
    raw[at + 24:at + 28] = size.to_bytes(4, "little")  # uncompressed size
    path.write_bytes(bytes(raw))


def npz_claiming(path, name, shape):
    """A 3-class .npz like ``tiny`` whose array ``name`` has a .npy header that declares ``shape``."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.normal(size=(20, 4)), "y_train": rng.integers(0, 3, 20),
              "x_test": rng.normal(size=(5, 4)), "y_test": rng.integers(0, 3, 5)}
    with zipfile.ZipFile(path, "w") as z:
        for key, value in arrays.items():
            out = io.BytesIO()
            np.save(out, value)
            raw = out.getvalue()
            if key == name:
                text = repr({"descr": value.dtype.str, "fortran_order": False, "shape": shape})
                header = text.encode().ljust(118) + b"\n"
                raw = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + value.tobytes()
            z.writestr(key + ".npy", raw)


def flip(raw, start, end):
    """``raw`` with the bytes in [start, end) flipped."""
    return raw[:start] + bytes(b ^ 0x55 for b in raw[start:end]) + raw[end:]


def fifo(path):
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def both(*makers):
    def make(tmp):
        for m in makers:
            m(tmp)
    return make


# (id, command line, exit status, words the one line must match, maker of the files it needs).
# "train" rows get --dataset tiny.npz, --epochs 1 and --seed 1 unless they give their own.
ROWS = [
    # -- options: shapes, ranges, names -------------------------------------------------------
    ("layers not numbers", ["train", "--layers", "784,x,10"], CONFIG,
     r"argument --layers: layer sizes must be two or more integers >= 1, like 784,30,10; got \['784', 'x', '10'\]"),
    ("layer of size 0", ["train", "--layers", "4,0,3"], CONFIG, r"layer sizes must be .*got \[4, 0, 3\]"),
    ("one layer", ["train", "--layers", "4"], CONFIG, r"layer sizes must be two or more .*got \[4\]"),
    ("fractional layer", ["train", "--layers", "4,2.5,3"], CONFIG, r"layer sizes must be .*got \['4', '2.5', '3'\]"),
    ("layer of 1e20", ["train", "--layers", "784,1e20,10"], CONFIG,
     r"layer sizes must be .*; got \['784', '1e20', '10'\] \('1e20' is not a whole number\)"),
    ("layer of 10^20", ["train", "--layers", "4,100000000000000000000,3"], CONFIG,
     (r"layer sizes \[4, 100000000000000000000, 3\] make a network of 800,000,000,000,000,000,003 parameters, which "
     r"need [\d.e+]+ TiB as float32 with their gradients and the last epoch's copy, more than the [\d.]+ GiB of "
     r"memory cpu can give; use smaller layers")),
    ("unknown option", ["train", "--bogus"], CONFIG, r"unrecognized arguments: --bogus \(see 'fastnn train --help'\)$"),
    ("misspelt option", ["train", "--lrr", "0.1"], CONFIG,
     r"unrecognized arguments: --lrr 0.1; did you mean --lr\? \(see 'fastnn train --help'\)$"),
    ("misspelt evaluate option", ["evaluate", "--model", "m.npz", "--datset", "mnist"], CONFIG,
     r"unrecognized arguments: --datset mnist; did you mean --dataset\?"),
    ("option without value", ["train", "--lr"], CONFIG,
     r"argument --lr: expected one argument \(see 'fastnn train --help'\)$"),
    ("epochs < 0", ["train", "--epochs", "-1"], CONFIG, "--epochs must be an integer >= 1; got -1"),  # 0 too (issue 21)
    ("epochs not a number", ["train", "--epochs", "two"], CONFIG, "argument --epochs: invalid int value: 'two'"),
    ("batch size 0", ["train", "--batch-size", "0"], CONFIG, "--batch-size must be an integer >= 1; got 0"),
    ("batch size < 0", ["train", "--batch-size", "-5"], CONFIG, "--batch-size must be an integer >= 1; got -5"),
    ("lr 0", ["train", "--lr", "0"], CONFIG, r"--lr must be a finite number in \(0.0, inf\]; got 0.0"),
    ("lr < 0", ["train", "--lr", "-1"], CONFIG, r"--lr must be a finite number in \(0.0, inf\]; got -1.0"),
    ("lr nan", ["train", "--lr", "nan"], CONFIG, "--lr must be a finite number .*; got nan"),
    ("lr inf", ["train", "--lr", "inf"], CONFIG, "--lr must be a finite number .*; got inf"),
    ("momentum 1.5", ["train", "--momentum", "1.5"], CONFIG, r"--momentum must be a finite number in \[0.0, 1.0\)"),
    ("momentum < 0", ["train", "--momentum", "-0.1"], CONFIG, r"--momentum must be .*; got -0.1"),
    ("l2 < 0", ["train", "--l2", "-1"], CONFIG, r"--l2 must be a finite number in \[0.0, inf\]; got -1.0"),
    ("l2 inf", ["train", "--l2", "inf"], CONFIG, "--l2 must be a finite number .*; got inf"),
    ("unknown activation", ["train", "--activation", "swish"], CONFIG,
     r"argument --activation: invalid choice: 'swish' \(choose from .*sigmoid.*tanh.*relu.*identity.*\)"),
    ("softmax hidden", ["train", "--activation", "softmax"], CONFIG, r"invalid choice: 'softmax' \(choose from"),
    ("unknown output", ["train", "--output", "swish"], CONFIG, r"invalid choice: 'swish' \(choose from .*softmax"),
    ("unknown cost", ["train", "--cost", "hinge"], CONFIG,
     r"invalid choice: 'hinge' \(choose from .*quadratic.*cross-entropy.*log-likelihood"),
    ("cross-entropy with softmax", ["train", "--output", "softmax", "--cost", "cross-entropy"], CONFIG,
     (r"cost 'cross-entropy' needs a sigmoid output layer; got output 'softmax'. The pairs that match: sigmoid \+ "
      r"cross-entropy, softmax \+ log-likelihood, any output \+ quadratic; for output 'softmax' use cost 'quadratic' "
      r"or 'log-likelihood'$")),
    ("log-likelihood with sigmoid", ["train", "--cost", "log-likelihood"], CONFIG,
     "cost 'log-likelihood' needs a softmax output layer; got output 'sigmoid'"),
    ("unknown dtype", ["train", "--dtype", "float16"], CONFIG, r"invalid choice: 'float16' \(choose from"),
    ("unknown device", ["train", "--device", "tpu"], CONFIG, "device must be one of auto, cpu, cuda, cuda:N; got 'tpu'"),
    ("cuda without cupy", ["train", "--device", "cuda"], FAILURE, "cupy cannot be imported"),
    ("cuda with cupy but no driver", ["train", "--device", "cuda"], FAILURE,
     r"no usable CUDA driver or device \(CUDARuntimeError: cudaErrorInsufficientDriver: CUDA driver version is"),
    ("cuda:99", ["train", "--device", "cuda:99"], FAILURE, r"cuda:99 was asked for, but 1 CUDA device\(s\) were found"),
    ("evaluate on cuda with no driver", ["evaluate", "--model", "{tmp}/m.npz", "--dataset", "tiny.npz",
                                         "--device", "cuda"], FAILURE,
     r"^fastnn: error: no usable CUDA driver or device \(CUDARuntimeError: cudaErrorInsufficientDriver", model),
    ("seed < 0", ["train", "--seed", "-1"], CONFIG, "--seed must be an integer >= 0; got -1"),
    ("seed not a number", ["train", "--seed", "abc"], CONFIG, "argument --seed: invalid int value: 'abc'"),
    ("validation too big", ["train", "--validation-size", "999"], CONFIG,
     r"validation size must be an integer in \[0, 239\] for 240 training examples; got 999"),
    ("validation < 0", ["train", "--validation-size", "-1"], CONFIG, r"validation size must be .*; got -1"),
    ("validation not a number", ["train", "--validation-size", "lots"], CONFIG,
     "--validation-size must be 'auto' or an integer; got 'lots'"),
    ("unknown dataset", ["train", "--dataset", "cifar"], CONFIG,
     "dataset must be one of mnist, fashion-mnist or a path to a .npz file; got 'cifar'"),
    ("features vs first layer", ["train", "--layers", "5,3"], CONFIG,
     "--layers starts with 5 inputs, but .*tiny.npz has 4 features per example"),
    ("labels vs last layer", ["train", "--layers", "4,2"], FAILURE,
     r"labels in y must be in \[0, 1\] for 2 output units; got 0..2 \(the training labels of .*tiny.npz"),
    ("no command", [], CONFIG, r"the following arguments are required: \{train,sweep,evaluate,predict,plot,info,bench\} \(see 'fastnn --help'\)$"),
    ("unknown command", ["fly"], CONFIG, r"invalid choice: 'fly' \(choose from .*train.*evaluate.*info.*\) \(see 'fastnn --help'\)$"),
    # -- output paths ----------------------------------------------------------------------------
    ("--out is a folder", ["train", "--out", "{tmp}"], CONFIG, "--out .* is a folder; expected a file name, such as"),
    ("--out in a missing folder", ["train", "--out", "{tmp}/none/m.npz"], CONFIG,
     "--out .*/none/m.npz: the folder .*/none does not exist"),
    ("--out under a file", ["train", "--out", "{tmp}/tiny.npz/m.npz"], CONFIG, "--out .*: .*tiny.npz is not a folder"),
    ("--checkpoint is a file", ["train", "--checkpoint", "{tmp}/tiny.npz"], CONFIG,
     "--checkpoint .*tiny.npz is a file; expected a folder"),
    ("--checkpoint in a missing folder", ["train", "--checkpoint", "{tmp}/none/ck"], CONFIG,
     "--checkpoint .*/none/ck: the folder .*/none does not exist"),
    # -- --resume ----------------------------------------------------------------------------------
    ("--resume missing", ["train", "--resume", "{tmp}/none"], FAILURE, "checkpoint .*/none does not exist"),
    ("--resume empty folder", ["train", "--resume", "{tmp}/empty"], FAILURE,
     "empty holds no checkpoint: expected .*empty/checkpoint.npz", lambda t: (t / "empty").mkdir()),
    ("--resume truncated", ["train", "--layers", "4,8,3", "--resume", "{tmp}/ck"], FAILURE,
     r"not a readable fastnn checkpoint \(truncated or corrupt\?\)",
     lambda t: (checkpoint(t), truncate(t / "ck" / "checkpoint.npz"))),
    ("--resume a model file", ["train", "--layers", "4,8,3", "--resume", "{tmp}/m.npz"], FAILURE,
     "m.npz is a fastnn model file, not a checkpoint: it holds no training state", model),
    ("--resume newer checkpoint", ["train", "--layers", "4,8,3", "--resume", "{tmp}/ck"], FAILURE,
     "checkpoint format version 9; this fastnn .* reads version 1: upgrade fastnn", lambda t: checkpoint(t, version=9)),
    ("--resume other network", ["train", "--layers", "4,6,3", "--resume", "{tmp}/ck"], CONFIG,
     ("--resume .*ck: the checkpointed run used --layers 4,8,3, but this command has --layers 4,6,3; leave these "
     r"options out \(the checkpoint's are used\) or give the first run's"), checkpoint),
    ("--resume other cost and lr", ["train", "--layers", "4,8,3", "--lr", "0.5", "--output", "softmax", "--cost",
                                    "log-likelihood", "--resume", "{tmp}/ck"], CONFIG,
     ("used --output sigmoid --cost quadratic --lr 3.0, but this command has --output softmax --cost log-likelihood "
     "--lr 0.5"), checkpoint),
    ("--resume other seed", ["train", "--layers", "4,8,3", "--seed", "2", "--resume", "{tmp}/ck"], CONFIG,
     "used --seed 1, but this command has --seed 2", checkpoint),
    ("--resume other data", ["train", "--layers", "4,8,3", "--validation-size", "40", "--resume", "{tmp}/ck"],
     CONFIG, "the run trained on 240 examples, but --dataset .* with --validation-size 40 leaves 200", checkpoint),
    # -- model files ---------------------------------------------------------------------------------
    ("model missing", ["evaluate", "--model", "missing.npz"], FAILURE, "model file missing.npz does not exist"),
    ("model option missing", ["evaluate"], CONFIG, "the following arguments are required: --model"),
    ("model truncated", ["evaluate", "--model", "m.npz", "--dataset", "tiny.npz"], FAILURE,
     r"m.npz is not a readable fastnn model file \(truncated or corrupt\?\)", lambda t: (model(t), truncate(t / "m.npz"))),
    ("model newer version", ["evaluate", "--model", "m.npz", "--dataset", "tiny.npz"], FAILURE,
     r"m.npz has model format version 7, newer than this fastnn .* reads \(1\): upgrade fastnn",
     lambda t: model(t, version=7)),
    ("model not fastnn", ["evaluate", "--model", "m.npz", "--dataset", "tiny.npz"], FAILURE,
     r"m.npz is not a fastnn model file \(no fastnn header\)", lambda t: np.savez(t / "m.npz", W0=np.zeros(3))),
    ("model not a zip", ["evaluate", "--model", "m.npz", "--dataset", "tiny.npz"], FAILURE,
     "m.npz is not a readable fastnn model file .*: it is not a zip archive of arrays",
     lambda t: (t / "m.npz").write_text("hello")),
    ("model unknown dtype", ["evaluate", "--model", "m.npz", "--dataset", "tiny.npz"], FAILURE,
     "m.npz has an invalid header: dtype must be one of float32, float64; got 'float16'",
     lambda t: model(t, dtype="float16")),
    ("model unknown activation", ["evaluate", "--model", "m.npz", "--dataset", "tiny.npz"], FAILURE,
     "m.npz has an invalid header: hidden activation must be one of sigmoid, tanh, relu, identity; got 'swish'",
     lambda t: model(t, activation="swish")),
    ("model is a folder", ["evaluate", "--model", "{tmp}", "--dataset", "tiny.npz"], FAILURE,
     "model file .* is a folder; expected a file written by fastnn"),
    ("model vs dataset features", ["evaluate", "--model", "m.npz", "--dataset", "d.npz"], CONFIG,
     "the model m.npz takes 4 inputs, but d.npz has 5 features per example",
     both(model, npz("d.npz", x_train=np.zeros((20, 5)), x_test=np.zeros((5, 5))))),
    ("model vs dataset labels", ["evaluate", "--model", "m.npz", "--dataset", "d.npz"], FAILURE,
     (r"labels in y must be in \[0, 2\] for 3 output units; got 0..7 \(the test labels of d.npz; the model m.npz "
     "has 3 output units\\)"), both(model, npz("d.npz", y_test=np.array([0, 7, 1, 1, 2])))),
    ("model sizes a string", ["evaluate", "--model", "m.npz", "--dataset", "tiny.npz"], FAILURE,
     "m.npz has an invalid header: sizes must be a list of two or more integers >= 1; got '4,8,3'",
     lambda t: model(t, sizes="4,8,3")),
    ("model sizes 10^30", ["evaluate", "--model", "m.npz", "--dataset", "tiny.npz"], FAILURE,
     (r"m.npz: layer 0: expected W \(1000000000000000000000000000000, 4\) for the header's sizes \[4, 10{30}, 3\]; "
     r"got W \(8, 4\)"), lambda t: model(t, sizes=[4, 10**30, 3])),
    ("model activation a list", ["evaluate", "--model", "m.npz", "--dataset", "tiny.npz"], FAILURE,
     r"m.npz has an invalid header: activation must be a name \(a string\); got \['relu'\]",
     lambda t: model(t, activation=["relu"])),
    ("model seed a string", ["evaluate", "--model", "m.npz", "--dataset", "tiny.npz"], FAILURE,
     r"m.npz has an invalid header: seed must be an integer >= 0 \(or absent\); got '7'", lambda t: model(t, seed="7")),
    ("model header nested deeply", ["evaluate", "--model", "m.npz", "--dataset", "tiny.npz"], FAILURE,
     r"m.npz is not a fastnn model file \(its header is not JSON: nested too deeply\)",
     lambda t: model_arrays(t, header='{"format": "fastnn-model", "x": ' + "[" * 100000 + "]" * 100000 + "}")),
    ("model float64 beyond float32", ["evaluate", "--model", "m.npz", "--dataset", "tiny.npz"], FAILURE,
     (r"m.npz: layer 1: weights or biases beyond float32's range: the largest magnitude is 1e\+300, float32 holds up "
     r"to 3.403e\+38"), lambda t: model_arrays(t, W1=np.full((3, 8), 1e300))),
    ("model is a FIFO", ["evaluate", "--model", "m.npz", "--dataset", "tiny.npz"], FAILURE,
     r"m.npz is a FIFO \(named pipe\), not a regular file; expected a model file written by fastnn",
     lambda t: fifo(t / "m.npz")),
    ("model member claims 4 GB", ["evaluate", "--model", "m.npz", "--dataset", "tiny.npz"], FAILURE,
     (r"m.npz is not a readable fastnn model file \(truncated or corrupt\?\): array W0 claims 4000000000 bytes from "
     r"\d+ compressed bytes in a file of \d+, more than it can hold"),
     lambda t: (model(t), member_claims(t / "m.npz", "W0.npy", 4_000_000_000))),
    ("--resume a FIFO", ["train", "--layers", "4,8,3", "--resume", "{tmp}/ck"], FAILURE,
     r"checkpoint .*ck is a FIFO \(named pipe\); expected a checkpoint folder or its checkpoint.npz",
     lambda t: fifo(t / "ck")),
    ("--resume checkpoint.npz a FIFO", ["train", "--layers", "4,8,3", "--resume", "{tmp}/ck"], FAILURE,
     r"checkpoint.npz is a FIFO \(named pipe\), not a regular file; expected a checkpoint written by fastnn",
     lambda t: (checkpoint(t), fifo(t / "ck" / "checkpoint.npz"))),
    ("--resume random state out of range", ["train", "--layers", "4,8,3", "--resume", "{tmp}/ck"], FAILURE,
     r"checkpoint.npz has an invalid random generator state: state and inc must be integers in \[0, 2\*\*128\); got",
     lambda t: checkpoint(t, rng={"bit_generator": "PCG64", "state": {"state": 2**200, "inc": 1}, "has_uint32": 0,
                                  "uinteger": 0})),
    ("--resume random state of another generator", ["train", "--layers", "4,8,3", "--resume", "{tmp}/ck"], FAILURE,
     "has an invalid random generator state: expected the state of a PCG64 generator; got {'bit_generator': 'MT19937'",
     lambda t: checkpoint(t, rng={"bit_generator": "MT19937", "state": {"key": [1, 2], "pos": 3}})),
    ("--resume settings of wrong types", ["train", "--layers", "4,8,3", "--resume", "{tmp}/ck"], FAILURE,
     "has an invalid training record: settings must give batch_size, lr, momentum, l2, shuffle, n_train; got",
     lambda t: checkpoint(t, settings={"batch_size": "10", "lr": 3.0})),
    # -- .npz datasets -----------------------------------------------------------------------------
    ("npz missing", ["train", "--dataset", "none.npz"], FAILURE, "dataset file none.npz does not exist"),
    ("npz is a folder", ["train", "--dataset", "dir.npz"], FAILURE, "dataset file dir.npz is not a file",
     lambda t: (t / "dir.npz").mkdir()),
    ("npz missing keys", ["train", "--dataset", "d.npz"], FAILURE,
     r"d.npz lacks the arrays y_train, y_test \(needs x_train, y_train, x_test, y_test; has x_train, x_test\)",
     npz("d.npz", y_train=None, y_test=None)),
    ("npz x_train 1-D", ["train", "--dataset", "d.npz"], FAILURE,
     r"x_train in d.npz must be a numeric array \(n, features...\); got float64 \(20,\)", npz("d.npz", x_train=np.zeros(20))),
    ("npz NaN in x_train", ["train", "--dataset", "d.npz"], FAILURE,
     "x_train in d.npz must be finite; got NaN or infinity in example 3",
     npz("d.npz", x_train=np.where(np.arange(80).reshape(20, 4) == 13, np.nan, 0.0))),
    ("npz inf in x_test", ["train", "--dataset", "d.npz"], FAILURE,
     "x_test in d.npz must be finite; got NaN or infinity in example 0", npz("d.npz", x_test=np.full((5, 4), np.inf))),
    # a real y is a regression target since issue 21: refused by a classifier, with what regression needs
    ("npz fractional labels", ["train", "--dataset", "d.npz", "--layers", "4,3"], FAILURE,
     r"y holds class labels, which must be whole numbers; got fractions \(regression targets need one output unit",
     npz("d.npz", y_train=np.full(20, 0.5))),
    ("npz NaN label", ["train", "--dataset", "d.npz"], FAILURE, "y_train in d.npz must be finite; got NaN or infinity",
     npz("d.npz", y_train=np.where(np.arange(20) == 4, np.nan, 1.0))),
    ("npz with --data-dir", ["train", "--dataset", "tiny.npz", "--data-dir", "{tmp}"], CONFIG,
     "a data folder .--data-dir, data_dir=. is for mnist and fashion-mnist, not for the .npz file tiny.npz; got"),
    ("npz negative labels", ["train", "--dataset", "d.npz"], FAILURE,
     "y_train in d.npz must hold class labels >= 0; got -1", npz("d.npz", y_train=np.full(20, -1))),
    ("npz test labels vs last layer", ["train", "--dataset", "d.npz", "--layers", "4,3"], FAILURE,
     r"labels in y must be in \[0, 2\] for 3 output units; got 0..5 \(the test labels of d.npz",
     npz("d.npz", y_test=np.array([0, 1, 5, 2, 0]))),
    ("npz empty", ["train", "--dataset", "d.npz"], FAILURE,
     r"x_train in d.npz is empty: expected at least one example .*; got shape \(0, 4\)",
     npz("d.npz", x_train=np.zeros((0, 4)), y_train=np.zeros(0, int))),
    ("npz labels count", ["train", "--dataset", "d.npz"], FAILURE,
     r"y_train in d.npz must be 20 integer labels; got int64 \(19,\)", npz("d.npz", y_train=np.zeros(19, int))),
    ("npz train/test features", ["train", "--dataset", "d.npz"], FAILURE,
     "x_train and x_test in d.npz differ in features: 4 vs 5", npz("d.npz", x_test=np.zeros((5, 5)))),
    ("npz is a .npy", ["train", "--dataset", "d.npz"], FAILURE,
     r"cannot read d.npz as .npz \(truncated or corrupt\?\): it is not a zip archive of arrays",
     lambda t: np.save(t / "d.npy", np.zeros(3)) or (t / "d.npy").rename(t / "d.npz")),
    ("npz truncated", ["train", "--dataset", "d.npz"], FAILURE, r"cannot read d.npz as .npz \(truncated or corrupt\?\)",
     both(npz("d.npz"), lambda t: truncate(t / "d.npz"))),
    ("npz object arrays", ["train", "--dataset", "d.npz"], FAILURE,
     "cannot read d.npz as .npz .*: Object arrays cannot be loaded when allow_pickle=False",
     npz("d.npz", x_train=np.array([[1, "a"], [2, None]], dtype=object))),
    ("npz float64 beyond float32", ["train", "--dataset", "d.npz"], FAILURE,
     r"x_train in d.npz must be within float32's range \(±3.403e\+38\); got a larger value in example 0",
     npz("d.npz", x_train=np.full((20, 4), 1e300))),
    ("npz member claims 4 GB", ["train", "--dataset", "d.npz"], FAILURE,
     (r"cannot read d.npz as .npz \(truncated or corrupt\?\): array x_test claims 4000000000 bytes from \d+ "
     "compressed bytes"), both(npz("d.npz"), lambda t: member_claims(t / "d.npz", "x_test.npy", 4_000_000_000))),
    ("npz array header claims 10^30 rows", ["train", "--dataset", "d.npz"], FAILURE,
     (r"array y_train declares shape \(1000000000000000000000000000000,\) of int64 \([\d.e+]+ TiB\), more than "
     r"the [\d.]+ GiB it may hold here"), lambda t: npz_claiming(t / "d.npz", "y_train", (10**30,))),
    ("npz is a FIFO", ["train", "--dataset", "d.npz"], FAILURE, "dataset file d.npz is not a file",
     lambda t: fifo(t / "d.npz")),
    # -- IDX datasets (--data-dir) ---------------------------------------------------------------
    ("idx missing folder", ["train", "--dataset", "mnist", "--data-dir", "{tmp}/none"], FAILURE,
     (r"none lacks the mnist IDX files train-images-idx3-ubyte\(.gz\), train-labels-idx1-ubyte\(.gz\), "
      r"t10k-images-idx3-ubyte\(.gz\), t10k-labels-idx1-ubyte\(.gz\): supply it by hand")),
    ("idx truncated", ["train", "--dataset", "mnist", "--data-dir", "{tmp}/idx"], FAILURE,
     r"train-images-idx3-ubyte.gz is truncated: dimensions \(6, 28, 28\) need 4720 bytes, it has 1000",
     idx(train_images=lambda a: gzip.compress(idx_bytes(a)[:1000]))),
    ("idx wrong magic", ["train", "--dataset", "mnist", "--data-dir", "{tmp}/idx"], FAILURE,
     r"train-labels-idx1-ubyte.gz is not an IDX file \(bad magic number 12340801\)",
     idx(train_labels=lambda a: gzip.compress(b"\x12\x34" + idx_bytes(a)[2:]))),
    ("idx wrong dimensions", ["train", "--dataset", "mnist", "--data-dir", "{tmp}/idx"], FAILURE,
     r"t10k-images-idx3-ubyte.gz must hold uint8 images \(n, rows, cols\); got uint8 \(4, 784\)",
     idx(t10k_images=lambda a: gz(a.reshape(4, 784)))),
    ("idx counts differ", ["train", "--dataset", "mnist", "--data-dir", "{tmp}/idx"], FAILURE,
     "train-images-idx3-ubyte.gz has 6 images but .*train-labels-idx1-ubyte.gz has 5 labels",
     idx(train_labels=lambda a: gz(a[:5]))),
    ("idx .gz not gzip", ["train", "--dataset", "mnist", "--data-dir", "{tmp}/idx"], FAILURE,
     "t10k-labels-idx1-ubyte.gz is named .gz but is not gzip data", idx(t10k_labels=idx_bytes)),
    ("idx gzip cut short", ["train", "--dataset", "mnist", "--data-dir", "{tmp}/idx"], FAILURE,
     "cannot read .*train-images-idx3-ubyte.gz: Compressed file ended before the end-of-stream marker",
     idx(train_images=lambda a: gz(a)[:200])),
    ("idx label 12", ["train", "--dataset", "mnist", "--data-dir", "{tmp}/idx"], FAILURE,
     r"train-labels-idx1-ubyte.gz has label 12; expected 0..9", idx(train_labels=lambda a: gz(np.full(6, 12)))),
    ("idx image sizes differ", ["train", "--dataset", "mnist", "--data-dir", "{tmp}/idx"], FAILURE,
     "the training and test images of mnist differ in size: 784 vs 25",
     idx(t10k_images=lambda a: gz(np.zeros((4, 5, 5))))),
    ("idx empty", ["train", "--dataset", "mnist", "--data-dir", "{tmp}/idx"], FAILURE,
     r"train-images-idx3-ubyte.gz is empty: expected at least one image; got shape \(0, 784\)",
     idx(train_images=lambda a: gz(a[:0]), train_labels=lambda a: gz(a[:0]))),
    ("idx dimensions of 2^32-1", ["train", "--dataset", "mnist", "--data-dir", "{tmp}/idx"], FAILURE,
     (r"train-images-idx3-ubyte.gz is corrupt: dimensions \(4294967295, 4294967295, 4294967295\) need [\d.e+]+ TiB, "
     r"more than a gzip file of \d+ bytes can hold"),
     idx(train_images=lambda a: gzip.compress(b"\0\0\x08\x03" + b"\xff" * 12 + bytes(100)))),
    ("idx raw dimensions of 2^32-1", ["train", "--dataset", "mnist", "--data-dir", "{tmp}/idx"], FAILURE,
     r"t10k-labels-idx1-ubyte is truncated: dimensions \(4294967295,\) need 4294967303 bytes, it has 12",
     both(idx(), lambda t: (t / "idx" / "t10k-labels-idx1-ubyte.gz").unlink(),
          lambda t: (t / "idx" / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01\xff\xff\xff\xff" + bytes(4)))),
    ("idx corrupt deflate data", ["train", "--dataset", "mnist", "--data-dir", "{tmp}/idx"], FAILURE,
     r"cannot read .*train-images-idx3-ubyte.gz: (Error -3 while decompressing data|CRC check failed)",
     idx(train_images=lambda a: flip(gz(a), 40, 60))),
    ("idx is a FIFO", ["train", "--dataset", "mnist", "--data-dir", "{tmp}/idx"], FAILURE,
     r"idx lacks the mnist IDX files train-labels-idx1-ubyte\(.gz\): supply it by hand",
     both(idx(), lambda t: fifo(t / "idx" / "train-labels-idx1-ubyte.gz"))),
]


def full_command(args, tmp):
    args = [a.replace("{tmp}", str(tmp)) for a in args]
    if args[:1] == ["train"]:
        for flag, value in (("--dataset", "tiny.npz"), ("--epochs", "1"), ("--seed", "1")):
            if flag not in args and not (flag == "--seed" and "--resume" in args):
                args += [flag, value]
    return args


# The GPU rows hold on every machine, whatever cupy and driver it has: cupy is hidden, or the cupy
# test double (tests/cupy_double) stands in with one GPU, or with no driver.
ROW_ENV = {"cuda without cupy": absent_env(), "cuda with cupy but no driver": double_env(CUPY_DOUBLE_NO_DRIVER=1),
           "cuda:99": double_env(), "evaluate on cuda with no driver": double_env(CUPY_DOUBLE_NO_DRIVER=1)}


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_one_clear_line(tmp_path, tiny, row):
    name, args, status, words, *make = row
    if make:
        make[0](tmp_path)
    run = fastnn(*full_command(args, tmp_path), cwd=tmp_path, timeout=120, env=ROW_ENV.get(name))
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastnn: error: "), run.stderr
    assert "Traceback" not in run.stderr
    assert re.search(words, lines[0]), lines[0]
    assert run.returncode == status, (run.returncode, lines[0])


def test_table_is_complete():
    """Every row has a unique id (the issue's closing note lists them)."""
    assert len({r[0] for r in ROWS}) == len(ROWS) >= 80


# -- the Python API: every public call raises a FastnnError subclass for bad arguments ----------------------------
def _net():
    return Network([4, 5, 3], device="cpu", seed=0)


def _other_state(tmp):
    state = TrainState()
    Network([4, 6, 3], device="cpu", seed=0).fit(np.zeros((6, 4)), np.zeros(6, int), epochs=1, batch_size=3, lr=0.1,
                                                 state=state)
    return state


X4, Y3 = np.random.default_rng(0).normal(size=(12, 4)), np.arange(12) % 3
FIT = {"epochs": 1, "batch_size": 4, "lr": 0.1}

# (id, call(tmp), FastnnError subclass, words its message must match)
API_ROWS = [
    ("Network activation a list", lambda t: Network([4, 3], activation=["relu"], device="cpu"), ConfigError,
     r"hidden activation must be one of sigmoid, tanh, relu, identity; got \['relu'\]"),
    ("Network output a list", lambda t: Network([4, 3], output=["softmax"], device="cpu"), ConfigError,
     r"output activation must be one of .*softmax; got \['softmax'\]"),
    ("Network cost a dict", lambda t: Network([4, 3], cost={}, device="cpu"), ConfigError,
     "cost must be one of quadratic, cross-entropy, log-likelihood; got {}"),
    ("Network layer of 10^20", lambda t: Network([4, 10**20, 3], device="cpu"), ConfigError,
     r"layer sizes \[4, 100000000000000000000, 3\] make a network of 800,000,000,000,000,000,003 parameters"),
    ("Network of 16 TiB", lambda t: Network([2**40, 2], device="cpu"), ConfigError,
     (r"make a network of 2,199,023,255,554 parameters, which need 24 TiB as float32 with their gradients and the "
      r"last epoch's copy, more than")),
    ("Network sizes a string", lambda t: Network("784,30,10", device="cpu"), ConfigError,
     "layer sizes must be two or more integers >= 1, like 784,30,10; got '784,30,10'"),
    ("evaluate without y", lambda t: _net().evaluate(X4, None), ConfigError,
     r"y must be given: class labels \(n_samples,\) or targets \(n_samples, 3\); got None"),
    ("gradients without y", lambda t: _net().gradients(X4, None), ConfigError, "y must be given"),
    ("fit without y", lambda t: _net().fit(X4, None, **FIT), ConfigError, "y must be given"),
    ("fit validation without y", lambda t: _net().fit(X4, Y3, validation_data=(X4, None), **FIT), ConfigError,
     "y must be given"),
    ("fit shuffle not a bool", lambda t: _net().fit(X4, Y3, shuffle="no", **FIT), ConfigError,
     "shuffle must be True or False; got 'no'"),
    ("set_parameters None", lambda t: _net().set_parameters(None, None), ShapeError,
     "weights must be a list of 2 arrays, one per layer; got NoneType"),
    ("set_parameters objects", lambda t: _net().set_parameters([np.zeros((5, 4), object), np.zeros((3, 5))],
                                                             [np.zeros(5), np.zeros(3)]), DataError,
     "layer 0: weights and biases must hold numbers; got object and float64"),
    ("set_parameters beyond float32", lambda t: _net().set_parameters([np.full((5, 4), 1e300), np.zeros((3, 5))],
                                                                    [np.zeros(5), np.zeros(3)]), DataError,
     r"layer 0: weights or biases beyond float32's range: the largest magnitude is 1e\+300"),
    ("save_checkpoint of a new TrainState", lambda t: save_checkpoint(t / "ck", _net(), TrainState()),
     ConfigError, r"state has no training run to save: .*; got a new TrainState\(\)"),
    ("save_checkpoint without a state", lambda t: save_checkpoint(t / "ck", _net(), None), ConfigError,
     "state must be a fastnn.TrainState; got NoneType"),
    ("save_checkpoint without a net", lambda t: save_checkpoint(t / "ck", None, TrainState()),
     ConfigError, "net must be a fastnn.Network; got NoneType"),
    ("save_checkpoint of another network's state", lambda t: save_checkpoint(t / "ck", _net(), _other_state(t)),
     ConfigError, "state belongs to a network of 51 float32 parameters; got net with 43 float32"),
    ("save_model without a net", lambda t: save_model(None, t / "m.npz"), ConfigError,
     "net must be a fastnn.Network; got NoneType"),
    ("save_model extra not a dict", lambda t: save_model(_net(), t / "m.npz", extra=5), ConfigError,
     "extra must be a dict of named arrays, or None; got int"),
    ("save_model extra objects", lambda t: save_model(_net(), t / "m.npz", extra={"a": np.array([None])}),
     DataError, "extra array a must hold numbers; got dtype object"),
    ("save_model extra named header", lambda t: save_model(_net(), t / "m.npz", extra={"header": 1}),
     ConfigError, "extra array names must be identifiers other than header"),
    ("load_model on an unknown device", lambda t: (save_model(_net(), t / "m.npz"),
                                                   load_model(t / "m.npz", device="tpu")),
     ConfigError, "device must be one of auto, cpu, cuda, cuda:N; got 'tpu'"),
    ("load_dataset data_dir a number", lambda t: load_dataset("mnist", data_dir=5), ConfigError,
     r"data_dir must be a path \(str or pathlib.Path\); got 5"),
    ("split_validation of None", lambda t: split_validation(None, None, 1), ShapeError,
     r"X and y must be arrays of examples; got shapes \(\) and \(\)"),
    ("History of a number", lambda t: History(5), ConfigError,
     "records must be a list of dicts, one per epoch; got int"),
]


@pytest.mark.parametrize("row", API_ROWS, ids=[r[0] for r in API_ROWS])
def test_api_raises_a_fastnn_error(tmp_path, row):
    _, call, kind, words = row
    with pytest.raises(FastnnError) as caught:
        call(tmp_path)
    assert type(caught.value) is kind, (type(caught.value), caught.value)
    assert re.search(words, str(caught.value)), str(caught.value)
    assert "\n" not in str(caught.value)
