"""Memory limits read from where they are (fastnn/memory.py; issue 20, item 11): cgroup v1 and v2 (this process's
cgroup and its parents), RLIMIT_AS and RLIMIT_DATA, MemAvailable; what cannot fit is refused in one line before it
is allocated."""

import os
import subprocess
import sys

import numpy as np
import pytest

from fastnn import ConfigError, DataError, Network, load_dataset, memory
from fastnn import predict as predict_module

from .conftest import ROOT

MiB = 1 << 20


def fake_machine(tmp_path, cgroup, limit, usage, version):
    """A cgroup tree and a /proc/self under ``tmp_path`` with ``limit`` bytes for this process's cgroup."""
    root, proc = tmp_path / "cgroup", tmp_path / "proc" / "self"
    proc.mkdir(parents=True)
    if version == 1:
        (proc / "cgroup").write_text(f"5:devices:/\n4:memory:{cgroup}\n0::/\n")
        folder = root / "memory" / cgroup.lstrip("/")
        folder.mkdir(parents=True)
        (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # the top: no limit
        (folder / "memory.limit_in_bytes").write_text(f"{limit}\n")
        (folder / "memory.usage_in_bytes").write_text(f"{usage}\n")
    else:
        (proc / "cgroup").write_text(f"0::{cgroup}\n")
        folder = root / cgroup.lstrip("/")
        folder.mkdir(parents=True)
        (root / "memory.max").write_text("max\n")
        (folder.parent / "memory.max").write_text(f"{limit}\n")  # a parent's limit holds for its children
        (folder / "memory.max").write_text("max\n")
        (folder / "memory.current").write_text(f"{usage}\n")
        (folder.parent / "memory.current").write_text(f"{usage}\n")
    (proc.parent / "meminfo").write_text("MemTotal: 100000000 kB\nMemAvailable: 90000000 kB\n")
    (proc / "status").write_text("VmSize: 1000 kB\nVmData: 500 kB\n")
    return root, proc


@pytest.mark.parametrize("version", [1, 2])
def test_the_cgroup_limit_is_read_for_v1_and_v2(tmp_path, version):
    root, proc = fake_machine(tmp_path, "/jobs/run7", 512 * MiB, 100 * MiB, version)
    limits = memory.memory_limits(root=root, proc=proc)
    size, where = min(limits)
    assert size == 412 * MiB and ("memory.limit_in_bytes" if version == 1 else "memory.max") in where
    assert (90000000 * 1024, "the memory available now (MemAvailable)") in limits


@pytest.fixture
def limited(tmp_path, monkeypatch):
    """This process under a fake cgroup v1 limit of 4 MiB."""
    root, proc = fake_machine(tmp_path, "/small", 6 * MiB, 2 * MiB, 1)
    monkeypatch.setattr(memory, "CGROUP_ROOT", str(root))
    monkeypatch.setattr(memory, "PROC_SELF", str(proc))
    return tmp_path


def test_a_dataset_larger_than_the_cgroup_is_refused_before_it_is_read(limited):
    X = np.zeros((1200, 784), np.float32)  # 3.6 MiB: each array fits in the 4 MiB left, the two together do not
    np.savez(limited / "big.npz", x_train=X, y_train=np.zeros(1200), x_test=X, y_test=np.zeros(1200))
    with pytest.raises(DataError, match=r"big.npz: its arrays declare 7.2\d* MiB in all.*memory.limit_in_bytes of 6 MiB"):
        load_dataset(str(limited / "big.npz"))
    np.savez(limited / "one.npz", x_train=np.zeros((2000, 784), np.float32), y_train=np.zeros(2000),
             x_test=X[:10], y_test=np.zeros(10))
    with pytest.raises(DataError, match=r"x_train declares shape \(2000, 784\).*memory.limit_in_bytes of 6 MiB"):
        load_dataset(str(limited / "one.npz"))


def test_predict_on_a_csv_larger_than_the_cgroup_is_refused_before_it_is_parsed(limited):
    (limited / "big.csv").write_bytes(b"0.5,0.25,0.125,1\n" * 80000)  # 1.4 MB of text, up to 5.4 MB of numbers
    with pytest.raises(DataError, match=r"big.csv is 1.3\d* MiB of text.*memory.limit_in_bytes of 6 MiB"):
        predict_module.read_inputs(limited / "big.csv")


def test_a_network_larger_than_the_cgroup_is_refused_before_it_is_made(limited):
    with pytest.raises(ConfigError, match="more than the 4 MiB of memory cpu can give"):
        Network([784, 1000, 10], device="cpu")


RLIMIT = """
import resource, sys
import numpy as np
from fastnn import predict
size = int(open("/proc/self/status").read().split("{used}:")[1].split()[0]) * 1024
resource.setrlimit(resource.{name}, (size + (64 << 20), resource.RLIM_INFINITY))
try:
    predict.read_inputs(sys.argv[1])
except Exception as e:
    print(type(e).__name__, e)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
@pytest.mark.parametrize("name", ["RLIMIT_AS", "RLIMIT_DATA"])
def test_an_rlimit_is_honoured(tmp_path, name):
    np.save(tmp_path / "x.npy", np.zeros((12000, 784)))  # 75 MB
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", RLIMIT.replace("{name}", name).replace("{used}", {"RLIMIT_AS": "VmSize", "RLIMIT_DATA": "VmData"}[name]), str(tmp_path / "x.npy")],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.stdout.startswith("DataError") and f"{name} of" in done.stdout, done.stdout + done.stderr
