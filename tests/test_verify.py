"""``engines.verify``: the first-steps check of a fused engine against the generic one.

Each wrong engine here is one that the old check (velocity held to the weights' start, no look at the L2 term on its
own, no ulp floor, two full batches only) accepted, or a right one that it rejected; each test says which.  The
CUDA engine runs its real kernel through the g++ build of cuda_fused.cu (tests/kernel_shim), the CPU's wrong
engines are the generic array code with one fault.
"""

import logging

import numpy as np
import pytest

from fastnn import Network, engines
from fastnn.engines import cpu_fused, cuda_fused
from fastnn.engines.generic import GenericEngine
from tests.test_cuda_engine import libs, shim  # noqa: F401 (fixtures: the kernel on g++ in place of cupy's)

N = 2000  # a training set this large makes the run's own λ-term small beside the step, as it is on MNIST


class Faulty:
    """The generic engine's array code with one deliberate ``fault``:

    no-l2      the λ-term left out of the update (the run's λ is ignored)
    velocity   the velocity left 1% too large (the weights are right)
    short      the short last batch's step divided by the batch size, not by its own size
    float64    none: each step computed in float64 and rounded to the network's dtype (a right engine that
               rounds otherwise than generic)
    """

    def __init__(self, net, fault):
        self.net, self.fault = net, fault
        self.name = f"faulty-{fault}"

    def epoch(self, X, Y, order, batch_size, lr, momentum, l2, velocity):
        reference = GenericEngine(self.net, kernels=None)
        if self.fault == "no-l2":
            return reference.epoch(X, Y, order, batch_size, lr, momentum, 0.0, velocity)
        if self.fault == "velocity":
            cost = reference.epoch(X, Y, order, batch_size, lr, momentum, l2, velocity)
            if velocity is not None:
                velocity *= np.float32(1.01)
            return cost
        if self.fault == "float64":
            return self._in_float64(X, Y, order, batch_size, lr, momentum, l2, velocity)
        cost = 0.0
        for start in range(0, order.shape[0], batch_size):
            idx = order[start:start + batch_size]
            scale = idx.shape[0] / batch_size  # 1 but for a short batch, whose mean is then wrong
            cost += reference.epoch(X, Y, idx, batch_size, lr * scale, momentum, l2 / scale, velocity)
        return cost

    def _in_float64(self, X, Y, order, batch_size, lr, momentum, l2, velocity):
        wide = Network(self.net.sizes, device="cpu", dtype="float64", seed=0,
                       activation=self.net.activations[0].name, output=self.net.activations[-1].name,
                       cost=self.net.cost.name)
        wide.params[...] = self.net.params
        v = None if velocity is None else velocity.astype(np.float64)
        cost = GenericEngine(wide, kernels=None).epoch(X.astype(np.float64), Y.astype(np.float64), order,
                                                       batch_size, lr, momentum, l2, v)
        self.net.params[...] = wide.params
        if velocity is not None:
            velocity[...] = v
        return cost


def problem(seed=0, sizes=(6, 5, 3)):
    net = Network(list(sizes), device="cpu", seed=seed)
    rng = np.random.default_rng(seed)
    X, Y, _ = net._inputs(rng.standard_normal((N, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], N))
    return net, X, Y, np.arange(N, dtype=np.int64)


def check(engine, net, X, Y, order, lr=0.5, momentum=0.9, l2=0.0, batch_size=10):
    """verify's answer for ``engine``, from rest, remembered answers forgotten; the state is left as it was."""
    engines._verified.clear()
    start = net.params.copy()
    velocity = np.zeros_like(net.params) if momentum else None
    ok = engines.verify(engine, net, X, Y, order, batch_size, lr, momentum, l2, velocity)
    np.testing.assert_array_equal(net.params, start)
    assert velocity is None or not velocity.any()
    return ok


@pytest.fixture(autouse=True)
def forget():
    engines._verified.clear()
    yield
    engines._verified.clear()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_an_engine_without_the_l2_term_is_rejected(momentum, caplog):
    """λ = 0.1 on 2,000 examples at lr 0.5: the λ-term is 2.5e-5 of a weight a step, under the step's tolerance; the old
    check accepted the engine that drops it (plain and momentum)."""
    net, X, Y, order = problem()
    with caplog.at_level(logging.WARNING, logger="fastnn"):
        assert not check(Faulty(net, "no-l2"), net, X, Y, order, momentum=momentum, l2=0.1)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "(the check of its L2 term)" in warnings[0], warnings
    assert check(Faulty(net, "float64"), net, X, Y, order, momentum=momentum, l2=0.1)  # the right one passes
    assert check(Faulty(net, "no-l2"), net, X, Y, order, momentum=momentum, l2=0.0)  # no λ: nothing to drop


def test_a_wrong_velocity_is_rejected():
    """The old check held the velocity to the weights' start, 10x its size: a 1% error in it passed."""
    net, X, Y, order = problem()
    assert not check(Faulty(net, "velocity"), net, X, Y, order, momentum=0.9)
    assert check(Faulty(net, "velocity"), net, X, Y, order, momentum=0.0)  # no velocity: nothing wrong


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_an_engine_wrong_on_the_short_last_batch_only_is_rejected(momentum):
    """The old check ran two full batches: an engine wrong on the last, short one passed."""
    net, X, Y, order = problem()
    assert not check(Faulty(net, "short"), net, X, Y, order, momentum=momentum)
    assert engines.verify_order(order, 10).shape[0] == 25  # two batches of 10, and one of 5
    assert check(Faulty(net, "short"), net, X, Y, order[:20], momentum=momentum)  # no short batch: it is right


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_a_right_engine_at_a_tiny_learning_rate_is_accepted(momentum):
    """At lr 1e-5 the step is below the roundings of w + s: the old check rejected an engine that rounds otherwise."""
    net, X, Y, order = problem()
    assert check(Faulty(net, "float64"), net, X, Y, order, lr=1e-5, momentum=momentum, l2=5.0)
    assert not check(Faulty(net, "no-l2"), net, X, Y, order, lr=1e-5, momentum=momentum, l2=5.0)


def test_the_fused_cpu_engine_passes_at_every_learning_rate():
    if cpu_fused.available(Network([2, 2], device="cpu").backend):
        pytest.fail(f"the fused CPU engine is unavailable: {cpu_fused.available(Network([2, 2]).backend)}")
    net, X, Y, order = problem(sizes=(6, 7, 3))
    for lr, l2, momentum in ((1e-5, 5.0, 0.9), (1e-5, 0.0, 0.0), (0.5, 0.5, 0.9), (3.0, 5.0, 0.0)):
        assert check(cpu_fused.Engine(net, 10), net, X, Y, order, lr=lr, momentum=momentum, l2=l2), (lr, l2)


class NoDecayKernel(cuda_fused.Engine):
    """The CUDA engine with its kernel launched at λ = 0, whatever the run asks."""

    def epoch(self, X, Y, order, batch_size, lr, momentum, l2, velocity):
        return super().epoch(X, Y, order, batch_size, lr, momentum, 0.0, velocity)


@pytest.mark.kernel
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_the_cuda_kernel_without_l2_is_rejected_and_the_right_one_passes(shim, libs, momentum):  # noqa: F811
    shim(libs["right"])
    net, X, Y, order = problem()
    assert not check(NoDecayKernel(net, 10), net, X, Y, order, momentum=momentum, l2=0.1)
    for lr in (0.5, 1e-5):
        assert check(cuda_fused.Engine(net, 10), net, X, Y, order, lr=lr, momentum=momentum, l2=0.1), lr


@pytest.mark.kernel
def test_fit_with_the_no_l2_kernel_trains_with_generic(shim, libs, monkeypatch, caplog):  # noqa: F811
    """End to end: ``fit`` picks the fused CUDA engine, verify rejects it, the run is the generic engine's."""
    shim(libs["right"])
    monkeypatch.setattr(cuda_fused, "Engine", NoDecayKernel)
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((N, 6)).astype(np.float32), rng.integers(0, 3, N)
    kw = {"epochs": 1, "batch_size": 10, "lr": 0.5, "momentum": 0.9, "l2": 0.5}
    with caplog.at_level(logging.WARNING, logger="fastnn"):
        net = Network([6, 5, 3], device="cpu", seed=4)
        history = net.fit(X, y, engine="fused", **kw)
    assert [r["engine"] for r in history.records] == ["generic"]
    assert [r.getMessage() for r in caplog.records if "disagreed" in r.getMessage()]
    reference = Network([6, 5, 3], device="cpu", seed=4)
    reference.fit(X, y, engine="generic", **kw)
    np.testing.assert_array_equal(net.params, reference.params)
