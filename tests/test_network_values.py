"""Values the network computes, each against an independent float64 computation: the initial weights'
distributions, evaluate/predict/forward across several chunks, 2-output networks, and the costs with
targets that are not one-hot.  (Written to kill the mutants that survived bench.mutation.)"""

import numpy as np
import pytest

from fastnn import ConfigError, Network
from fastnn import network as network_module

WIDE = 20000  # units of the layer whose weights are sampled: 60,000 draws for W^1, 20,000 for W^2 and b^1
# A sample standard deviation of N draws is off by about 1/sqrt(2N) relative (0.5% for N = 20,000): 3%
# is six of those, and a wrong rule is off by far more (1/sqrt(3) vs 1/sqrt(4) is 13%, He's 2/n vs 1/n 41%).
STD_RTOL = 0.03


def _std_and_mean_ok(values, std):
    values = np.asarray(values, np.float64).ravel()
    assert values.std() == pytest.approx(std, rel=STD_RTOL)
    assert abs(values.mean()) < 6 * std / np.sqrt(values.size)  # zero mean, within six standard errors


@pytest.mark.parametrize("activation, init", [("sigmoid", None), ("tanh", "textbook"), ("relu", "textbook")])
def test_textbook_start_is_normal_with_variance_one_over_n_in_and_unit_biases(activation, init):
    """W^l ~ N(0, 1/n_in), b^l ~ N(0, 1): the textbook's start (seed 0)."""
    net = Network([3, WIDE, 1], activation=activation, output="sigmoid", init=init, dtype="float64",
                  device="cpu", seed=0)
    (w1, w2), (b1, b2) = net.weights, net.biases
    _std_and_mean_ok(w1, 1 / np.sqrt(3))
    _std_and_mean_ok(w2, 1 / np.sqrt(WIDE))
    _std_and_mean_ok(b1, 1.0)
    assert b2.shape == (1,) and b2[0] != 0  # one draw of N(0, 1)


@pytest.mark.parametrize("init", [None, "he"])
def test_he_start_for_relu_is_normal_with_variance_two_over_n_in_and_zero_biases(init):
    """He's start for the layers that feed a relu: W^l ~ N(0, 2/n_in), b^l = 0; the output layer's is the
    textbook's under auto, He's when asked for by name."""
    net = Network([3, WIDE, 1], activation="relu", output="sigmoid", init=init, dtype="float64", device="cpu",
                  seed=0)
    (w1, w2), (b1, b2) = net.weights, net.biases
    _std_and_mean_ok(w1, np.sqrt(2 / 3))
    assert not b1.any()
    if init == "he":
        _std_and_mean_ok(w2, np.sqrt(2 / WIDE))
        assert not b2.any()
    else:
        _std_and_mean_ok(w2, 1 / np.sqrt(WIDE))


def test_the_start_is_the_seeds_on_every_dtype():
    a = Network([4, 5, 3], seed=7, device="cpu", dtype="float64")
    b = Network([4, 5, 3], seed=7, device="cpu", dtype="float32")
    for x, y in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_array_equal(x.astype(np.float32), y)
    c = Network([4, 5, 3], seed=8, device="cpu", dtype="float64")
    assert not np.array_equal(a.weights[0], c.weights[0])


# -- an independent forward pass -------------------------------------------------------------------------------

def _act(name, z):
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0)
    if name == "identity":
        return z
    e = np.exp(z - z.max(axis=0))
    return e / e.sum(axis=0)


def outputs(net, X):
    """(z^L, a^L) of X (m, n_in) as (n_out, m) float64 arrays, from the network's weights and biases."""
    a = np.asarray(X, np.float64).T
    for w, b, act in zip(net.weights, net.biases, net.activations):
        z = w.astype(np.float64) @ a + b.astype(np.float64)[:, None]
        a = _act(act.name, z)
    return z, a


def cost(name, z, a, Y):
    """The summed cost, from its definition (Y: (n_out, m) targets)."""
    if name == "quadratic":
        return 0.5 * ((a - Y) ** 2).sum()
    if name == "cross-entropy":
        return -(Y * np.log(a) + (1 - Y) * np.log(1 - a)).sum()
    return -(Y * np.log(a)).sum()


def classes(a):
    return a.argmax(axis=0) if a.shape[0] > 1 else (a[0] > 0.5).astype(np.int64)


@pytest.mark.parametrize("n_out, output, cost_name", [(3, "softmax", "log-likelihood"), (2, "softmax", "log-likelihood"),
                                                      (2, "sigmoid", "quadratic"), (1, "sigmoid", "cross-entropy")])
def test_evaluate_predict_and_forward_cover_every_chunk(device, monkeypatch, n_out, output, cost_name):
    """Chunks of 7 rows: 30 rows make five, the last short; each value equals the whole-batch float64 one."""
    monkeypatch.setattr(network_module, "EVAL_CHUNK", 7)
    rng = np.random.default_rng(3)
    net = Network([4, 6, n_out], output=output, cost=cost_name, dtype="float64", device=device, seed=5)
    X = rng.normal(size=(30, 4)) * 2
    y = rng.integers(0, max(n_out, 2), 30)
    Y = np.eye(max(n_out, 2))[y][:, :n_out].T if n_out > 1 else y[None, :].astype(np.float64)
    z, a = outputs(net, X)
    np.testing.assert_allclose(net.forward(X), a.T, rtol=1e-12)
    np.testing.assert_array_equal(net.predict(X), classes(a))
    measured = net.evaluate(X, y if n_out > 1 else Y.T)  # one output takes 0/1 targets (n, 1)
    assert measured["loss"] == pytest.approx(cost(cost_name, z, a, Y) / 30, rel=1e-12)
    assert measured["accuracy"] == np.mean(classes(a) == y)


def test_evaluate_beyond_one_default_chunk():
    """More rows than EVAL_CHUNK: every row counts, in the loss and in the accuracy."""
    n = 2 * network_module.EVAL_CHUNK + 5
    rng = np.random.default_rng(4)
    net = Network([2, 3], output="softmax", dtype="float64", device="cpu", seed=1)
    X = rng.normal(size=(n, 2)) * 3
    z, a = outputs(net, X)
    y = classes(a)
    y[-1] = (y[-1] + 1) % 3  # one wrong answer, in the last chunk
    Y = np.eye(3)[y].T
    measured = net.evaluate(X, y)
    assert measured["accuracy"] == (n - 1) / n
    assert measured["loss"] == pytest.approx(cost("log-likelihood", z, a, Y) / n, rel=1e-12)
    np.testing.assert_array_equal(net.predict(X)[:-1], y[:-1])


def test_two_output_networks_classify_by_the_larger_output(device):
    """With two outputs the class is the argmax, not a^L[0] > 0.5 (a sigmoid output can have both above ½)."""
    net = Network([2, 2], output="sigmoid", dtype="float64", device=device)
    net.set_parameters([np.zeros((2, 2))], [np.array([2.0, 1.0])])  # a = (σ(2), σ(1)): both > ½, class 0
    assert net.predict(np.zeros((3, 2))).tolist() == [0, 0, 0]
    net.set_parameters([np.zeros((2, 2))], [np.array([-2.0, -1.0])])  # both < ½: class 1, the larger
    assert net.predict(np.zeros((3, 2))).tolist() == [1, 1, 1]
    assert net.evaluate(np.zeros((3, 2)), np.array([1, 1, 0]))["accuracy"] == pytest.approx(2 / 3)


def test_one_output_networks_classify_by_a_half():
    net = Network([1, 1], output="sigmoid", dtype="float64", device="cpu")
    net.set_parameters([np.ones((1, 1))], [np.zeros(1)])
    assert net.predict(np.array([[-0.1], [0.1], [3.0]])).tolist() == [0, 1, 1]


# -- costs with targets that are not one-hot -------------------------------------------------------------------

@pytest.mark.parametrize("output, cost_name", [("softmax", "log-likelihood"), ("sigmoid", "cross-entropy"),
                                               ("tanh", "quadratic")])
def test_costs_of_soft_targets_equal_their_definitions(device, output, cost_name):
    """Target rows that sum to 0.5, 1 and 2 (label smoothing, mixtures): C = -Σ y ln a for log-likelihood,
    not only -ln a_label; 5 rows and 3 outputs, so that a sum along the wrong axis shows."""
    rng = np.random.default_rng(6)
    net = Network([4, 3], output=output, cost=cost_name, dtype="float64", device=device, seed=2)
    X = rng.normal(size=(5, 4))
    Y = rng.uniform(size=(5, 3))
    Y *= np.array([0.5, 1, 2, 1, 0.5])[:, None] / Y.sum(axis=1, keepdims=True)
    if cost_name == "cross-entropy":
        Y = np.clip(Y, 0, 1)
    z, a = outputs(net, X)
    expected = cost(cost_name, z, a, Y.T)
    assert net.evaluate(X, Y)["loss"] == pytest.approx(expected / 5, rel=1e-10)
    history = net.fit(X, Y, epochs=1, batch_size=5, lr=1e-300, shuffle=False, engine="generic")  # one step
    assert history.loss[0] == pytest.approx(expected / 5, rel=1e-10)


@pytest.mark.parametrize("output, cost_name, hint", [
    ("softmax", "cross-entropy", "for output 'softmax' use cost 'quadratic' or 'log-likelihood'"),
    ("sigmoid", "log-likelihood", "for output 'sigmoid' use cost 'quadratic' or 'cross-entropy'"),
    ("tanh", "cross-entropy", "for output 'tanh' use cost 'quadratic'"),
])
def test_a_cost_that_does_not_fit_the_output_names_those_that_do(output, cost_name, hint):
    with pytest.raises(ConfigError) as caught:
        Network([2, 3], output=output, cost=cost_name, device="cpu")
    assert str(caught.value).endswith(hint)


def test_running_out_of_memory_making_a_network_is_a_clear_error(monkeypatch):
    """MemoryError while allocating the parameters: DeviceOutOfMemory naming the size; any other error as it was."""
    from fastnn import DeviceOutOfMemory

    def out_of_memory(self):
        raise MemoryError("Unable to allocate 40 GiB")

    monkeypatch.setattr(Network, "_allocate", out_of_memory)
    with pytest.raises(DeviceOutOfMemory, match=r"^out of memory on cpu making a network of 15 parameters "
                                                r"\(MemoryError: Unable to allocate 40 GiB\); try smaller layers$"):
        Network([4, 3], device="cpu")

    def broken(self):
        raise ValueError("not memory")

    monkeypatch.setattr(Network, "_allocate", broken)
    with pytest.raises(ValueError, match="^not memory$"):
        Network([4, 3], device="cpu")
