"""PyTorch autograd as an independent oracle: same weights, same batch, float64.

The cost is written here from its textbook definition (not from fastnn/costs.py), torch
differentiates it, and every (dW, db) of ``net.gradients`` must match to a norm-wise relative
error below 1e-10.  SGD steps are checked against ``torch.optim.SGD`` with the same rule.
"""

import numpy as np
import pytest

from fastnn import Network

from .test_network import COMBOS

torch = pytest.importorskip("torch")

TOL = 1e-10
SIGMA = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "identity": lambda z: z,
         "softmax": lambda z: torch.softmax(z, dim=0)}


def torch_params(net):
    """Leaf tensors W^l (n_out, n_in) and b^l (n_out, 1) holding ``net``'s weights."""
    ws = [torch.tensor(w, dtype=torch.float64, requires_grad=True) for w in net.weights]
    bs = [torch.tensor(b[:, None], dtype=torch.float64, requires_grad=True) for b in net.biases]
    return ws, bs


def mean_cost(ws, bs, names, cost, X, Y):
    """The textbook's mean cost over the batch; columns are examples."""
    a = torch.tensor(X.T, dtype=torch.float64)
    y = torch.tensor(Y.T, dtype=torch.float64)
    for w, b, name in zip(ws, bs, names):
        z = w @ a + b
        a = SIGMA[name](z)
    if cost == "quadratic":  # C = ½ ||a - y||²
        per_example = 0.5 * ((a - y) ** 2).sum(dim=0)
    elif cost == "cross-entropy":  # C = -Σ [y ln a + (1-y) ln(1-a)]
        per_example = -(y * torch.log(a) + (1 - y) * torch.log(1 - a)).sum(dim=0)
    else:  # log-likelihood: C = -Σ y ln a, a the softmax output
        per_example = -(y * torch.log(a)).sum(dim=0)
    return per_example.mean()


def relative_error(got, want):
    scale = max(np.linalg.norm(want), np.linalg.norm(got))
    return np.linalg.norm(got - want) / scale if scale > 0 else 0.0


def autograd(net, X, Y):
    ws, bs = torch_params(net)
    names = [a.name for a in net.activations]
    mean_cost(ws, bs, names, net.cost.name, X, Y).backward()
    return [(w.grad.numpy(), b.grad.numpy()[:, 0]) for w, b in zip(ws, bs)]


SHAPES = {
    "batch of 7": ([5, 4, 3, 3], 7),
    "batch of 1": ([5, 4, 3, 3], 1),
    "hidden width 1": ([5, 1, 4, 3], 6),
    "input width 1": ([1, 4, 3], 5),
}


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
@pytest.mark.parametrize("hidden, output, cost", COMBOS)
def test_gradients_match_autograd(device, rng, hidden, output, cost, shape):
    sizes, m = SHAPES[shape]
    net = Network(sizes, activation=hidden, output=output, cost=cost, device=device, dtype="float64", seed=3)
    X = rng.normal(size=(m, sizes[0]))
    y = rng.integers(0, sizes[-1], m)
    Y = np.eye(sizes[-1])[y]
    for l, ((dw, db), (tw, tb)) in enumerate(zip(net.gradients(X, y), autograd(net, X, Y))):
        assert relative_error(dw, tw) < TOL, f"layer {l} dW: {relative_error(dw, tw):.1e}"
        assert relative_error(db, tb) < TOL, f"layer {l} db: {relative_error(db, tb):.1e}"


@pytest.mark.parametrize("output, cost", [("sigmoid", "cross-entropy"), ("sigmoid", "quadratic"),
                                          ("identity", "quadratic")])
def test_gradients_match_autograd_with_one_output_unit_and_soft_targets(device, rng, output, cost):
    """Output width 1 and a target matrix (n, 1) of values in [0, 1] rather than labels."""
    net = Network([3, 5, 1], activation="tanh", output=output, cost=cost, device=device, dtype="float64", seed=8)
    X, Y = rng.normal(size=(9, 3)), rng.random((9, 1))
    for (dw, db), (tw, tb) in zip(net.gradients(X, Y), autograd(net, X, Y)):
        assert relative_error(dw, tw) < TOL and relative_error(db, tb) < TOL


def torch_sgd_epoch(net, X, Y, batch_size, lr, momentum, l2):
    """One unshuffled epoch with torch.optim.SGD: weight_decay λ/n on weights only, dampening 0.

    torch's rule  buf ← μ buf + (g + (λ/n) w),  w ← w - η buf  is fastnn's  v ← μ v - η(g + (λ/n) w),
    w ← w + v  with v = -η buf (η constant), and with μ = 0 it is w ← (1 - ηλ/n) w - η g.
    """
    ws, bs = torch_params(net)
    n = len(X)
    opt = torch.optim.SGD([{"params": ws, "weight_decay": l2 / n}, {"params": bs, "weight_decay": 0.0}],
                          lr=lr, momentum=momentum)
    names = [a.name for a in net.activations]
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size)
        opt.zero_grad()
        mean_cost(ws, bs, names, net.cost.name, X[rows], Y[rows]).backward()  # g = ∇/m of this batch
        opt.step()
    return [w.detach().numpy() for w in ws], [b.detach().numpy()[:, 0] for b in bs]


@pytest.mark.parametrize("momentum, l2", [(0.0, 0.0), (0.9, 3.0), (0.0, 3.0), (0.5, 0.0)])
@pytest.mark.parametrize("hidden, output, cost", [("sigmoid", "sigmoid", "quadratic"),
                                                  ("relu", "softmax", "log-likelihood"),
                                                  ("tanh", "sigmoid", "cross-entropy")])
def test_sgd_epoch_matches_torch_optim(device, rng, hidden, output, cost, momentum, l2):
    """n = 10 in batches of 4: two full batches and a short last one of 2; then a second epoch."""
    net = Network([4, 6, 3], activation=hidden, output=output, cost=cost, device=device, dtype="float64", seed=2)
    X, y = rng.normal(size=(10, 4)), rng.integers(0, 3, 10)
    want_w, want_b = torch_sgd_epoch(net, X, np.eye(3)[y], batch_size=4, lr=0.4, momentum=momentum, l2=l2)
    net.fit(X, y, epochs=1, batch_size=4, lr=0.4, momentum=momentum, l2=l2, shuffle=False)
    # Not bit-identical: torch forms η(g + λw/n) where fastnn forms ηg/m + (ηλ/n)w, so they round apart.
    for got, want in zip(net.weights + net.biases, want_w + want_b):
        assert relative_error(got, want) < 1e-13, relative_error(got, want)


def test_one_plain_sgd_step_leaves_the_same_weights(rng):
    """A single full-batch step without momentum or L2: w ← w - η ∇C (the mean gradient)."""
    net = Network([3, 4, 2], device="cpu", dtype="float64", seed=6)
    X, y = rng.normal(size=(5, 3)), rng.integers(0, 2, 5)
    want_w, want_b = torch_sgd_epoch(net, X, np.eye(2)[y], batch_size=5, lr=1.5, momentum=0.0, l2=0.0)
    net.fit(X, y, epochs=1, batch_size=5, lr=1.5, shuffle=False)
    for got, want in zip(net.weights + net.biases, want_w + want_b):
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-15)
