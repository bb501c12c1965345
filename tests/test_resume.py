"""Training that survives faults: checkpoints, bit-identical resume, interrupts, divergence, out of memory."""

import json
import os
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from fastnn import (
    ConfigError,
    DeviceOutOfMemory,
    DivergenceError,
    ModelFileError,
    Network,
    TrainState,
    backend,
    load_checkpoint,
    load_model,
    save_checkpoint,
)

from .conftest import ROOT, cuda_reason, fastnn

SETTINGS = {"batch_size": 4, "lr": 0.5, "momentum": 0.9, "l2": 2.0}  # 10 examples: batches of 4, 4 and 2


def problem(rng):
    X, y = rng.normal(size=(10, 5)), rng.integers(0, 3, 10)
    return X, y, (rng.normal(size=(4, 5)), rng.integers(0, 3, 4))


def make_net(device, dtype="float32"):
    return Network([5, 6, 3], activation="tanh", output="softmax", cost="log-likelihood", device=device,
                   dtype=dtype, seed=11)


def assert_same_run(a, b, exact):
    """Same weights (bit for bit when ``exact``), same generator state."""
    check = np.testing.assert_array_equal if exact else (lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5))
    for x, y in zip(a.weights + a.biases, b.weights + b.biases):
        check(x, y)
    assert a.rng.bit_generator.state == b.rng.bit_generator.state


def losses(history):
    return [(r["epoch"], r["loss"], r.get("val_loss")) for r in history.records]


@pytest.mark.parametrize("momentum, l2", [(0.9, 2.0), (0.0, 0.0)])
def test_resume_from_a_checkpoint_is_bit_identical(device, rng, tmp_path, momentum, l2):
    """3 epochs straight == 2 epochs, checkpoint, a new process's worth of loading, 1 more epoch."""
    X, y, val = problem(rng)
    kw = dict(SETTINGS, momentum=momentum, l2=l2, validation_data=val)
    straight = make_net(device)
    full = straight.fit(X, y, epochs=3, **kw)

    first = make_net(device)
    first.fit(X, y, epochs=2, checkpoint=tmp_path / "run", **kw)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.npz"]  # no temporary files
    del first
    net, state = load_checkpoint(tmp_path / "run", device=device)
    assert state.epoch == 2 and (state.velocity is None) == (momentum == 0)
    resumed = net.fit(X, y, epochs=3, state=state, checkpoint=tmp_path / "run", **kw)

    assert_same_run(straight, net, exact=device == "cpu")
    assert losses(resumed) == losses(full) if device == "cpu" else len(resumed) == 3
    assert load_checkpoint(tmp_path / "run", device="cpu")[1].epoch == 3


def test_interrupt_mid_epoch_leaves_the_last_completed_epoch(rng, monkeypatch):
    """Ctrl-C half-way through epoch 2: net and state are as epoch 1 left them; continuing equals a straight run.

    The generic engine: its batch loop is Python, where Ctrl-C lands between batches (the fused
    engine's case is in test_cpu_fused)."""
    X, y, _ = problem(rng)
    straight = make_net("cpu")
    straight.fit(X, y, epochs=3, **SETTINGS, engine="generic")

    net = make_net("cpu")
    state = TrainState()
    after_one = []
    calls = []
    real = net._backprop

    def interrupting(ws, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # the second batch of epoch 2
            raise KeyboardInterrupt
        return real(ws, **kwargs)

    monkeypatch.setattr(net, "_backprop", interrupting)
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, epochs=3, state=state, callback=lambda r: after_one.append(net.weights), **SETTINGS, engine="generic")
    assert state.epoch == 1 and len(state.history) == 1
    for a, b in zip(after_one[0], net.weights):
        np.testing.assert_array_equal(a, b)  # not half of epoch 2
    monkeypatch.setattr(net, "_backprop", real)
    history = net.fit(X, y, epochs=3, state=state, **SETTINGS, engine="generic")
    assert [r["epoch"] for r in history.records] == [1, 2, 3]
    assert_same_run(straight, net, exact=True)


def test_state_advances_and_a_finished_state_does_nothing(rng):
    X, y, _ = problem(rng)
    net, state = make_net("cpu"), TrainState()
    assert state.epoch == 0 and not state.started
    net.fit(X, y, epochs=2, state=state, **SETTINGS)
    before = net.weights
    assert state.epoch == 2 and len(net.fit(X, y, epochs=2, state=state, **SETTINGS)) == 2
    np.testing.assert_array_equal(before[0], net.weights[0])
    assert "epoch=2" in repr(state)


@pytest.mark.parametrize("change, words", [
    ({"lr": 0.25}, r"lr 0.25 \(the run was started with 0.5\)"),
    ({"batch_size": 5}, r"batch_size 5 \(the run was started with 4\)"),
    ({"momentum": 0.0}, "momentum 0.0"),
    ({"shuffle": False}, "shuffle False"),
])
def test_resume_with_other_settings_is_refused(rng, tmp_path, change, words):
    X, y, _ = problem(rng)
    make_net("cpu").fit(X, y, epochs=1, checkpoint=tmp_path, **SETTINGS)
    net, state = load_checkpoint(tmp_path, device="cpu")
    with pytest.raises(ConfigError, match="cannot continue the training run with different settings: " + words):
        net.fit(X, y, epochs=2, state=state, **(SETTINGS | change))


def test_resume_on_other_data_or_network_is_refused(rng, tmp_path):
    X, y, _ = problem(rng)
    make_net("cpu").fit(X, y, epochs=1, checkpoint=tmp_path, **SETTINGS)
    net, state = load_checkpoint(tmp_path, device="cpu")
    with pytest.raises(ConfigError, match=r"n_train 9 \(the run was started with 10\)"):
        net.fit(X[:9], y[:9], epochs=2, state=state, **SETTINGS)
    with pytest.raises(ConfigError, match="belongs to a network of 57 float32 parameters; got one of"):
        Network([5, 4, 3], device="cpu").fit(X, y, epochs=2, state=state, **SETTINGS)


def test_checkpoint_is_a_model_file_too(rng, tmp_path):
    X, y, _ = problem(rng)
    net = make_net("cpu")
    net.fit(X, y, epochs=1, checkpoint=tmp_path, **SETTINGS)
    np.testing.assert_array_equal(load_model(tmp_path / "checkpoint.npz", device="cpu").forward(X), net.forward(X))
    loaded, state = load_checkpoint(tmp_path / "checkpoint.npz", device="cpu")  # the file itself works too
    assert loaded.seed == 11 and state.settings == {**SETTINGS, "shuffle": True, "n_train": 10, "epochs": 1}


def corrupt(path, **changes):
    """Rewrite the checkpoint at ``path`` with arrays replaced (None drops one) or training keys changed."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    training = json.loads(str(arrays["training"]))
    for key, value in changes.items():
        if key in arrays:
            if value is None:
                del arrays[key]
            else:
                arrays[key] = value
        else:
            training[key] = value
    if "training" in arrays:
        arrays["training"] = np.array(json.dumps(training))
    np.savez(path, **arrays)


@pytest.mark.parametrize("spoil, words", [
    (lambda d: (d / "checkpoint.npz").unlink(), "holds no checkpoint: expected .*checkpoint.npz"),
    (lambda d: (d / "checkpoint.npz").write_bytes((d / "checkpoint.npz").read_bytes()[:300]),
     "not a readable fastnn checkpoint .truncated or corrupt"),
    (lambda d: corrupt(d / "checkpoint.npz", training=None), "is a fastnn model file, not a checkpoint"),
    (lambda d: corrupt(d / "checkpoint.npz", version=2), "checkpoint format version 2; .* upgrade fastnn"),
    (lambda d: corrupt(d / "checkpoint.npz", epoch=-1), "epoch must be an integer >= 0; got -1"),
    (lambda d: corrupt(d / "checkpoint.npz", epoch=5), r"one history entry per epoch \(5\); got 2"),
    (lambda d: corrupt(d / "checkpoint.npz", settings={"lr": 1}), "settings must give batch_size, lr"),
    (lambda d: corrupt(d / "checkpoint.npz", rng={"bit_generator": "MT19937"}), "invalid random generator state"),
    (lambda d: corrupt(d / "checkpoint.npz", velocity=None), "momentum 0.9 but no momentum buffer"),
    (lambda d: corrupt(d / "checkpoint.npz", velocity=np.zeros(3, np.float32)), "momentum buffer must be 57 finite"),
    (lambda d: corrupt(d / "checkpoint.npz", W0=np.full((6, 5), np.nan, np.float32)), "NaN"),
])
def test_bad_checkpoints(rng, tmp_path, spoil, words):
    X, y, _ = problem(rng)
    make_net("cpu").fit(X, y, epochs=2, checkpoint=tmp_path, **SETTINGS)
    spoil(tmp_path)
    with pytest.raises(ModelFileError, match=words):
        load_checkpoint(tmp_path, device="cpu")


def test_missing_checkpoint_and_file_as_folder(rng, tmp_path):
    with pytest.raises(ModelFileError, match="checkpoint .*nope does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelFileError, match="checkpoint folder .*file is a file; expected a folder"):
        save_checkpoint(tmp_path / "file", make_net("cpu"), TrainState.from_parts(0, None, None, {}, [], {}))
    X, y, _ = problem(rng)
    with pytest.raises(ConfigError, match="checkpoint .*file is a file; expected a folder"):
        make_net("cpu").fit(X, y, epochs=1, checkpoint=tmp_path / "file", **SETTINGS)
    with pytest.raises(ConfigError, match="checkpoint .*none/ck: the folder .*none does not exist"):
        make_net("cpu").fit(X, y, epochs=1, checkpoint=tmp_path / "none" / "ck", **SETTINGS)


@pytest.mark.filterwarnings("ignore::fastnn.NotLearningWarning")  # it diverges on purpose
@pytest.mark.filterwarnings("error")
def test_divergence_keeps_the_last_good_epoch_in_net_state_and_checkpoint(rng, tmp_path):
    X, y = rng.normal(size=(50, 4)) * 100, rng.integers(0, 3, 50)
    net = Network([4, 8, 3], activation="relu", output="identity", device="cpu", seed=0)
    net.fit(X, y, epochs=2, batch_size=10, lr=1e-6, checkpoint=tmp_path)
    good = net.weights
    state = load_checkpoint(tmp_path, device="cpu")[1]
    state.settings["lr"] = 1e6  # a deliberate change of setting, for the test's sake
    with pytest.raises(DivergenceError, match=r"diverged in epoch 3: .*smaller learning rate than 1000000.0"):
        net.fit(X, y, epochs=4, batch_size=10, lr=1e6, checkpoint=tmp_path, state=state)
    assert state.epoch == 2 and len(state.history) == 2
    for a, b in zip(good, net.weights):
        np.testing.assert_array_equal(a, b)
        assert np.isfinite(b).all()
    saved, saved_state = load_checkpoint(tmp_path, device="cpu")
    assert saved_state.epoch == 2
    for a, b in zip(good, saved.weights):
        np.testing.assert_array_equal(a, b)
    fresh = Network([4, 8, 3], activation="relu", output="identity", device="cpu", seed=0)
    with pytest.raises(DivergenceError, match="diverged in epoch 1"):
        fresh.fit(X, y, epochs=3, batch_size=10, lr=1e6, checkpoint=tmp_path / "bad")
    assert not (tmp_path / "bad" / "checkpoint.npz").exists()  # no epoch completed: nothing written


class OutOfMemoryError(MemoryError):
    """Stands in for cupy.cuda.memory.OutOfMemoryError (which derives from MemoryError)."""


OutOfMemoryError.__module__ = "cupy.cuda.memory"


class CUBLASError(RuntimeError):
    """Stands in for cupy_backends.cuda.libs.cublas.CUBLASError."""


CUBLASError.__module__ = "cupy_backends.cuda.libs.cublas"


@pytest.mark.parametrize("exc, expected", [
    (OutOfMemoryError("Out of memory allocating 4,000,000,000 bytes"), True),
    (CUBLASError("CUBLAS_STATUS_ALLOC_FAILED"), True),
    (CUBLASError("CUBLAS_STATUS_EXECUTION_FAILED"), False),
    (MemoryError("host"), True),
    (ValueError("out of memory"), False),
])
def test_out_of_memory_is_recognised(exc, expected):
    assert backend.is_out_of_memory(exc) is expected


def test_out_of_memory_in_training_is_a_clear_error(rng, monkeypatch):
    """A GPU allocation failure half-way through epoch 2, played on the CPU with a stand-in exception."""
    X, y, _ = problem(rng)
    net = make_net("cpu")
    net.backend = backend.Backend("numpy", np, "cuda:0", "a numpy backend posing as a GPU for this test")
    real, calls = net._backprop, []

    def failing(ws, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise OutOfMemoryError("Out of memory allocating 1,073,741,824 bytes (allocated so far: 0 bytes).")
        return real(ws, **kwargs)

    monkeypatch.setattr(net, "_backprop", failing)
    state = TrainState()
    with pytest.raises(DeviceOutOfMemory) as caught:  # the generic loop: a stand-in of its allocations fails
        net.fit(X, y, epochs=3, state=state, **SETTINGS, engine="generic")
    message = str(caught.value)
    assert message == ("out of memory on cuda:0 (OutOfMemoryError: Out of memory allocating 1,073,741,824 bytes "
                       "(allocated so far: 0 bytes).); try a smaller batch size than 4 (--batch-size) or the CPU "
                       "(--device cpu)")
    assert state.epoch == 1 and np.array_equal(net.params, state.params)


def test_out_of_memory_on_the_cpu_suggests_less(rng, monkeypatch):
    X, y, _ = problem(rng)
    net = make_net("cpu")
    monkeypatch.setattr(net, "_inputs", lambda *a: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(DeviceOutOfMemory, match=r"^out of memory on cpu \(MemoryError\); try a smaller batch size "
                                                r"than 4, a smaller network or less data$"):
        net.fit(X, y, epochs=1, **SETTINGS)


@pytest.mark.gpu
def test_real_out_of_memory_on_the_gpu(rng):
    reason = cuda_reason()
    if reason:
        pytest.skip(f"no CUDA device: {reason}")
    cp = backend.get_backend("cuda").xp
    with pytest.raises(Exception) as caught:
        cp.empty(1 << 50, dtype=cp.uint8)  # a petabyte
    assert backend.is_out_of_memory(caught.value)
    n = 1 << 17
    net = Network([5, n, 3], device="cuda", dtype="float64", seed=0)
    X, y = rng.normal(size=(n, 5)), rng.integers(0, 3, n)
    with pytest.raises(DeviceOutOfMemory, match=r"out of memory on cuda:0 .*--batch-size.*--device cpu"):
        net.fit(X, y, epochs=1, batch_size=n, lr=0.1)  # hidden activations (n, n) float64: 128 GiB each


# -- the command line ------------------------------------------------------------------------------

def interrupt_after(args, first_line, tmp_path, timeout=60):
    """Start 'fastnn ARGS', send SIGINT once a stdout line starts with ``first_line``; (status, stdout, stderr).

    The child is killed if it runs past ``timeout`` seconds.  stdout is read through one
    buffered reader to the end (communicate() would skip what readline() has buffered).
    """
    env = {**os.environ, "FASTNN_DEVICE": "cpu",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    # Python's own Ctrl-C handler in the child, even when this process ignores SIGINT (a background job).
    start = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "sys.argv[0] = 'fastnn'; runpy.run_module('fastnn', run_name='__main__', alter_sys=True)")
    with open(tmp_path / "stderr.txt", "w") as err:
        child = subprocess.Popen([sys.executable, "-c", start, *map(str, args)], stdout=subprocess.PIPE,
                                 stderr=err, text=True, env=env, cwd=tmp_path)
    watchdog = threading.Timer(timeout, child.kill)
    watchdog.start()
    try:
        lines = []
        for line in child.stdout:
            lines.append(line)
            if line.startswith(first_line):
                child.send_signal(signal.SIGINT)
                break
        lines.append(child.stdout.read())
        child.wait()
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, "".join(lines), (tmp_path / "stderr.txt").read_text()


TRAIN = ["train", "--dataset", "tiny.npz", "--layers", "4,8,3", "--batch-size", 16, "--lr", 1.0, "--momentum", 0.5,
         "--seed", 1]


@pytest.mark.parametrize("with_checkpoint_option", [True, False])
def test_ctrl_c_saves_the_last_epoch_and_resume_is_bit_identical(tiny, tmp_path, with_checkpoint_option):
    extra = ["--checkpoint", "ck"] if with_checkpoint_option else []
    status, out, err = interrupt_after([*TRAIN, "--epochs", 100000, *extra], "epoch 2/", tmp_path)
    assert status == 130, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    found = re.fullmatch(r"fastnn: interrupted \(SIGINT\); saved the run as it stood after epoch (\d+) of 100000 to "
                         r"(\S+)/checkpoint.npz; to continue, run the same command with --resume (\S+)", lines[0])
    assert found and found.group(2) == found.group(3), lines[0]
    k, folder = int(found.group(1)), found.group(2)
    assert k >= 2 and (folder == "ck" if with_checkpoint_option else folder.startswith("fastnn-checkpoint-"))
    printed = [int(e) for e in re.findall(r"^epoch (\d+)/100000", out, re.MULTILINE)]
    assert printed[-1] in (k - 1, k), (printed, k)  # Ctrl-C may land between saving epoch k and printing it

    resumed = fastnn(*TRAIN, "--epochs", k + 2, "--resume", folder, "--out", "resumed.npz", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {k}" in resumed.stdout and f"epoch {k + 1}/{k + 2}" in resumed.stdout
    assert f"epoch {k}/" not in resumed.stdout
    straight = fastnn(*TRAIN, "--epochs", k + 2, "--out", "straight.npz", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    a, b = load_model(tmp_path / "resumed.npz", device="cpu"), load_model(tmp_path / "straight.npz", device="cpu")
    for x, y in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_array_equal(x, y)
    assert load_checkpoint(tmp_path / folder, device="cpu")[1].epoch == k + 2  # --resume keeps checkpointing there


def test_divergence_on_the_command_line(tiny, tmp_path):
    """In epoch 1 no epoch was good: the line says so, and nothing is saved as if it were."""
    run = fastnn("train", "--dataset", tiny, "--layers", "4,8,3", "--activation", "relu", "--output", "identity",
                 "--lr", "1e6", "--epochs", 3, "--seed", 5, "--out", tmp_path / "m.npz", "--checkpoint", tmp_path / "ck")
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr
    assert re.fullmatch(r"fastnn: error: training diverged in epoch 1: the cost became (nan|inf); no epoch had "
                        r"completed, so there are no good weights to keep \(the network has its initial ones\); "
                        r"try a smaller learning rate than 1000000.0", lines[0]), lines[0]
    assert not (tmp_path / "m.npz").exists() and not (tmp_path / "ck" / "checkpoint.npz").exists()


def test_divergence_after_a_checkpoint_names_it(tiny, tmp_path, monkeypatch, capsys):
    """Epoch 1 fine, epoch 2 diverges: the line says which checkpoint holds the last good epoch."""
    from fastnn import cli

    real, calls = Network._backprop, []

    def poisoned(self, ws, **kwargs):  # 240 examples in batches of 10: call 25 is the first of epoch 2
        calls.append(1)
        cost = real(self, ws, **kwargs)
        if len(calls) > 24:
            self.grads[...] = np.nan
        return cost

    monkeypatch.setattr(Network, "_backprop", poisoned)
    status = cli.main(["train", "--dataset", str(tiny), "--layers", "4,3", "--epochs", "3", "--seed", "0",
                       "--device", "cpu", "--checkpoint", str(tmp_path / "ck"), "--quiet", "--engine", "generic"])
    err = capsys.readouterr().err
    assert status == 1
    assert re.fullmatch(r"fastnn: error: training diverged in epoch 2: .*; .*ck holds the checkpoint of epoch 1\n",
                        err), err
    assert load_checkpoint(tmp_path / "ck", device="cpu")[1].epoch == 1


def test_out_of_memory_on_the_command_line(tiny, monkeypatch, capsys):
    """The one line a user sees when the device runs out of memory, in training and elsewhere."""
    from fastnn import cli

    def exhausted(*args, **kwargs):
        raise OutOfMemoryError("Out of memory allocating 268,435,456 bytes (allocated so far: 1,024 bytes).")

    monkeypatch.setattr(Network, "_backprop", exhausted)
    status = cli.main(["train", "--dataset", str(tiny), "--layers", "4,3", "--epochs", "1", "--device", "cpu",
                       "--batch-size", "64"])
    err = capsys.readouterr().err
    assert status == 1
    assert err == ("fastnn: error: out of memory on cpu (OutOfMemoryError: Out of memory allocating 268,435,456 "
                   "bytes (allocated so far: 1,024 bytes).); try a smaller batch size than 64, a smaller network or "
                   "less data\n")
    monkeypatch.setattr(cli, "load_dataset", exhausted)  # outside fit: main's own net catches it
    status = cli.main(["evaluate", "--model", "none.npz", "--device", "cpu"])
    assert status == 1 and "does not exist" in capsys.readouterr().err
    monkeypatch.setattr(cli, "load_model", exhausted)
    status = cli.main(["evaluate", "--model", "m.npz", "--device", "cpu"])
    assert status == 1
    assert capsys.readouterr().err.startswith("fastnn: error: out of memory on cpu (OutOfMemoryError: Out of memory")
