"""One register of paths per command (fastnn/paths.py): no output may be an input or another output, compared by
resolved path and inode; every output's folder, name length (with its temporary name) and encoding checked up front;
every image and report written atomically.  Issue 20, items 1-4, 9, 15, 17, 21, 24."""

import errno
import os
import re

import numpy as np
import pytest

from fastnn import ConfigError, ModelFileError, cli, metrics_log
from fastnn.bench import report as benchreport
from fastnn.paths import Paths, shown

from .conftest import fastnn

BASE = ["--layers", "4,5,3", "--epochs", "1", "--seed", "1", "--quiet"]


@pytest.fixture
def made(tmp_path, tiny):
    """A dataset, a model, a checkpoint folder, inputs for predict, a log: what a user has on disk."""
    os.chdir(tmp_path)
    assert cli.main(["train", "--dataset", str(tiny), *BASE, "--checkpoint", "ck", "--out", "m.npz",
                     "--log", "run.jsonl", "--device", "cpu"]) == 0
    np.save("x.npy", np.random.default_rng(0).random((5, 4)))
    (tmp_path / "x.csv").write_text("1,2,3,4\n")
    os.symlink("m.npz", "link.npz")
    os.link("tiny.npz", "hard.npz")
    return tmp_path


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# (args, what the one line must say); every row must exit 2 and change no file.
CLOBBER = [
    (["train", "--dataset", "tiny.npz", *BASE, "--resume", "ck", "--epochs", "3", "--log", "ck/checkpoint.npz"],
     "--log ck/checkpoint.npz is the checkpoint this run resumes"),  # item 1
    (["train", "--dataset", "tiny.npz", *BASE, "--resume", "ck", "--epochs", "3", "--log", "tiny.npz"],
     "--log tiny.npz is the dataset"),  # item 1
    (["train", "--dataset", "tiny.npz", *BASE, "--resume", "ck", "--epochs", "3", "--log", "x.npy"],
     "--log x.npy already exists and is not a fastnn log"),  # item 1: a resumed run's log is a log
    (["train", "--dataset", "tiny.npz", *BASE, "--checkpoint", "ck", "--overwrite", "--log", "tiny.npz"],
     "--log tiny.npz is the dataset"),  # item 2
    (["train", "--dataset", "tiny.npz", *BASE, "--overwrite", "--log", "hard.npz"],
     "--log hard.npz is the dataset (--dataset tiny.npz)"),  # item 2, a hard link
    (["train", "--dataset", "link.npz", *BASE, "--overwrite", "--plot", "m.npz"],
     "--plot m.npz is the dataset (--dataset link.npz)"),  # a symlink
    (["predict", "--model", "m.npz", "x.npy", "--out", "x.npy"], "--out x.npy is the input"),  # item 3
    (["predict", "--model", "m.npz", "x.csv", "--out", "x.csv"], "--out x.csv is the input"),  # item 3
    (["predict", "--model", "link.npz", "x.csv", "--out", "m.npy"], None),  # a new file: fine (not in this table)
    (["train", "--dataset", "tiny.npz", *BASE, "--out", "new.png", "--plot", "new.png"],
     "--plot new.png is also the model (--out new.png)"),  # item 4
    (["train", "--dataset", "tiny.npz", *BASE, "--out", "both.npz", "--log", "both.npz"],
     "--log both.npz is also the model (--out both.npz)"),  # item 4
    (["train", "--dataset", "tiny.npz", *BASE, "--checkpoint", "new", "--out", "new/checkpoint.npz"],
     "--out new/checkpoint.npz is also the checkpoint this run writes after every epoch"),
    (["plot", "run.jsonl", "--out", "run.jsonl"], "--out run.jsonl is the log"),
    (["bench", "--quick", "--json", "same.json", "--chart", "same.json"], "--chart same.json is also the report"),
    (["bench", "--quick", "--json", "nodir/b.json"], "--json nodir/b.json: the folder nodir does not exist"),  # 15
    (["train", "--dataset", "tiny.npz", *BASE, "--out", ""], "--out is empty"),  # item 24
    (["train", "--dataset", "tiny.npz", *BASE, "--checkpoint", ""], "--checkpoint is empty"),  # item 24
    (["predict", "--model", "m.npz", "x.npy", "--out", ""], "--out is empty"),
    (["train", "--dataset", "tiny.npz", *BASE, "--out", "a\nb.npz"], r"--out a\nb.npz: the name holds a control"),
    (["train", "--dataset", "tiny.npz", *BASE, "--out", "m\udcff.npz"], r"--out m\xff.npz: the name is not valid"),
    (["train", "--dataset", "tiny.npz", *BASE, "--out", "a" * 230 + ".npz"], "temporary name"),  # item 21
    (["train", "--dataset", "tiny.npz", *BASE, "--out", "a/" * 2100 + "m.npz"], "longer than the system allows"),
]


@pytest.mark.parametrize("row", [r for r in CLOBBER if r[1]], ids=lambda r: " ".join(r[0][-2:])[:40])
def test_no_output_replaces_an_input_or_another_output(made, row, capsys):
    args, said = row
    before = snapshot(made)
    assert cli.main([*args, *(["--device", "cpu"] if args[0] in ("train", "predict") else [])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastnn: error: ") and said in err, err
    assert snapshot(made) == before


def test_the_one_line_holds_a_newline_in_an_input_path(made):
    """An input path with a newline: the error is still one line (item 24)."""
    done = fastnn("predict", "--model", "m.npz", "x\ny.npy", cwd=made)
    assert done.returncode == 1 and done.stderr == "fastnn: error: input file x\\ny.npy does not exist\n"


def test_plot_of_a_log_whose_name_is_not_utf8(made):
    """A log named with a stray byte plots, and every line says the name with \\xff (item 17)."""
    pytest.importorskip("matplotlib", reason="the plot and the chart are drawn with matplotlib (pip install '.[plot]')")
    os.rename("run.jsonl", os.fsdecode(b"r\xff.jsonl"))
    done = fastnn("plot", os.fsdecode(b"r\xff.jsonl"), "--out", "p.png", cwd=made)
    assert done.returncode == 0 and (made / "p.png").read_bytes()[:4] == b"\x89PNG", done.stderr
    assert "r\\xff.jsonl" in shown(os.fsdecode(b"r\xff.jsonl"))


def test_the_longest_name_that_fits_is_written(made, tiny):
    """The limit the message names is the limit that holds (item 21): that name is written, one more is refused."""
    limit = int(re.search(r"at most (\d+) bytes", cli_error(["--out", "a" * 240 + ".npz"])).group(1))
    name = "a" * (limit - 4) + ".npz"
    assert cli.main(["train", "--dataset", str(tiny), *BASE, "--device", "cpu", "--out", name]) == 0
    assert (made / name).is_file()
    assert "temporary name" in cli_error(["--out", "b" * (limit - 3) + ".npz"])


def cli_error(extra):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "fastnn", "train", "--dataset", "tiny.npz", *BASE, *extra],
                          capture_output=True, text=True, check=False, env={**os.environ, "FASTNN_DEVICE": "cpu",
                                                               "PYTHONPATH": str(cli.Path(cli.__file__).parents[1])})
    assert done.returncode == 2, done.stderr
    return done.stderr


def test_register_api():
    """The small API other commands use (fastnn sweep): read, write, check."""
    paths = Paths()
    paths.read("--dataset", __file__, "the dataset")
    paths.write("--out", __file__, "the model")
    with pytest.raises(ConfigError, match="--out .* is the dataset"):
        paths.check()
    folder = Paths()
    folder.read("--resume", "/nonexistent/ck/checkpoint.npz", "the checkpoint this run resumes")
    folder.write("--checkpoint", "/nonexistent/ck", "the checkpoint folder", folder=True, rereads="--resume",
                 also=[("checkpoint.npz", "the checkpoint")])
    with pytest.raises(ConfigError, match="the folder /nonexistent does not exist"):
        folder.check()


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_the_plot_and_bench_outputs_are_atomic(tmp_path, monkeypatch):
    """A full disk leaves no 0-byte or partial image or report behind (item 9)."""
    pytest.importorskip("matplotlib", reason="the plot and the chart are drawn with matplotlib (pip install '.[plot]')")
    import fastnn.files

    records = [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]
    monkeypatch.setattr(fastnn.files.os, "fsync", full_disk)
    with pytest.raises(ModelFileError, match="cannot write the plot"):
        metrics_log.plot(records, tmp_path / "p.png")
    with pytest.raises(ModelFileError, match="cannot write the report"):
        benchreport.write_json({"results": []}, tmp_path / "b.json")
    assert os.listdir(tmp_path) == []


def test_bench_chart_on_a_full_disk_says_so(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib", reason="the plot and the chart are drawn with matplotlib (pip install '.[plot]')")
    import fastnn.files

    report = {"results": [{"config": "textbook", "label": "fastnn", "impl": "fastnn", "device": "cpu",
                           "engine": "generic", "examples_per_s": 10.0, "scaled": False}],
              "machine": {"devices": {}, "date": "2026-01-01", "cpu": "x", "threads": {"requested": 1}},
              "settings": {"quick": True}}
    monkeypatch.setattr(benchreport, "_rows", lambda r: r["results"])
    monkeypatch.setattr(fastnn.files.os, "fsync", full_disk)
    with pytest.raises(ModelFileError, match="cannot write the chart"):
        benchreport.write_chart(report, tmp_path / "c.png")
    assert os.listdir(tmp_path) == []
