"""The textbook's per-example backpropagation, written plainly: the oracle and the baseline.

One example at a time, column vectors, fresh arrays everywhere, formulas as printed.  It shares
no code with network.py, so agreeing with it means something.  Not used for training.
"""

import numpy as np


def _sigma(name, z):
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.where(z > 0, z, 0.0)
    if name == "identity":
        return z.copy()
    if name == "softmax":
        e = np.exp(z - z.max())
        return e / e.sum()
    raise ValueError(name)


def _sigma_prime(name, z):
    """σ'(z) as a vector for elementwise σ, as the Jacobian matrix for softmax."""
    if name == "sigmoid":
        s = _sigma(name, z)
        return s * (1 - s)
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "identity":
        return np.ones_like(z)
    if name == "softmax":
        s = _sigma(name, z)
        return np.diagflat(s) - s @ s.T
    raise ValueError(name)


def backprop(weights, biases, x, y, activation, output, cost):
    """∂C_x/∂W and ∂C_x/∂b for one example x (n_in, 1) with target y (n_out, 1).

    Returns (nabla_w, nabla_b), lists by layer; biases are column vectors (n_out, 1).
    """
    names = [activation] * (len(weights) - 1) + [output]
    a, activations, zs = x, [x], []
    for w, b, name in zip(weights, biases, names):
        z = w @ a + b
        zs.append(z)
        a = _sigma(name, z)
        activations.append(a)
    if cost == "quadratic":  # BP1: δ = ∇_a C ⊙ σ'(z), Jacobian-transposed for softmax
        d = _sigma_prime(output, zs[-1])
        delta = d.T @ (a - y) if output == "softmax" else (a - y) * d
    else:  # cross-entropy with sigmoid, log-likelihood with softmax
        delta = a - y
    nabla_w = [None] * len(weights)
    nabla_b = [None] * len(weights)
    nabla_w[-1], nabla_b[-1] = delta @ activations[-2].T, delta
    for l in range(2, len(weights) + 1):  # BP2, BP3, BP4
        delta = (weights[-l + 1].T @ delta) * _sigma_prime(names[-l], zs[-l])
        nabla_w[-l], nabla_b[-l] = delta @ activations[-l - 1].T, delta
    return nabla_w, nabla_b


def sgd_epoch(weights, biases, X, Y, order, batch_size, lr, activation, output, cost):
    """One epoch of the textbook's update_mini_batch loop, in place; X (n, n_in), Y (n, n_out)."""
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        sum_w = [np.zeros_like(w) for w in weights]
        sum_b = [np.zeros_like(b) for b in biases]
        for i in batch:
            nw, nb = backprop(weights, biases, X[i][:, None], Y[i][:, None], activation, output, cost)
            sum_w = [s + d for s, d in zip(sum_w, nw)]
            sum_b = [s + d for s, d in zip(sum_b, nb)]
        for w, b, dw, db in zip(weights, biases, sum_w, sum_b):
            w -= (lr / len(batch)) * dw
            b -= (lr / len(batch)) * db
