"""Compile CUDA C with NVRTC through ctypes: no GPU, driver or cupy needed.

NVRTC 12 comes from the nvidia-cuda-nvrtc-cu12 wheel, NVRTC 13 (cupy-cuda13x's) from nvidia-cuda-nvrtc 13.x.
"""

import ctypes
from pathlib import Path


def library_reason():
    """None when the NVRTC library loads, else why not."""
    try:
        _library()
    except (ImportError, OSError) as e:
        return f"NVRTC is not installed ({type(e).__name__}: {e}); pip install nvidia-cuda-nvrtc-cu12"
    return None


_libs = {}  # major version -> the loaded library


def _library(version=12):
    if version not in _libs:
        if version == 12:
            import nvidia.cuda_nvrtc as package
        else:
            import nvidia.cu13 as package
        folder = Path(next(iter(package.__path__))) / "lib"
        _libs[version] = ctypes.CDLL(str(folder / f"libnvrtc.so.{version}"))
    return _libs[version]


def _check(lib, status, prog=None):
    if status:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise RuntimeError(f"NVRTC: {lib.nvrtcGetErrorString(status).decode()}\n{_log(lib, prog) if prog else ''}")


def _log(lib, prog):
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    text = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, text)
    return text.value.decode(errors="replace")


def compile_cubin(source, arch, options=(), name="kernel.cu", version=12):
    """Compile ``source`` for sm_``arch`` (e.g. 90) with NVRTC ``version``; returns (cubin bytes, the log)."""
    lib = _library(version)
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None))
    try:
        opts = [f"-arch=sm_{arch}".encode(), *(o.encode() for o in options)]
        argv = (ctypes.c_char_p * len(opts))(*opts)
        _check(lib, lib.nvrtcCompileProgram(prog, len(opts), argv), prog)
        log = _log(lib, prog)
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)))
        cubin = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetCUBIN(prog, cubin))
        return cubin.raw, log
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
