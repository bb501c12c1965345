"""Bounded readers: regular files only, declared sizes checked before anything is allocated.

Every file fastnn reads (IDX, .npz datasets, model files, checkpoints) goes through here:

- ``open_regular`` refuses a FIFO, a device or a socket before reading from it (a FIFO would
  block forever), opening without blocking and checking what it opened;
- ``Npz`` reads the members of a ``numpy.savez`` archive one at a time, only those asked for,
  streaming each with its declared size checked against the archive (a deflated member cannot
  be more than ``DEFLATE_RATIO`` times its compressed size) and against a limit before the
  array is allocated;
- ``host_memory`` (fastnn.memory) bounds every allocation of what a file declares;
- ``DECODING_ERRORS`` are the exceptions a corrupt file can raise while it is decoded; callers
  turn them into the one-line ``DataError`` / ``ModelFileError`` of the file.
"""

import ast
import math
import os
import stat
import struct
import zipfile
import zlib

import numpy as np

from .memory import describe_bytes, host_memory, memory_words

# What corrupt bytes can make zipfile, gzip, zlib, struct, ast, json and numpy raise while decoding.
DECODING_ERRORS = (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError,
                   SyntaxError, NotImplementedError, zlib.error, struct.error, zipfile.BadZipFile)
DEFLATE_RATIO = 1032  # deflate's largest expansion: one compressed byte never holds more than this many
TEXT_LIMIT = 64 << 20  # bytes: a JSON record (header, training state) larger than this is not fastnn's
NPY_HEADER_LIMIT = 1 << 16
CHUNK = 1 << 22


def one_line(error):
    """The text of ``error`` on one line, at most 300 characters."""
    text = " ".join(str(getattr(error, "strerror", None) or error or type(error).__name__).split())
    return text if len(text) <= 300 else text[:297] + "..."


_KINDS = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISCHR: "a character device",
          stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}


def file_kind(path):
    """None for a regular file (or a missing one), else what ``path`` is, in words ("a FIFO (named pipe)")."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return next((words for test, words in _KINDS.items() if test(mode)), "not a regular file")


def open_regular(path, error, expected):
    """Open ``path`` for reading, binary; ``error(...)`` unless it is a regular file.

    It is opened without blocking (a FIFO would wait for a writer) and checked after opening,
    so that nothing can be swapped in between the check and the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(f"cannot read {path}: {one_line(e)}") from e
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((words for test, words in _KINDS.items() if test(mode)), "not a regular file")
        raise error(f"{path} is {kind}, not a regular file; expected {expected}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_exactly(stream, out):
    """Fill the bytes of the array ``out`` from ``stream``; return how many arrived (fewer at its end)."""
    view = memoryview(out).cast("B") if out.nbytes else memoryview(b"")
    got = 0
    while got < len(view):
        block = stream.read(min(CHUNK, len(view) - got))
        if not block:
            break
        view[got:got + len(block)] = block
        got += len(block)
    return got


def _npy_header(stream, name):
    """(shape, fortran_order, dtype, header bytes) of the .npy member ``name``, read from ``stream``."""
    magic = stream.read(8)
    if len(magic) != 8 or magic[:6] != b"\x93NUMPY" or magic[6] not in (1, 2, 3):
        raise ValueError(f"{name} is not a .npy array")
    length_format = "<H" if magic[6] == 1 else "<I"
    size = struct.calcsize(length_format)
    length = struct.unpack(length_format, stream.read(size).ljust(size, b"\0"))[0]
    if length > NPY_HEADER_LIMIT:
        raise ValueError(f"{name} has an array header of {length} bytes; .npy headers are short")
    text = stream.read(length)
    if len(text) != length:
        raise ValueError(f"{name} ends inside its array header")
    d = ast.literal_eval(text.decode("utf8" if magic[6] == 3 else "latin1"))
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"{name} has an array header that is not numpy's")
    shape, fortran, descr = d["shape"], d["fortran_order"], d["descr"]
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                             for n in shape) and len(shape) <= 32):
        raise ValueError(f"{name} has an invalid array shape {shape!r}")
    if not isinstance(fortran, bool):
        raise TypeError(f"{name} has an invalid array header (fortran_order {fortran!r})")
    if isinstance(descr, str) and "O" in descr:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    if not isinstance(descr, str):
        raise TypeError(f"{name} holds records of several fields ({one_line(descr)[:60]}); expected plain arrays")
    dtype = np.dtype(descr)
    if dtype.hasobject or dtype.fields or dtype.subdtype or dtype.kind not in "biufcUS":
        raise ValueError(f"{name} has an unsupported dtype {descr!r}")
    return shape, fortran, dtype, len(magic) + size + length


def read_npy(path, prefix, error, limit):
    """The array of the .npy file ``path``, its declared shape checked against the file's size and against
    ``limit`` bytes before anything is allocated; ``error(f"{prefix}: {why}")`` for anything wrong."""
    with open_regular(path, error, "a .npy array") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            shape, fortran, dtype, header = _npy_header(f, "the array")
        except DECODING_ERRORS as e:
            raise error(f"{prefix}: {one_line(e)}") from e
        nbytes = math.prod(shape) * dtype.itemsize
        if header + nbytes != size:
            raise error(f"{prefix}: it declares shape {shape} of {dtype} ({describe_bytes(nbytes)}), but holds "
                        f"{describe_bytes(max(0, size - header))} of data")
        if nbytes > limit:
            raise error(f"{path}: shape {shape} of {dtype} needs {describe_bytes(nbytes)}, more than this process "
                        f"may allocate: {memory_words()}")
        flat = np.empty(math.prod(shape), dtype)
        if read_exactly(f, flat) != nbytes:
            raise error(f"{prefix}: it ends before its {nbytes} bytes of data")
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


class Npz:
    """The arrays of a ``numpy.savez`` archive, read one member at a time.

    ``error`` is raised as ``error(f"{prefix}: {why}")`` for anything wrong with the file;
    use as a context manager.
    """

    def __init__(self, path, prefix, error, expected="a .npz archive as numpy.savez writes"):
        self.path, self.prefix, self.error = path, prefix, error
        self._file = open_regular(path, error, expected)
        self._zip = None
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            magic = self._file.read(4)
            if magic == b"PK\x05\x06" and self.size == 22:  # the empty archive numpy.savez() writes
                self.names = []
                return
            if magic != b"PK\x03\x04":  # a zip archive's first local header, as numpy.savez writes
                raise error(f"{prefix}: it is not a zip archive of arrays as numpy.savez writes")
            self._file.seek(0)
            self._zip = zipfile.ZipFile(self._file)
            self.names = [i.filename[:-4] for i in self._zip.infolist() if i.filename.endswith(".npy")]
        except DECODING_ERRORS as e:
            self.close()
            raise error(f"{prefix}: {one_line(e)}") from e
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._zip is not None:
            self._zip.close()
        self._file.close()

    def _fail(self, why, cause=None):
        raise self.error(f"{self.prefix}: {why}") from cause

    def _member(self, name):
        """The ZipInfo of array ``name``, its declared sizes checked against the file's."""
        info = self._zip.getinfo(name + ".npy")
        if info.flag_bits & 0x1:
            self._fail(f"array {name} is encrypted; numpy.savez does not encrypt")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            self._fail(f"array {name} uses zip compression method {info.compress_type}; numpy.savez writes "
                       "stored or deflated members")
        largest = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else DEFLATE_RATIO) + 1024
        if info.compress_size > self.size or info.file_size > largest:
            self._fail(f"array {name} claims {info.file_size} bytes from {info.compress_size} compressed bytes in a "
                       f"file of {self.size}, more than it can hold")
        return info

    def describe(self, name):
        """(shape, dtype) of array ``name`` from its .npy header, without reading its data."""
        try:
            self._member(name)
            with self._zip.open(name + ".npy") as stream:
                shape, _, dtype, _ = _npy_header(stream, name)
        except self.error:
            raise
        except DECODING_ERRORS as e:
            self._fail(one_line(e), e)
        return shape, dtype

    def array(self, name, limit):
        """Array ``name``, refused before allocation when its data would be more than ``limit`` bytes."""
        try:
            info = self._member(name)
            with self._zip.open(name + ".npy") as stream:
                shape, fortran, dtype, header = _npy_header(stream, name)
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes > limit:
                    self._fail(f"array {name} declares shape {shape} of {dtype} ({describe_bytes(nbytes)}), more "
                               f"than the {describe_bytes(limit)} it may hold here"
                               + (f": {memory_words()}" if limit == host_memory() else ""))
                if header + nbytes != info.file_size:
                    self._fail(f"array {name} declares shape {shape} of {dtype} ({nbytes} bytes), but its member "
                               f"holds {info.file_size - header} bytes of data")
                flat = np.empty(math.prod(shape), dtype)
                got = read_exactly(stream, flat)
                if got != nbytes or stream.read(1):
                    self._fail(f"array {name} ends after {got} of its {nbytes} bytes")
        except self.error:
            raise
        except DECODING_ERRORS as e:
            self._fail(one_line(e), e)
        return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)

    def text(self, name, limit=TEXT_LIMIT):
        """The string held by the 0-d text array ``name`` (a JSON record)."""
        value = self.array(name, limit)
        if value.ndim != 0 or value.dtype.kind not in "US":
            self._fail(f"{name} must be a text record; got {value.dtype} {value.shape}")
        value = value[()]
        if isinstance(value, bytes):
            try:
                value = value.decode()
            except UnicodeDecodeError as e:
                self._fail(f"{name} is not text: {one_line(e)}", e)
        return str(value)
