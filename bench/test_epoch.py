"""One epoch of mini-batch SGD, per config x implementation x device, and the device's peak matmul.

Each benchmark times one function, ``peer.epoch``, which synchronises the device before it
returns; every peer is warmed up first.  The textbook loop is timed on a slice of the epoch:
its ``extra_info["scale"]`` turns its times into seconds per epoch.  fastnn's time here is the
whole ``fit`` call, which includes its once-per-call input checks (``fastnn bench`` reports the
trainer's own epoch clock and records this wall time as well).  jax compiles its epoch for each number
of examples before timing it; torch-graph (CUDA graphs) runs on a GPU only.
"""

import time

import pytest

from fastnn import bench
from fastnn.bench.peers import PEERS, PeerUnavailable
from fastnn.bench.workloads import CONFIGS, gemm_flops, peak_matmul

from .conftest import backend_for

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
IMPLS = ["fastnn", "jax", "torch", "torch-graph", "textbook-loop", "floor-columns", "floor-rows"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_epoch(benchmark, data, rounds, name, impl, device):
    config = CONFIGS[name]
    if config.gpu_only and device == "cpu":
        pytest.skip(f"{name} is too big for a CPU (run it with 'fastnn bench --configs {name} --device cpu')")
    if impl == "textbook-loop" and device != "cpu":
        pytest.skip("the textbook loop is numpy on the CPU")
    backend = backend_for(device)
    X, y, description = data
    n = len(X)
    kind, layout = impl.split("-") if impl.startswith("floor-") else (impl, None)
    timed = min(n, bench.LOOP_SLICE[name]) if kind == "textbook-loop" else n
    try:
        peer = PEERS[kind](backend, config, X, y, **({"layout": layout} if layout else {}))
    except PeerUnavailable as e:
        pytest.skip(str(e))
    peer.epoch(max(1, timed // 10) if impl == "textbook-loop" else bench._warm_examples(n, config.batch_size, False))
    benchmark.group = f"{name} {device}"
    benchmark.extra_info.update(config=config.describe(), device=backend.device, data=description, examples=n,
                                timed_examples=timed, scale=n / timed, gemm_flops=gemm_flops(config.sizes, n))
    cool_down = lambda: time.sleep(bench.COOL_DOWN)  # let other libraries' spinning threads go to sleep
    benchmark.pedantic(peer.epoch, args=(timed,), setup=cool_down, rounds=rounds, iterations=1)


@pytest.mark.parametrize("device", DEVICES)
def test_peak_matmul(benchmark, device):
    """One square float32 matmul (the size 'fastnn bench' uses); extra_info has its FLOPs."""
    backend = backend_for(device)
    size = bench.PEAK_SIZE["cuda" if backend.is_cuda else "cpu"]
    peak_matmul(backend, size, repeats=1)  # warm-up
    xp = backend.xp
    a = xp.ones((size, size), "float32")
    out = xp.empty_like(a)

    def product():
        xp.matmul(a, a, out=out)
        backend.synchronize()

    benchmark.group = f"peak {device}"
    benchmark.extra_info.update(device=backend.device, flops=2 * size ** 3)
    benchmark.pedantic(product, rounds=5, iterations=1, warmup_rounds=1)
