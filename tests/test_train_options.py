"""fastnn train's run options: --resume remembers, --checkpoint does not clobber, --save-best and --early-stop,
--log and --plot (and fastnn plot), the header line, the history kept in the model file."""

import json
import re
import warnings

import numpy as np
import pytest

from fastnn import ConfigError, MetricsLog, Network, NotLearningWarning, load_checkpoint, load_model
from fastnn.metrics_log import plot, read_log

from .conftest import ROOT, fastnn

PNG = b"\x89PNG\r\n\x1a\n"


def test_resume_remembers_the_runs_settings(tmp_path, tiny):
    first = ("--layers", "4,8,3", "--activation", "tanh", "--lr", 0.2, "--batch-size", 16, "--momentum", 0.5,
             "--seed", 3, "--validation-size", 40)
    run = fastnn("train", "--dataset", tiny, *first, "--epochs", 2, "--checkpoint", tmp_path / "ck")
    assert run.returncode == 0, run.stderr
    straight = fastnn("train", "--dataset", tiny, *first, "--epochs", 4)
    resumed = fastnn("train", "--dataset", tiny, "--resume", tmp_path / "ck", "--epochs", 4)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"tanh/softmax.*seed 3, resuming after epoch 2; epochs 4, batch size 16, lr 0.2, momentum 0.5",
                     resumed.stdout), resumed.stdout
    # the test line, bit-identical (the last line, since issue 21, says the model was not saved)
    assert resumed.stdout.splitlines()[-2] == straight.stdout.splitlines()[-2]
    assert resumed.stdout.splitlines()[-2].startswith("test: loss ")
    net, state = load_checkpoint(tmp_path / "ck", device="cpu")
    assert state.epoch == 4 and state.settings["epochs"] == 4 and net.dataset["validation_size"] == "40"
    again = fastnn("train", "--resume", tmp_path / "ck", "--epochs", 5)  # the dataset too comes from the checkpoint
    assert again.returncode == 0 and "epoch 5/5" in again.stdout, again.stderr
    refused = fastnn("train", "--resume", tmp_path / "ck", "--epochs", 6, "--lr", 0.5)
    assert refused.returncode == 2 and "used --lr 0.2, but this command has --lr 0.5" in refused.stderr


def test_a_checkpoint_folder_of_another_run_is_not_clobbered(tmp_path, tiny):
    args = ("train", "--dataset", tiny, "--layers", "4,3", "--epochs", 1, "--checkpoint", tmp_path / "ck")
    assert fastnn(*args, "--seed", 1).returncode == 0
    before = (tmp_path / "ck" / "checkpoint.npz").read_bytes()
    run = fastnn(*args, "--seed", 2)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert re.search(r"checkpoint folder .*ck already holds the checkpoint of another run .*--resume .*--overwrite",
                     run.stderr), run.stderr
    assert (tmp_path / "ck" / "checkpoint.npz").read_bytes() == before
    assert fastnn(*args, "--seed", 2, "--overwrite").returncode == 0
    assert load_checkpoint(tmp_path / "ck", device="cpu")[0].seed == 2
    X, y = np.random.default_rng(0).normal(size=(20, 4)), np.arange(20) % 3
    with pytest.raises(ConfigError, match="already holds the checkpoint of another run"):
        Network([4, 3], device="cpu", seed=0).fit(X, y, epochs=1, batch_size=5, checkpoint=tmp_path / "ck")
    Network([4, 3], device="cpu", seed=0).fit(X, y, epochs=1, batch_size=5, checkpoint=tmp_path / "ck", overwrite=True)


def test_save_best_and_early_stop(tmp_path, tiny):
    out = tmp_path / "best.npz"
    run = fastnn("train", "--dataset", tiny, "--layers", "4,8,3", "--epochs", 40, "--seed", 0, "--validation-size", 40,
                 "--save-best", "--early-stop", 3, "--out", out)
    assert run.returncode == 0, run.stderr
    accuracies = [float(a) for a in re.findall(r"val accuracy ([\d.]+)", run.stdout)]
    best = int(np.argmax(accuracies)) + 1
    assert len(accuracies) == best + 3 < 40
    assert f"stopped early after epoch {best + 3}: no better validation accuracy for 3 epochs (best: epoch {best}" in \
        run.stdout
    assert f"saved the model of epoch {best} (the best validation accuracy, {accuracies[best - 1]:.4f})" in run.stdout
    model = load_model(out, device="cpu")
    assert len(model.history) == best and model.history.best_epoch == best
    tested = re.search(r"^test \(the model of epoch \d+\): (loss [\d.]+, accuracy [\d.]+)", run.stdout, re.MULTILINE).group(1)
    assert tested in fastnn("evaluate", "--model", out).stdout
    assert fastnn("train", "--dataset", tiny, "--save-best").returncode == 2  # needs --out
    no_val = fastnn("train", "--dataset", tiny, "--layers", "4,3", "--early-stop", 2)
    assert no_val.returncode == 2 and "give --validation-size N > 0" in no_val.stderr


def test_early_stop_and_save_best_from_python(tmp_path, rng):
    X, y = rng.normal(size=(120, 4)), rng.integers(0, 3, 120)  # random labels: validation accuracy soon stops rising
    net = Network([4, 6, 3], activation="relu", device="cpu", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotLearningWarning)  # random labels: at chance on purpose
        history = net.fit(X[:80], y[:80], epochs=50, batch_size=8, validation_data=(X[80:], y[80:]), early_stop=2,
                          save_best=tmp_path / "b.npz")
    assert len(history) == history.best_epoch + 2 < 50 and history.since_best() == 2
    kept = load_model(tmp_path / "b.npz", device="cpu")
    assert kept.history.records == history.records[:history.best_epoch]
    with pytest.raises(ConfigError, match="need validation_data"):
        net.fit(X, y, epochs=1, batch_size=8, early_stop=2)


@pytest.mark.parametrize("ext", ["jsonl", "csv"])
def test_log_and_plot(tmp_path, tiny, ext):
    pytest.importorskip("matplotlib", reason="--plot draws with matplotlib: pip install '.[plot]'")
    log, png = tmp_path / f"run.{ext}", tmp_path / "run.png"
    run = fastnn("train", "--dataset", tiny, "--layers", "4,8,3", "--epochs", 3, "--seed", 0, "--validation-size", 40,
                 "--log", log, "--plot", png, "--out", tmp_path / "m.npz")
    assert run.returncode == 0, run.stderr
    assert f"drew the curves to {png}" in run.stdout and png.read_bytes()[:8] == PNG
    records = read_log(log)
    assert [r["epoch"] for r in records] == [1, 2, 3] and {"loss", "val_loss", "val_accuracy", "seconds"} <= set(records[0])
    if ext == "jsonl":
        assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2, 3]
    else:
        assert log.read_text().splitlines()[0].startswith("epoch,loss,val_loss,val_accuracy,seconds")
    losses = [float(v) for v in re.findall(r"^epoch \d/3: loss ([\d.]+)", run.stdout, re.MULTILINE)]
    assert [round(r["loss"], 4) for r in records] == losses
    assert load_model(tmp_path / "m.npz", device="cpu").history.loss == [r["loss"] for r in records]
    again = fastnn("plot", log, "--out", tmp_path / "again.png")
    assert again.returncode == 0 and (tmp_path / "again.png").read_bytes()[:8] == PNG, again.stderr
    refused = fastnn("train", "--dataset", tiny, "--layers", "4,3", "--log", log)
    assert refused.returncode == 2 and "already exists; give another name, or --overwrite" in refused.stderr


def test_log_from_python_and_a_resumed_run_keeps_the_whole_history(tmp_path, tiny):
    args = ("train", "--dataset", tiny, "--layers", "4,3", "--seed", 0, "--log", tmp_path / "log.jsonl")
    assert fastnn(*args, "--epochs", 2, "--checkpoint", tmp_path / "ck").returncode == 0
    assert fastnn("train", "--resume", tmp_path / "ck", "--epochs", 3, "--log", tmp_path / "log.jsonl").returncode == 0
    assert [r["epoch"] for r in read_log(tmp_path / "log.jsonl")] == [1, 2, 3]
    X, y = np.random.default_rng(0).normal(size=(30, 4)), np.arange(30) % 3
    log = MetricsLog(tmp_path / "api.csv")
    history = Network([4, 3], device="cpu", seed=0).fit(X, y, epochs=2, batch_size=5, callback=log)
    assert [r["loss"] for r in read_log(tmp_path / "api.csv")] == pytest.approx(history.loss)


def test_plot_from_python(tmp_path):
    pytest.importorskip("matplotlib", reason="plot draws with matplotlib: pip install '.[plot]'")
    X, y = np.random.default_rng(0).normal(size=(30, 4)), np.arange(30) % 3
    history = Network([4, 3], device="cpu", seed=0).fit(X, y, epochs=2, batch_size=5)
    assert plot(history.records, tmp_path / "api.png").read_bytes()[:8] == PNG


def test_without_matplotlib_plotting_is_one_line(tmp_path, tiny):
    (tmp_path / "shim" / "matplotlib").mkdir(parents=True)
    (tmp_path / "shim" / "matplotlib" / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = {"PYTHONPATH": f"{ROOT}:{tmp_path / 'shim'}"}
    (tmp_path / "log.jsonl").write_text('{"epoch": 1, "loss": 0.5}\n')
    run = fastnn("plot", tmp_path / "log.jsonl", env=env)
    assert run.returncode == 1 and run.stderr.count("\n") == 1
    assert "drawing curves needs matplotlib, which cannot be imported" in run.stderr
    assert "pip install matplotlib" in run.stderr
    run = fastnn("train", "--dataset", tiny, "--plot", tmp_path / "p.png", env=env)
    assert run.returncode == 1 and run.stdout == "" and "needs matplotlib" in run.stderr  # before any training


def test_the_header_line_names_every_hyperparameter(tiny):
    run = fastnn("train", "--dataset", tiny, "--layers", "4,8,3", "--activation", "relu", "--epochs", 1, "--seed", 5,
                 "--l2", 0.1, "--validation-size", 40, "--early-stop", 4)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == (
        "Network([4, 8, 3], relu/softmax, cost=log-likelihood, device=cpu, dtype=float32), seed 5, init auto; "
        "epochs 1, batch size 10, lr 0.05, momentum 0, l2 0.1, engine auto, early stop 4; 200 training, "
        "40 validation, 60 test examples")
