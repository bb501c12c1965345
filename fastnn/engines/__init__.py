"""Engines: what runs an epoch's batch loop.  One switch, ``engine="auto"|"fused"|"generic"``.

- ``generic`` (``engines.generic``): whole-batch array operations on ``xp``; any network, any
  device, distributed too.  It is the readable reference.
- ``fused``: one compiled engine per device kind, for the networks whose shapes it accepts:
  ``engines.cpu_fused`` on the CPU, ``engines.cuda_fused`` on a CUDA GPU.
- ``blas`` (``engines.cpu_blas``, CPU only): the epoch compiled around BLAS GEMMs; any network.
- ``auto``: on the CPU, the blas engine, but fused-cpu where ``cpu_blas.slower`` says it is faster
  (small batches through big layers; where blas cannot run, ``cpu_fused``'s own rule); on a GPU the
  fused engine where the shapes fit; else generic.

A fused module provides:
    available(backend) -> None, or one sentence: why it cannot run on this backend at all
    unfit(net, batch_size, momentum, l2) -> None, or one sentence: why this network/settings don't fit
    Engine(net, batch_size): .name, .epoch(X, Y, order, batch_size, lr, momentum, l2, velocity) -> summed cost
and may provide:
    slower(net, batch_size) -> None, or one sentence: why ``auto`` leaves a network it could run to
        generic, which is faster there (``fused`` runs it all the same)
    RULE: one line for ``fastnn info``: which networks ``auto`` gives it

The first use of a fused engine for a kind of network on a device is checked against the
generic engine on its first steps, a short batch among them (``verify``); on a disagreement a one-line warning is
logged and the generic engine runs instead.  A sticky CUDA fault (an illegal address, a launch failure: the
context is dead) is not a disagreement: it raises BackendUnavailable, and nothing claims a fallback.
"""

import importlib
import logging

import numpy as np

from ..backend import context_lost_message, is_sticky_fault, matmul_precision
from ..errors import BackendUnavailable, ConfigError
from .generic import GenericEngine

log = logging.getLogger("fastnn")

ENGINES = ("auto", "fused", "blas", "generic")
FUSED = {"cpu": "cpu_fused", "cuda": "cuda_fused"}  # device kind -> module of its fused engine
# A verified step must agree with the generic one this closely (relative to the step's size) ...
VERIFY_RTOL = {"float32": 2e-3, "float64": 1e-9}
# ... or to within this many ulps of the largest weight (velocity), whichever is more: at a learning rate of 1e-5
# the step is below the roundings of w + s, which a right engine may do in another order (an FMA, a sum).
VERIFY_ULPS = 16
# The check of the L2 term: the λ for which η λ / n shrinks every weight by this share a step, so that a wrong
# λ-term shows beside the gradient step (at λ = 5, n = 50,000 it is 5e-5 of a weight: under the tolerance).
VERIFY_DECAY = 0.25

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
        return module.available(backend)
    except Exception as e:  # noqa: BLE001 - ImportError, or numba refusing its settings (NUMBA_NUM_THREADS=0)
        return f"the fused engine cannot be imported ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})"


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
        return _blas(net, batch_size, momentum, l2)
    reason = fused_unavailable(net.backend)
    if reason is None:
        reason = fused_module(net.backend).unfit(net, batch_size, momentum, l2)
    if reason is not None:
        if engine == "fused":
            raise ConfigError(f"the fused engine cannot train this network: {reason}")
        return GenericEngine(net)
    if engine == "auto" and not net.backend.is_cuda:
        from . import cpu_blas

        if _blas_reason(net, batch_size, momentum, l2) is None:  # blas-cpu's RULE: it, unless its ``slower`` says
            if cpu_blas.slower(net, batch_size) is None:        # fused-cpu is the faster
                return cpu_blas.Engine(net, batch_size)
            return fused_module(net.backend).Engine(net, batch_size)
    slower = getattr(fused_module(net.backend), "slower", None)
    if engine == "auto" and slower is not None and slower(net, batch_size) is not None:
        return GenericEngine(net)
    return fused_module(net.backend).Engine(net, batch_size)


def _blas_reason(net, batch_size, momentum, l2):
    """Why blas-cpu cannot train ``net`` at this batch, or None."""
    from . import cpu_blas

    return cpu_blas.available(net.backend) or cpu_blas.unfit(net, batch_size, momentum, l2)


def _blas(net, batch_size, momentum, l2):
    """The blas engine for ``net``, asked for by name; ConfigError where it cannot run."""
    from . import cpu_blas

    reason = _blas_reason(net, batch_size, momentum, l2)
    if reason is not None:
        raise ConfigError(f"the blas engine cannot train this network: {reason}")
    return cpu_blas.Engine(net, batch_size)


def _signature(net, batch_size, momentum, l2):
    acts = tuple(a.name for a in net.activations)
    return (net.backend.device, tuple(net.sizes), acts, net.cost.name, str(net.dtype), batch_size,
            bool(momentum), bool(l2))


def verify_order(order, batch_size):
    """The steps ``verify`` checks: the first of ``order``, ending in a short batch.

    Two full batches, so that the momentum term μ v is exercised (it is zero in a first step from rest), then a
    short last batch of about half a batch, as an epoch's last batch often is (none when batch_size is 1).
    """
    short = batch_size // 2
    return order[:2 * batch_size + short]


def verify(engine, net, X, Y, order, batch_size, lr, momentum, l2, velocity):
    """True when the first steps of ``engine`` leave the same weights, velocity and cost as the generic engine's.

    The steps are ``verify_order``'s.  Each half of the state is held to its own step: the weights to
    max|Δw| and the velocity to max|Δv| from where each started, each with a floor of VERIFY_ULPS ulps of its own
    largest value (at a learning rate of 1e-5 the step is below the roundings of w + s, which a right engine may
    do in another order).  With L2 on, the steps are checked a second time with a λ that shrinks the weights by
    VERIFY_DECAY a step, so that an engine which drops or misweights the λ-term is seen even where the run's own
    λ is small beside the gradient.  The reference is the plain generic array code (no fused elementwise
    kernels), in fp32.  Runs once per kind of network and settings on a device (the answer is remembered);
    leaves ``net.params`` and ``velocity`` as they were.  On a disagreement, or an error raised by the engine,
    logs one warning line after the state is put back.  A sticky CUDA fault (the context is dead: nothing can
    be put back) raises BackendUnavailable instead, and no fallback is claimed.
    """
    if isinstance(engine, GenericEngine):
        return True
    key = (*_signature(net, batch_size, momentum, l2), engine.name)  # each engine is verified on its own
    if key in _verified:
        return _verified[key]
    steps = verify_order(order, batch_size)
    checks = [l2] + ([VERIFY_DECAY * X.shape[0] / lr] if l2 else [])
    backend = net.backend
    for lam in checks:
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is compared too; fit reports it
                gaps = _compare(engine, net, X, Y, steps, batch_size, lr, momentum, lam, velocity)
        except _EngineFailed as failed:
            e = failed.__cause__
            first_line = (str(e).strip().splitlines() or [""])[0]
            log.warning("fastnn: the %s engine failed on its first steps on %s (%s: %s); training with the generic "
                        "engine", engine.name, backend.device, type(e).__name__, first_line)
            _verified[key] = False
            return False
        if gaps is not None:
            what = "" if lam == l2 else f" with a λ of {lam:.3g} (the check of its L2 term)"
            log.warning("fastnn: the %s engine disagreed with the generic engine on the first steps on %s%s "
                        "(weights gap %.3g, velocity gap %.3g, cost gap %.3g, tolerance 1); training with the generic "
                        "engine", engine.name, backend.device, what, *gaps)
            _verified[key] = False
            return False
    _verified[key] = True
    return True


class _EngineFailed(Exception):
    """The engine under check raised (its cause); the state was put back."""


def _compare(engine, net, X, Y, steps, batch_size, lr, momentum, l2, velocity):
    """Run ``steps`` with ``engine`` and with the generic engine from the same state, put the state back, and
    return None when they agree, else (weights gap, velocity gap, cost gap), each relative to its tolerance."""
    backend = net.backend
    params0 = net.params.copy()
    velocity0 = None if velocity is None else velocity.copy()

    def state():
        v = None if velocity is None else backend.to_host(velocity).astype(np.float64)
        return backend.to_host(net.params).astype(np.float64), v

    def reset():
        net.params[...] = params0
        if velocity is not None:
            velocity[...] = velocity0

    try:
        try:
            cost_f = float(engine.epoch(X, Y, steps, batch_size, lr, momentum, l2, velocity))
            fused = state()
        except Exception as e:  # a fused engine that cannot run (launch, compile): generic trains
            if is_sticky_fault(e):
                raise
            reset()
            raise _EngineFailed from e
        reset()
        with matmul_precision(backend, "fp32"):  # the reference in plain fp32, even in a tf32 run
            cost_g = float(GenericEngine(net, kernels=None).epoch(X, Y, steps, batch_size, lr, momentum, l2,
                                                                  velocity))
        generic = state()
        reset()
    except BaseException as e:
        if is_sticky_fault(e):  # the CUDA context is dead: no clean-up can run on it
            raise BackendUnavailable(context_lost_message(backend.device, e, engine.name)) from e
        if not isinstance(e, _EngineFailed):
            reset()
        raise
    dtype = net.dtype
    start = (backend.to_host(params0).astype(np.float64),
             None if velocity is None else backend.to_host(velocity0).astype(np.float64))
    gaps = [_gap(f, g, s, dtype) for f, g, s in zip(fused, generic, start)]
    if np.isfinite(cost_f) != np.isfinite(cost_g):
        gaps.append(float("inf"))
    elif not np.isfinite(cost_g):  # both diverged (fit reports it): nothing to compare
        gaps.append(0.0)
    else:
        gaps.append(abs(cost_f - cost_g) / max(abs(cost_g), np.finfo(np.float32).tiny) / VERIFY_RTOL[str(dtype)])
    return None if max(gaps) <= 1 else tuple(gaps)


def _gap(fused, generic, start, dtype):
    """max |fused - generic| over its tolerance: VERIFY_RTOL of the step from ``start``, or VERIFY_ULPS ulps of
    the largest value, whichever is more (0 for an absent velocity).  Where the generic run is not finite (it
    diverged) the engine's must not be either; inf when it differs there."""
    if fused is None:
        return 0.0
    finite = np.isfinite(generic)
    if not np.array_equal(finite, np.isfinite(fused)):
        return float("inf")
    fused, generic, start = fused[finite], generic[finite], start[finite]
    step = np.abs(generic - start).max(initial=0.0)
    largest = max(np.abs(start).max(initial=0.0), np.abs(generic).max(initial=0.0))
    ulp = float(np.spacing(np.asarray(largest, dtype=dtype)))
    tolerance = max(VERIFY_RTOL[str(dtype)] * step, VERIFY_ULPS * ulp, np.finfo(np.float32).tiny)
    return float(np.abs(fused - generic).max(initial=0.0) / tolerance)


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
