"""One register of the paths a command reads and writes, checked before any work is done.

Every fastnn command (and any new one: ``fastnn sweep`` included) collects its files here first::

    paths = Paths()
    paths.read("--dataset", "data.npz", "the dataset")
    paths.write("--out", "m.npz", "the model")
    paths.write("--log", "run.jsonl", "the log")
    paths.check()                      # ConfigError (exit 2) on the first problem, naming both files

``check`` refuses, in one line:

- an output that is an input or another output, compared by resolved path (symlinks) and by
  device and inode (hard links), whether the output exists yet or not;
- a path that is empty, holds a control character (a newline would split the one error line), or
  whose name cannot be written in the file-system encoding (a non-UTF-8 byte under a UTF-8 locale);
- an output whose folder is missing, not a folder, or not writable, or whose name, or the temporary
  name it is first written under (``files.temp_path``), is longer than the folder allows (NAME_MAX),
  or whose full path is longer than PATH_MAX;
- a path that cannot even be looked at (``stat`` fails with anything but "no such file").

``write(..., folder=True)`` registers a folder the command writes files in (a checkpoint folder);
``also`` names the files in it that count as outputs, and ``rereads`` the one input they may be (a
resumed run's checkpoint, rewritten every epoch).
"""

import errno
import os
import sys
from pathlib import Path

from .errors import ConfigError
from .files import temp_path

PATH_MAX = 4096
TEMP_EXTRA = len(temp_path("x").name) - 1 + 7 - len(str(os.getpid()))  # bytes a temporary name adds (pid: 7 digits)


def shown(path):
    """``path`` as text fit for a one-line message: control characters and undecodable bytes escaped."""
    try:
        text = os.fsencode(path).decode("utf-8", "backslashreplace")  # a stray byte shows as \\xff
    except UnicodeError:
        text = str(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class _Entry:
    def __init__(self, option, path, role, kind=None, rereads=None):
        self.option, self.path, self.role, self.kind, self.rereads = option, Path(path), role, kind, rereads
        self.real = os.path.realpath(path)
        try:
            st = os.stat(self.real)
            self.inode = (st.st_dev, st.st_ino)
        except OSError:
            self.inode = None

    def same(self, other):
        return self.real == other.real or (self.inode is not None and self.inode == other.inode)

    def __str__(self):
        return f"{self.role} ({self.option} {shown(self.path)})"


class Paths:
    """The inputs and outputs of one command; ``check()`` before any work."""

    def __init__(self):
        self.inputs, self.outputs = [], []

    def read(self, option, path, role):
        """Register an input file (or folder) ``path`` given by ``option``; ``role`` says what it is."""
        if path is not None:
            self.inputs.append((option, path, role))

    def write(self, option, path, role, folder=False, also=(), rereads=None):
        """Register an output ``path``: a file, or with ``folder`` a folder whose files ``also`` (name, role)
        are written.  ``rereads``: the option of the input this output may be (a resumed run's checkpoint)."""
        if path is None:
            return
        self.outputs.append((option, path, role, "folder" if folder else "file", None))
        for name, what in also:
            self.outputs.append((option, Path(path) / name, what, "inside", rereads))  # inside: its folder is checked

    def check(self):
        """Raise ConfigError for the first path that is unusable or would overwrite another."""
        for option, path, *_ in self.inputs:
            usable(option, path)
        for option, path, *_ in self.outputs:
            usable(option, path, output=True)
        for option, path, _, kind, _ in self.outputs:
            if kind != "inside":
                right_kind(option, path, kind == "folder")
        inputs = [_Entry(*i) for i in self.inputs]
        outputs = [_Entry(*o) for o in self.outputs]
        for n, out in enumerate(outputs):
            for inp in inputs:
                if out.same(inp) and inp.option != out.rereads:
                    raise ConfigError(f"{out.option} {shown(out.path)} is {inp}; writing {out.role} there would "
                                      f"overwrite it: choose another file name")
            for other in outputs[:n]:
                if out.same(other):
                    raise ConfigError(f"{out.option} {shown(out.path)} is also {other}; writing {out.role} there "
                                      f"would overwrite it: choose another file name")
        for option, path, _, kind, _ in self.outputs:
            if kind != "inside":
                writable(option, path, kind == "folder")


def usable(option, path, output=False):
    """ConfigError unless ``path`` is non-empty and can be looked at; an ``output``'s name must also be
    printable text in the file-system encoding (the name fastnn makes must be one a user can type)."""
    text = os.fspath(path)
    if text == "":
        raise ConfigError(f"{option} is empty; give a file name")
    if output:
        _plain_name(option, text)
    if len(os.fsencode(os.path.abspath(text))) >= PATH_MAX:
        raise ConfigError(f"{option} {shown(text)[:60]}...: the path is longer than the system allows "
                          f"({PATH_MAX} bytes)")
    try:
        os.stat(text)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise ConfigError(f"{option} {shown(text)}: {e.strerror or e}") from None


def _plain_name(option, text):
    encoding = sys.getfilesystemencoding()
    try:
        os.fsencode(text).decode(encoding)
    except UnicodeError:
        raise ConfigError(f"{option} {shown(text)}: the name is not valid {encoding} text (a stray byte?); "
                          f"give a name that is") from None
    if any(not (c.isprintable() or c == " ") for c in str(text)):
        raise ConfigError(f"{option} {shown(text)}: the name holds a control character (a newline?); "
                          f"give a plain file name")


def _probe(option, path, folder):
    """ConfigError unless a file can be made in ``folder`` (under a temporary name: a kill here leaves none)."""
    tmp = temp_path(Path(folder) / "probe")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(tmp)
    except OSError as e:
        raise ConfigError(f"{option} {shown(path)}: cannot write in {shown(folder)} ({e.strerror or e})") from None


def name_max(folder):
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def right_kind(option, path, folder):
    """ConfigError when an output file is a folder, or an output folder is a file."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {shown(path)} is a file; expected a folder (or a name for a new one)")
    if not folder and path.is_dir():
        raise ConfigError(f"{option} {shown(path)} is a folder; expected a file name, such as "
                          f"{shown(path / 'model.npz')}")


def writable(option, path, folder=False):
    """ConfigError unless ``path`` can be written (atomically, through a temporary name beside it)."""
    path = Path(path)
    right_kind(option, path, folder)
    parent = path.parent
    if not parent.exists():
        raise ConfigError(f"{option} {shown(path)}: the folder {shown(parent)} does not exist")
    if not parent.is_dir():
        raise ConfigError(f"{option} {shown(path)}: {shown(parent)} is not a folder")
    _probe(option, path, path if folder and path.is_dir() else parent)
    longest = name_max(parent)
    name = len(os.fsencode(path.name))
    if name > longest:
        raise ConfigError(f"{option} {shown(path)}: the name is {name} bytes, longer than the {longest} "
                          f"the folder allows")
    if not folder:
        tmp = name + TEMP_EXTRA
        if tmp > longest:
            raise ConfigError(f"{option} {shown(path)}: the name is {name} bytes; it is written first under a "
                              f"temporary name {tmp - name} bytes longer, more than the {longest} the folder "
                              f"allows: use a name of at most {longest - (tmp - name)} bytes")
        if len(os.fsencode(os.path.abspath(temp_path(path)))) >= PATH_MAX:
            raise ConfigError(f"{option} {shown(path)[:60]}...: the path is longer than the system allows "
                              f"({PATH_MAX} bytes)")
