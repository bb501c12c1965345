"""A CPU test double for cupy: numpy underneath, cupy's types and rules on top.  See ../README.md.

Any numpy function or ufunc is reached as ``cupy.<name>`` (module ``__getattr__``) with the
double's rules: double arrays in, double arrays out, numpy arrays refused.  Functions whose
cupy behaviour differs from numpy's are written out below.  To add what a new piece of fastnn
needs (a ``RawKernel``, a stream), add it here or in ``cuda/`` and say so in ../README.md.
"""

import weakref as _weakref

import numpy as _numpy

from . import _core, cuda
from ._core import ndarray

__version__ = "14.0.0+fastnn.double"  # a cupy 14 look-alike; "+fastnn.double" says what it is
is_test_double = True  # real cupy has no such attribute

# dtypes (float32, ...) and constants (inf, newaxis, ...) are numpy's own objects, as in cupy: see __getattr__


def _created(shape, dtype, make):
    """A new array made by ``make()``, its bytes taken from the allocator first (so a huge request
    raises OutOfMemoryError instead of asking the host for the memory)."""
    count = int(_numpy.prod(shape, dtype=_numpy.int64))
    memory = _core._allocate(count * _numpy.dtype(dtype).itemsize)
    a = make()
    self = ndarray.__new__(ndarray)
    self._a, self._device = a, _core._current_device_id()
    _core._charged[id(a)] = memory
    _weakref.finalize(a, _core._release, id(a))
    return self


def _shape(shape):
    return (shape,) if isinstance(shape, int) else tuple(shape)


def empty(shape, dtype=float, order="C"):
    return _created(_shape(shape), dtype, lambda: _numpy.empty(shape, dtype, order=order))


def zeros(shape, dtype=float, order="C"):
    return _created(_shape(shape), dtype, lambda: _numpy.zeros(shape, dtype, order=order))


def ones(shape, dtype=float, order="C"):
    return _created(_shape(shape), dtype, lambda: _numpy.ones(shape, dtype, order=order))


def full(shape, fill_value, dtype=None, order="C"):
    dtype = dtype if dtype is not None else _numpy.asarray(fill_value).dtype
    return _created(_shape(shape), dtype, lambda: _numpy.full(shape, fill_value, dtype, order=order))


def _like(make, a, dtype, shape):
    shape = a.shape if shape is None else _shape(shape)
    dtype = a.dtype if dtype is None else dtype
    return _created(shape, dtype, lambda: make(shape, dtype))


def empty_like(a, dtype=None, order="K", subok=None, shape=None):
    return _like(_numpy.empty, a, dtype, shape)


def zeros_like(a, dtype=None, order="K", subok=None, shape=None):
    return _like(_numpy.zeros, a, dtype, shape)


def ones_like(a, dtype=None, order="K", subok=None, shape=None):
    return _like(_numpy.ones, a, dtype, shape)


# The explicit host -> device crossings: numpy arrays are welcome here.
def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0):
    return _core.wrap(_numpy.array(_core.unwrap(obj, "cupy.array", host_ok=True), dtype=dtype, copy=True,
                                   order=order, ndmin=ndmin))


def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray) and (dtype is None or _numpy.dtype(dtype) == a.dtype):
        return a
    return _core.wrap(_numpy.array(_core.unwrap(a, "cupy.asarray", host_ok=True), dtype=dtype, order=order or "K",
                                   copy=True))


def ascontiguousarray(a, dtype=None):
    if isinstance(a, ndarray) and a._a.flags.c_contiguous and (dtype is None or _numpy.dtype(dtype) == a.dtype):
        return a
    host = _core.unwrap(a, "cupy.ascontiguousarray", host_ok=True)
    return _core.wrap(_numpy.array(host, dtype=dtype, order="C", copy=True, ndmin=1))


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    """The array as numpy (numpy input passes through)."""
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return _numpy.asarray(a, order=order)


def get_array_module(*args):
    import sys

    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else _numpy


def take(a, indices, axis=None, out=None):
    """cupy.take: no ``mode`` argument (cupy wraps out-of-range indices)."""
    return _core.call(_numpy.take, (a, indices), {"axis": axis, "out": out, "mode": "wrap"}, "cupy.take")


def get_default_memory_pool():
    return cuda.memory.default_pool()


# Submodules of numpy that cupy mirrors with its own (random, linalg, fft, ...) are not here:
# handing out numpy's would make host arrays pass as device arrays.
_NOT_HERE = {"random", "linalg", "fft", "testing", "ma", "polynomial", "lib", "char", "rec", "ctypeslib"}


def __getattr__(name):
    """Any other numpy function or ufunc, with the double's rules (see the module docstring)."""
    if name in _NOT_HERE or name.startswith("_"):
        raise AttributeError(f"the cupy test double has no cupy.{name}: add it in tests/cupy_double if fastnn "
                             "needs it")
    attr = getattr(_numpy, name)  # AttributeError for names numpy lacks too
    if isinstance(attr, type) or not callable(attr):
        return attr
    made = _core.function(attr, name)
    globals()[name] = made
    return made

