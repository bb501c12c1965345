"""``fit_many``'s fused method: the fused CUDA kernel trains K models of one shape in one launch per epoch.

``engines.cuda_fused.ManyEngine`` runs block b (cluster b on sm_90) of a launch on model b: each model holds
its own weights, velocity, shuffled order, lr, momentum and L2 on its own SM(s).  Models are grouped by batch
size (the kernel takes one batch size per launch); a group is one launch per epoch.  Where any model of a group
has momentum, every model of it takes the momentum update, those without momentum from a zero velocity that is
thrown away after the epoch (v = s - decay·W; W += v: the plain rule up to one rounding).

Each model draws its order from its own generator as its solo ``net.fit`` does (``net.rng.permutation``), so
it sees its solo run's batches, and agrees with its solo generic run as any fused engine does (the kernel
tests' tolerance, atol 2e-5 + rtol 2e-4 a model).  The first use of each kind of model and settings is checked
by ``engines.verify`` on its first steps, through the same ManyEngine with one model; where it disagrees (or
cannot launch), that batch size's group trains with the batched method for the rest of the run.
"""

import copy
import time

import numpy as np

from . import engines, interrupts, many_batched, train

ENGINE_NAME = "fused-cuda"


def unfit(nets, settings, engine="auto"):
    """None when the fused method can train every network with its settings, else why not (one sentence)."""
    net0 = nets[0]
    if not net0.backend.is_cuda:
        return f"it runs the fused CUDA kernel, on a CUDA GPU only; these networks are on {net0.backend.device}"
    if engine not in ("auto", "fused"):
        return f"it runs the fused engine, and engine {engine!r} was asked (give engine 'auto' or 'fused')"
    reason = engines.fused_unavailable(net0.backend)
    if reason is not None:
        return reason
    module = engines.fused_module(net0.backend)
    if not hasattr(module, "ManyEngine"):
        return f"the fused engine of {net0.backend.device} trains one network per launch"
    for i, (net, s) in enumerate(zip(nets, settings)):
        why = module.unfit(net, s["batch_size"], s["momentum"], s["l2"])
        if why is not None:
            return f"network {i}: {why}"
    return None


class _One:
    """One network through ``ManyEngine`` behind the single-network ``epoch`` that ``engines.verify`` calls."""

    name = ENGINE_NAME

    def __init__(self, module, net, batch_size):
        self.engine = module.ManyEngine([net], batch_size)

    def epoch(self, X, Y, order, batch_size, lr, momentum, l2, velocity):
        cost = self.engine.epoch(X, Y, order.reshape(1, -1), batch_size, [lr], [momentum], [l2],
                                 None if velocity is None else [velocity])
        return cost[0]


def _velocities(nets, states, group):
    """The group's velocities as the launch takes them: None without momentum, else one per model (a zero one
    for a model without momentum)."""
    if not any(states[i].settings["momentum"] for i in group):
        return None
    return [states[i].working_velocity(nets[i]) if states[i].settings["momentum"] else nets[i].xp.zeros_like(nets[i].params)
            for i in group]


def _verified(module, nets, states, group, X, Y, shuffle):
    """True when ``engines.verify`` passes every kind of settings in ``group`` (momentum on/off, L2 on/off), each
    on its model's first steps of this epoch (the order its generator draws next, which is not consumed)."""
    n = X.shape[0]
    velocities = _velocities(nets, states, group)
    seen = set()
    for k, i in enumerate(group):
        net, s = nets[i], states[i].settings
        kind = (bool(s["momentum"]), bool(s["l2"]))
        if kind in seen:
            continue
        seen.add(kind)
        order = copy.deepcopy(net.rng).permutation(n) if shuffle else np.arange(n)
        order = net.backend.to_device(order, "int64")
        velocity = None if velocities is None else velocities[k]
        runner = _One(module, net, s["batch_size"])
        if not engines.verify(runner, net, X, Y, order, s["batch_size"], s["lr"], s["momentum"], s["l2"], velocity):
            return False
    return True


def _group_epoch(engine, nets, states, group, X, Y, shuffle):
    """One epoch of the models ``group`` (one batch size) in one launch: (costs (K,) on the host, velocities, s)."""
    net = nets[group[0]]
    backend = net.backend
    n = X.shape[0]
    start_time = time.perf_counter()
    orders = [nets[i].rng.permutation(n) if shuffle else np.arange(n) for i in group]
    orders = backend.to_device(np.stack(orders), "int64")  # (K, n)
    s = [states[i].settings for i in group]
    velocities = _velocities(nets, states, group)
    with train._context_lost_in(backend.device, ENGINE_NAME):
        costs = engine.epoch(X, Y, orders, s[0]["batch_size"], [x["lr"] for x in s], [x["momentum"] for x in s],
                             [x["l2"] for x in s], velocities)
        costs = np.array(backend.to_host(costs), np.float64)  # the one read-back of the group's epoch
    backend.synchronize()
    return costs, velocities, time.perf_counter() - start_time


def train_epochs(nets, states, data, epochs, diverged, report, on_epoch):
    """``fit_many``'s fused method: epochs state.epoch + 1 .. epochs of every model, one epoch at a time."""
    X, Y, validation, shuffle = many_batched.prepare(nets, data)
    module = engines.fused_module(nets[0].backend)
    n = X.shape[0]
    launchers = {}  # the models of a group -> its ManyEngine (kept: a cluster that fell back stays on one SM)
    fused_ok = {}  # batch size -> whether its group passed engines.verify (False: batched for the rest of the run)
    for epoch in range(min(s.epoch for s in states) + 1, epochs + 1):
        live = [i for i, s in enumerate(states) if i not in diverged and s.epoch < epoch]
        groups = {}
        for i in live:
            states[i].restore(nets[i])
            groups.setdefault(states[i].settings["batch_size"], []).append(i)
        done = {}
        for batch_size, group in groups.items():
            if batch_size not in fused_ok:
                fused_ok[batch_size] = _verified(module, nets, states, group, X, Y, shuffle)
            if fused_ok[batch_size]:
                key = tuple(group)
                if key not in launchers:
                    launchers[key] = module.ManyEngine([nets[i] for i in group], batch_size)
                with np.errstate(over="ignore", invalid="ignore"):
                    costs, velocities, seconds = _group_epoch(launchers[key], nets, states, group, X, Y, shuffle)
                for k, i in enumerate(group):
                    velocity = velocities[k] if velocities is not None and states[i].settings["momentum"] else None
                    done[i] = many_batched._finish(nets[i], states[i], epoch, costs[k] / n, seconds, n, validation,
                                                   velocity, ENGINE_NAME)
                continue
            subgroups = {}  # the batched method: momentum on and off apart
            for i in group:
                subgroups.setdefault(bool(states[i].settings["momentum"]), []).append(i)
            for sub in subgroups.values():
                with np.errstate(over="ignore", invalid="ignore"):
                    costs, velocity, seconds = many_batched._group_epoch(nets, states, sub, X, Y, shuffle)
                costs = nets[0].backend.to_host(costs)
                for k, i in enumerate(sub):
                    done[i] = many_batched._finish(nets[i], states[i], epoch, costs[k] / n, seconds, n, validation,
                                                   None if velocity is None else velocity[k])
        with interrupts.deferred():  # every model's epoch taken before any is reported, a stop signal waiting
            for i, (state, failure) in done.items():
                states[i].follow(state)
                if failure:
                    diverged[i] = failure
        for i in sorted(done):
            if i not in diverged:
                report(i, states[i].history.records[-1])
        if on_epoch is not None:
            on_epoch(epoch, states)
    for net, state in zip(nets, states):
        state.restore(net)
