"""cupyx of the double: ``allow_synchronize`` and ``DeviceSynchronized`` (see ../cupy/_core.py)."""

import contextlib

from cupy._core import DeviceSynchronized, set_sync_allowed, sync_allowed

__all__ = ["DeviceSynchronized", "allow_synchronize"]


@contextlib.contextmanager
def allow_synchronize(allow):
    """Inside, a device synchronisation raises DeviceSynchronized unless ``allow``."""
    previous = sync_allowed()
    set_sync_allowed(allow)
    try:
        yield
    finally:
        set_sync_allowed(previous)
