"""stdout and stderr failures never lose a run (issue 20, items 6 and 16): training goes on and saves, the last line
says what happened; a command whose answer is its stdout (predict, info, evaluate) ends with one line, exit 1."""

import os
import subprocess
import sys

import pytest

from fastnn import load_checkpoint, load_model

from .conftest import ROOT

ENV = {**os.environ, "FASTNN_DEVICE": "cpu",
       "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def run(args, cwd, stdout="full", stderr="pipe"):
    """fastnn ARGS with stdout on /dev/full ('full') or closed ('closed'); (status, stderr text)."""
    streams = {"full": lambda: open("/dev/full", "w"), "pipe": lambda: subprocess.PIPE, "closed": lambda: None}  # noqa: SIM115
    close = [n for n, how in ((1, stdout), (2, stderr)) if how == "closed"]
    out, err = streams[stdout](), streams[stderr]()
    done = subprocess.run([sys.executable, "-m", "fastnn", *map(str, args)], stdout=out, stderr=err, text=True,
                          env=ENV, cwd=cwd, timeout=300, check=False,
                          preexec_fn=(lambda: [os.close(n) for n in close]) if close else None)
    return done.returncode, done.stderr or ""


@pytest.fixture
def trained(tmp_path, tiny):
    code, err = run(["train", "--dataset", tiny, "--layers", "4,5,3", "--epochs", 1, "--out", "m.npz", "--quiet"],
                    tmp_path, stdout="pipe")
    assert code == 0, err
    return tmp_path


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_training_goes_on_and_saves_when_stdout_fails(trained, tiny, stdout):
    """Item 6: stdout on a full disk, or closed: the run ends normally, its model and checkpoint saved."""
    args = ["train", "--dataset", tiny, "--layers", "4,5,3", "--epochs", 3, "--seed", 2, "--out", "new.npz",
            "--checkpoint", "ck"]
    code, err = run(args, trained, stdout=stdout)
    assert code == 0, err
    assert err.splitlines()[-1].startswith("fastnn: stdout failed") and "saved the model to new.npz" in err, err
    load_model(trained / "new.npz", device="cpu")
    assert load_checkpoint(trained / "ck", device="cpu")[1].epoch == 3


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_training_goes_on_when_stderr_fails(trained, tiny):
    """A failing stderr (warnings, notes) does not stop training either."""
    args = ["train", "--dataset", tiny, "--layers", "4,5,3", "--epochs", 2, "--lr", "1e-9", "--out", "new.npz"]
    done = subprocess.run([sys.executable, "-m", "fastnn", *map(str, args)], stdout=subprocess.PIPE,
                          stderr=open("/dev/full", "w"), text=True, env=ENV, cwd=trained, timeout=300, check=False)  # noqa: SIM115
    assert done.returncode == 0 and (trained / "new.npz").is_file()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("stdout", ["full", "closed"])
@pytest.mark.parametrize("command", ["predict", "info", "evaluate"])
def test_a_command_whose_answer_is_stdout_ends_with_one_line(trained, tiny, command, stdout):
    """Item 16: predict, info and evaluate with stdout on /dev/full or closed: exit 1, one line, no traceback."""
    import numpy as np

    np.save(trained / "x.npy", np.ones((3, 4)))
    args = {"predict": ["predict", "--model", "m.npz", "x.npy"], "info": ["info"],
            "evaluate": ["evaluate", "--model", "m.npz", "--dataset", tiny]}[command]
    code, err = run(args, trained, stdout=stdout)
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(("fastnn: error: cannot write to stdout", "fastnn: error: stdout is closed")), err
