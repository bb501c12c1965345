"""What a newcomer expects: nothing trained lost silently, and the small things of issue 21 (item 8 and 9)."""

import http.server
import pydoc
import threading

import numpy as np
import pytest

from fastnn import Network, load_model, save_model

from .conftest import CUPY_ABSENT, MNIST_DIR, ROOT, fastnn


def test_train_without_out_says_the_model_was_not_kept(tiny):
    run = fastnn("train", "--dataset", tiny, "--layers", "4,3", "--epochs", 1, "--seed", 0)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "the trained model was not saved (give --out FILE.npz to keep it)"


def test_fit_sets_history_and_save_model_keeps_it(tmp_path, tiny):
    with np.load(tiny) as f:
        X, y = f["x_train"], f["y_train"]
    net = Network([4, 8, 3], activation="relu", device="cpu", seed=0)
    history = net.fit(X, y)  # epochs and batch size have defaults, as in the CLI
    assert len(history) == 30 and net.history.records == history.records
    save_model(net, tmp_path / "m.npz")
    assert load_model(tmp_path / "m.npz", device="cpu").history.records == history.records


def test_help_of_fit_names_its_arguments():
    text = pydoc.render_doc(Network.fit)
    for word in ("epochs", "batch_size", "validation_data", "0..255", "net.history"):
        assert word in text


def test_a_resume_with_nothing_left_says_so(tmp_path, tiny):
    run = fastnn("train", "--dataset", tiny, "--layers", "4,3", "--epochs", 2, "--seed", 0, "--checkpoint",
                 tmp_path / "ck", "--quiet")
    assert run.returncode == 0, run.stderr
    run = fastnn("train", "--resume", tmp_path / "ck", "--epochs", 1)
    assert run.returncode == 0, run.stderr
    assert "nothing left to train: the run in" in run.stdout and "give --epochs more than 2" in run.stdout


def test_epochs_0_is_refused(tiny):
    run = fastnn("train", "--dataset", tiny, "--layers", "4,3", "--epochs", 0)
    assert run.returncode == 2 and run.stderr.strip() == "fastnn: error: --epochs must be an integer >= 1; got 0"


def test_evaluate_takes_a_checkpoint_folder(tmp_path, tiny):
    run = fastnn("train", "--dataset", tiny, "--layers", "4,3", "--epochs", 1, "--seed", 0, "--checkpoint",
                 tmp_path / "ck", "--quiet")
    assert run.returncode == 0, run.stderr
    for given in (tmp_path / "ck", tmp_path / "ck" / "checkpoint.npz"):
        run = fastnn("evaluate", "--model", given)
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("test: loss ")


@pytest.mark.parametrize("from_env", [False, True])
def test_device_cuda_without_cupy_names_the_fix(tiny, from_env):
    env = {"PYTHONPATH": f"{CUPY_ABSENT}:{ROOT}"}
    if from_env:
        run = fastnn("info", env={**env, "FASTNN_DEVICE": "cuda"})
    else:
        run = fastnn("info", "--device", "cuda", env=env)
    assert run.returncode == 1
    assert 'pip install ".[cuda12]"' in run.stderr and "--device cpu" in run.stderr
    assert ("FASTNN_DEVICE=cuda asked for it" in run.stderr) == from_env
    assert run.stderr.count("\n") == 1


def test_evaluate_offline_needs_only_the_test_files(tmp_path):
    if not (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"no MNIST test set at {MNIST_DIR}")
    net = Network([784, 10, 10], activation="relu", device="cpu", seed=0)
    net.dataset = {"name": "mnist", "data_dir": None, "validation_size": "auto"}
    save_model(net, tmp_path / "m.npz")
    # an empty cache, and a mirror on 127.0.0.1 that holds the test files only: the training files are never asked for
    asked = []

    class Mirror(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(MNIST_DIR), **kwargs)

        def log_message(self, *args):
            asked.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "FASTNN_DATA": str(tmp_path / "none"),
               "FASTNN_MIRROR": f"http://127.0.0.1:{server.server_address[1]}/"}
        run = fastnn("evaluate", "--model", tmp_path / "m.npz", env=env)
    finally:
        server.shutdown()
        server.server_close()
    assert run.returncode == 0, run.stderr
    assert asked and all("t10k" in path for path in asked), asked
    assert "on 10000 examples (mnist" in run.stdout
    assert sorted(p.name for p in (tmp_path / "cache" / "fastnn" / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_plot_does_not_overwrite_an_image(tmp_path, tiny):
    pytest.importorskip("matplotlib", reason="fastnn plot draws with matplotlib (pip install '.[plot]')")
    run = fastnn("train", "--dataset", tiny, "--layers", "4,3", "--epochs", 1, "--seed", 0, "--log",
                 tmp_path / "run.jsonl", "--quiet")
    assert run.returncode == 0, run.stderr
    (tmp_path / "run.png").write_bytes(b"mine")
    run = fastnn("plot", tmp_path / "run.jsonl")
    assert run.returncode == 2 and "already exists" in run.stderr
    assert (tmp_path / "run.png").read_bytes() == b"mine"
    run = fastnn("plot", tmp_path / "run.jsonl", "--overwrite")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"
