"""The one input rule (fastnn/inputs.py): the same raw array gives the same answers through the API and the CLI."""

import warnings

import numpy as np
import pytest

from fastnn import Network, load_model, save_model
from fastnn.errors import InputRangeWarning
from fastnn.inputs import scale_of

from .conftest import fastnn


def pixels(n=200, seed=0):
    """uint8 'images' of 16 pixels whose class is which half is brighter."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (n, 16)).astype(np.uint8)
    y = (X[:, :8].astype(int).sum(1) > X[:, 8:].astype(int).sum(1)).astype(np.int64)
    return X, y


@pytest.fixture
def trained(tmp_path):
    X, y = pixels()
    net = Network([16, 12, 2], activation="relu", device="cpu", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net.fit(X, y, epochs=3, batch_size=10)
    path = tmp_path / "m.npz"
    save_model(net, path)
    return net, path


def test_scale_of_decides_by_the_whole_numbers():
    assert scale_of(np.zeros((2, 3), np.uint8)) == 255
    assert scale_of(np.array([[0, 17, 255]], np.int64)) == 255
    assert scale_of(np.array([[0, 1, 1]], np.int64)) == 1  # 0/1 features are not pixels
    assert scale_of(np.array([[0, 300]], np.int64)) == 1
    assert scale_of(np.array([[0.0, 255.0]])) == 1  # real numbers are taken as they are


def test_fit_on_uint8_is_fit_on_pixels_scaled_to_0_1():
    X, y = pixels()
    a = Network([16, 12, 2], activation="relu", device="cpu", seed=0)
    b = Network([16, 12, 2], activation="relu", device="cpu", seed=0)
    a.fit(X, y, epochs=2, batch_size=10)
    b.fit(X.astype(np.float64) / 255, y, epochs=2, batch_size=10)
    assert a.input_scale == 255 and b.input_scale == 1
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    assert a.evaluate(X, y) == pytest.approx(b.evaluate(X / 255, y))
    np.testing.assert_array_equal(a.predict(X), b.predict(X / 255))
    np.testing.assert_allclose(a.forward(X), a.forward(X.astype(np.float32) / 255), rtol=1e-5)


def test_the_model_file_records_the_scale_and_range(trained):
    net, path = trained
    again = load_model(path, device="cpu")
    assert again.input_scale == 255
    assert again.input_range == pytest.approx(net.input_range)
    assert 0 <= net.input_range[0] and net.input_range[1] <= 1


@pytest.mark.parametrize("write", ["npy-uint8", "npy-int64", "csv"])
def test_the_same_pixels_give_the_same_answers_through_the_api_and_the_cli(tmp_path, trained, write):
    net, path = trained
    X, _ = pixels(30, seed=1)
    if write == "npy-uint8":
        np.save(tmp_path / "x.npy", X)
        given = tmp_path / "x.npy"
    elif write == "npy-int64":
        np.save(tmp_path / "x.npy", X.astype(np.int64))
        given = tmp_path / "x.npy"
    else:
        np.savetxt(tmp_path / "x.csv", X, fmt="%d", delimiter=",")
        given = tmp_path / "x.csv"
    run = fastnn("predict", "--model", path, given)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(v) for v in net.predict(X)]
    run = fastnn("predict", "--model", path, given, "--proba")
    assert run.returncode == 0, run.stderr
    np.testing.assert_allclose(np.loadtxt(run.stdout.splitlines(), delimiter=","), net.forward(X), atol=1e-5)
    assert run.stderr == ""  # scaled as in training: no range warning


def test_one_example_as_a_1d_array_is_one_row(trained):
    net, _ = trained
    X, _ = pixels(3, seed=2)
    assert net.predict(X[0]).tolist() == net.predict(X[:1]).tolist()
    assert net.forward(X[1]).shape == (1, 2)


def test_raw_pixels_as_floats_warn_once_naming_the_cause(tmp_path, trained):
    net, path = trained
    X, _ = pixels(30, seed=1)
    with pytest.warns(InputRangeWarning, match="raw 0-255 pixels .* divide them by 255") as caught:
        net.predict(X.astype(np.float64))
    assert len(caught) == 1
    np.save(tmp_path / "x.npy", X.astype(np.float64))
    run = fastnn("predict", "--model", path, tmp_path / "x.npy")
    assert run.returncode == 0
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastnn: warning: the inputs reach") and "255" in lines[0]


def test_inputs_inside_the_range_do_not_warn(trained):
    net, _ = trained
    X, _ = pixels(30, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.predict(X)
        net.predict(X / 255)


def test_cli_models_of_pixel_datasets_record_255(tmp_path):
    X, y = pixels(120)
    np.savez(tmp_path / "d.npz", x_train=X[:100], y_train=y[:100], x_test=X[100:], y_test=y[100:])
    run = fastnn("train", "--dataset", tmp_path / "d.npz", "--layers", "16,8,2", "--activation", "relu", "--epochs", 1,
                 "--seed", 0, "--quiet", "--out", tmp_path / "m.npz")
    assert run.returncode == 0, run.stderr
    net = load_model(tmp_path / "m.npz", device="cpu")
    assert net.input_scale == 255
    # the test set through the API, as the uint8 array, scores what the CLI printed
    result = net.evaluate(X[100:], y[100:])
    assert f"accuracy {result['accuracy']:.4f}" in run.stdout
