"""A corruption fuzz over every file fastnn reads: model files, checkpoints, .npz datasets and IDX.

Each case takes a good file, spoils it with seeded random byte flips, truncations, insertions,
deletions or overwritten runs, and runs the command that reads it through ``cli.main``
in-process (fast), a few through a real process.  Whatever the damage, the command must end in
exit 0 or in exactly one line ``fastnn: error: ...`` and exit 1: never a traceback, an internal
error (70), a hang or a wrong answer.  Exit 0 is allowed only where the damage left what the
file means intact (a zip or gzip timestamp, say): the file then reads back equal to the
original.  Raw IDX files carry no checksum, so a changed pixel or label is data, not damage:
for them exit 0 only has to come with arrays of the declared shape.

The default run spoils each kind of file CASES times; ``pytest -m fuzz`` runs LONG_CASES.
"""

import gzip
import os
import shutil

import numpy as np
import pytest

from fastnn import FastnnError, Network, cli, data, load_checkpoint, load_model, save_model

from .conftest import fastnn
from .test_data import idx_bytes

CASES = 80
LONG_CASES = 2000


def spoil(raw, rng):
    """``raw`` with one to three random kinds of damage."""
    b = bytearray(raw)
    for _ in range(int(rng.integers(1, 4))):
        kind, at = int(rng.integers(6)), int(rng.integers(len(b) + 1))
        if kind == 0 and b:  # flip bits of a few bytes
            for i in rng.integers(0, len(b), int(rng.integers(1, 4))):
                b[i] ^= int(rng.integers(1, 256))
        elif kind == 1:  # cut short
            del b[at:]
        elif kind == 2:  # insert random bytes
            b[at:at] = rng.bytes(int(rng.integers(1, 64)))
        elif kind == 3:  # delete a run
            del b[at:at + int(rng.integers(1, 64))]
        elif kind == 4:  # overwrite a run with zeros or 0xff
            n = min(int(rng.integers(1, 32)), len(b) - at)
            b[at:at + n] = bytes([0 if rng.random() < 0.5 else 255]) * n
        elif b:  # a large count: 0xffffffff over four bytes
            at = min(at, max(len(b) - 4, 0))
            b[at:at + 4] = b"\xff\xff\xff\xff"[:len(b) - at]
    return bytes(b)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good files of each kind, in one folder: a dataset, a model, a checkpoint and IDX (gzip and raw)."""
    root = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)), rng.integers(0, 3, 60)
    np.savez(root / "tiny.npz", x_train=X[:40], y_train=y[:40], x_test=X[40:], y_test=y[40:])
    np.savez_compressed(root / "tinyc.npz", x_train=X[:40], y_train=y[:40], x_test=X[40:], y_test=y[40:])
    net = Network([4, 8, 3], device="cpu", seed=1)
    net.fit(X[:40], y[:40], epochs=1, batch_size=10, lr=0.5, momentum=0.5, checkpoint=root / "ck")
    save_model(net, root / "m.npz")
    for gz, folder in ((True, root / "idx"), (False, root / "idxraw")):
        folder.mkdir()
        for split, n in (("train", 6), ("t10k", 4)):
            for kind, arr in (("images", rng.integers(0, 256, (n, 28, 28))), ("labels", rng.integers(0, 10, n))):
                raw = idx_bytes(arr)
                name = f"{split}-{kind}-{data.KINDS[kind]}" + (".gz" if gz else "")
                (folder / name).write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return root


def same_arrays(a, b):
    return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))


def model_arrays(net):
    return [*net.weights, *net.biases]


def checkpoint_arrays(folder):
    net, state = load_checkpoint(folder, device="cpu")
    return [*model_arrays(net), np.array(state.epoch), np.array(str(state.rng)), np.array(str(state.history.records))]


# Each kind: the file spoiled (relative to the good folder), the command that reads it, and a
# function that reads the spoiled file through the API, for comparison with the good one.
KINDS = {
    "model": ("m.npz", ["evaluate", "--model", "{case}/m.npz", "--dataset", "{good}/tiny.npz"],
              lambda p: model_arrays(load_model(p / "m.npz", device="cpu"))),
    "checkpoint": ("ck/checkpoint.npz", ["train", "--resume", "{case}/ck", "--dataset", "{good}/tiny.npz",
                                         "--layers", "4,8,3", "--epochs", "2", "--batch-size", "10", "--lr", "0.5",
                                         "--momentum", "0.5", "--quiet"],
                   lambda p: checkpoint_arrays(p / "ck")),
    "npz": ("tiny.npz", ["train", "--dataset", "{case}/tiny.npz", "--layers", "4,3", "--epochs", "1", "--seed", "1",
                         "--quiet"], lambda p: list(data.load_dataset(str(p / "tiny.npz")))),
    "npz-compressed": ("tinyc.npz", ["train", "--dataset", "{case}/tinyc.npz", "--layers", "4,3", "--epochs", "1",
                                     "--seed", "1", "--quiet"], lambda p: list(data.load_dataset(str(p / "tinyc.npz")))),
    "idx-gzip": ("idx/train-images-idx3-ubyte.gz", ["train", "--dataset", "mnist", "--data-dir", "{case}/idx",
                                                   "--layers", "784,10", "--epochs", "1", "--seed", "1", "--quiet",
                                                   "--validation-size", "0"],
                 lambda p: list(data.load_dataset("mnist", data_dir=p / "idx"))),
    "idx-gzip-labels": ("idx/t10k-labels-idx1-ubyte.gz", ["train", "--dataset", "mnist", "--data-dir", "{case}/idx",
                                                         "--layers", "784,10", "--epochs", "1", "--seed", "1",
                                                         "--quiet", "--validation-size", "0"],
                        lambda p: list(data.load_dataset("mnist", data_dir=p / "idx"))),
    "idx-raw": ("idxraw/train-images-idx3-ubyte", ["train", "--dataset", "mnist", "--data-dir", "{case}/idxraw",
                                                  "--layers", "784,10", "--epochs", "1", "--seed", "1", "--quiet",
                                                  "--validation-size", "0"], None),
}


def case_folder(good, where):
    """A fresh copy of the good files in where/case (the spoiled file is written over its copy)."""
    case = where / "case"
    if case.exists():
        shutil.rmtree(case)
    shutil.copytree(good, case)
    return case


def run_case(kind, good, case, rng, capsys):
    """Spoil ``kind``'s file in ``case`` and run its command; return the exit status."""
    name, args, read = KINDS[kind]
    target = case / name
    target.write_bytes(spoil((good / name).read_bytes(), rng))
    try:
        got = read(case) if read is not None else None  # before the command: a resumed run rewrites its checkpoint
    except FastnnError:
        got = None
    args = [a.replace("{case}", str(case)).replace("{good}", str(good)) for a in args] + ["--device", "cpu"]
    status = cli.main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("fastnn: warning: ")]  # not learning
    if status != 0:
        assert status == 1 and len(lines) == 1 and lines[0].startswith("fastnn: error: "), (kind, status, err)
    else:
        assert lines == [], (kind, err)
        if read is not None:  # it read back: the damage must have left the meaning intact
            assert got is not None and same_arrays(got, read(good)), f"{kind}: a spoiled file read back different data"
    return status


def fuzz(kind, files, tmp_path, capsys, cases, seed):
    rng = np.random.default_rng(seed)
    case = case_folder(files, tmp_path)
    name = KINDS[kind][0]
    statuses = []
    for _ in range(cases):
        statuses.append(run_case(kind, files, case, rng, capsys))
        shutil.copy(files / name, case / name)
        if kind == "checkpoint":  # a run that resumed rewrote the checkpoint folder
            shutil.rmtree(case / "ck")
            shutil.copytree(files / "ck", case / "ck")
    return statuses


@pytest.mark.parametrize("kind", list(KINDS))
def test_spoiled_files_fail_in_one_line(kind, files, tmp_path, capsys):
    statuses = fuzz(kind, files, tmp_path, capsys, CASES, seed=list(KINDS).index(kind))
    assert statuses.count(1) >= CASES // 2, statuses  # most damage is caught, not merely survived
    with capsys.disabled():  # the counts, for -s
        print(f" {kind}: {CASES} cases, {statuses.count(1)} refused in one line, {statuses.count(0)} exit 0", end="")


@pytest.mark.fuzz
@pytest.mark.parametrize("kind", list(KINDS))
def test_long_fuzz(kind, files, tmp_path, capsys, request):
    if "fuzz" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the long fuzz runs with 'pytest -m fuzz'")
    statuses = fuzz(kind, files, tmp_path, capsys, LONG_CASES, seed=1000 + list(KINDS).index(kind))
    print(f"{kind}: {LONG_CASES} cases, {statuses.count(1)} refused in one line, {statuses.count(0)} exit 0")


@pytest.mark.parametrize("kind", ["model", "checkpoint", "npz-compressed", "idx-gzip"])
def test_spoiled_files_through_a_real_process(kind, files, tmp_path):
    """A few cases as a user meets them: a process, its stderr, its exit status."""
    rng = np.random.default_rng(99)
    name, args, _ = KINDS[kind]
    case = case_folder(files, tmp_path)
    good = (files / name).read_bytes()
    for _ in range(2):
        (case / name).write_bytes(spoil(good, rng)[: len(good) // 2])  # cut short: always damage
        run = fastnn(*[a.replace("{case}", str(case)).replace("{good}", str(files)) for a in args], timeout=60)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 1 and len(lines) == 1 and lines[0].startswith("fastnn: error: "), run.stderr
        assert os.path.getsize(case / name) < len(good)  # nothing rewrote it
