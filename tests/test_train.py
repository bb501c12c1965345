"""The SGD trainer: the textbook update rule, momentum and L2, shuffling, divergence, learning."""

import numpy as np
import pytest

from fastnn import ConfigError, DivergenceError, Network, reference


def test_one_epoch_equals_textbook_loop_with_short_last_batch(device, rng):
    net = Network([5, 4, 3], device=device, dtype="float64", seed=1)
    ws, bs = net.weights, [b[:, None] for b in net.biases]
    X, y = rng.normal(size=(11, 5)), rng.integers(0, 3, 11)
    net.fit(X, y, epochs=1, batch_size=4, lr=0.7, shuffle=False)  # batches of 4, 4 and 3
    reference.sgd_epoch(ws, bs, X, np.eye(3)[y], np.arange(11), 4, 0.7, "sigmoid", "sigmoid", "quadratic")
    for got, want in zip(net.weights + net.biases, ws + [b[:, 0] for b in bs]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_shuffled_epoch_follows_the_seeded_generator(device, rng):
    net = Network([5, 4, 3], output="softmax", cost="log-likelihood", device=device, dtype="float64", seed=9)
    ws, bs = net.weights, [b[:, None] for b in net.biases]
    X, y = rng.normal(size=(10, 5)), rng.integers(0, 3, 10)
    twin = np.random.default_rng(9)
    for n_in, n_out in ((5, 4), (4, 3)):  # the draws that made the weights come first
        twin.standard_normal((n_out, n_in))
    for n_out in (4, 3):
        twin.standard_normal((n_out, 1))
    order = twin.permutation(10)
    net.fit(X, y, epochs=1, batch_size=3, lr=0.5)
    reference.sgd_epoch(ws, bs, X, np.eye(3)[y], order, 3, 0.5, "sigmoid", "softmax", "log-likelihood")
    for got, want in zip(net.weights, ws):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_same_seed_same_result(device, rng):
    X, y = rng.normal(size=(30, 4)), rng.integers(0, 2, 30)
    runs = []
    for _ in range(2):
        net = Network([4, 6, 2], device=device, seed=7)
        history = net.fit(X, y, epochs=3, batch_size=8, lr=1.0)
        runs.append((net.weights, history.loss))
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(a, b)
    assert runs[0][1] == runs[1][1]


@pytest.mark.parametrize("momentum, l2", [(0.0, 0.0), (0.0, 5.0), (0.9, 0.0), (0.9, 5.0)])
def test_two_steps_of_momentum_and_l2_by_the_formula(device, rng, momentum, l2):
    """v ← μv - η(∇/m + (λ/n) w) for weights (no λ on biases), w ← w + v; μ = 0 is the textbook L2 rule."""
    X, y = rng.normal(size=(8, 3)), rng.integers(0, 2, 8)
    net = Network([3, 4, 2], device=device, dtype="float64", seed=2)
    lr, n = 0.3, 8
    w, b = net.weights, net.biases
    vw, vb = [np.zeros_like(a) for a in w], [np.zeros_like(a) for a in b]
    for half in (slice(0, 4), slice(4, 8)):
        probe = Network([3, 4, 2], device="cpu", dtype="float64")
        probe.set_parameters(w, b)
        grads = probe.gradients(X[half], y[half])  # mean over the 4 examples of the batch
        vw = [momentum * v - lr * (g + l2 / n * p) for v, (g, _), p in zip(vw, grads, w)]
        vb = [momentum * v - lr * g for v, (_, g) in zip(vb, grads)]
        w = [p + v for p, v in zip(w, vw)]
        b = [p + v for p, v in zip(b, vb)]
    net.fit(X, y, epochs=1, batch_size=4, lr=lr, momentum=momentum, l2=l2, shuffle=False)
    for got, want in zip(net.weights + net.biases, w + b):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_history_and_full_batch_loss_is_the_loss_before_the_update(device, rng):
    X, y = rng.normal(size=(12, 3)), rng.integers(0, 2, 12)
    net = Network([3, 5, 2], device=device, dtype="float64", seed=4)
    before = net.evaluate(X, y)["loss"]
    history = net.fit(X, y, epochs=2, batch_size=12, lr=0.5, validation_data=(X, y))
    assert history.loss[0] == pytest.approx(before, rel=1e-12)
    assert history.val_loss[-1] == pytest.approx(net.evaluate(X, y)["loss"], rel=1e-12)
    assert len(history) == 2 and all(s > 0 for s in history.seconds)
    assert set(history.records[0]) == {"epoch", "loss", "seconds", "examples_per_second", "val_loss", "val_accuracy",
                                        "engine", "precision"}
    assert history.records[0]["engine"] == ("blas-cpu" if device == "cpu" else "generic")  # auto: blas-cpu (issue 22)
    assert history.records[0]["precision"] == "fp32"


def test_workspaces_share_one_set_of_buffers_across_batch_sizes(device, rng):
    """A later fit with a larger batch replaces the buffers; smaller batches are views of them."""
    X, y = rng.normal(size=(10, 3)), rng.integers(0, 2, 10)
    net = Network([3, 4, 2], device=device, seed=0)
    net.fit(X, y, epochs=1, batch_size=3, lr=0.1, engine="generic")  # batches of 3 and 1: the workspaces are generic's
    net.fit(X, y, epochs=1, batch_size=7, lr=0.1, engine="generic")  # batches of 7 and 3
    buffers = {id(ws._x) for ws in net._workspaces.values()}
    assert len(buffers) == 1 and max(net._workspaces) == 7


def test_zero_epochs_changes_nothing(device, rng):
    net = Network([3, 2], device=device, seed=0)
    before = net.weights
    assert len(net.fit(rng.normal(size=(4, 3)), np.zeros(4, int), epochs=0, batch_size=2, lr=1.0)) == 0
    np.testing.assert_array_equal(before[0], net.weights[0])


@pytest.mark.filterwarnings("ignore::fastnn.NotLearningWarning")  # the first fit barely moves: at chance
@pytest.mark.filterwarnings("error")
def test_divergence_stops_with_the_last_good_weights(device, rng):
    X, y = rng.normal(size=(50, 4)) * 100, rng.integers(0, 3, 50)
    net = Network([4, 8, 3], activation="relu", output="identity", device=device, seed=0)
    net.fit(X, y, epochs=1, batch_size=10, lr=1e-6)
    good = net.weights
    with pytest.raises(DivergenceError, match=r"epoch 1: .*smaller learning rate"):
        net.fit(X, y, epochs=3, batch_size=10, lr=1e6)
    for a, b in zip(good, net.weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs, words", [
    ({"epochs": -1}, "epochs must be an integer >= 0"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"lr": 0.0}, "lr must be a finite number in"),
    ({"lr": float("nan")}, "lr must be a finite number in"),
    ({"momentum": 1.0}, "momentum must be a finite number in"),
    ({"l2": -1.0}, "l2 must be a finite number in"),
    ({"validation_data": (np.zeros((2, 3)),)}, "validation_data must be a pair"),
    ({"callback": 3}, "callback must be a function of one epoch's record, or None; got 3"),
    ({"state": {"epoch": 1}}, "state must be a fastnn.TrainState or None; got dict"),
])
def test_bad_hyperparameters(kwargs, words):
    args = {"epochs": 1, "batch_size": 2, "lr": 0.1} | kwargs
    with pytest.raises(ConfigError, match=words):
        Network([3, 2], device="cpu").fit(np.zeros((4, 3)), np.zeros(4, int), **args)


@pytest.mark.needs_mnist
def test_learns_real_mnist_above_90_percent(device, mnist):
    X, y = mnist
    net = Network([784, 30, 10], device=device, seed=0)
    history = net.fit(X[:8000], y[:8000], epochs=3, batch_size=10, lr=3.0, validation_data=(X[8000:], y[8000:]))
    assert max(history.val_accuracy) >= 0.90, history.val_accuracy
    assert net.evaluate(X[8000:], y[8000:])["accuracy"] == history.val_accuracy[-1]


@pytest.mark.needs_mnist
def test_learns_mnist_with_softmax_momentum_and_l2(device, mnist):
    X, y = mnist
    net = Network([784, 64, 10], activation="relu", output="softmax", cost="log-likelihood", device=device, seed=0)
    history = net.fit(X[:8000], y[:8000], epochs=3, batch_size=32, lr=0.05, momentum=0.9, l2=1.0,
                      validation_data=(X[8000:], y[8000:]))
    assert history.val_accuracy[-1] >= 0.90, history.val_accuracy
