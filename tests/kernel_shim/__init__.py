"""Build fastnn's CUDA kernels for the CPU (g++ against shim.h) and call them with ctypes on numpy arrays.

The .cu source that runs on the GPU is the one compiled here; only the CUDA keywords are mapped
(see shim.h).  Building needs g++ with C++20 (std::barrier); each library is built once per session.
"""

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

_f32 = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
_f64 = np.ctypeslib.ndpointer(np.float64, flags="C_CONTIGUOUS")
_i64 = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")
_i32 = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")
_c = ctypes
# shim_fused_epoch(blocks, threads, shared bytes, then the kernel's arguments: see cuda_fused.kernel_arguments)
FUSED_ARGS = [_c.c_int, _c.c_int, _c.c_size_t, _f32, _f32, _i64, _c.c_int, _c.c_int, _i32, _c.c_int, _c.c_int,
              _c.c_int, _c.c_int, _f32, _f32, _c.c_int, _f64, _f32, _f64]


def compiler_reason():
    """None when g++ is here, else why these tests cannot build."""
    return None if shutil.which("g++") else "g++ is not installed"


def build(source, out_dir, name, defines=()):
    """Compile ``source`` (a .cpp that includes shim.h) into out_dir/name.so; returns the ctypes CDLL."""
    lib = Path(out_dir) / f"{name}.so"
    cmd = ["g++", "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-Wall", "-Werror", "-Wno-unknown-pragmas",
           f"-I{HERE}", *(f"-D{d}" for d in defines), "-o", str(lib), str(source)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"g++ failed:\n{done.stderr}")
    return ctypes.CDLL(str(lib))


_built = {}  # (source, name) -> the library, so each is built once per test session


def fused_library(out_dir, source=None, name="fused_epoch", defines=()):
    """The fused epoch kernel built for the CPU: fastnn/engines/cuda_fused.cu, or the CUDA C ``source``;
    ``defines`` as the host's compile options give them (e.g. "FASTNN_MB=4")."""
    key = (source, name, tuple(defines))
    if key not in _built:
        _built[key] = _build_fused(Path(out_dir), source, name, defines)
    return _built[key]


def _build_fused(out_dir, source, name, defines=()):
    cpp = HERE / "fused_epoch.cpp"
    if source is not None:  # a variant of the kernel (the tests' deliberately wrong one)
        (Path(out_dir) / f"{name}.cu").write_text(source)
        text = cpp.read_text().replace('"../../fastnn/engines/cuda_fused.cu"', f'"{name}.cu"')
        cpp = Path(out_dir) / f"{name}.cpp"
        cpp.write_text(text)
    lib = build(cpp, out_dir, name, defines)
    lib.shim_fused_epoch.argtypes = FUSED_ARGS
    lib.shim_fused_epoch.restype = ctypes.c_int
    lib.shim_copied.restype = ctypes.c_longlong
    return lib
