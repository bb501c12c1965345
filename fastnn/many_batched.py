"""The batched generic engine: K models of one shape trained together with stacked parameters and 3-D matmuls.

It is the generic engine's math (``Network._backprop``, ``engines.generic.sgd_step``) with a leading model
axis k on every array; the GPU's fallback for ``fit_many`` (``xp`` is numpy or cupy alike).

    forward  Z^l_k = W^l_k A^{l-1}_k + b^l_k          W^l (K, n_out, n_in), A^l (K, n_l, m)
    BP1      δ^L_k = ∇_a C ⊙ σ'(Z^L_k), times -η_k/m    the step's scale, one per model
    BP2      δ^l_k = ((W^{l+1}_k)^T δ^{l+1}_k) ⊙ σ'(Z^l_k)
    BP3      ∂C/∂b^l_k = δ^l_k @ ones                  (K, n_out, 1)
    BP4      ∂C/∂W^l_k = δ^l_k (A^{l-1}_k)^T            (K, n_out, n_in)

Each model draws its own shuffled order from its own generator, so the batch each model sees is its solo
run's batch: the gathered batch is (K, m, n_in).  Models are grouped by batch size and by momentum on/off
(the update differs); lr, momentum and l2 are per-model columns, each cast to the network's dtype as the
solo update casts its Python scalars, so on numpy every model's weights come out as its solo generic run's.
"""

import math
import time

import numpy as np

from . import inputs, interrupts, train
from .state import TrainState

ENGINE_NAME = "batched-generic"


class _Softmax:
    """Softmax over the units axis (1) of (K, n, m) arrays; the same steps as ``activations.Softmax``."""

    name = "softmax"

    def forward(self, xp, z, out):
        top = z.max(axis=1, keepdims=True)
        xp.subtract(z, top, out=out)
        xp.exp(out, out=out)
        out /= out.sum(axis=1, keepdims=True)
        return out

    def backward(self, xp, grad, z, a, tmp):
        xp.multiply(a, grad, out=tmp)
        grad -= tmp.sum(axis=1, keepdims=True)
        grad *= a
        return grad


def _batched(act):
    return _Softmax() if act.name == "softmax" else act  # the elementwise ones work on any shape


def _costs(xp, name, z, a, y):
    """The summed cost of each model's batch, (K,), for ``costs``' cost ``name`` (d = a - y for quadratic)."""
    if name == "quadratic":
        d = a - y
        return 0.5 * (d * d).sum(axis=(1, 2))
    if name == "cross-entropy":
        return xp.logaddexp(0.0, z).sum(axis=(1, 2)) - (y * z).sum(axis=(1, 2))
    top = z.max(axis=1, keepdims=True)  # log-likelihood
    lse = top + xp.log(xp.exp(z - top).sum(axis=1, keepdims=True))
    return (lse * y).sum(axis=(1, 2)) - (y * z).sum(axis=(1, 2))


class Stack:
    """The flat parameters of K models as one (K, n_params) array, with per-layer (K, n_out, n_in) views."""

    def __init__(self, net, flats):
        xp = net.xp
        self.flat = xp.stack(flats)
        self.grads = xp.zeros_like(self.flat)
        self.w, self.b = self.views(net, self.flat)
        self.nabla_w, self.nabla_b = self.views(net, self.grads)

    @staticmethod
    def views(net, flat):
        ws, bs, at, k = [], [], 0, flat.shape[0]
        for n_out, n_in in zip(net.sizes[1:], net.sizes[:-1]):
            ws.append(flat[:, at:at + n_out * n_in].reshape(k, n_out, n_in))
            at += n_out * n_in
        for n_out in net.sizes[1:]:
            bs.append(flat[:, at:at + n_out].reshape(k, n_out, 1))
            at += n_out
        return ws, bs


def backprop(net, stack, x, y, scale):
    """BP1–BP4 for K batches x (K, m, n_in), y (K, m, n_out): ``stack.grads`` ← scale_k × summed gradients;
    returns each model's summed cost (K,).  ``scale`` is (K, 1, 1) in the network's dtype."""
    xp = net.xp
    acts = [_batched(a) for a in net.activations]
    a_prev = x.transpose(0, 2, 1)  # (K, n_in, m)
    zs, as_ = [], []
    for w, b, act in zip(stack.w, stack.b, acts):
        z = xp.matmul(w, a_prev)  # Z^l = W^l A^{l-1} + b^l
        z += b
        a_prev = act.forward(xp, z, out=xp.empty_like(z))  # A^l = σ(Z^l)
        zs.append(z)
        as_.append(a_prev)
    yt = y.transpose(0, 2, 1)
    cost = _costs(xp, net.cost.name, zs[-1], as_[-1], yt)
    delta = xp.subtract(as_[-1], yt)  # BP1: a - y, then ⊙ σ'(z^L) for the quadratic cost
    if net.cost.name == "quadratic":
        acts[-1].backward(xp, delta, zs[-1], as_[-1], xp.empty_like(delta))
    delta *= scale
    ones = xp.ones((x.shape[1], 1), net.dtype)
    for l in range(len(stack.w) - 1, -1, -1):
        a_prev = as_[l - 1] if l > 0 else x.transpose(0, 2, 1)
        stack.nabla_w[l][...] = xp.matmul(delta, a_prev.transpose(0, 2, 1))  # BP4
        stack.nabla_b[l][...] = xp.matmul(delta, ones)  # BP3
        if l > 0:  # BP2
            delta = xp.matmul(stack.w[l].transpose(0, 2, 1), delta)
            acts[l - 1].backward(xp, delta, zs[l - 1], as_[l - 1], xp.empty_like(delta))
    return cost


def sgd_step(net, stack, velocity, n, columns):
    """``engines.generic.sgd_step`` for every model at once; ``columns``: (lr, μ, l2) each (K, 1) in the dtype."""
    _lr, momentum, decay, keep = columns
    weights = stack.flat[:, :net.n_weights]
    step = stack.grads
    if velocity is None:
        weights *= keep  # 1 - ηλ/n (1 exactly where λ is 0)
        stack.flat += step
        return
    velocity *= momentum
    velocity += step
    velocity[:, :net.n_weights] -= net.xp.multiply(weights, decay)
    stack.flat += velocity


def _columns(net, group, states, n):
    """(lr, μ, ηλ/n, 1 - ηλ/n) per model of ``group``, (K, 1), each the Python float the solo update uses, cast."""
    s = [states[i].settings for i in group]
    decay = [x["lr"] * x["l2"] / n for x in s]
    col = lambda values: net.backend.to_device(np.array(values, np.float64).reshape(-1, 1), net.dtype)
    return (col([x["lr"] for x in s]), col([x["momentum"] for x in s]), col(decay), col([1.0 - d for d in decay]))


def _group_epoch(nets, states, group, X, Y, shuffle):
    """One epoch of the models ``group`` (one batch size, momentum all on or all off): (costs (K,), seconds)."""
    net = nets[group[0]]
    xp, backend = net.xp, net.backend
    n = X.shape[0]
    start_time = time.perf_counter()
    orders = [nets[i].rng.permutation(n) if shuffle else np.arange(n) for i in group]
    orders = backend.to_device(np.stack(orders), "int64")  # (K, n)
    stack = Stack(net, [nets[i].params for i in group])
    s0 = states[group[0]].settings
    velocity = None
    if s0["momentum"]:
        velocity = xp.stack([states[i].working_velocity(nets[i]) for i in group])
    lr, momentum, decay, keep = _columns(net, group, states, n)
    batch_size = s0["batch_size"]
    costs = xp.zeros(len(group), "float64")
    scales = {m: _scale(net, states, group, m) for m in {batch_size, n % batch_size or batch_size}}  # no copy per batch
    for start in range(0, n, batch_size):
        idx = orders[:, start:start + batch_size]  # (K, m)
        m = idx.shape[1]
        x, y = xp.take(X, idx, axis=0), xp.take(Y, idx, axis=0)
        costs += backprop(net, stack, x, y, scales[m])
        sgd_step(net, stack, velocity, n, (lr, momentum, decay, keep))
    for k, i in enumerate(group):
        nets[i].params[...] = stack.flat[k]
    backend.synchronize()
    return costs, velocity, time.perf_counter() - start_time


def _scale(net, states, group, m):
    """-η/m per model, each the Python float the solo run computes, cast to the dtype: (K, 1, 1)."""
    values = np.array([-states[i].settings["lr"] / m for i in group], np.float64).reshape(-1, 1, 1)
    return net.backend.to_device(values, net.dtype)


def train_epochs(nets, states, data, epochs, diverged, report, on_epoch):
    """``fit_many``'s batched method: epochs state.epoch + 1 .. epochs of every model, one epoch at a time."""
    X, Y, validation, shuffle = prepare(nets, data)
    net0 = nets[0]
    n = X.shape[0]
    for epoch in range(min(s.epoch for s in states) + 1, epochs + 1):
        live = [i for i, s in enumerate(states) if i not in diverged and s.epoch < epoch]
        groups = {}
        for i in live:
            states[i].restore(nets[i])
            s = states[i].settings
            groups.setdefault((s["batch_size"], bool(s["momentum"])), []).append(i)
        done = {}
        for group in groups.values():
            with np.errstate(over="ignore", invalid="ignore"):
                costs, velocity, seconds = _group_epoch(nets, states, group, X, Y, shuffle)
            costs = net0.backend.to_host(costs)  # the one read-back of the group's epoch
            for k, i in enumerate(group):
                done[i] = _finish(nets[i], states[i], epoch, costs[k] / n, seconds, n, validation,
                                  None if velocity is None else velocity[k])
        with interrupts.deferred():  # every model's epoch taken before any is reported, a stop signal waiting
            for i, (state, failure) in done.items():
                states[i].follow(state)
                if failure:
                    diverged[i] = failure
        for i in done:
            if i not in diverged:
                report(i, states[i].history.records[-1])
        if on_epoch is not None:
            on_epoch(epoch, states)
    for net, state in zip(nets, states):
        state.restore(net)


def prepare(nets, data):
    """(X, Y, validation, shuffle) on the device, the networks' input scale and range set as train.fit sets them."""
    X, y, validation, shuffle, _ = data
    net0 = nets[0]
    for net in nets:  # as train.fit: the first fit decides how whole-number inputs are scaled (fastnn.inputs)
        if net.input_scale is None:
            net.input_scale = inputs.scale_of(inputs.as_rows(X, net.sizes[0]))
    X, Y, _ = net0._inputs(X, y)
    for net in nets:
        if net.input_range is None:
            net.input_range = inputs.value_range(net.xp, X)
    if validation is not None:
        validation = net0._inputs(*validation)
    return X, Y, validation, shuffle


def _finish(net, state, epoch, loss, seconds, n, validation, velocity, engine=ENGINE_NAME):
    """Model i's epoch: (its state advanced by it, None), or (its state as it was, why it diverged)."""
    xp = net.xp
    loss = float(loss)
    after = TrainState.from_parts(state.epoch, state.params, state.velocity, state.rng, state.history.records,
                                  state.settings)
    why = train._divergence(epoch, loss, bool(xp.isfinite(net.params).all()), state.history.records,
                            state.settings["lr"])
    if why:
        state.restore(net)
        return after, why
    record = {"epoch": epoch, "loss": loss, "seconds": seconds,
              "examples_per_second": n / seconds if seconds > 0 else math.inf, "engine": engine,
              "precision": "fp32"}
    if validation is not None:
        record.update({f"val_{key}": value for key, value in net._measure(*validation).items()})
    after.advance(net, velocity, record)
    return after, None
