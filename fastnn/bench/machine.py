"""Facts about this machine and its software, for ``fastnn info`` and benchmark reports."""

import ctypes
import datetime
import os
import platform
import sys

import numpy as np

from .. import __version__
from ..backend import import_cupy
from ..errors import BackendUnavailable


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas():
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}".strip()
    except Exception:  # noqa: BLE001 - older numpy, or a build without that section
        return "unknown"


def _openblas():
    """The OpenBLAS library numpy loaded (read from /proc/self/maps), or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
        for path in sorted(p for p in paths if p.startswith("/")):
            return ctypes.CDLL(path)
    except OSError:
        pass
    return None


def _openblas_function(lib, name):
    """OpenBLAS's ``name`` under whichever prefix and suffix this build uses, or None."""
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_"):
            f = getattr(lib, f"{prefix}{name}{suffix}", None)
            if f is not None:
                return f
    return None


def blas_threads(n=None):
    """Set OpenBLAS's thread count to n (when given) and return the count in use, or None.

    Works for the OpenBLAS that numpy wheels bundle; other BLAS libraries read their
    environment variables (OMP_NUM_THREADS, MKL_NUM_THREADS) at start-up only.
    """
    lib = _openblas()
    get = lib and _openblas_function(lib, "openblas_get_num_threads")
    if not get:
        return None
    if n is not None:
        _openblas_function(lib, "openblas_set_num_threads")(int(n))
    return int(get())


def _version(module):
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - a broken package must not break the report
        return None


def facts(backend=None):
    """A flat dict of versions and hardware facts (the backend's device facts included)."""
    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fastnn": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "numpy": np.__version__,
        "blas": _blas(),
        "blas_threads": blas_threads() or os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
        or "default",
        "tqdm": _version("tqdm"),
        "torch": _version("torch") if "torch" in sys.modules else None,
    }
    try:
        out["cupy"] = import_cupy().__version__
    except BackendUnavailable as e:
        out["cupy"] = f"unavailable: {e}"
    if backend is not None:
        out.update(backend.describe())
    return out
