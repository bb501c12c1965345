"""The fastnn command end to end, as a user runs it: exit codes, one-line errors, files written."""

import re
from pathlib import Path

import pytest

from .conftest import FASHION_DIR, MNIST_DIR, fastnn


def test_train_then_evaluate(tmp_path, tiny):
    model = tmp_path / "model.npz"
    run = fastnn("train", "--dataset", tiny, "--layers", "4,8,3", "--epochs", 5, "--batch-size", 16,
                 "--lr", 1.0, "--seed", 1, "--out", model)
    assert run.returncode == 0, run.stderr
    assert len(re.findall(r"^epoch \d/5: loss [\d.]+, [\d.]+ s, [\d,]+ ex/s, cpu, (generic|blas-cpu) engine$", run.stdout, re.MULTILINE)) == 5
    accuracy = float(re.search(r"^test: loss [\d.]+, accuracy ([\d.]+)", run.stdout, re.MULTILINE).group(1))
    assert accuracy >= 0.9
    assert model.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    again = fastnn("evaluate", "--model", model, "--dataset", tiny)
    assert again.returncode == 0, again.stderr
    assert f"accuracy {accuracy:.4f}" in again.stdout


def test_quiet_prints_only_the_result(tiny):
    run = fastnn("train", "--dataset", tiny, "--layers", "4,3", "--epochs", 2, "--quiet", "--seed", 0)
    assert run.returncode == 0 and run.stdout.count("\n") == 1 and run.stdout.startswith("test:")


def test_info(tiny):
    run = fastnn("info")
    assert run.returncode == 0
    assert re.search(r"^fastnn: \d", run.stdout, re.MULTILINE) and re.search(r"^device: cpu$", run.stdout, re.MULTILINE)
    assert re.search(r"^blas: ", run.stdout, re.MULTILINE)


def test_offline_without_mnist_names_the_ways_to_supply_it(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path), "FASTNN_DATA": str(tmp_path / "none"),
           "FASTNN_MIRROR": "http://127.0.0.1:9/"}  # the discard port: nothing listens
    if Path("/usr/share/datasets/mnist").exists():
        pytest.skip("this machine has MNIST installed under /usr/share/datasets")
    run = fastnn("train", env=env, timeout=120)
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert "--data-dir" in run.stderr and "dataset-fashion-mnist" in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_mnist_from_a_data_dir(tmp_path):
    if not MNIST_DIR.exists():
        pytest.skip(f"no MNIST at {MNIST_DIR}")
    folder = tmp_path / "mnist"
    folder.mkdir()
    for kind in ("images-idx3", "labels-idx1"):  # only the test set exists here: it plays both parts
        for split in ("train", "t10k"):
            (folder / f"{split}-{kind}-ubyte.gz").symlink_to(MNIST_DIR / f"t10k-{kind}-ubyte.gz")
    run = fastnn("train", "--data-dir", folder, "--epochs", 1, "--validation-size", 2000, "--seed", 0)
    assert run.returncode == 0, run.stderr
    assert re.search(r"val accuracy 0\.(9\d|8[5-9])", run.stdout), run.stdout


@pytest.mark.slow
def test_fashion_mnist_reaches_80_percent():
    """The issue's acceptance run: fastnn train --dataset fashion-mnist --layers 784,100,10 --epochs 3."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    run = fastnn("train", "--dataset", "fashion-mnist", "--layers", "784,100,10", "--epochs", 3, "--seed", 0,
                 env={"FASTNN_DATA": "/nonexistent", "XDG_CACHE_HOME": "/nonexistent"})
    assert run.returncode == 0, run.stderr
    accuracy = float(re.search(r"^test: loss [\d.]+, accuracy ([\d.]+)", run.stdout, re.MULTILINE).group(1))
    assert accuracy >= 0.80, run.stdout
