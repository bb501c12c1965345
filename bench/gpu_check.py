"""The Python parts of bench/gpu_check.sh: checks that need a CUDA GPU (or the cupy test double).

    python bench/gpu_check.py no-sync          one training step queues its work without a host sync
    python bench/gpu_check.py cpu-equals-gpu   one epoch on the GPU leaves the CPU's weights

Each prints what it measured and exits 0, or prints "gpu_check: FAILED: ..." and exits 1.
"""

import argparse
import sys

import numpy as np

from fastnn import Network, engines, get_backend
from fastnn.bench import load_data
from fastnn.errors import FastnnError

# One epoch, same seed, same batches: max |W_gpu - W_cpu| over max |W_cpu| must stay below this.
# float64: both sides round at ~1e-16 per operation; 1e-9 leaves room for a thousand steps of
# different summation orders (cuBLAS and OpenBLAS add in different orders).  float32: rounding at
# ~6e-8 per operation, compounded over the epoch's steps; 1e-3 is what the fastnn hypothesis test
# allows for one epoch times 10 (1e-4), widened for an epoch 100 times longer.
TOLERANCE = {"float64": 1e-9, "float32": 1e-3}
SIZES, BATCH, LR, EXAMPLES = [784, 30, 10], 10, 3.0, 10000


class CheckFailed(Exception):
    pass


def no_sync():
    """One training step of each engine ``auto`` can pick, under cupyx.allow_synchronize(False)."""
    backend = get_backend("cuda")  # no GPU: BackendUnavailable, with the cause
    import cupyx  # cupy's own switch; a check script may import it, fastnn itself does so only in backend.py

    lines = []
    host_X, host_y, _ = load_data(1000)
    for engine in ("auto", "generic"):
        net = Network(SIZES, device=backend, seed=0)
        X, Y, _ = net._inputs(host_X, host_y)
        velocity = net.xp.zeros_like(net.params)
        order = backend.to_device(np.arange(X.shape[0]), "int64")
        runner = engines.choose(net, engine, BATCH, 0.9, 0.1)
        args = (X, Y, order[:BATCH], BATCH, LR, 0.9, 0.1, velocity)
        runner.epoch(*args)  # warm-up: buffers allocated, kernels compiled, cuBLAS handles made
        backend.synchronize()
        try:
            with cupyx.allow_synchronize(False):
                cost = runner.epoch(*args)
        except Exception as e:
            raise CheckFailed(f"the {runner.name} engine synchronised with the host inside one training step on "
                              f"{backend.device} ({type(e).__name__}: {e})") from e
        backend.synchronize()
        lines.append(f"no host synchronisation in one training step on {backend.device} ({runner.name} engine, "
                     f"engine={engine!r}; cost {float(cost):.6g})")
    return lines


def cpu_equals_gpu(examples=EXAMPLES):
    """One epoch of the textbook network on the CPU and on the GPU, in both dtypes; the weights agree."""
    lines, failed = [], []
    X, y, note = load_data(examples)
    for dtype in ("float64", "float32"):
        weights = {}
        for device in ("cpu", "cuda"):
            net = Network(SIZES, device=device, dtype=dtype, seed=1)
            net.fit(X, y, epochs=1, batch_size=BATCH, lr=LR, engine="generic")
            weights[device] = np.concatenate([w.ravel() for w in net.weights + net.biases]).astype(np.float64)
        gap = np.abs(weights["cuda"] - weights["cpu"]).max() / np.abs(weights["cpu"]).max()
        ok = bool(np.isfinite(gap) and gap <= TOLERANCE[dtype])
        lines.append(f"{dtype}: max |GPU - CPU| / max |CPU| = {gap:.3g} after one epoch ({examples} examples, "
                     f"batch {BATCH}, generic engine; tolerance {TOLERANCE[dtype]:g}): {'ok' if ok else 'FAILED'}")
        if not ok:
            failed.append(dtype)
    lines.append(f"data: {note}")
    if failed:
        raise CheckFailed("the GPU's weights differ from the CPU's beyond the tolerance: " + "; ".join(lines))
    return lines


CHECKS = ("no-sync", "cpu-equals-gpu")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=CHECKS)
    parser.add_argument("--examples", type=int, default=EXAMPLES, help="cpu-equals-gpu: training examples")
    args = parser.parse_args(argv)
    try:
        for line in (cpu_equals_gpu(args.examples) if args.check == "cpu-equals-gpu" else no_sync()):
            print(line)
    except (CheckFailed, FastnnError) as e:
        print(f"gpu_check: FAILED: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
