"""The generic engine's fused elementwise kernels (fastnn.engines.cuda_elementwise), their bodies built with
g++ (tests/kernel_shim), against the numpy path: each kernel against the activation it replaces, and whole
epochs against the plain generic engine for every activation, cost and update rule, float32 and float64.

Tolerance: float32 atol 1e-6 + rtol 1e-5 (the same operations in the same order; only σ's C library
differs from numpy's), float64 1e-12.
"""

import numpy as np
import pytest

from fastnn import Network
from fastnn.activations import HIDDEN, get_activation
from fastnn.engines import cuda_elementwise
from fastnn.engines.generic import GenericEngine
from tests.kernel_shim import compiler_reason
from tests.kernel_shim.elementwise import CpuKernels

pytestmark = pytest.mark.kernel
TOL = {"float32": {"rtol": 1e-5, "atol": 1e-6}, "float64": {"rtol": 1e-12, "atol": 1e-12}}


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    reason = compiler_reason()
    if reason:
        pytest.fail(f"the kernel tests need g++: {reason}")
    return cuda_elementwise.Kernels(CpuKernels(cuda_elementwise.specs(), tmp_path_factory.mktemp("ew")))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(HIDDEN))
def test_each_kernel_matches_its_activation(kernels, name, dtype):
    rng = np.random.default_rng(0)
    act = get_activation(name)
    z0 = (rng.standard_normal((5, 7)) * 3).astype(dtype)
    z0[0, :3] = [0.0, -0.0, 40.0]
    b = rng.standard_normal((5, 1)).astype(dtype)
    z_ref = z0 + b
    a_ref = act.forward(np, z_ref.copy(), out=np.empty_like(z0))
    z, a = z0.copy(), np.empty_like(z0)
    kernels.forward(name)(b, z, a)
    np.testing.assert_allclose(z, z_ref, **TOL[dtype])
    np.testing.assert_allclose(a, a_ref, **TOL[dtype])
    grad = rng.standard_normal(z0.shape).astype(dtype)
    d_ref = act.backward(np, grad.copy(), z_ref.copy(), a_ref, np.empty_like(z0))
    slope = kernels.slope(name)
    if slope is None:
        assert name == "identity"
        return
    d = grad.copy()
    slope(a_ref, d)
    np.testing.assert_allclose(d, d_ref, **TOL[dtype])


HIDDEN_OUTPUT_COST = [(h, o, "quadratic") for h in HIDDEN for o in (*HIDDEN, "softmax")]
HIDDEN_OUTPUT_COST += [(h, "sigmoid", "cross-entropy") for h in HIDDEN]
HIDDEN_OUTPUT_COST += [(h, "softmax", "log-likelihood") for h in HIDDEN]


def epochs_both_ways(kernels, sizes, hidden, output, cost, momentum, l2, dtype, n=11, batch_size=4):
    kwargs = {"activation": hidden, "output": output, "cost": cost, "device": "cpu", "seed": 5, "dtype": dtype}
    fused, plain = Network(sizes, **kwargs), Network(sizes, **kwargs)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    Y = np.eye(sizes[-1], dtype=dtype)[rng.integers(0, sizes[-1], n)]
    v_fused = np.zeros_like(fused.params) if momentum else None
    v_plain = np.zeros_like(plain.params) if momentum else None
    for _ in range(2):
        order = rng.permutation(n)
        c1 = GenericEngine(fused, kernels=kernels).epoch(X, Y, order, batch_size, 0.3, momentum, l2, v_fused)
        c2 = GenericEngine(plain, kernels=None).epoch(X, Y, order, batch_size, 0.3, momentum, l2, v_plain)
        np.testing.assert_allclose(c1, c2, **TOL[dtype])
    np.testing.assert_allclose(fused.params, plain.params, **TOL[dtype])
    if momentum:
        np.testing.assert_allclose(v_fused, v_plain, **TOL[dtype])
    return fused


@pytest.mark.parametrize("hidden, output, cost", HIDDEN_OUTPUT_COST)
def test_epochs_every_activation_and_cost(kernels, hidden, output, cost):
    epochs_both_ways(kernels, [4, 5, 3], hidden, output, cost, 0.0, 0.0, "float32")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("momentum, l2", [(0.0, 0.0), (0.9, 0.0), (0.0, 5.0), (0.9, 5.0)],
                         ids=["plain", "momentum", "l2", "momentum+l2"])
def test_epochs_every_update_rule(kernels, momentum, l2, dtype):
    epochs_both_ways(kernels, [4, 6, 5, 3], "tanh", "softmax", "log-likelihood", momentum, l2, dtype)


def test_the_fused_path_is_taken(kernels):
    """A kernel that is wrong shows in the result: the engine really calls the kernels it is given."""
    wrong = cuda_elementwise.Kernels(lambda i, o, body, name: kernels.by_name[name])
    real = wrong.by_name["fastnn_forward_sigmoid"]
    wrong.by_name["fastnn_forward_sigmoid"] = lambda b, z, a: (real(b, z, a), a.__imul__(0.5))
    with pytest.raises(AssertionError):
        epochs_both_ways(wrong, [4, 5, 3], "sigmoid", "sigmoid", "quadratic", 0.0, 0.0, "float32")


def test_numpy_backend_gets_no_kernels():
    net = Network([3, 2], device="cpu")
    assert GenericEngine(net).kernels is None
