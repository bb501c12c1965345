"""Engines: what runs an epoch's batch loop.  One switch, ``engine="auto"|"fused"|"generic"``.

- ``generic`` (``engines.generic``): whole-batch array operations on ``xp``; any network, any
  device, distributed too.  It is the readable reference.
- ``fused``: one compiled engine per device kind, for the networks whose shapes it accepts:
  ``engines.cpu_fused`` on the CPU, ``engines.cuda_fused`` on a CUDA GPU.
- ``blas`` (``engines.cpu_blas``, CPU only): the epoch compiled around BLAS GEMMs, for networks
  too large for ``cpu_fused``'s own loops; any network.
- ``auto``: the fused engine when it is available and the shapes fit; on the CPU, above the fused
  engine's size, the blas engine; else generic.

A fused module provides:
    available(backend) -> None, or one sentence: why it cannot run on this backend at all
    unfit(net, batch_size, momentum, l2) -> None, or one sentence: why this network/settings don't fit
    Engine(net, batch_size): .name, .epoch(X, Y, order, batch_size, lr, momentum, l2, velocity) -> summed cost
and may provide:
    slower(net, batch_size) -> None, or one sentence: why ``auto`` leaves a network it could run to
        generic, which is faster there (``fused`` runs it all the same)
    RULE: one line for ``fastnn info``: which networks ``auto`` gives it

The first use of a fused engine for a kind of network on a device is checked against the
generic engine on its first two steps (``verify``); on a disagreement a one-line warning is logged and the
generic engine runs instead.
"""

import importlib
import logging

import numpy as np

from ..backend import matmul_precision
from ..errors import ConfigError
from .generic import GenericEngine

log = logging.getLogger("fastnn")

ENGINES = ("auto", "fused", "blas", "generic")
FUSED = {"cpu": "cpu_fused", "cuda": "cuda_fused"}  # device kind -> module of its fused engine
# A verified step must agree with the generic one this closely (relative to the step's size).
VERIFY_RTOL = {"float32": 2e-3, "float64": 1e-9}

_verified = {}  # (device, network signature, settings, engine) -> True/False


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
        if engine in ("fused", "blas"):
            raise ConfigError(f"the {engine} engine does not train distributed; use engine 'generic' or 'auto'")
        return GenericEngine(net, comm)
    if engine == "blas":
        return _blas(net, batch_size, momentum, l2, forced=True)
    reason = fused_unavailable(net.backend)
    if reason is None:
        reason = fused_module(net.backend).unfit(net, batch_size, momentum, l2)
    if reason is not None:
        if engine == "fused":
            raise ConfigError(f"the fused engine cannot train this network: {reason}")
        return GenericEngine(net)
    slower = getattr(fused_module(net.backend), "slower", None)
    if engine == "auto" and slower is not None and slower(net, batch_size) is not None:
        return GenericEngine(net) if net.backend.is_cuda else _blas(net, batch_size, momentum, l2, forced=False)
    return fused_module(net.backend).Engine(net, batch_size)


def _blas(net, batch_size, momentum, l2, forced):
    """The blas engine for ``net``; where it cannot run: ConfigError when ``forced``, else GenericEngine."""
    from . import cpu_blas

    reason = cpu_blas.available(net.backend) or cpu_blas.unfit(net, batch_size, momentum, l2)
    if reason is None and (forced or cpu_blas.slower(net, batch_size) is None):
        return cpu_blas.Engine(net, batch_size)
    if forced:
        raise ConfigError(f"the blas engine cannot train this network: {reason}")
    return GenericEngine(net)


def _signature(net, batch_size, momentum, l2):
    acts = tuple(a.name for a in net.activations)
    return (net.backend.device, tuple(net.sizes), acts, net.cost.name, str(net.dtype), batch_size,
            bool(momentum), bool(l2))


def verify(engine, net, X, Y, order, batch_size, lr, momentum, l2, velocity):
    """True when the first steps of ``engine`` leave the same weights, velocity and cost as the generic engine's.

    Two steps, so that the momentum term μ v is exercised too (it is zero in a first step from rest).
    The reference is the plain generic array code (no fused elementwise kernels), in fp32.  Runs once per kind
    of network and settings on a device (the answer is remembered); leaves ``net.params`` and
    ``velocity`` as they were.  On a disagreement, or an error raised by the engine, logs one warning line.
    """
    if isinstance(engine, GenericEngine):
        return True
    key = (*_signature(net, batch_size, momentum, l2), engine.name)  # each engine is verified on its own
    if key in _verified:
        return _verified[key]
    backend = net.backend
    first = order[:2 * batch_size]
    params0 = net.params.copy()
    velocity0 = None if velocity is None else velocity.copy()

    def state():
        params = backend.to_host(net.params).astype(np.float64)
        if velocity is None:
            return params
        return np.concatenate([params, backend.to_host(velocity).astype(np.float64)])

    def reset():
        net.params[...] = params0
        if velocity is not None:
            velocity[...] = velocity0

    try:
        try:
            cost_f = float(engine.epoch(X, Y, first, batch_size, lr, momentum, l2, velocity))
        except Exception as e:  # noqa: BLE001 - a fused engine that cannot run (launch, compile): generic trains
            first_line = (str(e).strip().splitlines() or [""])[0]
            log.warning("fastnn: the %s engine failed on its first steps on %s (%s: %s); training with the generic "
                        "engine", engine.name, backend.device, type(e).__name__, first_line)
            _verified[key] = False
            return False
        fused = state()
        reset()
        with matmul_precision(backend, "fp32"):  # the reference in plain fp32, even in a tf32 run
            cost_g = float(GenericEngine(net, kernels=None).epoch(X, Y, first, batch_size, lr, momentum, l2,
                                                                  velocity))
        generic = state()
    finally:
        reset()
    start = np.concatenate([backend.to_host(params0)] * (1 if velocity is None else 2)).astype(np.float64)
    rtol = VERIFY_RTOL[str(net.dtype)]
    step = np.abs(generic - start).max()
    scale = max(step, np.abs(start).max() * 1e-6, np.finfo(np.float32).tiny)
    params_gap = np.abs(fused - generic).max() / scale
    cost_gap = abs(cost_f - cost_g) / max(abs(cost_g), np.finfo(np.float32).tiny)
    ok = bool(np.isfinite(fused).all() and params_gap <= rtol and cost_gap <= rtol)
    if not ok:
        log.warning("fastnn: the %s engine disagreed with the generic engine on the first steps on %s "
                    "(step gap %.3g, cost gap %.3g, tolerance %g); training with the generic engine",
                    engine.name, backend.device, params_gap, cost_gap, rtol)
    _verified[key] = ok
    return ok


def describe(backend):
    """What ``fastnn info`` says of the engines on ``backend``: the fused one's availability."""
    reason = fused_unavailable(backend)
    kind = "cuda" if backend.is_cuda else "cpu"
    if reason is None:
        module = fused_module(backend)
        limits = f"; fused-{kind}: {module.limits(backend)}" if hasattr(module, "limits") else ""
        rule = getattr(module, "RULE", f"auto picks fused-{kind} where the shapes fit, generic otherwise")
        if kind == "cpu":
            from . import cpu_blas

            rule = cpu_blas.RULE if cpu_blas.available(backend) is None else rule
        return rule + limits
    return f"generic (fused-{kind} unavailable: {reason})"
