"""cupy.cuda of the double: devices, streams, allocators, and the runtime/memory/nccl modules."""

import contextlib
import threading

from . import driver, memory, runtime  # noqa: F401 (cupy.cuda.driver)
from .memory import MemoryPool, get_allocator, set_allocator, using_allocator  # noqa: F401

_state = threading.local()


def _current():
    return getattr(_state, "device", 0)


class Device:
    """A visible GPU by index (default: the current one); ``with Device(i):`` makes it current."""

    def __init__(self, device=None):
        self.id = _current() if device is None else int(device)
        self._previous = []

    def __repr__(self):
        return f"<CUDA Device {self.id}>"

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def use(self):
        runtime.physical(self.id)  # cudaErrorInvalidDevice / InsufficientDriver, as cudaSetDevice
        _state.device = self.id

    def __enter__(self):
        self._previous.append(_current())
        self.use()
        return self

    def __exit__(self, *exc):
        _state.device = self._previous.pop()

    def synchronize(self):
        from .._core import synchronize

        synchronize("Device.synchronize", self.id)

    @property
    def compute_capability(self):
        props = runtime.getDeviceProperties(self.id)
        return f"{props['major']}{props['minor']}"

    @property
    def pci_bus_id(self):
        return runtime.deviceGetPCIBusId(self.id)

    @property
    def mem_info(self):
        total = runtime.memory_bytes()
        return total - memory._used.get(runtime.physical(self.id), 0), total


class Stream:
    """The stream kernels are queued on; the double runs everything at once, so ``ptr`` is 0."""

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0

    def synchronize(self):
        from .._core import synchronize

        synchronize("Stream.synchronize", _current())

    @contextlib.contextmanager
    def _use(self):
        yield self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


Stream.null = Stream(null=True)


def get_current_stream(device=None):
    return Stream.null


def __getattr__(name):
    if name == "nccl":  # imported on first use, as cupy's (it needs mpi4py here)
        import importlib

        return importlib.import_module(f"{__name__}.nccl")
    raise AttributeError(f"the cupy test double has no cupy.cuda.{name}: add it in tests/cupy_double if fastnn "
                         "needs it")
