"""The Python steps of bench/gpu_check.sh: checks that need a CUDA GPU, run through fastnn's public API.

    python bench/gpu_check.py no-sync          one training step queues its work without a host sync
    python bench/gpu_check.py cpu-equals-gpu   the GPU's generic step equals the CPU's, one step at a time
    python bench/gpu_check.py fused-textbook   784-30-10 at batch 10 trains on the fused CUDA engine, step by
                                               step equal to the generic engine; seconds per epoch of both
    python bench/gpu_check.py fused-launch     one fused launch of --steps steps (the compute-sanitizer and
                                               ncu target), inside the NVTX range "fastnn-launch"

Each prints what it measured, then one line "gpu_check: <note>" (the summary's note), and exits with
PASS 0, FAIL 1, or, with --rehearsal (no GPU: the CPU's fused engine or the cupy test double stands in
for the GPU and the check's own logic runs on it), NEEDS-GPU 4 when that logic passed.  The junit
and headline parts of the summary are in bench/gpu_check_report.py.
GPU_CHECK_PLANT=<check> plants a fault in that check's GPU result (the rehearsal test's planted failure).
"""

import argparse
import contextlib
import importlib
import itertools
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from fastnn import Network, engines, get_backend
from fastnn.bench import load_data
from fastnn.data import read_idx_pair
from fastnn.errors import FastnnError, NotLearningWarning

PASS, FAIL, NEEDS_GPU = 0, 1, 4
ROOT = Path(__file__).resolve().parent.parent
SIZES, BATCH, LR = [784, 30, 10], 10, 3.0
STEPS = 50  # steps compared one at a time
# One step from the same weights, compared by max |W_a - W_b| over max |W_before - W_b| (the size of the
# step): a wrong index or a missed barrier moves the step by O(1) of itself; summation order moves it by at
# most about K·ε, K the longest sum (784 inputs): 784 × 6e-8 = 5e-5 in float32 and 784 × 1.1e-16 = 9e-14 in
# float64, plus the rounding of W - η∇ itself (ε·max|W| / max|step|: ~1e-6 and ~2e-15 at η = 3).
# The tolerances leave a factor 2 (float32) and 10 (float64) above those bounds.  fp32 only: TF32 is off.
STEP_TOLERANCE = {"float32": 1e-4, "float64": 1e-12}


class CheckFailed(Exception):
    pass


def _rehearsal_backend(rehearsal):
    return get_backend("cpu") if rehearsal else get_backend("cuda")


def check_data(n):
    """(X float32 (n, 784), y, description): real MNIST test rows when staged, else Fashion-MNIST rows when
    installed, else seeded uniform random pixels and labels (bench.load_data)."""
    folder = Path(os.environ.get("FASTNN_TEST_MNIST") or ROOT / "tests" / "data" / "mnist")
    images, labels = folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    if images.exists() and labels.exists():
        X, y = read_idx_pair(images, labels)
        return X[:n], y[:n], f"real MNIST test rows ({folder}), first {min(n, len(X))}"
    return load_data(n)


def _flat(net):
    return np.concatenate([w.ravel() for w in net.weights + net.biases]).astype(np.float64)


def _one_step(net, X, y, engine):
    """One SGD step of ``net`` on the batch (X, y), no shuffle; returns the engine that ran it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotLearningWarning)
        history = net.fit(X, y, epochs=1, batch_size=len(X), lr=LR, shuffle=False, engine=engine)
    return history.records[0]["engine"]


def _plant(check, flat):
    """GPU_CHECK_PLANT=<check>: the fault a broken kernel would make, in the result of that check."""
    if os.environ.get("GPU_CHECK_PLANT") == check:
        flat = flat.copy()
        flat[0] += 1.0
    return flat


def step_by_step(a, b, X, y, steps, dtype, check, engines_=("generic", "generic")):
    """``steps`` steps of nets a and b, each from the same weights (a's), on consecutive batches of (X, y);
    returns (largest gap over the step's size, the engines that ran on b)."""
    worst, ran = 0.0, set()
    for k in range(steps):
        batch = slice(k * BATCH, (k + 1) * BATCH)
        b.set_parameters(a.weights, a.biases)
        before = _flat(a)
        _one_step(a, X[batch], y[batch], engines_[0])
        ran.add(_one_step(b, X[batch], y[batch], engines_[1]))
        want, got = _flat(a), _plant(check, _flat(b))
        size = np.abs(want - before).max()
        gap = np.abs(got - want).max() / size if size > 0 else np.abs(got - want).max()
        if not np.isfinite(gap):
            return float("inf"), ran
        worst = max(worst, float(gap))
    return worst, ran


def no_sync(rehearsal=False):
    """One training step of each engine ``auto`` can pick, under cupyx.allow_synchronize(False)."""
    backend = get_backend("cuda")  # no GPU: BackendUnavailable, with the cause; rehearsal: the cupy double
    import cupyx  # cupy's own switch; a check script may import it, fastnn itself does so only in backend.py

    lines, names = [], []
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
        names.append(runner.name)
        lines.append(f"no host synchronisation in one training step on {backend.device} ({runner.name} engine, "
                     f"engine={engine!r}; cost {float(cost):.6g})")
    lines.append(f"gpu_check: no host sync inside a step of the {' or '.join(dict.fromkeys(names))} engine")
    return lines


def cpu_equals_gpu(rehearsal=False, steps=STEPS):
    """The textbook network's generic step on the CPU and on the GPU, from the same weights, step by step."""
    backend = get_backend("cuda")  # rehearsal: the cupy double (numpy underneath: proves the logic only)
    X, y, note = check_data(steps * BATCH)
    lines, failed = [f"data: {note}"], []
    for dtype in ("float64", "float32"):
        cpu = Network(SIZES, device="cpu", dtype=dtype, seed=1)
        gpu = Network(SIZES, device=backend, dtype=dtype, seed=1)
        gap, _ = step_by_step(cpu, gpu, X, y, steps, dtype, "cpu-equals-gpu")
        ok = gap <= STEP_TOLERANCE[dtype]
        lines.append(f"{dtype}: {steps} steps of batch {BATCH}, each from the CPU's weights: largest |GPU - CPU| / "
                     f"|step| = {gap:.3g} (tolerance {STEP_TOLERANCE[dtype]:g}): {'ok' if ok else 'FAILED'}")
        if not ok:
            failed.append(f"{dtype} gap {gap:.3g} > {STEP_TOLERANCE[dtype]:g}")
    if failed:
        raise CheckFailed("the GPU's step differs from the CPU's: " + "; ".join(failed))
    lines.append(f"gpu_check: GPU step = CPU step over {steps} steps, float64 and float32 ({note.split(' (')[0]})")
    return lines


def _epoch_seconds(backend, engine, X, y, epochs=2):
    """(seconds per epoch of ``engine`` on (X, y), the engines that ran), after a warm-up epoch of 1,000 rows."""
    net = Network(SIZES, device=backend, seed=0)
    ran, seconds = set(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotLearningWarning)
        net.fit(X[:1000], y[:1000], epochs=1, batch_size=BATCH, lr=LR, engine=engine)  # compile, verify, allocate
        for _ in range(epochs):
            history = net.fit(X, y, epochs=1, batch_size=BATCH, lr=LR, engine=engine)
            seconds += history.seconds
            ran.add(history.records[0]["engine"])
    return min(seconds), ran


def fused_textbook(rehearsal, examples=60000, results=None):
    """784-30-10 at batch 10 on the fused engine: the record names it; each step equals generic's; s/epoch."""
    backend = _rehearsal_backend(rehearsal)
    expected = "fused-cpu" if rehearsal else "fused-cuda"
    params = sum(o * i + o for i, o in itertools.pairwise(SIZES))
    lines = [f"784-30-10: {params} parameters, {4 * params / 1024:.0f} KiB of float32 weights (over the 48 KiB a "
             f"block gets without the opt-in); batch {BATCH}; {backend.device}"
             + (" (rehearsal: the CPU's fused engine stands in)" if rehearsal else "")]
    rng = np.random.default_rng(0)
    X = rng.random((examples, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], examples)
    lines.append(f"data: {examples} synthetic examples (seeded uniform pixels and labels)")
    generic = Network(SIZES, device=backend, seed=2)
    fused = Network(SIZES, device=backend, seed=2)
    gap, ran = step_by_step(generic, fused, X, y, STEPS, "float32", "fused-textbook", ("generic", "fused"))
    if ran != {expected}:
        raise CheckFailed(f"engine='fused' ran {sorted(ran)}, not {expected}: a silent fallback")
    tolerance = STEP_TOLERANCE["float32"]
    lines.append(f"{STEPS} steps, each from the generic engine's weights: largest |fused - generic| / |step| = "
                 f"{gap:.3g} (tolerance {tolerance:g}): {'ok' if gap <= tolerance else 'FAILED'}")
    if not gap <= tolerance:
        raise CheckFailed(f"the fused step differs from the generic step by {gap:.3g} of the step > {tolerance:g}")
    timing = {}
    for engine in ("fused", "generic"):
        seconds, ran = _epoch_seconds(backend, engine, X, y)
        timing[engine] = {"seconds_per_epoch": seconds, "engines": sorted(ran)}
        lines.append(f"{engine}: {seconds:.4f} s per epoch of {examples} examples (best of 2; engine {sorted(ran)})")
        if engine == "fused" and ran != {expected}:
            raise CheckFailed(f"a whole epoch with engine='fused' ran {sorted(ran)}, not {expected}")
    ratio = timing["generic"]["seconds_per_epoch"] / timing["fused"]["seconds_per_epoch"]
    if results:
        record = {"device": backend.device, "describe": backend.describe(), "examples": examples, "batch": BATCH,
                  "sizes": SIZES, "step_gap": gap, "tolerance": tolerance, "engine": expected, **timing}
        Path(results, "fused-textbook.json").write_text(json.dumps(record, indent=1, default=str))
    lines.append(f"gpu_check: {expected} {timing['fused']['seconds_per_epoch']:.4f} s/epoch, generic "
                 f"{timing['generic']['seconds_per_epoch']:.4f} s/epoch ({ratio:.1f}x); step gap {gap:.2g}")
    return lines


def fused_launch(rehearsal, steps=20):
    """One fused launch of ``steps`` steps of 784-30-10 at batch 10, after a warm-up that compiles and verifies."""
    backend = _rehearsal_backend(rehearsal)
    rng = np.random.default_rng(0)
    X = rng.random((steps * BATCH, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], steps * BATCH)
    net = Network(SIZES, device=backend, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotLearningWarning)
        net.fit(X[:2 * BATCH], y[:2 * BATCH], epochs=1, batch_size=BATCH, lr=LR, engine="fused")  # warm-up
        backend.synchronize()
        nvtx = _nvtx(backend)
        with contextlib.ExitStack() as stack:
            if nvtx is not None:  # ncu --nvtx --nvtx-include fastnn-launch/ profiles what runs in here
                nvtx.RangePush("fastnn-launch")
                stack.callback(nvtx.RangePop)
            history = net.fit(X, y, epochs=1, batch_size=BATCH, lr=LR, engine="fused", shuffle=False)
            backend.synchronize()
    ran = history.records[0]["engine"]
    if not ran.startswith("fused"):
        raise CheckFailed(f"engine='fused' ran {ran}: a silent fallback")
    if not np.isfinite(_flat(net)).all():
        raise CheckFailed("the fused launch left NaN or infinite weights")
    return [f"one {ran} launch of {steps} steps on {backend.device}, loss {history.records[0]['loss']:.4g}",
            f"gpu_check: one {ran} launch of {steps} steps" + (" (NVTX range fastnn-launch)" if nvtx else "")]


def _nvtx(backend):
    """cupy's NVTX module (RangePush/RangePop) on a real GPU, else None (the CPU, the cupy double, no NVTX)."""
    if not backend.is_cuda:
        return None
    try:
        nvtx = importlib.import_module(f"{backend.xp.__name__}.cuda.nvtx")
    except ImportError:
        return None
    return nvtx if getattr(nvtx, "available", True) else None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=("no-sync", "cpu-equals-gpu", "fused-textbook", "fused-launch"))
    parser.add_argument("--rehearsal", action="store_true", help="no GPU: run the logic on the stand-ins")
    parser.add_argument("--steps", type=int, default=20, help="fused-launch: steps in the launch")
    parser.add_argument("--examples", type=int, default=60000, help="fused-textbook: examples per timed epoch")
    parser.add_argument("--results", help="fused-textbook: folder for fused-textbook.json")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.check == "no-sync":
            lines = no_sync(args.rehearsal)
        elif args.check == "cpu-equals-gpu":
            lines = cpu_equals_gpu(args.rehearsal)
        elif args.check == "fused-textbook":
            lines = fused_textbook(args.rehearsal, args.examples, args.results)
        else:
            lines = fused_launch(args.rehearsal, args.steps)
    except (CheckFailed, FastnnError) as e:
        print(f"gpu_check: FAILED: {e}")
        return FAIL
    for line in lines:
        print(line)
    print(f"({time.perf_counter() - start:.1f} s)")
    return NEEDS_GPU if args.rehearsal else PASS


if __name__ == "__main__":
    sys.exit(main())
