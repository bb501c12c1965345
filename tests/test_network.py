"""The batched network against hand-worked numbers, the per-example textbook loop, and finite differences."""

import numpy as np
import pytest

from fastnn import ConfigError, DataError, Network, ShapeError, reference

COMBOS = [(h, o, "quadratic") for h in ("sigmoid", "tanh", "relu", "identity")
          for o in ("sigmoid", "tanh", "relu", "identity", "softmax")]
COMBOS += [(h, "sigmoid", "cross-entropy") for h in ("sigmoid", "tanh", "relu", "identity")]
COMBOS += [(h, "softmax", "log-likelihood") for h in ("sigmoid", "tanh", "relu", "identity")]


def hand_net(sizes, weights, biases, device, **kw):
    net = Network(sizes, device=device, dtype="float64", **kw)
    net.set_parameters([np.array(w, float) for w in weights], [np.array(b, float) for b in biases])
    return net


def test_hand_worked_linear_2_2_1(device):
    # z1 = W1 x + b1 = [0.1+0.4+0.5, 0.3+0.8+0.6] = [1.0, 1.7]; a1 = z1 (identity)
    # z2 = 0.7*1.0 + 0.8*1.7 + 0.9 = 2.96; C = ½ (2.96 - 1)² = 1.9208
    # δ2 = 1.96; ∂C/∂W2 = δ2 a1ᵀ = [1.96, 3.332]; δ1 = W2ᵀ δ2 = [1.372, 1.568]; ∂C/∂W1 = δ1 xᵀ
    net = hand_net([2, 2, 1], [[[0.1, 0.2], [0.3, 0.4]], [[0.7, 0.8]]], [[0.5, 0.6], [0.9]], device,
                   activation="identity", output="identity")
    x, y = np.array([[1.0, 2.0]]), np.array([[1.0]])
    np.testing.assert_allclose(net.forward(x), [[2.96]])
    assert net.evaluate(x, y)["loss"] == pytest.approx(1.9208)
    (dw1, db1), (dw2, db2) = net.gradients(x, y)
    np.testing.assert_allclose(dw2, [[1.96, 3.332]])
    np.testing.assert_allclose(db2, [1.96])
    np.testing.assert_allclose(dw1, [[1.372, 2.744], [1.568, 3.136]])
    np.testing.assert_allclose(db1, [1.372, 1.568])


@pytest.mark.parametrize("cost, loss, delta", [
    ("quadratic", 0.125, -0.125),  # a = σ(0) = ½; δ = (½ - 1) σ'(0) = -½ · ¼
    ("cross-entropy", np.log(2), -0.5),  # C = -ln ½; δ = a - y
])
def test_hand_worked_sigmoid_output(device, cost, loss, delta):
    net = hand_net([2, 1], [[[0.0, 0.0]]], [[0.0]], device, cost=cost)
    x, y = np.array([[3.0, 4.0]]), np.array([[1.0]])
    np.testing.assert_allclose(net.forward(x), [[0.5]])
    assert net.evaluate(x, y)["loss"] == pytest.approx(loss)
    [(dw, db)] = net.gradients(x, y)
    np.testing.assert_allclose(dw, [[3 * delta, 4 * delta]])
    np.testing.assert_allclose(db, [delta])


def test_hand_worked_softmax_log_likelihood(device):
    # b = [0, ln 3] with W = 0 gives a = [¼, ¾]; class 0: C = -ln ¼; δ = a - y = [-¾, ¾]
    net = hand_net([2, 2], [[[0.0, 0.0], [0.0, 0.0]]], [[0.0, np.log(3)]], device,
                   output="softmax", cost="log-likelihood")
    x = np.array([[1.0, 2.0]])
    np.testing.assert_allclose(net.forward(x), [[0.25, 0.75]])
    assert net.evaluate(x, np.array([0]))["loss"] == pytest.approx(np.log(4))
    [(dw, db)] = net.gradients(x, np.array([0]))
    np.testing.assert_allclose(dw, [[-0.75, -1.5], [0.75, 1.5]])
    np.testing.assert_allclose(db, [-0.75, 0.75])


def _reference_sum(net, X, Y):
    """Sum over examples of the textbook per-example gradients, divided by the batch size."""
    ws = net.weights
    bs = [b[:, None] for b in net.biases]
    total = None
    for x, y in zip(X, Y):
        nw, nb = reference.backprop(ws, bs, x[:, None], y[:, None], net.activations[0].name,
                                    net.activations[-1].name, net.cost.name)
        pairs = [(w, b[:, 0]) for w, b in zip(nw, nb)]
        total = pairs if total is None else [(tw + w, tb + b) for (tw, tb), (w, b) in zip(total, pairs)]
    return [(w / len(X), b / len(X)) for w, b in total]


@pytest.mark.parametrize("hidden, output, cost", COMBOS)
def test_batched_equals_per_example_reference(device, rng, hidden, output, cost):
    net = Network([5, 4, 3, 3], activation=hidden, output=output, cost=cost, device=device,
                  dtype="float64", seed=3)
    X = rng.normal(size=(7, 5))
    y = rng.integers(0, 3, 7)
    Y = np.eye(3)[y]
    for (dw, db), (rw, rb) in zip(net.gradients(X, y), _reference_sum(net, X, Y)):
        np.testing.assert_allclose(dw, rw, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(db, rb, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("hidden, output, cost", COMBOS)
def test_gradients_match_central_finite_differences(device, rng, hidden, output, cost):
    net = Network([4, 5, 3], activation=hidden, output=output, cost=cost, device=device,
                  dtype="float64", seed=5)
    X = rng.normal(size=(6, 4))
    y = rng.integers(0, 3, 6)
    weights, biases = net.weights, net.biases
    eps = 1e-6

    def loss_with(l, which, index, step):
        ws, bs = [w.copy() for w in weights], [b.copy() for b in biases]
        (ws if which == "w" else bs)[l][index] += step
        net.set_parameters(ws, bs)
        return net.evaluate(X, y)["loss"]

    grads = net.gradients(X, y)
    for l, (dw, db) in enumerate(grads):
        for which, analytic in (("w", dw), ("b", db)):
            numeric = np.zeros_like(analytic)
            for index in np.ndindex(analytic.shape):
                numeric[index] = (loss_with(l, which, index, eps) - loss_with(l, which, index, -eps)) / (2 * eps)
            err = np.linalg.norm(numeric - analytic) / max(np.linalg.norm(numeric) + np.linalg.norm(analytic), 1e-12)
            assert err < 1e-7, f"layer {l} {which}: relative error {err:.2e}"


def test_forward_predict_and_shapes(device, rng):
    net = Network([6, 4, 3], output="softmax", cost="log-likelihood", device=device, seed=0)
    X = rng.random((11, 6)).astype(np.float32)
    out = net.forward(X)
    assert out.shape == (11, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(net.predict(X), out.argmax(axis=1))
    assert [w.shape for w in net.weights] == [(4, 6), (3, 4)]
    assert [b.shape for b in net.biases] == [(4,), (3,)]


def test_same_seed_same_weights_across_dtypes(device):
    a = Network([7, 5, 2], seed=42, device=device, dtype="float64")
    b = Network([7, 5, 2], seed=42, device="cpu", dtype="float32")
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_allclose(wa, wb, rtol=1e-6)
    assert np.std(Network([1000, 200], seed=0, device="cpu").weights[0]) == pytest.approx(1 / np.sqrt(1000), rel=0.02)


def test_no_overflow_warning_for_huge_z(device):
    for output, cost in (("sigmoid", "cross-entropy"), ("softmax", "log-likelihood"), ("tanh", "quadratic")):
        net = Network([2, 3], output=output, cost=cost, device=device, dtype="float32")
        net.set_parameters([np.full((3, 2), 1e4)], [np.zeros(3)])
        X = np.array([[1.0, 1.0], [-1.0, -1.0]])
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            result = net.evaluate(X, np.array([0, 1]))
            grads = net.gradients(X, np.array([0, 1]))
        assert np.isfinite(result["loss"]) and all(np.isfinite(g).all() for pair in grads for g in pair)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"sizes": [784]}, ConfigError, "two or more"),
    ({"sizes": [784, 0, 10]}, ConfigError, ">= 1"),
    ({"sizes": [3, 2], "activation": "swish"}, ConfigError, "sigmoid, tanh, relu, identity"),
    ({"sizes": [3, 2], "activation": "softmax"}, ConfigError, "output layer only"),
    ({"sizes": [3, 2], "cost": "hinge"}, ConfigError, "quadratic, cross-entropy, log-likelihood"),
    ({"sizes": [3, 2], "cost": "cross-entropy", "output": "softmax"}, ConfigError, "needs a sigmoid output"),
    ({"sizes": [3, 2], "cost": "log-likelihood"}, ConfigError, "needs a softmax output"),
    ({"sizes": [3, 2], "dtype": "float16"}, ConfigError, "float32, float64"),
    ({"sizes": [3, 2], "device": "tpu"}, ConfigError, "auto, cpu, cuda"),
    ({"sizes": [3.5, 2]}, ConfigError, r"integers >= 1, like 784,30,10; got \[3.5, 2\]"),
    ({"sizes": "abc"}, ConfigError, "two or more integers"),
    ({"sizes": [3, 2], "seed": -1}, ConfigError, "seed must be None or an integer >= 0; got -1"),
    ({"sizes": [3, 2], "seed": 1.5}, ConfigError, "seed must be None or an integer >= 0; got 1.5"),
])
def test_bad_network_arguments(kwargs, error, words):
    with pytest.raises(error, match=words):
        Network(**kwargs)


@pytest.mark.parametrize("X, y, error, words", [
    (np.zeros((4, 5)), np.zeros(4, int), ShapeError, "5 features per sample, but the network's input layer has 3"),
    (np.zeros(4), np.zeros(1, int), ShapeError, "must be 2-D"),  # np.zeros(3) is one example: see test_inputs.py
    (np.zeros((0, 3)), np.zeros(0, int), DataError, "empty"),
    (np.array([[0, np.nan, 0]]), np.zeros(1, int), DataError, "NaN or infinity"),
    (np.array([[0, np.inf, 0]]), np.zeros(1, int), DataError, "NaN or infinity"),
    (np.zeros((2, 3)), np.array([0, 2]), DataError, r"must be in \[0, 1\]"),
    (np.zeros((2, 3)), np.array([0, -1]), DataError, r"must be in \[0, 1\]"),
    (np.zeros((2, 3)), np.array([0.5, 1.0]), DataError, "whole numbers"),
    (np.zeros((2, 3)), np.zeros(3, int), ShapeError, "to match X"),
    (np.zeros((2, 3)), np.zeros((2, 3)), ShapeError, "output layer has 2 units"),
    (np.zeros((2, 3)), np.array(["a", "b"]), DataError, "numbers"),
    ([[0, 1, 2], [0, 1]], [0, 1], ShapeError, "X must be a rectangular array; got list"),
    (np.zeros((2, 3)), [[0], [1, 0]], ShapeError, "y must be a rectangular array; got list"),
    (np.zeros((2, 3)), np.array([0, np.nan]), DataError, "y must be finite; got NaN or infinity in row 1"),
    (np.array([[0, 0, 0], [0, 0, -np.inf]]), np.zeros(2, int), DataError, "X must be finite; .* in row 1"),
    (np.array([[1, 2, 3]], dtype=object), np.zeros(1, int), DataError, "X must hold numbers; got dtype object"),
    ("abc", np.zeros(1, int), ShapeError, "must be 2-D"),
])
def test_bad_arrays_are_refused_at_the_door(X, y, error, words):
    net = Network([3, 2], device="cpu")
    with pytest.raises(error, match=words):
        net.evaluate(X, y)
    with pytest.raises(error, match=words):
        net.fit(X, y, epochs=1, batch_size=1, lr=0.1)


def test_set_parameters_checks(device):
    net = Network([3, 2], device=device)
    with pytest.raises(ShapeError, match="expected W"):
        net.set_parameters([np.zeros((3, 2))], [np.zeros(2)])
    with pytest.raises(DataError, match="NaN"):
        net.set_parameters([np.full((2, 3), np.nan)], [np.zeros(2)])
