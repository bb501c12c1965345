"""fastnn's CUDA branches, run on the cupy test double (tests/cupy_double; its README says what it
cannot prove).  The numeric tests also run on it through the ``device`` fixture ("cuda-double")."""

import importlib.util
import logging

import numpy as np
import pytest

from fastnn import (
    BackendUnavailable,
    DeviceOutOfMemory,
    Network,
    bench,
    distributed,
    engines,
    get_backend,
    load_checkpoint,
    load_model,
    save_model,
)
from fastnn.backend import import_nccl, is_device_array
from fastnn.engines.generic import GenericEngine
from fastnn.state import TrainState

from .conftest import double_env, fastnn

pytestmark = pytest.mark.usefixtures("cupy_double")


def data(n=120, n_in=5, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_in)), rng.integers(0, n_out, n)


# -- the double keeps cupy's rules, or it would prove nothing --------------------------------------

def test_the_double_refuses_to_mix_with_numpy(cupy_double):
    cp = cupy_double
    a = cp.asarray(np.arange(3.0))
    for mix in (lambda: a + np.ones(3), lambda: np.ones(3) + a, lambda: cp.add(a, np.ones(3)),
                lambda: np.asarray(a)):
        with pytest.raises(TypeError):
            mix()
    assert is_device_array(a) and is_device_array(a.sum()) and a.sum().shape == ()
    assert is_device_array(a.T) and is_device_array(a[1:]) and not is_device_array(a.get())


def test_host_reads_are_synchronisations(cupy_double):
    import cupyx

    a, gpu = cupy_double.ones(4), get_backend("cuda")
    with cupyx.allow_synchronize(False):
        b = (a * 2).sum()  # queued work: no sync
        for read in (lambda: float(b), lambda: b.get(), lambda: bool(b), gpu.synchronize):
            with pytest.raises(cupyx.DeviceSynchronized):
                read()
    assert float(b) == 8.0


def test_the_double_keeps_each_array_on_its_device(cupy_double, monkeypatch):
    monkeypatch.setenv("CUPY_DOUBLE_GPUS", "2")
    cp = cupy_double
    with cp.cuda.Device(1):
        a = cp.ones(3)
        assert a.device.id == 1 and (a + a).device.id == 1 and float(a.sum()) == 3.0
    assert cp.cuda.Device().id == 0
    for cross in (lambda: a + 1, lambda: a.sum(), lambda: cp.add(a, a), lambda: a.copy(), lambda: a[1:],
                  lambda: a.__setitem__(0, 2.0)):
        with pytest.raises(ValueError, match=r"array resides \(1\) is different from the current device \(0\)"):
            cross()
    assert a.get().tolist() == [1.0, 1.0, 1.0]  # reading it back works from any device, as in cupy
    assert cp.asarray(a.get()).device.id == 0


@pytest.mark.parametrize("code, driver, kind", [(700, False, "CUDARuntimeError"), (719, True, "CUDADriverError")])
def test_the_double_kills_a_context_with_a_sticky_fault(cupy_double, monkeypatch, code, driver, kind):
    monkeypatch.setenv("CUPY_DOUBLE_GPUS", "2")
    cp = cupy_double
    a = cp.ones(3)
    cp.cuda.runtime.inject_fault(code, after=0, driver=driver)  # the next operation dies, and every one after it
    for later in (lambda: a + 1, lambda: a + 1, lambda: float(a[0]), lambda: cp.zeros(2), lambda: a.get(),
                  lambda: cp.cuda.Device(0).synchronize()):
        with pytest.raises(RuntimeError) as caught:
            later()
        assert type(caught.value).__name__ == kind and caught.value.status == code
    with cp.cuda.Device(1):  # the other GPU's context lives on
        assert float(cp.ones(2).sum()) == 2.0
    cp.cuda.runtime.clear_faults()
    assert float((a + 1).sum()) == 6.0


# -- choosing the backend -----------------------------------------------------------------------

def test_auto_chooses_the_gpu_after_the_smoke_test():
    b = get_backend("auto")
    assert b.is_cuda and b.device == "cuda:0" and b.reason == "auto: cuda:0 passed a smoke test"
    assert get_backend("cuda:0") is not b and get_backend("cuda").device == "cuda:0"


def test_a_wrong_smoke_test_names_both_numbers_and_the_device(cupy_double, monkeypatch, caplog):
    real = cupy_double.ndarray.__matmul__
    monkeypatch.setattr(cupy_double.ndarray, "__matmul__", lambda a, b: real(a, b) + 1)  # a broken GEMM
    with pytest.raises(BackendUnavailable, match=r"^the smoke test on cuda:0 computed 88\.0, but numpy on the "
                                                 r"host computed 84\.0$"):
        get_backend("cuda")
    with caplog.at_level(logging.WARNING, logger="fastnn"):
        assert get_backend("auto").device == "cpu"
    assert "computed 88.0, but numpy on the host computed 84.0" in caplog.records[0].getMessage()


def test_a_smoke_test_that_raises_names_the_error(cupy_double, monkeypatch):
    class CUBLASError(RuntimeError):
        pass

    def broken(a, b):
        raise CUBLASError("CUBLAS_STATUS_NOT_INITIALIZED")

    monkeypatch.setattr(cupy_double.ndarray, "__matmul__", broken)
    with pytest.raises(BackendUnavailable, match=r"^the smoke test on cuda:0 failed \(CUBLASError: "
                                                 r"CUBLAS_STATUS_NOT_INITIALIZED\)$"):
        get_backend("cuda")


def test_nccl_that_cannot_load_says_how_to_install_it(cupy_double, monkeypatch):
    from cupy.cuda import nccl

    assert import_nccl() is nccl
    monkeypatch.setattr(nccl, "available", False)
    with pytest.raises(BackendUnavailable, match="cupy cannot load the NCCL library; install it with 'pip install "
                                                 "nvidia-nccl-cu12'"):
        import_nccl()


@pytest.mark.parametrize("variables, cause", [
    ({"CUPY_DOUBLE_NO_DRIVER": "1"}, "no usable CUDA driver or device (CUDARuntimeError: cudaErrorInsufficientDriver"),
    ({"CUPY_DOUBLE_GPUS": "0"}, "cuda:0 was asked for, but 0 CUDA device(s) were found"),
    ({"CUDA_VISIBLE_DEVICES": ""}, "cuda:0 was asked for, but 0 CUDA device(s) were found"),
])
def test_unusable_gpus_say_why(monkeypatch, variables, cause):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(BackendUnavailable) as caught:
        get_backend("cuda")
    assert str(caught.value).startswith(cause)
    assert get_backend("auto").device == "cpu" and cause in get_backend("auto").reason


def test_second_gpu_by_name(monkeypatch):
    monkeypatch.setenv("CUPY_DOUBLE_GPUS", "2")
    b = get_backend("cuda:1")
    a = b.to_device(np.arange(4.0))
    assert b.index == 1 and a.device.id == 1
    assert b.gpu_id() == "0000:02:00.0" and get_backend("cpu").gpu_id() is None
    with pytest.raises(BackendUnavailable, match="cuda:2 was asked for, but 2 CUDA device"):
        get_backend("cuda:2")


# -- arrays across the host/device line --------------------------------------------------------------

def test_round_trip_gather_and_describe():
    b = get_backend("cuda")
    a = b.to_device(np.arange(12.0).reshape(4, 3), "float32")
    assert is_device_array(a) and a.dtype == np.float32 and a.flags.c_contiguous
    assert b.to_device(a) is a  # already there: no copy
    out = b.xp.empty((2, 3), np.float32)
    assert b.take_rows(a, b.to_device(np.array([3, 1])), out=out) is out
    np.testing.assert_array_equal(b.to_host(out), [[9, 10, 11], [3, 4, 5]])
    host = get_backend("cpu").to_device(a)  # a device array asked for on the CPU: copied back
    assert type(host) is np.ndarray and host.tolist() == b.to_host(a).tolist()
    b.synchronize()
    facts = b.describe()
    assert facts["gpu"] == "cupy test double (numpy on the CPU)" and facts["gpu_memory_bytes"] == 16 << 30
    assert facts["cupy"].endswith("+fastnn.double") and facts["cuda_runtime"] == facts["cuda_driver"] == 12080


def test_fused_engine_unavailable_so_auto_runs_generic():
    net = Network([5, 4, 3], device="cuda", seed=0)
    X, y = data()
    history = net.fit(X, y, epochs=1, batch_size=16, lr=0.1)
    assert history.records[0]["engine"] == "generic"
    assert engines.describe(net.backend).startswith("generic (fused-cuda unavailable: ")


# -- training equals the CPU; files move across devices -----------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_training_on_cuda_equals_the_cpu(dtype):
    X, y = data()
    nets = {d: Network([5, 8, 3], activation="relu", output="softmax", cost="log-likelihood", device=d,
                       dtype=dtype, seed=3) for d in ("cpu", "cuda")}
    histories = {d: net.fit(X, y, epochs=2, batch_size=16, lr=0.05, momentum=0.9, l2=0.01, validation_data=(X, y),
                         engine="generic")  # the double runs the generic engine: compare like with like
                 for d, net in nets.items()}
    assert histories["cuda"].loss == histories["cpu"].loss  # the double computes with numpy: exactly equal
    for a, b in zip(nets["cuda"].weights + nets["cuda"].biases, nets["cpu"].weights + nets["cpu"].biases):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(nets["cuda"].predict(X), nets["cpu"].predict(X))


def test_device_arrays_are_accepted_as_training_data():
    X, y = data()
    b = get_backend("cuda")
    net = Network([5, 4, 3], device="cuda", seed=1)
    ref = Network([5, 4, 3], device="cpu", seed=1)
    net.fit(b.to_device(X), b.to_device(y), epochs=1, batch_size=10, lr=0.1)
    ref.fit(X, y, epochs=1, batch_size=10, lr=0.1, engine="generic")
    np.testing.assert_array_equal(net.weights[0], ref.weights[0])


def test_models_and_checkpoints_move_between_devices(tmp_path):
    X, y = data()
    kw = {"batch_size": 16, "lr": 0.1, "momentum": 0.5, "engine": "generic"}  # the double runs generic
    straight = Network([5, 6, 3], device="cpu", seed=4)
    straight.fit(X, y, epochs=3, **kw)
    gpu = Network([5, 6, 3], device="cuda", seed=4)
    gpu.fit(X, y, epochs=1, checkpoint=tmp_path / "run", state=TrainState(), **kw)
    net, state = load_checkpoint(tmp_path / "run", device="cpu")  # written on the GPU, resumed on the CPU
    net.fit(X, y, epochs=3, state=state, **kw)
    np.testing.assert_array_equal(net.weights[0], straight.weights[0])
    save_model(straight, tmp_path / "cpu.npz")
    back = load_model(tmp_path / "cpu.npz", device="cuda")
    assert back.backend.is_cuda and is_device_array(back.params)
    np.testing.assert_array_equal(back.predict(X), straight.predict(X))
    again, state = load_checkpoint(tmp_path / "run", device="cuda")
    assert is_device_array(again.params) and is_device_array(state.velocity)


def test_load_model_onto_a_gpu_without_a_driver_names_the_cause(tmp_path, monkeypatch):
    save_model(Network([3, 2], device="cpu", seed=0), tmp_path / "m.npz")
    monkeypatch.setenv("CUPY_DOUBLE_NO_DRIVER", "1")
    with pytest.raises(BackendUnavailable, match=r"^no usable CUDA driver or device \(CUDARuntimeError: "
                                                 r"cudaErrorInsufficientDriver"):
        load_model(tmp_path / "m.npz", device="cuda")


# -- running out of device memory -----------------------------------------------------------------------

def test_out_of_device_memory_is_a_clear_error(monkeypatch):
    # a 12 MiB GPU: batch 2000 needs ~25 MB of activations; batch 50 fits, with fit's first-epoch
    # look at 1,000 examples (the not-learning check, ~4 MB)
    monkeypatch.setenv("CUPY_DOUBLE_MEMORY", str(12 << 20))
    net = Network([5, 1024, 3], device="cuda", seed=0)
    X, y = data(n=2000)
    before = net.weights
    with pytest.raises(DeviceOutOfMemory, match=r"^out of memory on cuda:0 \(OutOfMemoryError: Out of memory "
                                                 r"allocating [\d,]+ bytes .*\); try a smaller batch size than 2000 "
                                                 r"\(--batch-size\) or the CPU \(--device cpu\)$"):
        net.fit(X, y, epochs=1, batch_size=2000, lr=0.1)
    np.testing.assert_array_equal(net.weights[0], before[0])
    net.fit(X, y, epochs=1, batch_size=50, lr=0.1)  # a smaller batch fits


def test_cli_out_of_device_memory(tiny, tmp_path):
    run = fastnn("train", "--dataset", tiny, "--layers", "4,512,3", "--epochs", "1", "--batch-size", "240",
                 "--device", "cuda", env=double_env(CUPY_DOUBLE_MEMORY=1 << 20), cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("fastnn: error: out of memory on cuda:0 (OutOfMemoryError: Out of memory allocating ")
    assert run.stderr.count("\n") == 1


# -- the command line -----------------------------------------------------------------------------------

def test_cli_info_and_train_on_cuda(tiny, tmp_path):
    info = fastnn("info", "--device", "cuda", env=double_env())
    assert info.returncode == 0, info.stderr
    for line in ("device: cuda:0", "array_module: cupy", "gpu: cupy test double (numpy on the CPU)",
                 "cuda_driver: 12080", "cupy: 14.0.0+fastnn.double", "engine: generic (fused-cuda unavailable: "):
        assert line in info.stdout, info.stdout
    train = fastnn("train", "--dataset", tiny, "--layers", "4,8,3", "--epochs", "2", "--seed", "5", "--device", "cuda",
                   "--out", tmp_path / "m.npz", env=double_env(), cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert "device=cuda:0" in train.stdout and "cuda:0" in train.stdout.splitlines()[1]
    cpu = fastnn("train", "--dataset", tiny, "--layers", "4,8,3", "--epochs", "2", "--seed", "5", "--device", "cpu",
                 cwd=tmp_path)
    # the same test line (the CPU run, without --out, then says that its model was not saved)
    assert train.stdout.splitlines()[-2] == cpu.stdout.splitlines()[-2]
    evaluate = fastnn("evaluate", "--model", tmp_path / "m.npz", "--dataset", tiny, "--device", "cuda",
                      env=double_env(), cwd=tmp_path)
    assert evaluate.returncode == 0 and "cuda:0" in evaluate.stdout, evaluate.stderr


# -- distributed device assignment ----------------------------------------------------------------------

def test_each_rank_takes_gpu_local_rank_mod_count(monkeypatch, caplog):
    monkeypatch.setenv("CUPY_DOUBLE_GPUS", "2")
    assert [distributed.rank_backend("cuda", r).device for r in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert distributed.rank_backend("auto", 1).device == "cuda:1"
    assert distributed.rank_backend("cpu", 1).device == "cpu"
    monkeypatch.setenv("CUPY_DOUBLE_GPUS", "0")
    with pytest.raises(BackendUnavailable, match="the CUDA driver shows no device"):
        distributed.rank_backend("cuda", 0)
    with caplog.at_level(logging.WARNING, logger="fastnn"):
        assert distributed.rank_backend("auto", 0).device == "cpu"
    assert "this host's ranks train on the CPU" in caplog.records[0].getMessage()


# -- the benchmark's device memory pools ----------------------------------------------------------------

def test_bench_plans_the_huge_config_for_the_gpu_only():
    backends, _ = bench.devices("auto")
    todo, skipped = bench.plan(None, ["fastnn"], backends)
    huge = [jobs for config, jobs in todo if config.name == "huge"]
    assert huge and {b.device for _, b, _ in huge[0]} == {"cuda:0"}
    assert {"config": "huge", "impl": "all", "device": "cpu",
            "reason": "too big for a CPU; name it in --configs to run it anyway"} in skipped


def test_bench_counts_each_peers_device_pool(monkeypatch):
    monkeypatch.setitem(bench.PEAK_SIZE, "cuda", 256)  # the double's "GPU" is this CPU: a small peak matmul
    backends, skipped = bench.devices("auto")
    assert [b.device for b in backends] == ["cpu", "cuda:0"] and not skipped
    report = bench.run(["textbook"], ["fastnn", "torch"], device="cuda", quick=True, examples=300, epochs=2)
    gpu = [r for r in report["results"] if r["device"] == "cuda:0"]
    assert {r["impl"] for r in gpu} == {"fastnn", "floor"}
    for r in gpu:
        assert r["device_peak_bytes"] > 0 and len(r["device_bytes_by_epoch"]) == 2
    fastnn_gpu = next(r for r in gpu if r["impl"] == "fastnn")
    assert fastnn_gpu["device_growth_bytes"] == 0  # the second epoch reuses the first one's blocks
    assert report["machine"]["devices"]["cuda:0"]["gpu"] == "cupy test double (numpy on the CPU)"
    torch_skip = [s for s in report["skipped"] if s["impl"] == "torch"]
    # the torch job is skipped with its cause: a CPU build of PyTorch cannot use CUDA; without PyTorch, it is absent
    want = "cannot use CUDA" if importlib.util.find_spec("torch") else "PyTorch is not installed"
    assert torch_skip and want in torch_skip[0]["reason"]
    assert any("peak device pool" in t["target"] for t in report["targets"])


# -- the device check's own Python parts -----------------------------------------------------------------

def test_gpu_check_one_step_makes_no_host_sync():
    from bench import gpu_check

    lines = gpu_check.no_sync()
    assert len(lines) == 3 and all("no host synchronisation in one training step on cuda:0" in x for x in lines[:2])
    assert lines[2].startswith("gpu_check: no host sync inside a step of the ")  # the summary's note


def test_gpu_check_finds_a_host_sync(cupy_double, monkeypatch):
    from bench import gpu_check as check

    net_step = GenericEngine.epoch

    def syncing(self, *args, **kwargs):
        cost = net_step(self, *args, **kwargs)
        float(cost)  # a host read inside the step
        return cost

    monkeypatch.setattr(GenericEngine, "epoch", syncing)
    with pytest.raises(check.CheckFailed, match="DeviceSynchronized"):
        check.no_sync()


def test_gpu_check_cpu_equals_gpu():
    from bench import gpu_check

    lines = gpu_check.cpu_equals_gpu(steps=20)  # step by step now, each step from the CPU's weights (issue 18)
    assert lines[0].startswith("data: ")
    for line, dtype in zip(lines[1:3], ("float64", "float32")):
        assert line.startswith(f"{dtype}: 20 steps of batch 10, each from the CPU's weights: largest |GPU - CPU| / "
                               "|step| = 0 (tolerance") and line.endswith("ok")
