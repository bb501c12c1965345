"""Defaults that fit each other, He init, matching cost/output pairs, the not-learning warning, quiet notices."""

import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from fastnn import ConfigError, Network, NotLearningWarning, defaults
from fastnn.cli import make_parser

from .conftest import FASHION_DIR, ROOT, fastnn


@pytest.mark.parametrize("activation, output, cost, lr", [
    ("sigmoid", "sigmoid", "quadratic", 3.0),
    ("tanh", "softmax", "log-likelihood", 0.05),
    ("relu", "softmax", "log-likelihood", 0.05),
    ("identity", "softmax", "log-likelihood", 0.05),
])
def test_output_cost_and_lr_follow_the_hidden_activation(activation, output, cost, lr):
    net = Network([4, 5, 3], activation=activation, device="cpu", seed=0)
    assert (net.activations[-1].name, net.cost.name) == (output, cost)
    assert defaults.learning_rate(activation, output, cost) == lr


def test_explicit_choices_are_kept_and_fill_the_rest():
    assert Network([4, 5, 3], activation="relu", output="sigmoid", device="cpu").cost.name == "quadratic"
    assert defaults.learning_rate("relu", "sigmoid", "cross-entropy") == 0.05  # 0.5 measured 0.37 on Fashion-MNIST
    assert defaults.learning_rate("sigmoid", "sigmoid", "cross-entropy") == 0.5  # the textbook's chapter 3
    assert Network([4, 5, 3], activation="tanh", cost="quadratic", device="cpu").activations[-1].name == "softmax"


def test_fit_without_lr_uses_the_default(rng):
    X, y = rng.normal(size=(40, 4)), rng.integers(0, 3, 40)
    a, b = (Network([4, 5, 3], activation="relu", device="cpu", dtype="float64", seed=2) for _ in range(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotLearningWarning)
        a.fit(X, y, epochs=2, batch_size=8)
        b.fit(X, y, epochs=2, batch_size=8, lr=0.05)
    np.testing.assert_array_equal(a.weights[0], b.weights[0])


def test_relu_layers_start_with_he_init():
    net = Network([1000, 400, 300, 10], activation="relu", device="cpu", dtype="float64", seed=0)
    for n_in, w, b in zip((1000, 400), net.weights[:2], net.biases[:2]):
        assert np.std(w) == pytest.approx(np.sqrt(2 / n_in), rel=0.02) and not b.any()
    assert np.std(net.weights[2]) == pytest.approx(np.sqrt(1 / 300), rel=0.05)  # the softmax layer: textbook
    assert np.std(net.biases[2]) > 0.3
    textbook = Network([1000, 400, 10], activation="relu", device="cpu", seed=0, init="textbook")
    assert np.std(textbook.weights[0]) == pytest.approx(np.sqrt(1 / 1000), rel=0.02) and textbook.biases[0].any()
    sigmoid = Network([1000, 400, 10], device="cpu", seed=0)
    assert np.std(sigmoid.weights[0]) == pytest.approx(np.sqrt(1 / 1000), rel=0.02)
    he = Network([1000, 400, 10], device="cpu", seed=0, init="he")
    assert np.std(he.weights[0]) == pytest.approx(np.sqrt(2 / 1000), rel=0.02) and not he.biases[1].any()
    with pytest.raises(ConfigError, match="init must be one of auto, he, textbook; got 'xavier'"):
        Network([3, 2], init="xavier")


def test_a_cost_output_mismatch_names_the_pairs_that_match():
    with pytest.raises(ConfigError, match=r"The pairs that match: sigmoid \+ cross-entropy, softmax \+ "
                                          r"log-likelihood, any output \+ quadratic; for output 'softmax' use cost "
                                          r"'quadratic' or 'log-likelihood'"):
        Network([3, 2], output="softmax", cost="cross-entropy")


def blobs(rng, n=300, scale=1.0):
    centers = rng.normal(size=(3, 4)) * 3
    y = rng.integers(0, 3, n)
    return (centers[y] + rng.normal(size=(n, 4))) * scale, y


def test_a_run_at_chance_is_warned_about_after_epoch_1(rng):
    X, y = blobs(rng)
    net = Network([4, 8, 3], activation="relu", output="relu", cost="quadratic", device="cpu", seed=0)
    with pytest.warns(NotLearningWarning, match=r"after epoch 1 the accuracy is [\d.]+, no better than always "
                                                r"answering the most common class .* try output softmax with cost "
                                                r"log-likelihood and learning rate 0.05") as seen:
        net.fit(X, y, epochs=3, batch_size=10, lr=30.0, validation_data=(X[:50], y[:50]))
    assert len(seen) == 1  # once, after epoch 1


def test_a_finite_explosion_is_warned_about(rng):
    X, y = rng.normal(size=(200, 4)) * 3, rng.integers(0, 3, 200)
    net = Network([4, 3], activation="identity", output="identity", cost="quadratic", device="cpu",
                  dtype="float64", seed=0)
    with pytest.warns(NotLearningWarning, match=r"the loss grew from [\d.]+ before training to [\d.e+]+ in epoch 1 "
                                                r"\(over 1000 times\)"):
        net.fit(X, y, epochs=1, batch_size=10, lr=0.3)


def test_a_run_that_learns_is_not_warned_about(rng):
    X, y = blobs(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotLearningWarning)
        for activation in ("sigmoid", "tanh", "relu", "identity"):
            net = Network([4, 8, 3], activation=activation, device="cpu", seed=0)
            net.fit(X, y, epochs=1, batch_size=10)  # a sample of the training set stands in for validation


def test_train_help_shows_every_default():
    train = make_parser().commands["train"]
    for action in train._actions:
        if action.dest == "help":
            continue
        assert action.help and "default" in action.help, action.option_strings
    text = fastnn("train", "--help").stdout
    for words in ("(default: 30", "(default: 784,30,10)", "(default: sigmoid)", "else softmax)", "(default: auto)",
                  "else quadratic)", "(default: 10)", "else 0.05)", "lr 3.0"):
        assert words in re.sub(r"\s+", " ", text), words


def test_install_hints_work_as_written():
    """PyPI's 'fastnn' is another project: no hint may say pip install 'fastnn[...]'."""
    for path in [*(ROOT / "fastnn").rglob("*.py"), ROOT / "README.md", *(ROOT / "docker").glob("*")]:
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"pip install ['\"]?fastnn\b", text), path


def test_cli_relu_default_trains_and_a_dead_config_warns():
    """The issue's first command: --activation relu now trains; relu output + quadratic + lr 3 says it is dead."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    env = {"FASTNN_DATA": "/nonexistent", "XDG_CACHE_HOME": "/nonexistent"}
    run = fastnn("train", "--dataset", "fashion-mnist", "--activation", "relu", "--epochs", 1, "--seed", 0, env=env)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert "relu/softmax, cost=log-likelihood" in run.stdout and "lr 0.05" in run.stdout
    assert float(re.search(r"^test: loss [\d.]+, accuracy ([\d.]+)", run.stdout, re.MULTILINE).group(1)) >= 0.80
    run = fastnn("train", "--dataset", "fashion-mnist", "--activation", "relu", "--output", "relu", "--cost",
                 "quadratic", "--lr", 3.0, "--epochs", 1, "--seed", 0, env=env)
    assert run.returncode == 0
    assert re.fullmatch(r"fastnn: warning: after epoch 1 the accuracy is 0\.1\d+, no better than always answering "
                        r"the most common class \(0\.1\d+\): this run is not learning; try output softmax with cost "
                        r"log-likelihood and learning rate 0.05, the defaults for hidden relu \(--output softmax "
                        r"--cost log-likelihood --lr 0.05\)\n", run.stderr), run.stderr


@pytest.fixture
def broken_cupy(tmp_path):
    """A PYTHONPATH on which cupy is installed but cannot be imported."""
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text("raise ImportError('libcudart.so.12: cannot open shared object')\n")
    return {"FASTNN_DEVICE": "auto", "PYTHONPATH": f"{ROOT}:{tmp_path}"}


def without_cupy(*args):
    """The fastnn command in a process where cupy is not installed, whatever this machine has:
    sys.modules['cupy'] = None makes both ``import cupy`` and ``find_spec('cupy')`` see no cupy."""
    code = "import sys; sys.modules['cupy'] = None; from fastnn.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "FASTNN_DEVICE": "auto"}
    env["PYTHONPATH"] = str(ROOT)  # this fastnn, and not the cupy double either
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def test_no_notice_without_cupy_installed(tiny):
    run = without_cupy("train", "--dataset", tiny, "--layers", "4,3", "--epochs", 1, "--seed", 0)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    info = without_cupy("info")
    assert info.stderr == "" and re.search(r"^reason: auto: no usable CUDA GPU: cupy cannot be imported", info.stdout,
                                           re.MULTILINE)


def test_the_notice_for_an_unusable_cupy_only_where_it_helps(tiny, tmp_path, broken_cupy):
    args = ("--dataset", tiny, "--layers", "4,3", "--epochs", 1, "--seed", 0)
    run = fastnn("train", *args, "--out", tmp_path / "m.npz", env=broken_cupy)
    assert run.returncode == 0
    assert re.fullmatch(r"fastnn: no usable CUDA GPU \(cupy cannot be imported \(ImportError: libcudart.*\)\); using "
                        r"the CPU with numpy\n", run.stderr), run.stderr
    assert fastnn("train", *args, "--quiet", env=broken_cupy).stderr == ""
    info = fastnn("info", env=broken_cupy)
    assert info.returncode == 0 and info.stderr == "" and "reason: auto: no usable CUDA GPU" in info.stdout
    evaluate = fastnn("evaluate", "--model", tmp_path / "m.npz", env=broken_cupy)
    assert evaluate.returncode == 0 and "training" not in evaluate.stderr and "using the CPU" in evaluate.stderr
