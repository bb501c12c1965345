"""The fused CPU engine at the edges of float32: logits far beyond exp's range (softmax's max shift, the
cross-entropy's softplus branch, sigmoid's clamp) give the generic engine's finite costs and steps.
(Written for the mutants of engines/cpu_kernels.py that survived bench.mutation; the engine is branch 22's.)"""

import numpy as np
import pytest

from fastnn import Network

pytestmark = pytest.mark.filterwarnings("ignore::fastnn.NotLearningWarning")


def _twins(output, cost, scale, hidden="identity"):
    """Two [3, 4, 3] float32 networks with the same weights, scaled so that |z^L| reaches ~``scale``."""
    rng = np.random.default_rng(1)
    w1, w2 = rng.normal(size=(4, 3)), rng.normal(size=(3, 4)) * scale
    nets = [Network([3, 4, 3], activation=hidden, output=output, cost=cost, device="cpu") for _ in range(2)]
    for net in nets:
        net.set_parameters([w1, w2], [np.zeros(4), np.zeros(3)])
    return nets


@pytest.mark.parametrize("output, cost, hidden", [("softmax", "log-likelihood", "identity"),
                                                  ("sigmoid", "cross-entropy", "identity"),
                                                  ("sigmoid", "quadratic", "sigmoid"),
                                                  ("softmax", "log-likelihood", "tanh")])
@pytest.mark.parametrize("scale", [200.0, -200.0])
def test_huge_logits_train_like_the_generic_engine(output, cost, hidden, scale):
    fused, generic = _twins(output, cost, scale, hidden)
    rng = np.random.default_rng(2)
    X = rng.normal(size=(20, 3)) * 3
    y = rng.integers(0, 3, 20)
    z = generic.forward(X)
    assert np.isfinite(z).all()
    kw = {"epochs": 1, "batch_size": 4, "lr": 1e-3, "shuffle": False}
    fused_history = fused.fit(X, y, engine="fused", **kw)
    generic_history = generic.fit(X, y, engine="generic", **kw)
    assert fused_history.records[0]["engine"] == "fused-cpu"  # verified: not fallen back to generic
    loss = fused_history.loss[0]
    assert np.isfinite(loss) and loss > (0.1 if cost == "quadratic" else 1.0)  # saturated: far from 0, finite
    assert loss == pytest.approx(generic_history.loss[0], rel=1e-5)
    assert np.isfinite(fused.params).all()
    np.testing.assert_allclose(fused.params, generic.params, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("error, passes", [(0.0, True), (1e-5, True), (1e-2, False)])
def test_verify_measures_a_fused_step_against_the_generic_one(error, passes):
    """A fused engine whose step is off by ``error`` of the step's size: verify passes it up to VERIFY_RTOL (2e-3
    in float32), refuses it beyond, and leaves the weights as they were either way."""
    from fastnn import engines
    from fastnn.engines import cpu_fused

    net = Network([3, 4, 3], device="cpu", seed=0)
    rng = np.random.default_rng(3)
    X, Y, _ = net._inputs(rng.normal(size=(20, 3)), rng.integers(0, 3, 20))
    order = np.arange(20, dtype=np.int64)

    class Off(cpu_fused.Engine):
        def epoch(self, X, Y, order, batch_size, lr, momentum, l2, velocity):
            start = net.params.copy()
            cost = super().epoch(X, Y, order, batch_size, lr, momentum, l2, velocity)
            step = net.params - start
            net.params[...] += error * np.abs(step).max() * np.sign(np.arange(step.size) % 2 - 0.5)
            return cost

    before = net.params.copy()
    assert engines.verify(Off(net, 5), net, X, Y, order, 5, 0.5, 0.0, 0.0, None) is passes
    np.testing.assert_array_equal(net.params, before)
