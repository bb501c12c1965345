"""--precision fp32|tf32: validated at the door, ignored with one notice on the CPU, and on cupy the
float32 compute type is TF32 during training and restored after (a stand-in for cupy's _core)."""

import logging

import numpy as np
import pytest

from fastnn import Network
from fastnn.backend import Backend, matmul_precision
from fastnn.errors import ConfigError
from tests.conftest import fastnn

TF32, DEFAULT = 7, 1  # cupy._core._routines_linalg.COMPUTE_TYPE_TF32, COMPUTE_TYPE_DEFAULT


def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((20, 4)).astype(np.float32), rng.integers(0, 3, 20)


def test_bad_precision_and_float64_are_refused():
    X, y = data()
    with pytest.raises(ConfigError, match=r"^precision must be one of fp32, tf32; got 'fp16'$"):
        Network([4, 3], device="cpu").fit(X, y, 1, 5, 0.1, precision="fp16")
    with pytest.raises(ConfigError, match=r"^precision 'tf32' is for float32 networks; this one is float64"):
        Network([4, 3], device="cpu", dtype="float64").fit(X, y, 1, 5, 0.1, precision="tf32")


def test_tf32_on_the_cpu_is_one_notice_and_fp32(caplog):
    X, y = data()
    with caplog.at_level(logging.WARNING, logger="fastnn"):
        history = Network([4, 3], device="cpu", seed=0).fit(X, y, 2, 5, 0.1, precision="tf32")
    assert [r.getMessage() for r in caplog.records] == ["fastnn: precision tf32 has no effect on the CPU; training in fp32"]
    assert [r["precision"] for r in history.records] == ["fp32", "fp32"]
    plain = Network([4, 3], device="cpu", seed=0).fit(X, y, 2, 5, 0.1)
    assert history.loss == plain.loss  # the same run as fp32


class FakeCore:
    """cupy._core's compute-type switch, recorded."""

    class _routines_linalg:
        COMPUTE_TYPE_TF32, COMPUTE_TYPE_DEFAULT = TF32, DEFAULT

    def __init__(self):
        self.types = {np.float32: DEFAULT}

    def get_compute_type(self, dtype):
        return self.types[dtype]

    def set_compute_type(self, dtype, kind):
        self.types[dtype] = kind


def fake_cuda():
    xp = type("xp", (), {})()
    xp._core = FakeCore()
    return Backend("cupy", xp, "cuda:0", "a stand-in"), xp._core


def test_tf32_sets_cupys_compute_type_during_the_block_and_restores_it():
    backend, core = fake_cuda()
    with matmul_precision(backend, "tf32"):
        assert core.types[np.float32] == TF32
    assert core.types[np.float32] == 1
    with pytest.raises(KeyboardInterrupt), matmul_precision(backend, "tf32"):
        raise KeyboardInterrupt
    assert core.types[np.float32] == 1
    core.types[np.float32] = TF32  # as CUPY_TF32=1 leaves it
    with matmul_precision(backend, "fp32"):
        assert core.types[np.float32] == DEFAULT
    assert core.types[np.float32] == TF32


def test_cli_precision(tiny):
    run = fastnn("train", "--dataset", tiny, "--layers", "4,8,3", "--epochs", 1, "--precision", "tf32", "--seed", 1)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == ["fastnn: precision tf32 has no effect on the CPU; training in fp32"]
    bad = fastnn("train", "--dataset", tiny, "--precision", "fp8")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "--precision" in bad.stderr
    info = fastnn("info")
    assert any(line.startswith("precision: fp32") for line in info.stdout.splitlines()), info.stdout
