"""cupy.cuda.runtime of the double: the devices it pretends to have, set by environment variables.

CUPY_DOUBLE_GPUS       how many GPUs the machine has (default 1; 0: a driver without devices)
CUPY_DOUBLE_NO_DRIVER  "1": cupy imports, but every call to the driver fails with
                       cudaErrorInsufficientDriver, as real cupy does on a machine without a driver
CUPY_DOUBLE_MEMORY     bytes of memory per GPU (default 16 GiB)
CUDA_VISIBLE_DEVICES   as CUDA reads it: the physical GPUs this process sees, in order (indices)
"""

import hashlib
import os

MESSAGES = {
    35: "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version",
    100: "cudaErrorNoDevice: no CUDA-capable device is detected",
    101: "cudaErrorInvalidDevice: invalid device ordinal",
    2: "cudaErrorMemoryAllocation: out of memory",
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
            "minor": 0, "multiProcessorCount": 1, "pciDomainID": 0, "pciBusID": p + 1, "pciDeviceID": 0,
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
    synchronize("cudaDeviceSynchronize")
