"""The array backend: numpy on the CPU or cupy on a CUDA GPU, chosen from one device string.

This is the only module that imports cupy.  Everything else asks a Backend for its array
module ``xp`` and moves arrays across the host/device line with ``to_device``/``to_host``.
"""

import contextlib
import importlib.util
import logging
import os

import numpy as np

from .errors import BackendUnavailable, ConfigError
from .readers import host_memory

log = logging.getLogger("fastnn")

_cupy = None
_cupy_error = None
_cache = {}


def import_cupy():
    """Return the cupy module, or raise BackendUnavailable saying why it cannot be imported."""
    global _cupy, _cupy_error
    if _cupy is None and _cupy_error is None:
        try:
            import cupy

            _cupy = cupy
        except Exception as e:  # noqa: BLE001 - ImportError, or a broken CUDA install raising at import
            _cupy_error = f"cupy cannot be imported ({type(e).__name__}: {e})"
    if _cupy is None:
        raise BackendUnavailable(_cupy_error)
    return _cupy


def cupy_installed():
    """True when a cupy package is installed (whether or not it imports)."""
    return importlib.util.find_spec("cupy") is not None


def import_nccl():
    """Return cupy's NCCL bindings (cupy.cuda.nccl), or raise BackendUnavailable saying why."""
    import_cupy()
    try:
        from cupy.cuda import nccl
    except Exception as e:
        raise BackendUnavailable(f"cupy's NCCL bindings cannot be imported ({type(e).__name__}: {e})") from e
    if not getattr(nccl, "available", True):
        raise BackendUnavailable("cupy cannot load the NCCL library; install it with 'pip install nvidia-nccl-cu12' "
                                 "(or cu13), or 'python -m cupyx.tools.install_library --library nccl'")
    return nccl


def cuda_device_count():
    """How many CUDA devices the driver shows; BackendUnavailable with the cause when it cannot say."""
    cp = import_cupy()
    try:
        return cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise BackendUnavailable(f"no usable CUDA driver or device ({type(e).__name__}: {e})") from e


def is_device_array(a):
    """True when ``a`` is a cupy array (checked without importing cupy)."""
    return type(a).__module__.split(".")[0] == "cupy"


class Backend:
    """An array module ``xp`` and the device it computes on ("cpu" or "cuda:N")."""

    def __init__(self, name, xp, device, reason):
        self.name = name  # "numpy" or "cupy"
        self.xp = xp
        self.device = device  # "cpu" or "cuda:N"
        self.reason = reason  # one sentence: why this backend was chosen

    def __repr__(self):
        return f"Backend({self.device}, {self.name})"

    @property
    def is_cuda(self):
        return self.name == "cupy"

    def activate(self):
        """A context manager inside which this backend's device is the current one (``with cupy.cuda.Device(i)``),
        so that arrays, kernels and their attributes land on it; the device current before is restored after.
        A no-op on the CPU.  Every computation of a network runs inside its own (see ``Network``)."""
        if self.is_cuda:
            return self.xp.cuda.Device(self.index)
        return contextlib.nullcontext()

    def use(self):
        """Make this backend's device the current one for the rest of the thread (a no-op on the CPU): for a
        command's own array code outside a network's methods, such as a benchmark's; networks need no such call."""
        if self.is_cuda:
            self.xp.cuda.Device(self.index).use()

    def to_device(self, a, dtype=None):
        """Return ``a`` as a C-contiguous array of this backend (no copy when it already is one)."""
        if self.is_cuda:
            with self.xp.cuda.Device(self.index):
                return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))
        if is_device_array(a):
            a = a.get()
        return np.ascontiguousarray(a, dtype=dtype)

    def to_host(self, a):
        """Return ``a`` as a numpy array."""
        return a.get() if is_device_array(a) else np.asarray(a)

    def synchronize(self):
        """Wait until every kernel queued on the device has finished (no-op on the CPU)."""
        if self.is_cuda:
            self.xp.cuda.Device(self.index).synchronize()

    def take_rows(self, src, idx, out):
        """out[i] = src[idx[i]]: gather a mini-batch into a preallocated buffer."""
        if self.is_cuda:
            return self.xp.take(src, idx, axis=0, out=out)
        return src.take(idx, axis=0, out=out, mode="clip")  # "raise" would buffer

    def gpu_id(self):
        """The GPU's PCI bus id ("0000:3B:00.0"): the same GPU has the same id in every process, whatever
        index CUDA_VISIBLE_DEVICES gives it there.  None on the CPU."""
        if not self.is_cuda:
            return None
        return self.xp.cuda.runtime.deviceGetPCIBusId(self.index)

    def memory(self):
        """Bytes of memory on this device: the GPU's total, or what this process may use of the host's."""
        if self.is_cuda:
            return int(self.xp.cuda.runtime.getDeviceProperties(self.index)["totalGlobalMem"])
        return host_memory()

    @property
    def index(self):
        return int(self.device.split(":")[1]) if self.is_cuda else None

    def describe(self):
        """A dict of facts about the device, for ``fastnn info`` and benchmark reports."""
        facts = {"device": self.device, "array_module": self.name, "reason": self.reason}
        if self.is_cuda:
            cp = self.xp
            props = cp.cuda.runtime.getDeviceProperties(self.index)
            name = props["name"]
            facts["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
            facts["gpu_memory_bytes"] = int(props["totalGlobalMem"])
            facts["cupy"] = cp.__version__
            facts["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
            facts["cuda_driver"] = cp.cuda.runtime.driverGetVersion()
        return facts


# Words in the messages of cupy's CUDA, cuBLAS and driver errors that mean "out of memory".
_OOM_WORDS = ("CUBLAS_STATUS_ALLOC_FAILED", "cudaErrorMemoryAllocation", "CUDA_ERROR_OUT_OF_MEMORY")


def is_out_of_memory(exc):
    """True when ``exc`` says the device or the host ran out of memory.

    That is a MemoryError (numpy's, and cupy's OutOfMemoryError, which derives from it), or an
    error of cupy's CUDA runtime, driver or cuBLAS bindings reporting a failed allocation.  The
    classes are recognised by module and name, so this works without importing cupy.
    """
    if isinstance(exc, MemoryError):
        return True
    kinds = type(exc).__mro__
    if not any(k.__module__.split(".")[0] in ("cupy", "cupy_backends") for k in kinds):
        return False
    return any(k.__name__ == "OutOfMemoryError" for k in kinds) or any(w in str(exc) for w in _OOM_WORDS)


def out_of_memory_message(device, exc, batch_size=None):
    """One sentence for running out of memory on ``device``: what happened and what to try."""
    text = str(exc).strip()
    cause = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
    smaller = f"a smaller batch size than {batch_size}" if batch_size is not None else "a smaller batch size"
    if device == "cpu":
        advice = f"try {smaller}, a smaller network or less data"
    else:
        advice = f"try {smaller} (--batch-size) or the CPU (--device cpu)"
    return f"out of memory on {device} ({cause}); {advice}"


# CUDA errors after which the context is dead ("sticky"): every later call in the process fails the same way,
# so nothing can be cleaned up, copied back or retried on that device.  Code: (runtime name, driver name).
STICKY_FAULTS = {
    214: ("cudaErrorECCUncorrectable", "CUDA_ERROR_ECC_UNCORRECTABLE"),
    702: ("cudaErrorLaunchTimeout", "CUDA_ERROR_LAUNCH_TIMEOUT"),
    710: ("cudaErrorAssert", "CUDA_ERROR_ASSERT"),
    714: ("cudaErrorHardwareStackError", "CUDA_ERROR_HARDWARE_STACK_ERROR"),
    715: ("cudaErrorIllegalInstruction", "CUDA_ERROR_ILLEGAL_INSTRUCTION"),
    716: ("cudaErrorMisalignedAddress", "CUDA_ERROR_MISALIGNED_ADDRESS"),
    717: ("cudaErrorInvalidAddressSpace", "CUDA_ERROR_INVALID_ADDRESS_SPACE"),
    718: ("cudaErrorInvalidPc", "CUDA_ERROR_INVALID_PC"),
    719: ("cudaErrorLaunchFailure", "CUDA_ERROR_LAUNCH_FAILED"),
    700: ("cudaErrorIllegalAddress", "CUDA_ERROR_ILLEGAL_ADDRESS"),
}


def sticky_fault(exc):
    """The sticky CUDA error in ``exc`` or its causes (see STICKY_FAULTS), or None.

    cupy raises them as CUDARuntimeError (runtime) or CUDADriverError (driver, kernel launches), with the code in
    ``status`` and the name first in the message; they are recognised by module, code and name, so this works
    without importing cupy.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(k.__module__.split(".")[0] in ("cupy", "cupy_backends") for k in type(exc).__mro__):
            status = getattr(exc, "status", None)
            text = str(exc)
            if status in STICKY_FAULTS or any(n in text for names in STICKY_FAULTS.values() for n in names):
                return exc
        exc = exc.__cause__ or exc.__context__
    return None


def is_sticky_fault(exc):
    """True when ``exc`` (or a cause of it) is a sticky CUDA error: the context is dead."""
    return sticky_fault(exc) is not None


def context_lost_message(device, exc, engine=None):
    """One sentence for a sticky CUDA fault on ``device`` (in the ``engine`` engine): what happened, what to do."""
    fault = sticky_fault(exc) or exc
    text = (str(fault).strip().splitlines() or [""])[0]
    cause = f"{type(fault).__name__}: {text}" if text else type(fault).__name__
    where = f" in the {engine} engine" if engine else ""
    if engine in (None, "generic"):
        advice = "rerun the command (with --device cpu if it happens again)"
    else:
        advice = "rerun with --engine generic"
    return (f"the CUDA context on {device} is unusable after a fault{where} ({cause}): nothing more can run on it "
            f"in this process and no fallback was tried; {advice}")


def parse_device(spec):
    """Split a device string into ("auto" | "cpu" | "cuda", index or None)."""
    text = str(spec).strip().lower()
    if text in ("auto", "cpu"):
        return text, None
    if text == "cuda":
        return "cuda", 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise ConfigError(f"device must be one of auto, cpu, cuda, cuda:N; got {spec!r}")


def _smoke_test(xp, to_host):
    """One matmul, a reduction and an exp on ``xp``, and the same on the host: (got, expected)."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    expected = np.float64((a @ a.T).sum() + np.exp(np.zeros(1, np.float32)).sum())
    d = xp.asarray(a)
    got = to_host((d @ d.T).sum() + xp.exp(xp.zeros(1, dtype=xp.float32)).sum())
    return np.float64(got), expected


def _cuda_backend(index):
    """A cupy Backend on cuda:index, after a smoke test; BackendUnavailable with the cause if not."""
    cp = import_cupy()
    count = cuda_device_count()
    if index >= count:
        raise BackendUnavailable(f"cuda:{index} was asked for, but {count} CUDA device(s) were found")
    try:
        with cp.cuda.Device(index):
            got, expected = _smoke_test(cp, cp.asnumpy)
    except Exception as e:
        raise BackendUnavailable(f"the smoke test on cuda:{index} failed ({type(e).__name__}: {e})") from e
    if got != expected:
        raise BackendUnavailable(f"the smoke test on cuda:{index} computed {got}, but numpy on the host computed "
                                 f"{expected}")
    # The current device is left as it was: a backend's work runs inside Backend.activate(), so that two backends
    # on two GPUs in one process never cross (the one made last used to become current for every network).
    return Backend("cupy", cp, f"cuda:{index}", f"cuda:{index} was asked for and passed a smoke test")


PRECISIONS = ("fp32", "tf32")


@contextlib.contextmanager
def matmul_precision(backend, precision):
    """Run float32 matmuls in ``precision`` while the block runs, then restore what was set.

    On cupy, "tf32" sets cupy's compute type for float32 to TF32, so cuBLAS may round the inputs of
    float32 GEMMs to TF32 on tensor cores (compute capability 8.0+; cupy warns and uses fp32 below
    that), and "fp32" sets it to the default, plain fp32 even under CUPY_TF32=1.  On numpy nothing
    changes.  Not yet run on a GPU: written from cupy's source (cupy._core.set_compute_type,
    COMPUTE_TYPE_TF32/DEFAULT) and checked with a stand-in in the tests.
    """
    if not backend.is_cuda:
        yield
        return
    core = backend.xp._core
    linalg = core._routines_linalg
    kind = getattr(linalg, "COMPUTE_TYPE_TF32", 7) if precision == "tf32" else getattr(linalg, "COMPUTE_TYPE_DEFAULT", 1)
    before = core.get_compute_type(np.float32)
    core.set_compute_type(np.float32, kind)
    try:
        yield
    finally:
        core.set_compute_type(np.float32, before)


def describe_precision(backend):
    """What ``fastnn info`` says of --precision on ``backend``."""
    if backend.is_cuda:
        return "fp32 (default); --precision tf32 runs float32 cuBLAS matmuls on TF32 tensor cores"
    return "fp32 (--precision tf32 needs a CUDA GPU; on the CPU it is ignored with a notice)"


def _cuda_fix(spec, from_env):
    """What to do when the CUDA device asked for cannot be used: install cupy, or train on the CPU."""
    asked = f" (FASTNN_DEVICE={spec} asked for it: unset it)" if from_env else ""
    if _cupy is None:  # cupy did not import: installing it (for the machine's CUDA) is the fix
        return f'install cupy with pip install ".[cuda12]" (or ".[cuda13]"), or use --device cpu{asked}'
    return f"use --device cpu{asked}"


def get_backend(spec=None):
    """Return the Backend for ``spec`` ("auto", "cpu", "cuda", "cuda:N"; default $FASTNN_DEVICE or auto).

    "auto" uses CUDA only when cupy imports and a smoke test on the GPU passes; otherwise it
    falls back to numpy, and logs one notice line that names the cause when cupy is installed but
    unusable (with no cupy installed the CPU is simply the choice; ``reason`` says why either way).  "cuda"/"cuda:N" asked
    for by name raises BackendUnavailable with the cause when they cannot be used.
    """
    if isinstance(spec, Backend):
        return spec
    from_env = spec is None and "FASTNN_DEVICE" in os.environ
    if spec is None:
        spec = os.environ.get("FASTNN_DEVICE", "auto")
    kind, index = parse_device(spec)
    key = (kind, index)
    if key in _cache:
        return _cache[key]
    if kind == "cpu":
        backend = Backend("numpy", np, "cpu", "the CPU was asked for")
    elif kind == "cuda":
        try:
            backend = _cuda_backend(index)
        except BackendUnavailable as e:
            if _cupy is not None and not from_env:  # cupy is there: the message names the device's fault
                raise
            raise BackendUnavailable(f"{e}; {_cuda_fix(spec, from_env)}") from e
    else:
        try:
            backend = _cuda_backend(0)
            backend.reason = "auto: cuda:0 passed a smoke test"
        except BackendUnavailable as e:
            backend = Backend("numpy", np, "cpu", f"auto: no usable CUDA GPU: {e}")
            if cupy_installed():  # installed, yet unusable: worth a notice
                log.warning("fastnn: no usable CUDA GPU (%s); using the CPU with numpy", e)
    _cache[key] = backend
    return backend
