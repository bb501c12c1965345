"""fastnn predict (inputs from .npy, .npz, .csv and IDX; labels, outputs, files) and evaluate that knows its model."""

import gzip
import re

import numpy as np
import pytest

from fastnn import load_model
from fastnn.data import load_test_set
from fastnn.errors import DataError
from fastnn.predict import read_inputs

from .conftest import MNIST_DIR, fastnn


@pytest.fixture
def model(tmp_path, tiny):
    path = tmp_path / "model.npz"
    run = fastnn("train", "--dataset", tiny, "--layers", "4,8,3", "--epochs", 3, "--seed", 1, "--out", path, "--quiet")
    assert run.returncode == 0, run.stderr
    return path


@pytest.fixture
def rows(tiny):
    with np.load(tiny) as f:
        return f["x_test"]


def write_idx(path, images):
    """An IDX file of uint8 images (n, rows, cols), gzipped."""
    header = bytes([0, 0, 0x08, 3]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    path.write_bytes(gzip.compress(header + images.astype(np.uint8).tobytes()))


@pytest.mark.parametrize("kind", ["npy", "npz", "csv"])
def test_predict_prints_one_label_per_line(tmp_path, model, rows, kind):
    path = tmp_path / f"inputs.{kind}"
    if kind == "npy":
        np.save(path, rows)
    elif kind == "npz":
        np.savez(path, x=rows)
    else:
        path.write_text("a,b,c,d\n" + "".join(",".join(map(repr, r)) + "\n" for r in rows.tolist()))
    run = fastnn("predict", "--model", model, path)
    assert run.returncode == 0, run.stderr
    want = load_model(model, device="cpu").predict(rows)
    assert run.stdout.split() == [str(v) for v in want] and len(want) == len(rows)


def test_predict_proba_and_out_files(tmp_path, model, rows):
    np.save(tmp_path / "x.npy", rows)
    net = load_model(model, device="cpu")
    run = fastnn("predict", "--model", model, tmp_path / "x.npy", "--proba", "--out", tmp_path / "p.npy")
    assert run.returncode == 0 and run.stdout == "", run.stderr
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), net.forward(rows))
    run = fastnn("predict", "--model", model, tmp_path / "x.npy", "--out", tmp_path / "labels.csv")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "labels.csv").read_text().split() == [str(v) for v in net.predict(rows)]
    run = fastnn("predict", "--model", model, tmp_path / "x.npy", "--proba")
    np.testing.assert_allclose(np.loadtxt(run.stdout.splitlines(), delimiter=","), net.forward(rows), atol=1e-5)


def test_predict_reads_idx_images_scaled_like_the_datasets(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 2, 2))
    labels = (images.reshape(20, 4)[:, 0] > 127).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x_train=images.astype(np.uint8), y_train=labels, x_test=images.astype(np.uint8),
             y_test=labels)
    run = fastnn("train", "--dataset", tmp_path / "d.npz", "--layers", "4,2", "--epochs", 1, "--seed", 0, "--quiet",
                 "--out", tmp_path / "m.npz")
    assert run.returncode == 0, run.stderr
    write_idx(tmp_path / "images-idx3-ubyte.gz", images)
    run = fastnn("predict", "--model", tmp_path / "m.npz", tmp_path / "images-idx3-ubyte.gz")
    assert run.returncode == 0, run.stderr
    net = load_model(tmp_path / "m.npz", device="cpu")
    assert net.input_scale == 255  # trained on uint8 pixels: the model file says so
    want = net.predict(images.reshape(20, 4) / 255)
    assert run.stdout.split() == [str(v) for v in want]
    assert [str(v) for v in net.predict(images.reshape(20, 4).astype(np.uint8))] == run.stdout.split()
    # read_inputs keeps the pixels whole; the model scales them (issue 21: one rule for the API and the CLI)
    np.testing.assert_array_equal(read_inputs(tmp_path / "images-idx3-ubyte.gz"), images.reshape(20, 4))


@pytest.mark.parametrize("make, code, words", [
    (lambda p: np.save(p / "x.npy", np.zeros((3, 5))), 2, r"x\.npy has 5 features per example, but the model .* takes 4"),
    (lambda p: np.save(p / "x.npy", np.array([[0, 1, np.nan, 2]])), 1, r"x\.npy: X must be finite; got NaN .* row 0"),
    (lambda p: (p / "x.csv").write_text("1,2,3,4\n1,2,x,4\n"), 1, r"x\.csv: row 1 is not comma-separated numbers"),
    (lambda p: (p / "x.bin").write_bytes(b"nonsense"), 1, r"x\.bin is not an IDX file"),
    (lambda p: None, 1, r"input file .*x\.npy does not exist"),
])
def test_predict_bad_input_is_one_line(tmp_path, model, make, code, words):
    make(tmp_path)
    name = next((p.name for p in tmp_path.iterdir() if p.stem == "x"), "x.npy")
    run = fastnn("predict", "--model", model, tmp_path / name)
    assert run.returncode == code and run.stderr.count("\n") == 1, run.stderr
    assert re.search(words, run.stderr), run.stderr


def test_predict_out_must_be_csv_or_npy(tmp_path, model, rows):
    np.save(tmp_path / "x.npy", rows)
    run = fastnn("predict", "--model", model, tmp_path / "x.npy", "--out", tmp_path / "p.txt")
    assert run.returncode == 2 and "predictions are written as .csv or .npy; got '.txt'" in run.stderr


def test_evaluate_defaults_to_the_dataset_the_model_was_trained_on(model, tiny):
    assert load_model(model, device="cpu").dataset["name"] == str(tiny.resolve())
    run = fastnn("evaluate", "--model", model)
    assert run.returncode == 0, run.stderr
    assert re.match(r"test: loss [\d.]+, accuracy [\d.]+ on 60 examples \(.*tiny\.npz, cpu\)$", run.stdout)


def test_evaluate_with_a_folder_of_only_the_test_files(tmp_path):
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"no MNIST test set at {MNIST_DIR}")
    folder = tmp_path / "only-test"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").symlink_to(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    from fastnn import Network, save_model

    net = Network([784, 10], device="cpu", seed=0)
    save_model(net, tmp_path / "m.npz")
    run = fastnn("evaluate", "--model", tmp_path / "m.npz", "--dataset", "mnist", "--data-dir", folder)
    assert run.returncode == 1 and run.stderr.count("\n") == 1
    assert "only-test lacks the mnist test files t10k-labels-idx1-ubyte(.gz)" in run.stderr, run.stderr
    with pytest.raises(DataError, match=r"lacks the mnist test files t10k-labels-idx1-ubyte\(.gz\)"):
        load_test_set("mnist", folder)
    (folder / "t10k-labels-idx1-ubyte.gz").symlink_to(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    X, y = load_test_set("mnist", folder)
    assert X.shape == (10000, 784) and y.shape == (10000,)
    run = fastnn("evaluate", "--model", tmp_path / "m.npz", "--dataset", "mnist", "--data-dir", folder)
    assert run.returncode == 0 and "on 10000 examples (mnist, cpu)" in run.stdout, run.stderr


def test_evaluate_a_model_without_a_recorded_dataset_asks_for_one(tmp_path):
    from fastnn import Network, save_model

    save_model(Network([4, 3], device="cpu", seed=0), tmp_path / "m.npz")
    run = fastnn("evaluate", "--model", tmp_path / "m.npz")
    assert run.returncode == 2 and "does not record the dataset it was trained on" in run.stderr
