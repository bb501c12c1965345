"""cupy.cuda.runtime of the double: the devices it pretends to have, set by environment variables.

CUPY_DOUBLE_GPUS       how many GPUs the machine has (default 1; 0: a driver without devices)
CUPY_DOUBLE_NO_DRIVER  "1": cupy imports, but every call to the driver fails with
                       cudaErrorInsufficientDriver, as real cupy does on a machine without a driver
CUPY_DOUBLE_MEMORY     bytes of memory per GPU (default 16 GiB)
CUDA_VISIBLE_DEVICES   as CUDA reads it: the physical GPUs this process sees, in order (indices)
CUPY_DOUBLE_FAULT      "[driver:]CODE[@AFTER]", read at import: after AFTER device operations (default 0) a
                       sticky fault CODE (700, 715, 716, 719, ...) kills the context of the device that ran the
                       next one (see ``inject_fault``)

A device operation (``launch``) is what a kernel launch, an allocation or a synchronisation is on a GPU: every
operation of the double's arrays counts as one.  A dead context fails every later operation on its device
with its error (CUDARuntimeError, or CUDADriverError for a fault seen by the driver, as a RawKernel launch sees
it), as CUDA does after a sticky fault; the other devices go on.
"""

import hashlib
import os

MESSAGES = {
    35: "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version",
    100: "cudaErrorNoDevice: no CUDA-capable device is detected",
    101: "cudaErrorInvalidDevice: invalid device ordinal",
    2: "cudaErrorMemoryAllocation: out of memory",
    700: "cudaErrorIllegalAddress: an illegal memory access was encountered",
    715: "cudaErrorIllegalInstruction: an illegal instruction was encountered",
    716: "cudaErrorMisalignedAddress: misaligned address",
    719: "cudaErrorLaunchFailure: unspecified launch failure",
}


class CUDARuntimeError(RuntimeError):
    """cupy_backends.cuda.api.runtime.CUDARuntimeError: ``status`` and cupy's message."""

    def __init__(self, status):
        self.status = status
        super().__init__(MESSAGES.get(status, f"cudaError {status}"))


CUDARuntimeError.__module__ = "cupy_backends.cuda.api.runtime"

RUNTIME_VERSION = 12080  # what the double reports as its CUDA runtime and driver: 12.8


def _check_driver():
    if os.environ.get("CUPY_DOUBLE_NO_DRIVER") == "1":
        raise CUDARuntimeError(35)


def physical_count():
    return int(os.environ.get("CUPY_DOUBLE_GPUS", "1"))


def visible():
    """The physical indices of the GPUs this process sees, as CUDA_VISIBLE_DEVICES selects them."""
    count = physical_count()
    spec = os.environ.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return list(range(count))
    found = []
    for item in spec.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) >= count or int(item) in found:
            break  # CUDA stops at the first entry it cannot use
        found.append(int(item))
    return found


def physical(device):
    """The physical index of visible device ``device``; cudaErrorInvalidDevice when there is none."""
    _check_driver()
    shown = visible()
    if not 0 <= int(device) < len(shown):
        raise CUDARuntimeError(101)
    return shown[int(device)]


def memory_bytes():
    return int(os.environ.get("CUPY_DOUBLE_MEMORY", str(16 << 30)))


def getDeviceCount():
    _check_driver()
    return len(visible())


def getDeviceProperties(device):
    p = physical(device)
    return {"name": b"cupy test double (numpy on the CPU)", "totalGlobalMem": memory_bytes(), "major": 9,
            "minor": 0, "multiProcessorCount": 1, "sharedMemPerBlock": 49152, "sharedMemPerBlockOptin": 232448, "pciDomainID": 0, "pciBusID": p + 1, "pciDeviceID": 0,
            "uuid": hashlib.md5(f"double-gpu-{p}".encode()).digest()}


def deviceGetPCIBusId(device):
    return f"0000:{physical(device) + 1:02X}:00.0"


def runtimeGetVersion():
    return RUNTIME_VERSION


def driverGetVersion():
    return 0 if os.environ.get("CUPY_DOUBLE_NO_DRIVER") == "1" else RUNTIME_VERSION  # as cudaDriverGetVersion


def getDevice():
    from . import Device

    return Device().id


def deviceSynchronize():
    from .._core import synchronize

    _check_driver()
    synchronize("cudaDeviceSynchronize", getDevice())


# -- sticky faults -----------------------------------------------------------------------------------------------

_fault = {"code": None, "after": 0, "driver": False}  # the fault to come
_dead = {}  # physical device -> the error every later operation on it raises


def inject_fault(code, after=0, driver=False):
    """After ``after`` more device operations, a sticky fault ``code`` kills the context of the device that runs
    the next one (None: no fault to come).  ``driver``: raised as CUDADriverError, as a kernel launch raises it."""
    global _operations
    _fault.update(code=code, after=int(after), driver=bool(driver))
    _operations = 0


def clear_faults():
    """Every context alive again, no fault to come (what a new process would have)."""
    inject_fault(None)
    _dead.clear()


def _fault_error():
    if _fault["driver"]:
        from .driver import CUDADriverError

        return CUDADriverError(_fault["code"])
    return CUDARuntimeError(_fault["code"])


_operations = 0


def launch(device):
    """One device operation on visible device ``device``: its context's sticky error if it is dead, else counted
    (and the injected fault raised when it is due)."""
    global _operations
    p = physical(device)
    if p in _dead:
        raise _dead[p]
    if _fault["code"] is not None:
        if _operations >= _fault["after"]:
            _dead[p] = _fault_error()
            _fault["code"] = None
            raise _dead[p]
        _operations += 1


def _from_environment():
    spec = os.environ.get("CUPY_DOUBLE_FAULT")
    if not spec:
        return
    driver = spec.startswith("driver:")
    code, _, after = spec.removeprefix("driver:").partition("@")
    inject_fault(int(code), int(after or 0), driver)


_from_environment()
