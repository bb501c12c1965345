"""The benchmark's own code: FLOP counts by hand, peers that do the same math, a well-formed report.

Nothing here asserts on speed: timings are the benchmark's output, never a test's condition.
"""

import json
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest

from fastnn import bench
from fastnn import threads as thread_policy
from fastnn.backend import get_backend
from fastnn.bench import machine
from fastnn.bench import report as benchreport
from fastnn.bench.peers import FastnnPeer, FloorPeer, TextbookPeer, TorchPeer
from fastnn.bench.workloads import CONFIGS, Config, Floor, gemm_flops
from fastnn.errors import BackendUnavailable, ConfigError

from .conftest import absent_env, double_env

TINY = Config("tiny", (3, 4, 2), "sigmoid", "softmax", "log-likelihood", 2, 0.1)
RESULT_FIELDS = {"config", "impl", "device", "layout", "label", "examples", "timed_examples", "scaled", "seconds",
                 "wall_seconds", "median_s", "min_s", "examples_per_s", "gemm_flops", "gemm_flops_per_s",
                 "fraction_of_peak", "x_floor", "x_floor_of_minima", "is_floor", "vs_textbook_loop", "vs_torch", "vs_torch_graph",
                 "vs_jax", "vs_numpy", "host_peak_bytes",
                 "device_peak_bytes", "device_growth_bytes", "device_bytes_by_epoch"}
MACHINE_FIELDS = {"date", "cpu", "cores", "numpy", "blas", "blas_threads", "blas_libraries", "torch", "cupy", "platform",
                  "devices", "loadavg_start", "loadavg_end", "threads"}


def test_gemm_flops_by_hand():
    # 3-4-2 over 5 examples: forward 2*(3*4 + 4*2)*5 = 200, weight gradients 200 as well,
    # backward only into the hidden layer (none into the input): 2*(4*2)*5 = 80
    assert gemm_flops((3, 4, 2), 5) == 480
    # the textbook net per example: 2*(784*30 + 30*10)*3 - 2*784*30
    assert gemm_flops((784, 30, 10), 1) == 95880


class CountingXp:
    """numpy, but matmul adds its FLOPs (2 m n k) to ``flops`` and is counted."""

    def __init__(self):
        self.flops, self.calls = 0, 0

    def __getattr__(self, name):
        return getattr(np, name)

    def matmul(self, a, b, out):
        self.flops += 2 * a.shape[0] * a.shape[1] * b.shape[1]
        self.calls += 1
        return np.matmul(a, b, out=out)


@pytest.mark.parametrize("layout", ["columns", "rows"])
def test_the_floor_does_exactly_the_counted_gemms(layout):
    xp = CountingXp()
    cpu = get_backend("cpu")
    backend = types.SimpleNamespace(xp=xp, to_device=cpu.to_device, synchronize=lambda: None)
    floor = Floor(backend, TINY.sizes, batch_size=2, layout=layout)
    floor.epoch(5)  # batches of 2, 2 and 1
    assert xp.flops == gemm_flops(TINY.sizes, 5) == 480
    assert xp.calls == 3 * 5  # per batch: 2 forward, 2 weight gradients, 1 backward


def test_the_floor_arrays_hold_no_garbage():
    floor = Floor(get_backend("cpu"), (784, 30, 10), batch_size=10)
    floor.epoch(25)
    for arrays in floor._buffers.values():
        for a in [arrays[0], *arrays[1], *arrays[2]]:
            assert np.isfinite(a).all() and np.abs(a).max() < 1e3


@pytest.mark.parametrize("name", ["textbook", "mid", "wide"])
def test_every_peer_does_the_same_math(name):
    """With one batch per epoch the order cannot matter: every peer must end at the same weights."""
    torch = pytest.importorskip("torch")
    config = CONFIGS[name]
    X, y, _ = bench.load_data(config.batch_size)
    cpu = get_backend("cpu")
    peers = [FastnnPeer(cpu, config, X, y), TextbookPeer(cpu, config, X, y), TorchPeer(cpu, config, X, y)]
    for peer in peers:
        peer.epoch(config.batch_size)
    got = [peers[0].net.weights, peers[1].weights,
           [layer.weight.detach().numpy() for layer in peers[2].model if isinstance(layer, torch.nn.Linear)]]
    start = FastnnPeer(cpu, config, X, y).net.weights
    for other in got[1:]:
        for a, b, w0 in zip(got[0], other, start):
            assert not np.array_equal(a, w0)  # it did train
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_plan_fits_the_machine():
    cpu = get_backend("cpu")
    todo, skipped = bench.plan(None, None, [cpu])
    assert [c.name for c, _ in todo] == ["textbook", "mid", "wide"]  # huge needs a GPU unless named
    jobs = dict(todo)[CONFIGS["mid"]]
    assert [(impl, layout) for impl, _, layout in jobs] == [  # torch-graph: on a GPU only
        ("floor", "columns"), ("floor", "rows"), ("fastnn", None), ("torch", None), ("jax", None), ("textbook-loop", None),
        ("numpy", None)]
    assert not skipped
    todo, skipped = bench.plan(["huge"], ["fastnn"], [cpu])
    assert [c.name for c, _ in todo] == ["huge"] and not skipped  # named: it runs, even on the CPU
    todo, skipped = bench.plan(["mid"], ["fastnn", "torch-graph"], [cpu])  # named on a CPU: skipped, saying why
    assert [impl for impl, _, _ in todo[0][1]] == ["floor", "floor", "fastnn"]
    assert skipped == [{"config": "mid", "impl": "torch-graph", "device": "cpu", "reason": "CUDA graphs need a CUDA device"}]


def test_plan_on_a_gpu_has_every_gpu_peer():
    cpu = get_backend("cpu")
    gpu = types.SimpleNamespace(is_cuda=True, device="cuda:0")  # a stand-in: plan only reads these
    todo, skipped = bench.plan(["textbook"], None, [cpu, gpu])
    on_gpu = [impl for impl, backend, _ in dict(todo)[CONFIGS["textbook"]] if backend is gpu]
    assert on_gpu == ["floor", "floor", "fastnn", "torch", "torch-graph", "jax"] and not skipped


def test_auto_without_a_gpu_says_why():
    try:
        get_backend("cuda")
        pytest.skip("this machine has a usable GPU")
    except BackendUnavailable:
        pass
    backends, skipped = bench.devices("auto")
    assert [b.device for b in backends] == ["cpu"]
    assert skipped[0]["device"] == "cuda" and skipped[0]["reason"].startswith("no GPU: ")


def test_names_are_checked_at_the_door():
    assert bench.names("--configs", "mid, wide", list(CONFIGS)) == ["mid", "wide"]
    with pytest.raises(ConfigError, match=r"--configs must be a comma-separated list of textbook, mid"):
        bench.names("--configs", "mid,large", list(CONFIGS))
    with pytest.raises(ConfigError, match="epochs must be an integer >= 1"):
        bench.run(["textbook"], ["fastnn"], device="cpu", epochs=0)


@pytest.fixture(scope="module")
def report():
    """A tiny in-process run: every implementation, two configs, 600 examples."""
    lines = []
    return bench.run(["textbook", "mid"], device="cpu", quick=True, examples=600, progress=lines.append), lines


def test_a_quick_run_is_a_well_formed_report(report, tmp_path):
    report, progress = report
    assert progress and any("epoch 1/1" in line for line in progress)
    assert MACHINE_FIELDS <= set(report["machine"])
    if report["machine"]["torch"]:
        assert report["machine"]["torch_blas"]
    assert report["settings"]["examples"] == 600 and report["settings"]["quick"]
    assert report["settings"]["precision"] == "fp32"
    ran = {r["config"]: (r["engine"], r["precision"]) for r in report["results"] if r["impl"] == "fastnn"}
    assert ran == {"textbook": ("blas-cpu", "fp32"), "mid": ("blas-cpu", "fp32")}  # what auto picks for each
    impls = {r["impl"] for r in report["results"]}
    assert {"fastnn", "textbook-loop", "floor", "numpy"} <= impls
    for r in report["results"]:
        assert RESULT_FIELDS <= set(r), RESULT_FIELDS - set(r)
        assert r["precision"] == "fp32", r  # every implementation's matmul precision: fp32 on a CPU, JAX's pinned
        assert len(r["seconds"]) == report["settings"]["epochs"] == 1
        assert r["gemm_flops"] == gemm_flops(CONFIGS[r["config"]].sizes, 600)
        assert r["x_floor"] > 0 and r["examples_per_s"] > 0 and r["device_peak_bytes"] is None
    for config in ("textbook", "mid"):
        floors = [r for r in report["results"] if r["config"] == config and r["impl"] == "floor"]
        assert sorted(r["layout"] for r in floors) == ["columns", "rows"]
        assert sum(r["is_floor"] for r in floors) == 1 and min(r["x_floor"] for r in floors) == 1.0
    loop = [r for r in report["results"] if r["impl"] == "textbook-loop"]
    assert all(r["scaled"] and r["timed_examples"] < 600 for r in loop if r["config"] == "textbook")
    assert {t["target"].split(":")[0] for t in report["targets"]} == {"textbook", "mid"}
    if report["machine"].get("jax"):  # CI installs JAX: its rows, the vs-JAX ratios and targets
        jax_rows = [r for r in report["results"] if r["impl"] == "jax"]
        assert len(jax_rows) == 2 and all(r["vs_jax"] == 1.0 for r in jax_rows)
        assert all(r["vs_jax"] > 0 for r in report["results"])
        assert sum("over JAX cpu time" in t["target"] for t in report["targets"]) == 2
    fastnn_rows = [r for r in report["results"] if r["impl"] == "fastnn"]
    assert [r["blas_threads"] for r in fastnn_rows] == [1, 1]  # the training policy: small steps, one thread
    path = tmp_path / "report.json"
    benchreport.write_json(report, path)
    assert json.loads(path.read_text())["results"][0]["config"] == "textbook"


def test_the_table_and_the_chart(report, tmp_path):
    report, _ = report
    lines = benchreport.table(report)
    assert lines[0].split()[:3] == ["config", "implementation", "s/epoch"]
    assert sum(line.startswith(("textbook ", "mid ")) for line in lines) == len(report["results"])
    # issue 21: the targets are for the project, not the user: in the JSON, not on the screen
    assert report["targets"] and not any(line.startswith("target ") or "MISSED" in line for line in lines)
    assert not any(re.search(r"\((\d+)%\)", line) and int(re.search(r"\((\d+)%\)", line).group(1)) > 100
                   for line in lines)
    rows = benchreport.markdown(report)
    assert rows[0].startswith("| config |") and len(rows) == 2 + len(report["results"])
    path = tmp_path / "chart.png"
    reason = benchreport.write_chart(report, path)
    if reason is None:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert reason.startswith("no chart: matplotlib is not installed") and not path.exists()


def test_a_busy_machine_or_a_beaten_floor_is_flagged(report):
    report, _ = report
    busy = {**report, "machine": {**report["machine"], "cores": 2, "loadavg_start": [3.5, 0, 0],
                                  "loadavg_end": [0.5, 0, 0]}}
    flags = benchreport.trust(busy)
    assert flags["busy"] and flags["load"] == 3.5
    assert any("the machine was busy (load 3.5 on 2 cores" in line for line in benchreport.warnings(busy))
    quiet = {**busy, "machine": {**busy["machine"], "loadavg_start": [0.2, 0, 0], "loadavg_end": [0.9, 0, 0]}}
    assert not benchreport.trust(quiet)["busy"]
    fast = dict(next(r for r in report["results"] if r["impl"] == "fastnn"), x_floor=0.19)
    beaten = {**quiet, "results": [fast]}
    assert benchreport.trust(beaten)["floor_beaten"][0]["x_floor"] == 0.19
    assert "0.19x the floor, faster than the epoch's matrix products alone" in benchreport.warnings(beaten)[0]
    assert {"busy", "load", "floor_beaten"} <= set(report["trust"])  # in the JSON of every run


def test_no_percentage_above_100(report):
    report, _ = report
    r = dict(report["results"][0], fraction_of_peak=4.15)
    assert benchreport._pct(r) == "" and benchreport._pct(dict(r, fraction_of_peak=0.41)) == " (41%)"


def test_no_matplotlib_no_chart_and_one_line_why(report, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    reason = benchreport.write_chart(report[0], tmp_path / "chart.png")
    assert reason.startswith("no chart: matplotlib is not installed") and "\n" not in reason
    assert not (tmp_path / "chart.png").exists()


def test_without_fashion_mnist_the_data_is_synthetic_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "candidate_dirs", lambda name: [tmp_path])
    X, y, description = bench.load_data(50)
    assert X.shape == (50, 784) and X.dtype == np.float32 and y.shape == (50,) and 0 <= y.min() <= y.max() < 10
    assert description.startswith("synthetic (Fashion-MNIST not found)")


def test_the_bench_pins_the_blas_threads_and_reports_them():
    before = thread_policy.blas_threads()
    assert before is not None, thread_policy.libraries()  # numpy's BLAS, found by threadpoolctl
    try:
        used = bench._set_threads(1, ["fastnn"])
        assert used["blas"] == 1 == thread_policy.blas_threads() == machine.facts()["blas_threads"]
    finally:
        thread_policy.set_blas_threads(before)


def fastnn(*args, timeout=300, env=None):
    env = {**os.environ, "FASTNN_DEVICE": "cpu", **(env or {})}
    return subprocess.run([sys.executable, "-m", "fastnn", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


def test_cli_bench_quick(tmp_path):
    """The CI smoke run: exits 0, prints the table, writes the JSON and the chart (or says why not)."""
    run = fastnn("bench", "--quick", "--json", tmp_path / "b.json", "--chart", tmp_path / "b.png")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("config ") and "fastnn cpu" in run.stdout
    assert "bench: textbook: fastnn cpu (blas-cpu engine): epoch 1/1" in run.stderr  # progress, while it runs
    report = json.loads((tmp_path / "b.json").read_text())
    engines = {r["config"]: r["engine"] for r in report["results"] if r["impl"] == "fastnn"}
    assert engines == {"textbook": "blas-cpu", "mid": "blas-cpu", "wide": "blas-cpu"}  # the one auto picked
    assert report["settings"]["quick"] is True and report["command"].startswith("fastnn bench --quick --device auto")
    assert (tmp_path / "b.png").exists() or "no chart: matplotlib" in run.stdout


@pytest.mark.parametrize("args, code, words", [
    (["--configs", "textbook,large"], 2, "--configs must be a comma-separated list of"),
    (["--impl", "sklearn"], 2, "--impl must be a comma-separated list of fastnn, textbook-loop, torch, torch-graph, jax"),
    (["--epochs", "0"], 2, "epochs must be an integer >= 1"),
    (["--threads", "0"], 2, "threads must be an integer >= 1"),
    (["--device", "tpu"], 2, "device must be one of"),
])
def test_cli_bench_bad_options(args, code, words):
    run = fastnn("bench", *args)
    assert run.returncode == code and run.stderr.count("\n") == 1 and words in run.stderr, run.stderr


@pytest.mark.parametrize("env, cause", [
    (absent_env(), "cupy cannot be imported (ImportError: "),
    (double_env(CUPY_DOUBLE_NO_DRIVER=1), "no usable CUDA driver or device (CUDARuntimeError: cudaErrorInsufficientDriver"),
], ids=["without cupy", "cupy without a driver"])
def test_cli_bench_cuda_by_name_without_a_gpu(env, cause):
    run = fastnn("bench", "--device", "cuda", "--quick", env=env)
    assert run.returncode == 1 and run.stderr.startswith(f"fastnn: error: {cause}"), run.stderr
    assert run.stderr.count("\n") == 1, run.stderr


@pytest.mark.gpu
def test_quick_run_on_the_gpu_counts_device_memory(tmp_path):
    try:
        get_backend("cuda")
    except BackendUnavailable as e:
        pytest.skip(f"no CUDA device: {e}")
    report = bench.run(["textbook"], ["fastnn"], device="cuda", quick=True, examples=500, epochs=2)
    gpu = [r for r in report["results"] if r["device"].startswith("cuda")]
    assert {r["impl"] for r in gpu} == {"fastnn", "floor"}
    for r in gpu:
        assert r["device_peak_bytes"] > 0 and len(r["device_bytes_by_epoch"]) == 2
    assert any("pool" in t["target"] for t in report["targets"])


def test_unavailable_peer_is_skipped_with_its_reason(monkeypatch):
    def absent(*args, **kwargs):
        raise bench.PeerUnavailable("PyTorch is not installed (ImportError: no)")

    monkeypatch.setitem(bench.PEERS, "torch", absent)
    report = bench.run(["textbook"], ["fastnn", "torch"], device="cpu", quick=True, examples=100)
    assert {"config": "textbook", "impl": "torch", "device": "cpu",
            "reason": "PyTorch is not installed (ImportError: no)"} in report["skipped"]
    assert all(r["vs_torch"] is None for r in report["results"])
    assert not any("PyTorch" in t["target"] for t in report["targets"])


def test_floor_peer_on_the_cpu_has_no_device_bytes():
    peer = FloorPeer(get_backend("cpu"), TINY, None, None)
    assert peer.epoch(4) >= 0 and peer.device_bytes() is None


@pytest.mark.parametrize("name", ["textbook", "wide"])
def test_the_plain_numpy_peer_trains_as_the_generic_engine(name):
    """fastnn bench's numpy peer (issue 22) does the configs' math: one epoch in the same order, same weights."""
    import dataclasses

    from fastnn import Network
    from fastnn.bench.numpy_peer import batched_epoch
    from fastnn.engines import GenericEngine

    cfg = dataclasses.replace(CONFIGS[name], sizes=(12, 7, 5, 3)[:len(CONFIGS[name].sizes)], batch_size=4)
    rng = np.random.default_rng(1)
    X, y = rng.random((11, 12), dtype=np.float32), rng.integers(0, 3, 11)
    order = rng.permutation(11)
    run = batched_epoch(cfg, X, y)
    run(11, order)
    net = Network(list(cfg.sizes), cfg.activation, cfg.output, cfg.cost, device="cpu", dtype="float32", seed=0)
    Xd, Yd, _ = net._inputs(X, y)
    GenericEngine(net, kernels=None).epoch(Xd, Yd, order.astype(np.int64), cfg.batch_size, cfg.lr, 0.0, 0.0, None)
    for got, want in zip(run.weights + run.biases, net.weights + net.biases):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
