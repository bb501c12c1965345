"""Binary classification and regression are first-class; a one-unit softmax is refused; advice names the cause."""

import warnings

import numpy as np
import pytest

from fastnn import Network, load_model
from fastnn.errors import ConfigError, DataError, NotLearningWarning

from .conftest import fastnn


def binary(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64)


def regression(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, 3))
    return X, X @ np.array([0.5, -0.3, 0.2]) + 0.1


def test_one_unit_takes_0_1_labels_with_sigmoid_and_cross_entropy():
    X, y = binary()
    net = Network([4, 8, 1], activation="relu", device="cpu", seed=0)
    assert (net.activations[-1].name, net.cost.name) == ("sigmoid", "cross-entropy")
    net.fit(X, y, epochs=10, batch_size=10)
    result = net.evaluate(X, y)
    assert set(result) == {"loss", "accuracy"} and result["accuracy"] > 0.9
    assert set(np.unique(net.predict(X))) <= {0, 1}
    with pytest.raises(DataError, match="must be 0 or 1 for one sigmoid output unit"):
        net.fit(X, y + 1, epochs=1, batch_size=10)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "identity"])
def test_a_softmax_over_one_unit_is_refused_with_the_reason(activation):
    with pytest.raises(ConfigError, match="softmax over one output unit always outputs 1"):
        Network([4, 1], activation=activation, output="softmax")


def test_cli_refuses_a_one_unit_softmax_in_one_line(tiny):
    run = fastnn("train", "--dataset", tiny, "--layers", "4,1", "--output", "softmax", "--epochs", 1)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "softmax over one output unit" in run.stderr


def test_regression_reports_loss_rmse_and_r2_by_their_formulas():
    X, t = regression()
    net = Network([3, 8, 1], activation="tanh", output="identity", device="cpu", seed=0)
    assert net.cost.name == "quadratic" and net.regression
    history = net.fit(X[:300], t[:300], epochs=20, batch_size=10, validation_data=(X[300:], t[300:]))
    assert {"val_loss", "val_rmse", "val_r2"} <= set(history.records[-1]) and "val_accuracy" not in history.records[-1]
    result = net.evaluate(X[300:], t[300:])
    a = net.forward(X[300:])[:, 0].astype(np.float64)
    err = a - t[300:]
    assert result["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-5)
    assert result["r2"] == pytest.approx(1 - np.sum(err ** 2) / np.sum((t[300:] - t[300:].mean()) ** 2), rel=1e-5)
    assert result["loss"] == pytest.approx(np.sum(err ** 2) / 2 / len(err), rel=1e-4)
    assert result["r2"] > 0.9
    np.testing.assert_allclose(net.predict(X[300:]), a, rtol=1e-6)  # the values, not classes


def test_regression_early_stop_and_best_epoch_watch_the_validation_loss(tmp_path):
    X, t = regression()
    net = Network([3, 8, 1], activation="tanh", output="identity", device="cpu", seed=0)
    history = net.fit(X[:300], t[:300], epochs=15, batch_size=10, lr=0.05, validation_data=(X[300:], t[300:]),
                      early_stop=2, save_best=tmp_path / "best.npz")
    losses = [r["val_loss"] for r in history.records]
    assert history.best_epoch == 1 + int(np.argmin(losses))
    best = load_model(tmp_path / "best.npz", device="cpu")
    assert best.evaluate(X[300:], t[300:])["loss"] == pytest.approx(min(losses), rel=1e-5)


def test_cli_regression_prints_rmse_and_r2(tmp_path):
    X, t = regression()
    np.savez(tmp_path / "r.npz", x_train=X[:300], y_train=t[:300], x_test=X[300:], y_test=t[300:])
    run = fastnn("train", "--dataset", tmp_path / "r.npz", "--layers", "3,8,1", "--activation", "tanh", "--output",
                 "identity", "--epochs", 3, "--seed", 0, "--validation-size", 50, "--early-stop", 2, "--save-best",
                 "--out", tmp_path / "m.npz")
    assert run.returncode == 0, run.stderr
    assert "val RMSE" in run.stdout and "R²" in run.stdout and "accuracy" not in run.stdout
    run = fastnn("evaluate", "--model", tmp_path / "m.npz")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("test: loss ") and "RMSE" in run.stdout


def first_epoch_warning(net, X, y, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net.fit(X, y, epochs=1, **options)
    found = [str(w.message) for w in caught if issubclass(w.category, NotLearningWarning)]
    return found[0] if found else None


def test_advice_names_too_few_updates_per_epoch():
    X, _ = binary(200)
    y3 = np.random.default_rng(1).integers(0, 3, 200)  # random labels: at chance whatever the batch size
    said = first_epoch_warning(Network([4, 8, 3], activation="relu", device="cpu", seed=0), X, y3, batch_size=200)
    assert "only 1 update of the weights" in said and "--batch-size" in said and "smaller learning rate" not in said


def test_advice_names_raw_pixels():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (300, 16)).astype(np.float32)  # raw pixels as floats: not scaled by the rule
    y = rng.integers(0, 3, 300)
    said = first_epoch_warning(Network([16, 8, 3], activation="relu", device="cpu", seed=0), X, y, batch_size=10)
    assert said is not None and "raw 0-255 pixels" in said and "255" in said


def test_a_run_already_at_100_percent_is_not_not_learning():
    X = np.random.default_rng(0).normal(size=(100, 4))
    y = np.zeros(100, np.int64)  # one class: accuracy 1.0 is chance too
    assert first_epoch_warning(Network([4, 8, 2], activation="relu", device="cpu", seed=0), X, y,
                               batch_size=10) is None
