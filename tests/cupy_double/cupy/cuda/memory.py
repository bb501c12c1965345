"""cupy.cuda.memory of the double: memory pools that count bytes, and the out-of-memory error.

Every array the double makes is paid for by the current allocator (``using_allocator``,
``set_allocator``; by default the default pool), and charged to its device, whose memory is
``runtime.memory_bytes()``: past it, OutOfMemoryError, as cupy raises it.
"""

import contextlib
import threading

from . import runtime

_state = threading.local()
_used = {}  # physical device -> bytes held by every pool on it
_default = None


class OutOfMemoryError(MemoryError):
    """cupy.cuda.memory.OutOfMemoryError, with cupy's message."""

    def __init__(self, size, total, limit=0):
        more = f", limit set to: {limit:,} bytes" if limit else ""
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes{more}).")


OutOfMemoryError.__module__ = "cupy.cuda.memory"


class MemoryPointer:
    """A block of a pool: ``ptr`` is not a real address (the double's arrays hold their own)."""

    def __init__(self, pool, size, device):
        self.pool, self.size, self.device_id, self.ptr = pool, size, device, 0
        self._live = True

    def free(self):
        if self._live:
            self._live = False
            self.pool._give_back(self)


class MemoryPool:
    """Holds at most the most it ever had in use at once (its blocks are reused, never returned),
    until ``free_all_blocks``; ``total_bytes`` is what it holds, ``used_bytes`` what is in use."""

    def __init__(self, allocator=None):
        self._used = 0
        self._held = 0
        self._limit = 0

    def malloc(self, size):
        from . import Device

        size = -(-int(size) // 512) * 512  # cupy rounds every block up to 512 bytes
        runtime.launch(Device().id)  # cudaMalloc on a dead context fails with its error
        device = runtime.physical(Device().id)
        grow = max(0, self._used + size - self._held)
        device_total = _used.get(device, 0)
        if (self._limit and self._used + size > self._limit) or device_total + grow > runtime.memory_bytes():
            raise OutOfMemoryError(size, self._held, self._limit)
        self._used += size
        self._held += grow
        _used[device] = device_total + grow
        return MemoryPointer(self, size, device)

    def _give_back(self, block):
        self._used -= block.size

    def used_bytes(self):
        return self._used

    def total_bytes(self):
        return self._held

    def free_bytes(self):
        return self._held - self._used

    def free_all_blocks(self, stream=None):
        from . import Device

        device = runtime.physical(Device().id)
        _used[device] = _used.get(device, 0) - (self._held - self._used)
        self._held = self._used

    def n_free_blocks(self):
        return 1 if self._held > self._used else 0

    def set_limit(self, size=None, fraction=None):
        self._limit = int(size or 0)

    def get_limit(self):
        return self._limit


def default_pool():
    global _default
    if _default is None:
        _default = MemoryPool()
    return _default


def get_allocator():
    return getattr(_state, "allocator", None) or default_pool().malloc


def set_allocator(allocator=None):
    _state.allocator = allocator


@contextlib.contextmanager
def using_allocator(allocator=None):
    previous = getattr(_state, "allocator", None)
    _state.allocator = allocator
    try:
        yield
    finally:
        _state.allocator = previous


def allocate(nbytes):
    """Pay for ``nbytes`` of a new array with the current allocator; returns the block."""
    return get_allocator()(nbytes)
