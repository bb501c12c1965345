"""fastnn bench: each implementation on each config, interleaved, measured against the floor.

``run`` plans what fits the machine, loads the data, pins the BLAS and PyTorch threads, warms
every peer up, then times ``epochs`` epochs of each, rotating the order every round so that
a noisy neighbour slows them all alike, and returns a report: a dict of plain values that
``fastnn.benchreport`` writes as JSON, a table and a chart.  Nothing here prints; progress
goes to the ``progress`` callback, one line at a time.
"""

import ctypes
import gc
import itertools
import os
import re
import statistics
import sys
import time

import numpy as np

from .. import threads as thread_policy
from ..backend import get_backend, parse_device
from ..data import _complete, candidate_dirs, read_idx_pair
from ..errors import BackendUnavailable, ConfigError
from . import machine
from .peers import PEERS, PeerUnavailable, import_torch
from .report import trust
from .workloads import CONFIGS, gemm_flops, peak_matmul

IMPLS = ("fastnn", "textbook-loop", "torch", "torch-graph", "jax", "numpy")  # the floor always runs: every ratio needs it
GPU_ONLY = {"torch-graph": "CUDA graphs need a CUDA device"}  # planned on a GPU only; on a CPU when named, skipped
EXAMPLES, QUICK_EXAMPLES = 60000, 2000
LOOP_SLICE = {"textbook": 6000, "mid": 3008, "wide": 512, "huge": 256}  # examples the textbook loop times
QUICK_LOOP_SLICE = {"textbook": 500, "mid": 256, "wide": 64, "huge": 16}
PEAK_SIZE = {"cpu": 2048, "cuda": 8192}  # the square matmul that measures a device's peak rate
# Before each timed epoch: OpenBLAS's and OpenMP's worker threads spin for ~0.1 s after their last
# job; on a 2-core machine they would steal the cores of the next implementation (measured: PyTorch
# twice as slow right after a numpy GEMM epoch, as fast as alone after a 0.3 s pause).
COOL_DOWN, QUICK_COOL_DOWN = 0.3, 0.05
MB = 10 ** 6  # decimal, as the 188 MB training set


def names(kind, text, choices):
    """Split a comma-separated option into names, each one of ``choices``."""
    chosen = [t.strip() for t in str(text).split(",") if t.strip()]
    bad = [t for t in chosen if t not in choices]
    if bad or not chosen:
        raise ConfigError(f"{kind} must be a comma-separated list of {', '.join(choices)}; got {text!r}")
    return chosen


def devices(spec):
    """The backends to time on and a note for each device left out: auto is the CPU plus the GPU."""
    kind, _ = parse_device(spec)
    if kind != "auto":
        return [get_backend(spec)], []  # asked for by name: an unusable GPU raises BackendUnavailable
    try:
        return [get_backend("cpu"), get_backend("cuda")], []
    except BackendUnavailable as e:
        return [get_backend("cpu")], [{"device": "cuda", "reason": f"no GPU: {e}"}]


def plan(config_names, impl_names, backends):
    """[(config, [(impl, backend, layout)])] to run and [{config, impl, device, reason}] left out."""
    gpu = any(b.is_cuda for b in backends)
    explicit = config_names is not None
    configs = [CONFIGS[c] for c in config_names] if explicit else [
        c for c in CONFIGS.values() if gpu or not c.gpu_only]
    impls = impl_names or list(IMPLS)
    todo, skipped = [], []
    for config in configs:
        jobs = []
        for backend in backends:
            if config.gpu_only and not backend.is_cuda and not explicit:
                skipped.append({"config": config.name, "impl": "all", "device": backend.device,
                                "reason": "too big for a CPU; name it in --configs to run it anyway"})
                continue
            jobs += [("floor", backend, "columns"), ("floor", backend, "rows")]
            for impl in impls:
                if impl in GPU_ONLY and not backend.is_cuda:
                    if impl_names:
                        skipped.append({"config": config.name, "impl": impl, "device": backend.device,
                                        "reason": GPU_ONLY[impl]})
                elif impl not in ("textbook-loop", "floor", "numpy"):
                    jobs.append((impl, backend, None))
        if "textbook-loop" in impls and (explicit or not config.gpu_only):
            jobs.append(("textbook-loop", get_backend("cpu"), None))
        if "numpy" in impls and (explicit or not config.gpu_only):  # plain batched numpy: a CPU peer
            jobs.append(("numpy", get_backend("cpu"), None))
        if jobs:
            todo.append((config, jobs))
    return todo, skipped


def load_data(n):
    """The first n Fashion-MNIST training examples when installed (never downloaded here), else
    synthetic data of the same shape; returns (X float32 (n, 784), y int64 (n,), description)."""
    for folder in candidate_dirs("fashion-mnist"):
        found = _complete(folder)
        if found:
            X, y = read_idx_pair(found["train", "images"], found["train", "labels"])
            return X[:n], y[:n], f"Fashion-MNIST training set ({folder}), first {min(n, len(X))} examples"
    rng = np.random.default_rng(0)
    X = rng.random((n, 784), dtype=np.float32)
    y = rng.integers(0, 10, n)
    return X, y, f"synthetic (Fashion-MNIST not found): {n} uniform random 784-pixel examples, random labels"


class HostMemory:
    """This process's resident memory (RSS) and its high-water mark, from /proc/self (Linux).

    Before each measurement glibc's malloc_trim hands freed heap pages back to the system;
    otherwise a peer's allocations could reuse pages another peer freed, and its RSS would not rise.
    """

    def __init__(self):
        self.reason = None
        try:
            self._trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc
            self._trim = lambda pad: 0
        try:
            self.reset()
            self.rss()
        except OSError as e:
            self.reason = f"host memory not measured: {e}"

    def _status(self, key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"/proc/self/status has no {key}")

    def rss(self):
        return self._status("VmRSS")

    def reset(self):
        """Start a new high-water mark at the current RSS."""
        gc.collect()
        self._trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def peak(self):
        return self._status("VmHWM")


def _job_label(impl, backend, layout):
    return f"{impl} {backend.device}" + (f" ({layout})" if layout else "")


def _warm_examples(n, m, quick):
    """A warm-up of 30 batches (quick: 5) or a twentieth of the epoch, as PyTorch's first dozen
    steps are slow, ending with the epoch's short last batch so that its arrays exist too."""
    return min(n, max(5 if quick else 30, n // (20 * m)) * m + n % m)


def _prepare(config, jobs, X, y, n, quick, mem, say, skipped, precision="fp32", threads=None):
    """Build and warm up each peer; return [(peer, record)] for those that can run.

    ``threads``: fastnn's BLAS threads (None: its own policy, as a user gets it)."""
    ready = []
    slices = QUICK_LOOP_SLICE if quick else LOOP_SLICE
    for impl, backend, layout in jobs:
        label = _job_label(impl, backend, layout)
        say(f"{config.name}: preparing {label}")
        timed = min(n, slices[config.name]) if impl == "textbook-loop" else n
        record = {"config": config.name, "impl": impl, "device": backend.device, "layout": layout,
                  "label": label, "examples": n, "timed_examples": timed, "scaled": timed != n,
                  "seconds": [], "wall_seconds": [], "device_bytes_by_epoch": []}
        try:
            if mem.reason is None:
                mem.reset()
                base = mem.rss()
            kwargs = {"layout": layout} if layout else {}
            if impl == "fastnn":
                kwargs["precision"], kwargs["threads"] = precision, threads
            peer = PEERS[impl](backend, config, X, y, **kwargs)
            warm = max(1, timed // 10) if impl == "textbook-loop" else _warm_examples(n, config.batch_size, quick)
            peer.epoch(warm)
            if getattr(peer, "engine", None):  # fastnn: the engine engine="auto" picked
                record["engine"] = peer.engine
                record["label"] += f" ({peer.engine} engine)"
        except PeerUnavailable as e:
            skipped.append({"config": config.name, "impl": impl, "device": backend.device, "reason": str(e)})
            say(f"{config.name}: skipping {label}: {e}")
            continue
        if mem.reason is None:
            record["host_setup_peak_bytes"] = mem.peak() - base
            record["host_held_bytes"] = mem.rss() - base
        record["precision"] = peer.precision  # its float32 matmuls: fp32 or tf32
        if getattr(peer, "engine", None):
            record["engine"] = peer.engine  # what fastnn's warm-up ran
        if impl == "fastnn":
            record["blas_threads"] = peer.blas_threads
        ready.append((peer, record))
    return ready


def _time(config, ready, epochs, mem, say, cool_down):
    """Time ``epochs`` epochs of every peer, rotating their order each round."""
    for round_ in range(epochs):
        turn = round_ % len(ready)
        for peer, record in ready[turn:] + ready[:turn]:
            scale = record["examples"] / record["timed_examples"]
            if mem.reason is None:
                mem.reset()
                base = mem.rss()
            time.sleep(cool_down)
            start = time.perf_counter()
            seconds = peer.epoch(record["timed_examples"])
            wall = time.perf_counter() - start
            if mem.reason is None:
                record["host_epoch_peak_bytes"] = max(record.get("host_epoch_peak_bytes", 0), mem.peak() - base)
            record["seconds"].append(seconds * scale)
            record["wall_seconds"].append(getattr(peer, "last_wall", None) or wall * scale)
            record["device_bytes_by_epoch"].append(peer.device_bytes())
            note = f" (timed on {record['timed_examples']} examples, scaled)" if record["scaled"] else ""
            say(f"{config.name}: {record['label']}: epoch {round_ + 1}/{epochs}: {seconds * scale:.3f} s{note}")


def _derive(records, peaks, config):
    """Medians, rates and ratios: x floor and speed-ups against the loop and PyTorch, per device."""
    flops = gemm_flops(config.sizes, records[0]["examples"]) if records else 0
    for r in records:
        r["median_s"] = statistics.median(r["seconds"])
        r["min_s"] = min(r["seconds"])
        r["examples_per_s"] = r["examples"] / r["median_s"]
        r["gemm_flops"] = flops
        r["gemm_flops_per_s"] = flops / r["median_s"]
        peak = peaks.get(r["device"])
        r["fraction_of_peak"] = r["gemm_flops_per_s"] / peak if peak else None
        if "host_setup_peak_bytes" in r:
            r["host_peak_bytes"] = max(r["host_setup_peak_bytes"],
                                       r["host_held_bytes"] + r.get("host_epoch_peak_bytes", 0))
        held = [b for b in r["device_bytes_by_epoch"] if b is not None]
        r["device_peak_bytes"] = max(held) if held else None
        r["device_growth_bytes"] = held[-1] - held[0] if held else None

    def best(impl, device, key="median_s"):
        found = [r[key] for r in records if r["impl"] == impl and r["device"] == device]
        return min(found) if found else None

    loop = best("textbook-loop", "cpu")
    for r in records:
        floor, floor_min = best("floor", r["device"]), best("floor", r["device"], "min_s")
        torch, graph, jax = (best(impl, r["device"]) for impl in ("torch", "torch-graph", "jax"))
        r["is_floor"] = r["impl"] == "floor" and r["median_s"] == floor
        r["x_floor"] = r["median_s"] / floor if floor else None
        r["x_floor_of_minima"] = r["min_s"] / floor_min if floor_min else None  # noise only ever slows
        r["vs_textbook_loop"] = loop / r["median_s"] if loop else None
        r["vs_torch"] = torch / r["median_s"] if torch else None
        r["vs_torch_graph"] = graph / r["median_s"] if graph else None
        r["vs_jax"] = jax / r["median_s"] if jax else None
        plain = best("numpy", "cpu")
        r["vs_numpy"] = plain / r["median_s"] if plain and r["device"] == "cpu" else None


def _jax_threads(threads):
    """Pin XLA's CPU threads where it can be (one thread); return what JAX will use, in words or a count."""
    cores = os.cpu_count() or 1
    if threads >= cores:
        return f"XLA's own ({cores}, every core)"
    if threads > 1:
        return f"XLA's own ({cores}, every core): XLA's CPU threads cannot be set to {threads}"
    if "jax" in sys.modules:
        return f"XLA's own ({cores}): JAX was imported before the threads could be pinned"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    return 1


def _set_threads(threads, impls):
    """Pin numpy's BLAS, PyTorch's intra-op pool and (to one thread only) XLA's; return what is in use."""
    used = {"requested": threads, "blas": thread_policy.set_blas_threads(threads), "torch": None,
            "jax": _jax_threads(threads) if "jax" in impls else None}
    if any(impl.startswith("torch") for impl in impls):
        try:
            torch = import_torch()
            torch.set_num_threads(threads)
            used["torch"] = torch.get_num_threads()
        except PeerUnavailable:
            pass
    return used


def run(configs=None, impls=None, device="auto", quick=False, epochs=None, threads=None, examples=None,
        progress=None, precision="fp32"):
    """Run the benchmark and return its report (see the module docstring).

    configs, impls: lists of names (default: what fits the devices; every implementation).
    device: auto (the CPU and, when usable, the GPU), cpu, cuda or cuda:N.  quick: a short smoke
    run on 2,000 examples.  epochs: timed epochs per implementation (default 3, quick 1).
    threads: BLAS, PyTorch and XLA threads (default: the machine's cores), fastnn's too when given (by
    default fastnn picks its own, ``fastnn.threads``, as in training).  examples: override n.
    precision: fastnn's matmul precision, "fp32" or "tf32" (see ``fastnn.train.fit``).
    """
    say = progress or (lambda line: None)
    epochs = epochs if epochs is not None else (1 if quick else 3)
    fastnn_threads = threads
    threads = threads if threads is not None else os.cpu_count() or 1
    n = examples or (QUICK_EXAMPLES if quick else EXAMPLES)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be an integer >= 1; got {epochs!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1; got {threads!r}")
    load_start = os.getloadavg()
    backends, skipped = devices(device)
    for backend in backends:
        backend.use()  # the peers' and the floor's own arrays go to the GPU benchmarked (at most one)
    todo, left_out = plan(configs, impls, backends)
    skipped += left_out
    used_threads = _set_threads(threads, impls or IMPLS)
    say(f"loading data ({n} examples)")
    X, y, data_note = load_data(n)
    n = len(X)
    peaks = {}
    for backend in backends:
        say(f"measuring the peak matmul rate of {backend.device}")
        size = PEAK_SIZE["cuda" if backend.is_cuda else "cpu"] // (4 if quick else 1)
        peaks[backend.device] = peak_matmul(backend, size)
    mem = HostMemory()
    results = []
    for config, jobs in todo:
        ready = _prepare(config, jobs, X, y, n, quick, mem, say, skipped, precision, fastnn_threads)
        _time(config, ready, epochs, mem, say, QUICK_COOL_DOWN if quick else COOL_DOWN)
        records = [record for _, record in ready]
        _derive(records, peaks, config)
        results += records
        del ready
        gc.collect()
    facts = machine.facts()
    facts["devices"] = {b.device: b.describe() for b in backends}  # GPU name, memory, CUDA runtime and driver
    facts["loadavg_start"], facts["loadavg_end"] = list(load_start), list(os.getloadavg())
    facts["threads"] = used_threads
    facts["cupy_tf32"] = os.environ.get("CUPY_TF32", "0")  # float32 GEMMs on TF32 tensor cores when "1"
    if used_threads["torch"] is not None:
        torch = import_torch()
        facts["torch_cuda"] = torch.version.cuda  # None for a CPU-only build
        blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
        facts["torch_blas"] = blas.group(1) if blas else "unknown"  # its GEMMs: not numpy's BLAS, not the floor's
    if "jax" in sys.modules:
        jax = sys.modules["jax"]
        facts["jax"] = jax.__version__
        facts["jax_devices"] = [str(d) for d in jax.devices()]
    report = {
        "fastnn_bench": 1,
        "machine": facts,
        "settings": {"configs": [c.name for c, _ in todo], "impls": list(impls or IMPLS) + ["floor"],
                     "device": device, "quick": quick, "epochs": epochs, "examples": n, "dtype": "float32",
                     "precision": precision,
                     "data": data_note, "data_bytes": int(X.nbytes + y.nbytes),
                     "configs_detail": {c.name: c.describe() for c, _ in todo}},
        "peak_flops_per_s": peaks,
        "results": results,
        "skipped": skipped,
        "notes": [
            "seconds per epoch are medians of the timed epochs, interleaved with the other implementations",
            ("fastnn's seconds are its trainer's own epoch clock (History.seconds); wall_seconds include "
             "fit's once-per-call input checks"),
            "textbook-loop is timed on a slice of the epoch and scaled to the whole epoch",
            ("fastnn's BLAS threads are its training policy's (fastnn.threads) unless --threads is given; the "
             "other implementations run --threads (default: every core)"),
            "jax: the epoch is compiled for its number of examples before its clock starts (compile time not counted)",
            ("precision: each result's float32 matmuls, fp32 or tf32 (JAX is pinned to fp32 with precision=HIGHEST; "
             "PyTorch's is torch.backends.cuda.matmul.allow_tf32; the floor's CUPY_TF32)"),
            (f"each timed epoch starts after a {QUICK_COOL_DOWN if quick else COOL_DOWN} s pause, so that no "
             "library's spinning threads remain"),
            "floor: the epoch's GEMMs alone, in fastnn's column layout and PyTorch's row layout; the faster is the floor",
            "host memory: peak RSS above the RSS before the peer was built (the training set is shared, not counted)",
        ],
    }
    report["targets"] = targets(report)
    report["trust"] = trust(report)  # a busy machine, the floor beaten: the timings are then not to be trusted
    return report


CPU_X_FLOOR = {"textbook": 1.0, "mid": 1.25, "wide": 1.15}  # issue 12: the compiled engine may beat numpy's floor
CPU_X_JAX = {"textbook": 0.8, "mid": 0.8, "wide": 0.95}  # fastnn's time over JAX jit+scan's, on the same CPU
CPU_VS_NUMPY = {"textbook": 1.2, "mid": 1.2, "wide": 1.2}  # issue 22: plain batched numpy's time over fastnn's
GPU_SPEEDUP = {"textbook": {"torch": 50.0, "jax": 3.0}}  # fastnn on a GPU: at least this much faster than...
HOST_EXTRA = 100 * MB
DEVICE_EXTRA = 64 * MB


def _params(sizes):
    return sum(o * i + o for i, o in itertools.pairwise(sizes))


def targets(report):
    """The issue's targets, each as {target, value, limit, met} for what was measured."""
    out = []
    data_bytes = report["settings"]["data_bytes"]
    for r in report["results"]:
        if r["impl"] != "fastnn":
            continue
        config = CONFIGS[r["config"]]
        if r["device"] == "cpu":
            if r["config"] in CPU_X_FLOOR and r["x_floor"] is not None:
                limit = CPU_X_FLOOR[r["config"]]
                out.append({"target": f"{r['config']}: fastnn cpu x floor", "value": r["x_floor"],
                            "limit": limit, "met": r["x_floor"] <= limit})
            if r["config"] in CPU_X_FLOOR and r["vs_torch"] is not None:
                out.append({"target": f"{r['config']}: fastnn cpu faster than PyTorch cpu", "value": r["vs_torch"],
                            "limit": 1.0, "met": r["vs_torch"] > 1.0})
            if r["config"] in CPU_X_JAX and r["vs_jax"] is not None:
                limit = CPU_X_JAX[r["config"]]
                out.append({"target": f"{r['config']}: fastnn cpu time over JAX cpu time", "value": 1 / r["vs_jax"],
                            "limit": limit, "met": 1 / r["vs_jax"] <= limit})
            if r["config"] in CPU_VS_NUMPY and r.get("vs_numpy") is not None:
                limit = CPU_VS_NUMPY[r["config"]]
                out.append({"target": f"{r['config']}: plain batched numpy's time over fastnn cpu's",
                            "value": r["vs_numpy"], "limit": limit, "met": r["vs_numpy"] >= limit})
            if r.get("host_peak_bytes") is not None:
                value = data_bytes + r["host_peak_bytes"]
                out.append({"target": f"{r['config']}: fastnn cpu peak host memory (training set + peak RSS rise)",
                            "value": value, "limit": data_bytes + HOST_EXTRA, "met": value <= data_bytes + HOST_EXTRA})
            continue
        for peer, limit in GPU_SPEEDUP.get(r["config"], {}).items():
            value = r["vs_torch" if peer == "torch" else "vs_jax"]
            if value is not None:
                name = "PyTorch CUDA eager" if peer == "torch" else "JAX jit+scan"
                out.append({"target": f"{r['config']}: fastnn {r['device']} faster than {name} by {limit:g}x",
                            "value": value, "limit": limit, "met": value >= limit})
        if r["device_peak_bytes"] is not None:
            item = np.dtype("float32").itemsize
            activations = sum(config.sizes) * config.batch_size * item
            limit = data_bytes + 4 * _params(config.sizes) * item + 3 * activations + DEVICE_EXTRA
            out.append({"target": f"{r['config']}: fastnn {r['device']} peak device pool", "value": r["device_peak_bytes"],
                        "limit": limit, "met": r["device_peak_bytes"] <= limit})
            out.append({"target": f"{r['config']}: fastnn {r['device']} pool growth across timed epochs",
                        "value": r["device_growth_bytes"], "limit": 0, "met": r["device_growth_bytes"] <= 0})
    return out
