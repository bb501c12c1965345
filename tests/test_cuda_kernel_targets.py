"""The fused CUDA kernel (through the g++ shim, tests/kernel_shim) with targets that are not one-hot:
C = Σ y (logsumexp(z) - z) weighs each example's logsumexp by its targets' sum.  (Written for the kernel's
mutant that survived bench.mutation; branch 19k owns the kernel and its main tests.)"""

import numpy as np
import pytest

from fastnn import Network
from fastnn.engines.generic import GenericEngine
from tests.kernel_shim import compiler_reason, fused_library

from .test_cuda_kernel import ATOL, RTOL, run_fused

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    reason = compiler_reason()
    if reason:
        pytest.fail(f"the kernel tests need g++: {reason}")
    return fused_library(tmp_path_factory.mktemp("shim"))


@pytest.mark.parametrize("output, cost", [("softmax", "log-likelihood"), ("sigmoid", "cross-entropy"),
                                          ("sigmoid", "quadratic")])
def test_soft_targets_cost_and_step_like_the_generic_engine(lib, output, cost):
    """Target rows summing to 0.5, 1 and 2: the kernel's epoch cost and weights equal the generic engine's."""
    kwargs = {"activation": "tanh", "output": output, "cost": cost, "device": "cpu", "seed": 3}
    fused, generic = Network([5, 4, 3], **kwargs), Network([5, 4, 3], **kwargs)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((11, 5)).astype(np.float32)
    Y = rng.uniform(size=(11, 3))
    Y *= (np.arange(11) % 3 + 1)[:, None] / 2 / Y.sum(axis=1, keepdims=True)
    Y = np.clip(Y, 0, 1).astype(np.float32)
    order = rng.permutation(11).astype(np.int64)
    c_fused = run_fused(lib, fused, X, Y, order, 4, 0.5, 0.0, 0.0, None, 64)
    c_generic = float(GenericEngine(generic).epoch(X, Y, order, 4, 0.5, 0.0, 0.0, None))
    np.testing.assert_allclose(c_fused, c_generic, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(fused.params, generic.params, rtol=RTOL, atol=ATOL)
