"""fastnn sweep, end to end from the command line: the table, log, plot, best model, ensemble, checkpoint and
resume, stop signals, bad grids (fastnn.sweep, fastnn.sweep_files, fastnn.ensemble)."""

import importlib.util
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fastnn import Network, load_model
from fastnn.ensemble import Ensemble, save_ensemble

from .conftest import ROOT, double_env, fastnn

GRID = ["--layers", "4,8,3", "--validation-size", "60", "--lr", "0.5,1", "--momentum", "0,0.5", "--seeds", "0-1"]


def sweep(tiny, out, *extra):
    return fastnn("sweep", "--dataset", tiny, *GRID, "--out-dir", out, *extra)


def log_of(folder):
    return [json.loads(line) for line in (folder / "sweep-log.jsonl").read_text().splitlines()]


def test_sweep_writes_the_table_log_plot_best_model_and_ensemble(tiny, tmp_path):
    out = tmp_path / "out"
    run = sweep(tiny, out, "--epochs", "3", "--keep-all", "--ensemble")
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("lr")]
    assert len(rows) == 4 and all("±" in row for row in rows)  # one row per setting, mean ± spread over seeds
    assert (out / "sweep-table.txt").read_text().count("±") == 8
    log = log_of(out)
    assert len(log) == 8 * 3 and {r["model"] for r in log} == set(range(8)) and {r["seed"] for r in log} == {0, 1}
    if importlib.util.find_spec("matplotlib") is None:  # the plot is test_the_sweep_draws_its_plot's
        assert not (out / "sweep.png").exists() and "no plot:" in run.stdout
    assert len(list((out / "models").glob("model-*.npz"))) == 7
    best = load_model(out / "best-model.npz")
    finals = {r["model"]: r["val_accuracy"] for r in log if r["epoch"] == 3}
    assert best.history.val_accuracy[-1] == max(finals.values())
    evaluate = fastnn("evaluate", "--model", out / "best-model.npz")
    assert evaluate.returncode == 0 and "accuracy" in evaluate.stdout, evaluate.stderr
    ensemble = load_model(out / "best-ensemble.npz")
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 2
    evaluate = fastnn("evaluate", "--model", out / "best-ensemble.npz", "--dataset", tiny)
    assert evaluate.returncode == 0 and "accuracy" in evaluate.stdout, evaluate.stderr


def test_an_ensemble_averages_its_members_outputs(tiny, tmp_path):
    data = np.load(tiny)
    X, y = data["x_train"], data["y_train"]
    members = [Network([4, 8, 3], seed=s) for s in range(3)]
    for net in members:
        net.fit(X, y, 2, 10, lr=1.0)
    save_ensemble(members, tmp_path / "e.npz")
    ensemble = load_model(tmp_path / "e.npz")
    mean = np.mean([net.forward(X).astype(np.float64) for net in members], axis=0)
    np.testing.assert_allclose(ensemble.forward(X), mean, rtol=1e-6)
    assert (ensemble.predict(X) == mean.argmax(axis=1)).all()
    assert ensemble.evaluate(X, y)["accuracy"] == pytest.approx((mean.argmax(axis=1) == y).mean())
    np.save(tmp_path / "x.npy", X[:5])
    run = fastnn("predict", "--model", tmp_path / "e.npz", tmp_path / "x.npy")
    assert run.returncode == 0 and run.stdout.split() == [str(c) for c in mean.argmax(axis=1)[:5]]


def test_resume_of_the_whole_sweep_is_bit_identical(tiny, tmp_path):
    assert sweep(tiny, tmp_path / "straight", "--epochs", "4", "--quiet").returncode == 0
    first = sweep(tiny, tmp_path / "resumed", "--epochs", "2", "--checkpoint", tmp_path / "ck", "--quiet")
    assert first.returncode == 0, first.stderr
    other = fastnn("sweep", "--resume", tmp_path / "ck", "--lr", "0.5", "--out-dir", tmp_path / "resumed")
    assert other.returncode == 2 and "the sweep used --lr 0.5,1, but this command has --lr 0.5" in other.stderr
    again = fastnn("sweep", "--resume", tmp_path / "ck", "--epochs", "4", "--out-dir", tmp_path / "resumed")
    assert again.returncode == 0, again.stderr
    a, b = load_model(tmp_path / "straight" / "best-model.npz"), load_model(tmp_path / "resumed" / "best-model.npz")
    assert a.params.tobytes() == b.params.tobytes()
    strip = lambda log: [{k: v for k, v in r.items() if k not in ("seconds", "examples_per_second")} for r in log]
    assert strip(log_of(tmp_path / "straight")) == strip(log_of(tmp_path / "resumed"))


def slow_data(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6000, 20))
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
    path = tmp_path / "slow.npz"
    np.savez(path, x_train=X[:5000], y_train=y[:5000], x_test=X[5000:], y_test=y[5000:])
    return path


@pytest.mark.parametrize("name, method", [("SIGTERM", "one-by-one"), ("SIGINT", "processes")])
def test_a_stop_signal_saves_the_sweep_and_resume_finishes_it(tmp_path, name, method):
    data = slow_data(tmp_path)
    grid = ["--dataset", data, "--layers", "20,32,3", "--validation-size", "1000", "--lr", "0.5,1", "--seeds", "0-1",
            "--method", method, "--engine", "generic"]
    out = tmp_path / "out"
    import os

    env = {**os.environ, "FASTNN_DEVICE": "cpu", "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "fastnn", "sweep", *map(str, grid), "--epochs", "40",
                              "--out-dir", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (out / "sweep-log.jsonl").exists() and time.time() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(getattr(signal, name))
    _stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 128 + getattr(signal, name), stderr
    assert len(stderr.strip().splitlines()) == 1 and "saved the sweep as it stood after epoch" in stderr
    saved = out / "checkpoint"
    resumed = fastnn("sweep", "--resume", saved, "--out-dir", out, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    straight = fastnn("sweep", *grid, "--epochs", "40", "--out-dir", tmp_path / "straight", "--quiet")
    assert straight.returncode == 0, straight.stderr
    a, b = load_model(out / "best-model.npz"), load_model(tmp_path / "straight" / "best-model.npz")
    assert a.params.tobytes() == b.params.tobytes()


@pytest.mark.parametrize("options, says", [
    (["--lr", ""], "--lr must be a comma-separated list of numbers"),
    (["--lr", "0.1,fast"], "--lr: 'fast' is not a number"),
    (["--batch-size", "10,0"], "--batch-size must be an integer >= 1"),
    (["--batch-size", "10.5"], "--batch-size: '10.5' is not an integer"),
    (["--l2", "0,0"], "--l2 lists a value twice"),
    (["--seeds", "4-1"], "--seeds must name at least one seed"),
    (["--seeds", "a-b"], "--seeds must be integers"),
    (["--layers", "4,4000,3", "--seeds", "0-999999"], "fit; train fewer models"),
])
def test_a_bad_grid_is_refused_in_one_line(tiny, tmp_path, options, says):
    run = fastnn("sweep", "--dataset", tiny, "--layers", "4,8,3", *options, "--out-dir", tmp_path / "out")
    assert run.returncode == 2 and says in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not (tmp_path / "out" / "sweep-log.jsonl").exists()


def test_outputs_never_overwrite_an_earlier_sweep_or_the_inputs(tiny, tmp_path):
    out = tmp_path / "out"
    assert sweep(tiny, out, "--epochs", "1", "--quiet").returncode == 0
    before = (out / "best-model.npz").read_bytes()
    again = sweep(tiny, out, "--epochs", "1")
    assert again.returncode == 2 and "already holds an earlier sweep" in again.stderr
    assert (out / "best-model.npz").read_bytes() == before
    inside = tmp_path / "in"
    inside.mkdir()
    (inside / "sweep-log.jsonl").write_bytes(tiny.read_bytes())
    run = fastnn("sweep", "--dataset", inside / "sweep-log.jsonl", *GRID, "--out-dir", inside, "--overwrite")
    assert run.returncode == 2 and "is the dataset" in run.stderr, run.stderr


def test_the_sweep_draws_its_plot(tiny, tmp_path):
    pytest.importorskip("matplotlib", reason="the sweep draws its plot with matplotlib (pip install '.[plot]')")
    out = tmp_path / "out"
    run = sweep(tiny, out, "--epochs", "2")
    assert run.returncode == 0, run.stderr
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert f"drew the sweep to {out / 'sweep.png'}" in run.stdout


def test_without_matplotlib_the_sweep_says_so_in_one_line(tiny, tmp_path):
    broken = tmp_path / "nompl" / "matplotlib"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('matplotlib is not installed here')\n")
    run = fastnn("sweep", "--dataset", tiny, *GRID, "--epochs", "1", "--out-dir", tmp_path / "out",
                 env={"PYTHONPATH": f"{tmp_path / 'nompl'}:{ROOT}"})
    assert run.returncode == 0, run.stderr
    assert [line for line in run.stdout.splitlines() if line.startswith("no plot:")]
    assert (tmp_path / "out" / "best-model.npz").exists() and not (tmp_path / "out" / "sweep.png").exists()


def test_on_the_cupy_double_the_sweep_trains_batched_and_resumes_bit_identically(tiny, tmp_path):
    env = {**double_env(), "FASTNN_DEVICE": "cuda"}
    grid = ["--dataset", tiny, *GRID, "--batch-size", "10,7", "--l2", "0,1"]
    straight = fastnn("sweep", *grid, "--epochs", "3", "--out-dir", tmp_path / "a", "--ensemble", env=env)
    assert straight.returncode == 0, straight.stderr
    assert {r["engine"] for r in log_of(tmp_path / "a")} == {"batched-generic"}
    first = fastnn("sweep", *grid, "--epochs", "2", "--out-dir", tmp_path / "b", "--checkpoint", tmp_path / "ck",
                   env=env)
    assert first.returncode == 0, first.stderr
    again = fastnn("sweep", "--resume", tmp_path / "ck", "--epochs", "3", "--out-dir", tmp_path / "b", env=env)
    assert again.returncode == 0, again.stderr
    a, b = load_model(tmp_path / "a" / "best-model.npz"), load_model(tmp_path / "b" / "best-model.npz")
    assert a.params.tobytes() == b.params.tobytes()
    evaluate = fastnn("evaluate", "--model", tmp_path / "a" / "best-ensemble.npz", "--dataset", tiny, env=env)
    assert evaluate.returncode == 0 and "cuda:0" in evaluate.stdout, evaluate.stderr
