"""Property-based tests: invariants that hold for any network hypothesis can think of.

Random layer sizes (1..64 units, 2..5 layers), activation x output x cost, batch sizes and
dtypes.  Data comes from a seeded numpy generator whose seed hypothesis draws, so a failure
prints a seed that reproduces it.  Examples per test are few by default (fast CI); set
HYPOTHESIS_PROFILE=thorough for a long search.

Stated tolerances (norm-wise relative errors), with the worst seen in 600 random networks:
    float64 batched == per-example sum        1e-12   (worst 1.5e-15)
    float32 batched == per-example sum        1e-5    (worst 7e-7)
    float32 gradients vs float64 gradients    1e-4    (worst 7e-7)
    float32 outputs vs float64 outputs        1e-5    (worst 4e-7)
    finite differences along a random unit direction d, float64, ε = 1e-5:
        |ΔC/2ε - ∇C·d| < 1e-6 ||∇C|| + 1e-9    (worst 5e-10 ||∇C||)
"""

import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from fastnn import DivergenceError, Network, TrainState, load_checkpoint

from .conftest import cuda_reason
from .test_network import COMBOS

QUIET = [HealthCheck.too_slow, HealthCheck.filter_too_much]
settings.register_profile("default", max_examples=40, deadline=None, suppress_health_check=QUIET)
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

sizes_st = st.lists(st.integers(1, 64), min_size=2, max_size=5)
combo_st = st.sampled_from(COMBOS)
dtype_st = st.sampled_from(["float32", "float64"])
seed_st = st.integers(0, 2**32 - 1)


def problem(sizes, m, seed, dtype="float64"):
    """A batch X (m, n_in) and labels y of the network's output width, from ``seed``."""
    rng = np.random.default_rng([seed, 1])  # not the stream that drew the weights
    X = rng.normal(size=(m, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], m)
    return X, y


def make(sizes, combo, dtype, seed, device="cpu"):
    hidden, output, cost = combo  # the textbook's random biases: He's zero biases put relu exactly on its kink
    if output == "softmax" and sizes[-1] == 1:
        reject()  # a softmax over one unit is refused (issue 21): tests/test_tasks.py checks that
    return Network(sizes, activation=hidden, output=output, cost=cost, device=device, dtype=dtype, seed=seed,
                   init="textbook")


def flat(grads):
    return np.concatenate([np.concatenate([w.ravel(), b]) for w, b in grads]).astype(np.float64)


def relative_error(got, want):
    scale = max(np.linalg.norm(got), np.linalg.norm(want))
    return np.linalg.norm(got - want) / scale if scale > 0 else 0.0


@given(sizes_st, combo_st, dtype_st, st.integers(1, 40), seed_st)
def test_batched_gradient_is_the_sum_of_per_example_gradients(sizes, combo, dtype, m, seed):
    net = make(sizes, combo, dtype, seed)
    X, y = problem(sizes, m, seed)
    batched = flat(net.gradients(X, y)) * m
    one_by_one = sum(flat(net.gradients(X[i:i + 1], y[i:i + 1])) for i in range(m))
    assert relative_error(batched, one_by_one) < (1e-12 if dtype == "float64" else 1e-5)


@given(sizes_st, combo_st, st.integers(1, 20), seed_st)
def test_gradient_agrees_with_finite_differences_along_a_random_direction(sizes, combo, m, seed):
    net = make(sizes, combo, "float64", seed)
    X, y = problem(sizes, m, seed)
    rng = np.random.default_rng(seed + 1)
    W, B = net.weights, net.biases
    dW, dB = [rng.normal(size=w.shape) for w in W], [rng.normal(size=b.shape) for b in B]
    norm = np.sqrt(sum(float((a ** 2).sum()) for a in dW + dB))
    dW, dB = [a / norm for a in dW], [a / norm for a in dB]
    grads = net.gradients(X, y)
    slope = sum(float((gw * dw).sum() + (gb * db).sum()) for (gw, gb), dw, db in zip(grads, dW, dB))
    eps = 1e-5

    def cost_at(t):
        net.set_parameters([w + t * d for w, d in zip(W, dW)], [b + t * d for b, d in zip(B, dB)])
        return net.evaluate(X, y)["loss"]

    numeric = (cost_at(eps) - cost_at(-eps)) / (2 * eps)
    tolerance = 1e-6 * np.linalg.norm(flat(grads)) + 1e-9
    if abs(numeric - slope) >= tolerance:
        # relu's kink inside [-eps, eps] makes the central difference depend on eps (the cost is not
        # differentiable there); a wrong gradient of a smooth cost does not: such a draw proves nothing
        narrow = (cost_at(eps / 10) - cost_at(-eps / 10)) / (2 * eps / 10)
        if abs(narrow - numeric) >= tolerance / 2:
            reject()
    assert abs(numeric - slope) < tolerance, (numeric, slope)


@given(sizes_st, combo_st, dtype_st, st.integers(1, 50), seed_st)
def test_predict_is_the_argmax_of_forward(sizes, combo, dtype, m, seed):
    net = make(sizes, combo, dtype, seed)
    X, _ = problem(sizes, m, seed, dtype)
    out = net.forward(X)
    assert out.shape == (m, sizes[-1]) and out.dtype == np.dtype(dtype)
    want = out.argmax(axis=1) if sizes[-1] > 1 else (out[:, 0] > 0.5).astype(np.int64)
    if net.regression:  # one unit that is not a sigmoid: its prediction is the output itself (issue 21)
        want = out[:, 0]
    np.testing.assert_array_equal(net.predict(X), want)


@given(sizes_st, combo_st, dtype_st, st.integers(2, 30), st.integers(1, 12), seed_st)
def test_training_with_a_seed_is_reproducible(sizes, combo, dtype, n, batch_size, seed):
    X, y = problem(sizes, n, seed)
    runs = []
    for _ in range(2):
        net = make(sizes, combo, dtype, seed)
        try:  # a run that diverges must diverge the same way, and keep the same weights
            outcome = net.fit(X, y, epochs=2, batch_size=batch_size, lr=0.05, momentum=0.5).loss
        except DivergenceError as e:
            outcome = str(e)
        runs.append((net.weights + net.biases, outcome, net.rng.bit_generator.state))
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(a, b)
    assert runs[0][1] == runs[1][1] and runs[0][2] == runs[1][2]


@given(sizes_st, combo_st, dtype_st, st.integers(1, 30), seed_st)
def test_evaluate_on_the_training_batch_agrees_with_the_loss_fit_reports(sizes, combo, dtype, n, seed):
    """Full-batch training: the loss of epoch k is the cost before its update, i.e. after epoch k-1."""
    X, y = problem(sizes, n, seed)
    net = make(sizes, combo, dtype, seed)
    before = [net.evaluate(X, y)["loss"]]
    try:
        history = net.fit(X, y, epochs=3, batch_size=n, lr=0.01,
                          callback=lambda r: before.append(net.evaluate(X, y)["loss"]))
    except DivergenceError:
        reject()
    tolerance = 1e-12 if dtype == "float64" else 1e-5
    for reported, measured in zip(history.loss, before):
        assert reported == pytest.approx(measured, rel=tolerance, abs=tolerance)


@given(sizes_st, combo_st, st.integers(1, 40), seed_st)
def test_float32_agrees_with_float64(sizes, combo, m, seed):
    """The same float32-representable weights and inputs, computed in float32 and in float64."""
    single = make(sizes, combo, "float32", seed)
    double = make(sizes, combo, "float64", seed)
    double.set_parameters(single.weights, single.biases)
    X, y = problem(sizes, m, seed, "float32")
    assert relative_error(single.forward(X).astype(np.float64), double.forward(X)) < 1e-5
    assert relative_error(flat(single.gradients(X, y)), flat(double.gradients(X, y))) < 1e-4


@given(sizes_st, combo_st, st.integers(2, 25), st.integers(1, 8), st.integers(1, 3), st.booleans(), seed_st)
def test_stopping_at_any_epoch_and_resuming_changes_nothing(sizes, combo, n, batch_size, k, momentum, seed):
    """k epochs, a checkpoint on disk, a new network from it, the rest: bit for bit a straight run of k+2."""
    X, y = problem(sizes, n, seed)
    kw = {"batch_size": batch_size, "lr": 0.01, "momentum": 0.9 if momentum else 0.0, "l2": 0.1}
    straight = make(sizes, combo, "float32", seed)
    try:
        straight.fit(X, y, epochs=k + 2, **kw)
    except DivergenceError:
        reject()
    first = make(sizes, combo, "float32", seed)
    with tempfile.TemporaryDirectory() as folder:
        first.fit(X, y, epochs=k, checkpoint=folder, state=TrainState(), **kw)
        net, state = load_checkpoint(folder, device="cpu")
    net.fit(X, y, epochs=k + 2, state=state, **kw)
    for a, b in zip(straight.weights + straight.biases, net.weights + net.biases):
        np.testing.assert_array_equal(a, b)


@pytest.mark.gpu
@given(sizes_st, combo_st, dtype_st, st.integers(1, 40), seed_st)
def test_gpu_agrees_with_cpu(sizes, combo, dtype, m, seed):
    """The same network on cupy and on numpy: outputs, gradients and one SGD epoch."""
    reason = cuda_reason()
    if reason:
        pytest.skip(f"no CUDA device: {reason}")
    X, y = problem(sizes, m, seed, dtype)
    cpu, gpu = make(sizes, combo, dtype, seed), make(sizes, combo, dtype, seed, device="cuda")
    close = 1e-12 if dtype == "float64" else 1e-5
    assert relative_error(gpu.forward(X).astype(np.float64), cpu.forward(X).astype(np.float64)) < close
    assert relative_error(flat(gpu.gradients(X, y)), flat(cpu.gradients(X, y))) < close * 10
    for net in (cpu, gpu):
        try:
            net.fit(X, y, epochs=1, batch_size=max(1, m // 3), lr=0.01, momentum=0.5)
        except DivergenceError:
            reject()
    assert relative_error(flat(zip(gpu.weights, gpu.biases)), flat(zip(cpu.weights, cpu.biases))) < close * 10
