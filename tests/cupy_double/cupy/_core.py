"""The double's array: numpy underneath, a type of its own on top, cupy's rules at the edges.

What it copies from cupy, because fastnn's CUDA branches depend on it:
- ``type(a).__module__`` starts with "cupy", so ``fastnn.backend.is_device_array`` is True.
- Mixing with numpy is refused as cupy refuses it: a numpy array passed to a cupy function or
  operator raises TypeError, and ``numpy.asarray(a)`` raises TypeError (use ``a.get()``).
  ``asarray``/``array``/``ascontiguousarray`` and ``a[...] = host`` are the explicit crossings.
- Reductions and ``vdot`` return 0-d arrays, not Python or numpy scalars.
- Every host read (``get``, ``float``, ``int``, ``bool``, ``item``, ``tolist``) and every
  synchronize counts as a device synchronisation: under ``cupyx.allow_synchronize(False)`` it
  raises ``cupyx.DeviceSynchronized``.
- New arrays are allocated from the current allocator (a ``cuda.MemoryPool``) and counted against
  the device's memory: past it, ``cuda.memory.OutOfMemoryError``.
"""

import functools
import operator
import threading
import weakref

import numpy

_state = threading.local()


class DeviceSynchronized(RuntimeError):
    """Raised when the device is synchronised while ``cupyx.allow_synchronize(False)`` is in force."""

    def __init__(self, message=None):
        super().__init__(message or "Device synchronization was detected while disallowed.")


DeviceSynchronized.__module__ = "cupyx"


def sync_allowed():
    return getattr(_state, "allow_sync", True)


def set_sync_allowed(allow):
    _state.allow_sync = allow


def synchronize(what, device=None):
    """Note a device synchronisation (a host read, a wait) on ``device`` (default: the current one): refused while
    disallowed, and failing as the device's context does when it is dead."""
    if not sync_allowed():
        raise DeviceSynchronized(f"Device synchronization was detected while disallowed ({what}).")
    from .cuda import runtime

    runtime.launch(_current_device_id() if device is None else device)


def _arrays(value):
    """The double's arrays in ``value`` (nested in lists, tuples, dicts)."""
    if isinstance(value, ndarray):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _arrays(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _arrays(v)


def launch(where, *values):
    """One kernel launch on the current device over the arrays in ``values``: each must live there (cupy refuses
    an array of another device where peer access is unavailable, as between the double's GPUs), and the device's
    context must be alive (see cuda.runtime.launch)."""
    from .cuda import runtime

    runtime.launch(on_current_device(where, values))


def on_current_device(where, *values):
    """The current device, when every array in ``values`` lives there; else cupy's ValueError."""
    current = _current_device_id()
    for a in _arrays(values):
        if a._device != current:
            raise ValueError(f"The device where the array resides ({a._device}) is different from the current device "
                             f"({current}). Peer access is unavailable between these devices. (in {where})")
    return current


# Filled in by cupy.cuda: the device that new arrays go to, and the allocator that pays for them.
def _current_device_id():
    from . import cuda

    return cuda.Device().id


def _allocate(nbytes):
    from .cuda import memory

    return memory.allocate(nbytes)


def _no_host(value, where):
    if isinstance(value, numpy.ndarray):
        raise TypeError(f"Unsupported type {type(value)} (in {where}): a cupy array cannot mix with a numpy "
                        "array; move it with cupy.asarray or .get()")


def unwrap(value, where, host_ok=False):
    """``value`` with every double array replaced by its numpy array (nested in lists, tuples, dicts)."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, (list, tuple)):
        return type(value)(unwrap(v, where, host_ok) for v in value)
    if isinstance(value, dict):
        return {k: unwrap(v, where, host_ok) for k, v in value.items()}
    if not host_ok:
        _no_host(value, where)
    return value


def wrap(value, fresh=True):
    """A numpy result as the double's: arrays become ndarrays (counted when they own new memory),
    numpy scalars become 0-d arrays as cupy's reductions return; tuples and lists recurse."""
    if isinstance(value, numpy.ndarray):
        return ndarray._adopt(value)
    if isinstance(value, numpy.generic):
        return ndarray._adopt(numpy.asarray(value))
    if isinstance(value, (tuple, list)) and any(isinstance(v, (numpy.ndarray, numpy.generic)) for v in value):
        return type(value)(wrap(v) for v in value)
    return value


def call(func, args, kwargs, where, host_ok=False):
    """Run a numpy function on unwrapped arguments and wrap its result; ``out=`` is returned as given."""
    out = kwargs.get("out")
    outs = out if isinstance(out, tuple) else (out,)
    given = {id(o._a): o for o in outs if isinstance(o, ndarray)}
    launch(where, args, kwargs)
    result = func(*unwrap(args, where, host_ok), **unwrap(kwargs, where, host_ok))
    if id(result) in given:
        return given[id(result)]
    if isinstance(result, tuple) and given:
        return tuple(given.get(id(r), r) for r in result)
    return wrap(result)


def function(func, name=None, host_ok=False):
    """``func`` (a numpy function or ufunc) as a cupy function of the double."""
    where = f"cupy.{name or getattr(func, '__name__', 'function')}"

    @functools.wraps(func)
    def run(*args, **kwargs):
        return call(func, args, kwargs, where, host_ok)

    return run


class _Pointer:
    """What ``a.data`` gives: the address of the first element, and the device."""

    def __init__(self, array):
        self.ptr = array._a.ctypes.data
        self.device_id = array._device


class ndarray:
    """A cupy.ndarray stand-in holding a numpy array (``_a``) on device ``_device``."""

    __array_priority__ = 100  # numpy defers its binary operators to ours
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        nbytes = int(numpy.prod(shape, dtype=numpy.int64)) * numpy.dtype(dtype).itemsize
        memory = _allocate(nbytes)
        self._a = numpy.empty(shape, dtype, order=order)
        self._device = _current_device_id()
        _charged[id(self._a)] = memory
        weakref.finalize(self._a, _release, id(self._a))

    @classmethod
    def _adopt(cls, a):
        """Wrap numpy array ``a``; when it owns its memory, charge it to the current allocator."""
        self = cls.__new__(cls)
        self._a = a
        self._device = _current_device_id()
        if a.base is None and a.nbytes and id(a) not in _charged:  # new memory, not yet paid for
            _charged[id(a)] = _allocate(a.nbytes)
            weakref.finalize(a, _release, id(a))
        return self

    # -- numpy's protocols: cupy's rules -------------------------------------------------

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a "
                        "NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return call(getattr(ufunc, method), inputs, kwargs, f"numpy.{ufunc.__name__} on a cupy array")

    def __array_function__(self, func, types, args, kwargs):
        return call(func, args, kwargs, f"numpy.{func.__name__} on a cupy array")

    # -- attributes -----------------------------------------------------------------------

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: wrap(self._a.T))
    data = property(lambda self: _Pointer(self))

    @property
    def device(self):
        from . import cuda

        return cuda.Device(self._device)

    def __getattr__(self, name):
        """Every other numpy method, on the numpy array, with the double's rules for its arguments."""
        if name.startswith("__") or name == "_a":
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if not callable(attr):
            return attr
        method = function(attr, f"ndarray.{name}")

        @functools.wraps(attr)
        def run(*args, **kwargs):
            on_current_device(f"ndarray.{name}", self)  # the method's kernel runs on the current device
            return method(*args, **kwargs)

        return run

    # -- crossings to the host: each a device synchronisation ----------------------------

    def get(self, stream=None, order="C", out=None, blocking=True):
        """The array as a new numpy array (a copy)."""
        synchronize("ndarray.get", self._device)
        if out is not None:
            out[...] = self._a
            return out
        return numpy.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        """Copy the numpy array ``arr`` into this array."""
        self._a[...] = arr

    def item(self, *args):
        synchronize("ndarray.item", self._device)
        return self._a.item(*args)

    def tolist(self):
        synchronize("ndarray.tolist", self._device)
        return self._a.tolist()

    def __float__(self):
        synchronize("float()", self._device)
        return float(self._a)

    def __int__(self):
        synchronize("int()", self._device)
        return int(self._a)

    def __index__(self):
        synchronize("operator.index()", self._device)
        return operator.index(self._a)

    def __bool__(self):
        synchronize("bool()", self._device)
        return bool(self._a)

    def __complex__(self):
        synchronize("complex()", self._device)
        return complex(self._a)

    def __repr__(self):
        return repr(self._a)  # cupy too reads the array back to print it

    __str__ = __repr__

    # -- indexing ----------------------------------------------------------------------

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (wrap(row) for row in self._a)

    def __getitem__(self, key):
        launch("indexing", self, key)
        return wrap(self._a[unwrap(key, "indexing", host_ok=True)])

    def __setitem__(self, key, value):
        launch("assignment", self, key)  # a device value is copied from its own device: only the target is checked
        self._a[unwrap(key, "indexing", host_ok=True)] = unwrap(value, "assignment", host_ok=True)

    def copy(self, order="C"):
        launch("ndarray.copy", self)
        return wrap(self._a.copy(order=order))

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __reduce__(self):
        raise TypeError("the cupy test double does not pickle arrays")


_charged = {}  # id of a numpy array that owns memory -> the allocation that pays for it


def _release(key):
    _charged.pop(key).free()


def _binary(op, name):
    def method(self, other):
        return call(op, (self, other), {}, f"the operator {name}")

    method.__name__ = name
    return method


def _reflected(op, name):
    def method(self, other):
        return call(op, (other, self), {}, f"the operator {name}")

    method.__name__ = name
    return method


def _inplace(op, name):
    def method(self, other):
        launch(f"the operator {name}", self, other)
        op(self._a, unwrap(other, f"the operator {name}"))
        return self

    method.__name__ = name
    return method


def _unary(op, name):
    def method(self):
        launch(f"the operator {name}", self)
        return wrap(op(self._a))

    method.__name__ = name
    return method


for _name, _op in [("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                   ("truediv", operator.truediv), ("floordiv", operator.floordiv), ("mod", operator.mod),
                   ("pow", operator.pow), ("matmul", operator.matmul), ("and", operator.and_),
                   ("or", operator.or_), ("xor", operator.xor), ("lshift", operator.lshift),
                   ("rshift", operator.rshift)]:
    setattr(ndarray, f"__{_name}__", _binary(_op, f"__{_name}__"))
    setattr(ndarray, f"__r{_name}__", _reflected(_op, f"__r{_name}__"))
    setattr(ndarray, f"__i{_name}__", _inplace(getattr(operator, f"i{_name.rstrip('_')}"), f"__i{_name}__"))
for _name, _op in [("eq", operator.eq), ("ne", operator.ne), ("lt", operator.lt), ("le", operator.le),
                   ("gt", operator.gt), ("ge", operator.ge)]:
    setattr(ndarray, f"__{_name}__", _binary(_op, f"__{_name}__"))
for _name, _op in [("neg", operator.neg), ("pos", operator.pos), ("abs", operator.abs), ("invert", operator.invert)]:
    setattr(ndarray, f"__{_name}__", _unary(_op, f"__{_name}__"))


class _routines_linalg:
    COMPUTE_TYPE_DEFAULT = 1
    COMPUTE_TYPE_TF32 = 7


_compute_types = {}


def get_compute_type(dtype):
    """cupy._core.get_compute_type: what set_compute_type last set (the double's matmuls ignore it)."""
    return _compute_types.get(numpy.dtype(dtype), _routines_linalg.COMPUTE_TYPE_DEFAULT)


def set_compute_type(dtype, compute_type):
    _compute_types[numpy.dtype(dtype)] = compute_type
