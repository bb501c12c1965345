"""Engines: what runs an epoch's batch loop.  One switch, ``engine="auto"|"fused"|"generic"``.

- ``generic`` (``engines.generic``): whole-batch array operations on ``xp``; any network, any
  device, distributed too.  It is the readable reference.
- ``fused``: one compiled engine per device kind, for the networks whose shapes it accepts:
  ``engines.cpu_fused`` on the CPU, ``engines.cuda_fused`` on a CUDA GPU.
- ``auto``: the fused engine when it is available and the shapes fit, else generic.

A fused module provides:
    available(backend) -> None, or one sentence: why it cannot run on this backend at all
    unfit(net, batch_size, momentum, l2) -> None, or one sentence: why this network/settings don't fit
    Engine(net, batch_size): .name, .epoch(X, Y, order, batch_size, lr, momentum, l2, velocity) -> summed cost
and may provide:
    slower(net, batch_size) -> None, or one sentence: why ``auto`` leaves a network it could run to
        generic, which is faster there (``fused`` runs it all the same)
    RULE: one line for ``fastnn info``: which networks ``auto`` gives it

The first use of a fused engine for a kind of network on a device is checked against the
generic engine on one step (``verify``); on a disagreement a one-line warning is logged and the
generic engine runs instead.
"""

import importlib
import logging

import numpy as np

from ..errors import ConfigError
from .generic import GenericEngine

log = logging.getLogger("fastnn")

ENGINES = ("auto", "fused", "generic")
FUSED = {"cpu": "cpu_fused", "cuda": "cuda_fused"}  # device kind -> module of its fused engine
# A verified step must agree with the generic one this closely (relative to the step's size).
VERIFY_RTOL = {"float32": 2e-3, "float64": 1e-9}

_verified = {}  # (device, network signature, settings) -> True/False


def check_name(engine, what="engine"):
    """Return ``engine`` if it is one of ENGINES, else raise ConfigError listing them."""
    if engine not in ENGINES:
        raise ConfigError(f"{what} must be one of {', '.join(ENGINES)}; got {engine!r}")
    return engine


def fused_module(backend):
    """The module of the fused engine for ``backend``'s kind of device (imported on first use)."""
    kind = "cuda" if backend.is_cuda else "cpu"
    return importlib.import_module(f".{FUSED[kind]}", __name__)


def fused_unavailable(backend):
    """None when ``backend`` has a usable fused engine, else the reason (one sentence)."""
    try:
        module = fused_module(backend)
    except ImportError as e:
        return f"the fused engine cannot be imported ({type(e).__name__}: {e})"
    return module.available(backend)


def choose(net, engine, batch_size, momentum, l2, comm=None):
    """The engine to train ``net`` with: GenericEngine or a fused Engine (see the module docstring)."""
    check_name(engine)
    if engine == "generic":
        return GenericEngine(net, comm)
    if comm is not None:
        if engine == "fused":
            raise ConfigError("the fused engine does not train distributed; use engine 'generic' or 'auto'")
        return GenericEngine(net, comm)
    reason = fused_unavailable(net.backend)
    if reason is None:
        reason = fused_module(net.backend).unfit(net, batch_size, momentum, l2)
    if reason is not None:
        if engine == "fused":
            raise ConfigError(f"the fused engine cannot train this network: {reason}")
        return GenericEngine(net)
    slower = getattr(fused_module(net.backend), "slower", None)
    if engine == "auto" and slower is not None and slower(net, batch_size) is not None:
        return GenericEngine(net)
    return fused_module(net.backend).Engine(net, batch_size)


def _signature(net, batch_size, momentum, l2):
    acts = tuple(a.name for a in net.activations)
    return (net.backend.device, tuple(net.sizes), acts, net.cost.name, str(net.dtype), batch_size,
            bool(momentum), bool(l2))


def verify(engine, net, X, Y, order, batch_size, lr, momentum, l2, velocity):
    """True when one step of ``engine`` leaves the same weights as the generic engine's step.

    Runs once per kind of network and settings on a device (the answer is remembered); leaves
    ``net.params`` and ``velocity`` as they were.  On a disagreement logs one warning line.
    """
    if isinstance(engine, GenericEngine):
        return True
    key = _signature(net, batch_size, momentum, l2)
    if key in _verified:
        return _verified[key]
    backend = net.backend
    first = order[:batch_size]
    params0 = net.params.copy()
    velocity0 = None if velocity is None else velocity.copy()
    try:
        cost_f = float(engine.epoch(X, Y, first, batch_size, lr, momentum, l2, velocity))
        fused = backend.to_host(net.params).astype(np.float64)
        net.params[...] = params0
        if velocity is not None:
            velocity[...] = velocity0
        cost_g = float(GenericEngine(net).epoch(X, Y, first, batch_size, lr, momentum, l2, velocity))
        generic = backend.to_host(net.params).astype(np.float64)
    finally:
        net.params[...] = params0
        if velocity is not None:
            velocity[...] = velocity0
    start = backend.to_host(params0).astype(np.float64)
    rtol = VERIFY_RTOL[str(net.dtype)]
    step = np.abs(generic - start).max()
    scale = max(step, np.abs(start).max() * 1e-6, np.finfo(np.float32).tiny)
    params_gap = np.abs(fused - generic).max() / scale
    cost_gap = abs(cost_f - cost_g) / max(abs(cost_g), np.finfo(np.float32).tiny)
    ok = bool(np.isfinite(fused).all() and params_gap <= rtol and cost_gap <= rtol)
    if not ok:
        log.warning("fastnn: the %s engine disagreed with the generic engine on a first step on %s "
                    "(step gap %.3g, cost gap %.3g, tolerance %g); training with the generic engine",
                    engine.name, backend.device, params_gap, cost_gap, rtol)
    _verified[key] = ok
    return ok


def describe(backend):
    """What ``fastnn info`` says of the engines on ``backend``: the fused one's availability."""
    reason = fused_unavailable(backend)
    kind = "cuda" if backend.is_cuda else "cpu"
    if reason is None:
        return getattr(fused_module(backend), "RULE", f"auto picks fused-{kind} where the shapes fit, generic otherwise")
    return f"generic (fused-{kind} unavailable: {reason})"
