"""A probe that replays issue 20's classes with random variants: outputs aimed at inputs and at each other
(directly, through a symlink, through a hard link), junk in every field of model and checkpoint records, odd
names, and stdout that fails.  Every case must end in one line and the right exit status, and change no file.

The default run plays a short deterministic round (ROUND cases per class, fixed seed); ``pytest -m probe`` plays
FASTNN_PROBE_CASES per class (default 200) with a fresh seed, named in a failure for replay (FASTNN_PROBE_SEED).  The random
signal loop of this class lives in tests/test_signal_policy.py (same marker).
"""

import json
import os
import random
import time

import numpy as np
import pytest

from fastnn import cli, load_checkpoint

ROUND = 12
TRAIN = ["--layers", "4,5,3", "--epochs", "1", "--seed", "1", "--quiet", "--device", "cpu"]


@pytest.fixture
def disk(tmp_path, tiny):
    """What a user has: a dataset, a model, a checkpoint, a log, inputs for predict."""
    os.chdir(tmp_path)
    assert cli.main(["train", "--dataset", "tiny.npz", *TRAIN, "--checkpoint", "ck", "--out", "m.npz",
                     "--log", "run.jsonl"]) == 0
    np.save("x.npy", np.ones((3, 4)))
    (tmp_path / "x.csv").write_text("1,2,3,4\n")
    return tmp_path


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def alias(rng, target, n):
    """``target`` itself, a symlink to it or a hard link to it (made here), chosen at random."""
    how = rng.choice(["same", "symlink", "hardlink", "dotted"])
    if how == "same" or not os.path.isfile(target):
        return target
    if how == "dotted":
        return f"./{target}"
    name = f"alias{n}{os.path.splitext(target)[1]}"
    (os.symlink if how == "symlink" else os.link)(target, name)
    return name


def clobber_case(rng, n):
    """(args, the file that must survive) for one random output aimed at one of the command's own files."""
    command = rng.choice(["train", "train", "predict", "plot"])
    if command == "train":
        inputs = {"--dataset": "tiny.npz"}
        extra = []
        if rng.random() < 0.5:
            extra = ["--resume", "ck", "--epochs", "3"]
            inputs["--resume"] = "ck/checkpoint.npz"
        elif rng.random() < 0.5:
            extra = ["--checkpoint", "ck", "--overwrite"]
        outputs = rng.sample(["--out", "--log", "--plot"], rng.randint(1, 3))
        victim = rng.choice(list(inputs.values()) + (["ck/checkpoint.npz"] if "ck" in extra else []) +
                            (["shared.bin"] if len(outputs) > 1 else []))
        args = ["train", "--dataset", inputs["--dataset"], *TRAIN, *extra]
        for i, option in enumerate(outputs):
            target = victim if i == 0 or victim == "shared.bin" else f"own{i}.bin"
            args += [option, alias(rng, target, f"{n}-{i}")]
        return args, victim
    if command == "predict":
        source = rng.choice(["x.npy", "x.csv"])
        victim = rng.choice([source, "m.npz"])
        return ["predict", "--model", "m.npz", source, "--device", "cpu", "--out", alias(rng, victim, n)], victim
    return ["plot", "run.jsonl", "--out", alias(rng, "run.jsonl", n)], "run.jsonl"


def play_clobber(rng, cases, folder, capsys):
    for n in range(cases):
        before = snapshot(folder)
        args, victim = clobber_case(rng, n)
        status = cli.main(args)
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1 and "would overwrite it" in err, (args, err)
        after = snapshot(folder)
        assert {k: v for k, v in after.items() if not k.startswith("alias")} == \
               {k: v for k, v in before.items() if not k.startswith("alias")}, (args, victim)
        for made in folder.glob("alias*"):
            made.unlink()


JUNK = [None, True, -1, 0, 10**30, 1.5, float("nan"), "", "x", "auto", [], [1], {}, {"name": 5}, [{"epoch": "1"}]]
HEADER_FIELDS = ["sizes", "activation", "output", "cost", "dtype", "seed", "dataset", "history", "version"]
TRAINING_FIELDS = ["epoch", "settings", "history", "rng", "fingerprint", "version"]
SETTINGS = ["batch_size", "lr", "momentum", "l2", "shuffle", "n_train", "epochs"]


def spoil(rng, path, record):
    """Put a random junk value into a random field of ``record`` ('header' or 'training') of the .npz ``path``."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    data = json.loads(str(arrays[record]))
    if record == "training" and rng.random() < 0.5:
        field = rng.choice(SETTINGS)
        data["settings"][field] = rng.choice(JUNK)
    elif record == "header" and rng.random() < 0.3:
        data["dataset"] = {"name": "tiny.npz", rng.choice(["data_dir", "validation_size"]): rng.choice(JUNK[1:])}
    else:
        field = rng.choice(HEADER_FIELDS if record == "header" else TRAINING_FIELDS)
        data[field] = rng.choice(JUNK)
    arrays[record] = np.array(json.dumps(data))
    np.savez(path, **arrays)
    return data


def play_records(rng, cases, folder, capsys):
    original = {p: (folder / p).read_bytes() for p in ("m.npz", "ck/checkpoint.npz")}
    for _ in range(cases):
        for p, raw in original.items():
            (folder / p).write_bytes(raw)
        if rng.random() < 0.5:
            data = spoil(rng, folder / "m.npz", "header")
            args = rng.choice([["evaluate", "--model", "m.npz", "--dataset", "tiny.npz", "--device", "cpu"],
                               ["predict", "--model", "m.npz", "x.npy", "--device", "cpu"]])
        else:
            data = spoil(rng, folder / "ck/checkpoint.npz", rng.choice(["header", "training"]))
            args = ["train", "--dataset", "tiny.npz", "--resume", "ck", "--epochs", "2", "--device", "cpu",
                    "--quiet"]
        status = cli.main(args)
        err = capsys.readouterr().err
        assert status in (0, 1, 2) and err.count("\n") <= 1 and "internal error" not in err, (data, err)
        if status == 0 and args[0] == "train":
            load_checkpoint(folder / "ck", device="cpu")


def play_names(rng, cases, folder, capsys):
    odd = ["", "a\nb.npz", "m\udcff.npz", "x" * 300 + ".npz", "nodir/m.npz", "a/" * 2100 + "m.npz", "tab\there.npz"]
    for _ in range(cases):
        option = rng.choice(["--out", "--log", "--plot", "--checkpoint"])
        name = rng.choice(odd + (["a" * 230 + ".npz", "ck", "."] if option != "--checkpoint" else []))
        status = cli.main(["train", "--dataset", "tiny.npz", *TRAIN, "--overwrite", option, name])
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1, (option, name, err)


CLASSES = {"clobber": play_clobber, "records": play_records, "names": play_names}


@pytest.mark.parametrize("name", list(CLASSES))
def test_a_short_round(disk, name, capsys):
    CLASSES[name](random.Random(20), ROUND, disk, capsys)


@pytest.mark.probe
@pytest.mark.parametrize("name", list(CLASSES))
def test_the_long_probe(disk, name, capsys, request):
    if "probe" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the long probe runs with 'pytest -m probe'")
    seed = int(os.environ.get("FASTNN_PROBE_SEED", time.time()))
    try:
        CLASSES[name](random.Random(seed), int(os.environ.get("FASTNN_PROBE_CASES", "200")), disk, capsys)
    except AssertionError as e:
        raise AssertionError(f"replay with FASTNN_PROBE_SEED={seed}: {e}") from e
