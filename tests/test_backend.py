"""The backend layer: device strings, the CPU fallback notice, and CUDA asked for by name."""

import logging

import numpy as np
import pytest

from fastnn import BackendUnavailable, ConfigError, backend, get_backend

from .conftest import cuda_reason


@pytest.fixture
def no_cupy(monkeypatch):
    """Make this process behave as if cupy could not be imported."""
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", "cupy cannot be imported (ModuleNotFoundError: test)")
    monkeypatch.setattr(backend, "_cache", {})


def test_auto_without_cupy_installed_picks_the_cpu_quietly(no_cupy, monkeypatch, caplog):
    monkeypatch.setattr(backend, "cupy_installed", lambda: False)
    with caplog.at_level(logging.WARNING, logger="fastnn"):
        b = get_backend("auto")
    assert b.device == "cpu" and caplog.records == []
    assert "cupy cannot be imported" in b.reason  # fastnn info says why


def test_auto_with_cupy_installed_but_unusable_falls_back_with_one_notice(no_cupy, monkeypatch, caplog):
    monkeypatch.setattr(backend, "cupy_installed", lambda: True)
    with caplog.at_level(logging.WARNING, logger="fastnn"):
        b = get_backend("auto")
        again = get_backend("auto")
    assert b is again and b.xp is np and b.device == "cpu"
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1 and "\n" not in notices[0]
    assert "no usable CUDA GPU" in notices[0] and "cupy cannot be imported" in notices[0]
    assert "training" not in notices[0]  # evaluate and predict use the same words
    assert "cupy cannot be imported" in b.reason


def test_cuda_by_name_without_a_device_raises(no_cupy):
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(BackendUnavailable, match="cupy cannot be imported"):
            get_backend(spec)


def test_device_from_environment(no_cupy, monkeypatch):
    monkeypatch.setenv("FASTNN_DEVICE", "cpu")
    assert get_backend().device == "cpu"
    monkeypatch.setenv("FASTNN_DEVICE", "cuda")
    with pytest.raises(BackendUnavailable):
        get_backend()


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "cpu:0", ""])
def test_bad_device_strings(spec):
    with pytest.raises(ConfigError, match="auto, cpu, cuda, cuda:N"):
        get_backend(spec)


def test_cpu_round_trip_and_gather():
    b = get_backend("cpu")
    a = b.to_device(np.arange(12, dtype=np.float64).reshape(4, 3), "float32")
    assert a.dtype == np.float32 and a.flags.c_contiguous
    out = np.empty((2, 3), np.float32)
    b.take_rows(a, np.array([3, 1]), out=out)
    np.testing.assert_array_equal(b.to_host(out), [[9, 10, 11], [3, 4, 5]])
    b.synchronize()


@pytest.mark.gpu
def test_cuda_backend_round_trip():
    reason = cuda_reason()
    if reason:
        pytest.skip(f"no CUDA device: {reason}")
    b = get_backend("cuda")
    a = b.to_device(np.arange(6.0).reshape(2, 3), "float32")
    assert type(a).__module__.startswith("cupy") and b.to_host(a).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert "gpu" in b.describe()
