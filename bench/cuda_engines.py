"""The CUDA engines side by side on one GPU: python -m bench.cuda_engines [--examples N] [--json FILE].

For each bench config, one epoch (median of --epochs after a warm-up) of every engine that can run it:

    fused-cuda        one kernel launch per epoch (engines/cuda_fused.cu), where the network fits
    generic+kernels   cuBLAS matmuls + fused ElementwiseKernels (the generic engine on cupy)
    generic-plain     the generic engine's plain array code (the reference)
    ... at tf32       the generic engine with --precision tf32 (float32 cuBLAS on TF32 tensor cores)

Prints one line per run and writes the JSON with the device, versions and date.  The prepared device
check for the fused engine's issue: run it (and ``pytest -m "gpu or kernel"``) where a GPU is at hand.
On the CPU it runs the generic engines only and says why the fused one is left out.
"""

import argparse
import json
import statistics
import time

import numpy as np

from fastnn import Network, engines
from fastnn.backend import get_backend, matmul_precision
from fastnn.bench import machine
from fastnn.bench.workloads import CONFIGS
from fastnn.engines.generic import GenericEngine

RUNS = [("fused", "fp32"), ("auto", "fp32"), (None, "fp32"), ("auto", "tf32")]  # (engine kind, precision)


def make_engine(net, kind, batch_size):
    """(engine or None, its label, why it cannot run or None)."""
    if kind == "fused":
        label = f"fused-{'cuda' if net.backend.is_cuda else 'cpu'}"
        reason = engines.fused_unavailable(net.backend) or engines.fused_module(net.backend).unfit(
            net, batch_size, 0.0, 0.0)
        if reason:
            return None, label, reason
        return engines.fused_module(net.backend).Engine(net, batch_size), label, None
    engine = GenericEngine(net, kernels=kind)
    return engine, "generic+kernels" if engine.kernels is not None else "generic-plain", None


def time_epochs(net, engine, X, Y, config, epochs, precision):
    backend = net.backend
    order = backend.to_device(np.random.default_rng(0).permutation(X.shape[0]), "int64")
    seconds = []
    with matmul_precision(backend, precision):
        for _ in range(epochs + 1):  # the first is the warm-up (compiling, cuBLAS handles)
            backend.synchronize()
            start = time.perf_counter()
            cost = float(engine.epoch(X, Y, order, config.batch_size, config.lr, 0.0, 0.0, None))
            backend.synchronize()
            seconds.append(time.perf_counter() - start)
    return seconds[1:], cost / X.shape[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--examples", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", default="bench/results/cuda-engines.json")
    args = parser.parse_args(argv)
    backend = get_backend(args.device)
    backend.use()  # the engines run here outside fit: their arrays and launches go to this GPU
    rng = np.random.default_rng(0)
    results = []
    for name in args.configs.split(","):
        config = CONFIGS[name]
        X = backend.to_device(rng.random((args.examples, config.sizes[0]), np.float32))
        labels = rng.integers(0, config.sizes[-1], args.examples)
        Y = backend.to_device(np.eye(config.sizes[-1], dtype=np.float32)[labels])
        for kind, precision in RUNS:
            if (precision == "tf32" or kind is None) and not backend.is_cuda:
                continue  # on the CPU: no TF32, and "auto" already is the plain generic code
            net = Network(list(config.sizes), activation=config.activation, output=config.output, cost=config.cost,
                          device=backend, seed=0)
            engine, label, reason = make_engine(net, kind, config.batch_size)
            row = {"config": name, "engine": label, "precision": precision, "batch_size": config.batch_size}
            if engine is None:
                row["skipped"] = reason
                print(f"{name:9s} {label:16s} {precision}: skipped: {reason}")
            else:
                seconds, loss = time_epochs(net, engine, X, Y, config, args.epochs, precision)
                row.update(seconds=seconds, median_s=statistics.median(seconds), loss=loss)
                print(f"{name:9s} {label:16s} {precision}: {row['median_s']:.4f} s/epoch (loss {loss:.4f})")
            results.append(row)
    report = {"machine": machine.facts(backend), "examples": args.examples, "epochs": args.epochs, "results": results}
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
