"""Model files: round trip, atomic writes, and files that are not what they claim."""

import json
import os

import numpy as np
import pytest

from fastnn import ModelFileError, Network, checkpoint, load_model, save_model

from .conftest import cuda_reason


def test_round_trip_keeps_predictions(device, tmp_path, rng):
    net = Network([4, 6, 3], activation="tanh", output="softmax", cost="log-likelihood", device=device, seed=1)
    X = rng.random((9, 4))
    path = tmp_path / "m.npz"
    save_model(net, path)
    back = load_model(path, device="cpu")
    assert back.sizes == [4, 6, 3] and back.cost.name == "log-likelihood" and back.dtype == np.float32
    assert [a.name for a in back.activations] == ["tanh", "softmax"]
    np.testing.assert_array_equal(back.forward(X), net.forward(X))
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary file left
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # like any file the user makes, not 0600


def test_failed_write_leaves_nothing(tmp_path):
    def explode(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        checkpoint.atomic_write(tmp_path / "m.npz", explode)
    assert list(tmp_path.iterdir()) == []


def write_raw(path, header, **arrays):
    np.savez(path, header=np.array(json.dumps(header)), **arrays)


GOOD = {"format": "fastnn-model", "version": 1, "sizes": [2, 1], "activation": "sigmoid",
        "output": "sigmoid", "cost": "quadratic", "dtype": "float32"}


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_bytes(b"hello"), "not a readable fastnn model file"),
    (lambda p: np.savez(p, W0=np.zeros((1, 2))), "not a fastnn model file"),
    (lambda p: write_raw(p, dict(GOOD, version=99), W0=np.zeros((1, 2)), b0=np.zeros(1)), "newer than this fastnn"),
    (lambda p: write_raw(p, GOOD, W0=np.zeros((1, 2))), "lacks the arrays b0"),
    (lambda p: write_raw(p, GOOD, W0=np.zeros((2, 2)), b0=np.zeros(1)), "expected W"),
    (lambda p: write_raw(p, GOOD, W0=np.full((1, 2), np.nan), b0=np.zeros(1)), "NaN"),
    (lambda p: write_raw(p, dict(GOOD, cost="hinge"), W0=np.zeros((1, 2)), b0=np.zeros(1)), "invalid header"),
    (lambda p: write_raw(p, dict(GOOD, dtype="float16"), W0=np.zeros((1, 2)), b0=np.zeros(1)),
     "invalid header: dtype must be one of float32, float64; got 'float16'"),
    (lambda p: write_raw(p, dict(GOOD, version=0), W0=np.zeros((1, 2)), b0=np.zeros(1)),
     "version must be an integer >= 1; got 0"),
    (lambda p: write_raw(p, {k: v for k, v in GOOD.items() if k != "sizes"}), "invalid header: it lacks sizes"),
    (lambda p: write_raw(p, [1, 2]), "not a fastnn model file"),
    (lambda p: write_raw(p, GOOD, W0=np.array([["a", "b"]]), b0=np.zeros(1)), "W0 must hold numbers; got dtype <U1"),
    (lambda p: np.save(p.with_suffix(".npy"), np.zeros(3)) or p.with_suffix(".npy").rename(p),
     "not a zip archive of arrays"),
    (lambda p: p.mkdir(), "is a folder"),
])
def test_bad_model_files(tmp_path, make, words):
    path = tmp_path / "m.npz"
    make(path)
    with pytest.raises(ModelFileError, match=words):
        load_model(path, device="cpu")


def test_network_without_hidden_layer_round_trips(tmp_path):
    """A 2-layer softmax net once wrote activation 'softmax' and could not be read back."""
    net = Network([4, 3], output="softmax", cost="log-likelihood", device="cpu", seed=3)
    save_model(net, tmp_path / "m.npz")
    back = load_model(tmp_path / "m.npz", device="cpu")
    assert back.activations[-1].name == "softmax" and back.seed == 3
    np.testing.assert_array_equal(back.weights[0], net.weights[0])
    header = json.loads(str(np.load(tmp_path / "m.npz")["header"]))
    write_raw(tmp_path / "old.npz", dict(header, activation="softmax"), W0=net.weights[0], b0=net.biases[0])
    np.testing.assert_array_equal(load_model(tmp_path / "old.npz", device="cpu").biases[0], net.biases[0])


def test_truncated_and_missing_model_file(tmp_path):
    path = tmp_path / "m.npz"
    save_model(Network([3, 2], device="cpu"), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        load_model(path, device="cpu")
    os.unlink(path)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(path, device="cpu")


@pytest.mark.gpu
def test_models_move_between_gpu_and_cpu_with_identical_predictions(tmp_path, rng):
    reason = cuda_reason()
    if reason:
        pytest.skip(f"no CUDA device: {reason}")
    X, y = rng.normal(size=(200, 6)), rng.integers(0, 4, 200)
    for trained, loaded in (("cuda", "cpu"), ("cpu", "cuda")):
        net = Network([6, 16, 4], activation="relu", output="softmax", cost="log-likelihood", device=trained, seed=2)
        net.fit(X, y, epochs=3, batch_size=20, lr=0.1, momentum=0.9)
        save_model(net, tmp_path / f"{trained}.npz")
        back = load_model(tmp_path / f"{trained}.npz", device=loaded)
        assert back.backend.device.startswith(loaded)
        for a, b in zip(back.weights + back.biases, net.weights + net.biases):
            np.testing.assert_array_equal(a, b)  # the same numbers, whatever the device
        np.testing.assert_array_equal(back.predict(X), net.predict(X))
        np.testing.assert_allclose(back.forward(X), net.forward(X), rtol=1e-5, atol=1e-6)


def test_paths_that_are_not_paths(tmp_path):
    from fastnn import ConfigError, load_checkpoint, save_checkpoint

    net = Network([3, 2], device="cpu")
    for call in (lambda: save_model(net, None), lambda: load_model(3), lambda: load_checkpoint(None),
                 lambda: save_checkpoint("", net, None)):
        with pytest.raises(ConfigError, match="must be a path .str or pathlib.Path.; got"):
            call()
