"""``fastnn bench --sweep K``: many textbook models at once, in models × epochs per second.

For each K, the same K models (784-30-10 sigmoid/sigmoid/quadratic, batch 10, η 3.0, seeds 0..K-1) are
trained for the same epochs by:

- ``fastnn``: ``fastnn.fit_many``, method auto (processes on a CPU, batched on a GPU);
- ``fastnn-one-by-one``: fastnn training the same models one after another (``method="one-by-one"``);
- ``jax-vmap``: JAX, the jitted epoch (shuffle + ``lax.scan`` over the batches, ``peers.jax_training``)
  ``vmap``-ed over the models, float32 matmuls pinned (``jax.default_matmul_precision``);
- ``torch-vmap``: ``torch.func.vmap`` of ``torch.func.grad`` over the models' stacked parameters
  (``stack_module_state``-style), one vmapped step per batch.

Every implementation is warmed up first (one epoch on a slice: compilation, the pool's processes, numba's
kernels), then timed over whole epochs, after a pause that lets the previous peer's threads stop spinning; the
speedup is fastnn's rate over fastnn one-by-one's, measured in the same run.  ``cpu_seconds_with_warm_up`` (this
process's threads and the pool's workers) is the work done, which a loaded machine's clock cannot show.  The
fastnn implementations run first, for every K, before JAX and PyTorch are imported into the process: with
their libraries loaded, each ``fit`` call's threadpoolctl scan costs more, which slowed the one-by-one baseline
(``--impl fastnn,fastnn-one-by-one`` alone gives the cleanest fastnn ratio; bench/sweep_suite.sh does, for the
CPU target).
"""

import os
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .peers import PeerUnavailable, _initial, import_jax, import_torch, jax_device, jax_training
from .workloads import CONFIGS

IMPLS = ("fastnn", "fastnn-one-by-one", "jax-vmap", "torch-vmap")
WARM_EXAMPLES = 500
COOL_DOWN = 1.0  # seconds between implementations


def _fastnn(method):
    def train(K, X, y, epochs, backend):
        from .. import Network, fit_many

        config = CONFIGS["textbook"]
        nets = [Network(list(config.sizes), device=backend, seed=s) for s in range(K)]
        fit_many(nets, X[:WARM_EXAMPLES], y[:WARM_EXAMPLES], 1, config.batch_size, lr=config.lr, method=method)
        nets = [Network(list(config.sizes), device=backend, seed=s) for s in range(K)]
        start = time.perf_counter()
        fit_many(nets, X, y, epochs, config.batch_size, lr=config.lr, method=method)
        backend.synchronize()
        return time.perf_counter() - start
    return train


def _jax(K, X, y, epochs, backend):
    jax = import_jax()
    config = CONFIGS["textbook"]
    device = jax_device(jax, backend)
    *_, epoch = jax_training(jax, config, config.batch_size, config.lr)
    starts = [_initial(config, s) for s in range(K)]
    params = [(np.stack([w[i] for w, _ in starts]), np.stack([b[i] for _, b in starts])) for i in range(2)]
    Y = np.eye(10, dtype=np.float32)[y]
    with jax.default_matmul_precision("float32"):
        many = jax.jit(jax.vmap(epoch, in_axes=(0, 0, None, None, None)), static_argnums=4)
        keys = jax.random.split(jax.random.key(0), K)
        params, keys, Xd, Yd = jax.device_put((params, keys, X, Y), device)
        warm = many(params, keys, Xd[:WARM_EXAMPLES], Yd[:WARM_EXAMPLES], WARM_EXAMPLES)
        jax.block_until_ready(warm)
        compiled = many.lower(params, keys, Xd, Yd, len(X)).compile()
        start = time.perf_counter()
        for _ in range(epochs):
            params, keys, total = compiled(params, keys, Xd, Yd)
            np.asarray(total)
        jax.block_until_ready(params)
        return time.perf_counter() - start


def _torch(K, X, y, epochs, backend):
    torch = import_torch()
    from torch.func import grad, vmap

    config = CONFIGS["textbook"]
    device = torch.device("cuda", backend.index) if backend.is_cuda else torch.device("cpu")
    starts = [_initial(config, s) for s in range(K)]
    params = [torch.tensor(np.stack([w[i] for w, _ in starts]), device=device) for i in range(2)]
    params += [torch.tensor(np.stack([b[i] for _, b in starts]), device=device) for i in range(2)]
    Xd = torch.tensor(X, device=device)
    Yd = torch.eye(10, device=device)[torch.tensor(y, device=device)]

    def cost(p, x, t):
        a = torch.sigmoid(x @ p[0].T + p[2])
        a = torch.sigmoid(a @ p[1].T + p[3])
        return 0.5 * ((a - t) ** 2).sum() / x.shape[0]

    step = vmap(grad(cost), in_dims=(0, 0, 0))
    generator = torch.Generator().manual_seed(0)

    def epoch(n):
        orders = torch.stack([torch.randperm(n, generator=generator) for _ in range(K)]).to(device)
        for start in range(0, n, config.batch_size):
            idx = orders[:, start:start + config.batch_size]
            grads = step(params, Xd[idx], Yd[idx])
            for p, g in zip(params, grads):
                p.sub_(config.lr * g)

    with torch.no_grad():
        epoch(WARM_EXAMPLES)
        _sync(torch, device)
        start = time.perf_counter()
        for _ in range(epochs):
            epoch(len(X))
        _sync(torch, device)
        return time.perf_counter() - start


def _sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


RUNNERS = {"fastnn": _fastnn("auto"), "fastnn-one-by-one": _fastnn("one-by-one"), "jax-vmap": _jax,
           "torch-vmap": _torch}


def cpu_seconds():
    """CPU seconds used so far by this process (all its threads) and by fit_many's pool of workers (Linux)."""
    from .. import many_pool

    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for executor in many_pool._pool.values():
        for pid in list(getattr(executor, "_processes", None) or {}):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def run(ks, epochs=1, examples=10000, impls=IMPLS, device="cpu", say=None):
    """Time every implementation for every K; returns the report (JSON-able)."""
    from .. import get_backend
    from . import load_data

    say = say or (lambda line: None)
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"--sweep takes model counts, integers >= 1; got {k!r}")
    backend = get_backend(device)
    X, y, note = load_data(examples)
    X = (X / np.float32(255) if X.max() > 1 else X).astype(np.float32)
    load_start = os.getloadavg()
    results, skipped = [], {}
    for impl in impls:  # fastnn's first, every K, before JAX and PyTorch are imported into this process (their
        for k in ks:    # libraries would make each fit's threadpoolctl call slower, in the one-by-one baseline)
            if impl in skipped:
                continue
            say(f"{impl}: {k} models × {epochs} epochs on {len(X)} examples")
            time.sleep(COOL_DOWN)  # no peer's spinning threads (PyTorch's, XLA's) left to slow the next one
            try:
                cpu = cpu_seconds()
                seconds = RUNNERS[impl](k, X, y, epochs, backend)
                cpu = cpu_seconds() - cpu  # the warm-up's too: CPU work, where the wall clock depends on the load
            except PeerUnavailable as e:
                skipped[impl] = str(e)
                continue
            results.append({"impl": impl, "models": k, "epochs": epochs, "seconds": seconds,
                            "model_epochs_per_second": k * epochs / seconds, "cpu_seconds_with_warm_up": cpu,
                            "load": list(os.getloadavg())})
    results.sort(key=lambda r: (r["models"], impls.index(r["impl"])))
    for k in ks:
        rate = {r["impl"]: r["model_epochs_per_second"] for r in results if r["models"] == k}
        for r in results:
            if r["models"] == k and "fastnn-one-by-one" in rate:
                r["x_one_by_one"] = r["model_epochs_per_second"] / rate["fastnn-one-by-one"]
    from .machine import facts

    return {"fastnn_bench_sweep": 1, "device": backend.device, "machine": facts(),
            "settings": {"models": list(ks), "epochs": epochs, "examples": len(X), "data": note,
                         "network": CONFIGS["textbook"].describe(), "cpu_count": os.cpu_count()},
            "loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg()),
            "results": results, "skipped": skipped}


def table(report):
    """The report as lines: one per K and implementation."""
    lines = [(f"{'models':>6} {'implementation':<18} {'seconds':>8} {'model-epochs/s':>15} {'x one-by-one':>12} "
              f"{'cpu s (+warm-up)':>16}")]
    for r in report["results"]:
        ratio = f"{r['x_one_by_one']:.2f}" if "x_one_by_one" in r else "-"
        lines.append(f"{r['models']:>6} {r['impl']:<18} {r['seconds']:>8.2f} {r['model_epochs_per_second']:>15.2f} "
                     f"{ratio:>12} {r['cpu_seconds_with_warm_up']:>16.2f}")
    lines += [f"skipped {impl}: {why}" for impl, why in report["skipped"].items()]
    lines.append(f"load average at start {report['loadavg_start']}, at end {report['loadavg_end']}")
    return lines
