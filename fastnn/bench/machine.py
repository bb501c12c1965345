"""Facts about this machine and its software, for ``fastnn info`` and benchmark reports."""

import datetime
import os
import platform
import sys

import numpy as np

from .. import __version__
from .. import threads as thread_policy
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
        "blas_threads": thread_policy.blas_threads() or "unknown (no BLAS that threadpoolctl knows)",
        "blas_libraries": "; ".join(f"{lib['api']} {lib['version']} ({lib['threading']}, {lib['threads']} threads) "
                                    f"{lib['file']}" for lib in thread_policy.libraries()) or "none found",
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
