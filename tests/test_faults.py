"""Nothing lost, whatever stops the run: stop signals, a second signal, kill -9, a full disk, a vanished
checkpoint folder, a second trainer, a closed stdout, and --out pointed at the run's own inputs.

Signals go to real processes.  ``test_random_signals_and_kills`` runs a few of them at random moments
in the default run; ``pytest -m faults`` runs the long loop (FASTNN_FAULT_TRIALS, default 60).
"""

import errno
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from fastnn import ConfigError, DivergenceError, Network, TrainState, cli, interrupts, keeping, load_checkpoint
from fastnn import checkpoint as checkpoint_module
from fastnn import files as files_module
from fastnn.files import LOCK_FILE, TMP_PREFIX, FolderLock, atomic_write, remove_stale

from .conftest import ROOT, fastnn

# Python's own Ctrl-C handler in the child even when this process ignores SIGINT (a background job).
START = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "sys.argv[0] = 'fastnn'; runpy.run_module('fastnn', run_name='__main__', alter_sys=True)")
ENV = {**os.environ, "FASTNN_DEVICE": "cpu",
       "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
STOP = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}


@pytest.fixture
def wide(tmp_path):
    """784 random features, 10 classes: a network whose checkpoint (1.6 MB) takes a good part of each epoch."""
    rng = np.random.default_rng(3)
    X, y = rng.random((500, 784), dtype=np.float32), rng.integers(0, 10, 500)
    np.savez(tmp_path / "wide.npz", x_train=X[:400], y_train=y[:400], x_test=X[400:], y_test=y[400:])
    return tmp_path / "wide.npz"


def train_args(epochs):
    return ["train", "--dataset", "wide.npz", "--layers", "784,250,10", "--batch-size", 50, "--lr", 0.5,
            "--momentum", 0.5, "--seed", 7, "--epochs", epochs, "--checkpoint", "ck", "--out", "m.npz"]


def leftovers(folder):
    """Temporary files, lock files and empty fastnn-checkpoint-* folders under ``folder``."""
    found = []
    for root, dirs, names in os.walk(folder):
        found += [os.path.join(root, n) for n in names if n.startswith(TMP_PREFIX) or n == LOCK_FILE
                  or re.fullmatch(r"\..*\.tmp", n)]
        found += [os.path.join(root, d) for d in dirs if d.startswith("fastnn-checkpoint-")
                  and not os.listdir(os.path.join(root, d))]
    return found


def same_model(a, b):
    from fastnn import load_model

    x, y = load_model(a, device="cpu"), load_model(b, device="cpu")
    return all(np.array_equal(p, q) for p, q in zip(x.weights + x.biases, y.weights + y.biases))


def signal_run(args, cwd, signals, delay, gap, timeout=60):
    """Start fastnn ARGS; ``delay`` s after its first line send ``signals`` ``gap`` s apart; (status, stderr)."""
    with open(cwd / "err.txt", "w") as err:
        child = subprocess.Popen([sys.executable, "-c", START, *map(str, args)], stdout=subprocess.PIPE,
                                 stderr=err, text=True, env=ENV, cwd=cwd)
    watchdog = threading.Timer(timeout, child.kill)
    watchdog.start()
    try:
        child.stdout.readline()  # the network line: the run exists
        time.sleep(delay)
        for i, name in enumerate(signals):
            if i:
                time.sleep(gap)
            if child.poll() is None:
                child.send_signal(getattr(signal, name))
        child.stdout.read()
        child.wait()
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, (cwd / "err.txt").read_text()


SAVED = re.compile(r"fastnn: interrupted \((SIG\w+)\); saved the run as it stood after epoch (\d+) of (\d+) to "
                   r"(\S+)/checkpoint\.npz( \(a second (SIG\w+) came meanwhile: the save was let finish\))?; "
                   r"to continue, run the same command with --resume (\S+)")
FINISHED = re.compile(r"fastnn: interrupted \((SIG\w+)\); the run had finished and the model was saved to m\.npz")
EARLY = re.compile(r"fastnn: interrupted \((SIG\w+)\); (nothing was saved|ck/checkpoint\.npz holds the last completed epoch)")


def one_trial(cwd, epochs, signals, delay, gap, straight):
    """Stop a run with ``signals``; check its line, its checkpoint and files; finish it; compare with ``straight``."""
    status, err = signal_run(train_args(epochs), cwd, signals, delay, gap)
    lines = [line for line in err.strip().splitlines() if not line.startswith("fastnn: warning: ")]  # not learning
    first = signals[0]
    kind = "ended before the signal" if status == 0 else "killed"
    if status == 0:  # the run ended before the signal came
        assert "Traceback" not in err, err
    elif first == "SIGKILL":
        assert status == -signal.SIGKILL, (status, err)
    else:
        assert status == STOP[first], (status, err)
        assert len(lines) == 1, err
        saved, finished, early = SAVED.fullmatch(lines[0]), FINISHED.fullmatch(lines[0]), EARLY.fullmatch(lines[0])
        assert saved or finished or early, lines[0]
        if early:  # it came while the device, the data or the network were being made: nothing on disk yet
            assert early.group(1) == first and not (cwd / "m.npz").exists(), lines[0]
            assert (early.group(2) == "nothing was saved") != (cwd / "ck" / "checkpoint.npz").exists(), lines[0]
        kind = ("saved, --out written" if finished else "before training: nothing saved" if early
                else f"saved{', a second signal held' if saved[5] else ''}")
        if saved:
            assert saved.group(1) == first and saved.group(4) == saved.group(7) == "ck", lines[0]
            assert load_checkpoint(cwd / "ck", device="cpu")[1].epoch == int(saved.group(2))
    if (cwd / "ck" / "checkpoint.npz").exists():
        load_checkpoint(cwd / "ck", device="cpu")  # whole, whatever the moment: never half-written
    if status != 0 and not (status > 0 and FINISHED.fullmatch(lines[0])):
        again = [*train_args(epochs), *(["--resume", "ck"] if (cwd / "ck" / "checkpoint.npz").exists() else [])]
        done = fastnn(*again, cwd=cwd, timeout=120)
        assert done.returncode == 0, done.stderr
    assert same_model(cwd / "m.npz", straight), "the resumed run differs from a straight one"
    assert load_checkpoint(cwd / "ck", device="cpu")[1].epoch == epochs
    assert leftovers(cwd) == []
    return kind


def random_trials(tmp_path, wide, n, seed, epochs=12):
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    shutil.copy(wide, straight_dir)
    started = time.perf_counter()
    run = fastnn(*train_args(epochs), cwd=straight_dir, timeout=120)
    seconds = time.perf_counter() - started
    assert run.returncode == 0, run.stderr
    rng = random.Random(seed)
    outcomes = []
    for i in range(n):
        cwd = tmp_path / f"t{i}"
        cwd.mkdir()
        shutil.copy(wide, cwd)
        first = ["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"][i % 4]
        signals = [first] + ([rng.choice(["SIGINT", "SIGTERM", "SIGHUP"])] if rng.random() < 0.3 else [])
        kind = one_trial(cwd, epochs, signals, rng.uniform(0, 0.8 * seconds), rng.uniform(0, 0.05),
                         straight_dir / "m.npz")
        outcomes.append((signals, kind))
        shutil.rmtree(cwd)
    return outcomes


def test_random_signals_and_kills(tmp_path, wide):
    """SIGINT, SIGTERM, SIGHUP and SIGKILL once each at random moments; each run resumes to a straight run's model."""
    outcomes = random_trials(tmp_path, wide, 4, seed=int(os.environ.get("FASTNN_FAULT_SEED", "1")), epochs=4)
    assert len(outcomes) == 4


@pytest.mark.faults
@pytest.mark.slow
def test_random_signals_and_kills_long(tmp_path, wide, request):
    if "faults" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the long loop runs with 'pytest -m faults' (FASTNN_FAULT_TRIALS trials, default 60)")
    n = int(os.environ.get("FASTNN_FAULT_TRIALS", "60"))
    outcomes = random_trials(tmp_path, wide, n, seed=int(os.environ.get("FASTNN_FAULT_SEED", "2")))
    counts = {}
    for signals, kind in outcomes:
        key = f"{signals[0]}{' + a second' if len(signals) > 1 else ''}: {kind}"
        counts[key] = counts.get(key, 0) + 1
    print("\n" + "\n".join(f"{v:3d}  {k}" for k, v in sorted(counts.items())))


# -- in one process: each way a write can be stopped -----------------------------------------------

def test_a_signal_during_a_write_lets_it_finish(tmp_path):
    def write(f):
        f.write(b"first half ")
        os.kill(os.getpid(), signal.SIGINT)  # Python's own Ctrl-C handler: held back until the write is done
        f.write(b"second half")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "f", write)
    assert (tmp_path / "f").read_bytes() == b"first half second half"
    assert os.listdir(tmp_path) == ["f"]


def test_a_default_sigterm_during_a_write_ends_the_process_after_it(tmp_path):
    """No fastnn handler installed (a library user): SIGTERM still waits for the write, then ends the process."""
    script = ("import os, signal, sys; from fastnn.files import atomic_write\n"
              "def write(f):\n    f.write(b'a'); os.kill(os.getpid(), signal.SIGTERM); f.write(b'b')\n"
              "atomic_write(sys.argv[1], write)\nprint('not reached')")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "f")], capture_output=True, text=True,
                         env=ENV, timeout=60, check=False)
    assert run.returncode == -signal.SIGTERM and run.stdout == ""
    assert (tmp_path / "f").read_bytes() == b"ab" and os.listdir(tmp_path) == ["f"]


def test_an_ignored_signal_stays_ignored():
    """Under nohup SIGHUP is ignored: fastnn leaves it so."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with interrupts.installed():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    (tmp_path / "f").write_bytes(b"old")

    def write(f):
        f.write(b"new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(tmp_path / "f", write)
    assert (tmp_path / "f").read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]


def test_stale_temporary_files_are_removed_and_live_ones_kept(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead = int(gone.stdout)
    names = {f"{TMP_PREFIX}{dead}-{files_module.HOST}-0a1b2c3d-checkpoint.npz": True,  # its process is gone
             f"{TMP_PREFIX}{os.getpid()}-{files_module.HOST}-0a1b2c3d-m.npz": False,  # this process: live
             f"{TMP_PREFIX}{dead}-00000000-0a1b2c3d-m.npz": False,  # another machine's, and recent
             ".checkpoint.npz.ab_cd123.tmp": True,  # fastnn 0.1's name, an hour old
             "checkpoint.npz": False}
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    old = time.time() - 7200
    os.utime(tmp_path / ".checkpoint.npz.ab_cd123.tmp", (old, old))
    assert sorted(remove_stale(tmp_path)) == sorted(n for n, stale in names.items() if stale)
    assert sorted(os.listdir(tmp_path)) == sorted(n for n, stale in names.items() if not stale)


def test_a_second_trainer_on_one_folder_is_refused(tmp_path, tiny):
    (tmp_path / "ck").mkdir()
    hold = ("import sys, time; from fastnn.files import FolderLock; lock = FolderLock(sys.argv[1]); lock.acquire(); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "ck")], stdout=subprocess.PIPE, text=True,
                              env=ENV)
    try:
        assert holder.stdout.readline() == "held\n"
        X, y = np.zeros((6, 4)), np.zeros(6, int)
        net = Network([4, 3], device="cpu", seed=0)
        with pytest.raises(ConfigError, match=rf"checkpoint folder .*ck is in use by another fastnn run \(process "
                                              rf"{holder.pid} on .*\); wait for it to end"):
            net.fit(X, y, epochs=1, batch_size=2, lr=0.1, checkpoint=tmp_path / "ck")
        run = fastnn("train", "--dataset", tiny, "--layers", "4,3", "--epochs", 1, "--checkpoint", tmp_path / "ck")
        assert run.returncode == 2 and run.stderr.count("\n") == 1 and "in use by another fastnn run" in run.stderr
    finally:
        holder.kill()
        holder.wait()
    net.fit(X, y, epochs=1, batch_size=2, lr=0.1, checkpoint=tmp_path / "ck")  # its holder gone, the lock is free
    assert sorted(os.listdir(tmp_path / "ck")) == ["checkpoint.npz"]  # the lock file went with the run


def test_a_lock_is_reentrant_in_one_process(tmp_path):
    with FolderLock(tmp_path), FolderLock(tmp_path):
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()


@pytest.mark.parametrize("when", ["between epochs", "during the write"])
def test_a_checkpoint_folder_that_vanishes_is_made_again(tmp_path, rng, monkeypatch, when):
    X, y = rng.normal(size=(20, 4)), rng.integers(0, 3, 20)
    folder = tmp_path / "ck"
    straight = Network([4, 5, 3], device="cpu", seed=1)
    straight.fit(X, y, epochs=3, batch_size=5, lr=0.5)
    real, calls = np.savez, []

    def deleting(f, **arrays):
        calls.append(1)
        if len(calls) == 2:
            shutil.rmtree(folder)  # the temporary file goes with it: the rename would fail
        real(f, **arrays)

    if when == "during the write":
        monkeypatch.setattr(checkpoint_module.np, "savez", deleting)
    callback = (lambda r: r["epoch"] == 1 and shutil.rmtree(folder)) if when == "between epochs" else None
    net = Network([4, 5, 3], device="cpu", seed=1)
    net.fit(X, y, epochs=3, batch_size=5, lr=0.5, checkpoint=folder, callback=callback)
    loaded, state = load_checkpoint(folder, device="cpu")
    assert state.epoch == 3 and sorted(os.listdir(folder)) == ["checkpoint.npz"]
    assert all(np.array_equal(a, b) for a, b in zip(loaded.weights, straight.weights))


# -- the command line, in this process -------------------------------------------------------------

def test_a_full_disk_at_out_keeps_the_run(tmp_path, tiny, monkeypatch, capsys):
    """--out fails after the last epoch (ENOSPC, simulated): the run is kept as a checkpoint; resuming writes it."""
    real = checkpoint_module.atomic_write

    def full(path, write):
        if path.name == "m.npz":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write)

    monkeypatch.chdir(tmp_path)
    command = ["train", "--dataset", str(tiny), "--layers", "4,6,3", "--epochs", "3", "--seed", "2", "--device", "cpu",
               "--out", "m.npz", "--quiet"]
    monkeypatch.setattr(checkpoint_module, "atomic_write", full)
    assert cli.main(command) == 1
    err = capsys.readouterr().err
    found = re.fullmatch(r"fastnn: error: cannot write model file m\.npz: No space left on device; the run as it stood "
                         r"after epoch 3 is kept in (fastnn-checkpoint-[\d-]+)/checkpoint\.npz: to write the model, "
                         r"run the same command with --resume (\1)\n", err)
    assert found, err
    monkeypatch.setattr(checkpoint_module, "atomic_write", real)
    assert cli.main([*command, "--resume", found.group(1)]) == 0
    assert cli.main([*command[:-3], "--out", "straight.npz"]) == 0
    assert same_model(tmp_path / "m.npz", tmp_path / "straight.npz")
    assert leftovers(tmp_path) == []


def test_a_full_disk_at_the_checkpoint_keeps_the_run_elsewhere(tmp_path, tiny, monkeypatch, capsys):
    real = checkpoint_module.atomic_write

    def full(path, write):
        if path.parent.name == "ck":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(checkpoint_module, "atomic_write", full)
    assert cli.main(["train", "--dataset", str(tiny), "--layers", "4,3", "--epochs", "3", "--device", "cpu",
                     "--checkpoint", "ck", "--quiet"]) == 1
    err = capsys.readouterr().err
    found = re.fullmatch(r"fastnn: error: cannot write checkpoint ck/checkpoint\.npz: No space left on device; the run "
                         r"as it stood after epoch 1 is kept in (fastnn-checkpoint-[\d-]+)/checkpoint\.npz: to "
                         r"continue, run the same command with --resume \1\n", err)
    assert found, err
    assert load_checkpoint(found.group(1), device="cpu")[1].epoch == 1


def sending(name, then):
    """A stand-in that sends this process signal ``name`` and then does ``then``."""
    def stand_in(*args, **kwargs):
        os.kill(os.getpid(), getattr(signal, name))
        return then(*args, **kwargs)
    return stand_in


def interrupt_in_epoch(monkeypatch, epoch, batches_per_epoch, name="SIGINT"):
    """A signal in the first batch of ``epoch``, from the generic engine's per-batch backprop (run --engine generic)."""
    real, calls = Network._backprop, []

    def stopping(self, ws, **kwargs):
        calls.append(1)
        if len(calls) == (epoch - 1) * batches_per_epoch + 1:
            raise interrupts.Interrupted(getattr(signal, name))
        return real(self, ws, **kwargs)

    monkeypatch.setattr(Network, "_backprop", stopping)


def test_a_second_signal_during_the_emergency_save_lets_it_finish(tmp_path, tiny, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    interrupt_in_epoch(monkeypatch, 3, 24)  # 240 examples in batches of 10
    monkeypatch.setattr(keeping, "save_checkpoint", sending("SIGTERM", keeping.save_checkpoint))
    status = cli.main(["train", "--dataset", str(tiny), "--layers", "4,3", "--epochs", "5", "--device", "cpu",
                       "--quiet", "--engine", "generic"])
    err = capsys.readouterr().err
    assert status == 130
    found = re.fullmatch(r"fastnn: interrupted \(SIGINT\); saved the run as it stood after epoch 2 of 5 to "
                         r"(fastnn-checkpoint-[\d-]+)/checkpoint\.npz \(a second SIGTERM came meanwhile: the save was "
                         r"let finish\); to continue, run the same command with --resume \1\n", err)
    assert found, err
    assert load_checkpoint(found.group(1), device="cpu")[1].epoch == 2


def test_a_second_signal_and_a_failed_save_say_nothing_was_saved(tmp_path, tiny, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    interrupt_in_epoch(monkeypatch, 2, 24, "SIGHUP")

    def failing(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(keeping, "save_checkpoint", sending("SIGINT", failing))
    status = cli.main(["train", "--dataset", str(tiny), "--layers", "4,3", "--epochs", "5", "--device", "cpu",
                       "--quiet", "--engine", "generic"])
    err = capsys.readouterr().err
    assert status == 129
    assert err == ("fastnn: interrupted (SIGHUP); could not save the run after epoch 1 of 5: Input/output error; "
                   "nothing was saved; a second SIGINT came meanwhile\n")
    assert leftovers(tmp_path) == [] and not list(tmp_path.glob("fastnn-checkpoint-*"))


@pytest.mark.parametrize("where", ["load_dataset", "options.fill_new"])
def test_a_signal_before_training_began_says_nothing_was_saved(tmp_path, tiny, monkeypatch, capsys, where):
    """A stop signal while the options are filled or the dataset loads (a slow start: cupy probing a GPU, a big
    file): one line, 143, no files."""
    monkeypatch.chdir(tmp_path)
    owner, name = (cli.options, "fill_new") if where == "options.fill_new" else (cli, "load_dataset")
    monkeypatch.setattr(owner, name, sending("SIGTERM", getattr(owner, name)))
    status = cli.main(["train", "--dataset", str(tiny), "--layers", "4,3", "--epochs", "2", "--device", "cpu",
                       "--checkpoint", "ck", "--out", "m.npz", "--quiet"])
    assert status == 143
    assert capsys.readouterr().err == "fastnn: interrupted (SIGTERM); nothing was saved\n"
    assert not (tmp_path / "m.npz").exists() and not (tmp_path / "ck" / "checkpoint.npz").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("late", ["the line after --out", "a second signal replacing --out's line"])
def test_a_signal_after_out_was_written_says_the_model_was_saved(tmp_path, tiny, monkeypatch, capsys, late):
    """A stop signal after --out was written (while the run prints its last line; or a second signal while the
    first one's line is on its way up, which replaces that line's exception) says the model was saved, not only
    where the checkpoint is (CI met the second: two SIGINTs 25 ms apart)."""
    monkeypatch.chdir(tmp_path)
    if late == "the line after --out":
        real_show = cli.show

        def show(text, *args, **kwargs):
            if text.startswith("saved the model to"):
                os.kill(os.getpid(), signal.SIGINT)
            return real_show(text, *args, **kwargs)

        monkeypatch.setattr(cli, "show", show)
    else:
        real_write = cli.write_out

        def write_out(*args, **kwargs):  # the first signal during the save; the second while its line goes up
            try:
                return real_write(*args, **kwargs)
            except KeyboardInterrupt:
                raise KeyboardInterrupt from None

        monkeypatch.setattr(cli, "save_model", sending("SIGINT", cli.save_model))
        monkeypatch.setattr(cli, "write_out", write_out)
    status = cli.main(["train", "--dataset", str(tiny), "--layers", "4,3", "--epochs", "2", "--device", "cpu",
                       "--checkpoint", "ck", "--out", "m.npz"])
    assert status == 130
    assert capsys.readouterr().err.splitlines()[-1] == ("fastnn: interrupted (SIGINT); the run had finished and the "
                                                        "model was saved to m.npz")
    assert (tmp_path / "m.npz").is_file() and leftovers(tmp_path) == []


def test_a_signal_while_out_is_written_lets_it_finish(tmp_path, tiny, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "save_model", sending("SIGTERM", cli.save_model))
    status = cli.main(["train", "--dataset", str(tiny), "--layers", "4,3", "--epochs", "2", "--device", "cpu",
                       "--out", "m.npz", "--quiet"])
    assert status == 143
    assert capsys.readouterr().err == ("fastnn: interrupted (SIGTERM); the run had finished and the model was saved "
                                       "to m.npz\n")
    from fastnn import load_model

    assert load_model(tmp_path / "m.npz", device="cpu").sizes == [4, 3]


def test_a_closed_stdout_stops_printing_not_training(tmp_path, tiny):
    """'fastnn train | head -2': the run goes on to the end and saves --out; exit 0, one note on stderr."""
    args = ["train", "--dataset", tiny, "--layers", "4,6,3", "--epochs", 200, "--seed", 3]
    child = subprocess.Popen([sys.executable, "-m", "fastnn", *map(str, args), "--out", tmp_path / "m.npz"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
    head = [child.stdout.readline(), child.stdout.readline()]
    child.stdout.close()  # what head does after two lines
    err = child.stderr.read()
    assert child.wait(timeout=120) == 0, err
    assert head[1].startswith("epoch 1/200")
    assert err == f"fastnn: stdout was closed early (broken pipe); training went on to the end and saved the model " \
                  f"to {tmp_path / 'm.npz'}\n"
    straight = fastnn(*args, "--out", tmp_path / "s.npz", "--quiet")
    assert straight.returncode == 0 and same_model(tmp_path / "m.npz", tmp_path / "s.npz")


def test_out_may_not_overwrite_the_runs_inputs(tmp_path, tiny, capsys):
    base = ["train", "--dataset", str(tiny), "--layers", "4,3", "--epochs", "1", "--device", "cpu"]
    before = tiny.read_bytes()
    assert cli.main([*base, "--out", str(tiny)]) == 2
    assert "--out" in capsys.readouterr().err and tiny.read_bytes() == before
    assert cli.main([*base, "--checkpoint", str(tmp_path / "ck")]) == 0
    capsys.readouterr()
    saved = (tmp_path / "ck" / "checkpoint.npz").read_bytes()
    for extra in (["--checkpoint", str(tmp_path / "ck")], ["--resume", str(tmp_path / "ck" / "checkpoint.npz")],
                  ["--resume", str(tmp_path / "ck")]):
        assert cli.main([*base, *extra, "--out", str(tmp_path / "ck" / "checkpoint.npz")]) == 2
        err = capsys.readouterr().err
        assert re.fullmatch(r"fastnn: error: --out \S+checkpoint\.npz is (also )?the checkpoint this run (resumes|"
                            r"writes after every epoch) \((--resume|--checkpoint) \S+\); writing the model there "
                            r"would overwrite it: choose another file name\n", err), err
    assert (tmp_path / "ck" / "checkpoint.npz").read_bytes() == saved
    (tmp_path / "idx").mkdir()
    assert cli.main(["train", "--data-dir", str(tmp_path / "idx"), "--device", "cpu", "--out",
                     str(tmp_path / "idx" / "train-images-idx3-ubyte.gz")]) == 2
    assert "a file of the dataset (--data-dir" in capsys.readouterr().err


def test_resume_from_the_checkpoint_file_goes_on_checkpointing(tmp_path, tiny, capsys):
    base = ["train", "--dataset", str(tiny), "--layers", "4,3", "--device", "cpu", "--seed", "4", "--quiet"]
    assert cli.main([*base, "--epochs", "1", "--checkpoint", str(tmp_path / "ck")]) == 0
    assert cli.main([*base, "--epochs", "3", "--resume", str(tmp_path / "ck" / "checkpoint.npz")]) == 0
    assert load_checkpoint(tmp_path / "ck", device="cpu")[1].epoch == 3
    shutil.copy(tmp_path / "ck" / "checkpoint.npz", tmp_path / "copy.npz")
    capsys.readouterr()
    assert cli.main([*base, "--epochs", "4", "--resume", str(tmp_path / "copy.npz")]) == 2
    assert "not named checkpoint.npz, so this run would have nowhere to go on checkpointing; add --checkpoint DIR" \
        in capsys.readouterr().err
    assert cli.main([*base, "--epochs", "4", "--resume", str(tmp_path / "copy.npz"), "--checkpoint",
                     str(tmp_path / "ck2")]) == 0
    assert load_checkpoint(tmp_path / "ck2", device="cpu")[1].epoch == 4


# -- divergence -----------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")  # it diverges on purpose
def test_divergence_in_epoch_1_says_there_is_no_good_epoch(rng):
    X, y = rng.normal(size=(50, 4)) * 100, rng.integers(0, 3, 50)
    net = Network([4, 8, 3], activation="relu", output="identity", device="cpu", seed=0)
    with pytest.raises(DivergenceError, match=r"^training diverged in epoch 1: the cost became (nan|inf); no epoch had "
                                              r"completed, so there are no good weights to keep"):
        net.fit(X, y, epochs=3, batch_size=10, lr=1e6)


def test_a_finite_blow_up_is_a_divergence(rng, monkeypatch, tmp_path):
    """Epoch 3's loss 10^4 times epoch 1's, yet finite: reported like a NaN, epoch 2 kept."""
    X, y = rng.normal(size=(20, 4)), rng.integers(0, 3, 20)
    real, calls = Network._backprop, []

    def blowing_up(self, ws, **kwargs):  # 4 batches an epoch: from call 9 on, epoch 3
        calls.append(1)
        cost = real(self, ws, **kwargs)
        return cost * 1e4 if len(calls) > 8 else cost

    monkeypatch.setattr(Network, "_backprop", blowing_up)
    net, state, kept = Network([4, 3], device="cpu", seed=0), TrainState(), []
    with pytest.raises(DivergenceError) as caught:
        net.fit(X, y, epochs=4, batch_size=5, lr=0.5, state=state, checkpoint=tmp_path, engine="generic",
                callback=lambda r: kept.append(net.weights))
    first = state.history.loss[0]
    assert re.fullmatch(rf"training diverged in epoch 3: the cost rose to \S+, over 1000 times epoch 1's "
                        rf"{first:.4g}; the weights of the last good epoch \(2\) were kept; try a smaller learning "
                        rf"rate than 0.5", str(caught.value)), str(caught.value)
    assert state.epoch == 2 and all(np.array_equal(a, b) for a, b in zip(kept[1], net.weights))
    assert load_checkpoint(tmp_path, device="cpu")[1].epoch == 2
