"""Data-parallel training (fastnn.distributed), with real mpirun on the loopback interface.

The oracle is the single-process run: same global batch, same seed, float64.  Tests that need
mpirun skip, saying why, when Open MPI's mpirun or mpi4py is missing; the rest run everywhere.
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastnn import ConfigError, Network, distributed, load_model
from fastnn.backend import import_nccl
from fastnn.cli import main
from fastnn.errors import BackendUnavailable, DistributedError

from .conftest import double_env, env_skip_reason
from .distributed_worker import train

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
MPIRUN = shutil.which("mpirun")
# Loopback only; --oversubscribe: more ranks than cores; --allow-run-as-root: CI containers run as root.
MPI_FLAGS = ["--allow-run-as-root", "--oversubscribe", "--mca", "btl", "self,tcp",
             "--mca", "btl_tcp_if_include", "lo", "--mca", "oob_tcp_if_include", "lo"]
TIMEOUT = 60  # seconds any one mpirun may take before the test fails and the job is killed


def _open_mpi():
    if MPIRUN is None:
        return False
    try:
        version = subprocess.run([MPIRUN, "--version"], check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return "Open MPI" in version.stdout + version.stderr


def _skip_reason():
    if MPIRUN is None:
        return "mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)"
    if not _open_mpi():
        return f"{MPIRUN} is not Open MPI's mpirun, whose options these tests use"
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install mpi4py)"
    return None


SKIP = _skip_reason()


def needs_mpi(test):
    """Marks ``test`` needs_mpirun and skips it, as an environment skip, where mpirun or mpi4py is missing."""
    skip = pytest.mark.skipif(SKIP is not None, reason=env_skip_reason("needs_mpirun", SKIP or ""))
    return pytest.mark.needs_mpirun(skip(test))


def mpirun(*programs, cwd, env=None):
    """Run ``mpirun`` over ``programs`` ((n, argv) pairs, several for MPMD); return its CompletedProcess.

    ``env`` adds environment variables.  Fails the test, after killing the whole job, when it runs
    past TIMEOUT seconds.
    """
    cmd = [MPIRUN, *MPI_FLAGS]
    for i, (n, argv) in enumerate(programs):
        cmd += ([":"] if i else []) + ["-n", str(n), sys.executable, *argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop("FASTNN_DEVICE", None)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()  # mpirun passes SIGTERM on to its ranks
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"mpirun ran past {TIMEOUT} s and was killed; stderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def fastnn_cli(*args):
    return ["-m", "fastnn", "train", *args]


@pytest.fixture
def npz(tmp_path):
    """A small .npz dataset of 4 features and 3 classes: 61 training rows, 20 test rows."""
    rng = np.random.default_rng(7)
    path = tmp_path / "small.npz"
    np.savez(path, x_train=rng.random((61, 4)), y_train=rng.integers(0, 3, 61),
             x_test=rng.random((20, 4)), y_test=rng.integers(0, 3, 20))
    return path


# -- without MPI ------------------------------------------------------------------------------

def test_shares_partition_every_batch():
    for size in (1, 2, 3, 5):
        for m in range(12):
            shares = [distributed.share(m, size, r) for r in range(size)]
            rows = [i for s in shares for i in range(m)[s]]
            assert rows == list(range(m)), (size, m)
            lengths = [len(range(m)[s]) for s in shares]
            assert max(lengths) - min(lengths) <= 1


def test_connect_without_a_launcher(monkeypatch):
    for name in distributed.LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DistributedError, match=r"needs an MPI launcher: start it as 'mpirun -n N"):
        distributed.connect("cpu")


def test_connect_without_mpi4py(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # makes "from mpi4py import MPI" fail
    with pytest.raises(DistributedError, match=r"needs mpi4py.*pip install mpi4py"):
        distributed.connect("cpu")


def test_cli_distributed_without_a_launcher(npz, monkeypatch, capsys):
    for name in distributed.LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    status = main(["train", "--dataset", str(npz), "--layers", "4,5,3", "--device", "cpu", "--distributed"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(err) == 1 and err[0].startswith("fastnn: error: distributed training needs an MPI launcher")


def test_fit_rejects_what_is_not_a_communicator():
    net = Network([4, 3, 2], device="cpu", seed=1)
    with pytest.raises(ConfigError, match="distributed must be True, False or a Communicator; got 'yes'"):
        net.fit(np.zeros((4, 4)), np.zeros(4, int), epochs=1, batch_size=2, lr=0.1, distributed="yes")


def test_nccl_is_reached_through_the_backend_layer():
    try:
        nccl = import_nccl()
    except BackendUnavailable as e:
        assert "cupy" in str(e) or "NCCL" in str(e)
    else:
        assert hasattr(nccl, "NcclCommunicator")


# -- with mpirun: the same weights as one process, on every rank ------------------------------

CONFIGS = {
    # 50 rows, batch 8: the last batch has 2 rows, so with 3 ranks one rank has none.
    "sigmoid-momentum-l2": {"sizes": [6, 7, 3], "activation": "sigmoid", "output": "sigmoid", "cost": "quadratic",
                            "n": 50, "batch_size": 8, "epochs": 3, "lr": 0.5, "momentum": 0.6, "l2": 0.3,
                            "seed": 11},
    "relu-softmax": {"sizes": [6, 9, 5, 3], "activation": "relu", "output": "softmax", "cost": "log-likelihood",
                     "n": 45, "batch_size": 10, "epochs": 2, "lr": 0.1, "momentum": 0.0, "l2": 0.0, "seed": 12},
}


def rank_results(out_dir, size):
    found = [np.load(out_dir / f"rank{r}.npz") for r in range(size)]
    assert [int(f["size"]) for f in found] == [size] * size
    return found


@needs_mpi
@pytest.mark.parametrize("size, name", [(2, "sigmoid-momentum-l2"), (3, "sigmoid-momentum-l2"), (2, "relu-softmax")])
def test_ranks_end_with_the_weights_of_one_process(tmp_path, size, name):
    config = CONFIGS[name]
    run = mpirun((size, [str(WORKER), str(tmp_path), json.dumps(config)]), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    ranks = rank_results(tmp_path, size)
    for r in ranks[1:]:  # bit-identical on every rank
        assert np.array_equal(r["params"], ranks[0]["params"])
        assert np.array_equal(r["loss"], ranks[0]["loss"])
    net, history = train(config)  # the oracle: one process, same global batch and seed
    np.testing.assert_allclose(ranks[0]["params"], net.params, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ranks[0]["loss"], history.loss, rtol=1e-12)
    assert not np.allclose(net.params, Network(config["sizes"], dtype="float64", seed=config["seed"],
                                               device="cpu").params)  # it did train


@needs_mpi
def test_cli_trains_like_one_process_and_only_rank_0_prints(npz, tmp_path):
    args = ["--dataset", str(npz), "--layers", "4,6,3", "--epochs", "2", "--batch-size", "7", "--lr", "1.0",
            "--dtype", "float64", "--device", "cpu"]
    run = mpirun((2, fastnn_cli(*args, "--out", "two.npz", "--distributed")), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "error" not in run.stderr
    seeds = re.findall(r"seed (\d+), init", run.stdout)  # no --seed: rank 0 draws it and sends it to rank 1
    assert len(seeds) == 1
    for start in ("epoch 1/2", "epoch 2/2", "test: ", "saved the model"):
        assert sum(line.startswith(start) for line in run.stdout.splitlines()) == 1, run.stdout
    assert main(["train", *args, "--seed", seeds[0], "--out", str(tmp_path / "one.npz"), "--quiet"]) == 0
    one, two = load_model(tmp_path / "one.npz", device="cpu"), load_model(tmp_path / "two.npz", device="cpu")
    np.testing.assert_allclose(two.params, one.params, rtol=1e-12, atol=1e-14)


# -- with mpirun: clear errors, and no rank left waiting --------------------------------------

@needs_mpi
def test_batch_smaller_than_the_ranks(npz, tmp_path):
    args = fastnn_cli("--dataset", str(npz), "--layers", "4,5,3", "--batch-size", "2", "--device", "cpu",
                      "--distributed")
    run = mpirun((3, args), cwd=tmp_path)
    assert run.returncode == 2
    message = "fastnn: error: batch_size must be at least the number of ranks (3), so that every rank"
    assert run.stderr.count(message) == 1, run.stderr  # every rank failed the same check: rank 0 alone says so


@needs_mpi
def test_ranks_that_disagree_on_the_model_shape(npz, tmp_path):
    common = ["--dataset", str(npz), "--epochs", "1", "--device", "cpu", "--distributed"]
    run = mpirun((1, fastnn_cli("--layers", "4,5,3", *common)),
                              (1, fastnn_cli("--layers", "4,8,3", *common)), cwd=tmp_path)
    assert run.returncode == 1
    message = "fastnn: error: ranks disagree on the layer sizes: rank 0 has [4, 5, 3], rank 1 has [4, 8, 3]"
    assert run.stderr.count(message) == 1, run.stderr


@needs_mpi
def test_a_rank_that_cannot_use_its_device_stops_every_rank(npz, tmp_path):
    common = ["--dataset", str(npz), "--layers", "4,5,3", "--epochs", "1", "--distributed"]
    run = mpirun((1, fastnn_cli("--device", "cpu", *common)), (1, fastnn_cli("--device", "cuda:1", *common)),
                 cwd=tmp_path)
    assert run.returncode != 0
    message = ("fastnn: error: rank 1 cannot go on: distributed training needs device auto, cpu or cuda "
               "(each rank takes GPU 'local rank mod GPU count'); got 'cuda:1'")
    assert run.stderr.count(message) == 1, run.stderr
    assert "ending every rank" not in run.stderr  # every rank stopped together, none was aborted


@needs_mpi
def test_a_rank_that_fails_alone_ends_the_job(npz, tmp_path):
    common = ["--layers", "4,5,3", "--epochs", "1", "--device", "cpu", "--distributed"]
    run = mpirun((1, fastnn_cli("--dataset", str(npz), *common)),
                              (1, fastnn_cli("--dataset", "missing.npz", *common)), cwd=tmp_path)
    assert run.returncode == 1
    message = "fastnn: rank 1 of 2: error: dataset file missing.npz does not exist; ending every rank"
    assert message in run.stderr, run.stderr


@needs_mpi
def test_a_rank_that_dies_mid_run_ends_the_job(tmp_path):
    config = dict(CONFIGS["sigmoid-momentum-l2"], n=400, epochs=1000, die_at_step=30)
    run = mpirun((3, [str(WORKER), str(tmp_path), json.dumps(config)]), cwd=tmp_path)
    assert run.returncode != 0
    assert re.search(r"process rank 1 .* exited on signal 9", run.stderr), run.stderr
    assert not list(tmp_path.glob("rank*.npz"))  # nobody finished training


@needs_mpi
@pytest.mark.gpu
def test_nccl_on_one_gpu_rank_matches_the_cpu(tmp_path):
    from fastnn.backend import cuda_device_count

    try:
        import_nccl()
        cuda_device_count()
    except BackendUnavailable as e:
        pytest.skip(str(e))
    config = dict(CONFIGS["sigmoid-momentum-l2"], device="cuda")
    run = mpirun((1, [str(WORKER), str(tmp_path), json.dumps(config)]), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    (rank,) = rank_results(tmp_path, 1)
    assert str(rank["device"]) == "cuda:0"
    net, _ = train(CONFIGS["sigmoid-momentum-l2"])
    np.testing.assert_allclose(rank["params"], net.params, rtol=1e-9, atol=1e-12)


# -- GPU ranks on the cupy test double (NCCL's all-reduce done over MPI: see tests/cupy_double) ----

@needs_mpi
def test_ranks_that_each_see_one_gpu_as_cuda0_train_together(tmp_path):
    """SLURM's --gpus-per-task=1: each rank's CUDA_VISIBLE_DEVICES shows it one GPU, as cuda:0."""
    config = dict(CONFIGS["sigmoid-momentum-l2"], device="cuda", visible_devices=["0", "1"])
    run = mpirun((2, [str(WORKER), str(tmp_path), json.dumps(config)]), cwd=tmp_path,
                 env=double_env(CUPY_DOUBLE_GPUS=2))
    assert run.returncode == 0, run.stderr
    net, _ = train(CONFIGS["sigmoid-momentum-l2"])
    for rank in rank_results(tmp_path, 2):
        assert str(rank["device"]) == "cuda:0"
        np.testing.assert_allclose(rank["params"], net.params, rtol=1e-9, atol=1e-12)


@needs_mpi
def test_ranks_that_share_one_gpu_are_refused(tmp_path):
    config = dict(CONFIGS["sigmoid-momentum-l2"], device="cuda", visible_devices=["1", "1"])
    run = mpirun((2, [str(WORKER), str(tmp_path), json.dumps(config)]), cwd=tmp_path,
                 env=double_env(CUPY_DOUBLE_GPUS=2))
    assert run.returncode != 0
    assert "ranks 0 and 1 share the GPU at PCI bus id 0000:02:00.0 on " in run.stderr, run.stderr
    assert "(cuda:0 and cuda:0 there), but NCCL needs one GPU per rank" in run.stderr, run.stderr
